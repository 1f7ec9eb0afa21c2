//! Who may decide which approval, and how many must agree: the `approvers`
//! section of `serve --config` applied to verified claims. Pure.

use tracegate_policy::approval::{claim_holds, CreateRequest};

use crate::config::{ApproversConfig, ClaimCondition};

/// Verified claims of a token, as the authenticator gives them: strings as
/// they are, other values as JSON.
pub type Claims = [(String, String)];

#[derive(Debug, Clone)]
pub struct Access {
    allow: Vec<ClaimCondition>,
    approvals_required: u32,
    policies: Vec<Policy>,
}

#[derive(Debug, Clone)]
struct Policy {
    rule: Option<String>,
    min_risk: Option<u32>,
    allow: Vec<ClaimCondition>,
    approvals_required: u32,
}

fn meets(claims: &Claims, allow: &[ClaimCondition]) -> bool {
    allow.iter().any(|c| {
        claim_holds(
            claims.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &c.claim,
            &c.equals,
        )
    })
}

fn describe(allow: &[ClaimCondition]) -> String {
    let names: Vec<String> = allow.iter().map(ToString::to_string).collect();
    names.join(" or ")
}

impl Access {
    pub fn new(config: &ApproversConfig) -> Access {
        Access {
            allow: config.allow.clone(),
            approvals_required: config.approvals_required.max(1),
            policies: config
                .policies
                .iter()
                .map(|p| Policy {
                    rule: p.rule.clone(),
                    min_risk: p.min_risk,
                    allow: p.allow.clone().unwrap_or_else(|| config.allow.clone()),
                    approvals_required: p
                        .approvals_required
                        .unwrap_or(config.approvals_required)
                        .max(1),
                })
                .collect(),
        }
    }

    /// Every claim a condition reads (the authenticator must keep them).
    pub fn claims_read(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .allow
            .iter()
            .chain(self.policies.iter().flat_map(|p| p.allow.iter()))
            .map(|c| c.claim.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The policies that apply to a request: those whose rule it matched
    /// and whose risk it reaches; none means the top-level one.
    fn applying(&self, req: &CreateRequest) -> Vec<(&[ClaimCondition], u32)> {
        let applying: Vec<(&[ClaimCondition], u32)> = self
            .policies
            .iter()
            .filter(|p| {
                let rule_ok = p.rule.as_ref().is_none_or(|rule| {
                    req.reasons
                        .iter()
                        .any(|r| r.kind == "rule" && &r.name == rule)
                });
                let risk_ok = p.min_risk.is_none_or(|min| req.risk >= min);
                rule_ok && risk_ok
            })
            .map(|p| (p.allow.as_slice(), p.approvals_required))
            .collect();
        if applying.is_empty() {
            vec![(self.allow.as_slice(), self.approvals_required)]
        } else {
            applying
        }
    }

    /// Distinct approvers needed for this request.
    pub fn approvals_required(&self, req: &CreateRequest) -> u32 {
        self.applying(req)
            .iter()
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(1)
    }

    /// Whether these claims make an approver of anything (to list and show).
    pub fn is_approver(&self, claims: &Claims) -> bool {
        meets(claims, &self.allow) || self.policies.iter().any(|p| meets(claims, &p.allow))
    }

    /// Whether these claims may decide this request; the error says what is
    /// missing.
    pub fn may_decide(&self, req: &CreateRequest, claims: &Claims) -> Result<(), String> {
        for (allow, _) in self.applying(req) {
            if !meets(claims, allow) {
                return Err(format!(
                    "this approval needs an approver with {}",
                    describe(allow)
                ));
            }
        }
        Ok(())
    }

    /// What makes an approver, for a 403.
    pub fn who(&self) -> String {
        let mut all = vec![describe(&self.allow)];
        all.extend(self.policies.iter().map(|p| describe(&p.allow)));
        all.dedup();
        all.join(" or ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tracegate_policy::approval::{ApprovalMode, Requester, RiskReason};

    fn access(policies: serde_json::Value) -> Access {
        let config: ApproversConfig = serde_json::from_value(json!({
            "providers": [],
            "allow": [{"claim": "groups", "equals": "llm-approvers"}],
            "policies": policies
        }))
        .unwrap();
        Access::new(&config)
    }

    fn request(rule: &str, risk: u32) -> CreateRequest {
        CreateRequest {
            mode: ApprovalMode::Hold,
            requester: Requester::of(None),
            session_id: String::new(),
            request_id: String::new(),
            method: "POST".into(),
            path: "/".into(),
            digest: "sha256:aa".into(),
            risk,
            threshold: 100,
            reasons: vec![RiskReason {
                kind: "rule".into(),
                name: rule.into(),
                risk,
                count: 1,
            }],
            excerpt: String::new(),
            expires_in_s: 60,
            grant_ttl_s: 60,
            grant_uses: 1,
        }
    }

    fn claims(groups: &str) -> Vec<(String, String)> {
        vec![("groups".into(), groups.into())]
    }

    #[test]
    fn top_level_allow_and_quorum() {
        let a = access(json!([]));
        let req = request("anything", 100);
        assert!(a.may_decide(&req, &claims(r#"["llm-approvers"]"#)).is_ok());
        let no = a.may_decide(&req, &claims(r#"["staff"]"#)).unwrap_err();
        assert!(no.contains("groups=llm-approvers"), "{no}");
        assert!(a.may_decide(&req, &[]).is_err(), "no claims, no approver");
        assert_eq!(a.approvals_required(&req), 1);
        assert!(a.is_approver(&claims("llm-approvers")));
        assert!(!a.is_approver(&claims("staff")));
    }

    #[test]
    fn policies_by_rule_and_risk_replace_the_default_and_all_apply() {
        let a = access(json!([
            {"rule": "production-change",
             "allow": [{"claim": "groups", "equals": "sre-leads"}], "approvals_required": 2},
            {"min_risk": 500, "approvals_required": 3}
        ]));
        let prod = request("production-change", 150);
        assert!(a
            .may_decide(&prod, &claims(r#"["llm-approvers"]"#))
            .unwrap_err()
            .contains("sre-leads"));
        assert!(a.may_decide(&prod, &claims(r#"["sre-leads"]"#)).is_ok());
        assert_eq!(a.approvals_required(&prod), 2);
        assert!(a.is_approver(&claims("sre-leads")), "may list and show");

        // Both apply: sre-leads and llm-approvers, quorum 3.
        let big = request("production-change", 900);
        assert!(a.may_decide(&big, &claims(r#"["sre-leads"]"#)).is_err());
        assert!(a
            .may_decide(&big, &claims(r#"["sre-leads","llm-approvers"]"#))
            .is_ok());
        assert_eq!(a.approvals_required(&big), 3);

        // Neither applies: the top level.
        let other = request("other", 150);
        assert_eq!(a.approvals_required(&other), 1);
        assert!(a.may_decide(&other, &claims(r#"["sre-leads"]"#)).is_err());
        assert_eq!(a.claims_read(), vec!["groups".to_string()]);
    }
}
