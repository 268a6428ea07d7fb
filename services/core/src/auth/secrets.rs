//! Refusing secrets nobody should run with: the placeholders that example files and manifests
//! carry, and strings too regular to be random. Checked at start, before anything is served.

/// Words that mark text as a placeholder somebody forgot to replace.
const PLACEHOLDERS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "replace-me",
    "replaceme",
    "replace_me",
    "placeholder",
    "example",
    "your-key",
    "your-secret",
    "fill-in",
    "fillme",
    "todo",
    "xxxxxxxx",
    "...",
    "<",
    ">",
];

/// True when `s` carries a known placeholder marker (case-insensitive).
pub fn is_placeholder(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    PLACEHOLDERS.iter().any(|p| lower.contains(p))
}

/// The least Shannon entropy of a secret's characters, in bits, counted over the whole
/// string. 32 random hex digits carry about 120 bits by this count; `openssl rand -hex 32`
/// about 240.
pub const MIN_ENTROPY_BITS: u32 = 100;
/// The fewest distinct characters a secret may have.
pub const MIN_DISTINCT: usize = 12;

/// How to make a good secret, for messages.
pub const HOW_TO_MAKE_ONE: &str = "make one with `openssl rand -hex 32` (or leave it unset and a key is generated and printed once)";

/// What is wrong with `secret` as an API key chosen by an operator, or None when it will do.
pub fn secret_problem(secret: &str) -> Option<String> {
    if secret.chars().count() < 32 {
        return Some("at least 32 characters".into());
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Some("printable ASCII only: no spaces or control characters".into());
    }
    if is_placeholder(secret) {
        return Some("this is a placeholder, not a secret".into());
    }
    let bits = entropy_bits(secret);
    let distinct = distinct_chars(secret);
    if distinct < MIN_DISTINCT || bits < MIN_ENTROPY_BITS {
        return Some(format!(
            "too little entropy ({bits} bits over {distinct} distinct characters; at least {MIN_ENTROPY_BITS} bits and {MIN_DISTINCT} distinct characters)"
        ));
    }
    None
}

fn distinct_chars(s: &str) -> usize {
    s.chars().collect::<std::collections::HashSet<_>>().len()
}

/// Shannon entropy of the character distribution times the length, rounded down. Integer
/// arithmetic only (the workspace denies float arithmetic): entropy is summed in millibits with
/// an integer log2.
fn entropy_bits(s: &str) -> u32 {
    let mut counts = std::collections::HashMap::new();
    for c in s.chars() {
        *counts.entry(c).or_insert(0u64) += 1;
    }
    let n: u64 = counts.values().sum();
    if n == 0 {
        return 0;
    }
    // sum over chars of count * log2(n / count) = n*log2(n) - sum(count*log2(count)).
    let total = n * log2_milli(n) - counts.values().map(|&c| c * log2_milli(c)).sum::<u64>();
    u32::try_from(total / 1000).unwrap_or(u32::MAX)
}

/// log2(x) in thousandths, for x >= 1 (within 0.02 millibits: exact enough for a threshold).
fn log2_milli(x: u64) -> u64 {
    if x <= 1 {
        return 0;
    }
    let int = 63 - u64::from(x.leading_zeros());
    // y = x / 2^int in [1, 2) as 1.32 fixed point; each squaring yields one binary digit of
    // the fraction.
    let mut y: u128 = (u128::from(x) << 32) >> int;
    let mut frac: u64 = 0;
    for _ in 0..16 {
        y = (y * y) >> 32;
        frac <<= 1;
        if y >= (2u128 << 32) {
            y >>= 1;
            frac |= 1;
        }
    }
    int * 1000 + frac * 1000 / 65536
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_regular_strings_are_refused() {
        for bad in [
            "CHANGE-ME-to-32-or-more-random-characters",
            "replace-me-with-a-long-random-secret-value",
            "<32+ random characters>...................",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "abababababababababababababababababababab",
            "passwordpasswordpasswordpassword",
            "12345678901234567890123456789012",
            "short",
            "a key with spaces in it that is long enough",
        ] {
            assert!(secret_problem(bad).is_some(), "{bad}");
        }
        for good in [
            "cc_1f2e3d4c_9a8b7c6d5e4f30211f2e3d4c5b6a79880f1e2d3c4b5a69788796a5b4c3d2e1f0",
            "test-bootstrap-admin-key-0123456789abcdef",
            "3f9c2a7b10d4e8f6a5c3b2910e7d6f4a",
        ] {
            assert_eq!(secret_problem(good), None, "{good}");
        }
    }

    #[test]
    fn integer_log2_is_close() {
        assert_eq!(log2_milli(1), 0);
        assert_eq!(log2_milli(2), 1000);
        assert_eq!(log2_milli(8), 3000);
        let l3 = log2_milli(3);
        assert!((1583..=1586).contains(&l3), "{l3}");
        let l10 = log2_milli(10);
        assert!((3320..=3323).contains(&l10), "{l10}");
    }
}
