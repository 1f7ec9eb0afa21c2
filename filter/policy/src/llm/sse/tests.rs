use super::*;
use crate::detect::Catalogue;
use crate::mask::Operator;
use serde_json::{json, Value};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// Every split natively; a sample of them in wasm, where the same code runs
/// some 20 times slower under the test runner.
const SPLIT_STEP: usize = if cfg!(target_arch = "wasm32") { 7 } else { 1 };

const HOLD: usize = 16 << 10;
const MAX_EVENT: usize = 1 << 20;

fn masker_with(op: Operator) -> Masker {
    let c = Catalogue::new(|_| true, &[]).unwrap();
    let ops = c.detectors().iter().map(|_| op).collect();
    Masker::new(c, ops, Vec::new())
}

fn masker() -> &'static Masker {
    static M: std::sync::OnceLock<Masker> = std::sync::OnceLock::new();
    M.get_or_init(|| masker_with(Operator::Redact))
}

const SECRET_TEXT: &str =
    "Your key is sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123 and mail bob@example.com now.";

fn whole(text: &str) -> String {
    masker()
        .mask(text, &mut Tokens::default(), &mut Hits::default())
        .unwrap_or_else(|| text.to_string())
}

/// An OpenAI chat stream of `text`, one event per few characters.
fn openai_stream(text: &str, step: usize) -> String {
    let mut s = String::from("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n");
    for piece in pieces(text, step) {
        let ev = json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
        s += &format!("data: {ev}\n\n");
    }
    s += "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
    s += "data: [DONE]\n\n";
    s
}

fn anthropic_stream(text: &str, step: usize) -> String {
    let mut s = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"content\":[]}}\n\n");
    s += "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
    for piece in pieces(text, step) {
        let ev = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}});
        s += &format!("event: content_block_delta\ndata: {ev}\n\n");
    }
    s += "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n";
    s += "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    s
}

fn responses_stream(text: &str, step: usize) -> String {
    let mut s = String::new();
    for piece in pieces(text, step) {
        let ev = json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": piece});
        s += &format!("event: response.output_text.delta\ndata: {ev}\n\n");
    }
    let done = json!({"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0, "content_index": 0, "text": text});
    s += &format!("event: response.output_text.done\ndata: {done}\n\n");
    s
}

fn pieces(text: &str, step: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(step).map(|c| c.iter().collect()).collect()
}

/// The events of a canonical (LF) stream: (event name, data).
fn events(stream: &[u8]) -> Vec<(String, String)> {
    let text = std::str::from_utf8(stream).unwrap();
    let mut out = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let mut name = String::new();
        let mut data: Vec<&str> = Vec::new();
        for line in block.split('\n') {
            if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_string();
            }
            if let Some(d) = line.strip_prefix("data: ") {
                data.push(d);
            }
        }
        out.push((name, data.join("\n")));
    }
    out
}

/// The text a client would assemble from a stream, per API.
fn assembled(stream: &[u8]) -> String {
    let mut out = String::new();
    for (_, data) in events(stream) {
        let Ok(v) = serde_json::from_str::<Value>(&data) else {
            continue;
        };
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            out += c;
        }
        if let Some(c) = v["delta"]["text"].as_str() {
            out += c;
        }
        if v["type"] == "response.output_text.delta" {
            out += v["delta"].as_str().unwrap_or("");
        }
    }
    out
}

fn run_with(m: &Masker, api: Api, chunks: &[&[u8]]) -> (Vec<u8>, Hits) {
    drive(&mut SseMasker::new(api, HOLD, MAX_EVENT), m, chunks)
}

/// `chunks` through `s`, then its end; what it sent and found.
fn drive(s: &mut SseMasker, m: &Masker, chunks: &[&[u8]]) -> (Vec<u8>, Hits) {
    let mut t = Tokens::default();
    let mut h = Hits::default();
    let mut out = Vec::new();
    for c in chunks {
        out.extend(s.push(m, c, &mut t, &mut h));
    }
    out.extend(s.finish(m, &mut t, &mut h));
    assert!(s.broken.is_none(), "{:?}", s.broken);
    (out, h)
}

fn run(api: Api, chunks: &[&[u8]]) -> Vec<u8> {
    run_with(masker(), api, chunks).0
}

#[test]
fn every_api_is_masked_at_every_split() {
    for (api, stream) in [
        (Api::OpenAiChat, openai_stream(SECRET_TEXT, 3)),
        (Api::Anthropic, anthropic_stream(SECRET_TEXT, 4)),
        (Api::OpenAiResponses, responses_stream(SECRET_TEXT, 5)),
    ] {
        let bytes = stream.as_bytes();
        for at in (0..=bytes.len()).step_by(SPLIT_STEP * 3) {
            let out = run(api, &[&bytes[..at], &bytes[at..]]);
            assert_eq!(assembled(&out), whole(SECRET_TEXT), "{api:?} split at {at}");
            let text = String::from_utf8(out).unwrap();
            assert!(
                !text.contains("sk-proj") && !text.contains("bob@"),
                "{text}"
            );
        }
    }
}

#[test]
fn prose_flows_with_at_most_one_event_of_delay() {
    let text = "The deployment failed after the migration step, and we rolled back at once.";
    let m = masker();
    let mut s = SseMasker::new(Api::OpenAiChat, HOLD, MAX_EVENT);
    let mut t = Tokens::default();
    let mut h = Hits::default();
    let stream = openai_stream(text, 4);
    let evs: Vec<&str> = stream.split_inclusive("\n\n").collect();
    let mut sent = String::new();
    let mut seen = String::new();
    // Every event but the closing ones: what has been seen lags what was
    // sent by less than two events' text (the word in progress).
    for ev in &evs[1..evs.len() - 2] {
        seen += &assembled(&s.push(m, ev.as_bytes(), &mut t, &mut h));
        sent += &assembled(ev.as_bytes());
        assert!(sent.starts_with(&seen));
        let held = &sent[seen.len()..];
        assert!(
            held.len() <= 8 && !held.contains(' '),
            "held {held:?} after {sent:?}"
        );
    }
}

#[test]
fn held_text_closes_with_its_channel() {
    let out = run(Api::OpenAiChat, &[openai_stream(SECRET_TEXT, 5).as_bytes()]);
    let text = String::from_utf8(out).unwrap();
    // The last word ("now.") is released by the finishing chunk.
    let finishing = text
        .lines()
        .find(|l| l.contains("\"finish_reason\":\"stop\""))
        .unwrap();
    assert!(!finishing.contains("now."), "{finishing}");
    let before: Vec<&str> = text.split("\"finish_reason\":\"stop\"").collect();
    assert!(before[0].contains("now."), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    // Held chunks carry the stream's envelope.
    let last_text_chunk = text.lines().rfind(|l| l.contains("now.")).unwrap();
    let v: Value = serde_json::from_str(last_text_chunk.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(v["id"], "c1");
    assert_eq!(v["object"], "chat.completion.chunk");
}

#[test]
fn anthropic_stream_flushes_before_block_stop() {
    let mut s = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"content\":[]}}\n\n");
    s += "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n";
    for piece in ["my password=Zx9!", "vT4#qL2m is secret"] {
        let ev = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": piece}});
        s += &format!("event: content_block_delta\ndata: {ev}\n\n");
    }
    s += "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n";
    for piece in ["call 415-555-", "0132 today"] {
        let ev = json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": piece}});
        s += &format!("event: content_block_delta\r\ndata: {ev}\r\n\r\n");
    }
    s += "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n";
    s += "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let bytes = s.as_bytes();
    for at in (0..=bytes.len()).step_by(SPLIT_STEP) {
        let out = run(Api::Anthropic, &[&bytes[..at], &bytes[at..]]);
        let mut thinking = String::new();
        let mut answer = String::new();
        for (name, data) in events(&out) {
            let v: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(v["type"], name.as_str(), "event names match");
            thinking += v["delta"]["thinking"].as_str().unwrap_or("");
            answer += v["delta"]["text"].as_str().unwrap_or("");
        }
        assert_eq!(thinking, "my password=[SECRET] is secret", "split at {at}");
        assert_eq!(answer, "call [PHONE] today", "split at {at}");
        // Held text is released before the stop event of its block.
        let text = String::from_utf8(out).unwrap();
        let stop0 = text.find("\"content_block_stop\",\"index\":0").unwrap();
        let before: String = events(&text.as_bytes()[..stop0])
            .iter()
            .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| v["delta"]["thinking"].as_str().map(str::to_string))
            .collect();
        assert_eq!(before, "my password=[SECRET] is secret");
    }
}

#[test]
fn responses_api_stream_and_done_events() {
    let text = "card 4111 1111 1111 1111 ok";
    let out = String::from_utf8(run(
        Api::OpenAiResponses,
        &[responses_stream(text, 7).as_bytes()],
    ))
    .unwrap();
    assert_eq!(assembled(out.as_bytes()), "card [CARD_NUMBER] ok");
    assert!(out.contains("\"text\":\"card [CARD_NUMBER] ok\""), "{out}");
    assert!(!out.contains("4111"), "{out}");
    // Held text goes out before the done event, with the item id.
    let done = out.find("response.output_text.done").unwrap();
    assert!(out[..done].contains("ok"));
    assert!(out[..done].matches("\"item_id\":\"msg_1\"").count() >= 2);
}

#[test]
fn text_that_ends_at_a_word_boundary_passes_byte_for_byte() {
    let mut stream = String::new();
    for piece in ["Hello ", "world. ", "Bye! "] {
        let ev =
            json!({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
        stream += &format!("data: {ev}\n\n");
    }
    stream += ": keep-alive\n\nevent: ping\ndata: {}\n\nid: 7\nretry: 1000\ndata: [DONE]\n\n";
    let out = run(Api::OpenAiChat, &[stream.as_bytes()]);
    assert_eq!(String::from_utf8(out).unwrap(), stream);
}

#[test]
fn every_string_number_and_key_of_an_event_is_judged() {
    let ev = json!({
        "id": "chatcmpl-bob@example.com",
        "object": "chat.completion.chunk",
        "created": 4111111111111111u64,
        "model": "gpt-x",
        "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123": 1,
        "choices": [{"index": 0, "delta": {"content": "hi "}, "finish_reason": null}]
    });
    let stream = format!(
        "id: alice@example.com\n: note AKIAIOSFODNN7EXAMPLE\ndata: {ev}\n\ndata: [DONE]\n\n"
    );
    let out = String::from_utf8(run(Api::OpenAiChat, &[stream.as_bytes()])).unwrap();
    for raw in ["bob@", "alice@", "4111111111111111", "sk-proj", "AKIA"] {
        assert!(!out.contains(raw), "{raw} in {out}");
    }
    let (_, data) = &events(out.as_bytes())[0];
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["created"], "[CARD_NUMBER]");
    assert_eq!(v["id"], "[EMAIL]");
}

#[test]
fn lone_cr_crlf_and_lf_framings_are_all_masked() {
    for nl in ["\n", "\r\n", "\r"] {
        let stream = anthropic_stream(SECRET_TEXT, 6).replace('\n', nl);
        let bytes = stream.as_bytes();
        for at in (0..=bytes.len()).step_by(SPLIT_STEP * 5) {
            let out = run(Api::Anthropic, &[&bytes[..at], &bytes[at..]]);
            assert_eq!(assembled(&out), whole(SECRET_TEXT), "{nl:?} split at {at}");
        }
    }
}

#[test]
fn an_oversized_event_cuts_the_stream_and_keeps_memory_bounded() {
    let m = masker();
    let mut s = SseMasker::new(Api::OpenAiChat, HOLD, 64 << 10);
    let mut t = Tokens::default();
    let mut h = Hits::default();
    let mut out = s.push(m, b"data: {\"choices\":[]}\n\ndata: \"", &mut t, &mut h);
    let chunk = vec![b'A'; 16 << 10];
    for _ in 0..64 {
        out.extend(s.push(m, &chunk, &mut t, &mut h));
    }
    assert!(matches!(s.broken, Some(Broken::EventTooLarge(_))));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "data: {\"choices\":[]}\n\n"
    );
    assert!(s.buffered() <= 64 << 10);
    let err = String::from_utf8(error_event("cut")).unwrap();
    assert!(
        err.starts_with("event: error\ndata: {\"type\":\"error\",\"error\":"),
        "{err}"
    );
}

#[test]
fn tokenize_restores_only_the_requests_own_values() {
    let m = masker_with(Operator::Tokenize);
    let mut t = Tokens::default();
    let mut h = Hits::default();
    assert_eq!(
        m.mask("mail alice@corp.example.com", &mut t, &mut h)
            .unwrap(),
        "mail [EMAIL_1]"
    );
    let answer = "I wrote to [EMAIL_1], cc bob@evil.example today.";
    for (api, stream) in [
        (Api::OpenAiChat, openai_stream(answer, 3)),
        (Api::Anthropic, anthropic_stream(answer, 5)),
    ] {
        let bytes = stream.as_bytes();
        for at in (0..=bytes.len()).step_by(SPLIT_STEP * 11) {
            let mut tokens = t.clone();
            let mut s = SseMasker::new(api, HOLD, MAX_EVENT);
            let mut out = s.push(&m, &bytes[..at], &mut tokens, &mut h);
            out.extend(s.push(&m, &bytes[at..], &mut tokens, &mut h));
            out.extend(s.finish(&m, &mut tokens, &mut h));
            assert_eq!(
                assembled(&out),
                "I wrote to alice@corp.example.com, cc [EMAIL_2] today.",
                "{api:?} split at {at}"
            );
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod properties {
    use super::*;
    use proptest::prelude::*;

    const PARTS: &[&str] = &[
        "hello ",
        "world",
        ". ",
        "\n",
        "é",
        "\"quoted\" ",
        "back\\slash ",
        "alice@corp.example.com",
        "4111 1111 1111 1111",
        "AKIAIOSFODNN7EXAMPLE",
        "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123",
        "password=Zx9!vT4#qL2m",
        "10.1.2.3",
    ];

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PARTS), 1..16).prop_map(|v| v.concat())
    }

    /// One way of writing events, as the WHATWG rules allow.
    #[derive(Debug, Clone)]
    struct Framing {
        newline: &'static str,
        space_after_colon: bool,
        comments: bool,
        id_and_retry: bool,
        split_data: bool,
        bom: bool,
    }

    fn framing() -> impl Strategy<Value = Framing> {
        (
            prop::sample::select(vec!["\n", "\r\n", "\r"]),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(newline, space_after_colon, comments, id_and_retry, split_data, bom)| Framing {
                    newline,
                    space_after_colon,
                    comments,
                    id_and_retry,
                    split_data,
                    bom,
                },
            )
    }

    /// Rewrites a canonical stream in `f`'s framing.
    fn reframe(canonical: &str, f: &Framing) -> String {
        let nl = f.newline;
        let sp = if f.space_after_colon { " " } else { "" };
        let mut out = String::new();
        if f.bom {
            out.push('\u{feff}');
        }
        for (n, block) in canonical
            .split("\n\n")
            .filter(|b| !b.is_empty())
            .enumerate()
        {
            if f.comments {
                out += &format!(":comment {n}{nl}");
            }
            if f.id_and_retry {
                out += &format!("id:{sp}{n}{nl}retry:{sp}1000{nl}");
            }
            for line in block.split('\n') {
                if let Some(name) = line.strip_prefix("event: ") {
                    out += &format!("event:{sp}{name}{nl}");
                } else if let Some(data) = line.strip_prefix("data: ") {
                    // JSON may be split over data lines at a comma: the
                    // lines join with a newline, which JSON ignores.
                    if f.split_data && data.starts_with('{') {
                        for part in data.split_inclusive(',') {
                            out += &format!("data:{sp}{part}{nl}");
                        }
                    } else {
                        out += &format!("data:{sp}{data}{nl}");
                    }
                }
            }
            out += nl;
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Every framing, every split, every API: the client assembles the
        /// text masked as a whole, and no raw secret is anywhere.
        #[test]
        fn framings_splits_and_apis(
            text in text(),
            step in 1..9usize,
            f in framing(),
            api in 0..3usize,
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let (api, canonical) = match api {
                0 => (Api::OpenAiChat, openai_stream(&text, step)),
                1 => (Api::Anthropic, anthropic_stream(&text, step)),
                _ => (Api::OpenAiResponses, responses_stream(&text, step)),
            };
            let stream = reframe(&canonical, &f);
            let bytes = stream.as_bytes();
            let mut offsets: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            offsets.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for o in offsets {
                chunks.push(&bytes[at..o]);
                at = o;
            }
            chunks.push(&bytes[at..]);
            let (out, _) = run_with(masker(), api, &chunks);
            let masked = whole(&text);
            prop_assert_eq!(assembled(&out), masked.clone());
            let out = String::from_utf8(out).unwrap();
            for raw in ["alice@", "4111 1111", "AKIAIOSF", "sk-proj", "Zx9!", "10.1.2.3"] {
                // (Only where masking the whole text removes it: a card
                // number glued to a word is no card number.)
                prop_assert!(masked.contains(raw) || !out.contains(raw), "{} in {}", raw, out);
            }
        }
    }
}

/// Runs `chunks` with events read in full only, and with known shapes
/// taken as templates: the streams must carry the same text, in as many
/// events, with the same findings. (Templated events of one chunk are
/// decided together, so a piece of held text may go out an event earlier
/// than when each event is decided alone.)
fn same_with_templates(m: &Masker, api: Api, chunks: &[&[u8]]) -> Vec<u8> {
    let mut outs = Vec::new();
    for learning in [false, true] {
        let mut s = SseMasker::new(api, HOLD, MAX_EVENT);
        s.learning = learning;
        let (out, h) = drive(&mut s, m, chunks);
        if learning {
            assert!(!s.templates.is_empty(), "no event was learnt");
        }
        outs.push((String::from_utf8(out).unwrap(), h));
    }
    let ((full, full_hits), (templated, templated_hits)) = (&outs[0], &outs[1]);
    assert_eq!(assembled(full.as_bytes()), assembled(templated.as_bytes()));
    assert_eq!(
        full.matches("\n\n").count(),
        templated.matches("\n\n").count()
    );
    assert_eq!(full_hits, templated_hits);
    outs.swap_remove(1).0.into_bytes()
}

/// Text with escapes of every kind, split inside them: `\u0040` (an `@`
/// that makes an e-mail), a surrogate pair, quotes and newlines.
const ESCAPED_TEXT: &str = "mail bob\u{0040}example.com \u{1F600} \"q\" \\ x\ny\tz sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123 end";

/// The stream of `text` with every `@` written `\u0040` and the emoji as a
/// surrogate pair, as a server may escape them.
fn escaped(stream: &str) -> String {
    stream
        .replace('@', "\\u0040")
        .replace('\u{1F600}', "\\ud83d\\ude00")
}

#[test]
fn templated_events_are_masked_as_events_read_in_full() {
    let m = masker();
    for text in [
        SECRET_TEXT,
        ESCAPED_TEXT,
        "plain words only, nothing here. ",
    ] {
        for step in [2, 7] {
            for (api, stream) in [
                (Api::OpenAiChat, openai_stream(text, step)),
                (Api::Anthropic, anthropic_stream(text, step)),
                (Api::OpenAiResponses, responses_stream(text, step)),
            ] {
                for stream in [stream.clone(), escaped(&stream)] {
                    let bytes = stream.as_bytes();
                    for at in (0..=bytes.len()).step_by(SPLIT_STEP * 13) {
                        let out = same_with_templates(m, api, &[&bytes[..at], &bytes[at..]]);
                        assert_eq!(assembled(&out), whole(text), "{api:?} {step} split at {at}");
                    }
                }
            }
        }
    }
}

/// The Responses API numbers its events: the number is a hole in the
/// template, judged in every event (here by a detector of its own).
#[test]
fn template_holes_take_any_integer_and_judge_it() {
    let c = Catalogue::new(
        |_| true,
        &[crate::detect::Custom {
            name: "seven".into(),
            pattern: r"^7[0-9]*$".into(),
            risk: 10,
        }],
    )
    .unwrap();
    let ops = c.detectors().iter().map(|_| Operator::Redact).collect();
    let m = Masker::new(c, ops, Vec::new());
    let mut s = String::new();
    for (i, piece) in pieces("some text and bob@example.com in it ", 2)
        .iter()
        .enumerate()
    {
        let ev = json!({"type": "response.output_text.delta", "sequence_number": i * 7, "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": piece});
        s += &format!("event: response.output_text.delta\ndata: {ev}\n\n");
    }
    // Numbers that are not integers, or change the channel, are no holes.
    s += "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1.5,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"a\"}\n\n";
    s += "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":01,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"b\"}\n\n";
    s += "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":9,\"item_id\":\"msg_1\",\"output_index\":1,\"content_index\":0,\"delta\":\"c\"}\n\n";
    let bytes = s.as_bytes();
    for at in (0..=bytes.len()).step_by(SPLIT_STEP * 11) {
        let out = same_with_templates(&m, Api::OpenAiResponses, &[&bytes[..at], &bytes[at..]]);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("\"sequence_number\":\"[SEVEN]\""), "{out}");
        assert!(out.contains("\"sequence_number\":63,"), "{out}");
        assert!(!out.contains("bob@"), "{out}");
    }
}

/// A detector's start right at the end of a chunk, and events that change
/// shape (another choice, a tool call, a finish) between templated ones.
#[test]
fn shapes_that_change_midway_and_starts_at_chunk_ends() {
    let m = masker();
    let mut s = String::new();
    for piece in [
        "see ",
        "the log",
        "@example.com",
        " and ",
        "sk-",
        "proj-AbCdEfGhIjKl",
        "MnOpQrStUvWx123",
        " ok",
    ] {
        let ev = json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
        s += &format!("data: {ev}\n\n");
        let ev = json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 1, "delta": {"content": piece}, "finish_reason": null}]});
        s += &format!("data: {ev}\n\n");
        let ev = json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, "finish_reason": null}]});
        s += &format!("data: {ev}\n\n");
    }
    s += "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"},\"finish_reason\":\"stop\"}]}\n\n";
    s += "data: [DONE]\n\n";
    let bytes = s.as_bytes();
    for at in (0..=bytes.len()).step_by(SPLIT_STEP) {
        let out = same_with_templates(m, Api::OpenAiChat, &[&bytes[..at], &bytes[at..]]);
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("log@") && !out.contains("sk-proj"), "{out}");
    }
}
