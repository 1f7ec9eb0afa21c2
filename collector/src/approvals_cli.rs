//! `tracegate approvals …`: the approvers' command line, a client of the
//! approval service's HTTP API. Every call carries the approver's token.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use crate::term::safe;

/// A string field of the service's answer, terminal-safe (everything an
/// approval holds came from a caller, the filter or an approver).
fn t(v: &Value, missing: &str) -> String {
    safe(v.as_str().unwrap_or(missing)).into_owned()
}

/// Any field of the service's answer as JSON text (numbers), terminal-safe.
fn n(v: &Value) -> String {
    safe(&v.to_string()).into_owned()
}

pub struct Client {
    base: String,
    agent: ureq::Agent,
    authorization: String,
}

fn time(nanos: &Value) -> String {
    match nanos.as_i64() {
        Some(n) if n > 0 => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(n as u64))
                .to_string()
        }
        _ => "-".into(),
    }
}

impl Client {
    /// `ca`: a PEM file of CA certificates to trust (instead of the
    /// built-in web roots) for an https service.
    pub fn new(server: &str, token: &str, ca: Option<&Path>) -> Result<Client> {
        if token.is_empty() {
            bail!("the approver's token is empty");
        }
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false);
        if let Some(path) = ca {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect::<Vec<_>>();
            if certs.is_empty() {
                bail!("{} holds no PEM certificate", path.display());
            }
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        Ok(Client {
            base: format!("{}/v1/approvals", server.trim_end_matches('/')),
            agent: config.build().into(),
            authorization: format!("Bearer {token}"),
        })
    }

    fn answer(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value> {
        let mut response = response
            .with_context(|| format!("cannot reach the approval service at {}", self.base))?;
        let status = response.status();
        let body: Value = response
            .body_mut()
            .read_json()
            .with_context(|| format!("the approval service answered HTTP {status} without JSON"))?;
        if !status.is_success() {
            bail!("{}", t(&body["error"], "the approval service refused"));
        }
        Ok(body)
    }

    pub fn list(&self, out: &mut impl Write, all: bool) -> Result<()> {
        let url = if all {
            self.base.clone()
        } else {
            format!("{}?state=PENDING", self.base)
        };
        let body = self.answer(
            self.agent
                .get(&url)
                .header("authorization", &self.authorization)
                .call(),
        )?;
        writeln!(
            out,
            "{:<28} {:<9} {:>5} {:<20} {:<21} REQUEST",
            "ID", "STATE", "RISK", "REQUESTER", "CREATED"
        )?;
        for a in body["approvals"].as_array().into_iter().flatten() {
            let r = &a["request"];
            writeln!(
                out,
                "{:<28} {:<9} {:>5} {:<20} {:<21} {} {}",
                t(&a["id"], "?"),
                t(&a["state"], "?"),
                n(&r["risk"]),
                t(&r["requester"]["subject"], "?"),
                time(&a["created_unix_nanos"]),
                t(&r["method"], ""),
                t(&r["path"], ""),
            )?;
        }
        Ok(())
    }

    pub fn show(&self, out: &mut impl Write, id: &str) -> Result<()> {
        let a = self.answer(
            self.agent
                .get(&format!("{}/{id}", self.base))
                .header("authorization", &self.authorization)
                .call(),
        )?;
        write_approval(out, &a)
    }

    pub fn decide(
        &self,
        out: &mut impl Write,
        id: &str,
        approve: bool,
        reason: &str,
    ) -> Result<()> {
        let verb = if approve { "approve" } else { "deny" };
        let a = self.answer(
            self.agent
                .post(&format!("{}/{id}/{verb}", self.base))
                .header("authorization", &self.authorization)
                .send_json(json!({"reason": reason})),
        )?;
        let state = t(&a["state"], "?");
        let approvers: Vec<String> = a["approvers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["display"].as_str())
            .map(|d| safe(d).into_owned())
            .collect();
        if state == "PENDING" {
            writeln!(
                out,
                "{}: PENDING, approved by {} of {} needed",
                safe(id),
                approvers.join(", "),
                n(&a["approvals_required"])
            )?;
        } else {
            writeln!(out, "{}: {state} by {}", safe(id), approvers.join(", "))?;
        }
        Ok(())
    }
}

fn write_approval(out: &mut impl Write, a: &Value) -> Result<()> {
    let r = &a["request"];
    writeln!(
        out,
        "approval {}  {}",
        t(&a["id"], "?"),
        t(&a["state"], "?")
    )?;
    writeln!(
        out,
        "  requester  {} ({})",
        t(&r["requester"]["subject"], "?"),
        t(&r["requester"]["key"], "?")
    )?;
    writeln!(
        out,
        "  needs      {} approver(s)",
        a["approvals_required"].as_u64().unwrap_or(1)
    )?;
    writeln!(
        out,
        "  request    {} {}  session {}  request id {}",
        t(&r["method"], ""),
        t(&r["path"], ""),
        t(&r["session_id"], ""),
        t(&r["request_id"], "")
    )?;
    writeln!(out, "  mode       {}", t(&r["mode"], "?"))?;
    writeln!(
        out,
        "  risk       {} (threshold {})",
        n(&r["risk"]),
        n(&r["threshold"])
    )?;
    for reason in r["reasons"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "             {} {} ×{} (+{})",
            t(&reason["kind"], ""),
            t(&reason["name"], ""),
            n(&reason["count"]),
            n(&reason["risk"])
        )?;
    }
    writeln!(out, "  digest     {}", t(&r["digest"], ""))?;
    writeln!(out, "  created    {}", time(&a["created_unix_nanos"]))?;
    if a["state"] == "PENDING" {
        writeln!(out, "  expires    {}", time(&a["expires_unix_nanos"]))?;
    } else {
        writeln!(
            out,
            "  decided    {} by {}: {}",
            time(&a["decided_unix_nanos"]),
            safe(
                a["approver"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("-")
            ),
            t(&a["reason"], "")
        )?;
    }
    if a["state"] == "APPROVED" {
        writeln!(
            out,
            "  grant      {} uses left, until {}",
            n(&a["uses_left"]),
            time(&a["grant_expires_unix_nanos"])
        )?;
    }
    for p in a["approvers"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  approver   {} (sub {}, iss {})",
            t(&p["display"], "?"),
            t(&p["subject"], "?"),
            t(&p["issuer"], "?")
        )?;
    }
    writeln!(out, "  excerpt    {}", t(&r["excerpt"], ""))?;
    writeln!(out, "  history")?;
    for h in a["history"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "    {}  {:<15} {} {}",
            time(&h["unix_nanos"]),
            t(&h["event"], ""),
            t(&h["actor"], ""),
            t(&h["reason"], "")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::term::is_unsafe;

    #[test]
    fn an_approval_is_shown_inert() {
        let evil = "ok\x1b[2K\r\u{202e}approve me\n  approver  ceo";
        let a = json!({
            "id": evil, "state": "DENIED", "approver": evil, "reason": evil,
            "approvals_required": 1,
            "approvers": [{"display": evil, "subject": evil, "issuer": evil}],
            "history": [{"event": evil, "actor": evil, "reason": evil}],
            "request": {
                "requester": {"subject": evil, "key": evil},
                "method": evil, "path": evil, "session_id": evil, "request_id": evil,
                "mode": evil, "risk": evil, "threshold": 1, "digest": evil, "excerpt": evil,
                "reasons": [{"kind": evil, "name": evil, "count": evil, "risk": 1}]
            }
        });
        let mut out = Vec::new();
        write_approval(&mut out, &a).unwrap();
        let text = String::from_utf8(out).unwrap();
        let bad: Vec<char> = text
            .chars()
            .filter(|&c| c != '\n' && is_unsafe(c))
            .collect();
        assert!(bad.is_empty(), "{bad:?} in {text}");
        assert!(
            text.contains("excerpt    ok\\x1b[2K\\r\\u{202e}approve me\\n  approver  ceo"),
            "{text}"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("  approver  ceo")),
            "{text}"
        );
    }
}
