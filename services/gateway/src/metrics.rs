//! Prometheus metrics on an HTTP port: per RPC rate, errors and latency, per-principal push
//! counts, rows ingested.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrincipalLabels {
    pub principal: String,
}

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    pub rpcs: Family<RpcLabels, Counter>,
    pub latency: Family<MethodLabels, Histogram>,
    pub pushes: Family<PrincipalLabels, Counter>,
    pub shed: Counter,
    ingested_rows: Counter,
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
        let shed = Counter::default();
        let ingested_rows = Counter::default();
        registry.register(
            "rpc_requests",
            "RPCs answered, by method and gRPC code",
            rpcs.clone(),
        );
        registry.register(
            "rpc_latency_seconds",
            "Time to the response headers, by method",
            latency.clone(),
        );
        registry.register(
            "pushes",
            "Submission RPCs accepted at the gateway, by principal",
            pushes.clone(),
        );
        registry.register(
            "shed",
            "Calls refused because the gateway was full or a rate exceeded",
            shed.clone(),
        );
        registry.register(
            "ingested_rows",
            "Submissions committed by this process",
            ingested_rows.clone(),
        );
        Arc::new(Metrics {
            registry,
            rpcs,
            latency,
            pushes,
            shed,
            ingested_rows,
        })
    }

    /// Records one answered RPC.
    pub fn observe(&self, method: &str, code: &str, elapsed: Duration) {
        self.rpcs
            .get_or_create(&RpcLabels {
                method: method.to_owned(),
                code: code.to_owned(),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        // Rows are counted where they are committed (ingestion); copy the running total in.
        let total = citycredit::counters::ingested_rows();
        let seen = self.ingested_rows.get();
        if total > seen {
            self.ingested_rows.inc_by(total - seen);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `GET /metrics` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
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
