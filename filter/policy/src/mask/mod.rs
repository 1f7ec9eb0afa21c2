//! Masking: what replaces a finding, and the state one exchange keeps.
//!
//! - `redact`: `[EMAIL]`.
//! - `partial`: `[CARD_NUMBER:…1111]`, the last N characters kept.
//! - `hash`: `[EMAIL:hmac:9f86d081884c]`, HMAC-SHA256 under the configured
//!   key: the same value gives the same mark, so records can be correlated
//!   without holding the value.
//! - `tokenize`: `[EMAIL_1]` in the request, turned back into the value in
//!   the response to the same exchange; the mapping lives only as long as the
//!   exchange.

pub mod stream;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap};

use crate::detect::{Catalogue, Finding};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Redact,
    Partial { keep_last: usize },
    Hash,
    Tokenize,
}

/// Detectors and what to do with their findings, compiled once.
#[derive(Debug, Clone)]
pub struct Masker {
    catalogue: Catalogue,
    operators: Vec<Operator>,
    hmac_key: Vec<u8>,
}

/// Findings per detector name, for the record and for risk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hits {
    pub counts: BTreeMap<String, u32>,
    /// Sum of the risk of every detector that hit (each counted once).
    pub risk: u32,
    /// Each hit detector's risk, so merged hits count each detector once.
    risks: BTreeMap<String, u32>,
    /// Streamed text masked whole because a candidate match outgrew
    /// `inspection.stream_hold_max_bytes` (see `stream`).
    pub stream_holds_exceeded: u32,
}

impl Hits {
    fn add(&mut self, name: &str, risk: u32) {
        let n = self.counts.entry(name.to_string()).or_insert(0);
        if *n == 0 {
            self.risk = self.risk.saturating_add(risk);
            self.risks.insert(name.to_string(), risk);
        }
        *n += 1;
    }

    /// Adds another part's findings (the headers', the body's): counts add
    /// up, and each detector's risk still counts once.
    pub fn merge(&mut self, other: &Hits) {
        for (name, n) in &other.counts {
            let risk = other.risks.get(name).copied().unwrap_or(0);
            let mine = self.counts.entry(name.clone()).or_insert(0);
            if *mine == 0 {
                self.risk = self.risk.saturating_add(risk);
                self.risks.insert(name.clone(), risk);
            }
            *mine += n;
        }
        self.stream_holds_exceeded += other.stream_holds_exceeded;
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.stream_holds_exceeded == 0
    }
}

/// The tokenize mapping of one exchange: placeholder ↔ value.
///
/// Only placeholders made while masking the request are ever put back: once
/// the request is masked (`seal`), new values (a secret the model came up
/// with in its answer) still get placeholders, but these are never restored,
/// so an answer's own secrets reach the client masked like with any other
/// operator.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_value: HashMap<String, String>,
    /// Placeholder → (value, whether it may be restored).
    by_token: HashMap<String, (String, bool)>,
    next: HashMap<String, u32>,
    sealed: bool,
    restorable: usize,
}

impl Tokens {
    fn token_for(&mut self, label: &str, value: &str) -> String {
        if let Some(t) = self.by_value.get(value) {
            return t.clone();
        }
        let n = self.next.entry(label.to_string()).or_insert(0);
        *n += 1;
        let token = format!("[{label}_{n}]");
        self.by_value.insert(value.to_string(), token.clone());
        self.by_token
            .insert(token.clone(), (value.to_string(), !self.sealed));
        if !self.sealed {
            self.restorable += 1;
        }
        token
    }

    /// The request is masked: placeholders made from now on are never
    /// restored.
    pub fn seal(&mut self) {
        self.sealed = true;
    }

    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    /// Whether any placeholder can be restored.
    pub fn restores(&self) -> bool {
        self.restorable > 0
    }

    /// Longest placeholder, which bounds the stream window for restoring.
    pub fn max_token_len(&self) -> usize {
        self.by_token.keys().map(String::len).max().unwrap_or(0)
    }

    /// Puts the values back in place of this exchange's placeholders.
    pub fn restore(&self, text: &str) -> Option<String> {
        if !self.restores() || !text.contains('[') {
            return None;
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        let mut changed = false;
        while let Some(open) = rest.find('[') {
            out.push_str(&rest[..open]);
            let tail = &rest[open..];
            let found = tail.find(']').and_then(|close| {
                let candidate = &tail[..=close];
                match self.by_token.get(candidate) {
                    Some((value, true)) => Some((value, close + 1)),
                    _ => None,
                }
            });
            match found {
                Some((value, len)) => {
                    out.push_str(value);
                    rest = &tail[len..];
                    changed = true;
                }
                None => {
                    out.push('[');
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        changed.then_some(out)
    }
}

impl Masker {
    pub fn new(catalogue: Catalogue, operators: Vec<Operator>, hmac_key: Vec<u8>) -> Masker {
        Masker {
            catalogue,
            operators,
            hmac_key,
        }
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// Finds and replaces in `text`; `None` when nothing was found.
    ///
    /// Detectors look at the text folded (`crate::normalize`): invisible
    /// characters removed, compatibility forms made plain. A finding masks
    /// the original bytes it came from.
    pub fn mask(&self, text: &str, tokens: &mut Tokens, hits: &mut Hits) -> Option<String> {
        self.mask_marked(text, tokens, hits, None)
    }

    /// `mask`, also pushing where each replacement is in the masked text.
    pub fn mask_marked(
        &self,
        text: &str,
        tokens: &mut Tokens,
        hits: &mut Hits,
        marks: Option<&mut Vec<(usize, usize)>>,
    ) -> Option<String> {
        let findings = self.findings(text);
        // Most strings hold nothing: no allocation beyond the empty Vec.
        if findings.is_empty() {
            return None;
        }
        Some(self.apply_marked(text, &findings, tokens, hits, marks))
    }

    /// What `mask` replaces in `text`: findings in the folded text, at the
    /// original bytes they came from.
    pub(crate) fn findings(&self, text: &str) -> Vec<Finding> {
        let mut findings = Vec::new();
        match crate::normalize::fold(text) {
            None => self.catalogue.find(text, &mut findings),
            Some(folded) => {
                self.catalogue.find(&folded.text, &mut findings);
                for f in &mut findings {
                    (f.start, f.end) = folded.original(f.start, f.end, text);
                }
            }
        }
        findings
    }

    /// Replaces `findings` (sorted, non-overlapping) in `text`.
    pub fn apply(
        &self,
        text: &str,
        findings: &[Finding],
        tokens: &mut Tokens,
        hits: &mut Hits,
    ) -> String {
        self.apply_marked(text, findings, tokens, hits, None)
    }

    fn apply_marked(
        &self,
        text: &str,
        findings: &[Finding],
        tokens: &mut Tokens,
        hits: &mut Hits,
        mut marks: Option<&mut Vec<(usize, usize)>>,
    ) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in findings {
            out.push_str(&text[at..f.start]);
            let mark_start = out.len();
            let d = &self.catalogue.detectors()[f.detector];
            hits.add(&d.name, d.risk);
            let value = &text[f.start..f.end];
            let op = self
                .operators
                .get(f.detector)
                .copied()
                .unwrap_or(Operator::Redact);
            match op {
                Operator::Redact => {
                    out.push('[');
                    out.push_str(&d.label);
                    out.push(']');
                }
                Operator::Partial { keep_last } => {
                    let n = value.chars().count();
                    let kept: String = value.chars().skip(n.saturating_sub(keep_last)).collect();
                    out.push_str(&format!("[{}:…{kept}]", d.label));
                }
                Operator::Hash => {
                    out.push_str(&format!("[{}:hmac:{}]", d.label, self.hmac_hex(value)));
                }
                Operator::Tokenize => out.push_str(&tokens.token_for(&d.label, value)),
            }
            if let Some(m) = marks.as_deref_mut() {
                m.push((mark_start, out.len()));
            }
            at = f.end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// First 12 hex digits (48 bits) of HMAC-SHA256(key, value).
    fn hmac_hex(&self, value: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.hmac_key) else {
            return "error".into();
        };
        mac.update(value.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests;
