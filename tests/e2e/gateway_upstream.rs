//! The gateway in front of a service it does not control (issue 10 point 9): a fake ingestion
//! upstream (raw HTTP/2) that holds calls until told, or dies in the middle of an answer, with
//! the real registry and a real gateway (`serve --service registry|gateway`, in process).
//!
//! - A service that dies mid-answer (the SIGKILL of the crash tests) is UNAVAILABLE with
//!   RetryInfo for the caller, never INTERNAL (hyper resets such a stream with INTERNAL_ERROR).
//! - Beyond the limit on calls being served, calls are refused at once with RESOURCE_EXHAUSTED
//!   and RetryInfo, and one principal holds at most half of the limit.
//! - Calls are spread over `gateway.upstream_connections` HTTP/2 connections to the upstream,
//!   the least loaded first (issue 15: one connection caps the gateway's throughput).
//!
//! Not storage-related (the upstream is fake): SQLite only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tonic::Code;
use tonic_types::StatusExt;

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::metric_submission_service_client::MetricSubmissionServiceClient as Submissions;
use citycredit_app::config::ServiceMode;
use citycredit_tests::TestServer;
use citycredit_tests::ingestion::number_input;

/// What the fake upstream does with a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    /// Waits until released, then answers OK with an empty message.
    Hold,
    /// Sends the response headers and part of a message, then drops the connection.
    DieMidAnswer,
}

struct Fake {
    addr: SocketAddr,
    arrived: Arc<AtomicUsize>,
    /// Connections that carried at least one call (health checks aside).
    carrying: Arc<AtomicUsize>,
    arrival: Arc<Notify>,
    /// One permit answers one held call.
    release: Arc<Semaphore>,
    /// The `grpc-timeout` of each call that reached it, in order of arrival.
    timeouts: Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

impl Fake {
    async fn start(behaviour: Behaviour) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let arrived = Arc::new(AtomicUsize::new(0));
        let carrying = Arc::new(AtomicUsize::new(0));
        let arrival = Arc::new(Notify::new());
        let release = Arc::new(Semaphore::new(0));
        let timeouts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (a, c, n, r, t) = (
            Arc::clone(&arrived),
            Arc::clone(&carrying),
            Arc::clone(&arrival),
            Arc::clone(&release),
            Arc::clone(&timeouts),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (a, c, n, r, t) = (
                    Arc::clone(&a),
                    Arc::clone(&c),
                    Arc::clone(&n),
                    Arc::clone(&r),
                    Arc::clone(&t),
                );
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    let mut carried = false;
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        if req.uri().path().starts_with("/grpc.health") {
                            continue;
                        }
                        if !carried {
                            carried = true;
                            c.fetch_add(1, Ordering::SeqCst);
                        }
                        t.lock().unwrap_or_else(|e| panic!("{e}")).push(
                            req.headers()
                                .get("grpc-timeout")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned),
                        );
                        a.fetch_add(1, Ordering::SeqCst);
                        n.notify_waiters();
                        let head = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap_or_else(|e| panic!("{e}"));
                        match behaviour {
                            Behaviour::DieMidAnswer => {
                                if let Ok(mut body) = respond.send_response(head, false) {
                                    // A gRPC frame promising 10 bytes, 2 of them sent.
                                    let _ = body.send_data(
                                        Bytes::from_static(&[0, 0, 0, 0, 10, 8, 1]),
                                        false,
                                    );
                                }
                                // Let the frames out, then drop the connection without a word.
                                let _ =
                                    tokio::time::timeout(Duration::from_millis(100), conn.accept())
                                        .await;
                                return;
                            }
                            Behaviour::Hold => {
                                let r = Arc::clone(&r);
                                tokio::spawn(async move {
                                    let Ok(permit) = r.acquire().await else {
                                        return;
                                    };
                                    permit.forget();
                                    if let Ok(mut body) = respond.send_response(head, false) {
                                        let _ = body
                                            .send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false);
                                        let mut trailers = http::HeaderMap::new();
                                        trailers.insert("grpc-status", http::HeaderValue::from(0));
                                        let _ = body.send_trailers(trailers);
                                    }
                                });
                            }
                        }
                    }
                });
            }
        });
        Fake {
            addr,
            arrived,
            carrying,
            arrival,
            release,
            timeouts,
        }
    }

    /// Waits until `n` calls have reached the fake.
    async fn arrived(&self, n: usize) {
        let started = Instant::now();
        while self.arrived.load(Ordering::SeqCst) < n {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "only {} of {n} calls reached the service",
                self.arrived.load(Ordering::SeqCst)
            );
            let _ = tokio::time::timeout(Duration::from_millis(50), self.arrival.notified()).await;
        }
    }
}

/// A registry and a gateway whose ingestion and scoring upstream is `fake`.
async fn gateway_before(
    fake: &Fake,
    adjust: impl FnOnce(&mut citycredit_app::Config) + Send + 'static,
) -> (tempfile::TempDir, TestServer, TestServer) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let keys = citycredit_tests::make_keys(dir.path());
    let registry = TestServer::start_in(
        dir.path(),
        citycredit_tests::apart(ServiceMode::Registry, &keys),
    )
    .await;
    // The registry seeds the store the gateway attaches to: wait until it answers.
    let mut h = tonic_health::pb::health_client::HealthClient::new(registry.channel());
    let up = Instant::now();
    while h
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_err()
    {
        assert!(up.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (reg, fake_url) = (
        format!("http://{}", registry.addr),
        format!("http://{}", fake.addr),
    );
    let gateway = TestServer::start_in(dir.path(), move |c| {
        citycredit_tests::apart(ServiceMode::Gateway, &keys)(c);
        c.upstreams.registry = Some(reg);
        c.upstreams.ingestion = Some(fake_url.clone());
        c.upstreams.scoring = Some(fake_url);
        adjust(c);
    })
    .await;
    (dir, registry, gateway)
}

/// A key for a new platform principal, usable at the gateway.
async fn platform_key(gateway: &TestServer, id: &str) -> String {
    let key = gateway.create_principal(id, pb::Role::Platform, None).await;
    // The gateway learns the key from the store on first use.
    key
}

fn push(i: u32) -> pb::SubmitValueRequest {
    pb::SubmitValueRequest {
        value: Some(number_input(
            "uscc.codes_total",
            "330802",
            "2026",
            "samr",
            &i.to_string(),
        )),
        idempotency_key: format!("fake-{i}"),
        validate_only: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_dies_mid_answer_is_unavailable_with_retry_info() {
    let fake = Fake::start(Behaviour::DieMidAnswer).await;
    let (_dir, _registry, gateway) = gateway_before(&fake, |_| {}).await;
    let key = platform_key(&gateway, "crash-victim").await;
    let mut subs = Submissions::new(gateway.with_key(&key));
    let err = subs
        .submit_value(push(1))
        .await
        .err()
        .unwrap_or_else(|| panic!("a broken answer was taken for a success"));
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let retry = err
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay);
    assert!(retry.is_some_and(|d| d > Duration::ZERO), "{err:?}");
    assert_eq!(fake.arrived.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_limit_calls_are_shed_at_once_and_one_principal_holds_half() {
    let fake = Fake::start(Behaviour::Hold).await;
    // A fixed limit of 4 calls being served at once: a principal may hold 2.
    let (_dir, _registry, gateway) = gateway_before(&fake, |c| {
        c.gateway.min_concurrent_calls = 4;
        c.gateway.max_concurrent_calls = 4;
    })
    .await;
    let a = platform_key(&gateway, "heavy-a").await;
    let b = platform_key(&gateway, "heavy-b").await;
    let c = platform_key(&gateway, "light-c").await;

    let hold = |key: &str, i: u32| {
        let mut s = Submissions::new(gateway.with_key(key));
        tokio::spawn(async move { s.submit_value(push(i)).await.map(|_| ()) })
    };
    let a_calls = [hold(&a, 1), hold(&a, 2)];
    fake.arrived(2).await;
    // A's third call: A already holds half of the limit.
    let started = Instant::now();
    let err = Submissions::new(gateway.with_key(&a))
        .submit_value(push(3))
        .await
        .err()
        .unwrap_or_else(|| panic!("a principal took more than half of the limit"));
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("half"), "{}", err.message());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not refused at once"
    );

    // B takes the other half; now the platform is full and C is refused at once.
    let b_calls = [hold(&b, 4), hold(&b, 5)];
    fake.arrived(4).await;
    let started = Instant::now();
    let err = Submissions::new(gateway.with_key(&c))
        .submit_value(push(6))
        .await
        .err()
        .unwrap_or_else(|| panic!("a fifth call was let through a limit of 4"));
    let refused_in = started.elapsed();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("capacity"), "{}", err.message());
    let retry = err
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay);
    assert!(
        retry.is_some_and(|d| d >= Duration::from_millis(20) && d <= Duration::from_secs(1)),
        "{err:?}"
    );
    assert!(
        refused_in < Duration::from_secs(1),
        "refused after {refused_in:?}"
    );
    assert_eq!(
        fake.arrived.load(Ordering::SeqCst),
        4,
        "the excess reached the service"
    );

    // Released, every admitted call succeeds and C gets in.
    fake.release.add_permits(4);
    for call in a_calls.into_iter().chain(b_calls) {
        call.await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("an admitted call failed: {e:?}"));
    }
    let late = hold(&c, 7);
    fake.arrived(5).await;
    fake.release.add_permits(1);
    late.await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e:?}"));
}

/// Six calls held at the upstream through a gateway with three upstream connections: the
/// least loaded connection takes each, so all three carry two. (One connection, the old
/// gateway, carried all six.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_spread_over_the_upstream_connections() {
    let fake = Fake::start(Behaviour::Hold).await;
    let (_dir, _registry, gateway) = gateway_before(&fake, |c| {
        c.gateway.upstream_connections = 3;
    })
    .await;
    let key = platform_key(&gateway, "spread").await;
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let mut s = Submissions::new(gateway.with_key(&key));
            tokio::spawn(async move { s.submit_value(push(i)).await.map(|_| ()) })
        })
        .collect();
    fake.arrived(6).await;
    assert_eq!(
        fake.carrying.load(Ordering::SeqCst),
        3,
        "six calls in flight did not use the three upstream connections"
    );
    fake.release.add_permits(6);
    for call in calls {
        call.await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e:?}"));
    }
}

/// The service gets the call's deadline as `grpc-timeout`: the default deadline for a caller
/// that sent none (`default_deadline_ms`), else the caller's less a tenth (at most 20 ms), for
/// call after call (the default's header is made once and passed on each time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_is_passed_on_to_the_service() {
    let fake = Fake::start(Behaviour::Hold).await;
    let (_dir, _registry, gateway) = gateway_before(&fake, |c| {
        c.gateway.default_deadline_ms = 7_000;
    })
    .await;
    let key = platform_key(&gateway, "deadlines").await;
    let mut subs = Submissions::new(gateway.with_key(&key));
    fake.release.add_permits(4);
    for i in 0..2 {
        subs.submit_value(push(i))
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
    }
    for (i, d) in [(2, 3_000), (3, 100)] {
        let mut req = tonic::Request::new(push(i));
        req.set_timeout(Duration::from_millis(d));
        subs.submit_value(req)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
    }
    let seen = fake
        .timeouts
        .lock()
        .unwrap_or_else(|e| panic!("{e}"))
        .clone();
    assert_eq!(
        seen,
        [
            Some("7000m".to_owned()),
            Some("7000m".to_owned()),
            Some("2980m".to_owned()),
            Some("90m".to_owned()),
        ]
    );
}
