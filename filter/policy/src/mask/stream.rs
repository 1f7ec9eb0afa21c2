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
//! per stream stays within `hold_max` plus the pieces taken since the last
//! decision (one piece, or the text events of one network chunk).

use super::{Hits, Masker, Tokens};
use crate::detect::live::Tracks;
use crate::detect::{Finding, Match};
use crate::normalize::fold_char;

/// Detection runs on the text folded as `Masker::mask` folds it
/// (`crate::normalize`), character by character as pieces arrive; what is
/// released is the original text, masked where the folded text had
/// findings.
#[derive(Debug, Clone)]
pub struct StreamMasker {
    hold_max: usize,
    /// The folded text from absolute folded position `base`: one character
    /// of context before `released` (what `\b` and `^` look at), then the
    /// held text.
    buf: String,
    base: usize,
    /// Everything before this absolute folded position has been returned.
    released: usize,
    /// The original text from `orig_released` (the original position of
    /// `released`) on.
    orig: String,
    orig_released: usize,
    /// Folded and original text are the same so far (ASCII, or nothing
    /// that folds): positions are equal and `map` is empty.
    identity: bool,
    /// Otherwise, for each byte of `buf`, the absolute original position of
    /// the character it came from.
    map: Vec<usize>,
    tracks: Tracks,
    /// A candidate of this detector outgrew the hold: its text is dropped
    /// until it ends.
    cut_off: Option<usize>,
    /// `released`, when a finding ended there: the text after it is judged
    /// as if it began there (`Catalogue::matches`).
    after_finding: Option<usize>,
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
            orig: String::new(),
            orig_released: 0,
            identity: true,
            map: Vec::new(),
            tracks: Tracks::default(),
            cut_off: None,
            after_finding: None,
            matches: Vec::new(),
            findings: Vec::new(),
        }
    }

    /// Bytes held back right now.
    pub fn held(&self) -> usize {
        self.orig.len()
    }

    /// Takes the next piece; returns the masked text that can go out now.
    pub fn push(
        &mut self,
        m: &Masker,
        piece: &str,
        tokens: &mut Tokens,
        hits: &mut Hits,
    ) -> String {
        let mut out = String::new();
        self.push_into(m, piece, tokens, hits, &mut out);
        out
    }

    /// `push`, appending what can go out now to `out` (a stream reuses
    /// one buffer instead of allocating one per piece).
    pub fn push_into(
        &mut self,
        m: &Masker,
        piece: &str,
        tokens: &mut Tokens,
        hits: &mut Hits,
        out: &mut String,
    ) {
        self.append(piece);
        self.release(m, tokens, hits, &[], std::slice::from_mut(out));
    }

    /// Takes a piece without deciding yet what can go out: `release`
    /// decides once for every piece taken since (pieces that arrived
    /// together need one walk, not one each). Returns where the piece ends
    /// in the original text (a bound for `release`).
    pub fn take(&mut self, piece: &str) -> usize {
        self.append(piece);
        self.orig_released + self.orig.len()
    }

    /// Decides what can go out of the text taken so far and appends it to
    /// `outs`, split at `bounds` (where `take` said the pieces end, all but
    /// the last): `outs[i]` gets what came in piece `i`, a masked value
    /// whole in the piece where it ends. `outs` has one more entry than
    /// `bounds`.
    pub fn release(
        &mut self,
        m: &Masker,
        tokens: &mut Tokens,
        hits: &mut Hits,
        bounds: &[usize],
        outs: &mut [String],
    ) {
        let live = m.catalogue().live();
        if let Some(detector) = self.cut_off {
            let Some(ended) =
                live.follow(&mut self.tracks, detector, self.buf.as_bytes(), self.base)
            else {
                // Still the same over-long candidate: dropped.
                self.release_to(self.end());
                return;
            };
            // It ended: what belonged to its match is dropped too, the rest
            // is judged afresh.
            let resume = self.released.max(ended.unwrap_or(0)).min(self.end());
            self.cut_off = None;
            self.after_finding = None;
            live.restart(&mut self.tracks, resume);
            self.release_to(resume);
        }
        let hold = live.advance(&mut self.tracks, self.buf.as_bytes(), self.base);
        let end = self.end();
        let from = self.index(self.released);
        let mut cut =
            floor_char_boundary(&self.buf, self.index(hold.from.clamp(self.released, end)));
        // The gate does not walk starts that die: a match among them shows
        // in the text that goes out (or in the held text after it). Nor
        // does it see a value glued to a finding that ended at `released`.
        let after_finding = self.after_finding == Some(self.released);
        let needs_regexes = cut > from
            && (after_finding
                || self.tracks.matched.iter().any(|&s| s < self.base + cut)
                || live.any_match(self.buf.as_bytes(), from));
        self.findings.clear();
        if needs_regexes {
            let catalogue = m.catalogue();
            let open = catalogue.matches(&self.buf, from, after_finding, &mut self.matches);
            // Right after a finding, a value may still be arriving.
            if let Some(open) = open {
                cut = cut.min(open);
            }
            // A match that reaches over the cut holds from its start (and
            // may pull the cut back over another one). Matches that failed
            // their checks count too: a long one hides what starts inside
            // it (`Catalogue::search`).
            while let Some(start) = self
                .matches
                .iter()
                .filter(|x| x.start < cut && x.end > cut)
                .map(|x| x.start)
                .min()
            {
                cut = start;
            }
            self.findings.extend(
                self.matches
                    .iter()
                    .filter(|x| x.end <= cut)
                    .filter_map(|x| x.finding),
            );
            catalogue.resolve(&mut self.findings);
        }
        let cut_at = self.base + cut;
        let orig_cut = self.orig_at(cut_at);
        self.masked_original(m, orig_cut, tokens, hits, bounds, outs);
        self.tracks.matched.retain(|&s| s >= cut_at);
        let ends_at_cut = needs_regexes
            && self
                .matches
                .iter()
                .any(|x| x.finding.is_some_and(|f| f.end == cut));
        self.after_finding = (ends_at_cut || (cut == from && after_finding)).then_some(cut_at);

        if end - cut_at > self.hold_max {
            // Not waited for any longer: masked whole, never released raw.
            let detector = hold.detector.unwrap_or(0);
            let rest = &self.orig[orig_cut - self.orig_released..];
            let held = Finding {
                start: 0,
                end: rest.len(),
                detector,
            };
            if let Some(out) = outs.last_mut() {
                out.push_str(&m.apply(rest, &[held], tokens, hits));
            }
            hits.stream_holds_exceeded += 1;
            self.after_finding = None;
            match hold.detector {
                Some(d) => self.cut_off = Some(d),
                None => live.restart(&mut self.tracks, end),
            }
            self.release_to(end);
        } else {
            self.release_to(cut_at);
        }
    }

    /// The end of the text: everything left, masked.
    pub fn finish(&mut self, m: &Masker, tokens: &mut Tokens, hits: &mut Hits) -> String {
        let end = self.end();
        let from = self.index(self.released);
        self.findings.clear();
        let mut out = String::new();
        if self.cut_off.is_none() && from < self.buf.len() {
            let catalogue = m.catalogue();
            let after_finding = self.after_finding == Some(self.released);
            catalogue.matches(&self.buf, from, after_finding, &mut self.matches);
            self.findings
                .extend(self.matches.iter().filter_map(|x| x.finding));
            catalogue.resolve(&mut self.findings);
            let orig_end = self.orig_released + self.orig.len();
            self.masked_original(
                m,
                orig_end,
                tokens,
                hits,
                &[],
                std::slice::from_mut(&mut out),
            );
        }
        self.cut_off = None;
        self.after_finding = None;
        m.catalogue().live().restart(&mut self.tracks, end);
        self.release_to(end);
        out
    }

    /// Appends the original text from `orig_released` to `orig_cut`, masked
    /// with `self.findings` (folded positions relative to `buf`), to `outs`
    /// split at `bounds` (absolute original positions; a bound inside a
    /// finding moves to its start).
    fn masked_original(
        &self,
        m: &Masker,
        orig_cut: usize,
        tokens: &mut Tokens,
        hits: &mut Hits,
        bounds: &[usize],
        outs: &mut [String],
    ) {
        let text = &self.orig[..orig_cut - self.orig_released];
        let mut mapped: Vec<Finding> = self
            .findings
            .iter()
            .map(|f| {
                let (start, end) = self.orig_span(self.base + f.start, self.base + f.end);
                Finding {
                    start: start - self.orig_released,
                    end: end - self.orig_released,
                    detector: f.detector,
                }
            })
            .collect();
        let last = outs.len().saturating_sub(1);
        let mut at = 0;
        let mut next = 0; // the first finding not written yet
        for (i, out) in outs.iter_mut().enumerate() {
            let mut to = match bounds.get(i) {
                Some(&b) if i < last => b.saturating_sub(self.orig_released).clamp(at, text.len()),
                _ => text.len(),
            };
            let rest = mapped.get_mut(next..).unwrap_or_default();
            if let Some(f) = rest.iter().find(|f| f.start < to && f.end > to) {
                to = f.start.max(at);
            }
            let n = rest.iter().take_while(|f| f.end <= to).count();
            let found = rest.get_mut(..n).unwrap_or_default();
            // Relative to this piece's text.
            for f in found.iter_mut() {
                f.start -= at;
                f.end -= at;
            }
            let piece = &text[at..to];
            if found.is_empty() {
                out.push_str(piece);
            } else {
                out.push_str(&m.apply(piece, found, tokens, hits));
            }
            next += n;
            at = to;
        }
    }

    /// Appends a piece: the original as it is, the folded form character by
    /// character.
    fn append(&mut self, piece: &str) {
        let orig_end = self.orig_released + self.orig.len();
        self.orig.push_str(piece);
        if self.identity && piece.is_ascii() {
            self.buf.push_str(piece);
            return;
        }
        for (i, c) in piece.char_indices() {
            let before = self.buf.len();
            fold_char(c, &mut self.buf);
            if self.identity {
                let same = self.buf.len() - before == c.len_utf8();
                if same {
                    continue;
                }
                // From here on folded and original positions differ: each
                // byte so far maps to the start of its own character.
                self.identity = false;
                self.map.clear();
                for (at, ch) in self.buf[..before].char_indices() {
                    let n = self.map.len() + ch.len_utf8();
                    self.map.resize(n, self.base + at);
                }
            }
            let at = orig_end + i;
            self.map.resize(self.buf.len(), at);
        }
    }

    fn end(&self) -> usize {
        self.base + self.buf.len()
    }

    /// Index into `buf` of an absolute folded position.
    fn index(&self, position: usize) -> usize {
        position.saturating_sub(self.base).min(self.buf.len())
    }

    /// The absolute original position of an absolute folded position.
    fn orig_at(&self, position: usize) -> usize {
        if self.identity {
            return position;
        }
        match self.map.get(position.saturating_sub(self.base)) {
            Some(&o) if position < self.end() => o,
            _ => self.orig_released + self.orig.len(),
        }
    }

    /// The original span of a folded span (see `normalize::Folded`).
    fn orig_span(&self, start: usize, end: usize) -> (usize, usize) {
        if self.identity {
            return (start, end);
        }
        let from = self.orig_at(start);
        let last = self.orig_at(end.saturating_sub(1).max(start));
        let rel = last.saturating_sub(self.orig_released);
        let to = self.orig[rel.min(self.orig.len())..]
            .chars()
            .next()
            .map_or(self.orig_released + self.orig.len(), |c| {
                last + c.len_utf8()
            });
        (from, to.max(from))
    }

    /// Marks everything before folded position `position` released and
    /// drops what is no longer needed (all but the character before it).
    fn release_to(&mut self, position: usize) {
        let orig_cut = self.orig_at(position);
        self.released = position;
        let drop = (orig_cut - self.orig_released).min(self.orig.len());
        self.orig.drain(..drop);
        self.orig_released += drop;
        let keep_from = floor_char_boundary(&self.buf, self.index(self.released).saturating_sub(1));
        if keep_from > 0 {
            self.buf.drain(..keep_from);
            if !self.identity {
                self.map.drain(..keep_from.min(self.map.len()));
            }
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
        self.push_owned(tokens, piece.to_string())
    }

    /// `push`, taking the piece's buffer (returned when nothing is held or
    /// restored).
    pub fn push_owned(&mut self, tokens: &Tokens, piece: String) -> String {
        if self.pending.is_empty() && !piece.contains('[') {
            // Nothing held and nothing to hold: no placeholder in it.
            return piece;
        }
        self.pending.push_str(&piece);
        let max = tokens.max_token_len();
        let hold = match self.pending.rfind('[') {
            Some(i) if !self.pending[i..].contains(']') && self.pending.len() - i < max => i,
            _ => self.pending.len(),
        };
        let held = self.pending.split_off(hold);
        let ready = std::mem::replace(&mut self.pending, held);
        tokens.restore(&ready).unwrap_or(ready)
    }

    /// `push_owned` on `text` in place (no copy when nothing is held or
    /// restored, which is almost always; nothing is ever held when the
    /// exchange has no placeholder to restore).
    pub fn push_in_place(&mut self, tokens: &Tokens, text: &mut String) {
        if self.pending.is_empty() && (!tokens.restores() || !text.contains('[')) {
            return;
        }
        let piece = std::mem::take(text);
        *text = self.push_owned(tokens, piece);
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
