//! Events that repeat the shape of an earlier one, told apart without
//! parsing them.
//!
//! In a stream, event after event is the same JSON with another piece of
//! text in it (and, for the Responses API, another `sequence_number`). When
//! an event has been read in full (tape, channel, every other string, key
//! and number judged and found clean), its bytes around the text's string
//! token are kept as a template: literal runs, with holes where its numbers
//! were (other than the indexes that pick the channel). A later event that
//! is the same literal runs, an integer in each hole and one valid JSON
//! string token where the text was, has the same parse: a string token ends
//! at its first unescaped quote, and an integer at the first byte that is
//! not a digit, which each run after a hole starts with. Its strings, keys
//! and numbers are then the template's (judged clean, and judging is a pure
//! function of the text) and its integers, which are judged as they come;
//! its text goes to the template's channel.

use std::ops::Range;

use super::Channel;
use crate::json::{Kind, Tape};

/// Number members that pick the channel (or the choice, or the tool call):
/// never holes.
const PICKS: [&str; 4] = ["index", "output_index", "content_index", "summary_index"];

/// Templates kept per stream (an Anthropic answer alternates thinking,
/// text and tool input blocks).
pub(super) const KEEP: usize = 4;

#[derive(Debug, Clone)]
pub(super) struct Template {
    /// The event's other fields, which must come again the same.
    pub comments: Vec<String>,
    pub event: Option<String>,
    pub id: Option<String>,
    pub retry: Option<String>,
    /// The data before the text's string token, and after it.
    before: Part,
    after: Part,
    pub channel: Channel,
    /// The channel's `extra` members (Responses `item_id`, judged).
    pub extra: String,
}

/// Literal bytes with holes for integers.
#[derive(Debug, Clone, Default)]
struct Part {
    text: String,
    /// Offsets into `text` where an integer was cut out, ascending.
    holes: Vec<usize>,
}

/// Where an event's data matches a template.
#[derive(Debug, Clone, Default)]
pub(super) struct Fit {
    /// The text's string token, quotes included.
    pub token: Range<usize>,
    pub escaped: bool,
    /// The integers in the holes.
    pub numbers: Vec<Range<usize>>,
}

impl Part {
    /// `src[from..to]` with every hole number node in it cut out.
    fn cut(src: &str, tape: &Tape, from: usize, to: usize) -> Option<Part> {
        let mut part = Part::default();
        let mut at = from;
        for (i, n) in tape.nodes().iter().enumerate() {
            if n.kind != Kind::Number || n.start < from || n.end > to {
                continue;
            }
            let picks = i
                .checked_sub(1)
                .filter(|&k| tape.kind(k) == Some(Kind::Key))
                .and_then(|k| tape.str(src, k))
                .is_some_and(|k| PICKS.contains(&k.as_ref()));
            if picks || !integer(src.get(n.start..n.end)?) {
                continue;
            }
            part.text.push_str(src.get(at..n.start)?);
            part.holes.push(part.text.len());
            at = n.end;
        }
        part.text.push_str(src.get(at..to)?);
        Some(part)
    }

    /// Matches `data` from `*at`; pushes the holes' integers.
    fn fit(&self, data: &str, at: &mut usize, numbers: &mut Vec<Range<usize>>) -> bool {
        let mut from = 0;
        for &hole in &self.holes {
            let Some(run) = self.text.get(from..hole) else {
                return false;
            };
            if !data.get(*at..).is_some_and(|d| d.starts_with(run)) {
                return false;
            }
            *at += run.len();
            let n = integer_len(data.as_bytes().get(*at..).unwrap_or(&[]));
            if n == 0 {
                return false;
            }
            numbers.push(*at..*at + n);
            *at += n;
            from = hole;
        }
        let Some(run) = self.text.get(from..) else {
            return false;
        };
        if !data.get(*at..).is_some_and(|d| d.starts_with(run)) {
            return false;
        }
        *at += run.len();
        true
    }
}

/// A JSON integer: `0` or a digit 1-9 and more digits.
fn integer(s: &str) -> bool {
    !s.is_empty() && integer_len(s.as_bytes()) == s.len()
}

/// The length of the JSON integer (no sign, fraction or exponent) `b`
/// starts with; 0 when none. A number token that goes on after it (`01`,
/// `1.5`) leaves a byte that the run after the hole does not start with.
fn integer_len(b: &[u8]) -> usize {
    match b.first() {
        Some(b'0') => 1,
        Some(b'1'..=b'9') => b.iter().take_while(|c| c.is_ascii_digit()).count(),
        _ => 0,
    }
}

impl Template {
    /// The template of an event whose data `src` (read into `tape`) holds
    /// one channel text at string node `text`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        src: &str,
        tape: &Tape,
        text: usize,
        comments: &[String],
        event: Option<&str>,
        id: Option<&str>,
        retry: Option<&str>,
        channel: Channel,
        extra: String,
    ) -> Option<Template> {
        let n = tape.node(text).filter(|n| n.kind == Kind::String)?;
        Some(Template {
            comments: comments.to_vec(),
            event: event.map(str::to_string),
            id: id.map(str::to_string),
            retry: retry.map(str::to_string),
            before: Part::cut(src, tape, 0, n.start)?,
            after: Part::cut(src, tape, n.end, src.len())?,
            channel,
            extra,
        })
    }

    /// Whether the fields other than data are the template's.
    pub fn same_fields(
        &self,
        comments: &[String],
        event: Option<&str>,
        id: Option<&str>,
        retry: Option<&str>,
    ) -> bool {
        self.comments == comments
            && self.event.as_deref() == event
            && self.id.as_deref() == id
            && self.retry.as_deref() == retry
    }

    /// Where `data` fits this template, if it does.
    pub fn fit(&self, data: &str, fit: &mut Fit) -> bool {
        fit.numbers.clear();
        let mut at = 0;
        if !self.before.fit(data, &mut at, &mut fit.numbers) {
            return false;
        }
        let Some((end, escaped)) = crate::json::string_token(data, at) else {
            return false;
        };
        fit.token = at..end;
        fit.escaped = escaped;
        let mut at = end;
        self.after.fit(data, &mut at, &mut fit.numbers) && at == data.len()
    }
}
