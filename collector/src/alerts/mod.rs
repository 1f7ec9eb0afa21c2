//! Real-time alerts: rules over stored records and approval events
//! (`alerts` in `serve --config`), raised by the writer in the same group
//! commit as what raised them (`eval`), sent to webhooks at least once with
//! a stable id, retried with backoff and resumed after a restart
//! (`deliver`), as metadata only (`payload`).

pub mod deliver;
pub mod eval;
pub mod payload;

use serde::Deserialize;
use std::collections::HashSet;

/// `alerts` in `serve --config`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    /// `http://` or `https://`; alerts are POSTed to it.
    pub url: String,
    #[serde(default)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The alert as a JSON object.
    #[default]
    Json,
    /// `{"text": "..."}`: one readable line (Slack incoming webhooks and
    /// the many services that accept their shape).
    Slack,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub id: String,
    pub when: When,
    /// Names of `webhooks` it goes to.
    pub webhooks: Vec<String>,
}

/// Exactly one condition (`by` goes with `jwt_rejections_per_minute`).
/// A struct rather than an enum so a mistake is named by its field.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    #[serde(default)]
    pub verdict: Option<Vec<Verdict>>,
    #[serde(default)]
    pub risk_at_least: Option<u32>,
    #[serde(default)]
    pub detector: Option<Vec<String>>,
    #[serde(default)]
    pub approval: Option<Vec<ApprovalOutcome>>,
    #[serde(default)]
    pub jwt_rejections_per_minute: Option<u32>,
    #[serde(default)]
    pub by: Option<RateKey>,
}

/// The verdicts a filter writes (records.proto `Inspection.verdict`): the
/// filter's own type, so the words cannot drift apart.
pub use tracegate_policy::record::Verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalOutcome {
    Denied,
    Expired,
}

impl ApprovalOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalOutcome::Denied => "denied",
            ApprovalOutcome::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateKey {
    /// The record's identity subject. Rejected tokens carry none (the
    /// filter records verified claims only), so their rejections share one
    /// key.
    #[default]
    Subject,
    /// The filter that made the record (`Record.source`).
    Source,
}

impl RateKey {
    pub fn as_str(self) -> &'static str {
        match self {
            RateKey::Subject => "subject",
            RateKey::Source => "source",
        }
    }
}

/// A rule's condition, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Verdict(Vec<Verdict>),
    RiskAtLeast(u32),
    Detector(Vec<String>),
    Approval(Vec<ApprovalOutcome>),
    JwtRejections { per_minute: u32, by: RateKey },
}

impl Condition {
    pub fn kind(&self) -> &'static str {
        match self {
            Condition::Verdict(_) => "verdict",
            Condition::RiskAtLeast(_) => "risk",
            Condition::Detector(_) => "detector",
            Condition::Approval(_) => "approval",
            Condition::JwtRejections { .. } => "jwt_rejections",
        }
    }
}

/// A checked rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub condition: Condition,
    pub webhooks: Vec<String>,
}

const MAX_RATE: u32 = 100_000;

impl AlertsConfig {
    /// Checks what serde cannot; the error names the field (under
    /// `alerts.`). Returns the rules typed.
    pub fn rules(&self) -> Result<Vec<Rule>, String> {
        let err = |field: String, msg: &str| Err(format!("field `alerts.{field}`: {msg}"));
        let mut names = HashSet::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            if !valid_name(&w.name) {
                return err(
                    format!("webhooks[{i}].name"),
                    "use 1 to 64 letters, digits, `-`, `_` or `.`",
                );
            }
            if !names.insert(w.name.as_str()) {
                return err(format!("webhooks[{i}].name"), "is used twice");
            }
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return err(
                    format!("webhooks[{i}].url"),
                    "must start with http:// or https://",
                );
            }
        }
        let mut ids = HashSet::new();
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            if !valid_name(&r.id) {
                return err(
                    format!("{at}.id"),
                    "use 1 to 64 letters, digits, `-`, `_` or `.`",
                );
            }
            if !ids.insert(r.id.as_str()) {
                return err(format!("{at}.id"), "is used twice");
            }
            if r.webhooks.is_empty() {
                return err(format!("{at}.webhooks"), "name at least one webhook");
            }
            for (j, w) in r.webhooks.iter().enumerate() {
                if !names.contains(w.as_str()) {
                    return err(
                        format!("{at}.webhooks[{j}]"),
                        &format!("no webhook is named {w:?}"),
                    );
                }
            }
            let condition = condition(&r.when).map_err(|(f, m)| {
                let field = if f.is_empty() {
                    format!("{at}.when")
                } else {
                    format!("{at}.when.{f}")
                };
                format!("field `alerts.{field}`: {m}")
            })?;
            rules.push(Rule {
                id: r.id.clone(),
                condition,
                webhooks: r.webhooks.clone(),
            });
        }
        Ok(rules)
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The one condition of `when`, or the field at fault and why.
fn condition(w: &When) -> Result<Condition, (&'static str, String)> {
    let given = [
        w.verdict.is_some(),
        w.risk_at_least.is_some(),
        w.detector.is_some(),
        w.approval.is_some(),
        w.jwt_rejections_per_minute.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 {
        return Err((
            "",
            "give exactly one of `verdict`, `risk_at_least`, `detector`, `approval`, \
             `jwt_rejections_per_minute`"
                .into(),
        ));
    }
    if w.by.is_some() && w.jwt_rejections_per_minute.is_none() {
        return Err(("by", "goes with `jwt_rejections_per_minute` only".into()));
    }
    if let Some(v) = &w.verdict {
        if v.is_empty() {
            return Err(("verdict", "name at least one verdict".into()));
        }
        return Ok(Condition::Verdict(v.clone()));
    }
    if let Some(n) = w.risk_at_least {
        return Ok(Condition::RiskAtLeast(n));
    }
    if let Some(d) = &w.detector {
        if d.is_empty() || d.iter().any(|n| n.trim().is_empty()) {
            return Err(("detector", "name at least one detector, none empty".into()));
        }
        return Ok(Condition::Detector(d.clone()));
    }
    if let Some(a) = &w.approval {
        if a.is_empty() {
            return Err(("approval", "name `denied`, `expired` or both".into()));
        }
        return Ok(Condition::Approval(a.clone()));
    }
    match w.jwt_rejections_per_minute {
        Some(n) if (1..=MAX_RATE).contains(&n) => Ok(Condition::JwtRejections {
            per_minute: n,
            by: w.by.unwrap_or_default(),
        }),
        Some(n) => Err((
            "jwt_rejections_per_minute",
            format!("{n} is outside 1..={MAX_RATE}"),
        )),
        None => Err(("", "no condition".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(v: serde_json::Value) -> Result<Vec<Rule>, String> {
        let de: AlertsConfig = serde_path_to_error::deserialize(v)
            .map_err(|e| format!("field `alerts.{}`: {}", e.path(), e.inner()))?;
        de.rules()
    }

    fn with_rule(rule: serde_json::Value) -> serde_json::Value {
        json!({"webhooks": [{"name": "sec", "url": "http://127.0.0.1:9/h"},
                            {"name": "chat", "url": "https://hooks.example/x", "format": "slack"}],
               "rules": [rule]})
    }

    #[test]
    fn every_condition_parses_typed() {
        let r = rules(with_rule(
            json!({"id": "b", "when": {"verdict": ["blocked", "access_denied"]}, "webhooks": ["sec"]}),
        ))
        .unwrap();
        assert_eq!(
            r[0].condition,
            Condition::Verdict(vec![Verdict::Blocked, Verdict::AccessDenied])
        );
        let r = rules(with_rule(
            json!({"id": "j", "when": {"jwt_rejections_per_minute": 5, "by": "source"}, "webhooks": ["sec", "chat"]}),
        ))
        .unwrap();
        assert_eq!(
            r[0].condition,
            Condition::JwtRejections {
                per_minute: 5,
                by: RateKey::Source
            }
        );
        let r = rules(with_rule(
            json!({"id": "a", "when": {"approval": ["denied", "expired"]}, "webhooks": ["sec"]}),
        ))
        .unwrap();
        assert_eq!(r[0].condition.kind(), "approval");
    }

    #[test]
    fn mistakes_name_the_field() {
        let cases = [
            (
                json!({"id": "b", "when": {"verdict": ["blocked"], "risk_at_least": 3}, "webhooks": ["sec"]}),
                "alerts.rules[0].when`",
            ),
            (
                json!({"id": "b", "when": {}, "webhooks": ["sec"]}),
                "alerts.rules[0].when`",
            ),
            (
                json!({"id": "b", "when": {"verdict": ["blockd"]}, "webhooks": ["sec"]}),
                "alerts.rules[0].when.verdict[0]",
            ),
            (
                json!({"id": "b", "when": {"verdict": []}, "webhooks": ["sec"]}),
                "alerts.rules[0].when.verdict`",
            ),
            (
                json!({"id": "b", "when": {"risk": 3}, "webhooks": ["sec"]}),
                "alerts.rules[0].when.risk",
            ),
            (
                json!({"id": "b", "when": {"risk_at_least": 3, "by": "subject"}, "webhooks": ["sec"]}),
                "alerts.rules[0].when.by",
            ),
            (
                json!({"id": "b", "when": {"jwt_rejections_per_minute": 0}, "webhooks": ["sec"]}),
                "alerts.rules[0].when.jwt_rejections_per_minute",
            ),
            (
                json!({"id": "b", "when": {"detector": []}, "webhooks": ["sec"]}),
                "alerts.rules[0].when.detector",
            ),
            (
                json!({"id": "b", "when": {"approval": ["approved"]}, "webhooks": ["sec"]}),
                "alerts.rules[0].when.approval[0]",
            ),
            (
                json!({"id": "b", "when": {"risk_at_least": 1}, "webhooks": ["nope"]}),
                "alerts.rules[0].webhooks[0]",
            ),
            (
                json!({"id": "b", "when": {"risk_at_least": 1}, "webhooks": []}),
                "alerts.rules[0].webhooks`",
            ),
            (
                json!({"id": "b c", "when": {"risk_at_least": 1}, "webhooks": ["sec"]}),
                "alerts.rules[0].id",
            ),
        ];
        for (rule, field) in cases {
            let e = rules(with_rule(rule.clone())).unwrap_err();
            assert!(e.contains(field), "{rule}: {e}");
        }
        let e = rules(json!({"webhooks": [{"name": "a", "url": "ftp://x"}]})).unwrap_err();
        assert!(e.contains("alerts.webhooks[0].url"), "{e}");
        let e = rules(json!({"webhooks": [{"name": "a", "url": "http://x", "format": "xml"}]}))
            .unwrap_err();
        assert!(e.contains("alerts.webhooks[0].format"), "{e}");
        let e = rules(json!({"webhooks": [{"name": "a", "url": "http://x"}, {"name": "a", "url": "http://y"}]}))
            .unwrap_err();
        assert!(e.contains("alerts.webhooks[1].name"), "{e}");
    }
}
