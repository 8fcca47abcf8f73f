//! Checks AWS Signature Version 4 on requests to the App Mesh API, with the admin API's
//! tokens as the secret access keys: the AWS CLI, the SDKs and Terraform sign with
//! `aws_secret_access_key` = the contents of `maille-admin.token` (any access key id, which
//! names the client in the log), or of `maille-read.token` for describe and list only.
//!
//! The canonical request is made as AWS makes it (method, the path encoded again, the query
//! sorted, the signed headers, the payload's SHA-256), the string to sign from `X-Amz-Date`
//! and the credential scope; a signature older or newer than 15 minutes is refused, so a
//! recorded request cannot be replayed later.

use crate::auth::{AdminTokens, Scope};
use axum::http::{HeaderMap, Method, Uri};
use ring::hmac;
use sha2::{Digest, Sha256};

/// Largest clock difference accepted between the signer and this server.
const MAX_SKEW_SECS: i64 = 15 * 60;

/// A signed request's parts.
struct Authorization<'a> {
    access_key: &'a str,
    /// `date/region/service/aws4_request`.
    scope: &'a str,
    date: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse(header: &str) -> Option<Authorization<'_>> {
    let rest = header.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            cred = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = Some(v);
        }
    }
    let cred = cred?;
    let (access_key, scope) = cred.split_once('/')?;
    let date = scope.split('/').next()?;
    if access_key.is_empty() || scope.split('/').count() != 4 || !scope.ends_with("/aws4_request") {
        return None;
    }
    Some(Authorization {
        access_key,
        scope,
        date,
        signed_headers: signed?.split(';').collect(),
        signature: sig?,
    })
}

/// SigV4's URI encoding: unreserved characters kept, every other byte `%XX`; `/` kept in a
/// path.
fn encode(s: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() && b[i + 1..i + 3].iter().all(u8::is_ascii_hexdigit) {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn canonical_query(q: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = q
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (encode(&decode(k), false), encode(&decode(v), false))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn signature(secret: &str, auth: &Authorization<'_>, string_to_sign: &str) -> String {
    let mut key = format!("AWS4{secret}").into_bytes();
    let mut parts: Vec<&str> = auth.scope.split('/').collect();
    parts.push(string_to_sign);
    // date, region, service, "aws4_request", then the string to sign.
    for p in parts {
        key = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), p.as_bytes())
            .as_ref()
            .to_vec();
    }
    hex(&key)
}

/// `X-Amz-Date` (`20261202T011500Z`) as seconds since the epoch.
fn amz_time(s: &str) -> Option<i64> {
    let d = time::PrimitiveDateTime::parse(
        s,
        time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .ok()?;
    Some(d.assume_utc().unix_timestamp())
}

/// Who signed the request and what they may do, or why it is refused.
pub fn verify(
    tokens: &AdminTokens,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, Scope), String> {
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or("the request must be signed with AWS Signature Version 4")?;
    let auth = parse(header).ok_or("the Authorization header is not AWS4-HMAC-SHA256")?;
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or("no X-Amz-Date header")?;
    if !amz_date.starts_with(auth.date) {
        return Err("X-Amz-Date is not the credential's date".into());
    }
    let at = amz_time(amz_date).ok_or("X-Amz-Date is not a date")?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if (now - at).abs() > MAX_SKEW_SECS {
        return Err("the signature is older or newer than 15 minutes (check the clock)".into());
    }
    if !auth.signed_headers.contains(&"host") {
        return Err("the Host header must be signed".into());
    }
    let mut canonical_headers = String::new();
    for h in &auth.signed_headers {
        let values: Vec<String> = headers
            .get_all(*h)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(format!("signed header {h} is missing"));
        }
        canonical_headers.push_str(&format!("{h}:{}\n", values.join(",")));
    }
    let mut payload = hex(&Sha256::digest(body));
    if let Some(claimed) = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
    {
        if claimed == "UNSIGNED-PAYLOAD" {
            // What the signer signed, as AWS takes it.
            payload = claimed.to_owned();
        } else if claimed != payload {
            return Err("x-amz-content-sha256 is not the body's".into());
        }
    }
    let canonical = format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{}\n{payload}",
        encode(uri.path().as_bytes(), true),
        canonical_query(uri.query()),
        auth.signed_headers.join(";"),
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{}\n{}",
        auth.scope,
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    for (secret, scope) in [(tokens.admin(), Scope::Admin), (tokens.read(), Scope::Read)] {
        let expected = signature(secret, &auth, &string_to_sign);
        if crate::auth::constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
            return Ok((auth.access_key.to_owned(), scope));
        }
    }
    Err("the signature does not match: sign with the contents of maille-admin.token (or maille-read.token) as the secret access key".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published example (the `get-vanilla` case of the SigV4 test suite): the
    /// canonical request and signature as AWS computes them.
    #[test]
    fn the_signature_of_aws_test_suite_example() {
        let auth = Authorization {
            access_key: "AKIDEXAMPLE",
            scope: "20150830/us-east-1/service/aws4_request",
            date: "20150830",
            signed_headers: vec!["host", "x-amz-date"],
            signature: "",
        };
        let canonical = "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let sts = format!(
            "AWS4-HMAC-SHA256\n20150830T123600Z\n{}\n{}",
            auth.scope,
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        assert_eq!(
            signature("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", &auth, &sts),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        assert_eq!(canonical_query(Some("b=2&a=1&c=x%20y")), "a=1&b=2&c=x%20y");
        assert_eq!(
            encode(b"/v20190125/meshes/a b", true),
            "/v20190125/meshes/a%20b"
        );
    }
}
