//! Inspection of request and response bodies: masking, block rules and the
//! refusal of what cannot be inspected. Compiled once per configuration.
//!
//! A request body is refused (never forwarded uninspected) when it is over
//! the size limit (413), compressed or of a content type outside the
//! configured set (415), or not valid UTF-8 / JSON, or JSON with a key
//! twice in one object (400). Otherwise every key, string and number is
//! judged (`body`): the block rules on each scope's text, folded, then the
//! detectors; `text/plain` that is JSON is judged as JSON, as the API
//! reads it. Responses are masked the same way; SSE streams by `SseMasker`.

mod body;
pub mod config;
mod head;
pub mod media;

pub use body::Mark;
pub use head::{recorded_value, Head, CREDENTIALS};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use regex::Regex;
use serde_json::json;

use crate::access::Facts;
use crate::config::{err, ConfigError};
use crate::detect::{builtin::BUILTINS, Catalogue, Custom};
use crate::json::Tape;
use crate::llm::sse::SseMasker;
use crate::llm::usage::{self, Asked, UsageReader};
use crate::llm::{Api, Direction};
use crate::mask::{Hits, Masker, Operator, Tokens};
use config::{InspectionConfig, MaskingConfig, OperatorName, RuleAction, RuleConfig, RuleScope};

/// How a keyword rule matches ASCII text.
#[derive(Debug, Clone)]
enum AsciiMatcher {
    /// Every keyword folds to something with non-ASCII in it.
    Never,
    Regex(Regex),
}

impl AsciiMatcher {
    /// Keywords as folded: case-insensitive, any run of ASCII whitespace
    /// where a keyword has a space.
    fn new(folded_keywords: &[String]) -> Option<AsciiMatcher> {
        let alts: Vec<String> = folded_keywords
            .iter()
            .filter(|k| k.is_ascii())
            .map(|k| {
                k.split(' ')
                    .map(regex::escape)
                    .collect::<Vec<_>>()
                    .join(r"[\t\n\x0B\x0C\r ]+")
            })
            .collect();
        if alts.is_empty() {
            return Some(AsciiMatcher::Never);
        }
        let pattern = format!("(?i-u:{})", alts.join("|"));
        regex::RegexBuilder::new(&pattern)
            .size_limit(2 << 20)
            .build()
            .ok()
            .map(AsciiMatcher::Regex)
    }

    fn find_at(&self, text: &str) -> Option<usize> {
        match self {
            AsciiMatcher::Never => None,
            AsciiMatcher::Regex(r) => r.find(text).map(|m| m.start()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub scope: RuleScope,
    /// Matched on the scope's text as rules see it (`normalize::for_rules`):
    /// keywords folded the same way, or the rule's regex.
    matcher: Regex,
    /// A regex rule is also matched on the raw text.
    raw: Option<Regex>,
    /// A keyword rule on text that is all ASCII: folding would only lower
    /// the case and squeeze whitespace, so this matches the raw text the
    /// way `matcher` matches the folded text, without folding it. `None`
    /// for regex rules (they always see the folded text).
    ascii: Option<AsciiMatcher>,
    pub action: RuleAction,
    pub message: String,
    pub risk: u32,
}

impl Rule {
    fn hit(&self) -> RuleHit {
        RuleHit {
            id: self.id.clone(),
            action: self.action,
            scope: scope_name(self.scope),
        }
    }
}

fn scope_name(s: RuleScope) -> &'static str {
    match s {
        RuleScope::Prompt => "prompt",
        RuleScope::System => "system",
        RuleScope::Model => "model",
        RuleScope::ToolName => "tool_name",
        RuleScope::ToolArguments => "tool_arguments",
        RuleScope::Any => "any",
    }
}

/// A rule that matched, for the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleHit {
    pub id: String,
    pub action: RuleAction,
    pub scope: &'static str,
}

/// What to do with a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestVerdict {
    /// Forward, with this body instead when masking changed it. `marks`:
    /// where masked findings and rule matches are in the body as sent.
    Forward {
        body: Option<Vec<u8>>,
        hits: Hits,
        rules: Vec<RuleHit>,
        marks: Vec<Mark>,
        /// What access rules judge, read from the body as it goes on; `None`
        /// when no access rules are configured.
        facts: Option<Box<Facts>>,
        /// The model, streaming and usage options the body asks for (usage
        /// on the record); default for a body that is not JSON.
        asked: Asked,
    },
    /// A rule with action `block` (or `approve`, when no approval service is
    /// configured) matched: answer 403.
    Blocked {
        rule: RuleHit,
        message: String,
        hits: Hits,
        rules: Vec<RuleHit>,
        /// As in `Forward`: the record names the model refused.
        asked: Asked,
    },
    /// The body cannot be inspected: answer `status`.
    Refused {
        status: u32,
        kind: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct Inspector {
    pub config: InspectionConfig,
    masker: Option<Masker>,
    rules: Vec<Rule>,
    /// An approval service is configured: `approve` rules add risk instead
    /// of blocking.
    approvals: bool,
    /// Access rules are configured: requests' `Facts` are read.
    facts: bool,
}

impl Inspector {
    /// `approve` rules send requests for approval (their risk counts against
    /// `approval.threshold`) instead of blocking them.
    pub fn with_approvals(mut self, on: bool) -> Self {
        self.approvals = on;
        self
    }

    /// Reads what access rules judge from each request body.
    pub fn with_facts(mut self, on: bool) -> Self {
        self.facts = on;
        self
    }

    /// The configured risk of a rule.
    pub fn rule_risk(&self, id: &str) -> u32 {
        self.rules.iter().find(|r| r.id == id).map_or(0, |r| r.risk)
    }

    pub fn new(
        inspection: &InspectionConfig,
        masking: &MaskingConfig,
        rules: &[RuleConfig],
    ) -> Result<Inspector, ConfigError> {
        crate::config::in_range(
            "inspection.max_body_bytes",
            inspection.max_body_bytes,
            1024,
            64 << 20,
        )?;
        crate::config::in_range(
            "inspection.stream_hold_max_bytes",
            inspection.stream_hold_max_bytes,
            256,
            1 << 20,
        )?;
        crate::config::in_range(
            "inspection.stream_max_event_bytes",
            inspection.stream_max_event_bytes,
            4096,
            64 << 20,
        )?;
        if inspection.content_types.is_empty() {
            return Err(err(
                "inspection.content_types",
                "must list at least one type",
            ));
        }
        let masker = if masking.enabled {
            Some(compile_masker(masking)?)
        } else {
            None
        };
        let mut compiled = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            if r.id.trim().is_empty() {
                return Err(err(&format!("{at}.id"), "must not be empty"));
            }
            if compiled.iter().any(|c: &Rule| c.id == r.id) {
                return Err(err(
                    &format!("{at}.id"),
                    format!("{:?} is used twice", r.id),
                ));
            }
            let compile = |pattern: &str| {
                regex::RegexBuilder::new(pattern)
                    .size_limit(2 << 20)
                    .build()
                    .map_err(|e| err(&format!("{at}.regex"), e.to_string()))
            };
            let (matcher, raw, ascii) = match (&r.regex, r.keywords.is_empty()) {
                (Some(re), true) => (compile(re)?, Some(compile(re)?), None),
                (None, false) => {
                    if r.keywords.iter().any(|k| k.trim().is_empty()) {
                        return Err(err(&format!("{at}.keywords"), "empty keyword"));
                    }
                    // Keywords fold like the text they are matched on.
                    let folded: Vec<String> = r
                        .keywords
                        .iter()
                        .map(|k| {
                            let mut folded = String::new();
                            crate::normalize::for_rules(k.trim(), &mut folded);
                            folded
                        })
                        .collect();
                    let alts: Vec<String> = folded.iter().map(|k| regex::escape(k)).collect();
                    (compile(&alts.join("|"))?, None, AsciiMatcher::new(&folded))
                }
                _ => {
                    return Err(err(&at, "give exactly one of `regex` or `keywords`"));
                }
            };
            compiled.push(Rule {
                id: r.id.clone(),
                scope: r.scope,
                matcher,
                raw,
                ascii,
                action: r.action,
                message: r
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("request blocked by rule {}", r.id)),
                risk: r.risk,
            });
        }
        Ok(Inspector {
            config: inspection.clone(),
            masker,
            rules: compiled,
            approvals: false,
            facts: false,
        })
    }

    pub fn masker(&self) -> Option<&Masker> {
        self.masker.as_ref()
    }

    /// Whether a request with this content type may be inspected.
    pub fn accepts(&self, content_type: &str) -> bool {
        let media = media_type(content_type);
        self.config
            .content_types
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&media))
    }

    /// Inspects a whole request body. Placeholders `tokenize` makes from
    /// now on (in the answer) are never restored.
    pub fn request(&self, content_type: &str, body: &[u8], tokens: &mut Tokens) -> RequestVerdict {
        let verdict = self.request_body(content_type, body, tokens);
        tokens.seal();
        verdict
    }

    fn request_body(&self, content_type: &str, body: &[u8], tokens: &mut Tokens) -> RequestVerdict {
        if body.is_empty() {
            // Nothing to inspect (a POST without a body).
            return RequestVerdict::Forward {
                body: None,
                hits: Hits::default(),
                rules: Vec::new(),
                marks: Vec::new(),
                facts: self.facts.then(Box::default),
                asked: Asked::default(),
            };
        }
        if body.len() > self.config.max_body_bytes {
            return refused(
                413,
                "request_too_large",
                format!("request body exceeds {} bytes", self.config.max_body_bytes),
            );
        }
        if !self.accepts(content_type) {
            return refused(
                415,
                "unsupported_media_type",
                format!(
                    "content type {:?} is not inspected",
                    media_type(content_type)
                ),
            );
        }
        let Ok(text) = std::str::from_utf8(body) else {
            return refused(
                400,
                "invalid_request_error",
                "request body is not valid UTF-8".into(),
            );
        };
        let mut tape = Tape::default();
        let parsed = tape.parse(text);
        let declared_json = media_type(content_type).ends_with("json");
        let json = parsed.is_ok();
        let judged = match parsed {
            // Text that is JSON is read by the API as JSON: judged as such.
            Ok(()) => {
                if let Some(key) = body::duplicate_key(&tape, text) {
                    let e = body::Unreadable::DuplicateKey(key);
                    return refused(400, "invalid_request_error", e.to_string());
                }
                self.judge_json(&tape, text, Direction::Request, tokens, false)
            }
            Err(e) if declared_json => {
                let e = body::Unreadable::Json(e);
                return refused(400, "invalid_request_error", e.to_string());
            }
            Err(_) => self.judge_text(text, tokens, false, true),
        };
        let mut asked = if json {
            Asked::read(&tape, text)
        } else {
            Asked::default()
        };
        // The record holds the model as it goes upstream: judged. It is part
        // of the body, so a body masking left alone holds it unchanged.
        let body_changed = !matches!(&judged, Ok(j) if j.body.is_none());
        if body_changed && !asked.model.is_empty() {
            asked.model = usage::judged(self.masker(), &asked.model);
        }
        match judged {
            Ok(j) => {
                let facts = self.facts.then(|| {
                    if !json {
                        return Box::new(Facts::text());
                    }
                    let facts = Facts::read(&tape, text);
                    match &j.body {
                        // Masking changed a string the facts read: read
                        // again from the body as the upstream reads it.
                        // (Strings are masked one by one, so a string that
                        // masks differently alone is one that changed.)
                        Some(sent) if self.changes_any(facts.strings()) => {
                            let sent = std::str::from_utf8(sent).unwrap_or_default();
                            let mut masked = Tape::default();
                            Box::new(match masked.parse(sent) {
                                Ok(()) => Facts::read(&masked, sent),
                                Err(_) => Facts::text(),
                            })
                        }
                        _ => Box::new(facts),
                    }
                });
                RequestVerdict::Forward {
                    body: j.body,
                    hits: j.hits,
                    rules: j.rules,
                    marks: j.marks,
                    facts,
                    asked,
                }
            }
            Err(hit) => self.blocked(hit, asked),
        }
    }

    /// Whether masking would change any of these strings.
    fn changes_any<'s>(&self, mut strings: impl Iterator<Item = &'s str>) -> bool {
        let Some(m) = self.masker() else {
            return false;
        };
        strings.any(|s| {
            m.mask(s, &mut Tokens::default(), &mut Hits::default())
                .is_some()
        })
    }

    /// Masks a whole (non-streamed) response body. `Err` when it cannot be
    /// inspected (not UTF-8): it must not reach the client.
    /// Masks a whole answer; `usage` reads its token counts from the same
    /// parse.
    pub fn response(
        &self,
        content_type: &str,
        body: &[u8],
        tokens: &mut Tokens,
        hits: &mut Hits,
        usage: Option<&mut UsageReader>,
    ) -> Result<Option<Vec<u8>>, String> {
        // Whatever happened to the request, the answer's own values are
        // never restored.
        tokens.seal();
        if self.masker.is_none() || body.is_empty() {
            return Ok(None);
        }
        let text = std::str::from_utf8(body)
            .map_err(|_| "response body is not valid UTF-8".to_string())?;
        let media = media_type(content_type);
        let mut tape = Tape::default();
        // An answer without a content type is read as JSON if it is JSON.
        let judged = if (media.ends_with("json") || media.is_empty()) && tape.parse(text).is_ok() {
            if let Some(u) = usage {
                u.answer(&tape, text, self.masker());
            }
            self.judge_json(&tape, text, Direction::Response, tokens, true)
        } else {
            // Not JSON (or malformed JSON): masked as text.
            self.judge_text(text, tokens, true, false)
        };
        let j = judged.unwrap_or_default();
        hits.merge(&j.hits);
        Ok(j.body)
    }

    /// Answers are masked (streams event by event): only then are they
    /// parsed, so only then can their usage be read.
    pub fn reads_answers(&self) -> bool {
        self.config.responses && self.masker.is_some()
    }

    /// A masker for an SSE response stream.
    pub fn stream(&self, api: Api) -> SseMasker {
        SseMasker::new(
            api,
            self.config.stream_hold_max_bytes,
            self.config.stream_max_event_bytes,
        )
    }

    /// The verdict when a `block` (or `approve`) rule matched: the first one
    /// names the refusal; masking has not run, so there are no findings yet.
    fn blocked(&self, stop: body::Stop, asked: Asked) -> RequestVerdict {
        let body::Stop { hit, rules } = stop;
        let rule = self.rules.iter().find(|r| r.id == hit.id);
        let mut message = rule.map(|r| r.message.clone()).unwrap_or_default();
        if hit.action == RuleAction::Approve {
            message.push_str(" (needs approval; no approval service is configured)");
        }
        RequestVerdict::Blocked {
            rule: hit,
            message,
            hits: Hits::default(),
            rules,
            asked,
        }
    }

    /// Risk of the rules that matched.
    pub fn rules_risk(&self, hits: &[RuleHit]) -> u32 {
        hits.iter()
            .filter_map(|h| self.rules.iter().find(|r| r.id == h.id))
            .map(|r| r.risk)
            .sum()
    }
}

fn refused(status: u32, kind: &'static str, message: String) -> RequestVerdict {
    RequestVerdict::Refused {
        status,
        kind,
        message,
    }
}

/// `application/json; charset=utf-8` → `application/json`.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn compile_masker(c: &MaskingConfig) -> Result<Masker, ConfigError> {
    for name in c.detectors.keys() {
        if !BUILTINS.iter().any(|b| b.name == name) {
            let names: Vec<&str> = BUILTINS.iter().map(|b| b.name).collect();
            return Err(err(
                &format!("masking.detectors.{name}"),
                format!(
                    "no built-in detector {name:?}; expected one of {}",
                    names.join(", ")
                ),
            ));
        }
    }
    let mut custom = Vec::new();
    for (i, d) in c.custom.iter().enumerate() {
        if d.name.is_empty()
            || !d
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(err(
                &format!("masking.custom[{i}].name"),
                "use letters, digits and _",
            ));
        }
        if BUILTINS.iter().any(|b| b.name == d.name)
            || c.custom[..i].iter().any(|o| o.name == d.name)
        {
            return Err(err(
                &format!("masking.custom[{i}].name"),
                format!("{:?} is already a detector", d.name),
            ));
        }
        custom.push(Custom {
            name: d.name.clone(),
            pattern: d.pattern.clone(),
            risk: d.risk,
        });
    }
    let enabled = |name: &str| {
        c.detectors
            .get(name)
            .and_then(|s| s.enabled)
            .unwrap_or(true)
    };
    let catalogue = Catalogue::new(enabled, &custom).map_err(|e| {
        let field = c
            .custom
            .iter()
            .position(|d| e.starts_with(&format!("{}:", d.name)))
            .map_or("masking.custom".to_string(), |i| {
                format!("masking.custom[{i}].pattern")
            });
        err(&field, e)
    })?;
    let to_op = |name: OperatorName, keep: Option<usize>| match name {
        OperatorName::Redact => Operator::Redact,
        OperatorName::Partial => Operator::Partial {
            keep_last: keep.unwrap_or(4),
        },
        OperatorName::Hash => Operator::Hash,
        OperatorName::Tokenize => Operator::Tokenize,
    };
    let mut operators = Vec::new();
    let mut risks = Vec::new();
    for d in catalogue.detectors() {
        let (op, keep, risk) = match c.detectors.get(&d.name) {
            Some(s) => (s.operator, s.keep_last, s.risk),
            None => match c.custom.iter().find(|x| x.name == d.name) {
                Some(x) => (x.operator, x.keep_last, None),
                None => (None, None, None),
            },
        };
        operators.push(to_op(op.unwrap_or(c.default_operator), keep));
        risks.push(risk);
    }
    let catalogue = catalogue.with_risks(&risks);
    let key = match &c.hmac_key_base64 {
        Some(k) => {
            let bytes = STANDARD
                .decode(k.trim())
                .or_else(|_| URL_SAFE_NO_PAD.decode(k.trim().trim_end_matches('=')))
                .map_err(|e| err("masking.hmac_key_base64", format!("not base64: {e}")))?;
            if bytes.len() < 32 {
                return Err(err("masking.hmac_key_base64", "use at least 32 bytes"));
            }
            bytes
        }
        None => {
            if operators.contains(&Operator::Hash) {
                return Err(err(
                    "masking.hmac_key_base64",
                    "the `hash` operator needs a key",
                ));
            }
            Vec::new()
        }
    };
    Ok(Masker::new(catalogue, operators, key))
}

/// An error body in the API's own shape: OpenAI's `{"error": {...}}` or
/// Anthropic's `{"type": "error", "error": {...}}`.
pub fn error_body(api: Api, kind: &str, message: &str, rule: Option<&str>) -> String {
    let message = format!("tracegate: {message}");
    let mut v = match api {
        Api::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}),
        _ => json!({"error": {"message": message, "type": kind, "param": null, "code": kind}}),
    };
    if let Some(rule) = rule {
        v["error"]["rule"] = json!(rule);
    }
    v.to_string()
}

#[cfg(test)]
pub(crate) mod tests;

/// What inspection found in one exchange, for its record.
#[derive(Debug, Clone, Default)]
pub struct ExchangeInspection {
    pub request: Hits,
    pub response: Hits,
    pub rules: Vec<RuleHit>,
    pub rules_risk: u32,
    pub verdict: crate::record::Verdict,
    pub blocked_rule: String,
    pub reason: String,
    /// The access rules' decision (with an `access` section).
    pub access: Option<tracegate_proto::v1::AccessDecision>,
}

impl ExchangeInspection {
    pub fn to_proto(&self) -> tracegate_proto::v1::Inspection {
        use tracegate_proto::v1 as p;
        let counts = |h: &Hits| h.counts.iter().map(|(k, v)| (k.clone(), *v)).collect();
        p::Inspection {
            request_findings: counts(&self.request),
            response_findings: counts(&self.response),
            risk: self.request.risk.saturating_add(self.rules_risk),
            rules: self
                .rules
                .iter()
                .map(|r| p::RuleMatch {
                    id: r.id.clone(),
                    action: match r.action {
                        RuleAction::Block => "block",
                        RuleAction::Approve => "approve",
                        RuleAction::Log => "log",
                    }
                    .into(),
                    scope: r.scope.into(),
                })
                .collect(),
            verdict: self.verdict.as_str().into(),
            blocked_rule: self.blocked_rule.clone(),
            reason: self.reason.clone(),
            stream_holds_exceeded: self.response.stream_holds_exceeded,
            access: self.access.clone(),
        }
    }
}
