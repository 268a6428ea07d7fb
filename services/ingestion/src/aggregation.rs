//! Aggregation for scoring (rulebook section 2), from the versions valid at one instant:
//! COUNT and AMOUNT add up over departments and the region's subtree; BOOL is true when any
//! value is; RANK and SCORE take the latest value at the region itself; DOMAIN_FLAG is the set
//! of domains flagged true anywhere below (each (department, region, domain) key counts with its
//! own current value, so a false flag removes nothing another key flagged true); TASK_STATUS
//! takes the latest value per task at the region itself. A metric whose scope is the region
//! itself (`scope = "region"` in the catalog: G13's units) takes only the values reported at
//! the region, not those of the regions below it.
//!
//! Before that, each value key (metric, region, department, domain, task) gets its value for the
//! period asked for from the values reported for it and for the periods that reach it
//! (`citycredit_core::rollup`: its own value, else a FLOW sum of sub-periods, else a LEVEL value
//! carried forward), and keys whose value came by a partial sum or from an earlier period are
//! marked on the figure they feed.
//!
//! Each value is looked up among the APPROVED sign-off parts ([`Approvals`], the write gate's
//! reach): its source says which part covers it, and approved-only figures
//! ([`Selection::Approved`]) drop every value that no approved part covers before anything is
//! rolled up or added.

use std::collections::{BTreeMap, BTreeSet};

use citycredit::aggregates::{Aggregates, MarkerKind, PeriodMarker, Selection, SourceRef};
use citycredit_core::catalog::{AggregationScope, Catalog, MetricKind, TimeClass};
use citycredit_core::numbers::Num;
use citycredit_core::period::Period;
use citycredit_core::rollup::{self, Candidate, Reach};
use citycredit_core::rules::{TaskStatus, Values};

use crate::gate::Approvals;
use crate::store::VersionRow;
use crate::validation::wire_value;

/// A value key without its period.
type Key = (String, String, String, String);

fn key_of(r: &VersionRow) -> Key {
    (
        r.region.clone(),
        r.department.clone(),
        r.domain.clone(),
        r.task_id.clone(),
    )
}

/// Each key's value(s) for `period` among one metric's `rows` (versions for every period that
/// reaches it), with a marker for each key whose values came by a partial sum or from an
/// earlier period.
fn roll_up(
    period: &Period,
    class: TimeClass,
    rows: Vec<VersionRow>,
) -> (Vec<VersionRow>, BTreeMap<Key, PeriodMarker>) {
    let mut by_key: BTreeMap<Key, Vec<(Period, VersionRow)>> = BTreeMap::new();
    for r in rows {
        // Stored periods were validated at entry; one that no longer parses cannot reach.
        if let Ok(p) = r.period.parse::<Period>() {
            by_key.entry(key_of(&r)).or_default().push((p, r));
        }
    }
    let mut out = Vec::new();
    let mut markers = BTreeMap::new();
    for (key, versions) in by_key {
        let candidates: Vec<Candidate> = versions
            .iter()
            .map(|(p, r)| Candidate {
                period: *p,
                accepted_micros: r.accepted_micros,
                submission_id: r.submission_id,
            })
            .collect();
        let Some(reach) = rollup::resolve(period, class, &candidates) else {
            continue;
        };
        let marker = |kind: MarkerKind, periods: Vec<String>| PeriodMarker {
            kind,
            department: key.1.clone(),
            region: key.0.clone(),
            domain: key.2.clone(),
            task_id: key.3.clone(),
            periods,
        };
        let mut slots: Vec<Option<VersionRow>> =
            versions.into_iter().map(|(_, r)| Some(r)).collect();
        let mut take = |i: usize| slots[i].take();
        match reach {
            Reach::Own(i) => out.extend(take(i)),
            Reach::Sum { parts, missing } => {
                if !missing.is_empty() {
                    let missing = missing.iter().map(ToString::to_string).collect();
                    markers.insert(key.clone(), marker(MarkerKind::PartialPeriod, missing));
                }
                for i in parts {
                    out.extend(take(i));
                }
            }
            Reach::Latest {
                index,
                carried_from,
            } => {
                if let Some(from) = carried_from {
                    let from = vec![from.to_string()];
                    markers.insert(key.clone(), marker(MarkerKind::CarriedForward, from));
                }
                out.extend(take(index));
            }
        }
    }
    (out, markers)
}

/// The approved part covering a stored value, as its period's text.
fn approved_period(approvals: &Approvals, class: TimeClass, r: &VersionRow) -> Option<String> {
    let period = r.period.parse::<Period>().ok()?;
    approvals
        .covering(&r.department, &r.region, &period, class)
        .map(|p| p.to_string())
}

/// Aggregates `rows` (versions at `region` and below, for every period that reaches `period`,
/// as of one instant), from the values `selection` names among them.
pub fn aggregate(
    catalog: &Catalog,
    region: &str,
    period: &Period,
    as_of_micros: i64,
    rows: Vec<VersionRow>,
    approvals: &Approvals,
    selection: Selection,
) -> Aggregates {
    let mut by_metric: BTreeMap<String, Vec<VersionRow>> = BTreeMap::new();
    for r in rows {
        by_metric.entry(r.metric.clone()).or_default().push(r);
    }
    let mut values = Values::new();
    let mut sources: BTreeMap<String, Vec<SourceRef>> = BTreeMap::new();
    let mut markers: BTreeMap<String, Vec<PeriodMarker>> = BTreeMap::new();
    for (metric, mut rows) in by_metric {
        let Some(m) = catalog.metric(&metric) else {
            continue; // a metric the current catalog no longer has
        };
        if m.scope() == AggregationScope::Region {
            rows.retain(|r| r.region == region);
        }
        if selection == Selection::Approved {
            rows.retain(|r| approved_period(approvals, m.time, r).is_some());
        }
        let (mut rows, key_markers) = roll_up(period, m.time, rows);
        if rows.is_empty() {
            // Nothing reaches the period (or nothing at the region itself for a metric of the
            // region's own scope): not reported, rather than a sum of zero.
            continue;
        }
        // Latest first: accept time, then id.
        rows.sort_by_key(|r| std::cmp::Reverse((r.accepted_micros, r.submission_id)));
        let used: Vec<&VersionRow> = match m.kind {
            MetricKind::Count | MetricKind::Amount => {
                let mut sum = Num::zero();
                let mut used = Vec::new();
                for r in &rows {
                    if let Ok(n) = Num::parse_decimal(&r.value) {
                        sum = Num(sum.0 + n.0);
                        used.push(r);
                    }
                }
                values.set_number(metric.clone(), sum);
                used
            }
            MetricKind::Bool => {
                values.set_flag(metric.clone(), rows.iter().any(|r| r.value == "true"));
                rows.iter().collect()
            }
            MetricKind::Rank | MetricKind::Score => {
                match rows.iter().find(|r| r.region == region) {
                    Some(r) => match Num::parse_decimal(&r.value) {
                        Ok(n) => {
                            values.set_number(metric.clone(), n);
                            vec![r]
                        }
                        Err(_) => Vec::new(),
                    },
                    None => Vec::new(),
                }
            }
            MetricKind::DomainFlag => {
                let domains: BTreeSet<String> = rows
                    .iter()
                    .filter(|r| r.value == "true")
                    .map(|r| r.domain.clone())
                    .collect();
                values.set_domains(metric.clone(), domains);
                rows.iter().collect()
            }
            MetricKind::TaskStatus => {
                let mut seen = BTreeSet::new();
                let mut used = Vec::new();
                for r in rows.iter().filter(|r| r.region == region) {
                    if seen.insert(r.task_id.clone()) {
                        let s = match r.value.as_str() {
                            "DONE" => TaskStatus::Done,
                            "IN_PROGRESS" => TaskStatus::InProgress,
                            _ => TaskStatus::NotStarted,
                        };
                        values.set_task(&metric, r.task_id.clone(), s);
                        used.push(r);
                    }
                }
                used
            }
        };
        if used.is_empty() {
            continue;
        }
        let marked: BTreeSet<Key> = used.iter().map(|r| key_of(r)).collect();
        let used_markers: Vec<PeriodMarker> = key_markers
            .into_iter()
            .filter(|(k, _)| marked.contains(k))
            .map(|(_, m)| m)
            .collect();
        if !used_markers.is_empty() {
            markers.insert(metric.clone(), used_markers);
        }
        let mut refs: Vec<SourceRef> = used
            .into_iter()
            .map(|r| SourceRef {
                submission_id: u64::try_from(r.submission_id).unwrap_or(0),
                department: r.department.clone(),
                region: r.region.clone(),
                domain: r.domain.clone(),
                task_id: r.task_id.clone(),
                period: r.period.clone(),
                value: wire_value(Some(m.kind), &r.value).unwrap_or_default(),
                accept_micros: r.accepted_micros,
                approved_period: approved_period(approvals, m.time, r),
            })
            .collect();
        refs.sort_by_key(|s| s.submission_id);
        sources.insert(metric, refs);
    }
    Aggregates {
        region: region.to_owned(),
        period: period.to_string(),
        as_of_micros,
        values,
        sources,
        markers,
        approved_only: selection == Selection::Approved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, metric: &str, department: &str, period: &str, value: &str) -> VersionRow {
        VersionRow {
            submission_id: id,
            metric: metric.into(),
            region: "330800".into(),
            period: period.into(),
            department: department.into(),
            domain: String::new(),
            task_id: String::new(),
            value: value.into(),
            accepted_micros: id,
        }
    }

    fn figures(selection: Selection) -> Aggregates {
        let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        let approvals = Approvals::new([("samr".into(), "330800".into(), "2026".into())]);
        let rows = vec![
            row(1, "uscc.codes_total", "samr", "2026", "100"),
            row(2, "uscc.codes_total", "civil-affairs", "2026", "50"),
            row(3, "uscc.codes_total", "", "2026", "7"),
            // FLOW months: samr's are covered by its approved year.
            row(4, "double_publicity.licenses_total", "samr", "2026-01", "3"),
            row(5, "double_publicity.licenses_total", "tax", "2026-02", "4"),
        ];
        let period: Period = "2026".parse().unwrap_or_else(|e| panic!("{e:?}"));
        aggregate(&catalog, "330800", &period, 9, rows, &approvals, selection)
    }

    fn number(a: &Aggregates, metric: &str) -> Option<String> {
        match a.values.get(metric) {
            Some(citycredit_core::rules::Figure::Number(n)) => Some(n.to_plain()),
            _ => None,
        }
    }

    #[test]
    fn every_value_counts_and_each_source_names_its_approved_part() {
        let a = figures(Selection::All);
        assert!(!a.approved_only);
        assert_eq!(number(&a, "uscc.codes_total").as_deref(), Some("157"));
        assert_eq!(
            number(&a, "double_publicity.licenses_total").as_deref(),
            Some("7")
        );
        let approved: Vec<(u64, Option<&str>)> = a.sources["uscc.codes_total"]
            .iter()
            .map(|s| (s.submission_id, s.approved_period.as_deref()))
            .collect();
        assert_eq!(approved, [(1, Some("2026")), (2, None), (3, None)]);
    }

    #[test]
    fn approved_only_figures_add_up_approved_values_alone() {
        let a = figures(Selection::Approved);
        assert!(a.approved_only);
        assert_eq!(number(&a, "uscc.codes_total").as_deref(), Some("100"));
        assert_eq!(
            number(&a, "double_publicity.licenses_total").as_deref(),
            Some("3")
        );
        let ids: Vec<u64> = a
            .sources
            .values()
            .flatten()
            .map(|s| s.submission_id)
            .collect();
        assert_eq!(ids, [4, 1]);
    }
}
