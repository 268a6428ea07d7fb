//! A kill -9 of the real `citycredit` binary in the middle of a batch stream: after a restart
//! the batch is wholly absent, and a retry with the same key completes it exactly once. Runs on
//! SQLite and (with `DATABASE_URL`) PostgreSQL. Needs the binary: `cargo build -p
//! citycredit-app` first (the test says so when it is missing).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use citycredit::proto::v1 as pb;
use citycredit_tests::ingestion::{channel_with_key, number_input};
use citycredit_tests::{
    ADMIN_KEY, AuthChannel, Backend, both_databases, fresh_schema, postgres_url,
};

type Client = pb::metric_submission_service_client::MetricSubmissionServiceClient<AuthChannel>;

fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current exe: {e}"));
    // target/debug/deps/<test> -> target/debug/citycredit
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("citycredit"))
        .unwrap_or_default();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p citycredit-app` first",
        bin.display()
    );
    bin
}

/// Starts `citycredit serve` and returns it with the address from its log line.
async fn spawn(data_dir: &Path, backend: Backend, schema: &str) -> (Child, SocketAddr) {
    let mut cmd = Command::new(binary());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("CITYCREDIT_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .env("CITYCREDIT_LOG_FORMAT", "text")
        .env_remove("RUST_LOG")
        .env_remove("DATABASE_URL")
        .env_remove("CITYCREDIT_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if backend == Backend::Postgres {
        cmd.env("CITYCREDIT_DATABASE_URL", postgres_url())
            .env("CITYCREDIT_DATABASE_SCHEMA", schema);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn: {e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let mut lines = BufReader::new(stderr).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("serving gRPC")
                && let Some(rest) = line.split("addr=").nth(1)
            {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                return addr.parse::<SocketAddr>().ok();
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| panic!("the server did not log its address"));
    // Keep draining the log so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

fn client(addr: SocketAddr) -> Client {
    pb::metric_submission_service_client::MetricSubmissionServiceClient::new(channel_with_key(
        addr, ADMIN_KEY,
    ))
}

fn values() -> Vec<pb::SubmissionInput> {
    (0..1_000)
        .map(|i| number_input("uscc.codes_total", "330802", "2026", "samr", &i.to_string()))
        .collect()
}

fn messages(values: &[pb::SubmissionInput]) -> Vec<pb::SubmitBatchRequest> {
    values
        .chunks(100)
        .enumerate()
        .map(|(i, chunk)| pb::SubmitBatchRequest {
            idempotency_key: if i == 0 {
                "crash-batch".into()
            } else {
                String::new()
            },
            validate_only: false,
            values: chunk.to_vec(),
        })
        .collect()
}

async fn stored(c: &mut Client) -> Vec<pb::Submission> {
    c.list_submissions(pb::ListSubmissionsRequest {
        page_size: 1000,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("list: {e}"))
    .into_inner()
    .submissions
}

async fn kill_9_mid_batch_stores_nothing_and_a_retry_completes_once(backend: Backend) {
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let schema = fresh_schema();
    let (mut child, addr) = spawn(data.path(), backend, &schema).await;
    let mut c = client(addr);
    // A first authenticated call: the server is up and seeded.
    assert!(stored(&mut c).await.is_empty());

    // Half the batch, then the server dies while the stream is still open.
    let msgs = messages(&values());
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for m in msgs.iter().take(5).cloned() {
        tx.send(m).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let mut streaming = c.clone();
    let call = tokio::spawn(async move {
        streaming
            .submit_batch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    child
        .start_kill()
        .unwrap_or_else(|e| panic!("kill -9: {e}"));
    let _ = child.wait().await;
    let result = call.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        result.is_err(),
        "{backend:?}: the broken batch was acknowledged"
    );
    drop(tx);

    // Restart on the same store: nothing of the batch is there.
    let (_child, addr) = spawn(data.path(), backend, &schema).await;
    let mut c = client(addr);
    assert!(
        stored(&mut c).await.is_empty(),
        "{backend:?}: part of the batch survived"
    );

    // The retry completes it once; a second retry replays.
    let first = c
        .submit_batch(tokio_stream::iter(msgs.clone()))
        .await
        .unwrap_or_else(|e| panic!("{backend:?}: retry: {e}"))
        .into_inner();
    assert_eq!((first.accepted_count, first.replayed), (1_000, false));
    let second = c
        .submit_batch(tokio_stream::iter(msgs))
        .await
        .unwrap_or_else(|e| panic!("{backend:?}: second retry: {e}"))
        .into_inner();
    assert!(second.replayed);
    assert_eq!(second.first_submission_id, first.first_submission_id);
    assert_eq!(stored(&mut c).await.len(), 1_000, "{backend:?}");
    let v = c
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert!(v.intact && v.rows_checked == 1_000, "{backend:?}: {v:?}");
}

both_databases!(kill_9_mid_batch_stores_nothing_and_a_retry_completes_once);
