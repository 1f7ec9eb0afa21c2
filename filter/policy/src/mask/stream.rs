//! Masking text that arrives in pieces (SSE deltas), holding back only what
//! could still become a secret.
//!
//! After each piece, every detector's anchored DFA says which positions
//! could still start a match once more text arrives (`detect::live`); the
//! text before the earliest such position is decided for good and released,
//! masked exactly as masking the whole text would mask it. Only that tail is
//! held: plain prose waits at most for the word in progress (it could be an
//! e-mail's local part), a key for its last character.
//!
//! Invariants (property tests): the concatenation of what `push` and
//! `finish` return equals masking the whole text at once, at every split;
//! and no released text could be changed by bytes arriving later.
//!
//! A candidate that outgrows `hold_max` bytes (a PEM block that never ends)
//! is not waited for: the held text is masked whole with that detector's
//! operator, released, counted in `Hits::stream_holds_exceeded`, and the
//! text that continues the same candidate is dropped until it ends. Memory
//! per stream stays within `hold_max` plus one piece.

use super::{Hits, Masker, Tokens};
use crate::detect::live::Tracks;
use crate::detect::{Finding, Match};

#[derive(Debug, Clone)]
pub struct StreamMasker {
    hold_max: usize,
    /// The text from absolute position `base`: one character of context
    /// before `released` (what `\b` and `^` look at), then the held text.
    buf: String,
    base: usize,
    /// Everything before this absolute position has been returned.
    released: usize,
    tracks: Tracks,
    /// A candidate of this detector outgrew the hold: its text is dropped
    /// until it ends.
    cut_off: Option<usize>,
    matches: Vec<Match>,
    findings: Vec<Finding>,
}

impl StreamMasker {
    pub fn new(hold_max: usize) -> Self {
        Self {
            hold_max,
            buf: String::new(),
            base: 0,
            released: 0,
            tracks: Tracks::default(),
            cut_off: None,
            matches: Vec::new(),
            findings: Vec::new(),
        }
    }

    /// Bytes held back right now.
    pub fn held(&self) -> usize {
        self.base + self.buf.len() - self.released
    }

    /// Takes the next piece; returns the masked text that can go out now.
    pub fn push(
        &mut self,
        m: &Masker,
        piece: &str,
        tokens: &mut Tokens,
        hits: &mut Hits,
    ) -> String {
        self.buf.push_str(piece);
        let live = m.catalogue().live();
        if let Some(detector) = self.cut_off {
            let Some(ended) =
                live.follow(&mut self.tracks, detector, self.buf.as_bytes(), self.base)
            else {
                // Still the same over-long candidate: dropped.
                self.released = self.end();
                self.compact();
                return String::new();
            };
            // It ended: what belonged to its match is dropped too, the rest
            // is judged afresh.
            self.released = self.released.max(ended.unwrap_or(0)).min(self.end());
            self.cut_off = None;
            live.restart(&mut self.tracks, self.released);
        }
        let hold = live.advance(&mut self.tracks, self.buf.as_bytes(), self.base);
        let end = self.end();
        let from = self.index(self.released);
        let mut cut =
            floor_char_boundary(&self.buf, self.index(hold.from.clamp(self.released, end)));
        let mut out = if self.tracks.matched.iter().any(|&s| s < self.position(cut)) {
            let catalogue = m.catalogue();
            catalogue.matches(&self.buf, from, &mut self.matches);
            // A match that reaches over the cut holds from its start (and
            // may pull the cut back over another one). Matches that failed
            // their checks count too: the search resumes after them.
            while let Some(start) = self
                .matches
                .iter()
                .filter(|x| x.start < cut && x.end > cut)
                .map(|x| x.start)
                .min()
            {
                cut = start;
            }
            self.findings.clear();
            self.findings.extend(
                self.matches
                    .iter()
                    .filter(|x| x.end <= cut)
                    .filter_map(|x| x.finding),
            );
            catalogue.resolve(&mut self.findings);
            for f in &mut self.findings {
                f.start -= from;
                f.end -= from;
            }
            m.apply(&self.buf[from..cut], &self.findings, tokens, hits)
        } else {
            self.buf[from..cut].to_string()
        };
        let cut_at = self.position(cut);
        self.tracks.matched.retain(|&s| s >= cut_at);

        if end - cut_at > self.hold_max {
            // Not waited for any longer: masked whole, never released raw.
            let detector = hold.detector.unwrap_or(0);
            let held = Finding {
                start: 0,
                end: self.buf.len() - cut,
                detector,
            };
            out.push_str(&m.apply(&self.buf[cut..], &[held], tokens, hits));
            hits.stream_holds_exceeded += 1;
            self.released = end;
            match hold.detector {
                Some(d) => self.cut_off = Some(d),
                None => live.restart(&mut self.tracks, end),
            }
        } else {
            self.released = cut_at;
        }
        self.compact();
        out
    }

    /// The end of the text: everything left, masked.
    pub fn finish(&mut self, m: &Masker, tokens: &mut Tokens, hits: &mut Hits) -> String {
        let from = self.index(self.released);
        let out = if self.cut_off.is_some() || from >= self.buf.len() {
            String::new()
        } else {
            let catalogue = m.catalogue();
            catalogue.matches(&self.buf, from, &mut self.matches);
            self.findings.clear();
            self.findings
                .extend(self.matches.iter().filter_map(|x| x.finding));
            catalogue.resolve(&mut self.findings);
            for f in &mut self.findings {
                f.start -= from;
                f.end -= from;
            }
            m.apply(&self.buf[from..], &self.findings, tokens, hits)
        };
        self.released = self.end();
        self.cut_off = None;
        m.catalogue()
            .live()
            .restart(&mut self.tracks, self.released);
        self.compact();
        out
    }

    fn end(&self) -> usize {
        self.base + self.buf.len()
    }

    /// Index into `buf` of an absolute position.
    fn index(&self, position: usize) -> usize {
        position.saturating_sub(self.base).min(self.buf.len())
    }

    fn position(&self, index: usize) -> usize {
        self.base + index
    }

    /// Drops what is no longer needed: everything before the character
    /// preceding `released`.
    fn compact(&mut self) {
        let keep_from = floor_char_boundary(&self.buf, self.index(self.released).saturating_sub(1));
        if keep_from > 0 {
            self.buf.drain(..keep_from);
            self.base += keep_from;
        }
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
