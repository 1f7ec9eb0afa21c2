//! tracegate's proxy-wasm HTTP filter: the host side of the policy core
//! (`tracegate-policy`). It decides nothing itself.
//!
//! - `root`: one per worker thread and configuration. Compiles the policy
//!   once, creates the worker, forwards its timer and the answers to calls.
//! - `stream`: one per HTTP request. Forwards each callback to the worker
//!   as an event of its exchange.
//! - `worker`: owns the exchanges (each a state machine of
//!   `tracegate_policy::exchange`), the gateway state, and the one table of
//!   outstanding calls; carries out the effects the exchanges ask for.
//! - `stats`: Envoy stats for the policy's `Stat`s.
//! - `host`: the only place that calls the host, through its own ABI
//!   declarations (`host::abi`) so that no host error can become a panic.

mod host;
mod root;
mod stats;
mod stream;
mod worker;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| Box::new(root::Root::new(context_id)));
}}
