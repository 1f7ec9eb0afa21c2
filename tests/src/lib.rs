//! The end-to-end harness: starts the real Envoy binary with the real wasm
//! filter, the real collector process and a local LLM upstream, each on a
//! free port, and waits for each to be ready by polling (never by sleeping a
//! guessed time).
//!
//! Every child process is killed when its handle is dropped, including while
//! a test panics, and also if the test process itself dies (PR_SET_PDEATHSIG).
//! When a test fails, the logs of every child are printed.
//!
//! Binaries are found at their build locations; override with
//! `ENVOY`, `TRACEGATE_BIN`, `TRACEGATE_WASM`, `TEST_UPSTREAM_BIN`, `PROMETHEUS`.

pub mod browser;
pub mod envoy_config;
pub mod jwt;
pub mod oidc;
pub mod prometheus;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a component may take to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a record may take to reach the collector.
pub const RECORD_TIMEOUT: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub(crate) fn from_env_or(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

pub fn envoy_bin() -> PathBuf {
    from_env_or("ENVOY", workspace_root().join(".venv/bin/envoy"))
}

pub fn collector_bin() -> PathBuf {
    from_env_or(
        "TRACEGATE_BIN",
        workspace_root().join("target/release/tracegate"),
    )
}

pub fn filter_wasm() -> PathBuf {
    from_env_or(
        "TRACEGATE_WASM",
        workspace_root().join("target/tracegate_filter.wasm"),
    )
}

/// The bench's floor filter (bench/floor-filter; `make floor-filter`).
pub fn floor_wasm() -> PathBuf {
    from_env_or(
        "TRACEGATE_FLOOR_WASM",
        workspace_root().join("target/floor_filter.wasm"),
    )
}

/// A binary of this crate: next to the running executable (the demo) or one
/// level up (integration tests run from `target/<profile>/deps`).
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    [dir.join(name), dir.join("..").join(name)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| dir.join(name))
}

/// Python with the openai and anthropic SDKs (the Makefile's virtualenv).
pub fn python_bin() -> PathBuf {
    from_env_or("PYTHON", workspace_root().join(".venv/bin/python"))
}

pub fn upstream_bin() -> PathBuf {
    from_env_or("TEST_UPSTREAM_BIN", sibling_bin("test-upstream"))
}

/// Runs a Python client from `tests/clients/` with the SDK virtualenv; its
/// stdout, or an error with stdout and stderr when it fails.
pub fn run_client(script: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(python_bin())
        .arg(workspace_root().join("tests/clients").join(script))
        .args(args)
        .output()
        .with_context(|| format!("cannot run {script} with {}", python_bin().display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{script} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// The header that makes the test upstream answer `text` (base64, so a
/// secret in it is not masked on the way up, as tracegate judges headers).
pub fn reply_header(text: &str) -> (&'static str, String) {
    use base64::Engine;
    (
        "x-test-reply-b64",
        base64::engine::general_purpose::STANDARD.encode(text),
    )
}

/// Calls `f` until it returns `Some`, or fails after `timeout`.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A child process whose output goes to a log file. Dropping it stops the
/// process (SIGTERM, then SIGKILL) and, if the thread is panicking, prints
/// the log.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command, dir: &Path) -> Result<Process> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log)?;
        let program = command.get_program().to_string_lossy().into_owned();
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: prctl is async-signal-safe; this runs in the forked child
        // before exec. It makes the kernel kill the child if we die.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({program})"))?;
        Ok(Process {
            name: name.into(),
            child,
            log,
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status})", self.name);
        }
        Ok(())
    }

    /// Adds this process's log to an error: for failures before a test body
    /// runs (start-up), when no panic is there yet to print it on drop.
    pub fn with_log<T>(&self, result: Result<T>) -> Result<T> {
        result.with_context(|| format!("===== log of {} =====\n{}", self.name, self.log()))
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits for the process to exit by itself; returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let name = format!("{} to exit", self.name);
        poll(&name, timeout, || Ok(self.child.try_wait()?))
    }

    /// Waits until a line of the log contains `needle`; returns that line.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let what = format!("{:?} in the log of {}", needle, self.name);
        poll(&what, timeout, || {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return Ok(Some(line.to_string()));
            }
            self.check_alive()?;
            Ok(None)
        })
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let stopped = poll("exit", Duration::from_secs(5), || {
                Ok(self.child.try_wait()?)
            });
            if stopped.is_err() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "===== log of {} ({}) =====\n{}",
                self.name,
                self.log.display(),
                self.log()
            );
        }
    }
}

/// Parses the `host:port` that follows `key` in a line.
fn port_after(line: &str, key: &str) -> Result<u16> {
    let rest = line
        .split(key)
        .nth(1)
        .ok_or_else(|| anyhow!("no {key:?} in {line:?}"))?;
    let addr = rest.split_whitespace().next().unwrap_or_default();
    let port = addr.rsplit(':').next().unwrap_or_default();
    port.parse().with_context(|| format!("port in {line:?}"))
}

/// How the harness sets up a collector (written to its directory, so a
/// restart in the same directory keeps it).
#[derive(Debug, Clone, Default)]
pub struct CollectorOptions {
    /// TLS with client certificates on the machine side (certificates made
    /// with `tracegate certs` in `tls_dir`, default `DIR/tls`, kept if there).
    pub tls: bool,
    pub tls_dir: Option<PathBuf>,
    /// The `approvers` section of `serve --config`; with it, the approval
    /// service is served (`--approvals`).
    pub approvers: Option<Value>,
    /// The `alerts` section of `serve --config` (rules and webhooks).
    pub alerts: Option<Value>,
    /// The `console` section of `serve --config` (OIDC sign-in); with it the
    /// console is served (`--console`) on the port of its `public_url`.
    pub console: Option<Value>,
}

/// The real collector: `tracegate serve` on a free port.
pub struct Collector {
    pub process: Process,
    pub data: PathBuf,
    pub grpc_port: u16,
    /// The approvers' API (`serve --approvals`), `http://…` or `https://…`.
    pub approvals_url: Option<String>,
    /// `DIR/tls` when the machine side requires client certificates.
    pub tls: Option<PathBuf>,
    /// Prometheus metrics (`serve --metrics`): `http://…/metrics`.
    pub metrics_url: String,
}

/// Runs `tracegate certs --out DIR` (keeps an existing set).
pub fn make_certs(dir: &Path) -> Result<()> {
    let out = Command::new(collector_bin())
        .args(["certs", "--out"])
        .arg(dir)
        .output()
        .context("running tracegate certs")?;
    if !out.status.success() {
        bail!(
            "tracegate certs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Collector {
    /// Starts a collector on a free port with its data in `dir/data`.
    pub fn start(dir: &Path) -> Result<Collector> {
        Self::start_on(dir, 0)
    }

    /// Writes the configuration `options` ask for into `dir`, then starts.
    pub fn start_configured(dir: &Path, options: &CollectorOptions) -> Result<Collector> {
        std::fs::create_dir_all(dir)?;
        let mut config = serde_json::json!({});
        if options.tls {
            let tls = options.tls_dir.clone().unwrap_or_else(|| dir.join("tls"));
            make_certs(&tls)?;
            let file = |name: &str| tls.join(name).to_string_lossy().into_owned();
            config["tls"] = serde_json::json!({"cert": file("collector.pem"),
                "key": file("collector.key"), "client_ca": file("ca.pem")});
        }
        if let Some(a) = &options.approvers {
            config["approvers"] = a.clone();
        }
        if let Some(a) = &options.alerts {
            config["alerts"] = a.clone();
        }
        if let Some(c) = &options.console {
            config["console"] = c.clone();
        }
        std::fs::write(dir.join("serve.json"), serde_json::to_vec_pretty(&config)?)?;
        Self::start_on(dir, 0)
    }

    /// Starts a collector on `port` (0: a free one) with its data in
    /// `dir/data`, and the configuration in `dir/serve.json` if there is one.
    pub fn start_on(dir: &Path, port: u16) -> Result<Collector> {
        let data = dir.join("data");
        let config_file = dir.join("serve.json");
        let config: Value = match std::fs::read(&config_file) {
            Ok(bytes) => serde_json::from_slice(&bytes)?,
            Err(_) => Value::Null,
        };
        let mut command = Command::new(collector_bin());
        command
            .arg("serve")
            .arg("--data")
            .arg(&data)
            .arg("--grpc")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--metrics", "127.0.0.1:0"]);
        if !config.is_null() {
            command.arg("--config").arg(&config_file);
        }
        if config.get("approvers").is_some() {
            command.args(["--approvals", "127.0.0.1:0"]);
        }
        if let Some(url) = config["console"]["public_url"].as_str() {
            // The browser's URL names the port, so it is chosen beforehand.
            let port = url.rsplit(':').next().unwrap_or_default();
            command.args(["--console", &format!("127.0.0.1:{port}")]);
        }
        let mut process = Process::spawn("collector", &mut command, dir)?;
        let line = process.wait_for_line("listening grpc=", START_TIMEOUT);
        let line = process.with_log(line)?;
        let grpc_port = port_after(&line, "grpc=")?;
        let field = |name: &str| {
            line.split(&format!(" {name}="))
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string)
        };
        let approvals_url = field("approvals");
        let metrics_url = field("metrics").context("the collector printed no metrics address")?;
        let tls = config["tls"]["client_ca"]
            .as_str()
            .and_then(|ca| Path::new(ca).parent())
            .map(Path::to_path_buf);
        Ok(Collector {
            process,
            data,
            grpc_port,
            approvals_url,
            tls,
            metrics_url,
        })
    }

    /// `tracegate <args> --data DIR`; returns stdout, or fails with stderr.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(collector_bin())
            .args(args)
            .arg("--data")
            .arg(&self.data)
            .output()?;
        if !out.status.success() {
            bail!(
                "tracegate {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `tracegate approvals <args>` against this collector's approval
    /// service with an approver's token (`TRACEGATE_TOKEN`); returns stdout,
    /// or fails with stderr.
    pub fn approvals(&self, token: &str, args: &[&str]) -> Result<String> {
        self.approvals_cli(|c| c.env("TRACEGATE_TOKEN", token), args)
    }

    /// `approvals` with the token in a file (`--token-file`).
    pub fn approvals_token_file(&self, file: &Path, args: &[&str]) -> Result<String> {
        self.approvals_cli(|c| c.arg("--token-file").arg(file), args)
    }

    fn approvals_cli(
        &self,
        token: impl FnOnce(&mut Command) -> &mut Command,
        args: &[&str],
    ) -> Result<String> {
        let url = self
            .approvals_url
            .as_deref()
            .ok_or_else(|| anyhow!("this collector serves no approvals"))?;
        let mut command = Command::new(collector_bin());
        command
            .env_remove("TRACEGATE_TOKEN")
            .arg("approvals")
            .arg("--server")
            .arg(url);
        token(&mut command);
        if let Some(tls) = &self.tls {
            command.arg("--ca").arg(tls.join("ca.pem"));
        }
        let out = command.args(args).output()?;
        if !out.status.success() {
            bail!(
                "tracegate approvals {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// An HTTP call to the approvers' API (trusting the collector's CA):
    /// status and JSON body. `token`: sent as `Authorization: Bearer`.
    pub fn approvals_http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let url = self
            .approvals_url
            .as_deref()
            .ok_or_else(|| anyhow!("this collector serves no approvals"))?;
        let mut config = ureq::Agent::config_builder().http_status_as_error(false);
        if let Some(tls) = &self.tls {
            let pem = std::fs::read(tls.join("ca.pem"))?;
            let ca = ureq::tls::Certificate::from_pem(&pem)?;
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]))
                    .build(),
            );
        }
        let agent: ureq::Agent = config.build().into();
        let url = format!("{url}{path}");
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut response = match (method, body) {
            ("GET", _) => {
                let mut r = agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.call()?
            }
            (_, body) => {
                let mut r = agent.post(&url);
                if let Some(a) = &auth {
                    r = r.header("authorization", a);
                }
                r.send_json(body.cloned().unwrap_or(Value::Null))?
            }
        };
        let status = response.status().as_u16();
        Ok((
            status,
            response.body_mut().read_json().unwrap_or(Value::Null),
        ))
    }

    /// Record ids in the store (`tracegate export`).
    pub fn stored_ids(&self) -> Result<Vec<String>> {
        let out = self.cli(&["export"])?;
        out.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l)?;
                Ok(v["record_id"].as_str().unwrap_or_default().to_string())
            })
            .collect()
    }

    /// The records of every caller who used this session id, as JSON
    /// (`tracegate replay --json`, which gives them caller by caller), in
    /// the order their requests started; or none.
    pub fn replay_json(&self, session: &str) -> Result<Vec<Value>> {
        match self.cli(&["replay", session, "--json"]) {
            Ok(out) => {
                let mut records = out
                    .lines()
                    .map(|l| serde_json::from_str(l).context("replay --json line"))
                    .collect::<Result<Vec<Value>>>()?;
                // RFC 3339 times of one format sort as text.
                records.sort_by(|a, b| {
                    let start = |r: &Value| r["request_start"].as_str().unwrap_or("").to_string();
                    start(a).cmp(&start(b))
                });
                Ok(records)
            }
            Err(e) if e.to_string().contains("no exchanges recorded") => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Polls until the session has at least `n` records.
    pub fn wait_for_records(&mut self, session: &str, n: usize) -> Result<Vec<Value>> {
        let what = format!("{n} records of session {session}");
        poll(&what, RECORD_TIMEOUT, || {
            self.process.check_alive()?;
            let records = self.replay_json(session)?;
            Ok((records.len() >= n).then_some(records))
        })
    }
}

/// The local LLM upstream (`test-upstream`) on a free port.
pub struct Upstream {
    pub process: Process,
    pub port: u16,
}

impl Upstream {
    pub fn start(dir: &Path) -> Result<Upstream> {
        Self::start_with_key(dir, None)
    }

    /// With `api_key`, the upstream refuses `/v1/...` requests that do not
    /// carry it (401), as the provider would.
    pub fn start_with_key(dir: &Path, api_key: Option<&str>) -> Result<Upstream> {
        let mut command = Command::new(upstream_bin());
        if let Some(key) = api_key {
            command.args(["--api-key", key]);
        }
        let mut process = Process::spawn("upstream", &mut command, dir)?;
        let line = process.wait_for_line("listening on ", START_TIMEOUT);
        let line = process.with_log(line)?;
        let port = port_after(&line, "listening on ")?;
        Ok(Upstream { process, port })
    }

    /// Lets answers held with header `x-test-hold: NAME` go.
    pub fn release(&self, name: &str) -> Result<()> {
        let url = format!("http://127.0.0.1:{}/__release/{name}", self.port);
        ureq::post(&url).send_empty()?;
        Ok(())
    }

    /// Publishes the JWKS the upstream serves at `/jwks.json`.
    pub fn publish_jwks(&self, jwks: &Value) -> Result<()> {
        let url = format!("http://127.0.0.1:{}/__jwks", self.port);
        ureq::put(&url).send(jwks.to_string())?;
        Ok(())
    }

    /// How many times `/jwks.json` was fetched.
    pub fn jwks_fetches(&self) -> Result<u64> {
        let url = format!("http://127.0.0.1:{}/__jwks/fetches", self.port);
        Ok(ureq::get(&url)
            .call()?
            .body_mut()
            .read_to_string()?
            .trim()
            .parse()?)
    }

    /// API requests whose headers reached the upstream (body or not), as
    /// they arrived: `method`, `path`, `headers`.
    pub fn starts(&self) -> Result<Vec<Value>> {
        let url = format!("http://127.0.0.1:{}/__starts", self.port);
        let v: Value = ureq::get(&url).call()?.body_mut().read_json()?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Requests the upstream received, as it saw them.
    pub fn received(&self) -> Result<Vec<Value>> {
        let url = format!("http://127.0.0.1:{}/__requests", self.port);
        let v: Value = ureq::get(&url).call()?.body_mut().read_json()?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }
}

/// The real Envoy, one worker (unless started with more), admin and
/// listener on free ports.
pub struct Envoy {
    pub process: Process,
    pub admin_port: u16,
    pub port: u16,
}

impl Envoy {
    /// Starts Envoy with a bootstrap (JSON) and waits for admin `/ready`.
    pub fn start(dir: &Path, bootstrap: &Value) -> Result<Envoy> {
        Self::start_workers(dir, bootstrap, 1)
    }

    /// The same with `workers` worker threads (`--concurrency`).
    pub fn start_workers(dir: &Path, bootstrap: &Value, workers: u32) -> Result<Envoy> {
        let mut process = Self::spawn_workers(dir, bootstrap, workers)?;
        let ports = Self::wait_ready(&mut process, dir);
        let (admin_port, port) = process.with_log(ports)?;
        Ok(Envoy {
            process,
            admin_port,
            port,
        })
    }

    /// Waits for the admin address, then `/ready`; returns the admin and
    /// listener ports.
    fn wait_ready(process: &mut Process, dir: &Path) -> Result<(u16, u16)> {
        let addr_file = dir.join("envoy-admin.addr");
        let admin_port: u16 = poll("Envoy's admin address", START_TIMEOUT, || {
            process.check_alive()?;
            let text = std::fs::read_to_string(&addr_file).unwrap_or_default();
            Ok(text.trim().rsplit(':').next().and_then(|p| p.parse().ok()))
        })?;
        let admin = format!("http://127.0.0.1:{admin_port}");
        poll("Envoy /ready", START_TIMEOUT, || {
            process.check_alive()?;
            let ready = ureq::get(format!("{admin}/ready")).call().is_ok();
            Ok(ready.then_some(()))
        })?;
        let listeners: Value = ureq::get(format!("{admin}/listeners?format=json"))
            .call()?
            .body_mut()
            .read_json()?;
        let port = listeners["listener_statuses"][0]["local_address"]["socket_address"]
            ["port_value"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| anyhow!("no listener port in {listeners}"))?;
        Ok((admin_port, port))
    }

    /// Starts Envoy without waiting; for tests that expect it to refuse a configuration.
    pub fn spawn(dir: &Path, bootstrap: &Value) -> Result<Process> {
        Self::spawn_workers(dir, bootstrap, 1)
    }

    fn spawn_workers(dir: &Path, bootstrap: &Value, workers: u32) -> Result<Process> {
        let config = dir.join("envoy.json");
        std::fs::write(&config, serde_json::to_vec_pretty(bootstrap)?)?;
        Process::spawn(
            "envoy",
            Command::new(envoy_bin())
                .arg("-c")
                .arg(&config)
                .arg("--concurrency")
                .arg(workers.to_string())
                .args(["--disable-hot-restart", "-l", "info"])
                .arg("--admin-address-path")
                .arg(dir.join("envoy-admin.addr")),
            dir,
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The port of the listener with this name.
    pub fn listener_port(&self, name: &str) -> Result<u16> {
        let listeners: Value = ureq::get(format!(
            "http://127.0.0.1:{}/listeners?format=json",
            self.admin_port
        ))
        .call()?
        .body_mut()
        .read_json()?;
        listeners["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == name)
            .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| anyhow!("no listener {name:?} in {listeners}"))
    }

    /// Polls until a counter reaches `at_least`; returns its value.
    pub fn wait_stat(&mut self, name: &str, at_least: u64) -> Result<u64> {
        let what = format!("{name} >= {at_least}");
        let admin = self.admin_port;
        poll(&what, START_TIMEOUT, || {
            self.process.check_alive()?;
            let v = Envoy::stat_at(admin, name)?;
            Ok((v >= at_least).then_some(v))
        })
    }

    /// A counter or gauge from admin `/stats`, 0 if absent.
    pub fn stat(&self, name: &str) -> Result<u64> {
        Envoy::stat_at(self.admin_port, name)
    }

    /// A stat of the Envoy whose admin listens on `admin_port` (for a
    /// closure that cannot borrow the `Envoy`); 0 if not (yet) defined.
    pub fn stat_at(admin_port: u16, name: &str) -> Result<u64> {
        let url = format!("http://127.0.0.1:{admin_port}/stats?filter=^{name}$");
        let text = ureq::get(&url).call()?.body_mut().read_to_string()?;
        Ok(text
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(": ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0))
    }
}

/// How a `Stack` is set up beyond the plugin configuration.
#[derive(Default)]
pub struct StackOptions {
    /// The collector's machine side without TLS (default: client
    /// certificates required, and Envoy presents one).
    pub plain_collector: bool,
    /// Where the certificates are made (kept if there); default `DIR/tls`.
    pub tls_dir: Option<PathBuf>,
    /// The collector's `approvers` configuration, made from the upstream's
    /// port (the upstream serves the identity provider's JWKS); with it the
    /// approval service runs.
    pub approvers: Option<Box<dyn Fn(u16) -> Value>>,
    /// The provider's API key: the upstream requires it, and Envoy injects
    /// it after tracegate (as `envoy/tracegate-oidc.yaml` does), so callers
    /// never hold it.
    pub provider_key: Option<String>,
    /// The filter's configuration comes from ECDS: `DIR/ecds/tracegate.json`,
    /// written by `tracegate policy apply` (as an operator would) and
    /// reloaded by Envoy whenever `Stack::apply_policy` swaps it.
    pub ecds: bool,
    /// The collector's `alerts` configuration.
    pub alerts: Option<Value>,
    /// The collector's `console` configuration (see `CollectorOptions`).
    pub console: Option<Value>,
}

/// Collector, upstream and Envoy with the tracegate filter, wired together.
/// Fields drop in order: Envoy first, the temporary directory (if any) last,
/// after the logs have been printed.
pub struct Stack {
    pub envoy: Envoy,
    pub collector: Collector,
    pub upstream: Upstream,
    /// Logs, configuration and the collector's data.
    pub dir: PathBuf,
    /// The directory Envoy watches for the filter's configuration (ECDS).
    pub ecds: Option<PathBuf>,
    _temporary: Option<tempfile::TempDir>,
}

/// `tracegate policy <args>`: exit status, stdout and stderr.
pub fn policy_cli(args: &[&std::ffi::OsStr]) -> Result<(i32, String, String)> {
    let out = Command::new(collector_bin())
        .arg("policy")
        .args(args)
        .output()
        .context("running tracegate policy")?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `tracegate policy apply` of this configuration into `ecds` (a file
/// `policy-N.json` next to it holds the configuration); `wasm` is given when
/// the resource file is made. Fails with stderr unless it exits 0.
pub fn apply_policy(ecds: &Path, config: &Value, wasm: Option<&Path>) -> Result<String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = ecds.parent().unwrap_or(ecds);
    let file = dir.join(format!("policy-{}.json", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&file, serde_json::to_vec_pretty(config)?)?;
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "apply".as_ref(),
        file.as_os_str(),
        "--dir".as_ref(),
        ecds.as_os_str(),
    ];
    if let Some(w) = wasm {
        args.extend(["--wasm".as_ref(), w.as_os_str()]);
    }
    let (code, stdout, stderr) = policy_cli(&args)?;
    if code != 0 {
        bail!("tracegate policy apply exited {code}: {stderr}");
    }
    Ok(stdout)
}

/// What a test request got back through Envoy.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Stack {
    /// `tracegate policy apply` of a new configuration into the directory
    /// Envoy watches (a stack started with `StackOptions::ecds`).
    pub fn apply_policy(&self, config: &Value) -> Result<String> {
        let ecds = self
            .ecds
            .as_deref()
            .ok_or_else(|| anyhow!("this stack takes no configuration from ECDS"))?;
        apply_policy(ecds, config, None)
    }

    /// POSTs `body` to Envoy with these headers and `x-session-id`, and
    /// returns the status and body whatever the status.
    pub fn post(
        &self,
        path: &str,
        session: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = agent
            .post(self.envoy.url(path))
            .header("x-session-id", session);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = req.send(body)?;
        Ok(Answer {
            status: resp.status().as_u16(),
            body: resp.body_mut().read_to_string().unwrap_or_default(),
        })
    }

    /// Starts everything in a temporary directory with this plugin
    /// configuration (the JSON that goes in the filter's `configuration`).
    pub fn start(plugin_config: &Value) -> Result<Stack> {
        let tmp = tempfile::Builder::new()
            .prefix("tracegate-e2e-")
            .tempdir()?;
        let mut stack = Self::start_in(tmp.path(), plugin_config)?;
        stack._temporary = Some(tmp);
        Ok(stack)
    }

    /// Starts everything in `dir`, which is kept.
    pub fn start_in(dir: &Path, plugin_config: &Value) -> Result<Stack> {
        Self::start_with(dir, plugin_config, |_, _| Ok(()))
    }

    /// Like `start`, with the identity provider's cluster pointing at a port
    /// where nothing listens.
    pub fn start_with_idp_down(plugin_config: &Value) -> Result<Stack> {
        let tmp = tempfile::Builder::new()
            .prefix("tracegate-e2e-")
            .tempdir()?;
        let dead = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut stack = Self::start_with(tmp.path(), plugin_config, |_, p| {
            p.idp = dead;
            Ok(())
        })?;
        stack._temporary = Some(tmp);
        Ok(stack)
    }

    /// Like `start`, with the upstream serving this JWKS before Envoy starts.
    pub fn start_with_jwks(plugin_config: &Value, jwks: &Value) -> Result<Stack> {
        let tmp = tempfile::Builder::new()
            .prefix("tracegate-e2e-")
            .tempdir()?;
        let mut stack = Self::start_with(tmp.path(), plugin_config, |u, _| u.publish_jwks(jwks))?;
        stack._temporary = Some(tmp);
        Ok(stack)
    }

    /// Starts collector (with client certificates required on its machine
    /// side) and upstream, lets `setup` prepare them (publish keys, change
    /// ports), then starts Envoy.
    pub fn start_with(
        dir: &Path,
        plugin_config: &Value,
        setup: impl FnOnce(&Upstream, &mut envoy_config::Ports) -> Result<()>,
    ) -> Result<Stack> {
        Self::start_with_options(dir, plugin_config, &StackOptions::default(), setup)
    }

    /// `start_with`, set up as `options` say.
    pub fn start_with_options(
        dir: &Path,
        plugin_config: &Value,
        options: &StackOptions,
        setup: impl FnOnce(&Upstream, &mut envoy_config::Ports) -> Result<()>,
    ) -> Result<Stack> {
        std::fs::create_dir_all(dir)?;
        let upstream = Upstream::start_with_key(dir, options.provider_key.as_deref())?;
        let collector_options = CollectorOptions {
            tls: !options.plain_collector,
            tls_dir: options.tls_dir.clone(),
            approvers: options.approvers.as_ref().map(|f| f(upstream.port)),
            alerts: options.alerts.clone(),
            console: options.console.clone(),
        };
        let collector = Collector::start_configured(dir, &collector_options)?;
        let mut ports = envoy_config::Ports {
            upstream: upstream.port,
            collector: collector.grpc_port,
            idp: upstream.port,
            approvals: collector.grpc_port,
            tls: collector.tls.clone(),
            provider_key: None,
        };
        if let Some(key) = &options.provider_key {
            let file = dir.join("provider-key.yaml");
            std::fs::write(&file, envoy_config::generic_secret("provider-api-key", key))?;
            ports.provider_key = Some(file);
        }
        setup(&upstream, &mut ports)?;
        let mut bootstrap = envoy_config::bootstrap(&ports, &filter_wasm(), plugin_config);
        let ecds = if options.ecds {
            let ecds = dir.join("ecds");
            std::fs::create_dir_all(&ecds)?;
            apply_policy(&ecds, plugin_config, Some(&filter_wasm()))?;
            envoy_config::use_ecds(&mut bootstrap, &ecds);
            Some(ecds)
        } else {
            None
        };
        let envoy = Envoy::start(dir, &bootstrap)?;
        Ok(Stack {
            envoy,
            collector,
            upstream,
            dir: dir.to_path_buf(),
            ecds,
            _temporary: None,
        })
    }
}
