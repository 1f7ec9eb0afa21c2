//! The answer: held whole and masked when it is JSON or text, masked event
//! by event when it is a stream of server-sent events, captured as it
//! passes otherwise. What the client gets is what the record holds.

use super::{Action, Effect, Exchange, Gateway, Host, Level, ResponseMode};
use crate::inspect::{media_type, Inspector};
use crate::llm::sse::reader::Broken;
use crate::llm::sse::SseMasker;
use crate::llm::sse::{error_event, looks_like_sse, typed_error_event};
use crate::llm::usage::UsageReader;

/// A stream's chunk is read this many bytes at a time: a chunk of a stream
/// being cut is not copied in whole (linear memory never shrinks).
const STREAM_SLICE: usize = 64 << 10;

impl Exchange {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn response_headers(
        &mut self,
        status: u32,
        content_type: String,
        encoding: &str,
        end_of_stream: bool,
        gw: &mut Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) -> Action {
        let media = media_type(&content_type);
        if let Some(r) = &mut self.recorder {
            r.response_headers(status, content_type, host.now_nanos());
        }
        let Some(inspector) = gw.policy.inspector.as_ref() else {
            return Action::Continue;
        };
        if self.answered_locally() || end_of_stream || !inspector.reads_answers() {
            return Action::Continue;
        }
        // An answer without a type is judged like text: its label cannot
        // be trusted to tell us it holds nothing.
        let textual = media.ends_with("json") || media.starts_with("text/") || media.is_empty();
        if textual && !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity") {
            let message = format!(
                "the upstream answered compressed ({encoding}); tracegate cannot inspect it"
            );
            self.refuse_uninspectable(502, "api_error", &message, gw, out);
            return Action::Pause;
        }
        self.response = if media == "text/event-stream" {
            ResponseMode::Stream(Box::new(self.stream_masker(inspector)))
        } else if media.is_empty() {
            ResponseMode::Sniff
        } else if textual {
            ResponseMode::Whole
        } else {
            ResponseMode::Pass
        };
        if matches!(self.response, ResponseMode::Pass) {
            return Action::Continue;
        }
        out.push(Effect::SetResponseHeader("content-length", None));
        // Without hold_headers, pausing here would stop the body callbacks
        // too: headers go on without a length instead.
        match self.response {
            ResponseMode::Whole if inspector.config.hold_headers => Action::Pause,
            _ => Action::Continue,
        }
    }

    pub(super) fn response_body(
        &mut self,
        size: usize,
        end_of_stream: bool,
        gw: &mut Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) -> Action {
        let masking = gw
            .policy
            .inspector
            .as_ref()
            .is_some_and(|i| i.masker().is_some());
        if !masking {
            self.capture_response(size, host);
            return Action::Continue;
        }
        if matches!(self.response, ResponseMode::Sniff) {
            let first = host.response_body(0, size.min(16)).unwrap_or_default();
            if first.len() < 6 && !end_of_stream {
                // Too little to tell yet: the proxy keeps it until the next call.
                return Action::Pause;
            }
            self.response = match gw.policy.inspector.as_ref() {
                Some(i) if looks_like_sse(&first) => {
                    ResponseMode::Stream(Box::new(self.stream_masker(i)))
                }
                _ => ResponseMode::Whole,
            };
        }
        match self.response {
            ResponseMode::Sniff => Action::Continue,
            ResponseMode::Pass => {
                self.capture_response(size, host);
                Action::Continue
            }
            ResponseMode::Whole if !end_of_stream => Action::Pause,
            ResponseMode::Whole => {
                self.whole_response(size, gw, host, out);
                Action::Continue
            }
            ResponseMode::Stream(_) => {
                self.stream_chunk(size, end_of_stream, gw, host, out);
                Action::Continue
            }
        }
    }

    /// The stream's masker; it reads the usage while the stream runs.
    fn stream_masker(&mut self, inspector: &Inspector) -> SseMasker {
        let mut sse = inspector.stream(self.api).with_guard(self.guard.clone());
        sse.usage = self.usage.take();
        sse.hide_usage_chunk = self.hide_usage_chunk;
        sse
    }

    /// The usage read from the answer (from the stream's masker, if it
    /// streamed).
    pub(super) fn take_usage(&mut self) -> Option<tracegate_proto::v1::Usage> {
        let reader = match &mut self.response {
            ResponseMode::Stream(sse) => sse.usage.take(),
            _ => self.usage.take(),
        };
        reader.map(UsageReader::into_usage)
    }

    fn capture_response(&mut self, size: usize, host: &dyn Host) {
        if let Some(r) = &mut self.recorder {
            super::request::capture(&mut r.response_body, size, |n| host.response_body(0, n));
        }
    }

    /// The whole answer is here: mask it, or replace it with an error when
    /// it cannot be inspected (it must not reach the client).
    fn whole_response(
        &mut self,
        size: usize,
        gw: &Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) {
        let Some(inspector) = gw.policy.inspector.as_ref() else {
            return;
        };
        let body = host.response_body(0, size).unwrap_or_default();
        let content_type = self
            .recorder
            .as_ref()
            .map(|r| r.response_content_type().to_string())
            .unwrap_or_default();
        let result = inspector.response(
            &content_type,
            &body,
            &mut self.tokens,
            &mut self.inspection.response,
            self.usage.as_mut(),
        );
        let mut replacement = match result {
            Ok(Some(masked)) => Some(masked),
            Ok(None) => None,
            Err(e) => {
                let error = super::reply::unreadable_answer(self.api, &e);
                self.inspection.reason = e;
                Some(error)
            }
        };
        if let Some(tool) = self.denied_call(replacement.as_deref().unwrap_or(&body)) {
            // The answer calls a tool the caller may not use: it is withheld,
            // replaced by a 403 in the API's shape (the status too, while the
            // headers are still held).
            if let Some(denial) = self.answer_denied(&tool, out) {
                let refusal = super::Refusal::Denied { rule: denial.rule };
                let reply = super::LocalReply::new(self.api, &refusal, &denial.message);
                if inspector.config.hold_headers {
                    out.push(Effect::SetResponseHeader(
                        ":status",
                        Some(reply.status.to_string()),
                    ));
                }
                replacement = Some(reply.body);
            }
        }
        let sent = replacement.as_deref().unwrap_or(&body);
        if inspector.config.hold_headers {
            out.push(Effect::SetResponseHeader(
                "content-length",
                Some(sent.len().to_string()),
            ));
        }
        if let Some(r) = &mut self.recorder {
            r.response_body.set(sent);
        }
        if let Some(bytes) = replacement {
            out.push(Effect::ReplaceResponseBody { len: size, bytes });
        }
    }

    /// The first tool the answer (a whole JSON body, as it goes to the
    /// client) calls that the exchange's guard does not allow.
    fn denied_call(&self, body: &[u8]) -> Option<String> {
        let guard = self.guard.as_ref()?;
        let text = std::str::from_utf8(body).ok()?;
        let mut tape = crate::json::Tape::default();
        tape.parse(text).ok()?;
        let mut calls = Vec::new();
        crate::access::answer_calls(&tape, text, &mut calls);
        guard.check(&calls).map(str::to_string)
    }

    /// A chunk of an event stream: masked event by event; what could still
    /// become a secret is held back until later bytes decide it.
    fn stream_chunk(
        &mut self,
        size: usize,
        end_of_stream: bool,
        gw: &Gateway,
        host: &dyn Host,
        out: &mut Vec<Effect>,
    ) {
        let Some(masker) = gw.policy.inspector.as_ref().and_then(|i| i.masker()) else {
            return;
        };
        let ResponseMode::Stream(sse) = &mut self.response else {
            return;
        };
        if sse.broken.is_some() {
            // Already ended with an error event: the rest is not even read.
            out.push(Effect::ReplaceResponseBody {
                len: size,
                bytes: Vec::new(),
            });
            return;
        }
        let hits = &mut self.inspection.response;
        let mut sent = Vec::new();
        let mut at = 0;
        while at < size && sse.broken.is_none() {
            let n = (size - at).min(STREAM_SLICE);
            let Some(piece) = host.response_body(at, n) else {
                break;
            };
            sent.extend(sse.push(masker, &piece, &mut self.tokens, hits));
            at += n;
        }
        if end_of_stream && sse.broken.is_none() {
            sent.extend(sse.finish(masker, &mut self.tokens, hits));
        }
        match sse.broken.clone() {
            Some(Broken::ToolDenied(tool)) => {
                // The event calling it was not sent; the stream ends with a
                // permission error the SDKs raise.
                if let Some(denial) = self.answer_denied(&tool, out) {
                    let kind = if self.api == crate::llm::Api::Anthropic {
                        "permission_error"
                    } else {
                        "permission_denied"
                    };
                    sent.extend(typed_error_event(
                        kind,
                        "permission_denied",
                        &denial.message,
                        Some(&denial.rule),
                    ));
                }
            }
            Some(why) => {
                // Nothing more of this stream is sent: it can no longer be
                // inspected. The client's SDK raises the error event.
                out.push(Effect::Log(
                    Level::Warn,
                    format!("response stream cut: {why}"),
                ));
                self.inspection.reason = format!("response stream cut: {why}");
                sent.extend(error_event(&why.to_string()));
            }
            None => {}
        }
        if let Some(r) = &mut self.recorder {
            r.response_body.push(sent.len(), &sent);
        }
        out.push(Effect::ReplaceResponseBody {
            len: size,
            bytes: sent,
        });
    }
}
