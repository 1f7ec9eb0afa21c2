//! The root context: one per worker thread and plugin configuration.
//! Compiles the policy once (`on_configure`), creates the worker and the
//! per-request contexts, and forwards the timer and the answers to calls
//! made from here (record exports, JWKS fetches, and calls made on a
//! request's behalf after an answer arrived here).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use tracegate_policy::exchange::Gateway;
use tracegate_policy::Policy;

use crate::host;
use crate::stats::Callback;
use crate::stream::Stream;
use crate::worker::{self, Worker};

/// Longest wait between checks of the outbox while no record waits to be
/// sent.
const MAX_TICK: Duration = Duration::from_millis(100);

/// The timer while records wait to be sent (not during a backoff). A batch that fills between export
/// answers is sent at the next tick: at 100 ms, under load, records waited
/// there longer than anywhere else on their way out (and held the worker's
/// memory meanwhile).
const BUSY_TICK: Duration = Duration::from_millis(10);

/// How long a replaced configuration keeps trying to deliver the records
/// it still holds before it goes (the collector being down that long).
const RETIRE_DEADLINE: Duration = Duration::from_secs(60);

pub struct Root {
    id: u32,
    worker: worker::Handle,
    /// Set when Envoy retired this configuration (a reload replaced it and
    /// its last request ended) while records were still held: when to give
    /// up on them, in host nanoseconds.
    retiring_until: Option<i64>,
    /// The timer when no record waits (`flush_interval_ms`, at most
    /// `MAX_TICK`), and the period now set.
    idle_tick: Duration,
    tick: Duration,
}

impl Root {
    pub fn new(id: u32) -> Self {
        Self {
            id,
            worker: None,
            retiring_until: None,
            idle_tick: MAX_TICK,
            tick: Duration::ZERO,
        }
    }

    /// Tells the host this retiring root may go once nothing is held, or
    /// at the deadline. Returns whether it went.
    fn retire_step(&mut self) -> bool {
        let Some(until) = self.retiring_until else {
            return false;
        };
        let mut held = 0;
        worker::with(&self.worker, |w| held = w.retire());
        if held > 0 && host::now_nanos() < until {
            return false;
        }
        worker::with(&self.worker, |w| w.abandon_held());
        self.retiring_until = None;
        host::set_tick_period(Duration::ZERO);
        host::done();
        true
    }
}

impl Context for Root {
    /// Envoy retires a root when its configuration was replaced (an ECDS
    /// reload) and the last request using it has ended: requests in flight
    /// keep their configuration to the end. Records still in this root's
    /// outbox (that last request's among them) would die with it, so it
    /// stays until they are delivered (or `RETIRE_DEADLINE`).
    fn on_done(&mut self) -> bool {
        let mut held = 0;
        worker::with(&self.worker, |w| held = w.retire());
        if held == 0 {
            return true;
        }
        host::log(
            LogLevel::Info,
            &format!("configuration replaced: delivering {held} records before it retires"),
        );
        let deadline = i64::try_from(RETIRE_DEADLINE.as_nanos()).unwrap_or(i64::MAX);
        self.retiring_until = Some(host::now_nanos().saturating_add(deadline));
        host::set_tick_period(MAX_TICK);
        false
    }

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

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = host::buffer(BufferType::PluginConfiguration, usize::MAX).unwrap_or_default();
        let policy = match Policy::compile(&bytes) {
            Ok(policy) => policy,
            Err(e) => {
                // Envoy refuses the filter when this returns false; this line
                // tells the operator why.
                host::log(LogLevel::Critical, &e.to_string());
                return false;
            }
        };
        let reference = policy.reference.clone();
        let plugin = host::property_string(&["plugin_name"]).unwrap_or_default();
        let source = format!("tracegate-filter/{} ({plugin})", env!("CARGO_PKG_VERSION"));
        let tick = Duration::from_millis(policy.config.recording.flush_interval_ms).min(MAX_TICK);
        let worker = Worker::new(Gateway::new(policy, source));
        if worker.hold_headers() {
            // Envoy gives no way to check this from the plugin; a wrong pair
            // of settings makes requests hang, so say it where operators look.
            host::log(
                LogLevel::Info,
                "inspection.hold_headers is on: the Wasm filter must set allow_on_headers_stop_iteration: true (Envoy >= 1.35), or requests with a body will hang",
            );
        }
        self.worker = Some(Rc::new(RefCell::new(worker)));
        self.idle_tick = tick;
        self.tick = tick;
        host::set_tick_period(tick);
        // Names the policy now in force: operators (and the reload test)
        // see which configuration each worker took.
        host::log(
            LogLevel::Info,
            &format!(
                "configured (context {}) policy {:?} version {:?} sha256 {}",
                self.id, reference.name, reference.version, reference.sha256
            ),
        );
        true
    }

    fn on_tick(&mut self) {
        if self.retiring_until.is_some() {
            self.retire_step();
            return;
        }
        let id = self.id;
        let mut waiting = false;
        worker::timed(&self.worker, Callback::Tick, || {
            worker::with(&self.worker, |w| {
                w.tick(id);
                waiting = w.records_waiting();
            })
        });
        let tick = if waiting {
            BUSY_TICK.min(self.idle_tick)
        } else {
            self.idle_tick
        };
        if tick != self.tick {
            self.tick = tick;
            host::set_tick_period(tick);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Must not return None (the SDK panics). Without a configuration Envoy
        // never creates requests for this root; if it ever does, the stream
        // refuses them (503): never served without a policy.
        Some(Box::new(Stream::new(context_id, self.worker.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
