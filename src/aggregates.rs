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

use tokio::sync::broadcast;

use citycredit_core::BoxFuture;
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
    pub value: pb::MetricValue,
    /// When the submission was accepted, microseconds since the Unix epoch.
    pub accept_micros: i64,
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
    /// Metric key -> the current submissions behind its figure.
    pub sources: BTreeMap<String, Vec<SourceRef>>,
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
}

/// Where scoring gets its figures.
pub trait AggregateSource: Send + Sync + 'static {
    /// The figures for `region` (including every region below it) and `period`, as they stood
    /// at `as_of_micros` (None: now).
    fn aggregates<'a>(
        &'a self,
        region: &'a str,
        period: &'a str,
        as_of_micros: Option<i64>,
    ) -> BoxFuture<'a, Result<Aggregates, SourceError>>;

    /// A new subscription to the change feed.
    fn changes(&self) -> broadcast::Receiver<Change>;
}
