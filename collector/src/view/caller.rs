//! A caller's text form, as `sessions` prints it and `replay --caller`
//! takes it: `ISSUER|SUBJECT` (a verified token's), `anonymous` or
//! `rejected`.

use anyhow::{bail, Result};

use crate::ledger::caller::Caller;

pub fn key(caller: &Caller) -> String {
    match caller {
        Caller::Verified { issuer, subject } => format!("{issuer}|{subject}"),
        Caller::Anonymous => "anonymous".into(),
        Caller::Rejected => "rejected".into(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let verified = |issuer: &str, subject: &str| Caller::Verified {
            issuer: issuer.into(),
            subject: subject.into(),
        };
        let cases = [
            verified("https://idp.example", "alice"),
            verified("https://idp.example", "auth0|abc|d"),
            Caller::Anonymous,
            Caller::Rejected,
        ];
        for c in &cases {
            assert_eq!(&parse(&key(c)).unwrap(), c, "{c:?}");
        }
        assert_eq!(key(&cases[1]), "https://idp.example|auth0|abc|d");
        assert_ne!(
            key(&verified("https://a.example", "alice")),
            key(&verified("https://b.example", "alice"))
        );
        assert!(parse("alice").is_err());
        assert!(parse("|alice").is_err());
    }
}
