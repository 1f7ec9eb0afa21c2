//! What an LLM API body says: which API it is, and which of its strings are
//! prompts, system prompts, answers, reasoning, tool names, tool arguments
//! or tool results.
//!
//! One walker covers OpenAI chat completions, the OpenAI Responses API and
//! Anthropic messages, because their shapes share the cues it reads: a
//! `role` on a message, a `type` on a content block or item, and a few key
//! names (`system`, `instructions`, `arguments`, `input`, `thinking`,
//! `reasoning_content`, `summary`). Any other JSON is walked the same way,
//! every string being text of scope `Other`. Identifiers, signatures,
//! encrypted reasoning and base64 media are never text.

pub mod sse;

use serde_json::Value;

/// The API a request is for, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Api {
    OpenAiChat,
    OpenAiResponses,
    Anthropic,
    #[default]
    Other,
}

impl Api {
    pub fn from_path(path: &str) -> Api {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Api::OpenAiChat
        } else if path.ends_with("/responses") {
            Api::OpenAiResponses
        } else if path.ends_with("/messages") {
            Api::Anthropic
        } else {
            Api::Other
        }
    }
}

/// What a piece of text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    System,
    Prompt,
    Assistant,
    Reasoning,
    ToolName,
    ToolArguments,
    ToolResult,
    Model,
    Other,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::System => "system",
            Scope::Prompt => "prompt",
            Scope::Assistant => "assistant",
            Scope::Reasoning => "reasoning",
            Scope::ToolName => "tool_name",
            Scope::ToolArguments => "tool_arguments",
            Scope::ToolResult => "tool_result",
            Scope::Model => "model",
            Scope::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// Keys whose string values are identifiers or opaque data, never text.
fn opaque_key(key: &str) -> bool {
    matches!(
        key,
        "id" | "type"
            | "role"
            | "object"
            | "signature"
            | "encrypted_content"
            | "finish_reason"
            | "stop_reason"
            | "stop_sequence"
            | "media_type"
            | "status"
            | "format"
            | "detail"
            | "service_tier"
            | "system_fingerprint"
    ) || key.ends_with("_id")
}

fn role_scope(role: &str) -> Scope {
    match role {
        "system" | "developer" => Scope::System,
        "user" => Scope::Prompt,
        "assistant" => Scope::Assistant,
        "tool" | "function" => Scope::ToolResult,
        _ => Scope::Other,
    }
}

/// The scope an object's `type` gives its contents, if any.
fn type_scope(kind: &str) -> Option<Scope> {
    Some(match kind {
        "thinking" | "redacted_thinking" | "reasoning" | "reasoning_text" | "summary_text" => {
            Scope::Reasoning
        }
        "tool_use" | "server_tool_use" | "function_call" | "custom_tool_call" => {
            Scope::ToolArguments
        }
        "tool_result" | "function_call_output" | "custom_tool_call_output" => Scope::ToolResult,
        "output_text" => Scope::Assistant,
        "input_text" => Scope::Prompt,
        _ => return None,
    })
}

/// Calls `f` on every text string of a JSON body, with its scope; `f` may
/// change the string in place.
pub fn walk(body: &mut Value, direction: Direction, f: &mut dyn FnMut(Scope, &mut String)) {
    let base = match direction {
        Direction::Request => Scope::Other,
        Direction::Response => Scope::Assistant,
    };
    match body {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let scope = match key.as_str() {
                    "model" => Scope::Model,
                    "system" | "instructions" => Scope::System,
                    "input" | "prompt" if direction == Direction::Request => Scope::Prompt,
                    _ => base,
                };
                visit(Some(key), v, scope, f);
            }
        }
        other => visit(None, other, base, f),
    }
}

fn visit(key: Option<&str>, v: &mut Value, scope: Scope, f: &mut dyn FnMut(Scope, &mut String)) {
    match v {
        Value::String(s) => {
            if key.is_some_and(opaque_key) || s.starts_with("data:") {
                return;
            }
            f(scope, s);
        }
        Value::Array(items) => {
            for item in items {
                visit(key, item, scope, f);
            }
        }
        Value::Object(map) => {
            let mut scope = scope;
            if let Some(role) = map.get("role").and_then(Value::as_str) {
                let s = role_scope(role);
                if s != Scope::Other {
                    scope = s;
                }
            }
            let kind = map.get("type").and_then(Value::as_str).map(str::to_string);
            if let Some(s) = kind.as_deref().and_then(type_scope) {
                scope = s;
            }
            // Base64 media: {"type": "base64", "data": "..."} and image_url.
            let media = matches!(
                kind.as_deref(),
                Some(
                    "base64"
                        | "image"
                        | "input_image"
                        | "image_url"
                        | "input_audio"
                        | "file"
                        | "input_file"
                )
            );
            for (k, child) in map.iter_mut() {
                if media
                    && matches!(
                        k.as_str(),
                        "data" | "file_data" | "image_url" | "url" | "source"
                    )
                {
                    continue;
                }
                let child_scope = match k.as_str() {
                    "name" if matches!(scope, Scope::ToolArguments) || key == Some("function") => {
                        Scope::ToolName
                    }
                    "function" => scope_for_function(scope),
                    "arguments" | "partial_json" => Scope::ToolArguments,
                    "input" if scope == Scope::ToolArguments => Scope::ToolArguments,
                    "reasoning_content" | "reasoning" | "thinking" | "summary" => Scope::Reasoning,
                    "tool_calls" => Scope::ToolArguments,
                    "output" if scope == Scope::ToolResult => Scope::ToolResult,
                    "content" if scope == Scope::ToolResult => Scope::ToolResult,
                    _ => scope,
                };
                visit(Some(k), child, child_scope, f);
            }
        }
        _ => {}
    }
}

/// Inside `function` of a tool call, `name` is a tool name and `arguments`
/// tool arguments; in a tool definition, the function's description stays
/// with its surrounding scope.
fn scope_for_function(scope: Scope) -> Scope {
    scope
}

#[cfg(test)]
mod tests;
