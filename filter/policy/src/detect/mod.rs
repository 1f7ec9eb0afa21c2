//! Detectors of sensitive data: the built-in catalogue plus custom patterns,
//! compiled once per configuration.
//!
//! Each detector is compiled twice from the same syntax tree: a `meta::Regex`
//! that finds and locates matches (one lazy DFA of them all in front, `set`,
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
mod set;
pub mod validate;

use regex_automata::meta::{self, Regex};
use regex_automata::util::captures::Captures;
use regex_automata::{Anchored, Input};
use regex_syntax::hir::{Hir, HirKind, Look};
use std::collections::{BTreeMap, BTreeSet};
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

/// What a `Pool` of per-search scratch (lazy DFA caches, pattern sets)
/// makes a new one with.
type Make<T> =
    Box<dyn Fn() -> T + Send + Sync + std::panic::RefUnwindSafe + std::panic::UnwindSafe>;

#[derive(Debug, Clone)]
pub struct Catalogue {
    detectors: Vec<Detector>,
    /// Every detector's pattern (or its gate), to learn in one pass which
    /// can find something.
    set: set::Set,
    live: Arc<live::Liveness>,
    /// Some pattern asserts the start of the text or of a line (`^`).
    anchored_at_start: bool,
}

/// Custom patterns are refused beyond these compiled sizes (bytes), so a
/// configuration cannot make a worker's memory explode.
const MAX_REGEX_SIZE: usize = 2 << 20;

/// How far after a finding a value is looked for as if the text began
/// there (`Catalogue::follow_up`): longer than any built-in's value
/// but the private key's.
const FRESH_WINDOW: usize = 1024;

/// A match that fails its detector's checks up to this long is searched
/// past from its next character, not from its end (`Catalogue::search`).
const RETRY_SPAN: usize = 256;

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
        let set = set::Set::new(&gates, MAX_REGEX_SIZE * 8)?;
        let live = live::Liveness::new(&hirs)?;
        let anchored_at_start = hirs.iter().any(|h| {
            let looks = h.properties().look_set();
            [Look::Start, Look::StartLF, Look::StartCRLF]
                .into_iter()
                .any(|l| looks.contains(l))
        });
        Ok(Catalogue {
            detectors,
            set,
            live: Arc::new(live),
            anchored_at_start,
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
        self.each_match(text, 0, false, |m| out.extend(m.finding));
        self.resolve(out);
    }

    /// Every detector's matches in `hay[from..]`, findings not yet resolved
    /// against each other (see `resolve`). The bytes before `from` are only
    /// context: what `\b` and `^` see, as if the search had started at the
    /// text's beginning and found nothing before `from`; or, when
    /// `after_finding`, a finding ended at `from` (see `follow_up`).
    ///
    /// Returns the earliest finding's end in `hay` after which more text
    /// could still make or change a match (a stream holds from there).
    pub fn matches(
        &self,
        hay: &str,
        from: usize,
        after_finding: bool,
        out: &mut Vec<Match>,
    ) -> Option<usize> {
        out.clear();
        self.each_match(hay, from, after_finding, |m| out.push(m))
    }

    /// `matches`, each handed to `found`: detector by detector, then those
    /// `follow_up` finds.
    fn each_match(
        &self,
        hay: &str,
        from: usize,
        after_finding: bool,
        mut found: impl FnMut(Match),
    ) -> Option<usize> {
        if from >= hay.len() {
            return None;
        }
        let mut findings = Vec::new();
        self.set.scan(hay.as_bytes(), from, |named| {
            for d in named.which() {
                self.search(d, hay, from, false, |m| {
                    findings.extend(m.finding);
                    found(m);
                    true
                });
            }
        });
        if findings.is_empty() && !after_finding {
            return None;
        }
        self.follow_up(hay, from, after_finding, findings, &mut found)
    }

    /// Findings can hide values from the search of one detector that goes
    /// on after each of its matches, and from the text as the masked text
    /// shows it. This looks at the text around findings again, and at what
    /// that finds, until nothing new turns up.
    ///
    /// After a finding, a value is judged as the masked text shows it,
    /// where a placeholder ends right before it: as if the text began
    /// there. (`x@y.com4111 1111 1111 1111`: the card has no word boundary
    /// after the address's last letter, but stands alone once the address
    /// is `[EMAIL]`.) Each finding's end (and `from`, when `after_finding`)
    /// is searched once, anchored, over at most `FRESH_WINDOW` bytes, so
    /// each costs a bounded walk.
    ///
    /// Where two findings overlap, one loses in `resolve`, and the text of
    /// the loser outside the winner goes out. Its detector's search went on
    /// after the loser, so what it would find in that text past the
    /// winner's end is searched again, from there up to the loser's end
    /// (an e-mail address right after a token the e-mail's local part
    /// began with); and the part before the winner's start with the text
    /// taken to end there (an address whose match ran on into a key:
    /// `a@b.com.sk-proj-…` read as the domain `b.com.sk`). Work is bounded
    /// (a body can be built of such overlaps): past `MAX_RESEARCH` such
    /// searches, or after `ROUNDS` rounds, such a part is a finding of its
    /// own (masked, not searched).
    ///
    /// Returns the earliest finding's end whose window the text did not
    /// fill while a match there was still possible.
    fn follow_up(
        &self,
        hay: &str,
        from: usize,
        after_finding: bool,
        mut findings: Vec<Finding>,
        found: &mut impl FnMut(Match),
    ) -> Option<usize> {
        const ROUNDS: usize = 4;
        const MAX_RESEARCH: usize = 64;
        let mut followed = Followed {
            known: findings
                .iter()
                .map(|f| (f.start, f.end, f.detector))
                .collect(),
            new: Vec::new(),
            ends: findings.iter().map(|f| f.end).collect(),
        };
        if after_finding {
            followed.ends.push(from);
        }
        // Ends searched after.
        let mut ended: BTreeSet<usize> = BTreeSet::new();
        // Overlap searches done: (detector, from, where the text ends).
        let mut tried: Vec<(usize, usize, usize)> = Vec::new();
        let mut searches = 0;
        let mut which = Vec::new();
        let mut open: Option<usize> = None;
        let mut round = 0;
        loop {
            while let Some(at) = followed.ends.pop() {
                if !ended.insert(at) || !self.starts_afresh(hay, at) {
                    continue;
                }
                let window_end = floor_char_boundary(hay, at.saturating_add(FRESH_WINDOW));
                let Some(window) = hay.get(at..window_end) else {
                    continue;
                };
                let live = self.live.fresh(window.as_bytes(), &mut which);
                if live && window_end == hay.len() {
                    open = Some(open.map_or(at, |o| o.min(at)));
                }
                for &i in &which {
                    self.search(i, window, 0, true, |m| {
                        let shift = |f: Finding| Finding {
                            start: f.start + at,
                            end: f.end + at,
                            ..f
                        };
                        let m = Match {
                            start: m.start + at,
                            end: m.end + at,
                            finding: m.finding.map(shift),
                        };
                        if followed.take(&m) {
                            found(m);
                        }
                        false
                    });
                }
            }
            findings.append(&mut followed.new);
            if round > ROUNDS {
                return open;
            }
            findings.sort_by_key(|f| (f.start, f.end, f.detector));
            // (detector, from, until, end): its finding ran on to `until`
            // past another's end at `from` (the text's end), or began at
            // `from` before another's start at `until` (= `end`).
            let mut todo: Vec<(usize, usize, usize, usize)> = Vec::new();
            for (j, a) in findings.iter().enumerate() {
                for b in findings[j + 1..].iter().take_while(|b| b.start < a.end) {
                    for (m, o) in [(a, b), (b, a)] {
                        let mut want = |t: (usize, usize, usize, usize)| {
                            if tried.binary_search(&(t.0, t.1, t.3)).is_err() {
                                todo.push(t);
                            }
                        };
                        if o.end < m.end {
                            want((m.detector, o.end, m.end, hay.len()));
                        }
                        if m.start < o.start {
                            want((m.detector, m.start, o.start, o.start));
                        }
                    }
                }
            }
            if todo.is_empty() {
                return open;
            }
            // One search per detector, start and end of text, as far as any
            // of its findings there reached.
            todo.sort_unstable_by_key(|t| (t.0, t.1, t.3, std::cmp::Reverse(t.2)));
            todo.dedup_by_key(|t| (t.0, t.1, t.3));
            for &(detector, at, until, end) in &todo {
                if round == ROUNDS || searches == MAX_RESEARCH {
                    let rest = Match {
                        start: at,
                        end: until,
                        finding: Some(Finding {
                            start: at,
                            end: until,
                            detector,
                        }),
                    };
                    if followed.take(&rest) {
                        found(rest);
                    }
                    continue;
                }
                searches += 1;
                let Some(text) = hay.get(..end) else {
                    continue;
                };
                self.search(detector, text, at, false, |m| {
                    if m.start >= until {
                        return false;
                    }
                    // Found before (from another overlap): already handed on.
                    if followed.take(&m) {
                        found(m);
                    }
                    true
                });
            }
            tried.extend(todo.iter().map(|t| (t.0, t.1, t.3)));
            tried.sort_unstable();
            findings.append(&mut followed.new);
            round += 1;
        }
    }

    /// Whether a value at `at` could be judged otherwise as if the text
    /// began there than with the byte before it: that byte is a word byte,
    /// a line break or one of a base64 text (`Before`), or a pattern looks
    /// for the start of the text or a line.
    fn starts_afresh(&self, hay: &str, at: usize) -> bool {
        match hay.as_bytes()[..at].last() {
            None => false,
            Some(&b) => {
                self.anchored_at_start
                    || b.is_ascii_alphanumeric()
                    || matches!(b, b'_' | b'\n' | b'\r')
                    || validate::base64ish(b)
            }
        }
    }

    /// Matches of detector `i` in `hay[from..]` (only at `from` when
    /// `anchored`), each handed to `each` until it returns false.
    fn search(
        &self,
        i: usize,
        hay: &str,
        from: usize,
        anchored: bool,
        mut each: impl FnMut(Match) -> bool,
    ) {
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
        let anchored = if anchored {
            Anchored::Yes
        } else {
            Anchored::No
        };
        let mut caps: Option<Captures> = (d.group > 0).then(|| d.regex.create_captures());
        // Searches spared for what a failed match may hide (below): a text
        // made of failing matches costs a bounded multiple of the plain
        // search; past it, a failed match hides what starts inside it.
        let mut spare = 64 + (hay.len() - from.min(hay.len())) / 8;
        let mut at = from;
        while at < hay.len() {
            let input = Input::new(hay).span(at..hay.len()).anchored(anchored);
            let (mut span, value) = match caps.as_mut() {
                // No capture slots: the regex engine can stay on its DFA.
                None => match d.regex.search(&input) {
                    Some(m) => (m.span(), m.span()),
                    None => break,
                },
                Some(caps) => {
                    d.regex.search_captures(&input, caps);
                    let Some(m) = caps.get_match() else {
                        break;
                    };
                    let value = (1..caps.group_len())
                        .find_map(|g| caps.get_group(g))
                        .unwrap_or(m.span());
                    (m.span(), value)
                }
            };
            let mut finding = finding(value.start, value.end);
            if finding.is_none() && caps.is_none() && d.check.is_some() && spare > 0 {
                // Failed its check: a shorter match at the same start may
                // pass it (`4111111111111111 123`, a card and its code,
                // reads as one 19-digit number first).
                if let Some(shorter) = self.shorter_finding(i, hay, span, &mut spare) {
                    span = regex_automata::Span::from(shorter.start..shorter.end);
                    finding = Some(shorter);
                }
            }
            let go_on = each(Match {
                start: span.start,
                end: span.end,
                finding,
            });
            if !go_on {
                return;
            }
            // A match that is not a finding hides nothing: the next search
            // starts right after its start (`123-45-6789 4111 1111 1111
            // 1111`: a card's search first matches `123-45-6789 4111`,
            // which fails the card check, and would otherwise go on after
            // it, past the card's start). Unless it is longer than
            // `RETRY_SPAN` or the spare searches are spent: then it hides
            // what starts inside it, as it always did. Patterns cannot
            // match the empty string (refused when compiled), so this
            // always moves on.
            at = match finding {
                None if span.end - span.start <= RETRY_SPAN && spare > 0 => {
                    spare -= 1;
                    span.start + hay[span.start..].chars().next().map_or(1, char::len_utf8)
                }
                _ => span.end.max(at + 1),
            };
        }
    }

    /// The longest finding of detector `i` (one without capture groups)
    /// that starts where `failed`, a match that failed its check, starts
    /// and ends before it does. Bounded: only for a match up to
    /// `RETRY_SPAN` long, whose shorter matches are each one search, taken
    /// from `spare`.
    fn shorter_finding(
        &self,
        i: usize,
        hay: &str,
        failed: regex_automata::Span,
        spare: &mut usize,
    ) -> Option<Finding> {
        let d = self.detectors.get(i)?;
        let check = d.check?;
        if failed.end - failed.start > RETRY_SPAN
            || !d
                .before
                .allows(hay.as_bytes()[..failed.start].last().copied())
        {
            return None;
        }
        let mut end = failed.end;
        loop {
            // Shorter than the last: it ends at least one character earlier.
            let shorter = floor_char_boundary(hay, end.checked_sub(1)?);
            if shorter <= failed.start || *spare == 0 {
                return None;
            }
            *spare -= 1;
            let input = Input::new(hay)
                .span(failed.start..shorter)
                .anchored(Anchored::Yes);
            let m = d.regex.search(&input)?;
            if check(&hay[m.start()..m.end()]) {
                return Some(Finding {
                    start: m.start(),
                    end: m.end(),
                    detector: i,
                });
            }
            end = m.end();
        }
    }

    /// Whether a match in `text` failed its check and was too long to be
    /// searched past from its next character (`RETRY_SPAN`): values that
    /// start inside it are not looked for.
    #[cfg(all(test, not(target_arch = "wasm32")))]
    pub(crate) fn has_long_failed_match(&self, text: &str) -> bool {
        let mut all = Vec::new();
        self.matches(text, 0, false, &mut all);
        all.iter()
            .any(|m| m.finding.is_none() && m.end - m.start > RETRY_SPAN)
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

/// What `Catalogue::follow_up` has found so far.
struct Followed {
    /// Every finding handed on: one found again is not handed on twice.
    known: BTreeSet<(usize, usize, usize)>,
    /// Findings handed on since the last round.
    new: Vec<Finding>,
    /// Ends of findings still to search after.
    ends: Vec<usize>,
}

impl Followed {
    /// Whether `m` is to be handed on: not a finding, or a finding not
    /// found before (then kept, its end to search after).
    fn take(&mut self, m: &Match) -> bool {
        let Some(f) = m.finding else {
            return true;
        };
        if !self.known.insert((f.start, f.end, f.detector)) {
            return false;
        }
        self.new.push(f);
        self.ends.push(f.end);
        true
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

/// A lazy DFA of all detectors at once, reporting every one that matches,
/// that gives up where its cache thrashes (high-entropy text), and its
/// callers then leave the text to each detector's own regex: once cleared
/// 3 times, a cache that fills again before `BYTES_PER_STATE` bytes were
/// searched per state. It goes on after its next clear, once that many
/// bytes have been searched since the last one.
fn giving_up(cache: usize) -> regex_automata::hybrid::dfa::Config {
    regex_automata::hybrid::dfa::Config::new()
        .match_kind(regex_automata::MatchKind::All)
        .cache_capacity(cache)
        .skip_cache_capacity_check(true)
        .minimum_cache_clear_count(Some(3))
        .minimum_bytes_per_state(Some(BYTES_PER_STATE))
}

/// The regex crate gives up below 10, but a state of the DFA of all
/// detectors costs about 60,000 instructions to build, while the detectors'
/// own regexes search a byte in a few hundred: at 10 bytes per state,
/// many short base64 strings cost 6,000 instructions per byte. Measured
/// natively: 5,000 strings of 200 random base64 characters 1.2-1.5 s at
/// 10, 0.17-0.21 s at 100; a streamed base64 answer 4.0 -> 16.9 MB/s; logs
/// and text of varied ids and addresses (1 KB strings) the same at both
/// once warm.
const BYTES_PER_STATE: usize = 100;

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

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
pub(crate) mod tests;
