use super::*;
use crate::detect::Catalogue;
use crate::mask::Operator;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// Every split natively; a sample of them in wasm, where the same code runs
/// some 20 times slower under the test runner.
const SPLIT_STEP: usize = if cfg!(target_arch = "wasm32") { 7 } else { 1 };

fn masker() -> &'static Masker {
    static M: std::sync::OnceLock<Masker> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let c = Catalogue::new(|_| true, &[]).unwrap();
        let ops = c.detectors().iter().map(|_| Operator::Redact).collect();
        Masker::new(c, ops, Vec::new())
    })
}

const SECRET_TEXT: &str =
    "Your key is sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123 and mail bob@example.com now.";

/// An OpenAI chat stream of `text`, one event per few characters.
fn openai_stream(text: &str, step: usize) -> String {
    let mut s = String::from("data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n");
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(step) {
        let piece: String = piece.iter().collect();
        let ev = json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
        s += &format!("data: {ev}\n\n");
    }
    s += "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
    s += "data: [DONE]\n\n";
    s
}

/// The text an OpenAI or Anthropic client would assemble from a stream.
fn assembled(stream: &[u8]) -> String {
    let text = std::str::from_utf8(stream).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            out += c;
        }
        if let Some(c) = v["delta"]["text"].as_str() {
            out += c;
        }
        if let Some(c) = v["delta"].as_str() {
            out += c;
        }
    }
    out
}

fn run(api: Api, chunks: &[&[u8]], window: usize) -> Vec<u8> {
    let m = masker();
    let mut s = SseMasker::new(api, window);
    let mut t = Tokens::default();
    let mut h = Hits::default();
    let mut out = Vec::new();
    for c in chunks {
        out.extend(s.push(m, c, &mut t, &mut h));
    }
    out.extend(s.finish(m, &mut t, &mut h));
    assert!(s.broken.is_none());
    out
}

fn whole() -> String {
    masker()
        .mask(SECRET_TEXT, &mut Tokens::default(), &mut Hits::default())
        .unwrap()
}

#[test]
fn openai_stream_is_masked_at_every_split() {
    let stream = openai_stream(SECRET_TEXT, 3);
    let bytes = stream.as_bytes();
    for at in (0..=bytes.len()).step_by(SPLIT_STEP) {
        let out = run(Api::OpenAiChat, &[&bytes[..at], &bytes[at..]], 512);
        assert_eq!(assembled(&out), whole(), "split at {at}");
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("sk-proj") && !text.contains("bob@"),
            "{text}"
        );
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }
}

#[test]
fn held_text_goes_out_with_the_finishing_chunk() {
    let out = run(
        Api::OpenAiChat,
        &[openai_stream(SECRET_TEXT, 5).as_bytes()],
        512,
    );
    let text = String::from_utf8(out).unwrap();
    // Everything is held (window 512 > text) until finish_reason arrives.
    let finishing = text
        .lines()
        .find(|l| l.contains("\"finish_reason\":\"stop\""))
        .unwrap();
    assert!(finishing.contains("[OPENAI_API_KEY]"), "{finishing}");
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
        let out = run(Api::Anthropic, &[&bytes[..at], &bytes[at..]], 512);
        let text = String::from_utf8(out).unwrap();
        let mut thinking = String::new();
        let mut answer = String::new();
        let mut last_event = "";
        for line in text.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                last_event = e;
            }
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            let v: Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["type"], last_event, "event names match: {text}");
            thinking += v["delta"]["thinking"].as_str().unwrap_or("");
            answer += v["delta"]["text"].as_str().unwrap_or("");
        }
        assert_eq!(thinking, "my password=[SECRET] is secret", "split at {at}");
        assert_eq!(answer, "call [PHONE] today", "split at {at}");
        // Held text is released before the stop event of its block.
        let stop0 = text.find("\"content_block_stop\",\"index\":0").unwrap();
        assert!(text[..stop0].contains("[SECRET]"));
    }
}

#[test]
fn responses_api_stream_and_done_events() {
    let mut s = String::new();
    for piece in ["card 4111 1111 ", "1111 1111 ok"] {
        let ev = json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": piece});
        s += &format!("event: response.output_text.delta\ndata: {ev}\n\n");
    }
    let done = json!({"type": "response.output_text.done", "output_index": 0, "content_index": 0, "text": "card 4111 1111 1111 1111 ok"});
    s += &format!("event: response.output_text.done\ndata: {done}\n\n");
    let out = String::from_utf8(run(Api::OpenAiResponses, &[s.as_bytes()], 512)).unwrap();
    assert_eq!(assembled(out.as_bytes()), "card [CARD_NUMBER] ok");
    assert!(out.contains("\"text\":\"card [CARD_NUMBER] ok\""), "{out}");
    assert!(!out.contains("4111"), "{out}");
}

#[test]
fn unchanged_events_pass_byte_for_byte() {
    let stream = openai_stream("nothing to see here", 4);
    // Window 0: text is held only while a finding runs to its end.
    let out = run(Api::OpenAiChat, &[stream.as_bytes()], 0);
    assert_eq!(String::from_utf8(out).unwrap(), stream);
}
