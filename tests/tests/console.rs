//! The web console in a real browser (headless Chromium through Selenium and
//! the system chromedriver), signed in at a real OpenID provider (npm
//! `oidc-provider`: authorization code with PKCE), over the real collector
//! (`serve --approvals --console`), Envoy and the filter.
//!
//! The agent's gateway token is minted by jwcrypto in the name of the same
//! issuer (`agent-7`), so the agent signing in to the console is the
//! requester the no-self-approval rule recognises.

use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracegate_e2e::browser::{Browser, Page};
use tracegate_e2e::jwt::{Keys, AUDIENCE};
use tracegate_e2e::oidc::{free_port, OidcProvider};
use tracegate_e2e::{poll, workspace_root, Stack, StackOptions};

const CLIENT_ID: &str = "tracegate-console";
const CLIENT_SECRET: &str = "console-secret-0123456789abcdef";
const RISKY: &str = "please deploy to production now";
/// Secrets the filter masks before anything is stored.
const KEY: &str = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123";
const EMAIL: &str = "jane.roe@example.org";
const SESSION: &str = "console-masked";
const HELD: &str = "console-held";

fn screenshots() -> PathBuf {
    let dir = workspace_root().join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn shot(b: &mut Browser, name: &str) {
    let path = screenshots().join(format!("{name}.png"));
    b.screenshot(&path).unwrap();
    eprintln!("screenshot: {}", path.display());
}

fn plugin_config(issuer: &str, jwks: &Value) -> Value {
    json!({
        "recording": {"flush_interval_ms": 20},
        "masking": {"detectors": {"email": {"operator": "tokenize"}}},
        "jwt": {"required": true, "providers": [{
            "name": "corp", "issuer": issuer, "audiences": [AUDIENCE], "jwks": jwks
        }]},
        // Above any detector's risk: only the rule holds a request.
        "rules": [{"id": "prod-deploy", "keywords": ["deploy to production"],
                   "action": "approve", "risk": 500}],
        "approval": {"threshold": 500, "mode": "hold", "hold_timeout_ms": 240000,
                     "poll_ms": 300, "cluster": "tracegate_approvals"}
    })
}

struct World {
    stack: Stack,
    oidc: OidcProvider,
    console: String,
    agent_token: String,
    _dir: tempfile::TempDir,
}

fn start() -> World {
    let dir = tempfile::Builder::new()
        .prefix("tracegate-console-")
        .tempdir()
        .unwrap();
    // Over TLS with the collector's certificate (its private CA), as the
    // harness's collector serves its listeners.
    let console = format!("https://127.0.0.1:{}", free_port().unwrap());
    let user = |email: &str, groups: &[&str]| json!({"password": "correct horse", "email": email, "groups": groups});
    let oidc = OidcProvider::start(
        dir.path(),
        json!({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
               "redirect_uris": [format!("{console}/auth/callback")]}),
        json!({
            "alice": user("alice@example.com", &["llm-approvers"]),
            // The agent is an approver too: only the no-self-approval rule
            // keeps it from deciding its own request.
            "agent-7": user("agent-7@example.com", &["llm-approvers"]),
            "eve": user("eve@example.com", &["staff"]),
        }),
    )
    .unwrap();
    let issuer = oidc.issuer.clone();
    let keys = Keys::generate(dir.path()).unwrap();
    let jwks = keys.jwks(&["ec256"]).unwrap();
    let now = tracegate_e2e::jwt::unix_now();
    let agent_token = keys
        .mint_one(json!({"key": "ec256", "alg": "ES256", "claims": {
            "iss": issuer, "aud": AUDIENCE, "sub": "agent-7", "iat": now - 60, "exp": now + 3600
        }}))
        .unwrap();
    let approvers_issuer = issuer.clone();
    let options = StackOptions {
        approvers: Some(Box::new(move |_| {
            json!({
                "providers": [{
                    "name": "idp", "issuer": approvers_issuer, "audiences": [CLIENT_ID],
                    "remote_jwks": {"uri": format!("{approvers_issuer}/jwks"),
                                    "timeout_ms": 2000, "retry_interval_ms": 200}
                }],
                "display_claim": "email",
                "allow": [{"claim": "groups", "equals": "llm-approvers"}]
            })
        })),
        console: Some(json!({
            "issuer": issuer, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "public_url": console, "scopes": ["openid", "email", "profile", "groups"]
        })),
        ..StackOptions::default()
    };
    let stack = Stack::start_with_options(
        &dir.path().join("stack"),
        &plugin_config(&issuer, &jwks),
        &options,
        |_, _| Ok(()),
    )
    .unwrap();
    World {
        stack,
        oidc,
        console,
        agent_token,
        _dir: dir,
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// An HTTP client of the console trusting the collector's CA.
fn console_client(w: &World) -> ureq::Agent {
    let tls = w.stack.collector.tls.as_ref().expect("a TLS collector");
    let pem = std::fs::read(tls.join("ca.pem")).unwrap();
    let ca = ureq::tls::Certificate::from_pem(&pem).unwrap();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]))
                .build(),
        )
        .build()
        .into()
}

fn chat(text: &str) -> String {
    json!({"model": "gpt-test", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": text}
    ]})
    .to_string()
}

/// Sends in a thread (a held request waits for its decision); the status.
fn send_later(w: &World, session: &str, text: &str) -> std::thread::JoinHandle<(u16, String)> {
    let url = w.stack.envoy.url("/v1/chat/completions");
    let token = w.agent_token.clone();
    let (session, body) = (session.to_string(), chat(text));
    std::thread::spawn(move || {
        let mut r = agent()
            .post(&url)
            .header("authorization", &format!("Bearer {token}"))
            .header("x-session-id", &session)
            .header("content-type", "application/json")
            .send(body.as_bytes())
            .unwrap();
        (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        )
    })
}

/// What a page must never contain.
fn assert_no_secret(page: &Page, what: &str) {
    for secret in [KEY, EMAIL, "AbCdEfGhIjKlMnOp"] {
        assert!(
            !page.source.contains(secret),
            "{what}: the raw secret {secret:?} is in the page's HTML"
        );
    }
}

/// Signs in at the provider's form (the browser must be on it).
fn sign_in(b: &mut Browser, w: &World, user: &str) -> Page {
    let p = b.page().unwrap();
    assert!(
        p.url.starts_with(&w.oidc.issuer) && p.source.contains("idp-login"),
        "expected the provider's sign-in, got {} {}",
        p.url,
        p.source
    );
    b.fill("#login", user).unwrap();
    b.fill("#password", "correct horse").unwrap();
    let p = b.click("#sign-in").unwrap();
    assert!(
        p.url.starts_with(&w.console),
        "back at the console after sign-in, got {}: {}",
        p.url,
        p.source
    );
    p
}

/// The browser's console session cookie and the page's CSRF token.
fn session_cookie(b: &mut Browser) -> Value {
    b.cookies()
        .unwrap()
        .into_iter()
        .find(|c| c["name"] == "tracegate_console")
        .expect("a session cookie")
}

fn csrf_of(b: &mut Browser) -> String {
    b.attrs("input[name=\"csrf\"]", "value")
        .unwrap()
        .into_iter()
        .next()
        .expect("a csrf field")
}

/// Reloads the inbox until the held request is listed; its id.
fn pending_in_inbox(b: &mut Browser, w: &World) -> String {
    poll(
        "the held request in the inbox",
        Duration::from_secs(30),
        || {
            b.get(&format!("{}/inbox", w.console))?;
            Ok(b.attrs("tr[data-approval]", "data-approval")?
                .into_iter()
                .next())
        },
    )
    .unwrap()
}

/// Whether the inbox still lists the approval.
fn still_pending(b: &mut Browser, w: &World, id: &str) -> bool {
    b.get(&format!("{}/inbox", w.console)).unwrap();
    b.attrs("tr[data-approval]", "data-approval")
        .unwrap()
        .iter()
        .any(|x| x == id)
}

#[test]
fn console_sign_in_sessions_masked_inbox_approval_and_integrity() {
    let started = Instant::now();
    let mut w = start();
    eprintln!("stack and provider started in {:?}", started.elapsed());
    let c = w.console.clone();

    // A request with secrets: masked by the filter before it is stored.
    let masked = send_later(&w, SESSION, &format!("my key is {KEY}, mail {EMAIL}"))
        .join()
        .unwrap();
    assert_eq!(masked.0, 200, "{}", masked.1);
    let stored = w.stack.collector.wait_for_records(SESSION, 1).unwrap();
    let record = stored[0]["record_id"].as_str().unwrap().to_string();
    let record_json = format!("/sessions/{SESSION}/records/{record}.json");
    // A request held for approval.
    let held = send_later(&w, HELD, RISKY);

    // Without a session, every page is a redirect to sign in, with no data.
    let http = console_client(&w);
    for path in [
        "/",
        "/sessions",
        "/inbox",
        "/integrity",
        &format!("/sessions/{SESSION}"),
        &record_json,
    ] {
        let mut r = http.get(&format!("{c}{path}")).call().unwrap();
        assert_eq!(r.status(), 303, "{path}");
        let body = r.body_mut().read_to_string().unwrap_or_default();
        assert!(
            !body.contains(SESSION) && !body.contains("deploy"),
            "{path}: {body}"
        );
    }
    for path in ["/inbox/x", "/integrity/verify", "/auth/logout"] {
        let r = http.post(&format!("{c}{path}")).send_empty().unwrap();
        assert_eq!(r.status(), 401, "POST {path} signed out");
    }

    let cert = w.stack.collector.tls.clone().unwrap().join("collector.pem");
    let mut b = Browser::start_trusting(&w.stack.dir, Some(&cert)).unwrap();
    for path in [
        "/sessions",
        "/inbox",
        "/integrity",
        &format!("/sessions/{SESSION}"),
        &record_json,
    ] {
        let p = b.get(&format!("{c}{path}")).unwrap();
        assert!(
            p.url.starts_with(&w.oidc.issuer) && p.source.contains("idp-login"),
            "{path}: signed out, the browser must land on the provider's sign-in: {} {}",
            p.url,
            p.source
        );
        for data in [SESSION, HELD, "deploy"] {
            assert!(!p.source.contains(data), "{path}: {data} shown signed out");
        }
        assert_no_secret(&p, path);
    }
    shot(&mut b, "01-signed-out-sign-in");

    // The requester signs in: it is an approver, but not of its own request.
    b.get(&format!("{c}/inbox")).unwrap();
    sign_in(&mut b, &w, "agent-7");
    let id = pending_in_inbox(&mut b, &w);
    let row = format!("tr[data-approval=\"{id}\"]");
    b.fill(&format!("{row} textarea[name=\"reason\"]"), "my own")
        .unwrap();
    let p = b
        .click(&format!(
            "{row} button[name=\"decision\"][value=\"approve\"]"
        ))
        .unwrap();
    assert!(
        p.source.contains("may not decide their own requests"),
        "self-approval refused: {}",
        p.source
    );
    shot(&mut b, "02-self-approval-refused");
    assert!(still_pending(&mut b, &w, &id));
    // Sign out (the logout form carries the CSRF token), and forget the
    // provider's session too (cookies are per host, shared by both ports).
    let p = b.click("#logout button").unwrap();
    assert!(p.source.contains("Signed out"), "{}", p.source);
    b.clear_cookies().unwrap();
    let p = b.get(&format!("{c}/inbox")).unwrap();
    assert!(p.url.starts_with(&w.oidc.issuer), "signed out: {}", p.url);

    // Alice, an approver, signs in and lands where she was going.
    let p = sign_in(&mut b, &w, "alice");
    assert_eq!(p.url, format!("{c}/inbox"));
    assert_eq!(b.texts("#user").unwrap(), vec!["alice@example.com"]);
    let cookie = session_cookie(&mut b);
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Lax", "{cookie}");
    assert_eq!(cookie["secure"], true, "Secure over https: {cookie}");
    assert_eq!(cookie["path"], "/", "{cookie}");

    // Sessions: search, open, the masked value marked, no raw secret.
    let p = b.get(&format!("{c}/sessions")).unwrap();
    assert!(p.source.contains("id=\"sessions\""), "{}", p.source);
    b.fill("#search input[name=\"caller\"]", "agent-7").unwrap();
    let p = b.click("#search button[type=\"submit\"]").unwrap();
    assert!(p.url.contains("caller=agent-7"), "{}", p.url);
    let rows = b
        .attrs("#sessions tr[data-session]", "data-session")
        .unwrap();
    assert!(rows.iter().any(|r| r == SESSION), "{rows:?}");
    // The held request has no record until it completes.
    assert!(!rows.iter().any(|r| r == HELD), "{rows:?}");
    assert_no_secret(&p, "sessions");
    shot(&mut b, "03-sessions-search");
    let p = b
        .click(&format!("#sessions tr[data-session=\"{SESSION}\"] a"))
        .unwrap();
    assert!(
        p.url.starts_with(&format!("{c}/sessions/{SESSION}")),
        "{}",
        p.url
    );
    assert!(p.source.contains("id=\"conversation\""), "{}", p.source);
    assert!(!b
        .attrs("article.exchange", "data-record")
        .unwrap()
        .is_empty());
    let marks = b.texts("#conversation mark.masked").unwrap();
    assert!(!marks.is_empty(), "a masked value is marked: {}", p.source);
    assert!(p.source.contains("details class=\"raw\""), "raw record");
    assert_no_secret(&p, "session page");
    shot(&mut b, "04-session-conversation");
    // The record as JSON is behind a link (not inlined): open it.
    let links = b.attrs("details.raw a", "href").unwrap();
    assert_eq!(
        links,
        vec![format!("{c}{record_json}")],
        "the raw record's link"
    );
    let p = b.get(&links[0]).unwrap();
    let shown: Value = serde_json::from_str(&b.texts("body").unwrap().join(""))
        .unwrap_or_else(|e| panic!("{e}: {}", p.source));
    assert_eq!(shown["record_id"], record.as_str(), "{shown}");
    assert_eq!(shown["session_id"], SESSION);
    assert_no_secret(&p, "record JSON");

    // Attacks on the decision form: no CSRF token, a wrong one, a forged
    // cookie. The held request stays pending.
    let id = pending_in_inbox(&mut b, &w);
    let good_cookie = format!("tracegate_console={}", cookie["value"].as_str().unwrap());
    let csrf = csrf_of(&mut b);
    let decide = |cookie: &str, body: &str| {
        http.post(&format!("{c}/inbox/{id}"))
            .header("cookie", cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .send(body.as_bytes())
            .unwrap()
            .status()
            .as_u16()
    };
    let no_csrf = decide(&good_cookie, "decision=approve&reason=forged");
    assert_eq!(no_csrf, 403, "no csrf");
    let wrong = decide(&good_cookie, "decision=approve&reason=forged&csrf=AAAA");
    assert_eq!(wrong, 403, "wrong csrf");
    let forged = format!("tracegate_console={}", "A".repeat(43));
    let forged_status = decide(
        &forged,
        &format!("decision=approve&reason=forged&csrf={csrf}"),
    );
    assert_eq!(forged_status, 401, "forged cookie");
    let r = http
        .get(&format!("{c}/inbox"))
        .header("cookie", &forged)
        .call()
        .unwrap();
    assert_eq!(r.status(), 303, "forged cookie on a page");
    assert!(still_pending(&mut b, &w, &id), "nothing was decided");
    assert_eq!(
        w.stack.upstream.received().unwrap().len(),
        1,
        "held, not forwarded"
    );

    // A callback this browser did not start (login CSRF) is refused.
    let p = b
        .get(&format!("{c}/auth/callback?code=stolen&state=forged"))
        .unwrap();
    assert!(p.source.contains("Sign-in refused"), "{}", p.source);

    // Approve from the inbox with a reason; the held request completes.
    let p = b.get(&format!("{c}/inbox")).unwrap();
    assert_no_secret(&p, "inbox");
    let row = format!("tr[data-approval=\"{id}\"]");
    let presses = b
        .tab_presses_to(&format!("{row} button[value=\"approve\"]"))
        .unwrap();
    eprintln!("keyboard: the approve button after {presses:?} Tab presses");
    assert!(
        presses.is_some(),
        "the approve button is keyboard reachable"
    );
    shot(&mut b, "05-inbox");
    b.fill(
        &format!("{row} textarea[name=\"reason\"]"),
        "change ticket 42",
    )
    .unwrap();
    let decided_at = Instant::now();
    let p = b
        .click(&format!(
            "{row} button[name=\"decision\"][value=\"approve\"]"
        ))
        .unwrap();
    assert!(p.url.starts_with(&format!("{c}/inbox")), "{}", p.url);
    shot(&mut b, "06-inbox-approved");
    let (status, body) = held.join().unwrap();
    eprintln!(
        "held request answered {status} {:?} after the click",
        decided_at.elapsed()
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.stack.upstream.received().unwrap().len(), 2);
    let record = w
        .stack
        .collector
        .wait_for_records(HELD, 1)
        .unwrap()
        .remove(0);
    assert_eq!(record["approval"]["state"], "APPROVED", "{record}");
    assert_eq!(record["approval"]["approver"], "alice@example.com");
    assert_eq!(record["approval"]["reason"], "change ticket 42");
    assert_eq!(
        record["approval"]["approvers"][0]["issuer"],
        w.oidc.issuer.as_str()
    );

    // Integrity: a verify result, then verify now.
    let p = b.get(&format!("{c}/integrity")).unwrap();
    assert!(p.source.contains("id=\"verify\""), "{}", p.source);
    let before = b.texts("#verify").unwrap().join("\n");
    assert!(!before.trim().is_empty());
    shot(&mut b, "07-integrity");
    let p = b.click("#verify-now button").unwrap();
    assert!(p.url.starts_with(&format!("{c}/integrity")), "{}", p.url);
    let after = b.texts("#verify").unwrap().join("\n");
    assert!(after.contains("OK") && !after.contains("FAILED"), "{after}");
    shot(&mut b, "08-integrity-verified");

    // The session page once more after the approval: its approval events.
    let p = b.get(&format!("{c}/sessions/{HELD}")).unwrap();
    assert!(p.source.contains("change ticket 42"), "{}", p.source);
    shot(&mut b, "09-session-approved");

    // Someone signed in at the provider who is not an approver sees nothing.
    let p = b.click("#logout button").unwrap();
    assert!(p.source.contains("Signed out"));
    b.clear_cookies().unwrap();
    b.get(&format!("{c}/sessions")).unwrap();
    let p = sign_in(&mut b, &w, "eve");
    for data in [SESSION, HELD] {
        assert!(!p.source.contains(data), "eve sees {data}: {}", p.source);
    }
    assert!(
        p.source.contains("is not an approver"),
        "eve must be refused as a non-approver: {}",
        p.source
    );
    shot(&mut b, "10-not-an-approver");
    eprintln!(
        "console test: {:?}; screenshots in {}",
        started.elapsed(),
        screenshots().display()
    );
}
