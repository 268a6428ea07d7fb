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
//! Each metric's figure depends only on that metric's versions (and the sign-offs), so a
//! figure computed once is used again while the metric's submission ids stay the same
//! ([`KeptFigures`]): after one value changes, only its metric is computed again.
//!
//! Each value is looked up among the APPROVED sign-off parts ([`Approvals`], the write gate's
//! reach): its source says which part covers it, and approved-only figures
//! ([`Selection::Approved`]) drop every value that no approved part covers before anything is
//! rolled up or added.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use citycredit::aggregates::{Aggregates, MarkerKind, PeriodMarker, Selection, SourceRef};
use citycredit_core::catalog::{AggregationScope, Catalog, Metric, MetricKind, TimeClass};
use citycredit_core::numbers::Num;
use citycredit_core::period::Period;
use citycredit_core::rollup::{self, Candidate, Reach};
use citycredit_core::rules::{TaskStatus, Values};

use crate::current_rows::{PairRows, Run};
use crate::gate::Approvals;
use crate::kept_figures::{Figures, GroupKey, MetricFigures};
use crate::key_ids;
use crate::store::VersionRow;
use crate::validation::wire_value;

/// A version with its period parsed once, its submission id and its key's id ([`key_ids`])
/// beside it: sorting and grouping a metric's rows reads these, not the row.
#[derive(Clone, Copy)]
struct Row<'a> {
    period: Period,
    key: u32,
    id: i64,
    v: &'a VersionRow,
}

/// Whether two rows have the same key: by their ids when both have one, else by their texts.
fn same(a: &Row<'_>, b: &Row<'_>) -> bool {
    if a.key != key_ids::NO_ID && b.key != key_ids::NO_ID {
        a.key == b.key
    } else {
        same_key(a.v, b.v)
    }
}

/// The value key without its metric and period: (region, department, domain, task_id).
fn same_key(a: &VersionRow, b: &VersionRow) -> bool {
    a.region == b.region
        && a.department == b.department
        && a.domain == b.domain
        && a.task_id == b.task_id
}

/// Rows of one metric up to which [`sort_by_key`] compares the keys' texts directly.
const DIRECT_SORT_MAX: usize = 64;

/// The key as [`same_key`] compares it.
type KeyOf<'a> = (&'a str, &'a str, &'a str, &'a str);

fn key_of<'a>(r: &Row<'a>) -> KeyOf<'a> {
    let v = r.v;
    (&v.region, &v.department, &v.domain, &v.task_id)
}

/// Sorts one metric's rows by key, then submission: each key's rows become a run. When every
/// row's key has an id, the runs come in the order of the ids, and the sort reads two integers
/// beside each row. Otherwise the keys come in the order of their tuples: a metric has many
/// rows and few keys (a key's months, quarters and year), so each row's key is looked up in a
/// map and only the keys are sorted by their texts; the rows are then sorted by (key's rank,
/// submission), integers. Sorting every row by its
/// key's four texts was most of a fresh aggregation's time on monthly values (`memcmp`). A
/// metric with few rows (yearly values: a key has about one) is sorted by the texts directly,
/// which costs less than the map there (0.93 against 1.39 ms for the city's 1,540 yearly rows).
fn sort_by_key(rows: &mut Vec<Row<'_>>) {
    if rows.iter().all(|r| r.key != key_ids::NO_ID) {
        rows.sort_unstable_by_key(|r| (r.key, r.id));
        return;
    }
    if rows.len() <= DIRECT_SORT_MAX {
        rows.sort_unstable_by(|a, b| (key_of(a), a.id).cmp(&(key_of(b), b.id)));
        return;
    }
    let mut index: HashMap<KeyOf<'_>, u32, foldhash::fast::RandomState> = HashMap::default();
    let mut keys: Vec<KeyOf<'_>> = Vec::new();
    let mut ranked: Vec<(u32, i64, Row<'_>)> = rows
        .iter()
        .map(|r| {
            let k = key_of(r);
            let i = *index.entry(k).or_insert_with(|| {
                keys.push(k);
                u32::try_from(keys.len() - 1).unwrap_or(u32::MAX)
            });
            (i, r.id, *r)
        })
        .collect();
    let mut order: Vec<u32> = (0..u32::try_from(keys.len()).unwrap_or(u32::MAX)).collect();
    order.sort_unstable_by_key(|&i| keys[i as usize]);
    let mut rank = vec![0_u32; keys.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i as usize] = u32::try_from(r).unwrap_or(u32::MAX);
    }
    for e in &mut ranked {
        e.0 = rank[e.0 as usize];
    }
    ranked.sort_unstable_by_key(|&(rank, id, _)| (rank, id));
    rows.clear();
    rows.extend(ranked.into_iter().map(|(_, _, r)| r));
}

/// A key's value(s) for `period` among one metric's `rows` (versions for every period that
/// reaches it, each key's rows together), each with the index of its key's marker in the
/// markers returned (in the order of the keys' runs), when its values came by a partial sum or
/// from an earlier period.
fn roll_up<'a>(
    period: &Period,
    class: TimeClass,
    rows: Vec<Row<'a>>,
) -> (Vec<(Option<usize>, Row<'a>)>, Vec<PeriodMarker>) {
    let mut out = Vec::new();
    let mut markers = Vec::new();
    let mut rows = rows.into_iter().peekable();
    let mut versions: Vec<Row<'a>> = Vec::new();
    let mut candidates: Vec<Candidate> = Vec::new();
    while let Some(first) = rows.next() {
        versions.clear();
        versions.push(first);
        while let Some(next) = rows.next_if(|r| same(r, &versions[0])) {
            versions.push(next);
        }
        candidates.clear();
        candidates.extend(versions.iter().map(|r| Candidate {
            period: r.period,
            accepted_micros: r.v.accepted_micros,
            submission_id: r.id,
        }));
        let Some(reach) = rollup::resolve(period, class, &candidates) else {
            continue;
        };
        let mut marker = |kind: MarkerKind, periods: Vec<String>| {
            let k = &versions[0].v;
            markers.push(PeriodMarker {
                kind,
                department: k.department.clone(),
                region: k.region.clone(),
                domain: k.domain.clone(),
                task_id: k.task_id.clone(),
                periods,
            });
            Some(markers.len() - 1)
        };
        // The chosen versions (distinct indexes into `versions`), without an allocation for
        // the common single one.
        match reach {
            Reach::Own(i) => out.extend(versions.get(i).map(|r| (None, *r))),
            Reach::Sum { parts, missing } => {
                let mark = if missing.is_empty() {
                    None
                } else {
                    marker(
                        MarkerKind::PartialPeriod,
                        missing.iter().map(ToString::to_string).collect(),
                    )
                };
                out.extend(
                    parts
                        .iter()
                        .filter_map(|&i| versions.get(i).map(|r| (mark, *r))),
                );
            }
            Reach::Latest {
                index,
                carried_from,
            } => {
                let mark = carried_from
                    .and_then(|from| marker(MarkerKind::CarriedForward, vec![from.to_string()]));
                out.extend(versions.get(index).map(|r| (mark, *r)));
            }
        }
    }
    (out, markers)
}

/// An exact sum of decimal texts: plain integers of up to 18 digits (what counts mostly are)
/// add up in an `i128`, with no rational arithmetic per value; any other text goes through
/// [`Num::parse_decimal`] and a rational sum. The total is the same exact number either way.
#[derive(Default)]
struct ExactSum {
    ints: i128,
    rest: Option<Num>,
}

impl ExactSum {
    /// Adds `text` when it is a decimal [`Num::parse_decimal`] accepts; false (and nothing
    /// added) when it is not.
    fn add(&mut self, text: &str) -> bool {
        let digits = text.strip_prefix('-').unwrap_or(text);
        if !digits.is_empty() && digits.len() <= 18 && digits.bytes().all(|b| b.is_ascii_digit()) {
            // At most 18 digits and an optional '-': always an i64.
            if let Ok(n) = text.parse::<i64>()
                && let Some(sum) = self.ints.checked_add(i128::from(n))
            {
                self.ints = sum;
                return true;
            }
        }
        match Num::parse_decimal(text) {
            Ok(n) => {
                self.rest = Some(match self.rest.take() {
                    Some(sum) => Num(sum.0 + n.0),
                    None => n,
                });
                true
            }
            Err(_) => false,
        }
    }

    fn total(self) -> Num {
        let ints = match i64::try_from(self.ints) {
            Ok(n) => Num::from_int(n),
            // Beyond i64: exact through its decimal text (at most 39 digits).
            Err(_) => Num::parse_decimal(&self.ints.to_string()).unwrap_or_else(|_| Num::zero()),
        };
        match self.rest {
            Some(rest) => Num(ints.0 + rest.0),
            None => ints,
        }
    }
}

/// One metric's versions: runs of [`PairRows`] (rows and their submission ids side by side,
/// their period when they share one, and their tag), and rows that came otherwise.
#[derive(Default)]
struct Versions<'a> {
    runs: Vec<Run<'a>>,
    /// Each with its key's id.
    rows: Vec<(&'a VersionRow, u32)>,
}

impl<'a> Versions<'a> {
    /// The tags of the runs, ascending; None when some rows came otherwise (nothing names
    /// them).
    fn tags(&self) -> Option<Vec<u64>> {
        if !self.rows.is_empty() {
            return None;
        }
        let mut tags: Vec<u64> = self.runs.iter().map(|r| r.tag).collect();
        tags.sort_unstable();
        Some(tags)
    }

    /// Their submission ids, sorted.
    fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .runs
            .iter()
            .flat_map(|r| r.ids.iter().copied())
            .chain(self.rows.iter().map(|(v, _)| v.submission_id))
            .collect();
        // Runs of ascending ids (each pair's, or each kept pair's handed over in order), which
        // the stable sort merges rather than sorting anew.
        ids.sort();
        ids
    }

    /// The rows with their periods parsed (a run's shared period once), without those that
    /// `keep` refuses or whose period no longer parses (stored periods were validated at
    /// entry; one that no longer parses cannot reach).
    fn rows(self, keep: impl Fn(&VersionRow) -> bool) -> Vec<Row<'a>> {
        let parsed = |v: &'a VersionRow, key: u32| {
            Some(Row {
                period: v.period.parse().ok()?,
                key,
                id: v.submission_id,
                v,
            })
        };
        let runs = self.runs.into_iter().flat_map(|r| {
            let period = r.period;
            r.rows
                .iter()
                .zip(r.keys)
                .zip(r.ids)
                .filter(|((v, _), _)| keep(v))
                .filter_map(move |((v, &key), &id)| match period {
                    Some(period) => Some(Row { period, key, id, v }),
                    None => parsed(v, key),
                })
        });
        let others = self
            .rows
            .into_iter()
            .filter(|(v, _)| keep(v))
            .filter_map(|(v, key)| parsed(v, key));
        runs.chain(others).collect()
    }
}

/// Aggregates `rows` (versions at `region` and below, for every period that reaches `period`,
/// as of one instant), from the values `selection` names among them. With figures kept
/// (`figures`), a metric whose versions (by submission id) and sign-offs are those of a figure
/// kept for the same region, period and selection takes that figure, and only the others are
/// computed (and kept, with [`Figures::UseAndKeep`]).
#[allow(
    clippy::too_many_arguments,
    reason = "one aggregation's inputs, passed once; the figures kept are optional"
)]
pub fn aggregate<'a>(
    catalog: &Catalog,
    region: &str,
    period: &Period,
    as_of_micros: i64,
    rows: impl IntoIterator<Item = &'a VersionRow>,
    approvals: &Approvals,
    selection: Selection,
    figures: Figures<'_>,
) -> Aggregates {
    aggregate_pairs(
        catalog,
        region,
        period,
        as_of_micros,
        &[],
        rows,
        approvals,
        selection,
        figures,
    )
}

/// [`aggregate`] from the current values as [`PairRows`] (one per (region, period) pair, or
/// rows outside them), and `also` other rows (values as of a past instant where they differ
/// from the current ones). A metric whose rows all came in runs of the same tags as the figure
/// kept for it takes that figure without a look at its rows or ids: after one value changes,
/// only that value's metric has a new tag, compares its ids and is computed again.
#[allow(
    clippy::too_many_arguments,
    reason = "one aggregation's inputs, passed once; the figures kept are optional"
)]
pub fn aggregate_pairs<'a>(
    catalog: &Catalog,
    region: &str,
    period: &Period,
    as_of_micros: i64,
    pairs: &[Arc<PairRows>],
    also: impl IntoIterator<Item = &'a VersionRow>,
    approvals: &Approvals,
    selection: Selection,
    figures: Figures<'_>,
) -> Aggregates {
    type Group<'x> = (&'x str, Versions<'x>);
    // Runs of one metric share one copy of its name: grouped by its address, no text read.
    let mut by_name: Vec<Group<'_>> = Vec::new();
    let mut index: HashMap<usize, usize, foldhash::fast::RandomState> = HashMap::default();
    let name_of = |g: &Group| g.0.as_ptr().addr();
    for pair in pairs {
        // Pairs mostly hold the same metrics, each in metric order: the group after the last
        // one used is tried before the map.
        let mut next = 0;
        for run in pair.runs() {
            let name = run.metric.as_ptr().addr();
            let i = match by_name.get(next) {
                Some(g) if name_of(g) == name => next,
                _ => *index.entry(name).or_insert_with(|| {
                    by_name.push((run.metric, Versions::default()));
                    by_name.len() - 1
                }),
            };
            next = i + 1;
            by_name[i].1.runs.push(run);
        }
    }
    // Then by text, for names that are copies of their own (past the names shared).
    by_name.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut by_metric: Vec<Group> = Vec::with_capacity(by_name.len());
    for (metric, versions) in by_name {
        match by_metric.last_mut() {
            Some(last) if last.0 == metric => last.1.runs.extend(versions.runs),
            _ => by_metric.push((metric, versions)),
        }
    }
    // The other rows join their metric's group; a metric with any has no tags to match. Rows
    // mostly come in runs of one metric (a pair's are sorted by metric), so a row is looked up
    // only when its metric differs from the row before.
    // The map of the groups is made at the first such row (none after a change "now"). Their
    // keys' ids are taken here, under one lock.
    let also: Vec<&VersionRow> = also.into_iter().collect();
    let also_keys = if also.is_empty() {
        Vec::new()
    } else {
        key_ids::of(&also)
    };
    let mut at: Option<HashMap<&str, usize>> = None;
    let mut last = usize::MAX;
    for (v, key) in also.into_iter().zip(also_keys) {
        let metric = v.metric.as_str();
        if by_metric.get(last).is_none_or(|g| g.0 != metric) {
            let at = at.get_or_insert_with(|| {
                by_metric
                    .iter()
                    .enumerate()
                    .map(|(i, g)| (g.0, i))
                    .collect()
            });
            last = *at.entry(metric).or_insert_with(|| {
                by_metric.push((metric, Versions::default()));
                by_metric.len() - 1
            });
        }
        by_metric[last].1.rows.push((v, key));
    }
    let key = GroupKey {
        region: region.to_owned(),
        period: period.to_string(),
        selection,
    };
    let before = figures.uses().and_then(|k| k.kept(&key, approvals));
    let mut now: HashMap<String, Arc<MetricFigures>> = HashMap::new();
    let mut changed = false;
    for (metric, versions) in by_metric {
        let Some(m) = catalog.metric(metric) else {
            continue; // a metric the current catalog no longer has
        };
        let tags = versions.tags();
        let kept = before.as_ref().and_then(|b| b.get(metric));
        let figures = match kept {
            // The same rows: the same tags name the same runs.
            Some(f) if tags.is_some() && f.tags == tags => Arc::clone(f),
            _ => {
                let ids = versions.ids();
                match kept {
                    Some(f) if f.ids == ids && f.tags == tags => Arc::clone(f),
                    // The same versions in runs under other tags (a pair read again with
                    // nothing to pass its tags on): the figure under the new tags.
                    Some(f) if f.ids == ids => Arc::new(MetricFigures {
                        ids,
                        tags,
                        figure: f.figure.clone(),
                        sources: Arc::clone(&f.sources),
                        markers: Arc::clone(&f.markers),
                    }),
                    _ => Arc::new(metric_figures(
                        m, region, period, versions, ids, tags, approvals, selection,
                    )),
                }
            }
        };
        changed |= kept.is_none_or(|f| !Arc::ptr_eq(f, &figures));
        now.insert(metric.to_owned(), figures);
    }
    let mut out = Aggregates {
        region: region.to_owned(),
        period: key.period.clone(),
        as_of_micros,
        values: Values::new(),
        sources: BTreeMap::new(),
        markers: BTreeMap::new(),
        approved_only: selection == Selection::Approved,
    };
    for (metric, f) in &now {
        if let Some(figure) = &f.figure {
            out.values.set(metric.clone(), figure.clone());
        }
        if !f.sources.is_empty() {
            out.sources.insert(metric.clone(), Arc::clone(&f.sources));
        }
        if !f.markers.is_empty() {
            out.markers.insert(metric.clone(), Arc::clone(&f.markers));
        }
    }
    if let Some(k) = figures.keeps()
        && (changed || before.as_ref().is_none_or(|b| b.len() != now.len()))
    {
        k.keep(key, approvals, now);
    }
    out
}

/// One metric's figure from its `versions` (`ids`: their submission ids, sorted; `tags`: the
/// [`PairRows`] runs they came in).
#[allow(
    clippy::too_many_arguments,
    reason = "one metric's inputs and where it is asked, passed once"
)]
fn metric_figures(
    m: &Metric,
    region: &str,
    period: &Period,
    versions: Versions<'_>,
    ids: Vec<i64>,
    tags: Option<Vec<u64>>,
    approvals: &Approvals,
    selection: Selection,
) -> MetricFigures {
    let mut out = MetricFigures {
        ids,
        tags,
        figure: None,
        sources: Arc::from([]),
        markers: Arc::from([]),
    };
    let mut these: Vec<Row> =
        versions.rows(|v| m.scope() != AggregationScope::Region || v.region == region);
    let covering = |r: &Row| approvals.covering(&r.v.department, &r.v.region, &r.period, m.time);
    if selection == Selection::Approved {
        these.retain(|r| covering(r).is_some());
    }
    sort_by_key(&mut these);
    let (mut rows, key_markers) = roll_up(period, m.time, these);
    if rows.is_empty() {
        // Nothing reaches the period (or nothing at the region itself for a metric of the
        // region's own scope): not reported, rather than a sum of zero.
        return out;
    }
    // Latest first: accept time, then id.
    rows.sort_unstable_by_key(|(_, r)| std::cmp::Reverse((r.v.accepted_micros, r.id)));
    let mut values = Values::new();
    let metric = m.key.as_str();
    let used: Vec<&(Option<usize>, Row)> = match m.kind {
        MetricKind::Count | MetricKind::Amount => {
            let mut sum = ExactSum::default();
            let mut used = Vec::new();
            for r in &rows {
                if sum.add(&r.1.v.value) {
                    used.push(r);
                }
            }
            values.set_number(metric, sum.total());
            used
        }
        MetricKind::Bool => {
            values.set_flag(metric, rows.iter().any(|r| r.1.v.value == "true"));
            rows.iter().collect()
        }
        MetricKind::Rank | MetricKind::Score => {
            match rows.iter().find(|r| r.1.v.region == region) {
                Some(r) => match Num::parse_decimal(&r.1.v.value) {
                    Ok(n) => {
                        values.set_number(metric, n);
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
                .filter(|r| r.1.v.value == "true")
                .map(|r| r.1.v.domain.clone())
                .collect();
            values.set_domains(metric, domains);
            rows.iter().collect()
        }
        MetricKind::TaskStatus => {
            let mut seen = BTreeSet::new();
            let mut used = Vec::new();
            for r in rows.iter().filter(|r| r.1.v.region == region) {
                if seen.insert(r.1.v.task_id.as_str()) {
                    let s = match r.1.v.value.as_str() {
                        "DONE" => TaskStatus::Done,
                        "IN_PROGRESS" => TaskStatus::InProgress,
                        _ => TaskStatus::NotStarted,
                    };
                    values.set_task(metric, r.1.v.task_id.clone(), s);
                    used.push(r);
                }
            }
            used
        }
    };
    out.figure = values.remove(metric);
    if used.is_empty() {
        return out;
    }
    // The markers of the keys whose values are used, in the order of the keys' texts (the keys'
    // runs may have come in the order of their ids).
    let mut marked = vec![false; key_markers.len()];
    for (mark, _) in &used {
        if let Some(i) = mark {
            marked[*i] = true;
        }
    }
    let mut markers: Vec<PeriodMarker> = key_markers
        .into_iter()
        .zip(marked)
        .filter_map(|(m, keep)| keep.then_some(m))
        .collect();
    markers.sort_unstable_by(|a, b| {
        (&a.region, &a.department, &a.domain, &a.task_id).cmp(&(
            &b.region,
            &b.department,
            &b.domain,
            &b.task_id,
        ))
    });
    out.markers = markers.into();
    let mut refs: Vec<SourceRef> = used
        .into_iter()
        .map(|(_, r)| SourceRef {
            submission_id: u64::try_from(r.v.submission_id).unwrap_or(0),
            department: r.v.department.clone(),
            region: r.v.region.clone(),
            domain: r.v.domain.clone(),
            task_id: r.v.task_id.clone(),
            period: r.v.period.clone(),
            value: wire_value(Some(m.kind), &r.v.value).unwrap_or_default(),
            accept_micros: r.v.accepted_micros,
            approved_period: covering(r).map(|p| p.to_string()),
        })
        .collect();
    refs.sort_unstable_by_key(|s| s.submission_id);
    out.sources = refs.into();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kept_figures::KeptFigures;

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
        aggregate(
            &catalog,
            "330800",
            &period,
            9,
            &rows,
            &approvals,
            selection,
            Figures::Fresh,
        )
    }

    fn number(a: &Aggregates, metric: &str) -> Option<String> {
        match a.values.get(metric) {
            Some(citycredit_core::rules::Figure::Number(n)) => Some(n.to_plain()),
            _ => None,
        }
    }

    #[test]
    fn the_exact_sum_equals_the_rational_sum_and_skips_what_does_not_parse() {
        let texts = [
            "100",
            "-7",
            "0.25",
            "-0",
            "007",
            "999999999999999999",
            "-999999999999999999",
            "1234567890123456789012345",
            "3.000",
            "",
            "-",
            "+5",
            "1e3",
            "12.",
        ];
        let mut sum = ExactSum::default();
        let mut rational = Num::zero();
        let mut taken = Vec::new();
        for t in texts {
            let added = sum.add(t);
            if let Ok(n) = Num::parse_decimal(t) {
                rational = Num(rational.0 + n.0);
                assert!(added, "{t}");
                taken.push(t);
            } else {
                assert!(!added, "{t}");
            }
        }
        assert_eq!(taken.len(), 9);
        assert_eq!(sum.total(), rational);
        // A total past i64: still exact.
        let mut big = ExactSum::default();
        let mut rational = Num::zero();
        for _ in 0..20 {
            assert!(big.add("999999999999999999"));
            rational = Num(rational.0 + Num::from_int(999_999_999_999_999_999).0);
        }
        assert_eq!(big.total(), rational);
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

    /// The same figures either way (`Aggregates` has no `PartialEq`: its parts do).
    /// The city's figures for 2026 from `pairs` alone, without sign-offs.
    fn city_2026(catalog: &Catalog, pairs: &[Arc<PairRows>], figures: Figures<'_>) -> Aggregates {
        let period: Period = "2026".parse().unwrap_or_else(|e| panic!("{e:?}"));
        aggregate_pairs(
            catalog,
            "330800",
            &period,
            9,
            pairs,
            [],
            &Approvals::default(),
            Selection::All,
            figures,
        )
    }

    fn assert_same(a: &Aggregates, b: &Aggregates) {
        assert_eq!(a.values, b.values);
        assert_eq!(a.sources, b.sources);
        assert_eq!(a.markers, b.markers);
        assert_eq!((&a.region, &a.period), (&b.region, &b.period));
    }

    #[test]
    fn kept_figures_are_what_a_fresh_computation_gives_and_are_computed_again_only_when_their_versions_change()
     {
        let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        let period: Period = "2026".parse().unwrap_or_else(|e| panic!("{e:?}"));
        let kept = KeptFigures::new(10_000);
        let figures = |rows: &[VersionRow], approvals: &Approvals, selection| {
            let with = aggregate(
                &catalog,
                "330800",
                &period,
                9,
                rows,
                approvals,
                selection,
                Figures::UseAndKeep(&kept),
            );
            let fresh = aggregate(
                &catalog,
                "330800",
                &period,
                9,
                rows,
                approvals,
                selection,
                Figures::Fresh,
            );
            assert_same(&with, &fresh);
            with
        };
        let same = |a: &Aggregates, b: &Aggregates, metric: &str| {
            Arc::ptr_eq(&a.sources[metric], &b.sources[metric])
        };
        let (codes, licenses) = ("uscc.codes_total", "double_publicity.licenses_total");
        let none = Approvals::default();
        let mut rows = vec![
            row(1, codes, "samr", "2026", "100"),
            row(2, codes, "civil-affairs", "2026", "50"),
            row(4, licenses, "samr", "2026-01", "3"),
            row(5, licenses, "tax", "2026-02", "4"),
        ];
        let first = figures(&rows, &none, Selection::All);
        assert!(
            !first.markers[licenses].is_empty(),
            "a partial year is marked"
        );
        // Nothing changed: every metric's figure is the one kept.
        let again = figures(&rows, &none, Selection::All);
        assert!(same(&first, &again, codes) && same(&first, &again, licenses));
        // samr's value is superseded (another submission): only its metric is computed again.
        rows[0] = row(6, codes, "samr", "2026", "70");
        let changed = figures(&rows, &none, Selection::All);
        assert_eq!(number(&changed, codes).as_deref(), Some("120"));
        assert!(!same(&again, &changed, codes) && same(&again, &changed, licenses));
        // A value retracted (its version gone): computed again.
        rows.remove(1);
        let retracted = figures(&rows, &none, Selection::All);
        assert_eq!(number(&retracted, codes).as_deref(), Some("70"));
        // The months' metric loses its last value: no figure at all, as a fresh computation.
        let months: Vec<VersionRow> = rows.iter().filter(|r| r.metric == codes).cloned().collect();
        let without = figures(&months, &none, Selection::All);
        assert!(without.values.get(licenses).is_none() && !without.sources.contains_key(licenses));
        let back = figures(&rows, &none, Selection::All);
        assert_eq!(number(&back, licenses).as_deref(), Some("7"));
        // Another sign-off: each source's approved part changes, so everything is computed again.
        let samr = Approvals::new([("samr".into(), "330800".into(), "2026".into())]);
        let signed = figures(&rows, &samr, Selection::All);
        assert!(!same(&back, &signed, codes) && !same(&back, &signed, licenses));
        assert_eq!(
            signed.sources[codes][0].approved_period.as_deref(),
            Some("2026")
        );
        // Approved values only: figures of their own, not those of every value.
        let approved = figures(&rows, &samr, Selection::Approved);
        assert_eq!(number(&approved, licenses).as_deref(), Some("3"));
        let all = figures(&rows, &samr, Selection::All);
        assert!(same(&signed, &all, licenses));
        // Figures taken but not kept (a read as of a past instant, with samr's first value):
        // the unchanged metric shares the kept figure, the changed one is computed, and what is
        // kept stays the current figures.
        let mut past = rows.clone();
        past[0] = row(1, codes, "samr", "2026", "100");
        let taken = aggregate(
            &catalog,
            "330800",
            &period,
            9,
            &past,
            &samr,
            Selection::All,
            Figures::Use(&kept),
        );
        assert_eq!(number(&taken, codes).as_deref(), Some("100"));
        assert!(same(&all, &taken, licenses) && !same(&all, &taken, codes));
        let current = figures(&rows, &samr, Selection::All);
        assert!(same(&all, &current, codes) && same(&all, &current, licenses));
    }

    #[test]
    fn figures_from_pairs_follow_their_runs_tags_and_equal_a_fresh_computation() {
        let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        let period: Period = "2026".parse().unwrap_or_else(|e| panic!("{e:?}"));
        let kept = KeptFigures::new(10_000);
        let none = Approvals::default();
        let (codes, licenses) = ("uscc.codes_total", "double_publicity.licenses_total");
        let figures = |pairs: &[Arc<PairRows>]| {
            let with = city_2026(&catalog, pairs, Figures::UseAndKeep(&kept));
            let rows: Vec<&VersionRow> = pairs.iter().flat_map(|p| p.rows()).collect();
            let fresh = aggregate(
                &catalog,
                "330800",
                &period,
                9,
                rows,
                &none,
                Selection::All,
                Figures::Fresh,
            );
            assert_same(&with, &fresh);
            with
        };
        let same = |a: &Aggregates, b: &Aggregates, metric: &str| {
            Arc::ptr_eq(&a.sources[metric], &b.sources[metric])
        };
        // Two pairs: the year (both metrics) and January (licenses).
        let year_rows = |codes_value: &str| {
            vec![
                row(2, codes, "civil-affairs", "2026", "50"),
                row(1, codes, "samr", "2026", codes_value),
                row(3, licenses, "tax", "2026", "9"),
            ]
        };
        let january = Arc::new(PairRows::new(
            vec![row(4, licenses, "samr", "2026-01", "3")],
            None,
        ));
        let y = Arc::new(PairRows::new(year_rows("100"), None));
        let first = figures(&[Arc::clone(&y), Arc::clone(&january)]);
        assert_eq!(number(&first, codes).as_deref(), Some("150"));
        // The same pairs (the same tags), in another order: every figure kept.
        let again = figures(&[Arc::clone(&january), Arc::clone(&y)]);
        assert!(same(&first, &again, codes) && same(&first, &again, licenses));
        // The year read again with nothing to pass its tags on: new tags, the ids compared,
        // the same figures.
        let y = Arc::new(PairRows::new(year_rows("100"), None));
        let reread = figures(&[Arc::clone(&y), Arc::clone(&january)]);
        assert!(same(&again, &reread, codes) && same(&again, &reread, licenses));
        // The year read again after samr's value changed (a new submission): the licenses'
        // run keeps its tag and its figure; the codes' run has a new tag and is computed.
        let mut changed_rows = year_rows("100");
        changed_rows[1] = row(6, codes, "samr", "2026", "70");
        let y = Arc::new(PairRows::new(changed_rows, Some(&y)));
        let changed = figures(&[Arc::clone(&y), Arc::clone(&january)]);
        assert_eq!(number(&changed, codes).as_deref(), Some("120"));
        assert!(!same(&reread, &changed, codes) && same(&reread, &changed, licenses));
        // January's value gone (its pair read again empty): licenses computed again.
        let emptied = figures(&[y, Arc::new(PairRows::new(Vec::new(), Some(&january)))]);
        assert_eq!(number(&emptied, codes).as_deref(), Some("120"));
        assert_eq!(number(&emptied, licenses).as_deref(), Some("9"));
        // Pairs whose metric names are copies of their own (past the names shared): grouped
        // by their texts all the same.
        let own = [
            Arc::new(PairRows::with_names_of_its_own(year_rows("100"))),
            Arc::new(PairRows::with_names_of_its_own(vec![row(
                4, licenses, "samr", "2026-01", "3",
            )])),
        ];
        let copies = figures(&own);
        assert_eq!(number(&copies, codes).as_deref(), Some("150"));
        assert_eq!(number(&copies, licenses).as_deref(), Some("12"));
    }

    #[test]
    fn rows_sort_by_key_texts_then_submission() {
        let (regions, departments) = (["330802", "330800", "3308"], ["tax", "samr", ""]);
        let mut stored: Vec<VersionRow> = Vec::new();
        let mut seed: u64 = 7;
        for id in 0..300 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let r = usize::try_from(seed >> 40).unwrap_or(0);
            let mut v = row(id, "m", departments[r % 3], "2026", "1");
            v.region = regions[(r / 3) % 3].to_owned();
            v.domain = ["", "a", "ab"][(r / 9) % 3].to_owned();
            v.task_id = ["", "t1"][(r / 27) % 2].to_owned();
            // Ids out of order within a key.
            v.submission_id = i64::try_from(r % 1000).unwrap_or(0) * 1000 + id;
            stored.push(v);
        }
        let period: Period = "2026".parse().unwrap_or_else(|e| panic!("{e:?}"));
        // By texts both ways: many rows (keys ranked), and a few (texts compared directly).
        for n in [stored.len(), DIRECT_SORT_MAX] {
            sorted_as_tuples(&stored[..n], period);
        }
        // By the keys' ids: each key's rows together, by submission.
        let keys = key_ids::of(&stored);
        let mut rows: Vec<Row> = stored
            .iter()
            .zip(&keys)
            .map(|(v, &key)| Row {
                period,
                key,
                id: v.submission_id,
                v,
            })
            .collect();
        sort_by_key(&mut rows);
        let mut seen = std::collections::HashSet::new();
        for (i, r) in rows.iter().enumerate() {
            match i.checked_sub(1).map(|j| &rows[j]) {
                Some(before) if same_key(before.v, r.v) => assert!(before.id < r.id),
                // A key's run starts here: no row of it came before.
                _ => assert!(seen.insert(key_of(r)), "{:?} split", key_of(r)),
            }
        }
        let (mut got, mut want): (Vec<i64>, Vec<i64>) = (
            rows.iter().map(|r| r.id).collect(),
            stored.iter().map(|v| v.submission_id).collect(),
        );
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
    }

    #[test]
    fn figures_by_the_keys_ids_are_those_by_their_texts() {
        // Monthly values of a FLOW metric and a LEVEL one, some months missing (markers), keys
        // first seen in the reverse of their texts' order (so their ids are in that order).
        let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        let mut by_month: Vec<Vec<VersionRow>> = vec![Vec::new(); 12];
        let mut id = 0;
        for (k, department) in ["zz-late", "tax", "samr", "civil-affairs", "aa-first"]
            .iter()
            .enumerate()
        {
            for (month, rows) in by_month.iter_mut().enumerate() {
                if (month + k) % 4 == 3 {
                    continue; // a month missing: a partial sum, or a value carried
                }
                for metric in ["double_publicity.licenses_total", "uscc.codes_total"] {
                    id += 1;
                    let mut v = row(
                        id,
                        metric,
                        department,
                        &format!("2026-{:02}", month + 1),
                        &(id * 7 % 90).to_string(),
                    );
                    v.region = ["330803", "330802", "330800"][k % 3].to_owned();
                    rows.push(v);
                }
            }
        }
        let figures = |pairs: &[Arc<PairRows>]| city_2026(&catalog, pairs, Figures::Fresh);
        let by_ids: Vec<Arc<PairRows>> = by_month
            .iter()
            .map(|rows| Arc::new(PairRows::new(rows.clone(), None)))
            .collect();
        let by_texts: Vec<Arc<PairRows>> = by_month
            .iter()
            .map(|rows| Arc::new(PairRows::with_names_of_its_own(rows.clone())))
            .collect();
        let (a, b) = (figures(&by_ids), figures(&by_texts));
        assert!(
            a.markers.values().any(|m| m.len() > 1),
            "some markers to order: {:?}",
            a.markers
        );
        assert_same(&a, &b);
    }

    fn sorted_as_tuples(stored: &[VersionRow], period: Period) {
        let mut rows: Vec<Row> = stored
            .iter()
            .map(|v| Row {
                period,
                key: key_ids::NO_ID,
                id: v.submission_id,
                v,
            })
            .collect();
        sort_by_key(&mut rows);
        let got: Vec<i64> = rows.iter().map(|r| r.v.submission_id).collect();
        let mut want: Vec<&VersionRow> = stored.iter().collect();
        want.sort_by(|a, b| {
            (
                &a.region,
                &a.department,
                &a.domain,
                &a.task_id,
                a.submission_id,
            )
                .cmp(&(
                    &b.region,
                    &b.department,
                    &b.domain,
                    &b.task_id,
                    b.submission_id,
                ))
        });
        let want: Vec<i64> = want.iter().map(|v| v.submission_id).collect();
        assert_eq!(got, want);
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
            .flat_map(|s| s.iter())
            .map(|s| s.submission_id)
            .collect();
        assert_eq!(ids, [4, 1]);
    }
}
