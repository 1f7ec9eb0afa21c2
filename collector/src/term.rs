//! Text from records and approvals, made safe to print on a terminal.
//!
//! Anything a caller, a model, an identity provider or an approver wrote can
//! reach these outputs: a body, a path, a claim, a reason. Printed raw, a
//! carriage return or an escape sequence (`ESC [2K`, `ESC ]…`) would rewrite
//! what an approver reads, and a bidi override (U+202E) would reorder it.
//! Every such character is shown as a visible escape instead: C0 controls
//! (`\r`, `\n`, `\t`, `\x1b`, …), DEL, C1 controls (`\u{9b}`), the bidi
//! embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069), the
//! direction marks (U+200E, U+200F, U+061C) and the line and paragraph
//! separators (U+2028, U+2029). Everything else, backslashes included, is
//! shown as it is, so JSON bodies stay readable.
//!
//! `--json` output stays JSON: serde escapes C0 controls, and `JsonSafe`
//! escapes the rest of the set above as `\uXXXX` (the same JSON value).

use std::borrow::Cow;
use std::fmt;
use std::io;

/// Whether `c` must not reach a terminal as it is.
pub fn is_unsafe(c: char) -> bool {
    c.is_control() // C0, DEL, C1
        || matches!(
            c,
            '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{061c}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

fn escape(c: char, out: &mut impl fmt::Write) -> fmt::Result {
    match c {
        '\r' => out.write_str("\\r"),
        '\n' => out.write_str("\\n"),
        '\t' => out.write_str("\\t"),
        c if (c as u32) < 0x80 => write!(out, "\\x{:02x}", c as u32),
        c => write!(out, "\\u{{{:x}}}", c as u32),
    }
}

/// `s` with every unsafe character escaped (one line: newlines too).
pub fn safe(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if is_unsafe(c) {
            let _ = escape(c, &mut out);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Displays a string terminal-safe: `format!("{}", Safe(&text))`.
pub struct Safe<'a>(pub &'a str);

impl fmt::Display for Safe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(is_unsafe) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or('\0');
            escape(c, f)?;
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// A serde_json formatter that also writes DEL, C1 controls and the bidi
/// and separator characters as `\uXXXX` escapes (serde_json escapes C0
/// controls itself), so JSON printed to a terminal is inert too.
#[derive(Default)]
pub struct JsonSafe;

impl serde_json::ser::Formatter for JsonSafe {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut rest = fragment;
        while let Some(at) = rest.find(is_unsafe) {
            writer.write_all(&rest.as_bytes()[..at])?;
            let c = rest[at..].chars().next().unwrap_or('\0');
            // All of the set is in the Basic Multilingual Plane.
            write!(writer, "\\u{:04x}", c as u32)?;
            rest = &rest[at + c.len_utf8()..];
        }
        writer.write_all(rest.as_bytes())
    }
}

/// Writes `value` as one line of terminal-safe JSON.
pub fn write_json<T: serde::Serialize + ?Sized>(
    out: &mut impl io::Write,
    value: &T,
) -> io::Result<()> {
    let mut ser = serde_json::Serializer::with_formatter(&mut *out, JsonSafe);
    value.serialize(&mut ser).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn controls_and_bidi_are_shown_escaped() {
        assert_eq!(safe("plain \\n text"), "plain \\n text");
        assert!(matches!(safe("plain"), Cow::Borrowed(_)));
        assert_eq!(safe("a\x1b[2K\rb"), "a\\x1b[2K\\rb");
        assert_eq!(safe("x\ny\tz\u{7f}"), "x\\ny\\tz\\x7f");
        assert_eq!(safe("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(safe("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(safe("\u{2066}\u{2069}"), "\\u{2066}\\u{2069}");
        assert_eq!(safe("é ü 日本 🙂"), "é ü 日本 🙂");
        assert_eq!(
            format!("{}", Safe("a\x1b]0;title\x07b")),
            "a\\x1b]0;title\\x07b"
        );
    }

    #[test]
    fn json_stays_the_same_value() {
        let v = serde_json::json!({"t": "a\u{202e}b\u{85}c\x1b\r\u{7f}", "k\u{2066}": 1});
        let mut out = Vec::new();
        write_json(&mut out, &v).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.chars().any(is_unsafe), "{text}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), v);
    }

    proptest! {
        #[test]
        fn nothing_unsafe_gets_through(s in any::<String>()) {
            let shown = safe(&s);
            prop_assert!(!shown.chars().any(is_unsafe));
            prop_assert_eq!(format!("{}", Safe(&s)), shown.as_ref());
            let mut out = Vec::new();
            write_json(&mut out, &s).unwrap();
            let text = String::from_utf8(out).unwrap();
            prop_assert!(!text.chars().any(is_unsafe));
            prop_assert_eq!(serde_json::from_str::<String>(&text).unwrap(), s);
        }
    }
}
