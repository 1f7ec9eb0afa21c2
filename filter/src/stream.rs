//! The per-request context: each proxy callback becomes an event of the
//! request's exchange, delivered by the worker.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

use tracegate_policy::exchange::{self, Event};

use crate::host;
use crate::stats::Callback;
use crate::worker;

pub struct Stream {
    id: u32,
    /// `None` without a configuration: the request is refused.
    worker: worker::Handle,
}

impl Stream {
    pub fn new(id: u32, worker: worker::Handle) -> Stream {
        worker::with(&worker, |w| w.open(id));
        Stream { id, worker }
    }

    fn deliver(&self, event: Event<'_>) -> Action {
        let Some(worker) = &self.worker else {
            return Action::Continue;
        };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            // Cannot happen (callbacks do not nest); never a panic.
            host::log(LogLevel::Error, "worker busy: event dropped");
            return Action::Continue;
        };
        match worker.deliver(self.id, self.id, event) {
            exchange::Action::Continue => Action::Continue,
            exchange::Action::Pause => Action::Pause,
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let id = self.id;
        worker::with(&self.worker, |w| w.close(id));
    }
}

impl Context for Stream {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body: usize,
        _trailers: usize,
    ) {
        let id = self.id;
        worker::timed(&self.worker, Callback::CallAnswer, || {
            worker::with(&self.worker, |w| w.http_answered(id, token, body))
        });
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        let id = self.id;
        worker::timed(&self.worker, Callback::CallAnswer, || {
            worker::with(&self.worker, |w| w.grpc_answered(id, token, status, size))
        });
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.worker.is_none() {
            // No policy in force (its configuration was refused): refuse
            // rather than serve unjudged and unrecorded.
            host::send_response(
                503,
                &[("content-type", "application/json")],
                br#"{"error":{"type":"api_error","code":"no_policy","message":"tracegate: no policy is configured"}}"#,
            );
            return Action::Pause;
        }
        worker::timed(&self.worker, Callback::RequestHeaders, || {
            let headers = host::request_headers();
            self.deliver(Event::RequestHeaders {
                headers: &headers,
                end_of_stream,
            })
        })
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        worker::timed(&self.worker, Callback::RequestBody, || {
            self.deliver(Event::RequestBody {
                size,
                end_of_stream,
            })
        })
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        worker::timed(&self.worker, Callback::RequestBody, || {
            self.deliver(Event::RequestTrailers)
        })
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.worker.is_none() {
            return Action::Continue;
        }
        worker::timed(&self.worker, Callback::ResponseHeaders, || {
            let headers = host::response_headers();
            // The first value of each, as the proxy's single-header read gives.
            let first = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            };
            let status = first(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
            self.deliver(Event::ResponseHeaders {
                status,
                content_type: first("content-type").unwrap_or_default(),
                content_encoding: first("content-encoding").unwrap_or_default(),
                end_of_stream,
            })
        })
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        worker::timed(&self.worker, Callback::ResponseBody, || {
            self.deliver(Event::ResponseBody {
                size,
                end_of_stream,
            })
        })
    }

    fn on_log(&mut self) {
        if self.worker.is_none() {
            return;
        }
        worker::timed(&self.worker, Callback::End, || {
            self.deliver(Event::End {
                code_details: host::property_string(&["response", "code_details"]),
            });
        });
    }
}
