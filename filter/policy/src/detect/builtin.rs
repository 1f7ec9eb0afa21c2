//! The built-in detectors: name, placeholder label, risk score, pattern, and
//! the check that confirms a match.
//!
//! Every pattern is bounded (at most about 450 bytes per match) except the
//! PEM key, whose match grows with its body: the stream masker's window
//! (`mask::stream`) must be at least that long to see any value whole.
//!
//! Patterns use ASCII word boundaries (`(?-u:\b)`) so the regex engine's
//! lazy DFA can run them over any text; a capture group, where present,
//! marks the part to mask (the value after `password=`, not the key name).
//! Keys with a distinctive prefix do not use `\b`, for which `_` is part of
//! a word (`AWS_KEY_AKIA…_prod` would hide the key): the byte before them
//! must not be a letter or digit (`Before::NotAlnum`), and one after them,
//! if any, is matched outside the value.

use super::validate;
use super::Before;

pub struct Builtin {
    pub name: &'static str,
    pub label: &'static str,
    pub risk: u32,
    pub pattern: &'static str,
    /// 0: the whole match is the value; 1: the first capture group that
    /// took part in the match is.
    pub group: usize,
    pub check: Option<fn(&str) -> bool>,
    /// What may come right before the value (the byte before it is checked;
    /// it is always known, also in a stream).
    pub before: Before,
    /// For the multi-pattern set that tells which detectors to run: a
    /// pattern that matches in every text holding a finding of this
    /// detector (not only a match of its regex), when the regex alone would
    /// send the detector to run on much common text its check then refuses.
    pub gate: Option<&'static str>,
}

// Long runs are written unbounded (`{20,}`, not `{20,250}`): a bounded
// repetition unrolls into that many NFA states, and together in the
// multi-pattern set they thrashed its lazy DFA on ordinary text (measured:
// the scan 0.4 MB/s instead of 150). An over-long value is masked whole, and a
// stream holds it back at most `stream_hold_max_bytes`.

macro_rules! b {
    () => {
        r"(?-u:\b)"
    };
}

/// Order matters only for ties: of two findings with the same start and
/// length, the one listed first wins (so `sk-ant-…` is an Anthropic key, not
/// an OpenAI one).
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "private_key",
        label: "PRIVATE_KEY",
        risk: 100,
        // A key cut short (no END line) is masked to the end of its body.
        pattern: r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY-----(?:[\s\S]*?-----END[ A-Z0-9]{0,40}PRIVATE KEY-----|[A-Za-z0-9+/=\s]*)",
        group: 0,
        check: None,
        before: Before::Any,
        gate: None,
    },
    Builtin {
        name: "aws_access_key_id",
        label: "AWS_ACCESS_KEY_ID",
        risk: 90,
        pattern: r"((?:AKIA|ASIA|ABIA|ACCA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA)[A-Z2-7]{16})(?:[^A-Za-z0-9]|$)",
        group: 1,
        check: None,
        before: Before::NotAlnum,
        gate: None,
    },
    Builtin {
        name: "aws_secret_access_key",
        label: "AWS_SECRET_ACCESS_KEY",
        risk: 100,
        pattern: r#"(?i:aws_?secret_?(?:access_?)?key|secret_?access_?key)["']?\s{0,8}(?:[:=]|=>)\s{0,8}["']?([A-Za-z0-9/+=]{40})"#,
        group: 1,
        check: None,
        before: Before::Any,
        gate: None,
    },
    Builtin {
        // The same key without its name near it (a model repeating one):
        // exactly 40 characters of its alphabet standing alone (not part of
        // a longer token), random-looking (`validate::aws_secret_key`). Git
        // SHAs (hex), UUIDs and base64 digests (other lengths, padding) are
        // left alone.
        name: "bare_aws_secret_key",
        label: "AWS_SECRET_ACCESS_KEY",
        risk: 100,
        pattern: r"([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=_-]|$)",
        group: 1,
        check: Some(validate::aws_secret_key),
        before: Before::NotBase64ish,
        gate: None,
    },
    Builtin {
        name: "github_token",
        label: "GITHUB_TOKEN",
        risk: 90,
        pattern: r"(gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})(?:[^A-Za-z0-9]|$)",
        group: 1,
        check: None,
        before: Before::NotAlnum,
        gate: None,
    },
    Builtin {
        name: "gitlab_token",
        label: "GITLAB_TOKEN",
        risk: 90,
        pattern: r"gl(?:pat|dt|ptt|rt|cbt|oas|soat|ffct|imt)-[A-Za-z0-9_-]{20,}",
        group: 0,
        check: None,
        before: Before::NotAlnum,
        gate: None,
    },
    Builtin {
        name: "slack_token",
        label: "SLACK_TOKEN",
        risk: 90,
        pattern: r"(?:xox[abposr]-[A-Za-z0-9-]{10,}|https://hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{16,})",
        group: 0,
        check: None,
        before: Before::NotAlnum,
        gate: None,
    },
    Builtin {
        name: "stripe_key",
        label: "STRIPE_KEY",
        risk: 90,
        pattern: r"((?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,})(?:[^A-Za-z0-9]|$)",
        group: 1,
        check: None,
        before: Before::NotAlnum,
        gate: None,
    },
    Builtin {
        name: "anthropic_api_key",
        label: "ANTHROPIC_API_KEY",
        risk: 90,
        pattern: r"sk-ant-(?:api|admin|oat)[0-9]{2}-[A-Za-z0-9_-]{20,}",
        group: 0,
        check: None,
        before: Before::NotAlnum,
        gate: None,
    },
    Builtin {
        name: "openai_api_key",
        label: "OPENAI_API_KEY",
        risk: 90,
        pattern: r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}",
        group: 0,
        check: Some(not_anthropic),
        before: Before::NotAlnum,
        gate: None,
    },
    Builtin {
        name: "google_api_key",
        label: "GOOGLE_API_KEY",
        risk: 80,
        pattern: r"AIza[0-9A-Za-z_-]{35}",
        group: 0,
        check: None,
        before: Before::NotAlnum,
        gate: None,
    },
    Builtin {
        name: "azure_storage_key",
        label: "AZURE_STORAGE_KEY",
        risk: 90,
        pattern: r"AccountKey=([A-Za-z0-9+/]{86}==)",
        group: 1,
        check: None,
        before: Before::Any,
        gate: None,
    },
    Builtin {
        name: "jwt",
        label: "JWT",
        risk: 70,
        pattern: r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{0,}",
        group: 0,
        check: None,
        before: Before::NotAlnum,
        gate: None,
    },
    Builtin {
        name: "bearer_token",
        label: "BEARER_TOKEN",
        risk: 70,
        pattern: r"(?i:bearer)[ \t]{1,8}([A-Za-z0-9._~+/-]{20,}={0,2})",
        group: 1,
        check: None,
        before: Before::Any,
        gate: None,
    },
    Builtin {
        name: "url_password",
        label: "PASSWORD",
        risk: 80,
        pattern: concat!(
            b!(),
            r#"[a-zA-Z][a-zA-Z0-9+.-]{1,20}://[^\s:/@"']{1,64}:([^\s:/@"']{1,})@"#
        ),
        group: 1,
        check: None,
        before: Before::Any,
        gate: None,
    },
    Builtin {
        name: "secret_assignment",
        label: "SECRET",
        risk: 70,
        pattern: r#"(?i:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|auth[_-]?key|client[_-]?secret|private[_-]?key|credentials?)["']?\s{0,8}(?:[:=]|=>)\s{0,8}["']?([^\s"'`,;{}<>]{8,})"#,
        group: 1,
        check: Some(validate::high_entropy_secret),
        before: Before::Any,
        gate: None,
    },
    Builtin {
        name: "payment_card",
        label: "CARD_NUMBER",
        risk: 80,
        pattern: concat!(b!(), r"[0-9](?:[ -]?[0-9]){12,18}", b!()),
        group: 0,
        check: Some(validate::payment_card),
        before: Before::Any,
        gate: None,
    },
    Builtin {
        name: "iban",
        label: "IBAN",
        risk: 60,
        pattern: concat!(
            b!(),
            r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?",
            b!()
        ),
        group: 0,
        check: Some(validate::iban),
        before: Before::Any,
        gate: None,
    },
    Builtin {
        name: "us_ssn",
        label: "US_SSN",
        risk: 80,
        pattern: concat!(b!(), r"[0-9]{3}-[0-9]{2}-[0-9]{4}", b!()),
        group: 0,
        check: Some(validate::us_ssn),
        before: Before::Any,
        gate: None,
    },
    Builtin {
        name: "email",
        label: "EMAIL",
        risk: 20,
        pattern: r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,4}\.[A-Za-z]{2,24}",
        group: 0,
        check: None,
        before: Before::Any,
        gate: None,
    },
    Builtin {
        name: "phone",
        label: "PHONE",
        risk: 20,
        // International (+…), or North American with the area code in
        // parentheses (a separator optional after it) or followed by a
        // separator; an extension (x123, ext. 123) belongs to the number.
        pattern: concat!(
            r"(?:\+[1-9](?:[ .-]?\(?[0-9]\)?){7,14}",
            "|",
            r"(?:\([2-9][0-9]{2}\)[ .-]?|(?-u:\b)[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4})",
            r"(?:\s?(?:x|ext\.?)\s?[0-9]{1,6})?",
            b!()
        ),
        group: 0,
        check: Some(validate::phone),
        before: Before::Any,
        gate: None,
    },
    Builtin {
        name: "ipv4",
        label: "IP_ADDRESS",
        risk: 10,
        pattern: concat!(b!(), r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}", b!()),
        group: 0,
        check: Some(validate::ipv4),
        before: Before::Any,
        gate: None,
    },
    Builtin {
        name: "ipv6",
        label: "IP_ADDRESS",
        risk: 10,
        pattern: r"(?i:[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7})",
        group: 0,
        check: Some(ipv6_with_content),
        before: Before::Any,
        gate: Some(IPV6_GATE),
    },
];

/// Where an address that passes `ipv6_with_content` can be. The pattern
/// has no dots, so a finding is eight groups, or holds one `::` with three
/// non-empty groups around it: two before and one after, one before and two
/// after, or all three on one side. Times (`10:15:02`, in every log line)
/// and paths (`std::fmt`) are none of these, so they do not run the detector.
pub(super) const IPV6_GATE: &str = concat!(
    "(?i:",
    r"[0-9a-f]:[0-9a-f]{1,4}::[0-9a-f]",
    r"|[0-9a-f]::[0-9a-f]{1,4}:[0-9a-f]",
    r"|::[0-9a-f]{1,4}:[0-9a-f]{1,4}:[0-9a-f]",
    r"|[0-9a-f]:[0-9a-f]{1,4}:[0-9a-f]{1,4}::",
    r"|[0-9a-f]{1,4}(?::[0-9a-f]{1,4}){7})",
);

fn not_anthropic(s: &str) -> bool {
    !s.starts_with("sk-ant-")
}

/// At least three non-empty groups: `fe80::1:2`, not `ab::cd` or `::`.
fn ipv6_with_content(s: &str) -> bool {
    s.split(':').filter(|g| !g.is_empty()).count() >= 3 && validate::ipv6(s)
}
