//! Ingestion's aggregates over gRPC, for a scoring service running apart from ingestion: the
//! same `AggregateSource` contract, read with `QueryAggregates` and fed by `WatchChanges`. Calls
//! carry an internal identity signed with scoring's own key (not the gateway's), as the operator
//! principal `scoring-service`, bound to ingestion as audience and to the request body; ingestion
//! accepts that key for these two reads only, so this process can act as nobody else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::broadcast;
use tonic::Status;
use tonic::transport::Channel;

use citycredit::aggregates::{
    AggregateSource, Aggregates, Change, PeriodMarker, Selection, SourceRef,
};
use citycredit::auth::identity::{
    Audience, BodyBinding, HEADER, IdentitySigner, SCORING_PRINCIPAL,
};
use citycredit::proto::v1 as pb;
use citycredit::proto::v1::metric_submission_service_client::MetricSubmissionServiceClient;
use citycredit::status;
use citycredit_core::BoxFuture;
use citycredit_core::auth::{Principal, Role};
use citycredit_core::catalog::{Catalog, MetricKind};
use citycredit_core::numbers::Num;
use citycredit_core::rules::{Figure, TaskStatus, Values};
use citycredit_core::source::SourceError;

use crate::convert;

/// The principal scoring acts as towards ingestion.
pub fn service_principal() -> Principal {
    Principal {
        id: SCORING_PRINCIPAL.into(),
        role: Role::Operator,
        department: None,
        credential: None,
    }
}

/// The longest backoff step before reconnecting to ingestion's change feed; jitter adds up to
/// as much again, so a wait never exceeds 1 s.
const FEED_RECONNECT_MAX: Duration = Duration::from_millis(500);
/// Reconnecting to ingestion's change feed: exponential backoff with jitter between attempts,
/// 50 ms doubling to [`FEED_RECONNECT_MAX`], and never giving up (a scoring process without the
/// feed could not tell when its cached scorecards went stale).
const FEED_RECONNECT: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(50))
    .with_max_delay(FEED_RECONNECT_MAX)
    .with_jitter()
    .without_max_times();
/// A feed that stayed up this long was healthy: the next loss starts the backoff over.
const FEED_SETTLED: Duration = Duration::from_secs(10);

/// See the module documentation.
pub struct RemoteAggregates {
    channel: Channel,
    signer: Arc<IdentitySigner>,
    catalog: Arc<Catalog>,
    changes: broadcast::Sender<Change>,
}

impl std::fmt::Debug for RemoteAggregates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RemoteAggregates(..)")
    }
}

impl RemoteAggregates {
    /// Starts following ingestion's change feed (reconnecting while it is unreachable).
    pub fn start(
        channel: Channel,
        signer: Arc<IdentitySigner>,
        catalog: Arc<Catalog>,
    ) -> Arc<Self> {
        let (changes, _) = broadcast::channel(4096);
        let me = Arc::new(RemoteAggregates {
            channel,
            signer,
            catalog,
            changes,
        });
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            let mut backoff = FEED_RECONNECT.build();
            loop {
                let Some(me) = weak.upgrade() else { break };
                let started = Instant::now();
                let lost = me.follow().await;
                // Whatever happened while disconnected is unknown: invalidate everything.
                let _ = me.changes.send(Change::everything());
                drop(me);
                if started.elapsed() >= FEED_SETTLED {
                    backoff = FEED_RECONNECT.build();
                }
                let wait = backoff.next().unwrap_or(FEED_RECONNECT_MAX);
                match lost {
                    Err(e) => tracing::warn!(
                        error = %e.message(),
                        retry_in_ms = wait.as_millis(),
                        "ingestion change feed lost; reconnecting"
                    ),
                    Ok(()) => tracing::info!(
                        retry_in_ms = wait.as_millis(),
                        "ingestion change feed ended; reconnecting"
                    ),
                }
                tokio::time::sleep(wait).await;
            }
        });
        me
    }

    fn signed<T: prost::Message>(&self, msg: T, path: &str) -> Result<tonic::Request<T>, Status> {
        let header = self
            .signer
            .sign(
                &service_principal(),
                Audience::Ingestion,
                path,
                BodyBinding::of_message(&msg),
                citycredit_core::clock::now_micros(),
            )
            .ok_or_else(|| {
                status::internal("remote aggregates", &"cannot sign the internal identity")
            })?;
        let mut req = tonic::Request::new(msg);
        let value = header
            .parse()
            .map_err(|e| status::internal("remote aggregates: identity header", &e))?;
        req.metadata_mut().insert(HEADER, value);
        Ok(req)
    }

    async fn follow(&self) -> Result<(), Status> {
        let mut client = MetricSubmissionServiceClient::new(self.channel.clone());
        let req = self.signed(
            pb::WatchChangesRequest::default(),
            "/citycredit.v1.MetricSubmissionService/WatchChanges",
        )?;
        let mut stream = client.watch_changes(req).await?.into_inner();
        while let Some(event) = stream.message().await? {
            let _ = self.changes.send(Change {
                region: event.region_code,
                period: event.period,
                last_submission_id: event.last_submission_id,
                commit_micros: event.commit_time.as_ref().map_or(0, convert::micros),
            });
        }
        Ok(())
    }

    fn decode(&self, resp: pb::QueryAggregatesResponse) -> Aggregates {
        let mut values = Values::new();
        let mut out = Aggregates {
            region: resp.region_code.clone(),
            period: resp.period.clone(),
            as_of_micros: resp.as_of.as_ref().map_or(0, convert::micros),
            approved_only: resp.approved_only,
            ..Default::default()
        };
        use pb::metric_value::Value;
        for m in resp.metrics {
            let kind = self.catalog.metric(&m.metric_key).map(|x| x.kind);
            let figure = match (kind, m.value.as_ref().and_then(|v| v.value.as_ref())) {
                (Some(MetricKind::DomainFlag), _) => {
                    Some(Figure::Domains(m.domains.iter().cloned().collect()))
                }
                (Some(MetricKind::TaskStatus), _) => Some(Figure::Tasks(
                    m.task_statuses
                        .iter()
                        .map(|(k, v)| {
                            let s = match pb::TaskStatus::try_from(*v) {
                                Ok(pb::TaskStatus::Done) => TaskStatus::Done,
                                Ok(pb::TaskStatus::InProgress) => TaskStatus::InProgress,
                                _ => TaskStatus::NotStarted,
                            };
                            (k.clone(), s)
                        })
                        .collect(),
                )),
                (Some(_), Some(Value::Flag(b))) => Some(Figure::Flag(*b)),
                (Some(_), Some(Value::Number(t))) => Num::parse_decimal(t).ok().map(Figure::Number),
                _ => None,
            };
            if let Some(f) = figure {
                values.set(m.metric_key.clone(), f);
            }
            let approved: std::collections::HashMap<String, String> = m
                .approvals
                .into_iter()
                .map(|a| (a.submission, a.approved_period))
                .collect();
            let sources: Vec<SourceRef> = m
                .sources
                .into_iter()
                .map(|s| SourceRef {
                    approved_period: approved.get(&s.submission).cloned(),
                    submission_id: s
                        .submission
                        .rsplit('/')
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0),
                    department: s.department_code,
                    region: s.region_code,
                    domain: s.domain,
                    task_id: String::new(),
                    period: s.period,
                    value: s.value.unwrap_or_default(),
                    accept_micros: s.accept_time.as_ref().map_or(0, convert::micros),
                })
                .collect();
            let markers: Vec<PeriodMarker> = m
                .markers
                .into_iter()
                .filter_map(PeriodMarker::from_wire)
                .collect();
            if !markers.is_empty() {
                out.markers.insert(m.metric_key.clone(), markers.into());
            }
            out.sources.insert(m.metric_key, sources.into());
        }
        out.values = values;
        out
    }
}

impl AggregateSource for RemoteAggregates {
    fn aggregates<'a>(
        &'a self,
        region: &'a str,
        period: &'a str,
        as_of_micros: Option<i64>,
        selection: Selection,
    ) -> BoxFuture<'a, Result<Aggregates, SourceError>> {
        Box::pin(async move {
            let read = async {
                let mut client = MetricSubmissionServiceClient::new(self.channel.clone());
                let req = self.signed(
                    pb::QueryAggregatesRequest {
                        region_code: region.to_owned(),
                        period: period.to_owned(),
                        as_of: as_of_micros.map(convert::timestamp),
                        approved_only: selection == Selection::Approved,
                    },
                    "/citycredit.v1.MetricSubmissionService/QueryAggregates",
                )?;
                Ok::<_, Status>(client.query_aggregates(req).await?.into_inner())
            };
            // Ingestion's answer goes to the caller as it came (see `convert::source_error`).
            let resp = read.await.map_err(|s| SourceError::Remote(Box::new(s)))?;
            Ok(self.decode(resp))
        })
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feed_reconnects_within_a_second_and_never_gives_up() {
        let waits: Vec<Duration> = FEED_RECONNECT.build().take(1000).collect();
        assert_eq!(waits.len(), 1000);
        assert!(waits[0] >= Duration::from_millis(50) && waits[0] < Duration::from_millis(100));
        assert!(waits.iter().all(|w| *w < Duration::from_secs(1)));
        assert!(waits[10..].iter().all(|w| *w >= FEED_RECONNECT_MAX));
    }
}
