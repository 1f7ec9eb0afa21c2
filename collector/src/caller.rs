//! Who an exchange's caller is, for listing and replaying sessions.
//!
//! Session and request ids are what callers sent, so they prove nothing:
//! two callers can send the same `x-session-id`. Sessions are therefore
//! kept per caller: a session is a (caller, session id) pair, and one
//! caller's exchanges are never shown in another caller's session.
//!
//! The caller is the verified issuer and subject of the request's token.
//! Requests without a token (or through a filter without `jwt`) are the
//! caller `anonymous`; requests whose token was refused (401) are the caller
//! `rejected`: neither is ever mixed with a verified caller's exchanges.

use anyhow::{bail, Result};
use std::fmt;
use tracegate_proto::v1::identity::Status;
use tracegate_proto::v1::Record;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Caller {
    /// A verified token's `iss` and `sub`.
    Verified { issuer: String, subject: String },
    /// No token, or no `jwt` configured.
    Anonymous,
    /// A token (or its absence) refused with 401: not verified.
    Rejected,
}

impl Caller {
    pub fn of(r: &Record) -> Caller {
        let Some(id) = &r.identity else {
            return Caller::Anonymous;
        };
        match id.status() {
            Status::Verified => Caller::Verified {
                issuer: id.issuer.clone(),
                subject: id.subject.clone(),
            },
            Status::Rejected => Caller::Rejected,
            Status::Anonymous | Status::Unspecified => Caller::Anonymous,
        }
    }

    /// The caller's key, as `sessions` prints it and `--caller` takes it:
    /// `ISSUER|SUBJECT`, `anonymous` or `rejected`.
    pub fn key(&self) -> String {
        self.to_string()
    }

    /// Reads a key. A verified caller's key splits at its first `|` (an
    /// issuer is an https URL, which holds none; a subject may).
    pub fn parse(key: &str) -> Result<Caller> {
        match key.split_once('|') {
            Some((issuer, subject)) if !issuer.is_empty() => Ok(Caller::Verified {
                issuer: issuer.into(),
                subject: subject.into(),
            }),
            Some(_) => bail!("caller {key:?}: the issuer before '|' is empty"),
            None if key == "anonymous" => Ok(Caller::Anonymous),
            None if key == "rejected" => Ok(Caller::Rejected),
            None => bail!(
                "caller {key:?} is none of ISSUER|SUBJECT, anonymous or rejected (as `tracegate sessions` lists them)"
            ),
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Verified { issuer, subject } => write!(f, "{issuer}|{subject}"),
            Caller::Anonymous => f.write_str("anonymous"),
            Caller::Rejected => f.write_str("rejected"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracegate_proto::v1::Identity;

    fn record(status: Status, iss: &str, sub: &str) -> Record {
        Record {
            identity: Some(Identity {
                status: status as i32,
                issuer: iss.into(),
                subject: sub.into(),
                ..Identity::default()
            }),
            ..Record::default()
        }
    }

    #[test]
    fn keys_round_trip() {
        let cases = [
            record(Status::Verified, "https://idp.example", "alice"),
            record(Status::Verified, "https://idp.example", "auth0|abc|d"),
            record(Status::Anonymous, "", ""),
            record(Status::Rejected, "", ""),
            Record::default(),
        ];
        for r in &cases {
            let c = Caller::of(r);
            assert_eq!(Caller::parse(&c.key()).unwrap(), c, "{c}");
        }
        assert_eq!(Caller::of(&Record::default()), Caller::Anonymous);
        assert!(Caller::parse("alice").is_err());
        assert!(Caller::parse("|alice").is_err());
    }

    #[test]
    fn same_subject_of_another_issuer_is_another_caller() {
        let a = Caller::of(&record(Status::Verified, "https://a.example", "alice"));
        let b = Caller::of(&record(Status::Verified, "https://b.example", "alice"));
        assert_ne!(a, b);
        assert_ne!(a.key(), b.key());
    }
}
