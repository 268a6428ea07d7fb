//! Timeliness (issue 13, point 4), pure: when each expected figure of a cycle period is due,
//! whether its first value came on time, and the supervision office's (督考办, E11.4)
//! per-department assessment. The review service reads the first accept times and the review
//! events; everything decided here is a function of them and `now`.
//!
//! The due time of (department, metric, period P) in a cycle is, in order: the department's
//! deadline for P whose subject is the metric; the earliest of its deadlines for P whose subject
//! covers the metric (a task: the metrics its checks read); its whole-period deadline for P
//! (subject ""); else the end of P (Asia/Shanghai) plus the cycle's `on_time_days`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::catalog::Catalog;
use crate::numbers::{Num, Precision};
use crate::period::Period;

use super::{Cycle, DAY_MICROS, Deadline, SHANGHAI_OFFSET_MICROS, days_from_civil};

/// A figure's timeliness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timeliness {
    /// First accepted at or before the due time.
    OnTime,
    /// First accepted after the due time.
    Late,
    /// No value, and the due time has passed.
    MissingOverdue,
    /// No value yet, and the due time has not passed.
    NotYetDue,
}

impl Timeliness {
    pub fn as_str(self) -> &'static str {
        match self {
            Timeliness::OnTime => "ON_TIME",
            Timeliness::Late => "LATE",
            Timeliness::MissingOverdue => "MISSING_OVERDUE",
            Timeliness::NotYetDue => "NOT_YET_DUE",
        }
    }

    /// The state of a figure due at `due` whose first value was accepted at `first_accept`.
    pub fn of(due: i64, first_accept: Option<i64>, now: i64) -> Timeliness {
        match first_accept {
            Some(at) if at <= due => Timeliness::OnTime,
            Some(_) => Timeliness::Late,
            None if now > due => Timeliness::MissingOverdue,
            None => Timeliness::NotYetDue,
        }
    }
}

/// Where a due time comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DueBasis {
    /// A deadline whose subject is the metric.
    MetricDeadline,
    /// A deadline whose subject (task, indicator, item, section) covers the metric.
    SubjectDeadline,
    /// The department's whole-period deadline (subject "").
    DepartmentDeadline,
    /// No deadline: the period's end plus the cycle's on-time days.
    OnTimeDays,
}

/// A figure's due time and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub micros: i64,
    pub basis: DueBasis,
    /// The subject of the deadline that gives it ("" for a whole-period deadline or none).
    pub subject: String,
}

/// The last microsecond of a period (the end of its last day, Asia/Shanghai).
pub fn period_end_micros(p: &Period) -> i64 {
    let next = p.end_month_index() + 1;
    let (y, m) = (i64::from(next / 12), i64::from(next % 12) + 1);
    days_from_civil(y, m, 1) * DAY_MICROS - SHANGHAI_OFFSET_MICROS - 1
}

/// The periods whose values report `p`: `p` itself and the quarters and months inside it (a
/// value carried forward from an earlier period does not report it).
pub fn reporting_periods(p: &Period) -> Vec<Period> {
    let mut out: Vec<Period> = p
        .reached_by()
        .into_iter()
        .filter(|x| x.is_inside(p))
        .collect();
    if !out.contains(p) {
        out.push(*p);
    }
    out.sort();
    out.dedup();
    out
}

/// The metrics a deadline's subject covers: None for "" (everything the department reports);
/// a metric key itself; a task's checks' metrics; else an indicator's, item's or item
/// section's metrics.
pub fn subject_metrics<'a>(catalog: &'a Catalog, subject: &'a str) -> Option<BTreeSet<&'a str>> {
    if subject.is_empty() {
        return None;
    }
    if catalog.metric(subject).is_some() {
        return Some(BTreeSet::from([subject]));
    }
    if let Some(task) = catalog.task(subject) {
        return Some(
            task.checks
                .iter()
                .flat_map(|c| catalog.check_metrics(c))
                .collect(),
        );
    }
    Some(catalog.subject_metrics(subject).into_iter().collect())
}

/// The due time of `department`'s figure of `metric` for `period` in `cycle` (module comment).
pub fn due_for(
    cycle: &Cycle,
    catalog: &Catalog,
    department: &str,
    metric: &str,
    period: &Period,
) -> Due {
    let mine = deadlines_of(cycle, department, period);
    due_among(&mine, catalog, metric, period, cycle.on_time_days)
}

/// `department`'s deadlines for `period` in `cycle`.
pub fn deadlines_of<'c>(cycle: &'c Cycle, department: &str, period: &Period) -> Vec<&'c Deadline> {
    let text = period.to_string();
    cycle
        .deadlines
        .iter()
        .filter(|d| d.department == department && d.period == text)
        .collect()
}

/// The due time of a figure of `metric` for `period` among one department's deadlines for that
/// period (`deadlines_of`), else the period's end plus `on_time_days`.
pub fn due_among(
    deadlines: &[&Deadline],
    catalog: &Catalog,
    metric: &str,
    period: &Period,
    on_time_days: u32,
) -> Due {
    let mut best: Option<(u8, &Deadline)> = None;
    for d in deadlines {
        let rank = if d.subject == metric {
            0
        } else if d.subject.is_empty() {
            2
        } else if subject_metrics(catalog, &d.subject).is_some_and(|s| s.contains(metric)) {
            1
        } else {
            continue;
        };
        let better = match best {
            None => true,
            Some((r, b)) => rank < r || (rank == r && d.due_micros < b.due_micros),
        };
        if better {
            best = Some((rank, d));
        }
    }
    match best {
        Some((rank, d)) => Due {
            micros: d.due_micros,
            basis: match rank {
                0 => DueBasis::MetricDeadline,
                1 => DueBasis::SubjectDeadline,
                _ => DueBasis::DepartmentDeadline,
            },
            subject: d.subject.clone(),
        },
        None => Due {
            micros: period_end_micros(period)
                .saturating_add(i64::from(on_time_days).saturating_mul(DAY_MICROS)),
            basis: DueBasis::OnTimeDays,
            subject: String::new(),
        },
    }
}

/// One expected figure of a cycle period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Figure {
    pub department: String,
    pub metric: String,
    pub region: String,
    pub period: Period,
    pub due: Due,
    pub first_accept: Option<i64>,
    pub state: Timeliness,
}

/// Counts of figures by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub on_time: u32,
    pub late: u32,
    pub missing_overdue: u32,
    pub not_yet_due: u32,
}

impl Counts {
    pub fn add(&mut self, s: Timeliness) {
        let slot = match s {
            Timeliness::OnTime => &mut self.on_time,
            Timeliness::Late => &mut self.late,
            Timeliness::MissingOverdue => &mut self.missing_overdue,
            Timeliness::NotYetDue => &mut self.not_yet_due,
        };
        *slot = slot.saturating_add(1);
    }

    /// on time / (on time + late + missing overdue), exact, rounded like other rates; None when
    /// no figure is due yet.
    pub fn on_time_rate(&self) -> Option<String> {
        let due = u64::from(self.on_time) + u64::from(self.late) + u64::from(self.missing_overdue);
        (due > 0).then(|| {
            Num::ratio(
                i64::from(self.on_time),
                i64::try_from(due).unwrap_or(i64::MAX),
            )
            .rounded(Precision::Rate)
        })
    }
}

/// The figures of `department` for `period`: one per (metric, region) of `expected`, with the
/// first accept times `first` gives for (metric, region, reporting period).
pub fn figures(
    cycle: &Cycle,
    catalog: &Catalog,
    department: &str,
    expected: &[(&str, Vec<&str>)],
    period: &Period,
    first: &HashMap<(String, String, Period), i64>,
    now: i64,
) -> Vec<Figure> {
    let reporting = reporting_periods(period);
    let deadlines = deadlines_of(cycle, department, period);
    let mut out = Vec::new();
    for (metric, regions) in expected {
        let due = due_among(&deadlines, catalog, metric, period, cycle.on_time_days);
        for region in regions {
            let first_accept = reporting
                .iter()
                .filter_map(|p| first.get(&((*metric).to_owned(), (*region).to_owned(), *p)))
                .min()
                .copied();
            out.push(Figure {
                department: department.to_owned(),
                metric: (*metric).to_owned(),
                region: (*region).to_owned(),
                period: *period,
                state: Timeliness::of(due.micros, first_accept, now),
                due: due.clone(),
                first_accept,
            });
        }
    }
    out
}

/// One department's line in the supervision office's assessment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assessment {
    pub department: String,
    pub tasks_total: u32,
    pub tasks_done: u32,
    pub overdue: u32,
    pub figures: Counts,
    pub returns: u32,
}

/// The assessment of one department from its figures over the cycle's periods, its deadlines
/// in the cycle and its returns from review. A deadline (task) is done when every figure it
/// owes (the department's figures for its period that its subject covers) has a value; it is
/// overdue when past due and not done.
pub fn assess(
    catalog: &Catalog,
    department: &str,
    figures: &[Figure],
    deadlines: &[&Deadline],
    returns: u32,
    now: i64,
) -> Assessment {
    let mut a = Assessment {
        department: department.to_owned(),
        returns,
        ..Assessment::default()
    };
    for f in figures {
        a.figures.add(f.state);
    }
    let mut by_period: BTreeMap<String, Vec<&Figure>> = BTreeMap::new();
    for f in figures {
        by_period.entry(f.period.to_string()).or_default().push(f);
    }
    for d in deadlines {
        a.tasks_total = a.tasks_total.saturating_add(1);
        let covers = subject_metrics(catalog, &d.subject);
        let done = by_period
            .get(&d.period)
            .into_iter()
            .flatten()
            .filter(|f| {
                covers
                    .as_ref()
                    .is_none_or(|s| s.contains(f.metric.as_str()))
            })
            .all(|f| f.first_accept.is_some());
        if done {
            a.tasks_done = a.tasks_done.saturating_add(1);
        } else if now > d.due_micros {
            a.overdue = a.overdue.saturating_add(1);
        }
    }
    a
}

#[cfg(test)]
mod tests;
