//! The collector: the durable record store (`ledger`), the gRPC ingest
//! service in front of it (`grpc`), and the readable views the CLI prints
//! (`view`). The `tracegate` binary (main.rs) is the command line over these.

pub mod grpc;
pub mod ledger;
pub mod view;
