//! tracegate's record schema and collector API.
//!
//! Generated at build time from `proto/tracegate/v1/records.proto`, the single
//! source of truth shared by the wasm filter and the collector.

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/tracegate.v1.rs"));
}

/// Fully qualified gRPC service name, as the filter addresses it through Envoy.
pub const RECORD_SERVICE: &str = "tracegate.v1.RecordService";
/// Method name of the batch export call.
pub const EXPORT_METHOD: &str = "Export";
