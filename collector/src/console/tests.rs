//! The console over a real store and approval service, through HTTP:
//! sign-in required, record text escaped, masked values marked, search,
//! the inbox deciding through the approval service's rules, integrity.

use super::*;
use crate::approvals::access::Access;
use crate::approvals::auth::{ApproverAuth, Caller};
use crate::config::ApproversConfig;
use crate::ledger::layout::Layout;
use crate::ledger::writer::{Ledger, Options};
use crate::metrics::Metrics;
use serde_json::json;
use tracegate_policy::approval::Approver;
use tracegate_proto::v1::{Body, Inspection, Record, Usage};

fn body(data: String, content_type: &str) -> Option<Body> {
    Some(Body {
        size: data.len() as u64,
        data: data.into_bytes(),
        truncated: false,
        content_type: content_type.into(),
    })
}

fn records() -> Vec<Record> {
    let chat = json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "<script>alert(1)</script>"},
        {"role": "user", "content": "mail [EMAIL_1] now"}]});
    let sse = [
        json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
        json!({"choices": [{"index": 0, "delta": {"content": "Sent to "}}]}),
        json!({"choices": [{"index": 0, "delta": {"content": "[EMAIL_1]."}}]}),
    ]
    .iter()
    .map(|e| format!("data: {e}\n\n"))
    .collect::<String>()
        + "data: [DONE]\n\n";
    let now = now_nanos();
    let masked = Record {
        record_id: "rec-1".into(),
        session_id: "s1".into(),
        request_id: "q1".into(),
        request_start_unix_nanos: now - 5_000_000_000,
        end_unix_nanos: now - 4_000_000_000,
        duration_micros: 1_000_000,
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        status: 200,
        request_body: body(chat.to_string(), "application/json"),
        response_body: body(sse, "text/event-stream"),
        inspection: Some(Inspection {
            verdict: "masked".into(),
            request_findings: [("email".to_string(), 1)].into_iter().collect(),
            risk: 30,
            ..Inspection::default()
        }),
        usage: Some(Usage {
            provider: "openai".into(),
            operation: "chat".into(),
            request_model: "gpt-4o".into(),
            ..Usage::default()
        }),
        ..Record::default()
    };
    let mut other = masked.clone();
    other.record_id = "rec-2".into();
    other.session_id = "s2<b>".into();
    other.inspection = None;
    other.usage = None;
    vec![masked, other]
}

fn approvers() -> ApproversConfig {
    serde_json::from_value(json!({
        "providers": [{"name": "corp", "issuer": "https://idp.test", "audiences": ["console"],
                       "remote_jwks": {"uri": "http://127.0.0.1:9/jwks"}}],
        "display_claim": "email",
        "allow": [{"claim": "groups", "equals": "llm-approvers"}]
    }))
    .unwrap()
}

fn caller(sub: &str, groups: &str) -> Caller {
    Caller {
        approver: Approver {
            issuer: "https://idp.test".into(),
            subject: sub.into(),
            display: format!("{sub}@corp.test"),
        },
        claims: vec![("groups".into(), groups.into())],
    }
}

struct Answer {
    status: u16,
    location: String,
    csp: String,
    content_type: String,
    nosniff: String,
    body: String,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut r = r.unwrap();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (status, location, csp, content_type, nosniff) = (
        r.status().as_u16(),
        header("location"),
        header("content-security-policy"),
        header("content-type"),
        header("x-content-type-options"),
    );
    let body = r.body_mut().read_to_string().unwrap_or_default();
    Answer {
        status,
        location,
        csp,
        content_type,
        nosniff,
        body,
    }
}

fn get(base: &str, path: &str, cookie: Option<&str>) -> Answer {
    let mut req = agent().get(&format!("{base}{path}"));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    answer(req.call())
}

fn post(base: &str, path: &str, cookie: &str, form: &[(&str, &str)]) -> Answer {
    let body: Vec<String> = form
        .iter()
        .map(|(k, v)| format!("{k}={}", html::url(v)))
        .collect();
    answer(
        agent()
            .post(&format!("{base}{path}"))
            .header("cookie", cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .send(body.join("&")),
    )
}

#[test]
fn pages_through_http() {
    let dir = tempfile::tempdir().unwrap();
    let key = crate::ledger::keys::generate().unwrap();
    let public = key.verifying_key();
    let mut ledger = Ledger::open(Layout::new(dir.path()), key, Options::default()).unwrap();
    let stored = records();
    ledger.append(std::slice::from_ref(&stored)).unwrap();
    let (store, writer) = crate::commit::spawn(ledger).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let config = approvers();
    let access = Access::new(&config);
    let auth = Arc::new(ApproverAuth::new(&config, &access.claims_read()).unwrap());
    let metrics = Arc::new(Metrics::new(&Default::default()));
    let (base, machine, console_auth) = rt.block_on(async {
        let svc = Service::new(store, &[], None, access, auth.clone(), metrics);
        let console_auth = ConsoleAuth::new(
            auth::OidcSettings {
                issuer: "http://127.0.0.1:9/issuer".into(),
                client_id: "console".into(),
                client_secret: None,
                public_url: "http://127.0.0.1:1".into(),
                scopes: auth::OidcSettings::default_scopes(),
            },
            Some(auth),
        )
        .unwrap();
        let console = Console::new(Settings {
            data: dir.path().to_path_buf(),
            approvals: svc.clone(),
            auth: console_auth.clone(),
            seal_public: public,
        });
        let base = serve("127.0.0.1:0".parse().unwrap(), console, None)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let machine = format!("http://{}", listener.local_addr().unwrap());
        let app = crate::approvals::service::machine_router(svc);
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, machine, console_auth)
    });
    let (bob, bob_user) = console_auth.sign_in_for_tests(caller("bob", r#"["llm-approvers"]"#));
    let (alice, alice_user) =
        console_auth.sign_in_for_tests(caller("alice", r#"["llm-approvers"]"#));
    let (eve, _) = console_auth.sign_in_for_tests(caller("eve", r#"["staff"]"#));

    // Signed out: only the way to sign in.
    let a = get(&base, "/sessions", None);
    assert_eq!(a.status, 303);
    assert!(a.location.starts_with("/auth/login"), "{}", a.location);
    assert!(!a.body.contains("s1"));
    assert_eq!(post(&base, "/inbox/x", "", &[]).status, 401);
    // Not an approver: nothing.
    let a = get(&base, "/sessions", Some(&eve));
    assert_eq!(a.status, 403);
    assert!(!a.body.contains("data-session"));

    let a = get(&base, "/sessions", Some(&bob));
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.csp.contains("default-src 'self'"));
    assert!(a.body.contains("<tr data-session=\"s1\">"), "{}", a.body);
    assert!(
        a.body.contains("data-session=\"s2&lt;b&gt;\""),
        "{}",
        a.body
    );
    assert!(a.body.contains("<span id=\"user\">bob@corp.test</span>"));
    let a = get(
        &base,
        "/sessions?verdict=masked&detector=email&model=gpt",
        Some(&bob),
    );
    assert!(a.body.contains("data-session=\"s1\"") && !a.body.contains("s2&lt;b"));
    let a = get(&base, "/sessions?verdict=blocked", Some(&bob));
    assert!(!a.body.contains("data-session="), "{}", a.body);
    let a = get(&base, "/sessions?since=1h&caller=anon", Some(&bob));
    assert!(a.body.contains("data-session=\"s1\""));
    let a = get(&base, "/sessions?since=yesterday", Some(&bob));
    assert!(a.body.contains("neither an RFC 3339 time"));

    let a = get(&base, "/sessions/s1", Some(&bob));
    assert_eq!(a.status, 200);
    assert!(a.body.contains("<section id=\"conversation\">"));
    assert!(a
        .body
        .contains("<article class=\"exchange\" data-record=\"rec-1\""));
    assert!(a
        .body
        .contains("mail <mark class=\"masked\">[EMAIL_1]</mark> now"));
    assert!(a
        .body
        .contains("Sent to <mark class=\"masked\">[EMAIL_1]</mark>."));
    assert!(a.body.contains("<details class=\"raw\"><summary>"));
    // The record's JSON is linked, not inlined; the link serves it.
    let link = "/sessions/s1/records/rec-1.json";
    assert!(
        a.body.contains(&format!("<a href=\"{link}\"")),
        "{}",
        a.body
    );
    assert!(!a.body.contains("\"record_id\""), "no record JSON inlined");
    assert!(!a.body.contains("class=\"pager\""), "one page: no pager");
    let j = get(&base, link, Some(&bob));
    assert_eq!(j.status, 200, "{}", j.body);
    assert_eq!(j.content_type, "application/json");
    assert_eq!(j.nosniff, "nosniff");
    let mut line = Vec::new();
    crate::view::write_json_lines(&mut line, &stored[..1]).unwrap();
    assert_eq!(j.body.as_bytes(), line, "the replay --json line");
    let v: serde_json::Value = serde_json::from_str(&j.body).unwrap();
    assert_eq!(v["record_id"], "rec-1");
    let signed_out = get(&base, link, None);
    assert_eq!(signed_out.status, 303);
    assert!(!signed_out.body.contains("rec-1"));
    assert_eq!(get(&base, link, Some(&eve)).status, 403);
    for missing in [
        "/sessions/s1/records/rec-2.json",
        "/sessions/s1/records/rec-1",
        "/sessions/none/records/rec-1.json",
    ] {
        assert_eq!(get(&base, missing, Some(&bob)).status, 404, "{missing}");
    }
    let j = get(&base, "/sessions/s2%3Cb%3E/records/rec-2.json", Some(&bob));
    assert_eq!(j.status, 200, "{}", j.body);
    assert!(!a.body.contains("<script"), "record text is never markup");
    assert!(a.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert_eq!(get(&base, "/sessions/none", Some(&bob)).status, 404);
    assert_eq!(get(&base, "/sessions/s2%3Cb%3E", Some(&bob)).status, 200);

    // The inbox: an approval alice asked for.
    let req = json!({"mode": "hold",
        "requester": {"key": "https://idp.test|alice", "subject": "alice", "provider": "corp", "issuer": "https://idp.test"},
        "session_id": "s1", "request_id": "q9", "method": "POST", "path": "/v1/chat/completions",
        "digest": "sha256:aa", "risk": 150, "threshold": 100,
        "reasons": [{"kind": "rule", "name": "prod", "risk": 150, "count": 1}],
        "excerpt": "deploy to [EMAIL_1]", "expires_in_s": 60, "grant_ttl_s": 60, "grant_uses": 1});
    let mut created = agent()
        .post(&format!("{machine}/v1/approvals"))
        .send_json(&req)
        .unwrap();
    let created: serde_json::Value = created.body_mut().read_json().unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let a = get(&base, "/inbox", Some(&bob));
    assert!(
        a.body.contains(&format!("<tr data-approval=\"{id}\">")),
        "{}",
        a.body
    );
    assert!(a.body.contains("<mark class=\"masked\">[EMAIL_1]</mark>"));
    let path = format!("/inbox/{id}");
    // A wrong CSRF token, no reason, self-approval: refused, nothing decided.
    let a = post(
        &base,
        &path,
        &bob,
        &[("decision", "approve"), ("reason", "ok"), ("csrf", "x")],
    );
    assert_eq!(a.status, 403);
    let a = post(
        &base,
        &path,
        &bob,
        &[
            ("decision", "approve"),
            ("reason", " "),
            ("csrf", &bob_user.csrf),
        ],
    );
    assert_eq!(a.status, 400);
    assert!(a.body.contains("a reason is required"), "{}", a.body);
    let a = post(
        &base,
        &path,
        &alice,
        &[
            ("decision", "approve"),
            ("reason", "mine"),
            ("csrf", &alice_user.csrf),
        ],
    );
    assert_eq!(a.status, 403);
    assert!(
        a.body.contains("may not decide their own requests"),
        "{}",
        a.body
    );
    let a = post(
        &base,
        &path,
        &bob,
        &[
            ("decision", "approve"),
            ("reason", "ticket 42"),
            ("csrf", &bob_user.csrf),
        ],
    );
    assert_eq!(a.status, 303, "{}", a.body);
    let a = get(&base, &a.location, Some(&bob));
    assert!(a.body.contains(&format!("You approved {id}.")));
    // A link cannot make the inbox claim a decision its reader did not make.
    let a = get(&base, &format!("/inbox?decided={id}"), Some(&alice));
    assert!(!a.body.contains("You approved"), "{}", a.body);
    assert!(!a.body.contains("You denied"), "{}", a.body);
    let a = get(&base, "/inbox?decided=apr_nothing", Some(&bob));
    assert!(!a.body.contains("You approved apr_nothing"), "{}", a.body);
    assert!(!a.body.contains("data-approval="));
    let mut shown = agent()
        .get(&format!("{machine}/v1/approvals/{id}"))
        .call()
        .unwrap();
    let shown: serde_json::Value = shown.body_mut().read_json().unwrap();
    assert_eq!(shown["state"], "APPROVED");
    assert_eq!(shown["approvers"][0]["subject"], "bob");

    // Integrity: verified at start, and on demand.
    let a = post(
        &base,
        "/integrity/verify",
        &bob,
        &[("csrf", &bob_user.csrf)],
    );
    assert_eq!(a.status, 303);
    let a = get(&base, "/integrity", Some(&bob));
    assert!(a.body.contains("<section id=\"verify\">"));
    assert!(a.body.contains("<strong>OK</strong>"), "{}", a.body);
    assert!(a
        .body
        .contains("<form id=\"verify-now\" method=\"post\" action=\"/integrity/verify\">"));
    assert_eq!(
        post(&base, "/integrity/verify", &bob, &[("csrf", "")]).status,
        403
    );
    // The store's writer ends with the service (dropped with the runtime)
    // before the directory goes: a tick on a removed directory would end
    // the whole test process (exit 70).
    drop(rt);
    writer.join().unwrap();
}

/// A long session is paged (`from`, `limit`), numbered across pages, and
/// an exchange at the top of a page still leaves out what its request
/// repeats of the one before (on the previous page).
#[test]
fn a_long_session_is_paged() {
    let dir = tempfile::tempdir().unwrap();
    let key = crate::ledger::keys::generate().unwrap();
    let mut ledger = Ledger::open(Layout::new(dir.path()), key, Options::default()).unwrap();
    let mut history = Vec::new();
    let mut rs = Vec::new();
    for i in 0..5 {
        history.push(json!({"role": "user", "content": format!("question {i}")}));
        let mut r = records().remove(0);
        r.record_id = format!("rec-{i}");
        r.request_start_unix_nanos += i;
        r.request_body = body(
            json!({"model": "gpt-4o", "messages": history}).to_string(),
            "application/json",
        );
        rs.push(r);
    }
    ledger.append(&[rs]).unwrap();
    ledger.close().unwrap();
    let user = super::auth::User {
        subject: "bob".into(),
        display: "bob@corp.test".into(),
        caller: caller("bob", "[]"),
        csrf: "t".into(),
    };
    let page = |from: Option<usize>, limit: Option<usize>| {
        let q = sessions::SessionQuery {
            caller: None,
            from,
            limit,
        };
        sessions::session_page(dir.path(), "s1", &q, &user)
            .unwrap()
            .unwrap()
    };
    let all = page(None, None);
    assert_eq!(all.matches("<article class=\"exchange\"").count(), 5);
    assert!(!all.contains("class=\"pager\""));
    let p = page(Some(3), Some(2));
    assert_eq!(p.matches("<article class=\"exchange\"").count(), 2);
    assert!(p.contains("data-record=\"rec-2\" id=\"x3\""), "{p}");
    assert!(p.contains("data-record=\"rec-3\" id=\"x4\""), "{p}");
    assert!(!p.contains("data-record=\"rec-1\""));
    assert!(p.contains("Exchanges 3–4 of 5"), "{p}");
    assert!(
        p.contains("href=\"/sessions/s1?limit=2&amp;from=1\">First"),
        "{p}"
    );
    assert!(
        p.contains("href=\"/sessions/s1?limit=2&amp;from=1\" rel=\"prev\""),
        "{p}"
    );
    assert!(
        p.contains("href=\"/sessions/s1?limit=2&amp;from=5\" rel=\"next\""),
        "{p}"
    );
    assert!(
        p.contains("href=\"/sessions/s1?limit=1000&amp;from=1\">All 5"),
        "{p}"
    );
    // rec-2 repeats rec-1's two messages: only its third is shown.
    assert!(p.contains("The first 2 messages repeat"), "{p}");
    assert!(!p.contains("question 1<"), "{p}");
    assert!(p.contains("question 2<"), "{p}");
    // Past the end is the last exchange.
    let end = page(Some(99), Some(2));
    assert!(
        end.contains("id=\"x5\"") && end.contains("Exchanges 5–5 of 5"),
        "{end}"
    );
}
