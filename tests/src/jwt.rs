//! Tokens for tests, minted by `tests/clients/jwt_mint.py` with jwcrypto: a
//! JOSE implementation independent of the filter's (jwt-simple).

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{python_bin, workspace_root};

pub const ISSUER: &str = "https://idp.tracegate.test";
pub const AUDIENCE: &str = "tracegate-gateway";
/// The audience of approvers' tokens (the collector's approval service).
pub const APPROVER_AUDIENCE: &str = "tracegate-approvals";

fn script() -> PathBuf {
    workspace_root().join("tests/clients/jwt_mint.py")
}

fn run(args: &[&str], stdin: &str) -> Result<String> {
    let mut child = Command::new(python_bin())
        .arg(script())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "cannot run {} {}",
                python_bin().display(),
                script().display()
            )
        })?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "jwt_mint.py {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Standard claims of a valid token for `sub`, valid from a minute ago for an
/// hour.
pub fn claims(sub: &str) -> Value {
    let now = unix_now();
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now - 60, "exp": now + 3600})
}

/// Claims of an approver's token: `sub` in `groups`, with an e-mail.
pub fn approver_claims(sub: &str, groups: &[&str]) -> Value {
    let mut c = claims(sub);
    c["aud"] = json!(APPROVER_AUDIENCE);
    c["groups"] = json!(groups);
    c["email"] = json!(format!("{sub}@example.com"));
    c
}

/// The collector's `approvers` configuration: tokens of `ISSUER` for
/// `APPROVER_AUDIENCE`, keys fetched from the test upstream's JWKS (the
/// same identity provider the callers use), approvers in group
/// `llm-approvers`, shown by e-mail; plus `policies`.
pub fn approvers(upstream_port: u16, policies: Value) -> Value {
    json!({
        "providers": [{
            "name": "corp", "issuer": ISSUER, "audiences": [APPROVER_AUDIENCE],
            "remote_jwks": {"uri": format!("http://127.0.0.1:{upstream_port}/jwks.json"),
                            "timeout_ms": 2000, "retry_interval_ms": 200}
        }],
        "display_claim": "email",
        "allow": [{"claim": "groups", "equals": "llm-approvers"}],
        "policies": policies
    })
}

/// A set of private keys (RSA `rsa` and `rsa2`, `ec256`, `ec384`,
/// `ed25519`, `hmac`) kept in a directory.
pub struct Keys {
    file: PathBuf,
}

impl Keys {
    pub fn generate(dir: &Path) -> Result<Keys> {
        let file = dir.join("jwt-keys.json");
        run(&["keys", &file.to_string_lossy()], "")?;
        Ok(Keys { file })
    }

    /// The public JWKS of the named keys.
    pub fn jwks(&self, names: &[&str]) -> Result<Value> {
        let out = run(
            &["jwks", &self.file.to_string_lossy(), &names.join(",")],
            "",
        )?;
        Ok(serde_json::from_str(&out)?)
    }

    /// One token per spec (see jwt_mint.py).
    pub fn mint(&self, specs: &[Value]) -> Result<Vec<String>> {
        let input: String = specs.iter().map(|s| format!("{s}\n")).collect();
        let out = run(&["mint", &self.file.to_string_lossy()], &input)?;
        let tokens: Vec<String> = out.lines().map(str::to_string).collect();
        if tokens.len() != specs.len() {
            bail!("asked for {} tokens, got {}", specs.len(), tokens.len());
        }
        Ok(tokens)
    }

    pub fn mint_one(&self, spec: Value) -> Result<String> {
        Ok(self.mint(&[spec])?.remove(0))
    }
}
