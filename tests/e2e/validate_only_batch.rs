//! A `validate_only` SubmitBatch reports every problem again (DESIGN: "validate_only returns
//! every per-item error without storing"), through the real server on SQLite and PostgreSQL,
//! while a batch to be stored still ends at its first bad message:
//!
//! - a batch to be stored is answered at its first bad message, its stream still open; a
//!   validate_only batch (the first message's flag) is checked to its end and answered with
//!   the problems of every message;
//! - a validate_only batch with more problems than a status lists gives the first 100 and the
//!   total, in a status any client accepts;
//! - a caller who may not submit a value is refused at once, validate_only or not;
//! - the stream's byte cap holds for validate_only batches (refused at the message that
//!   crosses it, the stream still open).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use citycredit::proto::v1 as pb;
use citycredit_core::auth::Role;
use citycredit_tests::ingestion::*;
use citycredit_tests::{Backend, TestServer, both_databases, fresh_schema, use_backend};

const METRIC: &str = "uscc.codes_total";

/// A COUNT value: `n` with a fraction is a violation (`values[i].value`).
fn count(n: &str) -> pb::SubmissionInput {
    number_input(METRIC, "330802", "2026", "samr", n)
}

fn message(validate_only: bool, values: Vec<pb::SubmissionInput>) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        idempotency_key: String::new(),
        validate_only,
        values,
    }
}

/// A batch call whose messages the test sends one by one.
struct OpenBatch {
    tx: Option<mpsc::Sender<pb::SubmitBatchRequest>>,
    call: JoinHandle<Result<pb::SubmitBatchResponse, Status>>,
}

impl OpenBatch {
    fn start(c: &SubmissionClient) -> OpenBatch {
        let (tx, rx) = mpsc::channel(4);
        let mut c = c.clone();
        let call = tokio::spawn(async move {
            c.submit_batch(ReceiverStream::new(rx))
                .await
                .map(tonic::Response::into_inner)
        });
        OpenBatch { tx: Some(tx), call }
    }

    async fn send(&self, m: pb::SubmitBatchRequest) {
        if let Some(tx) = &self.tx {
            // The call may have ended already (its receiver gone): that is what tests look at.
            let _ = tx.send(m).await;
        }
    }

    /// The answer if the call ends within `wait` with the stream still open.
    async fn answered_within(&mut self, wait: Duration) -> Option<Result<(), Status>> {
        match tokio::time::timeout(wait, &mut self.call).await {
            Ok(r) => Some(r.unwrap_or_else(|e| panic!("call task: {e}")).map(|_| ())),
            Err(_) => None,
        }
    }

    /// Ends the stream normally and returns the answer.
    async fn finish(mut self) -> Result<pb::SubmitBatchResponse, Status> {
        self.tx = None;
        tokio::time::timeout(Duration::from_secs(10), self.call)
            .await
            .unwrap_or_else(|_| panic!("no answer 10 s after the stream ended"))
            .unwrap_or_else(|e| panic!("call task: {e}"))
    }
}

fn fields(status: &Status) -> Vec<String> {
    violation_fields(status)
}

fn info(status: &Status, key: &str) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .and_then(|i| i.metadata.get(key).cloned())
}

fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

async fn stored(s: &IngestionServer) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM submissions")
        .fetch_one(&s.db.pool)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", s.name()))
}

/// Three messages of three values, one bad value in each (values[1], values[4], values[7]).
fn three_messages(validate_only: bool) -> Vec<pb::SubmitBatchRequest> {
    (0..3)
        .map(|m| {
            message(
                validate_only && m == 0,
                vec![count("10"), count("1.5"), count("12")],
            )
        })
        .collect()
}

async fn a_validate_only_batch_reports_the_problems_of_every_message(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let c = s.client(Some(&platform())).await;
    let before = stored(&s).await;

    // To be stored: answered at the first bad message, the stream still open.
    let mut batch = OpenBatch::start(&c);
    let mut messages = three_messages(false).into_iter();
    if let Some(m) = messages.next() {
        batch.send(m).await;
    }
    let e = batch
        .answered_within(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("{name}: a batch to store was not refused at its bad message"))
        .err()
        .unwrap_or_else(|| panic!("{name}: accepted"));
    assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
    assert_eq!(fields(&e), ["values[1].value"], "{name}: {e:?}");

    // validate_only: the first bad message does not end it; the answer, once the stream ends,
    // has the problems of every message.
    let mut batch = OpenBatch::start(&c);
    let mut messages = three_messages(true).into_iter();
    if let Some(m) = messages.next() {
        batch.send(m).await;
    }
    assert!(
        batch
            .answered_within(Duration::from_millis(500))
            .await
            .is_none(),
        "{name}: a validate_only batch ended at its first bad message"
    );
    for m in messages {
        batch.send(m).await;
    }
    let e = batch
        .finish()
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: validate_only accepted bad values"));
    assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
    assert_eq!(
        fields(&e),
        ["values[1].value", "values[4].value", "values[7].value"],
        "{name}: {e:?}"
    );
    assert_eq!(info(&e, "violations").as_deref(), Some("3"), "{name}");

    // A clean validate_only batch of several messages is counted whole, and stores nothing.
    let batch = OpenBatch::start(&c);
    batch
        .send(message(true, vec![count("1"), count("2")]))
        .await;
    batch.send(message(false, vec![count("3")])).await;
    let ok = batch
        .finish()
        .await
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    assert_eq!(ok.accepted_count, 3, "{name}");
    assert_eq!(
        stored(&s).await,
        before,
        "{name}: validate_only stored something"
    );
}

both_databases!(a_validate_only_batch_reports_the_problems_of_every_message);

async fn a_validate_only_batch_lists_the_first_100_problems_and_counts_all(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let c = s.client(Some(&platform())).await;
    // Three messages of 1,000 values, every one bad: 3,000 problems.
    let batch = OpenBatch::start(&c);
    for m in 0..3 {
        let values = (0..1_000).map(|i| count(&format!("{i}.5"))).collect();
        batch.send(message(m == 0, values)).await;
    }
    let e = batch
        .finish()
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: accepted"));
    assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
    assert_eq!(info(&e, "violations").as_deref(), Some("3000"), "{name}");
    let listed = fields(&e);
    assert!(
        !listed.is_empty() && listed.len() <= 100,
        "{name}: {} listed",
        listed.len()
    );
    assert_eq!(
        info(&e, "violations_listed"),
        Some(listed.len().to_string()),
        "{name}"
    );
    assert_eq!(listed[0], "values[0].value", "{name}");
    // What travels in the trailers stays far under the 8 KiB clients accept.
    let details = e.details().len();
    assert!(
        details + e.message().len() < 8 * 1024,
        "{name}: {details} bytes of details"
    );
}

both_databases!(a_validate_only_batch_lists_the_first_100_problems_and_counts_all);

async fn a_validate_only_batch_is_still_refused_at_once_for_a_value_the_caller_may_not_submit(
    backend: Backend,
) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let operator = s
        .client(Some(&principal("reader", Role::Operator, None)))
        .await;
    // Its first message's problems are collected; the first value it may not submit ends the
    // call, the stream still open.
    let mut batch = OpenBatch::start(&operator);
    batch.send(message(true, vec![count("1.5")])).await;
    assert!(
        batch
            .answered_within(Duration::from_millis(500))
            .await
            .is_none(),
        "{name}: ended at a message with a bad value"
    );
    batch.send(message(true, vec![count("1")])).await;
    let e = batch
        .answered_within(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("{name}: an operator's validate_only batch was not refused"))
        .err()
        .unwrap_or_else(|| panic!("{name}: accepted"));
    assert_eq!(e.code(), Code::PermissionDenied, "{name}: {e:?}");
}

both_databases!(
    a_validate_only_batch_is_still_refused_at_once_for_a_value_the_caller_may_not_submit
);

async fn the_byte_cap_of_a_stream_holds_for_validate_only_batches(backend: Backend) {
    let schema = fresh_schema();
    let cap = 64 * 1024;
    let server = TestServer::start_with(|c| {
        use_backend(c, backend, &schema);
        c.ingest_max_batch_bytes = cap;
    })
    .await;
    let name = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let channel = server
        .channel_as("platform-cap", citycredit::proto::v1::Role::Platform, None)
        .await;
    let c = pb::metric_submission_service_client::MetricSubmissionServiceClient::new(channel);
    // Bad values with 1,000-character notes: about 1 KB each, 20 to a message.
    let bad = || pb::SubmissionInput {
        note: "x".repeat(1_000),
        ..count("1.5")
    };
    let size = {
        use prost::Message;
        message(false, (0..20).map(|_| bad()).collect()).encoded_len()
    };
    // The message whose bytes cross the cap.
    let crossing = cap / size + 1;
    let mut batch = OpenBatch::start(&c);
    let mut sent = 0;
    let mut answer = None;
    for m in 0..10 {
        batch
            .send(message(m == 0, (0..20).map(|_| bad()).collect()))
            .await;
        sent += 1;
        answer = batch.answered_within(Duration::from_millis(500)).await;
        if answer.is_some() {
            break;
        }
    }
    let e = answer
        .unwrap_or_else(|| panic!("{name}: {sent} messages of 22 KB and still open"))
        .err()
        .unwrap_or_else(|| panic!("{name}: accepted"));
    assert_eq!(e.code(), Code::ResourceExhausted, "{name}: {e:?}");
    assert_eq!(reason(&e), "BATCH_TOO_LARGE", "{name}: {e:?}");
    assert_eq!(sent, crossing, "{name}: messages of {size} bytes");
    assert_eq!(info(&e, "limit"), Some(cap.to_string()), "{name}");
}

both_databases!(the_byte_cap_of_a_stream_holds_for_validate_only_batches);
