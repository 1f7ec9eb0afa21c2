//! Server-sent event streams of LLM answers, masked as they pass.
//!
//! `reader` cuts the stream into events (WHATWG rules). Text deltas (OpenAI
//! chat `choices[].delta.content`, `reasoning_content`, `reasoning`,
//! `refusal` and tool-call `arguments`; Responses API `*.delta` events;
//! Anthropic `text_delta`, `thinking_delta`, `input_json_delta`) go through
//! one stream masker per channel, so a value split across events is still
//! masked, and only what could still become a secret is held back. Held
//! text goes out in the channel's next event, or in an event of its own
//! just before the event that closes the channel.
//!
//! Every other string of an event, its keys and its numbers, the `id` and
//! `event` fields and comments are judged whole. An event's JSON is read
//! into a tape of spans (`crate::json`) and only the changed spans are
//! rewritten; nothing is re-serialised. A stream that is not UTF-8 or has
//! an event over `max_event_bytes` is cut (`broken`), never passed raw.

pub mod reader;
mod template;

use std::collections::HashSet;

use crate::access::AnswerGuard;
use crate::json::{self, Edits, Kind, Tape};
use crate::mask::stream::{StreamMasker, StreamRestorer};
use crate::mask::{Hits, Masker, Tokens};
use reader::{Broken, Event, Reader};
use template::{Fit, Template};

use super::usage::UsageReader;
use super::Api;

/// One text stream within the event stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Channel {
    /// OpenAI chat: choice, field, tool call index (for `arguments`).
    Chat(u64, ChatField, u64),
    /// Responses API: delta event type, output index, content index.
    Responses(String, u64, u64),
    /// Anthropic: content block index, delta kind.
    Anthropic(u64, AnthropicDelta),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ChatField {
    Content,
    ReasoningContent,
    Reasoning,
    Refusal,
    Arguments,
}

impl ChatField {
    const TEXT: [ChatField; 4] = [
        ChatField::Content,
        ChatField::ReasoningContent,
        ChatField::Reasoning,
        ChatField::Refusal,
    ];

    fn key(self) -> &'static str {
        match self {
            ChatField::Content => "content",
            ChatField::ReasoningContent => "reasoning_content",
            ChatField::Reasoning => "reasoning",
            ChatField::Refusal => "refusal",
            ChatField::Arguments => "arguments",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum AnthropicDelta {
    Text,
    Thinking,
    InputJson,
}

impl AnthropicDelta {
    fn of(kind: &str) -> Option<AnthropicDelta> {
        Some(match kind {
            "text_delta" => AnthropicDelta::Text,
            "thinking_delta" => AnthropicDelta::Thinking,
            "input_json_delta" => AnthropicDelta::InputJson,
            _ => return None,
        })
    }

    fn names(self) -> (&'static str, &'static str) {
        match self {
            AnthropicDelta::Text => ("text_delta", "text"),
            AnthropicDelta::Thinking => ("thinking_delta", "thinking"),
            AnthropicDelta::InputJson => ("input_json_delta", "partial_json"),
        }
    }
}

#[derive(Debug, Clone)]
struct ChannelState {
    masker: StreamMasker,
    restorer: StreamRestorer,
    /// Members to repeat in an event of this channel's own (Responses
    /// `item_id`), judged.
    extra: String,
}

/// The open channels in `Channel` order (the order their held text is
/// flushed in): a few at most, looked up once per delta, so a sorted list.
#[derive(Debug, Default)]
struct Channels(Vec<(Channel, ChannelState)>);

impl Channels {
    fn find(&self, ch: &Channel) -> Result<usize, usize> {
        self.0.binary_search_by(|(c, _)| c.cmp(ch))
    }

    /// The channel's state, opened with `new` when it is not open yet.
    fn open(
        &mut self,
        ch: &Channel,
        new: impl FnOnce() -> ChannelState,
    ) -> Option<&mut ChannelState> {
        let i = match self.find(ch) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (ch.clone(), new()));
                i
            }
        };
        self.0.get_mut(i).map(|(_, state)| state)
    }

    fn get(&self, ch: &Channel) -> Option<&ChannelState> {
        self.find(ch)
            .ok()
            .and_then(|i| self.0.get(i))
            .map(|(_, state)| state)
    }

    fn get_mut(&mut self, ch: &Channel) -> Option<&mut ChannelState> {
        self.find(ch)
            .ok()
            .and_then(|i| self.0.get_mut(i))
            .map(|(_, state)| state)
    }

    fn remove(&mut self, ch: &Channel) -> Option<ChannelState> {
        self.find(ch).ok().map(|i| self.0.remove(i).1)
    }

    fn keys(&self) -> impl Iterator<Item = &Channel> {
        self.0.iter().map(|(c, _)| c)
    }

    fn values(&self) -> impl Iterator<Item = &ChannelState> {
        self.0.iter().map(|(_, state)| state)
    }
}

/// Strings already judged clean in this stream (ids, the model name and
/// other envelope values repeat in every event).
#[derive(Debug, Default)]
struct Clean {
    seen: HashSet<Box<str>>,
}

const CLEAN_MAX: usize = 256;
const CLEAN_MAX_LEN: usize = 256;

impl Clean {
    fn contains(&self, s: &str) -> bool {
        known(s) || self.seen.contains(s)
    }

    fn add(&mut self, s: &str) {
        if s.len() > CLEAN_MAX_LEN {
            return;
        }
        if self.seen.len() >= CLEAN_MAX {
            self.seen.clear();
        }
        self.seen.insert(s.into());
    }
}

/// Key names and values of the three APIs' events: fixed words that hold
/// nothing, so they are not scanned again and again.
fn known(s: &str) -> bool {
    matches!(
        s,
        "id" | "object"
            | "created"
            | "model"
            | "choices"
            | "index"
            | "delta"
            | "role"
            | "content"
            | "finish_reason"
            | "logprobs"
            | "type"
            | "text"
            | "usage"
            | "tool_calls"
            | "function"
            | "name"
            | "arguments"
            | "refusal"
            | "reasoning"
            | "reasoning_content"
            | "system_fingerprint"
            | "service_tier"
            | "assistant"
            | "chat.completion.chunk"
            | "stop"
            | "length"
            | "output_index"
            | "content_index"
            | "summary_index"
            | "item_id"
            | "sequence_number"
            | "partial_json"
            | "thinking"
            | "signature"
            | "stop_reason"
            | "stop_sequence"
            | "message"
            | "content_block"
            | "text_delta"
            | "thinking_delta"
            | "input_json_delta"
            | "content_block_delta"
            | "content_block_start"
            | "content_block_stop"
            | "message_start"
            | "message_delta"
            | "message_stop"
            | "ping"
            | "end_turn"
            | "tool_use"
            | "input_tokens"
            | "output_tokens"
            | "prompt_tokens"
            | "completion_tokens"
            | "total_tokens"
            | "response.output_text.delta"
            | "response.output_text.done"
            | "response.created"
            | "response.in_progress"
            | "response.completed"
            | "output_text"
            | "annotations"
            | "status"
            | "completed"
            | "in_progress"
    )
}

#[derive(Debug)]
pub struct SseMasker {
    api: Api,
    hold_max: usize,
    max_event: usize,
    reader: Reader,
    events: Vec<Event>,
    channels: Channels,
    /// OpenAI chat: the judged `id`, `object`, `created` and `model` members
    /// of the stream's first chunk, for chunks of held text of its own.
    chat_envelope: String,
    clean: Clean,
    tape: Tape,
    edits: Edits,
    /// Shapes of recent events (`template`), the latest first.
    templates: Vec<Template>,
    /// Whether events are learnt as templates (tests compare both ways).
    learning: bool,
    /// What a channel lets out of a piece (`through`), reused.
    ready: String,
    /// Templated events of one channel from the chunk being read, their
    /// text taken by the channel's masker and not decided yet: written
    /// together by `flush_run`, with one decision for all of them (the
    /// liveness walk costs about the same for one piece as for several).
    run: Vec<Deferred>,
    run_channel: Option<Channel>,
    /// Each deferred event's share of what the channel lets out, reused.
    run_outs: Vec<String>,
    run_bounds: Vec<usize>,
    fit: Fit,
    /// What the event being read did, to tell whether it can be a template.
    shape: Shape,
    /// The stream can no longer be passed on; the caller ends it (with
    /// `error_event`).
    pub broken: Option<Broken>,
    /// The tools the answer may call (access rules); an event calling
    /// another ends the stream before it is sent.
    guard: Option<AnswerGuard>,
    /// Set by the event that called a denied tool; later events are dropped.
    denied: Option<Broken>,
    calls: Vec<String>,
    /// Reads the answer's token usage from the events it parses.
    pub usage: Option<UsageReader>,
    /// OpenAI chat: tracegate asked for usage the client did not ask for,
    /// so the usage-only chunk is not passed on.
    pub hide_usage_chunk: bool,
}

/// What became of an event offered as templated.
enum Templated {
    /// It waits in the run.
    Deferred,
    /// It was written (its integers judged).
    Written(Event),
    /// It fits no template: read it in full.
    No(Event),
}

/// A templated event waiting for its channel's decision.
#[derive(Debug)]
struct Deferred {
    ev: Event,
    /// The text's JSON string in the event's data.
    token: std::ops::Range<usize>,
    /// The text, when it was written with escapes (else it is the token's
    /// inside).
    unescaped: Option<String>,
    /// Where the text ends in the channel's original text.
    bound: usize,
}

/// What reading one JSON event did.
#[derive(Debug, Default)]
struct Shape {
    /// Channel texts it carried: the last one's channel, `extra` and node.
    texts: usize,
    text: Option<(Channel, String, usize)>,
    /// It closed a channel, or changed something other than its text.
    other: bool,
}

/// What an answer without a content type looks like from its first bytes:
/// an event stream starts with a field or a comment.
pub fn looks_like_sse(first: &[u8]) -> bool {
    let b = first.strip_prefix("\u{feff}".as_bytes()).unwrap_or(first);
    [&b"data:"[..], b"event:", b"id:", b"retry:", b":"]
        .iter()
        .any(|p| b.starts_with(p))
}

impl SseMasker {
    pub fn new(api: Api, hold_max: usize, max_event: usize) -> Self {
        Self {
            api,
            hold_max,
            max_event,
            reader: Reader::default(),
            events: Vec::new(),
            channels: Channels::default(),
            chat_envelope: String::new(),
            clean: Clean::default(),
            tape: Tape::default(),
            edits: Edits::default(),
            templates: Vec::new(),
            learning: true,
            ready: String::new(),
            run: Vec::new(),
            run_channel: None,
            run_outs: Vec::new(),
            run_bounds: Vec::new(),
            fit: Fit::default(),
            shape: Shape::default(),
            broken: None,
            guard: None,
            denied: None,
            calls: Vec::new(),
            usage: None,
            hide_usage_chunk: false,
        }
    }

    /// Ends the stream before any event that calls a tool `guard` does not
    /// allow (`broken` says which).
    pub fn with_guard(mut self, guard: Option<AnswerGuard>) -> Self {
        self.guard = guard;
        self
    }

    /// Bytes of the event being read.
    pub fn buffered(&self) -> usize {
        self.reader.buffered()
    }

    /// Bytes of held-back text.
    pub fn held(&self) -> usize {
        self.channels.values().map(|c| c.masker.held()).sum()
    }

    /// Takes the next chunk of the stream; returns what can be sent now.
    pub fn push(
        &mut self,
        m: &Masker,
        chunk: &[u8],
        tokens: &mut Tokens,
        hits: &mut Hits,
    ) -> Vec<u8> {
        // The answer's own values are never restored.
        tokens.seal();
        let mut out = Vec::new();
        if self.broken.is_some() {
            return out;
        }
        // About what comes in goes out: one allocation, not a doubling chain.
        out.reserve(chunk.len() + chunk.len() / 8);
        let mut events = std::mem::take(&mut self.events);
        if let Err(e) = self.reader.push(chunk, self.max_event, &mut events) {
            self.broken = Some(e);
        }
        for ev in events.drain(..) {
            if self.denied.is_some() {
                self.reader.recycle(ev);
                continue;
            }
            if let Some(ev) = self.event(m, ev, tokens, hits, &mut out) {
                self.reader.recycle(ev);
            }
        }
        self.flush_run(m, tokens, hits, &mut out);
        self.events = events;
        if let Some(d) = self.denied.take() {
            self.broken = Some(d);
        }
        out
    }

    /// The end of the stream: an unterminated last event, then every
    /// channel's held text.
    pub fn finish(&mut self, m: &Masker, tokens: &mut Tokens, hits: &mut Hits) -> Vec<u8> {
        let mut out = Vec::new();
        if self.broken.is_some() {
            return out;
        }
        let mut events = std::mem::take(&mut self.events);
        if let Err(e) = self.reader.finish(&mut events) {
            self.broken = Some(e);
            return out;
        }
        for ev in events.drain(..) {
            if self.denied.is_none() {
                self.event(m, ev, tokens, hits, &mut out);
            }
        }
        self.flush_run(m, tokens, hits, &mut out);
        self.events = events;
        if let Some(d) = self.denied.take() {
            self.broken = Some(d);
            return out;
        }
        self.flush_all(m, tokens, hits, &mut out);
        out
    }

    /// Judges and writes one event; gives it back (its buffers are reused),
    /// unless it waits in the run of its channel (`flush_run`).
    fn event(
        &mut self,
        m: &Masker,
        ev: Event,
        tokens: &mut Tokens,
        hits: &mut Hits,
        out: &mut Vec<u8>,
    ) -> Option<Event> {
        let mut ev = match self.templated(m, ev, tokens, hits, out) {
            Templated::Deferred => return None,
            Templated::Written(ev) => return Some(ev),
            Templated::No(ev) => ev,
        };
        self.flush_run(m, tokens, hits, out);
        self.event_in_full(m, &mut ev, tokens, hits, out);
        Some(ev)
    }

    /// Judges and writes an event that fits no template.
    fn event_in_full(
        &mut self,
        m: &Masker,
        ev: &mut Event,
        tokens: &mut Tokens,
        hits: &mut Hits,
        out: &mut Vec<u8>,
    ) {
        let mut changed = false;
        for c in &mut ev.comments {
            if let Some(masked) = self.judge(m, c, tokens, hits) {
                *c = masked;
                changed = true;
            }
        }
        if let Some(id) = &mut ev.id {
            if let Some(masked) = self.judge(m, id, tokens, hits) {
                *id = masked;
                changed = true;
            }
        }
        if let Some(name) = &mut ev.event {
            if let Some(masked) = self.judge(m, name, tokens, hits) {
                *name = masked;
                changed = true;
            }
        }
        let Some(data) = ev.data.take() else {
            ev.write(None, out);
            return;
        };
        if data.trim() == "[DONE]" {
            self.flush_all(m, tokens, hits, out);
            ev.write(Some(&data), out);
            return;
        }
        let mut tape = std::mem::take(&mut self.tape);
        let new = match tape.parse(&data) {
            // An event calling a tool the caller may not use is not sent.
            // (A templated event is never one: its bytes outside the text
            // are those of an event read here and let through.)
            Ok(()) if self.denies(&tape, &data) => {
                self.tape = tape;
                ev.data = Some(data);
                return;
            }
            // OpenAI chat's usage chunk that only tracegate asked for: read,
            // not sent (so not judged either: none of it leaves).
            Ok(()) if self.usage_hidden(m, &tape, &data) => {
                self.tape = tape;
                ev.data = Some(data);
                return;
            }
            Ok(()) => {
                self.edits.clear();
                self.shape = Shape::default();
                let written = out.len();
                self.json_event(m, &tape, &data, tokens, hits, out);
                if !changed && out.len() == written {
                    self.learn(&tape, &data, ev);
                }
                (!self.edits.is_empty()).then(|| self.edits.apply(&data))
            }
            // Not JSON: its text is judged whole.
            Err(_) => super::sse::mask_text(m, &data, tokens, hits),
        };
        self.tape = tape;
        ev.write(Some(new.as_deref().unwrap_or(&data)), out);
        ev.data = Some(data);
    }

    /// Whether the event calls a tool the guard does not allow (noted in
    /// `denied`).
    fn denies(&mut self, tape: &Tape, src: &str) -> bool {
        let Some(guard) = &self.guard else {
            return false;
        };
        self.calls.clear();
        crate::access::answer_calls(tape, src, &mut self.calls);
        match guard.check(&self.calls) {
            Some(tool) => {
                self.denied = Some(Broken::ToolDenied(tool.to_string()));
                true
            }
            None => false,
        }
    }

    /// Reads the event's usage; whether it is a usage chunk to keep from
    /// the client.
    fn usage_hidden(&mut self, m: &Masker, tape: &Tape, src: &str) -> bool {
        let usage_only = self
            .usage
            .as_mut()
            .is_some_and(|u| u.event(tape, src, Some(m)));
        usage_only && self.hide_usage_chunk
    }

    /// Masks one JSON event into `self.edits`; held text of a channel that
    /// this event closes is written out first, as events of its own.
    fn json_event(
        &mut self,
        m: &Masker,
        tape: &Tape,
        src: &str,
        tokens: &mut Tokens,
        hits: &mut Hits,
        out: &mut Vec<u8>,
    ) {
        // Nodes carried by a channel; every other one is judged whole.
        let mut streamed: Vec<usize> = Vec::new();
        let kind = tape.get(src, 0, "type").and_then(|i| tape.str(src, i));
        let kind = kind.as_deref().unwrap_or("");
        let has_choices = tape
            .get(src, 0, "choices")
            .is_some_and(|c| tape.kind(c) == Some(Kind::Array));
        match self.api {
            Api::Anthropic if kind == "content_block_delta" => {
                let index = tape
                    .get(src, 0, "index")
                    .and_then(|i| tape.u64(src, i))
                    .unwrap_or(0);
                let delta = tape.get(src, 0, "delta");
                let dkind = delta
                    .and_then(|d| tape.get(src, d, "type"))
                    .and_then(|i| tape.str(src, i));
                if let (Some(d), Some(which)) =
                    (delta, dkind.as_deref().and_then(AnthropicDelta::of))
                {
                    if let Some(text) = tape.get(src, d, which.names().1) {
                        let ch = Channel::Anthropic(index, which);
                        self.delta(m, ch, tape, src, text, String::new(), tokens, hits);
                        streamed.push(text);
                    }
                }
            }
            Api::Anthropic if kind == "content_block_stop" => {
                let index = tape
                    .get(src, 0, "index")
                    .and_then(|i| tape.u64(src, i))
                    .unwrap_or(0);
                self.flush_where(
                    m,
                    |c| matches!(c, Channel::Anthropic(i, _) if *i == index),
                    tokens,
                    hits,
                    out,
                );
            }
            Api::Anthropic if kind == "message_stop" => self.flush_all(m, tokens, hits, out),
            Api::OpenAiResponses if kind.ends_with(".delta") => {
                if let Some(text) = tape
                    .get(src, 0, "delta")
                    .filter(|&i| tape.kind(i) == Some(Kind::String))
                {
                    let num = |key: &str| tape.get(src, 0, key).and_then(|i| tape.u64(src, i));
                    let ch = Channel::Responses(
                        kind.to_string(),
                        num("output_index").unwrap_or(0),
                        num("content_index").or(num("summary_index")).unwrap_or(0),
                    );
                    let mut extra = String::new();
                    for key in ["item_id", "content_index", "summary_index"] {
                        if let Some(v) = tape.get(src, 0, key) {
                            json::write_str(&mut extra, key);
                            extra.push(':');
                            extra.push_str(&self.judged_raw(m, tape, src, v, tokens, hits));
                            extra.push(',');
                        }
                    }
                    self.delta(m, ch, tape, src, text, extra, tokens, hits);
                    streamed.push(text);
                }
            }
            Api::OpenAiResponses if kind.ends_with(".done") => {
                let delta_kind = format!("{}.delta", kind.trim_end_matches(".done"));
                let output = tape
                    .get(src, 0, "output_index")
                    .and_then(|i| tape.u64(src, i));
                self.flush_where(
                    m,
                    |c| matches!(c, Channel::Responses(k, o, _) if *k == delta_kind && output.is_none_or(|x| x == *o)),
                    tokens,
                    hits,
                    out,
                );
            }
            Api::OpenAiResponses
                if kind == "response.completed"
                    || kind == "response.incomplete"
                    || kind == "response.failed" =>
            {
                self.flush_all(m, tokens, hits, out);
            }
            _ if self.api == Api::OpenAiChat || has_choices => {
                self.chat_event(m, tape, src, tokens, hits, out, &mut streamed);
            }
            _ => {}
        }
        self.judge_rest(m, tape, src, &streamed, tokens, hits);
    }

    #[allow(clippy::too_many_arguments)]
    fn chat_event(
        &mut self,
        m: &Masker,
        tape: &Tape,
        src: &str,
        tokens: &mut Tokens,
        hits: &mut Hits,
        out: &mut Vec<u8>,
        streamed: &mut Vec<usize>,
    ) {
        if self.chat_envelope.is_empty() {
            // The same in every chunk of a stream: read from the first.
            let mut envelope = String::new();
            for key in ["id", "object", "created", "model"] {
                if let Some(v) = tape.get(src, 0, key) {
                    json::write_str(&mut envelope, key);
                    envelope.push(':');
                    envelope.push_str(&self.judged_raw(m, tape, src, v, tokens, hits));
                    envelope.push(',');
                }
            }
            self.chat_envelope = envelope;
        }
        let Some(choices) = tape.get(src, 0, "choices") else {
            return;
        };
        for choice in tape.elements(choices) {
            let i = tape
                .get(src, choice, "index")
                .and_then(|n| tape.u64(src, n))
                .unwrap_or(0);
            let delta = tape.get(src, choice, "delta");
            let finished = tape
                .get(src, choice, "finish_reason")
                .is_some_and(|f| tape.kind(f) != Some(Kind::Null));
            let mut texts: Vec<(ChatField, u64, usize)> = Vec::new();
            if let Some(d) = delta {
                for field in ChatField::TEXT {
                    if let Some(t) = tape
                        .get(src, d, field.key())
                        .filter(|&t| tape.kind(t) == Some(Kind::String))
                    {
                        texts.push((field, 0, t));
                    }
                }
                if let Some(calls) = tape.get(src, d, "tool_calls") {
                    for call in tape.elements(calls) {
                        let t = tape
                            .get(src, call, "index")
                            .and_then(|n| tape.u64(src, n))
                            .unwrap_or(0);
                        if let Some(a) = tape
                            .path(src, call, &["function", "arguments"])
                            .filter(|&a| tape.kind(a) == Some(Kind::String))
                        {
                            texts.push((ChatField::Arguments, t, a));
                        }
                    }
                }
            }
            for &(field, t, node) in &texts {
                let ch = Channel::Chat(i, field, t);
                let Some(piece) = tape.str(src, node) else {
                    continue;
                };
                let mut ready = self.through(m, &ch, &piece, "", tokens, hits);
                if finished {
                    // This chunk closes the channel: its piece and the rest.
                    ready += &self.take_rest(m, &ch, tokens, hits);
                    self.shape.other = true;
                }
                self.rewrite(tape, node, &piece, &ready);
                self.reuse(ready);
                streamed.push(node);
                self.shape.texts += 1;
                self.shape.text = Some((ch, String::new(), node));
            }
            if finished {
                self.shape.other = true;
                // Channels of this choice not in this chunk: their held text
                // goes first, in chunks of their own.
                self.flush_where(
                    m,
                    |c| matches!(c, Channel::Chat(ci, _, _) if *ci == i),
                    tokens,
                    hits,
                    out,
                );
            }
        }
    }

    /// An event whose data fits a recent event's shape (`template`): only
    /// its text (and integers) can differ, so it is not parsed. Its text
    /// is taken by its channel's masker and the event waits in the run
    /// (`flush_run`); one whose integers need judging is written now.
    fn templated(
        &mut self,
        m: &Masker,
        ev: Event,
        tokens: &mut Tokens,
        hits: &mut Hits,
        out: &mut Vec<u8>,
    ) -> Templated {
        let Some(data) = ev.data.as_deref() else {
            return Templated::No(ev);
        };
        let (comments, name, id, retry) = (
            &ev.comments,
            ev.event.as_deref(),
            ev.id.as_deref(),
            ev.retry.as_deref(),
        );
        let fit = &mut self.fit;
        let Some(k) = self
            .templates
            .iter()
            .position(|t| t.same_fields(comments, name, id, retry) && t.fit(data, fit))
        else {
            return Templated::No(ev);
        };
        if k > 0 {
            self.templates[..=k].rotate_right(1);
        }
        let token = self.fit.token.clone();
        let inner = data.get(token.start + 1..token.end - 1).unwrap_or("");
        let unescaped = if self.fit.escaped {
            match json::unescape(inner) {
                Some(p) => Some(p),
                None => return Templated::No(ev),
            }
        } else {
            None
        };
        // An integer (no character that folds, no placeholder) in which no
        // detector matches passes as it is: almost always.
        let live = m.catalogue().live();
        let plain_numbers = self
            .fit
            .numbers
            .iter()
            .all(|r| !live.may_match(data.get(r.clone()).unwrap_or("")));
        let templates = std::mem::take(&mut self.templates);
        let Some(t) = templates.first() else {
            self.templates = templates;
            return Templated::No(ev);
        };
        if self.run_channel.as_ref() != Some(&t.channel) || !plain_numbers {
            self.flush_run(m, tokens, hits, out);
        }
        let piece = unescaped.as_deref().unwrap_or(inner);
        if !plain_numbers {
            // Written now, its integers judged.
            let ready = self.through(m, &t.channel, piece, &t.extra, tokens, hits);
            let changed = ready != piece;
            self.templates = templates;
            return self.write_templated(m, ev, &token, changed, ready, tokens, hits, out);
        }
        let hold_max = self.hold_max;
        let Some(state) = self.channels.open(&t.channel, || ChannelState {
            masker: StreamMasker::new(hold_max),
            restorer: StreamRestorer::default(),
            extra: String::new(),
        }) else {
            self.templates = templates;
            return Templated::No(ev);
        };
        if state.extra != t.extra {
            t.extra.clone_into(&mut state.extra);
        }
        let bound = state.masker.take(piece);
        if self.run_channel.is_none() {
            self.run_channel = Some(t.channel.clone());
        }
        self.templates = templates;
        self.run.push(Deferred {
            ev,
            token,
            unescaped,
            bound,
        });
        Templated::Deferred
    }

    /// Writes a templated event whose integers may need judging, with
    /// `ready` (what its channel let out) as its text.
    #[allow(clippy::too_many_arguments)]
    fn write_templated(
        &mut self,
        m: &Masker,
        ev: Event,
        token: &std::ops::Range<usize>,
        changed: bool,
        ready: String,
        tokens: &mut Tokens,
        hits: &mut Hits,
        out: &mut Vec<u8>,
    ) -> Templated {
        let data = ev.data.as_deref().unwrap_or("");
        let live = m.catalogue().live();
        self.edits.clear();
        let numbers = std::mem::take(&mut self.fit.numbers);
        for r in &numbers {
            let text = data.get(r.clone()).unwrap_or("");
            if !live.may_match(text) {
                continue;
            }
            if let Some(masked) = self.judge(m, text, tokens, hits) {
                let mut s = String::new();
                json::write_str(&mut s, &masked);
                self.edits.replace(r.start, r.end, s);
            }
        }
        self.fit.numbers = numbers;
        if !self.edits.is_empty() {
            if changed {
                let mut s = String::new();
                json::write_str(&mut s, &ready);
                self.edits.replace(token.start, token.end, s);
            }
            let new = self.edits.apply(data);
            ev.write(Some(&new), out);
        } else if changed {
            let (before, after) = (
                data.get(..token.start).unwrap_or(""),
                data.get(token.end..).unwrap_or(""),
            );
            ev.write_around(before, &ready, after, out);
        } else {
            ev.write(Some(data), out);
        }
        self.reuse(ready);
        Templated::Written(ev)
    }

    /// Decides for the text of the events waiting in the run and writes
    /// them, each with its share.
    fn flush_run(&mut self, m: &Masker, tokens: &mut Tokens, hits: &mut Hits, out: &mut Vec<u8>) {
        let Some(channel) = self.run_channel.take() else {
            return;
        };
        let mut run = std::mem::take(&mut self.run);
        let mut outs = std::mem::take(&mut self.run_outs);
        let mut bounds = std::mem::take(&mut self.run_bounds);
        bounds.clear();
        bounds.extend(run.iter().map(|d| d.bound));
        bounds.pop();
        outs.resize_with(run.len(), String::new);
        outs.iter_mut().for_each(String::clear);
        if let Some(state) = self.channels.get_mut(&channel) {
            state.masker.release(m, tokens, hits, &bounds, &mut outs);
            for text in outs.iter_mut() {
                state.restorer.push_in_place(tokens, text);
            }
        }
        for (d, text) in run.drain(..).zip(outs.iter()) {
            let data = d.ev.data.as_deref().unwrap_or("");
            let inner = data.get(d.token.start + 1..d.token.end - 1).unwrap_or("");
            if text == d.unescaped.as_deref().unwrap_or(inner) {
                d.ev.write(Some(data), out);
            } else {
                let (before, after) = (
                    data.get(..d.token.start).unwrap_or(""),
                    data.get(d.token.end..).unwrap_or(""),
                );
                d.ev.write_around(before, text, after, out);
            }
            self.reader.recycle(d.ev);
        }
        self.run = run;
        self.run_outs = outs;
        self.run_bounds = bounds;
    }

    /// Keeps the shape of an event read in full when it carried one channel
    /// text and changed nothing else.
    fn learn(&mut self, tape: &Tape, src: &str, ev: &Event) {
        let shape = std::mem::take(&mut self.shape);
        let (true, 1, false, Some((channel, extra, node))) =
            (self.learning, shape.texts, shape.other, shape.text)
        else {
            return;
        };
        let Some(t) = Template::new(
            src,
            tape,
            node,
            &ev.comments,
            ev.event.as_deref(),
            ev.id.as_deref(),
            ev.retry.as_deref(),
            channel,
            extra,
        ) else {
            return;
        };
        self.templates.insert(0, t);
        self.templates.truncate(template::KEEP);
    }

    /// One delta string through its channel; its span is rewritten when
    /// what goes out now differs.
    #[allow(clippy::too_many_arguments)]
    fn delta(
        &mut self,
        m: &Masker,
        ch: Channel,
        tape: &Tape,
        src: &str,
        node: usize,
        extra: String,
        tokens: &mut Tokens,
        hits: &mut Hits,
    ) {
        let Some(piece) = tape.str(src, node) else {
            return;
        };
        let ready = self.through(m, &ch, &piece, &extra, tokens, hits);
        self.rewrite(tape, node, &piece, &ready);
        self.reuse(ready);
        self.shape.texts += 1;
        self.shape.text = Some((ch, extra, node));
    }

    /// Pushes a piece of a channel's text; returns what can go out now.
    fn through(
        &mut self,
        m: &Masker,
        ch: &Channel,
        piece: &str,
        extra: &str,
        tokens: &mut Tokens,
        hits: &mut Hits,
    ) -> String {
        let hold_max = self.hold_max;
        let Some(state) = self.channels.open(ch, || ChannelState {
            masker: StreamMasker::new(hold_max),
            restorer: StreamRestorer::default(),
            extra: String::new(),
        }) else {
            return String::new();
        };
        if state.extra != extra {
            extra.clone_into(&mut state.extra);
        }
        // The buffer of an earlier piece, given back with `reuse`.
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        state.masker.push_into(m, piece, tokens, hits, &mut ready);
        state.restorer.push_in_place(tokens, &mut ready);
        ready
    }

    /// Takes back the buffer `through` returned, for the next piece.
    fn reuse(&mut self, ready: String) {
        self.ready = ready;
    }

    /// Puts `ready` in place of string node `node` (which held `piece`).
    fn rewrite(&mut self, tape: &Tape, node: usize, piece: &str, ready: &str) {
        if ready == piece {
            return;
        }
        if let Some(n) = tape.node(node) {
            let mut s = String::with_capacity(ready.len() + 2);
            json::write_str(&mut s, ready);
            self.edits.replace(n.start, n.end, s);
        }
    }

    /// Judges every key, string and number of the event not carried by a
    /// channel.
    fn judge_rest(
        &mut self,
        m: &Masker,
        tape: &Tape,
        src: &str,
        streamed: &[usize],
        tokens: &mut Tokens,
        hits: &mut Hits,
    ) {
        for (i, n) in tape.nodes().iter().enumerate() {
            match n.kind {
                Kind::Key | Kind::String if !streamed.contains(&i) => {
                    let Some(text) = tape.str(src, i) else {
                        continue;
                    };
                    if let Some(masked) = self.judge(m, &text, tokens, hits) {
                        let mut s = String::new();
                        json::write_str(&mut s, &masked);
                        self.edits.replace(n.start, n.end, s);
                        self.shape.other = true;
                    }
                }
                Kind::Number => {
                    let text = tape.raw(src, i);
                    if let Some(masked) = self.judge(m, text, tokens, hits) {
                        // A number that holds a secret becomes its mask, a string.
                        let mut s = String::new();
                        json::write_str(&mut s, &masked);
                        self.edits.replace(n.start, n.end, s);
                        self.shape.other = true;
                    }
                }
                _ => {}
            }
        }
    }

    /// The raw JSON of a scalar node after judging it.
    fn judged_raw(
        &mut self,
        m: &Masker,
        tape: &Tape,
        src: &str,
        i: usize,
        tokens: &mut Tokens,
        hits: &mut Hits,
    ) -> String {
        let text = match tape.kind(i) {
            Some(Kind::String) => tape.str(src, i).map(|s| s.into_owned()),
            Some(Kind::Number) => Some(tape.raw(src, i).to_string()),
            _ => None,
        };
        match text.and_then(|t| self.judge(m, &t, tokens, hits)) {
            Some(masked) => {
                let mut s = String::new();
                json::write_str(&mut s, &masked);
                s
            }
            None => tape.raw(src, i).to_string(),
        }
    }

    /// A whole string: its masked form, or `None` when it passes as it is.
    fn judge(
        &mut self,
        m: &Masker,
        s: &str,
        tokens: &mut Tokens,
        hits: &mut Hits,
    ) -> Option<String> {
        if s.is_empty() || self.clean.contains(s) {
            return None;
        }
        let masked = mask_text(m, s, tokens, hits);
        if masked.is_none() {
            self.clean.add(s);
        }
        masked
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

    fn flush_all(&mut self, m: &Masker, tokens: &mut Tokens, hits: &mut Hits, out: &mut Vec<u8>) {
        self.flush_where(m, |_| true, tokens, hits, out);
    }

    /// Writes the held text of the channels `which` selects, each as an
    /// event of its own, and closes them.
    fn flush_where(
        &mut self,
        m: &Masker,
        which: impl Fn(&Channel) -> bool,
        tokens: &mut Tokens,
        hits: &mut Hits,
        out: &mut Vec<u8>,
    ) {
        let keys: Vec<Channel> = self.channels.keys().filter(|c| which(c)).cloned().collect();
        for key in keys {
            let extra = self
                .channels
                .get(&key)
                .map(|c| c.extra.clone())
                .unwrap_or_default();
            let rest = self.take_rest(m, &key, tokens, hits);
            if rest.is_empty() {
                continue;
            }
            let mut text = String::new();
            json::write_str(&mut text, &rest);
            let (event, data) = match &key {
                Channel::Anthropic(index, which) => {
                    let (kind, field) = which.names();
                    (
                        Some("content_block_delta".to_string()),
                        format!(
                            r#"{{"type":"content_block_delta","index":{index},"delta":{{"type":"{kind}","{field}":{text}}}}}"#
                        ),
                    )
                }
                Channel::Responses(kind, output, _) => {
                    let mut kind_json = String::new();
                    json::write_str(&mut kind_json, kind);
                    (
                        Some(kind.clone()),
                        format!(
                            r#"{{"type":{kind_json},{extra}"output_index":{output},"delta":{text}}}"#
                        ),
                    )
                }
                Channel::Chat(i, field, t) => {
                    let delta = match field {
                        ChatField::Arguments => {
                            format!(
                                r#"{{"tool_calls":[{{"index":{t},"function":{{"arguments":{text}}}}}]}}"#
                            )
                        }
                        other => format!(r#"{{"{}":{text}}}"#, other.key()),
                    };
                    (
                        None,
                        format!(
                            r#"{{{}"choices":[{{"index":{i},"delta":{delta},"finish_reason":null}}]}}"#,
                            self.chat_envelope
                        ),
                    )
                }
            };
            Event {
                event,
                ..Event::default()
            }
            .write(Some(&data), out);
        }
    }
}

/// An event that ends a stream cut by tracegate, in a shape both SDKs raise
/// as an error (OpenAI: an `error` member; Anthropic: an `error` event).
pub fn error_event(message: &str) -> Vec<u8> {
    typed_error_event("api_error", "stream_cut", message, None)
}

/// `error_event` with its error type and code, and the rule that ended it.
pub fn typed_error_event(kind: &str, code: &str, message: &str, rule: Option<&str>) -> Vec<u8> {
    let mut text = String::new();
    json::write_str(&mut text, &format!("tracegate: {message}"));
    let (mut kind_json, mut code_json) = (String::new(), String::new());
    json::write_str(&mut kind_json, kind);
    json::write_str(&mut code_json, code);
    let rule = rule.map_or(String::new(), |r| {
        let mut s = String::from(r#","rule":"#);
        json::write_str(&mut s, r);
        s
    });
    let data = format!(
        r#"{{"type":"error","error":{{"type":{kind_json},"code":{code_json},"message":{text}{rule}}}}}"#
    );
    let mut out = Vec::new();
    Event {
        event: Some("error".into()),
        ..Event::default()
    }
    .write(Some(&data), &mut out);
    out
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

#[cfg(test)]
mod tests;
