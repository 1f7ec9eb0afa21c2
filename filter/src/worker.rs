//! One worker thread's filter state for one configuration: its exchanges,
//! the gateway (compiled policy, key caches, record outbox) and the one
//! table of outstanding calls. Exchanges decide; the worker carries out
//! their effects on the host.
//!
//! A call's answer comes to the context that made it: the request's own, or
//! the root's (for calls made on the timer, or on behalf of a request after
//! an answer the root received). Either way it is looked up here by its
//! token, and the worker acts on the request it is for through
//! `set_effective_context`.

use prost::Message;
use proxy_wasm::types::{BufferType, LogLevel};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use tracegate_policy::exchange::{
    Action, Call, CallKind, Effect, Event, Exchange, Gateway, Host, Level, Reply, Stat,
};
use tracegate_policy::BatchId;
use tracegate_proto::v1::ExportResponse;
use tracegate_proto::{EXPORT_METHOD, RECORD_SERVICE};

use crate::host;
use crate::stats::{Callback, Stats};

/// The worker shared by a configuration's root and request contexts.
pub type Handle = Option<Rc<RefCell<Worker>>>;

/// Runs `f` on the worker, if there is one. Callbacks do not nest, so it is
/// never busy; if it were, nothing happens rather than a panic.
pub fn with(worker: &Handle, f: impl FnOnce(&mut Worker)) {
    if let Some(Ok(mut w)) = worker.as_ref().map(|w| w.try_borrow_mut()) {
        f(&mut w);
    }
}

/// Runs callback `f`, and counts its time as `kind` when the configuration
/// asks for callback times (`diagnostics.callback_time`).
pub fn timed<R>(worker: &Handle, kind: Callback, f: impl FnOnce() -> R) -> R {
    let start = worker
        .as_ref()
        .and_then(|w| w.try_borrow().ok())
        .and_then(|w| w.stats.callback_start());
    let result = f();
    if start.is_some() {
        if let Some(Ok(w)) = worker.as_ref().map(|w| w.try_borrow()) {
            w.stats.callback_end(kind, start);
        }
    }
    result
}

/// What an outstanding call is for.
#[derive(Debug, Clone, Copy)]
enum Pending {
    /// A batch of records to the collector.
    Export(BatchId),
    /// A provider's JWKS.
    Jwks(usize),
    /// A call an exchange made (approval, write-ahead).
    Exchange { id: u32, call: CallKind },
}

pub struct Worker {
    gateway: Gateway,
    exchanges: HashMap<u32, Exchange>,
    /// Call token → what it is for.
    calls: HashMap<u32, Pending>,
    stats: Stats,
    /// Effects of the event being carried out (kept for its capacity).
    effects: Vec<Effect>,
    /// This VM has served a request: it is a worker's, not the main
    /// thread's (which is configured and ticks too, but serves nothing), so
    /// the memory gauge reports workers' VMs only.
    serving: bool,
}

/// The host as the policy core reads it.
struct HostIo;

impl Host for HostIo {
    fn now_nanos(&self) -> i64 {
        host::now_nanos()
    }

    fn random(&self) -> [u8; 10] {
        host::random_bytes()
    }

    fn request_body(&self, start: usize, len: usize) -> Option<Vec<u8>> {
        host::buffer_at(BufferType::HttpRequestBody, start, len)
    }

    fn response_body(&self, start: usize, len: usize) -> Option<Vec<u8>> {
        host::buffer_at(BufferType::HttpResponseBody, start, len)
    }

    fn response_code(&self) -> Option<u64> {
        host::property_u64(&["response", "code"])
    }
}

fn now_u64() -> u64 {
    u64::try_from(host::now_nanos()).unwrap_or(0)
}

fn now_ms() -> u64 {
    now_u64() / 1_000_000
}

impl Worker {
    pub fn new(gateway: Gateway) -> Worker {
        let stats = Stats::define(&gateway.policy);
        Worker {
            gateway,
            exchanges: HashMap::new(),
            calls: HashMap::new(),
            stats,
            effects: Vec::new(),
            serving: false,
        }
    }

    pub fn hold_headers(&self) -> bool {
        self.gateway.policy.config.inspection.hold_headers
    }

    /// A new request.
    pub fn open(&mut self, id: u32) {
        self.serving = true;
        self.exchanges.insert(id, Exchange::new(id));
    }

    /// A request's context is gone; if it never ended, what it held is given
    /// back.
    pub fn close(&mut self, id: u32) {
        if let Some(mut exchange) = self.exchanges.remove(&id) {
            exchange.abandon(&mut self.gateway);
        }
    }

    /// Delivers an event to exchange `id` and carries out its effects.
    /// `current`: the context whose callback is running; when it is not the
    /// exchange's, host calls are made on the exchange's behalf.
    pub fn deliver(&mut self, id: u32, current: u32, event: Event<'_>) -> Action {
        let foreign = id != current;
        if foreign && !host::set_effective_context(id) {
            // The request is gone on the host's side.
            self.close(id);
            return Action::Continue;
        }
        let ended = matches!(event, Event::End { .. });
        // A request callback returns what the request does next.
        let callback = matches!(
            event,
            Event::RequestHeaders { .. } | Event::RequestBody { .. } | Event::RequestTrailers
        );
        let mut action = self.step(id, event);
        // A call that could not be made is answered at once.
        while let Some((call, why)) = self.carry_out(id) {
            let reply = Reply::NotSent(why);
            self.step(id, Event::Answered { call, reply });
            let resumes = self.effects.iter().any(|e| matches!(e, Effect::Resume));
            if callback && resumes {
                // Still inside the request's callback: it goes on by
                // returning Continue, not by being resumed.
                self.effects.retain(|e| !matches!(e, Effect::Resume));
                action = Action::Continue;
            }
        }
        if ended {
            self.exchanges.remove(&id);
        }
        if foreign {
            host::set_effective_context(current);
        }
        action
    }

    fn step(&mut self, id: u32, event: Event<'_>) -> Action {
        let Some(exchange) = self.exchanges.get_mut(&id) else {
            return Action::Continue;
        };
        exchange.on(event, &mut self.gateway, &HostIo, &mut self.effects)
    }

    /// Carries out the pending effects of exchange `id`; returns a call that
    /// could not be made, to be answered at once.
    fn carry_out(&mut self, id: u32) -> Option<(CallKind, String)> {
        let mut effects = std::mem::take(&mut self.effects);
        let mut failed = None;
        for effect in effects.drain(..) {
            match effect {
                Effect::Call(kind, call) => match dispatch(&call) {
                    Ok(token) => {
                        self.calls
                            .insert(token, Pending::Exchange { id, call: kind });
                    }
                    Err(status) => failed = Some((kind, status)),
                },
                effect => self.apply(effect),
            }
        }
        self.effects = effects;
        failed
    }

    /// Carries out one effect that is not a call.
    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::SetRequestHeader(name, value) => {
                host::set_request_header(&name, value.as_deref())
            }
            Effect::SetResponseHeader(name, value) => {
                host::set_response_header(name, value.as_deref())
            }
            Effect::ReplaceRequestBody { len, bytes } => {
                host::replace_buffer(BufferType::HttpRequestBody, len, &bytes);
            }
            Effect::ReplaceResponseBody { len, bytes } => {
                host::replace_buffer(BufferType::HttpResponseBody, len, &bytes);
            }
            Effect::Respond(reply) => {
                let headers: Vec<(&str, &str)> = reply
                    .headers
                    .iter()
                    .map(|(n, v)| (*n, v.as_str()))
                    .collect();
                host::send_response(reply.status, &headers, &reply.body);
            }
            Effect::Resume => host::resume_request(),
            Effect::Enqueue { record, reserved } => {
                let mut more = Vec::new();
                self.gateway
                    .enqueue(*record, reserved, now_u64(), &mut more);
                more.into_iter().for_each(|e| self.apply(e));
            }
            Effect::Add(stat, n) => self.stats.add(stat, n),
            Effect::Log(level, message) => host::log(log_level(level), &message),
            Effect::Call(..) => {}
        }
    }

    /// This configuration was replaced and its last request has ended: every
    /// record it holds is sent now. Returns how many it still holds.
    pub fn retire(&mut self) -> usize {
        self.gateway.outbox.drain();
        self.flush();
        self.gateway.outbox.len()
    }

    /// Records still held when a retiring configuration gives up are lost:
    /// counted and said.
    pub fn abandon_held(&mut self) {
        let n = self.gateway.outbox.len();
        if n > 0 {
            self.stats.add(Stat::RecordsDropped, n as u64);
            host::log(
                LogLevel::Error,
                &format!("replaced configuration retired with {n} records the collector never acknowledged: dropped"),
            );
        }
    }

    /// Whether records wait in the outbox to be sent (not in flight, and
    /// not held back by a backoff after a failed export).
    pub fn records_waiting(&self) -> bool {
        self.gateway.outbox.waiting(now_u64())
    }

    /// The timer: the memory gauge, due JWKS fetches and due record batches.
    pub fn tick(&mut self, root: u32) {
        if self.serving {
            self.stats.wasm_memory.set(host::wasm_memory_bytes());
        }
        self.start_fetches(root);
        self.flush();
    }

    fn start_fetches(&mut self, root: u32) {
        let Some(auth) = self.gateway.policy.auth.as_mut() else {
            return;
        };
        for f in auth.due_fetches(now_ms()) {
            let headers = [
                (":method", "GET"),
                (":path", f.path.as_str()),
                (":authority", f.authority.as_str()),
                ("accept", "application/json"),
            ];
            let timeout = Duration::from_millis(f.timeout_ms);
            match host::http_call(&f.cluster, &headers, None, timeout) {
                Ok(token) => {
                    self.calls.insert(token, Pending::Jwks(f.provider));
                }
                Err(status) => {
                    let why = format!("cannot call cluster {:?}: {status}", f.cluster);
                    self.keys_fetched(root, f.provider, Err(why));
                }
            }
        }
    }

    /// A provider's keys arrived (or not): every request parked for them
    /// goes on.
    fn keys_fetched(&mut self, current: u32, provider: usize, result: Result<Vec<u8>, String>) {
        let mut effects = Vec::new();
        let parked = self.gateway.keys_fetched(
            provider,
            result.as_deref().map_err(Clone::clone),
            now_ms(),
            &mut effects,
        );
        effects.into_iter().for_each(|e| self.apply(e));
        for id in parked {
            self.deliver(id, current, Event::KeysReady);
        }
    }

    /// Sends the batches of records that are due.
    fn flush(&mut self) {
        let now = now_u64();
        while let Some(batch) = self.gateway.outbox.take_batch(now) {
            let c = &self.gateway.policy.config.collector;
            let timeout = Duration::from_millis(c.timeout_ms);
            let id = batch.id;
            match host::grpc_call(
                &c.cluster,
                RECORD_SERVICE,
                EXPORT_METHOD,
                batch.payload,
                timeout,
            ) {
                Ok(token) => {
                    self.calls.insert(token, Pending::Export(id));
                }
                Err(status) => {
                    let message = format!(
                        "cannot call collector cluster {:?}: {status}; will retry",
                        c.cluster
                    );
                    self.gateway.outbox.fail(id, now);
                    self.stats.add(Stat::ExportFailures, 1);
                    host::log(LogLevel::Error, &message);
                    return;
                }
            }
        }
    }

    /// An HTTP call was answered in context `current`.
    pub fn http_answered(&mut self, current: u32, token: u32, body_size: usize) {
        // Read the answer before acting on another context.
        let status = host::http_call_status();
        match self.calls.remove(&token) {
            Some(Pending::Jwks(provider)) => {
                let result = match status {
                    Some(200) => Ok(host::http_call_body(body_size)),
                    Some(status) => Err(format!("HTTP {status}")),
                    None => {
                        Err("no response (timeout, connection failure or no healthy host)".into())
                    }
                };
                self.keys_fetched(current, provider, result);
            }
            Some(Pending::Exchange { id, call }) => {
                let body = host::http_call_body(body_size);
                let reply = Reply::Http { status, body };
                self.deliver(id, current, Event::Answered { call, reply });
            }
            Some(Pending::Export(_)) | None => {}
        }
    }

    /// A gRPC call was answered in context `current`.
    pub fn grpc_answered(&mut self, current: u32, token: u32, status: u32, size: usize) {
        let message = (status == 0)
            .then(|| host::grpc_response(size))
            .flatten()
            .unwrap_or_default();
        match self.calls.remove(&token) {
            Some(Pending::Export(batch)) => self.exported(batch, status, &message),
            Some(Pending::Exchange { id, call }) => {
                let reply = Reply::Grpc { status, message };
                self.deliver(id, current, Event::Answered { call, reply });
            }
            Some(Pending::Jwks(_)) | None => {}
        }
    }

    fn exported(&mut self, batch: BatchId, status: u32, message: &[u8]) {
        let answer = (status == 0)
            .then(|| ExportResponse::decode(message).ok())
            .flatten();
        match answer {
            Some(response) => {
                let n = self.gateway.outbox.acknowledge(batch);
                self.stats.add(Stat::RecordsExported, n as u64);
                for rejected in &response.rejected {
                    host::log(
                        LogLevel::Error,
                        &format!(
                            "collector rejected record {}: {}",
                            rejected.record_id, rejected.reason
                        ),
                    );
                }
            }
            None => {
                let n = self.gateway.outbox.fail(batch, now_u64());
                self.stats.add(Stat::ExportFailures, 1);
                host::log(
                    LogLevel::Warn,
                    &format!("export of {n} records failed (gRPC status {status}); will retry"),
                );
            }
        }
        // A call slot is free: send what is due now rather than at the next
        // tick, so export keeps up with traffic (at most MAX_IN_FLIGHT
        // batches per round trip, not per tick).
        self.flush();
    }
}

fn dispatch(call: &Call) -> Result<u32, String> {
    match call {
        Call::Http {
            cluster,
            headers,
            body,
            timeout_ms,
        } => {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            host::http_call(
                cluster,
                &headers,
                body.as_deref(),
                Duration::from_millis(*timeout_ms),
            )
        }
        Call::Grpc {
            cluster,
            service,
            method,
            message,
            timeout_ms,
        } => host::grpc_call(
            cluster,
            service,
            method,
            message,
            Duration::from_millis(*timeout_ms),
        ),
    }
}

fn log_level(level: Level) -> LogLevel {
    match level {
        Level::Debug => LogLevel::Debug,
        Level::Info => LogLevel::Info,
        Level::Warn => LogLevel::Warn,
        Level::Error => LogLevel::Error,
    }
}
