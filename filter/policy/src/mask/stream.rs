//! Masking text that arrives in pieces (SSE deltas) with a hold-back window.
//!
//! The invariant, checked by a property test over every split: the
//! concatenation of what `push` and `finish` return equals masking the whole
//! text at once. Text is released once it is more than `window` bytes behind
//! the newest byte and no finding in progress reaches back over it, so a
//! secret split across pieces is still seen whole; a finding that runs to the
//! end of what has arrived (a PEM key without its END line yet) holds
//! everything from its start. The delay a piece can suffer is bounded by the
//! window plus 64 bytes (text is released in pieces of at least 64 bytes or
//! the window, whichever is smaller, so
//! the window is not scanned again for every small delta), plus the finding
//! that holds it.

use super::{Hits, Masker, Tokens};
use crate::detect::Finding;

/// Bytes of already-released text kept as left context, so `\b` and the
/// `password:` before a value see what they would in the whole text.
const CONTEXT: usize = 128;

/// Text is released in pieces of at least this many bytes (at most the
/// window; or at the end).
const MIN_RELEASE: usize = 64;

#[derive(Debug, Clone)]
pub struct StreamMasker {
    window: usize,
    pending: String,
    context: String,
    findings: Vec<Finding>,
}

impl StreamMasker {
    pub fn new(window: usize) -> Self {
        Self {
            window,
            pending: String::new(),
            context: String::new(),
            findings: Vec::new(),
        }
    }

    /// Bytes held back right now.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Takes the next piece; returns the masked text that can go out now.
    pub fn push(
        &mut self,
        m: &Masker,
        piece: &str,
        tokens: &mut Tokens,
        hits: &mut Hits,
    ) -> String {
        self.pending.push_str(piece);
        self.release(m, false, tokens, hits)
    }

    /// The end of the text: everything left, masked.
    pub fn finish(&mut self, m: &Masker, tokens: &mut Tokens, hits: &mut Hits) -> String {
        self.release(m, true, tokens, hits)
    }

    fn release(&mut self, m: &Masker, all: bool, tokens: &mut Tokens, hits: &mut Hits) -> String {
        if self.pending.is_empty() {
            return String::new();
        }
        // Scanning costs the whole window each time: wait until a useful
        // amount can be released (this adds at most MIN_RELEASE to the delay).
        if !all && self.pending.len() < self.window + MIN_RELEASE.min(self.window) {
            return String::new();
        }
        let offset = self.context.len();
        let scan = format!("{}{}", self.context, self.pending);
        m.catalogue().find(&scan, &mut self.findings);
        // Findings in pending's coordinates; one reaching back into released
        // text could only be longer than the window: it is left as it was.
        let mut findings: Vec<Finding> = self
            .findings
            .iter()
            .filter(|f| f.start >= offset)
            .map(|f| Finding {
                start: f.start - offset,
                end: f.end - offset,
                detector: f.detector,
            })
            .collect();

        let mut cut = if all {
            self.pending.len()
        } else {
            floor_char_boundary(
                &self.pending,
                self.pending.len().saturating_sub(self.window),
            )
        };
        if let Some(f) = findings.iter().find(|f| f.end > cut) {
            if f.start < cut {
                cut = f.start;
            }
        }
        if cut == 0 {
            return String::new();
        }
        findings.retain(|f| f.end <= cut);
        let released = m.apply(&self.pending[..cut], &findings, tokens, hits);

        let mut context = std::mem::take(&mut self.context);
        context.push_str(&self.pending[..cut]);
        let keep_from = floor_char_boundary(&context, context.len().saturating_sub(CONTEXT));
        self.context = context[keep_from..].to_string();
        self.pending.drain(..cut);
        released
    }
}

/// Puts a response's placeholders back as pieces arrive: text from an
/// unclosed `[` on is held until its `]` (or until it is longer than any
/// placeholder).
#[derive(Debug, Clone, Default)]
pub struct StreamRestorer {
    pending: String,
}

impl StreamRestorer {
    pub fn push(&mut self, tokens: &Tokens, piece: &str) -> String {
        self.pending.push_str(piece);
        let max = tokens.max_token_len();
        let hold = match self.pending.rfind('[') {
            Some(i) if !self.pending[i..].contains(']') && self.pending.len() - i < max => i,
            _ => self.pending.len(),
        };
        let ready: String = self.pending.drain(..hold).collect();
        tokens.restore(&ready).unwrap_or(ready)
    }

    pub fn finish(&mut self, tokens: &Tokens) -> String {
        let rest = std::mem::take(&mut self.pending);
        tokens.restore(&rest).unwrap_or(rest)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
