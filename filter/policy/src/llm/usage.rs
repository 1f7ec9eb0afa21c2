//! Token usage as the answer states it, for the record (`Usage`).
//!
//! Read from the JSON the inspector has already parsed (a whole answer, or
//! one event of a stream), so it costs a few key look-ups, not a parse:
//! - OpenAI chat: `usage.prompt_tokens`, `completion_tokens`, and their
//!   `prompt_tokens_details.cached_tokens`,
//!   `completion_tokens_details.reasoning_tokens`; streamed, in the last
//!   chunk (only when the request asked for `stream_options.include_usage`).
//! - Responses: `usage.input_tokens`, `output_tokens`,
//!   `input_tokens_details.cached_tokens`,
//!   `output_tokens_details.reasoning_tokens`; streamed, in the
//!   `response.completed` (or `incomplete`, `failed`) event's `response`.
//! - Anthropic: `usage.input_tokens` plus `cache_read_input_tokens` and
//!   `cache_creation_input_tokens` (OpenTelemetry counts all three as
//!   input), `output_tokens`; streamed, `message_start`'s `message.usage`,
//!   then `message_delta`'s cumulative `usage`: the latest value of each
//!   count wins, never a sum.
//!
//! A count the answer does not state stays `None`: missing is not zero.
//! Model names are judged like any text (a secret in `model` is masked on
//! the record too).
//!
//! OpenAI chat streams state usage only when the request asks for it
//! (`stream_options.include_usage`): `ask_for_usage` asks upstream for a
//! client that did not, and the stream masker then keeps the extra
//! usage-only chunk from that client.

use crate::json::{Edits, Kind, Tape};
use crate::mask::{Hits, Masker, Tokens};
use tracegate_proto::v1::Usage;

use super::Api;

/// What a request says that usage depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Asked {
    /// The top-level `model`, if a string.
    pub model: String,
    /// `stream` is present and not `false` or `null`.
    pub stream: bool,
    pub options: StreamOptions,
}

/// OpenAI chat's `stream_options`, as far as usage goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StreamOptions {
    #[default]
    Absent,
    /// `include_usage: true`: the client wants the usage chunk.
    IncludeUsage,
    /// Present without `include_usage: true`.
    Other,
}

impl Asked {
    /// From a request body's tape (top-level members only).
    pub fn read(tape: &Tape, src: &str) -> Asked {
        let model = tape
            .get(src, 0, "model")
            .and_then(|i| tape.str(src, i))
            .map(|m| m.into_owned())
            .unwrap_or_default();
        let stream = tape
            .get(src, 0, "stream")
            .is_some_and(|i| !matches!(tape.raw(src, i), "false" | "null"));
        let options = match tape.get(src, 0, "stream_options") {
            None => StreamOptions::Absent,
            Some(o) => match tape.get(src, o, "include_usage").map(|i| tape.raw(src, i)) {
                Some("true") => StreamOptions::IncludeUsage,
                _ => StreamOptions::Other,
            },
        };
        Asked {
            model,
            stream,
            options,
        }
    }
}

/// `body` (a JSON object, as it goes upstream) with
/// `stream_options.include_usage` set to true; `None` if it is not a JSON
/// object. Only what is added changes: the rest stays byte for byte.
pub fn ask_for_usage(body: &[u8], options: StreamOptions) -> Option<Vec<u8>> {
    const MEMBER: &str = r#""stream_options":{"include_usage":true}"#;
    let text = std::str::from_utf8(body).ok()?;
    if options == StreamOptions::Absent {
        // The common case needs no parse: the member goes first.
        let open = text.find(|c: char| !c.is_ascii_whitespace())?;
        if text.as_bytes()[open] != b'{' {
            return None;
        }
        let rest = text[open + 1..].trim_start();
        let comma = if rest.starts_with('}') { "" } else { "," };
        let mut out = String::with_capacity(text.len() + MEMBER.len() + 1);
        out.push_str(&text[..=open]);
        out.push_str(MEMBER);
        out.push_str(comma);
        out.push_str(&text[open + 1..]);
        return Some(out.into_bytes());
    }
    let mut tape = Tape::default();
    tape.parse(text).ok()?;
    let options = tape.get(text, 0, "stream_options")?;
    let node = *tape.node(options)?;
    let mut edits = Edits::default();
    match tape.get(text, options, "include_usage") {
        Some(v) => {
            let v = tape.node(v)?;
            edits.replace(v.start, v.end, "true".into());
        }
        None if node.kind == Kind::Object => {
            let empty = tape.members(options).next().is_none();
            let member = format!(r#""include_usage":true{}"#, if empty { "" } else { "," });
            edits.replace(node.start + 1, node.start + 1, member);
        }
        None => edits.replace(node.start, node.end, r#"{"include_usage":true}"#.into()),
    }
    Some(edits.apply(text).into_bytes())
}

/// A model name as the record may hold it: masked when a detector finds
/// something in it (fresh placeholders: the record's copy is not restored).
pub fn judged(m: Option<&Masker>, model: &str) -> String {
    m.and_then(|m| m.mask(model, &mut Tokens::default(), &mut Hits::default()))
        .unwrap_or_else(|| model.to_string())
}

/// Usage being gathered for one exchange.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageReader {
    api: Api,
    usage: Usage,
    /// The answer's model as last read, before judging (a stream repeats
    /// it in every event: judged once).
    raw_model: String,
}

impl UsageReader {
    /// Starts with what the request says (its API and model, judged).
    pub fn new(api: Api, request_model: &str) -> UsageReader {
        let (provider, operation) = match api {
            Api::OpenAiChat => ("openai", "chat"),
            Api::OpenAiResponses => ("openai", "responses"),
            Api::Anthropic => ("anthropic", "messages"),
            Api::Other => ("", ""),
        };
        UsageReader {
            api,
            usage: Usage {
                provider: provider.into(),
                operation: operation.into(),
                request_model: request_model.into(),
                ..Usage::default()
            },
            raw_model: String::new(),
        }
    }

    pub fn into_usage(self) -> Usage {
        self.usage
    }

    /// A whole answer (node 0 of `tape`); `m` judges the model name.
    pub fn answer(&mut self, tape: &Tape, src: &str, m: Option<&Masker>) {
        match self.api {
            Api::OpenAiChat => {
                self.openai(tape, src, 0, &CHAT, m);
            }
            Api::OpenAiResponses => {
                self.openai(tape, src, 0, &RESPONSES, m);
            }
            Api::Anthropic => self.anthropic(tape, src, 0, m),
            Api::Other => {}
        }
    }

    /// One event of a streamed answer. Returns whether it is OpenAI chat's
    /// usage-only chunk (no choices, usage set), which a client that did
    /// not ask for usage must not get.
    pub fn event(&mut self, tape: &Tape, src: &str, m: Option<&Masker>) -> bool {
        match self.api {
            Api::OpenAiChat => {
                let usage = self.openai(tape, src, 0, &CHAT, m).is_some();
                usage
                    && tape
                        .get(src, 0, "choices")
                        .is_some_and(|c| tape.elements(c).next().is_none())
            }
            Api::OpenAiResponses => {
                let kind = tape.get(src, 0, "type").and_then(|i| tape.str(src, i));
                if matches!(
                    kind.as_deref(),
                    Some("response.completed" | "response.incomplete" | "response.failed")
                ) {
                    if let Some(r) = tape.get(src, 0, "response") {
                        self.openai(tape, src, r, &RESPONSES, m);
                    }
                }
                false
            }
            Api::Anthropic => {
                let kind = tape.get(src, 0, "type").and_then(|i| tape.str(src, i));
                match kind.as_deref() {
                    Some("message_start") => {
                        if let Some(msg) = tape.get(src, 0, "message") {
                            self.anthropic(tape, src, msg, m);
                        }
                    }
                    Some("message_delta") => self.anthropic(tape, src, 0, m),
                    _ => {}
                }
                false
            }
            Api::Other => false,
        }
    }

    /// OpenAI chat and Responses: `model` and `usage` of object `at`;
    /// the usage object's node, if there is one.
    fn openai(
        &mut self,
        tape: &Tape,
        src: &str,
        at: usize,
        keys: &OpenAiKeys,
        m: Option<&Masker>,
    ) -> Option<usize> {
        self.model(tape, src, at, m);
        let u = usage_object(tape, src, at)?;
        let n = |path: &[&str]| tape.path(src, u, path).and_then(|i| tape.u64(src, i));
        let usage = &mut self.usage;
        set(&mut usage.input_tokens, n(&[keys.input]));
        set(&mut usage.output_tokens, n(&[keys.output]));
        set(
            &mut usage.cached_input_tokens,
            n(&[keys.input_details, "cached_tokens"]),
        );
        set(
            &mut usage.reasoning_tokens,
            n(&[keys.output_details, "reasoning_tokens"]),
        );
        Some(u)
    }

    /// Anthropic: `model` and `usage` of object `at` (a message, or a
    /// `message_delta` event, whose counts are cumulative).
    fn anthropic(&mut self, tape: &Tape, src: &str, at: usize, m: Option<&Masker>) {
        self.model(tape, src, at, m);
        let Some(u) = usage_object(tape, src, at) else {
            return;
        };
        let n = |key: &str| tape.get(src, u, key).and_then(|i| tape.u64(src, i));
        let (fresh, read, created) = (
            n("input_tokens"),
            n("cache_read_input_tokens"),
            n("cache_creation_input_tokens"),
        );
        let usage = &mut self.usage;
        // A message_delta may state only output_tokens: the input counts
        // of message_start stay.
        if fresh.is_some() || read.is_some() || created.is_some() {
            let total = [fresh, read, created]
                .iter()
                .flatten()
                .fold(0u64, |a, &b| a.saturating_add(b));
            usage.input_tokens = Some(total);
            set(&mut usage.cached_input_tokens, read);
        }
        set(&mut usage.output_tokens, n("output_tokens"));
    }

    fn model(&mut self, tape: &Tape, src: &str, at: usize, m: Option<&Masker>) {
        if let Some(model) = tape.get(src, at, "model").and_then(|i| tape.str(src, i)) {
            if !model.is_empty() && model != self.raw_model {
                self.usage.response_model = judged(m, &model);
                self.raw_model = model.into_owned();
            }
        }
    }
}

/// Where the two OpenAI APIs put their counts.
struct OpenAiKeys {
    input: &'static str,
    output: &'static str,
    input_details: &'static str,
    output_details: &'static str,
}

const CHAT: OpenAiKeys = OpenAiKeys {
    input: "prompt_tokens",
    output: "completion_tokens",
    input_details: "prompt_tokens_details",
    output_details: "completion_tokens_details",
};

const RESPONSES: OpenAiKeys = OpenAiKeys {
    input: "input_tokens",
    output: "output_tokens",
    input_details: "input_tokens_details",
    output_details: "output_tokens_details",
};

/// The `usage` object of object `at`, if it is one.
fn usage_object(tape: &Tape, src: &str, at: usize) -> Option<usize> {
    tape.get(src, at, "usage")
        .filter(|&u| tape.kind(u) == Some(Kind::Object))
}

/// The latest stated value wins; an unstated one changes nothing.
fn set(slot: &mut Option<u64>, value: Option<u64>) {
    if value.is_some() {
        *slot = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn answer(api: Api, body: &str) -> Usage {
        let mut tape = Tape::default();
        tape.parse(body).unwrap();
        let mut r = UsageReader::new(api, "asked");
        r.answer(&tape, body, None);
        r.into_usage()
    }

    fn stream(api: Api, events: &[&str]) -> (Usage, Vec<bool>) {
        let mut r = UsageReader::new(api, "asked");
        let mut usage_only = Vec::new();
        for e in events {
            let mut tape = Tape::default();
            tape.parse(e).unwrap();
            usage_only.push(r.event(&tape, e, None));
        }
        (r.into_usage(), usage_only)
    }

    fn asked(body: &str) -> Asked {
        let mut tape = Tape::default();
        tape.parse(body).unwrap();
        Asked::read(&tape, body)
    }

    #[test]
    fn usage_is_asked_for_without_touching_the_rest() {
        for (body, options, expect) in [
            (
                r#"{"model":"m","stream":true}"#,
                StreamOptions::Absent,
                r#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#,
            ),
            (
                " \n{ }",
                StreamOptions::Absent,
                " \n{\"stream_options\":{\"include_usage\":true} }",
            ),
            (
                r#"{"stream":true,"stream_options":{"include_usage":false}}"#,
                StreamOptions::Other,
                r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            ),
            (
                r#"{"stream_options":{"include_obfuscation":false}}"#,
                StreamOptions::Other,
                r#"{"stream_options":{"include_usage":true,"include_obfuscation":false}}"#,
            ),
            (
                r#"{"stream_options":{}}"#,
                StreamOptions::Other,
                r#"{"stream_options":{"include_usage":true}}"#,
            ),
            (
                r#"{"stream_options":null}"#,
                StreamOptions::Other,
                r#"{"stream_options":{"include_usage":true}}"#,
            ),
        ] {
            assert_eq!(asked(body).options, options, "{body}");
            let out = ask_for_usage(body.as_bytes(), options).unwrap();
            let out = String::from_utf8(out).unwrap();
            assert_eq!(out, expect);
            // What the upstream reads: a JSON object that asks for usage.
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["stream_options"]["include_usage"], true, "{out}");
            assert_eq!(asked(&out).options, StreamOptions::IncludeUsage);
        }
        assert_eq!(ask_for_usage(b"[1]", StreamOptions::Absent), None);
        let a =
            asked(r#"{"model":"gpt-\u0034o","stream":1,"stream_options":{"include_usage":true}}"#);
        assert_eq!(
            (a.model.as_str(), a.stream, a.options),
            ("gpt-4o", true, StreamOptions::IncludeUsage)
        );
        assert!(!asked(r#"{"stream":false}"#).stream);
        assert!(!asked(r#"{"stream":null}"#).stream);
    }

    #[test]
    fn openai_chat_whole_and_streamed() {
        let u = answer(
            Api::OpenAiChat,
            r#"{"id":"c","model":"gpt-4o-2024-08-06","choices":[{"message":{"content":"hi"}}],
               "usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,
                        "prompt_tokens_details":{"cached_tokens":3},
                        "completion_tokens_details":{"reasoning_tokens":4}}}"#,
        );
        assert_eq!(
            (u.provider.as_str(), u.operation.as_str()),
            ("openai", "chat")
        );
        assert_eq!(
            (u.request_model.as_str(), u.response_model.as_str()),
            ("asked", "gpt-4o-2024-08-06")
        );
        assert_eq!(
            (
                u.input_tokens,
                u.output_tokens,
                u.cached_input_tokens,
                u.reasoning_tokens
            ),
            (Some(19), Some(10), Some(3), Some(4))
        );
        let (u, usage_only) = stream(
            Api::OpenAiChat,
            &[
                r#"{"model":"m1","choices":[{"delta":{"content":"a"}}],"usage":null}"#,
                r#"{"model":"m1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#,
            ],
        );
        assert_eq!((u.input_tokens, u.output_tokens), (Some(5), Some(2)));
        assert_eq!(usage_only, [false, true]);
    }

    #[test]
    fn missing_usage_is_none_not_zero() {
        let (u, usage_only) = stream(
            Api::OpenAiChat,
            &[r#"{"model":"m","choices":[{"delta":{"content":"a"}}]}"#],
        );
        assert_eq!((u.input_tokens, u.output_tokens), (None, None));
        assert_eq!(u.response_model, "m");
        assert_eq!(usage_only, [false]);
        let u = answer(Api::Anthropic, r#"{"type":"message","content":[]}"#);
        assert_eq!(u.input_tokens, None);
    }

    #[test]
    fn responses_completed_incomplete_and_failed() {
        for kind in [
            "response.completed",
            "response.incomplete",
            "response.failed",
        ] {
            let done = format!(
                r#"{{"type":"{kind}","response":{{"model":"gpt-5","usage":{{"input_tokens":7,
                   "input_tokens_details":{{"cached_tokens":1}},"output_tokens":9,
                   "output_tokens_details":{{"reasoning_tokens":6}}}}}}}}"#
            );
            let (u, _) = stream(
                Api::OpenAiResponses,
                &[
                    r#"{"type":"response.output_text.delta","delta":"x"}"#,
                    &done,
                ],
            );
            assert_eq!(
                (
                    u.input_tokens,
                    u.output_tokens,
                    u.cached_input_tokens,
                    u.reasoning_tokens
                ),
                (Some(7), Some(9), Some(1), Some(6)),
                "{kind}"
            );
            assert_eq!(u.response_model, "gpt-5");
        }
        // A usage object in an event that is not the final one (e.g. inside
        // an output item) is not the response's.
        let (u, _) = stream(
            Api::OpenAiResponses,
            &[r#"{"type":"response.output_item.done","usage":{"input_tokens":99}}"#],
        );
        assert_eq!(u.input_tokens, None);
    }

    #[test]
    fn anthropic_keeps_the_latest_cumulative_counts_and_adds_cache_to_input() {
        let (u, _) = stream(
            Api::Anthropic,
            &[
                r#"{"type":"message_start","message":{"model":"claude-sonnet-4-5","usage":
                    {"input_tokens":10,"cache_read_input_tokens":100,"cache_creation_input_tokens":5,"output_tokens":1}}}"#,
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
                r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":42}}"#,
            ],
        );
        assert_eq!(u.input_tokens, Some(115), "10 + 100 read + 5 created");
        assert_eq!(u.cached_input_tokens, Some(100));
        assert_eq!(u.output_tokens, Some(42), "latest, not 1 + 15 + 42");
        assert_eq!(u.response_model, "claude-sonnet-4-5");
        let u = answer(
            Api::Anthropic,
            r#"{"type":"message","model":"claude-haiku","content":[{"type":"tool_use","input":{"usage":{"input_tokens":1}}}],
               "usage":{"input_tokens":3,"output_tokens":4}}"#,
        );
        assert_eq!(
            (u.input_tokens, u.output_tokens),
            (Some(3), Some(4)),
            "a tool's input named usage is not the message's"
        );
    }
}
