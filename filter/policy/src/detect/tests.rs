use super::*;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn all() -> Catalogue {
    Catalogue::new(|_| true, &[]).unwrap()
}

/// The (detector name, matched text) pairs found in `text`.
fn found(c: &Catalogue, text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    c.find(text, &mut out);
    out.iter()
        .map(|f| {
            (
                c.detectors()[f.detector].name.clone(),
                text[f.start..f.end].to_string(),
            )
        })
        .collect()
}

fn one(c: &Catalogue, name: &str, text: &str, want: &str) {
    let got = found(c, text);
    assert_eq!(
        got,
        vec![(name.to_string(), want.to_string())],
        "in {text:?}"
    );
}

#[test]
fn every_builtin_finds_its_kind() {
    let c = all();
    let cases: &[(&str, &str, &str)] = &[
        ("email", "mail alice.smith+llm@corp.example.com today", "alice.smith+llm@corp.example.com"),
        ("phone", "call +1 415 555 0132 now", "+1 415 555 0132"),
        ("phone", "call (415) 555-0132 now", "(415) 555-0132"),
        ("phone", "call (415)555-0132 now", "(415)555-0132"),
        ("phone", "call 415.555.0132x8813 now", "415.555.0132x8813"),
        ("phone", "call +1-415-555-0132x88 now", "+1-415-555-0132x88"),
        ("phone", "desk 415-555-0132 ext. 12, thanks", "415-555-0132 ext. 12"),
        ("payment_card", "card 4111 1111 1111 1111 exp", "4111 1111 1111 1111"),
        ("payment_card", "amex 3400-0000-0000-009.", "3400-0000-0000-009"),
        ("iban", "pay to GB82 WEST 1234 5698 7654 32 please", "GB82 WEST 1234 5698 7654 32"),
        ("iban", "DE89370400440532013000", "DE89370400440532013000"),
        ("us_ssn", "ssn 123-45-6789.", "123-45-6789"),
        ("ipv4", "host 10.20.30.40:8080", "10.20.30.40"),
        ("ipv6", "addr 2001:db8:85a3::8a2e:370:7334 up", "2001:db8:85a3::8a2e:370:7334"),
        ("aws_access_key_id", "id=AKIAIOSFODNN7EXAMPLE;", "AKIAIOSFODNN7EXAMPLE"),
        ("aws_secret_access_key", "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        ("github_token", "token ghp_1234567890abcdefghijABCDEFGHIJ123456 ok", "ghp_1234567890abcdefghijABCDEFGHIJ123456"),
        ("gitlab_token", "glpat-Abc123def456GHI789jk used", "glpat-Abc123def456GHI789jk"),
        ("slack_token", "xoxb-1234567890-0987654321-AbCdEfGhIjKl", "xoxb-1234567890-0987654321-AbCdEfGhIjKl"),
        ("stripe_key", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
        ("openai_api_key", "key sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123 end", "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123"),
        ("anthropic_api_key", "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"),
        ("google_api_key", "AIzaSyA1234567890abcdefghijklmnopqrstuv", "AIzaSyA1234567890abcdefghijklmnopqrstuv"),
        ("azure_storage_key", "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;", "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="),
        ("jwt", "t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
        ("bearer_token", "Authorization: Bearer abcdef0123456789ABCDEF.xyz", "abcdef0123456789ABCDEF.xyz"),
        ("url_password", "postgres://app:S3cr3t-pw@db.internal:5432/x", "S3cr3t-pw"),
        ("secret_assignment", r#"{"password": "Zx9!vT4#qL2m"}"#, "Zx9!vT4#qL2m"),
        ("secret_assignment", "API_KEY=f3a9c1d7e5b2a8c4", "f3a9c1d7e5b2a8c4"),
    ];
    for (name, text, want) in cases {
        one(&c, name, text, want);
    }
}

#[test]
fn pem_private_keys_whole_or_cut_short() {
    let c = all();
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq\nk1Zz+9Q==\n-----END RSA PRIVATE KEY-----";
    one(&c, "private_key", &format!("key:\n{pem}\nthanks"), pem);
    let cut = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC";
    one(&c, "private_key", cut, cut);
}

#[test]
fn look_alikes_are_left_alone() {
    let c = all();
    for text in [
        "order 4111 1111 1111 1112 (bad checksum)",
        "GB82 WEST 1234 5698 7654 33",
        "000-12-3456 and 666-12-3456 are not SSNs",
        "version 1.2.300.4 and 256.1.1.1",
        "see std::vec::Vec and a::b::c, at 12:30:45",
        "the date 2024-01-15 and the id 12345678",
        "password: changeme and password=${DB_PASSWORD} and token: aaaaaaaaaaaa",
        "sk-short",
        "plain prose about keys, passwords and tokens",
    ] {
        assert_eq!(found(&c, text), vec![], "{text}");
    }
}

#[test]
fn overlaps_keep_one_finding() {
    let c = all();
    // A JWT after "Bearer": one finding (the earliest start wins).
    let text = "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig123456";
    assert_eq!(found(&c, text).len(), 1);
    // An Anthropic key is not also an OpenAI key.
    let got = found(&c, "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789");
    assert_eq!(got[0].0, "anthropic_api_key");
}

#[test]
fn custom_detectors_and_selection() {
    let custom = [Custom {
        name: "employee_id".into(),
        pattern: r"EMP-[0-9]{6}".into(),
        risk: 5,
    }];
    let c = Catalogue::new(|name| name == "email", &custom).unwrap();
    assert_eq!(c.detectors().len(), 2);
    let got = found(
        &c,
        "EMP-123456 is bob@example.com, card 4111 1111 1111 1111",
    );
    assert_eq!(
        got,
        vec![
            ("employee_id".to_string(), "EMP-123456".to_string()),
            ("email".to_string(), "bob@example.com".to_string())
        ]
    );
    assert_eq!(c.detectors()[1].label, "EMPLOYEE_ID");
    let bad = [Custom {
        name: "broken".into(),
        pattern: "(".into(),
        risk: 1,
    }];
    assert!(Catalogue::new(|_| false, &bad)
        .unwrap_err()
        .contains("broken"));
}

#[test]
fn at_least_twenty_builtins() {
    assert!(builtin::BUILTINS.len() >= 20);
    let c = all();
    assert_eq!(c.detectors().len(), builtin::BUILTINS.len());
}

/// A small deterministic generator for corpora.
pub(crate) struct Xorshift(pub u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn string(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize] as char)
            .collect()
    }
}

pub(crate) const BASE64: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

#[test]
fn bare_aws_secret_keys_are_found_and_ids_and_hashes_are_not() {
    let c = all();
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    let n = if cfg!(target_arch = "wasm32") {
        100
    } else {
        1000
    };
    let mut caught = 0;
    for i in 0..n {
        let key = rng.string(BASE64, 40);
        let text = match i % 3 {
            0 => format!("Your secret is {key}. Keep it safe."),
            1 => format!("export AWS_KEY=\"{key}\"\n"),
            _ => format!("`{key}`"),
        };
        let got = found(&c, &text);
        if got
            .iter()
            .any(|(name, value)| name.contains("aws_secret") && value == &key)
        {
            caught += 1;
        }
    }
    assert!(caught * 100 >= n * 97, "found {caught} of {n}");
    let hex = b"0123456789abcdef";
    for _ in 0..n / 4 {
        let decoys = [
            rng.string(hex, 40),
            rng.string(b"0123456789ABCDEF", 40),
            format!(
                "{}-{}-{}-{}-{}",
                rng.string(hex, 8),
                rng.string(hex, 4),
                rng.string(hex, 4),
                rng.string(hex, 4),
                rng.string(hex, 12)
            ),
            format!("{}=", rng.string(BASE64, 43)),
            rng.string(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
                43,
            ),
            format!("{}=", rng.string(BASE64, 27)),
            format!("sha512-{}==", rng.string(BASE64, 86)),
            format!("{}{}", rng.string(BASE64, 40), rng.string(BASE64, 20)),
        ];
        for d in decoys {
            let text = format!("commit {d} done");
            let got = found(&c, &text);
            assert!(
                !got.iter().any(|(name, _)| name == "bare_aws_secret_key"),
                "{text}: {got:?}"
            );
        }
    }
}

/// Long high-entropy text (base64 of something that is not media,
/// random tokens) thrashes the lazy DFA of all the detectors at once: it
/// gives up and names every detector, and each detector's own search
/// finds what is there, as in any other text.
#[test]
fn secrets_in_long_high_entropy_text_are_found() {
    let c = all();
    let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
    let kb = if cfg!(target_arch = "wasm32") { 16 } else { 64 };
    let secrets = [
        ("aws_access_key_id", "AKIAIOSFODNN7EXAMPLE"),
        ("email", "alice@corp.example.com"),
        ("github_token", "ghp_1234567890abcdefghijABCDEFGHIJ123456"),
        ("us_ssn", "123-45-6789"),
    ];
    for alphabet in [
        BASE64,
        &b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[..],
    ] {
        let mut text = String::new();
        for (_, secret) in &secrets {
            text.push_str(&rng.string(alphabet, kb * 256));
            text.push_str(&format!(" {secret} "));
        }
        let named = c.set.scan(text.as_bytes(), 0, |s| s.which().count());
        assert_eq!(named, c.detectors().len(), "the set did not give up");
        let got = found(&c, &text);
        let want: Vec<(String, String)> = secrets
            .iter()
            .map(|(name, secret)| (name.to_string(), secret.to_string()))
            .collect();
        assert_eq!(got, want);
    }
}

#[test]
fn keys_joined_by_underscores_are_found_and_words_are_not() {
    let c = all();
    for (text, name, want) in [
        (
            "AWS_KEY_AKIAIOSFODNN7EXAMPLE_prod",
            "aws_access_key_id",
            "AKIAIOSFODNN7EXAMPLE",
        ),
        (
            "OPENAI_KEY_sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123",
            "openai_api_key",
            "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123",
        ),
        (
            "tok_ghp_1234567890abcdefghijABCDEFGHIJ123456.",
            "github_token",
            "ghp_1234567890abcdefghijABCDEFGHIJ123456",
        ),
        (
            "STRIPE=sk_live_4eC39HqLyjWDarjtT1zdp7dc_x",
            "stripe_key",
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        ),
    ] {
        one(&c, name, text, want);
    }
    // A word that happens to contain a prefix is not a key.
    for text in [
        "the task-manager-for-the-whole-team",
        "XAKIAIOSFODNN7EXAMPLE",
    ] {
        assert_eq!(found(&c, text), vec![], "{text}");
    }
}

#[test]
fn invisible_and_fullwidth_disguises_are_masked() {
    use crate::mask::{Hits, Masker, Operator, Tokens};
    let c = all();
    let ops = c.detectors().iter().map(|_| Operator::Redact).collect();
    let m = Masker::new(c, ops, Vec::new());
    let mask = |s: &str| m.mask(s, &mut Tokens::default(), &mut Hits::default());
    assert_eq!(
        mask("id AKIA\u{200b}IOSFODNN7EXAMPLE ok").unwrap(),
        "id [AWS_ACCESS_KEY_ID] ok"
    );
    assert_eq!(
        mask("card \u{ff14}\u{ff11}\u{ff11}\u{ff11} 1111 1111 1111.").unwrap(),
        "card [CARD_NUMBER]."
    );
    assert_eq!(
        mask("mail bob\u{00ad}@exam\u{2060}ple.com").unwrap(),
        "mail [EMAIL]"
    );
}

/// The ipv6 detector's gate matches in every text where its regex and check
/// find an address (else the set would skip a real finding), and not in
/// times and paths.
#[test]
fn ipv6_gate_covers_every_address() {
    // The detector's own search (the set, which runs the gate, left out).
    let ipv6 = Catalogue::new(|name| name == "ipv6", &[]).unwrap();
    let gate = Regex::new(builtin::IPV6_GATE).unwrap();
    let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
    let mut addresses = 0;
    for i in 0..20_000 {
        // Mostly hex and colons, so addresses of every shape come up.
        let text = rng.string(b"0123456789abcdefABCDEF:::: .xg", 4 + i % 40);
        let mut finds = false;
        ipv6.search(0, &text, 0, false, |m| {
            finds |= m.finding.is_some();
            !finds
        });
        if finds {
            addresses += 1;
            assert!(gate.is_match(&text), "gate misses the address in {text:?}");
        }
    }
    assert!(addresses > 500, "only {addresses} texts held an address");
    for text in [
        "10:15:02",
        "2026-11-24T10:15:02Z",
        "std::fmt::Display",
        "a::b",
        "Config::load",
    ] {
        assert!(!gate.is_match(text), "{text:?}");
    }
    for text in ["fe80::1:2", "::1:2:3", "1:2:3::", "2001:db8:0:0:0:0:2:1"] {
        assert!(gate.is_match(text), "{text:?}");
    }
}

/// A finding that loses to an overlapping one of another detector does not
/// hide its own detector's later values: the e-mail search had gone on
/// after `…456oncall@example.comoncall`, an address that loses to the
/// token its local part began with; the address after the token is found.
#[test]
fn a_value_inside_a_finding_that_loses_is_found() {
    let c = all();
    let token = "ghp_1234567890abcdefghijABCDEFGHIJ123456";
    let text = format!("{token}oncall@example.comoncall@example.com");
    let got = found(&c, &text);
    assert_eq!(
        got,
        vec![
            ("github_token".to_string(), format!("{token}oncall")),
            (
                "email".to_string(),
                "example.comoncall@example.com".to_string()
            ),
        ],
    );
}

/// What the masked text shows: a value right after a finding stands alone
/// once the finding is a placeholder, though in the text as written it
/// has no boundary before it.
#[test]
fn a_value_glued_after_a_finding_is_found() {
    let c = all();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        found(&c, "x@y.com4111 1111 1111 1111 and"),
        pairs(&[
            ("email", "x@y.com"),
            ("payment_card", "4111 1111 1111 1111")
        ])
    );
    // And after that one, and so on.
    assert_eq!(
        found(&c, "x@y.com123-45-6789 x@y.com4111111111111111"),
        pairs(&[
            ("email", "x@y.com"),
            ("us_ssn", "123-45-6789"),
            ("email", "x@y.com"),
            ("payment_card", "4111111111111111"),
        ])
    );
    // Only after a finding: a word glued to a card still hides it.
    assert_eq!(found(&c, "ref4111 1111 1111 1111"), pairs(&[]));
}

/// A finding that loses to one it overlaps leaves its text before the
/// winner's start to its detector, with the text taken to end there.
#[test]
fn a_value_before_a_finding_that_wins_is_found() {
    let c = all();
    let key = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123";
    let got = found(&c, &format!("alice@corp.example.com.{key}"));
    assert_eq!(
        got,
        vec![
            ("email".to_string(), "alice@corp.example.com".to_string()),
            ("openai_api_key".to_string(), key.to_string()),
        ]
    );
}

/// A match that fails its check hides nothing: not the value that starts
/// inside it, nor a shorter match at its start that passes.
#[test]
fn a_match_that_fails_its_check_hides_nothing() {
    let c = all();
    one(
        &c,
        "payment_card",
        "4111111111111111 123",
        "4111111111111111",
    );
    one(
        &c,
        "payment_card",
        "card 4111 1111 1111 1111 123 exp",
        "4111 1111 1111 1111",
    );
    let got = found(&c, "123-45-6789 4111 1111 1111 1111 ok");
    assert_eq!(
        got,
        vec![
            ("us_ssn".to_string(), "123-45-6789".to_string()),
            (
                "payment_card".to_string(),
                "4111 1111 1111 1111".to_string()
            ),
        ]
    );
    one(
        &c,
        "payment_card",
        "order 12345 4111 1111 1111 1111",
        "4111 1111 1111 1111",
    );
}

/// Values written one after another as forms and logs write them, each
/// missed in part before: a card with its expiry and code, a card after
/// an address or a phone number.
#[test]
fn values_in_a_row_are_each_found() {
    let c = all();
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "4111 1111 1111 1111 12/27 123",
            &[("payment_card", "4111 1111 1111 1111")],
        ),
        (
            "ip 10.1.2.3 4111111111111111",
            &[("ipv4", "10.1.2.3"), ("payment_card", "4111111111111111")],
        ),
        (
            "call +1 415 555 0132 4111 1111 1111 1111",
            &[
                ("phone", "+1 415 555 0132"),
                ("payment_card", "4111 1111 1111 1111"),
            ],
        ),
    ];
    for (text, want) in cases {
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(found(&c, text), want, "in {text:?}");
    }
}
