//! Unified social credit codes (统一社会信用代码, GB 32100-2015) and the organisation code
//! embedded in them (GB 11714). A code is 18 characters from a 31-character alphabet (no I, O,
//! Z, S, V); the 18th is a mod-31 check over the first 17; characters 9..17 are the
//! organisation code, whose 9th character is a mod-11 check over its first 8.
//!
//! The audit counts each code in exactly one bucket, in this precedence: malformed (length or
//! alphabet), then a wrong 18th character, then a wrong organisation check, then a duplicate of
//! a valid code seen earlier; everything else is valid. Duplicates are found with a set of
//! valid codes packed into a `u128` each (31^18 < 2^128): 16 bytes per distinct valid code in
//! the table, up to about 46 bytes at the peak, with the hash table's control bytes, its spare
//! capacity and the old table still held while it doubles (10 M distinct codes measured 455 MB).
//! An audit remembers at most a configured number of distinct codes (1 M by default), so its
//! memory is bounded.

use std::collections::HashSet;

/// The code alphabet; a character's value is its index.
pub const ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const WEIGHTS_31: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];
const WEIGHTS_11: [u32; 8] = [3, 7, 9, 10, 5, 8, 4, 2];
/// Most offenders kept as samples.
pub const MAX_SAMPLES: usize = 100;
/// Most distinct valid codes one audit remembers by default: a prefecture-level city has a few
/// hundred thousand registered entities, and 1,000,000 codes measured +39 MiB of process memory
/// at the peak (within the 64 MiB one principal may cost; `IngestionOptions::
/// max_audit_distinct_codes` sets another bound).
pub const DEFAULT_MAX_DISTINCT: usize = 1_000_000;
/// [`DEFAULT_MAX_DISTINCT`], under its old name.
pub const MAX_DISTINCT: usize = DEFAULT_MAX_DISTINCT;
/// Upper bound of the memory one distinct valid code costs at the peak, in bytes.
pub const BYTES_PER_CODE: usize = 46;

const fn value_table() -> [u8; 256] {
    let mut t = [255u8; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
}
static VALUES: [u8; 256] = value_table();

/// What is wrong with a code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid(u128),
    Malformed(String),
    BadCheckCharacter { want: char },
    BadOrganisationCheck { want: char },
}

/// The GB 32100 check character for the first 17 characters (values), as an alphabet index.
pub fn check_31(values: &[u8]) -> u8 {
    let sum: u32 = values
        .iter()
        .zip(WEIGHTS_31)
        .map(|(v, w)| u32::from(*v) * w)
        .sum();
    ((31 - sum % 31) % 31) as u8
}

/// The GB 11714 check character for the first 8 organisation-code characters.
pub fn check_11(chars: &[u8]) -> Option<u8> {
    let mut sum = 0u32;
    for (c, w) in chars.iter().zip(WEIGHTS_11) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return None,
        };
        sum += v * w;
    }
    Some(match 11 - sum % 11 {
        10 => b'X',
        11 => b'0',
        n => b'0' + n as u8,
    })
}

/// Checks one code.
pub fn check(code: &str) -> Verdict {
    let b = code.as_bytes();
    if b.len() != 18 {
        return Verdict::Malformed(format!("length {}, want 18", code.chars().count()));
    }
    let mut values = [0u8; 18];
    for (i, c) in b.iter().enumerate() {
        let v = VALUES[usize::from(*c)];
        if v == 255 {
            return Verdict::Malformed(format!(
                "character {} `{}` is not in the code alphabet",
                i + 1,
                char::from(*c).escape_default()
            ));
        }
        values[i] = v;
    }
    let want = check_31(&values[..17]);
    if values[17] != want {
        return Verdict::BadCheckCharacter {
            want: char::from(ALPHABET[usize::from(want)]),
        };
    }
    match check_11(&b[8..16]) {
        Some(want) if want == b[16] => {}
        Some(want) => {
            return Verdict::BadOrganisationCheck {
                want: char::from(want),
            };
        }
        None => return Verdict::BadOrganisationCheck { want: '?' },
    }
    let packed = values
        .iter()
        .fold(0u128, |acc, v| acc * 31 + u128::from(*v));
    Verdict::Valid(packed)
}

/// Completes a 16-character body (alphabet characters; positions 9..16 digits or letters
/// valid in GB 11714) into a valid 18-character code: for tests and benchmarks.
pub fn complete(body16: &str) -> Option<String> {
    let b = body16.as_bytes();
    if b.len() != 16 {
        return None;
    }
    let org = check_11(&b[8..16])?;
    let mut s: Vec<u8> = b.to_vec();
    s.push(org);
    let values: Option<Vec<u8>> = s
        .iter()
        .map(|c| {
            let v = VALUES[usize::from(*c)];
            (v != 255).then_some(v)
        })
        .collect();
    let check = check_31(&values?);
    s.push(ALPHABET[usize::from(check)]);
    String::from_utf8(s).ok()
}

/// One offender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub index: u64,
    pub code: String,
    pub reason: String,
}

/// A running audit.
#[derive(Debug)]
pub struct Audit {
    pub total: u64,
    pub valid: u64,
    pub malformed: u64,
    pub bad_check_character: u64,
    pub bad_organisation_check: u64,
    pub duplicate: u64,
    pub samples: Vec<Problem>,
    seen: HashSet<u128>,
    max_distinct: usize,
}

impl Default for Audit {
    fn default() -> Self {
        Audit::with_limit(DEFAULT_MAX_DISTINCT)
    }
}

/// The audit remembered too many distinct codes.
#[derive(Debug, thiserror::Error)]
#[error("at most {0} distinct codes per audit")]
pub struct TooMany(pub usize);

impl Audit {
    pub fn new() -> Self {
        Audit::default()
    }

    /// An audit that remembers at most `max_distinct` distinct valid codes.
    pub fn with_limit(max_distinct: usize) -> Self {
        Audit {
            total: 0,
            valid: 0,
            malformed: 0,
            bad_check_character: 0,
            bad_organisation_check: 0,
            duplicate: 0,
            samples: Vec::new(),
            seen: HashSet::new(),
            max_distinct,
        }
    }

    /// Everything not valid (for `uscc.codes_duplicate_or_invalid`).
    pub fn invalid_or_duplicate(&self) -> u64 {
        self.total - self.valid
    }

    pub fn push(&mut self, code: &str) -> Result<(), TooMany> {
        let index = self.total;
        self.total += 1;
        let reason = match check(code) {
            Verdict::Valid(packed) => {
                if self.seen.insert(packed) {
                    if self.seen.len() > self.max_distinct {
                        return Err(TooMany(self.max_distinct));
                    }
                    self.valid += 1;
                    return Ok(());
                }
                self.duplicate += 1;
                "duplicate of an earlier code".to_owned()
            }
            Verdict::Malformed(r) => {
                self.malformed += 1;
                r
            }
            Verdict::BadCheckCharacter { want } => {
                self.bad_check_character += 1;
                format!("check character (18th) should be `{want}`")
            }
            Verdict::BadOrganisationCheck { want } => {
                self.bad_organisation_check += 1;
                format!("organisation code check character (17th) should be `{want}`")
            }
        };
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(Problem {
                index,
                code: code.chars().take(64).collect(),
                reason,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_real_form_codes() {
        // Public examples of the published form.
        for code in ["91350100M000100Y43", "91110000600037341L"] {
            assert!(
                matches!(check(code), Verdict::Valid(_)),
                "{code}: {:?}",
                check(code)
            );
        }
        assert_eq!(
            complete("91350100M000100Y").as_deref(),
            Some("91350100M000100Y43")
        );
    }

    #[test]
    fn every_bucket_in_precedence() {
        let good = complete("9133080000000001").unwrap_or_default();
        assert!(matches!(check(&good), Verdict::Valid(_)));
        assert!(matches!(check(&good[..17]), Verdict::Malformed(_)));
        assert!(matches!(
            check(&good.replace('9', "I")),
            Verdict::Malformed(_)
        ));
        let mut bad18 = good.clone().into_bytes();
        bad18[17] = if bad18[17] == b'0' { b'1' } else { b'0' };
        let bad18 = String::from_utf8(bad18).unwrap_or_default();
        assert!(matches!(check(&bad18), Verdict::BadCheckCharacter { .. }));
        // Change the organisation check character and repair the 18th: only GB 11714 fails.
        let mut body: Vec<u8> = good.as_bytes()[..17].to_vec();
        body[16] = if body[16] == b'1' { b'2' } else { b'1' };
        let values: Vec<u8> = body.iter().map(|c| VALUES[usize::from(*c)]).collect();
        body.push(ALPHABET[usize::from(check_31(&values))]);
        let bad17 = String::from_utf8(body).unwrap_or_default();
        assert!(matches!(
            check(&bad17),
            Verdict::BadOrganisationCheck { .. }
        ));

        let mut a = Audit::new();
        for c in [&good, &good, &bad17, &bad18, "x"] {
            a.push(c).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(
            (
                a.total,
                a.valid,
                a.duplicate,
                a.bad_organisation_check,
                a.bad_check_character,
                a.malformed
            ),
            (5, 1, 1, 1, 1, 1)
        );
        assert_eq!(a.invalid_or_duplicate(), 4);
        assert_eq!(a.samples.len(), 4);
    }
}
