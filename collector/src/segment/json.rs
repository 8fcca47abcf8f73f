//! JSON text as segment documents need it: strings escaped exactly as serde_json escapes
//! them, their escaped length known without writing them, and cut to an escaped length on a
//! character boundary, so that trimming can plan a document's size before writing it.

/// Bytes serde_json writes for each byte of a string (quotes excluded): `"` and `\` two,
/// the named control characters two, other control characters six (`\u00XX`).
const COST: [u8; 256] = {
    let mut t = [1u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = 6;
        b += 1;
    }
    t[0x08] = 2;
    t[0x09] = 2;
    t[0x0a] = 2;
    t[0x0c] = 2;
    t[0x0d] = 2;
    t[b'"' as usize] = 2;
    t[b'\\' as usize] = 2;
    t
};

/// The length of `s` written as a JSON string, quotes excluded.
pub(super) fn escaped_len(s: &str) -> usize {
    s.bytes().map(|b| usize::from(COST[usize::from(b)])).sum()
}

/// The longest prefix of `s`, cut on a character boundary, whose escaped length is at most
/// `cap`.
pub(super) fn prefix_within(s: &str, cap: usize) -> &str {
    if s.len().saturating_mul(6) <= cap {
        return s;
    }
    let mut cost = 0usize;
    for (i, b) in s.bytes().enumerate() {
        cost += usize::from(COST[usize::from(b)]);
        if cost > cap {
            let mut cut = i;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            return &s[..cut];
        }
    }
    s
}

/// A document being written.
#[derive(Debug, Default)]
pub(super) struct W(pub(super) Vec<u8>);

impl W {
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
    pub(super) fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }
    pub(super) fn str(&mut self, s: &str) {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.0, s);
    }
    /// `s`, cut to `cap` escaped bytes.
    pub(super) fn capped(&mut self, s: &str, cap: usize) {
        self.str(prefix_within(s, cap));
    }
    /// `"k":`, preceded by a comma unless it is the first key of its object.
    pub(super) fn key(&mut self, first: &mut bool, k: &str) {
        if !std::mem::take(first) {
            self.0.push(b',');
        }
        self.str(k);
        self.0.push(b':');
    }
    pub(super) fn int(&mut self, i: i64) {
        let _ = serde_json::to_writer(&mut self.0, &i);
    }
    /// A finite double as a JSON number; NaN and the infinities as OTLP/JSON spells them
    /// (JSON has no number for them).
    pub(super) fn double(&mut self, d: f64) {
        if d.is_finite() {
            let _ = serde_json::to_writer(&mut self.0, &d);
        } else {
            self.str(non_finite(d));
        }
    }
    pub(super) fn hex_digits(&mut self, b: &[u8]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for x in b {
            self.0.push(DIGITS[usize::from(x >> 4)]);
            self.0.push(DIGITS[usize::from(x & 0xf)]);
        }
    }
    pub(super) fn hex_str(&mut self, b: &[u8]) {
        self.0.push(b'"');
        self.hex_digits(b);
        self.0.push(b'"');
    }
}

/// NaN and the infinities as text.
pub(super) fn non_finite(d: f64) -> &'static str {
    if d.is_nan() {
        "NaN"
    } else if d > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_ascii_byte_costs_what_serde_json_writes() {
        for b in 0u8..0x80 {
            let s = (b as char).to_string();
            let written = serde_json::to_string(&s).unwrap().len() - 2;
            assert_eq!(escaped_len(&s), written, "byte {b:#x}");
        }
    }

    proptest! {
        #[test]
        fn lengths_and_prefixes_match_serde_json(s in "\\PC*|[\\x00-\\x1f\"\\\\a-z\u{e9}\u{1f600}]{0,200}", cap in 0usize..400) {
            prop_assert_eq!(escaped_len(&s), serde_json::to_string(&s).unwrap().len() - 2);
            let p = prefix_within(&s, cap);
            prop_assert!(s.starts_with(p));
            prop_assert!(escaped_len(p) <= cap);
            if p.len() < s.len() {
                // The next character would not have fitted.
                let next = s[p.len()..].chars().next().unwrap();
                let mut longer = p.to_owned();
                longer.push(next);
                prop_assert!(escaped_len(&longer) > cap);
            }
        }
    }
}
