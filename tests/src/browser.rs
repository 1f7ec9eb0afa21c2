//! Headless Chromium (Debian's `chromium` and `chromium-driver`, installed by
//! `make chromium`) driven by Selenium from the test virtualenv through
//! `tests/clients/browser.py`: one JSON command per line. The driver's path
//! is given, so nothing is downloaded.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use crate::{from_env_or, python_bin, workspace_root, START_TIMEOUT};

/// How long one browser command may take (a page load, a click).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What the browser shows.
#[derive(Debug, Clone)]
pub struct Page {
    pub url: String,
    /// The DOM serialised (`page_source`).
    pub source: String,
}

pub struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    log: PathBuf,
}

fn page(v: &Value) -> Page {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    Page {
        url: s("url"),
        source: s("source"),
    }
}

impl Browser {
    /// A browser that accepts the server certificate in `cert` (PEM), pinned
    /// by its public key, although no system root signs it.
    pub fn start_trusting(dir: &Path, cert: Option<&Path>) -> Result<Browser> {
        let chromium = from_env_or("CHROMIUM", "/usr/bin/chromium".into());
        let driver = from_env_or("CHROMEDRIVER", "/usr/bin/chromedriver".into());
        for (what, p) in [("chromium", &chromium), ("chromedriver", &driver)] {
            if !p.exists() {
                bail!("{what} not found at {}: run `make chromium`", p.display());
            }
        }
        let log = dir.join("browser.log");
        let stderr = std::fs::File::create(&log)?;
        let mut command = Command::new(python_bin());
        command
            .arg(workspace_root().join("tests/clients/browser.py"))
            .arg(&chromium)
            .arg(&driver)
            .arg(dir.join("chromedriver.log"))
            .args(cert)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        // SAFETY: prctl is async-signal-safe; runs in the child before exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().context("starting browser.py")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut b = Browser {
            child,
            stdin,
            lines,
            log,
        };
        let ready = b.read(START_TIMEOUT)?;
        if ready["ready"] != true {
            bail!("browser.py did not start: {ready}");
        }
        eprintln!("browser: Chromium {}", ready["browser"]);
        Ok(b)
    }

    fn read(&mut self, timeout: Duration) -> Result<Value> {
        let line = self.lines.recv_timeout(timeout).map_err(|e| {
            anyhow!(
                "browser.py gave no answer ({e}); its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        })?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Sends one command; fails with the browser's error.
    pub fn call(&mut self, command: Value) -> Result<Value> {
        let stdin = self.stdin.as_mut().context("browser closed")?;
        writeln!(stdin, "{command}")?;
        stdin.flush()?;
        let answer = self.read(COMMAND_TIMEOUT)?;
        if let Some(e) = answer.get("error") {
            bail!("browser {command}: {e}");
        }
        Ok(answer)
    }

    pub fn get(&mut self, url: &str) -> Result<Page> {
        Ok(page(&self.call(json!({"cmd": "get", "url": url}))?))
    }

    pub fn page(&mut self) -> Result<Page> {
        Ok(page(&self.call(json!({"cmd": "page"}))?))
    }

    pub fn fill(&mut self, css: &str, text: &str) -> Result<()> {
        self.call(json!({"cmd": "fill", "css": css, "text": text}))
            .map(|_| ())
    }

    pub fn click(&mut self, css: &str) -> Result<Page> {
        Ok(page(&self.call(json!({"cmd": "click", "css": css}))?))
    }

    /// The visible text of every element matching `css`.
    pub fn texts(&mut self, css: &str) -> Result<Vec<String>> {
        let v = self.call(json!({"cmd": "texts", "css": css}))?;
        Ok(v["texts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect())
    }

    /// Attribute `name` of every element matching `css`.
    pub fn attrs(&mut self, css: &str, name: &str) -> Result<Vec<String>> {
        let v = self.call(json!({"cmd": "attrs", "css": css, "name": name}))?;
        Ok(v["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect())
    }

    pub fn screenshot(&mut self, path: &Path) -> Result<()> {
        let v = self.call(json!({"cmd": "screenshot", "path": path}))?;
        if v["saved"] != true {
            bail!("no screenshot at {}", path.display());
        }
        Ok(())
    }

    /// Cookies of the current site (name, value, httpOnly, sameSite, …).
    pub fn cookies(&mut self) -> Result<Vec<Value>> {
        let v = self.call(json!({"cmd": "cookies"}))?;
        Ok(v["cookies"].as_array().cloned().unwrap_or_default())
    }

    pub fn clear_cookies(&mut self) -> Result<()> {
        self.call(json!({"cmd": "clear_cookies"})).map(|_| ())
    }

    /// Tab presses from the top of the page until `css` has the focus.
    pub fn tab_presses_to(&mut self, css: &str) -> Result<Option<u64>> {
        let v = self.call(json!({"cmd": "tab_focus", "css": css}))?;
        Ok(v["presses"].as_u64())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // EOF on stdin: browser.py quits Chromium and chromedriver.
        self.stdin.take();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "===== log of the browser ({}) =====\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}
