use maille_filter_config::breaker::BreakerConfig;

/// Buckets of the sliding window: the window moves in steps of `window / BUCKETS`.
pub const BUCKETS: usize = 10;

/// The state of one cluster's circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Requests flow; outcomes are counted.
    Closed = 0,
    /// Requests are answered locally.
    Open = 1,
    /// A few probe requests go through; their outcomes decide.
    HalfOpen = 2,
}

impl State {
    /// Lowercase name, for logs and signals.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    fn from_u8(v: u8) -> Option<State> {
        Some(match v {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            _ => return None,
        })
    }
}

/// One bucket of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bucket {
    /// Start of the bucket, ms on the host clock; 0 for an unused bucket.
    pub start_ms: u64,
    /// Requests whose outcome fell in it.
    pub total: u32,
    /// Of those, failures.
    pub failures: u32,
}

/// Everything about one cluster's circuit, as kept in shared data (one record per cluster,
/// updated with compare-and-swap so that Envoy's workers lose no update).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Current state.
    pub state: State,
    /// When the current state began (ms).
    pub since_ms: u64,
    /// Half-open: probes let through so far.
    pub probes_admitted: u32,
    /// Half-open: probes that succeeded so far.
    pub probe_successes: u32,
    /// Failures in a row (closed).
    pub consecutive: u32,
    /// Count of state changes so far: orders signals from different workers.
    pub generation: u32,
    /// Which creation of the record this is: the CAS value of the empty record the first
    /// write of counts replaced (0 until then). Shared data has no create-if-absent, so a
    /// worker that found the key missing may create it again after others wrote counts;
    /// the epoch changes then, and each writer puts back what it had merged.
    pub epoch: u32,
    /// The sliding window.
    pub buckets: [Bucket; BUCKETS],
}

/// Bytes of an encoded [`Record`].
pub const RECORD_LEN: usize = 1 + 8 + 4 + 4 + 4 + 4 + 4 + BUCKETS * 16;

impl Default for Record {
    fn default() -> Self {
        Record {
            state: State::Closed,
            since_ms: 0,
            probes_admitted: 0,
            probe_successes: 0,
            consecutive: 0,
            generation: 0,
            epoch: 0,
            buckets: [Bucket::default(); BUCKETS],
        }
    }
}

impl Record {
    /// Fixed little-endian layout.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[0] = self.state as u8;
        out[1..9].copy_from_slice(&self.since_ms.to_le_bytes());
        out[9..13].copy_from_slice(&self.probes_admitted.to_le_bytes());
        out[13..17].copy_from_slice(&self.probe_successes.to_le_bytes());
        out[17..21].copy_from_slice(&self.consecutive.to_le_bytes());
        out[21..25].copy_from_slice(&self.generation.to_le_bytes());
        out[25..29].copy_from_slice(&self.epoch.to_le_bytes());
        for (i, b) in self.buckets.iter().enumerate() {
            let at = 29 + i * 16;
            out[at..at + 8].copy_from_slice(&b.start_ms.to_le_bytes());
            out[at + 8..at + 12].copy_from_slice(&b.total.to_le_bytes());
            out[at + 12..at + 16].copy_from_slice(&b.failures.to_le_bytes());
        }
        out
    }

    /// The inverse of [`Record::encode`]; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        if bytes.len() != RECORD_LEN {
            return None;
        }
        let u64_at =
            |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        let u32_at =
            |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
        let mut buckets = [Bucket::default(); BUCKETS];
        for (i, b) in buckets.iter_mut().enumerate() {
            let at = 29 + i * 16;
            *b = Bucket {
                start_ms: u64_at(at),
                total: u32_at(at + 8),
                failures: u32_at(at + 12),
            };
        }
        Some(Record {
            state: State::from_u8(bytes[0])?,
            since_ms: u64_at(1),
            probes_admitted: u32_at(9),
            probe_successes: u32_at(13),
            consecutive: u32_at(17),
            generation: u32_at(21),
            epoch: u32_at(25),
            buckets,
        })
    }

    /// Requests and failures in the window ending at `now_ms`.
    pub fn window(&self, now_ms: u64, window_ms: u64) -> (u32, u32) {
        self.buckets
            .iter()
            .filter(|b| b.total > 0 && b.start_ms + window_ms > now_ms)
            .fold((0, 0), |(t, f), b| (t + b.total, f + b.failures))
    }
}

/// A change of state, with what caused it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
    /// When (ms on the host clock).
    pub at_ms: u64,
    /// Requests in the window at the change.
    pub requests: u32,
    /// Failures in the window at the change.
    pub failures: u32,
    /// Failures in a row at the change.
    pub consecutive: u32,
    /// The record's generation after the change (1 for the first change, and so on).
    pub generation: u32,
}

impl Transition {
    /// Failures / requests in the window (0 with no requests).
    pub fn failure_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            f64::from(self.failures) / f64::from(self.requests)
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it upstream.
    Allow,
    /// Send it upstream as a half-open probe: its outcome decides the circuit.
    Probe,
    /// Answer locally; the circuit may let requests through again in this many ms.
    Reject {
        /// Milliseconds until the circuit lets probes through.
        retry_after_ms: u64,
    },
}

/// The response of one upstream request, as the breaker judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// HTTP status.
    pub status: u32,
    /// The upstream reset the stream or could not be reached.
    pub reset: bool,
    /// Time to response headers, ms.
    pub latency_ms: u64,
}

/// The breaker's rules, from its configuration.
#[derive(Debug, Clone)]
pub struct Circuit {
    config: BreakerConfig,
    bucket_ms: u64,
}

impl Circuit {
    /// Rules from a validated configuration.
    pub fn new(config: BreakerConfig) -> Circuit {
        let bucket_ms = (config.window_millis / BUCKETS as u64).max(1);
        Circuit { config, bucket_ms }
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The start of the window bucket that `now_ms` falls in.
    pub fn bucket_start(&self, now_ms: u64) -> u64 {
        now_ms - now_ms % self.bucket_ms
    }

    /// Whether the window ending at `now_ms` holds no failure: then successes alone cannot
    /// trip the circuit.
    pub fn window_is_clean(&self, rec: &Record, now_ms: u64) -> bool {
        rec.window(now_ms, self.config.window_millis).1 == 0
    }

    /// Whether an outcome counts as a failure.
    pub fn is_failure(&self, o: &Outcome) -> bool {
        let f = &self.config.failure_on;
        (f.server_errors && (500..600).contains(&o.status))
            || (f.gateway_errors && matches!(o.status, 502..=504))
            || (f.resets && o.reset)
            || f.latency_millis.is_some_and(|ms| o.latency_ms > ms)
    }

    /// Decides a request. May change the record (open → half-open, probe counting): the
    /// caller writes it back with compare-and-swap when `changed` is true.
    pub fn admit(&self, rec: &mut Record, now_ms: u64) -> (Admission, bool, Option<Transition>) {
        let open_ms = self.config.open_millis;
        match rec.state {
            State::Closed => (Admission::Allow, false, None),
            State::Open => {
                let until = rec.since_ms + open_ms;
                if now_ms < until {
                    return (
                        Admission::Reject {
                            retry_after_ms: until - now_ms,
                        },
                        false,
                        None,
                    );
                }
                let t = self.transition(rec, State::HalfOpen, now_ms);
                rec.probes_admitted = 1;
                (Admission::Probe, true, Some(t))
            }
            State::HalfOpen => {
                if rec.probes_admitted < self.config.half_open_probes {
                    rec.probes_admitted += 1;
                    (Admission::Probe, true, None)
                } else if now_ms >= rec.since_ms + open_ms {
                    // Probes that never came back (reset streams) must not wedge the
                    // circuit: after another open interval, probe afresh.
                    rec.since_ms = now_ms;
                    rec.probes_admitted = 1;
                    rec.probe_successes = 0;
                    (Admission::Probe, true, None)
                } else {
                    let retry = rec.since_ms + open_ms - now_ms;
                    (
                        Admission::Reject {
                            retry_after_ms: retry,
                        },
                        false,
                        None,
                    )
                }
            }
        }
    }

    /// Counts an outcome; returns the state change it causes, if any. `probe` says whether
    /// the request was admitted as a half-open probe. Outcomes of requests admitted before
    /// the circuit opened are not counted once it is open.
    pub fn record(
        &self,
        rec: &mut Record,
        now_ms: u64,
        failed: bool,
        probe: bool,
    ) -> Option<Transition> {
        match rec.state {
            State::Closed => {
                self.count(rec, now_ms, failed);
                rec.consecutive = if failed {
                    rec.consecutive.saturating_add(1)
                } else {
                    0
                };
                let (total, failures) = rec.window(now_ms, self.config.window_millis);
                let by_streak = self.config.consecutive_failures > 0
                    && rec.consecutive >= self.config.consecutive_failures;
                let by_ratio = total >= self.config.min_requests
                    && f64::from(failures) > self.config.failure_ratio * f64::from(total);
                (by_streak || by_ratio).then(|| self.transition(rec, State::Open, now_ms))
            }
            State::HalfOpen if probe => {
                if failed {
                    Some(self.transition(rec, State::Open, now_ms))
                } else {
                    rec.probe_successes += 1;
                    (rec.probe_successes >= self.config.half_open_probes)
                        .then(|| self.transition(rec, State::Closed, now_ms))
                }
            }
            State::HalfOpen | State::Open => None,
        }
    }

    /// Counts `n` successes of requests that were not probes (a worker's batch): they go
    /// into the window and end any run of failures. A batch can trip the circuit too: it may
    /// bring the window up to the minimum of requests while the ratio is above the limit.
    pub fn record_successes(&self, rec: &mut Record, now_ms: u64, n: u32) -> Option<Transition> {
        if n == 0 || rec.state != State::Closed {
            return None;
        }
        self.count_many(rec, now_ms, n, 0);
        rec.consecutive = 0;
        // Successes alone trip nothing: the healthy case needs no window sum.
        if rec.buckets.iter().all(|b| b.failures == 0) {
            return None;
        }
        let (total, failures) = rec.window(now_ms, self.config.window_millis);
        (total >= self.config.min_requests
            && f64::from(failures) > self.config.failure_ratio * f64::from(total))
        .then(|| self.transition(rec, State::Open, now_ms))
    }

    fn count(&self, rec: &mut Record, now_ms: u64, failed: bool) {
        self.count_many(rec, now_ms, 1, u32::from(failed));
    }

    fn count_many(&self, rec: &mut Record, now_ms: u64, total: u32, failures: u32) {
        let start = self.bucket_start(now_ms);
        let i = match rec
            .buckets
            .iter()
            .position(|b| b.start_ms == start && b.total > 0)
        {
            Some(i) => i,
            None => {
                // Reuse the oldest bucket.
                let (i, _) = rec
                    .buckets
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, b)| if b.total == 0 { 0 } else { b.start_ms + 1 })
                    .unwrap_or((0, &Bucket::default()));
                rec.buckets[i] = Bucket {
                    start_ms: start,
                    total: 0,
                    failures: 0,
                };
                i
            }
        };
        rec.buckets[i].total += total;
        rec.buckets[i].failures += failures;
    }

    fn transition(&self, rec: &mut Record, to: State, now_ms: u64) -> Transition {
        let (requests, failures) = rec.window(now_ms, self.config.window_millis);
        rec.generation = rec.generation.wrapping_add(1);
        let t = Transition {
            from: rec.state,
            to,
            at_ms: now_ms,
            requests,
            failures,
            consecutive: rec.consecutive,
            generation: rec.generation,
        };
        rec.state = to;
        rec.since_ms = now_ms;
        rec.probes_admitted = 0;
        rec.probe_successes = 0;
        if to != State::Open {
            // Closing or probing starts a fresh count.
            rec.consecutive = 0;
            rec.buckets = [Bucket::default(); BUCKETS];
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit(json: &str) -> Circuit {
        Circuit::new(BreakerConfig::from_json(json.as_bytes()).unwrap())
    }

    fn drive(c: &Circuit, rec: &mut Record, now: u64, failed: bool) -> Option<Transition> {
        let (a, _, t) = c.admit(rec, now);
        assert!(t.is_none());
        assert_eq!(a, Admission::Allow);
        c.record(rec, now, failed, false)
    }

    #[test]
    fn record_round_trips() {
        let mut r = Record {
            state: State::HalfOpen,
            since_ms: 123_456,
            probes_admitted: 2,
            ..Record::default()
        };
        r.buckets[3] = Bucket {
            start_ms: 9,
            total: 7,
            failures: 4,
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode(&[0; 5]), None);
        let mut bad = Record::default().encode();
        bad[0] = 9;
        assert_eq!(Record::decode(&bad), None);
    }

    #[test]
    fn trips_on_ratio_with_enough_requests_only() {
        let c = circuit(r#"{"minRequests": 10, "failureRatio": 0.5, "consecutiveFailures": 0}"#);
        let mut r = Record::default();
        // 9 requests, all failing: under the minimum, no trip.
        for i in 0..9 {
            assert_eq!(drive(&c, &mut r, 1_000 + i, true), None);
        }
        // The tenth makes 10 of 10.
        let t = drive(&c, &mut r, 1_010, true).expect("trip");
        assert_eq!(
            (t.from, t.to, t.requests, t.failures),
            (State::Closed, State::Open, 10, 10)
        );
        assert_eq!(r.state, State::Open);

        // Exactly at the ratio does not trip; above it does.
        let mut r = Record::default();
        for i in 0..10 {
            assert_eq!(
                drive(&c, &mut r, 1_000 + i, i % 2 == 0),
                None,
                "5 of 10 is not above 0.5"
            );
        }
        assert!(drive(&c, &mut r, 1_020, true).is_some(), "6 of 11");
    }

    #[test]
    fn trips_on_consecutive_failures() {
        let c = circuit(r#"{"minRequests": 1000, "consecutiveFailures": 3}"#);
        let mut r = Record::default();
        assert_eq!(drive(&c, &mut r, 1, true), None);
        assert_eq!(drive(&c, &mut r, 2, true), None);
        assert_eq!(
            drive(&c, &mut r, 3, false),
            None,
            "a success breaks the streak"
        );
        assert_eq!(drive(&c, &mut r, 4, true), None);
        assert_eq!(drive(&c, &mut r, 5, true), None);
        let t = drive(&c, &mut r, 6, true).expect("3 in a row");
        assert_eq!(t.consecutive, 3);
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let c = circuit(r#"{"windowMillis": 1000, "minRequests": 4, "consecutiveFailures": 0}"#);
        let mut r = Record::default();
        for i in 0..3 {
            drive(&c, &mut r, 10_000 + i, true);
        }
        // 1.5 s later the three failures are out of the window: 1 of 4 would not trip anyway,
        // but 4 fresh failures do, counting only them.
        for i in 0..3 {
            assert_eq!(drive(&c, &mut r, 11_500 + i, true), None);
        }
        let t = drive(&c, &mut r, 11_510, true).expect("trip");
        assert_eq!((t.requests, t.failures), (4, 4));
    }

    #[test]
    fn open_rejects_then_probes_then_closes() {
        let c = circuit(
            r#"{"minRequests": 1, "openMillis": 5000, "halfOpenProbes": 2, "consecutiveFailures": 0}"#,
        );
        let mut r = Record::default();
        drive(&c, &mut r, 100, true).expect("trip");
        assert_eq!(
            c.admit(&mut r, 2_100).0,
            Admission::Reject {
                retry_after_ms: 3_000
            }
        );
        // After the open interval: half-open, two probes, then rejections.
        let (a, changed, t) = c.admit(&mut r, 5_100);
        assert_eq!((a, changed), (Admission::Probe, true));
        assert_eq!(
            t.map(|t| (t.from, t.to)),
            Some((State::Open, State::HalfOpen))
        );
        assert_eq!(c.admit(&mut r, 5_101).0, Admission::Probe);
        assert!(matches!(c.admit(&mut r, 5_102).0, Admission::Reject { .. }));
        // A non-probe outcome (admitted before the trip) changes nothing.
        assert_eq!(c.record(&mut r, 5_103, false, false), None);
        assert_eq!(c.record(&mut r, 5_200, false, true), None);
        let t = c.record(&mut r, 5_300, false, true).expect("closed");
        assert_eq!(
            (t.from, t.to, t.generation),
            (State::HalfOpen, State::Closed, 3)
        );
        assert_eq!(
            r.window(5_300, 10_000),
            (0, 0),
            "closing starts a fresh count"
        );
    }

    #[test]
    fn a_failed_probe_reopens_and_lost_probes_do_not_wedge() {
        let c = circuit(
            r#"{"minRequests": 1, "openMillis": 1000, "halfOpenProbes": 1, "consecutiveFailures": 0}"#,
        );
        let mut r = Record::default();
        drive(&c, &mut r, 0, true).expect("trip");
        assert_eq!(c.admit(&mut r, 1_000).0, Admission::Probe);
        let t = c.record(&mut r, 1_050, true, true).expect("reopen");
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Open));
        assert_eq!(
            c.admit(&mut r, 1_500).0,
            Admission::Reject {
                retry_after_ms: 550
            }
        );
        // Half-open again; the probe never returns; after another interval a new probe goes.
        assert_eq!(c.admit(&mut r, 2_050).0, Admission::Probe);
        assert!(matches!(c.admit(&mut r, 2_500).0, Admission::Reject { .. }));
        assert_eq!(c.admit(&mut r, 3_050).0, Admission::Probe);
    }

    #[test]
    fn batched_successes_count_end_streaks_and_can_trip() {
        let c = circuit(r#"{"minRequests": 10, "failureRatio": 0.5, "consecutiveFailures": 3}"#);
        let mut r = Record::default();
        for i in 0..2 {
            assert_eq!(drive(&c, &mut r, 100 + i, true), None);
        }
        assert_eq!(c.record_successes(&mut r, 110, 1), None);
        assert_eq!(r.consecutive, 0, "a success ends the run of failures");
        assert_eq!(r.window(110, 10_000), (3, 2));
        // 6 failures in a row would trip by streak; keep them at 2 with successes between.
        for i in 0..4 {
            drive(&c, &mut r, 120 + i, true);
            if i % 2 == 1 {
                c.record_successes(&mut r, 125, 1);
            }
        }
        assert_eq!(r.state, State::Closed);
        assert_eq!(r.window(130, 10_000), (9, 6));
        // One more success brings the window to the minimum with 6 of 10 failing: trips.
        let t = c.record_successes(&mut r, 130, 1).expect("trip");
        assert_eq!((t.requests, t.failures), (10, 6));
        assert_eq!(
            c.record_successes(&mut r, 131, 5),
            None,
            "ignored while open"
        );
    }

    #[test]
    fn what_counts_as_failure() {
        let c = circuit(
            r#"{"failureOn": {"serverErrors": false, "gatewayErrors": true, "resets": true, "latencyMillis": 200}}"#,
        );
        let o = |status, reset, latency_ms| Outcome {
            status,
            reset,
            latency_ms,
        };
        assert!(!c.is_failure(&o(500, false, 10)), "5xx off");
        assert!(c.is_failure(&o(503, false, 10)));
        assert!(c.is_failure(&o(200, true, 10)));
        assert!(c.is_failure(&o(200, false, 201)));
        assert!(!c.is_failure(&o(404, false, 200)));
    }
}
