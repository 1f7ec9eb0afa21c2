//! tracegate's proxy-wasm HTTP filter: thin glue between Envoy and the policy
//! core (`tracegate-policy`).
//!
//! - `root`: one per worker and configuration. Parses the configuration once,
//!   owns the record outbox and sends batches to the collector on its timer.
//! - `exchange`: one per HTTP request. Observes headers and bodies and hands a
//!   finished record to the root's outbox.
//! - `auth`: caller identity on the request path: the JWT decision applied
//!   to a request, and requests parked while the root fetches JWKS.
//! - `gates`: what a finished request passes before it goes upstream,
//!   carried on by its own context or the root's: `approvals` (a person's
//!   decision on a risky request, through the approval service) and `ahead`
//!   (write-ahead recording: the request's record durable first).
//! - `host`: the only place that calls the host, through its own ABI declarations (`host::abi`)
//!   so that no host error can become a panic.

mod ahead;
mod approvals;
mod auth;
mod exchange;
mod gates;
mod host;
mod root;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| Box::new(root::Root::new(context_id)));
}}
