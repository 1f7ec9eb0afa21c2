//! The proxy-wasm ABI (0.2.1) calls the filter makes (but the call-outs),
//! declared here rather than taken from `proxy_wasm::hostcalls`: those functions panic on any
//! status they do not expect (Envoy answers `BadArgument` to a header set
//! after the headers left, for instance), and a panic traps the VM for every
//! request on the worker. Statuses are read as plain integers (an unknown
//! one is not undefined behaviour) and every call returns a `Result`.

use std::ptr::null_mut;

/// A host status other than OK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        kind: u32,
        start: usize,
        size: usize,
        data: *const u8,
        data_size: usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_set_effective_context(context: u32) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_done() -> u32;
}

fn check(status: u32) -> Result<(), Status> {
    if status == OK {
        Ok(())
    } else {
        Err(Status(status))
    }
}

/// Takes ownership of bytes the host wrote into memory it had the SDK's
/// allocator (`proxy_on_memory_allocate`) make.
///
/// # Safety
/// `data` is null or points to `size` bytes allocated as a `Vec<u8>` of
/// capacity `size`, as the SDK's allocator does.
unsafe fn owned(status: u32, data: *mut u8, size: usize) -> Result<Option<Vec<u8>>, Status> {
    match status {
        OK if !data.is_null() => Ok(Some(unsafe { Vec::from_raw_parts(data, size, size) })),
        OK | NOT_FOUND => Ok(None),
        other => Err(Status(other)),
    }
}

pub fn log(level: u32, message: &str) -> Result<(), Status> {
    check(unsafe { proxy_log(level, message.as_ptr(), message.len()) })
}

pub fn now_nanos() -> Result<u64, Status> {
    let mut t = 0u64;
    check(unsafe { proxy_get_current_time_nanoseconds(&mut t) })?;
    Ok(t)
}

/// Tells the host a root context that answered `on_done` with false is done.
pub fn done() -> Result<(), Status> {
    check(unsafe { proxy_done() })
}

pub fn set_tick_period(ms: u32) -> Result<(), Status> {
    check(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

pub fn get_buffer(kind: u32, start: usize, max: usize) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0usize);
    let status = unsafe { proxy_get_buffer_bytes(kind, start, max, &mut data, &mut size) };
    unsafe { owned(status, data, size) }
}

pub fn set_buffer(kind: u32, start: usize, size: usize, bytes: &[u8]) -> Result<(), Status> {
    check(unsafe { proxy_set_buffer_bytes(kind, start, size, bytes.as_ptr(), bytes.len()) })
}

pub fn get_header(map: u32, name: &str) -> Result<Option<Vec<u8>>, Status> {
    let (mut data, mut size) = (null_mut(), 0usize);
    let status =
        unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) };
    unsafe { owned(status, data, size) }
}

/// Every header of a map, in order (values that are not UTF-8 lossily).
pub fn get_headers(map: u32) -> Result<Vec<(String, String)>, Status> {
    let (mut data, mut size) = (null_mut(), 0usize);
    let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut size) };
    let bytes = unsafe { owned(status, data, size) }?.unwrap_or_default();
    Ok(deserialize_map(&bytes))
}

/// The ABI's header map: a count, each name's and value's length (u32 little
/// endian), then each name and value NUL-terminated. Malformed input gives
/// what could be read.
fn deserialize_map(bytes: &[u8]) -> Vec<(String, String)> {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(count) = word(0) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(count.min(256));
    let mut data = 4 + count.saturating_mul(8);
    for i in 0..count {
        let (Some(k), Some(v)) = (word(4 + i * 8), word(8 + i * 8)) else {
            break;
        };
        let (Some(key), Some(value)) = (
            bytes.get(data..data + k),
            bytes.get(data + k + 1..data + k + 1 + v),
        ) else {
            break;
        };
        out.push((
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
        data += k + v + 2;
    }
    out
}

pub fn set_header(map: u32, name: &str, value: Option<&str>) -> Result<(), Status> {
    check(unsafe {
        match value {
            Some(v) => {
                proxy_replace_header_map_value(map, name.as_ptr(), name.len(), v.as_ptr(), v.len())
            }
            None => proxy_remove_header_map_value(map, name.as_ptr(), name.len()),
        }
    })
}

pub fn get_property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    // Parts separated by NUL.
    let serialized = path.join("\0");
    let (mut data, mut size) = (null_mut(), 0usize);
    let status =
        unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size) };
    unsafe { owned(status, data, size) }
}

/// A header map as the ABI passes it: the count, each name's and value's
/// length (u32 little endian), then each name and value NUL-terminated.
fn serialize_map(map: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + map
        .iter()
        .map(|(k, v)| k.len() + v.len() + 10)
        .sum::<usize>();
    let mut bytes = Vec::with_capacity(size);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    bytes.extend_from_slice(&len(map.len()));
    for (k, v) in map {
        bytes.extend_from_slice(&len(k.len()));
        bytes.extend_from_slice(&len(v.len()));
    }
    for (k, v) in map {
        bytes.extend_from_slice(k.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(v.as_bytes());
        bytes.push(0);
    }
    bytes
}

pub fn send_local_response(
    status: u32,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), Status> {
    let headers = serialize_map(headers);
    check(unsafe {
        proxy_send_local_response(
            status,
            null_mut(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

pub fn set_effective_context(context: u32) -> Result<(), Status> {
    check(unsafe { proxy_set_effective_context(context) })
}

/// `proxy_continue_stream` for the request (0) or response (1).
pub fn continue_stream(stream: u32) -> Result<(), Status> {
    check(unsafe { proxy_continue_stream(stream) })
}

pub fn define_metric(kind: u32, name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    check(unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, offset: i64) -> Result<(), Status> {
    check(unsafe { proxy_increment_metric(id, offset) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    check(unsafe { proxy_record_metric(id, value) })
}
