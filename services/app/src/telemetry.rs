//! Logs and traces.
//!
//! Logs: `tracing` to stderr, as text or JSON. Traces: when an OTLP endpoint is configured,
//! spans are exported over OTLP/gRPC. How trace context crosses each hop is the edge's part:
//! `citycredit_gateway::trace_context`.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Keeps the trace exporter alive; flush it at shutdown.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("exporting", &self.provider.is_some())
            .finish()
    }
}

impl Telemetry {
    /// Flushes and stops the exporter. Runs on a blocking thread: on a current-thread runtime
    /// the exporter's shutdown would wait on the runtime it blocks.
    pub async fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = p.shutdown() {
                    eprintln!("citycredit: trace exporter shutdown: {e}");
                }
            })
            .await;
        }
    }
}

/// Installs the global subscriber: logs, plus traces to `otlp_endpoint` when given.
/// `RUST_LOG`, when set, wins over the configured filter.
pub fn init(
    format: LogFormat,
    filter: &str,
    otlp_endpoint: Option<&str>,
    service: &str,
) -> Telemetry {
    let provider = otlp_endpoint.and_then(|endpoint| {
        use opentelemetry_otlp::WithExportConfig;
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
        {
            Ok(exporter) => Some(provider_with(exporter, service)),
            Err(e) => {
                eprintln!("citycredit: cannot export traces to {endpoint}: {e}");
                None
            }
        }
    });
    install(format, filter, provider.as_ref());
    Telemetry { provider }
}

/// A tracer provider exporting to `exporter` in batches.
pub fn provider_with(exporter: impl SpanExporter + 'static, service: &str) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(format!("citycredit-{service}"))
                .build(),
        )
        .build()
}

/// Installs the subscriber with an optional trace provider (tests pass an in-memory one).
pub fn install(format: LogFormat, filter: &str, provider: Option<&SdkTracerProvider>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let otel = provider.map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("citycredit")));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    // A subscriber already installed (tests starting several servers) is fine.
    let _ = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
}
