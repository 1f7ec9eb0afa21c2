//! The collector: the durable record store (`ledger`) and its one writer
//! thread (`commit`), the gRPC ingest service (`grpc`), the reference
//! approval service (`approvals`), `serve` tying them together (`server`),
//! and the readable views the CLI prints (`view`). The `tracegate` binary
//! (main.rs) is the command line over these.

pub mod approvals;
pub mod approvals_cli;
pub mod commit;
pub mod grpc;
pub mod ledger;
pub mod server;
pub mod view;
