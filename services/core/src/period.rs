//! Reporting periods: a year (`2026`), a quarter (`2026-Q3`) or a month (`2026-07`).

use std::fmt;
use std::str::FromStr;

/// What a value is reported for. Scorecards use values reported for exactly one period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    Year(u16),
    Quarter(u16, u8),
    Month(u16, u8),
}

/// Why a string is not a period.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a period: use YYYY, YYYY-Qn (n = 1..4) or YYYY-MM (01..12), year 1949..=2999"
)]
pub struct PeriodError(pub String);

impl Period {
    pub fn year(&self) -> u16 {
        match *self {
            Period::Year(y) | Period::Quarter(y, _) | Period::Month(y, _) => y,
        }
    }
}

impl FromStr for Period {
    type Err = PeriodError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PeriodError(s.chars().take(32).collect());
        let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        let (year_text, rest) = match s.split_once('-') {
            Some((y, r)) => (y, Some(r)),
            None => (s, None),
        };
        if year_text.len() != 4 || !digits(year_text) {
            return Err(err());
        }
        let year: u16 = year_text.parse().map_err(|_| err())?;
        if !(1949..=2999).contains(&year) {
            return Err(err());
        }
        match rest {
            None => Ok(Period::Year(year)),
            Some(r) if r.len() == 2 && r.starts_with('Q') => match r.as_bytes()[1] {
                q @ b'1'..=b'4' => Ok(Period::Quarter(year, q - b'0')),
                _ => Err(err()),
            },
            Some(r) if r.len() == 2 && digits(r) => {
                let month: u8 = r.parse().map_err(|_| err())?;
                if (1..=12).contains(&month) {
                    Ok(Period::Month(year, month))
                } else {
                    Err(err())
                }
            }
            Some(_) => Err(err()),
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Period::Year(y) => write!(f, "{y:04}"),
            Period::Quarter(y, q) => write!(f, "{y:04}-Q{q}"),
            Period::Month(y, m) => write!(f, "{y:04}-{m:02}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms_and_round_trips() {
        for ok in ["2026", "2026-Q1", "2026-Q4", "2026-01", "2026-12"] {
            assert_eq!(ok.parse::<Period>().unwrap().to_string(), ok);
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "26",
            "02026",
            "2026-13",
            "2026-00",
            "2026-Q5",
            "2026-Q0",
            "2026-q1",
            "2026-1",
            "2026-",
            "2026-Q",
            "2026-001",
            "１２３４",
            "2026 ",
            "1900",
            "+202",
        ] {
            assert!(bad.parse::<Period>().is_err(), "{bad:?} must be rejected");
        }
    }
}
