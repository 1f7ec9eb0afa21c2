//! The per-request context: authenticates the caller, inspects one HTTP
//! exchange and, when the stream ends, hands its record to the worker's
//! outbox.
//!
//! Request bodies are held whole (headers too) until inspected: masked,
//! checked against block rules, or refused; only then do headers and body go
//! upstream together, with the right content-length. Response bodies are held
//! whole when they are JSON or text; SSE streams are masked event by event
//! as they pass. The record captures bodies as they were sent on.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, LogLevel};
use std::rc::Rc;

use tracegate_policy::inspect::{
    error_body, media_type, ExchangeInspection, Head, Mark, RequestVerdict,
};
use tracegate_policy::llm::sse::{error_event, looks_like_sse, SseMasker};
use tracegate_policy::llm::Api;
use tracegate_policy::mask::Tokens;
use tracegate_policy::record::{
    final_verdict, record_id, AnsweredBy, BodyCapture, Ending, UpstreamSaw, Verdict,
};
use tracegate_policy::{ExchangeRecorder, RequestInfo};

use crate::ahead::{self, Ahead};
use crate::approvals::{self, ApprovalGate, Ask};
use crate::auth::{self, Next};
use crate::gates::{self, let_go, Flow, RequestSlot, Via};
use crate::host;
use crate::root::{Admission, Shared};
use tracegate_policy::approval::{excerpt, request_digest, RiskReason, GRANT_HEADER};
use tracegate_policy::config::RecordingMode;

/// A stream's chunk is read from Envoy this many bytes at a time.
const STREAM_SLICE: usize = 64 << 10;

/// How the response body is handled.
enum ResponseMode {
    /// Not inspected (no masking, or a binary type): captured as it passes.
    Pass,
    /// JSON or text: held whole, masked, sent.
    Whole,
    /// Server-sent events: masked event by event.
    Stream(Box<SseMasker>),
    /// No content type: the first bytes tell a stream from a whole body.
    Sniff,
}

pub struct Exchange {
    context_id: u32,
    shared: Option<Rc<Shared>>,
    recorder: Option<ExchangeRecorder>,
    identity: RequestSlot,
    api: Api,
    content_type: String,
    /// The request body is being held for inspection.
    inspect_request: bool,
    /// Headers are held too (`inspection.hold_headers`).
    hold: bool,
    /// The request body was inspected (at its end or at trailers).
    request_done: bool,
    request_bytes: usize,
    response: ResponseMode,
    tokens: Tokens,
    inspection: ExchangeInspection,
    /// A buffer place is reserved for this exchange's record (fail_closed).
    reserved: bool,
    /// The request body is held (not inspected) only for the gates: its
    /// record written ahead whole, its digest for an approval.
    hold_for_gates: bool,
    /// `x-tracegate-approval` (async approval: the grant this retry redeems).
    grant: Option<String>,
    /// Where, in the request as sent, what made it risky is.
    marks: Vec<Mark>,
}

/// Characters of the request an approver is shown (around what made it
/// risky).
const EXCERPT_CHARS: usize = 1500;

impl Exchange {
    pub fn new(context_id: u32, shared: Option<Rc<Shared>>) -> Self {
        Self {
            context_id,
            shared,
            recorder: None,
            identity: RequestSlot::default(),
            api: Api::Other,
            content_type: String::new(),
            inspect_request: false,
            hold: false,
            request_done: false,
            request_bytes: 0,
            response: ResponseMode::Pass,
            tokens: Tokens::default(),
            inspection: ExchangeInspection::default(),
            reserved: false,
            hold_for_gates: false,
            grant: None,
            marks: Vec::new(),
        }
    }

    /// Answered locally (a local reply was sent, here or by the root);
    /// later callbacks only record.
    fn is_answered(&self) -> bool {
        self.identity.borrow().answered
    }

    /// The request is complete and cleared by inspection: hand it to the
    /// gates (approval, write-ahead), which let it go on now or later.
    /// `raw` is the body as the caller sent it, `sent` as it goes upstream.
    fn ready(&mut self, shared: &Shared, raw: &[u8], sent: &[u8]) -> Action {
        if let Some(recorder) = &self.recorder {
            if shared.config.recording.mode == RecordingMode::WriteAhead {
                let inspection = self.inspect_request.then(|| self.inspection.to_proto());
                let now = host::now_nanos();
                let millis = u64::try_from(now / 1_000_000).unwrap_or(0);
                let id = record_id(millis, &host::random_bytes());
                let upstream = self.identity.borrow().upstream;
                let record =
                    recorder.request_record(id, shared.source.clone(), None, inspection, upstream);
                self.identity.borrow_mut().ahead = Ahead::Todo(Box::new(record));
            }
            if shared.config.approval.is_some() {
                let ask = self.approval_ask(shared, recorder, raw, sent);
                self.identity.borrow_mut().approval = ApprovalGate::Todo(Box::new(ask));
            }
        }
        self.identity.borrow_mut().ready = true;
        match gates::proceed(shared, &self.identity, Via::Request) {
            Flow::Continue => {
                let_go(&self.identity, UpstreamSaw::Request);
                Action::Continue
            }
            Flow::Wait | Flow::Answered => Action::Pause,
        }
    }

    /// What the approval gate needs to know of this request.
    fn approval_ask(
        &self,
        shared: &Shared,
        recorder: &ExchangeRecorder,
        raw: &[u8],
        sent: &[u8],
    ) -> Ask {
        let i = &self.inspection;
        let mut reasons: Vec<RiskReason> = i
            .request
            .counts
            .iter()
            .map(|(name, &count)| RiskReason {
                kind: "detector".into(),
                name: name.clone(),
                risk: 0,
                count,
            })
            .collect();
        for rule in &i.rules {
            reasons.push(RiskReason {
                kind: "rule".into(),
                name: rule.id.clone(),
                risk: shared
                    .inspector
                    .as_ref()
                    .map_or(0, |x| x.rule_risk(&rule.id)),
                count: 1,
            });
        }
        let info = recorder.info();
        Ask {
            base_risk: i.request.risk.saturating_add(i.rules_risk),
            reasons,
            session_id: recorder.session_id().to_string(),
            request_id: info.request_id.clone(),
            method: info.method.clone(),
            path: info.path.clone(),
            digest: request_digest(&info.method, &info.path, raw),
            excerpt: excerpt(sent, &self.marks, EXCERPT_CHARS),
            grant: self.grant.clone(),
        }
    }

    /// Answers locally with an error in the API's shape.
    fn refuse(
        &mut self,
        shared: &Shared,
        status: u32,
        kind: &str,
        message: &str,
        rule: Option<&str>,
    ) {
        auth::forget(shared, self.context_id);
        {
            let mut slot = self.identity.borrow_mut();
            slot.answered = true;
            slot.body_pending = false;
        }
        host::send_response(
            status,
            &[("content-type", "application/json")],
            error_body(self.api, kind, message, rule).as_bytes(),
        );
    }

    fn request_body_end(&mut self, shared: &Shared, size: usize) -> Action {
        self.request_done = true;
        let Some(inspector) = &shared.inspector else {
            let body = host::buffer(BufferType::HttpRequestBody, size).unwrap_or_default();
            if let Some(r) = &mut self.recorder {
                r.request_body.set(&body);
            }
            return self.ready(shared, &body, &body);
        };
        let body = host::buffer(BufferType::HttpRequestBody, size).unwrap_or_default();
        let verdict = inspector.request(&self.content_type, &body, &mut self.tokens);
        let raw = body.clone();
        let sent = match verdict {
            RequestVerdict::Forward {
                body: masked,
                hits,
                rules,
                marks,
            } => {
                self.marks = marks;
                shared
                    .metrics
                    .findings
                    .add(hits.counts.values().map(|&n| u64::from(n)).sum());
                self.inspection.rules_risk = inspector.rules_risk(&rules);
                self.inspection.request.merge(&hits);
                self.inspection.rules = rules;
                match masked {
                    Some(new) => {
                        host::replace_buffer(BufferType::HttpRequestBody, size, &new);
                        new
                    }
                    None => body,
                }
            }
            RequestVerdict::Blocked {
                rule,
                message,
                hits,
                rules,
            } => {
                shared.metrics.blocked.add(1);
                self.inspection.rules_risk = inspector.rules_risk(&rules);
                self.inspection.request.merge(&hits);
                self.inspection.rules = rules;
                self.inspection.verdict = Verdict::Blocked;
                self.inspection.blocked_rule = rule.id.clone();
                self.inspection.reason = message.clone();
                let kind = match self.api {
                    Api::Anthropic => "permission_error",
                    _ => "permission_denied",
                };
                self.refuse(shared, 403, kind, &message, Some(&rule.id));
                return Action::Pause;
            }
            RequestVerdict::Refused {
                status,
                kind,
                message,
            } => {
                self.refuse_uninspectable(shared, status, kind, &message);
                return Action::Pause;
            }
        };
        if self.hold {
            // Headers are still here: give them the length of what is sent.
            host::set_request_header("content-length", Some(&sent.len().to_string()));
        }
        if let Some(r) = &mut self.recorder {
            r.request_body.set(&sent);
        }
        self.identity.borrow_mut().body_pending = false;
        // If authentication still waits for keys, the root runs the gates
        // once it is decided.
        self.ready(shared, &raw, &sent)
    }

    fn refuse_uninspectable(&mut self, shared: &Shared, status: u32, kind: &str, message: &str) {
        shared.metrics.refused.add(1);
        self.inspection.verdict = Verdict::Refused;
        self.inspection.reason = message.to_string();
        let kind = match (self.api, status) {
            (Api::Anthropic, 413) => "request_too_large",
            (Api::Anthropic, _) => "invalid_request_error",
            (_, _) => kind,
        };
        self.refuse(shared, status, kind, message, None);
    }
}

/// Copies as much of the current body chunk as the capture still has room for.
fn capture(body: &mut BodyCapture, kind: BufferType, chunk_len: usize) {
    let want = chunk_len.min(body.room());
    let bytes = if want > 0 {
        host::buffer(kind, want).unwrap_or_default()
    } else {
        Vec::new()
    };
    body.push(chunk_len, &bytes);
}

impl Context for Exchange {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if !self.take_call(token_id) {
            return;
        }
        if let Some(shared) = self.shared.clone() {
            let result = ahead::read_answer(status_code, response_size);
            ahead::answered(&shared, &self.identity, Via::Request, result);
        }
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if !self.take_call(token_id) {
            return;
        }
        if let Some(shared) = self.shared.clone() {
            let status = host::http_call_status();
            let body = host::http_call_body(body_size);
            approvals::answered(&shared, &self.identity, Via::Request, status, &body);
        }
    }
}

impl Exchange {
    /// Whether `token` is the call this request's gates wait for (and
    /// forgets it).
    fn take_call(&mut self, token: u32) -> bool {
        let mut s = self.identity.borrow_mut();
        if s.call == Some(token) {
            s.call = None;
            true
        } else {
            false
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // A request that ended without its record (no on_log) gives its
        // buffer place back.
        if let (true, Some(shared)) = (self.reserved, &self.shared) {
            shared.release();
        }
    }
}

impl HttpContext for Exchange {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let header = |name: &str| host::request_header(name).unwrap_or_default();
        self.api = Api::from_path(&header(":path"));
        self.identity.borrow_mut().api = self.api;
        match shared.admit() {
            Admission::Reserved => self.reserved = true,
            Admission::Unreserved => {}
            Admission::Refused => {
                // fail_closed: what cannot be recorded is not served.
                self.identity.borrow_mut().answered = true;
                let message = "the collector is unreachable or slow and this proxy's record buffer is full; the request was not forwarded, retry later";
                host::send_response(
                    503,
                    &[("content-type", "application/json"), ("retry-after", "1")],
                    error_body(self.api, ahead::unavailable_kind(self.api), message, None)
                        .as_bytes(),
                );
                return Action::Pause;
            }
        }
        // The URL and every header are judged before anything goes on.
        let path = header(":path");
        let headers = host::request_headers();
        let head = match &shared.inspector {
            Some(inspector) => {
                inspector.request_head(&path, &headers, &shared.token_headers, &mut self.tokens)
            }
            None => Head::unjudged(&path, &headers, &shared.token_headers),
        };
        for (name, value) in &head.set {
            host::set_request_header(name, Some(value));
        }
        if let Some(p) = &head.path {
            host::set_request_header(":path", Some(p));
        }
        // Ids as they went on (masked if they held something).
        let sent = |name: &str| {
            head.set
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .or_else(|| host::request_header(name))
        };
        let info = RequestInfo {
            request_id: sent("x-request-id").unwrap_or_default(),
            session_header: sent(&shared.config.session.header),
            method: header(":method"),
            path: head.recorded_path.clone(),
            authority: header(":authority"),
            content_type: header("content-type"),
            headers: head.recorded.clone(),
        };
        if !head.hits.is_empty() {
            shared
                .metrics
                .findings
                .add(head.hits.counts.values().map(|&n| u64::from(n)).sum());
            self.inspection.request.merge(&head.hits);
        }
        self.content_type = info.content_type.clone();
        self.recorder = Some(ExchangeRecorder::new(
            info,
            host::now_nanos(),
            shared.config.recording.max_body_bytes,
        ));

        if let Some(why) = &head.refuse {
            self.refuse_uninspectable(&shared, 400, "invalid_request_error", why);
            return Action::Pause;
        }
        if let Some(inspector) = &shared.inspector {
            if inspector.config.responses && inspector.masker().is_some() {
                // Answers must come back uncompressed to be inspected.
                host::set_request_header("accept-encoding", None);
            }
            if !end_of_stream {
                let encoding = header("content-encoding");
                if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity") {
                    let message = format!("compressed request bodies ({encoding}) are not inspected; send it uncompressed");
                    self.refuse_uninspectable(&shared, 415, "unsupported_media_type", &message);
                    return Action::Pause;
                }
                if !inspector.accepts(&self.content_type) {
                    let message = format!(
                        "content type {:?} is not inspected",
                        media_type(&self.content_type)
                    );
                    self.refuse_uninspectable(&shared, 415, "unsupported_media_type", &message);
                    return Action::Pause;
                }
                self.inspect_request = true;
                self.hold = inspector.config.hold_headers;
                self.identity.borrow_mut().body_pending = self.hold;
                host::set_request_header("content-length", None);
            }
        }
        let write_ahead = shared.config.recording.mode == RecordingMode::WriteAhead;
        if (write_ahead || shared.config.approval.is_some())
            && !end_of_stream
            && !self.inspect_request
        {
            // The record written ahead holds the whole body; an approval is
            // bound to its digest.
            self.hold_for_gates = true;
            host::set_request_header("content-length", None);
        }
        if shared.config.approval.is_some() {
            // The grant is for tracegate, not for the upstream.
            self.grant = host::request_header(GRANT_HEADER).filter(|g| !g.is_empty());
            host::set_request_header(GRANT_HEADER, None);
        }
        let auth = auth::authenticate(&shared, self.context_id, &self.identity);
        let parked = self.identity.borrow().parked;
        let action = match auth {
            Next::Stop if !parked => Action::Pause, // answered 401
            _ if end_of_stream => self.ready(&shared, &[], &[]),
            Next::Stop => Action::Pause,
            Next::Continue if self.hold => Action::Pause,
            Next::Continue => Action::Continue,
        };
        if matches!(action, Action::Continue) {
            // For the record: the upstream may see these headers now.
            let_go(&self.identity, UpstreamSaw::Headers);
        }
        action
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.is_answered() {
            return Action::Pause;
        }
        if self.hold_for_gates {
            self.request_bytes = body_size;
            if !end_of_stream {
                return Action::Pause;
            }
            let Some(shared) = self.shared.clone() else {
                return Action::Continue;
            };
            return self.request_body_end(&shared, body_size);
        }
        if !self.inspect_request {
            if let Some(r) = &mut self.recorder {
                capture(&mut r.request_body, BufferType::HttpRequestBody, body_size);
            }
            if !self.identity.borrow().parked {
                let_go(&self.identity, UpstreamSaw::Request);
            }
            return Action::Continue;
        }
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        // While buffering, body_size is everything received so far.
        self.request_bytes = body_size;
        if let Some(inspector) = &shared.inspector {
            let limit = inspector.config.max_body_bytes;
            if body_size > limit {
                let message = format!("request body exceeds {limit} bytes");
                self.refuse_uninspectable(&shared, 413, "request_too_large", &message);
                return Action::Pause;
            }
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.request_body_end(&shared, body_size)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // With trailers (HTTP/2, gRPC) the body never ends in the body
        // callback: inspect here.
        if !(self.inspect_request || self.hold_for_gates) || self.request_done || self.is_answered()
        {
            return Action::Continue;
        }
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        self.request_body_end(&shared, self.request_bytes)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if let Some(r) = &mut self.recorder {
            let status = host::response_header(":status")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let content_type = host::response_header("content-type").unwrap_or_default();
            r.response_headers(status, content_type, host::now_nanos());
        }
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let Some(inspector) = &shared.inspector else {
            return Action::Continue;
        };
        if self.is_answered()
            || end_of_stream
            || !inspector.config.responses
            || inspector.masker().is_none()
        {
            return Action::Continue;
        }
        let content_type = host::response_header("content-type").unwrap_or_default();
        let media = media_type(&content_type);
        let encoding = host::response_header("content-encoding").unwrap_or_default();
        // An answer without a type is judged like text: its label cannot
        // be trusted to tell us it holds nothing.
        let textual = media.ends_with("json") || media.starts_with("text/") || media.is_empty();
        if textual && !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity") {
            let message = format!(
                "the upstream answered compressed ({encoding}); tracegate cannot inspect it"
            );
            self.refuse_uninspectable(&shared, 502, "api_error", &message);
            return Action::Pause;
        }
        self.response = if media == "text/event-stream" {
            ResponseMode::Stream(Box::new(inspector.stream(self.api)))
        } else if media.is_empty() {
            ResponseMode::Sniff
        } else if textual {
            ResponseMode::Whole
        } else {
            ResponseMode::Pass
        };
        match self.response {
            ResponseMode::Pass => Action::Continue,
            ResponseMode::Sniff => {
                host::set_response_header("content-length", None);
                Action::Continue
            }
            // Without hold_headers, pausing here would stop the body
            // callbacks too: headers go on without a length instead.
            ResponseMode::Whole if inspector.config.hold_headers => {
                host::set_response_header("content-length", None);
                Action::Pause
            }
            ResponseMode::Whole | ResponseMode::Stream(_) => {
                host::set_response_header("content-length", None);
                Action::Continue
            }
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let Some(masker) = shared.inspector.as_ref().and_then(|i| i.masker()) else {
            if let Some(r) = &mut self.recorder {
                capture(
                    &mut r.response_body,
                    BufferType::HttpResponseBody,
                    body_size,
                );
            }
            return Action::Continue;
        };
        if matches!(self.response, ResponseMode::Sniff) {
            let first =
                host::buffer(BufferType::HttpResponseBody, body_size.min(16)).unwrap_or_default();
            if first.len() < 6 && !end_of_stream {
                // Too little to tell yet: Envoy keeps it until the next call.
                return Action::Pause;
            }
            self.response = match shared.inspector.as_ref() {
                Some(i) if looks_like_sse(&first) => {
                    ResponseMode::Stream(Box::new(i.stream(self.api)))
                }
                _ => ResponseMode::Whole,
            };
        }
        match &mut self.response {
            ResponseMode::Sniff => Action::Continue,
            ResponseMode::Pass => {
                if let Some(r) = &mut self.recorder {
                    capture(
                        &mut r.response_body,
                        BufferType::HttpResponseBody,
                        body_size,
                    );
                }
                Action::Continue
            }
            ResponseMode::Whole => {
                if !end_of_stream {
                    return Action::Pause;
                }
                let body =
                    host::buffer(BufferType::HttpResponseBody, body_size).unwrap_or_default();
                let content_type = self
                    .recorder
                    .as_ref()
                    .map(|r| r.response_content_type().to_string())
                    .unwrap_or_default();
                let inspector = shared.inspector.as_ref();
                let result = inspector.map(|i| {
                    i.response(
                        &content_type,
                        &body,
                        &mut self.tokens,
                        &mut self.inspection.response,
                    )
                });
                let sent = match result {
                    Some(Ok(Some(masked))) => {
                        host::replace_buffer(BufferType::HttpResponseBody, body_size, &masked);
                        masked
                    }
                    Some(Err(e)) => {
                        // Cannot be inspected: it must not reach the client.
                        let replacement = error_body(self.api, "api_error", &e, None).into_bytes();
                        host::replace_buffer(BufferType::HttpResponseBody, body_size, &replacement);
                        self.inspection.reason = e;
                        replacement
                    }
                    _ => body,
                };
                if shared
                    .inspector
                    .as_ref()
                    .is_some_and(|i| i.config.hold_headers)
                {
                    host::set_response_header("content-length", Some(&sent.len().to_string()));
                }
                if let Some(r) = &mut self.recorder {
                    r.response_body.set(&sent);
                }
                Action::Continue
            }
            ResponseMode::Stream(sse) => {
                if sse.broken.is_some() {
                    // Already ended with an error event: the rest is not
                    // even read.
                    host::replace_buffer(BufferType::HttpResponseBody, body_size, &[]);
                    return Action::Continue;
                }
                // Read in slices: a chunk of a stream being cut is not
                // copied in whole (linear memory never shrinks).
                let mut out = Vec::new();
                let mut at = 0;
                while at < body_size && sse.broken.is_none() {
                    let n = (body_size - at).min(STREAM_SLICE);
                    let Some(piece) = host::buffer_at(BufferType::HttpResponseBody, at, n) else {
                        break;
                    };
                    out.extend(sse.push(
                        masker,
                        &piece,
                        &mut self.tokens,
                        &mut self.inspection.response,
                    ));
                    at += n;
                }
                if end_of_stream && sse.broken.is_none() {
                    out.extend(sse.finish(masker, &mut self.tokens, &mut self.inspection.response));
                }
                if let Some(why) = &sse.broken {
                    // Nothing more of this stream is sent: it can no longer
                    // be inspected. The client's SDK raises the error event.
                    host::log(LogLevel::Warn, &format!("response stream cut: {why}"));
                    self.inspection.reason = format!("response stream cut: {why}");
                    out.extend(error_event(&why.to_string()));
                }
                host::replace_buffer(BufferType::HttpResponseBody, body_size, &out);
                if let Some(r) = &mut self.recorder {
                    let len = out.len();
                    r.response_body.push(len, &out);
                }
                Action::Continue
            }
        }
    }

    fn on_log(&mut self) {
        let (Some(shared), Some(mut recorder)) = (&self.shared, self.recorder.take()) else {
            return;
        };
        auth::forget(shared, self.context_id);
        let identity = self.identity.borrow_mut().identity.take();
        let unauthenticated = identity
            .as_ref()
            .is_some_and(|i| i.status() == tracegate_proto::v1::identity::Status::Rejected);
        recorder.set_identity(identity);
        if let Some(id) = self.identity.borrow().ahead.record_id() {
            recorder.request_record_id = id.to_string();
        }
        recorder.approval = self.identity.borrow().approval.record();
        let mut approval_refused = None;
        if let Some(a) = &recorder.approval {
            if !matches!(a.outcome.as_str(), "forwarded" | "forwarded_expired") {
                approval_refused = Some(if a.outcome == "approval_required" {
                    Verdict::AwaitingApproval
                } else {
                    Verdict::Denied
                });
                self.inspection.reason = a.detail.clone();
            }
        }
        if let Some(code) = host::property_u64(&["response", "code"]) {
            recorder.fallback_status(u32::try_from(code).unwrap_or(0));
        }
        // What the record states happened: never "forwarded" for a request
        // that did not go upstream whole. Envoy's response code details tell
        // the upstream's answers (`via_upstream`) from its own.
        let details = host::property_string(&["response", "code_details"]);
        let answered_by = AnsweredBy::of(
            self.identity.borrow().answered,
            recorder.status(),
            details.as_deref(),
        );
        if answered_by == AnsweredBy::Proxy {
            recorder.status_detail = details.unwrap_or_default();
        }
        recorder.answered_by = answered_by;
        let ending = {
            let s = self.identity.borrow();
            Ending {
                answered_by,
                unauthenticated,
                unrecorded: matches!(s.ahead, Ahead::Refused(_)),
                approval_refused,
                upstream: s.upstream,
            }
        };
        self.inspection.verdict = final_verdict(self.inspection.verdict, &ending);
        if self.inspection.reason.is_empty() {
            self.inspection.reason = match self.inspection.verdict {
                Verdict::Unrecorded => "its record could not be made durable before forwarding (write_ahead, fail_closed): answered 503".into(),
                Verdict::Abandoned => "the client went away before the request was forwarded".into(),
                Verdict::NotForwarded if answered_by == AnsweredBy::Proxy => format!(
                    "the proxy answered {} ({}) before the request was forwarded whole",
                    recorder.status(),
                    recorder.status_detail
                ),
                _ => String::new(),
            };
        }
        recorder.upstream = ending.upstream;
        if !self.tokens.is_empty() {
            // The client got tokenized values back; the record must not.
            if let Some(m) = shared.inspector.as_ref().and_then(|i| i.masker()) {
                let mut discard = tracegate_policy::mask::Hits::default();
                let tokens = &mut self.tokens;
                recorder
                    .response_body
                    .map_text(|t| m.mask(t, tokens, &mut discard));
            }
        }
        if self.inspect_request
            || !self.inspection.request.is_empty()
            || !self.inspection.response.is_empty()
            || self.inspection.verdict != Verdict::Forwarded
        {
            recorder.inspection = Some(self.inspection.to_proto());
        }
        let now = host::now_nanos();
        let millis = u64::try_from(now / 1_000_000).unwrap_or(0);
        let id = record_id(millis, &host::random_bytes());
        shared.enqueue(
            recorder.finish(id, shared.source.clone(), now),
            self.reserved,
        );
        self.reserved = false;
    }
}
