//! Envoy stats (`wasmcustom.tracegate.*`) for the policy's `Stat`s, defined
//! once per configuration; and, with `diagnostics.callback_time`, the time
//! spent inside each kind of callback.

use tracegate_policy::exchange::Stat;
use tracegate_policy::Policy;

use crate::host::{self, Counter, Gauge};

/// The kinds of callback whose time `diagnostics.callback_time` reports.
#[derive(Debug, Clone, Copy)]
pub enum Callback {
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    /// The request's end (`on_log`): its record is built and queued.
    End,
    /// An answer to a call: a record export, JWKS fetch, approval or
    /// write-ahead.
    CallAnswer,
    /// The timer: due record batches sent, keys fetched.
    Tick,
}

impl Callback {
    /// In declaration order, so that `kind as usize` indexes it.
    const ALL: [Callback; 7] = [
        Callback::RequestHeaders,
        Callback::RequestBody,
        Callback::ResponseHeaders,
        Callback::ResponseBody,
        Callback::End,
        Callback::CallAnswer,
        Callback::Tick,
    ];

    fn name(self) -> &'static str {
        match self {
            Callback::RequestHeaders => "request_headers",
            Callback::RequestBody => "request_body",
            Callback::ResponseHeaders => "response_headers",
            Callback::ResponseBody => "response_body",
            Callback::End => "end",
            Callback::CallAnswer => "call_answer",
            Callback::Tick => "tick",
        }
    }
}

/// Per kind of callback: how many ran, and the nanoseconds spent in them.
struct CallbackTime {
    calls: Counter,
    nanos: Counter,
}

pub struct Stats {
    /// By `Stat::index`.
    counters: Vec<Counter>,
    /// Linear memory of this worker's VM (the stat holds the value of the
    /// worker that set it last; exact with one worker).
    pub wasm_memory: Gauge,
    /// By `Callback` (in `Callback::ALL` order); empty unless
    /// `diagnostics.callback_time`.
    callbacks: Vec<CallbackTime>,
}

impl Stats {
    /// The policy's stats (its access rules name some).
    pub fn define(policy: &Policy) -> Stats {
        let mut counters: Vec<(usize, Counter)> = Stat::all_for(policy)
            .into_iter()
            .map(|(s, name)| (s.index(), Counter::define(&name)))
            .collect();
        counters.sort_by_key(|(i, _)| *i);
        let callbacks = if policy.config.diagnostics.callback_time {
            Callback::ALL
                .iter()
                .map(|c| CallbackTime {
                    calls: Counter::define(&format!("tracegate.callback.{}.calls", c.name())),
                    nanos: Counter::define(&format!("tracegate.callback.{}.ns", c.name())),
                })
                .collect()
        } else {
            Vec::new()
        };
        Stats {
            counters: counters.into_iter().map(|(_, c)| c).collect(),
            wasm_memory: Gauge::define("tracegate.wasm_memory_bytes"),
            callbacks,
        }
    }

    pub fn add(&self, stat: Stat, n: u64) {
        if let Some(c) = self.counters.get(stat.index()) {
            c.add(n);
        }
    }

    /// When callback times are reported: the clock at a callback's start.
    pub fn callback_start(&self) -> Option<i64> {
        (!self.callbacks.is_empty()).then(host::now_nanos)
    }

    /// A callback that started at `start` (from `callback_start`) ended.
    pub fn callback_end(&self, kind: Callback, start: Option<i64>) {
        let (Some(start), Some(time)) = (start, self.callbacks.get(kind as usize)) else {
            return;
        };
        time.calls.add(1);
        time.nanos
            .add(u64::try_from(host::now_nanos() - start).unwrap_or(0));
    }
}
