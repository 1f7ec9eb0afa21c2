//! A strict JSON reader that keeps byte spans.
//!
//! `Tape::parse` checks a document against RFC 8259 (no comments, trailing
//! commas, leading zeros, NaN, raw control characters in strings, bad
//! escapes or unpaired surrogates) and records every value, key included, as
//! a node with its byte span: a flat tape, no tree, no string copied. Parts
//! of the document can then be read by key and replaced in place (`Edits`)
//! while every other byte stays as it came.
//!
//! Object members are looked up the way JavaScript and Python read JSON: of
//! duplicate keys, the last one counts.

use std::borrow::Cow;

/// Deeper nesting is refused (and would only be an attack on a parser).
pub const MAX_DEPTH: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    /// An object key; its value is the next node.
    Key,
    String,
    Number,
    Bool,
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Byte span in the source (strings and keys with their quotes).
    pub start: usize,
    pub end: usize,
    /// The index of the first node after this value (after its subtree).
    pub next: usize,
    /// A string or key holds escapes.
    pub escaped: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub at: usize,
    pub message: &'static str,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.message, self.at)
    }
}

/// The nodes of one document; reusable across documents.
#[derive(Debug, Clone, Default)]
pub struct Tape {
    nodes: Vec<Node>,
}

impl Tape {
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, i: usize) -> Option<&Node> {
        self.nodes.get(i)
    }

    /// Parses `src` (the root is node 0).
    pub fn parse(&mut self, src: &str) -> Result<(), Error> {
        self.nodes.clear();
        // About a node per 32 bytes of a chat body: one allocation, not one
        // per doubling; capped, so that a large body of few nodes does not
        // grow the VM's memory (which never shrinks) for nothing.
        self.nodes.reserve((src.len() / 32).min(4096));
        let b = src.as_bytes();
        let mut p = Parser { b, at: 0 };
        // Open containers: the node index of each.
        let mut open: Vec<usize> = Vec::new();
        p.ws();
        loop {
            // A value.
            let at = p.at;
            let Some(&c) = b.get(at) else {
                return Err(p.err("unexpected end of input"));
            };
            match c {
                b'{' | b'[' => {
                    if open.len() >= MAX_DEPTH {
                        return Err(p.err("nested too deep"));
                    }
                    let kind = if c == b'{' { Kind::Object } else { Kind::Array };
                    open.push(self.nodes.len());
                    self.push(kind, at, at, false);
                    p.at += 1;
                    p.ws();
                    let close = if c == b'{' { b'}' } else { b']' };
                    if b.get(p.at) == Some(&close) {
                        p.at += 1;
                        self.close(&mut open, p.at);
                    } else {
                        if c == b'{' {
                            self.key(&mut p)?;
                        }
                        continue;
                    }
                }
                b'"' => {
                    let escaped = p.string()?;
                    self.push(Kind::String, at, p.at, escaped);
                }
                b't' => {
                    p.literal(b"true")?;
                    self.push(Kind::Bool, at, p.at, false);
                }
                b'f' => {
                    p.literal(b"false")?;
                    self.push(Kind::Bool, at, p.at, false);
                }
                b'n' => {
                    p.literal(b"null")?;
                    self.push(Kind::Null, at, p.at, false);
                }
                b'-' | b'0'..=b'9' => {
                    p.number()?;
                    self.push(Kind::Number, at, p.at, false);
                }
                _ => return Err(p.err("expected a value")),
            }
            // After a value: a comma, a closing bracket, or the end.
            loop {
                p.ws();
                let Some(&top) = open.last() else {
                    if p.at != b.len() {
                        return Err(p.err("trailing characters"));
                    }
                    return Ok(());
                };
                let in_object = self.nodes.get(top).map(|n| n.kind) == Some(Kind::Object);
                match (b.get(p.at), in_object) {
                    (Some(b','), _) => {
                        p.at += 1;
                        p.ws();
                        if in_object {
                            self.key(&mut p)?;
                        }
                        break;
                    }
                    (Some(b'}'), true) | (Some(b']'), false) => {
                        p.at += 1;
                        self.close(&mut open, p.at);
                    }
                    (None, _) => return Err(p.err("unexpected end of input")),
                    _ => return Err(p.err("expected , or a closing bracket")),
                }
            }
        }
    }

    fn push(&mut self, kind: Kind, start: usize, end: usize, escaped: bool) {
        let next = self.nodes.len() + 1;
        self.nodes.push(Node {
            kind,
            start,
            end,
            next,
            escaped,
        });
    }

    fn close(&mut self, open: &mut Vec<usize>, end: usize) {
        if let Some(i) = open.pop() {
            let next = self.nodes.len();
            if let Some(n) = self.nodes.get_mut(i) {
                n.end = end;
                n.next = next;
            }
        }
    }

    /// A key and its colon; the value follows.
    fn key(&mut self, p: &mut Parser<'_>) -> Result<(), Error> {
        let at = p.at;
        if p.b.get(at) != Some(&b'"') {
            return Err(p.err("expected a key"));
        }
        let escaped = p.string()?;
        self.push(Kind::Key, at, p.at, escaped);
        p.ws();
        if p.b.get(p.at) != Some(&b':') {
            return Err(p.err("expected :"));
        }
        p.at += 1;
        p.ws();
        Ok(())
    }

    /// The (key, value) node indexes of object `i`.
    pub fn members(&self, i: usize) -> Members<'_> {
        let (at, end) = match self.nodes.get(i) {
            Some(n) if n.kind == Kind::Object => (i + 1, n.next),
            _ => (0, 0),
        };
        Members {
            tape: self,
            at,
            end,
        }
    }

    /// The element node indexes of array `i`.
    pub fn elements(&self, i: usize) -> Elements<'_> {
        let (at, end) = match self.nodes.get(i) {
            Some(n) if n.kind == Kind::Array => (i + 1, n.next),
            _ => (0, 0),
        };
        Elements {
            tape: self,
            at,
            end,
        }
    }

    /// The value of `key` in object `i` (the last one, if repeated).
    pub fn get(&self, src: &str, i: usize, key: &str) -> Option<usize> {
        self.members(i)
            .filter(|&(k, _)| self.str(src, k).is_some_and(|s| s == key))
            .last()
            .map(|(_, v)| v)
    }

    /// Follows a path of keys from node `i`.
    pub fn path(&self, src: &str, mut i: usize, keys: &[&str]) -> Option<usize> {
        for key in keys {
            i = self.get(src, i, key)?;
        }
        Some(i)
    }

    /// The text of a string or key node, unescaped.
    pub fn str<'s>(&self, src: &'s str, i: usize) -> Option<Cow<'s, str>> {
        let n = self.nodes.get(i)?;
        if !matches!(n.kind, Kind::String | Kind::Key) {
            return None;
        }
        let inner = src.get(n.start + 1..n.end - 1)?;
        if n.escaped {
            unescape(inner).map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(inner))
        }
    }

    /// A number node as an unsigned integer.
    pub fn u64(&self, src: &str, i: usize) -> Option<u64> {
        let n = self.nodes.get(i)?;
        if n.kind != Kind::Number {
            return None;
        }
        src.get(n.start..n.end)?.parse().ok()
    }

    pub fn raw<'s>(&self, src: &'s str, i: usize) -> &'s str {
        self.nodes
            .get(i)
            .and_then(|n| src.get(n.start..n.end))
            .unwrap_or("")
    }

    pub fn kind(&self, i: usize) -> Option<Kind> {
        self.nodes.get(i).map(|n| n.kind)
    }
}

pub struct Members<'t> {
    tape: &'t Tape,
    at: usize,
    end: usize,
}

impl Iterator for Members<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        if self.at >= self.end {
            return None;
        }
        let key = self.at;
        let value = key + 1;
        self.at = self.tape.nodes.get(value).map_or(self.end, |n| n.next);
        Some((key, value))
    }
}

pub struct Elements<'t> {
    tape: &'t Tape,
    at: usize,
    end: usize,
}

impl Iterator for Elements<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.at >= self.end {
            return None;
        }
        let i = self.at;
        self.at = self.tape.nodes.get(i).map_or(self.end, |n| n.next);
        Some(i)
    }
}

struct Parser<'a> {
    b: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn err(&self, message: &'static str) -> Error {
        Error {
            at: self.at,
            message,
        }
    }

    fn ws(&mut self) {
        while matches!(self.b.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Error> {
        if self.b.get(self.at..self.at + word.len()) == Some(word) {
            self.at += word.len();
            Ok(())
        } else {
            Err(self.err("expected a value"))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.b.get(self.at), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Result<(), Error> {
        if self.b.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        match self.b.get(self.at) {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.b.get(self.at) == Some(&b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        if matches!(self.b.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.b.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        Ok(())
    }

    /// A string from its opening quote; returns whether it holds escapes.
    fn string(&mut self) -> Result<bool, Error> {
        self.at += 1;
        let mut escaped = false;
        loop {
            // Fast path over plain bytes.
            let rest = self.b.get(self.at..).unwrap_or(&[]);
            let stop = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
            // A control character before it is an error, found below.
            let plain = rest.get(..stop).unwrap_or_default();
            let skip = if plain.iter().fold(false, |any, &c| any | (c < 0x20)) {
                plain.iter().position(|&c| c < 0x20).unwrap_or(stop)
            } else {
                stop
            };
            self.at += skip;
            match self.b.get(self.at) {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.at += 1;
                    match self.b.get(self.at) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.at += 1
                        }
                        Some(b'u') => {
                            let unit = self.hex4()?;
                            if (0xD800..0xDC00).contains(&unit) {
                                // A high surrogate: its low half must follow.
                                if self.b.get(self.at..self.at + 2) != Some(b"\\u") {
                                    return Err(self.err("unpaired surrogate"));
                                }
                                self.at += 1;
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return Err(self.err("unpaired surrogate"));
                                }
                            } else if (0xDC00..0xE000).contains(&unit) {
                                return Err(self.err("unpaired surrogate"));
                            }
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                Some(_) => return Err(self.err("control character in string")),
                None => return Err(self.err("unterminated string")),
            }
        }
    }

    /// `uXXXX` (at the `u`): the code unit.
    fn hex4(&mut self) -> Result<u32, Error> {
        let digits = self
            .b
            .get(self.at + 1..self.at + 5)
            .ok_or_else(|| self.err("invalid escape"))?;
        let mut unit = 0u32;
        for &d in digits {
            let v = (d as char)
                .to_digit(16)
                .ok_or_else(|| self.err("invalid escape"))?;
            unit = unit * 16 + v;
        }
        self.at += 5;
        Ok(unit)
    }
}

/// The string token that starts at byte `at` of `src` (its opening quote),
/// checked as `Tape::parse` checks strings: where it ends (after its closing
/// quote) and whether it holds escapes; `None` when it is not a valid string.
pub fn string_token(src: &str, at: usize) -> Option<(usize, bool)> {
    let b = src.as_bytes();
    if b.get(at) != Some(&b'"') {
        return None;
    }
    let mut p = Parser { b, at };
    let escaped = p.string().ok()?;
    Some((p.at, escaped))
}

/// The text of a validated JSON string body (between its quotes): runs
/// without a backslash are copied whole.
pub fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = memchr::memchr(b'\\', rest.as_bytes()) {
        out.push_str(rest.get(..i)?);
        let esc = rest.get(i + 1..)?;
        let e = *esc.as_bytes().first()?;
        let mut used = 1;
        match e {
            b'"' => out.push('"'),
            b'\\' => out.push('\\'),
            b'/' => out.push('/'),
            b'b' => out.push('\u{8}'),
            b'f' => out.push('\u{c}'),
            b'n' => out.push('\n'),
            b'r' => out.push('\r'),
            b't' => out.push('\t'),
            b'u' => {
                let mut unit = hex(esc.get(1..5)?)?;
                used = 5;
                if (0xD800..0xDC00).contains(&unit) {
                    // `\uXXXX` follows (checked by the reader).
                    let low = hex(esc.get(7..11)?)?;
                    unit = 0x10000 + ((unit - 0xD800) << 10) + low.checked_sub(0xDC00)?;
                    used = 11;
                }
                out.push(char::from_u32(unit)?);
            }
            _ => return None,
        }
        rest = esc.get(used..)?;
    }
    out.push_str(rest);
    Some(out)
}

fn hex(digits: &str) -> Option<u32> {
    u32::from_str_radix(digits, 16)
        .ok()
        .filter(|_| digits.bytes().all(|d| d.is_ascii_hexdigit()))
}

/// Writes `s` as a JSON string (with its quotes).
pub fn write_str(out: &mut String, s: &str) {
    write_escaped(out, s);
}

/// `write_str` into bytes (an event being written out).
pub fn write_str_bytes(out: &mut Vec<u8>, s: &str) {
    write_escaped(out, s);
}

/// The bytes a JSON string escapes: `"`, `\` and control characters.
const ESCAPED: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = b < 0x20 || b == b'"' as usize || b == b'\\' as usize;
        b += 1;
    }
    t
};

/// Where escaped JSON goes: a `String` or the bytes of an event.
trait Sink {
    fn put(&mut self, s: &str);
    fn reserve(&mut self, n: usize);
}

impl Sink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
    fn reserve(&mut self, n: usize) {
        String::reserve(self, n);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
    fn reserve(&mut self, n: usize) {
        Vec::reserve(self, n);
    }
}

fn write_escaped(out: &mut impl Sink, s: &str) {
    out.reserve(s.len() + 2);
    out.put("\"");
    let mut plain = 0;
    let mut buf = [0; 6];
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if !ESCAPED[usize::from(b)] {
            continue;
        }
        // `i` is at an ASCII byte: a character boundary.
        out.put(s.get(plain..i).unwrap_or_default());
        out.put(escape(b, &mut buf));
        plain = i + 1;
    }
    out.put(s.get(plain..).unwrap_or_default());
    out.put("\"");
}

/// How a byte that `ESCAPED` marks is written inside a JSON string.
fn escape(b: u8, buf: &mut [u8; 6]) -> &str {
    let hex = |n: u8| {
        b"0123456789abcdef"
            .get(usize::from(n & 0xf))
            .copied()
            .unwrap_or(b'0')
    };
    match b {
        b'"' => "\\\"",
        b'\\' => "\\\\",
        b'\n' => "\\n",
        b'\r' => "\\r",
        b'\t' => "\\t",
        // The other control characters.
        _ => {
            *buf = [b'\\', b'u', b'0', b'0', hex(b >> 4), hex(b)];
            std::str::from_utf8(buf).unwrap_or_default()
        }
    }
}

/// Replacements of byte spans of one source, applied in order.
#[derive(Debug, Clone, Default)]
pub struct Edits {
    edits: Vec<(usize, usize, String)>,
}

impl Edits {
    pub fn clear(&mut self) {
        self.edits.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.edits.is_empty()
    }

    /// Replaces `start..end` (spans must not overlap).
    pub fn replace(&mut self, start: usize, end: usize, with: String) {
        self.edits.push((start, end, with));
    }

    /// `src` with the edits made, and where each replacement landed.
    pub fn apply_mapped(&mut self, src: &str) -> (String, Vec<(usize, usize)>) {
        let out = self.apply(src);
        let mut delta: isize = 0;
        let mut spans = Vec::with_capacity(self.edits.len());
        let mut at = 0;
        for (start, end, with) in &self.edits {
            if *start < at {
                continue;
            }
            let from = start.saturating_add_signed(delta);
            spans.push((from, from + with.len()));
            delta += with.len() as isize - (end - start) as isize;
            at = *end;
        }
        (out, spans)
    }

    /// Where a position of the source is after the edits (inside a replaced
    /// span: at the same proportion of the replacement).
    pub fn map_position(&self, position: usize) -> usize {
        let mut delta: isize = 0;
        for (start, end, with) in &self.edits {
            if *start >= position {
                break;
            }
            if position < *end {
                let into = (position - start) * with.len() / (end - start).max(1);
                return start.saturating_add_signed(delta) + into.min(with.len());
            }
            delta += with.len() as isize - (end - start) as isize;
        }
        position.saturating_add_signed(delta)
    }

    /// `src` with the edits made.
    pub fn apply(&mut self, src: &str) -> String {
        self.edits.sort_by_key(|e| (e.0, e.1));
        let extra: usize = self.edits.iter().map(|e| e.2.len()).sum();
        let mut out = String::with_capacity(src.len() + extra);
        let mut at = 0;
        for (start, end, with) in &self.edits {
            if *start < at {
                continue;
            }
            out.push_str(src.get(at..*start).unwrap_or(""));
            out.push_str(with);
            at = *end;
        }
        out.push_str(src.get(at..).unwrap_or(""));
        out
    }
}

#[cfg(test)]
mod tests;
