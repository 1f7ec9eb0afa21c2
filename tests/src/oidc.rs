//! A real OpenID provider for the console's test: npm `oidc-provider` run
//! by `tests/oidc/provider.mjs` (installed into `tests/oidc/node_modules` by
//! `make oidc-provider`), on a free loopback port.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

use crate::{from_env_or, poll, workspace_root, Process, START_TIMEOUT};

/// A port free at the moment (for a URL that must be known before the
/// server that will listen there starts: an issuer, a redirect URI).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub struct OidcProvider {
    pub process: Process,
    /// `http://127.0.0.1:PORT` (the `iss` of its tokens).
    pub issuer: String,
}

impl OidcProvider {
    /// Starts the provider with one client (`client_id`, `client_secret`,
    /// `redirect_uris`) and `users` (`{"name": {"password", "email",
    /// "groups"}}`), and waits until its discovery document is served.
    pub fn start(dir: &Path, client: Value, users: Value) -> Result<OidcProvider> {
        let root = workspace_root().join("tests/oidc");
        if !root.join("node_modules/oidc-provider").exists() {
            bail!("tests/oidc/node_modules is missing: run `make oidc-provider`");
        }
        let port = free_port()?;
        let config = dir.join("oidc-provider.json");
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(&json!({"port": port, "client": client, "users": users}))?,
        )?;
        let node = from_env_or("NODE", "node".into());
        let mut process = Process::spawn(
            "oidc-provider",
            Command::new(node)
                .arg(root.join("provider.mjs"))
                .arg(&config)
                .current_dir(&root),
            dir,
        )?;
        let line = process.wait_for_line("issuer ", START_TIMEOUT);
        let line = process.with_log(line)?;
        let issuer = line
            .trim()
            .strip_prefix("issuer ")
            .context("no issuer printed")?
            .to_string();
        let discovery = format!("{issuer}/.well-known/openid-configuration");
        let ready = poll("the OpenID provider's discovery", START_TIMEOUT, || {
            process.check_alive()?;
            Ok(ureq::get(&discovery).call().is_ok().then_some(()))
        });
        process.with_log(ready)?;
        Ok(OidcProvider { process, issuer })
    }
}
