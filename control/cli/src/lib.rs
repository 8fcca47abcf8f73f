//! `maillectl`, the command line of Maille: reads App Mesh definitions (`maille-import`),
//! drives the control server through its admin API ([`client`], the types of `maille-api`),
//! checks definitions offline with Envoy itself ([`offline`]), and reads traces back from
//! X-Ray ([`xray_api`], [`traces`], [`traces_cmd`]) with their access log lines from
//! CloudWatch Logs ([`logs_api`]).
#![forbid(unsafe_code)]

pub mod client;
pub mod logs_api;
pub mod offline;
pub mod traces;
pub mod traces_cmd;
pub mod xray_api;

use std::time::Duration;

/// `NAME=VALUE`.
pub fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

/// An age such as `90s`, `10m`, `2h`: 1 s to 24 h.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: a number and a unit (s, m, h), such as 10m"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: the unit is s, m or h")),
    };
    if secs == 0 || secs > 24 * 3600 {
        return Err(format!("{s:?}: between 1s and 24h"));
    }
    Ok(Duration::from_secs(secs))
}
