//! The gRPC ingest service: filters export batches of records here.

use tonic::{Request, Response, Status};
use tracegate_proto::v1::record_service_server::{RecordService, RecordServiceServer};
use tracegate_proto::v1::{ExportRequest, ExportResponse};

use crate::commit::Committer;

/// Largest export message accepted; the filter's batches stay below it
/// (tracegate_policy::config::MAX_BATCH_BYTES).
const MAX_MESSAGE_BYTES: usize = 32 << 20;

pub struct Ingest {
    store: Committer,
}

pub fn service(store: Committer) -> RecordServiceServer<Ingest> {
    RecordServiceServer::new(Ingest { store }).max_decoding_message_size(MAX_MESSAGE_BYTES)
}

#[tonic::async_trait]
impl RecordService for Ingest {
    async fn export(
        &self,
        request: Request<ExportRequest>,
    ) -> Result<Response<ExportResponse>, Status> {
        let records = request.into_inner().records;
        // Answered only once the records are durable.
        let appended = self
            .store
            .records(records)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(ExportResponse {
            accepted: appended.accepted,
            duplicates: appended.duplicates,
            rejected: appended.rejected,
        }))
    }
}
