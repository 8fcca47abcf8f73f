//! The state in etcd, shared by several control servers (`--store etcd://HOST:PORT,...`).
//!
//! Keys, under `maille/`: `version` (the mesh's version, decimal), `last-commit` (the id of
//! the commit that wrote it), `resources/<key>` (a resource as JSON), `cloud-map/<query>`
//! (the instances Cloud Map last gave the leader for a query, as JSON), `rollouts/<key>` (a
//! rollout's status), `secrets/<name>`, `refusals/<type URL>/<node>` (what an Envoy refused),
//! `leader` and `servers/<id>` (bound to the servers' leases). A commit is one etcd
//! transaction that succeeds only if `version` is still the one it follows, so every
//! replica's writes form one version sequence; a replica that lost the race reads the
//! newer state and tries again. Replicas follow each other through a watch on `version`.
//!
//! What only the leader writes (Cloud Map's answers, rollout steps and statuses) is written
//! only while `leader` is still bound to this server's lease: a server that lost its lease
//! without noticing (paused, cut off) cannot overwrite what the next leader wrote.
//!
//! Every change adds a revision to etcd's history; run etcd with
//! `--auto-compaction-retention` (as the tests and the Kubernetes manifests do)
//! so that it does not grow without end.
//!
//! The [`Store`] trait is synchronous (the embedded store writes a file); etcd's client is
//! async. The client runs on a thread of its own with its own runtime; each call is handed
//! to it and waited for, bounded by [`OP_TIMEOUT`], so a server whose etcd is gone gets an
//! error, not a hang.

use crate::store::{Delta, Leader, Loaded, ServerEntry, Store, StoreError};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use maille_model::{Key, Resource};
use maille_translate::{CloudMap, CloudMapInstance, CloudMapQuery};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Longest wait for one etcd call, its retries included.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for one try: a member that is gone (or in an election) gets a try or two,
/// then another member is asked.
const ATTEMPT: Duration = Duration::from_millis(1500);
/// etcd's own limit of operations in one transaction (`--max-txn-ops`, default 128).
const MAX_TXN_OPS: usize = 128;
/// Of which a commit's own take two (`version`, `last-commit`).
const MAX_CHANGES: usize = MAX_TXN_OPS - 2;

const VERSION: &str = "maille/version";
const RESOURCES: &str = "maille/resources/";
const ROLLOUTS: &str = "maille/rollouts/";
const SECRETS: &str = "maille/secrets/";
const LEADER: &str = "maille/leader";
const SERVERS: &str = "maille/servers/";
const REFUSALS: &str = "maille/refusals/";
/// What Cloud Map last answered, as the leader asked it, by query.
const CLOUD_MAP: &str = "maille/cloud-map/";
/// etcd's own limit of one request (`--max-request-bytes`, 1.5 MiB by default), less room
/// for the rest of the transaction.
const MAX_REQUEST_BYTES: usize = 1_400_000;
/// The id of the last commit, written with it: a commit tried again after its answer was
/// lost finds its own id there.
const LAST_COMMIT: &str = "maille/last-commit";

type Job = Box<dyn FnOnce(Client) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Where etcd is: `etcd://HOST:PORT[,HOST:PORT...]` (`etcds://` for TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdAddress {
    /// The members' URLs, as the client takes them (`http://h:p` or `https://h:p`).
    pub endpoints: Vec<String>,
    /// Whether they are reached over TLS.
    pub tls: bool,
}

impl EtcdAddress {
    /// Parses `--store`'s value; the error names what is wrong.
    pub fn parse(s: &str) -> Result<EtcdAddress, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("etcd://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("etcds://") {
            (true, r)
        } else {
            return Err(format!(
                "{s:?}: a store is etcd://HOST:PORT[,HOST:PORT...] (etcds:// for TLS)"
            ));
        };
        let mut endpoints = Vec::new();
        for m in rest.trim_end_matches('/').split(',') {
            let ok = m.rsplit_once(':').is_some_and(|(h, p)| {
                !h.is_empty()
                    && p.parse::<u16>().is_ok_and(|p| p > 0)
                    && maille_translate::bootstrap::valid_host(h.trim_matches(['[', ']']))
            });
            if !ok {
                return Err(format!(
                    "{s:?}: member {m:?} is not HOST:PORT (an IP address or DNS name, a port 1..=65535)"
                ));
            }
            endpoints.push(format!("{}://{m}", if tls { "https" } else { "http" }));
        }
        Ok(EtcdAddress { endpoints, tls })
    }
}

/// How to reach etcd over TLS (`etcds://`).
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    /// The CA certificate (PEM) etcd's certificates chain to.
    pub ca_pem: Option<String>,
    /// This client's certificate and key (PEM), when etcd asks for one.
    pub identity_pem: Option<(String, String)>,
}

/// The state in etcd.
#[derive(Debug)]
pub struct EtcdStore {
    jobs: mpsc::UnboundedSender<Job>,
    version: watch::Receiver<u64>,
    address: String,
    /// The lease `leader` is bound to while this server leads (0: it does not).
    leading: Arc<AtomicI64>,
    /// The live servers as last listed, and when.
    servers: std::sync::Mutex<Option<ServersListed>>,
}

/// A listing of the live servers (or why there is none), and when it was made.
type ServersListed = (std::time::Instant, Result<Vec<ServerEntry>, String>);

/// How long a listing of the live servers is used before etcd is asked again.
const SERVERS_KEPT: Duration = Duration::from_secs(1);

fn etcd_err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("etcd: {what}: {e}"))
}

/// The prefix conflicts are told by (see [`StoreError::is_conflict`]).
pub const CONFLICT: &str = "conflict: ";

impl EtcdStore {
    /// Connects to etcd at `address` (checked with one read) and starts following its
    /// version.
    pub fn connect(address: &EtcdAddress, tls: &EtcdTls) -> Result<EtcdStore, StoreError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(OP_TIMEOUT)
            .with_timeout(ATTEMPT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            // A member cut off from the others answers nothing rather than old state.
            .with_require_leader(true);
        if address.tls {
            let mut t = etcd_client::TlsOptions::new();
            if let Some(ca) = &tls.ca_pem {
                t = t.ca_certificate(etcd_client::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity_pem {
                t = t.identity(etcd_client::Identity::from_pem(cert, key));
            }
            opts = opts.with_tls(t);
        }
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (version_tx, version) = watch::channel(0u64);
        let endpoints = address.endpoints.clone();
        let shown = address.endpoints.join(",");
        std::thread::Builder::new()
            .name("maille-etcd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(etcd_err("a runtime", e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let client = match Client::connect(&endpoints, Some(opts)).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(etcd_err("connecting", e)));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    tokio::spawn(follow(client.clone(), version_tx));
                    while let Some(job) = rx.recv().await {
                        tokio::spawn(job(client.clone()));
                    }
                });
            })
            .map_err(|e| etcd_err("a thread", e))?;
        match ready_rx.recv_timeout(OP_TIMEOUT * 2) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StoreError(format!("{} (at {shown})", e.0))),
            Err(_) => return Err(etcd_err("connecting", format!("no answer from {shown}"))),
        }
        let s = EtcdStore {
            jobs,
            version,
            address: shown,
            leading: Arc::new(AtomicI64::new(0)),
            servers: std::sync::Mutex::new(None),
        };
        // Reachable and answering, or an error now rather than at the first apply.
        s.call("reading the version", |mut c| async move {
            c.get(VERSION, None).await.map(|_| ())
        })?;
        Ok(s)
    }

    /// The compare that holds while this server leads, and the lease it compares; or why
    /// it does not lead.
    fn fence(&self) -> Result<(Compare, i64), StoreError> {
        match self.leading.load(Ordering::SeqCst) {
            0 => Err(StoreError(format!(
                "etcd: {NOT_LEADING}(the leader's work is refused here)"
            ))),
            lease => Ok((Compare::lease(LEADER, CompareOp::Equal, lease), lease)),
        }
    }

    /// Commits `ops` and version `version`, only on top of the version before it (and, when
    /// `as_leader`, only while this server leads).
    fn commit_ops(
        &self,
        version: u64,
        mut ops: Vec<TxnOp>,
        as_leader: bool,
    ) -> Result<(), StoreError> {
        let (fence, lease) = match as_leader {
            true => {
                let (c, l) = self.fence()?;
                (Some(c), Some(l))
            }
            false => (None, None),
        };
        ops.push(TxnOp::put(VERSION, version.to_string(), None));
        let id = format!("{version}-{:032x}", rand::random::<u128>());
        ops.push(TxnOp::put(LAST_COMMIT, id.clone(), None));
        // Only on top of the version this one follows: one sequence across replicas.
        let follows = if version <= 1 {
            Compare::version(VERSION, CompareOp::Equal, 0)
        } else {
            Compare::value(VERSION, CompareOp::Equal, (version - 1).to_string())
        };
        let txn = Txn::new()
            .when(std::iter::once(follows).chain(fence).collect::<Vec<_>>())
            .and_then(ops)
            .or_else([TxnOp::get(LAST_COMMIT, None), TxnOp::get(LEADER, None)]);
        let resp = self.call("committing", move |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })?;
        if resp.succeeded() {
            return Ok(());
        }
        let mut ours = false;
        let mut holder = None;
        for (i, op) in resp.op_responses().into_iter().enumerate() {
            let TxnOpResponse::Get(g) = op else { continue };
            let Some(kv) = g.kvs().first() else { continue };
            if i == 0 {
                ours = kv.value() == id.as_bytes();
            } else {
                holder = Some((String::from_utf8_lossy(kv.value()).into_owned(), kv.lease()));
            }
        }
        if ours {
            return Ok(());
        }
        if let Some(lease) = lease {
            if holder.as_ref().map(|(_, l)| *l) != Some(lease) {
                return Err(not_leading(holder.map(|(h, _)| h)));
            }
        }
        Err(StoreError(format!(
            "{CONFLICT}version {version} was written by another server first"
        )))
    }

    /// Runs `f` on the client's thread and waits for it (at most [`OP_TIMEOUT`]), trying
    /// again while etcd is unreachable (every call is one that may be repeated: a commit
    /// repeated after it went through fails its compare, and finds its own id in
    /// `last-commit`).
    fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::new(move |c| {
            Box::pin(async move {
                let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
                let got = loop {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match tokio::time::timeout(ATTEMPT.min(left), f(c.clone())).await {
                        Ok(Ok(v)) => break Ok(Ok(v)),
                        Ok(Err(e)) if !unreachable(&e) => break Ok(Err(e)),
                        Ok(Err(e)) if left <= ATTEMPT => break Ok(Err(e)),
                        Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                        Err(t) if left <= ATTEMPT => break Err(t),
                        Err(_) => {}
                    }
                };
                let _ = tx.send(got);
            })
        });
        let gone = || {
            etcd_err(
                what,
                format!(
                    "no answer within {}s from {} (writes are refused until it answers; Envoys keep what they have)",
                    OP_TIMEOUT.as_secs(),
                    self.address
                ),
            )
        };
        self.jobs.send(job).map_err(|_| gone())?;
        let wait = || rx.recv_timeout(OP_TIMEOUT + Duration::from_secs(1));
        // Called from async code (the write path, ADS): let the runtime move its other tasks
        // to another worker while this one waits.
        let got = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        };
        match got {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(etcd_err(what, format!("{e} (at {})", self.address))),
            Ok(Err(_)) | Err(_) => Err(gone()),
        }
    }
}

/// What a refusal of the leader's work on a server that no longer leads says.
pub const NOT_LEADING: &str = "this server does not lead ";

fn not_leading(holder: Option<String>) -> StoreError {
    StoreError(match holder {
        Some(h) => format!("etcd: {NOT_LEADING}any more: {h} does; not written"),
        None => format!("etcd: {NOT_LEADING}any more (no server does); not written"),
    })
}

/// Whether `e` says etcd (or the member asked) could not be reached, rather than refusing.
fn unreachable(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        ),
        _ => false,
    }
}

/// Follows `version` in etcd, from now on, into `tx`; reconnects the watch when it breaks.
async fn follow(mut client: Client, tx: watch::Sender<u64>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut from = 0;
        if let Ok(r) = client.get(VERSION, None).await {
            if let Some(kv) = r.kvs().first() {
                tx.send_if_modified(|v| {
                    let n = parse_version(kv.value()).unwrap_or(*v);
                    let changed = n > *v;
                    *v = (*v).max(n);
                    changed
                });
            }
            from = r.header().map_or(0, |h| h.revision()) + 1;
        }
        let opts = WatchOptions::new().with_start_revision(from);
        match client.watch(VERSION, Some(opts)).await {
            Ok(mut stream) => {
                backoff = Duration::from_millis(100);
                while let Ok(Some(resp)) = stream.message().await {
                    for e in resp.events() {
                        if let Some(n) = e.kv().and_then(|kv| parse_version(kv.value())) {
                            tx.send_if_modified(|v| {
                                let changed = n > *v;
                                *v = (*v).max(n);
                                changed
                            });
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "etcd: watching the version; trying again"),
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Holds (or waits for) the leader key, bound to a lease of `ttl` kept alive: whoever holds
/// it leads; when its holder stops keeping its lease, etcd deletes the key within `ttl` and
/// another takes it. A leader that cannot reach etcd for half of `ttl` steps down
/// before its lease can end, so two never lead at once.
async fn campaign(
    mut c: Client,
    me: String,
    id: String,
    server: String,
    ttl: Duration,
    tx: watch::Sender<Leader>,
    leading_lease: Arc<AtomicI64>,
) {
    let secs = ttl.as_secs().max(1) as i64;
    // Each wait is at most an eighth of the lease, so a leader that cannot renew it notices
    // within half the lease plus three waits: before the lease can end.
    let tick = ttl / 8;
    let set = |tx: &watch::Sender<Leader>, l: Leader| {
        tx.send_if_modified(|cur| {
            let changed = *cur != l;
            *cur = l;
            changed
        });
    };
    let mut held_lease = None;
    while !tx.is_closed() {
        let lease = match c.lease_grant(secs, None).await {
            Ok(l) => l.id(),
            Err(e) => {
                tracing::warn!(error = %e, "etcd: a lease for the leader election");
                set(&tx, Leader::default());
                tokio::time::sleep(tick).await;
                continue;
            }
        };
        let Ok((mut keeper, mut alive)) = c.lease_keep_alive(lease).await else {
            tokio::time::sleep(tick).await;
            continue;
        };
        let mut last_ok = tokio::time::Instant::now();
        let mut listed = false;
        while !tx.is_closed() {
            // Among the live servers while this lease lives (bootstraps list them), under an
            // id of this process's own.
            if !listed {
                let put = c.put(
                    format!("{SERVERS}{id}"),
                    server.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                );
                match tokio::time::timeout(tick, put).await {
                    Ok(Ok(_)) => listed = true,
                    _ => tracing::warn!("etcd: listing this server; trying again"),
                }
            }
            let take = Txn::new()
                .when([Compare::create_revision(LEADER, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    LEADER,
                    me.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(LEADER, None)]);
            if let Ok(Ok(r)) = tokio::time::timeout(tick, c.txn(take)).await {
                let held = if r.succeeded() {
                    Some((me.clone(), lease))
                } else {
                    r.op_responses().into_iter().find_map(|op| match op {
                        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| {
                            (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease())
                        }),
                        _ => None,
                    })
                };
                let leading = held.as_ref().is_some_and(|(_, l)| *l == lease);
                if leading && !tx.borrow().me {
                    tracing::info!(%me, "leading: rollouts run here");
                }
                held_lease = leading.then_some(lease);
                leading_lease.store(if leading { lease } else { 0 }, Ordering::SeqCst);
                set(
                    &tx,
                    Leader {
                        me: leading,
                        holder: held.map(|(h, _)| h),
                    },
                );
            }
            let renewed = tokio::time::timeout(tick, async {
                keeper.keep_alive().await?;
                alive.message().await
            })
            .await;
            if let Ok(Ok(Some(r))) = renewed {
                if r.ttl() > 0 {
                    last_ok = tokio::time::Instant::now();
                }
            }
            if last_ok.elapsed() > ttl / 2 {
                if tx.borrow().me {
                    tracing::warn!(%me, "etcd unreachable: no longer leading");
                }
                leading_lease.store(0, Ordering::SeqCst);
                set(&tx, Leader::default());
                held_lease = None;
                break;
            }
            tokio::time::sleep(tick).await;
        }
    }
    // Stopped: let another take over now rather than at the lease's end.
    leading_lease.store(0, Ordering::SeqCst);
    if let Some(lease) = held_lease {
        let _ = c.lease_revoke(lease).await;
    }
}

/// Where the answers to `q` are kept.
fn cloud_map_key(q: &CloudMapQuery) -> Result<String, StoreError> {
    Ok(format!(
        "{CLOUD_MAP}{}",
        serde_json::to_string(q).map_err(|e| StoreError(e.to_string()))?
    ))
}

fn parse_version(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn key_string(k: &Key) -> String {
    serde_json::to_string(k).unwrap_or_default()
}

impl EtcdStore {
    fn resource_ops(
        &self,
        upserts: &[Resource],
        deletes: &[Key],
        unasked: &[CloudMapQuery],
    ) -> Result<Vec<TxnOp>, StoreError> {
        let n = upserts.len() + deletes.len() + unasked.len();
        if n > MAX_CHANGES {
            return Err(StoreError(format!(
                "etcd: one change may touch at most {MAX_CHANGES} resources (etcd's --max-txn-ops is {MAX_TXN_OPS} by default, two of them the version's, one more for each Cloud Map query no node asks after it); this one touches {n}: apply it in parts",
            )));
        }
        let mut ops = Vec::with_capacity(n + 2);
        for q in unasked {
            ops.push(TxnOp::delete(cloud_map_key(q)?, None));
        }
        for r in upserts {
            let v = serde_json::to_vec(r).map_err(|e| StoreError(e.to_string()))?;
            ops.push(TxnOp::put(
                format!("{RESOURCES}{}", key_string(&r.key())),
                v,
                None,
            ));
        }
        for k in deletes {
            ops.push(TxnOp::delete(format!("{RESOURCES}{}", key_string(k)), None));
        }
        Ok(ops)
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<(u64, BTreeMap<Key, Resource>), StoreError> {
        let l = self.load_all()?;
        Ok((l.version, l.resources))
    }

    fn load_all(&self) -> Result<Loaded, StoreError> {
        let d = self.load_since(None)?;
        Ok(Loaded {
            version: d.version,
            resources: d.changed,
            cloud_map: d.cloud_map,
        })
    }

    fn load_since(&self, since: Option<u64>) -> Result<Delta, StoreError> {
        // One transaction: the version, the resources (or, after `since`, every resource's
        // key and only the resources written since) and Cloud Map's answers of the same
        // revision.
        let resources = GetOptions::new().with_prefix();
        let mut ops = vec![TxnOp::get(VERSION, None)];
        match since {
            None => ops.push(TxnOp::get(RESOURCES, Some(resources))),
            Some(rev) => {
                ops.push(TxnOp::get(
                    RESOURCES,
                    Some(
                        resources
                            .clone()
                            .with_min_mod_revision(i64::try_from(rev + 1).unwrap_or(i64::MAX)),
                    ),
                ));
                ops.push(TxnOp::get(RESOURCES, Some(resources.with_keys_only())));
            }
        }
        ops.push(TxnOp::get(CLOUD_MAP, Some(GetOptions::new().with_prefix())));
        let txn = Txn::new().and_then(ops);
        let resp = self.call("loading the state", move |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })?;
        let mut out = Delta {
            revision: resp.header().and_then(|h| u64::try_from(h.revision()).ok()),
            keys: since.map(|_| Default::default()),
            cloud_map: Some(CloudMap::new()),
            ..Default::default()
        };
        let last = resp.op_responses().len().saturating_sub(1);
        for (i, op) in resp.op_responses().into_iter().enumerate() {
            let TxnOpResponse::Get(g) = op else { continue };
            let i = match i {
                0 => 0,
                _ if i == last => 3,
                n => n,
            };
            for kv in g.kvs() {
                let name = String::from_utf8_lossy(kv.key()).into_owned();
                let unreadable =
                    |e: serde_json::Error| StoreError(format!("etcd: {name:?} unreadable: {e}"));
                match i {
                    0 => {
                        out.version = parse_version(kv.value())
                            .ok_or_else(|| StoreError(format!("etcd: {VERSION} is not a number")))?
                    }
                    1 => {
                        let key: Key =
                            serde_json::from_str(&name[RESOURCES.len()..]).map_err(&unreadable)?;
                        let r: Resource =
                            serde_json::from_slice(kv.value()).map_err(&unreadable)?;
                        out.changed.insert(key, r);
                    }
                    2 => {
                        let key: Key =
                            serde_json::from_str(&name[RESOURCES.len()..]).map_err(&unreadable)?;
                        if let Some(keys) = out.keys.as_mut() {
                            keys.insert(key);
                        }
                    }
                    _ => {
                        // One unreadable answer (written by another release?) is asked again
                        // by the leader; the others stand.
                        let got = serde_json::from_str::<CloudMapQuery>(&name[CLOUD_MAP.len()..])
                            .and_then(|q| {
                                Ok((
                                    q,
                                    serde_json::from_slice::<Vec<CloudMapInstance>>(kv.value())?,
                                ))
                            });
                        match got {
                            Ok((q, instances)) => {
                                if let Some(cm) = out.cloud_map.as_mut() {
                                    cm.insert(q, instances);
                                }
                            }
                            Err(e) => {
                                tracing::warn!(key = %name, error = %e, "Cloud Map answer in etcd unreadable; left out")
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn commit(
        &self,
        version: u64,
        upserts: &[Resource],
        deletes: &[Key],
    ) -> Result<(), StoreError> {
        self.commit_dropping(version, upserts, deletes, &[], false)
    }

    fn commit_dropping(
        &self,
        version: u64,
        upserts: &[Resource],
        deletes: &[Key],
        unasked: &[CloudMapQuery],
        as_leader: bool,
    ) -> Result<(), StoreError> {
        let ops = self.resource_ops(upserts, deletes, unasked)?;
        self.commit_ops(version, ops, as_leader)
    }

    fn commit_cloud_map(
        &self,
        version: u64,
        changes: &[(CloudMapQuery, Option<Vec<CloudMapInstance>>)],
    ) -> Result<usize, StoreError> {
        // As many as one transaction holds, in order.
        let mut ops = Vec::new();
        let mut bytes = 0;
        for (q, instances) in changes.iter().take(MAX_CHANGES) {
            let key = cloud_map_key(q)?;
            let op = match instances {
                Some(i) => {
                    let v = serde_json::to_vec(i).map_err(|e| StoreError(e.to_string()))?;
                    bytes += key.len() + v.len();
                    TxnOp::put(key, v, None)
                }
                None => {
                    bytes += key.len();
                    TxnOp::delete(key, None)
                }
            };
            if bytes > MAX_REQUEST_BYTES {
                if ops.is_empty() {
                    return Err(StoreError(format!(
                        "etcd: Cloud Map's instances of {q} take {bytes} bytes, more than the {MAX_REQUEST_BYTES} one etcd request holds"
                    )));
                }
                break;
            }
            ops.push(op);
        }
        let n = ops.len();
        self.commit_ops(version, ops, true)?;
        Ok(n)
    }

    fn rollout_statuses(&self) -> Result<Vec<(Key, Vec<u8>)>, StoreError> {
        let resp = self.call("reading rollout statuses", |mut c| async move {
            c.get(ROLLOUTS, Some(GetOptions::new().with_prefix())).await
        })?;
        resp.kvs()
            .iter()
            .map(|kv| {
                let name = String::from_utf8_lossy(kv.key()).into_owned();
                let key: Key = serde_json::from_str(&name[ROLLOUTS.len()..])
                    .map_err(|e| StoreError(format!("etcd: key {name:?} unreadable: {e}")))?;
                Ok((key, kv.value().to_vec()))
            })
            .collect()
    }

    // Only the leader runs rollouts: only while it leads.
    fn save_rollout_status(&self, key: &Key, status: Option<&[u8]>) -> Result<(), StoreError> {
        let k = format!("{ROLLOUTS}{}", key_string(key));
        let (what, op) = match status {
            Some(b) => ("keeping a rollout status", TxnOp::put(k, b.to_vec(), None)),
            None => ("forgetting a rollout status", TxnOp::delete(k, None)),
        };
        let txn = Txn::new()
            .when([self.fence()?.0])
            .and_then([op])
            .or_else([TxnOp::get(LEADER, None)]);
        let resp = self.call(what, move |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })?;
        if resp.succeeded() {
            return Ok(());
        }
        let holder = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
            _ => None,
        });
        Err(not_leading(holder))
    }

    fn create_secret(&self, name: &str, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
        let k = format!("{SECRETS}{name}");
        let fresh = bytes.to_vec();
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k.clone(), fresh.clone(), None)])
            .or_else([TxnOp::get(k.clone(), None)]);
        let resp = self.call("keeping a secret", move |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })?;
        if resp.succeeded() {
            return Ok(fresh);
        }
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(g) = op {
                if let Some(kv) = g.kvs().first() {
                    return Ok(kv.value().to_vec());
                }
            }
        }
        Err(StoreError(format!("etcd: secret {k:?} vanished")))
    }

    fn save_refusal(
        &self,
        node: &str,
        type_url: &str,
        record: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let k = format!("{REFUSALS}{type_url}/{node}");
        match record {
            Some(b) => {
                let b = b.to_vec();
                self.call("keeping a refusal", move |mut c| {
                    let (k, b) = (k.clone(), b.clone());
                    async move { c.put(k, b, None).await.map(|_| ()) }
                })
            }
            None => self.call("forgetting a refusal", move |mut c| {
                let k = k.clone();
                async move { c.delete(k, None).await.map(|_| ()) }
            }),
        }
    }

    fn refusals(&self) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let r = self.call("reading the refusals", |mut c| async move {
            c.get(REFUSALS, Some(GetOptions::new().with_prefix())).await
        })?;
        Ok(r.kvs()
            .iter()
            .filter_map(|kv| {
                let k = String::from_utf8_lossy(kv.key());
                // `<type URL>/<node id>`: a type URL has one `/`, a node id several.
                let rest = k.strip_prefix(REFUSALS)?;
                let (domain, after) = rest.split_once('/')?;
                let (name, node) = after.split_once('/')?;
                Some((
                    node.to_owned(),
                    format!("{domain}/{name}"),
                    kv.value().to_vec(),
                ))
            })
            .collect())
    }

    // Asked for every bootstrap and every analysis: etcd is asked at most once per
    // [`SERVERS_KEPT`] (a failure too), and not under the lock.
    fn try_servers(&self) -> Result<Vec<ServerEntry>, StoreError> {
        if let Some((at, got)) = self
            .servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            if at.elapsed() < SERVERS_KEPT {
                return got.clone().map_err(StoreError);
            }
        }
        let got = self
            .call("listing the servers", |mut c| async move {
                c.get(SERVERS, Some(GetOptions::new().with_prefix())).await
            })
            .and_then(|r| {
                r.kvs()
                    .iter()
                    .map(|kv| {
                        serde_json::from_slice::<ServerEntry>(kv.value()).map_err(|e| {
                            StoreError(format!(
                                "etcd: {:?} unreadable (a server of another release?): {e}",
                                String::from_utf8_lossy(kv.key())
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            });
        *self.servers.lock().unwrap_or_else(|e| e.into_inner()) = Some((
            std::time::Instant::now(),
            got.as_ref().map_err(|e| e.0.clone()).cloned(),
        ));
        got
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.version.clone())
    }

    fn campaign(
        &self,
        me: &str,
        server: ServerEntry,
        ttl: Duration,
    ) -> Option<watch::Receiver<Leader>> {
        let (tx, rx) = watch::channel(Leader::default());
        let me = me.to_owned();
        let id = server.id.clone();
        let server = serde_json::to_string(&server).ok()?;
        let leading = self.leading.clone();
        let job: Job = Box::new(move |c| Box::pin(campaign(c, me, id, server, ttl, tx, leading)));
        self.jobs.send(job).ok()?;
        Some(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_and_named() {
        let a = EtcdAddress::parse("etcd://127.0.0.1:2379,etcd-1.internal:2379").unwrap();
        assert_eq!(
            a.endpoints,
            ["http://127.0.0.1:2379", "http://etcd-1.internal:2379"]
        );
        assert!(!a.tls);
        let t = EtcdAddress::parse("etcds://etcd:2379/").unwrap();
        assert_eq!(t.endpoints, ["https://etcd:2379"]);
        for (bad, says) in [
            ("redb://x", "etcd://HOST:PORT"),
            ("etcd://", "is not HOST:PORT"),
            ("etcd://h:0", "\"h:0\""),
            ("etcd://h:99999", "\"h:99999\""),
            ("etcd://h", "\"h\""),
            ("etcd://a:1,,b:2", "\"\""),
            ("etcd://bad host:1", "bad host"),
        ] {
            let e = EtcdAddress::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
