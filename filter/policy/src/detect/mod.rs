//! Detectors of sensitive data: the built-in catalogue plus custom patterns,
//! compiled once per configuration.
//!
//! Each detector is compiled twice from the same syntax tree: a `meta::Regex`
//! that finds and locates matches (one multi-pattern set in front of them
//! tells in one pass which detectors can find something in a text: their
//! patterns, or a gate where a pattern matches much that its check
//! refuses), and an anchored lazy DFA (`live`) that tells, for text still
//! arriving, whether a match starting at a position could still appear or
//! change. The stream masker holds back exactly the text from the earliest
//! such position.
//!
//! Both compile from one syntax tree in which `\b` means an ASCII word
//! boundary (the lazy DFA cannot evaluate Unicode word boundaries on
//! non-ASCII text), so the two always agree.

pub mod builtin;
pub mod live;
pub mod validate;

use regex_automata::meta::{self, Regex};
use regex_automata::util::captures::Captures;
use regex_automata::{Input, MatchKind, PatternSet};
use regex_syntax::hir::{Hir, HirKind, Look};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One compiled detector.
#[derive(Debug, Clone)]
pub struct Detector {
    pub name: String,
    /// Placeholder text for `redact`: `[EMAIL]`.
    pub label: String,
    pub risk: u32,
    regex: Regex,
    /// 0: the whole match is the value; 1: the first capture group that
    /// took part in the match is.
    group: usize,
    check: Option<fn(&str) -> bool>,
    before: Before,
}

/// What may come right before a detector's value. The byte before is
/// always known (also in a stream, which keeps one character of context).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    Any,
    /// Not a letter or digit (`_`, `-`, punctuation and spaces separate).
    NotAlnum,
    /// Not a base64 or base64url character (the value is not a piece of a
    /// longer token).
    NotBase64ish,
}

impl Before {
    fn allows(self, prev: Option<u8>) -> bool {
        match (self, prev) {
            (Before::Any, _) | (_, None) => true,
            (Before::NotAlnum, Some(b)) => !b.is_ascii_alphanumeric(),
            (Before::NotBase64ish, Some(b)) => !validate::base64ish(b),
        }
    }
}

/// Where a detector found something: byte offsets into the scanned text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub start: usize,
    pub end: usize,
    pub detector: usize,
}

/// One match of a detector's regex, whether or not it is a finding: the
/// search for the next match of the same detector goes on after its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub start: usize,
    pub end: usize,
    /// The value it found, when it passed the detector's checks.
    pub finding: Option<Finding>,
}

/// A custom detector from the configuration.
#[derive(Debug, Clone)]
pub struct Custom {
    pub name: String,
    pub pattern: String,
    pub risk: u32,
}

#[derive(Debug, Clone)]
pub struct Catalogue {
    detectors: Vec<Detector>,
    /// Every detector's pattern (or its gate), to learn in one pass which
    /// can find something.
    set: Regex,
    live: Arc<live::Liveness>,
}

/// Custom patterns are refused beyond these compiled sizes (bytes), so a
/// configuration cannot make a worker's memory explode.
const MAX_REGEX_SIZE: usize = 2 << 20;

/// Lazy DFA cache of each finding regex (the meta engine keeps one forward
/// and one reverse); it is cleared and refilled when full.
const REGEX_CACHE_BYTES: usize = 256 << 10;

impl Catalogue {
    /// The built-ins whose names `enabled` accepts, then the custom ones.
    pub fn new(enabled: impl Fn(&str) -> bool, custom: &[Custom]) -> Result<Catalogue, String> {
        let mut detectors = Vec::new();
        let mut hirs = Vec::new();
        // What the multi-pattern set runs: each detector's pattern, or its gate.
        let mut gates = Vec::new();
        for b in builtin::BUILTINS.iter().filter(|b| enabled(b.name)) {
            let hir = parse(b.pattern).map_err(|e| format!("built-in {}: {e}", b.name))?;
            gates.push(match b.gate {
                Some(gate) => parse(gate).map_err(|e| format!("built-in {} gate: {e}", b.name))?,
                None => hir.clone(),
            });
            detectors.push(Detector {
                name: b.name.into(),
                label: b.label.into(),
                risk: b.risk,
                regex: compile(&hir).map_err(|e| format!("built-in {}: {e}", b.name))?,
                group: b.group,
                check: b.check,
                before: b.before,
            });
            hirs.push(hir);
        }
        for c in custom {
            let hir = parse(&c.pattern).map_err(|e| format!("{}: {e}", c.name))?;
            let regex = compile(&hir).map_err(|e| format!("{}: {e}", c.name))?;
            let groups = regex
                .group_info()
                .group_len(regex_automata::PatternID::ZERO);
            detectors.push(Detector {
                name: c.name.clone(),
                label: c.name.to_ascii_uppercase(),
                risk: c.risk,
                group: usize::from(groups > 1),
                regex,
                check: None,
                before: Before::Any,
            });
            gates.push(hir.clone());
            hirs.push(hir);
        }
        let set = Regex::builder()
            .configure(
                meta::Config::new()
                    .match_kind(MatchKind::All)
                    .nfa_size_limit(Some(MAX_REGEX_SIZE * 8))
                    .hybrid_cache_capacity(REGEX_CACHE_BYTES * 4),
            )
            .build_many_from_hir(&gates)
            .map_err(|e| e.to_string())?;
        let live = live::Liveness::new(&hirs)?;
        Ok(Catalogue {
            detectors,
            set,
            live: Arc::new(live),
        })
    }

    /// Overrides risks (`None` keeps the built-in one), by detector index.
    pub fn with_risks(mut self, risks: &[Option<u32>]) -> Catalogue {
        for (d, r) in self.detectors.iter_mut().zip(risks) {
            if let Some(r) = r {
                d.risk = *r;
            }
        }
        self
    }

    pub fn detectors(&self) -> &[Detector] {
        &self.detectors
    }

    pub fn live(&self) -> &live::Liveness {
        &self.live
    }

    /// Findings in `text`, sorted and non-overlapping: of overlapping ones,
    /// the riskiest wins, then the earliest, then the longest, then the first
    /// listed (a password inside a URL is a password, not an e-mail).
    pub fn find(&self, text: &str, out: &mut Vec<Finding>) {
        out.clear();
        self.each_match(text, 0, |m| out.extend(m.finding));
        self.resolve(out);
    }

    /// Every detector's matches in `hay[from..]`, findings not yet resolved
    /// against each other (see `resolve`). The bytes before `from` are only
    /// context: what `\b` and `^` see, as if the search had started at the
    /// text's beginning and found nothing before `from`.
    pub fn matches(&self, hay: &str, from: usize, out: &mut Vec<Match>) {
        out.clear();
        self.each_match(hay, from, |m| out.push(m));
    }

    /// `matches`, each handed to `found` (detector by detector, then those
    /// `uncover` finds).
    fn each_match(&self, hay: &str, from: usize, mut found: impl FnMut(Match)) {
        if from >= hay.len() {
            return;
        }
        let input = Input::new(hay).span(from..hay.len());
        let mut which = PatternSet::new(self.detectors.len());
        self.set.which_overlapping_matches(&input, &mut which);
        if which.is_empty() {
            return;
        }
        // Only findings of different detectors can overlap.
        let overlaps = which.len() > 1;
        let mut findings = Vec::new();
        for i in which.iter() {
            self.search(i.as_usize(), hay, from, |m| {
                if overlaps {
                    findings.extend(m.finding);
                }
                found(m);
                true
            });
        }
        if overlaps {
            self.uncover(hay, &mut findings, &mut found);
        }
    }

    /// Each search of one detector goes on after its previous match, so a
    /// finding that reaches past the end of another detector's finding it
    /// overlaps hides its detector's later values that start inside it. If
    /// it then loses to the other in `resolve`, the text past the other's
    /// end would go out unjudged by that detector (an e-mail address right
    /// after a token the e-mail's local part began with). That detector is
    /// searched again from the other's end, up to the end of its finding;
    /// what it finds is looked past the same way, for a few rounds. Work is
    /// bounded (a body can be built of such overlaps): past `MAX_RESEARCH`
    /// searches, or after the last round, the rest of such a finding past
    /// the other's end is a finding of its own (masked, not searched).
    fn uncover(&self, hay: &str, findings: &mut Vec<Finding>, found: &mut impl FnMut(Match)) {
        const ROUNDS: usize = 4;
        const MAX_RESEARCH: usize = 64;
        let mut tried: Vec<(usize, usize)> = Vec::new();
        let mut searches = 0;
        for round in 0..=ROUNDS {
            findings.sort_by_key(|f| (f.start, f.end, f.detector));
            // (detector, from, until): its finding ran on to `until` past
            // another's end at `from`.
            let mut todo: Vec<(usize, usize, usize)> = Vec::new();
            for (j, a) in findings.iter().enumerate() {
                for b in findings[j + 1..].iter().take_while(|b| b.start < a.end) {
                    for (m, o) in [(a, b), (b, a)] {
                        if o.end < m.end && tried.binary_search(&(m.detector, o.end)).is_err() {
                            todo.push((m.detector, o.end, m.end));
                        }
                    }
                }
            }
            if todo.is_empty() {
                return;
            }
            // One search per detector and start, as far as any of its
            // findings there reached.
            todo.sort_unstable_by_key(|t| (t.0, t.1, std::cmp::Reverse(t.2)));
            todo.dedup_by_key(|t| (t.0, t.1));
            let mut new = Vec::new();
            for &(detector, at, until) in &todo {
                if round == ROUNDS || searches == MAX_RESEARCH {
                    let rest = Finding {
                        start: at,
                        end: until,
                        detector,
                    };
                    new.push(rest);
                    found(Match {
                        start: at,
                        end: until,
                        finding: Some(rest),
                    });
                    continue;
                }
                searches += 1;
                self.search(detector, hay, at, |m| {
                    if m.start >= until {
                        return false;
                    }
                    // Found before (from another overlap): already handed on.
                    if !m.finding.is_some_and(|f| {
                        findings
                            .binary_search_by_key(&(f.start, f.end, f.detector), |g| {
                                (g.start, g.end, g.detector)
                            })
                            .is_ok()
                            || new.contains(&f)
                    }) {
                        new.extend(m.finding);
                        found(m);
                    }
                    true
                });
            }
            tried.extend(todo.iter().map(|t| (t.0, t.1)));
            tried.sort_unstable();
            findings.append(&mut new);
        }
    }

    /// Matches of detector `i` in `hay[from..]`, each handed to `each` until
    /// it returns false.
    fn search(&self, i: usize, hay: &str, from: usize, mut each: impl FnMut(Match) -> bool) {
        let Some(d) = self.detectors.get(i) else {
            return;
        };
        let finding = |start: usize, end: usize| {
            let value = &hay[start..end];
            let before_ok = d.before.allows(hay.as_bytes()[..start].last().copied());
            (start < end && before_ok && d.check.is_none_or(|check| check(value))).then_some(
                Finding {
                    start,
                    end,
                    detector: i,
                },
            )
        };
        let input = Input::new(hay).span(from..hay.len());
        if d.group == 0 {
            // No capture slots: the regex engine can stay on its DFA.
            for m in d.regex.find_iter(input) {
                let go_on = each(Match {
                    start: m.start(),
                    end: m.end(),
                    finding: finding(m.start(), m.end()),
                });
                if !go_on {
                    return;
                }
            }
        } else {
            let mut caps: Captures = d.regex.create_captures();
            let mut at = from;
            while at < hay.len() {
                let input = Input::new(hay).span(at..hay.len());
                d.regex.search_captures(&input, &mut caps);
                let Some(m) = caps.get_match() else {
                    break;
                };
                let value = (1..caps.group_len())
                    .find_map(|g| caps.get_group(g))
                    .unwrap_or(m.span());
                let go_on = each(Match {
                    start: m.start(),
                    end: m.end(),
                    finding: finding(value.start, value.end),
                });
                if !go_on {
                    return;
                }
                // Patterns cannot match the empty string (refused when
                // compiled), so this always moves on.
                at = m.end().max(at + 1);
            }
        }
    }

    /// Keeps the non-overlapping winners of `findings`, sorted by start.
    pub fn resolve(&self, out: &mut Vec<Finding>) {
        if out.len() < 2 {
            return;
        }
        let risk = |f: &Finding| self.detectors[f.detector].risk;
        out.sort_by_key(|f| {
            (
                std::cmp::Reverse(risk(f)),
                f.start,
                std::cmp::Reverse(f.end),
                f.detector,
            )
        });
        // Kept findings never overlap, so of those starting before `f` ends
        // only the last can reach into it (a search per finding, not a
        // comparison with every one kept: a body can hold many).
        let mut kept: BTreeMap<usize, Finding> = BTreeMap::new();
        for f in out.drain(..) {
            let clash = kept
                .range(..f.end)
                .next_back()
                .is_some_and(|(_, k)| k.end > f.start);
            if !clash {
                kept.insert(f.start, f);
            }
        }
        out.extend(kept.into_values());
    }
}

/// Parses a pattern as the detectors use it: `\b` is an ASCII word boundary,
/// and it must not match the empty string (a detector that finds nothing,
/// everywhere, is a mistake).
fn parse(pattern: &str) -> Result<Hir, String> {
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .map_err(|e| e.to_string())?;
    let hir = ascii_word_boundaries(hir);
    if hir.properties().minimum_len() == Some(0) {
        return Err("the pattern matches the empty string".into());
    }
    Ok(hir)
}

fn compile(hir: &Hir) -> Result<Regex, String> {
    Regex::builder()
        .configure(
            meta::Config::new()
                .nfa_size_limit(Some(MAX_REGEX_SIZE))
                .hybrid_cache_capacity(REGEX_CACHE_BYTES),
        )
        .build_from_hir(hir)
        .map_err(|e| e.to_string())
}

/// The same tree with every Unicode word-boundary assertion made ASCII.
fn ascii_word_boundaries(hir: Hir) -> Hir {
    match hir.into_kind() {
        HirKind::Look(look) => Hir::look(match look {
            Look::WordUnicode => Look::WordAscii,
            Look::WordUnicodeNegate => Look::WordAsciiNegate,
            Look::WordStartUnicode => Look::WordStartAscii,
            Look::WordEndUnicode => Look::WordEndAscii,
            Look::WordStartHalfUnicode => Look::WordStartHalfAscii,
            Look::WordEndHalfUnicode => Look::WordEndHalfAscii,
            other => other,
        }),
        HirKind::Repetition(mut rep) => {
            rep.sub = Box::new(ascii_word_boundaries(*rep.sub));
            Hir::repetition(rep)
        }
        HirKind::Capture(mut cap) => {
            cap.sub = Box::new(ascii_word_boundaries(*cap.sub));
            Hir::capture(cap)
        }
        HirKind::Concat(subs) => Hir::concat(subs.into_iter().map(ascii_word_boundaries).collect()),
        HirKind::Alternation(subs) => {
            Hir::alternation(subs.into_iter().map(ascii_word_boundaries).collect())
        }
        HirKind::Empty => Hir::empty(),
        HirKind::Literal(lit) => Hir::literal(lit.0),
        HirKind::Class(class) => Hir::class(class),
    }
}

#[cfg(test)]
mod tests;
