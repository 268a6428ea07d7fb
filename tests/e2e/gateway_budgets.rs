//! One principal must not hurt another (issue 10 point 3): budgets per principal and per
//! connection, through a real server, with small limits so the limit itself is what is tested.
//! Each test shows what the attacker gets at the limit and that another principal still
//! succeeds. Tests that read or write the store run on SQLite and (with `DATABASE_URL`)
//! PostgreSQL.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tonic::Code;
use tonic_types::StatusExt;

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::indicator_service_client::IndicatorServiceClient;
use citycredit::proto::v1::metric_submission_service_client::MetricSubmissionServiceClient as Submissions;
use citycredit::proto::v1::scoring_service_client::ScoringServiceClient as Scoring;
use citycredit_app::Config;
use citycredit_tests::h2raw::{self, grpc_frame, grpc_request};
use citycredit_tests::ingestion::number_input;
use citycredit_tests::{Backend, TestServer, both_databases, fresh_schema, use_backend};

const CATALOG: &str = "/citycredit.v1.IndicatorService/GetCatalog";
const SUBMIT_VALUE: &str = "/citycredit.v1.MetricSubmissionService/SubmitValue";

async fn start(backend: Backend, adjust: impl FnOnce(&mut Config)) -> (TestServer, impl Drop) {
    let schema = fresh_schema();
    let server = TestServer::start_with(|c| {
        use_backend(c, backend, &schema);
        adjust(c);
    })
    .await;
    // The first call waits for the server (and its migrated store).
    let mut registry = server.registry();
    let up = Instant::now();
    while registry
        .list_groups(pb::ListGroupsRequest {})
        .await
        .is_err()
    {
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (server, schema)
}

fn push(i: u64) -> pb::SubmitValueRequest {
    pb::SubmitValueRequest {
        value: Some(number_input(
            "uscc.codes_total",
            "330802",
            "2026",
            "samr",
            &i.to_string(),
        )),
        idempotency_key: format!("budget-{i}-{}", citycredit_store::now_micros()),
        validate_only: false,
    }
}

/// The specific `ErrorInfo` reason of a refusal, and one metadata entry.
fn reason_of(status: &tonic::Status, key: &str) -> (Option<String>, Option<String>) {
    let details = status.get_error_details();
    let info = details.error_info();
    (
        info.map(|i| i.reason.clone()),
        info.and_then(|i| i.metadata.get(key).cloned()),
    )
}

fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
}

/// The victim's calls: a push and a scorecard, both must succeed.
async fn victim_succeeds(server: &TestServer, key: &str, i: u64) {
    let mut subs = Submissions::new(server.with_key(key));
    subs.submit_value(push(i))
        .await
        .unwrap_or_else(|e| panic!("the victim's push was refused: {e:?}"));
    let mut scoring = Scoring::new(server.with_key(key));
    scoring
        .get_scorecard(pb::GetScorecardRequest {
            region_code: "330800".into(),
            period: "2026".into(),
            as_of: None,
            rule_version: String::new(),
            approved_only: false,
        })
        .await
        .unwrap_or_else(|e| panic!("the victim's scorecard was refused: {e:?}"));
}

async fn idle_streams_use_up_only_their_own_budget(backend: Backend) {
    let (server, _schema) = start(backend, |c| {
        c.gateway.max_streams_per_principal = 4;
        c.gateway.request_read_timeout_ms = 60_000;
    })
    .await;
    let attacker = server
        .create_principal("idle-streamer", pb::Role::Platform, None)
        .await;
    let victim = server
        .create_principal("busy-platform", pb::Role::Platform, None)
        .await;

    // Batches that send nothing and never end, as many as the attacker likes: four held open
    // (each tries again while refused, so the four end up holding whatever the probes below
    // took for a moment).
    let stop = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut held = Vec::new();
    for _ in 0..4 {
        let key = attacker.clone();
        let channel = server.with_key(&key);
        let stop = std::sync::Arc::clone(&stop);
        held.push(tokio::spawn(async move {
            loop {
                let mut c = Submissions::new(channel.clone());
                let (tx, rx) = tokio::sync::mpsc::channel::<pb::SubmitBatchRequest>(1);
                let call = c.submit_batch(tokio_stream::wrappers::ReceiverStream::new(rx));
                tokio::select! {
                    r = call => match r {
                        Err(e) if e.code() == Code::ResourceExhausted => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        other => return other.map(|_| ()),
                    },
                    () = stop.notified() => {
                        drop(tx);
                        return Ok(());
                    }
                }
            }
        }));
    }
    // A fifth is refused at once (the four may take a moment to arrive: try until then).
    let started = Instant::now();
    let refused = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut c = Submissions::new(server.with_key(&attacker));
        let (_tx, rx) = tokio::sync::mpsc::channel::<pb::SubmitBatchRequest>(1);
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.set_timeout(Duration::from_millis(200));
        match c.submit_batch(req).await {
            Err(e) if e.code() == Code::ResourceExhausted => break e,
            other => assert!(
                started.elapsed() < Duration::from_secs(20),
                "a fifth idle stream was not refused: {other:?}"
            ),
        }
    };
    assert!(
        refused.message().contains("principal `idle-streamer`")
            && refused.message().contains("4 streams"),
        "{}",
        refused.message()
    );
    assert_eq!(
        reason_of(&refused, "what"),
        (Some("PRINCIPAL_BUDGET".into()), Some("streams".into())),
        "{refused:?}"
    );
    assert!(retry_delay(&refused).is_some(), "no RetryInfo: {refused:?}");

    // Everyone else, and the attacker's own unary calls, go on.
    victim_succeeds(&server, &victim, 1).await;
    let mut own = Submissions::new(server.with_key(&attacker));
    own.submit_value(push(2))
        .await
        .unwrap_or_else(|e| panic!("unary calls have their own budget: {e:?}"));
    let mut victim_batch = Submissions::new(server.with_key(&victim));
    victim_batch
        .submit_batch(tokio_stream::iter([pb::SubmitBatchRequest {
            idempotency_key: String::new(),
            validate_only: false,
            values: vec![number_input(
                "uscc.codes_total",
                "330803",
                "2026",
                "samr",
                "7",
            )],
        }]))
        .await
        .unwrap_or_else(|e| panic!("the victim's batch was refused: {e:?}"));
    stop.notify_waiters();
    for h in held {
        h.abort();
        let _ = h.await;
    }
}

both_databases!(
    idle_streams_use_up_only_their_own_budget,
    flavor = "multi_thread",
    worker_threads = 2
);

async fn header_only_calls_end_at_the_read_timeout(backend: Backend) {
    let (server, _schema) = start(backend, |c| {
        c.gateway.max_calls_per_principal = 8;
        c.gateway.request_read_timeout_ms = 2_000;
    })
    .await;
    let attacker = server
        .create_principal("header-only", pb::Role::Operator, None)
        .await;
    let victim = server
        .create_principal("honest-platform", pb::Role::Platform, None)
        .await;

    let mut conn = h2raw::connect(server.addr, 65_535)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Nine unary calls that send their headers and never their message.
    let started = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..9 {
        let (response, stream) = conn
            .start(grpc_request(SUBMIT_VALUE, Some(&attacker)), None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        calls.push(tokio::spawn(async move {
            let code = tokio::time::timeout(Duration::from_secs(10), h2raw::grpc_code(response))
                .await
                .unwrap_or_else(|_| Err("still open after 10 s".to_owned()));
            drop(stream);
            (code, started.elapsed())
        }));
    }
    // Meanwhile another principal is served.
    victim_succeeds(&server, &victim, 3).await;

    let mut outcomes = Vec::new();
    for c in calls {
        outcomes.push(c.await.unwrap_or_else(|e| panic!("{e}")));
    }
    // One is refused at once (the principal's budget of calls is 8) ...
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|(c, _)| *c == Ok(Code::ResourceExhausted as i32))
        .collect();
    assert_eq!(refused.len(), 1, "{outcomes:?}");
    assert!(refused[0].1 < Duration::from_millis(1_900), "{outcomes:?}");
    // ... the eight end by themselves at the read timeout, DEADLINE_EXCEEDED, long before the
    // default 30 s deadline.
    let ended: Vec<_> = outcomes
        .iter()
        .filter(|(c, _)| *c == Ok(Code::DeadlineExceeded as i32))
        .collect();
    assert_eq!(ended.len(), 8, "{outcomes:?}");
    assert!(
        ended
            .iter()
            .all(|(_, t)| *t >= Duration::from_millis(1_900) && *t < Duration::from_secs(8)),
        "{outcomes:?}"
    );
    // And the attacker's budget is free again.
    let mut catalog = IndicatorServiceClient::new(server.with_key(&attacker));
    catalog
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap_or_else(|e| panic!("the budget was not given back: {e:?}"));
}

both_databases!(
    header_only_calls_end_at_the_read_timeout,
    flavor = "multi_thread",
    worker_threads = 2
);

async fn a_stalled_batch_ends_and_stores_nothing(backend: Backend) {
    let (server, _schema) = start(backend, |c| {
        c.gateway.request_read_timeout_ms = 300;
    })
    .await;
    let key = server
        .create_principal("slow-uploader", pb::Role::Platform, None)
        .await;
    let mut c = Submissions::new(server.with_key(&key));
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::SubmitBatchRequest>(1);
    let first = pb::SubmitBatchRequest {
        idempotency_key: "stalled-batch".into(),
        validate_only: false,
        values: vec![number_input(
            "uscc.codes_total",
            "330802",
            "2026",
            "samr",
            "5",
        )],
    };
    let sent = tx.send(first).await;
    assert!(sent.is_ok());
    let started = Instant::now();
    let err = c
        .submit_batch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .err()
        .unwrap_or_else(|| panic!("a stalled batch was answered OK"));
    let took = started.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("sent nothing for 300 ms"),
        "{}",
        err.message()
    );
    assert_eq!(
        reason_of(&err, "").0.as_deref(),
        Some("REQUEST_READ_TIMEOUT"),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    drop(tx);
    let mut admin = Submissions::new(server.admin());
    let listed = admin
        .list_submissions(pb::ListSubmissionsRequest {
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert!(
        listed.submissions.is_empty(),
        "a stalled batch stored {:?}",
        listed.submissions
    );
}

both_databases!(
    a_stalled_batch_ends_and_stores_nothing,
    flavor = "multi_thread",
    worker_threads = 2
);

async fn client_deadlines_are_capped_per_kind(backend: Backend) {
    let (server, _schema) = start(backend, |c| {
        c.gateway.max_deadline_client_streaming_ms = 300;
        c.gateway.max_deadline_server_streaming_ms = 400;
    })
    .await;
    let key = server
        .create_principal("long-deadlines", pb::Role::Platform, None)
        .await;

    // A batch that never ends, with a caller's deadline of an hour: it gets 300 ms.
    let mut c = Submissions::new(server.with_key(&key));
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::SubmitBatchRequest>(1);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.set_timeout(Duration::from_secs(3600));
    let started = Instant::now();
    let err = c.submit_batch(req).await.err();
    let took = started.elapsed();
    drop(tx);
    assert_eq!(
        err.as_ref().map(tonic::Status::code),
        Some(Code::DeadlineExceeded)
    );
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(5),
        "answered after {took:?}: {err:?}"
    );

    // A watch with no deadline ends at the watch cap, with DEADLINE_EXCEEDED after its
    // first scorecard.
    let mut scoring = Scoring::new(server.with_key(&key));
    let started = Instant::now();
    let mut watch = scoring
        .watch_scorecard(pb::WatchScorecardRequest {
            region_code: "330800".into(),
            period: "2026".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner();
    let mut updates = 0;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), watch.message()).await {
            Ok(Ok(Some(_))) => updates += 1,
            Ok(other) => break other,
            Err(_) => panic!("the watch outlived its cap by seconds"),
        }
    };
    assert!(updates >= 1);
    assert_eq!(end.err().map(|e| e.code()), Some(Code::DeadlineExceeded));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(380) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

both_databases!(
    client_deadlines_are_capped_per_kind,
    flavor = "multi_thread",
    worker_threads = 2
);

async fn a_response_never_read_holds_its_slot_until_the_connection_is_closed(backend: Backend) {
    let (server, _schema) = start(backend, |c| {
        c.gateway.max_calls_per_principal = 1;
        c.gateway.write_timeout_ms = 400;
    })
    .await;
    let key = server
        .create_principal("zero-window", pb::Role::Operator, None)
        .await;
    // A connection that grants no flow-control window: the response's headers arrive, its body
    // never can.
    let mut conn = h2raw::connect(server.addr, 0)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (response, _stream) = conn
        .start(
            grpc_request(CATALOG, Some(&key)),
            Some(grpc_frame(&pb::GetCatalogRequest {})),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let head = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .unwrap_or_else(|_| panic!("no response headers"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(head.status(), 200);
    assert!(head.headers().get("grpc-status").is_none(), "a body is due");

    // The call is not over until its response is sent: the principal's only slot is taken.
    let mut catalog = IndicatorServiceClient::new(server.with_key(&key));
    let err = catalog
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .err()
        .unwrap_or_else(|| panic!("a second call got the slot of an unsent response"));
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("1 calls open"), "{}", err.message());
    assert_eq!(
        reason_of(&err, "limit"),
        (Some("PRINCIPAL_BUDGET".into()), Some("1".into())),
        "{err:?}"
    );

    // The peer does not read for the write timeout: the server closes the connection, which
    // frees the slot.
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed).await;
    assert!(closed.is_ok(), "the connection outlived the write timeout");
    let again = Instant::now();
    loop {
        match catalog.get_catalog(pb::GetCatalogRequest {}).await {
            Ok(_) => break,
            Err(e) => assert!(
                again.elapsed() < Duration::from_secs(5),
                "the slot was not freed: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_never_read_holds_its_slot_until_the_connection_is_closed_sqlite() {
    // Not storage-related: the catalog is in memory.
    a_response_never_read_holds_its_slot_until_the_connection_is_closed(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_settings_and_the_handshake_timeout() {
    let (server, _schema) = start(Backend::Sqlite, |c| {
        c.gateway.http2_max_concurrent_streams = 7;
        c.gateway.handshake_timeout_ms = 300;
    })
    .await;
    let conn = h2raw::connect(server.addr, 65_535)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ready = conn.send.clone().ready().await;
    assert!(ready.is_ok());
    // SETTINGS_MAX_CONCURRENT_STREAMS as configured (hyper's default is 200).
    let mut seen = conn.send.current_max_send_streams();
    let t = Instant::now();
    while seen != 7 && t.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = conn.send.current_max_send_streams();
    }
    assert_eq!(seen, 7);

    // A connection that never sends its preface is closed after the handshake timeout.
    let mut tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                // The server's own SETTINGS come first.
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a silent connection was kept for 5 s");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_limited_per_source() {
    let (server, _schema) = start(Backend::Sqlite, |c| {
        c.gateway.failed_auth_per_source_rate = 1;
        c.gateway.failed_auth_per_source_burst = 5;
    })
    .await;
    let mut stranger =
        IndicatorServiceClient::new(server.with_key(
            "cc_0badc0de_0000000000000000000000000000000000000000000000000000000000000000",
        ));
    let mut codes = Vec::new();
    for _ in 0..8 {
        match stranger.get_catalog(pb::GetCatalogRequest {}).await {
            Ok(_) => panic!("a made-up key was accepted"),
            Err(e) => codes.push((e.code(), retry_delay(&e))),
        }
    }
    assert!(
        codes[..5].iter().all(|(c, _)| *c == Code::Unauthenticated),
        "{codes:?}"
    );
    let (code, delay) = codes[7];
    assert_eq!(code, Code::ResourceExhausted, "{codes:?}");
    assert!(delay.is_some_and(|d| d > Duration::ZERO && d <= Duration::from_secs(2)));
    // A good key from the same address is not affected.
    let mut admin = IndicatorServiceClient::new(server.admin());
    admin
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap_or_else(|e| panic!("a valid key was refused: {e:?}"));
}

async fn batch_get_scorecards_answers_a_repeated_region_once(backend: Backend) {
    let (server, _schema) = start(backend, |_| {}).await;
    let mut scoring = Scoring::new(server.admin());
    let cards = scoring
        .batch_get_scorecards(pb::BatchGetScorecardsRequest {
            region_codes: vec![
                "330800".into(),
                "330802".into(),
                "330800".into(),
                "330800".into(),
            ],
            period: "2026".into(),
            as_of: None,
            rule_version: String::new(),
            approved_only: false,
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .into_inner()
        .scorecards;
    let regions: Vec<&str> = cards.iter().map(|c| c.region_code.as_str()).collect();
    assert_eq!(regions, ["330800", "330802"]);
    // The cap still counts what was asked.
    let err = scoring
        .batch_get_scorecards(pb::BatchGetScorecardsRequest {
            region_codes: vec!["330800".into(); 101],
            period: "2026".into(),
            as_of: None,
            rule_version: String::new(),
            approved_only: false,
        })
        .await
        .err();
    assert_eq!(err.map(|e| e.code()), Some(Code::InvalidArgument));
}

both_databases!(
    batch_get_scorecards_answers_a_repeated_region_once,
    flavor = "multi_thread",
    worker_threads = 2
);
