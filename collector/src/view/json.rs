//! The JSON form of records (`replay --json`, `export`): one object per
//! record and line, terminal-safe (`term::write_json`).

use base64::Engine;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, Write};
use tracegate_proto::v1::identity::Status;
use tracegate_proto::v1::record::Phase;
use tracegate_proto::v1::{Approval, Body, Identity, Inspection, PolicyRef, Record};

use super::{answered_by, answered_by_name, caller, time, upstream_name, upstream_saw};
use crate::ledger::caller::Caller;
use crate::term;

pub fn write_json_lines(out: &mut impl Write, records: &[Record]) -> io::Result<()> {
    for r in records {
        term::write_json(out, &record_json(r))?;
        writeln!(out)?;
    }
    Ok(())
}

/// The JSON form of a record (one per line with `--json`). Bodies are text
/// when they are UTF-8, else base64 in `data_base64`.
#[derive(Serialize)]
struct RecordJson<'a> {
    record_id: &'a str,
    session_id: &'a str,
    /// `caller::key`: whose session this record is in.
    caller: String,
    request_id: &'a str,
    request_start: String,
    response_start: String,
    end: String,
    duration_micros: u64,
    method: &'a str,
    path: &'a str,
    authority: &'a str,
    status: u32,
    /// As they went upstream (masked), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    request_headers: Vec<HeaderJson<'a>>,
    request_body: Option<BodyJson<'a>>,
    response_body: Option<BodyJson<'a>>,
    source: &'a str,
    phase: &'static str,
    /// `nothing`, `headers` or `request`; absent in records that do not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_saw: Option<&'static str>,
    /// `upstream`, `tracegate`, `proxy` or `nobody`; absent when not said.
    #[serde(skip_serializing_if = "Option::is_none")]
    answered_by: Option<&'static str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    status_detail: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    request_record_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<IdentityJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inspection: Option<InspectionJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approval: Option<ApprovalJson<'a>>,
    /// The policy the exchange was decided under; absent in records of
    /// filters that do not state it.
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<PolicyJson<'a>>,
    /// Models and tokens of an LLM API call; a count the answer did not
    /// state is absent (never 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageJson<'a>>,
}

#[derive(Serialize)]
struct UsageJson<'a> {
    provider: &'a str,
    operation: &'a str,
    request_model: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    response_model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cached_input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_tokens: Option<u64>,
}

#[derive(Serialize)]
struct PolicyJson<'a> {
    name: &'a str,
    version: &'a str,
    sha256: &'a str,
}

fn policy_json(p: &PolicyRef) -> PolicyJson<'_> {
    PolicyJson {
        name: &p.name,
        version: &p.version,
        sha256: &p.sha256,
    }
}

#[derive(Serialize)]
struct HeaderJson<'a> {
    name: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
struct ApprovalJson<'a> {
    id: &'a str,
    mode: &'a str,
    state: &'a str,
    approver: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    approvers: Vec<ApproverJson<'a>>,
    #[serde(skip_serializing_if = "is_zero")]
    approvals_required: u32,
    reason: &'a str,
    risk: u32,
    threshold: u32,
    outcome: &'a str,
    detail: &'a str,
}

#[derive(Serialize)]
struct ApproverJson<'a> {
    issuer: &'a str,
    subject: &'a str,
    display: &'a str,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct InspectionJson<'a> {
    verdict: &'a str,
    risk: u32,
    request_findings: BTreeMap<&'a str, u32>,
    response_findings: BTreeMap<&'a str, u32>,
    rules: Vec<RuleJson<'a>>,
    #[serde(skip_serializing_if = "str::is_empty")]
    blocked_rule: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    stream_holds_exceeded: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    access: Option<AccessJson<'a>>,
}

/// The access rules' decision (`Inspection.access`).
#[derive(Serialize)]
struct AccessJson<'a> {
    rule: &'a str,
    decision: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    check: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    detail: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    answer_tools_denied: &'a [String],
}

#[derive(Serialize)]
struct RuleJson<'a> {
    id: &'a str,
    action: &'a str,
    scope: &'a str,
}

fn inspection_json(i: &Inspection) -> InspectionJson<'_> {
    fn counts(m: &std::collections::HashMap<String, u32>) -> BTreeMap<&str, u32> {
        m.iter().map(|(k, v)| (k.as_str(), *v)).collect()
    }
    InspectionJson {
        verdict: &i.verdict,
        risk: i.risk,
        request_findings: counts(&i.request_findings),
        response_findings: counts(&i.response_findings),
        rules: i
            .rules
            .iter()
            .map(|r| RuleJson {
                id: &r.id,
                action: &r.action,
                scope: &r.scope,
            })
            .collect(),
        blocked_rule: &i.blocked_rule,
        reason: &i.reason,
        stream_holds_exceeded: i.stream_holds_exceeded,
        access: i.access.as_ref().map(|a| AccessJson {
            rule: &a.rule,
            decision: &a.decision,
            check: &a.check,
            detail: &a.detail,
            answer_tools_denied: &a.answer_tools_denied,
        }),
    }
}

#[derive(Serialize)]
struct IdentityJson<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    provider: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    issuer: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    subject: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    claims: BTreeMap<&'a str, &'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    algorithm: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    key_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    rejection_reason: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    rejection_detail: &'a str,
    /// A refused token's `sub`, unverified.
    #[serde(skip_serializing_if = "str::is_empty")]
    claimed_subject: &'a str,
}

fn identity_json(id: &Identity) -> IdentityJson<'_> {
    IdentityJson {
        status: match Status::try_from(id.status).unwrap_or(Status::Unspecified) {
            Status::Verified => "verified",
            Status::Anonymous => "anonymous",
            Status::Rejected => "rejected",
            Status::Unspecified => "unknown",
        },
        provider: &id.provider,
        issuer: &id.issuer,
        subject: &id.subject,
        claims: id
            .claims
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        algorithm: &id.algorithm,
        key_id: &id.key_id,
        expires: (id.expires_unix > 0).then(|| time(id.expires_unix.saturating_mul(1_000_000_000))),
        rejection_reason: &id.rejection_reason,
        rejection_detail: &id.rejection_detail,
        claimed_subject: &id.claimed_subject,
    }
}

#[derive(Serialize)]
struct BodyJson<'a> {
    content_type: &'a str,
    size: u64,
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

fn body_json(b: &Body) -> BodyJson<'_> {
    let text = std::str::from_utf8(&b.data).ok();
    BodyJson {
        content_type: &b.content_type,
        size: b.size,
        truncated: b.truncated,
        text,
        data_base64: text
            .is_none()
            .then(|| base64::engine::general_purpose::STANDARD.encode(&b.data)),
    }
}

fn record_json(r: &Record) -> RecordJson<'_> {
    RecordJson {
        record_id: &r.record_id,
        session_id: &r.session_id,
        caller: caller::key(&Caller::of(r)),
        request_id: &r.request_id,
        request_start: time(r.request_start_unix_nanos),
        response_start: time(r.response_start_unix_nanos),
        end: time(r.end_unix_nanos),
        duration_micros: r.duration_micros,
        method: &r.method,
        path: &r.path,
        authority: &r.authority,
        status: r.status,
        request_headers: r
            .request_headers
            .iter()
            .map(|h| HeaderJson {
                name: &h.name,
                value: &h.value,
            })
            .collect(),
        request_body: r.request_body.as_ref().map(body_json),
        response_body: r.response_body.as_ref().map(body_json),
        source: &r.source,
        phase: match r.phase() {
            Phase::Exchange => "exchange",
            Phase::Request => "request",
        },
        upstream_saw: upstream_saw(r).map(upstream_name),
        answered_by: answered_by(r).map(answered_by_name),
        status_detail: &r.status_detail,
        request_record_id: &r.request_record_id,
        identity: r.identity.as_ref().map(identity_json),
        inspection: r.inspection.as_ref().map(inspection_json),
        approval: r.approval.as_ref().map(approval_json),
        policy: r.policy.as_ref().map(policy_json),
        usage: r.usage.as_ref().map(|u| UsageJson {
            provider: &u.provider,
            operation: &u.operation,
            request_model: &u.request_model,
            response_model: &u.response_model,
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cached_input_tokens: u.cached_input_tokens,
            reasoning_tokens: u.reasoning_tokens,
        }),
    }
}

fn approval_json(a: &Approval) -> ApprovalJson<'_> {
    ApprovalJson {
        id: &a.id,
        mode: &a.mode,
        state: &a.state,
        approver: &a.approver,
        approvers: a
            .approvers
            .iter()
            .map(|p| ApproverJson {
                issuer: &p.issuer,
                subject: &p.subject,
                display: &p.display,
            })
            .collect(),
        approvals_required: a.approvals_required,
        reason: &a.reason,
        risk: a.risk,
        threshold: a.threshold,
        outcome: &a.outcome,
        detail: &a.detail,
    }
}
