//! Safe wrappers over the host calls the filter makes.
//!
//! The SDK's trait helpers unwrap host statuses, and `get_map_value` unwraps
//! UTF-8 decoding of header values: a client could trap the VM with one odd
//! header. Every call here returns an `Option` or ignores a failed status
//! instead.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType};
use std::time::{Duration, UNIX_EPOCH};

pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// Host wall clock in Unix nanoseconds (0 if the host cannot tell).
pub fn now_nanos() -> i64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn header(map: MapType, name: &str) -> Option<String> {
    let bytes = hostcalls::get_map_value_bytes(map, name).ok().flatten()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

pub fn request_header(name: &str) -> Option<String> {
    header(MapType::HttpRequestHeaders, name)
}

pub fn response_header(name: &str) -> Option<String> {
    header(MapType::HttpResponseHeaders, name)
}

pub fn buffer(kind: BufferType, len: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(kind, 0, len).ok().flatten()
}

/// A property as text, e.g. `["plugin_name"]`.
pub fn property_string(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

/// An integer property, e.g. `["response", "code"]` (8 bytes, little endian).
pub fn property_u64(path: &[&str]) -> Option<u64> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
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
    hostcalls::dispatch_grpc_call(cluster, service, method, Vec::new(), Some(message), timeout)
        .map_err(|status| format!("{status:?}"))
}

pub fn grpc_response(len: usize) -> Option<Vec<u8>> {
    buffer(BufferType::GrpcReceiveBuffer, len)
}

pub fn set_tick_period(period: Duration) {
    let _ = hostcalls::set_tick_period(period);
}

/// A counter, shown by Envoy's stats as `wasmcustom.<name>`.
#[derive(Debug, Clone, Copy)]
pub struct Counter(Option<u32>);

impl Counter {
    pub fn define(name: &str) -> Self {
        Counter(hostcalls::define_metric(MetricType::Counter, name).ok())
    }

    pub fn add(self, n: u64) {
        if let (Some(id), Ok(n)) = (self.0, i64::try_from(n)) {
            let _ = hostcalls::increment_metric(id, n);
        }
    }
}

/// A gauge, shown by Envoy's stats as `wasmcustom.<name>`.
#[derive(Debug, Clone, Copy)]
pub struct Gauge(Option<u32>);

impl Gauge {
    pub fn define(name: &str) -> Self {
        Gauge(hostcalls::define_metric(MetricType::Gauge, name).ok())
    }

    pub fn set(self, value: u64) {
        if let Some(id) = self.0 {
            let _ = hostcalls::record_metric(id, value);
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
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
}

/// Answers the current request locally; the upstream never sees it.
pub fn send_response(status: u32, headers: &[(&str, &str)], body: &[u8]) {
    let _ = hostcalls::send_http_response(status, headers.to_vec(), Some(body));
}

/// Starts an HTTP call through an Envoy cluster; the answer arrives in
/// `on_http_call_response` of the context that made it.
pub fn http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<u32, String> {
    hostcalls::dispatch_http_call(cluster, headers.to_vec(), None, Vec::new(), timeout)
        .map_err(|status| format!("{status:?}"))
}

/// `:status` of the HTTP call being answered; `None` when the call failed
/// without a response (timeout, reset, no healthy upstream).
/// Like `http_call`, with a request body.
pub fn http_call_with_body(
    cluster: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<u32, String> {
    hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, Vec::new(), timeout)
        .map_err(|status| format!("{status:?}"))
}

pub fn http_call_status() -> Option<u32> {
    let bytes = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
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
    hostcalls::set_effective_context(context_id).is_ok()
}

pub fn resume_request() {
    let _ = hostcalls::resume_http_request();
}

/// Replaces the first `len` bytes of a body buffer (the whole buffered body,
/// or the current chunk of a stream) with `bytes`.
pub fn replace_buffer(kind: BufferType, len: usize, bytes: &[u8]) -> bool {
    hostcalls::set_buffer(kind, 0, len, bytes).is_ok()
}

/// Sets (`Some`) or removes (`None`) a response header.
pub fn set_response_header(name: &str, value: Option<&str>) {
    let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value);
}
