//! Access rules: which caller may use which models, APIs, paths and tools,
//! with how many output tokens, and whether streamed.
//!
//! Firewall order: the first rule whose `when` matches the caller decides;
//! its constraints are checked and the request is allowed or denied by that
//! rule (no later rule is tried). A caller no rule matches gets `default`.
//! Everything is compiled once per configuration (`Access::new`); the check
//! of one request reads facts the inspector's parse already produced.
//!
//! Matching is exact on what the upstream reads: JSON escapes decoded, no
//! case folding or trimming (every constraint is an allow-list, so a name
//! spelt differently is simply not allowed).

pub mod config;
pub mod facts;
#[cfg(test)]
mod tests;

use regex::Regex;

pub use config::{AccessConfig, AccessRuleConfig, ApiName, DefaultAction};
pub use facts::{answer_calls, Facts, Limit, Model, Place};

use crate::config::{err, ConfigError};
use crate::llm::Api;

/// Globs compiled into one anchored regex: `*` any run of characters, `?`
/// one character, everything else itself.
#[derive(Debug, Clone)]
pub struct Globs {
    /// `None`: the list is empty and matches nothing.
    regex: Option<Regex>,
}

const MAX_GLOB_LEN: usize = 512;

impl Globs {
    /// `field` names the list (`access.rules[0].models`); errors name the item.
    pub fn new(field: &str, patterns: &[String]) -> Result<Globs, ConfigError> {
        if patterns.is_empty() {
            return Ok(Globs { regex: None });
        }
        let mut alts = Vec::with_capacity(patterns.len());
        for (i, p) in patterns.iter().enumerate() {
            let at = format!("{field}[{i}]");
            if p.is_empty() {
                return Err(err(&at, "an empty pattern; use \"*\" for anything"));
            }
            if p.len() > MAX_GLOB_LEN {
                return Err(err(&at, format!("longer than {MAX_GLOB_LEN} bytes")));
            }
            if p.chars().any(char::is_control) {
                return Err(err(&at, "control characters are not allowed"));
            }
            alts.push(glob_regex(p));
        }
        let pattern = format!("(?s)^(?:{})$", alts.join("|"));
        let regex = regex::RegexBuilder::new(&pattern)
            .size_limit(4 << 20)
            .build()
            .map_err(|e| err(field, format!("too many or too long patterns: {e}")))?;
        Ok(Globs { regex: Some(regex) })
    }

    pub fn matches(&self, s: &str) -> bool {
        self.regex.as_ref().is_some_and(|r| r.is_match(s))
    }
}

fn glob_regex(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len() + 8);
    let mut literal = String::new();
    for c in glob.chars() {
        match c {
            '*' | '?' => {
                out.push_str(&regex::escape(&literal));
                literal.clear();
                out.push_str(if c == '*' { ".*" } else { "." });
            }
            c => literal.push(c),
        }
    }
    out.push_str(&regex::escape(&literal));
    out
}

/// Whom a rule is for.
#[derive(Debug, Clone)]
enum When {
    Anyone,
    Anonymous,
    /// Verified callers whose every listed claim matches.
    Claims(Vec<(String, Globs)>),
}

#[derive(Debug, Clone)]
struct Rule {
    id: String,
    when: When,
    models: Option<Globs>,
    apis: Option<Vec<Api>>,
    paths: Option<Globs>,
    tools: Option<Globs>,
    max_output_tokens: Option<u64>,
    stream: bool,
}

/// The compiled `access` section.
#[derive(Debug, Clone)]
pub struct Access {
    default: DefaultAction,
    rules: Vec<Rule>,
    /// Every claim a `when` reads: the authenticator keeps these of a
    /// verified token.
    pub claims: Vec<String>,
}

/// The caller, as access rules see it.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// No verified token (none required, none sent).
    Anonymous,
    /// Verified; the claims `when`s read: name → values as text.
    Verified(&'a [(String, Vec<String>)]),
}

/// The rule that decides for a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selected {
    Rule(usize),
    /// No rule's `when` matched.
    Default,
}

/// Which constraint refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// No rule matched the caller and `default` is `deny`.
    NoRule,
    Api,
    Path,
    Model,
    Tool,
    MaxOutputTokens,
    Stream,
    /// The answer calls a tool the rule does not allow.
    AnswerTool,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::NoRule => "no_rule",
            Check::Api => "api",
            Check::Path => "path",
            Check::Model => "model",
            Check::Tool => "tool",
            Check::MaxOutputTokens => "max_output_tokens",
            Check::Stream => "stream",
            Check::AnswerTool => "answer_tool",
        }
    }
}

/// A refusal: the rule (`default` when none matched), what, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub rule: String,
    /// Index of the rule (`rules.len()` for `default`), for its stat.
    pub index: usize,
    pub check: Check,
    pub message: String,
}

/// The id that names the default in refusals, records and stats.
pub const DEFAULT_ID: &str = "default";

impl Access {
    pub fn new(c: &AccessConfig, jwt: bool) -> Result<Access, ConfigError> {
        let mut rules: Vec<Rule> = Vec::with_capacity(c.rules.len());
        let mut claims: Vec<String> = Vec::new();
        for (i, r) in c.rules.iter().enumerate() {
            let at = format!("access.rules[{i}]");
            let field = |name: &str| format!("{at}.{name}");
            let id_ok = !r.id.is_empty()
                && r.id.len() <= 64
                && r.id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !id_ok {
                return Err(err(
                    &field("id"),
                    "use 1-64 letters, digits, _ and - (it names an Envoy stat)",
                ));
            }
            if r.id == DEFAULT_ID {
                return Err(err(
                    &field("id"),
                    "\"default\" names the default decision; choose another id",
                ));
            }
            if rules.iter().any(|x| x.id == r.id) {
                return Err(err(&field("id"), format!("{:?} is used twice", r.id)));
            }
            let when = match (r.when.anonymous, r.when.claims.is_empty()) {
                (true, true) => When::Anonymous,
                (false, true) => When::Anyone,
                (true, false) => {
                    return Err(err(
                        &field("when"),
                        "`anonymous` and `claims` exclude each other: a caller with claims is not anonymous",
                    ))
                }
                (false, false) => {
                    if !jwt {
                        return Err(err(
                            &field("when.claims"),
                            "claims come from verified tokens: configure a `jwt` section",
                        ));
                    }
                    let mut list = Vec::new();
                    for (name, values) in &r.when.claims {
                        let f = field(&format!("when.claims.{name}"));
                        if name.is_empty() {
                            return Err(err(&f, "an empty claim name"));
                        }
                        if values.items().is_empty() {
                            return Err(err(&f, "an empty list matches nothing"));
                        }
                        list.push((name.clone(), Globs::new(&f, values.items())?));
                        if !claims.contains(name) {
                            claims.push(name.clone());
                        }
                    }
                    When::Claims(list)
                }
            };
            let globs = |name: &str, list: &Option<Vec<String>>| {
                list.as_ref()
                    .map(|l| Globs::new(&field(name), l))
                    .transpose()
            };
            if let Some(paths) = &r.paths {
                for (j, p) in paths.iter().enumerate() {
                    if !p.starts_with('/') && !p.starts_with('*') {
                        return Err(err(
                            &field(&format!("paths[{j}]")),
                            format!("{p:?}: a path starts with /"),
                        ));
                    }
                }
            }
            if let Some(max) = r.max_output_tokens {
                crate::config::in_range(&field("max_output_tokens"), max, 1, 100_000_000)?;
            }
            rules.push(Rule {
                id: r.id.clone(),
                when,
                models: globs("models", &r.models)?,
                apis: r.apis.as_ref().map(|a| a.iter().map(|n| api(*n)).collect()),
                paths: globs("paths", &r.paths)?,
                tools: globs("tools", &r.tools)?,
                max_output_tokens: r.max_output_tokens,
                stream: r.stream.unwrap_or(true),
            });
        }
        Ok(Access {
            default: c.default,
            rules,
            claims,
        })
    }

    /// The rules' ids in order, then `default`: what stats are named by.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .map(|r| r.id.as_str())
            .chain(std::iter::once(DEFAULT_ID))
    }

    /// The id of a selection (`default` for the default).
    pub fn id(&self, selected: Selected) -> &str {
        match selected {
            Selected::Rule(i) => self.rules.get(i).map_or(DEFAULT_ID, |r| r.id.as_str()),
            Selected::Default => DEFAULT_ID,
        }
    }

    /// Whether any rule restricts the tools of answers (they must be read).
    pub fn restricts_answers(&self) -> bool {
        self.rules.iter().any(|r| r.tools.is_some())
    }

    /// Which rules restrict tools, by index, for configuration checks.
    pub fn tool_rules(&self) -> impl Iterator<Item = usize> + '_ {
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.tools.is_some())
            .map(|(i, _)| i)
    }

    /// The first rule whose `when` matches the caller.
    pub fn select(&self, caller: Caller<'_>) -> Selected {
        self.rules
            .iter()
            .position(|r| match (&r.when, caller) {
                (When::Anyone, _) => true,
                (When::Anonymous, Caller::Anonymous) => true,
                (When::Claims(want), Caller::Verified(have)) => want.iter().all(|(name, globs)| {
                    have.iter()
                        .filter(|(n, _)| n == name)
                        .flat_map(|(_, values)| values)
                        .any(|v| globs.matches(v))
                }),
                _ => false,
            })
            .map_or(Selected::Default, Selected::Rule)
    }

    pub(crate) fn denial(&self, selected: Selected, check: Check, message: String) -> Denial {
        let id = self.id(selected).to_string();
        let message = match check {
            Check::NoRule => message,
            _ => format!("{message} (access rule {id})"),
        };
        Denial {
            index: match selected {
                Selected::Rule(i) => i,
                Selected::Default => self.rules.len(),
            },
            rule: id,
            check,
            message,
        }
    }

    fn rule(&self, selected: Selected) -> Option<&Rule> {
        match selected {
            Selected::Rule(i) => self.rules.get(i),
            Selected::Default => None,
        }
    }

    /// What can be judged from the request's head: the default, the API
    /// and the path (without the query).
    pub fn head(&self, selected: Selected, api_of: Api, path: &str) -> Result<(), Denial> {
        let Some(rule) = self.rule(selected) else {
            return match self.default {
                DefaultAction::Allow => Ok(()),
                DefaultAction::Deny => Err(self.denial(
                    selected,
                    Check::NoRule,
                    "no access rule allows this caller (access default: deny)".into(),
                )),
            };
        };
        if let Some(apis) = &rule.apis {
            if !apis.contains(&api_of) {
                let message = format!("API {} is not allowed", api_name(api_of));
                return Err(self.denial(selected, Check::Api, message));
            }
        }
        if let Some(paths) = &rule.paths {
            let path = path.split(['?', '#']).next().unwrap_or("");
            if !plain_path(path) {
                let message = format!(
                    "path {} is not allowed: dot segments, empty segments, backslashes and encoded separators are never matched",
                    quoted(path)
                );
                return Err(self.denial(selected, Check::Path, message));
            }
            if !paths.matches(path) {
                let message = format!("path {} is not allowed", quoted(path));
                return Err(self.denial(selected, Check::Path, message));
            }
        }
        Ok(())
    }

    /// What the body asks for: model, tools, output limit, streaming.
    pub fn body(&self, selected: Selected, facts: &Facts) -> Result<(), Denial> {
        let Some(rule) = self.rule(selected) else {
            return Ok(());
        };
        let deny = |check, message: String| Err(self.denial(selected, check, message));
        if facts.body == facts::BodyKind::None {
            // No body: nothing names a model or a tool (a GET).
            return Ok(());
        }
        if let Some(models) = &rule.models {
            match &facts.model {
                Model::Name(m) if models.matches(m) => {}
                Model::Name(m) => {
                    return deny(Check::Model, format!("model {} is not allowed", quoted(m)))
                }
                Model::Absent => {
                    return deny(
                        Check::Model,
                        "the request names no model; this rule allows only some".into(),
                    )
                }
                Model::NotString => return deny(Check::Model, "`model` is not a string".into()),
            }
        }
        if let Some(tools) = &rule.tools {
            if let Some(t) = facts.tools.iter().find(|t| !tools.matches(&t.name)) {
                let message = format!(
                    "tool {} ({}) is not allowed",
                    quoted(&t.name),
                    t.place.as_str()
                );
                return deny(Check::Tool, message);
            }
        }
        if let Some(max) = rule.max_output_tokens {
            if facts.limits.is_empty() {
                let message = format!("the request sets no output limit; set max_tokens (or max_completion_tokens, max_output_tokens) to at most {max}");
                return deny(Check::MaxOutputTokens, message);
            }
            for &(field, limit) in &facts.limits {
                match limit {
                    Limit::Tokens(n) if n <= max => {}
                    Limit::Tokens(n) => {
                        return deny(Check::MaxOutputTokens, format!("{field} {n} > {max}"))
                    }
                    Limit::Unreadable => {
                        let message =
                            format!("{field} is not a non-negative integer (at most {max})");
                        return deny(Check::MaxOutputTokens, message);
                    }
                }
            }
        }
        if facts.stream && !rule.stream {
            return deny(Check::Stream, "streaming is not allowed".into());
        }
        Ok(())
    }

    /// What the answer to a request this selection allowed may call: the
    /// rule's tool globs, if it restricts tools.
    pub fn answer_guard(&self, selected: Selected) -> Option<AnswerGuard> {
        let rule = self.rule(selected)?;
        let tools = rule.tools.clone()?;
        let Selected::Rule(index) = selected else {
            return None;
        };
        Some(AnswerGuard {
            rule: rule.id.clone(),
            index,
            tools,
        })
    }
}

/// The tools an answer may call, for one exchange (cheap to clone: the
/// regex is shared).
#[derive(Debug, Clone)]
pub struct AnswerGuard {
    pub rule: String,
    pub index: usize,
    tools: Globs,
}

impl AnswerGuard {
    /// The first call in `names` the rule does not allow.
    pub fn check<'n>(&self, names: &'n [String]) -> Option<&'n str> {
        names
            .iter()
            .find(|n| !self.tools.matches(n))
            .map(String::as_str)
    }

    /// The refusal of an answer that calls `tool`.
    pub fn denial(&self, tool: &str) -> Denial {
        Denial {
            rule: self.rule.clone(),
            index: self.index,
            check: Check::AnswerTool,
            message: format!(
                "the answer calls tool {}, which access rule {} does not allow; the answer was withheld",
                quoted(tool),
                self.rule
            ),
        }
    }
}

fn api(n: ApiName) -> Api {
    match n {
        ApiName::OpenaiChat => Api::OpenAiChat,
        ApiName::OpenaiResponses => Api::OpenAiResponses,
        ApiName::Anthropic => Api::Anthropic,
        ApiName::Other => Api::Other,
    }
}

pub fn api_name(a: Api) -> &'static str {
    match a {
        Api::OpenAiChat => "openai_chat",
        Api::OpenAiResponses => "openai_responses",
        Api::Anthropic => "anthropic",
        Api::Other => "other",
    }
}

/// A path no normalisation can change: no `.`/`..` or empty segments, no
/// backslash, no percent-encoded `.`, `/` or `\`. Anything else could reach
/// another resource upstream than the one its text matches.
fn plain_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if path.contains('\\') {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if ["%2e", "%2f", "%5c", "%00"]
        .iter()
        .any(|e| lower.contains(e))
    {
        return false;
    }
    // A trailing slash is one empty segment that every server ignores.
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    rest.is_empty()
        || rest
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

/// Caller-given text in a message: quoted, escaped, cut.
fn quoted(s: &str) -> String {
    crate::jwt::verify::printable(s)
}
