#![allow(clippy::expect_used)] // a benchmark: a failed expectation should stop it loudly
//! How the bare AWS secret key detector does on a corpus (make bench):
//! random 40-character keys in several contexts (found?) against ids and
//! hashes that look alike (left alone?). Prints a table.

use tracegate_policy::detect::Catalogue;

struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn string(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n)
            .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize] as char)
            .collect()
    }

    fn pick<'a>(&mut self, words: &[&'a str]) -> &'a str {
        words[(self.next() % words.len() as u64) as usize]
    }
}

const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const HEX: &[u8] = b"0123456789abcdef";
const WORDS: &[&str] = &[
    "get",
    "User",
    "Account",
    "Settings",
    "For",
    "Organization",
    "Handler",
    "Factory",
    "Bean",
    "Abstract",
    "Proxy",
    "Request",
    "Response",
    "Manager",
    "Service",
    "Impl",
    "Controller",
    "Test",
    "Data",
    "Config",
    "Provider",
    "Builder",
    "V2",
    "Id",
    "Json",
    "S3",
    "Utf8",
    "Base64",
    "Sha256",
    "Http2",
    "Oauth2",
    "HTTP",
    "URL",
    "API",
];

fn main() {
    let c = Catalogue::new(|_| true, &[]).expect("catalogue");
    let bare = c
        .detectors()
        .iter()
        .position(|d| d.name == "bare_aws_secret_key")
        .expect("detector");
    let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
    let n = 10_000;
    let hits = |text: &str| {
        let mut out = Vec::new();
        c.find(text, &mut out);
        out.iter().any(|f| f.detector == bare)
    };
    println!("Bare AWS secret access keys (detector bare_aws_secret_key), {n} samples per row");
    println!();
    println!("| sample | flagged |");
    println!("|---|---:|");
    let mut found = 0;
    for i in 0..n {
        let key = rng.string(BASE64, 40);
        let text = match i % 4 {
            0 => format!("The secret access key is {key}."),
            1 => format!("export KEY=\"{key}\""),
            2 => format!("```\n{key}\n```"),
            _ => format!("use {key} for the staging bucket"),
        };
        found += usize::from(hits(&text));
    }
    println!(
        "| random 40-character keys (AWS secret access keys), in prose, code and quotes | {:.2} % |",
        found as f64 * 100.0 / n as f64
    );
    type Make = fn(&mut Xorshift) -> String;
    let decoys: [(&str, Make); 10] = [
        ("git commit SHA (40 hex)", |r| r.string(HEX, 40)),
        ("SHA-1 in upper-case hex", |r| {
            r.string(b"0123456789ABCDEF", 40)
        }),
        ("UUID", |r| {
            format!(
                "{}-{}-{}-{}-{}",
                r.string(HEX, 8),
                r.string(HEX, 4),
                r.string(HEX, 4),
                r.string(HEX, 4),
                r.string(HEX, 12)
            )
        }),
        ("SHA-256 in base64 (44, padded)", |r| {
            format!("{}=", r.string(BASE64, 43))
        }),
        ("SHA-256 in base64url (43)", |r| r.string(BASE64URL, 43)),
        ("SHA-1 in base64 (28, padded)", |r| {
            format!("{}=", r.string(BASE64, 27))
        }),
        ("base64url id (22)", |r| r.string(BASE64URL, 22)),
        ("npm integrity (sha512-…)", |r| {
            format!("sha512-{}==", r.string(BASE64, 86))
        }),
        ("docker digest (sha256:…)", |r| {
            format!("sha256:{}", r.string(HEX, 64))
        }),
        ("40-character camelCase identifier", |r| {
            let mut s = String::new();
            while s.len() < 40 {
                s.push_str(r.pick(WORDS));
            }
            s.truncate(40);
            s
        }),
    ];
    for (name, make) in decoys {
        let mut flagged = 0;
        for _ in 0..n {
            let d = make(&mut rng);
            flagged += usize::from(hits(&format!("see {d} in the log")));
        }
        println!("| {name} | {:.2} % |", flagged as f64 * 100.0 / n as f64);
    }
}
