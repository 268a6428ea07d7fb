//! Period and decimal parsing on arbitrary text: never panics; what parses is canonical and
//! round-trips; errors stay short whatever the input.
#![no_main]

use citycredit_core::numbers::{Num, NumError};
use citycredit_core::period::Period;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match s.parse::<Period>() {
        Ok(p) => {
            // The parser is strict: only canonical text parses.
            assert_eq!(p.to_string(), s);
            assert_eq!(p.to_string().parse::<Period>(), Ok(p));
            assert!((1949..=2999).contains(&p.year()));
        }
        Err(e) => assert!(e.0.chars().count() <= 32),
    }
    match Num::parse_decimal(s) {
        Ok(n) => {
            // The canonical form parses back to the same number when it is exact (at most 12
            // fraction digits, as validation guarantees); beyond that it is rounded to 12 by
            // design (first run: "-52.6823668333326" -> "-52.682366833333").
            let plain = n.to_plain();
            if Num::fraction_digits(s) <= 12 {
                assert_eq!(
                    Num::parse_decimal(&plain).ok(),
                    Some(n.clone()),
                    "{s:?} -> {plain}"
                );
            } else {
                assert!(Num::fraction_digits(&plain) <= 12, "{s:?} -> {plain}");
            }
            assert!(Num::fraction_digits(s) <= 40);
        }
        Err(NumError::Syntax(t) | NumError::TooLong(t)) => assert!(t.chars().count() <= 64),
        Err(NumError::Empty) => assert!(s.is_empty()),
    }
    let _ = s.parse::<Num>();
});
