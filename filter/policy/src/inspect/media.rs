//! Base64 payloads in bodies: which are provably media (skipped), which
//! are text in disguise (judged decoded).
//!
//! A string is only skipped when all of it is base64 and its first bytes
//! are the signature of an image, audio, video or PDF format. Base64 that
//! decodes to UTF-8 text is judged as that text (and masked by encoding the
//! masked text again); anything else is judged as the string it is.

use base64::alphabet::{Alphabet, STANDARD as STANDARD_ALPHABET, URL_SAFE};
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

/// What a possibly-media string turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Provably an image, audio, video or PDF: not text.
    Binary,
    /// Base64 of UTF-8 text: `prefix` (a `data:…;base64,` URL's head, or
    /// empty) and the decoded text.
    Text { prefix: String, text: String },
    /// Not base64 (or not decodable): judged as the string it is.
    Plain,
}

/// File signatures of the media formats skipped.
const SIGNATURES: &[(usize, &[u8])] = &[
    (0, b"\x89PNG\r\n\x1a\n"),
    (0, b"\xff\xd8\xff"),
    (0, b"GIF87a"),
    (0, b"GIF89a"),
    (0, b"BM"),
    (0, b"II*\0"),
    (0, b"MM\0*"),
    (0, b"\0\0\x01\0"),
    (0, b"%PDF-"),
    (0, b"ID3"),
    (0, b"\xff\xfb"),
    (0, b"\xff\xf3"),
    (0, b"\xff\xf2"),
    (0, b"OggS"),
    (0, b"fLaC"),
    (0, b"\x1a\x45\xdf\xa3"),
    (4, b"ftyp"),
];

fn signature(bytes: &[u8]) -> bool {
    let riff =
        bytes.starts_with(b"RIFF") && matches!(bytes.get(8..12), Some(b"WEBP" | b"WAVE" | b"AVI "));
    riff || SIGNATURES
        .iter()
        .any(|(at, sig)| bytes.get(*at..at + sig.len()) == Some(*sig))
}

fn lenient(alphabet: &Alphabet) -> GeneralPurpose {
    GeneralPurpose::new(
        alphabet,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

/// Classifies a string that may be base64 media.
pub fn classify(s: &str) -> Payload {
    let (prefix, data) = match s.strip_prefix("data:").and_then(|r| r.find(";base64,")) {
        Some(i) => s.split_at(5 + i + ";base64,".len()),
        None => ("", s),
    };
    let standard = data
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    let url_safe = data
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='));
    if data.is_empty() || !(standard || url_safe) {
        return Payload::Plain;
    }
    let engine = lenient(if standard {
        &STANDARD_ALPHABET
    } else {
        &URL_SAFE
    });
    // The signature is in the first bytes: decode a little first.
    let head = &data[..data.len().min(24) / 4 * 4];
    if let Ok(bytes) = engine.decode(head) {
        if signature(&bytes) {
            return Payload::Binary;
        }
    }
    match engine
        .decode(data)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
    {
        Some(text) => Payload::Text {
            prefix: prefix.to_string(),
            text,
        },
        None => Payload::Plain,
    }
}

/// The string for masked text that came as `Payload::Text`.
pub fn encode(prefix: &str, text: &str) -> String {
    format!("{prefix}{}", STANDARD.encode(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn images_are_binary_text_is_text_and_the_rest_is_plain() {
        let png = STANDARD.encode(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR rest of image");
        assert_eq!(classify(&png), Payload::Binary);
        assert_eq!(
            classify(&format!("data:image/png;base64,{png}")),
            Payload::Binary
        );
        let text = STANDARD.encode("my key AKIAIOSFODNN7EXAMPLE");
        assert_eq!(
            classify(&format!("data:text/plain;base64,{text}")),
            Payload::Text {
                prefix: "data:text/plain;base64,".into(),
                text: "my key AKIAIOSFODNN7EXAMPLE".into()
            }
        );
        // A PNG header then plain text is not all base64: judged as text.
        assert_eq!(
            classify(&format!("{png} see AKIAIOSFODNN7EXAMPLE")),
            Payload::Plain
        );
        assert_eq!(classify("https://evil.example/?k=AKIA"), Payload::Plain);
        // A "data:" string that is not base64 at all.
        assert_eq!(classify("data: my key AKIA…"), Payload::Plain);
    }
}
