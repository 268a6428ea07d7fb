//! Reminders and notifications (issue 13, point 5) through the real server, on SQLite and (with
//! `DATABASE_URL`) PostgreSQL, with a local webhook receiver (axum on 127.0.0.1:0):
//!
//! - a deadline reminder reaches a JSON subscription with a valid signature and a DingTalk one
//!   with valid `timestamp`/`sign`; a department that reported everything gets none; a second
//!   pass enqueues nothing again;
//! - a basic indicator turning FAIL notifies the credit office once (not on the next pass);
//! - WatchNotices and ListNotices show a department only its own notices;
//! - a failing receiver (500, 500, then 200) gets the notice retried with the same delivery id
//!   and delivered once;
//! - a restart while deliveries are in flight (the receiver holds the requests): after the
//!   restart on the same database every notice reaches the receiver, and exactly once when
//!   deduplicated by `X-Citycredit-Delivery`;
//! - the early warning feeds the reminders: six months of history ending this month, B08 falling
//!   towards its 50% floor (passing now, projected below it by the review date) and B07 rising:
//!   the department behind B08 gets exactly one veto-risk notice, the credit office one summary,
//!   nothing for B07, and a second pass enqueues nothing new.

use citycredit_tests::ok;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, Uri};
use tokio_stream::StreamExt;

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::notification_service_client::NotificationServiceClient;
use citycredit_core::clock::now_micros;
use citycredit_notify::signing;
use citycredit_store::Db;
use citycredit_tests::ingestion::{number_input, samr_veto_trend};
use citycredit_tests::{
    AuthChannel, Backend, TestSchema, TestServer, both_databases, fresh_schema, use_backend,
};

const CITY: &str = "330800";
const SECRET: &str = "test-webhook-secret-0123456789";
const HOUR: i64 = 3_600_000_000;

// ---------------------------------------------------------------------------------------------
// The webhook receiver.

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Got {
    path: String,
    query: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    /// What it answered: 0 while held (never answered).
    answered: u16,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON: {e}"))
    }

    fn delivery(&self) -> i64 {
        self.header("x-citycredit-delivery")
            .parse()
            .unwrap_or_else(|e| panic!("X-Citycredit-Delivery: {e}"))
    }
}

#[derive(Default)]
struct ReceiverState {
    got: Vec<Got>,
    /// Per path: the statuses to answer next (then 200).
    plans: HashMap<String, VecDeque<u16>>,
    /// Paths whose requests are held (never answered).
    held: Vec<String>,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<ReceiverState>>);

impl Receiver {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReceiverState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn start() -> (Receiver, SocketAddr) {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(receiver.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (receiver, addr)
    }

    fn at(&self, path: &str) -> Vec<Got> {
        self.lock()
            .got
            .iter()
            .filter(|g| g.path == path)
            .cloned()
            .collect()
    }

    /// Waits (up to 30 s) until `path` got at least `n` requests that satisfy `pred`.
    async fn wait_for(&self, path: &str, n: usize, pred: impl Fn(&Got) -> bool) -> Vec<Got> {
        for _ in 0..600 {
            let got: Vec<Got> = self.at(path).into_iter().filter(|g| pred(g)).collect();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{path}: fewer than {n} requests after 30 s: {:?}",
            self.at(path)
        );
    }
}

async fn handle(
    State(r): State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let path = uri.path().to_owned();
    let (answer, hold) = {
        let mut s = r.lock();
        let hold = s.held.contains(&path);
        let answer = s
            .plans
            .get_mut(&path)
            .and_then(VecDeque::pop_front)
            .unwrap_or(200);
        let got = Got {
            path: path.clone(),
            query: uri.query().unwrap_or_default().to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        v.to_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
            answered: if hold { 0 } else { answer },
        };
        s.got.push(got);
        (answer, hold)
    };
    if hold {
        std::future::pending::<()>().await;
    }
    let status = StatusCode::from_u16(answer).unwrap_or(StatusCode::OK);
    (status, r#"{"errcode":0,"errmsg":"ok"}"#.to_owned())
}

// ---------------------------------------------------------------------------------------------
// The server, restartable on the same database.

struct Env {
    server: Option<TestServer>,
    backend: Backend,
    db: Db,
    dir: tempfile::TempDir,
    schema: TestSchema,
}

fn settings(c: &mut citycredit_app::Config) {
    let n = &mut c.notify;
    n.poll_ms = 100;
    // The scheduler's first pass runs at start; the tests run the others (RunNotifierPass).
    n.scheduler_period_ms = 3_600_000;
    n.retry_min_ms = 100;
    n.retry_max_ms = 400;
    n.request_timeout_ms = 2_000;
    n.connect_timeout_ms = 1_000;
    n.claim_lease_ms = 3_000;
    n.digest_hour = 0;
    n.max_watchers_per_principal = 2;
}

impl Env {
    async fn start(backend: Backend) -> Env {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let schema = fresh_schema();
        let server = Env::server(backend, dir.path(), &schema).await;
        let db = citycredit_tests::connect_store(backend, dir.path(), &schema, 2).await;
        Env {
            server: Some(server),
            backend,
            db,
            dir,
            schema,
        }
    }

    async fn server(backend: Backend, dir: &Path, schema: &TestSchema) -> TestServer {
        let server = TestServer::start_in(dir, |c| {
            use_backend(c, backend, schema);
            settings(c);
        })
        .await;
        // The first authenticated call waits until the server (and its migrated store) is up.
        let mut registry = server.registry();
        for _ in 0..200 {
            if registry
                .list_principals(pb::ListPrincipalsRequest::default())
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    fn s(&self) -> &TestServer {
        self.server
            .as_ref()
            .unwrap_or_else(|| panic!("server stopped"))
    }

    async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await.unwrap_or_else(|e| panic!("stop: {e}"));
        }
        let dir = self.dir.path().to_owned();
        self.server = Some(Env::server(self.backend, &dir, &self.schema).await);
    }

    fn admin(&self) -> NotificationServiceClient<AuthChannel> {
        NotificationServiceClient::new(self.s().admin())
    }

    async fn as_department(
        &self,
        id: &str,
        department: &str,
    ) -> NotificationServiceClient<AuthChannel> {
        NotificationServiceClient::new(
            self.s()
                .channel_as(id, pb::Role::Department, Some(department))
                .await,
        )
    }

    async fn subscribe(&self, recipient: &str, url: String, format: pb::MessageFormat) -> String {
        let s = ok(self
            .admin()
            .create_subscription(pb::CreateSubscriptionRequest {
                subscription: Some(pb::Subscription {
                    recipient: recipient.into(),
                    url,
                    format: format as i32,
                    secret: SECRET.into(),
                    mode: pb::DeliveryMode::Each as i32,
                    ..Default::default()
                }),
            })
            .await)
        .subscription
        .unwrap_or_else(|| panic!("no subscription"));
        assert!(s.secret.is_empty(), "the secret is write-only");
        s.name
    }

    async fn pass(&self) -> pb::RunNotifierPassResponse {
        ok(self
            .admin()
            .run_notifier_pass(pb::RunNotifierPassRequest {})
            .await)
    }

    async fn notices(&self, recipient: &str) -> Vec<pb::Notice> {
        ok(self
            .admin()
            .list_notices(pb::ListNoticesRequest {
                recipient: recipient.into(),
                page_size: 100,
                page_token: String::new(),
            })
            .await)
        .notices
    }

    /// A review cycle over 2026 with deadlines (department, hours from now) for every metric.
    async fn cycle(&self, id: &str, deadlines: &[(&str, i64)]) {
        let now = now_micros();
        sqlx::query(
            "INSERT INTO review_cycles (id, title, rule_version, periods, review_date, grace_days, on_time_days, created_by, create_micros) \
             VALUES ($1, '2026 年度示范城市创建', 'v2', '2026', '2027-03-31', 5, 15, 'test', $2)",
        )
        .bind(id)
        .bind(now)
        .execute(&self.db.pool)
        .await
        .unwrap_or_else(|e| panic!("cycle: {e}"));
        for (department, hours) in deadlines {
            sqlx::query(
                "INSERT INTO review_deadlines (cycle_id, department_code, subject, period, due_micros, milestone) \
                 VALUES ($1, $2, '', '2026', $3, '年度数据报送')",
            )
            .bind(id)
            .bind(*department)
            .bind(now + hours * HOUR)
            .execute(&self.db.pool)
            .await
            .unwrap_or_else(|e| panic!("deadline: {e}"));
        }
    }

    async fn submit(&self, values: Vec<pb::SubmissionInput>) {
        let key = self
            .s()
            .create_principal(
                &format!("platform-{}", now_micros()),
                pb::Role::Platform,
                None,
            )
            .await;
        let mut client = pb::metric_submission_service_client::MetricSubmissionServiceClient::new(
            self.s().with_key(&key),
        );
        ok(client
            .submit_batch(tokio_stream::iter([pb::SubmitBatchRequest {
                idempotency_key: String::new(),
                validate_only: false,
                values,
            }]))
            .await);
    }
}

fn kinds(notices: &[pb::Notice], kind: &str) -> Vec<pb::Notice> {
    notices.iter().filter(|n| n.kind == kind).cloned().collect()
}

/// Reads a watch until it has been quiet for `quiet`.
async fn drain(
    stream: &mut tonic::Streaming<pb::WatchNoticesResponse>,
    quiet: Duration,
) -> Vec<pb::Notice> {
    let mut out = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(quiet, stream.next()).await {
        let item = item.unwrap_or_else(|e| panic!("watch: {e:?}"));
        out.extend(item.notice);
    }
    out
}

// ---------------------------------------------------------------------------------------------

async fn reminders_and_veto_alerts(backend: Backend) {
    let env = Env::start(backend).await;
    let (rx, addr) = Receiver::start().await;
    let json_sub = env
        .subscribe(
            "big-data",
            format!("http://{addr}/json"),
            pb::MessageFormat::Json,
        )
        .await;
    env.subscribe(
        "*",
        format!("http://{addr}/ding/send?access_token=robot"),
        pb::MessageFormat::Dingtalk,
    )
    .await;
    env.subscribe(
        "cbirc",
        format!("http://{addr}/cbirc"),
        pb::MessageFormat::Json,
    )
    .await;
    let digest = ok(env
        .admin()
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                recipient: "big-data".into(),
                url: format!("http://{addr}/digest"),
                format: pb::MessageFormat::Json as i32,
                secret: SECRET.into(),
                mode: pb::DeliveryMode::DailyDigest as i32,
                ..Default::default()
            }),
        })
        .await)
    .subscription
    .unwrap_or_else(|| panic!("no subscription"));
    assert_eq!(digest.mode(), pb::DeliveryMode::DailyDigest);
    env.subscribe(
        "credit_office",
        format!("http://{addr}/office"),
        pb::MessageFormat::Json,
    )
    .await;
    assert_eq!(
        ok(env
            .admin()
            .list_subscriptions(pb::ListSubscriptionsRequest::default())
            .await)
        .subscriptions
        .len(),
        5
    );

    // cbirc reports both its metrics; big-data none of its four. Both are due in 12 hours.
    env.submit(vec![
        number_input("finance.loan_balance", CITY, "2026", "cbirc", "1000"),
        number_input("finance.npl_balance", CITY, "2026", "cbirc", "10"),
    ])
    .await;
    env.cycle("c2026", &[("big-data", 12), ("cbirc", 12)]).await;
    env.pass().await;

    let reminders = kinds(&env.notices("").await, "deadline_before");
    assert_eq!(reminders.len(), 1, "{reminders:?}");
    let notice = &reminders[0];
    assert_eq!(notice.recipient, "big-data");
    assert!(
        notice.title_zh.contains("市大数据局") && notice.title_zh.contains("4 项"),
        "{}",
        notice.title_zh
    );
    let payload: serde_json::Value =
        serde_json::from_str(&notice.payload_json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(payload["days"], 1);
    assert_eq!(payload["missing"].as_array().map(Vec::len), Some(4));
    assert!(
        env.notices("cbirc").await.is_empty(),
        "cbirc reported everything"
    );

    // The JSON webhook: signed over timestamp and body, with the notice id as delivery id.
    let got = rx.wait_for("/json", 1, |_| true).await;
    let g = &got[0];
    assert_eq!(g.delivery(), notice.id);
    let now_secs = now_micros() / 1_000_000;
    signing::verify_json(
        SECRET,
        g.header("x-citycredit-timestamp"),
        g.header("x-citycredit-signature"),
        &g.body,
        now_secs,
        300,
    )
    .unwrap_or_else(|e| panic!("signature: {e}"));
    let forged = signing::verify_json(
        "another-secret-0123456789",
        g.header("x-citycredit-timestamp"),
        g.header("x-citycredit-signature"),
        &g.body,
        now_secs,
        300,
    );
    assert!(forged.is_err());
    assert_eq!(g.json()["id"], notice.id);
    assert_eq!(g.json()["recipient"], "big-data");

    // The DingTalk robot: markdown, `timestamp` (ms) and `sign` in the query.
    let ding = rx
        .wait_for("/ding/send", 1, |g| g.delivery() == notice.id)
        .await;
    let d = &ding[0];
    let query: BTreeMap<String, String> = url::form_urlencoded::parse(d.query.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(query.get("access_token").map(String::as_str), Some("robot"));
    let ts: i64 = query
        .get("timestamp")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("timestamp: {query:?}"));
    assert!(
        (now_micros() / 1_000 - ts).abs() < 300_000,
        "timestamp in milliseconds, fresh"
    );
    assert_eq!(query.get("sign"), Some(&signing::dingtalk_sign(SECRET, ts)));
    let body = d.json();
    assert_eq!(body["msgtype"], "markdown");
    assert_eq!(body["markdown"]["title"], notice.title_zh.as_str());
    assert!(
        body["markdown"]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("sharing.units_connected")
    );

    // A second pass sends nothing new.
    // The daily digest: one summary for big-data today, carrying its reminder.
    let digests = rx.wait_for("/digest", 1, |_| true).await;
    let summary = digests[0].json();
    assert_eq!(summary["kind"], "digest");
    assert_eq!(summary["recipient"], "big-data");
    assert_eq!(
        summary["payload"]["notices"],
        serde_json::json!([notice.id])
    );
    assert!(
        summary["body_zh"]
            .as_str()
            .unwrap_or_default()
            .contains(&notice.title_zh)
    );

    let again = env.pass().await;
    assert_eq!(kinds(&env.notices("").await, "deadline_before").len(), 1);
    assert!(
        rx.at("/cbirc").is_empty(),
        "cbirc owes nothing: {:?}",
        rx.at("/cbirc")
    );

    // B01 turns FAIL (90 of 100 stock codes converted): the credit office is told, once.
    env.submit(vec![
        number_input("uscc.stock_codes_total", CITY, "2026", "", "100"),
        number_input("uscc.stock_codes_converted", CITY, "2026", "", "90"),
    ])
    .await;
    env.pass().await;
    let fails = |ns: Vec<pb::Notice>| -> Vec<pb::Notice> {
        ns.into_iter()
            .filter(|n| {
                // The seeded cycle also covers 2026's quarters and months, which the
                // year's LEVEL value reaches: this test follows the year.
                n.kind == "basic_fail"
                    && n.payload_json.contains("\"B01\"")
                    && n.payload_json.contains(CITY)
                    && n.payload_json.contains("\"period\":\"2026\"")
            })
            .collect()
    };
    let b01 = fails(env.notices("credit_office").await);
    assert_eq!(b01.len(), 1, "{b01:?}");
    assert!(b01[0].title_zh.contains("B01"), "{}", b01[0].title_zh);
    let office = rx
        .wait_for("/office", 1, |g| g.delivery() == b01[0].id)
        .await;
    assert_eq!(office.len(), 1);
    env.pass().await;
    assert_eq!(
        fails(env.notices("credit_office").await).len(),
        1,
        "announced once"
    );
    let _ = again;

    // A department sees only its own notices; operators and administrators all.
    let mut big_data = env.as_department("big-data-sys", "big-data").await;
    let mine = ok(big_data
        .list_notices(pb::ListNoticesRequest::default())
        .await)
    .notices;
    assert!(
        !mine.is_empty() && mine.iter().all(|n| n.recipient == "big-data"),
        "{mine:?}"
    );
    let refused = big_data
        .list_notices(pb::ListNoticesRequest {
            recipient: "credit_office".into(),
            ..Default::default()
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("a department read another's notices"));
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let mut watch = ok(big_data
        .watch_notices(pb::WatchNoticesRequest { after_notice_id: 0 })
        .await);
    let seen = drain(&mut watch, Duration::from_millis(500)).await;
    assert_eq!(
        seen.iter().map(|n| n.id).collect::<Vec<_>>(),
        mine.iter().map(|n| n.id).collect::<Vec<_>>()
    );
    // Two streams per principal here (`max_watchers_per_principal`): a third is refused.
    let _second = ok(big_data
        .watch_notices(pb::WatchNoticesRequest {
            after_notice_id: i64::MAX - 1,
        })
        .await);
    let third = big_data
        .watch_notices(pb::WatchNoticesRequest { after_notice_id: 0 })
        .await
        .err()
        .unwrap_or_else(|| panic!("a third stream was opened"));
    assert_eq!(third.code(), tonic::Code::ResourceExhausted, "{third:?}");
    let mut all = ok(env
        .admin()
        .watch_notices(pb::WatchNoticesRequest { after_notice_id: 0 })
        .await);
    let everything = drain(&mut all, Duration::from_millis(500)).await;
    assert!(everything.iter().any(|n| n.recipient == "credit_office"));
    assert!(everything.len() > seen.len());
    // Live: a new notice for big-data reaches its open watch; the credit office's does not.
    env.cycle("c2026b", &[("big-data", -2)]).await;
    env.pass().await;
    let live = drain(&mut watch, Duration::from_millis(1_000)).await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].kind, "deadline_overdue");
    // Today's digest is sent: the overdue notice waits for tomorrow's.
    env.pass().await;
    assert_eq!(rx.at("/digest").len(), 1);
    // A watch ends when its API key is revoked.
    let mut registry = env.s().registry();
    ok(registry
        .create_principal(pb::CreatePrincipalRequest {
            principal: Some(pb::Principal {
                id: "big-data-listener".into(),
                role: pb::Role::Department as i32,
                department_code: "big-data".into(),
                ..Default::default()
            }),
        })
        .await);
    let made = ok(registry
        .create_api_key(pb::CreateApiKeyRequest {
            principal: "principals/big-data-listener".into(),
            expire_time: None,
        })
        .await);
    let prefix = made.api_key.map(|k| k.prefix).unwrap_or_default();
    let mut listener = NotificationServiceClient::new(env.s().with_key(&made.secret));
    let mut revoked = ok(listener
        .watch_notices(pb::WatchNoticesRequest { after_notice_id: 0 })
        .await);
    assert!(
        !drain(&mut revoked, Duration::from_millis(300))
            .await
            .is_empty()
    );
    ok(registry
        .revoke_api_key(pb::RevokeApiKeyRequest {
            name: format!("principals/big-data-listener/apiKeys/{prefix}"),
        })
        .await);
    let end = tokio::time::timeout(Duration::from_secs(10), revoked.next())
        .await
        .unwrap_or_else(|_| panic!("the watch of a revoked key stayed open"));
    let status = match end {
        Some(Err(status)) => status,
        other => panic!("expected the watch to end with a status, got {other:?}"),
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    // Deleting the JSON subscription stops its deliveries.
    ok(env
        .admin()
        .delete_subscription(pb::DeleteSubscriptionRequest {
            name: json_sub.clone(),
        })
        .await);
    let missing = env
        .admin()
        .delete_subscription(pb::DeleteSubscriptionRequest { name: json_sub })
        .await
        .err()
        .unwrap_or_else(|| panic!("deleted twice"));
    assert_eq!(missing.code(), tonic::Code::NotFound);
}
both_databases!(
    reminders_and_veto_alerts,
    flavor = "multi_thread",
    worker_threads = 2
);

async fn retries_and_restart(backend: Backend) {
    let mut env = Env::start(backend).await;
    let (rx, addr) = Receiver::start().await;

    // A receiver that fails twice, then accepts.
    rx.lock()
        .plans
        .insert("/flaky".into(), VecDeque::from([500, 500]));
    env.subscribe(
        "big-data",
        format!("http://{addr}/flaky"),
        pb::MessageFormat::Json,
    )
    .await;
    env.cycle("c1", &[("big-data", 12)]).await;
    env.pass().await;
    let got = rx.wait_for("/flaky", 3, |_| true).await;
    let ids: Vec<i64> = got.iter().map(Got::delivery).collect();
    assert_eq!(ids, vec![ids[0]; 3], "retried with the same delivery id");
    assert_eq!(
        got.iter().map(|g| g.answered).collect::<Vec<_>>(),
        vec![500, 500, 200]
    );
    // The receiver has answered 200; the worker marks the delivery right after.
    let mut delivered = Vec::new();
    for _ in 0..100 {
        delivered = ok(env
            .admin()
            .list_deliveries(pb::ListDeliveriesRequest {
                state: pb::DeliveryState::Delivered as i32,
                ..Default::default()
            })
            .await)
        .deliveries;
        if !delivered.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0].attempts, 3);
    assert!(delivered[0].last_error.is_empty());

    // A receiver that holds every request: stop the server while deliveries are in flight.
    rx.lock().held.push("/hold".into());
    env.subscribe("*", format!("http://{addr}/hold"), pb::MessageFormat::Json)
        .await;
    env.cycle("c2", &[("big-data", 12), ("pboc", 12), ("cbirc", -30)])
        .await;
    env.pass().await;
    let expected: Vec<i64> = env
        .notices("")
        .await
        .iter()
        .filter(|n| n.payload_json.contains("\"c2\""))
        .map(|n| n.id)
        .collect();
    assert_eq!(expected.len(), 3, "three departments owe figures");
    rx.wait_for("/hold", 3, |_| true).await;
    env.restart().await;
    // While the receiver still holds every request, all three are pending after the restart
    // (a delivery is marked only once a receiver accepts it) ...
    let pending = ok(env
        .admin()
        .list_deliveries(pb::ListDeliveriesRequest {
            state: pb::DeliveryState::Pending as i32,
            ..Default::default()
        })
        .await)
    .deliveries;
    assert_eq!(pending.len(), 3, "nothing lost: {pending:?}");
    // ... then the receiver is back and answers.
    rx.lock().held.clear();
    let accepted = rx.wait_for("/hold", 3, |g| g.answered == 200).await;
    let mut by_id: BTreeMap<i64, usize> = BTreeMap::new();
    for g in &accepted {
        *by_id.entry(g.delivery()).or_default() += 1;
    }
    let mut want = expected.clone();
    want.sort_unstable();
    assert_eq!(
        by_id.keys().copied().collect::<Vec<_>>(),
        want,
        "every notice, after dedup by delivery id"
    );
    // Each was accepted once; every request for it carried the same id and body.
    for id in &want {
        let bodies: Vec<Vec<u8>> = rx
            .at("/hold")
            .iter()
            .filter(|g| g.delivery() == *id)
            .map(|g| g.body.clone())
            .collect();
        assert!(bodies.len() >= 2, "sent before and after the restart");
        assert!(
            bodies.iter().all(|b| *b == bodies[0]),
            "the same notice each time"
        );
    }
    // Nothing more arrives: a pass after delivery sends nothing.
    let p = env.pass().await;
    assert_eq!(p.deliveries_attempted, 0);
    assert_eq!(
        rx.at("/hold").iter().filter(|g| g.answered == 200).count(),
        3
    );
}
both_databases!(
    retries_and_restart,
    flavor = "multi_thread",
    worker_threads = 2
);

/// (year, month) of `months` months after now's month in Asia/Shanghai (negative: before).
fn month_from_now(months: i32) -> (i32, u32) {
    let day = citycredit_notify::shanghai_day(now_micros());
    let year: i32 = day[..4].parse().unwrap_or_else(|e| panic!("{e}"));
    let month: i32 = day[5..7].parse().unwrap_or_else(|e| panic!("{e}"));
    let index = year * 12 + month - 1 + months;
    (
        index.div_euclid(12),
        u32::try_from(index.rem_euclid(12) + 1).unwrap_or(1),
    )
}

async fn veto_risk_notices(backend: Backend) {
    let env = Env::start(backend).await;
    let (rx, addr) = Receiver::start().await;
    env.subscribe(
        "samr",
        format!("http://{addr}/samr"),
        pb::MessageFormat::Json,
    )
    .await;
    env.subscribe(
        "credit_office",
        format!("http://{addr}/office"),
        pb::MessageFormat::Json,
    )
    .await;

    // Six months ending with this one, all samr's: B08 (repair training of the blacklisted in
    // operation, at least 50%) 60% falling to 51% (LEVEL); B07 (exits, rising) 31% to 36%.
    let months: Vec<String> = (-5..=0)
        .map(|k| {
            let (y, m) = month_from_now(k);
            format!("{y:04}-{m:02}")
        })
        .collect();
    env.submit(samr_veto_trend(CITY, &months)).await;
    // A cycle over these months, reviewed six months from now.
    let (ry, rm) = month_from_now(6);
    let review_date = format!("{ry:04}-{rm:02}-15");
    sqlx::query(
        "INSERT INTO review_cycles (id, title, rule_version, periods, review_date, grace_days, on_time_days, created_by, create_micros) \
         VALUES ('warn', '预警测试周期', '2019.2', $1, $2, 5, 15, 'test', $3)",
    )
    .bind(months.join("\n"))
    .bind(&review_date)
    .bind(now_micros())
    .execute(&env.db.pool)
    .await
    .unwrap_or_else(|e| panic!("cycle: {e}"));

    // The scheduler's pass after the values' change may have enqueued them already.
    env.pass().await;
    // This test's cycle only (the seeded one, reviewed later, may warn too).
    let ours = |kind: &str, ns: Vec<pb::Notice>| -> Vec<pb::Notice> {
        ns.into_iter()
            .filter(|n| n.kind == kind && n.payload_json.contains("\"cycle\":\"warn\""))
            .collect()
    };
    let risks = ours("veto_risk", env.notices("").await);
    assert_eq!(risks.len(), 1, "one notice, B08's, to samr: {risks:?}");
    let notice = &risks[0];
    assert_eq!(notice.recipient, "samr");
    let payload: serde_json::Value =
        serde_json::from_str(&notice.payload_json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(payload["indicator"], "B08");
    assert_eq!(payload["region"], CITY);
    assert_eq!(payload["review_date"], review_date.as_str());
    assert_eq!(payload["conditions"][0]["current"], "0.510000");
    assert_eq!(payload["conditions"][0]["current_failing"], false);
    let projected = payload["conditions"][0]["projected"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(projected.as_str() < "0.500000", "{projected}");
    assert!(
        notice.title_zh.starts_with("【否决预警】衢州市 B08")
            && notice.title_zh.contains("按趋势预计到评审日将低于阈值"),
        "{}",
        notice.title_zh
    );
    assert!(
        notice.body_zh.contains("有否决风险") && notice.body_zh.contains("预警测试周期"),
        "{}",
        notice.body_zh
    );
    assert!(
        notice.body_en.contains("at risk of a veto"),
        "{}",
        notice.body_en
    );
    assert!(
        !env.notices("")
            .await
            .iter()
            .any(|n| n.kind.starts_with("veto_risk") && n.payload_json.contains("\"B07\"")),
        "B07 rises: no veto-risk notice"
    );
    let summaries = ours("veto_risk_summary", env.notices("credit_office").await);
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    assert!(
        summaries[0].title_zh.contains("1 项基础性指标") && summaries[0].title_zh.contains("B08"),
        "{}",
        summaries[0].title_zh
    );

    // The receivers get them, signed like every notice.
    let got = rx.wait_for("/samr", 1, |g| g.delivery() == notice.id).await;
    signing::verify_json(
        SECRET,
        got[0].header("x-citycredit-timestamp"),
        got[0].header("x-citycredit-signature"),
        &got[0].body,
        now_micros() / 1_000_000,
        300,
    )
    .unwrap_or_else(|e| panic!("signature: {e}"));
    assert_eq!(got[0].json()["kind"], "veto_risk");
    rx.wait_for("/office", 1, |g| g.delivery() == summaries[0].id)
        .await;

    // A second pass: nothing new, and nothing sent again.
    let second = env.pass().await;
    assert_eq!(second.notices_enqueued, 0, "{second:?}");
    for _ in 0..100 {
        let pending = ok(env
            .admin()
            .list_deliveries(pb::ListDeliveriesRequest {
                state: pb::DeliveryState::Pending as i32,
                ..Default::default()
            })
            .await)
        .deliveries;
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ours("veto_risk", env.notices("").await).len(), 1);
    let to_samr: Vec<Got> = rx
        .at("/samr")
        .into_iter()
        .filter(|g| g.json()["payload"]["cycle"] == "warn")
        .collect();
    assert_eq!(to_samr.len(), 1, "exactly once: {to_samr:?}");
}
both_databases!(
    veto_risk_notices,
    flavor = "multi_thread",
    worker_threads = 2
);
