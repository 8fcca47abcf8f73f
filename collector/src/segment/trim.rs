//! Planning a document that is over X-Ray's limit, from the sizes of its parts: which
//! metadata values and exception stacks to leave out (largest first), how many exceptions to
//! keep (so that strings keep at least half the room), and one length to cut the remaining
//! long strings to. Every step only removes, and each is computed once, so planning ends, in
//! time linear in the span's size (sorting aside), and the plan's document fits.
//!
//! The estimate is exact except where it errs on the safe side: the room kept for the
//! marker, and the brackets of a `cause` whose exceptions all went.

use super::json::{escaped_len, W};
use super::{write_value, Annotation, Facts, MAX_DOCUMENT_BYTES};

/// What a document leaves out.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    /// By attribute index: metadata values left out (empty: none).
    drop_metadata: Vec<bool>,
    /// By exception: stacks left out (empty: none).
    drop_stack: Vec<bool>,
    /// Exceptions kept: the first ones.
    pub(super) exceptions: usize,
    /// Longest escaped length of the strings that may be cut.
    pub(super) cap: usize,
    /// Whether the document says it was trimmed.
    pub(super) marker: bool,
}

/// Room kept for `,"metadata":{"default":{"maille.trimmed":true}}`.
const MARKER_ROOM: usize = 48;

impl Plan {
    /// Everything, marked trimmed when a name, annotation or the resource was cut.
    pub(super) fn whole(f: &Facts<'_>) -> Plan {
        Plan {
            drop_metadata: Vec::new(),
            drop_stack: Vec::new(),
            exceptions: usize::MAX,
            cap: usize::MAX,
            marker: f.res.trimmed || f.cut,
        }
    }

    /// The fallback that always fits: no metadata, no exceptions, every string that may be
    /// cut empty.
    pub(super) fn minimal(f: &Facts<'_>) -> Plan {
        Plan {
            drop_metadata: vec![true; f.attrs.len()],
            drop_stack: vec![true; f.exceptions.len()],
            exceptions: 0,
            cap: 0,
            marker: true,
        }
    }

    pub(super) fn drops_metadata(&self, attr: usize) -> bool {
        self.drop_metadata.get(attr).copied().unwrap_or(false)
    }

    pub(super) fn drops_stack(&self, exception: usize) -> bool {
        self.drop_stack.get(exception).copied().unwrap_or(false)
    }
}

/// The plan for a document whose whole form is `whole` bytes (over the limit).
pub(super) fn plan(f: &Facts<'_>, whole: usize) -> Plan {
    let budget = MAX_DOCUMENT_BYTES;
    let mut p = Plan::whole(f);
    let mut size = whole + if p.marker { 0 } else { MARKER_ROOM };
    p.marker = true;
    let mut w = W::default();

    // 1. Metadata values, largest first; each takes its comma with it.
    let mut meta: Vec<(usize, usize)> = f
        .metadata()
        .map(|(i, a)| {
            w.0.clear();
            let mut first = true;
            w.key(&mut first, a.key);
            write_value(&mut w, a.value);
            (w.len() + 1, i)
        })
        .collect();
    meta.sort_unstable_by(|a, b| b.cmp(a));
    p.drop_metadata = vec![false; f.attrs.len()];
    for (len, i) in meta {
        if size <= budget {
            return p;
        }
        p.drop_metadata[i] = true;
        size = size.saturating_sub(len);
    }

    // 2. Exception stacks, largest first.
    let n = f.exceptions.len();
    let mut stacks = Vec::with_capacity(n);
    let mut without_stack = Vec::with_capacity(n);
    for (i, e) in f.exceptions.iter().enumerate() {
        w.0.clear();
        f.write_exception(&mut w, i, e, usize::MAX, true);
        let with = w.len();
        w.0.clear();
        f.write_exception(&mut w, i, e, usize::MAX, false);
        stacks.push((with - w.len(), i));
        without_stack.push(w.len());
    }
    stacks.sort_unstable_by(|a, b| b.cmp(a));
    p.drop_stack = vec![false; n];
    for (len, i) in stacks {
        if size <= budget {
            return p;
        }
        p.drop_stack[i] = true;
        size -= len;
    }
    if size <= budget {
        return p;
    }

    // 3. The rest is in strings. With all of them empty the document must leave half the
    //    room for them: exceptions beyond that go, last first (thousands of exceptions
    //    would otherwise leave no room for the URL). Then one length is found for all.
    let len = |s: &str| escaped_len(s);
    let mut lens: Vec<usize> = f.request.iter().flatten().map(|s| len(s)).collect();
    lens.extend(f.annotations.iter().filter_map(|(_, v)| match v {
        Annotation::Text(s) => Some(len(s)),
        _ => None,
    }));
    let exception_strings: Vec<usize> = f
        .exceptions
        .iter()
        .map(|e| e.kind.as_deref().map_or(0, len) + e.message.as_deref().map_or(0, len))
        .collect();
    let strings: usize = lens.iter().sum::<usize>() + exception_strings.iter().sum::<usize>();
    let mut floor = size - strings;
    let mut kept = n;
    while floor > budget / 2 && kept > 0 {
        kept -= 1;
        // The exception's own bytes and its comma, its strings (already out of the floor)
        // aside.
        floor = floor.saturating_sub(without_stack[kept] - exception_strings[kept] + 1);
    }
    p.exceptions = kept;
    lens.extend(f.exceptions[..kept].iter().flat_map(|e| {
        [e.kind.as_deref(), e.message.as_deref()]
            .into_iter()
            .flatten()
            .map(len)
    }));
    p.cap = water_fill(lens, budget.saturating_sub(floor));
    p
}

/// The largest `cap` with `Σ min(len, cap) <= room`.
fn water_fill(mut lens: Vec<usize>, room: usize) -> usize {
    lens.sort_unstable();
    let mut used = 0;
    for (i, &l) in lens.iter().enumerate() {
        let rest = lens.len() - i;
        if used + l * rest > room {
            return (room - used) / rest;
        }
        used += l;
    }
    usize::MAX
}

#[cfg(test)]
mod tests {
    use super::water_fill;

    #[test]
    fn water_fill_finds_the_largest_common_cap() {
        assert_eq!(water_fill(vec![10, 20, 30], 60), usize::MAX);
        assert_eq!(water_fill(vec![10, 20, 30], 50), 20);
        assert_eq!(water_fill(vec![10, 100, 100], 60), 25);
        assert_eq!(water_fill(vec![100, 100], 0), 0);
        assert_eq!(water_fill(vec![], 0), usize::MAX);
        for room in 0..200 {
            let lens = vec![3, 50, 7, 90, 0, 41];
            let cap = water_fill(lens.clone(), room);
            let used = |c: usize| lens.iter().map(|l| (*l).min(c)).sum::<usize>();
            assert!(used(cap) <= room);
            if cap != usize::MAX {
                assert!(
                    used(cap + 1) > room,
                    "room {room}: cap {cap} is not the largest"
                );
            }
        }
    }
}
