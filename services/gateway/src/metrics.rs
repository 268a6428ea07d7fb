//! Prometheus metrics on an HTTP port: per RPC rate, errors and latency, per-principal push
//! counts, calls shed and why, the adaptive limit, rows ingested.
//!
//! Every label set is bounded: `method` comes only from the RPC table (every path not in it is
//! `unknown`, so random paths cannot grow the exposition), `code` is one of the 17 gRPC codes,
//! `reason` one of a few words, and `principal` at most [`MAX_PRINCIPAL_LABELS`] values (the
//! registry bounds principals, and beyond this many the rest count as `other`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tonic::Code;

/// The method label of every path that is not in the RPC table.
pub const UNKNOWN_METHOD: &str = "unknown";
/// Distinct principals labelled in `citycredit_pushes_total`; the rest are `other`.
pub const MAX_PRINCIPAL_LABELS: usize = 1_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: Arc<str>,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrincipalLabels {
    pub principal: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabels {
    pub reason: &'static str,
}

/// The canonical name of a gRPC code (`OK`, `INVALID_ARGUMENT`, ...), as metrics and logs show
/// it: the contracts' one spelling.
pub use citycredit::status::code_name;

/// Rows committed by this process, read from the process-wide counter at each scrape (nothing
/// is copied, so concurrent scrapes cannot count a row twice).
#[derive(Debug)]
struct IngestedRows;

impl Collector for IngestedRows {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(citycredit_core::counters::ingested_rows());
        let metric = encoder.encode_descriptor(
            "ingested_rows",
            "Submissions committed by this process",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    pub rpcs: Family<RpcLabels, Counter>,
    pub latency: Family<MethodLabels, Histogram>,
    pub pushes: Family<PrincipalLabels, Counter>,
    pub shed: Family<ShedLabels, Counter>,
    pub adaptive_limit: Gauge,
    principals: Mutex<HashSet<Arc<str>>>,
    other: Arc<str>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics(..)")
    }
}

fn latency_histogram() -> Histogram {
    // 0.1 ms .. ~13 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 18,
    ))
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("citycredit");
        let rpcs = Family::<RpcLabels, Counter>::default();
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(latency_histogram);
        let pushes = Family::<PrincipalLabels, Counter>::default();
        let shed = Family::<ShedLabels, Counter>::default();
        let adaptive_limit = Gauge::default();
        registry.register(
            "rpc_requests",
            "RPCs answered, by method (unknown for paths outside the API) and gRPC code read at the end of the response",
            rpcs.clone(),
        );
        registry.register(
            "rpc_latency_seconds",
            "Time from the request to the end of the response, by method",
            latency.clone(),
        );
        registry.register(
            "pushes",
            "Submission RPCs accepted at the gateway, by principal (at most 1000 principals, then other)",
            pushes.clone(),
        );
        registry.register(
            "shed",
            "Calls refused before reaching a service, by reason (rate, principal_budget, principal_share, capacity, failed_auth)",
            shed.clone(),
        );
        registry.register(
            "adaptive_limit",
            "Unary calls the gateway lets through at once now",
            adaptive_limit.clone(),
        );
        registry.register_collector(Box::new(IngestedRows));
        Arc::new(Metrics {
            registry,
            rpcs,
            latency,
            pushes,
            shed,
            adaptive_limit,
            principals: Mutex::new(HashSet::new()),
            other: Arc::from("other"),
        })
    }

    /// Records one answered RPC.
    pub fn observe(&self, method: &Arc<str>, code: Code, elapsed: Duration) {
        self.rpcs
            .get_or_create(&RpcLabels {
                method: Arc::clone(method),
                code: code_name(code),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels {
                method: Arc::clone(method),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one accepted push by `principal` (bounded: see [`MAX_PRINCIPAL_LABELS`]).
    pub fn push(&self, principal: &Arc<str>) {
        let label = {
            let mut seen = self
                .principals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.contains(principal) || seen.len() < MAX_PRINCIPAL_LABELS {
                seen.insert(Arc::clone(principal));
                Arc::clone(principal)
            } else {
                Arc::clone(&self.other)
            }
        };
        self.pushes
            .get_or_create(&PrincipalLabels { principal: label })
            .inc();
    }

    /// Counts one call refused for `reason`.
    pub fn shed(&self, reason: &'static str) {
        self.shed.get_or_create(&ShedLabels { reason }).inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `GET /metrics` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    // Scrapes answer in one write; without TCP_NODELAY a large exposition waits for the
    // scraper's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a metrics connection");
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = Arc::clone(&metrics);
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(addr = %bound, "serving metrics");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(exposition: &str, name: &str) -> Option<u64> {
        exposition
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn concurrent_scrapes_never_count_a_row_twice() {
        let metrics = Metrics::new();
        for round in 0..2000u64 {
            citycredit_core::counters::add_ingested_rows(round + 1);
            let total = citycredit_core::counters::ingested_rows();
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let seen: Vec<Option<u64>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        let (m, b) = (Arc::clone(&metrics), Arc::clone(&barrier));
                        s.spawn(move || {
                            b.wait();
                            value_of(&m.render(), "citycredit_ingested_rows_total")
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or(None))
                    .collect()
            });
            assert!(
                seen.iter().all(|v| *v == Some(total)),
                "round {round}: scrapes saw {seen:?}, {total} rows were committed"
            );
        }
    }

    #[test]
    fn principal_labels_are_bounded() {
        let metrics = Metrics::new();
        for i in 0..(MAX_PRINCIPAL_LABELS + 50) {
            metrics.push(&Arc::from(format!("p{i}").as_str()));
        }
        metrics.push(&Arc::from("p0"));
        let text = metrics.render();
        let labelled = text
            .lines()
            .filter(|l| l.starts_with("citycredit_pushes_total{"))
            .count();
        assert_eq!(
            labelled,
            MAX_PRINCIPAL_LABELS + 1,
            "{} principals and other",
            MAX_PRINCIPAL_LABELS
        );
        assert_eq!(
            value_of(&text, "citycredit_pushes_total{principal=\"other\"}"),
            Some(50)
        );
        assert_eq!(
            value_of(&text, "citycredit_pushes_total{principal=\"p0\"}"),
            Some(2)
        );
    }
}
