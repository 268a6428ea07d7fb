//! How values reported for other periods reach the period asked for (rulebook section 2,
//! *Time*): the choice for one value key (metric, region, department, domain, task), before
//! values aggregate across departments and regions.
//!
//! 1. The value reported for the period itself, if any.
//! 2. FLOW: the sum over the finest granularity reported inside the period (its months if any
//!    month was reported, else its quarters), naming the sub-periods not covered.
//! 3. LEVEL: the value of the period that ends last among those ending no later than the period
//!    and at most 12 months before it; on equal ends one inside the period before one that is
//!    not, then the later accepted submission. A value from a period not inside the one asked
//!    for is carried forward, naming where it came from.

use crate::catalog::TimeClass;
use crate::period::Period;

/// One current value of a key, for one period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub period: Period,
    /// When the submission was accepted, microseconds since the Unix epoch.
    pub accepted_micros: i64,
    /// The submission id (breaks ties between equal accept times).
    pub submission_id: i64,
}

/// Which candidates make the key's value for the period asked for (indexes into the slice
/// given to [`resolve`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// The value reported for the period itself.
    Own(usize),
    /// FLOW: the sum of these sub-period values. `missing` names the sub-periods of the same
    /// granularity that were not reported (empty when they cover the period).
    Sum {
        parts: Vec<usize>,
        missing: Vec<Period>,
    },
    /// LEVEL: the latest value; `carried_from` is its period when that is not inside the period
    /// asked for.
    Latest {
        index: usize,
        carried_from: Option<Period>,
    },
}

/// Chooses the value(s) of one key for `target`. Candidates for periods that cannot reach the
/// target are ignored; None when nothing reaches it.
pub fn resolve(target: &Period, class: TimeClass, candidates: &[Candidate]) -> Option<Reach> {
    if let Some(own) = latest_of(candidates, |c| c.period == *target) {
        return Some(Reach::Own(own));
    }
    match class {
        TimeClass::Flow => flow(target, candidates),
        TimeClass::Level => level(target, candidates),
    }
}

fn flow(target: &Period, candidates: &[Candidate]) -> Option<Reach> {
    let inside = |c: &Candidate| c.period != *target && c.period.is_inside(target);
    let months = |c: &Candidate| matches!(c.period, Period::Month(..));
    let quarters = |c: &Candidate| matches!(c.period, Period::Quarter(..));
    let (granularity, all): (Vec<usize>, Vec<Period>) =
        if candidates.iter().any(|c| inside(c) && months(c)) {
            (
                indexes(candidates, |c| inside(c) && months(c)),
                target.months(),
            )
        } else if candidates.iter().any(|c| inside(c) && quarters(c)) {
            (
                indexes(candidates, |c| inside(c) && quarters(c)),
                target.quarters(),
            )
        } else {
            return None;
        };
    // One value per sub-period: the latest accepted, should a caller pass several.
    let mut parts: Vec<usize> = Vec::new();
    for i in granularity {
        match parts
            .iter_mut()
            .find(|j| candidates[**j].period == candidates[i].period)
        {
            Some(j) if later(&candidates[i], &candidates[*j]) => *j = i,
            Some(_) => {}
            None => parts.push(i),
        }
    }
    parts.sort_by_key(|&i| candidates[i].period);
    let missing = all
        .into_iter()
        .filter(|p| !parts.iter().any(|&i| candidates[i].period == *p))
        .collect();
    Some(Reach::Sum { parts, missing })
}

fn level(target: &Period, candidates: &[Candidate]) -> Option<Reach> {
    let rank = |c: &Candidate| {
        (
            c.period.end_month_index(),
            c.period.is_inside(target),
            c.accepted_micros,
            c.submission_id,
        )
    };
    let index = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.period.reaches(target))
        .max_by_key(|(_, c)| rank(c))
        .map(|(i, _)| i)?;
    let period = candidates[index].period;
    Some(Reach::Latest {
        index,
        carried_from: (!period.is_inside(target)).then_some(period),
    })
}

fn indexes(candidates: &[Candidate], keep: impl Fn(&Candidate) -> bool) -> Vec<usize> {
    (0..candidates.len())
        .filter(|&i| keep(&candidates[i]))
        .collect()
}

fn latest_of(candidates: &[Candidate], keep: impl Fn(&Candidate) -> bool) -> Option<usize> {
    indexes(candidates, keep)
        .into_iter()
        .max_by_key(|&i| (candidates[i].accepted_micros, candidates[i].submission_id))
}

fn later(a: &Candidate, b: &Candidate) -> bool {
    (a.accepted_micros, a.submission_id) > (b.accepted_micros, b.submission_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Period {
        s.parse().unwrap()
    }

    fn c(period: &str, at: i64) -> Candidate {
        Candidate {
            period: p(period),
            accepted_micros: at,
            submission_id: at,
        }
    }

    fn periods(cs: &[Candidate], r: &Reach) -> Vec<String> {
        match r {
            Reach::Own(i) | Reach::Latest { index: i, .. } => vec![cs[*i].period.to_string()],
            Reach::Sum { parts, .. } => parts.iter().map(|&i| cs[i].period.to_string()).collect(),
        }
    }

    #[test]
    fn the_periods_own_value_comes_first_for_both_classes() {
        let cs = [c("2026-01", 1), c("2026", 2), c("2026-02", 3)];
        for class in [TimeClass::Flow, TimeClass::Level] {
            assert_eq!(resolve(&p("2026"), class, &cs), Some(Reach::Own(1)));
        }
    }

    #[test]
    fn flow_sums_twelve_months_into_the_year() {
        let cs: Vec<Candidate> = (1..=12).map(|m| c(&format!("2026-{m:02}"), m)).collect();
        let r = resolve(&p("2026"), TimeClass::Flow, &cs).unwrap();
        assert_eq!(
            r,
            Reach::Sum {
                parts: (0..12).collect(),
                missing: vec![]
            }
        );
    }

    #[test]
    fn flow_with_five_months_names_the_other_seven() {
        let cs: Vec<Candidate> = [1, 2, 3, 5, 8]
            .iter()
            .map(|m| c(&format!("2026-{m:02}"), *m))
            .collect();
        let Some(Reach::Sum { parts, missing }) = resolve(&p("2026"), TimeClass::Flow, &cs) else {
            panic!("a sum")
        };
        assert_eq!(parts.len(), 5);
        let missing: Vec<String> = missing.iter().map(ToString::to_string).collect();
        assert_eq!(
            missing,
            [
                "2026-04", "2026-06", "2026-07", "2026-09", "2026-10", "2026-11", "2026-12"
            ]
        );
    }

    #[test]
    fn flow_uses_months_over_quarters_and_quarters_when_no_month() {
        let cs = [c("2026-Q1", 1), c("2026-Q2", 2), c("2026-04", 3)];
        let r = resolve(&p("2026"), TimeClass::Flow, &cs).unwrap();
        assert_eq!(periods(&cs, &r), ["2026-04"]);
        let cs = [c("2026-Q1", 1), c("2026-Q3", 2), c("2025-Q4", 3)];
        let Some(Reach::Sum { parts, missing }) = resolve(&p("2026"), TimeClass::Flow, &cs) else {
            panic!("a sum")
        };
        assert_eq!(parts, [0, 1]);
        assert_eq!(missing, [p("2026-Q2"), p("2026-Q4")]);
        // A quarter asked for sums its months; nothing outside it counts.
        let cs = [c("2026-06", 1), c("2026-07", 2), c("2026", 3)];
        let r = resolve(&p("2026-Q3"), TimeClass::Flow, &cs).unwrap();
        assert_eq!(periods(&cs, &r), ["2026-07"]);
    }

    #[test]
    fn flow_never_carries_forward() {
        let cs = [c("2025", 1), c("2025-12", 2), c("2026-Q2", 3)];
        assert_eq!(resolve(&p("2026-05"), TimeClass::Flow, &cs), None);
        assert_eq!(resolve(&p("2026-Q1"), TimeClass::Flow, &cs), None);
    }

    #[test]
    fn level_carries_a_yearly_value_forward_for_twelve_months() {
        let cs = [c("2025", 1)];
        assert_eq!(
            resolve(&p("2026-05"), TimeClass::Level, &cs),
            Some(Reach::Latest {
                index: 0,
                carried_from: Some(p("2025"))
            })
        );
        assert!(resolve(&p("2026-12"), TimeClass::Level, &cs).is_some());
        assert_eq!(resolve(&p("2027-01"), TimeClass::Level, &cs), None);
        // A value for a period ending after the one asked never reaches it.
        assert_eq!(
            resolve(&p("2026-05"), TimeClass::Level, &[c("2026-Q2", 1)]),
            None
        );
    }

    #[test]
    fn level_takes_the_latest_end_then_inside_then_later_accepted() {
        // A Q2 value reaches June: both end on 30 June.
        assert_eq!(
            resolve(&p("2026-06"), TimeClass::Level, &[c("2026-Q2", 9)]),
            Some(Reach::Latest {
                index: 0,
                carried_from: Some(p("2026-Q2"))
            })
        );
        // Equal ends: December (inside Q4) before the year (not inside), though the year was
        // accepted later.
        let cs = [c("2026", 9), c("2026-12", 1)];
        assert_eq!(
            resolve(&p("2026-Q4"), TimeClass::Level, &cs),
            Some(Reach::Latest {
                index: 1,
                carried_from: None
            })
        );
        let cs = [c("2026-Q4", 9), c("2026", 1)];
        assert_eq!(
            resolve(&p("2026-12"), TimeClass::Level, &cs),
            Some(Reach::Latest {
                index: 0,
                carried_from: Some(p("2026-Q4"))
            }),
            "equal ends, neither inside: the later accepted"
        );
        // Months of a year: the last month reported counts, inside the year: no marker.
        let cs = [c("2026-03", 5), c("2026-05", 1), c("2025", 9)];
        assert_eq!(
            resolve(&p("2026"), TimeClass::Level, &cs),
            Some(Reach::Latest {
                index: 1,
                carried_from: None
            })
        );
        // Equal ends inside the year: the later accepted of December and Q4.
        let cs = [c("2026-12", 1), c("2026-Q4", 2)];
        assert_eq!(
            resolve(&p("2026"), TimeClass::Level, &cs),
            Some(Reach::Latest {
                index: 1,
                carried_from: None
            })
        );
    }
}
