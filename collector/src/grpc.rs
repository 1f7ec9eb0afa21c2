//! The gRPC ingest service: filters export batches of records here.
//!
//! What is stored is evidence, so input is checked before the store sees it:
//! a message over the size limit or that is not an `ExportRequest` is
//! refused with a gRPC status (tonic's decoder: OUT_OF_RANGE, INTERNAL), and
//! a record that is not plausible (no id, absurd sizes or lengths) is
//! answered in `rejected` with the reason. Nothing refused is stored.

use tonic::{Request, Response, Status};
use tracegate_proto::v1::record_service_server::{RecordService, RecordServiceServer};
use tracegate_proto::v1::{Body, ExportRequest, ExportResponse, Record, RejectedRecord};

use crate::commit::Committer;
use crate::metrics::{CallResult, Metrics};
use std::sync::Arc;

/// Largest export message accepted; the filter's batches stay below it
/// (tracegate_policy::config::MAX_BATCH_BYTES).
pub const MAX_MESSAGE_BYTES: usize = 32 << 20;

/// Longest record id: the filter's are UUIDs (36 characters).
const MAX_ID: usize = 128;
/// Longest request id and session id (the filter's session ids are at most
/// 256 characters; without one the request id is the session).
const MAX_REQUEST_ID: usize = 1024;
const MAX_METHOD: usize = 64;
/// Envoy's default limit on all request headers together is 60 KiB.
const MAX_PATH: usize = 64 << 10;
const MAX_AUTHORITY: usize = 8 << 10;
const MAX_SHORT_TEXT: usize = 1 << 10;
/// A body larger than this (1 TiB) is not a body that passed a proxy.
const MAX_BODY_SIZE: u64 = 1 << 40;
/// An exchange longer than this (30 days) is not one.
const MAX_DURATION_MICROS: u64 = 30 * 86_400 * 1_000_000;
/// Entries of any map or list in a record.
const MAX_ENTRIES: usize = 1024;

pub struct Ingest {
    store: Committer,
    metrics: Arc<Metrics>,
}

pub fn service(store: Committer, metrics: Arc<Metrics>) -> RecordServiceServer<Ingest> {
    RecordServiceServer::new(Ingest { store, metrics }).max_decoding_message_size(MAX_MESSAGE_BYTES)
}

fn too_long(name: &str, text: &str, max: usize) -> Result<(), String> {
    if text.len() > max {
        return Err(format!("{name} is {} bytes, more than {max}", text.len()));
    }
    Ok(())
}

fn check_body(name: &str, body: Option<&Body>) -> Result<(), String> {
    let Some(b) = body else { return Ok(()) };
    if b.size > MAX_BODY_SIZE {
        return Err(format!("{name}.size {} is absurd (over 1 TiB)", b.size));
    }
    if b.truncated && (b.data.len() as u64) >= b.size {
        return Err(format!(
            "{name} is marked truncated but holds {} of {} bytes",
            b.data.len(),
            b.size
        ));
    }
    too_long(
        &format!("{name}.content_type"),
        &b.content_type,
        MAX_SHORT_TEXT,
    )
}

/// Why a record cannot be stored, if it cannot.
pub fn check_record(r: &Record) -> Result<(), String> {
    if r.record_id.is_empty() {
        return Err("record_id is empty".into());
    }
    too_long("record_id", &r.record_id, MAX_ID)?;
    if !r.record_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("record_id holds characters other than printable ASCII".into());
    }
    too_long("session_id", &r.session_id, MAX_REQUEST_ID)?;
    too_long("request_id", &r.request_id, MAX_REQUEST_ID)?;
    too_long("request_record_id", &r.request_record_id, MAX_ID)?;
    too_long("method", &r.method, MAX_METHOD)?;
    too_long("path", &r.path, MAX_PATH)?;
    too_long("authority", &r.authority, MAX_AUTHORITY)?;
    too_long("source", &r.source, MAX_SHORT_TEXT)?;
    if r.status > 999 {
        return Err(format!("status {} is not an HTTP status", r.status));
    }
    for (name, t) in [
        ("request_start_unix_nanos", r.request_start_unix_nanos),
        ("response_start_unix_nanos", r.response_start_unix_nanos),
        ("end_unix_nanos", r.end_unix_nanos),
    ] {
        if t < 0 {
            return Err(format!("{name} is negative"));
        }
    }
    if r.duration_micros > MAX_DURATION_MICROS {
        return Err(format!(
            "duration_micros {} is absurd (over 30 days)",
            r.duration_micros
        ));
    }
    check_body("request_body", r.request_body.as_ref())?;
    check_body("response_body", r.response_body.as_ref())?;
    if let Some(i) = &r.identity {
        if i.claims.len() > MAX_ENTRIES {
            return Err(format!("identity holds {} claims", i.claims.len()));
        }
    }
    if let Some(i) = &r.inspection {
        let n = i.request_findings.len() + i.response_findings.len() + i.rules.len();
        if n > MAX_ENTRIES {
            return Err(format!("inspection holds {n} entries"));
        }
    }
    if let Some(a) = &r.approval {
        if a.approvers.len() > MAX_ENTRIES {
            return Err(format!("approval holds {} approvers", a.approvers.len()));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl RecordService for Ingest {
    async fn export(
        &self,
        request: Request<ExportRequest>,
    ) -> Result<Response<ExportResponse>, Status> {
        let mut rejected = Vec::new();
        let records: Vec<Record> = request
            .into_inner()
            .records
            .into_iter()
            .filter(|r| match check_record(r) {
                Ok(()) => true,
                Err(reason) => {
                    rejected.push(RejectedRecord {
                        // A refused id is not echoed whole.
                        record_id: r.record_id.chars().take(MAX_ID).collect(),
                        reason,
                    });
                    false
                }
            })
            .collect();
        // Answered only once the records are durable.
        self.metrics.rejected(rejected.len() as u64);
        let appended = self.store.records(records).await.map_err(|e| {
            self.metrics.export_call(CallResult::unavailable);
            Status::unavailable(e.to_string())
        })?;
        self.metrics.export_call(CallResult::ok);
        rejected.extend(appended.rejected);
        Ok(Response::new(ExportResponse {
            accepted: appended.accepted,
            duplicates: appended.duplicates,
            rejected,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Record {
        Record {
            record_id: "0192d5f2-aaaa-7bbb-8ccc-0123456789ab".into(),
            session_id: "s".into(),
            method: "POST".into(),
            status: 200,
            request_body: Some(Body {
                data: b"abc".to_vec(),
                size: 3,
                ..Body::default()
            }),
            ..Record::default()
        }
    }

    #[test]
    fn implausible_records_are_named() {
        check_record(&good()).unwrap();
        let bad = |edit: fn(&mut Record)| {
            let mut r = good();
            edit(&mut r);
            check_record(&r).unwrap_err()
        };
        assert_eq!(bad(|r| r.record_id.clear()), "record_id is empty");
        assert!(bad(|r| r.record_id = "x".repeat(129)).contains("record_id is 129 bytes"));
        assert!(bad(|r| r.record_id = "a b".into()).contains("printable"));
        assert!(bad(|r| r.request_body.as_mut().unwrap().size = u64::MAX).contains("absurd"));
        assert!(bad(|r| r.request_body.as_mut().unwrap().truncated = true).contains("truncated"));
        assert!(bad(|r| r.duration_micros = u64::MAX).contains("absurd"));
        assert!(bad(|r| r.end_unix_nanos = -1).contains("negative"));
        assert!(bad(|r| r.status = 70000).contains("HTTP status"));
        assert!(bad(|r| r.path = "/".repeat(MAX_PATH + 1)).contains("path"));
    }
}
