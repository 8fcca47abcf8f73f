//! Proxy-Wasm ABI v0.2.1 constants and the header-map wire format, as Envoy uses them.

/// `proxy_status_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub(crate) enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    Unimplemented = 12,
}

/// `proxy_log_level_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub(crate) fn from_i32(v: i32) -> Option<LogLevel> {
        Some(match v {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// `proxy_action_t`: what a stream callback asks of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Go on with the stream.
    Continue,
    /// Stop until the module resumes it (`proxy_continue_stream`).
    Pause,
}

/// `proxy_map_type_t`.
pub(crate) mod map {
    pub(crate) const REQUEST_HEADERS: i32 = 0;
    pub(crate) const REQUEST_TRAILERS: i32 = 1;
    pub(crate) const RESPONSE_HEADERS: i32 = 2;
    pub(crate) const RESPONSE_TRAILERS: i32 = 3;
    pub(crate) const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
    pub(crate) const HTTP_CALL_RESPONSE_TRAILERS: i32 = 7;
}

/// `proxy_buffer_type_t`.
pub(crate) mod buffer {
    pub(crate) const REQUEST_BODY: i32 = 0;
    pub(crate) const RESPONSE_BODY: i32 = 1;
    pub(crate) const HTTP_CALL_RESPONSE_BODY: i32 = 4;
    pub(crate) const VM_CONFIGURATION: i32 = 6;
    pub(crate) const PLUGIN_CONFIGURATION: i32 = 7;
}

/// `proxy_metric_type_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

/// A header map: lowercase names, in order, repeats allowed (as Envoy keeps them).
pub type Headers = Vec<(String, String)>;

/// Envoy's serialisation of a header map: the pair count, each pair's key and value
/// lengths (u32 little-endian), then each key and value followed by a NUL.
pub(crate) fn serialize_pairs(pairs: &[(String, String)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len() + 2)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// The inverse of [`serialize_pairs`]; `None` on malformed input.
pub(crate) fn deserialize_pairs(bytes: &[u8]) -> Option<Headers> {
    let u32_at = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let n = u32_at(0)?;
    let mut sizes = Vec::with_capacity(n.min(1024));
    for i in 0..n {
        sizes.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
    }
    let mut at = 4 + n * 8;
    let mut out = Vec::with_capacity(sizes.len());
    for (kl, vl) in sizes {
        let k = std::str::from_utf8(bytes.get(at..at + kl)?).ok()?;
        at += kl + 1;
        let v = std::str::from_utf8(bytes.get(at..at + vl)?).ok()?;
        at += vl + 1;
        out.push((k.to_owned(), v.to_owned()));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let pairs = vec![
            (":path".to_owned(), "/a?b=c".to_owned()),
            ("x-empty".to_owned(), String::new()),
            ("x-utf8".to_owned(), "ünï".to_owned()),
        ];
        let bytes = serialize_pairs(&pairs);
        assert_eq!(deserialize_pairs(&bytes).unwrap(), pairs);
        assert_eq!(deserialize_pairs(&bytes[..bytes.len() - 3]), None);
        assert_eq!(deserialize_pairs(&[]).unwrap(), Vec::new());
    }
}
