//! The breaker signals received: the newest kept, bounded in count and in bytes.

use maille_api::BreakerSignal;
use std::collections::VecDeque;
use std::sync::Mutex;

/// Most signals kept.
pub const MAX_SIGNALS: usize = 1000;
/// Most bytes of signals kept (their JSON size).
pub const MAX_SIGNAL_BYTES_KEPT: usize = 1024 * 1024;

/// The newest signals, oldest first.
#[derive(Debug, Default)]
pub struct Signals {
    kept: Mutex<(VecDeque<(BreakerSignal, usize)>, usize)>,
}

impl Signals {
    /// Keeps `signal`, whose body was `size` bytes, dropping the oldest past the bounds.
    pub fn record(&self, signal: BreakerSignal, size: usize) {
        let mut g = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let (q, bytes) = &mut *g;
        q.push_back((signal, size));
        *bytes += size;
        while q.len() > MAX_SIGNALS || *bytes > MAX_SIGNAL_BYTES_KEPT {
            match q.pop_front() {
                Some((_, n)) => *bytes -= n,
                None => break,
            }
        }
    }

    /// The kept signals, oldest first.
    pub fn list(&self) -> Vec<BreakerSignal> {
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .iter()
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// How many are kept, and their bytes.
    pub fn size(&self) -> (usize, usize) {
        let g = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        (g.0.len(), g.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maille_api::CircuitState;

    fn signal(cluster: String) -> BreakerSignal {
        BreakerSignal {
            cluster,
            from: CircuitState::Closed,
            to: CircuitState::Open,
            generation: 1,
            failure_ratio: 0.5,
            requests: 10,
            failures: 5,
            consecutive_failures: 5,
            at_millis: 1,
        }
    }

    #[test]
    fn signals_are_bounded_in_bytes_and_count() {
        let s = Signals::default();
        for i in 0..5000 {
            s.record(signal(format!("c{i}")), 100);
        }
        assert_eq!(s.size(), (MAX_SIGNALS, MAX_SIGNALS * 100));
        assert_eq!(s.list().last().unwrap().cluster, "c4999");
        // Large signals: the byte bound holds before the count bound.
        for i in 0..1000 {
            s.record(signal(format!("big{i}")), 4096);
        }
        let (n, bytes) = s.size();
        assert!(bytes <= MAX_SIGNAL_BYTES_KEPT, "{bytes}");
        assert_eq!(n, MAX_SIGNAL_BYTES_KEPT / 4096);
        assert_eq!(s.list().last().unwrap().cluster, "big999");
    }
}
