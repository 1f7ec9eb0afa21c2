//! Judging a whole body: every key, string and number of a JSON body (or
//! the text of any other), against the rules and the detectors, and the
//! body that goes on with exactly the judged bytes, masked where something
//! was found.
//!
//! JSON is read into a tape of spans (`crate::json`): strict (a duplicate
//! key is refused: parsers disagree on which one counts), never rebuilt;
//! what is masked is replaced span by span and every other byte goes on as
//! it came. Rules see each scope's text as one conversation, folded
//! (`normalize::for_rules`).

use std::borrow::Cow;
use std::collections::HashSet;

use super::media::{self, Payload};
use super::{Inspector, Rule, RuleHit};
use crate::inspect::config::{RuleAction, RuleScope};
use crate::json::{self, Edits, Kind, Tape};
use crate::llm::walk::{parts, Part};
use crate::llm::{Direction, Scope};
use crate::mask::{Hits, Masker, Tokens};
use crate::normalize;

/// Where something that made a request risky is, in the body as it goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub start: usize,
    pub end: usize,
}

/// A judged body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judged {
    /// The body to send instead, when masking changed it.
    pub body: Option<Vec<u8>>,
    pub hits: Hits,
    pub rules: Vec<RuleHit>,
    /// Masked findings and rule matches, in the body as it goes on.
    pub marks: Vec<Mark>,
}

/// A `block` rule (or `approve` without an approval service) matched:
/// the first such rule, and every rule that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    pub hit: RuleHit,
    pub rules: Vec<RuleHit>,
}

/// Why a JSON body cannot be judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    Json(json::Error),
    DuplicateKey(String),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::Json(e) => write!(f, "request body is not valid JSON: {e}"),
            Unreadable::DuplicateKey(k) => write!(
                f,
                "request body has the key {k:?} twice in one object; parsers disagree on which counts, so it is refused"
            ),
        }
    }
}

/// The text of each rule scope, for rules: raw, and folded when a rule
/// needs it (text that is all ASCII is matched raw by keyword rules).
#[derive(Default)]
struct ScopeText<'t> {
    /// The parts, each once: (text, node).
    parts: Vec<(&'t str, usize)>,
    raw: String,
    /// (offset in `raw`, node) of each part.
    raw_starts: Vec<(usize, usize)>,
    ascii: bool,
    folded: Option<Folded>,
}

/// A scope's text as rules see it (`normalize::for_rules`).
#[derive(Default)]
struct Folded {
    text: String,
    /// For each byte of `text`, the offset in its part's text of the
    /// character it came from.
    map: Vec<u32>,
    /// (offset in `text`, node) of each part.
    starts: Vec<(usize, usize)>,
}

impl<'t> ScopeText<'t> {
    fn add(&mut self, text: &'t str, node: usize) {
        if self.parts.is_empty() {
            self.ascii = true;
        } else {
            self.raw.push('\n');
        }
        self.ascii &= text.is_ascii();
        self.raw_starts.push((self.raw.len(), node));
        self.raw.push_str(text);
        self.parts.push((text, node));
    }

    fn folded(&mut self) -> &Folded {
        self.folded.get_or_insert_with(|| {
            let mut f = Folded::default();
            for &(text, node) in &self.parts {
                if !f.text.is_empty() {
                    // Parts are one conversation: a separator folds like
                    // any other whitespace.
                    normalize::for_rules_mapped("\n", &mut f.text, Some(&mut f.map));
                }
                f.starts.push((f.text.len(), node));
                normalize::for_rules_mapped(text, &mut f.text, Some(&mut f.map));
            }
            f
        })
    }

    /// Where a rule matches first: (part, offset in the part's text).
    fn find(&mut self, rule: &Rule) -> Option<(usize, usize)> {
        let found = match (&rule.ascii, self.ascii) {
            (Some(ascii), true) => ascii
                .find_at(&self.raw)
                .and_then(|at| place(&self.raw_starts, at, |_| None)),
            _ => {
                let f = self.folded();
                rule.matcher.find(&f.text).and_then(|m| {
                    place(&f.starts, m.start(), |at| {
                        f.map.get(at).map(|&within| within as usize)
                    })
                })
            }
        };
        found.or_else(|| {
            let raw = rule.raw.as_ref()?;
            raw.find(&self.raw)
                .map(|_| (self.parts.first().map_or(0, |&(_, n)| n), 0))
        })
    }
}

/// The part an offset is in, and the offset in that part's text (`within`
/// tells it when the text is not the parts' own bytes).
fn place(
    starts: &[(usize, usize)],
    offset: usize,
    within: impl Fn(usize) -> Option<usize>,
) -> Option<(usize, usize)> {
    let i = starts.partition_point(|&(at, _)| at <= offset);
    let &(start, node) = starts.get(i.checked_sub(1)?)?;
    Some((node, within(offset).unwrap_or(offset - start)))
}

const SCOPES: [RuleScope; 6] = [
    RuleScope::Any,
    RuleScope::Prompt,
    RuleScope::System,
    RuleScope::Model,
    RuleScope::ToolName,
    RuleScope::ToolArguments,
];

fn scope_index(s: RuleScope) -> usize {
    SCOPES.iter().position(|x| *x == s).unwrap_or(0)
}

/// Whether a part's text belongs to a rule scope: string values (keys,
/// numbers and `role`/`type` values are the body's structure, judged by the
/// detectors only). `prompt` is everything the model reads: every string
/// but the model's name; `any` is every string.
fn in_scope(rule: RuleScope, part: &Part, kind: Kind) -> bool {
    let string = kind == Kind::String && !part.structural;
    match rule {
        RuleScope::Any => string,
        RuleScope::Prompt => string && part.scope != Scope::Model,
        RuleScope::System => string && part.scope == Scope::System,
        RuleScope::Model => string && part.scope == Scope::Model,
        RuleScope::ToolName => string && part.scope == Scope::ToolName,
        RuleScope::ToolArguments => string && part.scope == Scope::ToolArguments,
    }
}

/// The text of a part: a string or key unescaped, a number as written.
fn part_text<'s>(tape: &Tape, src: &'s str, node: usize) -> Option<Cow<'s, str>> {
    match tape.kind(node)? {
        Kind::String | Kind::Key => tape.str(src, node),
        Kind::Number => Some(Cow::Borrowed(tape.raw(src, node))),
        _ => None,
    }
}

impl Inspector {
    /// Judges a JSON body read into `tape`: rules (a `block` match stops
    /// here), then masking of every part.
    pub(super) fn judge_json(
        &self,
        tape: &Tape,
        src: &str,
        direction: Direction,
        tokens: &mut Tokens,
        restore: bool,
    ) -> Result<Judged, Stop> {
        let mut list = Vec::with_capacity(tape.nodes().len());
        parts(tape, src, direction, &mut list);
        // Media decoded once: (index in `list`, payload).
        let decoded: Vec<(usize, Payload)> = list
            .iter()
            .enumerate()
            .filter(|(_, p)| p.media)
            .filter_map(|(i, p)| Some((i, media::classify(&tape.str(src, p.node)?))))
            .collect();
        let payload = |i: usize| decoded.iter().find(|(j, _)| *j == i).map(|(_, p)| p);
        // Each part's text, unescaped once for rules and masking both.
        let texts: Vec<Option<Cow<'_, str>>> =
            list.iter().map(|p| part_text(tape, src, p.node)).collect();
        let text_of = |i: usize| texts.get(i).and_then(Option::as_deref);

        let mut judged = Judged::default();
        if direction == Direction::Request && !self.rules.is_empty() {
            let mut texts: Vec<ScopeText> =
                (0..SCOPES.len()).map(|_| ScopeText::default()).collect();
            let used: Vec<RuleScope> = SCOPES
                .iter()
                .copied()
                .filter(|s| self.rules.iter().any(|r| r.scope == *s))
                .collect();
            for (i, part) in list.iter().enumerate() {
                let Some(kind) = tape.kind(part.node) else {
                    continue;
                };
                let text = match payload(i) {
                    Some(Payload::Binary) => continue,
                    Some(Payload::Text { text, .. }) => text.as_str(),
                    _ => match text_of(i) {
                        Some(t) => t,
                        None => continue,
                    },
                };
                for &scope in &used {
                    if in_scope(scope, part, kind) {
                        if let Some(t) = texts.get_mut(scope_index(scope)) {
                            t.add(text, part.node);
                        }
                    }
                }
            }
            // Where each rule matched: (part, offset in the part's text).
            let mut rule_places = Vec::new();
            for r in &self.rules {
                let found = texts.get_mut(scope_index(r.scope)).and_then(|t| t.find(r));
                if let Some(place) = found {
                    judged.rules.push(r.hit());
                    rule_places.push(place);
                }
            }
            if let Some(hit) = self.first_blocking(&judged.rules) {
                return Err(Stop {
                    hit,
                    rules: judged.rules,
                });
            }
            // Rule matches are marked where they are in the source (moved
            // to the output below); escapes make this approximate, which an
            // excerpt's context absorbs.
            for (node, within) in rule_places {
                if let Some(n) = tape.node(node) {
                    let at = (n.start + 1 + within).min(n.end);
                    judged.marks.push(Mark { start: at, end: at });
                }
            }
        }

        let Some(m) = self.masker() else {
            return Ok(judged);
        };
        let mut edits = Edits::default();
        // For each edit (in source order): where its findings are in the
        // new text.
        let mut inner: Vec<Vec<(usize, usize)>> = Vec::new();
        for (i, part) in list.iter().enumerate() {
            let Some(n) = tape.node(part.node) else {
                continue;
            };
            let mut spans = Vec::new();
            let masked = match payload(i) {
                Some(Payload::Binary) => continue,
                Some(Payload::Text { prefix, text }) => {
                    mask(m, text.as_str(), tokens, &mut judged.hits, restore, None).map(|t| {
                        let encoded = media::encode(prefix.as_str(), &t);
                        spans.push((0, encoded.len()));
                        encoded
                    })
                }
                _ => match text_of(i) {
                    Some(text) => {
                        mask(m, text, tokens, &mut judged.hits, restore, Some(&mut spans))
                    }
                    None => continue,
                },
            };
            if let Some(new) = masked {
                let mut s = String::with_capacity(new.len() + 2);
                // A number that held a secret becomes its mask, a string.
                json::write_str(&mut s, &new);
                edits.replace(n.start, n.end, s);
                inner.push(spans);
            }
        }
        if edits.is_empty() {
            return Ok(judged);
        }
        let (body, spans) = edits.apply_mapped(src);
        // Rule marks were source positions: move them to the output.
        for mark in &mut judged.marks {
            let at = edits.map_position(mark.start);
            *mark = Mark { start: at, end: at };
        }
        // Findings: where their placeholders are (inside the new string,
        // after its opening quote; escapes make it approximate).
        for ((start, _), within) in spans.iter().zip(&inner) {
            for (a, b) in within {
                judged.marks.push(Mark {
                    start: start + 1 + a,
                    end: start + 1 + b,
                });
            }
        }
        judged.body = Some(body.into_bytes());
        Ok(judged)
    }

    /// Judges a text body.
    pub(super) fn judge_text(
        &self,
        text: &str,
        tokens: &mut Tokens,
        restore: bool,
        rules: bool,
    ) -> Result<Judged, Stop> {
        let mut judged = Judged::default();
        if rules {
            let mut folded = String::new();
            normalize::for_rules(text, &mut folded);
            for r in &self.rules {
                let raw = r.raw.as_ref().is_some_and(|x| x.is_match(text));
                if raw || r.matcher.is_match(&folded) {
                    judged.rules.push(r.hit());
                }
            }
            if let Some(hit) = self.first_blocking(&judged.rules) {
                return Err(Stop {
                    hit,
                    rules: judged.rules,
                });
            }
        }
        if let Some(m) = self.masker() {
            let mut spans = Vec::new();
            if let Some(new) = mask(m, text, tokens, &mut judged.hits, restore, Some(&mut spans)) {
                judged
                    .marks
                    .extend(spans.into_iter().map(|(start, end)| Mark { start, end }));
                judged.body = Some(new.into_bytes());
            }
        }
        Ok(judged)
    }

    fn first_blocking(&self, hits: &[RuleHit]) -> Option<RuleHit> {
        hits.iter()
            .find(|h| match h.action {
                RuleAction::Block => true,
                RuleAction::Approve => !self.approvals,
                RuleAction::Log => false,
            })
            .cloned()
    }
}

/// Masks a text (noting where its placeholders are); in answers, also puts
/// the request's own placeholders back.
fn mask(
    m: &Masker,
    text: &str,
    tokens: &mut Tokens,
    hits: &mut Hits,
    restore: bool,
    marks: Option<&mut Vec<(usize, usize)>>,
) -> Option<String> {
    if restore {
        crate::llm::sse::mask_text(m, text, tokens, hits)
    } else {
        m.mask_marked(text, tokens, hits, marks)
    }
}

/// The key of an object that appears twice (as decoded), if any.
pub fn duplicate_key(tape: &Tape, src: &str) -> Option<String> {
    // Most objects have a few keys: compared with each other directly,
    // without hashing every key of every object.
    const FEW: usize = 16;
    let mut keys: Vec<Cow<'_, str>> = Vec::new();
    let mut seen: HashSet<Cow<'_, str>> = HashSet::new();
    for (i, n) in tape.nodes().iter().enumerate() {
        if n.kind != Kind::Object || n.next - i < 4 {
            continue;
        }
        keys.clear();
        seen.clear();
        for (k, _) in tape.members(i) {
            let key = tape.str(src, k)?;
            if seen.is_empty() && keys.len() < FEW {
                if keys.contains(&key) {
                    return Some(key.into_owned());
                }
                keys.push(key);
                continue;
            }
            // Past a few keys, a set (the keys so far move into it once).
            seen.extend(keys.drain(..));
            if let Some(dup) = seen.replace(key) {
                return Some(dup.into_owned());
            }
        }
    }
    None
}
