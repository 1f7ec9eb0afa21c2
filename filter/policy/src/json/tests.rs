use super::*;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn parse(src: &str) -> Result<Tape, Error> {
    let mut t = Tape::default();
    t.parse(src).map(|()| t)
}

#[test]
fn reads_values_by_key_and_keeps_spans() {
    let src = r#" {"a": [1, {"b": "x\u00e9\"y"}], "n": -12.5e3, "t": true, "z": null, "a2": {}} "#;
    let t = parse(src).unwrap();
    let a = t.get(src, 0, "a").unwrap();
    let items: Vec<usize> = t.elements(a).collect();
    assert_eq!(items.len(), 2);
    assert_eq!(t.u64(src, items[0]), Some(1));
    let b = t.get(src, items[1], "b").unwrap();
    assert_eq!(t.str(src, b).unwrap(), "xé\"y");
    assert_eq!(t.raw(src, b), r#""x\u00e9\"y""#);
    assert_eq!(t.raw(src, t.get(src, 0, "n").unwrap()), "-12.5e3");
    assert_eq!(t.kind(t.get(src, 0, "t").unwrap()), Some(Kind::Bool));
    assert_eq!(t.kind(t.get(src, 0, "z").unwrap()), Some(Kind::Null));
    assert_eq!(t.members(t.get(src, 0, "a2").unwrap()).count(), 0);
    assert_eq!(t.members(0).count(), 5);
    assert_eq!(t.path(src, 0, &["a2", "x"]), None);
}

#[test]
fn the_last_of_duplicate_keys_counts() {
    let src = r#"{"k": "first", "k": "last"}"#;
    let t = parse(src).unwrap();
    assert_eq!(t.str(src, t.get(src, 0, "k").unwrap()).unwrap(), "last");
}

#[test]
fn refuses_what_rfc_8259_refuses() {
    for bad in [
        "",
        "{",
        "[1,]",
        "{\"a\":1,}",
        "01",
        "1.",
        ".5",
        "-",
        "1e",
        "+1",
        "NaN",
        "[1 2]",
        "{\"a\" 1}",
        "{a:1}",
        "\"\\x\"",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\ud800\\u0041\"",
        "\"a\nb\"",
        "\"abc",
        "tru",
        "[] []",
        "{\"a\":1}}",
        "[",
        "[[]",
        "// c\n1",
        "'a'",
    ] {
        assert!(parse(bad).is_err(), "{bad:?} accepted");
    }
    let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
    assert!(parse(&deep).is_err());
    let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    assert!(parse(&ok).is_ok());
    assert!(parse("\"\\ud83d\\ude00\"").is_ok());
}

#[test]
fn edits_replace_spans_in_place() {
    let src = r#"{"a": "one", "b": 2}"#;
    let t = parse(src).unwrap();
    let a = t.get(src, 0, "a").unwrap();
    let n = t.node(a).unwrap();
    let mut e = Edits::default();
    let mut with = String::new();
    write_str(&mut with, "t\"w\no\u{1}");
    e.replace(n.start, n.end, with);
    let out = e.apply(src);
    assert_eq!(out, r#"{"a": "t\"w\no\u0001", "b": 2}"#);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["a"], "t\"w\no\u{1}");
}

#[cfg(not(target_arch = "wasm32"))]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Every string and key of a serde_json value, in document order.
    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            serde_json::Value::Object(o) => {
                for (k, x) in o {
                    out.push(k.clone());
                    strings(x, out);
                }
            }
            _ => {}
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            (-1e6f64..1e6).prop_map(|n| serde_json::json!(n)),
            any::<String>().prop_map(serde_json::Value::String),
            "[a-z\"\\\\/\u{0}-\u{1f}é😀]{0,12}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::vec(("[a-z\"é]{0,6}", inner), 0..6)
                    .prop_map(|kv| { serde_json::Value::Object(kv.into_iter().collect()) }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Documents serde_json writes (compact or pretty) read back with the
        /// same strings.
        #[test]
        fn reads_what_serde_json_writes(v in json_value(), pretty in any::<bool>()) {
            let src = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { v.to_string() };
            let t = parse(&src).unwrap();
            let mut want = Vec::new();
            strings(&v, &mut want);
            let got: Vec<String> = (0..t.nodes().len())
                .filter_map(|i| t.str(&src, i).map(|s| s.into_owned()))
                .collect();
            prop_assert_eq!(got, want);
        }

        /// On arbitrary bytes, accepts exactly what serde_json accepts
        /// (numbers kept within f64 range, which serde_json refuses past).
        #[test]
        fn agrees_with_serde_json_on_validity(src in "[\\[\\]{}:,\" a-c0-9.eE+\\-\\\\u/nrtfl\n]{0,24}") {
            let ours = parse(&src).is_ok();
            let theirs = serde_json::from_str::<serde_json::Value>(&src).is_ok();
            prop_assert_eq!(ours, theirs, "{:?}", src);
        }

        /// Any truncation of a valid document is refused.
        #[test]
        fn truncations_are_refused(v in json_value(), cut in any::<prop::sample::Index>()) {
            let src = v.to_string();
            let at = cut.index(src.len());
            prop_assume!(src.is_char_boundary(at));
            let part = &src[..at];
            prop_assert_eq!(parse(part).is_ok(), serde_json::from_str::<serde_json::Value>(part).is_ok());
        }
    }
}

#[test]
fn strings_read_back_as_any_json_reader_reads_them() {
    // Every escape, written both ways: short forms and \u escapes (with
    // surrogate pairs), between plain runs of ASCII and non-ASCII text.
    let texts = [
        "",
        "plain",
        "a\"b\\c/d\u{8}e\u{c}f\ng\rh\ti",
        "mail\u{40}example.com",
        "é😀 x 😀é",
        "\\u0040 is not an escape here",
        "\u{0}\u{1f}\u{7f}",
    ];
    for text in texts {
        let short = serde_json::to_string(text).unwrap();
        let long: String = std::iter::once("\"".to_string())
            .chain(text.encode_utf16().map(|u| format!("\\u{u:04x}")))
            .chain(std::iter::once("\"".to_string()))
            .collect();
        for src in [short, long] {
            let t = parse(&src).unwrap();
            assert_eq!(t.str(&src, 0).unwrap(), text, "{src}");
        }
    }
}
