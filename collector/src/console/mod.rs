//! The web console (`tracegate serve --console ADDR`): server-rendered
//! pages for approvers and auditors, on a listener of their own (TLS with
//! the serve configuration's certificate when `tls` is configured).
//!
//! ```text
//! GET  /                  → /sessions
//! GET  /sessions          sessions, searchable (caller, since, until, verdict, detector, model)
//! GET  /sessions/{id}     one session as its conversation, 200 exchanges a page
//!                         (?caller=KEY: one caller's; from=N, limit=M)
//! GET  /sessions/{id}/records/{record}.json  one record as `replay --json` prints it
//! GET  /inbox             pending approvals
//! POST /inbox/{id}        decision=approve|deny, reason, csrf
//! GET  /integrity         last verification, HEAD, seals, retention entries
//! POST /integrity/verify  csrf; verifies now (read-only), back to /integrity
//! GET  /assets/console.css
//! /auth/*                 sign-in with the organisation's OIDC issuer (`auth`)
//! ```
//! Every page needs a signed-in user (`auth::User`) who is an approver
//! under the `approvers` rules; every POST carries the session's CSRF
//! token. Pages are plain HTML with every record text escaped, no script,
//! and `Content-Security-Policy: default-src 'self'`. The stylesheet is
//! compiled into the binary.

pub mod auth;
mod html;
pub mod inbox;
pub mod integrity;
pub mod sessions;

use anyhow::{Context, Result};
use axum::extract::{FromRef, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio_rustls::rustls::ServerConfig;

use self::auth::{csrf_ok, ConsoleAuth, User};
use self::html::Nav;
use self::integrity::Snapshot;
use crate::approvals::service::Service;
use crate::ledger::writer::now_nanos;
use crate::tls;

const CSS: &str = include_str!("console.css");

/// What the console serves from.
pub struct Settings {
    /// The data directory `serve` writes (read here like the CLI reads it).
    pub data: PathBuf,
    /// The approval service of this process.
    pub approvals: Arc<Service>,
    pub auth: ConsoleAuth,
    /// The seal key's public half, for verification.
    pub seal_public: VerifyingKey,
}

#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    last_verify: Mutex<Option<Arc<Snapshot>>>,
    /// One verification at a time.
    verifying: tokio::sync::Mutex<()>,
}

impl FromRef<Console> for ConsoleAuth {
    fn from_ref(c: &Console) -> ConsoleAuth {
        c.inner.settings.auth.clone()
    }
}

impl Console {
    pub fn new(settings: Settings) -> Console {
        Console {
            inner: Arc::new(Inner {
                settings,
                last_verify: Mutex::new(None),
                verifying: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The pages and the sign-in routes.
    pub fn router(&self) -> Router {
        let pages = Router::new()
            .route("/", get(|| async { Redirect::to("/sessions") }))
            .route("/assets/console.css", get(css))
            .route("/sessions", get(sessions_list))
            .route("/sessions/{id}", get(session))
            .route("/sessions/{id}/records/{file}", get(record_json))
            .route("/inbox", get(inbox))
            .route("/inbox/{id}", post(decide))
            .route("/integrity", get(integrity))
            .route("/integrity/verify", post(verify_now))
            .fallback(not_found)
            .with_state(self.clone());
        // The sign-in pages get the same headers as every other page.
        pages
            .merge(self.inner.settings.auth.router())
            .layer(axum::middleware::from_fn(security_headers))
    }

    /// Runs a verification now (one at a time) and keeps its result.
    pub async fn verify(&self) {
        let _one = self.inner.verifying.lock().await;
        let data = self.inner.settings.data.clone();
        let key = self.inner.settings.seal_public;
        let snap = tokio::task::spawn_blocking(move || integrity::run(&data, &key)).await;
        if let (Ok(snap), Ok(mut last)) = (snap, self.inner.last_verify.lock()) {
            *last = Some(Arc::new(snap));
        }
    }

    fn last_verify(&self) -> Option<Arc<Snapshot>> {
        self.inner.last_verify.lock().ok().and_then(|l| l.clone())
    }

    /// A 403 page for a signed-in user who approves nothing: the console
    /// shows records and approvals only to approvers.
    fn refuse_non_approver(&self, user: &User) -> Option<Response> {
        let svc = &self.inner.settings.approvals;
        if svc.is_approver(&user.caller) {
            return None;
        }
        let text = format!(
            "{} (iss {}) is not an approver: the console is for approvers ({}).",
            user.caller.approver.subject,
            user.caller.approver.issuer,
            svc.approvers_are()
        );
        Some(html::message(
            StatusCode::FORBIDDEN,
            "Not an approver",
            Nav::Sessions,
            user,
            &text,
        ))
    }
}

/// Serves the console on `addr` (a verification is started at once, so
/// /integrity has a result); returns its URL.
pub async fn serve(
    addr: SocketAddr,
    console: Console,
    tls_config: Option<Arc<ServerConfig>>,
) -> Result<String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding console address {addr}"))?;
    let local = listener.local_addr()?;
    let first = console.clone();
    tokio::spawn(async move { first.verify().await });
    let app = console.router();
    let Some(config) = tls_config else {
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("tracegate: console stopped: {e}");
            }
        });
        return Ok(format!("http://{local}"));
    };
    let tls_listener = tls::Listener {
        connections: tls::accept(listener, config, "console"),
        local,
    };
    tokio::spawn(async move {
        if let Err(e) = axum::serve(tls_listener, app).await {
            eprintln!("tracegate: console stopped: {e}");
        }
    });
    Ok(format!("https://{local}"))
}

/// On every page: no framing, no scripts or styles from elsewhere, no
/// referrer leaving with record ids in URLs, no MIME sniffing.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut r = next.run(request).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The sign-in pages set a stricter one (their URLs may hold a code).
    h.entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

async fn not_found(user: User) -> Response {
    html::message(
        StatusCode::NOT_FOUND,
        "Not found",
        Nav::Sessions,
        &user,
        "There is no such page.",
    )
}

fn internal(user: &User, nav: Nav, e: impl std::fmt::Display) -> Response {
    html::message(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Error",
        nav,
        user,
        &e.to_string(),
    )
}

async fn sessions_list(
    State(c): State<Console>,
    user: User,
    Query(q): Query<sessions::Search>,
) -> Response {
    if let Some(r) = c.refuse_non_approver(&user) {
        return r;
    }
    let data = c.inner.settings.data.clone();
    let u = user.clone();
    match tokio::task::spawn_blocking(move || sessions::sessions_page(&data, &q, &u)).await {
        Ok(Ok(body)) => html::page(StatusCode::OK, body),
        Ok(Err(e)) => internal(&user, Nav::Sessions, format!("{e:#}")),
        Err(e) => internal(&user, Nav::Sessions, e),
    }
}

async fn session(
    State(c): State<Console>,
    user: User,
    Path(id): Path<String>,
    Query(q): Query<sessions::SessionQuery>,
) -> Response {
    if let Some(r) = c.refuse_non_approver(&user) {
        return r;
    }
    let data = c.inner.settings.data.clone();
    let u = user.clone();
    let sid = id.clone();
    let page =
        tokio::task::spawn_blocking(move || sessions::session_page(&data, &sid, &q, &u)).await;
    match page {
        Ok(Ok(Some(body))) => html::page(StatusCode::OK, body),
        Ok(Ok(None)) => html::message(
            StatusCode::NOT_FOUND,
            "No such session",
            Nav::Sessions,
            &user,
            &format!("No exchanges are recorded for session {id}."),
        ),
        Ok(Err(e)) => internal(&user, Nav::Sessions, format!("{e:#}")),
        Err(e) => internal(&user, Nav::Sessions, e),
    }
}

/// One record's JSON (the session page links it rather than inlining
/// it), `application/json` and, as everything here, `nosniff`.
async fn record_json(
    State(c): State<Console>,
    user: User,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    if let Some(r) = c.refuse_non_approver(&user) {
        return r;
    }
    let Some(record) = file.strip_suffix(".json").map(str::to_string) else {
        return not_found(user).await;
    };
    let data = c.inner.settings.data.clone();
    let sid = id.clone();
    let json =
        tokio::task::spawn_blocking(move || sessions::record_json(&data, &sid, &record)).await;
    match json {
        Ok(Ok(Some(body))) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Ok(Ok(None)) => html::message(
            StatusCode::NOT_FOUND,
            "No such record",
            Nav::Sessions,
            &user,
            &format!("Session {id} holds no record {file}."),
        ),
        Ok(Err(e)) => internal(&user, Nav::Sessions, format!("{e:#}")),
        Err(e) => internal(&user, Nav::Sessions, e),
    }
}

#[derive(Deserialize)]
struct InboxQuery {
    /// The approval just decided (after the decision's redirect).
    #[serde(default)]
    decided: Option<String>,
}

async fn inbox(State(c): State<Console>, user: User, Query(q): Query<InboxQuery>) -> Response {
    if let Some(r) = c.refuse_non_approver(&user) {
        return r;
    }
    // Said only when the book agrees: a link cannot make the inbox claim a
    // decision its reader did not make.
    let approvals = &c.inner.settings.approvals;
    let done = match &q.decided {
        Some(id) => match approvals.decision_of(&user.caller, id).await {
            Some(true) => Some(format!("You approved {id}.")),
            Some(false) => Some(format!("You denied {id}.")),
            None => None,
        },
        None => None,
    };
    let flash = match &done {
        Some(t) => inbox::Flash::Done(t),
        None => inbox::Flash::None,
    };
    inbox_response(&c, &user, StatusCode::OK, flash).await
}

async fn inbox_response(
    c: &Console,
    user: &User,
    status: StatusCode,
    flash: inbox::Flash<'_>,
) -> Response {
    match c.inner.settings.approvals.pending().await {
        Ok(pending) => html::page(
            status,
            inbox::inbox_page(&pending, user, now_nanos(), flash),
        ),
        Err(e) => internal(user, Nav::Inbox, e.message),
    }
}

#[derive(Deserialize)]
struct DecisionForm {
    #[serde(default)]
    decision: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    csrf: String,
}

/// The approvers' decision path, as the approvers' API takes it.
async fn decide(
    State(c): State<Console>,
    user: User,
    Path(id): Path<String>,
    Form(f): Form<DecisionForm>,
) -> Response {
    if !csrf_ok(&user, &f.csrf) {
        return html::message(
            StatusCode::FORBIDDEN,
            "Refused",
            Nav::Inbox,
            &user,
            "The form's CSRF token is missing or wrong: reload the inbox and try again.",
        );
    }
    if let Some(r) = c.refuse_non_approver(&user) {
        return r;
    }
    let approve = match f.decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => {
            let text = "decision must be approve or deny";
            return inbox_response(
                &c,
                &user,
                StatusCode::BAD_REQUEST,
                inbox::Flash::Refused(text),
            )
            .await;
        }
    };
    let svc = c.inner.settings.approvals.clone();
    match svc.decide_as(&user.caller, &id, approve, &f.reason).await {
        Ok(_) => Redirect::to(&format!("/inbox?decided={}", html::url(&id))).into_response(),
        Err(e) => {
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
            let text = format!("Not recorded: {}", e.message);
            inbox_response(&c, &user, status, inbox::Flash::Refused(&text)).await
        }
    }
}

async fn integrity(State(c): State<Console>, user: User) -> Response {
    if let Some(r) = c.refuse_non_approver(&user) {
        return r;
    }
    let last = c.last_verify();
    html::page(
        StatusCode::OK,
        integrity::integrity_page(last.as_deref(), &user),
    )
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn verify_now(State(c): State<Console>, user: User, Form(f): Form<CsrfForm>) -> Response {
    if !csrf_ok(&user, &f.csrf) {
        return html::message(
            StatusCode::FORBIDDEN,
            "Refused",
            Nav::Integrity,
            &user,
            "The form's CSRF token is missing or wrong: reload the page and try again.",
        );
    }
    if let Some(r) = c.refuse_non_approver(&user) {
        return r;
    }
    c.verify().await;
    Redirect::to("/integrity").into_response()
}

#[cfg(test)]
mod tests;
