//! Segment seals: a signed statement about one closed segment, chained to
//! the seal before it, in a text form an auditor can read (after C2SP's
//! tlog-checkpoint: a body of `key value` lines, a blank line, signature
//! lines).
//!
//! ```text
//! tracegate segment seal v1
//! segment 3
//! records 12
//! sequence 100 111
//! time 1700000000000000000 1700000000000000011
//! chain <hex of the last record's chain hash>
//! merkle <hex of the RFC 6962 root of the segment's record leaves>
//! previous <hex of SHA-256 of the previous seal's whole text, zeros for the first>
//!
//! — tracegate <base64 of the Ed25519 signature of the body>
//! ```

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::Hash;

const FIRST_LINE: &str = "tracegate segment seal v1";
const SIGNATURE_PREFIX: &str = "— tracegate ";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub segment: u64,
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub first_unix_nanos: i64,
    pub last_unix_nanos: i64,
    pub last_chain: Hash,
    pub merkle_root: Hash,
    pub previous: Hash,
}

impl Seal {
    /// The signed text.
    pub fn body(&self) -> String {
        format!(
            "{FIRST_LINE}\nsegment {}\nrecords {}\nsequence {} {}\ntime {} {}\nchain {}\nmerkle {}\nprevious {}\n",
            self.segment,
            self.records,
            self.first_seq,
            self.last_seq,
            self.first_unix_nanos,
            self.last_unix_nanos,
            hex(&self.last_chain),
            hex(&self.merkle_root),
            hex(&self.previous),
        )
    }

    /// Body, blank line, signature line.
    pub fn sign(&self, key: &SigningKey) -> String {
        sign_text(&self.body(), key)
    }

    /// Parses a seal's text and checks its signature.
    pub fn verify(text: &str, key: &VerifyingKey) -> Result<Seal, String> {
        let body = open_signed(text, key)?;
        let seal = Seal::parse_body(&body)?;
        if seal.body() != body {
            return Err("body is not in canonical form".into());
        }
        Ok(seal)
    }

    /// Parses a seal's text without checking its signature: for readers
    /// that only want its time range. `verify` is for trusting it.
    pub fn parse_unverified(text: &str) -> Result<Seal, String> {
        let body = text.split_once("\n\n").map_or(text, |(b, _)| b);
        Seal::parse_body(&format!("{body}\n"))
    }

    fn parse_body(body: &str) -> Result<Seal, String> {
        let mut lines = body.lines();
        if lines.next() != Some(FIRST_LINE) {
            return Err("not a tracegate seal".into());
        }
        let mut field = |name: &str| -> Result<Vec<String>, String> {
            let line = lines.next().ok_or(format!("missing {name}"))?;
            let rest = line
                .strip_prefix(name)
                .and_then(|r| r.strip_prefix(' '))
                .ok_or(format!("expected {name}, found {line:?}"))?;
            Ok(rest.split(' ').map(str::to_string).collect())
        };
        let num = |v: &[String], i: usize| -> Result<u64, String> {
            v.get(i)
                .and_then(|s| s.parse().ok())
                .ok_or("bad number".to_string())
        };
        let int = |v: &[String], i: usize| -> Result<i64, String> {
            v.get(i)
                .and_then(|s| s.parse().ok())
                .ok_or("bad number".to_string())
        };
        let segment = num(&field("segment")?, 0)?;
        let records = num(&field("records")?, 0)?;
        let seq = field("sequence")?;
        let time = field("time")?;
        let chain = unhex(&field("chain")?[0])?;
        let merkle = unhex(&field("merkle")?[0])?;
        let previous = unhex(&field("previous")?[0])?;
        Ok(Seal {
            segment,
            records,
            first_seq: num(&seq, 0)?,
            last_seq: num(&seq, 1)?,
            first_unix_nanos: int(&time, 0)?,
            last_unix_nanos: int(&time, 1)?,
            last_chain: chain,
            merkle_root: merkle,
            previous,
        })
    }
}

/// A signed text: `body`, a blank line, the signature line.
pub fn sign_text(body: &str, key: &SigningKey) -> String {
    let signature = key.sign(body.as_bytes());
    format!(
        "{body}\n{SIGNATURE_PREFIX}{}\n",
        STANDARD.encode(signature.to_bytes())
    )
}

/// Checks a signed text's signature; returns its body.
pub fn open_signed(text: &str, key: &VerifyingKey) -> Result<String, String> {
    let (body, sig_part) = text
        .split_once("\n\n")
        .ok_or("no blank line between body and signature")?;
    let body = format!("{body}\n");
    let sig_line = sig_part
        .lines()
        .find_map(|l| l.strip_prefix(SIGNATURE_PREFIX))
        .ok_or("no tracegate signature line")?;
    let sig = decode_signature(sig_line.trim())?;
    key.verify_strict(body.as_bytes(), &sig)
        .map_err(|_| "signature does not verify with this public key")?;
    Ok(body)
}

pub fn decode_signature(b64: &str) -> Result<Signature, String> {
    let bytes: [u8; 64] = STANDARD
        .decode(b64)
        .map_err(|e| format!("signature is not base64: {e}"))?
        .try_into()
        .map_err(|_| "signature is not 64 bytes")?;
    Ok(Signature::from_bytes(&bytes))
}

/// The signed statement that the writer has made records durable up to
/// `sequence` (file HEAD). It anchors the unsealed tail: cutting whole
/// records off the end of the open segment leaves HEAD naming a record
/// that is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub segment: u64,
    /// Sequence number of the last durable record.
    pub sequence: u64,
    pub chain: Hash,
    pub unix_nanos: i64,
}

const HEAD_FIRST_LINE: &str = "tracegate head v1";

impl Head {
    pub fn body(&self) -> String {
        format!(
            "{HEAD_FIRST_LINE}\nsegment {}\nsequence {}\nchain {}\ntime {}\n",
            self.segment,
            self.sequence,
            hex(&self.chain),
            self.unix_nanos
        )
    }

    pub fn verify(text: &str, key: &VerifyingKey) -> Result<Head, String> {
        let body = open_signed(text, key)?;
        let mut lines = body.lines();
        if lines.next() != Some(HEAD_FIRST_LINE) {
            return Err("not a tracegate head".into());
        }
        let mut value = |name: &str| -> Result<String, String> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix(' '))
                .map(str::to_string)
                .ok_or(format!("missing {name}"))
        };
        let segment = value("segment")?.parse().map_err(|_| "bad segment")?;
        let sequence = value("sequence")?.parse().map_err(|_| "bad sequence")?;
        let chain = unhex(&value("chain")?)?;
        let unix_nanos = value("time")?.parse().map_err(|_| "bad time")?;
        Ok(Head {
            segment,
            sequence,
            chain,
            unix_nanos,
        })
    }
}

/// The text a retention entry's signature covers.
pub fn retention_statement(r: &tracegate_proto::v1::Retention) -> String {
    format!(
        "tracegate retention v1\nsegments {} {}\npolicy {}\ntime {}\n",
        r.first_segment, r.last_segment, r.policy, r.unix_nanos
    )
}

/// SHA-256 of a seal's whole text, which the next seal names as `previous`.
pub fn seal_hash(text: &str) -> Hash {
    Sha256::digest(text.as_bytes()).into()
}

pub fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Result<Hash, String> {
    if s.len() != 64 {
        return Err(format!("{s:?} is not a 32-byte hex hash"));
    }
    let mut h = [0u8; 32];
    for (i, out) in h.iter_mut().enumerate() {
        *out = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal() -> Seal {
        Seal {
            segment: 3,
            records: 12,
            first_seq: 100,
            last_seq: 111,
            first_unix_nanos: 1,
            last_unix_nanos: 2,
            last_chain: [1; 32],
            merkle_root: [2; 32],
            previous: [0; 32],
        }
    }

    #[test]
    fn signed_seal_round_trips_and_forgery_fails() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let text = seal().sign(&key);
        assert!(
            text.starts_with("tracegate segment seal v1\nsegment 3\n"),
            "{text}"
        );
        assert_eq!(Seal::verify(&text, &key.verifying_key()).unwrap(), seal());

        // Any edit of the body breaks the signature.
        let forged = text.replace("records 12", "records 11");
        assert!(Seal::verify(&forged, &key.verifying_key())
            .unwrap_err()
            .contains("signature"));
        // A seal re-signed with another key does not verify with ours.
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(Seal::verify(&seal().sign(&other), &key.verifying_key()).is_err());
        // The next seal names this one.
        assert_ne!(seal_hash(&text), [0; 32]);
    }
}
