//! Aggregation for scoring (rulebook section 2), from the versions valid at one instant:
//! COUNT and AMOUNT add up over departments and the region's subtree; BOOL is true when any
//! value is; RANK and SCORE take the latest value at the region itself; DOMAIN_FLAG is the set
//! of domains flagged true anywhere below (each (department, region, domain) key counts with its
//! own current value, so a false flag removes nothing another key flagged true); TASK_STATUS
//! takes the latest value per task at the region itself. A metric whose scope is the region
//! itself (`scope = "region"` in the catalog: G13's units) takes only the values reported at
//! the region, not those of the regions below it.

use std::collections::{BTreeMap, BTreeSet};

use citycredit::aggregates::{Aggregates, SourceRef};
use citycredit_core::catalog::{AggregationScope, Catalog, MetricKind};
use citycredit_core::numbers::Num;
use citycredit_core::rules::{TaskStatus, Values};

use crate::store::VersionRow;
use crate::validation::wire_value;

/// Aggregates `rows` (versions at `region` and below, for one period and instant).
pub fn aggregate(
    catalog: &Catalog,
    region: &str,
    period: &str,
    as_of_micros: i64,
    rows: Vec<VersionRow>,
) -> Aggregates {
    let mut by_metric: BTreeMap<String, Vec<VersionRow>> = BTreeMap::new();
    for r in rows {
        by_metric.entry(r.metric.clone()).or_default().push(r);
    }
    let mut values = Values::new();
    let mut sources: BTreeMap<String, Vec<SourceRef>> = BTreeMap::new();
    for (metric, mut rows) in by_metric {
        let Some(m) = catalog.metric(&metric) else {
            continue; // a metric the current catalog no longer has
        };
        if m.scope() == AggregationScope::Region {
            rows.retain(|r| r.region == region);
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
        let mut refs: Vec<SourceRef> = used
            .into_iter()
            .map(|r| SourceRef {
                submission_id: u64::try_from(r.submission_id).unwrap_or(0),
                department: r.department.clone(),
                region: r.region.clone(),
                domain: r.domain.clone(),
                task_id: r.task_id.clone(),
                value: wire_value(Some(m.kind), &r.value).unwrap_or_default(),
                accept_micros: r.accepted_micros,
            })
            .collect();
        refs.sort_by_key(|s| s.submission_id);
        sources.insert(metric, refs);
    }
    Aggregates {
        region: region.to_owned(),
        period: period.to_owned(),
        as_of_micros,
        values,
        sources,
    }
}
