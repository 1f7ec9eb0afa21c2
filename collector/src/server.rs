//! `tracegate serve`: the gRPC ingest endpoint and, optionally, the approval
//! service's HTTP API, both in front of the one writer thread.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::Path;

use crate::approvals::service::{self, Service};
use crate::ledger::writer::Ledger;
use crate::{commit, grpc};

pub struct Listen {
    pub grpc: SocketAddr,
    /// The approval service's HTTP address; `None`: not served.
    pub approvals: Option<SocketAddr>,
    /// POSTed to on every new pending approval.
    pub webhook: Option<String>,
}

pub fn serve(mut ledger: Ledger, listen: Listen, data: &Path) -> Result<()> {
    let held = ledger.len();
    let last_seq = ledger.last_seq();
    let events = std::mem::take(&mut ledger.approval_events);
    let (store, writer) = commit::spawn(ledger)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen.grpc)
            .await
            .with_context(|| format!("binding gRPC address {}", listen.grpc))?;
        let bound = listener.local_addr()?;
        let mut approvals_line = String::new();
        if let Some(addr) = listen.approvals {
            let http = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding approvals address {addr}"))?;
            approvals_line = format!(" approvals=http://{}", http.local_addr()?);
            let svc = Service::new(store.clone(), &events, listen.webhook.clone());
            tokio::spawn(service::sweep(svc.clone()));
            let app = service::router(svc);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(http, app).await {
                    eprintln!("tracegate: approvals server stopped: {e}");
                }
            });
        }
        // Tests and scripts wait for this line to learn the ports.
        println!(
            "tracegate: listening grpc={bound}{approvals_line} data={} records={held} sequence={last_seq}",
            data.display()
        );
        tonic::transport::Server::builder()
            .add_service(grpc::service(store))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown_signal(),
            )
            .await?;
        Ok::<_, anyhow::Error>(())
    })?;
    // Dropping the runtime drops every service and with them the writer's
    // last handles: the writer drains its queue and closes.
    drop(runtime);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    println!("tracegate: stopped");
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
