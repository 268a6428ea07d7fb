//! The hash chain catches rows edited, deleted or reordered directly in the database, on
//! SQLite and (with `DATABASE_URL`) PostgreSQL.

use citycredit::proto::v1 as pb;
use citycredit_tests::ingestion::*;
use citycredit_tests::{Backend, both_databases};

async fn seeded(backend: Backend) -> IngestionServer {
    let s = IngestionServer::start(backend).await;
    let mut c = s.client(Some(&platform())).await;
    for i in 0..10 {
        c.submit_value(pb::SubmitValueRequest {
            value: Some(number_input(
                "uscc.codes_total",
                "330802",
                "2026",
                "samr",
                &i.to_string(),
            )),
            idempotency_key: String::new(),
            validate_only: false,
        })
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", s.name()));
    }
    s
}

async fn verify(s: &IngestionServer) -> pb::VerifyAuditChainResponse {
    s.client(Some(&admin()))
        .await
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", s.name()))
        .into_inner()
}

async fn exec(s: &IngestionServer, sql: &'static str) {
    sqlx::query(sql)
        .execute(&s.db.pool)
        .await
        .unwrap_or_else(|e| panic!("{}: {sql}: {e}", s.name()));
}

async fn intact_chain_verifies(backend: Backend) {
    let s = seeded(backend).await;
    let v = verify(&s).await;
    assert!(v.intact, "{}: {v:?}", s.name());
    assert_eq!((v.rows_checked, v.first_bad_submission_id), (10, 0));
}

both_databases!(intact_chain_verifies);

async fn an_edited_row_is_caught(backend: Backend) {
    let s = seeded(backend).await;
    exec(&s, "UPDATE submissions SET value = '999' WHERE id = 4").await;
    let v = verify(&s).await;
    assert!(!v.intact);
    assert_eq!(v.first_bad_submission_id, 4, "{}: {v:?}", s.name());
    assert!(v.problem.contains("hash mismatch"), "{}", v.problem);
}

both_databases!(an_edited_row_is_caught);

async fn an_edit_with_a_recomputed_hash_breaks_the_next_link(backend: Backend) {
    let s = seeded(backend).await;
    // A forger who rewrites row 4's hash still cannot make row 5 point at it.
    exec(&s, "UPDATE submissions SET hash = prev_hash WHERE id = 4").await;
    let v = verify(&s).await;
    assert_eq!(v.first_bad_submission_id, 4, "{}: {v:?}", s.name());
}

both_databases!(an_edit_with_a_recomputed_hash_breaks_the_next_link);

async fn a_deleted_row_is_caught(backend: Backend) {
    let s = seeded(backend).await;
    exec(&s, "DELETE FROM submissions WHERE id = 6").await;
    let v = verify(&s).await;
    assert_eq!(v.first_bad_submission_id, 6, "{}: {v:?}", s.name());
    assert!(v.problem.contains("missing row 6"), "{}", v.problem);
}

both_databases!(a_deleted_row_is_caught);

async fn a_deleted_tail_is_caught(backend: Backend) {
    let s = seeded(backend).await;
    exec(&s, "DELETE FROM submissions WHERE id >= 9").await;
    let v = verify(&s).await;
    assert_eq!(v.first_bad_submission_id, 9, "{}: {v:?}", s.name());
}

both_databases!(a_deleted_tail_is_caught);

async fn reordered_rows_are_caught(backend: Backend) {
    let s = seeded(backend).await;
    exec(&s, "UPDATE submissions SET id = -3 WHERE id = 3").await;
    exec(&s, "UPDATE submissions SET id = 3 WHERE id = 5").await;
    exec(&s, "UPDATE submissions SET id = 5 WHERE id = -3").await;
    let v = verify(&s).await;
    assert_eq!(v.first_bad_submission_id, 3, "{}: {v:?}", s.name());
}

both_databases!(reordered_rows_are_caught);

/// The writer lists a key in `value_keys` only when it has no current version (a key is listed
/// with its first version and never removed): a new key, a key written twice in one batch, a
/// key whose values were all retracted and then written again. Whatever happened, each key is
/// listed once and every version's key is listed (the chain's verification checks that).
async fn every_key_is_listed_once_however_its_values_change(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let mut c = s.client(Some(&platform())).await;
    let value = |region: &str, v: &str| number_input("uscc.codes_total", region, "2026", "samr", v);
    let first = c
        .submit_value(pb::SubmitValueRequest {
            value: Some(value("330802", "1")),
            idempotency_key: String::new(),
            validate_only: false,
        })
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", s.name()))
        .into_inner()
        .submission
        .unwrap_or_default();
    // In one batch: the first key again, and a new key twice.
    let batch = c
        .submit_batch(tokio_stream::iter([pb::SubmitBatchRequest {
            idempotency_key: String::new(),
            validate_only: false,
            values: vec![
                value("330802", "2"),
                value("330803", "1"),
                value("330803", "2"),
            ],
        }]))
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", s.name()))
        .into_inner();
    // Retract the first key's values, newest first: the first comes back, then none is left.
    for name in [
        format!("submissions/{}", batch.first_submission_id),
        first.name.clone(),
    ] {
        c.retract_submission(pb::RetractSubmissionRequest {
            name,
            reason: "wrong figure".into(),
            idempotency_key: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", s.name()));
    }
    // A key with no current version is written again.
    c.submit_value(pb::SubmitValueRequest {
        value: Some(value("330802", "3")),
        idempotency_key: String::new(),
        validate_only: false,
    })
    .await
    .unwrap_or_else(|e| panic!("{}: {e}", s.name()));

    let v = verify(&s).await;
    assert!(v.intact, "{}: {v:?}", s.name());
    let listed: Vec<(String, i64)> =
        sqlx::query_as("SELECT region, COUNT(*) FROM value_keys GROUP BY region ORDER BY region")
            .fetch_all(&s.db.pool)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", s.name()));
    assert_eq!(
        listed,
        [("330802".to_owned(), 1), ("330803".to_owned(), 1)],
        "{}",
        s.name()
    );
}

both_databases!(every_key_is_listed_once_however_its_values_change);
