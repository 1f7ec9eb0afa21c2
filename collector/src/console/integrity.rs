//! `/integrity`: the last result of the verification `tracegate verify`
//! runs (the same `ledger::verify`, read-only, with the server's own seal
//! public key), the seals and their times, the signed HEAD, and the
//! retention entries.

use ed25519_dalek::VerifyingKey;
use prost::Message;
use std::fmt::Write;
use std::path::Path;
use std::time::Instant;
use tracegate_proto::v1::ledger_entry::Entry;
use tracegate_proto::v1::{LedgerEntry, Retention};

use super::auth::User;
use super::html::{self, esc, Nav};
use crate::ledger::frame;
use crate::ledger::layout::Layout;
use crate::ledger::seal::{hex, Head, Seal};
use crate::ledger::verify::{self, Report};
use crate::ledger::writer::now_nanos;

/// A frame payload is a `LedgerEntry`; field 2 (tag byte 0x12) is a
/// retention entry (as `verify` reads them).
const RETENTION_TAG: u8 = 0x12;

/// One verification and what the store showed at the time.
#[derive(Debug)]
pub struct Snapshot {
    pub unix_nanos: i64,
    pub secs: f64,
    pub report: Result<Report, String>,
    /// Segment number, and its seal as verified (or why not).
    pub seals: Vec<(u64, Result<Seal, String>)>,
    pub head: Option<Result<Head, String>>,
    pub retention: Vec<Retention>,
}

/// Runs the verification (blocking: it reads the whole store).
pub fn run(data: &Path, key: &VerifyingKey) -> Snapshot {
    let layout = Layout::new(data);
    let started = Instant::now();
    let report = verify::verify(&layout, key).map_err(|e| format!("{e:#}"));
    let secs = started.elapsed().as_secs_f64();
    let seals = layout
        .seals()
        .unwrap_or_default()
        .into_iter()
        .map(|n| {
            let seal = std::fs::read_to_string(layout.seal(n))
                .map_err(|e| e.to_string())
                .and_then(|t| Seal::verify(&t, key));
            (n, seal)
        })
        .collect();
    let head = match std::fs::read_to_string(layout.head()) {
        Ok(t) => Some(Head::verify(&t, key)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(e.to_string())),
    };
    let mut retention = Vec::new();
    for n in layout.segments().unwrap_or_default() {
        let Ok(bytes) = std::fs::read(layout.segment(n)) else {
            continue;
        };
        let Ok(scan) = frame::scan(&bytes) else {
            continue;
        };
        for f in &scan.frames {
            let payload = &bytes[f.payload.clone()];
            if payload.first() != Some(&RETENTION_TAG) {
                continue;
            }
            if let Some(Entry::Retention(r)) =
                LedgerEntry::decode(payload).ok().and_then(|e| e.entry)
            {
                retention.push(r);
            }
        }
    }
    Snapshot {
        unix_nanos: now_nanos(),
        secs,
        report,
        seals,
        head,
        retention,
    }
}

pub fn integrity_page(last: Option<&Snapshot>, user: &User) -> String {
    let mut s = html::start("Store integrity", Nav::Integrity, user);
    s.push_str("<section id=\"verify\"><h2>Last verification</h2>");
    match last {
        None => {
            s.push_str("<p>Not verified yet since the server started (running now; reload).</p>")
        }
        Some(snap) => verify_html(&mut s, snap),
    }
    let _ = write!(
        s,
        "<form id=\"verify-now\" method=\"post\" action=\"/integrity/verify\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\">Verify now</button> <small>read-only: checks every CRC, chain link, seal, \
         signature and retention entry, as <code>tracegate verify</code></small></form></section>",
        esc(&user.csrf)
    );
    if let Some(snap) = last {
        head_html(&mut s, snap);
        seals_html(&mut s, snap);
        retention_html(&mut s, snap);
    }
    html::end(s)
}

fn verify_html(s: &mut String, snap: &Snapshot) {
    let when = html::time(snap.unix_nanos);
    match &snap.report {
        Err(e) => {
            let _ = write!(
                s,
                "<p class=\"error\" role=\"alert\">Verification at <time>{when}</time> could not run: {}</p>",
                esc(e)
            );
        }
        Ok(r) => {
            let ok = r.problems.is_empty();
            let seq = match (r.first_seq, r.last_seq) {
                (Some(a), Some(b)) => format!("sequence {a}..{b}"),
                _ => "no records".into(),
            };
            let _ = write!(
                s,
                "<p class=\"{}\"><strong>{}</strong> at <time>{when}</time> ({:.2} s): {} segments ({} sealed), \
                 {} entries, {seq}, {} segments deleted by retention (seals checked), {:.1} MB.</p>",
                if ok { "done" } else { "error" },
                if ok { "OK" } else { "FAILED" },
                snap.secs,
                r.segments,
                r.sealed,
                r.entries,
                r.retained,
                r.bytes as f64 / 1e6
            );
            if !ok {
                s.push_str("<ul class=\"problems\">");
                for p in &r.problems {
                    let _ = write!(s, "<li>{}</li>", esc(p));
                }
                s.push_str("</ul>");
            }
        }
    }
}

fn head_html(s: &mut String, snap: &Snapshot) {
    s.push_str("<section id=\"head\"><h2>HEAD</h2>");
    match &snap.head {
        None => s.push_str("<p>No HEAD file yet.</p>"),
        Some(Err(e)) => {
            let _ = write!(s, "<p class=\"error\">HEAD does not verify: {}</p>", esc(e));
        }
        Some(Ok(h)) => {
            let _ = write!(
                s,
                "<p>Segment {}, sequence {}, chain <code>{}</code>, signed at <time>{}</time>.</p>",
                h.segment,
                h.sequence,
                hex(&h.chain),
                html::time(h.unix_nanos)
            );
        }
    }
    s.push_str("</section>");
}

fn seals_html(s: &mut String, snap: &Snapshot) {
    let _ = write!(
        s,
        "<section id=\"seals\"><h2>Seals ({})</h2><table><thead><tr><th scope=\"col\">Segment</th>\
         <th scope=\"col\">Records</th><th scope=\"col\">Sequence</th><th scope=\"col\">First</th>\
         <th scope=\"col\">Last</th><th scope=\"col\">Merkle root</th></tr></thead><tbody>",
        snap.seals.len()
    );
    for (n, seal) in snap.seals.iter().rev() {
        match seal {
            Ok(seal) => {
                let _ = write!(
                    s,
                    "<tr><td class=\"num\">{n}</td><td class=\"num\">{}</td><td>{}..{}</td><td><time>{}</time></td>\
                     <td><time>{}</time></td><td><code>{}</code></td></tr>",
                    seal.records,
                    seal.first_seq,
                    seal.last_seq,
                    html::time(seal.first_unix_nanos),
                    html::time(seal.last_unix_nanos),
                    hex(&seal.merkle_root)
                );
            }
            Err(e) => {
                let _ = write!(
                    s,
                    "<tr class=\"error\"><td class=\"num\">{n}</td><td colspan=\"5\">does not verify: {}</td></tr>",
                    esc(e)
                );
            }
        }
    }
    s.push_str("</tbody></table></section>");
}

fn retention_html(s: &mut String, snap: &Snapshot) {
    let _ = write!(
        s,
        "<section id=\"retention\"><h2>Retention entries ({})</h2>",
        snap.retention.len()
    );
    if snap.retention.is_empty() {
        s.push_str("<p>No segment has been deleted by the retention policy.</p>");
    } else {
        s.push_str(
            "<table><thead><tr><th scope=\"col\">Segments</th><th scope=\"col\">Policy</th>\
             <th scope=\"col\">Time</th></tr></thead><tbody>",
        );
        for r in &snap.retention {
            let _ = write!(
                s,
                "<tr><td>{}..{}</td><td>{}</td><td><time>{}</time></td></tr>",
                r.first_segment,
                r.last_segment,
                esc(&r.policy),
                html::time(r.unix_nanos)
            );
        }
        s.push_str("</tbody></table>");
    }
    s.push_str("</section>");
}
