//! A real Prometheus server (Debian's `prometheus`, or `PROMETHEUS`)
//! scraping the collector, queried over its HTTP API.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{from_env_or, poll, Process, START_TIMEOUT};

pub fn prometheus_bin() -> PathBuf {
    from_env_or("PROMETHEUS", PathBuf::from("/usr/bin/prometheus"))
}

pub struct Prometheus {
    pub process: Process,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

/// A port free at the moment of asking (Prometheus cannot be told port 0
/// and report the one it took).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Prometheus {
    /// Starts Prometheus scraping `metrics_url` (`http://host:port/path`)
    /// every second; waits until it is ready.
    pub fn start(dir: &Path, metrics_url: &str) -> Result<Prometheus> {
        let rest = metrics_url
            .strip_prefix("http://")
            .context("metrics URL must be http://")?;
        let (target, path) = rest.split_once('/').unwrap_or((rest, "metrics"));
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: tracegate\n    metrics_path: /{path}\n    \
             static_configs:\n      - targets: ['{target}']\n"
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let port = free_port()?;
        let mut command = Command::new(prometheus_bin());
        command
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let process = Process::spawn("prometheus", &mut command, dir)?;
        let prometheus = Prometheus {
            process,
            url: format!("http://127.0.0.1:{port}"),
        };
        let ready = poll(
            "Prometheus to be ready",
            START_TIMEOUT,
            || match ureq::get(&format!("{}/-/ready", prometheus.url)).call() {
                Ok(r) if r.status() == 200 => Ok(Some(())),
                _ => Ok(None),
            },
        );
        prometheus.process.with_log(ready)?;
        Ok(prometheus)
    }

    /// An instant query's result vector.
    pub fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let v: Value = ureq::get(&format!("{}/api/v1/query", self.url))
            .query("query", promql)
            .call()?
            .body_mut()
            .read_json()?;
        if v["status"] != "success" {
            bail!("query {promql:?} failed: {v}");
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Polls `promql` until it returns one sample; that sample's value.
    pub fn wait_for_value(&self, promql: &str, timeout: Duration) -> Result<f64> {
        poll(&format!("Prometheus to answer {promql:?}"), timeout, || {
            self.value(promql)
        })
    }

    /// The first series' value of `promql` now, if it has one.
    pub fn value(&self, promql: &str) -> Result<Option<f64>> {
        let result = self.query(promql)?;
        Ok(result
            .first()
            .and_then(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok())))
    }
}
