//! The tamper-evident record format of the durable store (issue 6), as pure
//! functions over bytes: frames with CRC32C and a SHA-256 hash chain, segment
//! headers, the scan that tells a torn tail from corruption, RFC 6962 Merkle
//! roots, and the signed seal of a closed segment.
//!
//! Not yet used by `tracegate serve` (which still writes the interim
//! `records.log`, see store.rs); the segment writer, `verify`, retention and
//! recovery build on this.

pub mod frame;
pub mod merkle;
pub mod seal;

/// A SHA-256 digest.
pub type Hash = [u8; 32];
