//! Detectors of sensitive data: the built-in catalogue plus custom patterns,
//! compiled once per configuration into one `RegexSet` (a single pass tells
//! which detectors can match at all) and one `Regex` each (run only for
//! those, to locate and check the matches).

pub mod builtin;
pub mod validate;

use regex::{Regex, RegexSet};

/// One compiled detector.
#[derive(Debug, Clone)]
pub struct Detector {
    pub name: String,
    /// Placeholder text for `redact`: `[EMAIL]`.
    pub label: String,
    pub risk: u32,
    regex: Regex,
    group: usize,
    check: Option<fn(&str) -> bool>,
}

/// Where a detector found something: byte offsets into the scanned text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub start: usize,
    pub end: usize,
    pub detector: usize,
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
    set: RegexSet,
}

/// Custom patterns are refused beyond these compiled sizes (bytes), so a
/// configuration cannot make a worker's memory explode.
const MAX_REGEX_SIZE: usize = 2 << 20;

impl Catalogue {
    /// The built-ins whose names `enabled` accepts, then the custom ones.
    pub fn new(enabled: impl Fn(&str) -> bool, custom: &[Custom]) -> Result<Catalogue, String> {
        let mut detectors = Vec::new();
        for b in builtin::BUILTINS.iter().filter(|b| enabled(b.name)) {
            detectors.push(Detector {
                name: b.name.into(),
                label: b.label.into(),
                risk: b.risk,
                regex: compile(b.pattern).map_err(|e| format!("built-in {}: {e}", b.name))?,
                group: b.group,
                check: b.check,
            });
        }
        for c in custom {
            let regex = compile(&c.pattern).map_err(|e| format!("{}: {e}", c.name))?;
            detectors.push(Detector {
                name: c.name.clone(),
                label: c.name.to_ascii_uppercase(),
                risk: c.risk,
                group: usize::from(regex.captures_len() > 1),
                regex,
                check: None,
            });
        }
        let set = regex::RegexSetBuilder::new(detectors.iter().map(|d| d.regex.as_str()))
            .size_limit(MAX_REGEX_SIZE * 8)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Catalogue { detectors, set })
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

    /// Findings in `text`, sorted and non-overlapping: of overlapping ones,
    /// the riskiest wins, then the earliest, then the longest, then the first
    /// listed (a password inside a URL is a password, not an e-mail).
    pub fn find(&self, text: &str, out: &mut Vec<Finding>) {
        out.clear();
        if text.is_empty() {
            return;
        }
        for i in self.set.matches(text).iter() {
            let d = &self.detectors[i];
            let mut keep = |m: regex::Match<'_>| {
                if !m.is_empty() && d.check.is_none_or(|check| check(m.as_str())) {
                    out.push(Finding {
                        start: m.start(),
                        end: m.end(),
                        detector: i,
                    });
                }
            };
            if d.group == 0 {
                // No capture slots: the regex engine can stay on its DFA.
                d.regex.find_iter(text).for_each(&mut keep);
            } else {
                for caps in d.regex.captures_iter(text) {
                    if let Some(m) = caps.get(d.group).or_else(|| caps.get(0)) {
                        keep(m);
                    }
                }
            }
        }
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
        let mut kept: Vec<Finding> = Vec::with_capacity(out.len());
        for f in out.drain(..) {
            if kept.iter().all(|k| f.end <= k.start || f.start >= k.end) {
                kept.push(f);
            }
        }
        kept.sort_by_key(|f| f.start);
        *out = kept;
    }
}

fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_SIZE)
        .build()
}

#[cfg(test)]
mod tests;
