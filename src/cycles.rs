//! The contract between the review cycle and scoring: the evaluation cycles as scoring needs
//! them (which cycle covers a scorecard's period, and the rule version it pins) and a
//! fingerprint of the sign-offs, so that scoring notices an approval or an unapproval. The
//! review crate implements [`CycleSource`] over the shared database (every process has it), so
//! scoring reads cycles in every mode, the services together or apart.

use citycredit_core::BoxFuture;
use citycredit_core::period::Period;
use citycredit_core::source::SourceError;

/// One evaluation cycle, as scoring reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CycleInfo {
    pub id: String,
    /// The rule (catalog) version the cycle pins.
    pub rule_version: String,
    /// The periods the cycle covers ("2026", "2026-Q1", ...).
    pub periods: Vec<String>,
    /// When the cycle was created, microseconds since the Unix epoch.
    pub create_micros: i64,
    /// The review date, YYYY-MM-DD (Asia/Shanghai).
    pub review_date: String,
}

/// The cycles and the sign-off fingerprint at one read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReviewSnapshot {
    pub cycles: Vec<CycleInfo>,
    /// Changes whenever a sign-off changes (approval, unapproval, submission, return): the
    /// number of sign-off transitions recorded, which only grows.
    pub signoff_revision: i64,
}

impl ReviewSnapshot {
    /// The cycle covering `period`: one of its periods is `period` or contains it. When several
    /// cycles do, the latest created wins (then the greatest id): a city that opens a new cycle
    /// over the same year means the new one.
    pub fn covering(&self, period: &str) -> Option<&CycleInfo> {
        let asked: Period = period.parse().ok()?;
        self.cycles
            .iter()
            .filter(|c| c.containing_period(&asked).is_some())
            .max_by(|a, b| (a.create_micros, a.id.as_str()).cmp(&(b.create_micros, b.id.as_str())))
    }
}

impl CycleInfo {
    /// The smallest of the cycle's periods that is `period` or contains it (the part a
    /// department signs off for figures of `period`).
    pub fn containing_period(&self, period: &Period) -> Option<Period> {
        self.periods
            .iter()
            .filter_map(|p| p.parse::<Period>().ok())
            .filter(|p| period.is_inside(p))
            .min_by_key(|p| (p.end_month_index() - p.start_month_index(), p.to_string()))
    }
}

/// Where scoring reads the review cycle's state.
pub trait CycleSource: Send + Sync + 'static {
    /// The cycles and the sign-off fingerprint now.
    fn snapshot(&self) -> BoxFuture<'_, Result<ReviewSnapshot, SourceError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(id: &str, periods: &[&str], created: i64) -> CycleInfo {
        CycleInfo {
            id: id.to_owned(),
            rule_version: format!("v-{id}"),
            periods: periods.iter().map(|p| (*p).to_owned()).collect(),
            create_micros: created,
            review_date: "2027-03-31".to_owned(),
        }
    }

    #[test]
    fn a_period_is_covered_by_a_cycle_period_equal_to_or_containing_it() {
        let s = ReviewSnapshot {
            cycles: vec![cycle("a", &["2026", "2026-Q1"], 1)],
            signoff_revision: 0,
        };
        for p in ["2026", "2026-Q1", "2026-03", "2026-Q4", "2026-12"] {
            assert_eq!(s.covering(p).map(|c| c.id.as_str()), Some("a"), "{p}");
        }
        for p in ["2025", "2027-01", "2025-Q4", "not-a-period"] {
            assert!(s.covering(p).is_none(), "{p}");
        }
    }

    #[test]
    fn the_latest_created_cycle_wins_then_the_greatest_id() {
        let s = ReviewSnapshot {
            cycles: vec![
                cycle("old", &["2026"], 1),
                cycle("new", &["2026-Q2"], 5),
                cycle("same-a", &["2025"], 3),
                cycle("same-b", &["2025"], 3),
            ],
            signoff_revision: 0,
        };
        assert_eq!(s.covering("2026-05").unwrap().id, "new");
        assert_eq!(s.covering("2026-01").unwrap().id, "old");
        assert_eq!(s.covering("2025-07").unwrap().id, "same-b");
    }

    #[test]
    fn the_containing_period_is_the_smallest() {
        let c = cycle("a", &["2026", "2026-Q1", "2026-Q2"], 1);
        let p = |s: &str| s.parse::<Period>().unwrap();
        assert_eq!(c.containing_period(&p("2026-02")), Some(p("2026-Q1")));
        assert_eq!(c.containing_period(&p("2026-08")), Some(p("2026")));
        assert_eq!(c.containing_period(&p("2026")), Some(p("2026")));
        assert_eq!(c.containing_period(&p("2027-01")), None);
    }
}
