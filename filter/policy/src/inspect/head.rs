//! Judging a request's head: the URL's path and query, and its headers.
//!
//! Every header is judged by the detectors except a short list: the
//! proxy's own and the wire format's (`NOT_JUDGED`), and the upstream's
//! credentials (`CREDENTIALS`), which go on as they are and are recorded as
//! `[credential]`. A header with a finding goes on masked. Query values and
//! names are judged percent-decoded and go on masked (re-encoded); a secret
//! in the path itself refuses the request, since a masked path would reach
//! another endpoint. The record holds the path and every header, masked.

use super::Inspector;
use crate::mask::{Hits, Tokens};

/// Headers set by the proxy or naming the wire format: not judged.
const NOT_JUDGED: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "accept",
    "accept-encoding",
    "connection",
    "te",
    "transfer-encoding",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "traceparent",
    "tracestate",
];

/// The upstream's credentials: passed on as they are (in gateway mode the
/// caller's own token is consumed first), never recorded.
pub const CREDENTIALS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "cookie",
];

fn is_own(own: &[String], name: &str) -> bool {
    own.iter().any(|o| o == name)
}

fn judged(name: &str) -> bool {
    !name.starts_with(':')
        && !name.starts_with("x-envoy-")
        && !NOT_JUDGED.contains(&name)
        && !CREDENTIALS.contains(&name)
}

/// What becomes of a request's head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// The `:path` to send instead (query masked).
    pub path: Option<String>,
    /// Headers to send with these (masked) values instead.
    pub set: Vec<(String, String)>,
    /// The path or a header's name holds a secret: the request is refused.
    pub refuse: Option<String>,
    pub hits: Hits,
    /// For the record: the path and every header, masked, credentials as
    /// `[credential]`.
    pub recorded_path: String,
    pub recorded: Vec<(String, String)>,
}

impl Head {
    /// Nothing judged: the path as it is, headers recorded with credentials
    /// (and `own`, see `request_head`) as `[credential]`.
    pub fn unjudged(path: &str, headers: &[(String, String)], own: &[String]) -> Head {
        Head {
            recorded_path: path.to_string(),
            recorded: headers
                .iter()
                .filter(|(n, _)| !n.starts_with(':'))
                .map(|(n, v)| (n.clone(), recorded_value(n, v, own)))
                .collect(),
            ..Head::default()
        }
    }
}

impl Inspector {
    /// Judges the path and headers (names lower-case, as Envoy gives them).
    /// `own`: headers that carry tracegate's own credentials (the callers'
    /// JWTs): not judged, recorded as `[credential]`.
    pub fn request_head(
        &self,
        path: &str,
        headers: &[(String, String)],
        own: &[String],
        tokens: &mut Tokens,
    ) -> Head {
        let Some(m) = self.masker() else {
            return Head::unjudged(path, headers, own);
        };
        let mut head = Head {
            recorded_path: path.to_string(),
            ..Head::default()
        };
        let mut mask = |s: &str, hits: &mut Hits| m.mask(s, tokens, hits);

        let (route, query) = match path.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (path, None),
        };
        let decoded = percent_decode(route, false);
        if let Some(masked) = mask(&decoded, &mut head.hits) {
            head.refuse =
                Some("the URL path holds what looks like a secret; send it in the body".into());
            head.recorded_path = percent_encode(&masked, b"/");
            if let Some(q) = query {
                head.recorded_path.push('?');
                head.recorded_path.push_str(q);
            }
        }
        if let Some(q) = query {
            let mut changed = false;
            let parts: Vec<String> = q
                .split('&')
                .map(|pair| {
                    let (k, v) = match pair.split_once('=') {
                        Some((k, v)) => (k, Some(v)),
                        None => (pair, None),
                    };
                    let mut one = |s: &str| match mask(&percent_decode(s, true), &mut head.hits) {
                        Some(masked) => {
                            changed = true;
                            percent_encode(&masked, b"")
                        }
                        None => s.to_string(),
                    };
                    let k = one(k);
                    match v {
                        Some(v) => format!("{k}={}", one(v)),
                        None => k,
                    }
                })
                .collect();
            if changed {
                let new = format!("{route}?{}", parts.join("&"));
                if head.refuse.is_none() {
                    head.recorded_path = new.clone();
                }
                head.path = Some(new);
            }
        }
        for (name, value) in headers {
            if name.starts_with(':') {
                continue;
            }
            if !judged(name) || is_own(own, name) {
                head.recorded
                    .push((name.clone(), recorded_value(name, value, own)));
                continue;
            }
            // A header's name is judged too (any custom header may be sent);
            // a name cannot be masked and still mean anything: refused.
            let name_masked = mask(name, &mut head.hits);
            if name_masked.is_some() && head.refuse.is_none() {
                head.refuse = Some(
                    "a header name holds what looks like a secret; send it in the body".into(),
                );
            }
            match mask(value, &mut head.hits) {
                Some(masked) => {
                    head.set.push((name.clone(), masked.clone()));
                    head.recorded
                        .push((name_masked.unwrap_or_else(|| name.clone()), masked));
                }
                None => head
                    .recorded
                    .push((name_masked.unwrap_or_else(|| name.clone()), value.clone())),
            }
        }
        head
    }
}

/// A header's value as recorded: credentials never.
pub fn recorded_value(name: &str, value: &str, own: &[String]) -> String {
    if CREDENTIALS.contains(&name) || is_own(own, name) {
        "[credential]".into()
    } else {
        value.to_string()
    }
}

/// `%XX` decoded (and `+` as a space in query parts); invalid escapes stay.
fn percent_decode(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' if plus => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes all but unreserved characters (RFC 3986) and `keep`.
fn percent_encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || keep.contains(&b)
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
