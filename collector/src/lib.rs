//! The collector's library part: the parts other binaries and benchmarks
//! share. The `tracegate` binary is in main.rs.

pub mod ledger;
