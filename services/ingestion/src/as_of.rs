//! Values as of an instant `t`: the current values, corrected by what changed after `t`.
//!
//! A value key's versions are intervals `[valid_from, valid_to)` that never overlap: a value
//! closes its key's current version and opens its own; a retraction closes its target's and may
//! reopen an earlier value of the same key as a new version. So the versions valid at `t` are
//! those with `valid_from <= t` that are still open (current) or were closed after `t`.
//!
//! [`changes_after`] reads the versions closed after `t` by range scans of the index on
//! `valid_to` (a count, then the versions asked for: [`store::closed_after`]); its cost follows
//! what changed after `t`, not how many values there are (reading every key as of `t` was 180 ms
//! for the city's monthly values at 1 M submissions; a walk back over the submissions after `t`
//! with one probe per key they named, 29–32 ms at 1,000 submissions back). [`Changes::split`]
//! then corrects the current values:
//!
//! - a current row accepted after `t` was not valid at `t` (a version opens at or after its
//!   submission's acceptance);
//! - a current row of a key with a version closed after `t` is left out too: it may be a value
//!   an undo reopened after `t`, whose version then was the one closed;
//! - every other current row opened by `t` (else its key would have a version closed after
//!   `t`: the one its opening closed) and is still open, so it was valid at `t`;
//! - the versions closed after `t` that opened by `t` are added: at most one per key.
//!
//! The scan is bounded: past `limit` versions closed after `t` it stops, and the caller reads
//! every key as of `t` instead ([`store::versions`]), which then costs less.
//!
//! The current values must be read before the scan: a commit between the two closes versions
//! after `t`, which the scan then finds, and the rows it opened are not among the current ones
//! read. The answer for `t` is exact once every commit accepted by `t` is visible to the reader,
//! and, for the current values kept in memory, announced by the change feed (another process's
//! commit arrives a few milliseconds after it commits); for an instant only that old it may not
//! be, as for any read of the store.

use std::collections::HashSet;
use std::sync::Arc;

use citycredit_store::Db;

use crate::current_rows::PairRows;
use crate::store::{self, Closed, KeyRef, VersionRow};

/// What changed after `t` within some periods and regions.
#[derive(Debug, Default)]
pub struct Changes {
    t: i64,
    /// The versions closed after `t` in the periods and regions asked (one key may have several;
    /// those opened by `t` were valid at `t`).
    closed: Vec<Closed>,
    /// Versions closed after `t`, everywhere.
    pub scanned: usize,
}

impl Changes {
    /// Whether the current values `current` (every current value of the periods and regions
    /// asked) are the values at `t`: no version of those closed after `t` and no current row
    /// accepted after `t`.
    pub fn none_in(&self, current: &[Arc<PairRows>]) -> bool {
        self.closed.is_empty() && current.iter().all(|p| p.newest_accept() <= self.t)
    }

    /// The number of keys with a version closed after `t` in the periods and regions asked.
    pub fn keys(&self) -> usize {
        self.closed
            .iter()
            .map(|c| c.version.key())
            .collect::<HashSet<_>>()
            .len()
    }

    /// The values at `t` from `current` (every current value of the periods and regions
    /// asked): the pairs with no version closed and no row accepted after `t`, whole, and
    /// [`Changes::apply`] over the others.
    pub fn split<'a>(
        &'a self,
        current: &'a [Arc<PairRows>],
    ) -> (Vec<Arc<PairRows>>, Vec<&'a VersionRow>) {
        let touched: HashSet<(&str, &str)> = self
            .closed
            .iter()
            .map(|c| (c.version.region.as_str(), c.version.period.as_str()))
            .collect();
        let (mut whole, mut others) = (Vec::new(), Vec::new());
        for p in current {
            match p.pair() {
                Some(pair) if !touched.contains(&pair) && p.newest_accept() <= self.t => {
                    whole.push(Arc::clone(p));
                }
                _ if p.is_empty() => {}
                _ => others.push(p),
            }
        }
        let rest = self
            .apply(others.into_iter().flat_map(|p| p.rows()))
            .collect();
        (whole, rest)
    }

    /// The values at `t`: the rows of `current` (every current value of the periods and regions
    /// asked) accepted by `t` whose keys have no version closed after `t`, then the versions
    /// closed after `t` that were valid at `t`.
    pub fn apply<'a>(
        &'a self,
        current: impl IntoIterator<Item = &'a VersionRow>,
    ) -> impl Iterator<Item = &'a VersionRow> {
        let changed: HashSet<KeyRef<'a>> = self.closed.iter().map(|c| c.version.key()).collect();
        let metrics: HashSet<&str> = self
            .closed
            .iter()
            .map(|c| c.version.metric.as_str())
            .collect();
        let t = self.t;
        // Rows come in runs of one metric: a metric none of the changes names is looked up once
        // per run, and its rows are not hashed.
        let mut run: Option<(&'a str, bool)> = None;
        let kept = current.into_iter().filter(move |v| {
            if v.accepted_micros > t {
                return false;
            }
            let metric = v.metric.as_str();
            let named = match run {
                Some((m, named)) if m == metric => named,
                _ => {
                    let named = metrics.contains(metric);
                    run = Some((metric, named));
                    named
                }
            };
            !named || !changed.contains(&v.key())
        });
        let at_t = self
            .closed
            .iter()
            .filter(move |c| c.valid_from <= t)
            .map(|c| &c.version);
        kept.chain(at_t)
    }
}

/// The versions at `regions` and `periods` closed after `t`, to correct the current values
/// with ([`Changes::split`]); `None` when more than `limit` versions (anywhere) were closed after
/// `t`. Call after reading the current values (see the module's docs).
pub async fn changes_after(
    db: &Db,
    regions: &[String],
    periods: &[String],
    t: i64,
    limit: usize,
) -> Result<Option<Changes>, sqlx::Error> {
    let read = store::closed_after(db, regions, periods, t, limit).await?;
    if read.scanned > limit {
        return Ok(None);
    }
    Ok(Some(Changes {
        t,
        closed: read.versions,
        scanned: read.scanned,
    }))
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

    /// A version closed after the instant, opened when it was accepted (its id).
    fn closed(id: i64, metric: &str, region: &str, value: &str) -> Closed {
        Closed {
            version: version(id, metric, region, value),
            valid_from: id,
        }
    }

    #[test]
    fn current_rows_accepted_after_t_or_of_keys_closed_after_t_give_way_to_the_versions_at_t() {
        let t = 6;
        // Current (accept time = id): a/1 accepted after t (was 10 at t); a/2 and c/1 valid at
        // t; b/1 new after t; a/3 accepted before t but reopened after t by the undo of 55,
        // which was current at t.
        let current = [
            version(7, "a", "1", "11"),
            version(2, "a", "2", "20"),
            version(3, "c", "1", "30"),
            version(8, "b", "1", "40"),
            version(4, "a", "3", "50"),
        ];
        // Closed after t: a/1's 10, a/3's 55, d/1's 60 (retracted after t), and e/1's 70,
        // opened and closed after t (never valid at t).
        let changes = Changes {
            t,
            closed: vec![
                closed(1, "a", "1", "10"),
                closed(5, "a", "3", "55"),
                closed(6, "d", "1", "60"),
                closed(9, "e", "1", "70"),
            ],
            scanned: 4,
        };
        let ids: Vec<i64> = changes
            .apply(current.iter())
            .map(|v| v.submission_id)
            .collect();
        assert_eq!(ids, vec![2, 3, 1, 5, 6]);
        // Nothing closed and nothing accepted after t: the current values as they are.
        let none = Changes {
            t: 100,
            ..Changes::default()
        };
        let ids: Vec<i64> = none
            .apply(current.iter())
            .map(|v| v.submission_id)
            .collect();
        assert_eq!(ids, vec![7, 2, 3, 8, 4]);
    }

    #[test]
    fn only_pairs_with_a_change_after_t_are_taken_apart() {
        let pair = |rows: Vec<VersionRow>| Arc::new(PairRows::new(rows, None));
        // Region 1: a/1 changed after t. Region 2: nothing after t. Region 3: only a row
        // accepted after t.
        let current = [
            pair(vec![version(7, "a", "1", "11"), version(3, "c", "1", "30")]),
            pair(vec![version(2, "a", "2", "20")]),
            pair(vec![version(8, "b", "3", "40")]),
        ];
        let changes = Changes {
            t: 6,
            closed: vec![closed(1, "a", "1", "10")],
            scanned: 1,
        };
        assert!(!changes.none_in(&current));
        let (whole, rest) = changes.split(&current);
        assert_eq!(whole.len(), 1);
        assert!(Arc::ptr_eq(&whole[0], &current[1]));
        let mut ids: Vec<i64> = rest.iter().map(|v| v.submission_id).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 3]);
        // Later, with nothing closed: every pair as it is.
        let later = Changes {
            t: 8,
            ..Changes::default()
        };
        assert!(later.none_in(&current));
        assert!(
            !Changes {
                t: 7,
                ..Changes::default()
            }
            .none_in(&current)
        );
    }
}
