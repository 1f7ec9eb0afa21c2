//! The per-request context: observes one HTTP exchange and, when the stream
//! ends, hands its record to the worker's outbox.
//!
//! Bodies stream through untouched: each chunk is copied into the record (up
//! to the capture limit) and continues at once.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType};
use std::rc::Rc;

use tracegate_policy::record::{record_id, BodyCapture};
use tracegate_policy::{ExchangeRecorder, RequestInfo};

use crate::auth::{self, IdentitySlot, Next};
use crate::host;
use crate::root::Shared;

pub struct Exchange {
    context_id: u32,
    shared: Option<Rc<Shared>>,
    recorder: Option<ExchangeRecorder>,
    identity: IdentitySlot,
}

impl Exchange {
    pub fn new(context_id: u32, shared: Option<Rc<Shared>>) -> Self {
        Self {
            context_id,
            shared,
            recorder: None,
            identity: IdentitySlot::default(),
        }
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

impl Context for Exchange {}

impl HttpContext for Exchange {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = &self.shared else {
            return Action::Continue;
        };
        let header = |name: &str| host::request_header(name).unwrap_or_default();
        let info = RequestInfo {
            request_id: header("x-request-id"),
            session_header: host::request_header(&shared.config.session.header),
            method: header(":method"),
            path: header(":path"),
            authority: header(":authority"),
            content_type: header("content-type"),
        };
        self.recorder = Some(ExchangeRecorder::new(
            info,
            host::now_nanos(),
            shared.config.recording.max_body_bytes,
        ));
        match auth::authenticate(shared, self.context_id, &self.identity) {
            Next::Continue => Action::Continue,
            Next::Stop => Action::Pause,
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if let Some(r) = &mut self.recorder {
            capture(&mut r.request_body, BufferType::HttpRequestBody, body_size);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(r) = &mut self.recorder {
            let status = host::response_header(":status")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let content_type = host::response_header("content-type").unwrap_or_default();
            r.response_headers(status, content_type, host::now_nanos());
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if let Some(r) = &mut self.recorder {
            capture(
                &mut r.response_body,
                BufferType::HttpResponseBody,
                body_size,
            );
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let (Some(shared), Some(mut recorder)) = (&self.shared, self.recorder.take()) else {
            return;
        };
        auth::forget(shared, self.context_id);
        recorder.set_identity(self.identity.borrow_mut().take());
        if let Some(code) = host::property_u64(&["response", "code"]) {
            recorder.fallback_status(u32::try_from(code).unwrap_or(0));
        }
        let now = host::now_nanos();
        let millis = u64::try_from(now / 1_000_000).unwrap_or(0);
        let id = record_id(millis, &host::random_bytes());
        shared.enqueue(recorder.finish(id, shared.source.clone(), now));
    }
}
