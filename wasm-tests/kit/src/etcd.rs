//! A real etcd (Debian's `etcd-server`) for tests: one member or three, on free loopback
//! ports, its data in a temporary folder; stopped when dropped.

use crate::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The etcd binary: `MAILLE_ETCD`, else `etcd` on the PATH (`make setup` installs it).
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("MAILLE_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// One member of a test cluster.
#[derive(Debug)]
pub struct Member {
    /// Its name.
    pub name: String,
    /// Its client port.
    pub client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A test etcd cluster.
#[derive(Debug)]
pub struct Etcd {
    /// The members.
    pub members: Vec<Member>,
    dir: tempfile::TempDir,
    initial_cluster: String,
}

impl Etcd {
    /// A cluster of `n` members, each answering before this returns.
    pub fn start(n: usize) -> Etcd {
        let dir = tempfile::tempdir().expect("temp dir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut e = Etcd {
            members,
            dir,
            initial_cluster,
        };
        for i in 0..n {
            e.start_member(i, "new");
        }
        for i in 0..n {
            e.wait_healthy(i);
        }
        e
    }

    fn start_member(&mut self, i: usize, state: &str) {
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name)))
            .expect("etcd log");
        let bin = etcd_bin();
        assert!(
            bin.exists(),
            "{} missing: run `make setup` (Debian's etcd-server)",
            bin.display()
        );
        let child = Command::new(bin)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", m.client_port),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", m.client_port),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer_port),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer_port),
                "--initial-cluster",
                &self.initial_cluster,
                "--initial-cluster-state",
                state,
                "--initial-cluster-token",
                "maille-test",
                // Quick elections on loopback.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                // History kept an hour, as a deployment should (every change adds to it).
                "--auto-compaction-retention",
                "1",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.members[i].child = Some(child);
    }

    fn wait_healthy(&self, i: usize) {
        let url = format!("http://127.0.0.1:{}/health", self.members[i].client_port);
        let deadline = Instant::now() + Duration::from_secs(30);
        let agent = crate::agent();
        loop {
            if let Ok(mut r) = agent.get(&url).call() {
                if r.body_mut()
                    .read_to_string()
                    .is_ok_and(|b| b.contains("\"health\":\"true\""))
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd {} not healthy within 30 s; its log:\n{}",
                self.members[i].name,
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Member `i`'s log.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .unwrap_or_default()
    }

    /// The `--store` value naming every member.
    pub fn store_url(&self) -> String {
        format!(
            "etcd://{}",
            self.members
                .iter()
                .map(|m| format!("127.0.0.1:{}", m.client_port))
                .collect::<Vec<_>>()
                .join(",")
        )
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.start_member(i, "existing");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
