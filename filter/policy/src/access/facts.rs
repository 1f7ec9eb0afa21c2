//! What a request body asks for, as access rules judge it: the model, the
//! output limits, streaming, and every tool it declares, chooses or says
//! was called; and the tools an answer calls. Read from the tape the
//! inspector already parsed (no second parse), top-level fields and the
//! three APIs' known places, whatever the path says the API is: an
//! upstream reads what is in the body, not what the path suggests.

use crate::json::{Kind, Tape};

/// A request body, as access rules see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    pub body: BodyKind,
    pub model: Model,
    /// `stream` is present and not `false`/`null` (an upstream may read
    /// `"true"` or `1` as true).
    pub stream: bool,
    /// `max_tokens`, `max_completion_tokens`, `max_output_tokens`, as given.
    pub limits: Vec<(&'static str, Limit)>,
    pub tools: Vec<ToolUse>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyKind {
    /// No body (a GET, an empty POST): nothing in it to judge.
    #[default]
    None,
    /// A body that is not JSON (text): it names no model and no tools.
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Model {
    #[default]
    Absent,
    Name(String),
    /// `model` is there but not a string.
    NotString,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Tokens(u64),
    /// Not a non-negative integer (a float, a string, a negative number).
    Unreadable,
}

/// A tool the request names, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolUse {
    pub name: String,
    pub place: Place,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// `tools`, `functions`: offered to the model.
    Declared,
    /// `tool_choice`, `function_call`: forced.
    Chosen,
    /// A call in the conversation so far (`messages`, `input`).
    History,
}

impl Place {
    pub fn as_str(self) -> &'static str {
        match self {
            Place::Declared => "declared",
            Place::Chosen => "chosen",
            Place::History => "called in the conversation",
        }
    }
}

const LIMITS: [&str; 3] = ["max_tokens", "max_completion_tokens", "max_output_tokens"];

impl Facts {
    pub fn text() -> Facts {
        Facts {
            body: BodyKind::Text,
            ..Facts::default()
        }
    }

    /// Reads a JSON body parsed into `tape` (node 0 is the document).
    pub fn read(tape: &Tape, src: &str) -> Facts {
        let mut f = Facts {
            body: BodyKind::Json,
            ..Facts::default()
        };
        if tape.kind(0) != Some(Kind::Object) {
            return f;
        }
        for (k, v) in tape.members(0) {
            let Some(key) = tape.str(src, k) else {
                continue;
            };
            match key.as_ref() {
                "model" => {
                    f.model = match tape.str(src, v) {
                        Some(name) if tape.kind(v) == Some(Kind::String) => {
                            Model::Name(name.into_owned())
                        }
                        _ => Model::NotString,
                    }
                }
                "stream" => {
                    let off = match tape.kind(v) {
                        Some(Kind::Null) => true,
                        Some(Kind::Bool) => tape.raw(src, v) == "false",
                        _ => false,
                    };
                    f.stream = !off;
                }
                name if LIMITS.contains(&name) => {
                    if tape.kind(v) == Some(Kind::Null) {
                        continue;
                    }
                    let field = LIMITS.iter().copied().find(|l| *l == name).unwrap_or("");
                    let limit = tape.u64(src, v).map_or(Limit::Unreadable, Limit::Tokens);
                    f.limits.push((field, limit));
                }
                "tools" => {
                    for t in tape.elements(v) {
                        let name = declared_name(tape, src, t);
                        f.tool(name, Place::Declared);
                    }
                }
                "functions" => {
                    for t in tape.elements(v) {
                        let name = string_at(tape, src, t, &["name"]).unwrap_or_default();
                        f.tool(name, Place::Declared);
                    }
                }
                "tool_choice" | "function_call" => {
                    if let Some(name) = named(tape, src, v) {
                        f.tool(name, Place::Chosen);
                    }
                }
                "messages" | "input" => {
                    for item in tape.elements(v) {
                        let mut calls = Vec::new();
                        item_calls(tape, src, item, &mut calls);
                        // Anthropic `tool_use` blocks in a message's content.
                        if let Some(content) = tape.get(src, item, "content") {
                            for b in tape.elements(content) {
                                calls.extend(call_name(tape, src, b));
                            }
                        }
                        for name in calls {
                            f.tool(name, Place::History);
                        }
                    }
                }
                _ => {}
            }
        }
        f
    }

    /// The strings read (the model, tool names), for telling whether
    /// masking changed any of them.
    pub fn strings(&self) -> impl Iterator<Item = &str> {
        let model = match &self.model {
            Model::Name(m) => Some(m.as_str()),
            _ => None,
        };
        model
            .into_iter()
            .chain(self.tools.iter().map(|t| t.name.as_str()))
    }

    fn tool(&mut self, name: String, place: Place) {
        if !self
            .tools
            .iter()
            .any(|t| t.name == name && t.place == place)
        {
            self.tools.push(ToolUse { name, place });
        }
    }
}

/// The tools an answer (a whole body, or one event of a stream) calls:
/// OpenAI chat `choices[].message|delta` `.tool_calls[]`/`.function_call`,
/// Responses `output[]`, `item`, `response.output[]`, Anthropic
/// `content[]`, `content_block`.
pub fn answer_calls(tape: &Tape, src: &str, out: &mut Vec<String>) {
    if tape.kind(0) != Some(Kind::Object) {
        return;
    }
    if let Some(choices) = tape.get(src, 0, "choices") {
        for c in tape.elements(choices) {
            for key in ["message", "delta"] {
                if let Some(m) = tape.get(src, c, key) {
                    item_calls(tape, src, m, out);
                }
            }
        }
    }
    let lists = [
        tape.get(src, 0, "output"),
        tape.get(src, 0, "content"),
        tape.path(src, 0, &["response", "output"]),
    ];
    for list in lists.into_iter().flatten() {
        for item in tape.elements(list) {
            out.extend(call_name(tape, src, item));
        }
    }
    for key in ["item", "content_block"] {
        if let Some(item) = tape.get(src, 0, key) {
            out.extend(call_name(tape, src, item));
        }
    }
}

/// Calls a chat message (or delta) holds: `tool_calls[]` and the legacy
/// `function_call`; and the message itself when it is a call item.
fn item_calls(tape: &Tape, src: &str, item: usize, out: &mut Vec<String>) {
    if let Some(calls) = tape.get(src, item, "tool_calls") {
        for call in tape.elements(calls) {
            // A streamed call names itself in its first chunk only.
            out.extend(named(tape, src, call));
        }
    }
    if let Some(call) = tape.get(src, item, "function_call") {
        out.extend(named(tape, src, call));
    }
    out.extend(call_name(tape, src, item));
}

/// The name of an item or block that is a call: `function_call`,
/// `custom_tool_call`, `tool_use`, `server_tool_use`, `mcp_tool_use`, and
/// the hosted tools' `*_call` items (`web_search_call` → `web_search` when
/// it has no name of its own).
fn call_name(tape: &Tape, src: &str, item: usize) -> Option<String> {
    let kind = string_at(tape, src, item, &["type"])?;
    let calls = matches!(
        kind.as_str(),
        "tool_use" | "server_tool_use" | "mcp_tool_use"
    ) || kind.ends_with("_call");
    if !calls {
        return None;
    }
    Some(
        string_at(tape, src, item, &["name"])
            .unwrap_or_else(|| kind.trim_end_matches("_call").to_string()),
    )
}

/// A declared tool's name: `function.name` (chat), `custom.name`, `name`
/// (Responses, Anthropic, legacy), else its `type` (hosted tools such as
/// `web_search`, `code_interpreter`); `""` when it has none of them.
fn declared_name(tape: &Tape, src: &str, tool: usize) -> String {
    named(tape, src, tool)
        .or_else(|| string_at(tape, src, tool, &["type"]))
        .unwrap_or_default()
}

/// `function.name`, `custom.name` or `name`.
fn named(tape: &Tape, src: &str, node: usize) -> Option<String> {
    string_at(tape, src, node, &["function", "name"])
        .or_else(|| string_at(tape, src, node, &["custom", "name"]))
        .or_else(|| string_at(tape, src, node, &["name"]))
}

fn string_at(tape: &Tape, src: &str, node: usize, keys: &[&str]) -> Option<String> {
    let at = tape.path(src, node, keys)?;
    (tape.kind(at) == Some(Kind::String))
        .then(|| tape.str(src, at).map(|s| s.into_owned()))
        .flatten()
}
