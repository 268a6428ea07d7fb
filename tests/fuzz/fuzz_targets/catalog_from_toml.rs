//! The catalog loader on arbitrary text: a file is either loaded whole or refused with problems
//! that each name a line inside the file; never a panic.
#![no_main]

use citycredit_core::catalog::Catalog;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count().max(1);
    match Catalog::from_toml(text, "fuzz.toml") {
        Ok(c) => {
            for m in &c.metrics {
                assert!(c.metric(&m.key).is_some());
            }
        }
        Err(e) => {
            assert!(!e.problems.is_empty());
            for p in &e.problems {
                if let Some(line) = p.line {
                    assert!(line <= lines + 1, "line {line} of {lines}: {p:?}");
                }
            }
        }
    }
});
