//! `tracegate approvals …`: the approvers' command line, a client of the
//! approval service's HTTP API. Every call carries the approver's token.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

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
            bail!(
                "{}",
                body["error"]
                    .as_str()
                    .unwrap_or("the approval service refused")
            );
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
                a["id"].as_str().unwrap_or("?"),
                a["state"].as_str().unwrap_or("?"),
                r["risk"],
                r["requester"]["subject"].as_str().unwrap_or("?"),
                time(&a["created_unix_nanos"]),
                r["method"].as_str().unwrap_or(""),
                r["path"].as_str().unwrap_or(""),
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
        let state = a["state"].as_str().unwrap_or("?");
        let approvers: Vec<&str> = a["approvers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["display"].as_str())
            .collect();
        if state == "PENDING" {
            writeln!(
                out,
                "{id}: PENDING, approved by {} of {} needed",
                approvers.join(", "),
                a["approvals_required"]
            )?;
        } else {
            writeln!(out, "{id}: {state} by {}", approvers.join(", "))?;
        }
        Ok(())
    }
}

fn write_approval(out: &mut impl Write, a: &Value) -> Result<()> {
    let r = &a["request"];
    writeln!(
        out,
        "approval {}  {}",
        a["id"].as_str().unwrap_or("?"),
        a["state"].as_str().unwrap_or("?")
    )?;
    writeln!(
        out,
        "  requester  {} ({})",
        r["requester"]["subject"].as_str().unwrap_or("?"),
        r["requester"]["key"].as_str().unwrap_or("?")
    )?;
    writeln!(
        out,
        "  needs      {} approver(s)",
        a["approvals_required"].as_u64().unwrap_or(1)
    )?;
    writeln!(
        out,
        "  request    {} {}  session {}  request id {}",
        r["method"].as_str().unwrap_or(""),
        r["path"].as_str().unwrap_or(""),
        r["session_id"].as_str().unwrap_or(""),
        r["request_id"].as_str().unwrap_or("")
    )?;
    writeln!(out, "  mode       {}", r["mode"].as_str().unwrap_or("?"))?;
    writeln!(
        out,
        "  risk       {} (threshold {})",
        r["risk"], r["threshold"]
    )?;
    for reason in r["reasons"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "             {} {} ×{} (+{})",
            reason["kind"].as_str().unwrap_or(""),
            reason["name"].as_str().unwrap_or(""),
            reason["count"],
            reason["risk"]
        )?;
    }
    writeln!(out, "  digest     {}", r["digest"].as_str().unwrap_or(""))?;
    writeln!(out, "  created    {}", time(&a["created_unix_nanos"]))?;
    if a["state"] == "PENDING" {
        writeln!(out, "  expires    {}", time(&a["expires_unix_nanos"]))?;
    } else {
        writeln!(
            out,
            "  decided    {} by {}: {}",
            time(&a["decided_unix_nanos"]),
            a["approver"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("-"),
            a["reason"].as_str().unwrap_or("")
        )?;
    }
    if a["state"] == "APPROVED" {
        writeln!(
            out,
            "  grant      {} uses left, until {}",
            a["uses_left"],
            time(&a["grant_expires_unix_nanos"])
        )?;
    }
    for p in a["approvers"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "  approver   {} (sub {}, iss {})",
            p["display"].as_str().unwrap_or("?"),
            p["subject"].as_str().unwrap_or("?"),
            p["issuer"].as_str().unwrap_or("?")
        )?;
    }
    writeln!(out, "  excerpt    {}", r["excerpt"].as_str().unwrap_or(""))?;
    writeln!(out, "  history")?;
    for h in a["history"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "    {}  {:<15} {} {}",
            time(&h["unix_nanos"]),
            h["event"].as_str().unwrap_or(""),
            h["actor"].as_str().unwrap_or(""),
            h["reason"].as_str().unwrap_or("")
        )?;
    }
    Ok(())
}
