//! `tracegate serve`: the gRPC ingest endpoint in front of the ledger.
//!
//! Export calls hand their records to one writer thread over a channel. The
//! writer takes every call waiting at that moment and commits them together
//! (one write, one fdatasync), then answers each: group commit, so many
//! concurrent filters share the cost of a sync. A call is answered only once
//! its records are durable.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use tracegate_proto::v1::record_service_server::{RecordService, RecordServiceServer};
use tracegate_proto::v1::{ExportRequest, ExportResponse, Record};

use crate::ledger::writer::{Appended, Ledger};

/// Largest export message accepted; the filter's batches stay below it
/// (tracegate_policy::config::MAX_BATCH_BYTES).
const MAX_MESSAGE_BYTES: usize = 32 << 20;
/// Records committed together at most (bounds one write's size).
const MAX_GROUP_RECORDS: usize = 8192;
/// How often the idle writer rolls old segments and refreshes HEAD.
const TICK: Duration = Duration::from_millis(500);

struct Job {
    records: Vec<Record>,
    reply: oneshot::Sender<Appended>,
}

struct Ingest {
    jobs: mpsc::SyncSender<Job>,
}

#[tonic::async_trait]
impl RecordService for Ingest {
    async fn export(
        &self,
        request: Request<ExportRequest>,
    ) -> Result<Response<ExportResponse>, Status> {
        let records = request.into_inner().records;
        let (reply, answer) = oneshot::channel();
        let jobs = self.jobs.clone();
        // The queue is bounded: a full queue blocks, which must not stall an
        // async worker.
        tokio::task::spawn_blocking(move || jobs.send(Job { records, reply }))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|_| Status::unavailable("the store is shutting down"))?;
        let appended = answer
            .await
            .map_err(|_| Status::unavailable("the store stopped before this batch was durable"))?;
        Ok(Response::new(ExportResponse {
            accepted: appended.accepted,
            duplicates: appended.duplicates,
            rejected: appended.rejected,
        }))
    }
}

/// The writer thread: group commit until every sender is gone.
fn write_loop(mut ledger: Ledger, jobs: mpsc::Receiver<Job>) -> Result<()> {
    loop {
        let first = match jobs.recv_timeout(TICK) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                ledger.tick()?;
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut group = vec![first];
        let mut n = group[0].records.len();
        while n < MAX_GROUP_RECORDS {
            match jobs.try_recv() {
                Ok(job) => {
                    n += job.records.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let calls: Vec<Vec<Record>> = group
            .iter_mut()
            .map(|j| std::mem::take(&mut j.records))
            .collect();
        // An error here is a failed write or fdatasync: nothing of this group
        // is acknowledged, and the caller exits (see serve).
        let results = ledger.append(&calls)?;
        for (job, result) in group.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
    ledger.close()
}

pub fn serve(ledger: Ledger, addr: SocketAddr, data: &std::path::Path) -> Result<()> {
    let held = ledger.len();
    let last_seq = ledger.last_seq();
    let (jobs, queue) = mpsc::sync_channel::<Job>(1024);
    let writer = std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || {
            if let Err(e) = write_loop(ledger, queue) {
                // A failed write or fsync may have lost data the kernel had
                // accepted: acknowledge nothing more; restart recovers from
                // what is on disk.
                eprintln!("tracegate: store write failed, stopping: {e:#}");
                std::process::exit(70);
            }
        })?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding gRPC address {addr}"))?;
        let bound = listener.local_addr()?;
        // Tests and scripts wait for this line to learn the port.
        println!(
            "tracegate: listening grpc={bound} data={} records={held} sequence={last_seq}",
            data.display()
        );
        let service =
            RecordServiceServer::new(Ingest { jobs }).max_decoding_message_size(MAX_MESSAGE_BYTES);
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown_signal(),
            )
            .await?;
        Ok::<_, anyhow::Error>(())
    })?;
    drop(runtime);
    // The service (and its sender) is gone: the writer drains and closes.
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
