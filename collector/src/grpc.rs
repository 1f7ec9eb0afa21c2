//! `tracegate serve`: the gRPC ingest endpoint in front of the store.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};
use tracegate_proto::v1::record_service_server::{RecordService, RecordServiceServer};
use tracegate_proto::v1::{ExportRequest, ExportResponse};

use crate::store::Store;

/// Largest export message accepted; the filter's batches stay below it
/// (tracegate_policy::config::MAX_BATCH_BYTES).
const MAX_MESSAGE_BYTES: usize = 32 << 20;

struct Ingest {
    store: Arc<Mutex<Store>>,
}

#[tonic::async_trait]
impl RecordService for Ingest {
    async fn export(
        &self,
        request: Request<ExportRequest>,
    ) -> Result<Response<ExportResponse>, Status> {
        let records = request.into_inner().records;
        let store = self.store.clone();
        // File writes and fdatasync block: keep them off the async workers.
        let appended = tokio::task::spawn_blocking(move || {
            let mut store = store
                .lock()
                .map_err(|_| Status::internal("store poisoned"))?;
            match store.append(records) {
                Ok(appended) => Ok::<_, Status>(appended),
                Err(e) => {
                    // A failed write or fdatasync may have lost data the kernel
                    // had accepted: acknowledge nothing more, and restart from
                    // what is on disk.
                    eprintln!("tracegate: store write failed, stopping: {e:#}");
                    std::process::exit(70);
                }
            }
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(ExportResponse {
            accepted: appended.accepted,
            duplicates: appended.duplicates,
            rejected: appended.rejected,
        }))
    }
}

pub fn serve(data: &Path, addr: SocketAddr) -> Result<()> {
    let store = Store::open(data)?;
    let held = store.len();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding gRPC address {addr}"))?;
        let bound = listener.local_addr()?;
        // Tests and scripts wait for this line to learn the port.
        println!(
            "tracegate: listening grpc={bound} data={} records={held}",
            data.display()
        );
        let service = RecordServiceServer::new(Ingest {
            store: Arc::new(Mutex::new(store)),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown_signal(),
            )
            .await?;
        println!("tracegate: stopped");
        Ok(())
    })
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
