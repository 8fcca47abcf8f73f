//! The delivery loop against fake destinations (time paused): retries without duplicates,
//! one bad item isolated whether the destination leaves it unprocessed or refuses the call,
//! batches within limits, calls in flight up to the limit, back-pressure, and stopping.

use super::*;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;

/// An item: a number, of `bytes` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct N(u64, usize);

impl Item for N {
    fn bytes(&self) -> usize {
        self.1
    }
    fn describe(&self) -> String {
        format!("n{}", self.0)
    }
}

fn items(range: std::ops::Range<u64>) -> Vec<N> {
    range.map(|i| N(i, 100)).collect()
}

type Answer = Result<Vec<(u64, &'static str, bool)>, SendError>;
type Answering = Box<dyn Fn(usize, &[N]) -> Answer + Send + Sync>;

/// Answers each call with `answer(call number, items)` after `delay`; stores what it took.
struct Fake {
    answer: Answering,
    delay: Duration,
    calls: AtomicUsize,
    now: AtomicUsize,
    most: AtomicUsize,
    sizes: Mutex<Vec<(usize, usize)>>,
    stored: Mutex<Vec<N>>,
    sent: Mutex<Vec<u64>>,
}

#[derive(Clone)]
struct Dest(Arc<Fake>);

impl Dest {
    fn new(
        delay: Duration,
        answer: impl Fn(usize, &[N]) -> Answer + Send + Sync + 'static,
    ) -> Dest {
        Dest(Arc::new(Fake {
            answer: Box::new(answer),
            delay,
            calls: AtomicUsize::new(0),
            now: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            sizes: Mutex::default(),
            stored: Mutex::default(),
            sent: Mutex::default(),
        }))
    }
    fn stored(&self) -> Vec<N> {
        let mut s = self.0.stored.lock().unwrap().clone();
        s.sort();
        s
    }
    fn times_sent(&self, n: u64) -> usize {
        self.0
            .sent
            .lock()
            .unwrap()
            .iter()
            .filter(|x| **x == n)
            .count()
    }
}

impl Destination<N> for Dest {
    const NAME: &'static str = "Fake";

    async fn send(&self, batch: &[Entry<N>]) -> Result<Vec<Rejected>, SendError> {
        let f = &self.0;
        let call = f.calls.fetch_add(1, Ordering::SeqCst);
        let now = f.now.fetch_add(1, Ordering::SeqCst) + 1;
        f.most.fetch_max(now, Ordering::SeqCst);
        let its: Vec<N> = batch.iter().map(|e| e.item).collect();
        f.sizes
            .lock()
            .unwrap()
            .push((its.len(), its.iter().map(|n| n.1).sum()));
        f.sent.lock().unwrap().extend(its.iter().map(|n| n.0));
        if !f.delay.is_zero() {
            tokio::time::sleep(f.delay).await;
        }
        f.now.fetch_sub(1, Ordering::SeqCst);
        let left = (f.answer)(call, &its)?;
        let mut rejected = Vec::new();
        for (index, n) in its.iter().enumerate() {
            match left.iter().find(|(id, ..)| *id == n.0) {
                Some((_, reason, retryable)) => rejected.push(Rejected {
                    index,
                    reason: (*reason).to_owned(),
                    sends: Rejected::sends_for(*retryable),
                }),
                None => f.stored.lock().unwrap().push(*n),
            }
        }
        Ok(rejected)
    }
}

const LIMITS: Limits = Limits {
    max_items: 50,
    max_bytes: 1_000_000,
    in_flight: 4,
    linger: Duration::from_millis(200),
    max_span_ms: i64::MAX,
};

fn queue(capacity: usize) -> Queue<N> {
    Queue::new(
        "test",
        Capacity {
            items: capacity,
            bytes: usize::MAX,
        },
        None,
        Vec::new(),
    )
}

/// Offers, closes, and waits for the exporter to end.
async fn deliver_all(q: &Queue<N>, dest: Dest, limits: Limits, all: Vec<N>) {
    let handle = q.export(dest, limits);
    q.offer(all).unwrap();
    q.close();
    handle.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn throttled_calls_and_unprocessed_items_are_sent_again_without_duplicates() {
    let seen = Mutex::new(BTreeSet::new());
    let dest = Dest::new(Duration::ZERO, move |call, its| {
        if call < 3 {
            return Err(SendError::Retryable("HTTP 429 ThrottledException".into()));
        }
        // Items ending in 0 are throttled the first time they come.
        let mut seen = seen.lock().unwrap();
        Ok(its
            .iter()
            .filter(|n| n.0 % 10 == 0 && seen.insert(n.0))
            .map(|n| (n.0, "unprocessed: ThrottledException", true))
            .collect())
    });
    let q = queue(1000);
    deliver_all(&q, dest.clone(), LIMITS, items(0..120)).await;
    assert_eq!(dest.stored(), items(0..120), "every item stored once");
    assert_eq!(q.stats().exported(), 120);
    assert!(q.stats().retried() >= 3 + 12);
    assert!(q.stats().dropped().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_item_refused_for_good_is_dropped_after_a_few_attempts_and_holds_back_nothing() {
    let dest = Dest::new(Duration::ZERO, |_, its| {
        Ok(its
            .iter()
            .filter(|n| n.0 == 7)
            .map(|n| (n.0, "unprocessed: InvalidSegment", false))
            .collect())
    });
    let q = queue(10_000);
    deliver_all(&q, dest.clone(), LIMITS, items(0..2000)).await;
    let mut want = items(0..2000);
    want.retain(|n| n.0 != 7);
    assert_eq!(dest.stored(), want);
    assert_eq!(dest.times_sent(7), PERMANENT_ATTEMPTS as usize);
    let stats = q.stats();
    assert_eq!(stats.exported(), 1999);
    assert_eq!(
        stats.dropped(),
        BTreeMap::from([("unprocessed: InvalidSegment".to_owned(), 1)])
    );
    // 40 calls, and one more for each resend of the bad item.
    assert_eq!(
        dest.0.calls.load(Ordering::SeqCst),
        40 + PERMANENT_ATTEMPTS as usize - 1
    );
}

#[tokio::test(start_paused = true)]
async fn a_code_that_might_change_is_tried_up_to_its_limit_while_the_rest_goes_on() {
    let dest = Dest::new(Duration::ZERO, |_, its| {
        Ok(its
            .iter()
            .filter(|n| n.0 == 3)
            .map(|n| (n.0, "unprocessed: InternalFailure", true))
            .collect())
    });
    let q = queue(10_000);
    let handle = q.export(dest.clone(), LIMITS);
    q.offer(items(0..100)).unwrap();
    // The others are delivered at once, not after the bad item's retries.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(dest.stored().len(), 99);
    q.close();
    handle.await.unwrap();
    assert_eq!(dest.times_sent(3), RETRYABLE_ATTEMPTS as usize);
    assert_eq!(q.stats().dropped()["unprocessed: InternalFailure"], 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_call_is_split_until_the_bad_items_are_alone() {
    let dest = Dest::new(Duration::ZERO, |_, its| {
        if its.iter().any(|n| n.0 == 17 || n.0 == 33) {
            Err(SendError::Refused(
                "HTTP 400 InvalidRequestException: bad".into(),
            ))
        } else {
            Ok(Vec::new())
        }
    });
    let q = queue(1000);
    deliver_all(&q, dest.clone(), LIMITS, items(0..50)).await;
    let mut want = items(0..50);
    want.retain(|n| n.0 != 17 && n.0 != 33);
    assert_eq!(dest.stored(), want);
    assert_eq!(
        q.stats().dropped(),
        BTreeMap::from([(
            "refused by Fake: HTTP 400 InvalidRequestException: bad".to_owned(),
            2
        )])
    );
    assert_eq!(q.stats().exported(), 48);
    // Halving finds each bad item in about log2(50) steps.
    let calls = dest.0.calls.load(Ordering::SeqCst);
    assert!(calls <= 25, "{calls} calls");
}

#[tokio::test(start_paused = true)]
async fn batches_keep_within_the_items_and_bytes_of_a_call() {
    let dest = Dest::new(Duration::ZERO, |_, _| Ok(Vec::new()));
    let q = queue(10_000);
    let all: Vec<N> = (0..3000)
        .map(|i| N(i, 1 + (i as usize * 7919) % 5000))
        .collect();
    let limits = Limits {
        max_items: 1000,
        max_bytes: 100_000,
        ..LIMITS
    };
    deliver_all(&q, dest.clone(), limits, all.clone()).await;
    assert_eq!(dest.stored(), all);
    for (n, bytes) in dest.0.sizes.lock().unwrap().iter() {
        assert!(*n <= 1000 && *bytes <= 100_000, "{n} items, {bytes} bytes");
    }
}

#[tokio::test(start_paused = true)]
async fn calls_go_in_flight_up_to_the_limit_and_fewer_while_throttled() {
    let dest = Dest::new(Duration::from_millis(100), |_, _| Ok(Vec::new()));
    let q = queue(10_000);
    let limits = Limits {
        in_flight: 8,
        ..LIMITS
    };
    deliver_all(&q, dest.clone(), limits, items(0..2000)).await;
    assert_eq!(dest.0.most.load(Ordering::SeqCst), 8);
    assert_eq!(dest.stored().len(), 2000);

    // Throttled: every call fails twice before it passes; the loop backs off to fewer calls.
    let tries = Mutex::new(std::collections::HashMap::<u64, u32>::new());
    let dest = Dest::new(Duration::from_millis(100), move |_, its| {
        let mut t = tries.lock().unwrap();
        let n = t.entry(its[0].0).or_default();
        *n += 1;
        if *n <= 2 {
            Err(SendError::Retryable("HTTP 429".into()))
        } else {
            Ok(Vec::new())
        }
    });
    let q = queue(10_000);
    let handle = q.export(dest.clone(), limits);
    q.offer(items(0..400)).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The first eight calls failed: no new one starts while they back off.
    assert_eq!(dest.0.calls.load(Ordering::SeqCst), 8);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(q.shared.lock().allowed, 1);
    q.close();
    handle.await.unwrap();
    assert_eq!(dest.stored().len(), 400);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_the_whole_request_and_counts_what_is_in_flight() {
    // A destination that never answers keeps everything held.
    let dest = Dest::new(Duration::from_secs(3600), |_, _| Ok(Vec::new()));
    let q = queue(100);
    let _handle = q.export(dest, LIMITS);
    q.offer(items(0..60)).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await; // a batch of 50 goes in flight
    q.offer(items(60..100)).unwrap();
    let e = q.offer(items(100..101)).unwrap_err();
    assert!(
        matches!(
            e,
            Refusal::Full {
                held: 100,
                capacity: 100,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("retry later"), "{e}");
    assert_eq!(q.stats().to_json()["rejectedQueueFull"], 1);
    // The byte bound holds too.
    let q = Queue::new(
        "test",
        Capacity {
            items: 1000,
            bytes: 1000,
        },
        None,
        Vec::new(),
    );
    q.offer(vec![N(1, 600)]).unwrap();
    assert!(matches!(
        q.offer(vec![N(2, 600)]),
        Err(Refusal::Full { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn abandoning_cancels_calls_and_counts_what_was_held() {
    let dest = Dest::new(Duration::from_secs(3600), |_, _| Ok(Vec::new()));
    let q = queue(1000);
    let handle = q.export(dest, LIMITS);
    q.offer(items(0..300)).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    q.close();
    assert!(matches!(q.offer(items(0..1)), Err(Refusal::Closed)));
    assert_eq!(q.abandon(), 300);
    handle.await.unwrap();
    assert_eq!(q.stats().undelivered_at_exit(), 300);
    assert_eq!(q.stats().exported(), 0);
}

#[derive(Debug, Default)]
struct Log {
    appended: Mutex<Vec<u64>>,
    settled: Mutex<Vec<u64>>,
}

impl Journal<N> for Log {
    fn append(&self, items: &[N]) -> Result<(), crate::spool::SpoolError> {
        self.appended
            .lock()
            .unwrap()
            .extend(items.iter().map(|n| n.0));
        Ok(())
    }
    fn settled(&self, items: &[&N]) {
        self.settled
            .lock()
            .unwrap()
            .extend(items.iter().map(|n| n.0));
    }
}

#[tokio::test(start_paused = true)]
async fn the_journal_hears_of_items_delivered_and_given_up_on() {
    let log = Arc::new(Log::default());
    let q = Queue::new(
        "test",
        Capacity {
            items: 1000,
            bytes: usize::MAX,
        },
        Some(log.clone() as Arc<dyn Journal<N>>),
        vec![N(1000, 10)],
    );
    let dest = Dest::new(Duration::ZERO, |_, its| {
        if its.iter().any(|n| n.0 == 5) {
            return Err(SendError::Refused("bad".into()));
        }
        Ok(its
            .iter()
            .filter(|n| n.0 == 9)
            .map(|n| (n.0, "unprocessed: MissingParam", false))
            .collect())
    });
    deliver_all(&q, dest.clone(), LIMITS, items(0..20)).await;
    assert_eq!(*log.appended.lock().unwrap(), (0..20).collect::<Vec<_>>());
    let mut settled = log.settled.lock().unwrap().clone();
    settled.sort();
    let mut want: Vec<u64> = (0..20).collect();
    want.push(1000);
    assert_eq!(
        settled, want,
        "delivered, refused and given up on: all settled once"
    );
    assert_eq!(dest.stored().len(), 19 - 1 + 1);
}

/// A log event: a number, its stream and its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ev(u64, u64, i64);

impl Item for Ev {
    fn bytes(&self) -> usize {
        100
    }
    fn describe(&self) -> String {
        format!("ev{}", self.0)
    }
    fn same_call(&self, other: &Self) -> bool {
        self.1 == other.1
    }
    fn time_ms(&self) -> i64 {
        self.2
    }
}

#[test]
fn a_call_holds_one_partition_within_the_time_span_and_the_others_keep_their_places() {
    let entry = |e: Ev| Entry {
        item: e,
        attempts: 0,
        since: Instant::now(),
    };
    let limits = Limits {
        max_items: 3,
        max_span_ms: 1_000,
        ..LIMITS
    };
    let mut ready: VecDeque<Entry<Ev>> = [
        Ev(1, 7, 5_000),
        Ev(2, 8, 5_000),
        Ev(3, 7, 9_000), // too far from the first
        Ev(4, 7, 4_100),
        Ev(5, 7, 5_900),
        Ev(6, 7, 4_500),
        Ev(8, 7, 4_600), // the call is full
        Ev(7, 8, 5_200),
    ]
    .into_iter()
    .map(entry)
    .collect();
    let ids = |b: &[Entry<Ev>]| b.iter().map(|e| e.item.0).collect::<Vec<_>>();
    // 4,100..5,900 spans 1,800 ms: 5 does not fit beside 4.
    assert_eq!(ids(&take_batch(&mut ready, &limits)), [1, 4, 6]);
    let left: Vec<u64> = ready.iter().map(|e| e.item.0).collect();
    assert_eq!(left, [2, 3, 5, 8, 7]);
    assert_eq!(ids(&take_batch(&mut ready, &limits)), [2, 7]);
    assert_eq!(ids(&take_batch(&mut ready, &limits)), [3]);
    assert_eq!(ids(&take_batch(&mut ready, &limits)), [5]);
    assert_eq!(ids(&take_batch(&mut ready, &limits)), [8]);
    assert!(take_batch(&mut ready, &limits).is_empty());
}

#[test]
fn a_batch_stops_at_its_byte_limit() {
    let mut ready: VecDeque<Entry<N>> = (0..10)
        .map(|i| Entry {
            item: N(i, 400),
            attempts: 0,
            since: Instant::now(),
        })
        .collect();
    let limits = Limits {
        max_bytes: 1_000,
        ..LIMITS
    };
    assert_eq!(take_batch(&mut ready, &limits).len(), 2);
    assert_eq!(ready.len(), 8);
}
