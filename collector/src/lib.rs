//! The collector: the durable record store (`ledger`) and its one writer
//! thread (`commit`), the gRPC ingest service (`grpc`), the reference
//! approval service (`approvals`), `serve` tying them together (`server`)
//! with its configuration file (`config`), TLS (`tls`, `certs`) and
//! Prometheus metrics (`metrics`), real-time alerts to webhooks
//! (`alerts`), the web console (`console`), `tracegate policy` (`policy_cli`), and the
//! readable views the CLI prints (`view`, every text made terminal-safe by
//! `term`; sessions kept per `ledger::caller`). The `tracegate` binary
//! (main.rs) is the command line over these.

pub mod alerts;
pub mod approvals;
pub mod approvals_cli;
pub mod certs;
pub mod commit;
pub mod config;
pub mod console;
pub mod grpc;
pub mod ledger;
pub mod metrics;
pub mod policy_cli;
pub mod server;
pub mod term;
pub mod tls;
pub mod view;
