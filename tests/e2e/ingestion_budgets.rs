//! Issue 10, point 3 (the ingestion parts), through the real server on SQLite and PostgreSQL:
//! a SubmitBatch stream is authorized and validated message by message (a caller who may not
//! submit is refused at its first message, while its stream is still open), the bytes of one
//! stream are capped, and code audits are capped in number (in all and per principal) and in
//! distinct codes.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use citycredit::proto::v1 as pb;
use citycredit_core::auth::Role;
use citycredit_ingestion::code_audit::complete;
use citycredit_tests::ingestion::*;
use citycredit_tests::{
    AuthChannel, Backend, TestServer, both_databases, fresh_schema, use_backend,
};

fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// Sends `first` on a batch stream that stays open, and returns how the call ended (None when
/// it did not end within 5 s).
async fn answer_to_first_message(
    c: &SubmissionClient,
    first: pb::SubmitBatchRequest,
) -> Option<Result<pb::SubmitBatchResponse, Status>> {
    let (tx, rx) = mpsc::channel(1);
    tx.send(first).await.unwrap_or_else(|e| panic!("{e}"));
    let mut c = c.clone();
    let call = c.submit_batch(ReceiverStream::new(rx));
    let answer = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .ok();
    // The stream was open the whole time.
    drop(tx);
    answer.map(|r| r.map(|r| r.into_inner()))
}

fn four_mb_of_values() -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        values: (0..1_800)
            .map(|i| pb::SubmissionInput {
                note: "备".repeat(700),
                ..number_input("uscc.codes_total", "330802", "2026", "samr", &i.to_string())
            })
            .collect(),
        ..Default::default()
    }
}

async fn a_batch_is_authorized_and_validated_as_it_arrives(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    // An operator may not submit: refused at its first (4 MB) message, the stream still open.
    let operator = s
        .client(Some(&principal("reader", Role::Operator, None)))
        .await;
    let started = Instant::now();
    let answer = answer_to_first_message(&operator, four_mb_of_values())
        .await
        .unwrap_or_else(|| panic!("{name}: no answer while the stream stays open"));
    let e = answer.err().unwrap_or_else(|| panic!("{name}: accepted"));
    assert_eq!(e.code(), Code::PermissionDenied, "{name}: {e:?}");
    eprintln!(
        "{name}: operator refused {:?} after its first message",
        started.elapsed()
    );
    // A bad value ends the stream at its message, with that message's violations.
    let platform = s.client(Some(&platform())).await;
    let mut bad = number_input("uscc.codes_total", "330802", "2026", "samr", "1");
    bad.period = "2026-13".into();
    let answer = answer_to_first_message(
        &platform,
        pb::SubmitBatchRequest {
            values: vec![
                number_input("uscc.codes_total", "330802", "2026", "samr", "1"),
                bad,
            ],
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|| panic!("{name}: no answer while the stream stays open"));
    let e = answer.err().unwrap_or_else(|| panic!("{name}: accepted"));
    assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
    assert_eq!(violation_fields(&e), ["values[1].period"], "{name}");
    // A good first message keeps the stream open (no answer yet).
    let answer = answer_to_first_message(
        &platform,
        pb::SubmitBatchRequest {
            values: vec![number_input(
                "uscc.codes_total",
                "330802",
                "2026",
                "samr",
                "1",
            )],
            ..Default::default()
        },
    )
    .await;
    assert!(answer.is_none(), "{name}: {answer:?}");
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM submissions")
        .fetch_one(&s.db.pool)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(stored, 0, "{name}");
}

both_databases!(a_batch_is_authorized_and_validated_as_it_arrives);

/// Starts an audit that stays open (one message sent) and returns its sender and call.
fn open_audit(
    channel: AuthChannel,
) -> (
    mpsc::Sender<pb::AuditCodesRequest>,
    tokio::task::JoinHandle<Result<pb::AuditCodesResponse, Status>>,
) {
    let (tx, rx) = mpsc::channel(4);
    let call = tokio::spawn(async move {
        pb::code_audit_service_client::CodeAuditServiceClient::new(channel)
            .audit_codes(ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner())
    });
    (tx, call)
}

fn codes(from: usize, n: usize) -> pb::AuditCodesRequest {
    pb::AuditCodesRequest {
        codes: (from..from + n)
            .filter_map(|i| complete(&format!("91330800{i:08}")))
            .collect(),
        record: None,
    }
}

/// A short audit, start to end.
async fn short_audit(channel: &AuthChannel) -> Result<(), Status> {
    pb::code_audit_service_client::CodeAuditServiceClient::new(channel.clone())
        .audit_codes(tokio_stream::iter(vec![codes(0, 10)]))
        .await
        .map(drop)
}

type Held = (
    mpsc::Sender<pb::AuditCodesRequest>,
    tokio::task::JoinHandle<Result<pb::AuditCodesResponse, Status>>,
);

/// Opens an audit as `holder` that stays open, then runs a short audit as `probe`: returns the
/// open audit and the probe's refusal, or None when for 5 s every probe ran (an open audit
/// that lost the race to a probe is opened again).
async fn hold_and_probe(holder: &AuthChannel, probe: &AuthChannel) -> Option<(Held, Status)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let (tx, call) = open_audit(holder.clone());
        tx.send(codes(0, 10))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Time for the open audit to start on the server.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if call.is_finished() {
            continue;
        }
        match short_audit(probe).await {
            Err(e) if !call.is_finished() => return Some(((tx, call), e)),
            _ => {
                drop(tx);
                let _ = call.await;
            }
        }
    }
    None
}

async fn streams_and_code_audits_stay_within_their_budgets(backend: Backend) {
    let schema = fresh_schema();
    let server = TestServer::start_with(|c| {
        use_backend(c, backend, &schema);
        c.ingest_max_batch_bytes = 256 * 1024;
        c.ingest_max_audit_distinct_codes = 1_000;
    })
    .await;
    let name = format!("{backend:?}");
    let platform = server
        .channel_as("platform", pb::Role::Platform, None)
        .await;

    // Bytes per stream: the message that crosses the cap ends the stream.
    let message = |k: usize| pb::SubmitBatchRequest {
        values: (0..200)
            .map(|i| pb::SubmissionInput {
                note: "x".repeat(500),
                ..number_input(
                    "uscc.codes_total",
                    "330802",
                    "2026",
                    "samr",
                    &(k * 1000 + i).to_string(),
                )
            })
            .collect(),
        ..Default::default()
    };
    let e =
        pb::metric_submission_service_client::MetricSubmissionServiceClient::new(platform.clone())
            .submit_batch(tokio_stream::iter((0..4).map(message).collect::<Vec<_>>()))
            .await
            .err()
            .unwrap_or_else(|| panic!("{name}: 400 KB stream accepted"));
    assert_eq!(e.code(), Code::ResourceExhausted, "{name}: {e:?}");
    assert_eq!(reason(&e), "BATCH_TOO_LARGE", "{name}");
    // Under the cap is fine.
    pb::metric_submission_service_client::MetricSubmissionServiceClient::new(platform.clone())
        .submit_batch(tokio_stream::iter((0..2).map(message).collect::<Vec<_>>()))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));

    // Distinct codes per audit.
    let e = pb::code_audit_service_client::CodeAuditServiceClient::new(platform.clone())
        .audit_codes(tokio_stream::iter(vec![codes(0, 600), codes(600, 600)]))
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: 1,200 distinct codes audited"));
    assert_eq!(e.code(), Code::ResourceExhausted, "{name}: {e:?}");
    assert_eq!(reason(&e), "AUDIT_TOO_LARGE", "{name}");

    // Audits at once: one per principal, two in all (the defaults).
    let a = server
        .channel_as("auditor-a", pb::Role::Operator, None)
        .await;
    let b = server
        .channel_as("auditor-b", pb::Role::Operator, None)
        .await;
    let c = server
        .channel_as("auditor-c", pb::Role::Operator, None)
        .await;
    let ((a_tx, a_call), again) = hold_and_probe(&a, &a)
        .await
        .unwrap_or_else(|| panic!("{name}: a second audit of one principal ran"));
    assert_eq!(again.code(), Code::ResourceExhausted, "{name}: {again:?}");
    assert_eq!(reason(&again), "AUDIT_CAPACITY", "{name}");
    assert!(again.get_error_details().retry_info().is_some(), "{name}");
    let ((b_tx, b_call), _) = hold_and_probe(&b, &b)
        .await
        .unwrap_or_else(|| panic!("{name}: a second audit of one principal ran"));
    let third = short_audit(&c)
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: a third audit ran at once"));
    assert_eq!(reason(&third), "AUDIT_CAPACITY", "{name}: {third:?}");
    // The open audits finish normally, and then there is room again.
    drop(a_tx);
    drop(b_tx);
    for call in [a_call, b_call] {
        let done = call
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(done.total, 10, "{name}");
    }
    pb::code_audit_service_client::CodeAuditServiceClient::new(c)
        .audit_codes(tokio_stream::iter(vec![codes(0, 10)]))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    drop(server);
}

both_databases!(streams_and_code_audits_stay_within_their_budgets);
