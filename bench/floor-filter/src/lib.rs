//! The floor under any filter that inspects whole bodies, for `make bench`:
//! it does what tracegate makes Envoy do for every request, and nothing
//! else. Request and response headers are held until the body has ended,
//! bodies are buffered and copied into the VM, the headers tracegate reads
//! are read, and the response code is read at the end. No policy, no
//! record. The bench runs it as one more listener beside passthrough and
//! tracegate, so the table shows which part of tracegate's cost any such
//! filter pays in this Envoy and which part is tracegate's own.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor))
    }
}

struct Floor;

impl Context for Floor {}

/// Holds until the end of the stream, then reads what arrived.
fn at_end(end_of_stream: bool) -> Action {
    if end_of_stream {
        Action::Continue
    } else {
        Action::Pause
    }
}

/// Copies a whole body into the VM, as an inspecting filter must (host
/// errors are ignored: there is nothing to decide here).
fn read_body(buffer: BufferType, size: usize) {
    std::hint::black_box(hostcalls::get_buffer(buffer, 0, size).ok());
}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        // As bytes: the SDK's text variants panic on a value that is not
        // UTF-8, which would trap the VM on a client's header.
        std::hint::black_box(hostcalls::get_map_bytes(MapType::HttpRequestHeaders).ok());
        at_end(end_of_stream)
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            read_body(BufferType::HttpRequestBody, size);
        }
        at_end(end_of_stream)
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        for name in [":status", "content-type", "content-encoding"] {
            std::hint::black_box(
                hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name).ok(),
            );
        }
        at_end(end_of_stream)
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            read_body(BufferType::HttpResponseBody, size);
        }
        at_end(end_of_stream)
    }

    fn on_log(&mut self) {
        std::hint::black_box(hostcalls::get_property(vec!["response", "code"]).ok());
    }
}
