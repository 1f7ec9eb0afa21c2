//! Every part of a JSON body that could carry text, with what it is.
//!
//! `parts` lists every object key, string and number of a body read into a
//! `json::Tape`, in document order, with its scope (prompt, system prompt,
//! reasoning, tool name, …) read from the cues the three APIs share: a
//! `role` on a message (any case), a `type` on a content block or item, and
//! a few key names. Nothing is exempt: ids, signatures, `model`, URLs and
//! unknown fields are parts like any other. Strings that may be base64 media
//! (a `data:…;base64,` URL, Anthropic's `{"type": "base64", "data": …}`,
//! OpenAI's `input_audio.data`) are marked, so the judge can decode them and
//! skip only what provably is an image, audio or a PDF.

use crate::json::{Kind, Tape};

use super::{Direction, Scope};

/// One key, string or number of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub node: usize,
    pub scope: Scope,
    /// The string may be base64 media.
    pub media: bool,
    /// The value of a `role` or `type`: the body's structure, judged by the
    /// detectors but not part of the conversation rules read.
    pub structural: bool,
}

fn role_scope(role: &str) -> Scope {
    const ROLES: [(&str, Scope); 8] = [
        ("system", Scope::System),
        ("developer", Scope::System),
        ("user", Scope::Prompt),
        ("assistant", Scope::Assistant),
        ("model", Scope::Assistant),
        ("tool", Scope::ToolResult),
        ("function", Scope::ToolResult),
        ("ipython", Scope::ToolResult),
    ];
    // Any case, without a lower-cased copy per message.
    ROLES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(role))
        .map_or(Scope::Other, |&(_, scope)| scope)
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

/// Every key, string and number of the body at node 0, in document order.
pub fn parts(tape: &Tape, src: &str, direction: Direction, out: &mut Vec<Part>) {
    out.clear();
    let base = match direction {
        Direction::Request => Scope::Other,
        Direction::Response => Scope::Assistant,
    };
    let mut w = Walker { tape, src, out };
    match tape.kind(0) {
        Some(Kind::Object) => {
            for (k, v) in tape.members(0) {
                w.push(k, base, false);
                let key = tape.str(src, k);
                let scope = match key.as_deref() {
                    Some("model") => Scope::Model,
                    Some("system" | "instructions") => Scope::System,
                    Some("input" | "prompt") if direction == Direction::Request => Scope::Prompt,
                    _ => base,
                };
                w.visit(key.as_deref(), v, scope, false);
            }
        }
        Some(_) => w.visit(None, 0, base, false),
        None => {}
    }
}

struct Walker<'a> {
    tape: &'a Tape,
    src: &'a str,
    out: &'a mut Vec<Part>,
}

impl Walker<'_> {
    fn push(&mut self, node: usize, scope: Scope, media: bool) {
        self.out.push(Part {
            node,
            scope,
            media,
            structural: false,
        });
    }

    fn visit(&mut self, key: Option<&str>, node: usize, scope: Scope, media_field: bool) {
        let (tape, src) = (self.tape, self.src);
        match tape.kind(node) {
            Some(Kind::String) => {
                let data_url = tape.node(node).is_some_and(|n| {
                    src.get(n.start + 1..n.end.min(n.start + 80))
                        .is_some_and(|s| s.starts_with("data:") && s.contains(";base64,"))
                });
                self.push(node, scope, media_field || data_url);
            }
            Some(Kind::Number) => self.push(node, scope, false),
            Some(Kind::Array) => {
                for item in tape.elements(node) {
                    self.visit(key, item, scope, media_field);
                }
            }
            Some(Kind::Object) => {
                let mut scope = scope;
                let text = |k: &str| tape.get(src, node, k).and_then(|i| tape.str(src, i));
                if let Some(role) = text("role") {
                    let s = role_scope(&role);
                    if s != Scope::Other {
                        scope = s;
                    }
                }
                let kind = text("type");
                if let Some(s) = kind.as_deref().and_then(type_scope) {
                    scope = s;
                }
                // Anthropic `source: {"type": "base64", "media_type", "data"}`
                // and OpenAI `input_audio: {"data", "format"}`.
                let base64_holder = kind.as_deref() == Some("base64") || key == Some("input_audio");
                for (k, child) in tape.members(node) {
                    self.push(k, scope, false);
                    let name = tape.str(src, k);
                    let name = name.as_deref();
                    let child_scope = match name {
                        Some("name")
                            if matches!(scope, Scope::ToolArguments) || key == Some("function") =>
                        {
                            Scope::ToolName
                        }
                        Some("arguments" | "partial_json") => Scope::ToolArguments,
                        Some("input") if scope == Scope::ToolArguments => Scope::ToolArguments,
                        Some("reasoning_content" | "reasoning" | "thinking" | "summary") => {
                            Scope::Reasoning
                        }
                        Some("tool_calls") => Scope::ToolArguments,
                        Some("output" | "content") if scope == Scope::ToolResult => {
                            Scope::ToolResult
                        }
                        _ => scope,
                    };
                    let media = base64_holder && name == Some("data");
                    let before = self.out.len();
                    self.visit(name, child, child_scope, media);
                    if matches!(name, Some("role" | "type")) && self.out.len() == before + 1 {
                        if let Some(p) = self.out.last_mut() {
                            p.structural = true;
                        }
                    }
                }
            }
            _ => {}
        }
    }
}
