//! The request: its URL and headers judged, the caller authenticated, the
//! body held and judged when it must be. Request bodies are held whole
//! (headers too, with `inspection.hold_headers`) until inspected: masked,
//! checked against block rules, or refused; only then do they go upstream.

use super::{
    count, Action, BodyMode, Effect, Exchange, Gateway, Host, Level, LocalReply, Phase, Refusal,
    Stat,
};
use crate::access::Caller;
use crate::approval::GRANT_HEADER;
use crate::config::RecordingMode;
use crate::inspect::{media_type, Head, Inspector, RequestVerdict};
use crate::jwt::{identity_record, Decision, Extracted, Reason, Rejection};
use crate::llm::usage::{self, Asked, StreamOptions, UsageReader};
use crate::llm::Api;
use crate::record::{ExchangeRecorder, RequestInfo, UpstreamSaw};

/// How the caller's authentication went, for now.
enum Auth {
    /// Decided and allowed (or not required).
    Passed,
    /// Parked until the provider's keys arrive.
    Parked,
    /// Answered: 401, or 403 by access rules.
    Refused,
}

fn first<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

impl Exchange {
    pub(super) fn request_headers(
        &mut self,
        headers: &[(String, String)],
        end_of_stream: bool,
        gw: &mut Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) -> Action {
        let header = |name: &str| first(headers, name).unwrap_or_default().to_string();
        let path = header(":path");
        self.api = Api::from_path(&path);
        self.phase = Phase::Receiving;
        match gw.admit(out) {
            super::Admission::Reserved => self.reserved = true,
            super::Admission::Unreserved => {}
            super::Admission::Refused => {
                // fail_closed: what cannot be recorded is not served.
                let message = "the collector is unreachable or slow and this proxy's record buffer is full; the request was not forwarded, retry later";
                let reply = LocalReply::new(self.api, &Refusal::Unrecorded, message);
                self.respond(reply, gw, out);
                return Action::Pause;
            }
        }
        // The URL and every header are judged before anything goes on.
        let policy = &gw.policy;
        let head = match &policy.inspector {
            Some(inspector) => {
                inspector.request_head(&path, headers, &policy.token_headers, &mut self.tokens)
            }
            None => Head::unjudged(&path, headers, &policy.token_headers),
        };
        for (name, value) in &head.set {
            out.push(Effect::SetRequestHeader(name.clone(), Some(value.clone())));
        }
        if let Some(p) = &head.path {
            out.push(Effect::SetRequestHeader(":path".into(), Some(p.clone())));
        }
        // Ids as they went on (masked if they held something).
        let sent = |name: &str| {
            head.set
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .or_else(|| first(headers, name).map(str::to_string))
        };
        let info = RequestInfo {
            request_id: sent("x-request-id").unwrap_or_default(),
            session_header: sent(&policy.config.session.header),
            method: header(":method"),
            path: head.recorded_path.clone(),
            authority: header(":authority"),
            content_type: header("content-type"),
            headers: head.recorded.clone(),
        };
        if !head.hits.is_empty() {
            let found = head.hits.counts.values().map(|&n| u64::from(n)).sum();
            out.push(Effect::Add(Stat::Findings, found));
            self.inspection.request.merge(&head.hits);
        }
        if policy.access.is_some() {
            self.access = super::AccessState::Pending;
            self.access_path = head.path.clone().unwrap_or_else(|| path.clone());
        }
        self.request_content_type = info.content_type.clone();
        self.recorder = Some(ExchangeRecorder::new(
            info,
            host.now_nanos(),
            policy.config.recording.max_body_bytes,
        ));
        if let Some(why) = &head.refuse {
            self.refuse_uninspectable(400, "invalid_request_error", why, gw, out);
            return Action::Pause;
        }
        if let Some(refused) = self.choose_body_mode(headers, end_of_stream, gw, out) {
            return refused;
        }
        if gw.policy.config.approval.is_some() {
            // The grant is for tracegate, not for the upstream.
            self.grant = sent(GRANT_HEADER).filter(|g| !g.is_empty());
            out.push(Effect::SetRequestHeader(GRANT_HEADER.into(), None));
        }
        let auth = self.authenticate(headers, gw, host, out);
        let action = match auth {
            Auth::Refused => Action::Pause,
            _ if end_of_stream => self.complete(&[], &[], gw, host, out),
            Auth::Parked => Action::Pause,
            Auth::Passed if self.headers_held(gw) => Action::Pause,
            Auth::Passed => Action::Continue,
        };
        if action == Action::Continue {
            // For the record: the upstream may see these headers now.
            self.let_go(UpstreamSaw::Headers);
        }
        action
    }

    /// Whether the body is held, and for what; refuses (415) a body that
    /// cannot be inspected.
    fn choose_body_mode(
        &mut self,
        headers: &[(String, String)],
        end_of_stream: bool,
        gw: &mut Gateway,
        out: &mut Vec<Effect>,
    ) -> Option<Action> {
        if let Some(inspector) = &gw.policy.inspector {
            if inspector.config.responses && inspector.masker().is_some() {
                // Answers must come back uncompressed to be inspected.
                out.push(Effect::SetRequestHeader("accept-encoding".into(), None));
            }
            if !end_of_stream {
                let encoding = first(headers, "content-encoding").unwrap_or_default();
                let message = if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity")
                {
                    Some(format!("compressed request bodies ({encoding}) are not inspected; send it uncompressed"))
                } else if !inspector.accepts(&self.request_content_type) {
                    Some(format!(
                        "content type {:?} is not inspected",
                        media_type(&self.request_content_type)
                    ))
                } else {
                    None
                };
                if let Some(message) = message {
                    self.refuse_uninspectable(415, "unsupported_media_type", &message, gw, out);
                    return Some(Action::Pause);
                }
                self.body = BodyMode::Inspected;
                out.push(Effect::SetRequestHeader("content-length".into(), None));
            }
        }
        let config = &gw.policy.config;
        let gated = config.recording.mode == RecordingMode::WriteAhead || config.approval.is_some();
        if gated && !end_of_stream && self.body == BodyMode::Streams {
            // The record written ahead holds the whole body; an approval is
            // bound to its digest.
            self.body = BodyMode::HeldForGates;
            out.push(Effect::SetRequestHeader("content-length".into(), None));
        }
        None
    }

    /// Reads the caller's token and acts on the decision.
    fn authenticate(
        &mut self,
        headers: &[(String, String)],
        gw: &mut Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) -> Auth {
        let Some(auth) = gw.policy.auth.as_mut() else {
            return match self.access_caller(Caller::Anonymous, gw, out) {
                true => Auth::Passed,
                false => Auth::Refused,
            };
        };
        let token = auth.extract(|name| first(headers, name).map(str::to_string));
        let decision = auth.decide(token.as_ref(), now_ms(host), true);
        if let Decision::NeedKeys { provider } = decision {
            if let Some(token) = token {
                if gw.park(self.id, provider) {
                    self.parked_token = Some(token);
                    self.phase = Phase::WaitingForKeys { complete: false };
                    return Auth::Parked;
                }
            }
            let overflow = Decision::Rejected(Rejection::new(
                Reason::JwksUnavailable,
                "too many requests are waiting for signing keys",
            ));
            return self.apply_decision(&overflow, None, gw, out);
        }
        self.apply_decision(&decision, token.as_ref(), gw, out)
    }

    /// Applies a final decision on the caller.
    fn apply_decision(
        &mut self,
        decision: &Decision,
        token: Option<&Extracted>,
        gw: &mut Gateway,
        out: &mut Vec<Effect>,
    ) -> Auth {
        let Some(auth) = gw.policy.auth.as_ref() else {
            return Auth::Passed;
        };
        count_decision(decision, out);
        self.identity = identity_record(decision);
        let rejection = match decision {
            Decision::Rejected(r) => r.clone(),
            // Never forwarded without a decision (fail closed). `decide` with
            // `allow_fetch = false` does not return this.
            Decision::NeedKeys { .. } => {
                Rejection::new(Reason::JwksUnavailable, "signing keys are not available")
            }
            Decision::Anonymous | Decision::Verified { .. } => {
                let changes = auth.header_changes(decision, token);
                for name in changes.remove {
                    out.push(Effect::SetRequestHeader(name, None));
                }
                for (name, value) in changes.set {
                    out.push(Effect::SetRequestHeader(name, Some(value)));
                }
                let caller = match decision {
                    Decision::Verified { identity, .. } => {
                        Caller::Verified(&identity.access_claims)
                    }
                    _ => Caller::Anonymous,
                };
                return match self.access_caller(caller, gw, out) {
                    true => Auth::Passed,
                    false => Auth::Refused,
                };
            }
        };
        out.push(Effect::Log(
            Level::Debug,
            format!("401 {}: {}", rejection.reason.as_str(), rejection.detail),
        ));
        let reply = LocalReply::new(self.api, &Refusal::Unauthenticated(rejection), "");
        self.respond(reply, gw, out);
        Auth::Refused
    }

    /// The keys the exchange waited for are there (or not): decide, then go
    /// on as far as the request has come.
    pub(super) fn keys_ready(&mut self, gw: &mut Gateway, host: &dyn Host, out: &mut Vec<Effect>) {
        let Phase::WaitingForKeys { complete } = self.phase else {
            return;
        };
        let token = self.parked_token.take();
        let Some(auth) = gw.policy.auth.as_mut() else {
            return;
        };
        let decision = auth.decide(token.as_ref(), now_ms(host), false);
        self.phase = Phase::Receiving;
        if let Auth::Passed = self.apply_decision(&decision, token.as_ref(), gw, out) {
            if complete {
                // The request ended while parked: its gates run now, with
                // the identity just decided.
                if self.run_gates(gw, host, out) == Action::Continue {
                    out.push(Effect::Resume);
                }
            } else if !self.headers_held(gw) {
                // Headers go on; the body's end runs the gates.
                self.let_go(UpstreamSaw::Headers);
                out.push(Effect::Resume);
            }
        }
    }

    pub(super) fn request_body(
        &mut self,
        size: usize,
        end_of_stream: bool,
        gw: &mut Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) -> Action {
        if self.answered_locally() {
            return Action::Pause;
        }
        match self.body {
            BodyMode::Streams => {
                if let Some(r) = &mut self.recorder {
                    capture(&mut r.request_body, size, |n| host.request_body(0, n));
                }
                if !matches!(self.phase, Phase::WaitingForKeys { .. }) {
                    self.let_go(UpstreamSaw::Request);
                }
                Action::Continue
            }
            BodyMode::HeldForGates | BodyMode::Inspected => {
                // While held, `size` is everything received so far.
                self.body_bytes = size;
                let limit = gw
                    .policy
                    .inspector
                    .as_ref()
                    .map(|i| i.config.max_body_bytes);
                if let (BodyMode::Inspected, Some(limit)) = (self.body, limit) {
                    if size > limit {
                        let message = format!("request body exceeds {limit} bytes");
                        self.refuse_uninspectable(413, "request_too_large", &message, gw, out);
                        return Action::Pause;
                    }
                }
                if !end_of_stream {
                    return Action::Pause;
                }
                self.body_end(size, gw, host, out)
            }
        }
    }

    pub(super) fn request_trailers(
        &mut self,
        gw: &mut Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) -> Action {
        // With trailers (HTTP/2, gRPC) the body never ends in the body
        // callback: it ends here.
        let receiving = matches!(
            self.phase,
            Phase::Receiving | Phase::WaitingForKeys { complete: false }
        );
        if self.body == BodyMode::Streams || !receiving {
            return Action::Continue;
        }
        self.body_end(self.body_bytes, gw, host, out)
    }

    /// The held body is complete: judge it (if inspected), then the gates.
    fn body_end(
        &mut self,
        size: usize,
        gw: &mut Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) -> Action {
        let body = host.request_body(0, size).unwrap_or_default();
        let Some(inspector) = gw.policy.inspector.as_ref() else {
            if let Some(r) = &mut self.recorder {
                r.request_body.set(&body);
            }
            return self.complete(&body, &body, gw, host, out);
        };
        let verdict = inspector.request(&self.request_content_type, &body, &mut self.tokens);
        let masked = match verdict {
            RequestVerdict::Forward {
                body: masked,
                hits,
                rules,
                marks,
                facts,
                asked,
            } => {
                self.marks = marks;
                self.access_facts = facts;
                self.read_usage(asked);
                out.push(Effect::Add(
                    Stat::Findings,
                    hits.counts.values().map(|&n| u64::from(n)).sum(),
                ));
                self.inspection.rules_risk = inspector.rules_risk(&rules);
                self.inspection.request.merge(&hits);
                self.inspection.rules = rules;
                masked
            }
            RequestVerdict::Blocked {
                rule,
                message,
                hits,
                rules,
                asked,
            } => {
                self.read_usage(asked);
                out.push(count(Stat::Blocked));
                self.inspection.rules_risk = inspector.rules_risk(&rules);
                self.inspection.request.merge(&hits);
                self.inspection.rules = rules;
                self.inspection.verdict = crate::record::Verdict::Blocked;
                self.inspection.blocked_rule = rule.id.clone();
                self.inspection.reason = message.clone();
                let reply =
                    LocalReply::new(self.api, &Refusal::Blocked { rule: rule.id }, &message);
                self.respond(reply, gw, out);
                return Action::Pause;
            }
            RequestVerdict::Refused {
                status,
                kind,
                message,
            } => {
                self.refuse_uninspectable(status, kind, &message, gw, out);
                return Action::Pause;
            }
        };
        let masked = self.ask_for_usage(masked, &body, inspector);
        let sent = masked.as_deref().unwrap_or(&body);
        if self.headers_held(gw) {
            // Headers are still here: give them the length of what is sent.
            out.push(Effect::SetRequestHeader(
                "content-length".into(),
                Some(sent.len().to_string()),
            ));
        }
        if let Some(r) = &mut self.recorder {
            r.request_body.set(sent);
        }
        self.prepare_gates(&body, sent, gw, host);
        if let Some(bytes) = masked {
            out.push(Effect::ReplaceRequestBody { len: size, bytes });
        }
        self.gates_or_keys(gw, host, out)
    }

    /// An LLM API call's usage is read from its answer; the request says
    /// its model.
    fn read_usage(&mut self, asked: Asked) {
        if self.api != Api::Other {
            self.usage = Some(UsageReader::new(self.api, &asked.model));
        }
        self.asked = asked;
    }

    /// A streamed OpenAI chat request states usage only if asked: ask
    /// upstream for a client that did not (its stream then drops the extra
    /// chunk). Only where answers are read, so the chunk can be dropped.
    /// Returns the body to send instead, if any.
    fn ask_for_usage(
        &mut self,
        masked: Option<Vec<u8>>,
        body: &[u8],
        inspector: &Inspector,
    ) -> Option<Vec<u8>> {
        let asked = &self.asked;
        if self.api != Api::OpenAiChat
            || !asked.stream
            || asked.options == StreamOptions::IncludeUsage
            || !inspector.reads_answers()
        {
            return masked;
        }
        let sent = masked.as_deref().unwrap_or(body);
        match usage::ask_for_usage(sent, asked.options) {
            Some(with_usage) => {
                self.hide_usage_chunk = true;
                Some(with_usage)
            }
            None => masked,
        }
    }

    /// The request is complete and cleared by inspection: the gates
    /// (approval, write-ahead) let it go on now or later. `raw` is the body
    /// as the caller sent it, `sent` as it goes upstream.
    fn complete(
        &mut self,
        raw: &[u8],
        sent: &[u8],
        gw: &mut Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) -> Action {
        self.prepare_gates(raw, sent, gw, host);
        self.gates_or_keys(gw, host, out)
    }

    fn gates_or_keys(
        &mut self,
        gw: &mut Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) -> Action {
        match self.phase {
            // Authentication still waits for keys: they run the gates.
            Phase::WaitingForKeys { .. } => {
                self.phase = Phase::WaitingForKeys { complete: true };
                Action::Pause
            }
            _ => self.run_gates(gw, host, out),
        }
    }

    pub(super) fn refuse_uninspectable(
        &mut self,
        status: u32,
        kind: &'static str,
        message: &str,
        gw: &mut Gateway,
        out: &mut Vec<Effect>,
    ) {
        out.push(count(Stat::Refused));
        self.inspection.verdict = crate::record::Verdict::Refused;
        self.inspection.reason = message.to_string();
        let reply = LocalReply::new(self.api, &Refusal::Uninspectable { status, kind }, message);
        self.respond(reply, gw, out);
    }

    /// Notes that the request went on this far (never less than before).
    pub(super) fn let_go(&mut self, what: UpstreamSaw) {
        self.upstream = self.upstream.max(what);
    }
}

fn count_decision(decision: &Decision, out: &mut Vec<Effect>) {
    match decision {
        Decision::Anonymous => out.push(count(Stat::JwtAnonymous)),
        Decision::Verified { cached, .. } => {
            out.push(count(Stat::JwtVerified));
            if *cached {
                out.push(count(Stat::JwtCacheHits));
            }
        }
        Decision::Rejected(r) => {
            out.push(count(Stat::JwtRejected(r.reason)));
            if r.cached {
                out.push(count(Stat::JwtNegativeCacheHits));
            }
        }
        Decision::NeedKeys { .. } => {}
    }
}

pub(super) fn now_ms(host: &dyn Host) -> u64 {
    u64::try_from(host.now_nanos() / 1_000_000).unwrap_or(0)
}

/// Copies as much of the current body chunk as the capture still has room
/// for; `read(n)` reads its first `n` bytes.
pub(super) fn capture(
    body: &mut crate::record::BodyCapture,
    chunk_len: usize,
    read: impl Fn(usize) -> Option<Vec<u8>>,
) {
    let want = chunk_len.min(body.room());
    let bytes = if want > 0 {
        read(want).unwrap_or_default()
    } else {
        Vec::new()
    };
    body.push(chunk_len, &bytes);
}
