//! HTML written by hand: every text that comes from a record, an approval,
//! a claim or a query is escaped (`esc`), so record text is never markup.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::fmt::Write;

use super::auth::User;
use crate::view::conversation::Text;

/// `s` escaped for HTML text and double-quoted attribute values.
pub fn esc(s: &str) -> Esc<'_> {
    Esc(s, &['&', '<', '>', '"', '\'', '\0'])
}

/// `s` escaped for HTML text only (element content, never an attribute):
/// quotes stay as they are, which keeps JSON in a `<pre>` a third smaller.
pub fn esc_text(s: &str) -> Esc<'_> {
    Esc(s, &['&', '<', '>', '\0'])
}

pub struct Esc<'a>(&'a str, &'static [char]);

impl std::fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(self.1) {
            f.write_str(&rest[..at])?;
            let c = rest.as_bytes()[at];
            f.write_str(match c {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                b'\'' => "&#39;",
                _ => "\u{fffd}",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// Percent-encodes `s` for a URL path segment or query value.
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Text with its mask placeholders in `<mark class="masked">`.
pub fn marked(out: &mut String, text: &Text) {
    for (piece, masked) in text.segments() {
        if masked {
            let _ = write!(out, "<mark class=\"masked\">{}</mark>", esc_text(piece));
        } else {
            let _ = write!(out, "{}", esc_text(piece));
        }
    }
}

/// Which part of the console a page belongs to (the current nav entry).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Sessions,
    Inbox,
    Integrity,
}

/// The page's start: head, header (nav, user, sign-out), `<main>`.
pub fn start(title: &str, nav: Nav, user: &User) -> String {
    let mut s = String::with_capacity(16 * 1024);
    let _ = write!(
        s,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · tracegate</title><link rel=\"stylesheet\" href=\"/assets/console.css\"></head>\
         <body><a class=\"skip\" href=\"#main\">Skip to content</a><header><strong>tracegate</strong><nav>",
        esc(title)
    );
    for (which, href, label) in [
        (Nav::Sessions, "/sessions", "Sessions"),
        (Nav::Inbox, "/inbox", "Approval inbox"),
        (Nav::Integrity, "/integrity", "Integrity"),
    ] {
        let current = if which == nav {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(s, "<a href=\"{href}\"{current}>{label}</a>");
    }
    let _ = write!(
        s,
        "</nav><span id=\"user\">{}</span>\
         <form id=\"logout\" method=\"post\" action=\"/auth/logout\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Sign out</button></form>\
         </header><main id=\"main\"><h1>{}</h1>",
        esc(&user.display),
        esc(&user.csrf),
        esc(title)
    );
    s
}

pub fn end(mut s: String) -> String {
    s.push_str("</main></body></html>");
    s
}

/// A page response: HTML, not cached, framed by nobody, scripts from
/// nowhere but the console itself (it ships none).
pub fn page(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A page holding only a message (an error, a refusal).
pub fn message(status: StatusCode, title: &str, nav: Nav, user: &User, text: &str) -> Response {
    let mut s = start(title, nav, user);
    let _ = write!(s, "<p class=\"error\" role=\"alert\">{}</p>", esc(text));
    page(status, end(s))
}

/// `2026-11-25T10:00:00.000Z`, or `-` (as `replay` prints it).
pub(crate) use crate::view::time;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_marks() {
        assert_eq!(
            esc("<script>&\"'</script>").to_string(),
            "&lt;script&gt;&amp;&quot;&#39;&lt;/script&gt;"
        );
        let mut s = String::new();
        marked(&mut s, &Text::new("<b>[EMAIL_1]</b>"));
        assert_eq!(
            s,
            "&lt;b&gt;<mark class=\"masked\">[EMAIL_1]</mark>&lt;/b&gt;"
        );
        assert_eq!(url("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(esc_text("<\"a\" & b>").to_string(), "&lt;\"a\" &amp; b&gt;");
    }
}
