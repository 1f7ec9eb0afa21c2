//! Safe wrappers over the host calls the filter makes.
//!
//! Nothing here can panic: the SDK's trait helpers unwrap host statuses,
//! `proxy_wasm::hostcalls` panics on statuses it does not expect, and
//! `get_map_value` unwraps the UTF-8 decoding of header values, so a client
//! (or a header set a moment too late) could trap the VM. The calls go
//! through `abi`, and every one returns an `Option` or ignores a failed
//! status; only the two call-outs go through the SDK, which must register
//! them to route their answers.

mod abi;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType};
use std::time::Duration;

pub fn log(level: LogLevel, message: &str) {
    let _ = abi::log(level as u32, message);
}

/// Host wall clock in Unix nanoseconds (0 if the host cannot tell).
pub fn now_nanos() -> i64 {
    abi::now_nanos().map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX))
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Every request header, in order.
pub fn request_headers() -> Vec<(String, String)> {
    abi::get_headers(MapType::HttpRequestHeaders as u32).unwrap_or_default()
}

/// Every response header, in one host call (each call crossing into the
/// host and back costs more than reading a few headers more).
pub fn response_headers() -> Vec<(String, String)> {
    abi::get_headers(MapType::HttpResponseHeaders as u32).unwrap_or_default()
}

pub fn buffer(kind: BufferType, len: usize) -> Option<Vec<u8>> {
    buffer_at(kind, 0, len)
}

/// `len` bytes of a body buffer from `start`.
pub fn buffer_at(kind: BufferType, start: usize, len: usize) -> Option<Vec<u8>> {
    abi::get_buffer(kind as u32, start, len).ok().flatten()
}

/// A property as text, e.g. `["plugin_name"]`.
pub fn property_string(path: &[&str]) -> Option<String> {
    let bytes = abi::get_property(path).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

/// An integer property, e.g. `["response", "code"]` (8 bytes, little endian).
pub fn property_u64(path: &[&str]) -> Option<u64> {
    let bytes = abi::get_property(path).ok().flatten()?;
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Starts a unary gRPC call; the answer arrives in `on_grpc_call_response`.
pub fn grpc_call(
    cluster: &str,
    service: &str,
    method: &str,
    message: &[u8],
    timeout: Duration,
) -> Result<u32, String> {
    // Through the SDK: it must register the call to route the answer to
    // this context. (It panics only on statuses Envoy does not return for
    // this call; BadArgument, ParseFailure and InternalFailure are errors.)
    hostcalls::dispatch_grpc_call(cluster, service, method, Vec::new(), Some(message), timeout)
        .map_err(|status| format!("{status:?}"))
}

pub fn grpc_response(len: usize) -> Option<Vec<u8>> {
    buffer(BufferType::GrpcReceiveBuffer, len)
}

/// This root context, retiring (`on_done` answered false), may go now.
pub fn done() {
    let _ = abi::done();
}

pub fn set_tick_period(period: Duration) {
    let _ = abi::set_tick_period(millis(period));
}

/// A counter, shown by Envoy's stats as `wasmcustom.<name>`.
#[derive(Debug, Clone, Copy)]
pub struct Counter(Option<u32>);

impl Counter {
    pub fn define(name: &str) -> Self {
        Counter(abi::define_metric(MetricType::Counter as u32, name).ok())
    }

    pub fn add(self, n: u64) {
        if let (Some(id), Ok(n)) = (self.0, i64::try_from(n)) {
            let _ = abi::increment_metric(id, n);
        }
    }
}

/// A gauge, shown by Envoy's stats as `wasmcustom.<name>`.
#[derive(Debug, Clone, Copy)]
pub struct Gauge(Option<u32>);

impl Gauge {
    pub fn define(name: &str) -> Self {
        Gauge(abi::define_metric(MetricType::Gauge as u32, name).ok())
    }

    pub fn set(self, value: u64) {
        if let Some(id) = self.0 {
            let _ = abi::record_metric(id, value);
        }
    }
}

/// Bytes of linear memory this VM holds (it only grows).
pub fn wasm_memory_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0) as u64 * 65_536
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

/// 10 random bytes for a record id. WASI `random_get` should never fail; if it
/// does, a counter still keeps ids of this worker distinct.
pub fn random_bytes() -> [u8; 10] {
    let mut bytes = [0u8; 10];
    if getrandom::fill(&mut bytes).is_err() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static FALLBACK: AtomicU64 = AtomicU64::new(0);
        let n = FALLBACK.fetch_add(1, Ordering::Relaxed);
        bytes[..8].copy_from_slice(&n.to_le_bytes());
    }
    bytes
}

/// Sets (`Some`) or removes (`None`) a request header.
pub fn set_request_header(name: &str, value: Option<&str>) {
    let _ = abi::set_header(MapType::HttpRequestHeaders as u32, name, value);
}

/// Answers the current request locally; the upstream never sees it.
pub fn send_response(status: u32, headers: &[(&str, &str)], body: &[u8]) {
    let _ = abi::send_local_response(status, headers, body);
}

/// Starts an HTTP call through an Envoy cluster; the answer arrives in
/// `on_http_call_response` of the context that made it.
pub fn http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<u32, String> {
    // Through the SDK, as `grpc_call` (BadArgument and InternalFailure are
    // errors).
    hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, Vec::new(), timeout)
        .map_err(|status| format!("{status:?}"))
}

/// `:status` of the HTTP call being answered; `None` when the call failed
/// without a response (timeout, reset, no healthy upstream).
pub fn http_call_status() -> Option<u32> {
    let bytes = abi::get_header(MapType::HttpCallResponseHeaders as u32, ":status")
        .ok()
        .flatten()?;
    std::str::from_utf8(&bytes).ok()?.parse().ok()
}

pub fn http_call_body(len: usize) -> Vec<u8> {
    buffer(BufferType::HttpCallResponseBody, len).unwrap_or_default()
}

/// Makes later host calls act on another context (a paused request), so the
/// root context can finish what that request was waiting for.
pub fn set_effective_context(context_id: u32) -> bool {
    abi::set_effective_context(context_id).is_ok()
}

pub fn resume_request() {
    // proxy_continue_stream(HttpRequest)
    let _ = abi::continue_stream(0);
}

/// Replaces the first `len` bytes of a body buffer (the whole buffered body,
/// or the current chunk of a stream) with `bytes`.
pub fn replace_buffer(kind: BufferType, len: usize, bytes: &[u8]) -> bool {
    abi::set_buffer(kind as u32, 0, len, bytes).is_ok()
}

/// Sets (`Some`) or removes (`None`) a response header.
pub fn set_response_header(name: &str, value: Option<&str>) {
    let _ = abi::set_header(MapType::HttpResponseHeaders as u32, name, value);
}
