//! A W3C trace id sent in `traceparent` reaches the gateway's span, the service's span and the
//! service's database span (its own test binary: it installs the global tracing subscriber).

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::scoring_service_client::ScoringServiceClient;
use citycredit_app::config::LogFormat;
use citycredit_tests::TestServer;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_id_sent_in_traceparent_appears_in_the_services_spans() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    citycredit_app::telemetry::install(LogFormat::Text, "info", Some(&provider));

    let server = TestServer::start().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut scoring = ScoringServiceClient::new(server.admin());
    // A period outside the seeded cycle: the notifier scores the cycle's periods as soon as
    // the server starts, and a cached scorecard asks the database nothing.
    let mut req = tonic::Request::new(pb::GetScorecardRequest {
        region_code: "330800".into(),
        period: "2019".into(),
        as_of: None,
        rule_version: String::new(),
        approved_only: false,
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap_or_else(|_| panic!("header")),
    );
    scoring
        .get_scorecard(req)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = provider.force_flush();

    let spans = exporter
        .get_finished_spans()
        .unwrap_or_else(|e| panic!("{e}"));
    let in_trace: Vec<String> = spans
        .iter()
        .filter(|s| s.span_context.trace_id().to_string() == trace_id)
        .map(|s| s.name.to_string())
        .collect();
    for name in ["gateway", "service", "db.query"] {
        assert!(
            in_trace.iter().any(|n| n == name),
            "no `{name}` span in trace {trace_id}: {in_trace:?}"
        );
    }
    server.stop().await.unwrap_or_else(|e| panic!("{e}"));
}
