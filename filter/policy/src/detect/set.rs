//! Which detectors can find something in a text, in one pass: a lazy DFA
//! of every detector's pattern (or its gate), unanchored, reporting every
//! pattern that matches anywhere.
//!
//! The regex crate's overlapping search does the same, but returns to its
//! caller at each match and keeps its position in memory byte by byte: it
//! was a third of a 4 KB exchange's instructions. This walk stays in a
//! tight loop while the DFA is in ordinary states, and only notes which
//! patterns a match state names.
//!
//! It gives up on the lazy DFA when its cache thrashes (as the regex crate
//! does, by a stricter rule: `detect::giving_up`). That happens on long high-entropy strings (base64 that is not
//! media, keys, hashes): there the detectors' counted repetitions
//! (`{40}`, `{20,}`, …) each track their own run, and the DFA needs a state
//! for nearly every combination. Where the regex crate then runs the PikeVM
//! of all the patterns at once (about 90,000 instructions per byte of such
//! text, 3.4 s per MB natively), this names every detector: each then
//! searches the string with its own regex, whose DFA of one pattern does
//! not thrash (94 ms per MB of random base64, every detector).

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::hybrid::LazyStateID;
use regex_automata::nfa::thompson;
use regex_automata::util::pool::Pool;
use regex_automata::Input;
use regex_syntax::hir::Hir;
use std::sync::Arc;

use super::Make;

/// The set's lazy DFA cache; cleared and refilled when full.
const CACHE_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Set {
    dfa: DFA,
    scratch: Arc<Pool<Scratch, Make<Scratch>>>,
}

/// What one walk needs, reused from string to string: most strings are
/// short, and an allocation per string was a third of a request's.
#[derive(Debug)]
pub struct Scratch {
    cache: Cache,
    which: Named,
}

impl Scratch {
    /// The detectors (by index, ascending) the last walk named.
    pub fn which(&self) -> impl Iterator<Item = usize> + '_ {
        self.which.iter()
    }
}

/// A set of detectors, one bit each: cleared and read for every string,
/// so a word per 64 detectors, not a flag per detector.
#[derive(Debug)]
struct Named {
    words: Vec<u64>,
    /// How many detectors there are.
    len: usize,
}

impl Named {
    fn new(len: usize) -> Named {
        Named {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    fn clear(&mut self) {
        self.words.fill(0);
    }

    /// Every detector.
    fn fill(&mut self) {
        self.words.fill(u64::MAX);
        let past = self.len % 64;
        if let (Some(last), 1..) = (self.words.last_mut(), past) {
            *last = (1 << past) - 1;
        }
    }

    fn insert(&mut self, d: usize) {
        if let Some(word) = self.words.get_mut(d / 64) {
            *word |= 1 << (d % 64);
        }
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                (rest != 0).then(|| {
                    let bit = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    i * 64 + bit
                })
            })
        })
    }
}

impl Set {
    /// One pattern per detector, in detector order.
    pub fn new(patterns: &[Hir], nfa_limit: usize) -> Result<Set, String> {
        Set::with_cache(patterns, nfa_limit, CACHE_BYTES)
    }

    fn with_cache(patterns: &[Hir], nfa_limit: usize, cache: usize) -> Result<Set, String> {
        let nfa = thompson::Compiler::new()
            .configure(
                thompson::Config::new()
                    .which_captures(thompson::WhichCaptures::None)
                    .nfa_size_limit(Some(nfa_limit)),
            )
            .build_many_from_hir(patterns)
            .map_err(|e| e.to_string())?;
        let dfa = DFA::builder()
            .configure(super::giving_up(cache))
            .build_from_nfa(nfa)
            .map_err(|e| e.to_string())?;
        let len = patterns.len();
        let for_cache = dfa.clone();
        let make: Make<Scratch> = Box::new(move || Scratch {
            cache: for_cache.create_cache(),
            which: Named::new(len),
        });
        Ok(Set {
            dfa,
            scratch: Arc::new(Pool::new(make)),
        })
    }

    /// Walks `hay[from..]` (the bytes before `from` are look-behind only)
    /// and hands `found` the detectors whose patterns match somewhere in
    /// it; every detector where the lazy DFA gave up.
    pub fn scan<R>(&self, hay: &[u8], from: usize, found: impl FnOnce(&Scratch) -> R) -> R {
        // Past the end there is nothing to walk (and a range from there
        // would panic).
        let from = from.min(hay.len());
        let mut scratch = self.scratch.get();
        let s = &mut *scratch;
        s.which.clear();
        if self.walk(hay, from, s).is_err() {
            s.which.fill();
        }
        found(s)
    }

    /// The lazy DFA's walk; `Err` where it gave up. The cache is told how
    /// far the walk got whenever it may have to clear itself: that is how
    /// it tells a full cache (cleared, and the walk goes on) from one that
    /// thrashes (it gives up).
    fn walk(&self, hay: &[u8], from: usize, s: &mut Scratch) -> Result<(), ()> {
        s.cache.search_start(from);
        let walked = self.walk_dfa(hay, from, &mut s.cache, &mut s.which);
        // The end, also where the walk stopped early: it only counts bytes
        // searched per state, for the next decision to give up.
        s.cache.search_finish(hay.len());
        walked
    }

    fn walk_dfa(
        &self,
        hay: &[u8],
        from: usize,
        cache: &mut Cache,
        which: &mut Named,
    ) -> Result<(), ()> {
        let dfa = &self.dfa;
        let input = Input::new(hay).range(from..);
        let mut sid = dfa.start_state_forward(cache, &input).map_err(drop)?;
        let mut at = from;
        while at < hay.len() {
            if sid.is_tagged() {
                // A match (delayed by one byte: it ended before `at`), or a
                // state whose transitions are not computed yet.
                if sid.is_match() {
                    note(dfa, cache, sid, which);
                } else if sid.is_dead() {
                    return Ok(());
                } else if sid.is_quit() {
                    return Err(());
                }
                cache.search_update(at);
                sid = dfa.next_state(cache, sid, hay[at]).map_err(drop)?;
                at += 1;
                continue;
            }
            // Ordinary states: only the transition table.
            let mut prev = sid;
            for &byte in &hay[at..] {
                prev = sid;
                sid = dfa.next_state_untagged(cache, sid, byte);
                at += 1;
                if sid.is_tagged() {
                    break;
                }
            }
            if sid.is_unknown() {
                cache.search_update(at - 1);
                sid = dfa.next_state(cache, prev, hay[at - 1]).map_err(drop)?;
            }
        }
        if sid.is_match() {
            note(dfa, cache, sid, which);
        }
        cache.search_update(at);
        let eoi = dfa.next_eoi_state(cache, sid).map_err(drop)?;
        if eoi.is_match() {
            note(dfa, cache, eoi, which);
        }
        Ok(())
    }
}

fn note(dfa: &DFA, cache: &Cache, sid: LazyStateID, which: &mut Named) {
    for k in 0..dfa.match_len(cache, sid) {
        which.insert(dfa.match_pattern(cache, sid, k).as_usize());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::tests::{Xorshift, BASE64};
    use crate::detect::{builtin, parse};
    use regex_automata::meta::Regex;
    use regex_automata::{MatchKind, PatternSet};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// The set as the catalogue builds it (every built-in's gate or
    /// pattern), with custom patterns that assert a text's or a line's
    /// start, so that look-behind before `from` counts.
    fn patterns() -> Vec<Hir> {
        let mut hirs: Vec<Hir> = builtin::BUILTINS
            .iter()
            .map(|b| parse(b.gate.unwrap_or(b.pattern)).unwrap())
            .collect();
        for custom in [r"^EMP-[0-9]{6}", r"(?m)^id=\w+", r"\bcode [0-9]{4}\b$"] {
            hirs.push(parse(custom).unwrap());
        }
        hirs
    }

    /// What the regex crate's overlapping search of the same patterns names.
    fn reference(set: &Regex, hay: &[u8], from: usize) -> Vec<usize> {
        let mut which = PatternSet::new(set.pattern_len());
        set.which_overlapping_matches(&Input::new(hay).range(from..), &mut which);
        which.iter().map(|p| p.as_usize()).collect()
    }

    fn check(set: &Set, meta: &Regex, hay: &[u8], from: usize) -> Result<(), String> {
        let got: Vec<usize> = set.scan(hay, from, |s| s.which().collect());
        let want = reference(meta, hay, from);
        if got == want {
            Ok(())
        } else {
            let text = String::from_utf8_lossy(hay);
            Err(format!(
                "{text:?} from {from}: named {got:?}, the regex crate {want:?}"
            ))
        }
    }

    fn both() -> (Set, Regex) {
        let hirs = patterns();
        let set = Set::new(&hirs, 16 << 20).unwrap();
        let meta = Regex::builder()
            .configure(Regex::config().match_kind(MatchKind::All))
            .build_many_from_hir(&hirs)
            .unwrap();
        (set, meta)
    }

    #[test]
    fn names_what_the_overlapping_search_names() {
        let (set, meta) = both();
        let texts: &[&[u8]] = &[
            b"",
            b"hello world",
            b"mail alice@corp.example.com and card 4111 1111 1111 1111",
            b"EMP-123456",
            b"x EMP-123456",
            b"a\nid=abc",
            b"my code 1234",
            b"fe80::1:2 at 10:15:02",
            b"\xff\xfe not utf-8 \xc3",
        ];
        for text in texts {
            for from in 0..=text.len() {
                check(&set, &meta, text, from).unwrap();
            }
        }
    }

    /// No detector at all (every built-in disabled): nothing is named.
    #[test]
    fn an_empty_set_names_nothing() {
        let set = Set::new(&[], 1 << 20).unwrap();
        for text in [&b""[..], b"alice@corp.example.com", b"\xff"] {
            assert_eq!(set.scan(text, 0, |s| s.which().count()), 0);
        }
    }

    /// Past 64 detectors the set takes more than one word.
    #[test]
    fn names_detectors_past_the_first_64() {
        let mut hirs = patterns();
        for i in 0..100 {
            hirs.push(parse(&format!("tok{i}x[0-9]{{3}}")).unwrap());
        }
        let set = Set::new(&hirs, 16 << 20).unwrap();
        let meta = Regex::builder()
            .configure(Regex::config().match_kind(MatchKind::All))
            .build_many_from_hir(&hirs)
            .unwrap();
        let text = b"tok0x123 tok63x000 tok64x999 and tok99x555, not tok98x12";
        check(&set, &meta, text, 0).unwrap();
        let named: Vec<usize> = set.scan(text, 0, |s| s.which().collect());
        let base = patterns().len();
        assert_eq!(named, [base, base + 63, base + 64, base + 99]);
        let mut all = Named::new(130);
        (0..130).for_each(|d| all.insert(d));
        assert!(all.iter().eq(0..130));
    }

    /// A lazy DFA whose cache thrashes gives up, and every detector is
    /// named (each then searches with its own regex).
    #[test]
    fn names_every_detector_when_the_lazy_dfa_gives_up() {
        let hirs = patterns();
        let tiny = Set::with_cache(&hirs, 16 << 20, 1).unwrap();
        let text: Vec<u8> = b"mail alice@corp.example.com, card 4111 1111 1111 1111, "
            .repeat(40)
            .into_iter()
            .chain(
                b"EMP-123456 and sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123"
                    .iter()
                    .copied(),
            )
            .collect();
        let mut scratch = tiny.scratch.get();
        scratch.which.clear();
        assert!(
            tiny.walk(&text, 0, &mut scratch).is_err(),
            "the walk did not give up"
        );
        drop(scratch);
        for from in [0, 1, 700] {
            let named: Vec<usize> = tiny.scan(&text, from, |s| s.which().collect());
            assert!(named.iter().copied().eq(0..hirs.len()), "{named:?}");
        }
    }

    /// Every detector, whatever their number: no bit past the last one.
    #[test]
    fn every_detector_is_every_bit_up_to_the_last() {
        for len in [0, 1, 63, 64, 65, 128, 130] {
            let mut named = Named::new(len);
            named.fill();
            assert!(named.iter().eq(0..len), "{len}");
        }
    }

    /// Giving up is not for good: once enough text has been walked since
    /// the cache's last clear, it is cleared again and the walk goes on.
    /// (Without the walk's progress reports the cache never sees that
    /// text, and this fails.)
    #[test]
    fn a_walk_that_gave_up_goes_on_later() {
        let small = Set::with_cache(&patterns(), 16 << 20, 128 << 10).unwrap();
        let noise = Xorshift(0x9e37_79b9_7f4a_7c15).string(BASE64, 16 << 10);
        let mut scratch = small.scratch.get();
        let gave_up = (0..64).any(|_| small.walk(noise.as_bytes(), 0, &mut scratch).is_err());
        assert!(gave_up, "random base64 did not make the walk give up");
        let mut prose = String::new();
        for i in 0..200u32 {
            prose.push_str(&format!(
                "step {i} of the migration ran; mail ops{i}@corp.example. "
            ));
        }
        let mut walks = 0;
        while small.walk(prose.as_bytes(), 0, &mut scratch).is_err() {
            walks += 1;
            assert!(walks < 1000, "the walk never went on");
        }
        drop(scratch);
        let (_, meta) = both();
        check(&small, &meta, prose.as_bytes(), 0).unwrap();
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod random {
        use super::*;
        use crate::mask::tests::properties::PARTS;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            /// Texts of pieces that start, continue or end every kind of
            /// finding, searched from any point.
            #[test]
            fn names_what_the_overlapping_search_names_in_random_texts(
                parts in prop::collection::vec(
                    prop::sample::select(
                        [PARTS, &["EMP-", "123456", "id=", "code ", "1234"]].concat()
                    ),
                    0..16,
                ),
                from in any::<prop::sample::Index>(),
            ) {
                let (set, meta) = both();
                let text = parts.concat();
                let from = from.index(text.len() + 1);
                let checked = check(&set, &meta, text.as_bytes(), from);
                prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
            }
        }
    }
}
