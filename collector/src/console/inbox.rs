//! `/inbox`: pending approvals, and the approvers' decisions on them
//! through the approval service's own decision path
//! (`Service::decide_as`: approver rules, no self-approval, quorum).

use std::fmt::Write;

use super::auth::User;
use super::html::{self, esc, url, Nav};
use crate::approvals::book::Approval;
use crate::view::conversation::Text;

/// What the page says above the list after a decision or a refusal.
pub enum Flash<'a> {
    None,
    Done(&'a str),
    Refused(&'a str),
}

/// `4m 10s`, `1h 2m`, or `expired`.
fn time_left(nanos: i64) -> String {
    if nanos <= 0 {
        return "expired".into();
    }
    let s = nanos / 1_000_000_000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

/// `pending`: the approvals still undecided (`Service::pending`).
pub fn inbox_page(pending: &[Approval], user: &User, now: i64, flash: Flash) -> String {
    let mut s = html::start("Approval inbox", Nav::Inbox, user);
    match flash {
        Flash::None => {}
        Flash::Done(text) => {
            let _ = write!(s, "<p class=\"done\" role=\"status\">{}</p>", esc(text));
        }
        Flash::Refused(text) => {
            let _ = write!(s, "<p class=\"error\" role=\"alert\">{}</p>", esc(text));
        }
    }
    let _ = write!(
        s,
        "<p class=\"count\">{} pending (reload to see new ones)</p>\
         <table id=\"inbox\"><thead><tr><th scope=\"col\">Request</th><th scope=\"col\">Requester</th>\
         <th scope=\"col\">Risk</th><th scope=\"col\">Reasons</th><th scope=\"col\">Excerpt (masked)</th>\
         <th scope=\"col\">Time left</th><th scope=\"col\">Decision</th></tr></thead><tbody>",
        pending.len()
    );
    for a in pending {
        let r = &a.request;
        let who = if r.requester.issuer.is_empty() {
            r.requester.subject.clone()
        } else {
            format!("{} ({})", r.requester.subject, r.requester.issuer)
        };
        let _ = write!(
            s,
            "<tr data-approval=\"{id}\"><td><code>{id}</code><br><time>{created}</time><br>\
             <code>{method} {path}</code><br>session <a href=\"/sessions/{sess_url}\">{sess}</a></td>\
             <td>{who}</td><td class=\"num\">{risk} ≥ {threshold}</td><td><ul class=\"reasons\">",
            id = esc(&a.id),
            created = html::time(a.created_unix_nanos),
            method = esc(&r.method),
            path = esc(&r.path),
            sess_url = url(&r.session_id),
            sess = esc(&r.session_id),
            who = esc(&who),
            risk = r.risk,
            threshold = r.threshold,
        );
        for reason in &r.reasons {
            let _ = write!(
                s,
                "<li>{} {}{}{}</li>",
                esc(&reason.kind),
                esc(&reason.name),
                if reason.count > 1 {
                    format!(" ×{}", reason.count)
                } else {
                    String::new()
                },
                if reason.risk > 0 {
                    format!(" (+{})", reason.risk)
                } else {
                    String::new()
                }
            );
        }
        s.push_str("</ul></td><td><div class=\"text excerpt\">");
        html::marked(&mut s, &Text::new(r.excerpt.clone()));
        let _ = write!(
            s,
            "</div></td><td>{}</td><td>",
            time_left(a.expires_unix_nanos - now)
        );
        if a.approvals_required > 1 {
            let _ = write!(
                s,
                "<p>{} of {} approvals{}</p>",
                a.approvers.len(),
                a.approvals_required,
                if a.approvers.is_empty() {
                    String::new()
                } else {
                    let names: Vec<&str> =
                        a.approvers.iter().map(|d| d.who.display.as_str()).collect();
                    format!(" ({})", esc(&names.join(", ")))
                }
            );
        }
        let _ = write!(
            s,
            "<form method=\"post\" action=\"/inbox/{}\" class=\"decide\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label>Reason <textarea name=\"reason\" rows=\"2\" required></textarea></label>\
             <button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button> \
             <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form></td></tr>",
            url(&a.id),
            esc(&user.csrf)
        );
    }
    s.push_str("</tbody></table>");
    html::end(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_reads() {
        assert_eq!(time_left(0), "expired");
        assert_eq!(time_left(59_000_000_000), "59s");
        assert_eq!(time_left(250_000_000_000), "4m 10s");
        assert_eq!(time_left(3_720_000_000_000), "1h 2m");
    }
}
