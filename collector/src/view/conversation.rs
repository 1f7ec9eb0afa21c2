//! A session's records read back as the conversation they carried: the
//! messages of each request (OpenAI chat `messages`, Responses `input` and
//! `instructions`, Anthropic `system` and `messages`) and the answer, whole
//! or streamed (server-sent events reassembled into text with the filter's
//! own SSE reader), with the exchange's metadata. `tracegate replay` prints
//! it; the console renders it. Pure: records in, values out.
//!
//! Bodies are the masked ones the filter recorded; the placeholders it wrote
//! (`[EMAIL]`, `[EMAIL_1]`, `[CARD_NUMBER:…1111]`, `[EMAIL:hmac:9f86…]`,
//! `[credential]`) are found again and kept as spans (`Text::masked`), so
//! every view can mark them. A body that is none of the three APIs, not
//! JSON, or not UTF-8 is kept as raw text: reading never fails.

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use tracegate_policy::llm::sse::reader::{Event, Reader};
use tracegate_proto::v1::{ApprovalEvent, Body, Record};

use super::{caller, time};
use crate::ledger::caller::Caller;

/// Raw text kept for a body that could not be read as messages; the whole
/// body stays in the record's JSON.
const RAW_CHARS: usize = 64 * 1024;

/// The SSE reader's limit per event: bodies are already stored, so only a
/// sanity bound.
const MAX_EVENT: usize = 16 << 20;

/// Text with the byte ranges of the mask placeholders in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Text {
    pub text: String,
    /// Byte ranges `[start, end)` of placeholders, in order, disjoint.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<[usize; 2]>,
}

impl Text {
    pub fn new(text: impl Into<String>) -> Text {
        let text = text.into();
        let masked = masked_spans(&text);
        Text { text, masked }
    }

    /// The text cut in pieces, each masked (a placeholder) or not.
    pub fn segments(&self) -> Vec<(&str, bool)> {
        let mut out = Vec::new();
        let mut at = 0;
        for &[s, e] in &self.masked {
            if s > at {
                out.push((&self.text[at..s], false));
            }
            out.push((&self.text[s..e], true));
            at = e;
        }
        if at < self.text.len() {
            out.push((&self.text[at..], false));
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }
}

/// Where the filter's placeholders are in `text`: `[LABEL]`, `[LABEL_N]`,
/// `[LABEL:…kept]`, `[LABEL:hmac:HEX]` (LABEL: an upper-case detector
/// label, A–Z, 0–9, `_`, `-`, at least two characters, starting with a
/// letter), and `[credential]` (header values kept back).
pub fn masked_spans(text: &str) -> Vec<[usize; 2]> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(off) = text[i..].find('[') {
        let start = i + off;
        match placeholder_len(&text[start..]) {
            Some(len) => {
                out.push([start, start + len]);
                i = start + len;
            }
            None => i = start + 1,
        }
        if i >= bytes.len() {
            break;
        }
    }
    out
}

/// The length of the placeholder `s` starts with, if it starts with one.
fn placeholder_len(s: &str) -> Option<usize> {
    if s.starts_with("[credential]") {
        return Some("[credential]".len());
    }
    let rest = s.strip_prefix('[')?;
    let label_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
        .count();
    if label_len < 2 || !rest.as_bytes()[0].is_ascii_uppercase() {
        return None;
    }
    let after = &rest[label_len..];
    if after.starts_with(']') {
        return Some(1 + label_len + 1);
    }
    let tail = after.strip_prefix(':')?;
    let close = tail.find(']')?;
    let inner = &tail[..close];
    let ok = if let Some(hex) = inner.strip_prefix("hmac:") {
        !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())
    } else if let Some(kept) = inner.strip_prefix('…') {
        // `partial` keeps a few trailing characters; `REDACTED:…` style
        // marks keep none.
        kept.chars().count() <= 64 && !kept.contains('[')
    } else {
        false
    };
    ok.then_some(1 + label_len + 1 + close + 1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    fn of(role: &str) -> Role {
        match role {
            "system" | "developer" => Role::System,
            "assistant" | "model" => Role::Assistant,
            "tool" | "function" => Role::Tool,
            _ => Role::User,
        }
    }
}

/// One piece of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Part {
    Text {
        text: Text,
    },
    /// Reasoning or thinking the model showed.
    Reasoning {
        text: Text,
    },
    ToolCall {
        id: String,
        name: Text,
        arguments: Text,
    },
    ToolResult {
        id: String,
        content: Text,
    },
    /// Content not shown as text (an image, a file, a redacted thinking
    /// block): its type.
    Other {
        what: String,
    },
    /// An error the answer carried (an error event of a stream).
    Error {
        text: Text,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

/// Which LLM API a body is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// OpenAI chat completions.
    Chat,
    /// OpenAI Responses.
    Responses,
    /// Anthropic Messages.
    Messages,
}

/// A request or an answer, read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Side {
    pub messages: Vec<Message>,
    /// The answer came as server-sent events (reassembled here).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub streamed: bool,
    /// The body as text, when it could not be read as messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<Text>,
    /// The body was cut when recorded (the filter's record limit).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// No body.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub empty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub detector: String,
    pub count: u32,
    /// `request` or `response`.
    pub side: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub id: String,
    pub action: String,
    pub scope: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalInfo {
    pub id: String,
    pub mode: String,
    pub state: String,
    pub outcome: String,
    pub risk: u32,
    pub threshold: u32,
    /// Who decided, verified: display names.
    pub approvers: Vec<String>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventInfo {
    pub time: String,
    pub event: String,
    pub actor: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageInfo {
    pub provider: String,
    pub operation: String,
    pub request_model: String,
    pub response_model: String,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_input_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exchange {
    pub record_id: String,
    pub caller: String,
    pub time: String,
    pub start_unix_nanos: i64,
    pub method: String,
    pub path: String,
    pub status: u32,
    pub duration_ms: f64,
    /// Until the upstream's response headers, when they came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_byte_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub risk: u32,
    pub findings: Vec<Finding>,
    pub rules: Vec<Rule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalInfo>,
    pub approval_events: Vec<EventInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<Api>,
    /// Leading request messages left out because the caller's previous
    /// exchange sent them already (chat APIs resend the history).
    pub earlier_messages: usize,
    pub request: Side,
    pub response: Side,
}

/// A session, caller by caller as `replay` keeps them apart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conversation {
    pub session: String,
    pub exchanges: Vec<Exchange>,
}

/// The conversation of these records (as `fold_written_ahead` leaves them,
/// in order); `events` are the stored events of the approvals they name.
pub fn conversation(session: &str, records: &[Record], events: &[ApprovalEvent]) -> Conversation {
    let mut previous: BTreeMap<Caller, Vec<Message>> = BTreeMap::new();
    let mut exchanges = Vec::with_capacity(records.len());
    for r in records {
        let mut x = exchange(r, events);
        let sent = previous.entry(Caller::of(r)).or_default();
        let repeated = sent.len();
        let full = std::mem::take(&mut x.request.messages);
        if repeated > 0 && full.len() >= repeated && full[..repeated] == sent[..] {
            x.earlier_messages = repeated;
            x.request.messages = full[repeated..].to_vec();
        } else {
            x.request.messages = full.clone();
        }
        *sent = full;
        exchanges.push(x);
    }
    Conversation {
        session: session.to_string(),
        exchanges,
    }
}

/// One record read: metadata, request and answer.
pub fn exchange(r: &Record, events: &[ApprovalEvent]) -> Exchange {
    let inspection = r.inspection.as_ref();
    let mut findings = Vec::new();
    if let Some(i) = inspection {
        for (side, map) in [
            ("request", &i.request_findings),
            ("response", &i.response_findings),
        ] {
            let mut v: Vec<_> = map.iter().collect();
            v.sort();
            findings.extend(v.into_iter().map(|(d, n)| Finding {
                detector: d.clone(),
                count: *n,
                side,
            }));
        }
    }
    let approval = r.approval.as_ref().map(|a| ApprovalInfo {
        id: a.id.clone(),
        mode: a.mode.clone(),
        state: a.state.clone(),
        outcome: a.outcome.clone(),
        risk: a.risk,
        threshold: a.threshold,
        approvers: if a.approvers.is_empty() {
            a.approver
                .split(" and ")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        } else {
            a.approvers.iter().map(|p| p.display.clone()).collect()
        },
        reason: a.reason.clone(),
    });
    let approval_events = match &r.approval {
        Some(a) => events
            .iter()
            .filter(|e| e.approval_id == a.id)
            .map(|e| EventInfo {
                time: time(e.unix_nanos),
                event: e.event.clone(),
                actor: e
                    .approver
                    .as_ref()
                    .map(|p| p.display.clone())
                    .unwrap_or_else(|| e.actor.clone()),
                reason: e.reason.clone(),
            })
            .collect(),
        None => Vec::new(),
    };
    let usage = r.usage.as_ref().map(|u| UsageInfo {
        provider: u.provider.clone(),
        operation: u.operation.clone(),
        request_model: u.request_model.clone(),
        response_model: u.response_model.clone(),
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cached_input_tokens: u.cached_input_tokens,
        reasoning_tokens: u.reasoning_tokens,
    });
    let api = api_of(r);
    let request = read_request(r.request_body.as_ref(), api);
    let response = read_response(r.response_body.as_ref(), api);
    let api = api.or_else(|| guess_api(r.request_body.as_ref()));
    Exchange {
        record_id: r.record_id.clone(),
        caller: caller::key(&Caller::of(r)),
        time: time(r.request_start_unix_nanos),
        start_unix_nanos: r.request_start_unix_nanos,
        method: r.method.clone(),
        path: r.path.clone(),
        status: r.status,
        duration_ms: r.duration_micros as f64 / 1000.0,
        first_byte_ms: (r.response_start_unix_nanos > 0
            && r.response_start_unix_nanos >= r.request_start_unix_nanos)
            .then(|| (r.response_start_unix_nanos - r.request_start_unix_nanos) as f64 / 1e6),
        verdict: inspection
            .map(|i| i.verdict.clone())
            .filter(|v| !v.is_empty()),
        reason: inspection
            .map(|i| {
                if i.blocked_rule.is_empty() {
                    i.reason.clone()
                } else {
                    format!("{} ({})", i.blocked_rule, i.reason)
                }
            })
            .unwrap_or_default(),
        risk: inspection.map_or(0, |i| i.risk),
        findings,
        rules: inspection
            .map(|i| {
                i.rules
                    .iter()
                    .map(|m| Rule {
                        id: m.id.clone(),
                        action: m.action.clone(),
                        scope: m.scope.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        approval,
        approval_events,
        usage,
        api,
        earlier_messages: 0,
        request,
        response,
    }
}

/// The API, as the record's usage or the path says.
fn api_of(r: &Record) -> Option<Api> {
    match r.usage.as_ref().map(|u| u.operation.as_str()) {
        Some("chat") => return Some(Api::Chat),
        Some("responses") => return Some(Api::Responses),
        Some("messages") => return Some(Api::Messages),
        _ => {}
    }
    let path = r.path.split('?').next().unwrap_or("");
    if path.ends_with("/chat/completions") {
        Some(Api::Chat)
    } else if path.ends_with("/responses") {
        Some(Api::Responses)
    } else if path.ends_with("/messages") {
        Some(Api::Messages)
    } else {
        None
    }
}

/// The API a request body's shape says.
fn guess_api(body: Option<&Body>) -> Option<Api> {
    let v: Value = serde_json::from_slice(&body?.data).ok()?;
    shape_of_request(&v)
}

fn shape_of_request(v: &Value) -> Option<Api> {
    if v.get("input").is_some() || v.get("instructions").is_some() {
        return Some(Api::Responses);
    }
    let messages = v.get("messages")?.as_array()?;
    let anthropic_blocks = messages.iter().any(|m| {
        m.get("content")
            .and_then(Value::as_array)
            .is_some_and(|blocks| {
                blocks.iter().any(|b| {
                    matches!(
                        b.get("type").and_then(Value::as_str),
                        Some("tool_use" | "tool_result" | "thinking")
                    )
                })
            })
    });
    if v.get("system").is_some() || anthropic_blocks {
        Some(Api::Messages)
    } else {
        Some(Api::Chat)
    }
}

fn side_of(body: Option<&Body>) -> Result<(Side, &[u8]), Side> {
    match body.filter(|b| b.size > 0 || !b.data.is_empty()) {
        None => Err(Side {
            empty: true,
            ..Side::default()
        }),
        Some(b) => Ok((
            Side {
                truncated: b.truncated,
                ..Side::default()
            },
            &b.data,
        )),
    }
}

fn raw(side: &mut Side, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let cut: String = text.chars().take(RAW_CHARS).collect();
    side.raw = Some(Text::new(cut));
}

fn read_request(body: Option<&Body>, api: Option<Api>) -> Side {
    let (mut side, data) = match side_of(body) {
        Ok(s) => s,
        Err(empty) => return empty,
    };
    let parsed = serde_json::from_slice::<Value>(data)
        .ok()
        .and_then(|v| {
            let api = api.or_else(|| shape_of_request(&v))?;
            request_messages(&v, api)
        })
        .filter(|m| !m.is_empty());
    match parsed {
        Some(messages) => side.messages = messages,
        None => raw(&mut side, data),
    }
    side
}

fn read_response(body: Option<&Body>, api: Option<Api>) -> Side {
    let (mut side, data) = match side_of(body) {
        Ok(s) => s,
        Err(empty) => return empty,
    };
    let content_type = body.map(|b| b.content_type.as_str()).unwrap_or("");
    let looks_sse = content_type.starts_with("text/event-stream")
        || data.starts_with(b"data:")
        || data.starts_with(b"event:");
    let parsed = if looks_sse {
        side.streamed = true;
        stream_messages(data, api)
    } else {
        serde_json::from_slice::<Value>(data)
            .ok()
            .and_then(|v| answer_messages(&v, api))
    };
    match parsed.filter(|m| !m.is_empty()) {
        Some(messages) => side.messages = messages,
        None => raw(&mut side, data),
    }
    side
}

/// Appends `part` to the last message if it has `role`, else starts one.
fn push(messages: &mut Vec<Message>, role: Role, part: Part) {
    match messages.last_mut() {
        Some(m) if m.role == role => m.parts.push(part),
        _ => messages.push(Message {
            role,
            parts: vec![part],
        }),
    }
}

fn str_of(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// A JSON value shown as text: a string as it is, anything else compact.
fn as_text(v: &Value) -> Text {
    match v {
        Value::String(s) => Text::new(s.clone()),
        Value::Null => Text::default(),
        other => Text::new(other.to_string()),
    }
}

fn request_messages(v: &Value, api: Api) -> Option<Vec<Message>> {
    let mut out = Vec::new();
    match api {
        Api::Chat => {
            for m in v.get("messages")?.as_array()? {
                chat_message(m, &mut out);
            }
        }
        Api::Responses => {
            if let Some(s) = v.get("instructions").and_then(Value::as_str) {
                push(&mut out, Role::System, Part::Text { text: Text::new(s) });
            }
            match v.get("input")? {
                Value::String(s) => push(&mut out, Role::User, Part::Text { text: Text::new(s) }),
                Value::Array(items) => {
                    for item in items {
                        responses_item(item, Role::User, &mut out);
                    }
                }
                _ => return None,
            }
        }
        Api::Messages => {
            match v.get("system") {
                Some(Value::String(s)) => {
                    push(&mut out, Role::System, Part::Text { text: Text::new(s) })
                }
                Some(Value::Array(blocks)) => {
                    for b in blocks {
                        anthropic_block(b, Role::System, &mut out);
                    }
                }
                _ => {}
            }
            for m in v.get("messages")?.as_array()? {
                let role = Role::of(&str_of(m, "role"));
                match m.get("content") {
                    Some(Value::String(s)) => {
                        push(&mut out, role, Part::Text { text: Text::new(s) })
                    }
                    Some(Value::Array(blocks)) => {
                        for b in blocks {
                            anthropic_block(b, role, &mut out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Some(out)
}

/// One OpenAI chat message (in a request, or an answer's `message`).
fn chat_message(m: &Value, out: &mut Vec<Message>) {
    let role = Role::of(&str_of(m, "role"));
    let mut parts = Vec::new();
    for key in ["reasoning_content", "reasoning"] {
        if let Some(s) = m.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()) {
            parts.push(Part::Reasoning { text: Text::new(s) });
        }
    }
    let content: Vec<Text> = match m.get("content") {
        Some(Value::String(s)) => vec![Text::new(s)],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|c| match c.get("type").and_then(Value::as_str) {
                Some("text" | "input_text" | "output_text") => Some(as_text(c.get("text")?)),
                Some(other) => {
                    parts.push(Part::Other { what: other.into() });
                    None
                }
                None => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    for text in content.into_iter().filter(|t| !t.is_empty()) {
        if role == Role::Tool {
            parts.push(Part::ToolResult {
                id: str_of(m, "tool_call_id"),
                content: text,
            });
        } else {
            parts.push(Part::Text { text });
        }
    }
    if let Some(s) = m.get("refusal").and_then(Value::as_str) {
        parts.push(Part::Text { text: Text::new(s) });
    }
    for call in m
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = call.get("function").unwrap_or(&Value::Null);
        parts.push(Part::ToolCall {
            id: str_of(call, "id"),
            name: Text::new(str_of(f, "name")),
            arguments: f.get("arguments").map(as_text).unwrap_or_default(),
        });
    }
    out.push(Message { role, parts });
}

/// One item of a Responses `input` or `output`; `default` is the role of
/// an item without one.
fn responses_item(item: &Value, default: Role, out: &mut Vec<Message>) {
    let kind = item.get("type").and_then(Value::as_str);
    match kind {
        Some("function_call" | "custom_tool_call") => push(
            out,
            Role::Assistant,
            Part::ToolCall {
                id: str_of(item, "call_id"),
                name: Text::new(str_of(item, "name")),
                arguments: item
                    .get("arguments")
                    .or_else(|| item.get("input"))
                    .map(as_text)
                    .unwrap_or_default(),
            },
        ),
        Some("function_call_output" | "custom_tool_call_output") => push(
            out,
            Role::Tool,
            Part::ToolResult {
                id: str_of(item, "call_id"),
                content: item.get("output").map(as_text).unwrap_or_default(),
            },
        ),
        Some("reasoning") => {
            let mut texts = Vec::new();
            for key in ["summary", "content"] {
                for s in item
                    .get(key)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(t) = s.get("text").and_then(Value::as_str) {
                        texts.push(t.to_string());
                    }
                }
            }
            if !texts.is_empty() {
                let text = Text::new(texts.join("\n"));
                push(out, Role::Assistant, Part::Reasoning { text });
            }
        }
        None | Some("message") => {
            let role = item
                .get("role")
                .and_then(Value::as_str)
                .map_or(default, Role::of);
            match item.get("content") {
                Some(Value::String(s)) => push(out, role, Part::Text { text: Text::new(s) }),
                Some(Value::Array(parts)) => {
                    for p in parts {
                        match p.get("type").and_then(Value::as_str) {
                            Some("input_text" | "output_text" | "text" | "summary_text") => {
                                let text = p.get("text").map(as_text).unwrap_or_default();
                                push(out, role, Part::Text { text });
                            }
                            Some("refusal") => {
                                let text = p.get("refusal").map(as_text).unwrap_or_default();
                                push(out, role, Part::Text { text });
                            }
                            Some(other) => push(out, role, Part::Other { what: other.into() }),
                            None => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Some(other) => push(out, Role::Assistant, Part::Other { what: other.into() }),
    }
}

/// One Anthropic content block of a message of `role`; tool results are
/// shown as the tool's.
fn anthropic_block(b: &Value, role: Role, out: &mut Vec<Message>) {
    match b.get("type").and_then(Value::as_str) {
        Some("text") => {
            let text = b.get("text").map(as_text).unwrap_or_default();
            push(out, role, Part::Text { text });
        }
        Some("thinking") => {
            let text = b.get("thinking").map(as_text).unwrap_or_default();
            push(out, role, Part::Reasoning { text });
        }
        Some("tool_use" | "server_tool_use") => push(
            out,
            role,
            Part::ToolCall {
                id: str_of(b, "id"),
                name: Text::new(str_of(b, "name")),
                arguments: b.get("input").map(as_text).unwrap_or_default(),
            },
        ),
        Some("tool_result") => {
            let content = match b.get("content") {
                Some(Value::Array(blocks)) => {
                    let texts: Vec<String> = blocks
                        .iter()
                        .map(|c| match c.get("text").and_then(Value::as_str) {
                            Some(t) => t.to_string(),
                            None => format!("({})", str_of(c, "type")),
                        })
                        .collect();
                    Text::new(texts.join("\n"))
                }
                Some(v) => as_text(v),
                None => Text::default(),
            };
            push(
                out,
                Role::Tool,
                Part::ToolResult {
                    id: str_of(b, "tool_use_id"),
                    content,
                },
            );
        }
        Some(other) => push(out, role, Part::Other { what: other.into() }),
        None => {}
    }
}

/// A whole (not streamed) answer.
fn answer_messages(v: &Value, api: Option<Api>) -> Option<Vec<Message>> {
    let api = api.or_else(|| {
        match (
            v.get("object").and_then(Value::as_str),
            v.get("type").and_then(Value::as_str),
        ) {
            (Some("chat.completion"), _) => Some(Api::Chat),
            (Some("response"), _) => Some(Api::Responses),
            (_, Some("message")) => Some(Api::Messages),
            _ => None,
        }
    })?;
    let mut out = Vec::new();
    match api {
        Api::Chat => {
            for choice in v.get("choices")?.as_array()? {
                chat_message(choice.get("message")?, &mut out);
            }
        }
        Api::Responses => {
            for item in v.get("output")?.as_array()? {
                responses_item(item, Role::Assistant, &mut out);
            }
        }
        Api::Messages => {
            for b in v.get("content")?.as_array()? {
                anthropic_block(b, Role::Assistant, &mut out);
            }
        }
    }
    Some(out)
}

/// What one streamed output holds, as its events add to it.
#[derive(Debug, Default)]
struct Streamed {
    kind: String,
    id: String,
    name: String,
    text: String,
    reasoning: String,
    arguments: String,
    /// The whole item, as a `done` event gave it (used when no delta did).
    whole: Option<Value>,
}

/// A streamed answer reassembled: the events read with the filter's SSE
/// reader, their deltas joined per output.
fn stream_messages(data: &[u8], api: Option<Api>) -> Option<Vec<Message>> {
    let mut reader = Reader::default();
    let mut events: Vec<Event> = Vec::new();
    reader.push(data, MAX_EVENT, &mut events).ok()?;
    reader.finish(&mut events).ok()?;
    let values: Vec<(Option<String>, Value)> = events
        .into_iter()
        .filter_map(|e| {
            let d = e.data?;
            if d.trim() == "[DONE]" {
                return None;
            }
            Some((e.event, serde_json::from_str(&d).ok()?))
        })
        .collect();
    if values.is_empty() {
        return None;
    }
    let api = api.or_else(|| {
        values.iter().find_map(|(_, v)| {
            if v.get("choices").is_some() {
                Some(Api::Chat)
            } else {
                let t = v.get("type").and_then(Value::as_str)?;
                if t.starts_with("response.") {
                    Some(Api::Responses)
                } else if t.starts_with("message_") || t.starts_with("content_block") {
                    Some(Api::Messages)
                } else {
                    None
                }
            }
        })
    })?;
    let mut outputs: BTreeMap<(u64, u64), Streamed> = BTreeMap::new();
    let mut errors: Vec<Text> = Vec::new();
    let index = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0);
    for (event, v) in &values {
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .or(event.as_deref())
            .unwrap_or("");
        if kind == "error" || (api == Api::Chat && v.get("error").is_some()) {
            let e = v.get("error").unwrap_or(v);
            let msg = e.get("message").map(as_text).unwrap_or_else(|| as_text(e));
            errors.push(msg);
            continue;
        }
        match api {
            Api::Chat => {
                for choice in v
                    .get("choices")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let c = index(choice, "index");
                    let Some(delta) = choice.get("delta") else {
                        continue;
                    };
                    let o = outputs.entry((c, 0)).or_default();
                    for key in ["content", "refusal", "reasoning_content", "reasoning"] {
                        if let Some(s) = delta.get(key).and_then(Value::as_str) {
                            match key {
                                "content" | "refusal" => o.text.push_str(s),
                                _ => o.reasoning.push_str(s),
                            }
                        }
                    }
                    for call in delta
                        .get("tool_calls")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let t = outputs.entry((c, 1 + index(call, "index"))).or_default();
                        t.kind = "tool_call".into();
                        if let Some(id) = call.get("id").and_then(Value::as_str) {
                            t.id = id.into();
                        }
                        let f = call.get("function").unwrap_or(&Value::Null);
                        if let Some(n) = f.get("name").and_then(Value::as_str) {
                            t.name.push_str(n);
                        }
                        if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                            t.arguments.push_str(a);
                        }
                    }
                }
            }
            Api::Responses => {
                let at = (index(v, "output_index"), 0);
                match kind {
                    "response.output_item.added" | "response.output_item.done" => {
                        let item = v.get("item").unwrap_or(&Value::Null);
                        let o = outputs.entry(at).or_default();
                        o.kind = str_of(item, "type");
                        o.id = str_of(item, "call_id");
                        o.name = str_of(item, "name");
                        if kind.ends_with(".done") {
                            o.whole = Some(item.clone());
                        }
                    }
                    "response.output_text.delta" | "response.refusal.delta" => {
                        outputs.entry(at).or_default().text += &str_of(v, "delta");
                    }
                    "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                        outputs.entry(at).or_default().reasoning += &str_of(v, "delta");
                    }
                    "response.function_call_arguments.delta"
                    | "response.custom_tool_call_input.delta" => {
                        outputs.entry(at).or_default().arguments += &str_of(v, "delta");
                    }
                    _ => {}
                }
            }
            Api::Messages => {
                let at = (index(v, "index"), 0);
                match kind {
                    "content_block_start" => {
                        let b = v.get("content_block").unwrap_or(&Value::Null);
                        let o = outputs.entry(at).or_default();
                        o.kind = str_of(b, "type");
                        o.id = str_of(b, "id");
                        o.name = str_of(b, "name");
                        o.text += &str_of(b, "text");
                        o.reasoning += &str_of(b, "thinking");
                    }
                    "content_block_delta" => {
                        let d = v.get("delta").unwrap_or(&Value::Null);
                        let o = outputs.entry(at).or_default();
                        match d.get("type").and_then(Value::as_str) {
                            Some("text_delta") => o.text += &str_of(d, "text"),
                            Some("thinking_delta") => o.reasoning += &str_of(d, "thinking"),
                            Some("input_json_delta") => o.arguments += &str_of(d, "partial_json"),
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let mut out = Vec::new();
    for o in outputs.into_values() {
        let nothing_streamed =
            o.text.is_empty() && o.reasoning.is_empty() && o.arguments.is_empty();
        if let (true, Some(whole)) = (nothing_streamed, &o.whole) {
            responses_item(whole, Role::Assistant, &mut out);
            continue;
        }
        if !o.reasoning.is_empty() {
            push(
                &mut out,
                Role::Assistant,
                Part::Reasoning {
                    text: Text::new(o.reasoning),
                },
            );
        }
        let is_call = matches!(
            o.kind.as_str(),
            "tool_call" | "function_call" | "custom_tool_call" | "tool_use" | "server_tool_use"
        );
        if is_call {
            push(
                &mut out,
                Role::Assistant,
                Part::ToolCall {
                    id: o.id,
                    name: Text::new(o.name),
                    arguments: Text::new(o.arguments),
                },
            );
        } else if !o.text.is_empty() {
            push(
                &mut out,
                Role::Assistant,
                Part::Text {
                    text: Text::new(o.text),
                },
            );
        }
    }
    for text in errors {
        push(&mut out, Role::Assistant, Part::Error { text });
    }
    Some(out)
}

#[cfg(test)]
#[path = "conversation_tests.rs"]
mod tests;
