//! Checks that turn a pattern match into a finding: checksums and the
//! numbering rules of the identifiers, so that look-alike numbers and words
//! are left alone.

use std::net::Ipv6Addr;
use std::str::FromStr;

fn digits(s: &str) -> Vec<u8> {
    s.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect()
}

/// Payment card: 13–19 digits grouped as cards are, a known issuer
/// prefix, and the Luhn checksum.
pub fn payment_card(s: &str) -> bool {
    let d = digits(s);
    if !(13..=19).contains(&d.len()) || d.iter().all(|&x| x == d[0]) || !card_grouping(s) {
        return false;
    }
    let prefix2 = d[0] * 10 + d[1];
    let prefix4 = u32::from(prefix2) * 100 + u32::from(d[2]) * 10 + u32::from(d[3]);
    let known = d[0] == 4                                   // Visa
        || (51..=55).contains(&prefix2)                      // Mastercard
        || (2221..=2720).contains(&prefix4)                  // Mastercard 2-series
        || prefix2 == 34 || prefix2 == 37                    // Amex
        || prefix4 == 6011 || prefix2 == 65                  // Discover
        || (3528..=3589).contains(&prefix4)                  // JCB
        || prefix2 == 36 || (300..=305).contains(&(prefix4 / 10)) // Diners
        || prefix2 == 62; // UnionPay
    known && luhn(&d)
}

/// Written as card numbers are: digits alone, or groups split by one
/// kind of separator, the first of four digits and each other of three to
/// six (4-4-4-4, 4-6-5, 4-6-4). A list of numbers (`4 8 15 16 23 42`)
/// is not one.
fn card_grouping(s: &str) -> bool {
    let Some(sep) = s.chars().find(|c| !c.is_ascii_digit()) else {
        return true;
    };
    let mut groups = s.split(sep);
    let digits_only = |g: &str| g.bytes().all(|b| b.is_ascii_digit());
    groups
        .next()
        .is_some_and(|g| g.len() == 4 && digits_only(g))
        && groups.all(|g| (3..=6).contains(&g.len()) && digits_only(g))
}

pub fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 {
                    y - 9
                } else {
                    y
                }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// IBAN lengths by country (ISO 13616 registry, the common ones).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AT", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BR", 29),
    ("CH", 21),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("EE", 20),
    ("ES", 24),
    ("FI", 18),
    ("FR", 27),
    ("GB", 22),
    ("GI", 23),
    ("GR", 27),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("MC", 27),
    ("MT", 31),
    ("NL", 18),
    ("NO", 15),
    ("PK", 24),
    ("PL", 28),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("SA", 24),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("TR", 26),
    ("UA", 29),
];

/// IBAN: the country's length (when known) and the ISO 7064 mod-97 check.
pub fn iban(s: &str) -> bool {
    let c: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !(15..=34).contains(&c.len()) {
        return false;
    }
    let country = std::str::from_utf8(&c[..2]).unwrap_or("");
    if let Some((_, len)) = IBAN_LENGTHS.iter().find(|(cc, _)| *cc == country) {
        if c.len() != *len {
            return false;
        }
    }
    let mut rem: u32 = 0;
    for &b in c[4..].iter().chain(&c[..4]) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// US SSN `AAA-GG-SSSS`: area not 000, 666 or 900–999; group not 00;
/// serial not 0000 (SSA rules since 2011 randomisation).
pub fn us_ssn(s: &str) -> bool {
    let d = digits(s);
    if d.len() != 9 {
        return false;
    }
    let area = u32::from(d[0]) * 100 + u32::from(d[1]) * 10 + u32::from(d[2]);
    let group = d[3] * 10 + d[4];
    let serial = d[5..].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// IPv4: four octets 0–255, no leading zeros.
pub fn ipv4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 3
                && !(p.len() > 1 && p.starts_with('0'))
                && p.parse::<u16>().is_ok_and(|v| v <= 255)
        })
}

/// IPv6, as the standard library parses it; at least two colons, so
/// `12:30` times never count.
pub fn ipv6(s: &str) -> bool {
    s.matches(':').count() >= 2 && Ipv6Addr::from_str(s).is_ok()
}

/// Phone number: 8–15 digits (E.164 allows 15), not one repeated digit.
pub fn phone(s: &str) -> bool {
    // The extension's digits are not the number's.
    let number = s.split(['x', 'e']).next().unwrap_or(s);
    let d = digits(number);
    (8..=15).contains(&d.len()) && !d.iter().all(|&x| x == d[0])
}

/// Shannon entropy of a string, bits per character.
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Bytes of base64, base64url and most token alphabets (not `=`, which
/// ends base64 and starts values after `key=`).
pub fn base64ish(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'/' | b'+' | b'_' | b'-')
}

/// An AWS secret access key (40 characters of base64): random-looking, with
/// upper and lower case letters and digits, not hexadecimal (a git SHA or
/// SHA-1 digest is 40 hex digits), and switching between upper case, lower
/// case, digits and symbols as often as random text does (at least 18 of
/// 39 times; camelCase words switch about once per 3 characters).
pub fn aws_secret_key(s: &str) -> bool {
    let b = s.as_bytes();
    let class = |c: &u8| match c {
        b'A'..=b'Z' => 0,
        b'a'..=b'z' => 1,
        b'0'..=b'9' => 2,
        _ => 3,
    };
    let switches = b
        .windows(2)
        .filter(|w| class(&w[0]) != class(&w[1]))
        .count();
    b.len() == 40
        && b.iter().any(u8::is_ascii_uppercase)
        && b.iter().any(u8::is_ascii_lowercase)
        && b.iter().any(u8::is_ascii_digit)
        && !b.iter().all(u8::is_ascii_hexdigit)
        && switches >= 18
        && entropy(s) >= 4.2
}

/// A secret-looking value after `password=`-like keys: long enough, mixed
/// enough, and not a placeholder.
pub fn high_entropy_secret(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    let placeholder = [
        "xxxx",
        "****",
        "<",
        "${",
        "{{",
        "redacted",
        "changeme",
        "example",
        "placeholder",
        "your_",
        "your-",
    ]
    .iter()
    .any(|p| lower.contains(p));
    let classes = [
        s.bytes().any(|b| b.is_ascii_lowercase()),
        s.bytes().any(|b| b.is_ascii_uppercase()),
        s.bytes().any(|b| b.is_ascii_digit()),
        s.bytes().any(|b| !b.is_ascii_alphanumeric()),
    ]
    .iter()
    .filter(|&&c| c)
    .count();
    s.len() >= 8 && !placeholder && classes >= 2 && entropy(s) >= 3.0
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn payment_cards() {
        for good in [
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "340000000000009",
            "6011000000000004",
            "2223000048400011",
        ] {
            assert!(payment_card(good), "{good}");
        }
        for bad in [
            "4111 1111 1111 1112",
            "1234567812345678",
            // Luhn and prefix pass, but numbers in a list, not a card.
            "4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
            "41 11 11 11 11 11 11 11",
            "4111 1111-1111 1111",
            "0000000000000000",
            "4111",
        ] {
            assert!(!payment_card(bad), "{bad}");
        }
    }

    #[test]
    fn ibans() {
        assert!(iban("GB82 WEST 1234 5698 7654 32"));
        assert!(iban("DE89370400440532013000"));
        assert!(iban("FR1420041010050500013M02606"));
        assert!(!iban("GB82 WEST 1234 5698 7654 33"), "checksum");
        assert!(!iban("DE8937040044053201300"), "length for DE");
    }

    #[test]
    fn ssns() {
        assert!(us_ssn("123-45-6789"));
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
        ] {
            assert!(!us_ssn(bad), "{bad}");
        }
    }

    #[test]
    fn addresses_and_phones() {
        assert!(ipv4("192.168.1.20") && !ipv4("256.1.1.1") && !ipv4("01.2.3.4"));
        assert!(ipv6("2001:db8::1") && ipv6("fe80::1ff:fe23:4567:890a") && !ipv6("12:30"));
        assert!(phone("+1 (415) 555-0132") && !phone("555-01") && !phone("0000000000"));
    }

    #[test]
    fn secrets_by_entropy() {
        assert!(high_entropy_secret("Zx9!vT4#qL2m"));
        assert!(high_entropy_secret("hunter2hunter2X9"));
        assert!(!high_entropy_secret("password"), "one class, low entropy");
        assert!(!high_entropy_secret("${DB_PASSWORD}"), "placeholder");
        assert!(!high_entropy_secret("aaaaaaaaaaaa1"));
    }
}
