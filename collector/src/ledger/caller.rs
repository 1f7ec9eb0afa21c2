//! Who an exchange's caller is: what sessions are kept by.
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
//!
//! The session indexes store a caller as it is here (JSON: `{"status":
//! "verified", "issuer": …, "subject": …}`, `{"status": "anonymous"}`,
//! `{"status": "rejected"}`); its text form (`ISSUER|SUBJECT`, as
//! `sessions` prints it and `replay --caller` takes it) is the view's
//! (`view::caller`).

use serde::{Deserialize, Serialize};
use tracegate_proto::v1::identity::Status;
use tracegate_proto::v1::Record;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Caller {
    /// A verified token's `iss` and `sub`.
    Verified { issuer: String, subject: String },
    /// No token, or no `jwt` configured.
    Anonymous,
    /// A token (or its absence) refused with 401: not verified.
    Rejected,
}

impl Caller {
    /// The caller of a record, from its `Identity`.
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
    fn callers_come_from_the_identity_status() {
        assert_eq!(
            Caller::of(&record(Status::Verified, "https://idp", "alice")),
            Caller::Verified {
                issuer: "https://idp".into(),
                subject: "alice".into()
            }
        );
        assert_eq!(Caller::of(&Record::default()), Caller::Anonymous);
        assert_eq!(
            Caller::of(&record(Status::Unspecified, "https://idp", "alice")),
            Caller::Anonymous
        );
        assert_eq!(
            Caller::of(&record(Status::Anonymous, "", "")),
            Caller::Anonymous
        );
        assert_eq!(
            Caller::of(&record(Status::Rejected, "https://idp", "alice")),
            Caller::Rejected
        );
    }

    #[test]
    fn same_subject_of_another_issuer_is_another_caller() {
        let a = Caller::of(&record(Status::Verified, "https://a.example", "alice"));
        let b = Caller::of(&record(Status::Verified, "https://b.example", "alice"));
        assert_ne!(a, b);
    }

    #[test]
    fn stored_form_round_trips() {
        let callers = [
            Caller::of(&record(Status::Verified, "https://idp", "auth0|abc")),
            Caller::Anonymous,
            Caller::Rejected,
        ];
        for c in callers {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<Caller>(&json).unwrap(), c, "{json}");
        }
        assert_eq!(
            serde_json::to_string(&Caller::Anonymous).unwrap(),
            r#"{"status":"anonymous"}"#
        );
    }
}
