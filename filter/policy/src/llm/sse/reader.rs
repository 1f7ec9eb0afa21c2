//! Server-sent events as the WHATWG HTML standard defines the stream: lines
//! end in CRLF, LF or a lone CR; a blank line ends an event; `data:` may or
//! may not have a space after the colon (one is removed); lines starting
//! with `:` are comments; `event`, `id` and `retry` are fields too, and a
//! leading byte-order mark is dropped. Events are written back out in one
//! canonical form (LF line ends, `field: value`), so what goes on is exactly
//! what was read and judged.

/// One event as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// Comment lines (without their colon).
    pub comments: Vec<String>,
    pub event: Option<String>,
    pub id: Option<String>,
    pub retry: Option<String>,
    /// `data` lines joined with `\n`; `None` when there was no data line.
    pub data: Option<String>,
}

impl Event {
    /// No field at all (a blank line alone dispatches nothing).
    fn is_empty(&self) -> bool {
        self.comments.is_empty()
            && self.event.is_none()
            && self.id.is_none()
            && self.retry.is_none()
            && self.data.is_none()
    }

    /// Writes the event in canonical form, with `data` in place of its own.
    pub fn write(&self, data: Option<&str>, out: &mut Vec<u8>) {
        self.write_fields(out);
        if let Some(data) = data {
            out.extend_from_slice(b"data: ");
            data_lines(data, out);
            out.push(b'\n');
        }
        out.push(b'\n');
    }

    /// Writes the event with `before`, then `text` as a JSON string, then
    /// `after` as its data (a templated event whose text changed).
    pub fn write_around(&self, before: &str, text: &str, after: &str, out: &mut Vec<u8>) {
        self.write_fields(out);
        out.extend_from_slice(b"data: ");
        data_lines(before, out);
        // Escaped, the text has no line break of its own.
        crate::json::write_str_bytes(out, text);
        data_lines(after, out);
        out.extend_from_slice(b"\n\n");
    }

    fn write_fields(&self, out: &mut Vec<u8>) {
        for c in &self.comments {
            out.push(b':');
            out.extend_from_slice(c.as_bytes());
            out.push(b'\n');
        }
        for (name, value) in [
            ("id", &self.id),
            ("retry", &self.retry),
            ("event", &self.event),
        ] {
            if let Some(v) = value {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(v.as_bytes());
                out.push(b'\n');
            }
        }
    }
}

/// Each line of an event's data is a `data:` line of its own.
fn data_lines(part: &str, out: &mut Vec<u8>) {
    let mut rest = part.as_bytes();
    while let Some(at) = memchr::memchr(b'\n', rest) {
        out.extend_from_slice(rest.get(..at).unwrap_or_default());
        out.extend_from_slice(b"\ndata: ");
        rest = rest.get(at + 1..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
}

/// Why a stream can no longer be passed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broken {
    NotUtf8,
    EventTooLarge(usize),
    /// An event calls a tool the caller's access rule does not allow.
    ToolDenied(String),
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::NotUtf8 => write!(f, "the event stream is not UTF-8"),
            Broken::EventTooLarge(max) => write!(
                f,
                "an event of the stream exceeds {max} bytes (inspection.stream_max_event_bytes)"
            ),
            Broken::ToolDenied(tool) => {
                write!(f, "the answer calls tool {tool:?}, which is not allowed")
            }
        }
    }
}

/// Buffers kept for reuse: a chunk often completes several events before
/// the first is written out and recycled, so one spare buffer is not enough.
/// At most 64 KiB per stream stay allocated this way.
const SPARE: usize = 16;
/// Larger buffers (an unusually big event) are not kept.
const SPARE_BYTES: usize = 4 << 10;

/// `value` in a spare buffer, if there is one.
fn reuse(spare: &mut Vec<String>, value: &str) -> String {
    match spare.pop() {
        Some(mut s) => {
            s.clear();
            s.push_str(value);
            s
        }
        None => value.to_string(),
    }
}

/// Cuts a byte stream into events; holds at most one event's bytes.
#[derive(Debug, Clone, Default)]
pub struct Reader {
    line: Vec<u8>,
    /// The last line ended in CR: a LF right after it belongs to it.
    after_cr: bool,
    /// No line has been completed yet (a BOM may start the first).
    first: bool,
    pending: Event,
    /// Buffers of events already written out, reused (at most `SPARE`).
    spare: Vec<String>,
    /// Bytes of the event being read, its partial line included.
    size: usize,
    started: bool,
}

impl Reader {
    /// Reads `chunk`, appending every event it completes.
    pub fn push(
        &mut self,
        chunk: &[u8],
        max_event: usize,
        events: &mut Vec<Event>,
    ) -> Result<(), Broken> {
        if !self.started {
            self.started = true;
            self.first = true;
        }
        let mut rest = chunk;
        if self.after_cr {
            if let Some(tail) = rest.strip_prefix(b"\n") {
                rest = tail;
            }
            self.after_cr = false;
        }
        while !rest.is_empty() {
            let Some(at) = memchr::memchr2(b'\n', b'\r', rest) else {
                self.grow(rest.len(), max_event)?;
                self.line.extend_from_slice(rest);
                return Ok(());
            };
            self.grow(at, max_event)?;
            let (line, tail) = rest.split_at(at);
            let cr = tail.first() == Some(&b'\r');
            rest = tail.get(1..).unwrap_or_default();
            if cr {
                match rest.first() {
                    Some(b'\n') => rest = rest.get(1..).unwrap_or_default(),
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.line.is_empty() {
                // The whole line is in this chunk: read in place.
                self.line_str(line, events)?;
            } else {
                self.line.extend_from_slice(line);
                self.line_done(events)?;
            }
        }
        Ok(())
    }

    /// Bytes of the event being read.
    pub fn buffered(&self) -> usize {
        self.line.len()
            + self.pending.data.as_ref().map_or(0, String::len)
            + self.pending.comments.iter().map(String::len).sum::<usize>()
    }

    /// The end of the stream: a last event left without its blank line is
    /// completed (and judged like any other).
    pub fn finish(&mut self, events: &mut Vec<Event>) -> Result<(), Broken> {
        if !self.line.is_empty() {
            self.line_done(events)?;
        }
        if !self.pending.is_empty() {
            events.push(std::mem::take(&mut self.pending));
        }
        self.size = 0;
        Ok(())
    }

    fn grow(&mut self, n: usize, max_event: usize) -> Result<(), Broken> {
        self.size += n;
        if self.size > max_event {
            // Nothing more is kept: the stream ends here.
            self.line = Vec::new();
            self.pending = Event::default();
            return Err(Broken::EventTooLarge(max_event));
        }
        Ok(())
    }

    fn line_done(&mut self, events: &mut Vec<Event>) -> Result<(), Broken> {
        // The line buffer keeps its capacity for the next line.
        let line = std::mem::take(&mut self.line);
        let done = self.line_str(&line, events);
        self.line = line;
        self.line.clear();
        done
    }

    fn line_str(&mut self, bytes: &[u8], events: &mut Vec<Event>) -> Result<(), Broken> {
        let mut line = std::str::from_utf8(bytes).map_err(|_| Broken::NotUtf8)?;
        if std::mem::take(&mut self.first) {
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.is_empty() {
            // A blank line: the event is complete.
            let event = std::mem::take(&mut self.pending);
            self.size = 0;
            if !event.is_empty() {
                events.push(event);
            }
            return Ok(());
        }
        let e = &mut self.pending;
        if let Some(comment) = line.strip_prefix(':') {
            e.comments.push(comment.to_string());
            return Ok(());
        }
        let (name, value) = match line.strip_prefix("data:") {
            // Most lines: no search for the colon.
            Some(value) => ("data", value.strip_prefix(' ').unwrap_or(value)),
            None => match line.find(':') {
                Some(i) => {
                    let value = &line[i + 1..];
                    (&line[..i], value.strip_prefix(' ').unwrap_or(value))
                }
                None => (line, ""),
            },
        };
        match name {
            "data" => match &mut e.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => e.data = Some(reuse(&mut self.spare, value)),
            },
            "event" => e.event = Some(reuse(&mut self.spare, value)),
            "id" if !value.contains('\0') => e.id = Some(value.to_string()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                e.retry = Some(value.to_string());
            }
            // Other fields are ignored by every reader, so they are dropped.
            _ => {}
        }
        Ok(())
    }

    /// Takes back an event's buffers once it has been written out, for the
    /// events still to come.
    pub fn recycle(&mut self, ev: Event) {
        for s in [ev.data, ev.event].into_iter().flatten() {
            if self.spare.len() < SPARE && s.capacity() <= SPARE_BYTES {
                self.spare.push(s);
            }
        }
    }
}
