//! The gateway's own promises through real servers: identity only from API keys, rate limits and
//! load shedding with RetryInfo, deadlines kept, health following the upstreams, and the split
//! topology (each service its own server behind a gateway) answering like the all-in-one one.

use citycredit_tests::ok;
use std::time::{Duration, Instant};

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::department_registry_service_client::DepartmentRegistryServiceClient as Registry;
use citycredit::proto::v1::metric_submission_service_client::MetricSubmissionServiceClient as Submissions;
use citycredit::proto::v1::scoring_service_client::ScoringServiceClient as Scoring;
use citycredit_app::config::ServiceMode;
use citycredit_tests::{ADMIN_KEY, TestServer};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

#[tokio::test]
async fn a_forged_identity_header_is_ignored() {
    let server = TestServer::start().await;
    let ops_key = server
        .create_principal("ops-forger", pb::Role::Operator, None)
        .await;
    // A header claiming to be the administrator, signed with a key the platform does not have.
    use citycredit::auth::identity::{Audience, BodyBinding, IdentitySigner, Issuer};
    let signer = IdentitySigner::generate(Issuer::Gateway);
    let admin = citycredit_core::auth::Principal {
        id: "admin".into(),
        role: citycredit_core::auth::Role::Admin,
        department: None,
        credential: None,
    };
    let path = "/citycredit.v1.DepartmentRegistryService/CreateDepartment";
    let forged = signer
        .sign(
            &admin,
            Audience::Registry,
            path,
            BodyBinding::Stream,
            citycredit_store::now_micros(),
        )
        .unwrap_or_default();

    let mut as_ops = Registry::new(server.with_key(&ops_key));
    let mut req = tonic::Request::new(pb::CreateDepartmentRequest {
        department: Some(pb::Department {
            code: "forged".into(),
            display_name: "伪造".into(),
            ..Default::default()
        }),
    });
    req.metadata_mut().insert(
        "x-citycredit-identity",
        forged.parse().unwrap_or_else(|_| panic!("header")),
    );
    let err = as_ops
        .create_department(req)
        .await
        .err()
        .unwrap_or_else(|| panic!("the forged admin identity worked"));
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("principal `ops-forger`"),
        "the key decides who calls: {}",
        err.message()
    );

    // Without a key the header is worth nothing either.
    let mut anon = Registry::new(server.channel());
    let mut req = tonic::Request::new(pb::ListGroupsRequest {});
    req.metadata_mut().insert(
        "x-citycredit-identity",
        "v1;admin;admin;;0;00;00"
            .parse()
            .unwrap_or_else(|_| panic!("header")),
    );
    assert_eq!(
        anon.list_groups(req).await.err().map(|e| e.code()),
        Some(Code::Unauthenticated)
    );
}

#[tokio::test]
async fn rate_limits_answer_resource_exhausted_with_retry_info() {
    let server = TestServer::start_with(|c| {
        c.gateway.per_principal_rate = 1;
        c.gateway.per_principal_burst = 3;
    })
    .await;
    let mut reg = Registry::new(server.admin());
    let mut refused = None;
    for _ in 0..6 {
        if let Err(e) = reg.list_groups(pb::ListGroupsRequest {}).await {
            refused = Some(e);
            break;
        }
    }
    let err = refused.unwrap_or_else(|| panic!("six calls in a burst of three were all admitted"));
    assert_eq!(err.code(), Code::ResourceExhausted);
    let retry = err
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or_default();
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(1),
        "{retry:?}"
    );
    assert!(
        err.message().contains("rate limit for principal `admin`"),
        "{}",
        err.message()
    );
}

/// A batch whose stream never ends: a call that never answers by itself.
async fn never_ending_batch(
    server: &TestServer,
    deadline: Option<Duration>,
) -> (tonic::Status, Duration) {
    let mut submissions = Submissions::new(server.admin());
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::SubmitBatchRequest>(1);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(d) = deadline {
        // Sent as `grpc-timeout`; the client also gives up on its own at the deadline.
        req.set_timeout(d);
    }
    let started = Instant::now();
    let err = submissions
        .submit_batch(req)
        .await
        .err()
        .unwrap_or_else(|| panic!("a never-ending batch was answered"));
    drop(tx);
    (err, started.elapsed())
}

#[tokio::test]
async fn a_50_ms_deadline_on_a_slow_call_returns_deadline_exceeded_on_time() {
    // The platform's own deadline (the caller sent none and sets no timer of its own).
    let server = TestServer::start_with(|c| c.gateway.default_deadline_ms = 50).await;
    let (err, elapsed) = never_ending_batch(&server, None).await;
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        elapsed >= Duration::from_millis(50) && elapsed < Duration::from_secs(1),
        "answered after {elapsed:?}"
    );
    assert!(
        err.message().contains("deadline of 50 ms exceeded"),
        "{}",
        err.message()
    );

    // A caller's own deadline (sent as grpc-timeout) ends the call at that deadline.
    let server = TestServer::start().await;
    let (err, elapsed) = never_ending_batch(&server, Some(Duration::from_millis(300))).await;
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "after {elapsed:?}: {err:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(270) && elapsed < Duration::from_secs(1),
        "answered after {elapsed:?}"
    );
}

async fn health_of(channel: tonic::transport::Channel) -> Option<ServingStatus> {
    let mut h = HealthClient::new(channel);
    h.check(HealthCheckRequest {
        service: String::new(),
    })
    .await
    .ok()
    .map(|r| r.into_inner().status())
}

async fn wait_for(
    channel: &tonic::transport::Channel,
    want: ServingStatus,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        if health_of(channel.clone()).await == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "health did not become {want:?} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The registry, ingestion and scoring each on a server of its own over one store, and a
/// gateway in front of them: the split topology, in one test process.
struct Split {
    dir: tempfile::TempDir,
    registry: TestServer,
    ingestion: TestServer,
    scoring: Option<TestServer>,
    scoring_addr: String,
    gateway: TestServer,
}

async fn split() -> Split {
    if std::env::var("SPLIT_DEBUG").is_ok() {
        citycredit_app::telemetry::install(citycredit_app::config::LogFormat::Text, "info", None);
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let keys = citycredit_tests::make_keys(dir.path());
    // The registry first: it creates and seeds the store the others join.
    let registry = TestServer::start_in(
        dir.path(),
        citycredit_tests::apart(ServiceMode::Registry, &keys),
    )
    .await;
    wait_for(
        &registry.channel(),
        ServingStatus::Serving,
        Duration::from_secs(20),
    )
    .await;
    let ingestion = TestServer::start_in(
        dir.path(),
        citycredit_tests::apart(ServiceMode::Ingestion, &keys),
    )
    .await;
    wait_for(
        &ingestion.channel(),
        ServingStatus::Serving,
        Duration::from_secs(20),
    )
    .await;
    let (reg_url, ing_url) = (
        format!("http://{}", registry.addr),
        format!("http://{}", ingestion.addr),
    );
    let ing = ing_url.clone();
    let scoring_keys = keys.clone();
    let scoring = TestServer::start_in(dir.path(), move |c| {
        citycredit_tests::apart(ServiceMode::Scoring, &scoring_keys)(c);
        c.upstreams.ingestion = Some(ing);
    })
    .await;
    let scoring_addr = scoring.addr.to_string();
    let sco_url = format!("http://{}", scoring.addr);
    let gateway = TestServer::start_in(dir.path(), move |c| {
        citycredit_tests::apart(ServiceMode::Gateway, &keys)(c);
        c.upstreams.registry = Some(reg_url);
        c.upstreams.ingestion = Some(ing_url);
        c.upstreams.scoring = Some(sco_url);
    })
    .await;
    Split {
        dir,
        registry,
        ingestion,
        scoring: Some(scoring),
        scoring_addr,
        gateway,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_topology_answers_through_the_gateway() {
    let s = split().await;
    wait_for(
        &s.gateway.channel(),
        ServingStatus::Serving,
        Duration::from_secs(10),
    )
    .await;
    let platform = s
        .gateway
        .create_principal("plat", pb::Role::Platform, None)
        .await;
    // The key was written by the registry process; the gateway sees it within its refresh period.
    let mut reg = Registry::new(s.gateway.with_key(&platform));
    let seen = Instant::now();
    while reg.list_groups(pb::ListGroupsRequest {}).await.is_err() {
        assert!(
            seen.elapsed() < Duration::from_secs(3),
            "the gateway never learned the new key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut submissions = Submissions::new(s.gateway.with_key(&platform));
    ok(submissions
        .submit_value(pb::SubmitValueRequest {
            value: Some(pb::SubmissionInput {
                metric_key: "monitoring.city_rank".into(),
                region_code: "330800".into(),
                period: "2026".into(),
                value: Some(pb::MetricValue {
                    value: Some(pb::metric_value::Value::Number("120".into())),
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await);
    let mut scoring = Scoring::new(s.gateway.with_key(&platform));
    let explain = ok(scoring
        .explain_indicator(pb::ExplainIndicatorRequest {
            region_code: "330800".into(),
            period: "2026".into(),
            indicator: "B10".into(),
            as_of: None,
            rule_version: String::new(),
            approved_only: false,
        })
        .await);
    let result = explain.result.unwrap_or_default();
    assert_eq!(
        result.status(),
        pb::IndicatorStatus::Fail,
        "scoring reads ingestion over the network"
    );
    assert!(
        result
            .inputs
            .iter()
            .any(|i| i.metric_key == "monitoring.city_rank"
                && i.value == "120"
                && !i.sources.is_empty())
    );

    // A service reached directly, bypassing the gateway, trusts no header it cannot verify.
    let mut direct = Registry::new(s.registry.with_key(ADMIN_KEY));
    assert_eq!(
        direct
            .list_groups(pb::ListGroupsRequest {})
            .await
            .err()
            .map(|e| e.code()),
        Some(Code::Unauthenticated)
    );
    let _ = (&s.ingestion, &s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_health_follows_an_upstream_that_stops_and_restarts() {
    let mut s = split().await;
    let gw = s.gateway.channel();
    wait_for(&gw, ServingStatus::Serving, Duration::from_secs(10)).await;
    if let Some(scoring) = s.scoring.take() {
        scoring.stop().await.unwrap_or_else(|e| panic!("{e}"));
    }
    let down = wait_for(&gw, ServingStatus::NotServing, Duration::from_secs(5)).await;
    let ing_url = format!("http://{}", s.ingestion.addr);
    let keys = s.dir.path().join("keys");
    let restarted = TestServer::start_on(&s.scoring_addr, s.dir.path(), move |c| {
        citycredit_tests::apart(ServiceMode::Scoring, &keys)(c);
        c.upstreams.ingestion = Some(ing_url);
    })
    .await;
    let up = wait_for(&gw, ServingStatus::Serving, Duration::from_secs(10)).await;
    eprintln!(
        "gateway health: NOT_SERVING {down:?} after the upstream stopped, SERVING {up:?} after it restarted"
    );
    s.scoring = Some(restarted);
}
