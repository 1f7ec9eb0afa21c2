//! `tracegate serve`: two doors in front of the one writer thread.
//!
//! - The machine side (`--grpc`): the gRPC ingest and, with `--approvals`,
//!   the approval calls filters make (create, wait, redeem). With `tls` in
//!   the configuration it accepts only clients presenting a certificate from
//!   the configured CA: only gateways write records and ask for approvals.
//! - The approvers' side (`--approvals ADDR`): list, show, approve, deny,
//!   each request with an approver's JWT (TLS too when configured, without
//!   client certificates).
//! - The web console (`--console ADDR`, with `--approvals`): sessions,
//!   the approval inbox and store integrity for signed-in approvers (TLS
//!   like the approvers' side).
//! - Prometheus metrics (`--metrics ADDR`): `GET /metrics`, read-only, no
//!   record content (counts, and caller and model names as labels).

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::ServerConfig;

use std::sync::atomic::{AtomicBool, Ordering};
use tracegate_proto::v1::Alert;

use crate::alerts::deliver;
use crate::alerts::eval::Evaluator;
use crate::alerts::WebhookConfig;
use crate::approvals::access::Access;
use crate::approvals::auth::{self, ApproverAuth};
use crate::approvals::service::{self, Service};
use crate::config::{ApproversConfig, ServeConfig};
use crate::console::{Console, Settings as ConsoleSettings};
use crate::ledger::writer::{Alerting, Ledger};
use crate::metrics::Metrics;
use crate::tls::{self, ClientAuth};
use crate::{commit, grpc};

pub struct Listen {
    pub grpc: SocketAddr,
    /// The approvers' HTTP address; `None`: no approval service.
    pub approvals: Option<SocketAddr>,
    /// POSTed to on every new pending approval.
    pub webhook: Option<String>,
    /// Where Prometheus scrapes `/metrics`; `None`: not served.
    pub metrics: Option<SocketAddr>,
    /// The web console's address; `None`: not served.
    pub console: Option<SocketAddr>,
    /// The seal key's public half (the console's verification).
    pub seal_public: Option<ed25519_dalek::VerifyingKey>,
}

pub fn serve(mut ledger: Ledger, listen: Listen, config: &ServeConfig, data: &Path) -> Result<()> {
    if listen.approvals.is_some() && config.approvers.is_none() {
        bail!(
            "--approvals needs a configuration file (--config) with an `approvers` section: \
             approvers authenticate with tokens from your OIDC issuer"
        );
    }
    if listen.console.is_some() {
        if config.console.is_none() {
            bail!(
                "--console needs a `console` section in --config (issuer, client_id, public_url): \
                 the console signs users in with your OIDC issuer"
            );
        }
        if listen.approvals.is_none() || config.approvers.is_none() {
            bail!(
                "--console needs --approvals and an `approvers` section in --config: the console's \
                 id_tokens are verified by the approvers' providers (the console's client_id must be \
                 among a provider's `audiences`), and its inbox decides through the approval service"
            );
        }
    }
    // TLS files are read before anything listens: a mistake stops here.
    let machine_tls = tls_config(config, ClientAuth::Required)?;
    let human_tls = tls_config(config, ClientAuth::None)?;
    let approvers = match (&config.approvers, listen.approvals) {
        (Some(a), Some(_)) => Some(approvers(a)?),
        _ => None,
    };
    let console_auth = match (&config.console, listen.console, &approvers) {
        (Some(c), Some(_), Some((_, auth))) => Some(
            crate::console::auth::ConsoleAuth::new(c.settings(), Some(auth.clone()))
                .context("the `console` section")?,
        ),
        _ => None,
    };
    let metrics = Arc::new(Metrics::new(&config.metrics));
    ledger.observe(metrics.clone());
    let held = ledger.len();
    let last_seq = ledger.last_seq();
    let events = std::mem::take(&mut ledger.approval_events);
    let alerts_in = setup_alerts(&mut ledger, config)?;
    let (store, writer) = commit::spawn(ledger)?;
    let stop_alerts = Arc::new(AtomicBool::new(false));
    let delivery = match alerts_in {
        Some((webhooks, recovered, incoming)) => {
            let marks = store.clone();
            Some(deliver::spawn(
                webhooks,
                metrics.clone(),
                recovered,
                incoming,
                move |m| marks.delivered_blocking(m).is_ok(),
                stop_alerts.clone(),
            )?)
        }
        None => None,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen.grpc)
            .await
            .with_context(|| format!("binding gRPC address {}", listen.grpc))?;
        let bound = listener.local_addr()?;
        let metrics_line = match listen.metrics {
            Some(addr) => format!(" metrics={}", start_metrics(addr, metrics.clone()).await?),
            None => String::new(),
        };
        let (routes, approvals_line) = match (listen.approvals, approvers) {
            (Some(addr), Some((access, auth))) => {
                let svc = Service::new(
                    store.clone(),
                    &events,
                    listen.webhook,
                    access,
                    auth.clone(),
                    metrics.clone(),
                );
                let url = start_approvals(addr, svc.clone(), auth, human_tls.clone()).await?;
                let mut line = format!(" approvals={url}");
                if let (Some(addr), Some(auth), Some(key)) =
                    (listen.console, console_auth, listen.seal_public)
                {
                    let console = Console::new(ConsoleSettings {
                        data: data.to_path_buf(),
                        approvals: svc.clone(),
                        auth,
                        seal_public: key,
                    });
                    let url = crate::console::serve(addr, console, human_tls).await?;
                    line.push_str(&format!(" console={url}"));
                }
                let routes = tonic::service::Routes::from(service::machine_router(svc));
                (routes, line)
            }
            _ => (tonic::service::Routes::default(), String::new()),
        };
        let routes = routes.add_service(grpc::service(store, metrics));
        let tls_word = if machine_tls.is_some() {
            "client-certificates"
        } else {
            "off"
        };
        // Tests and scripts wait for this line to learn the ports.
        println!(
            "tracegate: listening grpc={bound} tls={tls_word}{approvals_line}{metrics_line} data={} records={held} sequence={last_seq}",
            data.display()
        );
        serve_machines(listener, routes, machine_tls).await
    })?;
    // Dropping the runtime drops every service and with them the writer's
    // last handles: the writer drains its queue and closes.
    drop(runtime);
    // The delivery thread holds a handle to the writer: stop it first (what
    // it has not sent stays in the store for the next start).
    stop_alerts.store(true, Ordering::Relaxed);
    if let Some(d) = delivery {
        d.join()
            .map_err(|_| anyhow::anyhow!("the alert delivery thread panicked"))?;
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    println!("tracegate: stopped");
    Ok(())
}

/// Alert delivery's parts, if `alerts` is configured: the rules go to the
/// writer, the webhooks and the alerts left undelivered to the delivery
/// thread.
type AlertParts = (
    Vec<WebhookConfig>,
    Vec<(Arc<Alert>, String)>,
    std::sync::mpsc::Receiver<Alert>,
);

fn setup_alerts(ledger: &mut Ledger, config: &ServeConfig) -> Result<Option<AlertParts>> {
    let Some(alerts) = &config.alerts else {
        // Without rules, stored alerts are not sent (nor kept in memory).
        ledger.alerts = Vec::new();
        ledger.alerts_delivered = Default::default();
        return Ok(None);
    };
    let rules = alerts.rules().map_err(|e| anyhow::anyhow!(e))?;
    let held = std::mem::take(&mut ledger.alerts);
    let delivered = std::mem::take(&mut ledger.alerts_delivered);
    let seen = held.iter().map(|a| a.alert_id.clone()).collect::<Vec<_>>();
    let recovered = deliver::undelivered(held, &delivered);
    let (out, incoming) = std::sync::mpsc::channel();
    ledger.alert(Alerting {
        evaluator: Evaluator::new(rules, seen),
        out,
    });
    Ok(Some((alerts.webhooks.clone(), recovered, incoming)))
}

/// Who may decide what (`Access`) and how approvers' tokens are checked.
fn approvers(config: &ApproversConfig) -> Result<(Access, Arc<ApproverAuth>)> {
    let access = Access::new(config);
    let auth = Arc::new(ApproverAuth::new(config, &access.claims_read())?);
    Ok((access, auth))
}

/// The rustls configuration of one side, if `tls` is configured.
fn tls_config(config: &ServeConfig, auth: ClientAuth) -> Result<Option<Arc<ServerConfig>>> {
    config
        .tls
        .as_ref()
        .map(|t| tls::server_config(t, auth))
        .transpose()
}

/// Starts the approvers' side on `addr` (the expiry sweep and the token
/// keys' refresh with it); returns its URL.
async fn start_approvals(
    addr: SocketAddr,
    svc: Arc<Service>,
    auth: Arc<ApproverAuth>,
    tls: Option<Arc<ServerConfig>>,
) -> Result<String> {
    let http = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding approvals address {addr}"))?;
    let local = http.local_addr()?;
    tokio::spawn(service::sweep(svc.clone()));
    tokio::spawn(auth::refresh(auth));
    let app = service::human_router(svc);
    let Some(config) = tls else {
        tokio::spawn(async move {
            if let Err(e) = axum::serve(http, app).await {
                eprintln!("tracegate: approvals server stopped: {e}");
            }
        });
        return Ok(format!("http://{local}"));
    };
    let tls_listener = tls::Listener {
        connections: tls::accept(http, config, "approvals"),
        local,
    };
    tokio::spawn(async move {
        if let Err(e) = axum::serve(tls_listener, app).await {
            eprintln!("tracegate: approvals server stopped: {e}");
        }
    });
    Ok(format!("https://{local}"))
}

/// Serves `GET /metrics` on `addr`; returns its URL.
async fn start_metrics(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metrics address {addr}"))?;
    let local = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("tracegate: metrics server stopped: {e}");
        }
    });
    Ok(format!("http://{local}/metrics"))
}

/// Serves the machine side (gRPC ingest, and the filters' approval calls
/// in `routes`) until SIGTERM or Ctrl-C.
async fn serve_machines(
    listener: tokio::net::TcpListener,
    routes: tonic::service::Routes,
    tls: Option<Arc<ServerConfig>>,
) -> Result<()> {
    // HTTP/1.1 too: the approval calls may come over either. Accepted
    // sockets get TCP_NODELAY (tonic sets it only on sockets it accepts
    // itself): with Nagle, an answer's last small frames waited for the
    // peer's delayed ACK, up to 40 ms (a write-ahead request's p99).
    let server = tonic::transport::Server::builder().accept_http1(true);
    match tls {
        Some(config) => {
            let connections = tls::accept(listener, config, "grpc");
            use tokio_stream::StreamExt;
            let incoming = tokio_stream::wrappers::ReceiverStream::new(connections)
                .map(|(stream, _)| Ok::<_, std::io::Error>(stream));
            server
                .serve_with_incoming_shutdown(routes, incoming, shutdown_signal())
                .await?;
        }
        None => {
            use tokio_stream::StreamExt;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|tcp| {
                tcp.inspect(|t| {
                    let _ = t.set_nodelay(true);
                })
            });
            server
                .serve_with_incoming_shutdown(routes, incoming, shutdown_signal())
                .await?;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
