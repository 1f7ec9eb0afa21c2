//! The `access` section as the operator writes it.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Who may use what: rules in order, the first whose `when` matches the
/// caller decides; callers no rule matches get `default`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// For callers no rule's `when` matches. Deny unless said otherwise: an
    /// `access` section is there to restrict.
    #[serde(default)]
    pub default: DefaultAction,
    pub rules: Vec<AccessRuleConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAction {
    Allow,
    #[default]
    Deny,
}

/// One rule: whom it is for, and what they may do. A constraint left out
/// does not restrict; an empty list allows nothing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRuleConfig {
    /// Names the rule in refusals, records and stats (`tracegate.access.<id>.denied`).
    pub id: String,
    /// Whom the rule is for; left out: every caller.
    #[serde(default)]
    pub when: WhenConfig,
    /// Globs on the request body's `model`.
    pub models: Option<Vec<String>>,
    /// Which APIs, by path (`openai_chat`, `openai_responses`, `anthropic`, `other`).
    pub apis: Option<Vec<ApiName>>,
    /// Globs on the URL path (without the query).
    pub paths: Option<Vec<String>>,
    /// Globs on the names of tools the request declares or calls, and that
    /// the answer calls.
    pub tools: Option<Vec<String>>,
    /// Ceiling on `max_tokens`, `max_completion_tokens`, `max_output_tokens`;
    /// a request under this rule must state one.
    pub max_output_tokens: Option<u64>,
    /// `false`: `"stream": true` is refused.
    pub stream: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhenConfig {
    /// Verified claim → accepted values (globs). Every listed claim must
    /// match; a claim matches when any of its values matches any glob.
    #[serde(default)]
    pub claims: BTreeMap<String, OneOrMany>,
    /// Matches callers without a verified token.
    #[serde(default)]
    pub anonymous: bool,
}

/// A string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

/// An API as the configuration names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiName {
    OpenaiChat,
    OpenaiResponses,
    Anthropic,
    Other,
}
