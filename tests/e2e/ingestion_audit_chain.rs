//! The hash chain catches rows edited, deleted or reordered directly in the database, on
//! SQLite and (with `DATABASE_URL`) PostgreSQL.

use citycredit::proto::v1 as pb;
use citycredit_tests::ingestion::*;

async fn seeded() -> Vec<IngestionServer> {
    let mut out = Vec::new();
    for s in IngestionServer::start_all().await {
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
        out.push(s);
    }
    out
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

#[tokio::test]
async fn intact_chain_verifies() {
    for s in seeded().await {
        let v = verify(&s).await;
        assert!(v.intact, "{}: {v:?}", s.name());
        assert_eq!((v.rows_checked, v.first_bad_submission_id), (10, 0));
    }
}

#[tokio::test]
async fn an_edited_row_is_caught() {
    for s in seeded().await {
        exec(&s, "UPDATE submissions SET value = '999' WHERE id = 4").await;
        let v = verify(&s).await;
        assert!(!v.intact);
        assert_eq!(v.first_bad_submission_id, 4, "{}: {v:?}", s.name());
        assert!(v.problem.contains("hash mismatch"), "{}", v.problem);
    }
}

#[tokio::test]
async fn an_edit_with_a_recomputed_hash_breaks_the_next_link() {
    for s in seeded().await {
        // A forger who rewrites row 4's hash still cannot make row 5 point at it.
        exec(&s, "UPDATE submissions SET hash = prev_hash WHERE id = 4").await;
        let v = verify(&s).await;
        assert_eq!(v.first_bad_submission_id, 4, "{}: {v:?}", s.name());
    }
}

#[tokio::test]
async fn a_deleted_row_is_caught() {
    for s in seeded().await {
        exec(&s, "DELETE FROM submissions WHERE id = 6").await;
        let v = verify(&s).await;
        assert_eq!(v.first_bad_submission_id, 6, "{}: {v:?}", s.name());
        assert!(v.problem.contains("missing row 6"), "{}", v.problem);
    }
}

#[tokio::test]
async fn a_deleted_tail_is_caught() {
    for s in seeded().await {
        exec(&s, "DELETE FROM submissions WHERE id >= 9").await;
        let v = verify(&s).await;
        assert_eq!(v.first_bad_submission_id, 9, "{}: {v:?}", s.name());
    }
}

#[tokio::test]
async fn reordered_rows_are_caught() {
    for s in seeded().await {
        exec(&s, "UPDATE submissions SET id = -3 WHERE id = 3").await;
        exec(&s, "UPDATE submissions SET id = 3 WHERE id = 5").await;
        exec(&s, "UPDATE submissions SET id = 5 WHERE id = -3").await;
        let v = verify(&s).await;
        assert_eq!(v.first_bad_submission_id, 3, "{}: {v:?}", s.name());
    }
}
