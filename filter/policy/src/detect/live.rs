//! Which positions of a growing text could still start a match.
//!
//! For text that is still arriving (a streamed answer), a position is *live*
//! for a detector when the detector's anchored DFA, started there, is not
//! dead after the last byte that has arrived: more text could still make a
//! match start there, or change the one that does. Every other position is
//! decided for good (a DFA's dead state is final), so everything before the
//! earliest live position of every detector can be released. (A start
//! whose match is complete, which a DFA reports one byte late, may count
//! either way: nothing can change it.)
//!
//! Each detector has an anchored lazy DFA compiled from the same syntax tree
//! as its finding regex, with leftmost-first semantics: a state dies once
//! the match the regex would report can no longer change. A table per
//! look-behind class and first byte says which detectors can start at a
//! position at all, so most bytes cost one lookup. Per stream, each detector
//! keeps its earliest live candidate (start and DFA state) and resumes it
//! when more text arrives; when it dies, the later starts are tried in
//! order. Each start is walked at most once from its start to its death.
//!
//! In front of them, one anchored DFA of all detectors together, reporting
//! every match of every one (`MatchKind::All`), gates them: a start at
//! which it dies is dead for every detector (their threads are a subset of
//! its threads). Its earliest live start is found without walking every
//! start forward (in prose nearly every byte starts a candidate, an
//! e-mail's local part, that lives to the end of its word): a DFA of every
//! prefix of every detector's matches, reversed, walks back from the end
//! of the text once and names each start whose text could still grow into
//! a match. So the detectors' own automata only walk from that start on
//! (the word in progress, in prose), and a byte costs a few steps in all.
//! Matches among the starts that died are found when their text goes out
//! (`any_match`).

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::hybrid::LazyStateID;
use regex_automata::nfa::thompson;
use regex_automata::util::pool::Pool;
use regex_automata::util::start;
use regex_automata::{Anchored, Input, MatchKind};
use regex_syntax::hir::{Class, ClassBytes, ClassBytesRange, Hir, HirKind, Repetition};
use std::sync::atomic::{AtomicU64, Ordering};

/// Lazy DFA cache per detector: states are computed as text needs them; when
/// full, the cache is cleared (candidates then walk again from their start).
const CACHE_BYTES: usize = 256 << 10;

/// Lazy DFA cache of the DFA of all detectors together.
const ANY_CACHE_BYTES: usize = 1 << 20;

/// Look-behind classes that decide a DFA's start state: start of text, after
/// `\n`, after `\r`, after an ASCII word byte, after any other byte.
const CLASSES: usize = 5;

fn class_of(prev: Option<u8>) -> usize {
    match prev {
        None => 0,
        Some(b) => usize::from(BYTE_CLASS[usize::from(b)]),
    }
}

/// The look-behind class after each byte.
const BYTE_CLASS: [u8; 256] = {
    let mut t = [4u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = match c {
            b'\n' => 1,
            b'\r' => 2,
            _ if c.is_ascii_alphanumeric() || c == b'_' => 3,
            _ => 4,
        };
        b += 1;
    }
    t
};

const REPRESENTATIVE: [Option<u8>; CLASSES] =
    [None, Some(b'\n'), Some(b'\r'), Some(b'a'), Some(b' ')];

type MakeCaches = super::Make<CacheSet>;

/// One lazy DFA cache per detector, with an identity: a DFA state is only
/// valid with the cache (and cache generation) that produced it.
struct CacheSet {
    id: u64,
    caches: Vec<Cache>,
    any: Cache,
    prefixes: Cache,
    /// The DFA of all detectors walked from a finding's end (`fresh`).
    scan: Cache,
    /// `any_match`'s DFA.
    unanchored: Cache,
    /// The starts the prefix DFA names, latest first (reused).
    starts: Vec<usize>,
}

static NEXT_CACHE_SET: AtomicU64 = AtomicU64::new(1);

pub struct Liveness {
    dfas: Vec<DFA>,
    /// Every detector in one anchored DFA that reports all matches.
    any: DFA,
    /// The same, for `any_match`'s unanchored search, which gives up where
    /// its cache thrashes (and then answers yes). On long high-entropy text
    /// (base64 that is no media format, tokens) nearly every byte needs a
    /// new state; never giving up, this search was three quarters of a
    /// streamed base64 answer's instructions.
    any_unanchored: DFA,
    /// Every prefix of every detector's matches, reversed: walked back from
    /// the end of the text, it is in a match state at each start whose text
    /// to the end could still grow into a match.
    prefixes: DFA,
    /// Words of one detector bitset.
    words: usize,
    /// `[(class * 256 + byte) * words ..][..words]`: the detectors whose
    /// anchored DFA survives `byte` as its first byte after a look-behind of
    /// `class`.
    starts: Vec<u64>,
    caches: Pool<CacheSet, MakeCaches>,
}

impl std::fmt::Debug for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Liveness")
            .field("detectors", &self.dfas.len())
            .finish_non_exhaustive()
    }
}

/// Where each detector stands in one growing text.
#[derive(Debug, Clone, Default)]
pub struct Tracks {
    per: Vec<Track>,
    /// Where the DFA of all detectors stands: every start before its
    /// earliest live one is dead for every detector.
    any: Track,
    /// Starts, not yet released, from which a walk found a match complete:
    /// text containing them needs the finding regexes. (Starts the gate
    /// passed over unwalked are not here: `any_match` finds theirs.)
    pub matched: Vec<usize>,
    /// The detector that held last time: tried first at the gate's
    /// frontier (in prose, the word in progress keeps the same one live).
    hint: Option<usize>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Track {
    /// Every start before `next` is decided (dead), except `live`'s, if any;
    /// while a candidate is live, `next` is the position after its start.
    next: usize,
    live: Option<Candidate>,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    start: usize,
    /// Bytes before `at` have been walked.
    at: usize,
    /// `None` when the walk must start over (see `stuck`).
    sid: Option<LazyStateID>,
    cache: u64,
    generation: usize,
    /// Where the last match seen on the walk ended (absolute).
    match_end: Option<usize>,
}

/// The earliest live position of a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// Absolute position; the text's end when nothing is live.
    pub from: usize,
    /// The detector live there.
    pub detector: Option<usize>,
}

enum Step {
    Live(Candidate),
    Dead { match_end: Option<usize> },
}

impl Liveness {
    pub fn new(hirs: &[Hir]) -> Result<Liveness, String> {
        let dfas = hirs
            .iter()
            .map(|hir| {
                lazy_dfa(
                    std::slice::from_ref(hir),
                    Direction::Forward,
                    MatchKind::LeftmostFirst,
                    16 << 20,
                    CACHE_BYTES,
                )
            })
            .collect::<Result<Vec<DFA>, String>>()?;
        let any = lazy_dfa(
            hirs,
            Direction::Forward,
            MatchKind::All,
            64 << 20,
            ANY_CACHE_BYTES,
        )?;
        let any_unanchored = DFA::builder()
            .configure(super::giving_up(ANY_CACHE_BYTES))
            .build_from_nfa(any.get_nfa().clone())
            .map_err(|e| e.to_string())?;
        let prefix_hirs: Vec<Hir> = hirs.iter().map(prefixes).collect();
        let prefixes = lazy_dfa(
            &prefix_hirs,
            Direction::Reverse,
            MatchKind::All,
            64 << 20,
            ANY_CACHE_BYTES,
        )?;
        let words = dfas.len().div_ceil(64).max(1);
        let mut starts = vec![0u64; CLASSES * 256 * words];
        for (d, dfa) in dfas.iter().enumerate() {
            let mut cache = dfa.create_cache();
            for (class, prev) in REPRESENTATIVE.iter().enumerate() {
                let config = start::Config::new()
                    .anchored(Anchored::Yes)
                    .look_behind(*prev);
                let Ok(sid) = dfa.start_state(&mut cache, &config) else {
                    // Cannot tell: every byte may start a match.
                    for byte in 0..256 {
                        starts[(class * 256 + byte) * words + d / 64] |= 1 << (d % 64);
                    }
                    continue;
                };
                if sid.is_dead() {
                    continue;
                }
                for byte in 0..=255u8 {
                    let survives = dfa
                        .next_state(&mut cache, sid, byte)
                        .map_or(true, |next| !next.is_dead());
                    if survives {
                        starts[(class * 256 + usize::from(byte)) * words + d / 64] |= 1 << (d % 64);
                    }
                }
            }
        }
        let for_caches = dfas.clone();
        let any_for_cache = any.clone();
        let prefixes_for_cache = prefixes.clone();
        let unanchored_for_cache = any_unanchored.clone();
        let make: MakeCaches = Box::new(move || CacheSet {
            id: NEXT_CACHE_SET.fetch_add(1, Ordering::Relaxed),
            caches: for_caches.iter().map(DFA::create_cache).collect(),
            any: any_for_cache.create_cache(),
            prefixes: prefixes_for_cache.create_cache(),
            scan: any_for_cache.create_cache(),
            unanchored: unanchored_for_cache.create_cache(),
            starts: Vec::new(),
        });
        Ok(Liveness {
            dfas,
            any,
            any_unanchored,
            prefixes,
            words,
            starts,
            caches: Pool::new(make),
        })
    }

    /// Advances every detector to the end of `hay`, whose first byte is at
    /// absolute position `base`, and returns the earliest live position.
    ///
    /// Positions before `base` must have been decided by earlier calls on
    /// the same `tracks`, and `hay` must hold one byte before every position
    /// not yet decided (its look-behind), unless that position is 0. The
    /// text is UTF-8 and `hay` ends at a character boundary (the prefix DFA
    /// knows a detector's characters whole).
    pub fn advance(&self, tracks: &mut Tracks, hay: &[u8], base: usize) -> Hold {
        let end = base + hay.len();
        let n = self.dfas.len();
        tracks.per.resize(n, Track::default());
        let mut set = self.caches.get();
        let CacheSet {
            id,
            caches,
            any,
            prefixes,
            starts,
            ..
        } = &mut *set;
        let cache_id = *id;
        let frontier = self.gate(tracks, hay, base, any, prefixes, starts, cache_id);
        if frontier >= end {
            // Nothing is live: every start is decided, its matches noted.
            for t in tracks.per.iter_mut() {
                t.live = None;
                t.next = t.next.max(end);
            }
            return Hold {
                from: end,
                detector: None,
            };
        }

        if let Some(hold) = self.hint_holds(tracks, frontier, hay, base, caches, cache_id) {
            return hold;
        }

        let mut waiting = 0usize; // detectors without a live candidate
        for d in 0..n {
            let (Some(track), Some(cache), Some(dfa)) =
                (tracks.per.get_mut(d), caches.get_mut(d), self.dfas.get(d))
            else {
                continue;
            };
            if track.live.is_some_and(|c| c.start < frontier) {
                // Dead for every detector, its matches (if any) noted by
                // the gate: not walked on.
                track.live = None;
            }
            if let Some(c) = track.live {
                match self.resume(dfa, c, hay, base, cache, cache_id) {
                    Step::Live(c) => track.live = Some(c),
                    Step::Dead { match_end } => {
                        if match_end.is_some() {
                            tracks.matched.push(c.start);
                        }
                        track.live = None;
                        track.next = c.start + 1;
                    }
                }
            }
            if track.live.is_none() {
                // Starts before the frontier are dead for every detector.
                track.next = track.next.max(frontier);
                waiting += 1;
            }
        }

        if waiting > 0 {
            let from = tracks
                .per
                .iter()
                .filter(|t| t.live.is_none())
                .map(|t| t.next)
                .min()
                .unwrap_or(end)
                .max(base);
            let mut s = from;
            while s < end && waiting > 0 {
                let i = s - base;
                let prev = if s == 0 {
                    None
                } else {
                    i.checked_sub(1).and_then(|j| hay.get(j)).copied()
                };
                let byte = usize::from(hay[i]);
                let row = (class_of(prev) * 256 + byte) * self.words;
                for w in 0..self.words {
                    let mut bits = self.starts.get(row + w).copied().unwrap_or(0);
                    while bits != 0 {
                        let d = w * 64 + bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        let (Some(track), Some(cache), Some(dfa)) =
                            (tracks.per.get_mut(d), caches.get_mut(d), self.dfas.get(d))
                        else {
                            continue;
                        };
                        if track.live.is_some() || track.next > s {
                            continue;
                        }
                        match self.begin(dfa, s, prev, hay, base, cache, cache_id) {
                            Step::Live(c) => {
                                track.live = Some(c);
                                track.next = s + 1;
                                waiting -= 1;
                            }
                            Step::Dead { match_end } => {
                                if match_end.is_some() {
                                    tracks.matched.push(s);
                                }
                            }
                        }
                    }
                }
                s += 1;
            }
            for t in tracks.per.iter_mut().filter(|t| t.live.is_none()) {
                t.next = t.next.max(end);
            }
        }

        let mut hold = Hold {
            from: end,
            detector: None,
        };
        for (d, t) in tracks.per.iter().enumerate() {
            if let Some(c) = t.live {
                if c.start < hold.from {
                    hold = Hold {
                        from: c.start,
                        detector: Some(d),
                    };
                }
            }
        }
        tracks.hint = hold.detector;
        hold
    }

    /// The hold when the hinted detector is live at the gate's frontier:
    /// no start before it is live for anyone (the gate), so it is the
    /// earliest, and the other detectors need not be walked now. Their
    /// tracks stay as they were: a later full pass drops their candidates
    /// from before its frontier and starts the rest from there, and nothing
    /// past this hold is released meanwhile. `None` otherwise (the hint's
    /// walk is kept, so the full pass does not repeat it).
    fn hint_holds(
        &self,
        tracks: &mut Tracks,
        frontier: usize,
        hay: &[u8],
        base: usize,
        caches: &mut [Cache],
        cache_id: u64,
    ) -> Option<Hold> {
        let d = tracks.hint?;
        let (Some(track), Some(cache), Some(dfa)) =
            (tracks.per.get_mut(d), caches.get_mut(d), self.dfas.get(d))
        else {
            return None;
        };
        let step = match track.live {
            Some(c) if c.start == frontier => self.resume(dfa, c, hay, base, cache, cache_id),
            // Starts before the frontier are dead; one after it means this
            // detector has decided the frontier already (dead there).
            Some(c) if c.start > frontier => return None,
            _ if track.next > frontier => return None,
            _ => {
                let i = frontier.checked_sub(base)?;
                let prev = if frontier == 0 {
                    None
                } else {
                    i.checked_sub(1).and_then(|j| hay.get(j)).copied()
                };
                let byte = usize::from(*hay.get(i)?);
                let row = (class_of(prev) * 256 + byte) * self.words + d / 64;
                if self
                    .starts
                    .get(row)
                    .is_some_and(|w| w & (1 << (d % 64)) == 0)
                {
                    // Cannot start here at all.
                    return None;
                }
                self.begin(dfa, frontier, prev, hay, base, cache, cache_id)
            }
        };
        match step {
            Step::Live(c) => {
                track.live = Some(c);
                track.next = frontier + 1;
                Some(Hold {
                    from: frontier,
                    detector: Some(d),
                })
            }
            Step::Dead { match_end } => {
                if match_end.is_some() {
                    tracks.matched.push(frontier);
                }
                track.live = None;
                track.next = frontier + 1;
                None
            }
        }
    }

    /// Whether some detector's pattern matches somewhere in `text` taken on
    /// its own (the DFA of all detectors, unanchored): when not, no detector
    /// finds anything in it. Yes when the DFA cannot tell.
    pub fn may_match(&self, text: &str) -> bool {
        let mut set = self.caches.get();
        let input = Input::new(text).earliest(true);
        !matches!(self.any.try_search_fwd(&mut set.any, &input), Ok(None))
    }

    /// Forgets everything before `from`: the text there was cut off (masked
    /// whole); detection starts afresh at `from`.
    pub fn restart(&self, tracks: &mut Tracks, from: usize) {
        tracks.any = Track {
            next: from,
            live: None,
        };
        tracks.per.clear();
        tracks.per.resize(
            self.dfas.len(),
            Track {
                next: from,
                live: None,
            },
        );
        tracks.matched.clear();
    }

    /// Follows one detector's live candidate over `hay` (while the text it
    /// covers is cut off): `None` while it is still live, else where its
    /// last match ended (absolute), if it had one.
    pub fn follow(
        &self,
        tracks: &mut Tracks,
        detector: usize,
        hay: &[u8],
        base: usize,
    ) -> Option<Option<usize>> {
        let mut set = self.caches.get();
        let CacheSet { id, caches, .. } = &mut *set;
        let cache_id = *id;
        let (Some(track), Some(cache), Some(dfa)) = (
            tracks.per.get_mut(detector),
            caches.get_mut(detector),
            self.dfas.get(detector),
        ) else {
            return Some(None);
        };
        let Some(c) = track.live else {
            return Some(None);
        };
        match self.resume(dfa, c, hay, base, cache, cache_id) {
            Step::Live(c) => {
                track.live = Some(c);
                None
            }
            Step::Dead { match_end } => {
                track.live = None;
                Some(match_end)
            }
        }
    }

    /// The earliest start, from where `tracks.any` left off, at which the
    /// DFA of all detectors is live at the end of `hay` (the end if none):
    /// every start before it is dead for every detector.
    ///
    /// The live candidate of the last call walks on over the new bytes; when
    /// it dies, the prefix DFA walks back once from the end to it and names
    /// the starts that may still be live, and the DFA of all detectors walks
    /// forward from the earliest of them (a new candidate). Starts that die
    /// are not walked one by one: a match among them is found by
    /// `any_match` when their text goes out.
    #[allow(clippy::too_many_arguments)]
    fn gate(
        &self,
        tracks: &mut Tracks,
        hay: &[u8],
        base: usize,
        cache: &mut Cache,
        prefix_cache: &mut Cache,
        starts: &mut Vec<usize>,
        cache_id: u64,
    ) -> usize {
        let end = base + hay.len();
        let t = &mut tracks.any;
        if let Some(c) = t.live {
            match self.resume(&self.any, c, hay, base, cache, cache_id) {
                Step::Live(c) => {
                    t.live = Some(c);
                    return c.start;
                }
                Step::Dead { match_end } => {
                    if match_end.is_some() {
                        tracks.matched.push(c.start);
                    }
                    t.live = None;
                    t.next = c.start + 1;
                }
            }
        }
        let from = t.next.max(base);
        if from >= end {
            t.next = end;
            return end;
        }
        // The prefix DFA cannot tell (it never gives up as configured):
        // every start from `from` on may be live.
        if !self.prefix_starts(prefix_cache, hay, base, from, starts) {
            starts.clear();
            starts.extend((from..end).rev());
        }
        // Earliest first. A start named there that the DFA of all detectors
        // finds dead (a bound the prefix DFA does not count, an assertion it
        // took as passing) is passed over.
        while let Some(s) = starts.pop() {
            let prev = if s == 0 {
                None
            } else {
                (s - 1).checked_sub(base).and_then(|j| hay.get(j)).copied()
            };
            match self.begin(&self.any, s, prev, hay, base, cache, cache_id) {
                Step::Live(c) => {
                    t.live = Some(c);
                    t.next = s + 1;
                    return s;
                }
                Step::Dead { match_end } => {
                    if match_end.is_some() {
                        tracks.matched.push(s);
                    }
                }
            }
        }
        t.next = end;
        end
    }

    /// Puts in `starts`, latest first, each start in `from..end` whose text
    /// to the end of `hay` is a prefix of some detector's match, walking the
    /// reversed prefix DFA back from the end; false if it could not go on.
    fn prefix_starts(
        &self,
        cache: &mut Cache,
        hay: &[u8],
        base: usize,
        from: usize,
        starts: &mut Vec<usize>,
    ) -> bool {
        starts.clear();
        let dfa = &self.prefixes;
        let Some(lo) = from.checked_sub(base) else {
            return false;
        };
        // Nothing follows the text yet: walked back from its end.
        let config = start::Config::new().anchored(Anchored::Yes);
        let Ok(mut sid) = dfa.start_state(cache, &config) else {
            return false;
        };
        let mut j = hay.len();
        while j > lo {
            j -= 1;
            let Some(&byte) = hay.get(j) else {
                return false;
            };
            let known = if sid.is_tagged() {
                None
            } else {
                Some(dfa.next_state_untagged(cache, sid, byte)).filter(|n| !n.is_unknown())
            };
            sid = match known {
                Some(next) => next,
                None => match dfa.next_state(cache, sid, byte) {
                    Ok(next) => next,
                    Err(_) => return false,
                },
            };
            if sid.is_tagged() {
                // Matches show one byte late: the start after this byte
                // (not the text's end, where every walk starts).
                if sid.is_match() && j + 1 < hay.len() {
                    starts.push(base + j + 1);
                }
                if sid.is_dead() {
                    return true;
                }
            }
        }
        // Whether `from` itself is named shows after the byte before it.
        let last = match lo.checked_sub(1) {
            Some(k) => match hay.get(k) {
                Some(&byte) => dfa.next_state(cache, sid, byte),
                None => return false,
            },
            None if from == 0 => dfa.next_eoi_state(cache, sid),
            None => return false,
        };
        match last {
            Ok(sid) => {
                if sid.is_match() && lo < hay.len() {
                    starts.push(from);
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Whether some detector's pattern matches in `hay[from..]` (the DFA of
    /// all detectors, unanchored, with the bytes before `from` as
    /// look-behind). Yes when the DFA cannot tell (it gave up).
    pub fn any_match(&self, hay: &[u8], from: usize) -> bool {
        let mut set = self.caches.get();
        let input = Input::new(hay).range(from..).earliest(true);
        let found = self
            .any_unanchored
            .try_search_fwd(&mut set.unanchored, &input);
        !matches!(found, Ok(None))
    }

    /// Which detectors' patterns match at the start of `text`, taken as
    /// the start of a text (the DFA of all detectors, anchored), put in
    /// `which` (sorted, once each); and whether more text after it could
    /// still make or change such a match (the walk is not dead at its end:
    /// a stream holds from there). Cannot tell: every detector, and live.
    pub fn fresh(&self, text: &[u8], which: &mut Vec<usize>) -> bool {
        which.clear();
        let live = self.fresh_walk(text, which);
        which.sort_unstable();
        which.dedup();
        live
    }

    fn fresh_walk(&self, text: &[u8], which: &mut Vec<usize>) -> bool {
        let mut set = self.caches.get();
        let cache = &mut set.scan;
        let every = |which: &mut Vec<usize>| which.extend(0..self.dfas.len());
        let config = start::Config::new().anchored(Anchored::Yes);
        let Ok(mut sid) = self.any.start_state(cache, &config) else {
            every(which);
            return true;
        };
        let named = |sid: LazyStateID, cache: &Cache, which: &mut Vec<usize>| {
            if sid.is_match() {
                let n = self.any.match_len(cache, sid);
                which.extend((0..n).map(|k| self.any.match_pattern(cache, sid, k).as_usize()));
            }
        };
        for &byte in text {
            sid = match self.any.next_state(cache, sid, byte) {
                Ok(next) => next,
                Err(_) => {
                    every(which);
                    return true;
                }
            };
            named(sid, cache, which);
            if sid.is_dead() {
                return false;
            }
        }
        match self.any.next_eoi_state(cache, sid) {
            Ok(eoi) => named(eoi, cache, which),
            Err(_) => every(which),
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn begin(
        &self,
        dfa: &DFA,
        s: usize,
        prev: Option<u8>,
        hay: &[u8],
        base: usize,
        cache: &mut Cache,
        cache_id: u64,
    ) -> Step {
        let config = start::Config::new()
            .anchored(Anchored::Yes)
            .look_behind(prev);
        let Ok(sid) = dfa.start_state(cache, &config) else {
            return stuck(s, cache_id);
        };
        let c = Candidate {
            start: s,
            at: s,
            sid: Some(sid),
            cache: cache_id,
            generation: cache.clear_count(),
            match_end: None,
        };
        self.walk(dfa, c, hay, base, cache)
    }

    fn resume(
        &self,
        dfa: &DFA,
        c: Candidate,
        hay: &[u8],
        base: usize,
        cache: &mut Cache,
        cache_id: u64,
    ) -> Step {
        if c.sid.is_some() && c.cache == cache_id && c.generation == cache.clear_count() {
            return self.walk(dfa, c, hay, base, cache);
        }
        // Its state belongs to another cache or an older generation of
        // this one: walk again from the start.
        let prev = if c.start == 0 {
            None
        } else {
            (c.start - 1)
                .checked_sub(base)
                .and_then(|j| hay.get(j))
                .copied()
        };
        self.begin(dfa, c.start, prev, hay, base, cache, cache_id)
    }

    fn walk(
        &self,
        dfa: &DFA,
        mut c: Candidate,
        hay: &[u8],
        base: usize,
        cache: &mut Cache,
    ) -> Step {
        let Some(sid) = c.sid else {
            return stuck(c.start, c.cache);
        };
        let Some(bytes) = c.at.checked_sub(base).and_then(|i| hay.get(i..)) else {
            return stuck(c.start, c.cache);
        };
        match run(dfa, cache, sid, bytes) {
            Run::Dead { matched } => Step::Dead {
                match_end: matched.map(|m| c.at + m).or(c.match_end),
            },
            Run::Live { sid, matched } => {
                if let Some(m) = matched {
                    c.match_end = Some(c.at + m);
                }
                c.at += bytes.len();
                c.sid = Some(sid);
                c.generation = cache.clear_count();
                Step::Live(c)
            }
            Run::Stuck => stuck(c.start, c.cache),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Forward,
    Reverse,
}

/// One lazy DFA of `hirs` (anchored and unanchored starts), without
/// capture states.
fn lazy_dfa(
    hirs: &[Hir],
    direction: Direction,
    kind: MatchKind,
    nfa_limit: usize,
    cache: usize,
) -> Result<DFA, String> {
    let nfa = thompson::Compiler::new()
        .configure(
            thompson::Config::new()
                .reverse(direction == Direction::Reverse)
                .which_captures(thompson::WhichCaptures::None)
                .nfa_size_limit(Some(nfa_limit)),
        )
        .build_many_from_hir(hirs)
        .map_err(|e| e.to_string())?;
    DFA::builder()
        .configure(
            DFA::config()
                .match_kind(kind)
                .cache_capacity(cache)
                .skip_cache_capacity_check(true),
        )
        .build_from_nfa(nfa)
        .map_err(|e| e.to_string())
}

/// Every prefix of every match of `hir`: the text of a start that more
/// text could still grow into a match. An assertion is also taken as
/// passing where nothing follows it yet (more text may make it pass), so
/// this is a superset where assertions end a prefix.
fn prefixes(hir: &Hir) -> Hir {
    let optional = |sub: Hir| {
        Hir::repetition(Repetition {
            min: 0,
            max: Some(1),
            greedy: true,
            sub: Box::new(sub),
        })
    };
    match hir.kind() {
        HirKind::Empty => Hir::empty(),
        HirKind::Literal(lit) => lit.0.iter().rev().fold(Hir::empty(), |rest, &b| {
            optional(Hir::concat(vec![Hir::literal([b]), rest]))
        }),
        HirKind::Class(class) => optional(coarse(class)),
        HirKind::Look(_) => optional(hir.clone()),
        HirKind::Repetition(rep) => {
            // Whole repetitions, then a prefix of one more. Any number of
            // them, not up to the bound: walked backwards, a counter would
            // multiply the states (one set of counts per alignment), and
            // the forward walk from a start this admits checks the bound.
            if rep.max == Some(0) {
                return Hir::empty();
            }
            let whole = Hir::repetition(Repetition {
                min: 0,
                max: None,
                greedy: true,
                sub: Box::new(relaxed(&rep.sub)),
            });
            Hir::concat(vec![whole, prefixes(&rep.sub)])
        }
        HirKind::Capture(cap) => prefixes(&cap.sub),
        HirKind::Concat(parts) => {
            // A prefix of the first part, or all of it and a prefix of the
            // rest.
            let mut rev = parts.iter().rev();
            let last = rev.next().map(prefixes).unwrap_or_else(Hir::empty);
            rev.fold(last, |rest, part| {
                Hir::alternation(vec![prefixes(part), Hir::concat(vec![relaxed(part), rest])])
            })
        }
        HirKind::Alternation(alts) => Hir::alternation(alts.iter().map(prefixes).collect()),
    }
}

/// A superset of `hir` that makes a small reversed DFA: classes `coarse`,
/// repetitions unbounded (a counter, walked backwards, multiplies states).
fn relaxed(hir: &Hir) -> Hir {
    match hir.kind() {
        HirKind::Empty | HirKind::Literal(_) | HirKind::Look(_) => hir.clone(),
        HirKind::Class(class) => coarse(class),
        HirKind::Repetition(rep) => {
            if rep.max == Some(0) {
                return Hir::empty();
            }
            Hir::repetition(Repetition {
                min: rep.min.min(1),
                max: None,
                greedy: true,
                sub: Box::new(relaxed(&rep.sub)),
            })
        }
        HirKind::Capture(cap) => relaxed(&cap.sub),
        HirKind::Concat(parts) => Hir::concat(parts.iter().map(relaxed).collect()),
        HirKind::Alternation(alts) => Hir::alternation(alts.iter().map(relaxed).collect()),
    }
}

/// A class of bytes covering `class`: its ASCII part, and any byte of a
/// character beyond ASCII (one or more of them). A superset: walked back
/// from the end, the prefix DFA then need not tell apart the UTF-8
/// sequences of large classes (`\s`, `[^@]`, case folding), which
/// multiplied its states.
fn coarse(class: &Class) -> Hir {
    let mut ascii = ClassBytes::empty();
    let mut beyond = false;
    match class {
        Class::Unicode(c) => {
            for r in c.ranges() {
                if r.start().is_ascii() {
                    let end = r.end().min('\x7f') as u8;
                    ascii.push(ClassBytesRange::new(r.start() as u8, end));
                }
                beyond |= !r.end().is_ascii();
            }
        }
        Class::Bytes(c) => {
            for r in c.ranges() {
                if r.start() < 0x80 {
                    ascii.push(ClassBytesRange::new(r.start(), r.end().min(0x7f)));
                }
                beyond |= r.end() >= 0x80;
            }
        }
    }
    let ascii = Hir::class(Class::Bytes(ascii));
    if !beyond {
        return ascii;
    }
    let high = Hir::repetition(Repetition {
        min: 1,
        max: None,
        greedy: true,
        sub: Box::new(Hir::class(Class::Bytes(ClassBytes::new([
            ClassBytesRange::new(0x80, 0xff),
        ])))),
    });
    Hir::alternation(vec![ascii, high])
}

/// How a walk over some bytes ended. `matched`: where the last match seen
/// on it ended, relative to the bytes' start.
enum Run {
    Dead {
        matched: Option<usize>,
    },
    Live {
        sid: LazyStateID,
        matched: Option<usize>,
    },
    Stuck,
}

/// Walks `dfa` from state `sid` over `bytes`.
#[inline(always)]
fn run(dfa: &DFA, cache: &mut Cache, mut sid: LazyStateID, bytes: &[u8]) -> Run {
    let mut matched = None;
    for (i, &byte) in bytes.iter().enumerate() {
        // Most steps follow a transition already computed from an ordinary
        // state: one table lookup. A state not computed yet takes the full
        // step; a cache cleared while computing it keeps `sid` and the
        // returned state valid (the lazy DFA saves the current state).
        let known = if sid.is_tagged() {
            None
        } else {
            Some(dfa.next_state_untagged(cache, sid, byte)).filter(|n| !n.is_unknown())
        };
        sid = match known {
            Some(next) => next,
            None => match dfa.next_state(cache, sid, byte) {
                Ok(next) => next,
                Err(_) => return Run::Stuck,
            },
        };
        if sid.is_tagged() {
            if sid.is_match() {
                // Matches show one byte late: one ended before this byte.
                matched = Some(i);
            }
            if sid.is_dead() {
                return Run::Dead { matched };
            }
        }
    }
    Run::Live { sid, matched }
}

/// The DFA could not go on (as configured it never gives up, so this is
/// defensive): the candidate counts as live, which only holds text back,
/// and walks again from its start next time.
fn stuck(start: usize, cache: u64) -> Step {
    Step::Live(Candidate {
        start,
        at: start,
        sid: None,
        cache,
        generation: 0,
        match_end: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Catalogue, Custom};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// What walking every detector's anchored DFA from every start of
    /// `text` says: the earliest start more text could still change
    /// (`strict`); the earliest whose DFA is not dead yet (`loose`: also a
    /// start whose match is complete but shows one byte late, decided
    /// though its state dies only on the next byte); and the starts that
    /// completed a match before dying.
    struct Reference {
        strict: Option<usize>,
        loose: Option<usize>,
        matched: Vec<usize>,
    }

    fn reference(l: &Liveness, text: &[u8]) -> Reference {
        let mut r = Reference {
            strict: None,
            loose: None,
            matched: Vec::new(),
        };
        let earlier = |a: Option<usize>, s: usize| Some(a.map_or(s, |a| a.min(s)));
        for dfa in &l.dfas {
            let mut cache = dfa.create_cache();
            for s in 0..text.len() {
                let prev = s.checked_sub(1).map(|p| text[p]);
                let config = start::Config::new()
                    .anchored(Anchored::Yes)
                    .look_behind(prev);
                let mut sid = dfa.start_state(&mut cache, &config).unwrap();
                let mut dead = sid.is_dead();
                let mut hit = false;
                for &b in &text[s..] {
                    sid = dfa.next_state(&mut cache, sid, b).unwrap();
                    hit |= sid.is_match();
                    if sid.is_dead() {
                        dead = true;
                        break;
                    }
                }
                if dead {
                    if hit {
                        r.matched.push(s);
                    }
                    continue;
                }
                r.loose = earlier(r.loose, s);
                if (0..=255u8).any(|b| !dfa.next_state(&mut cache, sid, b).unwrap().is_dead()) {
                    r.strict = earlier(r.strict, s);
                } else {
                    r.matched.push(s);
                }
            }
        }
        r
    }

    /// The gate holds from the earliest start more text could change, or
    /// from an earlier one whose match is complete but not shown yet.
    fn check_hold(l: &Liveness, tracks: &Tracks, hold: Hold, text: &[u8]) -> Result<(), String> {
        let n = text.len();
        let r = reference(l, text);
        let (lo, hi) = (r.loose.unwrap_or(n), r.strict.unwrap_or(n));
        if !(lo..=hi).contains(&hold.from) {
            return Err(format!(
                "{:?}: held from {}, not in {lo}..={hi}",
                String::from_utf8_lossy(text),
                hold.from
            ));
        }
        for s in r.matched {
            if !tracks.matched.contains(&s) && !l.any_match(text, s) {
                return Err(format!(
                    "{:?}: match from {s} not reported",
                    String::from_utf8_lossy(text)
                ));
            }
        }
        Ok(())
    }

    fn catalogue() -> Catalogue {
        let custom = [
            Custom {
                name: "ticket".into(),
                pattern: r"\bTCK-[0-9]{4,8}\b".into(),
                risk: 10,
            },
            Custom {
                name: "block".into(),
                pattern: r"\[[^\]]*?\]".into(),
                risk: 5,
            },
        ];
        Catalogue::new(|_| true, &custom).unwrap()
    }

    /// The hold after every piece is the earliest start any detector's
    /// automaton leaves live, and every start that completed a match is
    /// reported or found by `any_match`, though the detectors' own automata
    /// only walk from the gate's earliest live start on.
    #[test]
    fn starts_the_gate_decides_are_decided_as_walks_decide_them() {
        let c = catalogue();
        let l = c.live();
        let texts = [
            "The build failed, see the log at ops@example.com now. ",
            "key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY and AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefgh done ",
            "at 10:15:02 and fe80::1:2 or 4111 1111 1111 1111, TCK-1234 x",
            "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123 [block] a@b.co\n-----BEGIN PRIVATE KEY-----\nMII\n",
            "AKIAIOSFODNN7EXAMPLE AKIAIOSFODNN7EXAMPLEX password=Zx9!vT4#qL2m ",
        ];
        for text in texts {
            let bytes = text.as_bytes();
            for step in [1, 2, 3, 7, 20] {
                let mut tracks = Tracks::default();
                let mut n = 0;
                while n < bytes.len() {
                    n = (n + step).min(bytes.len());
                    let hold = l.advance(&mut tracks, &bytes[..n], 0);
                    if let Err(e) = check_hold(l, &tracks, hold, &bytes[..n]) {
                        panic!("{e}");
                    }
                }
            }
        }
    }

    /// The same for random texts of pieces that start, continue or end
    /// matches of every detector, held at random points: the gate's prefix
    /// DFA never misses a live start.
    #[cfg(not(target_arch = "wasm32"))]
    mod random {
        use super::*;
        use proptest::prelude::*;

        use crate::mask::tests::properties::PARTS;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            #[test]
            fn the_hold_is_the_earliest_live_start(
                parts in prop::collection::vec(prop::sample::select(PARTS), 0..14),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 1..5),
            ) {
                let c = catalogue();
                let l = c.live();
                let text = parts.concat();
                let bytes = text.as_bytes();
                let mut ends: Vec<usize> = cuts
                    .iter()
                    .map(|i| i.index(bytes.len() + 1))
                    .filter(|&n| text.is_char_boundary(n))
                    .collect();
                ends.push(bytes.len());
                ends.sort_unstable();
                let mut tracks = Tracks::default();
                for n in ends {
                    let hold = l.advance(&mut tracks, &bytes[..n], 0);
                    let checked = check_hold(l, &tracks, hold, &bytes[..n]);
                    prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
                }
            }
        }
    }

    /// `may_match` says yes wherever some detector finds something, and no
    /// for a plain integer or word.
    #[test]
    fn may_match_covers_every_finding() {
        let c = catalogue();
        let l = c.live();
        for text in ["0", "12345", "1764070000", "hello", "msg_67c1a2b3"] {
            assert!(!l.may_match(text), "{text}");
        }
        for text in [
            "4111111111111111",
            "TCK-1234",
            "ops@example.com",
            "10.1.2.3",
            "[x]",
            "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123",
        ] {
            let mut found = Vec::new();
            c.find(text, &mut found);
            assert!(!found.is_empty(), "{text}");
            assert!(l.may_match(text), "{text}");
        }
    }
}
