//! tracegate's proxy-wasm HTTP filter: thin glue between Envoy and the policy
//! core (`tracegate-policy`).
//!
//! - `root`: one per worker and configuration. Parses the configuration once,
//!   owns the record outbox and sends batches to the collector on its timer.
//! - `exchange`: one per HTTP request. Observes headers and bodies and hands a
//!   finished record to the root's outbox.
//! - `auth`: caller identity on the request path: the JWT decision applied
//!   to a request, and requests parked while the root fetches JWKS.
//! - `ahead`: write-ahead recording: the request's record acknowledged
//!   durable before the request goes on.
//! - `host`: the only place that calls the host, through `proxy_wasm::hostcalls`
//!   so that no host error can become a panic.

mod ahead;
mod auth;
mod exchange;
mod host;
mod root;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| Box::new(root::Root::new(context_id)));
}}
