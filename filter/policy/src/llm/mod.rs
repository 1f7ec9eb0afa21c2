//! What an LLM API body says: which API it is, and which of its strings are
//! prompts, system prompts, answers, reasoning, tool names, tool arguments
//! or tool results.
//!
//! One walker covers OpenAI chat completions, the OpenAI Responses API and
//! Anthropic messages, because their shapes share the cues it reads: a
//! `role` on a message, a `type` on a content block or item, and a few key
//! names (`system`, `instructions`, `arguments`, `input`, `thinking`,
//! `reasoning_content`, `summary`). Any other JSON is walked the same way,
//! every string being text of scope `Other`. Nothing is exempt: ids,
//! signatures and `model` are judged like any text; only base64 that
//! provably is media is not (`inspect::media`).

pub mod sse;
pub mod usage;
pub mod walk;

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

#[cfg(test)]
mod tests;
