#![allow(clippy::expect_used)] // a benchmark: a failed expectation should stop it loudly
//! Runs tracegate's built-in detectors and masking over a JSON-lines corpus
//! (`{"text": ...}` per line, as bench/presidio_compare.py writes it) and
//! prints, per line, the findings as `{"findings": [[detector, start, end],
//! ...]}` (character offsets), then one line `{"seconds": S, "bytes": N}`
//! timing detection and masking of the whole corpus (best of 5 passes).

use std::io::{BufRead, Write};
use std::time::Instant;
use tracegate_policy::detect::Finding;
use tracegate_policy::inspect::config::{InspectionConfig, MaskingConfig};
use tracegate_policy::inspect::Inspector;
use tracegate_policy::mask::{Hits, Tokens};

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: detect_corpus CORPUS.jsonl");
    let file = std::fs::File::open(&path).expect("corpus");
    let texts: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l.expect("line")).expect("json");
            v["text"].as_str().expect("text").to_string()
        })
        .collect();
    let inspector = Inspector::new(&InspectionConfig::default(), &MaskingConfig::default(), &[])
        .expect("inspector");
    let masker = inspector.masker().expect("masker");
    let catalogue = masker.catalogue();
    let out = std::io::stdout();
    let mut out = out.lock();
    for text in &texts {
        let mut found: Vec<Finding> = Vec::new();
        catalogue.find(text, &mut found);
        let char_at = |byte: usize| text[..byte].chars().count();
        let spans: Vec<serde_json::Value> = found
            .iter()
            .map(|f| {
                serde_json::json!([
                    catalogue.detectors()[f.detector].name,
                    char_at(f.start),
                    char_at(f.end)
                ])
            })
            .collect();
        writeln!(out, "{}", serde_json::json!({ "findings": spans })).expect("write");
    }
    let bytes: usize = texts.iter().map(String::len).sum();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for text in &texts {
            let mut tokens = Tokens::default();
            let mut hits = Hits::default();
            std::hint::black_box(masker.mask(text, &mut tokens, &mut hits));
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    writeln!(
        out,
        "{}",
        serde_json::json!({"seconds": best, "bytes": bytes})
    )
    .expect("write");
}
