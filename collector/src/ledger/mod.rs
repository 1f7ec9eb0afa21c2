//! The durable, tamper-evident record store.
//!
//! - `frame`: segment header and frame format (CRC32C over every field,
//!   SHA-256 hash chain across records and segments) and the scan that tells
//!   a torn tail from corruption.
//! - `merkle`, `seal`: RFC 6962 roots and the Ed25519-signed texts (segment
//!   seals, HEAD, retention statements).
//! - `keys`: the seal key pair as PEM.
//! - `layout`: the files of a data directory.
//! - `recover`: what the writer finds at start-up: torn tails cut,
//!   corruption quarantined, ids and indexes rebuilt.
//! - `writer`: the one writer: group commit, roll, seal, retention.
//! - `caller`: whose session a record is in (stored in the indexes).
//! - `index`, `read`: session look-ups and export without the lock;
//!   `follow`: new records as they are written (`tail`).
//! - `verify`: the auditor's check.

pub mod caller;
pub mod follow;
pub mod frame;
pub mod index;
pub mod keys;
pub mod layout;
pub mod merkle;
pub mod read;
mod recover;
pub mod seal;
pub mod verify;
pub mod writer;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

#[cfg(test)]
mod tests;
