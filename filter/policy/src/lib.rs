//! tracegate's policy core.
//!
//! Everything the filter decides or builds lives here, as plain functions over
//! bytes, times and configuration, with no proxy-wasm calls. That keeps it
//! testable natively (`cargo test`) and inside wasm (wasm-bindgen-test under
//! Node), and keeps the filter crate a thin layer of host glue.
//!
//! Nothing here may panic on any input: a panic in the filter traps the VM and
//! fails every later request on that worker.

pub mod access;
pub mod approval;
pub mod config;
pub mod detect;
pub mod exchange;
pub mod inspect;
pub mod json;
pub mod jwt;
pub mod llm;
pub mod mask;
pub mod normalize;
pub mod outbox;
pub mod policy;
pub mod record;

pub use config::{Config, ConfigError};
pub use outbox::{Batch, BatchId, BufferFull, Outbox};
pub use policy::Policy;
pub use record::{ExchangeRecorder, RequestInfo};
pub use tracegate_proto::v1::Record;
