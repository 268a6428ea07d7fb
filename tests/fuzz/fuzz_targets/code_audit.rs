//! The GB 32100 code checks and the audit's bookkeeping on arbitrary text: never panics, every
//! code lands in exactly one bucket, a valid code's body completes back to it, samples are
//! bounded.
#![no_main]

use citycredit_ingestion::code_audit::{Audit, MAX_SAMPLES, Verdict, check, complete};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut audit = Audit::new();
    for code in text.split('\n') {
        if let Verdict::Valid(_) = check(code) {
            // A valid code is 18 ASCII characters; completing its first 16 gives it back.
            assert_eq!(complete(&code[..16]).as_deref(), Some(code));
        }
        if code.len() == 16 {
            if let Some(full) = complete(code) {
                assert!(matches!(check(&full), Verdict::Valid(_)), "{full}");
            }
        }
        audit.push(code).expect("far below the distinct-code limit");
    }
    let buckets = audit.valid
        + audit.malformed
        + audit.bad_check_character
        + audit.bad_organisation_check
        + audit.duplicate;
    assert_eq!(buckets, audit.total);
    assert!(audit.samples.len() <= MAX_SAMPLES);
    assert!(audit.samples.iter().all(|p| p.code.chars().count() <= 64));
});
