//! The breaker signals received: the newest kept, bounded in count and in bytes.

use maille_api::BreakerSignal;
use std::collections::VecDeque;
use std::sync::Mutex;

/// Most signals kept.
pub const MAX_SIGNALS: usize = 1000;
/// Most bytes of signals kept (their JSON size).
pub const MAX_SIGNAL_BYTES_KEPT: usize = 1024 * 1024;
/// Most signals kept of one node: no node can push the others' out.
pub const MAX_SIGNALS_PER_NODE: usize = 100;
/// Most bytes of signals kept of one node.
pub const MAX_SIGNAL_BYTES_PER_NODE: usize = 64 * 1024;

/// A kept signal: its node, the signal, its size in bytes.
type Kept = (String, BreakerSignal, usize);

/// The newest signals, oldest first.
#[derive(Debug, Default)]
pub struct Signals {
    kept: Mutex<(VecDeque<Kept>, usize)>,
}

impl Signals {
    /// Keeps `signal` of node `node`, whose body was `size` bytes, dropping the node's oldest
    /// past [`MAX_SIGNALS_PER_NODE`] and the oldest of all past the other bounds.
    pub fn record(&self, node: &str, signal: BreakerSignal, size: usize) {
        let mut g = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let (q, bytes) = &mut *g;
        q.push_back((node.to_owned(), signal, size));
        *bytes += size;
        // The node's own oldest go first, past its count or its bytes.
        loop {
            let (count, node_bytes) = q
                .iter()
                .filter(|(n, ..)| n == node)
                .fold((0, 0), |(c, b), (_, _, size)| (c + 1, b + size));
            if count <= MAX_SIGNALS_PER_NODE && node_bytes <= MAX_SIGNAL_BYTES_PER_NODE {
                break;
            }
            match q
                .iter()
                .position(|(n, ..)| n == node)
                .and_then(|i| q.remove(i))
            {
                Some((_, _, n)) => *bytes -= n,
                None => break,
            }
        }
        while q.len() > MAX_SIGNALS || *bytes > MAX_SIGNAL_BYTES_KEPT {
            match q.pop_front() {
                Some((_, _, n)) => *bytes -= n,
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
            .map(|(_, s, _)| s.clone())
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
    fn one_node_cannot_push_the_others_signals_out() {
        let s = Signals::default();
        s.record("good", signal("real".into()), 100);
        for i in 0..5000 {
            s.record("noisy", signal(format!("junk{i}")), 100);
        }
        let list = s.list();
        assert_eq!(list.len(), MAX_SIGNALS_PER_NODE + 1);
        assert_eq!(list[0].cluster, "real");
        assert_eq!(list.last().unwrap().cluster, "junk4999");
        // Big ones: bounded by the node's bytes too.
        for i in 0..100 {
            s.record("noisy", signal(format!("big{i}")), 4096);
        }
        let list = s.list();
        assert_eq!(list[0].cluster, "real");
        assert_eq!(list.len(), 1 + MAX_SIGNAL_BYTES_PER_NODE / 4096);
    }

    #[test]
    fn signals_are_bounded_in_bytes_and_count() {
        let s = Signals::default();
        for i in 0..5000 {
            s.record(&format!("n{}", i % 50), signal(format!("c{i}")), 100);
        }
        assert_eq!(s.size(), (MAX_SIGNALS, MAX_SIGNALS * 100));
        assert_eq!(s.list().last().unwrap().cluster, "c4999");
        // Large signals: the byte bound holds before the count bound.
        for i in 0..1000 {
            s.record(&format!("n{}", i % 50), signal(format!("big{i}")), 4096);
        }
        let (n, bytes) = s.size();
        assert!(bytes <= MAX_SIGNAL_BYTES_KEPT, "{bytes}");
        assert_eq!(n, MAX_SIGNAL_BYTES_KEPT / 4096);
        assert_eq!(s.list().last().unwrap().cluster, "big999");
    }
}
