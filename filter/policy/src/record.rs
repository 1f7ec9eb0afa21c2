//! Builds the record of one HTTP exchange from what the proxy observes.
//!
//! Pure: times, ids and bytes come in as arguments, so the same code runs in
//! the filter, in native tests and in wasm tests.

use tracegate_proto::v1::{Body, Record};

/// Longest session id taken from the session header; a longer or non-printable
/// value is not a session id and the request id is used instead.
pub const MAX_SESSION_ID_LEN: usize = 256;

/// How much of a request the filter let go on to the upstream: what the
/// upstream may have seen. Only grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum UpstreamSaw {
    /// Nothing left the proxy.
    #[default]
    Nothing,
    /// Method, URL and headers went on; the body was still held.
    Headers,
    /// Headers and body went on.
    Request,
}

impl UpstreamSaw {
    /// The record's value (the one mapping to the proto enum).
    pub fn to_proto(self) -> tracegate_proto::v1::record::UpstreamSaw {
        use tracegate_proto::v1::record::UpstreamSaw as P;
        match self {
            UpstreamSaw::Nothing => P::Nothing,
            UpstreamSaw::Headers => P::Headers,
            UpstreamSaw::Request => P::Request,
        }
    }
}

/// Who produced the status the client got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AnsweredBy {
    /// The proxy did not say.
    #[default]
    Unknown,
    Upstream,
    /// tracegate's own local reply.
    Tracegate,
    /// The proxy's own local reply (upstream unreachable, reset, timeout,
    /// a buffer limit).
    Proxy,
    /// No answer (the client went away first).
    Nobody,
}

impl AnsweredBy {
    /// From what the proxy says when the exchange ends: whether tracegate
    /// answered, the final status (0: none) and the proxy's response code
    /// details (`via_upstream` for the upstream's answers), if it tells.
    pub fn of(answered_locally: bool, status: u32, details: Option<&str>) -> AnsweredBy {
        match details {
            _ if answered_locally => AnsweredBy::Tracegate,
            Some("via_upstream") => AnsweredBy::Upstream,
            Some(_) if status == 0 => AnsweredBy::Nobody,
            Some(_) => AnsweredBy::Proxy,
            None => AnsweredBy::Unknown,
        }
    }

    /// The record's value (the one mapping to the proto enum).
    pub fn to_proto(self) -> tracegate_proto::v1::record::AnsweredBy {
        use tracegate_proto::v1::record::AnsweredBy as P;
        match self {
            AnsweredBy::Unknown => P::Unknown,
            AnsweredBy::Upstream => P::Upstream,
            AnsweredBy::Tracegate => P::Tracegate,
            AnsweredBy::Proxy => P::Proxy,
            AnsweredBy::Nobody => P::Nobody,
        }
    }
}

/// What the filter did with a request, as its record states it (the
/// collector's alert rules name these, in the same words).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// It went upstream whole.
    #[default]
    Forwarded,
    /// A block rule matched (403).
    Blocked,
    /// An access rule (or the access default) does not allow it (403).
    AccessDenied,
    /// It could not be inspected (400, 413, 415), or its answer was replaced (502).
    Refused,
    /// Its caller was not authenticated (401).
    Unauthenticated,
    /// Async approval was asked; the caller retries once approved (403).
    AwaitingApproval,
    /// Approval denied, expired, refused or unavailable (403).
    Denied,
    /// Its record could not be made durable before forwarding (write-ahead,
    /// fail_closed: 503).
    Unrecorded,
    /// The client went away before it was forwarded.
    Abandoned,
    /// Not forwarded whole, for another reason: the filter or the proxy
    /// answered it (e.g. the proxy's buffer limit, 413).
    NotForwarded,
}

impl Verdict {
    /// The record's `inspection.verdict` (the one mapping to its text).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Forwarded => "forwarded",
            Verdict::Blocked => "blocked",
            Verdict::AccessDenied => "access_denied",
            Verdict::Refused => "refused",
            Verdict::Unauthenticated => "unauthenticated",
            Verdict::AwaitingApproval => "awaiting_approval",
            Verdict::Denied => "denied",
            Verdict::Unrecorded => "unrecorded",
            Verdict::Abandoned => "abandoned",
            Verdict::NotForwarded => "not_forwarded",
        }
    }
}

/// What the proxy knows when an exchange ends, beyond inspection's verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ending {
    /// Who answered the client.
    pub answered_by: AnsweredBy,
    /// The caller's token was refused (401).
    pub unauthenticated: bool,
    /// The write-ahead record failed and the request was answered 503.
    pub unrecorded: bool,
    /// The approval gate refused it (its verdict), if it did.
    pub approval_refused: Option<Verdict>,
    /// How much of the request went upstream.
    pub upstream: UpstreamSaw,
}

/// The verdict a record states: inspection's, unless the request was
/// stopped later (by authentication, approval, the write-ahead record, the
/// proxy, or the client leaving). A request that did not go upstream whole,
/// or that tracegate answered itself, is never "forwarded".
pub fn final_verdict(judged: Verdict, ending: &Ending) -> Verdict {
    if judged != Verdict::Forwarded {
        return judged;
    }
    if let Some(v) = ending.approval_refused {
        return v;
    }
    if ending.unauthenticated {
        Verdict::Unauthenticated
    } else if ending.unrecorded {
        Verdict::Unrecorded
    } else if ending.answered_by == AnsweredBy::Tracegate {
        Verdict::NotForwarded
    } else if ending.upstream != UpstreamSaw::Request {
        match ending.answered_by {
            AnsweredBy::Proxy => Verdict::NotForwarded,
            _ => Verdict::Abandoned,
        }
    } else {
        Verdict::Forwarded
    }
}

/// What the request headers say about an exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    pub request_id: String,
    /// Value of the configured session header, if present.
    pub session_header: Option<String>,
    pub method: String,
    pub path: String,
    pub authority: String,
    pub content_type: String,
    /// The headers as they went upstream, masked (see `inspect::Head`).
    pub headers: Vec<(String, String)>,
}

/// The session an exchange belongs to: the session header when it is a usable
/// id, else the request id (so an exchange is never without a session).
pub fn session_id(session_header: Option<&str>, request_id: &str) -> String {
    match session_header.map(str::trim) {
        Some(s)
            if !s.is_empty()
                && s.len() <= MAX_SESSION_ID_LEN
                && s.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            s.to_string()
        }
        _ => request_id.to_string(),
    }
}

/// A time-ordered unique record id (UUIDv7) from the host clock and 10 random
/// bytes supplied by the caller.
pub fn record_id(unix_millis: u64, random: &[u8; 10]) -> String {
    uuid::Builder::from_unix_timestamp_millis(unix_millis, random)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// Keeps a body's first `limit` bytes and counts all of them.
#[derive(Debug, Clone, Default)]
pub struct BodyCapture {
    data: Vec<u8>,
    size: u64,
    limit: usize,
    content_type: String,
}

impl BodyCapture {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// How many more bytes would be kept; callers can skip reading a chunk
    /// from the host when this is zero.
    pub fn room(&self) -> usize {
        self.limit - self.data.len()
    }

    /// Counts a chunk of `len` bytes of which `bytes` (a prefix, possibly
    /// shorter or empty) were read.
    pub fn push(&mut self, len: usize, bytes: &[u8]) {
        self.size += len as u64;
        let take = bytes.len().min(self.room());
        self.data.extend_from_slice(&bytes[..take]);
    }

    /// Replaces what was captured with the whole body as it was sent on
    /// (the masked body).
    pub fn set(&mut self, bytes: &[u8]) {
        self.size = bytes.len() as u64;
        self.data.clear();
        let take = bytes.len().min(self.limit);
        self.data.extend_from_slice(&bytes[..take]);
    }

    /// Rewrites the captured text (not the counted size), e.g. to mask
    /// again what was restored for the client. Non-UTF-8 data is kept.
    pub fn map_text(&mut self, f: impl FnOnce(&str) -> Option<String>) {
        if let Ok(text) = std::str::from_utf8(&self.data) {
            if let Some(new) = f(text) {
                self.data = new.into_bytes();
            }
        }
    }

    pub fn set_content_type(&mut self, content_type: String) {
        self.content_type = content_type;
    }

    fn into_proto(self) -> Body {
        Body {
            truncated: (self.data.len() as u64) < self.size,
            data: self.data,
            size: self.size,
            content_type: self.content_type,
        }
    }
}

/// Accumulates one exchange, from request headers to the end of the stream.
#[derive(Debug, Clone)]
pub struct ExchangeRecorder {
    info: RequestInfo,
    session_id: String,
    request_start: i64,
    response_start: i64,
    status: u32,
    identity: Option<tracegate_proto::v1::Identity>,
    pub inspection: Option<tracegate_proto::v1::Inspection>,
    pub request_body: BodyCapture,
    pub response_body: BodyCapture,
    /// Id of this exchange's record written ahead, if any.
    pub request_record_id: String,
    /// The human approval this exchange went through, if any.
    pub approval: Option<tracegate_proto::v1::Approval>,
    /// How much of the request the upstream may have seen.
    pub upstream: UpstreamSaw,
    /// Who answered the client, and the proxy's reason when it did.
    pub answered_by: AnsweredBy,
    pub status_detail: String,
    /// Models and tokens of an LLM API call.
    pub usage: Option<tracegate_proto::v1::Usage>,
}

impl ExchangeRecorder {
    pub fn new(info: RequestInfo, now_unix_nanos: i64, max_body_bytes: usize) -> Self {
        let session_id = session_id(info.session_header.as_deref(), &info.request_id);
        let mut request_body = BodyCapture::new(max_body_bytes);
        request_body.set_content_type(info.content_type.clone());
        Self {
            info,
            session_id,
            request_start: now_unix_nanos,
            response_start: 0,
            status: 0,
            identity: None,
            inspection: None,
            request_body,
            response_body: BodyCapture::new(max_body_bytes),
            request_record_id: String::new(),
            approval: None,
            upstream: UpstreamSaw::Nothing,
            answered_by: AnsweredBy::Unknown,
            status_detail: String::new(),
            usage: None,
        }
    }

    pub fn info(&self) -> &RequestInfo {
        &self.info
    }

    /// The record written ahead (`recording.mode: write_ahead`): the request
    /// as it will be forwarded, its identity and request-side inspection; no
    /// response yet. `upstream`: what already went on (its headers, when
    /// they are not held for the body).
    pub fn request_record(
        &self,
        record_id: String,
        source: String,
        identity: Option<tracegate_proto::v1::Identity>,
        inspection: Option<tracegate_proto::v1::Inspection>,
        upstream: UpstreamSaw,
    ) -> Record {
        Record {
            record_id,
            session_id: self.session_id.clone(),
            request_id: self.info.request_id.clone(),
            request_start_unix_nanos: self.request_start,
            method: self.info.method.clone(),
            path: self.info.path.clone(),
            authority: self.info.authority.clone(),
            request_body: Some(self.request_body.clone().into_proto()),
            source,
            identity,
            inspection,
            phase: tracegate_proto::v1::record::Phase::Request as i32,
            upstream_saw: upstream.to_proto() as i32,
            request_headers: headers_proto(self.info.headers.clone()),
            ..Record::default()
        }
    }

    pub fn response_content_type(&self) -> &str {
        &self.response_body.content_type
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    pub fn response_headers(&mut self, status: u32, content_type: String, now_unix_nanos: i64) {
        self.status = status;
        self.response_start = now_unix_nanos;
        self.response_body.set_content_type(content_type);
    }

    /// Who made the request (see `jwt::identity_record`).
    pub fn set_identity(&mut self, identity: Option<tracegate_proto::v1::Identity>) {
        self.identity = identity;
    }

    /// The status the client got (so far); 0 if none.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The status when no response headers passed the filter (e.g. a local
    /// reply made before it); never overrides one already seen.
    pub fn fallback_status(&mut self, status: u32) {
        if self.status == 0 {
            self.status = status;
        }
    }

    pub fn finish(self, record_id: String, source: String, now_unix_nanos: i64) -> Record {
        let duration_nanos = now_unix_nanos.saturating_sub(self.request_start).max(0);
        Record {
            record_id,
            session_id: self.session_id,
            request_id: self.info.request_id,
            request_start_unix_nanos: self.request_start,
            response_start_unix_nanos: self.response_start,
            end_unix_nanos: now_unix_nanos,
            duration_micros: (duration_nanos / 1_000) as u64,
            method: self.info.method,
            path: self.info.path,
            authority: self.info.authority,
            status: self.status,
            request_body: Some(self.request_body.into_proto()),
            response_body: Some(self.response_body.into_proto()),
            source,
            identity: self.identity,
            inspection: self.inspection,
            phase: tracegate_proto::v1::record::Phase::Exchange as i32,
            request_record_id: self.request_record_id,
            approval: self.approval,
            upstream_saw: self.upstream.to_proto() as i32,
            answered_by: self.answered_by.to_proto() as i32,
            status_detail: self.status_detail,
            request_headers: headers_proto(self.info.headers),
            // Stamped by the exchange, which knows its gateway's policy.
            policy: None,
            usage: self.usage,
        }
    }
}

fn headers_proto(headers: Vec<(String, String)>) -> Vec<tracegate_proto::v1::Header> {
    headers
        .into_iter()
        .map(|(name, value)| tracegate_proto::v1::Header { name, value })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn info() -> RequestInfo {
        RequestInfo {
            request_id: "req-1".into(),
            session_header: Some("sess-9".into()),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            headers: vec![("x-team".into(), "payments".into())],
            authority: "api.example".into(),
            content_type: "application/json".into(),
        }
    }

    #[test]
    fn session_falls_back_to_request_id() {
        assert_eq!(session_id(Some("abc"), "r"), "abc");
        assert_eq!(session_id(Some("  abc "), "r"), "abc");
        assert_eq!(session_id(None, "r"), "r");
        assert_eq!(session_id(Some(""), "r"), "r");
        assert_eq!(session_id(Some("a b"), "r"), "r");
        assert_eq!(session_id(Some("é"), "r"), "r");
        let long = "x".repeat(MAX_SESSION_ID_LEN + 1);
        assert_eq!(session_id(Some(&long), "r"), "r");
    }

    #[test]
    fn record_ids_are_uuid_v7_ordered_by_time() {
        let a = record_id(1_700_000_000_000, &[0xff; 10]);
        let b = record_id(1_700_000_000_001, &[0; 10]);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "7", "version nibble: {a}");
        assert!(a < b, "{a} < {b}");
        assert_ne!(record_id(1, &[1; 10]), record_id(1, &[2; 10]));
    }

    #[test]
    fn body_capture_keeps_prefix_and_counts_all() {
        let mut b = BodyCapture::new(5);
        b.push(3, b"abc");
        b.push(4, b"defg");
        assert_eq!(b.room(), 0);
        b.push(100, b""); // not read from the host at all
        let p = b.into_proto();
        assert_eq!(p.data, b"abcde");
        assert_eq!(p.size, 107);
        assert!(p.truncated);

        let mut b = BodyCapture::new(5);
        b.push(5, b"abcde");
        assert!(!b.into_proto().truncated);
    }

    #[test]
    fn finished_record_has_every_field() {
        let mut r = ExchangeRecorder::new(info(), 1_000_000, 1024);
        r.request_body.push(2, b"{}");
        r.response_headers(200, "text/event-stream".into(), 3_000_000);
        r.fallback_status(503);
        r.response_body.push(4, b"data");
        let rec = r.finish("id-1".into(), "tracegate/0.1.0".into(), 5_500_000);
        assert_eq!(rec.record_id, "id-1");
        assert_eq!(rec.session_id, "sess-9");
        assert_eq!(rec.request_id, "req-1");
        assert_eq!(rec.status, 200);
        assert_eq!(rec.duration_micros, 4_500);
        assert_eq!(rec.response_start_unix_nanos, 3_000_000);
        assert_eq!(rec.method, "POST");
        let req = rec.request_body.unwrap();
        assert_eq!(
            (req.data.as_slice(), req.content_type.as_str()),
            (&b"{}"[..], "application/json")
        );
        assert_eq!(rec.response_body.unwrap().content_type, "text/event-stream");
    }

    #[test]
    fn a_request_that_did_not_go_upstream_whole_is_never_forwarded() {
        let whole = Ending {
            upstream: UpstreamSaw::Request,
            ..Ending::default()
        };
        assert_eq!(
            final_verdict(Verdict::Forwarded, &whole),
            Verdict::Forwarded
        );
        // Inspection's own refusals stand.
        for v in [Verdict::Blocked, Verdict::Refused] {
            assert_eq!(final_verdict(v, &Ending::default()), v);
        }
        let cases = [
            (
                Ending {
                    unauthenticated: true,
                    answered_by: AnsweredBy::Tracegate,
                    ..Ending::default()
                },
                Verdict::Unauthenticated,
            ),
            (
                Ending {
                    unrecorded: true,
                    answered_by: AnsweredBy::Tracegate,
                    upstream: UpstreamSaw::Headers,
                    ..Ending::default()
                },
                Verdict::Unrecorded,
            ),
            (
                Ending {
                    approval_refused: Some(Verdict::Denied),
                    answered_by: AnsweredBy::Tracegate,
                    ..Ending::default()
                },
                Verdict::Denied,
            ),
            (
                Ending {
                    answered_by: AnsweredBy::Tracegate,
                    upstream: UpstreamSaw::Request,
                    ..Ending::default()
                },
                Verdict::NotForwarded,
            ),
            (
                Ending {
                    upstream: UpstreamSaw::Headers,
                    ..Ending::default()
                },
                Verdict::Abandoned,
            ),
            (Ending::default(), Verdict::Abandoned),
            (
                Ending {
                    answered_by: AnsweredBy::Proxy,
                    upstream: UpstreamSaw::Headers,
                    ..Ending::default()
                },
                Verdict::NotForwarded,
            ),
        ];
        for (ending, want) in cases {
            assert_eq!(
                final_verdict(Verdict::Forwarded, &ending),
                want,
                "{ending:?}"
            );
            assert_ne!(want.as_str(), "forwarded");
        }
    }

    #[test]
    fn who_answered_comes_from_the_proxy_details() {
        assert_eq!(AnsweredBy::of(true, 403, Some("x")), AnsweredBy::Tracegate);
        assert_eq!(
            AnsweredBy::of(false, 200, Some("via_upstream")),
            AnsweredBy::Upstream
        );
        assert_eq!(
            AnsweredBy::of(
                false,
                503,
                Some("upstream_reset_before_response_started{connection_failure}")
            ),
            AnsweredBy::Proxy
        );
        assert_eq!(
            AnsweredBy::of(false, 0, Some("downstream_remote_disconnect")),
            AnsweredBy::Nobody
        );
        assert_eq!(AnsweredBy::of(false, 503, None), AnsweredBy::Unknown);
        // The upstream forwarded whole and answered by the proxy (e.g.
        // upstream unreachable): still forwarded by tracegate.
        let e = Ending {
            answered_by: AnsweredBy::Proxy,
            upstream: UpstreamSaw::Request,
            ..Ending::default()
        };
        assert_eq!(final_verdict(Verdict::Forwarded, &e), Verdict::Forwarded);
    }

    #[test]
    fn upstream_saw_only_grows_in_order() {
        assert!(UpstreamSaw::Nothing < UpstreamSaw::Headers);
        assert!(UpstreamSaw::Headers < UpstreamSaw::Request);
        let mut r = ExchangeRecorder::new(info(), 0, 0);
        r.upstream = UpstreamSaw::Headers;
        let rec = r.finish("i".into(), "s".into(), 1);
        assert_eq!(
            rec.upstream_saw(),
            tracegate_proto::v1::record::UpstreamSaw::Headers
        );
    }

    #[test]
    fn fallback_status_applies_without_response_headers() {
        let mut r = ExchangeRecorder::new(info(), 10, 0);
        r.fallback_status(503);
        let rec = r.finish("i".into(), "s".into(), 5);
        assert_eq!(rec.status, 503);
        assert_eq!(
            rec.duration_micros, 0,
            "a clock going backwards never yields a negative duration"
        );
    }
}
