//! Access rules in the exchange: the caller's rule is chosen as soon as the
//! caller is decided, and what the head shows (the default, the API, the
//! path) is judged at once, before anything goes upstream; what the body
//! asks for (model, tools, output limit, streaming) is judged when it is
//! complete, before the approval and write-ahead gates. A tool call in the
//! answer that the rule does not allow withholds the answer.

use tracegate_proto::v1::AccessDecision;

use super::{count, Effect, Exchange, Gateway, LocalReply, Refusal, Stat};
use crate::access::{Caller, Denial, Facts, Selected};
use crate::record::Verdict;

/// Where the access rules are for this exchange.
#[derive(Debug, Default)]
pub(super) enum AccessState {
    /// No `access` section.
    #[default]
    Off,
    /// The caller is not decided yet.
    Pending,
    /// The caller's rule; the body is not judged yet.
    Selected(Selected),
    /// Allowed by this rule (its answer is still checked).
    Allowed(Selected),
    Denied(Box<Denial>),
}

impl Exchange {
    /// The caller is decided: choose its rule and judge the head. `false`
    /// when refused (answered 403).
    pub(super) fn access_caller(
        &mut self,
        caller: Caller<'_>,
        gw: &mut Gateway,
        out: &mut Vec<Effect>,
    ) -> bool {
        let Some(access) = gw.policy.access.as_ref() else {
            return true;
        };
        let selected = access.select(caller);
        match access.head(selected, self.api, &self.access_path) {
            Ok(()) => {
                self.access = AccessState::Selected(selected);
                true
            }
            Err(denial) => {
                self.access_denied(denial, gw, out);
                false
            }
        }
    }

    /// The complete request's body against the caller's rule. `false` when
    /// refused (answered 403).
    pub(super) fn access_gate(&mut self, gw: &mut Gateway, out: &mut Vec<Effect>) -> bool {
        if gw.policy.access.is_none() {
            return true;
        }
        let selected = match &self.access {
            AccessState::Off | AccessState::Allowed(_) => return true,
            AccessState::Denied(_) => return false,
            AccessState::Selected(s) => *s,
            // The gates run only once the caller is decided; were they ever
            // to run before, the request is judged as an anonymous caller's
            // (least privilege), never let through unjudged.
            AccessState::Pending => {
                if !self.access_caller(Caller::Anonymous, gw, out) {
                    return false;
                }
                match &self.access {
                    AccessState::Selected(s) => *s,
                    _ => return false,
                }
            }
        };
        let Some(access) = gw.policy.access.as_ref() else {
            return true;
        };
        let facts = match self.access_facts.take() {
            Some(f) => *f,
            // Access rules make the inspector read every held body; a body
            // that was not read is never judged as empty.
            None if self.body_bytes > 0 => {
                let denial = access.denial(
                    selected,
                    crate::access::Check::Model,
                    "the request body was not read; it is refused".into(),
                );
                self.access_denied(denial, gw, out);
                return false;
            }
            None => Facts::default(),
        };
        match access.body(selected, &facts) {
            Ok(()) => {
                self.guard = access.answer_guard(selected);
                self.access = AccessState::Allowed(selected);
                true
            }
            Err(denial) => {
                self.access_denied(denial, gw, out);
                false
            }
        }
    }

    fn access_denied(&mut self, denial: Denial, gw: &mut Gateway, out: &mut Vec<Effect>) {
        out.push(count(Stat::AccessDenied(denial.index)));
        self.inspection.verdict = Verdict::AccessDenied;
        self.inspection.reason = denial.message.clone();
        let refusal = Refusal::Denied {
            rule: denial.rule.clone(),
        };
        let reply = LocalReply::new(self.api, &refusal, &denial.message);
        self.access = AccessState::Denied(Box::new(denial));
        self.respond(reply, gw, out);
    }

    /// The answer called a tool its rule does not allow: counted and noted
    /// for the record; the caller withholds the answer.
    pub(super) fn answer_denied(&mut self, tool: &str, out: &mut Vec<Effect>) -> Option<Denial> {
        let denial = self.guard.as_ref()?.denial(tool);
        out.push(count(Stat::AccessAnswerDenied(denial.index)));
        self.inspection.reason = denial.message.clone();
        if !self.answer_tools_denied.iter().any(|t| t == tool) {
            self.answer_tools_denied.push(tool.to_string());
        }
        Some(denial)
    }

    /// The access part of the record.
    pub(super) fn access_record(&self, gw: &Gateway) -> Option<AccessDecision> {
        let access = gw.policy.access.as_ref()?;
        let mut d = AccessDecision {
            answer_tools_denied: self.answer_tools_denied.clone(),
            ..AccessDecision::default()
        };
        match &self.access {
            AccessState::Off | AccessState::Pending => return None,
            AccessState::Selected(s) => d.rule = access.id(*s).into(),
            AccessState::Allowed(s) => {
                d.rule = access.id(*s).into();
                d.decision = "allowed".into();
                if !self.answer_tools_denied.is_empty() {
                    d.check = crate::access::Check::AnswerTool.as_str().into();
                    d.detail = self.inspection.reason.clone();
                }
            }
            AccessState::Denied(denial) => {
                d.rule = denial.rule.clone();
                d.decision = "denied".into();
                d.check = denial.check.as_str().into();
                d.detail = denial.message.clone();
            }
        }
        Some(d)
    }
}
