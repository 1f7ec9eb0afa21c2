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
use super::{Inspector, RuleHit};
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

/// The text of each rule scope, for rules: raw and folded, with where each
/// part begins (to find the part a match is in).
#[derive(Default)]
struct ScopeText {
    raw: String,
    folded: String,
    /// (offset in `folded`, node) of each part.
    starts: Vec<(usize, usize)>,
}

impl ScopeText {
    fn add(&mut self, text: &str, node: usize) {
        if !self.raw.is_empty() {
            self.raw.push('\n');
            self.folded.push(' ');
        }
        self.raw.push_str(text);
        self.starts.push((self.folded.len(), node));
        normalize::for_rules(text, &mut self.folded);
    }

    fn node_at(&self, offset: usize) -> Option<usize> {
        let i = self.starts.partition_point(|&(at, _)| at <= offset);
        self.starts.get(i.checked_sub(1)?).map(|&(_, node)| node)
    }
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
        let mut list = Vec::new();
        parts(tape, src, direction, &mut list);
        // Media decoded once: (index in `list`, payload).
        let decoded: Vec<(usize, Payload)> = list
            .iter()
            .enumerate()
            .filter(|(_, p)| p.media)
            .filter_map(|(i, p)| Some((i, media::classify(&tape.str(src, p.node)?))))
            .collect();
        let payload = |i: usize| decoded.iter().find(|(j, _)| *j == i).map(|(_, p)| p);

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
                    Some(Payload::Text { text, .. }) => Cow::Borrowed(text.as_str()),
                    _ => match part_text(tape, src, part.node) {
                        Some(t) => t,
                        None => continue,
                    },
                };
                for &scope in &used {
                    if in_scope(scope, part, kind) {
                        texts[scope_index(scope)].add(&text, part.node);
                    }
                }
            }
            let mut rule_nodes = Vec::new();
            for r in &self.rules {
                let t = &texts[scope_index(r.scope)];
                let found = r
                    .matcher
                    .find(&t.folded)
                    .and_then(|m| t.node_at(m.start()))
                    .or_else(|| {
                        let raw = r.raw.as_ref()?;
                        raw.find(&t.raw)
                            .map(|_| t.starts.first().map_or(0, |&(_, n)| n))
                    });
                if let Some(node) = found {
                    judged.rules.push(r.hit());
                    rule_nodes.push(node);
                }
            }
            if let Some(hit) = self.first_blocking(&judged.rules) {
                return Err(Stop {
                    hit,
                    rules: judged.rules,
                });
            }
            // Rule matches are marked on their part (mapped below).
            for node in rule_nodes {
                if let Some(n) = tape.node(node) {
                    judged.marks.push(Mark {
                        start: n.start,
                        end: n.end,
                    });
                }
            }
        }

        let Some(m) = self.masker() else {
            return Ok(judged);
        };
        let mut edits = Edits::default();
        for (i, part) in list.iter().enumerate() {
            let Some(n) = tape.node(part.node) else {
                continue;
            };
            let masked = match payload(i) {
                Some(Payload::Binary) => continue,
                Some(Payload::Text { prefix, text }) => {
                    mask(m, text.as_str(), tokens, &mut judged.hits, restore)
                        .map(|t| media::encode(prefix.as_str(), &t))
                }
                _ => match part_text(tape, src, part.node) {
                    Some(text) => mask(m, &text, tokens, &mut judged.hits, restore),
                    None => continue,
                },
            };
            if let Some(new) = masked {
                let mut s = String::with_capacity(new.len() + 2);
                // A number that held a secret becomes its mask, a string.
                json::write_str(&mut s, &new);
                edits.replace(n.start, n.end, s);
            }
        }
        if edits.is_empty() {
            return Ok(judged);
        }
        let (body, spans) = edits.apply_mapped(src);
        // Rule marks were input spans: move them to the output.
        for mark in &mut judged.marks {
            *mark = Mark {
                start: edits.map_position(mark.start),
                end: edits.map_position(mark.end),
            };
        }
        judged
            .marks
            .extend(spans.into_iter().map(|(start, end)| Mark { start, end }));
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
            if let Some(new) = mask(m, text, tokens, &mut judged.hits, restore) {
                judged.marks.push(Mark {
                    start: 0,
                    end: new.len(),
                });
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

/// Masks a text; in answers, also puts the request's own placeholders back.
fn mask(
    m: &Masker,
    text: &str,
    tokens: &mut Tokens,
    hits: &mut Hits,
    restore: bool,
) -> Option<String> {
    if restore {
        crate::llm::sse::mask_text(m, text, tokens, hits)
    } else {
        m.mask(text, tokens, hits)
    }
}

/// The key of an object that appears twice, if any.
pub fn duplicate_key(tape: &Tape, src: &str) -> Option<String> {
    let mut seen: HashSet<Cow<'_, str>> = HashSet::new();
    for (i, n) in tape.nodes().iter().enumerate() {
        if n.kind != Kind::Object || n.next - i < 4 {
            continue;
        }
        seen.clear();
        for (k, _) in tape.members(i) {
            let key = tape.str(src, k)?;
            if let Some(dup) = seen.replace(key) {
                return Some(dup.into_owned());
            }
        }
    }
    None
}
