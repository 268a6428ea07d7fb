//! Reporting periods: a year (`2026`), a quarter (`2026-Q3`) or a month (`2026-07`).

use std::fmt;
use std::str::FromStr;

/// How many months a LEVEL value carries forward (rulebook section 2, *Time*).
pub const CARRY_FORWARD_MONTHS: u32 = 12;

/// What a value is reported for. A value for one period can count for another: a month's value
/// for its quarter and year, a yearly LEVEL value for the months of the next year (see
/// `crate::rollup`).
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

    /// The first month of the period, counted in months since year 0 (January 2026 = 2026 * 12).
    pub fn start_month_index(&self) -> u32 {
        let y = u32::from(self.year()) * 12;
        match *self {
            Period::Year(_) => y,
            Period::Quarter(_, q) => y + (u32::from(q) - 1) * 3,
            Period::Month(_, m) => y + u32::from(m) - 1,
        }
    }

    /// The last month of the period, counted like `start_month_index`.
    pub fn end_month_index(&self) -> u32 {
        let y = u32::from(self.year()) * 12;
        match *self {
            Period::Year(_) => y + 11,
            Period::Quarter(_, q) => y + u32::from(q) * 3 - 1,
            Period::Month(_, m) => y + u32::from(m) - 1,
        }
    }

    /// Whether every month of `self` lies inside `outer` (a period is inside itself).
    pub fn is_inside(&self, outer: &Period) -> bool {
        outer.start_month_index() <= self.start_month_index()
            && self.end_month_index() <= outer.end_month_index()
    }

    /// The months of the period, in order.
    pub fn months(&self) -> Vec<Period> {
        (self.start_month_index()..=self.end_month_index())
            .map(|i| Period::Month((i / 12) as u16, (i % 12) as u8 + 1))
            .collect()
    }

    /// The quarters inside the period, in order (none for a month).
    pub fn quarters(&self) -> Vec<Period> {
        match *self {
            Period::Year(y) => (1..=4).map(|q| Period::Quarter(y, q)).collect(),
            Period::Quarter(..) => vec![*self],
            Period::Month(..) => Vec::new(),
        }
    }

    /// Whether a value for `self` may carry forward to `target` (rulebook v2, LEVEL): `self`
    /// ends no later than `target` ends and at most `months` months before it.
    pub fn ends_within(&self, target: &Period, months: u32) -> bool {
        let (end, target_end) = (self.end_month_index(), target.end_month_index());
        end <= target_end && target_end - end <= months
    }

    /// Whether a value reported for `self` can count for `target` at all: it is `target`, lies
    /// inside it (FLOW and LEVEL roll-ups), or carries forward to it (LEVEL). A change to a value
    /// for `self` can change the figures of exactly these targets.
    pub fn reaches(&self, target: &Period) -> bool {
        self.ends_within(target, CARRY_FORWARD_MONTHS)
    }

    /// Every period whose values can count for `self` (those that `reaches` it): the months,
    /// quarters and years that end no later than `self` ends and at most
    /// `CARRY_FORWARD_MONTHS` months before. At most 13 months, 5 quarters and 2 years.
    pub fn reached_by(&self) -> Vec<Period> {
        let end = self.end_month_index();
        let first = end.saturating_sub(CARRY_FORWARD_MONTHS);
        let month = |i: u32| ((i / 12) as u16, (i % 12) as u8 + 1);
        let mut out = Vec::new();
        for i in first..=end {
            let (y, m) = month(i);
            if !(1949..=2999).contains(&y) {
                continue;
            }
            out.push(Period::Month(y, m));
            if m % 3 == 0 {
                out.push(Period::Quarter(y, m / 3));
            }
            if m == 12 {
                out.push(Period::Year(y));
            }
        }
        out
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

    fn p(s: &str) -> Period {
        s.parse().unwrap()
    }

    #[test]
    fn sub_periods_ends_and_inside() {
        assert_eq!(p("2026").months().len(), 12);
        assert_eq!(
            p("2026-Q3").months(),
            [p("2026-07"), p("2026-08"), p("2026-09")]
        );
        assert_eq!(p("2026-05").months(), [p("2026-05")]);
        assert_eq!(
            p("2026").quarters(),
            [p("2026-Q1"), p("2026-Q2"), p("2026-Q3"), p("2026-Q4")]
        );
        assert!(p("2026-05").quarters().is_empty());
        assert!(p("2026-07").is_inside(&p("2026-Q3")));
        assert!(p("2026-Q3").is_inside(&p("2026")));
        assert!(p("2026").is_inside(&p("2026")));
        assert!(!p("2026-10").is_inside(&p("2026-Q3")));
        assert!(!p("2026").is_inside(&p("2026-Q3")));
        assert!(!p("2025-12").is_inside(&p("2026")));
        // A Q2 value and a June value end on the same month.
        assert_eq!(
            p("2026-Q2").end_month_index(),
            p("2026-06").end_month_index()
        );
        assert_eq!(
            p("2025").end_month_index() + 1,
            p("2026-01").start_month_index()
        );
    }

    #[test]
    fn carry_forward_window_is_twelve_months_up_to_the_targets_end() {
        assert!(p("2025").ends_within(&p("2026-05"), 12));
        assert!(p("2026-Q2").ends_within(&p("2026-06"), 12));
        assert!(p("2025-12").ends_within(&p("2026-12"), 12));
        assert!(!p("2025-11").ends_within(&p("2026-12"), 12));
        // A value for a period ending after the target never reaches it.
        assert!(!p("2026-Q2").ends_within(&p("2026-05"), 12));
        assert!(!p("2026").ends_within(&p("2026-Q3"), 12));
    }

    #[test]
    fn reached_by_lists_exactly_the_periods_that_reach() {
        for target in ["2026", "2026-Q2", "2026-05", "2026-12", "1949-01", "2999"] {
            let target = p(target);
            let listed = target.reached_by();
            // Every period of the years around the target, checked one by one.
            let y = target.year();
            let mut all = Vec::new();
            for year in y.saturating_sub(2).max(1949)..=(y + 1).min(2999) {
                all.push(Period::Year(year));
                all.extend(Period::Year(year).quarters());
                all.extend(Period::Year(year).months());
            }
            for q in all {
                assert_eq!(listed.contains(&q), q.reaches(&target), "{q} -> {target}");
            }
            assert!(listed.len() <= 20, "{target}: {}", listed.len());
        }
        assert!(p("2025").reaches(&p("2026-05")));
        assert!(p("2026-03").reaches(&p("2026")));
        assert!(!p("2026-06").reaches(&p("2026-05")));
        assert_eq!(p("2026").reached_by().len(), 13 + 5 + 2);
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
