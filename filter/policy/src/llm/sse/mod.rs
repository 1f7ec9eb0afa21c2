//! Server-sent event streams of LLM answers, masked as they pass.
//!
//! The stream is cut into events (blank-line separated, any line ending).
//! Text deltas (OpenAI chat `choices[].delta.content`, `reasoning_content`
//! and tool-call `arguments`; Responses API `*.delta` events; Anthropic
//! `text_delta`, `thinking_delta`, `input_json_delta`) go through one stream
//! masker per channel, so a value split across events is still masked; text
//! held back by a channel goes out in a later event of the same channel, or
//! just before the event that closes it. Every other event is masked whole.
//! Events are re-serialised only when something in them changed.

use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::{walk, Api, Direction};
use crate::mask::stream::{StreamMasker, StreamRestorer};
use crate::mask::{Hits, Masker, Tokens};

/// One text stream within the event stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Channel {
    /// OpenAI chat: (choice, field, tool call index for arguments).
    Chat(u64, &'static str, u64),
    /// Responses API: (event type, output_index, content_index).
    Responses(String, u64, u64),
    /// Anthropic: (content block index, delta field).
    Anthropic(u64, &'static str),
}

#[derive(Debug, Clone)]
struct ChannelState {
    masker: StreamMasker,
    restorer: StreamRestorer,
}

#[derive(Debug)]
pub struct SseMasker {
    api: Api,
    window: usize,
    buffer: Vec<u8>,
    channels: BTreeMap<Channel, ChannelState>,
    /// The stream's bytes were not UTF-8 or not SSE: passed through raw
    /// after that point would leak, so the caller must stop the stream.
    pub broken: Option<String>,
}

/// Longest SSE event accepted; a longer one means the stream is not SSE.
const MAX_EVENT: usize = 4 << 20;

impl SseMasker {
    pub fn new(api: Api, window: usize) -> Self {
        Self {
            api,
            window,
            buffer: Vec::new(),
            channels: BTreeMap::new(),
            broken: None,
        }
    }

    /// Bytes of incomplete events and held-back text.
    pub fn held(&self) -> usize {
        self.buffer.len()
            + self
                .channels
                .values()
                .map(|c| c.masker.held())
                .sum::<usize>()
    }

    /// Takes the next chunk of the stream; returns what can be sent now.
    pub fn push(
        &mut self,
        m: &Masker,
        chunk: &[u8],
        tokens: &mut Tokens,
        hits: &mut Hits,
    ) -> Vec<u8> {
        self.buffer.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some((event_len, sep_len)) = find_event_end(&self.buffer) {
            let raw: Vec<u8> = self.buffer.drain(..event_len + sep_len).collect();
            let event = &raw[..event_len];
            match std::str::from_utf8(event) {
                Ok(text) => self.event(m, text, &raw[event_len..], tokens, hits, &mut out),
                Err(_) => {
                    self.broken = Some("stream is not UTF-8".into());
                    return out;
                }
            }
        }
        if self.buffer.len() > MAX_EVENT {
            self.broken = Some(format!("an event exceeds {MAX_EVENT} bytes"));
        }
        out
    }

    /// The end of the stream: an unterminated last event, then every
    /// channel's held text.
    pub fn finish(&mut self, m: &Masker, tokens: &mut Tokens, hits: &mut Hits) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.buffer.is_empty() {
            let mut rest = std::mem::take(&mut self.buffer);
            if !rest.ends_with(b"\n") && !rest.ends_with(b"\r") {
                rest.push(b'\n');
            }
            match std::str::from_utf8(&rest) {
                Ok(text) => self.event(m, text, b"\n", tokens, hits, &mut out),
                Err(_) => self.broken = Some("stream is not UTF-8".into()),
            }
        }
        let keys: Vec<Channel> = self.channels.keys().cloned().collect();
        for key in keys {
            self.flush(m, &key, tokens, hits, &mut out);
        }
        out
    }

    fn event(
        &mut self,
        m: &Masker,
        text: &str,
        sep: &[u8],
        tokens: &mut Tokens,
        hits: &mut Hits,
        out: &mut Vec<u8>,
    ) {
        let mut lines: Vec<&str> = text.split_inclusive(['\n']).collect();
        if lines.is_empty() {
            lines.push(text);
        }
        let data: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.trim_end_matches(['\r', '\n']).strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if data.is_empty() {
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(sep);
            return;
        }
        let data = data.join("\n");
        if data.trim() == "[DONE]" {
            let keys: Vec<Channel> = self.channels.keys().cloned().collect();
            for key in keys {
                self.flush(m, &key, tokens, hits, out);
            }
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(sep);
            return;
        }
        let new_data = match serde_json::from_str::<Value>(&data) {
            Ok(mut v) => {
                let changed = self.json_event(m, &mut v, tokens, hits, out);
                changed.then(|| v.to_string())
            }
            Err(_) => mask_text(m, &data, tokens, hits),
        };
        match new_data {
            None => out.extend_from_slice(text.as_bytes()),
            Some(d) => {
                // Other fields (event:, id:) as they were; data as one line.
                for l in &lines {
                    if !l.starts_with("data:") {
                        out.extend_from_slice(l.trim_end_matches(['\r', '\n']).as_bytes());
                        out.push(b'\n');
                    }
                }
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(d.as_bytes());
                out.push(b'\n');
            }
        }
        out.extend_from_slice(sep);
    }

    /// Masks one JSON event; returns whether it changed. Held text of a
    /// channel that this event closes is written out first.
    fn json_event(
        &mut self,
        m: &Masker,
        v: &mut Value,
        tokens: &mut Tokens,
        hits: &mut Hits,
        out: &mut Vec<u8>,
    ) -> bool {
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match self.api {
            Api::Anthropic if kind == "content_block_delta" => {
                let index = v["index"].as_u64().unwrap_or(0);
                let field = match v["delta"]["type"].as_str() {
                    Some("text_delta") => "text",
                    Some("thinking_delta") => "thinking",
                    Some("input_json_delta") => "partial_json",
                    _ => return mask_json(m, v, tokens, hits),
                };
                return self.delta(
                    m,
                    Channel::Anthropic(index, field),
                    &mut v["delta"][field],
                    tokens,
                    hits,
                );
            }
            Api::Anthropic if kind == "content_block_stop" => {
                let index = v["index"].as_u64().unwrap_or(0);
                let keys: Vec<Channel> = self
                    .channels
                    .keys()
                    .filter(|c| matches!(c, Channel::Anthropic(i, _) if *i == index))
                    .cloned()
                    .collect();
                for key in keys {
                    self.flush(m, &key, tokens, hits, out);
                }
                return false;
            }
            Api::OpenAiResponses if kind.ends_with(".delta") => {
                let ch = Channel::Responses(
                    kind.clone(),
                    v["output_index"].as_u64().unwrap_or(0),
                    v["content_index"]
                        .as_u64()
                        .or(v["summary_index"].as_u64())
                        .unwrap_or(0),
                );
                return self.delta(m, ch, &mut v["delta"], tokens, hits);
            }
            Api::OpenAiResponses if kind.ends_with(".done") => {
                let delta_kind = format!("{}.delta", kind.trim_end_matches(".done"));
                let keys: Vec<Channel> = self
                    .channels
                    .keys()
                    .filter(|c| matches!(c, Channel::Responses(k, o, _) if *k == delta_kind && Some(*o) == v["output_index"].as_u64()))
                    .cloned()
                    .collect();
                for key in keys {
                    self.flush(m, &key, tokens, hits, out);
                }
                return mask_json(m, v, tokens, hits);
            }
            _ => {}
        }
        if self.api == Api::OpenAiChat || v.get("choices").is_some() {
            if let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) {
                let mut changed = false;
                for choice in choices.iter_mut() {
                    let i = choice["index"].as_u64().unwrap_or(0);
                    for field in ["content", "reasoning_content", "refusal"] {
                        if choice["delta"][field].is_string() {
                            changed |= self.delta(
                                m,
                                Channel::Chat(i, field, 0),
                                &mut choice["delta"][field],
                                tokens,
                                hits,
                            );
                        }
                    }
                    if let Some(calls) = choice
                        .get_mut("delta")
                        .and_then(|d| d.get_mut("tool_calls"))
                        .and_then(Value::as_array_mut)
                    {
                        for call in calls.iter_mut() {
                            let t = call["index"].as_u64().unwrap_or(0);
                            if call["function"]["arguments"].is_string() {
                                changed |= self.delta(
                                    m,
                                    Channel::Chat(i, "arguments", t),
                                    &mut call["function"]["arguments"],
                                    tokens,
                                    hits,
                                );
                            }
                        }
                    }
                    if !choice["finish_reason"].is_null() {
                        changed |= self.flush_into_choice(m, i, choice, tokens, hits);
                    }
                }
                return changed;
            }
        }
        mask_json(m, v, tokens, hits)
    }

    /// One delta string through its channel.
    fn delta(
        &mut self,
        m: &Masker,
        ch: Channel,
        slot: &mut Value,
        tokens: &mut Tokens,
        hits: &mut Hits,
    ) -> bool {
        let Some(piece) = slot.as_str() else {
            return false;
        };
        let window = self.window;
        let state = self.channels.entry(ch).or_insert_with(|| ChannelState {
            masker: StreamMasker::new(window),
            restorer: StreamRestorer::default(),
        });
        let masked = state.masker.push(m, piece, tokens, hits);
        let ready = state.restorer.push(tokens, &masked);
        if ready == piece {
            return false;
        }
        *slot = Value::String(ready);
        true
    }

    /// Puts a chat choice's held text into its closing chunk's delta.
    fn flush_into_choice(
        &mut self,
        m: &Masker,
        i: u64,
        choice: &mut Value,
        tokens: &mut Tokens,
        hits: &mut Hits,
    ) -> bool {
        let keys: Vec<Channel> = self
            .channels
            .keys()
            .filter(|c| matches!(c, Channel::Chat(ci, _, _) if *ci == i))
            .cloned()
            .collect();
        let mut changed = false;
        for key in keys {
            let rest = self.take_rest(m, &key, tokens, hits);
            if rest.is_empty() {
                continue;
            }
            changed = true;
            let Channel::Chat(_, field, t) = key else {
                continue;
            };
            if field == "arguments" {
                if !choice["delta"]["tool_calls"].is_array() {
                    choice["delta"]["tool_calls"] = json!([]);
                }
                if let Some(calls) = choice["delta"]["tool_calls"].as_array_mut() {
                    calls.push(json!({"index": t, "function": {"arguments": rest}}));
                }
            } else {
                let before = choice["delta"][field].as_str().unwrap_or("").to_string();
                choice["delta"][field] = Value::String(before + &rest);
            }
        }
        changed
    }

    fn take_rest(
        &mut self,
        m: &Masker,
        key: &Channel,
        tokens: &mut Tokens,
        hits: &mut Hits,
    ) -> String {
        let Some(mut state) = self.channels.remove(key) else {
            return String::new();
        };
        let masked = state.masker.finish(m, tokens, hits);
        let mut rest = state.restorer.push(tokens, &masked);
        rest += &state.restorer.finish(tokens);
        rest
    }

    /// Writes a channel's held text as an event of its own.
    fn flush(
        &mut self,
        m: &Masker,
        key: &Channel,
        tokens: &mut Tokens,
        hits: &mut Hits,
        out: &mut Vec<u8>,
    ) {
        let rest = self.take_rest(m, key, tokens, hits);
        if rest.is_empty() {
            return;
        }
        let (event, data) = match key {
            Channel::Anthropic(index, field) => {
                let kind = match *field {
                    "thinking" => "thinking_delta",
                    "partial_json" => "input_json_delta",
                    _ => "text_delta",
                };
                (
                    Some("content_block_delta"),
                    json!({"type": "content_block_delta", "index": index, "delta": {"type": kind, *field: rest}}),
                )
            }
            Channel::Responses(kind, output, content) => (
                Some(kind.as_str()),
                json!({"type": kind, "output_index": output, "content_index": content, "delta": rest}),
            ),
            Channel::Chat(i, field, t) => {
                let delta = if *field == "arguments" {
                    json!({"tool_calls": [{"index": t, "function": {"arguments": rest}}]})
                } else {
                    json!({ *field: rest })
                };
                (
                    None,
                    json!({"object": "chat.completion.chunk", "choices": [{"index": i, "delta": delta, "finish_reason": null}]}),
                )
            }
        };
        if let Some(e) = event {
            out.extend_from_slice(format!("event: {e}\n").as_bytes());
        }
        out.extend_from_slice(format!("data: {data}\n\n").as_bytes());
    }
}

/// Masks every text string of a JSON event as a whole.
fn mask_json(m: &Masker, v: &mut Value, tokens: &mut Tokens, hits: &mut Hits) -> bool {
    let mut changed = false;
    walk(v, Direction::Response, &mut |scope, s| {
        if scope == super::Scope::Model {
            return;
        }
        if let Some(new) = mask_text(m, s, tokens, hits) {
            *s = new;
            changed = true;
        }
    });
    changed
}

/// Masks then restores placeholders; `None` when unchanged.
pub fn mask_text(m: &Masker, s: &str, tokens: &mut Tokens, hits: &mut Hits) -> Option<String> {
    let masked = m.mask(s, tokens, hits);
    let base = masked.as_deref().unwrap_or(s);
    match tokens.restore(base) {
        Some(r) => Some(r),
        None => masked,
    }
}

/// End of the first event: (length of the event, length of the blank-line
/// separator), for `\n\n`, `\r\n\r\n` and `\r\r`.
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        match buf[i] {
            b'\n' if buf.get(i + 1) == Some(&b'\n') => return Some((i + 1, 1)),
            b'\n' if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') => {
                return Some((i + 1, 2))
            }
            b'\r' if buf.get(i + 1) == Some(&b'\r') => return Some((i + 1, 1)),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests;
