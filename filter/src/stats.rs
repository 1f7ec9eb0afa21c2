//! Envoy stats (`wasmcustom.tracegate.*`) for the policy's `Stat`s, defined
//! once per configuration.

use tracegate_policy::exchange::Stat;
use tracegate_policy::Policy;

use crate::host::{Counter, Gauge};

pub struct Stats {
    /// By `Stat::index`.
    counters: Vec<Counter>,
    /// Linear memory of this worker's VM (the stat holds the value of the
    /// worker that set it last; exact with one worker).
    pub wasm_memory: Gauge,
}

impl Stats {
    /// The policy's stats (its access rules name some).
    pub fn define(policy: &Policy) -> Stats {
        let mut counters: Vec<(usize, Counter)> = Stat::all_for(policy)
            .into_iter()
            .map(|(s, name)| (s.index(), Counter::define(&name)))
            .collect();
        counters.sort_by_key(|(i, _)| *i);
        Stats {
            counters: counters.into_iter().map(|(_, c)| c).collect(),
            wasm_memory: Gauge::define("tracegate.wasm_memory_bytes"),
        }
    }

    pub fn add(&self, stat: Stat, n: u64) {
        if let Some(c) = self.counters.get(stat.index()) {
            c.add(n);
        }
    }
}
