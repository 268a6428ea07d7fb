//! The contract between ingestion and scoring: the aggregated figures for one region and period
//! with the submissions behind each, and the feed of "values changed" events. Ingestion
//! implements `AggregateSource` over its current-values table (in process, or over gRPC when
//! the services run apart); scoring reads through it and never scans history.
//!
//! It lives with the contracts, not in the core: the figures carry the wire's `MetricValue`, the
//! feed is a tokio broadcast channel, and the same contract is served over gRPC
//! (`QueryAggregates`, `WatchChanges`). Its errors are the domain's
//! ([`citycredit_core::source::SourceError`]); the service that asked converts them.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::broadcast;

use citycredit_core::BoxFuture;
use citycredit_core::period::Period;
use citycredit_core::rules::Values;
use citycredit_core::source::SourceError;

use crate::proto::v1 as pb;

/// One current submission behind a figure.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceRef {
    pub submission_id: u64,
    /// The department the value was reported for ("" when none).
    pub department: String,
    pub region: String,
    /// DOMAIN_FLAG: the domain.
    pub domain: String,
    /// TASK_STATUS: the task id.
    pub task_id: String,
    /// The period the value was reported for (the period asked for, one of its sub-periods, or
    /// an earlier period carried forward).
    pub period: String,
    pub value: pb::MetricValue,
    /// When the submission was accepted, microseconds since the Unix epoch.
    pub accept_micros: i64,
    /// The period of the APPROVED sign-off part (this department and region) that covers the
    /// value, as the write gate covers it: the value's own period, a period containing it, or
    /// for a LEVEL metric one it carries forward to. None when no approved part covers it, and
    /// always for a value reported without a department.
    pub approved_period: Option<String>,
}

impl SourceRef {
    /// As the contracts show it (QueryAggregates, scorecard inputs).
    pub fn wire(&self) -> pb::SubmissionRef {
        pb::SubmissionRef {
            submission: format!("submissions/{}", self.submission_id),
            department_code: self.department.clone(),
            region_code: self.region.clone(),
            domain: self.domain.clone(),
            value: Some(self.value.clone()),
            accept_time: Some(crate::wire::timestamp(self.accept_micros)),
            period: self.period.clone(),
        }
    }
}

/// How values of one key reached the period asked for, when not as its own value in full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MarkerKind {
    /// A FLOW sum whose sub-periods do not cover the period; names the missing ones.
    PartialPeriod,
    /// A LEVEL value from a period not inside the one asked for; names that period.
    CarriedForward,
}

impl MarkerKind {
    /// The name on the wire (`PeriodMarker.marker`).
    pub fn as_str(self) -> &'static str {
        match self {
            MarkerKind::PartialPeriod => "PARTIAL_PERIOD",
            MarkerKind::CarriedForward => "CARRIED_FORWARD",
        }
    }

    pub fn parse(s: &str) -> Option<MarkerKind> {
        match s {
            "PARTIAL_PERIOD" => Some(MarkerKind::PartialPeriod),
            "CARRIED_FORWARD" => Some(MarkerKind::CarriedForward),
            _ => None,
        }
    }
}

/// A marker on one value key (department, region, domain, task) of a figure.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeriodMarker {
    pub kind: MarkerKind,
    pub department: String,
    pub region: String,
    pub domain: String,
    pub task_id: String,
    /// PARTIAL_PERIOD: the missing sub-periods; CARRIED_FORWARD: the source period.
    pub periods: Vec<String>,
}

impl PeriodMarker {
    pub fn wire(&self) -> pb::PeriodMarker {
        pb::PeriodMarker {
            marker: self.kind.as_str().to_owned(),
            department_code: self.department.clone(),
            region_code: self.region.clone(),
            domain: self.domain.clone(),
            task_id: self.task_id.clone(),
            periods: self.periods.clone(),
        }
    }

    /// From the wire; None for a marker this build does not know.
    pub fn from_wire(m: pb::PeriodMarker) -> Option<PeriodMarker> {
        Some(PeriodMarker {
            kind: MarkerKind::parse(&m.marker)?,
            department: m.department_code,
            region: m.region_code,
            domain: m.domain,
            task_id: m.task_id,
            periods: m.periods,
        })
    }
}

/// The figures for one region and period, as of one instant.
#[derive(Clone, Debug, Default)]
pub struct Aggregates {
    pub region: String,
    pub period: String,
    /// The instant the figures stand at, microseconds since the Unix epoch.
    pub as_of_micros: i64,
    /// Engine input: one figure per reported metric.
    pub values: Values,
    /// Metric key -> the current submissions behind its figure (shared: ingestion keeps each
    /// metric's figures and hands out the same list while the metric's values stay the same).
    pub sources: BTreeMap<String, Arc<[SourceRef]>>,
    /// Metric key -> how values behind its figure reached the period (only metrics with some;
    /// shared as the sources are).
    pub markers: BTreeMap<String, Arc<[PeriodMarker]>>,
    /// The figures were aggregated from approved values only ([`Selection::Approved`]).
    pub approved_only: bool,
}

/// Which values a figure is aggregated from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Selection {
    /// Every current (or as-of) value.
    #[default]
    All,
    /// Only values whose part (department, region, period) is covered by an APPROVED sign-off
    /// now (also when the figures are read as of an earlier instant); values reported without
    /// a department never are.
    Approved,
}

/// "Values changed for (region, period)". Ingestion sends one per affected region: the region
/// reported for and every region above it, since a county's values count for the city too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub region: String,
    pub period: String,
    /// The highest submission id in the committed change.
    pub last_submission_id: u64,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_micros: i64,
}

impl Change {
    /// The region name of a change that may affect everything (a consumer that lost events).
    pub const EVERYTHING: &'static str = "*";

    /// "Anything may have changed": drop every cached figure.
    pub fn everything() -> Change {
        Change {
            region: Change::EVERYTHING.to_owned(),
            period: String::new(),
            last_submission_id: 0,
            commit_micros: 0,
        }
    }

    pub fn is_everything(&self) -> bool {
        self.region == Change::EVERYTHING
    }

    /// Whether this change can change the figures of `period` at the change's region: values
    /// for a month count for its quarter and year, and LEVEL values carry forward up to 12
    /// months (rulebook section 2, "Time"). Unparsable periods compare as text.
    pub fn reaches(&self, period: &str) -> bool {
        if self.is_everything() {
            return true;
        }
        match (self.period.parse::<Period>(), period.parse::<Period>()) {
            (Ok(changed), Ok(asked)) => changed.reaches(&asked),
            _ => self.period == period,
        }
    }
}

/// Where scoring gets its figures.
pub trait AggregateSource: Send + Sync + 'static {
    /// The figures for `region` (including every region below it) and `period`, as they stood
    /// at `as_of_micros` (None: now), from the values `selection` names; each source says
    /// which approved part covers it.
    fn aggregates<'a>(
        &'a self,
        region: &'a str,
        period: &'a str,
        as_of_micros: Option<i64>,
        selection: Selection,
    ) -> BoxFuture<'a, Result<Aggregates, SourceError>>;

    /// A new subscription to the change feed.
    fn changes(&self) -> broadcast::Receiver<Change>;
}
