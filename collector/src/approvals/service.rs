//! The reference approval service's HTTP API, in two parts.
//!
//! The machine side, for filters (on the gRPC port, behind its client
//! certificates when TLS is configured):
//! ```text
//! POST /v1/approvals                 a filter asks (CreateRequest) → 201, the approval
//! GET  /v1/approvals/ID[?wait_ms=N]  one approval; waits up to N ms (≤ 60 s) while PENDING
//! POST /v1/approvals/ID/redeem       a filter spends a grant (RedeemRequest)
//! ```
//! The human side, for approvers (`serve --approvals ADDR`), every request
//! with an approver's token (`Authorization: Bearer`), checked before
//! anything else (401 without a valid one, 403 for a valid token of
//! someone who is not an approver):
//! ```text
//! GET  /v1/approvals[?state=PENDING] list, newest first
//! GET  /v1/approvals/ID              one approval
//! POST /v1/approvals/ID/approve      {"reason": "..."}
//! POST /v1/approvals/ID/deny         {"reason": "..."}
//! ```
//! The approver is the token's verified issuer and subject (and display
//! claim), never a name in the body. Errors are `{"error": "..."}` (401s
//! add `reason`) with 400, 401, 403, 404 or 409. Every change is durable in
//! the store before it is answered.

use axum::extract::{Extension, Path, Query, Request, State as AxumState};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};
use tracegate_policy::approval::{CreateRequest, RedeemRequest, State};
use tracegate_proto::v1::ApprovalEvent;

use super::access::Access;
use super::auth::{ApproverAuth, Caller};
use super::book::{ApiError, Approval, Book, Refused};
use crate::commit::Committer;
use crate::ledger::writer::now_nanos;
use crate::metrics::Metrics;

/// Longest long-poll.
const MAX_WAIT: Duration = Duration::from_secs(60);

pub struct Service {
    book: Mutex<Book>,
    changed: Notify,
    store: Committer,
    webhook: Option<String>,
    access: Access,
    auth: Arc<ApproverAuth>,
    metrics: Arc<Metrics>,
}

impl Service {
    /// The service over the events already in the store.
    pub fn new(
        store: Committer,
        events: &[ApprovalEvent],
        webhook: Option<String>,
        access: Access,
        auth: Arc<ApproverAuth>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let mut book = Book::default();
        for ev in events {
            book.apply(ev);
        }
        metrics.approvals_pending(book.pending());
        Arc::new(Service {
            book: Mutex::new(book),
            changed: Notify::new(),
            store,
            webhook,
            access,
            auth,
            metrics,
        })
    }

    /// Makes events durable, then applies them and wakes long-polls.
    async fn commit(&self, book: &mut Book, events: Vec<ApprovalEvent>) -> Result<(), ApiError> {
        self.store
            .events(events.clone())
            .await
            .map_err(|e| ApiError {
                status: 503,
                message: e.to_string(),
            })?;
        for ev in &events {
            let was_pending = book.get(&ev.approval_id).map(|a| a.state) == Some(State::Pending);
            book.apply(ev);
            if let Some(a) = book.get(&ev.approval_id) {
                let outcome = match a.state {
                    State::Approved => Some("approved"),
                    State::Denied => Some("denied"),
                    State::Expired => Some("expired"),
                    State::Pending => None,
                };
                if let (true, Some(outcome)) = (was_pending, outcome) {
                    let waited = ev.unix_nanos.saturating_sub(a.created_unix_nanos);
                    self.metrics.approval_decided(outcome, waited as f64 / 1e9);
                }
            }
        }
        self.metrics.approvals_pending(book.pending());
        self.changed.notify_waiters();
        Ok(())
    }

    /// Expires what is due (also run every second by `sweep`).
    async fn expire_due(&self, book: &mut Book) -> Result<(), ApiError> {
        let due = book.due_expiries(now_nanos());
        if due.is_empty() {
            return Ok(());
        }
        self.commit(book, due).await
    }
}

/// The approvers' view and decisions for other front ends in the same
/// process (the web console): the same book, checks and store as the
/// approvers' API.
impl Service {
    /// Whether a verified caller is an approver of anything (may list).
    pub fn is_approver(&self, caller: &Caller) -> bool {
        self.access.is_approver(&caller.claims)
    }

    /// Who is an approver, for a refusal.
    pub fn approvers_are(&self) -> String {
        self.access.who()
    }

    /// Pending approvals, newest first (what is due expired first).
    pub async fn pending(&self) -> Result<Vec<Approval>, ApiError> {
        let mut book = self.book.lock().await;
        self.expire_due(&mut book).await?;
        Ok(book
            .list()
            .into_iter()
            .filter(|a| a.state == State::Pending)
            .cloned()
            .collect())
    }

    /// What this approver decided on approval `id`, if they decided it
    /// (`Some(true)` approved): the console confirms a decision from the
    /// book, not from what a link says.
    pub async fn decision_of(&self, caller: &Caller, id: &str) -> Option<bool> {
        self.book.lock().await.decision_of(id, &caller.approver)
    }

    /// A verified approver's decision, exactly as `POST
    /// /v1/approvals/ID/approve|deny` makes it: the approver rules
    /// (`Access::may_decide`), no self-approval, the quorum, durable before
    /// it is answered.
    pub async fn decide_as(
        &self,
        caller: &Caller,
        id: &str,
        approve: bool,
        reason: &str,
    ) -> Result<Approval, ApiError> {
        let mut book = self.book.lock().await;
        self.expire_due(&mut book).await?;
        let Some(a) = book.get(id) else {
            return Err(ApiError {
                status: 404,
                message: format!("no approval {id}"),
            });
        };
        if let Err(why) = self.access.may_decide(&a.request, &caller.claims) {
            return Err(ApiError {
                status: 403,
                message: format!("{} may not decide {id}: {why}", caller.approver.display),
            });
        }
        let ev = book.decide(id, approve, &caller.approver, reason, now_nanos())?;
        self.commit(&mut book, vec![ev]).await?;
        book.get(id).cloned().ok_or_else(|| ApiError {
            status: 404,
            message: format!("no approval {id}"),
        })
    }
}

/// What filters call: create, wait, redeem. Serve it only where only
/// gateways reach (the gRPC port, with client certificates).
pub fn machine_router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/approvals", post(create))
        .route("/v1/approvals/{id}", get(show))
        .route("/v1/approvals/{id}/redeem", post(redeem))
        .with_state(service)
}

/// What approvers call: list, show, approve, deny; every request
/// authenticated first, whatever its path.
pub fn human_router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/approvals", get(list))
        .route("/v1/approvals/{id}", get(show_to_approver))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/deny", post(deny))
        // Unknown paths are authenticated too (the layer covers the fallback).
        .fallback(|| async {
            ApiError {
                status: 404,
                message: "no such endpoint".into(),
            }
        })
        .layer(axum::middleware::from_fn_with_state(
            service.clone(),
            authenticate,
        ))
        .with_state(service)
}

/// 401 without a valid approver token, 403 for a token of someone who
/// approves nothing; before any approval is looked up.
async fn authenticate(
    AxumState(s): AxumState<Arc<Service>>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = match s.auth.verify(request.headers().clone()).await {
        Ok(caller) => caller,
        Err(r) => {
            let body = json!({
                "error": format!("an approver's token is required: {}", r.detail),
                "reason": r.reason.as_str(),
            });
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, r.www_authenticate())],
                Json(body),
            )
                .into_response();
        }
    };
    if !s.access.is_approver(&caller.claims) {
        return ApiError {
            status: 403,
            message: format!(
                "{} (iss {}) is not an approver: approvers have {}",
                caller.approver.subject,
                caller.approver.issuer,
                s.access.who()
            ),
        }
        .into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Expires pending approvals on time, so a decision can never land after
/// the filter gave up waiting.
pub async fn sweep(service: Arc<Service>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let mut book = service.book.lock().await;
        if let Err(e) = service.expire_due(&mut book).await {
            eprintln!(
                "tracegate: approvals: cannot record expiries: {}",
                e.message
            );
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(json!({"error": self.message}))).into_response()
    }
}

fn bad_json(e: impl std::fmt::Display) -> ApiError {
    ApiError {
        status: 400,
        message: format!("malformed request: {e}"),
    }
}

fn new_id() -> String {
    let mut b = [0u8; 12];
    if getrandom::fill(&mut b).is_err() {
        b[..8].copy_from_slice(&now_nanos().to_le_bytes());
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("apr_{hex}")
}

async fn create(
    AxumState(s): AxumState<Arc<Service>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: CreateRequest = serde_json::from_slice(&body).map_err(bad_json)?;
    let quorum = s.access.approvals_required(&req);
    let mut book = s.book.lock().await;
    let id = new_id();
    let ev = book.create(&id, &req, quorum, now_nanos())?;
    s.commit(&mut book, vec![ev]).await?;
    let approval = book
        .get(&id)
        .map(|a| serde_json::to_value(a).unwrap_or_default());
    drop(book);
    if let (Some(url), Some(a)) = (&s.webhook, &approval) {
        notify_webhook(url.clone(), a.clone());
    }
    Ok((StatusCode::CREATED, Json(approval)).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
}

async fn list(
    AxumState(s): AxumState<Arc<Service>>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let mut book = s.book.lock().await;
    s.expire_due(&mut book).await?;
    let all: Vec<_> = book
        .list()
        .into_iter()
        .filter(|a| {
            q.state
                .as_deref()
                .is_none_or(|st| st.eq_ignore_ascii_case(a.state.as_str()))
        })
        .collect();
    Ok(Json(json!({"approvals": all})).into_response())
}

#[derive(Deserialize)]
struct ShowQuery {
    wait_ms: Option<u64>,
}

/// The approver's view: no long-poll.
async fn show_to_approver(
    state: AxumState<Arc<Service>>,
    id: Path<String>,
) -> Result<Response, ApiError> {
    show(state, id, Query(ShowQuery { wait_ms: None })).await
}

async fn show(
    AxumState(s): AxumState<Arc<Service>>,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Result<Response, ApiError> {
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Registered before looking, so a change in between is not missed.
        let changed = s.changed.notified();
        let mut book = s.book.lock().await;
        s.expire_due(&mut book).await?;
        let Some(a) = book.get(&id) else {
            return Err(ApiError {
                status: 404,
                message: format!("no approval {id}"),
            });
        };
        let now = tokio::time::Instant::now();
        if a.state != State::Pending || now >= deadline {
            return Ok(Json(a).into_response());
        }
        // Wake for a change, the deadline, or this approval's expiry.
        let until_expiry = Duration::from_nanos(
            u64::try_from(a.expires_unix_nanos.saturating_sub(now_nanos())).unwrap_or(0),
        );
        let wake = deadline.min(now + until_expiry);
        drop(book);
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// `{"reason": "..."}`. Who decides is the token's verified identity; a
/// body naming an approver is refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    reason: String,
}

async fn decide(
    s: Arc<Service>,
    caller: Caller,
    id: String,
    body: &[u8],
    approve: bool,
) -> Result<Response, ApiError> {
    let d: Decision = serde_json::from_slice(body).map_err(|e| {
        if e.to_string().contains("unknown field `approver`") {
            ApiError {
                status: 400,
                message: "the approver is the token's verified identity; remove `approver`".into(),
            }
        } else {
            bad_json(e)
        }
    })?;
    let decided = s.decide_as(&caller, &id, approve, &d.reason).await?;
    Ok(Json(decided).into_response())
}

async fn approve(
    AxumState(s): AxumState<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    decide(s, caller, id, &body, true).await
}

async fn deny(
    AxumState(s): AxumState<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    decide(s, caller, id, &body, false).await
}

async fn redeem(
    AxumState(s): AxumState<Arc<Service>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: RedeemRequest = serde_json::from_slice(&body).map_err(bad_json)?;
    let mut book = s.book.lock().await;
    s.expire_due(&mut book).await?;
    match book.redeem(&id, &req, now_nanos()) {
        Ok(ev) => {
            s.commit(&mut book, vec![ev]).await?;
            Ok(Json(book.get(&id)).into_response())
        }
        Err(refused) => {
            let Refused { error, event } = *refused;
            if let Some(ev) = event {
                s.commit(&mut book, vec![ev]).await?;
            }
            Err(error)
        }
    }
}

/// Tells a webhook about a new pending approval; best effort, off the
/// request path.
fn notify_webhook(url: String, approval: serde_json::Value) {
    std::thread::spawn(move || {
        let body = json!({"event": "approval.pending", "approval": approval});
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        if let Err(e) = agent.post(&url).send_json(&body) {
            eprintln!("tracegate: approvals: webhook {url} failed: {e}");
        }
    });
}
