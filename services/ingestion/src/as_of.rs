//! Values as of an instant `t`: the current values, corrected by what was accepted after `t`.
//!
//! Every change to a value key's versions is made by one submission, at its accept time: a
//! value closes its key's current version and opens its own; a retraction closes its target's
//! and may reopen an earlier value of the same key (a retraction carries its target's key).
//! Accept times never fall as submission ids rise (one writer at a time, each commit's instant
//! above the last). So a key that no submission accepted after `t` names has at `t` the version
//! it has now, and only the keys those submissions name need the store's answer for `t`:
//! [`changes_after`] walks the newest submissions back by primary key to the first one accepted
//! at or before `t` (their ids and accept times alone), asks the store for the keys the
//! submissions walked over name (each key once, [`store::keys_named`]), and probes each of them
//! within the periods and regions asked ([`store::versions_of_keys`], one index probe per key).
//! The cost follows what changed after `t`, not how many values there are: reading every key
//! as of `t` was 180 ms for the city's monthly values at 1 M submissions.
//!
//! The walk is bounded: past `limit` submissions accepted after `t` it stops, and the caller
//! reads every key as of `t` instead ([`store::versions`]), which then costs less.
//!
//! The current values must be read before the walk: a commit between the two is then walked
//! over, its keys probed. The answer for `t` is exact once every commit accepted by `t` is
//! visible to the reader, and, for the current values kept in memory, announced by the change
//! feed (another process's commit arrives a few milliseconds after it commits); for an instant
//! only that old it may not be, as for any read of the store.

use std::collections::HashSet;
use std::sync::Arc;

use citycredit_store::Db;

use crate::current_rows::PairRows;
use crate::store::{self, Accepted, VersionRow};

/// Submissions' (id, accept time) read by the walk's first round trip; each next one reads
/// eight times as many, up to [`PAGE_MAX`]: a walk over nothing reads a few rows, a long one
/// few round trips.
const PAGE: i64 = 64;
/// At most this many per round trip: a round trip reads all the rows it asks for, even when the
/// first submission at or before `t` is among the first of them (a cap of 32,768 took 30 ms for
/// a walk over 5,360 submissions at 1 M, against 2 ms).
const PAGE_MAX: i64 = 4096;

/// A value key: (metric, region, period, department, domain, task_id).
type KeyRef<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, &'a str);

fn key_of_version(v: &VersionRow) -> KeyRef<'_> {
    (
        &v.metric,
        &v.region,
        &v.period,
        &v.department,
        &v.domain,
        &v.task_id,
    )
}

fn key_of_submission(a: &Accepted) -> KeyRef<'_> {
    (
        &a.metric,
        &a.region,
        &a.period,
        &a.department,
        &a.domain,
        &a.task_id,
    )
}

/// What changed after `t` within some periods and regions.
#[derive(Debug, Default)]
pub struct Changes {
    /// One submission per key changed (the newest), in the periods and regions asked.
    changed: Vec<Accepted>,
    /// Those keys' versions valid at `t` (none for a key without a value then).
    at_t: Vec<VersionRow>,
    /// Submissions accepted after `t`, everywhere.
    pub walked: usize,
}

impl Changes {
    /// No key in the periods and regions asked changed after `t`: the current values are
    /// the values at `t`.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
    }

    /// The number of keys changed after `t` in the periods and regions asked.
    pub fn keys(&self) -> usize {
        self.changed.len()
    }

    /// The values at `t` from `current` (every current value of the periods and regions
    /// asked): the pairs that no change names, whole, and [`Changes::apply`] over the others.
    pub fn split<'a>(
        &'a self,
        current: &'a [Arc<PairRows>],
    ) -> (Vec<Arc<PairRows>>, Vec<&'a VersionRow>) {
        let touched: HashSet<(&str, &str)> = self
            .changed
            .iter()
            .map(|a| (a.region.as_str(), a.period.as_str()))
            .collect();
        let (mut whole, mut others) = (Vec::new(), Vec::new());
        for p in current {
            match p.pair() {
                Some(pair) if !touched.contains(&pair) => whole.push(Arc::clone(p)),
                _ if p.is_empty() => {}
                _ => others.push(p),
            }
        }
        let rest = self
            .apply(others.into_iter().flat_map(|p| p.rows()))
            .collect();
        (whole, rest)
    }

    /// The values at `t`: `current` (every current value of the periods and regions asked)
    /// without the keys changed after `t`, then those keys' versions at `t`.
    pub fn apply<'a>(
        &'a self,
        current: impl IntoIterator<Item = &'a VersionRow>,
    ) -> impl Iterator<Item = &'a VersionRow> {
        let changed: HashSet<KeyRef<'a>> = self.changed.iter().map(key_of_submission).collect();
        let metrics: HashSet<&str> = self.changed.iter().map(|a| a.metric.as_str()).collect();
        // Rows come in runs of one metric: a metric none of the changes names is looked up once
        // per run, and its rows are not hashed.
        let mut run: Option<(&'a str, bool)> = None;
        let kept = current.into_iter().filter(move |v| {
            let metric = v.metric.as_str();
            let named = match run {
                Some((m, named)) if m == metric => named,
                _ => {
                    let named = metrics.contains(metric);
                    run = Some((metric, named));
                    named
                }
            };
            !named || !changed.contains(&key_of_version(v))
        });
        kept.chain(self.at_t.iter())
    }
}

/// The keys of `regions` and `periods` that submissions accepted after `t` name, with their
/// versions at `t`; `None` when more than `limit` submissions (anywhere) were accepted after
/// `t`. Call after reading the current values (see the module's docs).
pub async fn changes_after(
    db: &Db,
    regions: &[String],
    periods: &[String],
    t: i64,
    limit: usize,
) -> Result<Option<Changes>, sqlx::Error> {
    let mut out = Changes::default();
    // Back from the newest submission to the first accepted at or before `t`, by id and
    // accept time alone; `oldest`: the oldest id walked over.
    let (mut below, mut oldest, mut newest) = (i64::MAX, None, None);
    let mut page_size = PAGE;
    'walk: loop {
        let page = store::accept_times_below(db, below, page_size).await?;
        let last_page = page.len() < usize::try_from(page_size).unwrap_or(usize::MAX);
        page_size = (page_size * 8).min(PAGE_MAX);
        for (id, accept_micros) in page {
            if accept_micros <= t {
                break 'walk;
            }
            out.walked += 1;
            if out.walked > limit {
                return Ok(None);
            }
            newest.get_or_insert(id);
            oldest = Some(id);
            below = id;
        }
        if last_page {
            break;
        }
    }
    let (Some(from), Some(to)) = (oldest, newest) else {
        return Ok(Some(out)); // nothing accepted after `t`
    };
    // The keys those submissions name (the store gives each once), in the periods and regions
    // asked.
    out.changed = store::keys_named(db, from, to).await?;
    out.changed
        .retain(|a| regions.contains(&a.region) && periods.contains(&a.period));
    let keys: Vec<String> = out
        .changed
        .iter()
        .map(|a| {
            let k = key_of_submission(a);
            store::vkey(k.0, k.1, k.2, k.3, k.4, k.5)
        })
        .collect();
    out.at_t = store::versions_of_keys(db, &keys, t).await?;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(id: i64, metric: &str, region: &str, value: &str) -> VersionRow {
        VersionRow {
            submission_id: id,
            metric: metric.to_owned(),
            region: region.to_owned(),
            period: "2026".to_owned(),
            department: "d".to_owned(),
            domain: String::new(),
            task_id: String::new(),
            value: value.to_owned(),
            accepted_micros: id,
        }
    }

    fn accepted(v: &VersionRow) -> Accepted {
        Accepted {
            id: v.submission_id,
            accept_micros: v.accepted_micros,
            metric: v.metric.clone(),
            region: v.region.clone(),
            period: v.period.clone(),
            department: v.department.clone(),
            domain: v.domain.clone(),
            task_id: v.task_id.clone(),
        }
    }

    #[test]
    fn changed_keys_take_their_versions_at_t_and_the_rest_stay() {
        // Current: a/1 (changed after t, was 10 then), a/2 (unchanged), b/1 (new after t),
        // c/1 (unchanged, between two runs of a).
        let current = [
            version(7, "a", "1", "11"),
            version(2, "a", "2", "20"),
            version(3, "c", "1", "30"),
            version(8, "b", "1", "40"),
            version(4, "a", "3", "50"),
        ];
        let changes = Changes {
            changed: vec![accepted(&current[0]), accepted(&current[3])],
            // a/1's version at t; b/1 had none. A key retracted after t (d/1) comes back.
            at_t: vec![version(1, "a", "1", "10"), version(5, "d", "1", "60")],
            walked: 3,
        };
        let ids: Vec<i64> = changes
            .apply(current.iter())
            .map(|v| v.submission_id)
            .collect();
        assert_eq!(ids, vec![2, 3, 4, 1, 5]);
        // Nothing changed: the current values as they are.
        let none = Changes::default();
        assert!(none.is_empty());
        let ids: Vec<i64> = none
            .apply(current.iter())
            .map(|v| v.submission_id)
            .collect();
        assert_eq!(ids, vec![7, 2, 3, 8, 4]);
    }
}
