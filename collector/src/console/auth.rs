//! The console's sign-in: OpenID Connect authorization code flow with PKCE
//! (S256), `state` bound to a short-lived pre-login cookie and `nonce` bound
//! to the id_token, against the organisation's issuer (discovered from
//! `{issuer}/.well-known/openid-configuration`).
//!
//! The id_token is verified by the approvers' providers
//! (`approvals::auth::ApproverAuth`: signature by the issuer's JWKS, `iss`,
//! `aud`, `exp`), so the signed-in user is the same `Caller` the approval API
//! would see for that token and the approver rules apply unchanged; this
//! module adds the checks only a relying party can make: the `nonce` it sent,
//! `aud`/`azp` naming its own client_id, the issuer it was configured with.
//!
//! Sessions are kept server-side (the cookie holds a random 256-bit id, the
//! store its SHA-256), expire with the id_token (at most `MAX_SESSION`), and
//! each has a CSRF token that every state-changing form carries.

use anyhow::{anyhow, bail, Result};
use axum::extract::{FromRef, FromRequestParts, Query, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::html::{esc, url};
use crate::approvals::auth::{ApproverAuth, Caller};

/// The session cookie (a random id; the session itself stays on the server).
pub const SESSION_COOKIE: &str = "tracegate_console";
/// Holds the `state` of a sign-in under way, only for the callback path.
pub const LOGIN_COOKIE: &str = "tracegate_console_login";
/// A session ends with its id_token, and after this at the latest.
const MAX_SESSION: Duration = Duration::from_secs(8 * 3600);
/// A sign-in must come back from the issuer within this.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Bounds on what unauthenticated or signed-in browsers can make us keep.
const MAX_PENDING: usize = 1024;
const MAX_SESSIONS: usize = 10_000;
/// The discovery document is fetched again after this.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// Limits on the issuer's answers.
const MAX_ISSUER_ANSWER: u64 = 256 * 1024;
const ISSUER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `next` path kept through a sign-in.
const MAX_NEXT: usize = 2048;

/// The `console` section of the serve configuration.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// https://…, or http:// only for loopback hosts (tests).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// The console's origin as the browser sees it (scheme://host[:port]):
    /// redirect_uri = {public_url}/auth/callback; cookies Secure iff https.
    pub public_url: String,
    /// Default ["openid", "profile", "email"]; "openid" is required.
    pub scopes: Vec<String>,
}

impl OidcSettings {
    pub fn default_scopes() -> Vec<String> {
        ["openid", "profile", "email"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

/// The signed-in user (an axum extractor; see the `FromRequestParts` impl).
#[derive(Clone, Debug)]
pub struct User {
    pub subject: String,
    /// email or name, for the page header.
    pub display: String,
    /// The same `Caller` the approval API builds for this id_token.
    pub caller: Caller,
    /// Per-session token; forms carry it in field `csrf`.
    pub csrf: String,
}

/// Constant-time comparison of a form's `csrf` field with the session's.
pub fn csrf_ok(user: &User, token: &str) -> bool {
    !user.csrf.is_empty() && ct_eq(user.csrf.as_bytes(), token.as_bytes())
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Clone)]
pub struct ConsoleAuth {
    inner: Arc<Inner>,
}

struct Inner {
    settings: OidcSettings,
    redirect_uri: String,
    secure: bool,
    approvers: Option<Arc<ApproverAuth>>,
    agent: ureq::Agent,
    discovery: tokio::sync::Mutex<Option<(Discovery, std::time::Instant)>>,
    pending: Mutex<HashMap<String, Pending>>,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
}

#[derive(Debug, Clone)]
struct Discovery {
    authorization_endpoint: String,
    token_endpoint: String,
    token_auth_methods: Vec<String>,
}

struct Pending {
    verifier: String,
    nonce: String,
    next: String,
    expires: std::time::Instant,
}

struct Session {
    user: User,
    /// Unix seconds.
    expires: u64,
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 32 random bytes, base64url.
fn random_token() -> Result<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| anyhow!("no randomness: {e}"))?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

/// RFC 7636 S256: BASE64URL(SHA256(ASCII(code_verifier))).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn session_key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// http:// is allowed only for loopback hosts (tests, a local issuer).
fn check_url(field: &str, url: &str) -> Result<()> {
    let rest = if let Some(r) = url.strip_prefix("https://") {
        r
    } else if let Some(r) = url.strip_prefix("http://") {
        let host = r.split(['/', '?', '#']).next().unwrap_or("");
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let name = if host.starts_with('[') {
            host.split(']').next().unwrap_or("").trim_start_matches('[')
        } else {
            host.split(':').next().unwrap_or("")
        };
        let loopback = name == "localhost"
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            bail!("field `{field}`: http:// is allowed only for loopback hosts; use https://");
        }
        r
    } else {
        bail!("field `{field}`: must be an https:// URL, got {url:?}");
    };
    if rest.is_empty() || rest.starts_with('/') {
        bail!("field `{field}`: has no host: {url:?}");
    }
    Ok(())
}

/// A relative path on this site to return to after sign-in, or None (an
/// absolute or protocol-relative URL would be an open redirect).
pub fn safe_next(next: &str) -> Option<String> {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && next.len() <= MAX_NEXT
        && !next.chars().any(|c| c.is_control() || c == ' ');
    ok.then(|| next.to_string())
}

/// A page of the sign-in flow (no data of the store is ever on it).
fn page(status: StatusCode, title: &str, text: &str, link: bool) -> Response {
    let link = if link {
        r#"<p><a href="/auth/login">Sign in</a></p>"#
    } else {
        ""
    };
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>tracegate — {t}</title></head><body><main><h1>{t}</h1><p>{x}</p>{link}</main>\
         </body></html>",
        t = esc(title),
        x = esc(text),
    );
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    no_store(h);
    r
}

/// Sign-in pages are never cached, and never send their URL (which may
/// hold a code) on; the console's own layer adds the rest of its headers.
fn no_store(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn redirect(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    no_store(r.headers_mut());
    r
}

/// The values of a cookie in the request (a browser may send several).
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// The claims of a verified id_token that only the relying party can check.
pub(crate) fn check_id_token_claims(
    payload: &Value,
    issuer: &str,
    client_id: &str,
    nonce: &str,
    now: u64,
) -> Result<u64, String> {
    if payload.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err("the id_token is not from the configured issuer".into());
    }
    let aud: Vec<&str> = match payload.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !aud.contains(&client_id) {
        return Err("the id_token is not meant for this console (aud)".into());
    }
    if let Some(azp) = payload.get("azp") {
        if azp.as_str() != Some(client_id) {
            return Err("the id_token was issued to another client (azp)".into());
        }
    } else if aud.len() > 1 {
        return Err("the id_token names several audiences and no azp".into());
    }
    let got = payload.get("nonce").and_then(Value::as_str).unwrap_or("");
    if !ct_eq(got.as_bytes(), nonce.as_bytes()) {
        return Err("the id_token's nonce does not match this sign-in".into());
    }
    let exp = payload.get("exp").and_then(Value::as_u64).unwrap_or(0);
    if exp <= now {
        return Err("the id_token has expired".into());
    }
    Ok(exp)
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    /// RFC 9207: the issuer that answered (a mix-up defence when present).
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

impl ConsoleAuth {
    pub fn new(settings: OidcSettings, approvers: Option<Arc<ApproverAuth>>) -> Result<Self> {
        let mut settings = settings;
        check_url("console.issuer", &settings.issuer)?;
        check_url("console.public_url", &settings.public_url)?;
        let public = settings.public_url.trim_end_matches('/').to_string();
        let after_scheme = public.split_once("://").map_or("", |(_, r)| r);
        if after_scheme.contains(['/', '?', '#']) {
            bail!(
                "field `console.public_url`: must be the console's origin \
                 (scheme://host[:port]) without a path, got {:?}",
                settings.public_url
            );
        }
        if settings.client_id.trim().is_empty() {
            bail!("field `console.client_id`: must not be empty");
        }
        if settings.client_secret.as_deref() == Some("") {
            settings.client_secret = None;
        }
        if settings.scopes.is_empty() {
            settings.scopes = OidcSettings::default_scopes();
        }
        if !settings.scopes.iter().any(|s| s == "openid") {
            bail!("field `console.scopes`: must include \"openid\"");
        }
        if let Some(bad) = settings
            .scopes
            .iter()
            .find(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            bail!("field `console.scopes`: {bad:?} is not a scope");
        }
        let secure = public.starts_with("https://");
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(ISSUER_TIMEOUT))
            .build()
            .into();
        Ok(ConsoleAuth {
            inner: Arc::new(Inner {
                redirect_uri: format!("{public}/auth/callback"),
                settings: OidcSettings {
                    public_url: public,
                    ..settings
                },
                secure,
                approvers,
                agent,
                discovery: tokio::sync::Mutex::new(None),
                pending: Mutex::new(HashMap::new()),
                sessions: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// GET /auth/login?next=/path, GET /auth/callback, POST /auth/logout
    /// (CSRF-checked), GET /auth/signed-out.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/auth/login", get(login))
            .route("/auth/callback", get(callback))
            .route("/auth/logout", post(logout))
            .route("/auth/signed-out", get(signed_out))
            .with_state(self.clone())
    }

    /// Sessions currently held.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.lock().map_or(0, |s| s.len())
    }

    fn cookie_attrs(&self, path: &str, max_age: u64) -> String {
        let secure = if self.inner.secure { "; Secure" } else { "" };
        format!("Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}")
    }

    /// The pre-login cookie has served once the callback is answered.
    fn clear_login_cookie(&self, r: &mut Response) {
        let clear = format!(
            "{LOGIN_COOKIE}=; {}",
            self.cookie_attrs("/auth/callback", 0)
        );
        if let Ok(v) = HeaderValue::from_str(&clear) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }

    /// The Set-Cookie value of a new session.
    fn session_cookie(&self, id: &str, max_age: u64) -> String {
        format!("{SESSION_COOKIE}={id}; {}", self.cookie_attrs("/", max_age))
    }

    fn user_for(&self, headers: &HeaderMap) -> Option<User> {
        let now = now_s();
        let mut sessions = self.inner.sessions.lock().ok()?;
        for id in cookies(headers, SESSION_COOKIE) {
            let key = session_key(id);
            match sessions.get(&key) {
                Some(s) if s.expires > now => return Some(s.user.clone()),
                Some(_) => {
                    sessions.remove(&key);
                }
                None => {}
            }
        }
        None
    }

    /// Keeps a new session (evicting expired ones, then the soonest to
    /// expire, past the bound); returns its cookie value.
    fn insert_session(&self, user: User, expires: u64) -> Result<String> {
        let id = random_token()?;
        let mut sessions = self
            .inner
            .sessions
            .lock()
            .map_err(|_| anyhow!("session store unavailable"))?;
        let now = now_s();
        sessions.retain(|_, s| s.expires > now);
        while sessions.len() >= MAX_SESSIONS {
            let Some(k) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k)
            else {
                break;
            };
            sessions.remove(&k);
        }
        sessions.insert(session_key(&id), Session { user, expires });
        Ok(id)
    }

    fn remove_sessions(&self, headers: &HeaderMap) {
        if let Ok(mut sessions) = self.inner.sessions.lock() {
            for id in cookies(headers, SESSION_COOKIE) {
                sessions.remove(&session_key(id));
            }
        }
    }

    /// A signed-in session for `caller` without an issuer (unit tests of
    /// the pages): the cookie header value and the user.
    #[cfg(test)]
    pub fn sign_in_for_tests(&self, caller: Caller) -> (String, User) {
        let user = User {
            subject: caller.approver.subject.clone(),
            display: caller.approver.display.clone(),
            caller,
            csrf: random_token().unwrap_or_default(),
        };
        let id = self
            .insert_session(user.clone(), now_s() + 3600)
            .unwrap_or_default();
        (format!("{SESSION_COOKIE}={id}"), user)
    }

    async fn discovery(&self) -> Result<Discovery, String> {
        let mut cached = self.inner.discovery.lock().await;
        if let Some((d, at)) = cached.as_ref() {
            if at.elapsed() < DISCOVERY_TTL {
                return Ok(d.clone());
            }
        }
        let this = self.clone();
        let d = tokio::task::spawn_blocking(move || this.fetch_discovery())
            .await
            .map_err(|e| format!("discovery failed: {e}"))??;
        *cached = Some((d.clone(), std::time::Instant::now()));
        Ok(d)
    }

    fn fetch_discovery(&self) -> Result<Discovery, String> {
        let issuer = &self.inner.settings.issuer;
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let doc = self.get_json(&url)?;
        if doc.get("issuer").and_then(Value::as_str) != Some(issuer.as_str()) {
            return Err(format!(
                "{url} names another issuer than `console.issuer` {issuer:?}"
            ));
        }
        let endpoint = |name: &str| -> Result<String, String> {
            let e = doc
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{url} has no {name}"))?;
            check_url(name, e).map_err(|e| format!("{url}: {e}"))?;
            Ok(e.to_string())
        };
        if let Some(methods) = doc
            .get("code_challenge_methods_supported")
            .and_then(Value::as_array)
        {
            if !methods.iter().any(|m| m.as_str() == Some("S256")) {
                return Err(format!("{url}: the issuer does not support PKCE S256"));
            }
        }
        let token_auth_methods = doc
            .get("token_endpoint_auth_methods_supported")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_else(|| vec!["client_secret_basic".to_string()]);
        Ok(Discovery {
            authorization_endpoint: endpoint("authorization_endpoint")?,
            token_endpoint: endpoint("token_endpoint")?,
            token_auth_methods,
        })
    }

    fn get_json(&self, url: &str) -> Result<Value, String> {
        let mut r = self
            .inner
            .agent
            .get(url)
            .header("accept", "application/json")
            .call()
            .map_err(|e| format!("{url}: {e}"))?;
        if r.status() != 200 {
            return Err(format!("{url} answered HTTP {}", r.status()));
        }
        let body = r
            .body_mut()
            .with_config()
            .limit(MAX_ISSUER_ANSWER)
            .read_to_vec()
            .map_err(|e| format!("{url}: {e}"))?;
        serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))
    }

    /// Exchanges the code for tokens; returns the id_token.
    fn exchange(&self, d: &Discovery, code: &str, verifier: &str) -> Result<String, String> {
        let s = &self.inner.settings;
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &self.inner.redirect_uri),
            ("code_verifier", verifier),
        ];
        let mut request = self
            .inner
            .agent
            .post(&d.token_endpoint)
            .header("accept", "application/json");
        match s.client_secret.as_deref() {
            Some(secret)
                if d.token_auth_methods
                    .iter()
                    .any(|m| m == "client_secret_basic") =>
            {
                // RFC 6749 2.3.1: both parts form-encoded before base64.
                let basic = STANDARD.encode(format!("{}:{}", url(&s.client_id), url(secret)));
                request = request.header("authorization", &format!("Basic {basic}"));
            }
            Some(secret) => {
                form.push(("client_id", &s.client_id));
                form.push(("client_secret", secret));
            }
            None => form.push(("client_id", &s.client_id)),
        }
        let url = &d.token_endpoint;
        let mut r = request.send_form(form).map_err(|e| format!("{url}: {e}"))?;
        let status = r.status();
        let body = r
            .body_mut()
            .with_config()
            .limit(MAX_ISSUER_ANSWER)
            .read_to_vec()
            .map_err(|e| format!("{url}: {e}"))?;
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status != 200 {
            let err = json.get("error").and_then(Value::as_str).unwrap_or("");
            return Err(format!("{url} answered HTTP {status} {err}"));
        }
        json.get("id_token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("{url} gave no id_token"))
    }

    /// Takes the sign-in that `state` names, if the browser holds its
    /// pre-login cookie and it has not expired.
    fn take_pending(&self, state: &str, headers: &HeaderMap) -> Result<Pending, &'static str> {
        let bound = cookies(headers, LOGIN_COOKIE).any(|c| ct_eq(c.as_bytes(), state.as_bytes()));
        if state.is_empty() || !bound {
            return Err("this sign-in was not started in this browser (state mismatch)");
        }
        let mut pending = self
            .inner
            .pending
            .lock()
            .map_err(|_| "sign-in store unavailable")?;
        let p = pending
            .remove(state)
            .ok_or("this sign-in is unknown or already used")?;
        if p.expires <= std::time::Instant::now() {
            return Err("this sign-in took too long; sign in again");
        }
        Ok(p)
    }

    fn add_pending(&self, state: String, p: Pending) -> Result<(), &'static str> {
        let mut pending = self
            .inner
            .pending
            .lock()
            .map_err(|_| "sign-in store unavailable")?;
        let now = std::time::Instant::now();
        pending.retain(|_, p| p.expires > now);
        while pending.len() >= MAX_PENDING {
            let Some(k) = pending
                .iter()
                .min_by_key(|(_, p)| p.expires)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            pending.remove(&k);
        }
        pending.insert(state, p);
        Ok(())
    }

    /// Verifies the id_token (the approvers' providers, then the relying
    /// party's own claims) and builds the user.
    async fn verify_id_token(&self, id_token: &str, nonce: &str) -> Result<(User, u64), String> {
        let approvers = self.inner.approvers.clone().ok_or(
            "the console has no approvers configuration to verify sign-ins with".to_string(),
        )?;
        let mut headers = HeaderMap::new();
        let bearer = HeaderValue::from_str(&format!("Bearer {id_token}"))
            .map_err(|_| "the id_token is malformed".to_string())?;
        headers.insert(header::AUTHORIZATION, bearer);
        let caller = approvers.verify(headers).await.map_err(|r| {
            format!(
                "the id_token was refused by the approvers' providers \
                 (the issuer must be a provider with the console's client_id \
                 among its audiences, reading the `authorization` header): {}",
                r.detail
            )
        })?;
        // Verified above: these are the signed bytes.
        let payload = id_token
            .split('.')
            .nth(1)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .ok_or("the id_token is malformed")?;
        let s = &self.inner.settings;
        let exp = check_id_token_claims(&payload, &s.issuer, &s.client_id, nonce, now_s())?;
        if caller.approver.issuer != s.issuer {
            return Err("the id_token is not from the configured issuer".into());
        }
        let user = User {
            subject: caller.approver.subject.clone(),
            display: caller.approver.display.clone(),
            caller,
            csrf: random_token().map_err(|e| e.to_string())?,
        };
        Ok((user, exp))
    }
}

async fn login(State(auth): State<ConsoleAuth>, Query(q): Query<LoginQuery>) -> Response {
    let next = q
        .next
        .as_deref()
        .and_then(safe_next)
        .unwrap_or_else(|| "/".to_string());
    let d = match auth.discovery().await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tracegate: console: sign-in: {e}");
            return page(
                StatusCode::BAD_GATEWAY,
                "Sign-in unavailable",
                "The identity provider could not be reached. Try again later.",
                false,
            );
        }
    };
    let (Ok(state), Ok(nonce), Ok(verifier)) = (random_token(), random_token(), random_token())
    else {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Sign-in unavailable",
            "No randomness.",
            false,
        );
    };
    let challenge = pkce_challenge(&verifier);
    let s = &auth.inner.settings;
    let url = format!(
        "{ep}{sep}response_type=code&client_id={cid}&redirect_uri={ru}&scope={sc}\
         &state={st}&nonce={no}&code_challenge={ch}&code_challenge_method=S256",
        ep = d.authorization_endpoint,
        sep = if d.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        },
        cid = url(&s.client_id),
        ru = url(&auth.inner.redirect_uri),
        sc = url(&s.scopes.join(" ")),
        st = url(&state),
        no = url(&nonce),
        ch = url(&challenge),
    );
    let pending = Pending {
        verifier,
        nonce,
        next,
        expires: std::time::Instant::now() + LOGIN_TTL,
    };
    if let Err(e) = auth.add_pending(state.clone(), pending) {
        return page(StatusCode::INTERNAL_SERVER_ERROR, "Sign-in failed", e, true);
    }
    let mut r = redirect(&url);
    let cookie = format!(
        "{LOGIN_COOKIE}={state}; {}",
        auth.cookie_attrs("/auth/callback", LOGIN_TTL.as_secs())
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn callback(
    State(auth): State<ConsoleAuth>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let refused = |text: &str| {
        let mut r = page(StatusCode::BAD_REQUEST, "Sign-in refused", text, true);
        auth.clear_login_cookie(&mut r);
        r
    };
    let pending = match auth.take_pending(q.state.as_deref().unwrap_or(""), &headers) {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    if q.iss
        .as_deref()
        .is_some_and(|i| i != auth.inner.settings.issuer)
    {
        return refused("The answer names another issuer than the one this sign-in went to.");
    }
    if let Some(error) = q.error {
        let more = q.error_description.unwrap_or_default();
        return refused(&format!("The identity provider refused: {error} {more}"));
    }
    let Some(code) = q.code.filter(|c| !c.is_empty()) else {
        return refused("The identity provider sent no code.");
    };
    let d = match auth.discovery().await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tracegate: console: sign-in: {e}");
            return refused("The identity provider could not be reached.");
        }
    };
    let this = auth.clone();
    let verifier = pending.verifier.clone();
    let exchanged = tokio::task::spawn_blocking(move || this.exchange(&d, &code, &verifier))
        .await
        .unwrap_or_else(|e| Err(format!("token exchange failed: {e}")));
    let id_token = match exchanged {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tracegate: console: sign-in: {e}");
            return refused("The code could not be exchanged for tokens.");
        }
    };
    let (user, exp) = match auth.verify_id_token(&id_token, &pending.nonce).await {
        Ok(v) => v,
        Err(e) => {
            // Why goes to the log, not to the browser (it may name the
            // provider's configuration).
            eprintln!("tracegate: console: sign-in refused: {e}");
            return refused("The identity provider's answer could not be verified.");
        }
    };
    let now = now_s();
    let expires = exp.min(now + MAX_SESSION.as_secs());
    let id = match auth.insert_session(user, expires) {
        Ok(id) => id,
        Err(e) => return refused(&e.to_string()),
    };
    let mut r = redirect(&pending.next);
    auth.clear_login_cookie(&mut r);
    if let Ok(v) = HeaderValue::from_str(&auth.session_cookie(&id, expires.saturating_sub(now))) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn logout(
    user: User,
    State(auth): State<ConsoleAuth>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !csrf_ok(&user, &f.csrf) {
        return page(
            StatusCode::FORBIDDEN,
            "Refused",
            "The form is stale or was not sent by this console (CSRF check failed).",
            false,
        );
    }
    auth.remove_sessions(&headers);
    let mut r = redirect("/auth/signed-out");
    if let Ok(v) = HeaderValue::from_str(&auth.session_cookie("", 0)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn signed_out() -> Response {
    page(
        StatusCode::OK,
        "Signed out",
        "You are signed out of the tracegate console.",
        true,
    )
}

/// Why a request has no user: pages redirect to sign-in, the rest is 401.
#[derive(Debug)]
pub enum NotSignedIn {
    Redirect(String),
    Unauthorized,
}

impl IntoResponse for NotSignedIn {
    fn into_response(self) -> Response {
        match self {
            NotSignedIn::Redirect(next) => redirect(&format!("/auth/login?next={}", url(&next))),
            NotSignedIn::Unauthorized => page(
                StatusCode::UNAUTHORIZED,
                "Not signed in",
                "Sign in first.",
                true,
            ),
        }
    }
}

impl<S> FromRequestParts<S> for User
where
    S: Send + Sync,
    ConsoleAuth: FromRef<S>,
{
    type Rejection = NotSignedIn;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = ConsoleAuth::from_ref(state);
        if let Some(user) = auth.user_for(&parts.headers) {
            return Ok(user);
        }
        if parts.method == Method::GET || parts.method == Method::HEAD {
            let next = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            Err(NotSignedIn::Redirect(
                safe_next(&next).unwrap_or_else(|| "/".into()),
            ))
        } else {
            Err(NotSignedIn::Unauthorized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    use tracegate_policy::approval::Approver;

    fn settings(public_url: &str) -> OidcSettings {
        OidcSettings {
            issuer: "http://127.0.0.1:9/issuer".into(),
            client_id: "console".into(),
            client_secret: None,
            public_url: public_url.into(),
            scopes: OidcSettings::default_scopes(),
        }
    }

    fn auth(public_url: &str) -> ConsoleAuth {
        ConsoleAuth::new(settings(public_url), None).unwrap()
    }

    fn caller(sub: &str) -> Caller {
        Caller {
            approver: Approver {
                issuer: "http://127.0.0.1:9/issuer".into(),
                subject: sub.into(),
                display: format!("{sub}@example.com"),
            },
            claims: vec![("groups".into(), "[\"approvers\"]".into())],
        }
    }

    /// A page behind the extractor, as helper pages are.
    fn app(auth: &ConsoleAuth) -> Router {
        Router::new()
            .route("/sessions", get(|u: User| async move { u.display }))
            .route("/inbox/{id}", post(|u: User| async move { u.display }))
            .with_state(auth.clone())
            .merge(auth.router())
    }

    async fn send(app: &Router, req: Request<Body>) -> Response {
        app.clone().oneshot(req).await.unwrap()
    }

    fn location(r: &Response) -> &str {
        r.headers().get(header::LOCATION).unwrap().to_str().unwrap()
    }

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let v = random_token().unwrap();
        // 32 bytes: 43 characters, within RFC 7636's 43..=128 unreserved.
        assert_eq!(v.len(), 43);
        assert_ne!(v, random_token().unwrap());
    }

    #[test]
    fn next_is_only_a_relative_path_on_this_site() {
        assert_eq!(
            safe_next("/sessions?caller=a%40b").as_deref(),
            Some("/sessions?caller=a%40b")
        );
        assert_eq!(safe_next("/").as_deref(), Some("/"));
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil.example",
            "\\\\evil.example",
            "evil.example",
            "",
            "/x\r\nSet-Cookie: a=b",
            "/ x",
            "javascript:alert(1)",
        ] {
            assert_eq!(safe_next(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cookies_are_httponly_lax_and_secure_only_over_tls() {
        let plain = auth("http://127.0.0.1:8080");
        let c = plain.session_cookie("abc", 60);
        assert_eq!(
            c,
            "tracegate_console=abc; Path=/; Max-Age=60; HttpOnly; SameSite=Lax"
        );
        let tls = auth("https://console.example.com/");
        let c = tls.session_cookie("abc", 60);
        assert!(c.ends_with("; HttpOnly; SameSite=Lax; Secure"), "{c}");
        assert_eq!(
            tls.inner.redirect_uri,
            "https://console.example.com/auth/callback"
        );
    }

    #[test]
    fn csrf_compares_whole_tokens() {
        let a = auth("http://127.0.0.1:8080");
        let (_, user) = a.sign_in_for_tests(caller("alice"));
        assert!(csrf_ok(&user, &user.csrf));
        assert!(!csrf_ok(&user, ""));
        assert!(!csrf_ok(&user, &user.csrf[..10]));
        assert!(!csrf_ok(&user, &format!("{}x", user.csrf)));
        let mut other = user.clone();
        other.csrf = String::new();
        assert!(!csrf_ok(&other, ""));
    }

    #[test]
    fn state_must_match_the_browsers_prelogin_cookie_and_is_used_once() {
        let a = auth("http://127.0.0.1:8080");
        let p = || Pending {
            verifier: "v".into(),
            nonce: "n".into(),
            next: "/inbox".into(),
            expires: std::time::Instant::now() + LOGIN_TTL,
        };
        a.add_pending("good".into(), p()).unwrap();
        let mut h = HeaderMap::new();
        // Another browser's (the attacker's) state, or none.
        assert!(a.take_pending("good", &h).is_err());
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("tracegate_console_login=other"),
        );
        assert!(a.take_pending("good", &h).is_err());
        assert!(a.take_pending("other", &h).is_err(), "unknown state");
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; tracegate_console_login=good"),
        );
        assert_eq!(a.take_pending("good", &h).ok().unwrap().next, "/inbox");
        assert!(a.take_pending("good", &h).is_err(), "replayed");
        // Expired.
        let mut old = p();
        old.expires = std::time::Instant::now();
        a.add_pending("good".into(), old).unwrap();
        assert!(a.take_pending("good", &h).is_err());
    }

    #[test]
    fn id_token_claims_nonce_audience_issuer_expiry() {
        let now = 1_000_000;
        let ok = serde_json::json!({
            "iss": "https://idp", "aud": "console", "nonce": "n1", "exp": now + 60, "sub": "a"
        });
        assert_eq!(
            check_id_token_claims(&ok, "https://idp", "console", "n1", now),
            Ok(now + 60)
        );
        let wrong_nonce = check_id_token_claims(&ok, "https://idp", "console", "n2", now);
        assert!(wrong_nonce.unwrap_err().contains("nonce"));
        let mut no_nonce = ok.clone();
        no_nonce.as_object_mut().unwrap().remove("nonce");
        assert!(check_id_token_claims(&no_nonce, "https://idp", "console", "n1", now).is_err());
        assert!(check_id_token_claims(&ok, "https://other", "console", "n1", now).is_err());
        assert!(check_id_token_claims(&ok, "https://idp", "api", "n1", now).is_err());
        assert!(check_id_token_claims(&ok, "https://idp", "console", "n1", now + 60).is_err());
        let mut multi = ok.clone();
        multi["aud"] = serde_json::json!(["api", "console"]);
        assert!(check_id_token_claims(&multi, "https://idp", "console", "n1", now).is_err());
        multi["azp"] = serde_json::json!("console");
        assert!(check_id_token_claims(&multi, "https://idp", "console", "n1", now).is_ok());
        multi["azp"] = serde_json::json!("api");
        assert!(check_id_token_claims(&multi, "https://idp", "console", "n1", now).is_err());
    }

    #[test]
    fn settings_errors_name_the_field() {
        let err = |s: OidcSettings| ConsoleAuth::new(s, None).err().unwrap().to_string();
        let mut s = settings("http://127.0.0.1:1");
        s.issuer = "http://idp.example.com".into();
        assert!(err(s).contains("`console.issuer`"));
        assert!(
            err(settings("https://console.example.com/console")).contains("`console.public_url`")
        );
        assert!(err(settings("console.example.com")).contains("`console.public_url`"));
        let mut s = settings("http://localhost:1");
        s.scopes = vec!["email".into()];
        assert!(err(s).contains("`console.scopes`"));
        let mut s = settings("http://[::1]:1");
        s.client_id = " ".into();
        assert!(err(s).contains("`console.client_id`"));
    }

    #[tokio::test]
    async fn signed_out_pages_redirect_to_sign_in_and_other_methods_get_401() {
        let a = auth("http://127.0.0.1:8080");
        let app = app(&a);
        let r = send(
            &app,
            Request::get("/sessions?caller=x")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&r), "/auth/login?next=%2Fsessions%3Fcaller%3Dx");
        let r = send(&app, Request::post("/inbox/1").body(Body::empty()).unwrap()).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        // A forged or stale cookie is nobody.
        let forged = Request::get("/sessions")
            .header(
                header::COOKIE,
                format!("{SESSION_COOKIE}={}", random_token().unwrap()),
            )
            .body(Body::empty())
            .unwrap();
        assert_eq!(send(&app, forged).await.status(), StatusCode::SEE_OTHER);
        let (cookie, _) = a.sign_in_for_tests(caller("alice"));
        let r = send(
            &app,
            Request::get("/sessions")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        // A callback without the pre-login cookie is refused.
        let r = send(
            &app,
            Request::get("/auth/callback?code=c&state=s")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn logout_needs_the_csrf_token_and_ends_the_session() {
        let a = auth("http://127.0.0.1:8080");
        let app = app(&a);
        let (cookie, user) = a.sign_in_for_tests(caller("alice"));
        let post = |body: String| {
            Request::post("/auth/logout")
                .header(header::COOKIE, &cookie)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .unwrap()
        };
        assert_eq!(
            send(&app, post("csrf=wrong".into())).await.status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            send(&app, post(String::new())).await.status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(a.session_count(), 1);
        let r = send(&app, post(format!("csrf={}", user.csrf))).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let set = r
            .headers()
            .get(header::SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap();
        assert!(
            set.starts_with("tracegate_console=; Path=/; Max-Age=0; HttpOnly"),
            "{set}"
        );
        assert_eq!(a.session_count(), 0);
        let r = send(
            &app,
            Request::get("/sessions")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
    }

    /// The redirect to the issuer carries PKCE S256, state and nonce, and
    /// binds the state to a cookie only the callback path receives.
    #[tokio::test]
    async fn login_redirects_to_the_discovered_issuer_with_pkce() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let doc = serde_json::json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/auth"),
            "token_endpoint": format!("{issuer}/token"),
            "code_challenge_methods_supported": ["S256"],
        });
        let idp = Router::new().route(
            "/.well-known/openid-configuration",
            get(move || async move { axum::Json(doc) }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, idp).await });
        let mut s = settings("http://127.0.0.1:8080");
        s.issuer = issuer.clone();
        let a = ConsoleAuth::new(s, None).unwrap();
        let app = app(&a);
        let r = send(
            &app,
            Request::get("/auth/login?next=//evil.example")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let loc = location(&r).to_string();
        assert!(loc.starts_with(&format!("{issuer}/auth?response_type=code&client_id=console&redirect_uri=http%3A%2F%2F127.0.0.1%3A8080%2Fauth%2Fcallback&scope=openid%20profile%20email&state=")), "{loc}");
        assert!(loc.contains("&code_challenge_method=S256"));
        let param = |name: &str| {
            loc.split(['?', '&'])
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap()
                .to_string()
        };
        let state = param("state");
        assert_eq!(param("nonce").len(), 43);
        let set = r
            .headers()
            .get(header::SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(
            set,
            format!(
                "{LOGIN_COOKIE}={state}; Path=/auth/callback; Max-Age=600; HttpOnly; SameSite=Lax"
            )
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{LOGIN_COOKIE}={state}")).unwrap(),
        );
        let p = a.take_pending(&state, &h).ok().unwrap();
        assert_eq!(param("code_challenge"), pkce_challenge(&p.verifier));
        assert_eq!(p.next, "/", "the absolute next was dropped");
        server.abort();
    }
}
