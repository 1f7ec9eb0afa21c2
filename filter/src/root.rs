//! The root context: one per worker thread and plugin configuration.
//!
//! It parses the configuration once (`on_configure`), creates the per-request
//! contexts, and ships records: HTTP contexts push finished records into the
//! shared outbox, and the timer sends due batches to the collector. Calls are
//! made from the root context only, because the SDK delivers a gRPC answer to
//! the context that made the call, and a request's context may be gone by
//! then.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use prost::Message;
use tracegate_policy::config::FailureMode;
use tracegate_policy::inspect::Inspector;
use tracegate_policy::jwt::Authenticator;
use tracegate_policy::{BatchId, Config, Outbox, Record};
use tracegate_proto::v1::ExportResponse;
use tracegate_proto::{EXPORT_METHOD, RECORD_SERVICE};

use crate::auth::{self, JwtMetrics, Waiter};
use crate::exchange::Exchange;
use crate::gates::{take_root_call, Purpose, RequestSlot, Via};
use crate::host::{self, Counter, Gauge};
use crate::{ahead, approvals};

/// Longest wait between checks of the outbox. A batch that is full is sent at
/// the next tick, so this bounds how long it waits.
const MAX_TICK: Duration = Duration::from_millis(100);

/// Envoy stats (`wasmcustom.tracegate.*`), defined once per configuration.
#[derive(Debug, Clone, Copy)]
pub struct Metrics {
    pub records_exported: Counter,
    pub records_dropped: Counter,
    pub export_failures: Counter,
    /// Detector findings in requests.
    pub findings: Counter,
    /// Requests answered 403 by a block rule.
    pub blocked: Counter,
    /// Requests refused as uninspectable (400, 413, 415, 502).
    pub refused: Counter,
    /// Requests answered 503 because they could not be recorded (fail_closed).
    pub unrecorded_refused: Counter,
    /// Request records acknowledged before forwarding (write_ahead).
    pub written_ahead: Counter,
    /// Write-ahead calls that failed or were refused.
    pub write_ahead_failed: Counter,
    /// Requests whose risk called for approval.
    pub approval_requested: Counter,
    /// ...forwarded with an approval (or on timeout with on_timeout: forward).
    pub approval_approved: Counter,
    /// ...answered 403: denied, expired, grant refused, service unavailable.
    pub approval_refused: Counter,
    /// ...of which because the approval service failed.
    pub approval_unavailable: Counter,
    /// Linear memory of this worker's VM (the stat holds the value of the
    /// worker that set it last; exact with one worker).
    pub wasm_memory: Gauge,
}

impl Metrics {
    fn define() -> Self {
        Self {
            records_exported: Counter::define("tracegate.records_exported"),
            records_dropped: Counter::define("tracegate.records_dropped"),
            export_failures: Counter::define("tracegate.export_failures"),
            findings: Counter::define("tracegate.inspect.findings"),
            blocked: Counter::define("tracegate.inspect.blocked"),
            refused: Counter::define("tracegate.inspect.refused"),
            unrecorded_refused: Counter::define("tracegate.recording.refused"),
            written_ahead: Counter::define("tracegate.recording.written_ahead"),
            write_ahead_failed: Counter::define("tracegate.recording.write_ahead_failed"),
            approval_requested: Counter::define("tracegate.approval.requested"),
            approval_approved: Counter::define("tracegate.approval.approved"),
            approval_refused: Counter::define("tracegate.approval.refused"),
            approval_unavailable: Counter::define("tracegate.approval.unavailable"),
            wasm_memory: Gauge::define("tracegate.wasm_memory_bytes"),
        }
    }
}

/// Whether a new request may be served, as far as recording goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A buffer place is reserved for its record (fail_closed).
    Reserved,
    /// Served without a reservation (fail_open: its record may be dropped).
    Unreserved,
    /// No place for its record: answer 503 (fail_closed).
    Refused,
}

/// What the root context shares with the request contexts it creates.
pub struct Shared {
    pub config: Config,
    pub metrics: Metrics,
    /// `tracegate-filter/<version> (<plugin name>)`, stamped on every record.
    pub source: String,
    outbox: RefCell<Outbox>,
    /// Masking and block rules; `None` when neither is configured.
    pub inspector: Option<Inspector>,
    /// The compiled `jwt` section; `None` when requests are not authenticated.
    pub auth: Option<RefCell<Authenticator>>,
    /// Headers that carry the callers' JWTs: tracegate's own, not judged as
    /// a leak, recorded as `[credential]`.
    pub token_headers: Vec<String>,
    pub jwt_metrics: JwtMetrics,
    /// Requests paused until a JWKS fetch answers.
    pub waiters: RefCell<Vec<Waiter>>,
    /// Records this worker dropped; logged at powers of two and every
    /// thousandth, so an outage does not flood the log.
    dropped: Cell<u64>,
    /// Buffer places promised to requests under way (fail_closed), so their
    /// records always fit when they end.
    reserved: Cell<usize>,
    /// Calls the root made for a request's gates (approval, write-ahead)
    /// after it was parked for JWKS: call token → (request context, its
    /// state, what for).
    pub root_calls: RefCell<HashMap<u32, (u32, RequestSlot, Purpose)>>,
    /// Requests refused because the buffer was full; logged like `dropped`.
    refused: Cell<u64>,
}

impl Shared {
    /// Admits a new request for recording. With `fail_closed` it reserves a
    /// buffer place for its record, or refuses when there is none; with
    /// `fail_open` it always admits.
    pub fn admit(&self) -> Admission {
        if self.config.recording.failure_mode == FailureMode::FailOpen {
            return Admission::Unreserved;
        }
        if self.outbox.borrow().has_room(self.reserved.get()) {
            self.reserved.set(self.reserved.get() + 1);
            return Admission::Reserved;
        }
        self.metrics.unrecorded_refused.add(1);
        let refused = self.refused.get() + 1;
        self.refused.set(refused);
        if refused.is_power_of_two() || refused.is_multiple_of(1000) {
            host::log(
                LogLevel::Warn,
                &format!(
                    "record buffer full (collector slow or down): {refused} requests refused with 503 by this worker (recording.failure_mode fail_closed)"
                ),
            );
        }
        Admission::Refused
    }

    /// Gives back a reservation whose record will not come.
    pub fn release(&self) {
        self.reserved.set(self.reserved.get().saturating_sub(1));
    }

    /// Hands a record to the outbox, using the request's reservation if it
    /// has one; counts it if the buffer is full (fail_open only: a reserved
    /// place is always there).
    pub fn enqueue(&self, record: Record, reserved: bool) {
        if reserved {
            self.release();
        }
        let now = now_u64();
        let full = self.outbox.borrow_mut().push(record, now).is_err();
        if full {
            self.metrics.records_dropped.add(1);
            let dropped = self.dropped.get() + 1;
            self.dropped.set(dropped);
            if dropped.is_power_of_two() || dropped.is_multiple_of(1000) {
                host::log(
                    LogLevel::Warn,
                    &format!(
                        "record buffer full (collector slow or down): {dropped} records dropped by this worker"
                    ),
                );
            }
        }
    }
}

pub struct Root {
    context_id: u32,
    shared: Option<Rc<Shared>>,
    /// gRPC call token → batch it carries.
    calls: HashMap<u32, BatchId>,
    /// HTTP call token → provider whose JWKS it fetches.
    jwks_calls: HashMap<u32, usize>,
    /// This VM has served a request: it is a worker's, not the main
    /// thread's (which is configured and ticks too, but serves nothing), so
    /// the memory gauge reports workers' VMs only.
    serving: Cell<bool>,
}

impl Root {
    pub fn new(context_id: u32) -> Self {
        Self {
            context_id,
            shared: None,
            calls: HashMap::new(),
            jwks_calls: HashMap::new(),
            serving: Cell::new(false),
        }
    }

    fn flush(&mut self, shared: &Shared) {
        let now = now_u64();
        loop {
            let Some(batch) = shared.outbox.borrow_mut().take_batch(now) else {
                return;
            };
            let c = &shared.config.collector;
            match host::grpc_call(
                &c.cluster,
                RECORD_SERVICE,
                EXPORT_METHOD,
                &batch.payload,
                Duration::from_millis(c.timeout_ms),
            ) {
                Ok(token) => {
                    self.calls.insert(token, batch.id);
                }
                Err(status) => {
                    shared.outbox.borrow_mut().fail(batch.id, now);
                    shared.metrics.export_failures.add(1);
                    host::log(
                        LogLevel::Error,
                        &format!(
                            "cannot call collector cluster {:?}: {status}; will retry",
                            c.cluster
                        ),
                    );
                    return;
                }
            }
        }
    }
}

fn now_u64() -> u64 {
    u64::try_from(host::now_nanos()).unwrap_or(0)
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        if let Some((context_id, slot)) = take_root_call(&shared, token_id, Purpose::Approval) {
            // Read the answer before acting on the request's context.
            let status = host::http_call_status();
            let body = host::http_call_body(body_size);
            if host::set_effective_context(context_id) {
                approvals::answered(&shared, &slot, Via::Root(context_id), status, &body);
                host::set_effective_context(self.context_id);
            }
            return;
        }
        let Some(provider) = self.jwks_calls.remove(&token_id) else {
            return;
        };
        let result = match host::http_call_status() {
            Some(200) => Ok(host::http_call_body(body_size)),
            Some(status) => Err(format!("HTTP {status}")),
            None => Err("no response (timeout, connection failure or no healthy host)".into()),
        };
        auth::jwks_answer(&shared, self.context_id, provider, result);
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        if let Some((context_id, slot)) = take_root_call(&shared, token_id, Purpose::WriteAhead) {
            // Read the answer before acting on the request's context.
            let result = ahead::read_answer(status_code, response_size);
            if host::set_effective_context(context_id) {
                ahead::answered(&shared, &slot, Via::Root(context_id), result);
                host::set_effective_context(self.context_id);
            }
            return;
        }
        let Some(batch) = self.calls.remove(&token_id) else {
            return;
        };
        let mut outbox = shared.outbox.borrow_mut();
        let answer = (status_code == 0)
            .then(|| host::grpc_response(response_size).unwrap_or_default())
            .and_then(|bytes| ExportResponse::decode(bytes.as_slice()).ok());
        match answer {
            Some(response) => {
                let n = outbox.acknowledge(batch);
                shared.metrics.records_exported.add(n as u64);
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
                let n = outbox.fail(batch, now_u64());
                shared.metrics.export_failures.add(1);
                host::log(
                    LogLevel::Warn,
                    &format!(
                        "export of {n} records failed (gRPC status {status_code}); will retry"
                    ),
                );
            }
        }
        drop(outbox);
        // A call slot is free: send what is due now rather than at the next
        // tick, so export keeps up with traffic (at most MAX_IN_FLIGHT
        // batches per round trip, not per tick).
        self.flush(&shared);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = host::buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            usize::MAX,
        )
        .unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(config) => config,
            Err(e) => {
                // Envoy refuses the filter when this returns false; this line
                // tells the operator why.
                host::log(LogLevel::Critical, &e.to_string());
                return false;
            }
        };
        let plugin = host::property_string(&["plugin_name"]).unwrap_or_default();
        let tick = Duration::from_millis(config.recording.flush_interval_ms).min(MAX_TICK);
        let auth = match config.jwt.as_ref().map(Authenticator::new).transpose() {
            Ok(auth) => auth.map(RefCell::new),
            Err(e) => {
                host::log(LogLevel::Critical, &e.to_string());
                return false;
            }
        };
        let inspector = match Inspector::new(&config.inspection, &config.masking, &config.rules) {
            Ok(i) => (config.masking.enabled || !config.rules.is_empty())
                .then_some(i.with_approvals(config.approval.is_some())),
            Err(e) => {
                host::log(LogLevel::Critical, &e.to_string());
                return false;
            }
        };
        let token_headers = config
            .jwt
            .iter()
            .flat_map(|j| j.providers.iter().map(|p| p.from_header.name.clone()))
            .collect();
        self.shared = Some(Rc::new(Shared {
            inspector,
            auth,
            token_headers,
            jwt_metrics: JwtMetrics::define(),
            waiters: RefCell::new(Vec::new()),
            outbox: RefCell::new(Outbox::new(config.recording.clone())),
            config,
            metrics: Metrics::define(),
            dropped: Cell::new(0),
            reserved: Cell::new(0),
            root_calls: RefCell::new(HashMap::new()),
            refused: Cell::new(0),
            source: format!("tracegate-filter/{} ({plugin})", env!("CARGO_PKG_VERSION")),
        }));
        if self
            .shared
            .as_ref()
            .is_some_and(|s| s.config.inspection.hold_headers)
        {
            // Envoy gives no way to check this from the plugin; a wrong pair
            // of settings makes requests hang, so say it where operators look.
            host::log(
                LogLevel::Info,
                "inspection.hold_headers is on: the Wasm filter must set allow_on_headers_stop_iteration: true (Envoy >= 1.35), or requests with a body will hang",
            );
        }
        host::set_tick_period(tick);
        host::log(
            LogLevel::Info,
            &format!("configured (context {})", self.context_id),
        );
        true
    }

    fn on_tick(&mut self) {
        if let Some(shared) = self.shared.clone() {
            if self.serving.get() {
                shared.metrics.wasm_memory.set(host::wasm_memory_bytes());
            }
            for (token, provider) in auth::start_fetches(&shared, self.context_id) {
                self.jwks_calls.insert(token, provider);
            }
            self.flush(&shared);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Must not return None (the SDK panics). Without a configuration Envoy
        // never creates requests for this root; pass through if it ever does.
        self.serving.set(true);
        Some(Box::new(Exchange::new(context_id, self.shared.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
