//! `/metrics` and the access log end to end (issue 10 point 4): the real `citycredit` binary
//! (build it first: `cargo build -p citycredit-app`), a real HTTP scrape, its log captured
//! from standard error as JSON. On SQLite and (with `DATABASE_URL`) PostgreSQL.
//!
//! - a flood of calls to random 4 KB paths (no key) is one `unknown` label, not one per path;
//! - a successful unary call is counted and logged as OK (its status is in the trailers);
//! - errors by their code, pushes by principal, rows ingested;
//! - failed authentications: no log line per attempt, one summary per source.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::indicator_service_client::IndicatorServiceClient;
use citycredit::proto::v1::metric_submission_service_client::MetricSubmissionServiceClient as Submissions;
use citycredit_tests::h2raw::{self, grpc_request};
use citycredit_tests::ingestion::{channel_with_key, number_input};
use citycredit_tests::{ADMIN_KEY, Backend, both_databases, fresh_schema, postgres_url};

fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current exe: {e}"));
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|d| d.join("citycredit"))
        .unwrap_or_default();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p citycredit-app` first",
        bin.display()
    );
    bin
}

/// The binary, its gRPC and metrics addresses, and every line it logged.
struct Server {
    _child: Child,
    grpc: SocketAddr,
    metrics: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(backend: Backend, schema: &str) -> Server {
        Server::start_with(backend, schema, &[]).await
    }

    /// Starts the binary with extra environment (configuration) variables.
    async fn start_with(backend: Backend, schema: &str, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut cmd = Command::new(binary());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("CITYCREDIT_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
            .env("CITYCREDIT_LOG_FORMAT", "json")
            .env("CITYCREDIT_LOG_FILTER", "info")
            .env("CITYCREDIT_METRICS_LISTEN", "127.0.0.1:0")
            .env_remove("RUST_LOG")
            .env_remove("DATABASE_URL")
            .env_remove("CITYCREDIT_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd.envs(env.iter().copied());
        if backend == Backend::Postgres {
            cmd.env("CITYCREDIT_DATABASE_URL", postgres_url())
                .env("CITYCREDIT_DATABASE_SCHEMA", schema);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn: {e}"));
        let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lines = Arc::clone(&log);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            let mut found = (None, None);
            let mut tx = Some(tx);
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let addr = v["addr"]
                        .as_str()
                        .and_then(|a| a.parse::<SocketAddr>().ok());
                    match v["message"].as_str() {
                        Some("serving gRPC") => found.0 = addr,
                        Some("serving metrics") => found.1 = addr,
                        _ => {}
                    }
                    if let (Some(g), Some(m)) = found
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send((g, m));
                    }
                }
                lines
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line);
            }
        });
        let (grpc, metrics) = tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("the server did not log its addresses"));
        Server {
            _child: child,
            grpc,
            metrics,
            log,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `GET /metrics` over a plain socket.
    async fn scrape(&self) -> String {
        let mut tcp = tokio::net::TcpStream::connect(self.metrics)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&raw).into_owned();
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "{}",
            &text[..text.len().min(200)]
        );
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }
}

/// The value of the exposition line that starts with `series`.
fn value(exposition: &str, series: &str) -> Option<u64> {
    exposition
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics_and_access_log(backend: Backend) {
    let schema = fresh_schema();
    let server = Server::start(backend, &schema).await;
    let name = format!("{backend:?}");

    // A platform principal (created by the administrator) pushes two values.
    let admin = channel_with_key(server.grpc, ADMIN_KEY);
    let mut registry =
        pb::department_registry_service_client::DepartmentRegistryServiceClient::new(admin.clone());
    registry
        .create_principal(pb::CreatePrincipalRequest {
            principal: Some(pb::Principal {
                id: "metrics-platform".into(),
                role: pb::Role::Platform as i32,
                ..Default::default()
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let key = registry
        .create_api_key(pb::CreateApiKeyRequest {
            principal: "principals/metrics-platform".into(),
            expire_time: None,
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner()
        .secret;
    let mut subs = Submissions::new(channel_with_key(server.grpc, &key));
    for v in ["11", "12"] {
        subs.submit_value(pb::SubmitValueRequest {
            value: Some(number_input(
                "uscc.codes_total",
                "330802",
                "2026",
                "samr",
                v,
            )),
            idempotency_key: format!("metrics-{v}"),
            validate_only: false,
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // A NOT_FOUND.
    let mut indicators = IndicatorServiceClient::new(admin.clone());
    let missing = indicators
        .get_indicator(pb::GetIndicatorRequest {
            name: "indicators/B99".into(),
        })
        .await
        .err()
        .map(|e| e.code());
    assert_eq!(missing, Some(tonic::Code::NotFound), "{name}");

    // 300 calls to random 4 KB paths, no key.
    let mut conn = h2raw::connect(server.grpc, 65_535)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut unknown = Vec::new();
    for i in 0..300u32 {
        let junk: String = (0..4096)
            .map(|j| char::from(b'a' + u8::try_from((i * 7 + j) % 26).unwrap_or(0)))
            .collect();
        let (response, _s) = conn
            .start(
                grpc_request(&format!("/x.{i}/{junk}"), None),
                Some(bytes::Bytes::new()),
            )
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        unknown.push(response);
    }
    for r in unknown {
        assert_eq!(
            h2raw::grpc_code(r).await,
            Ok(tonic::Code::Unimplemented as i32),
            "{name}"
        );
    }
    // 20 failed authentications.
    let mut stranger = IndicatorServiceClient::new(channel_with_key(
        server.grpc,
        "cc_0badc0de_1111111111111111111111111111111111111111111111111111111111111111",
    ));
    for _ in 0..20 {
        let code = stranger
            .get_catalog(pb::GetCatalogRequest {})
            .await
            .err()
            .map(|e| e.code());
        assert_eq!(code, Some(tonic::Code::Unauthenticated), "{name}");
    }

    let text = server.scrape().await;
    assert!(
        text.len() < 64 * 1024,
        "{name}: the exposition is {} bytes after 300 random paths",
        text.len()
    );
    assert!(
        !text.contains("aaaa") && !text.contains("/x."),
        "{name}: a random path is a label"
    );
    let series = |m: &str, code: &str| {
        format!("citycredit_rpc_requests_total{{method=\"{m}\",code=\"{code}\"}}")
    };
    assert_eq!(
        value(&text, &series("unknown", "UNIMPLEMENTED")),
        Some(300),
        "{name}:\n{text}"
    );
    assert_eq!(
        value(
            &text,
            &series("/citycredit.v1.MetricSubmissionService/SubmitValue", "OK")
        ),
        Some(2),
        "{name}: a successful unary call is OK (read from the trailers):\n{text}"
    );
    assert_eq!(
        value(
            &text,
            &series("/citycredit.v1.IndicatorService/GetIndicator", "NOT_FOUND")
        ),
        Some(1),
        "{name}"
    );
    assert_eq!(
        value(
            &text,
            &series(
                "/citycredit.v1.IndicatorService/GetCatalog",
                "UNAUTHENTICATED"
            )
        ),
        Some(20),
        "{name}"
    );
    assert!(!text.contains("streamed"), "{name}");
    assert_eq!(
        value(
            &text,
            "citycredit_pushes_total{principal=\"metrics-platform\"}"
        ),
        Some(2),
        "{name}"
    );
    assert_eq!(
        value(&text, "citycredit_ingested_rows_total"),
        Some(2),
        "{name}"
    );
    assert!(
        value(&text, "citycredit_adaptive_limit").is_some(),
        "{name}: no adaptive limit gauge"
    );

    // The access log: one line per call, with the code read at the end of the call.
    let lines = server.lines();
    let access: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "citycredit::access")
        .collect();
    let pushes: Vec<_> = access
        .iter()
        .filter(|l| l["rpc"] == "/citycredit.v1.MetricSubmissionService/SubmitValue")
        .collect();
    assert_eq!(pushes.len(), 2, "{name}: {pushes:?}");
    for p in &pushes {
        assert_eq!(p["code"], "OK", "{name}: {p}");
        assert_eq!(p["principal"], "metrics-platform", "{name}: {p}");
        assert!(p["latency_us"].as_u64().is_some(), "{name}: {p}");
    }
    let unknown_lines: Vec<_> = access
        .iter()
        .filter(|l| l["code"] == "UNIMPLEMENTED")
        .collect();
    assert_eq!(unknown_lines.len(), 300, "{name}");
    assert!(
        unknown_lines
            .iter()
            .all(|l| l["rpc"].as_str().is_some_and(|r| r.chars().count() <= 129)),
        "{name}: an unknown path is logged clipped"
    );

    // Failed authentications: no line per attempt; one summary for the source within 10 s.
    let per_attempt = lines
        .iter()
        .filter(|l| l["message"] == "api key refused")
        .count();
    assert_eq!(per_attempt, 0, "{name}");
    let waited = Instant::now();
    let summary = loop {
        let found: Vec<serde_json::Value> = server
            .lines()
            .into_iter()
            .filter(|l| l["message"] == "failed authentications")
            .collect();
        // The 20 attempts may straddle two 10-second windows: two summaries then.
        let counted: u64 = found.iter().filter_map(|l| l["failures"].as_u64()).sum();
        if counted >= 20 {
            break found;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(25),
            "{name}: no summary of 20 failed authentications: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(summary.len() <= 2, "{name}: {summary:?}");
    for s in &summary {
        assert_eq!(s["level"], "WARN", "{name}");
        assert_eq!(s["source"], "127.0.0.1", "{name}");
        assert!(
            s["key_prefixes"]
                .as_str()
                .is_some_and(|p| p.contains("cc_0badc0de") && !p.contains("1111")),
            "{name}: the prefix, never the key: {s}"
        );
    }
    let counted: u64 = summary.iter().filter_map(|l| l["failures"].as_u64()).sum();
    assert_eq!(counted, 20, "{name}: {summary:?}");
    // Concurrent scrapes agree on the rows ingested.
    let (a, b) = tokio::join!(server.scrape(), server.scrape());
    assert_eq!(
        value(&a, "citycredit_ingested_rows_total"),
        value(&b, "citycredit_ingested_rows_total"),
        "{name}"
    );
}

// Each waits up to 10 s for its failure summary: libtest runs the two databases side by side.
both_databases!(
    metrics_and_access_log,
    flavor = "multi_thread",
    worker_threads = 2
);

/// `access_log_successes` makes the access log's cost a choice: with 3, one in three successful
/// calls is written and every failed one; with 0, failed calls only. Metrics count every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_samples_successes_and_keeps_every_failure() {
    for (every, expected_ok) in [("3", 3usize), ("0", 0)] {
        let server = Server::start_with(
            Backend::Sqlite,
            &fresh_schema(),
            &[("CITYCREDIT_GATEWAY__ACCESS_LOG_SUCCESSES", every)],
        )
        .await;
        let mut indicators = IndicatorServiceClient::new(channel_with_key(server.grpc, ADMIN_KEY));
        for _ in 0..9 {
            indicators
                .get_catalog(pb::GetCatalogRequest {})
                .await
                .unwrap_or_else(|e| panic!("every {every}: {e}"));
        }
        for _ in 0..4 {
            let code = indicators
                .get_indicator(pb::GetIndicatorRequest {
                    name: "indicators/B99".into(),
                })
                .await
                .err()
                .map(|e| e.code());
            assert_eq!(code, Some(tonic::Code::NotFound), "every {every}");
        }
        // The line is written when the response ends; give the last one a moment.
        let waited = Instant::now();
        let (ok, failed) = loop {
            let lines = server.lines();
            let access: Vec<&serde_json::Value> = lines
                .iter()
                .filter(|l| l["target"] == "citycredit::access")
                .collect();
            let ok = access
                .iter()
                .filter(|l| l["rpc"] == "/citycredit.v1.IndicatorService/GetCatalog")
                .count();
            let failed = access.iter().filter(|l| l["code"] == "NOT_FOUND").count();
            if failed == 4 || waited.elapsed() > Duration::from_secs(5) {
                break (ok, failed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!((ok, failed), (expected_ok, 4), "every {every}");
        let text = server.scrape().await;
        assert_eq!(
            value(
                &text,
                "citycredit_rpc_requests_total{method=\"/citycredit.v1.IndicatorService/GetCatalog\",code=\"OK\"}"
            ),
            Some(9),
            "every {every}: the metrics count every call\n{text}"
        );
    }
}
