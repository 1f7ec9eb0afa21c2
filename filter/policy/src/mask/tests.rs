use super::stream::{StreamMasker, StreamRestorer};
use super::*;
use crate::detect::Catalogue;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// Every split natively; a sample of them in wasm, where the same code runs
/// some 20 times slower under the test runner.
const SPLIT_STEP: usize = if cfg!(target_arch = "wasm32") { 7 } else { 1 };

fn redactor() -> &'static Masker {
    static M: std::sync::OnceLock<Masker> = std::sync::OnceLock::new();
    M.get_or_init(|| masker(|_| Operator::Redact))
}

fn masker(op: impl Fn(&str) -> Operator) -> Masker {
    let c = Catalogue::new(|_| true, &[]).unwrap();
    let ops = c.detectors().iter().map(|d| op(&d.name)).collect();
    Masker::new(c, ops, b"correlation key".to_vec())
}

const TEXT: &str = "Mail alice@corp.example.com, card 4111 1111 1111 1111, \
    key sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123 and again alice@corp.example.com.";

#[test]
fn operators() {
    let mut t = Tokens::default();
    let mut h = Hits::default();
    let redact = masker(|_| Operator::Redact)
        .mask(TEXT, &mut t, &mut h)
        .unwrap();
    assert_eq!(
        redact,
        "Mail [EMAIL], card [CARD_NUMBER], key [OPENAI_API_KEY] and again [EMAIL]."
    );
    assert_eq!(h.counts["email"], 2);
    assert_eq!(h.risk, 20 + 80 + 90, "each detector's risk once");

    let partial = masker(|_| Operator::Partial { keep_last: 4 })
        .mask("card 4111 1111 1111 1111", &mut t, &mut h)
        .unwrap();
    assert_eq!(partial, "card [CARD_NUMBER:…1111]");

    let m = masker(|_| Operator::Hash);
    let a = m.mask("bob@example.com", &mut t, &mut h).unwrap();
    let b = m.mask("x bob@example.com", &mut t, &mut h).unwrap();
    assert!(
        a.starts_with("[EMAIL:hmac:") && a.len() == "[EMAIL:hmac:]".len() + 12,
        "{a}"
    );
    assert_eq!(format!("x {a}"), b, "stable for correlation");
    let other = masker(|_| Operator::Hash);
    assert_eq!(other.mask("bob@example.com", &mut t, &mut h).unwrap(), a);
}

#[test]
fn tokenize_round_trip() {
    let m = masker(|_| Operator::Tokenize);
    let mut t = Tokens::default();
    let mut h = Hits::default();
    let masked = m.mask(TEXT, &mut t, &mut h).unwrap();
    assert_eq!(
        masked,
        "Mail [EMAIL_1], card [CARD_NUMBER_1], key [OPENAI_API_KEY_1] and again [EMAIL_1]."
    );
    let answer = "I wrote to [EMAIL_1] about [CARD_NUMBER_1]; [EMAIL_2] is unknown [x";
    assert_eq!(
        t.restore(answer).unwrap(),
        "I wrote to alice@corp.example.com about 4111 1111 1111 1111; [EMAIL_2] is unknown [x"
    );
    // Streamed, split anywhere.
    for at in (0..answer.len()).step_by(SPLIT_STEP) {
        if !answer.is_char_boundary(at) {
            continue;
        }
        let mut r = StreamRestorer::default();
        let mut out = r.push(&t, &answer[..at]);
        out += &r.push(&t, &answer[at..]);
        out += &r.finish(&t);
        assert_eq!(out, t.restore(answer).unwrap(), "split at {at}");
    }
}

fn stream(m: &Masker, pieces: &[&str], window: usize) -> (String, Hits) {
    let mut s = StreamMasker::new(window);
    let mut t = Tokens::default();
    let mut h = Hits::default();
    let mut out = String::new();
    for p in pieces {
        out += &s.push(m, p, &mut t, &mut h);
    }
    out += &s.finish(m, &mut t, &mut h);
    (out, h)
}

#[test]
fn streams_mask_values_split_across_pieces() {
    let m = masker(|_| Operator::Redact);
    let mut t = Tokens::default();
    let mut whole_hits = Hits::default();
    let whole = m.mask(TEXT, &mut t, &mut whole_hits).unwrap();
    for at in (0..TEXT.len()).step_by(SPLIT_STEP) {
        for at2 in [at, (at + 7).min(TEXT.len()), TEXT.len()] {
            let (out, hits) = stream(&m, &[&TEXT[..at], &TEXT[at..at2], &TEXT[at2..]], 512);
            assert_eq!(out, whole, "split at {at}/{at2}");
            assert_eq!(hits, whole_hits);
        }
    }
    // One byte at a time.
    let bytes: Vec<String> = TEXT.chars().map(String::from).collect();
    let refs: Vec<&str> = bytes.iter().map(String::as_str).collect();
    assert_eq!(stream(&m, &refs, 512).0, whole);
}

#[test]
fn stream_releases_text_behind_the_window() {
    let m = masker(|_| Operator::Redact);
    let mut s = StreamMasker::new(16);
    let mut t = Tokens::default();
    let mut h = Hits::default();
    let out = s.push(&m, "plain words and more plain words here", &mut t, &mut h);
    assert_eq!(out, "plain words and more ");
    assert_eq!(s.held(), 16);
    // A PEM key holds from its start until it ends.
    let out = s.push(
        &m,
        " -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
        &mut t,
        &mut h,
    );
    assert_eq!(out, "plain words here ");
    let out = s.push(
        &m,
        "\n-----END PRIVATE KEY----- done and more text after",
        &mut t,
        &mut h,
    );
    assert_eq!(out, "[PRIVATE_KEY] done and");
}

#[cfg(not(target_arch = "wasm32"))]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Text made of words, separators and secrets, so findings land at
    /// every position relative to the splits.
    fn text() -> impl Strategy<Value = String> {
        let part = prop::sample::select(vec![
            "hello ",
            "world",
            " ",
            ", ",
            "\n",
            "é",
            "日本 ",
            "alice@corp.example.com",
            "4111 1111 1111 1111",
            "123-45-6789",
            "10.1.2.3",
            "+1 415 555 0132",
            "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123",
            "AKIAIOSFODNN7EXAMPLE",
            "password=Zx9!vT4#qL2m",
            "ghp_1234567890abcdefghijABCDEFGHIJ123456",
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n-----END PRIVATE KEY-----",
            "GB82 WEST 1234 5698 7654 32",
            "[",
            "]",
        ]);
        prop::collection::vec(part, 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn masked_stream_equals_masked_whole(
            text in text(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
            window in prop::sample::select(vec![512usize, 600]),
        ) {
            let m = redactor();
            let mut t = Tokens::default();
            let mut h = Hits::default();
            let whole = m.mask(&text, &mut t, &mut h).unwrap_or_else(|| text.clone());
            let mut offsets: Vec<usize> = cuts
                .iter()
                .map(|i| i.index(text.len() + 1))
                .filter(|&o| text.is_char_boundary(o))
                .collect();
            offsets.sort_unstable();
            let mut pieces = Vec::new();
            let mut at = 0;
            for o in offsets {
                pieces.push(&text[at..o]);
                at = o;
            }
            pieces.push(&text[at..]);
            let (out, hits) = stream(m, &pieces, window);
            prop_assert_eq!(out, whole);
            prop_assert_eq!(hits, h);
        }
    }
}
