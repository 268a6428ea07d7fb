//! The current value versions of each (region reported at, period), kept in memory so that an
//! aggregation reads from the store only what changed since it last looked.
//!
//! An aggregation for the city and a year needs the current versions of every (region, period)
//! pair that can reach it: 7 regions by up to 20 periods, about 1,500 rows at 1 M submissions.
//! Reading and decoding them all was most of its time. Each pair's rows are kept here once
//! read, and dropped when the change feed says another process's commit touched that pair
//! ([`ChangeFeed::publish`](crate::change_feed::ChangeFeed::publish) calls
//! [`CurrentRows::drop_pairs`]). The next aggregation reads the dropped pairs again, and only
//! them. This process's own commits are applied to the pairs they touched instead, before the
//! writer answers, so a caller reads its own writes without a read of the store
//! ([`CurrentRows::apply_commit`], from the versions the commit closed and opened).
//!
//! A read that was under way when a pair was dropped must not put back what it read before the
//! commit: every drop takes the next sequence number and is logged, and [`CurrentRows::fill`]
//! keeps a pair only when no drop of it (or of everything) came after the read's ticket. The
//! log holds the last [`LOG`] drops; a read older than that keeps nothing.
//!
//! Bounds: at most `max_rows` rows in all (the oldest pairs go first), and a pair with more
//! than a quarter of that is never kept. Other processes' commits arrive by the PostgreSQL
//! listener; when it loses its connection, or a commit's outcome is unknown, everything is
//! dropped. Only the current values are kept: a read `as_of` an instant starts from them and
//! corrects them by the versions closed after it ([`crate::as_of`]).
//!
//! Each pair's rows come as a [`PairRows`]: sorted by metric, the rows' submission ids and their
//! keys' ids ([`key_ids`]) side by side, and each metric's run under a tag that names its
//! content. A pair dropped by a commit is remembered (at most [`PREVIOUS_ROWS`] rows of such
//! pairs) until it is read again, so that the runs the commit did not change keep their tags.
//! An aggregation whose metric comes in the same tags as a figure it kept takes that figure
//! without looking at a row ([`crate::aggregation::aggregate_pairs`]): after one value changed,
//! only its metric's run has a new tag.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use citycredit_core::period::Period;

use crate::key_ids;
use crate::store::VersionRow;

/// Drops remembered for reads under way.
const LOG: usize = 4096;

/// (region reported at, period).
type Pair = (String, String);

/// The last tag given to a run of a [`PairRows`] (process-wide: tags are never reused).
static TAGS: AtomicU64 = AtomicU64::new(0);

fn new_tag() -> u64 {
    TAGS.fetch_add(1, Ordering::Relaxed) + 1
}

/// Previous reads kept to pass their tags on, at most this many rows in all.
const PREVIOUS_ROWS: usize = 8192;

/// Rows of kept pairs that one commit of this process changes in place, at most
/// ([`CurrentRows::apply_commit`]); past them, pairs are dropped and read again when asked for.
const APPLIED_ROWS: usize = 4096;

/// Metric names shared by every run that names them (at most [`NAMES`] of them), so that runs
/// of one metric are grouped by the address of their name without reading it.
static METRIC_NAMES: Mutex<BTreeSet<Arc<str>>> = Mutex::new(BTreeSet::new());

/// Distinct metric names shared; past that, a name is a copy of its own (grouping then
/// compares the texts, see [`crate::aggregation::aggregate_pairs`]).
const NAMES: usize = 4096;

/// The shared copy of each of `metrics`.
fn shared_names<'a>(metrics: impl Iterator<Item = &'a str>) -> Vec<Arc<str>> {
    let mut names = METRIC_NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    metrics
        .map(|m| match names.get(m) {
            Some(name) => Arc::clone(name),
            None => {
                let name: Arc<str> = Arc::from(m);
                if names.len() < NAMES {
                    names.insert(Arc::clone(&name));
                }
                name
            }
        })
        .collect()
}

/// One read's current rows of one (region, period) pair (or of rows outside the pairs asked),
/// sorted by metric, then submission, and never changed once made. Each metric's rows form a
/// run with a tag that names the run's content: a run gets a new tag unless the pair's
/// previous read had the same metric's run with the same submission ids (the same versions:
/// a version's content never changes), which passes its tag on.
#[derive(Debug)]
pub struct PairRows {
    rows: Box<[VersionRow]>,
    /// `rows[i].submission_id`, side by side: a run's ids without touching its rows.
    ids: Box<[i64]>,
    /// The id of `rows[i]`'s key ([`key_ids`]), side by side.
    keys: Box<[u32]>,
    /// Each metric's run, in metric order.
    runs: Box<[RunEntry]>,
    /// The period of every row, parsed once, when they all have the same (a pair's do).
    period: Option<Period>,
    /// Whether every row has the first one's region and period (a pair's do).
    one_pair: bool,
    /// The latest accept time of the rows (`i64::MIN` for none): an `as_of` read before it
    /// must take the pair apart ([`crate::as_of`]).
    newest_accept: i64,
}

#[derive(Debug)]
struct RunEntry {
    rows: Range<usize>,
    tag: u64,
    /// The shared copy of the metric's name, as far as there is one ([`shared_names`]).
    metric: Arc<str>,
}

/// One metric's run in a [`PairRows`].
pub struct Run<'a> {
    /// The metric; runs of one metric mostly share this copy of its name (compare the
    /// addresses first, then the texts).
    pub metric: &'a Arc<str>,
    /// Names the run's content: the same tag, the same rows.
    pub tag: u64,
    pub rows: &'a [VersionRow],
    /// The rows' submission ids, ascending.
    pub ids: &'a [i64],
    /// The ids of the rows' keys ([`key_ids`]; [`key_ids::NO_ID`] past their bound).
    pub keys: &'a [u32],
    /// The period of every row, when they all have the same one and it parses.
    pub period: Option<Period>,
}

impl PairRows {
    /// Sorts `rows` by metric and submission and tags each metric's run, passing on the tags
    /// of `previous` (the same pair's read before) whose runs have the same ids.
    pub fn new(rows: Vec<VersionRow>, previous: Option<&PairRows>) -> PairRows {
        PairRows::build(rows, previous, true)
    }

    /// As [`PairRows::new`], with names copied rather than shared and keys without ids: as
    /// past [`NAMES`] and [`key_ids::KEYS`].
    #[cfg(test)]
    pub(crate) fn with_names_of_its_own(rows: Vec<VersionRow>) -> PairRows {
        PairRows::build(rows, None, false)
    }

    fn build(mut rows: Vec<VersionRow>, previous: Option<&PairRows>, share: bool) -> PairRows {
        rows.sort_unstable_by(|a, b| {
            (a.metric.as_str(), a.submission_id).cmp(&(b.metric.as_str(), b.submission_id))
        });
        let ids: Box<[i64]> = rows.iter().map(|r| r.submission_id).collect();
        let keys: Box<[u32]> = if share {
            key_ids::of(&rows).into()
        } else {
            vec![key_ids::NO_ID; rows.len()].into()
        };
        let mut bounds = Vec::new();
        let mut start = 0;
        for i in 1..=rows.len() {
            if i == rows.len() || rows[i].metric != rows[start].metric {
                bounds.push(start..i);
                start = i;
            }
        }
        let metrics = bounds.iter().map(|r| rows[r.start].metric.as_str());
        let names = if share {
            shared_names(metrics)
        } else {
            metrics.map(Arc::from).collect()
        };
        let runs = bounds
            .into_iter()
            .zip(names)
            .map(|(range, metric)| {
                let tag = previous
                    .and_then(|p| p.run_of(&metric))
                    .filter(|before| before.ids == &ids[range.clone()])
                    .map_or_else(new_tag, |before| before.tag);
                RunEntry {
                    rows: range,
                    tag,
                    metric,
                }
            })
            .collect();
        // One look at every row: do they share the first one's period, and its region too?
        let (mut same_period, mut one_pair) = (true, true);
        let mut newest_accept = i64::MIN;
        if let Some(first) = rows.first() {
            for r in &rows {
                same_period &= r.period == first.period;
                one_pair &= same_period && r.region == first.region;
                newest_accept = newest_accept.max(r.accepted_micros);
            }
        } else {
            one_pair = false;
        }
        let period = rows
            .first()
            .filter(|_| same_period)
            .and_then(|first| first.period.parse().ok());
        PairRows {
            ids,
            keys,
            rows: rows.into(),
            runs,
            period,
            one_pair,
            newest_accept,
        }
    }

    /// The latest accept time of the rows (`i64::MIN` when there are none).
    pub fn newest_accept(&self) -> i64 {
        self.newest_accept
    }

    /// (region, period) of every row, when they all have the same (none when there are none).
    pub fn pair(&self) -> Option<(&str, &str)> {
        let first = self.rows.first().filter(|_| self.one_pair)?;
        Some((&first.region, &first.period))
    }

    pub fn rows(&self) -> &[VersionRow] {
        &self.rows
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn run<'a>(&'a self, r: &'a RunEntry) -> Run<'a> {
        Run {
            metric: &r.metric,
            tag: r.tag,
            rows: &self.rows[r.rows.clone()],
            ids: &self.ids[r.rows.clone()],
            keys: &self.keys[r.rows.clone()],
            period: self.period,
        }
    }

    /// Each metric's run, in metric order.
    pub fn runs(&self) -> impl Iterator<Item = Run<'_>> {
        self.runs.iter().map(|r| self.run(r))
    }

    /// `metric`'s run, if it has rows here.
    fn run_of(&self, metric: &str) -> Option<Run<'_>> {
        let i = self
            .runs
            .binary_search_by(|r| (*r.metric).cmp(metric))
            .ok()?;
        Some(self.run(&self.runs[i]))
    }
}

/// The cache. Cheap to share; every method takes one short lock.
#[derive(Debug)]
pub struct CurrentRows {
    max_rows: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Each kept pair's rows and the stamp it was kept at.
    entries: HashMap<Pair, (Arc<PairRows>, u64)>,
    /// Kept pairs by stamp, oldest first: the eviction order.
    order: BTreeMap<u64, Pair>,
    rows: usize,
    /// The number of the last drop (and the last stamp).
    seq: u64,
    /// The last drops: (seq, pair), None for everything.
    log: VecDeque<(u64, Option<Pair>)>,
    /// The highest seq that has left the log.
    forgotten: u64,
    /// What dropped pairs held, until they are read again ([`PairRows::new`]'s `previous`).
    previous: HashMap<Pair, Arc<PairRows>>,
    previous_rows: usize,
}

/// What [`CurrentRows::lookup`] found.
#[derive(Debug)]
pub struct Lookup {
    /// The rows of the pairs kept, outside the product to read.
    pub kept: Vec<Arc<PairRows>>,
    /// Regions and periods to read from the store: every pair missing lies in their product
    /// (empty when nothing is missing).
    pub regions: Vec<String>,
    pub periods: Vec<String>,
    /// Passed back to [`CurrentRows::fill`].
    pub ticket: u64,
}

impl CurrentRows {
    /// A cache of at most `max_rows` rows (0: nothing is ever kept).
    pub fn new(max_rows: usize) -> CurrentRows {
        CurrentRows {
            max_rows,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The kept rows of `regions` × `periods`, and what to read for the rest.
    pub fn lookup(&self, regions: &[String], periods: &[String]) -> Lookup {
        let s = self.state();
        // One look at each pair.
        let mut missing_regions = HashSet::new();
        let mut missing_periods = HashSet::new();
        let mut found = Vec::with_capacity(regions.len() * periods.len());
        for r in regions {
            for p in periods {
                match s.entries.get(&(r.clone(), p.clone())) {
                    Some((rows, _)) => found.push((r.as_str(), p.as_str(), Arc::clone(rows))),
                    None => {
                        missing_regions.insert(r.as_str());
                        missing_periods.insert(p.as_str());
                    }
                }
            }
        }
        let kept = found
            .into_iter()
            .filter(|(r, p, _)| !(missing_regions.contains(r) && missing_periods.contains(p)))
            .map(|(_, _, rows)| rows)
            .collect();
        // In the order asked, so the statement is the same for the same pairs.
        let regions = regions
            .iter()
            .filter(|r| missing_regions.contains(r.as_str()))
            .cloned()
            .collect();
        let periods = periods
            .iter()
            .filter(|p| missing_periods.contains(p.as_str()))
            .cloned()
            .collect();
        Lookup {
            kept,
            regions,
            periods,
            ticket: s.seq,
        }
    }

    /// Keeps the rows read for `regions` × `periods` (each pair, also one without rows), except
    /// the pairs dropped since `ticket`, and returns them all, a slice per pair, for the
    /// aggregation that read them (moved, not copied).
    pub fn fill(
        &self,
        ticket: u64,
        regions: &[String],
        periods: &[String],
        rows: Vec<VersionRow>,
    ) -> Vec<Arc<PairRows>> {
        // Region, then period: a row finds its pair by borrowed lookups.
        let mut by_pair: HashMap<&str, HashMap<&str, Vec<VersionRow>>> = HashMap::new();
        for r in regions {
            let periods_of = by_pair.entry(r.as_str()).or_default();
            for p in periods {
                periods_of.insert(p.as_str(), Vec::new());
            }
        }
        let mut outside = Vec::new();
        for row in rows {
            match by_pair
                .get_mut(row.region.as_str())
                .and_then(|ps| ps.get_mut(row.period.as_str()))
            {
                Some(v) => v.push(row),
                None => outside.push(row),
            }
        }
        let grouped: Vec<(Pair, Vec<VersionRow>)> = by_pair
            .into_iter()
            .flat_map(|(r, ps)| {
                ps.into_iter()
                    .map(move |(p, v)| ((r.to_owned(), p.to_owned()), v))
            })
            .collect();
        // What each pair held before a commit dropped it, to pass on its unchanged runs' tags.
        let previous: Vec<Option<Arc<PairRows>>> = {
            let mut s = self.state();
            grouped
                .iter()
                .map(|(pair, _)| s.take_previous(pair))
                .collect()
        };
        let read: Vec<(Pair, Arc<PairRows>)> = grouped
            .into_iter()
            .zip(previous)
            .map(|((pair, v), before)| (pair, Arc::new(PairRows::new(v, before.as_deref()))))
            .collect();
        let mut out: Vec<Arc<PairRows>> = read.iter().map(|(_, v)| Arc::clone(v)).collect();
        if !outside.is_empty() {
            out.push(Arc::new(PairRows::new(outside, None)));
        }
        self.keep(ticket, read);
        out
    }

    /// Keeps `read` (each pair's rows as read or made after `ticket`), except the pairs dropped
    /// since `ticket`: their rows may be older than the drop.
    fn keep(&self, ticket: u64, read: Vec<(Pair, Arc<PairRows>)>) {
        if self.max_rows == 0 {
            return;
        }
        let mut s = self.state();
        if s.forgotten > ticket {
            return; // drops after the read may have left the log
        }
        let mut dropped: HashSet<&Pair> = HashSet::new();
        let mut everything = false;
        for (seq, pair) in s.log.iter().rev() {
            if *seq <= ticket {
                break;
            }
            match pair {
                None => everything = true,
                Some(pair) => {
                    dropped.insert(pair);
                }
            }
        }
        if everything {
            return; // everything was dropped after the read began
        }
        let keep: Vec<(Pair, Arc<PairRows>)> = read
            .into_iter()
            .filter(|(pair, v)| !dropped.contains(pair) && v.len() <= self.max_rows / 4)
            .collect();
        drop(dropped);
        for (pair, v) in keep {
            s.insert(pair, v, self.max_rows);
        }
    }

    /// Applies a commit of this process to the pairs it changed, before its callers are
    /// answered: a kept pair's rows become its rows without the versions the commit closed
    /// (`closed`: their submission ids) and with those it opened, which is what a read after
    /// the commit gives, without that read. Each pair is dropped first, so a read that began
    /// before keeps nothing of it; a pair not kept stays dropped, as by
    /// [`CurrentRows::drop_pairs`], and so do the kept ones past [`APPLIED_ROWS`] rows in all
    /// (copying them would cost the writer more than a read costs the next reader).
    pub fn apply_commit<'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        closed: &[i64],
        opened: &[VersionRow],
    ) {
        let (ticket, kept) = {
            let mut s = self.state();
            let (mut kept, mut rows) = (Vec::new(), 0);
            for (r, p) in pairs {
                s.seq += 1;
                let seq = s.seq;
                let pair = (r.to_owned(), p.to_owned());
                if let Some(before) = s.remove(&pair) {
                    if rows + before.len() <= APPLIED_ROWS {
                        rows += before.len();
                        kept.push((pair.clone(), before));
                    } else {
                        s.remember(pair.clone(), before);
                    }
                }
                s.log_drop(seq, Some(pair));
            }
            (s.seq, kept)
        };
        if kept.is_empty() {
            return;
        }
        let closed: HashSet<i64> = closed.iter().copied().collect();
        // The opened versions of each kept pair, in one pass (a commit may open thousands over
        // many pairs).
        let mut new_of: Vec<Vec<&VersionRow>> = vec![Vec::new(); kept.len()];
        {
            let index: HashMap<(&str, &str), usize> = kept
                .iter()
                .enumerate()
                .map(|(i, (pair, _))| ((pair.0.as_str(), pair.1.as_str()), i))
                .collect();
            for v in opened {
                if let Some(&i) = index.get(&(v.region.as_str(), v.period.as_str())) {
                    new_of[i].push(v);
                }
            }
        }
        let (mut applied, mut to_read) = (Vec::with_capacity(kept.len()), Vec::new());
        for ((pair, before), new) in kept.into_iter().zip(new_of) {
            let new_keys: HashSet<_> = new.iter().map(|v| v.key()).collect();
            let rows: Vec<&VersionRow> = before
                .rows()
                .iter()
                .filter(|v| !closed.contains(&v.submission_id))
                .collect();
            // A key left with a version beside the one opened: the kept rows missed a commit of
            // another process (its notification still on the way), whose version this commit
            // closed. Read the pair again rather than keep two values of one key.
            if rows.iter().any(|v| new_keys.contains(&v.key())) {
                to_read.push((pair, before));
                continue;
            }
            let rows = rows.into_iter().chain(new).cloned().collect();
            applied.push((pair, Arc::new(PairRows::new(rows, Some(&before)))));
        }
        if !to_read.is_empty() {
            // Remembered like a dropped pair, so its unchanged runs keep their tags when read.
            let mut s = self.state();
            for (pair, before) in to_read {
                s.remember(pair, before);
            }
        }
        self.keep(ticket, applied);
    }

    /// Drops the pairs a commit changed.
    pub fn drop_pairs<'a>(&self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let mut s = self.state();
        for (r, p) in pairs {
            s.seq += 1;
            let seq = s.seq;
            let pair = (r.to_owned(), p.to_owned());
            if let Some(rows) = s.remove(&pair) {
                s.remember(pair.clone(), rows);
            }
            s.log_drop(seq, Some(pair));
        }
    }

    /// Drops everything (a commit whose outcome is unknown, notifications that may be lost).
    pub fn drop_all(&self) {
        let mut s = self.state();
        s.seq += 1;
        let seq = s.seq;
        s.entries.clear();
        s.order.clear();
        s.rows = 0;
        s.previous.clear();
        s.previous_rows = 0;
        s.log_drop(seq, None);
    }

    /// (pairs, rows) kept now.
    pub fn size(&self) -> (usize, usize) {
        let s = self.state();
        (s.entries.len(), s.rows)
    }
}

impl State {
    fn remove(&mut self, pair: &Pair) -> Option<Arc<PairRows>> {
        let (rows, stamp) = self.entries.remove(pair)?;
        self.rows -= rows.len();
        self.order.remove(&stamp);
        Some(rows)
    }

    /// Remembers what a dropped pair held until it is read again; past [`PREVIOUS_ROWS`] rows
    /// (a commit that touched many pairs), everything remembered is forgotten.
    fn remember(&mut self, pair: Pair, rows: Arc<PairRows>) {
        if let Some(old) = self.previous.remove(&pair) {
            self.previous_rows -= old.len();
        }
        if self.previous_rows + rows.len() > PREVIOUS_ROWS {
            self.previous.clear();
            self.previous_rows = 0;
            if rows.len() > PREVIOUS_ROWS {
                return;
            }
        }
        self.previous_rows += rows.len();
        self.previous.insert(pair, rows);
    }

    fn take_previous(&mut self, pair: &Pair) -> Option<Arc<PairRows>> {
        let rows = self.previous.remove(pair)?;
        self.previous_rows -= rows.len();
        Some(rows)
    }

    fn insert(&mut self, pair: Pair, rows: Arc<PairRows>, max_rows: usize) {
        self.remove(&pair);
        while self.rows + rows.len() > max_rows {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((old, _)) = self.entries.remove(&oldest) {
                self.rows -= old.len();
            }
        }
        // A stamp shares the drops' counter: both only grow.
        self.seq += 1;
        let stamp = self.seq;
        self.rows += rows.len();
        self.order.insert(stamp, pair.clone());
        self.entries.insert(pair, (rows, stamp));
    }

    fn log_drop(&mut self, seq: u64, pair: Option<Pair>) {
        self.log.push_back((seq, pair));
        while self.log.len() > LOG {
            if let Some((old, _)) = self.log.pop_front() {
                self.forgotten = old;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, region: &str, period: &str) -> VersionRow {
        VersionRow {
            submission_id: id,
            metric: "B01".into(),
            region: region.into(),
            period: period.into(),
            department: "d".into(),
            domain: String::new(),
            task_id: String::new(),
            value: "1".into(),
            accepted_micros: id,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn ids(l: &Lookup) -> Vec<i64> {
        let mut v: Vec<i64> = l
            .kept
            .iter()
            .flat_map(|rows| rows.rows().iter().map(|r| r.submission_id))
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn pair_rows_run_by_metric_with_their_ids_and_pass_on_the_tags_of_unchanged_runs() {
        let mut rows = vec![
            row(5, "A", "2026"),
            row(2, "A", "2026"),
            row(9, "A", "2026"),
        ];
        rows[0].metric = "C".into();
        rows[2].metric = "A".into();
        rows.push(row(1, "A", "2026"));
        let pair = PairRows::new(rows.clone(), None);
        let runs = |p: &PairRows| -> Vec<(String, Vec<i64>, Vec<i64>)> {
            p.runs()
                .map(|r| {
                    let ids = r.rows.iter().map(|v| v.submission_id).collect();
                    (r.metric.to_string(), ids, r.ids.to_vec())
                })
                .collect()
        };
        let tags = |p: &PairRows| -> Vec<u64> { p.runs().map(|r| r.tag).collect() };
        assert_eq!(
            runs(&pair),
            [
                ("A".to_owned(), vec![9], vec![9]),
                ("B01".to_owned(), vec![1, 2], vec![1, 2]),
                ("C".to_owned(), vec![5], vec![5])
            ]
        );
        let t = tags(&pair);
        assert!(t[0] != t[1] && t[1] != t[2] && t[0] != t[2]);
        // Read again without what it held before: every run gets a new tag.
        let fresh = PairRows::new(rows.clone(), None);
        assert!(tags(&fresh).iter().all(|tag| !t.contains(tag)));
        // Read again after B01's run changed (2 superseded by 3) and C's value went away:
        // A keeps its tag, B01 gets a new one, C has no run.
        rows.retain(|r| r.metric != "C" && r.submission_id != 2);
        rows.push(row(3, "A", "2026"));
        let after = PairRows::new(rows.clone(), Some(&pair));
        assert_eq!(runs(&after).len(), 2);
        let a = tags(&after);
        assert_eq!(a[0], t[0], "A's run is unchanged");
        assert!(a[1] != t[1] && !t.contains(&a[1]), "B01's run changed");
        // A run with fewer ids (a value retracted) is a change too.
        rows.retain(|r| r.submission_id != 3);
        let retracted = PairRows::new(rows, Some(&after));
        assert_ne!(tags(&retracted)[1], a[1]);
        let empty = PairRows::new(Vec::new(), Some(&pair));
        assert_eq!((empty.runs().count(), empty.is_empty()), (0, true));
    }

    #[test]
    fn a_pair_read_again_after_a_drop_keeps_the_tags_of_its_unchanged_runs() {
        let c = CurrentRows::new(1000);
        let (regions, periods) = (strings(&["A"]), strings(&["2026"]));
        let mut b = row(2, "A", "2026");
        b.metric = "B02".into();
        // A read of the pair whose store answers `rows`.
        let read = |rows: Vec<VersionRow>| {
            let l = c.lookup(&regions, &periods);
            c.fill(l.ticket, &l.regions, &l.periods, rows)
        };
        let first = read(vec![row(1, "A", "2026"), b.clone()]);
        let tags = |p: &[Arc<PairRows>]| -> Vec<u64> { p[0].runs().map(|r| r.tag).collect() };
        c.drop_pairs([("A", "2026")]);
        let again = read(vec![row(3, "A", "2026"), b.clone()]);
        let (t, u) = (tags(&first), tags(&again));
        assert!(t[0] != u[0] && t[1] == u[1], "{t:?} {u:?}");
        // What was remembered is passed on once: a drop of everything forgets it.
        c.drop_pairs([("A", "2026")]);
        c.drop_all();
        let after_all = read(vec![row(3, "A", "2026"), b]);
        assert!(tags(&after_all).iter().all(|tag| !u.contains(tag)));
    }

    #[test]
    fn a_dropped_pair_is_read_again_alone_and_the_rest_come_from_memory() {
        let c = CurrentRows::new(1000);
        let (regions, periods) = (strings(&["A", "B"]), strings(&["2026", "2026-01"]));
        let first = c.lookup(&regions, &periods);
        assert_eq!((first.regions.len(), first.periods.len()), (2, 2));
        let rows = [row(1, "A", "2026"), row(2, "B", "2026-01")];
        c.fill(first.ticket, &first.regions, &first.periods, rows.to_vec());
        // Four pairs kept, two of them without rows.
        assert_eq!(c.size(), (4, 2));
        let all = c.lookup(&regions, &periods);
        assert!(all.regions.is_empty() && all.periods.is_empty());
        assert_eq!(ids(&all), vec![1, 2]);

        c.drop_pairs([("B", "2026-01")]);
        let after = c.lookup(&regions, &periods);
        assert_eq!(
            (&after.regions, &after.periods),
            (&strings(&["B"]), &strings(&["2026-01"]))
        );
        assert_eq!(ids(&after), vec![1], "the other pairs from memory");
    }

    #[test]
    fn a_read_under_way_when_its_pair_is_dropped_keeps_nothing_of_it() {
        let c = CurrentRows::new(1000);
        let (regions, periods) = (strings(&["A", "B"]), strings(&["2026"]));
        let l = c.lookup(&regions, &periods);
        // A commit lands between the read and the fill.
        c.drop_pairs([("A", "2026")]);
        c.fill(l.ticket, &l.regions, &l.periods, vec![row(1, "A", "2026")]);
        let again = c.lookup(&regions, &periods);
        assert_eq!(
            again.regions,
            strings(&["A"]),
            "A read before its change is not kept"
        );
        assert_eq!(c.size(), (1, 0), "B is kept");

        let l = c.lookup(&regions, &periods);
        c.drop_all();
        c.fill(l.ticket, &l.regions, &l.periods, vec![row(2, "A", "2026")]);
        assert_eq!(
            c.size(),
            (0, 0),
            "nothing read before a drop of everything is kept"
        );
    }

    #[test]
    fn this_processs_commit_is_applied_to_the_kept_pairs_without_a_read() {
        let c = CurrentRows::new(1000);
        let (regions, periods) = (strings(&["A", "B"]), strings(&["2026"]));
        let mut other = row(2, "A", "2026");
        other.metric = "B02".into();
        let l = c.lookup(&regions, &periods);
        let first = c.fill(
            l.ticket,
            &l.regions,
            &l.periods,
            vec![row(1, "A", "2026"), other.clone(), row(5, "B", "2026")],
        );
        let tags_of = |p: &PairRows| -> Vec<(String, u64)> {
            p.runs().map(|r| (r.metric.to_string(), r.tag)).collect()
        };
        let a_before = first
            .iter()
            .find(|p| p.pair() == Some(("A", "2026")))
            .map(|p| tags_of(p))
            .unwrap_or_default();
        // A commit supersedes A's B01 value (1 by 3) and adds a key to B.
        let mut b_new = row(4, "B", "2026");
        b_new.department = "e".into();
        c.apply_commit(
            [("A", "2026"), ("B", "2026")],
            &[1],
            &[row(3, "A", "2026"), b_new],
        );
        // Both pairs come from memory, as a read after the commit gives them.
        let after = c.lookup(&regions, &periods);
        assert!(after.regions.is_empty(), "no read: {:?}", after.regions);
        assert_eq!(ids(&after), vec![2, 3, 4, 5]);
        // The unchanged run keeps its tag; the changed one gets a new tag.
        let a_after = after
            .kept
            .iter()
            .find(|p| p.pair() == Some(("A", "2026")))
            .map(|p| tags_of(p))
            .unwrap_or_default();
        assert_eq!(a_after[1], a_before[1], "B02 unchanged");
        assert_ne!(a_after[0].1, a_before[0].1, "B01 changed");
        assert_eq!(c.size(), (2, 4));
    }

    #[test]
    fn a_commit_applied_where_the_kept_rows_missed_another_commit_leaves_the_pair_to_be_read() {
        let c = CurrentRows::new(1000);
        let (regions, periods) = (strings(&["A", "B"]), strings(&["2026"]));
        let l = c.lookup(&regions, &periods);
        // A's kept rows still hold 1, which another process superseded by 2 (its notification
        // on the way); this commit closes 2 and opens 3 for the same key.
        c.fill(
            l.ticket,
            &l.regions,
            &l.periods,
            vec![row(1, "A", "2026"), row(5, "B", "2026")],
        );
        c.apply_commit([("A", "2026")], &[2], &[row(3, "A", "2026")]);
        let after = c.lookup(&regions, &periods);
        assert_eq!(after.regions, strings(&["A"]), "A is read again");
        assert_eq!(ids(&after), vec![5]);
        // A pair not kept stays dropped; a read under way keeps nothing of it.
        let l = c.lookup(&regions, &periods);
        c.apply_commit([("A", "2026")], &[], &[row(6, "A", "2026")]);
        c.fill(l.ticket, &l.regions, &l.periods, vec![row(3, "A", "2026")]);
        assert_eq!(c.lookup(&regions, &periods).regions, strings(&["A"]));
    }

    #[test]
    fn a_read_older_than_the_log_keeps_nothing() {
        let c = CurrentRows::new(1000);
        let (regions, periods) = (strings(&["A"]), strings(&["2026"]));
        let l = c.lookup(&regions, &periods);
        for i in 0..=LOG {
            c.drop_pairs([("Z", format!("{i}").as_str())]);
        }
        c.fill(l.ticket, &l.regions, &l.periods, vec![row(1, "A", "2026")]);
        assert_eq!(c.size(), (0, 0));
    }

    #[test]
    fn the_bound_evicts_the_oldest_pairs_and_refuses_a_pair_above_a_quarter() {
        let c = CurrentRows::new(8);
        for (i, p) in ["1", "2", "3", "4", "5"].iter().enumerate() {
            let periods = strings(&[p]);
            let l = c.lookup(&strings(&["A"]), &periods);
            let id = i64::try_from(i).unwrap_or(0);
            let rows = [row(2 * id, "A", p), row(2 * id + 1, "A", p)];
            c.fill(l.ticket, &l.regions, &l.periods, rows.to_vec());
        }
        assert_eq!(c.size(), (4, 8), "at the bound");
        let first = c.lookup(&strings(&["A"]), &strings(&["1"]));
        assert_eq!(first.periods, strings(&["1"]), "the oldest pair went first");
        let last = c.lookup(&strings(&["A"]), &strings(&["5"]));
        assert!(last.periods.is_empty(), "the newest is kept");

        let l = c.lookup(&strings(&["B"]), &strings(&["2026"]));
        let wide: Vec<VersionRow> = (0..3).map(|i| row(100 + i, "B", "2026")).collect();
        c.fill(l.ticket, &l.regions, &l.periods, wide);
        assert_eq!(c.size(), (4, 8), "3 rows is above a quarter of 8: not kept");

        let off = CurrentRows::new(0);
        let l = off.lookup(&strings(&["A"]), &strings(&["1"]));
        off.fill(l.ticket, &l.regions, &l.periods, Vec::new());
        assert_eq!(off.size(), (0, 0), "0 keeps nothing");
    }
}
