//! What a webhook receives: the alert's metadata (ids, names, counts,
//! verdict, risk, policy hash), never a body, a header value or a claim.
//! Alerts carry no excerpt at all, masked or not: the record (which holds
//! the masked bodies) is one `tracegate replay` away by its id.

use serde_json::{json, Value};
use tracegate_proto::v1::Alert;

use super::Format;

/// The body POSTed for `alert` in `format`.
pub fn body(alert: &Alert, format: Format) -> Value {
    match format {
        Format::Json => as_json(alert),
        Format::Slack => json!({ "text": slack_line(alert) }),
    }
}

fn rfc3339(nanos: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

fn as_json(a: &Alert) -> Value {
    let mut detectors: Vec<(&String, &u32)> = a.detectors.iter().collect();
    detectors.sort();
    let mut v = json!({
        "id": a.alert_id,
        "rule": a.rule,
        "kind": a.kind,
        "time": rfc3339(a.unix_nanos),
        "summary": a.summary,
    });
    let mut put = |k: &str, value: Value| {
        if let Some(o) = v.as_object_mut() {
            o.insert(k.into(), value);
        }
    };
    for (k, s) in [
        ("record_id", &a.record_id),
        ("session_id", &a.session_id),
        ("subject", &a.subject),
        ("source", &a.source),
        ("verdict", &a.verdict),
        ("blocked_rule", &a.blocked_rule),
        ("policy_sha256", &a.policy_sha256),
        ("rate_key", &a.rate_key),
    ] {
        if !s.is_empty() {
            put(k, json!(s));
        }
    }
    if a.risk > 0 {
        put("risk", json!(a.risk));
    }
    if !detectors.is_empty() {
        put(
            "detectors",
            Value::Object(
                detectors
                    .into_iter()
                    .map(|(k, n)| (k.clone(), json!(n)))
                    .collect(),
            ),
        );
    }
    if !a.approval_id.is_empty() || !a.approval_outcome.is_empty() {
        put(
            "approval",
            json!({"id": a.approval_id, "outcome": a.approval_outcome}),
        );
    }
    if a.rejections > 0 {
        put("jwt_rejections", json!(a.rejections));
    }
    v
}

/// Slack's mrkdwn reads `<…>` as links and `&` as an entity: a session id
/// or subject (caller-chosen) must not become one.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn slack_line(a: &Alert) -> String {
    let mut parts = vec![format!("tracegate alert [{}]: {}", a.rule, a.summary)];
    for (k, s) in [
        ("record", &a.record_id),
        ("session", &a.session_id),
        ("subject", &a.subject),
        ("verdict", &a.verdict),
        ("approval", &a.approval_id),
    ] {
        if !s.is_empty() {
            parts.push(format!("{k} {s}"));
        }
    }
    if a.risk > 0 {
        parts.push(format!("risk {}", a.risk));
    }
    parts.push(format!("id {}", a.alert_id));
    escape(&parts.join(" · "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::eval::Evaluator;
    use crate::alerts::{Condition, Rule};
    use tracegate_proto::v1::{Body, Header, Identity, Inspection, Record};

    const SECRET: &str = "AKIAIOSFODNN7EXAMPLE";

    #[test]
    fn payloads_carry_metadata_never_bodies() {
        let record = Record {
            record_id: "rec-1".into(),
            session_id: "sess <b>".into(),
            request_body: Some(Body {
                data: format!("{{\"prompt\": \"my key is {SECRET}\"}}").into_bytes(),
                ..Body::default()
            }),
            response_body: Some(Body {
                data: format!("echo {SECRET}").into_bytes(),
                ..Body::default()
            }),
            request_headers: vec![Header {
                name: "x-key".into(),
                value: SECRET.into(),
            }],
            identity: Some(Identity {
                status: 2,
                subject: "alice".into(),
                claims: [("email".to_string(), SECRET.to_string())].into(),
                ..Identity::default()
            }),
            inspection: Some(Inspection {
                verdict: "blocked".into(),
                blocked_rule: "no-keys".into(),
                risk: 90,
                request_findings: [("aws_access_key".to_string(), 1)].into(),
                ..Inspection::default()
            }),
            ..Record::default()
        };
        let mut e = Evaluator::new(
            vec![Rule {
                id: "blocked".into(),
                condition: Condition::Detector(vec!["aws_access_key".into()]),
                webhooks: vec!["sec".into()],
            }],
            [],
        );
        let alerts = e.record(&record, 1_700_000_000_000_000_000);
        assert_eq!(alerts.len(), 1);
        let json = body(&alerts[0], Format::Json);
        let slack = body(&alerts[0], Format::Slack);
        for text in [json.to_string(), slack.to_string()] {
            assert!(!text.contains(SECRET), "{text}");
            assert!(!text.contains("prompt"), "{text}");
        }
        assert_eq!(json["record_id"], "rec-1");
        assert_eq!(json["rule"], "blocked");
        assert_eq!(json["subject"], "alice");
        assert_eq!(json["detectors"]["aws_access_key"], 1);
        assert_eq!(json["time"], "2023-11-14T22:13:20.000Z");
        let line = slack["text"].as_str().unwrap();
        assert!(line.contains("record rec-1"), "{line}");
        assert!(line.contains("sess &lt;b&gt;"), "{line}");
        assert!(!line.contains('\n'));
    }
}
