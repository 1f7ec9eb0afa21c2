//! `/sessions` (the list, searchable) and `/sessions/{id}` (one session as
//! its conversation). Both read the store as `tracegate sessions` and
//! `tracegate replay` do (`ledger::read::Reader`: sealed segments through
//! their session index, the open one scanned); both are blocking and run
//! off the async workers.

use anyhow::Result;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use tracegate_proto::v1::Record;

use super::auth::User;
use super::html::{self, esc, marked, url, Nav};
use crate::ledger::caller::Caller;
use crate::ledger::index::SessionSummary;
use crate::ledger::layout::Layout;
use crate::ledger::read::Reader;
use crate::view::caller::key as caller_key;
use crate::view::conversation::{conversation, Exchange, Message, Part, Side};
use crate::view::{self, approvals_named, fold_written_ahead};

/// Rows per page unless `limit` says otherwise, and the most it may say.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// The search form's fields (all optional; empty means no condition).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Search {
    /// Part of the caller key (`ISSUER|SUBJECT`, `anonymous`, `rejected`).
    #[serde(default)]
    pub caller: String,
    /// RFC 3339 or a duration ago (`1h`): sessions active at or after.
    #[serde(default)]
    pub since: String,
    /// ...and that started before.
    #[serde(default)]
    pub until: String,
    /// A verdict some exchange has (`masked`, `blocked`, ...).
    #[serde(default)]
    pub verdict: String,
    /// A detector that found something in some exchange.
    #[serde(default)]
    pub detector: String,
    /// Part of a model name some exchange asked for or was answered by.
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub limit: Option<usize>,
    /// 0-based.
    #[serde(default)]
    pub page: Option<usize>,
}

/// RFC 3339 time, or a duration before now; Unix nanoseconds (as the CLI's
/// `--since`).
fn parse_time(field: &str, s: &str) -> Result<Option<i64>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let t = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let ago = humantime::parse_duration(s).map_err(|_| {
                format!("{field}: {s:?} is neither an RFC 3339 time (2026-11-25T10:00:00Z) nor a duration (2h)")
            })?;
            SystemTime::now()
                .checked_sub(ago)
                .ok_or_else(|| format!("{field}: {s:?} is too long ago"))?
        }
    };
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{field}: {s:?} is before 1970"))?;
    i64::try_from(d.as_nanos())
        .map(Some)
        .map_err(|_| format!("{field}: {s:?} is too far in the future"))
}

/// Whether a record meets the record conditions of the search.
fn record_matches(r: &Record, q: &Search) -> bool {
    let verdict = q.verdict.trim();
    if !verdict.is_empty() && r.inspection.as_ref().is_none_or(|i| i.verdict != verdict) {
        return false;
    }
    let detector = q.detector.trim();
    if !detector.is_empty()
        && r.inspection.as_ref().is_none_or(|i| {
            !i.request_findings.contains_key(detector)
                && !i.response_findings.contains_key(detector)
        })
    {
        return false;
    }
    let model = q.model.trim().to_ascii_lowercase();
    if !model.is_empty()
        && r.usage.as_ref().is_none_or(|u| {
            !u.request_model.to_ascii_lowercase().contains(&model)
                && !u.response_model.to_ascii_lowercase().contains(&model)
        })
    {
        return false;
    }
    true
}

/// The list page's main part. Caller and time come from the session index;
/// verdict, detector and model need the records, read once in one pass
/// over the time range.
pub fn sessions_page(data: &Path, q: &Search, user: &User) -> Result<String> {
    let mut s = html::start("Sessions", Nav::Sessions, user);
    search_form(&mut s, q);
    let (since, until) = match (parse_time("since", &q.since), parse_time("until", &q.until)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            let _ = write!(s, "<p class=\"error\" role=\"alert\">{}</p>", esc(&e));
            return Ok(html::end(s));
        }
    };
    let layout = Layout::new(data);
    if !layout.exists() {
        s.push_str("<p>No records yet.</p>");
        return Ok(html::end(s));
    }
    let mut reader = Reader::open(layout)?;
    let all = reader.sessions()?;
    let needs_records =
        !(q.verdict.trim().is_empty() && q.detector.trim().is_empty() && q.model.trim().is_empty());
    let matching: Option<HashSet<(String, Caller)>> = if needs_records {
        let mut set = HashSet::new();
        reader.export(since, until, |r| {
            if record_matches(r, q) {
                set.insert((r.session_id.clone(), Caller::of(r)));
            }
            Ok(())
        })?;
        Some(set)
    } else {
        None
    };
    let who = q.caller.trim().to_ascii_lowercase();
    let mut rows: Vec<(&(String, Caller), &SessionSummary, String)> = all
        .iter()
        .filter(|((_, _), sum)| since.is_none_or(|t| sum.last_unix_nanos >= t))
        .filter(|((_, _), sum)| until.is_none_or(|t| sum.first_unix_nanos < t))
        .filter(|(k, _)| matching.as_ref().is_none_or(|m| m.contains(*k)))
        .map(|(k, sum)| (k, sum, caller_key(&k.1)))
        .filter(|(_, _, key)| who.is_empty() || key.to_ascii_lowercase().contains(&who))
        .collect();
    // Newest activity first.
    rows.sort_by(|a, b| {
        (b.1.last_unix_nanos, &a.0 .0, &a.2).cmp(&(a.1.last_unix_nanos, &b.0 .0, &b.2))
    });
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let page = q.page.unwrap_or(0);
    let total = rows.len();
    let shown = rows.iter().skip(page.saturating_mul(limit)).take(limit);
    let _ = write!(
        s,
        "<p class=\"count\">{total} session{} (newest first)</p>\
         <table id=\"sessions\"><thead><tr><th scope=\"col\">Session</th><th scope=\"col\">Caller</th>\
         <th scope=\"col\">First</th><th scope=\"col\">Last</th><th scope=\"col\">Exchanges</th></tr></thead><tbody>",
        if total == 1 { "" } else { "s" }
    );
    for ((id, _), sum, key) in shown {
        let _ = write!(
            s,
            "<tr data-session=\"{}\"><td><a href=\"/sessions/{}?caller={}\">{}</a></td><td>{}</td>\
             <td><time>{}</time></td><td><time>{}</time></td><td class=\"num\">{}</td></tr>",
            esc(id),
            url(id),
            url(key),
            esc(id),
            esc(key),
            html::time(sum.first_unix_nanos),
            html::time(sum.last_unix_nanos),
            sum.exchanges
        );
    }
    s.push_str("</tbody></table>");
    pager(&mut s, q, page, limit, total);
    for w in &reader.warnings {
        let _ = write!(
            s,
            "<p class=\"warning\">Store warning: {} (run <code>tracegate verify</code>)</p>",
            esc(w)
        );
    }
    Ok(html::end(s))
}

fn search_form(s: &mut String, q: &Search) {
    s.push_str("<form id=\"search\" method=\"get\" action=\"/sessions\" class=\"search\">");
    for (name, label, value, hint) in [
        ("caller", "Caller", &q.caller, "issuer|subject, anonymous"),
        ("since", "Since", &q.since, "1h or 2026-11-25T10:00:00Z"),
        ("until", "Until", &q.until, "RFC 3339 or 30m"),
        ("verdict", "Verdict", &q.verdict, "masked, blocked, …"),
        (
            "detector",
            "Detector",
            &q.detector,
            "email, payment_card, …",
        ),
        ("model", "Model", &q.model, "gpt-4o"),
    ] {
        let _ = write!(
            s,
            "<label>{label} <input name=\"{name}\" value=\"{}\" placeholder=\"{}\"></label>",
            esc(value),
            esc(hint)
        );
    }
    s.push_str("<button type=\"submit\">Search</button> <a href=\"/sessions\">Clear</a></form>");
}

fn pager(s: &mut String, q: &Search, page: usize, limit: usize, total: usize) {
    let link = |p: usize| {
        let mut href = String::from("/sessions?");
        for (k, v) in [
            ("caller", &q.caller),
            ("since", &q.since),
            ("until", &q.until),
            ("verdict", &q.verdict),
            ("detector", &q.detector),
            ("model", &q.model),
        ] {
            if !v.is_empty() {
                let _ = write!(href, "{k}={}&", url(v));
            }
        }
        let _ = write!(href, "limit={limit}&page={p}");
        href
    };
    s.push_str("<nav class=\"pager\" aria-label=\"Pages\">");
    if page > 0 {
        let _ = write!(
            s,
            "<a href=\"{}\" rel=\"prev\">Newer</a>",
            esc(&link(page - 1))
        );
    }
    if (page + 1).saturating_mul(limit) < total {
        let _ = write!(
            s,
            "<a href=\"{}\" rel=\"next\">Older</a>",
            esc(&link(page + 1))
        );
    }
    s.push_str("</nav>");
}

/// Exchanges per session page unless `limit` says otherwise, and the most
/// it may say: a page of 200 opens in a browser in a fraction of a second
/// (`make bench`), a long session is paged.
pub const SESSION_PAGE: usize = 200;
const MAX_SESSION_PAGE: usize = 1000;

/// Which exchanges of a session a page shows.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct SessionQuery {
    /// Only this caller's exchanges (a key as the list links it).
    #[serde(default)]
    pub caller: Option<String>,
    /// The number of the first exchange shown (1-based, as `#N`).
    #[serde(default)]
    pub from: Option<usize>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// One session's page, or `None` when the store holds no exchange of it.
pub fn session_page(
    data: &Path,
    id: &str,
    q: &SessionQuery,
    user: &User,
) -> Result<Option<String>> {
    let caller = match q.caller.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(view::caller::parse(c)?),
        None => None,
    };
    let mut reader = Reader::open(Layout::new(data))?;
    let records = fold_written_ahead(reader.session(id, caller.as_ref())?);
    if records.is_empty() {
        return Ok(None);
    }
    let total = records.len();
    let limit = q.limit.unwrap_or(SESSION_PAGE).clamp(1, MAX_SESSION_PAGE);
    // Exchanges first..last (0-based, last excluded) are shown.
    let first = q.from.unwrap_or(1).clamp(1, total) - 1;
    let last = (first + limit).min(total);
    // Callers kept apart, in the order of their first exchange (as replay).
    let mut groups: BTreeMap<usize, (Caller, Vec<Record>)> = BTreeMap::new();
    let mut order: Vec<Caller> = Vec::new();
    for r in records {
        let c = Caller::of(&r);
        let at = match order.iter().position(|o| *o == c) {
            Some(at) => at,
            None => {
                order.push(c.clone());
                order.len() - 1
            }
        };
        groups
            .entry(at)
            .or_insert_with(|| (c, Vec::new()))
            .1
            .push(r);
    }
    let mut s = html::start(&format!("Session {id}"), Nav::Sessions, user);
    // Exchanges are numbered across callers, group after group: each
    // group's first number (0-based) and the part of it this page shows.
    let mut start = 0;
    let shown: Vec<(&Caller, &[Record], usize, std::ops::Range<usize>)> = groups
        .values()
        .map(|(c, records)| {
            let at = start;
            start += records.len();
            let range =
                first.max(at).saturating_sub(at)..last.min(at + records.len()).saturating_sub(at);
            (c, records.as_slice(), at, range)
        })
        .filter(|(_, _, _, range)| !range.is_empty())
        .collect();
    // The approval events of the exchanges shown.
    let named: Vec<_> = shown
        .iter()
        .flat_map(|(_, records, _, range)| approvals_named(&records[range.clone()]))
        .collect();
    let events = reader.approval_events(&named)?;
    let pages = |s: &mut String| session_pager(s, id, q, first, last, limit, total);
    pages(&mut s);
    s.push_str("<section id=\"conversation\">");
    for (c, records, start, range) in &shown {
        let key = caller_key(c);
        let _ = write!(
            s,
            "<h2>Caller {} <small>({} exchange{})</small></h2>",
            esc(&key),
            records.len(),
            if records.len() == 1 { "" } else { "s" }
        );
        // The exchange before the page's first is read too: what its
        // request repeats of it is not shown again.
        let with_previous = range.start.saturating_sub(1);
        let conv = conversation(id, &records[with_previous..range.end], &events);
        for (k, x) in conv
            .exchanges
            .iter()
            .enumerate()
            .skip(range.start - with_previous)
        {
            exchange_html(&mut s, id, start + with_previous + k + 1, x);
        }
    }
    s.push_str("</section>");
    pages(&mut s);
    for w in &reader.warnings {
        let _ = write!(
            s,
            "<p class=\"warning\">Store warning: {} (run <code>tracegate verify</code>)</p>",
            esc(w)
        );
    }
    Ok(Some(html::end(s)))
}

/// "Exchanges 201–400 of 1000", links to the pages around and to the
/// whole session on one page (when it may be).
fn session_pager(
    s: &mut String,
    id: &str,
    q: &SessionQuery,
    first: usize,
    last: usize,
    limit: usize,
    total: usize,
) {
    if first == 0 && last == total {
        return;
    }
    let link = |from: usize, limit: usize| {
        let mut href = format!("/sessions/{}?", url(id));
        if let Some(c) = q.caller.as_deref().filter(|c| !c.is_empty()) {
            let _ = write!(href, "caller={}&", url(c));
        }
        if limit != SESSION_PAGE {
            let _ = write!(href, "limit={limit}&");
        }
        let _ = write!(href, "from={}", from + 1);
        esc(&href).to_string()
    };
    let _ = write!(
        s,
        "<nav class=\"pager\" aria-label=\"Exchanges\"><span>Exchanges {}–{last} of {total}</span>",
        first + 1
    );
    if first > 0 {
        let _ = write!(s, "<a href=\"{}\">First</a>", link(0, limit));
        let earlier = link(first.saturating_sub(limit), limit);
        let _ = write!(s, "<a href=\"{earlier}\" rel=\"prev\">Earlier</a>");
    }
    if last < total {
        let _ = write!(
            s,
            "<a href=\"{}\" rel=\"next\">Later</a>",
            link(last, limit)
        );
        let end = link((total - 1) / limit * limit, limit);
        let _ = write!(s, "<a href=\"{end}\">Last</a>");
    }
    if total <= MAX_SESSION_PAGE {
        let all = link(0, MAX_SESSION_PAGE);
        let _ = write!(s, "<a href=\"{all}\">All {total} on one page</a>");
    }
    s.push_str("</nav>");
}

fn exchange_html(s: &mut String, session: &str, n: usize, x: &Exchange) {
    let _ = write!(
        s,
        "<article class=\"exchange\" data-record=\"{}\" id=\"x{n}\"><h3><a href=\"#x{n}\">#{n}</a> \
         <time>{}</time> <code>{} {}</code> → {}</h3><dl class=\"meta\">",
        esc(&x.record_id),
        esc(&x.time),
        esc(&x.method),
        esc(&x.path),
        x.status
    );
    let mut dd = |term: &str, value: &str| {
        let _ = write!(s, "<dt>{term}</dt><dd>{}</dd>", esc(value));
    };
    dd("Caller", &x.caller);
    if let Some(v) = &x.verdict {
        let text = if x.reason.is_empty() {
            format!("{v}; risk {}", x.risk)
        } else {
            format!("{v} ({}); risk {}", x.reason, x.risk)
        };
        dd("Verdict", &text);
    }
    if !x.findings.is_empty() {
        let f: Vec<String> = x
            .findings
            .iter()
            .map(|f| format!("{} {}×{}", f.side, f.detector, f.count))
            .collect();
        dd("Findings", &f.join(", "));
    }
    if !x.rules.is_empty() {
        let rules: Vec<String> = x
            .rules
            .iter()
            .map(|r| format!("{} ({}, {})", r.id, r.action, r.scope))
            .collect();
        dd("Rules", &rules.join(", "));
    }
    if let Some(a) = &x.approval {
        let mut text = format!("{} ({}): {}", a.id, a.mode, a.state);
        if !a.approvers.is_empty() {
            text += &format!(" by {}", a.approvers.join(" and "));
        }
        if !a.reason.is_empty() {
            text += &format!(": \"{}\"", a.reason);
        }
        text += &format!("; risk {} ≥ {}; {}", a.risk, a.threshold, a.outcome);
        dd("Approval", &text);
        for e in &x.approval_events {
            let mut t = format!("{} {}", e.time, e.event);
            if !e.actor.is_empty() {
                t += &format!(" by {}", e.actor);
            }
            if !e.reason.is_empty() {
                t += &format!(": {}", e.reason);
            }
            dd("Approval event", &t);
        }
    }
    if let Some(u) = &x.usage {
        let n = |v: Option<u64>| v.map_or("?".to_string(), |n| n.to_string());
        let mut t = format!("{} {} {}", u.provider, u.operation, u.request_model);
        if !u.response_model.is_empty() && u.response_model != u.request_model {
            t += &format!(" (answered by {})", u.response_model);
        }
        t += &format!(": {} in, {} out", n(u.input_tokens), n(u.output_tokens));
        if let Some(c) = u.cached_input_tokens {
            t += &format!(", {c} cached");
        }
        if let Some(c) = u.reasoning_tokens {
            t += &format!(", {c} reasoning");
        }
        dd("Usage", &t);
    }
    let mut timing = format!("{:.1} ms", x.duration_ms);
    if let Some(f) = x.first_byte_ms {
        timing += &format!(" (answer headers after {f:.1} ms)");
    }
    dd("Timing", &timing);
    s.push_str("</dl>");
    if x.earlier_messages > 0 {
        let _ = write!(
            s,
            "<p class=\"earlier\">The first {} message{} repeat the previous exchange's request; not shown again.</p>",
            x.earlier_messages,
            if x.earlier_messages == 1 { "" } else { "s" }
        );
    }
    side_html(s, "Request", &x.request);
    side_html(s, "Answer", &x.response);
    // The record's JSON is a link, not inlined: it was most of a long
    // session's page (14 MB of 1,000 exchanges' HTML).
    let _ = write!(
        s,
        "<details class=\"raw\"><summary>Record as JSON</summary><p><a href=\"/sessions/{}/records/{}.json\" \
         type=\"application/json\">{}.json</a> (the <code>tracegate replay --json</code> line)</p></details></article>",
        url(session),
        url(&x.record_id),
        esc(&x.record_id)
    );
}

/// The JSON of one record of a session as `tracegate replay --json` prints
/// it (one line), or `None` when the session holds no such record.
pub fn record_json(data: &Path, session: &str, record: &str) -> Result<Option<Vec<u8>>> {
    let layout = Layout::new(data);
    if !layout.exists() {
        return Ok(None);
    }
    let mut reader = Reader::open(layout)?;
    let records = fold_written_ahead(reader.session(session, None)?);
    let Some(r) = records.iter().find(|r| r.record_id == record) else {
        return Ok(None);
    };
    let mut json = Vec::new();
    view::write_json_lines(&mut json, std::slice::from_ref(r))?;
    Ok(Some(json))
}

fn side_html(s: &mut String, label: &str, side: &Side) {
    let mut notes = Vec::new();
    if side.streamed {
        notes.push("streamed, reassembled");
    }
    if side.truncated {
        notes.push("cut when recorded");
    }
    if side.empty {
        notes.push("empty");
    }
    let _ = write!(s, "<h4>{label}");
    if !notes.is_empty() {
        let _ = write!(s, " <small>({})</small>", notes.join(", "));
    }
    s.push_str("</h4>");
    if let Some(raw) = &side.raw {
        s.push_str("<p class=\"note\">Not read as messages; as sent:</p><pre class=\"text\">");
        marked(s, raw);
        s.push_str("</pre>");
        return;
    }
    for m in &side.messages {
        message_html(s, m);
    }
}

fn message_html(s: &mut String, m: &Message) {
    let role = m.role.name();
    let _ = write!(
        s,
        "<div class=\"msg role-{role}\"><div class=\"role\">{role}</div><div class=\"parts\">"
    );
    for p in &m.parts {
        match p {
            Part::Text { text } => {
                s.push_str("<div class=\"text\">");
                marked(s, text);
                s.push_str("</div>");
            }
            Part::Reasoning { text } => {
                s.push_str("<details class=\"reasoning\" open><summary>Reasoning</summary><div class=\"text\">");
                marked(s, text);
                s.push_str("</div></details>");
            }
            Part::ToolCall {
                id,
                name,
                arguments,
            } => {
                s.push_str(
                    "<div class=\"tool-call\"><span class=\"label\">Tool call</span> <code>",
                );
                marked(s, name);
                s.push_str("</code>");
                if !id.is_empty() {
                    let _ = write!(s, " <small>{}</small>", esc(id));
                }
                s.push_str("<pre class=\"text\">");
                marked(s, arguments);
                s.push_str("</pre></div>");
            }
            Part::ToolResult { id, content } => {
                s.push_str("<div class=\"tool-result\"><span class=\"label\">Tool result</span>");
                if !id.is_empty() {
                    let _ = write!(s, " <small>{}</small>", esc(id));
                }
                s.push_str("<pre class=\"text\">");
                marked(s, content);
                s.push_str("</pre></div>");
            }
            Part::Other { what } => {
                let _ = write!(s, "<div class=\"other\">({})</div>", esc(what));
            }
            Part::Error { text } => {
                s.push_str("<div class=\"error\"><span class=\"label\">Error</span> ");
                marked(s, text);
                s.push_str("</div>");
            }
        }
    }
    s.push_str("</div></div>");
}
