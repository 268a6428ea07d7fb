//! Exact numbers: every value and score is a big rational; decimals are parsed exactly and
//! rounded (half-up) only when written out. Where: [`Num::rounded`] with one of the platform's
//! [`Precision`]s is the one rounding of scores, ratios and rates, wherever they are written
//! (the wire, gap texts, the command line); [`Num::to_plain`] writes inputs and thresholds
//! exactly, rounding only a value with more than 12 fraction digits.

use std::fmt;
use std::str::FromStr;

use num_bigint::BigInt;
use num_integer::Integer;
use num_rational::BigRational;
use num_traits::{One, Signed, ToPrimitive, Zero};
use serde::{Deserialize, Deserializer};

/// An exact rational number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Num(pub BigRational);

/// Why a string is not an acceptable decimal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumError {
    #[error("empty number")]
    Empty,
    #[error("`{0}` is not a decimal number (digits, an optional '.', optional leading '-')")]
    Syntax(String),
    #[error("`{0}` has too many digits (at most 40)")]
    TooLong(String),
}

/// Most characters of the offending text an error quotes.
const MAX_QUOTED_CHARS: usize = 48;

/// The offending text as an error quotes it: at most `MAX_QUOTED_CHARS` characters.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        None => s.to_owned(),
        Some((end, _)) => format!("{}…", &s[..end]),
    }
}

/// Longest accepted decimal string; far beyond any real figure, small enough to keep hostile
/// input from costing big-integer time.
const MAX_DIGITS: usize = 40;

/// How many fraction digits a computed number is written out with, by what it is. The one
/// place these precisions are decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Scores, point totals and score differences: 2 digits ("43.50").
    Score,
    /// Rates of a population (reporting rates): 4 digits ("0.6667").
    Rate,
    /// Ratios an indicator compares with its threshold: 6 digits ("0.000123").
    Ratio,
}

impl Precision {
    /// The number of fraction digits.
    pub const fn digits(self) -> u32 {
        match self {
            Precision::Score => 2,
            Precision::Rate => 4,
            Precision::Ratio => 6,
        }
    }
}

impl Num {
    pub fn zero() -> Self {
        Num(BigRational::zero())
    }

    pub fn one() -> Self {
        Num(BigRational::one())
    }

    pub fn from_int(v: i64) -> Self {
        Num(BigRational::from_integer(BigInt::from(v)))
    }

    pub fn ratio(numer: i64, denom: i64) -> Self {
        Num(BigRational::new(BigInt::from(numer), BigInt::from(denom)))
    }

    /// Parses a plain decimal ("12", "0.5", "-3.25"). No exponents, no signs other than a
    /// leading '-', no whitespace.
    pub fn parse_decimal(s: &str) -> Result<Self, NumError> {
        if s.is_empty() {
            return Err(NumError::Empty);
        }
        let (neg, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int_part, frac_part) = match body.split_once('.') {
            Some((i, f)) => (i, f),
            None => (body, ""),
        };
        let syntax_ok = !int_part.is_empty()
            && int_part.bytes().all(|b| b.is_ascii_digit())
            && frac_part.bytes().all(|b| b.is_ascii_digit())
            && !(body.contains('.') && frac_part.is_empty());
        if !syntax_ok {
            return Err(NumError::Syntax(quoted(s)));
        }
        if int_part.len() + frac_part.len() > MAX_DIGITS {
            return Err(NumError::TooLong(quoted(s)));
        }
        let digits: BigInt = format!("{int_part}{frac_part}")
            .parse()
            .map_err(|_| NumError::Syntax(quoted(s)))?;
        let scale = BigInt::from(10u32).pow(u32::try_from(frac_part.len()).unwrap_or(0));
        let mut value = BigRational::new(digits, scale);
        if neg {
            value = -value;
        }
        Ok(Num(value))
    }

    /// Number of fraction digits a decimal string was written with.
    pub fn fraction_digits(s: &str) -> usize {
        s.split_once('.').map_or(0, |(_, f)| f.len())
    }

    pub fn is_integer(&self) -> bool {
        self.0.is_integer()
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }

    pub fn is_negative(&self) -> bool {
        self.0.is_negative()
    }

    pub fn min(self, other: Num) -> Num {
        if self <= other { self } else { other }
    }

    pub fn max(self, other: Num) -> Num {
        if self >= other { self } else { other }
    }

    /// The largest integer not above the value.
    pub fn floor(&self) -> Num {
        Num(self.0.floor())
    }

    /// The smallest integer not below the value.
    pub fn ceil(&self) -> Num {
        Num(self.0.ceil())
    }

    /// The smallest multiple of 10^-digits not below the value.
    pub fn ceil_to(&self, digits: u32) -> Num {
        let scale = BigRational::from_integer(BigInt::from(10u32).pow(digits));
        Num((&self.0 * &scale).ceil() / scale)
    }

    /// The largest multiple of 10^-digits not above the value.
    pub fn floor_to(&self, digits: u32) -> Num {
        let scale = BigRational::from_integer(BigInt::from(10u32).pow(digits));
        Num((&self.0 * &scale).floor() / scale)
    }

    /// The value rounded half away from zero (half-up for the non-negative scores) to the
    /// digits of `precision`, written with exactly that many digits: the platform's one
    /// rounding of computed numbers.
    pub fn rounded(&self, precision: Precision) -> String {
        self.to_fixed(precision.digits())
    }

    /// The value rounded half away from zero ("half-up" for the non-negative scores) to
    /// `digits` fraction digits, written with exactly that many digits. Computed numbers are
    /// written with [`Num::rounded`]; this is its arithmetic.
    pub fn to_fixed(&self, digits: u32) -> String {
        // In integers, without rational arithmetic (each rational operation reduces by a gcd):
        // |n/d| rounded half away from zero at `digits` is floor((2 |n| 10^digits + d) / 2d).
        let (n, d) = (self.0.numer(), self.0.denom());
        let scale = BigInt::from(10u32).pow(digits);
        let rounded = if d.is_one() {
            n.abs() * &scale
        } else {
            let two_d: BigInt = d * 2;
            let twice: BigInt = n.abs() * &scale * 2 + d;
            twice.div_floor(&two_d)
        };
        let sign = if n.is_negative() && !rounded.is_zero() {
            "-"
        } else {
            ""
        };
        let (int_part, frac_part) = rounded.div_mod_floor(&scale);
        if digits == 0 {
            return format!("{sign}{int_part}");
        }
        let frac = format!("{frac_part:0>width$}", width = digits as usize);
        format!("{sign}{int_part}.{frac}")
    }

    /// The shortest exact decimal form when the value has a finite decimal expansion of at most
    /// 12 fraction digits ("43089", "0.5", "1234567.89"); otherwise 12 digits, rounded.
    pub fn to_plain(&self) -> String {
        if self.0.is_integer() {
            return self.0.numer().to_string();
        }
        // The ratio is kept reduced: n/d has a decimal expansion of k digits exactly when
        // d = 2^a 5^b, and k = max(a, b).
        let mut d = self.0.denom().magnitude().clone();
        let twos = d.trailing_zeros().unwrap_or(0);
        if twos <= 12 {
            d >>= twos;
            let five = num_bigint::BigUint::from(5u32);
            let mut fives = 0u64;
            while fives <= 12 && (&d % &five).is_zero() {
                d /= &five;
                fives += 1;
            }
            if d.is_one() && fives <= 12 {
                return self.to_fixed(u32::try_from(twos.max(fives)).unwrap_or(12));
            }
        }
        self.to_fixed(12)
    }

    /// The value as an integer, if it is one that fits in `u64`.
    pub fn to_u64(&self) -> Option<u64> {
        if self.0.is_integer() {
            self.0.to_integer().to_u64()
        } else {
            None
        }
    }
}

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_plain())
    }
}

impl FromStr for Num {
    type Err = NumError;

    /// Accepts a decimal ("0.8") or a fraction of two integers ("1/40"), for catalog constants.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((n, d)) => {
                let n = Num::parse_decimal(n.trim())?;
                let d = Num::parse_decimal(d.trim())?;
                if d.is_zero() {
                    return Err(NumError::Syntax(quoted(s)));
                }
                Ok(Num(n.0 / d.0))
            }
            None => Num::parse_decimal(s.trim()),
        }
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Int(v) => Ok(Num::from_int(v)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

macro_rules! num_op {
    ($trait:ident, $method:ident) => {
        impl std::ops::$trait<&Num> for &Num {
            type Output = Num;
            fn $method(self, rhs: &Num) -> Num {
                Num(std::ops::$trait::$method(&self.0, &rhs.0))
            }
        }
        impl std::ops::$trait<Num> for Num {
            type Output = Num;
            fn $method(self, rhs: Num) -> Num {
                Num(std::ops::$trait::$method(self.0, rhs.0))
            }
        }
    };
}
num_op!(Add, add);
num_op!(Sub, sub);
num_op!(Mul, mul);
num_op!(Div, div);

impl std::iter::Sum for Num {
    fn sum<I: Iterator<Item = Num>>(iter: I) -> Num {
        iter.fold(Num::zero(), |acc, x| acc + x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The written forms as they were computed before (rational arithmetic throughout), for
    /// comparison with the integer arithmetic that replaced it.
    fn to_fixed_before(x: &Num, digits: u32) -> String {
        let scale = BigInt::from(10u32).pow(digits);
        let scaled = &x.0 * BigRational::from_integer(scale.clone());
        let half = BigRational::new(BigInt::one(), BigInt::from(2));
        let rounded: BigInt = if scaled.is_negative() {
            -((-scaled) + half).floor().to_integer()
        } else {
            (scaled + half).floor().to_integer()
        };
        let neg = rounded.is_negative();
        let (int_part, frac_part) = rounded.abs().div_mod_floor(&scale);
        let sign = if neg { "-" } else { "" };
        if digits == 0 {
            return format!("{sign}{int_part}");
        }
        let frac = format!("{frac_part:0>width$}", width = digits as usize);
        format!("{sign}{int_part}.{frac}")
    }

    fn to_plain_before(x: &Num) -> String {
        for digits in 0..=12u32 {
            let scale = BigRational::from_integer(BigInt::from(10u32).pow(digits));
            if (&x.0 * &scale).is_integer() {
                return to_fixed_before(x, digits);
            }
        }
        to_fixed_before(x, 12)
    }

    #[test]
    fn written_forms_are_those_of_rational_arithmetic() {
        let mut denominators: Vec<i64> = (1..=64).collect();
        denominators.extend([
            1024,
            3125,
            4096,
            78_125,
            244_140_625,
            4_096_000_000_000,
            8_192_000_000_000,
            999_999,
        ]);
        let mut checked = 0;
        for d in denominators {
            for n in (-130..=130).chain([1_000_003, -999_999_999_999, 123_456_789_012_345]) {
                let x = Num::ratio(n, d);
                assert_eq!(x.to_plain(), to_plain_before(&x), "{n}/{d}");
                for digits in [0, 1, 2, 6, 12] {
                    assert_eq!(
                        x.to_fixed(digits),
                        to_fixed_before(&x, digits),
                        "{n}/{d} at {digits}"
                    );
                }
                checked += 1;
            }
        }
        assert!(checked > 18_000);
    }

    #[test]
    fn parses_decimals_exactly() {
        assert_eq!(Num::parse_decimal("0.1").unwrap(), Num::ratio(1, 10));
        assert_eq!(
            Num::parse_decimal("16833327609.54").unwrap().to_plain(),
            "16833327609.54"
        );
        assert_eq!("1/40".parse::<Num>().unwrap(), Num::ratio(1, 40));
        for bad in [
            "", "1.", ".5", "1e3", "NaN", "+1", "1,000", " 1", "0x10", "1..2", "--1",
        ] {
            assert!(Num::parse_decimal(bad).is_err(), "{bad:?} must be rejected");
        }
        assert!(matches!(
            Num::parse_decimal(&"9".repeat(41)),
            Err(NumError::TooLong(_))
        ));
    }

    #[test]
    fn errors_quote_at_most_48_characters() {
        // Regression (fuzz target `period`, bad-input catalogue): a 1 MB string was quoted whole.
        for bad in ["x".repeat(1 << 20), "9".repeat(1 << 20), "é".repeat(100)] {
            match Num::parse_decimal(&bad) {
                Err(NumError::Syntax(t) | NumError::TooLong(t)) => {
                    assert_eq!(t.chars().count(), MAX_QUOTED_CHARS + 1)
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn rounds_half_up_only_on_output() {
        assert_eq!(Num::ratio(1, 8).to_fixed(2), "0.13");
        assert_eq!(Num::ratio(1, 200).to_fixed(2), "0.01");
        assert_eq!(Num::ratio(1, 3).to_fixed(6), "0.333333");
        assert_eq!(Num::ratio(2, 3).to_fixed(6), "0.666667");
        assert_eq!(Num::from_int(4).to_fixed(2), "4.00");
        assert_eq!(Num::ratio(-1, 200).to_fixed(2), "-0.01");
        assert_eq!(Num::zero().to_fixed(2), "0.00");
    }

    #[test]
    fn ceil_and_floor_to_digits() {
        assert_eq!(Num::ratio(1, 3).ceil_to(2).to_plain(), "0.34");
        assert_eq!(Num::ratio(1, 3).floor_to(2).to_plain(), "0.33");
        assert_eq!(Num::from_int(5).ceil_to(2).to_plain(), "5");
    }
}
