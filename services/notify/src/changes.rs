//! What the change feed says the notifier must score again: the (region, period) pairs changed
//! since the last scheduled pass, each with every region above it (a county's values count for
//! the city), or "everything" (at start, after the feed lagged or closed, or past the bound).
//!
//! A pair changed reaches the (region, period) scored when the regions are equal and the
//! changed period `reaches` the one scored (`Period::reaches`: a month counts for its quarter
//! and year, a LEVEL value carries forward up to 12 months), exactly as the scoring cache
//! follows the feed (`Change::reaches`).

use std::collections::BTreeSet;

use citycredit::aggregates::Change;
use citycredit_core::city::City;
use citycredit_core::period::Period;

/// Most (region, period) pairs remembered between two passes; one more and the next pass
/// scores everything (which costs no more than the pairs would).
pub const MAX_CHANGED_PAIRS: usize = 10_000;

/// The pairs to score again, or everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    everything: bool,
    /// (region, period as reported).
    pairs: BTreeSet<(String, String)>,
}

impl Changed {
    /// Anything may have changed: score every pair.
    pub fn everything() -> Changed {
        Changed {
            everything: true,
            pairs: BTreeSet::new(),
        }
    }

    pub fn is_everything(&self) -> bool {
        self.everything
    }

    /// Nothing to score again.
    pub fn is_empty(&self) -> bool {
        !self.everything && self.pairs.is_empty()
    }

    /// Records a change at its region and every region above it.
    pub fn record(&mut self, change: &Change, city: &City) {
        if self.everything {
            return;
        }
        if change.is_everything() {
            self.lost();
            return;
        }
        for region in city.ancestry(&change.region) {
            self.pairs
                .insert((region.to_owned(), change.period.clone()));
        }
        if self.pairs.len() > MAX_CHANGED_PAIRS {
            self.lost();
        }
    }

    /// Records (region, period) itself (a pair whose scoring failed, to try again).
    pub fn record_pair(&mut self, region: &str, period: &str) {
        if !self.everything {
            self.pairs.insert((region.to_owned(), period.to_owned()));
            if self.pairs.len() > MAX_CHANGED_PAIRS {
                self.lost();
            }
        }
    }

    /// Events were lost (the feed lagged or closed): everything may have changed.
    pub fn lost(&mut self) {
        *self = Changed::everything();
    }

    /// Adds another set (a pass that failed gives its set back).
    pub fn merge(&mut self, other: Changed) {
        if other.everything {
            self.lost();
            return;
        }
        for (region, period) in other.pairs {
            self.record_pair(&region, &period);
        }
    }

    /// Whether the figures of (region, period) may have changed.
    pub fn reaches(&self, region: &str, period: &str) -> bool {
        if self.everything {
            return true;
        }
        let asked = period.parse::<Period>();
        self.pairs
            .range((region.to_owned(), String::new())..)
            .take_while(|(r, _)| r == region)
            .any(|(_, changed)| match (changed.parse::<Period>(), &asked) {
                (Ok(c), Ok(a)) => c.reaches(a),
                _ => changed == period,
            })
    }

    /// Of `regions` × `periods`, the pairs this reaches, period by period.
    pub fn select(&self, regions: &[String], periods: &[String]) -> Vec<(String, String)> {
        periods
            .iter()
            .flat_map(|p| regions.iter().map(move |r| (r, p)))
            .filter(|(r, p)| self.reaches(r, p))
            .map(|(r, p)| (r.clone(), p.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use citycredit_core::catalog::Catalog;

    fn city() -> City {
        let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        City::builtin(&catalog).unwrap_or_else(|e| panic!("{e}"))
    }

    fn change(region: &str, period: &str) -> Change {
        Change {
            region: region.into(),
            period: period.into(),
            last_submission_id: 1,
            commit_micros: 0,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_county_change_rescores_the_county_and_the_city_only() {
        let city = city();
        let regions = strings(&["330800", "330802", "330803", "330881"]);
        let periods = strings(&["2025", "2026", "2026-Q1", "2026-Q2"]);
        let mut changed = Changed::default();
        assert!(
            changed.select(&regions, &periods).is_empty(),
            "nothing changed"
        );
        // The county's own event: the city is added here, whether or not the feed sent it.
        changed.record(&change("330802", "2026-Q1"), &city);
        let pairs = changed.select(&regions, &periods);
        let want: Vec<(String, String)> = [
            // 2026-Q1 counts for 2026, for itself, and carries forward into 2026-Q2 (LEVEL).
            ("330800", "2026"),
            ("330802", "2026"),
            ("330800", "2026-Q1"),
            ("330802", "2026-Q1"),
            ("330800", "2026-Q2"),
            ("330802", "2026-Q2"),
        ]
        .iter()
        .map(|(r, p)| ((*r).to_owned(), (*p).to_owned()))
        .collect();
        assert_eq!(pairs, want, "not 2025, not the other counties");
        // A city-level change reaches no county.
        let mut city_only = Changed::default();
        city_only.record(&change("330800", "2026"), &city);
        assert_eq!(
            city_only.select(&regions, &periods),
            vec![("330800".to_owned(), "2026".to_owned())]
        );
    }

    #[test]
    fn lost_events_and_the_bound_mean_everything() {
        let city = city();
        let regions = strings(&["330800", "330802"]);
        let periods = strings(&["2026"]);
        let mut c = Changed::default();
        c.record(&Change::everything(), &city);
        assert!(c.is_everything());
        assert_eq!(c.select(&regions, &periods).len(), 2);
        let mut c = Changed::default();
        for i in 0..=MAX_CHANGED_PAIRS {
            c.record_pair("330802", &format!("p{i}"));
        }
        assert!(c.is_everything(), "past the bound");
        let mut c = Changed::default();
        c.record_pair("330802", "2026");
        let mut back = Changed::default();
        back.merge(c);
        assert_eq!(
            back.select(&regions, &periods),
            vec![("330802".to_owned(), "2026".to_owned())]
        );
        back.lost();
        assert!(back.is_everything() && !back.is_empty());
    }
}
