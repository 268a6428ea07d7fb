//! Each metric's aggregated figure, kept to be used again while what it was computed from
//! stays the same. A figure for (region, period, selection, metric) is a function of the value
//! versions behind it, the APPROVED sign-offs and the catalog (fixed for an [`Ingestion`]): a
//! version's content never changes once written (only its validity does), so the sorted
//! submission ids of the metric's versions name its input exactly. [`aggregate`] looks each
//! metric up by those ids and computes only the metrics whose ids differ, so after one county
//! value changes the city's aggregation computes that value's metric, not all of them.
//!
//! Nothing here has to be told about commits: a changed value has another submission id, a
//! retracted one leaves the ids, and sign-offs are compared in full on every use. At most
//! `max_sources` source references are kept over all groups; the least recently used group
//! goes first, and a group larger than the bound is not kept.
//!
//! [`Ingestion`]: crate::Ingestion
//! [`aggregate`]: crate::aggregation::aggregate

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use citycredit::aggregates::{PeriodMarker, Selection, SourceRef};
use citycredit_core::rules::Figure;

use crate::gate::Approvals;

/// What one metric's versions aggregate to.
#[derive(Debug)]
pub struct MetricFigures {
    /// The submission ids of the versions it was computed from, sorted.
    pub ids: Vec<i64>,
    /// The tags of the [`PairRows`](crate::current_rows::PairRows) runs those versions came
    /// in, ascending (None: they came otherwise). The same tags are the same versions.
    pub tags: Option<Vec<u64>>,
    /// None when nothing reaches the period (not reported).
    pub figure: Option<Figure>,
    /// The submissions behind the figure (empty: none listed).
    pub sources: Arc<[SourceRef]>,
    /// How values of some keys reached the period.
    pub markers: Arc<[PeriodMarker]>,
}

impl MetricFigures {
    fn weight(&self) -> usize {
        self.sources.len() + self.markers.len() + 1
    }
}

/// Which aggregation a group of figures belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupKey {
    pub region: String,
    pub period: String,
    pub selection: Selection,
}

/// The figures of one aggregation, valid while the sign-offs are `approvals`.
struct Group {
    approvals: Approvals,
    metrics: Arc<HashMap<String, Arc<MetricFigures>>>,
    weight: usize,
    used: u64,
}

#[derive(Default)]
struct State {
    groups: HashMap<GroupKey, Group>,
    weight: usize,
    clock: u64,
}

/// How one aggregation meets the figures kept.
#[derive(Clone, Copy)]
pub enum Figures<'a> {
    /// Computes every metric.
    Fresh,
    /// Takes the figures kept whose ids match and keeps nothing: for a read as of a past
    /// instant, whose figures must not replace the current ones kept under the same key.
    Use(&'a KeptFigures),
    /// Takes the figures kept whose ids match and keeps what it computed.
    UseAndKeep(&'a KeptFigures),
}

impl<'a> Figures<'a> {
    /// Where figures are taken from.
    pub fn uses(self) -> Option<&'a KeptFigures> {
        match self {
            Figures::Fresh => None,
            Figures::Use(k) | Figures::UseAndKeep(k) => Some(k),
        }
    }

    /// Where what is computed is kept.
    pub fn keeps(self) -> Option<&'a KeptFigures> {
        match self {
            Figures::UseAndKeep(k) => Some(k),
            Figures::Fresh | Figures::Use(_) => None,
        }
    }
}

/// The figures kept, bounded by `max_sources`.
pub struct KeptFigures {
    state: Mutex<State>,
    max_sources: usize,
}

impl KeptFigures {
    /// At most about `max_sources` source references kept (0 keeps nothing).
    pub fn new(max_sources: usize) -> KeptFigures {
        KeptFigures {
            state: Mutex::new(State::default()),
            max_sources,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The figures kept for `key` if they were computed under the same sign-offs.
    pub fn kept(
        &self,
        key: &GroupKey,
        approvals: &Approvals,
    ) -> Option<Arc<HashMap<String, Arc<MetricFigures>>>> {
        if self.max_sources == 0 {
            return None;
        }
        let mut state = self.state();
        state.clock += 1;
        let now = state.clock;
        let group = state.groups.get_mut(key)?;
        if group.approvals != *approvals {
            return None;
        }
        group.used = now;
        Some(Arc::clone(&group.metrics))
    }

    /// Keeps `metrics` (every metric of one aggregation) as the figures of `key` under
    /// `approvals`, in place of what was kept for it.
    pub fn keep(
        &self,
        key: GroupKey,
        approvals: &Approvals,
        metrics: HashMap<String, Arc<MetricFigures>>,
    ) {
        let weight: usize = metrics.values().map(|m| m.weight()).sum();
        let mut state = self.state();
        if let Some(old) = state.groups.remove(&key) {
            state.weight -= old.weight;
        }
        if weight > self.max_sources {
            return;
        }
        state.clock += 1;
        let used = state.clock;
        state.weight += weight;
        state.groups.insert(
            key,
            Group {
                approvals: approvals.clone(),
                metrics: Arc::new(metrics),
                weight,
                used,
            },
        );
        while state.weight > self.max_sources {
            let Some(oldest) = state
                .groups
                .iter()
                .min_by_key(|(_, g)| g.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(g) = state.groups.remove(&oldest) {
                state.weight -= g.weight;
            }
        }
    }

    /// (groups, source references) kept now.
    pub fn size(&self) -> (usize, usize) {
        let state = self.state();
        (state.groups.len(), state.weight)
    }

    /// Forgets everything (benchmarks' anchors).
    pub fn clear(&self) {
        let mut state = self.state();
        state.groups.clear();
        state.weight = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(region: &str) -> GroupKey {
        GroupKey {
            region: region.into(),
            period: "2026".into(),
            selection: Selection::All,
        }
    }

    fn figures(ids: &[i64], sources: usize) -> HashMap<String, Arc<MetricFigures>> {
        let source = SourceRef {
            submission_id: 1,
            department: "samr".into(),
            region: "330800".into(),
            domain: String::new(),
            task_id: String::new(),
            period: "2026".into(),
            value: Default::default(),
            accept_micros: 1,
            approved_period: None,
        };
        HashMap::from([(
            "uscc.codes_total".to_owned(),
            Arc::new(MetricFigures {
                ids: ids.to_vec(),
                tags: None,
                figure: None,
                sources: vec![source; sources].into(),
                markers: Arc::from([]),
            }),
        )])
    }

    #[test]
    fn figures_are_kept_per_group_and_only_under_the_same_sign_offs() {
        let kept = KeptFigures::new(100);
        let none = Approvals::default();
        let some = Approvals::new([("samr".into(), "330800".into(), "2026".into())]);
        assert!(kept.kept(&key("330800"), &none).is_none());
        kept.keep(key("330800"), &none, figures(&[1, 2], 2));
        let got = kept.kept(&key("330800"), &none).unwrap_or_default();
        assert_eq!(got["uscc.codes_total"].ids, [1, 2]);
        assert!(kept.kept(&key("330802"), &none).is_none());
        // Another sign-off: what was kept does not apply.
        assert!(kept.kept(&key("330800"), &some).is_none());
        // Kept again for the same group: replaced, counted once.
        kept.keep(key("330800"), &some, figures(&[1, 3], 4));
        assert_eq!(kept.size(), (1, 5));
        assert!(kept.kept(&key("330800"), &none).is_none());
        assert!(kept.kept(&key("330800"), &some).is_some());
    }

    #[test]
    fn the_bound_lets_the_least_recently_used_group_go_and_refuses_one_too_large() {
        let kept = KeptFigures::new(10);
        let none = Approvals::default();
        kept.keep(key("a"), &none, figures(&[1], 3)); // weight 4
        kept.keep(key("b"), &none, figures(&[2], 3)); // 8
        assert!(kept.kept(&key("a"), &none).is_some()); // a used after b
        kept.keep(key("c"), &none, figures(&[3], 3)); // 12 > 10: b goes
        assert!(kept.kept(&key("b"), &none).is_none());
        assert!(kept.kept(&key("a"), &none).is_some());
        assert!(kept.kept(&key("c"), &none).is_some());
        assert_eq!(kept.size(), (2, 8));
        // At the limit exactly: kept (and both others go).
        kept.keep(key("d"), &none, figures(&[4], 9));
        assert_eq!(kept.size(), (1, 10));
        // Past the limit: not kept, and nothing else is dropped for it.
        kept.keep(key("e"), &none, figures(&[5], 10));
        assert_eq!(kept.size(), (1, 10));
        assert!(kept.kept(&key("e"), &none).is_none());
        let off = KeptFigures::new(0);
        off.keep(key("a"), &none, figures(&[1], 0));
        assert!(off.kept(&key("a"), &none).is_none());
        assert_eq!(off.size(), (0, 0));
    }
}
