//! Migration 0210 on a store written before it, through the real server on SQLite and
//! PostgreSQL. The old writer could store two retractions of one value (two concurrent calls
//! both passed its check); such a store must still migrate and start, the first retraction
//! counts and later ones are no-ops for the value versions and for VerifyAuditChain, history
//! keeps the meaning it had (a retraction stored before the migration did not reopen the
//! previous value), and new retractions follow the new rules: at most one per value, and an
//! undo.

use std::path::Path;
use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

use citycredit::proto::v1 as pb;
use citycredit_ingestion::audit_chain::{GENESIS, row_hash};
use citycredit_ingestion::store::{self as istore, KIND_RETRACTION, KIND_VALUE, StoredRow};
use citycredit_store::{Db, now_micros, sqlite_url};
use citycredit_tests::ingestion::{SubmissionClient, number_input};
use citycredit_tests::{Backend, TestServer, both_databases, fresh_schema, use_backend};

const METRIC: &str = "uscc.codes_total";
const PERIOD: &str = "2026";

/// The store's migrations up to (not including) 0210, as a store of the last release has them.
async fn migrate_before_0210(db: &Db) {
    let folder = match db.backend {
        citycredit_store::Backend::Sqlite => "sqlite",
        citycredit_store::Backend::Postgres => "postgres",
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../services/store/migrations")
        .join(folder);
    let mut migrator = sqlx::migrate::Migrator::new(dir)
        .await
        .unwrap_or_else(|e| panic!("read migrations: {e}"));
    let old: Vec<sqlx::migrate::Migration> = migrator
        .migrations
        .iter()
        .filter(|m| m.version < 210)
        .cloned()
        .collect();
    assert!(
        old.iter().any(|m| m.version == 200),
        "the ingestion tables come with 0200"
    );
    migrator.migrations = old.into();
    migrator
        .run(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("migrate to 0200: {e}"));
}

/// A row of the old writer, chained after `prev`.
fn old_row(
    id: i64,
    at: i64,
    region: &str,
    value: &str,
    retracts: Option<i64>,
    prev: &str,
) -> StoredRow {
    let mut row = StoredRow {
        id,
        principal: "platform-old".into(),
        department: "samr".into(),
        region: region.into(),
        period: PERIOD.into(),
        metric: METRIC.into(),
        domain: String::new(),
        task_id: String::new(),
        value: value.into(),
        evidence_uri: String::new(),
        note: String::new(),
        idempotency_key: String::new(),
        accept_micros: at,
        kind: if retracts.is_some() {
            KIND_RETRACTION
        } else {
            KIND_VALUE
        }
        .into(),
        retracts,
        reason: if retracts.is_some() {
            "wrong figure".into()
        } else {
            String::new()
        },
        prev_hash: prev.into(),
        hash: String::new(),
    };
    row.hash = row_hash(&row);
    row
}

/// What the old writer left: on 330802 a value (1), its correction (2) and two retractions of
/// the correction (3, 4: the old race, in two commits), which left no current value; on 330803
/// a value (5) retracted twice in one commit (6, 7). Value versions as the old writer stored
/// them (a retraction of the current value only closed it).
async fn write_old_history(db: &Db, t0: i64) {
    let plan: [(i64, &str, &str, Option<i64>); 7] = [
        (t0, "330802", "100", None),
        (t0 + 10, "330802", "120", None),
        (t0 + 20, "330802", "", Some(2)),
        (t0 + 30, "330802", "", Some(2)),
        (t0 + 40, "330803", "200", None),
        (t0 + 50, "330803", "", Some(5)),
        (t0 + 50, "330803", "", Some(5)),
    ];
    let mut prev = GENESIS.to_owned();
    let mut rows = Vec::new();
    for (i, (at, region, value, retracts)) in plan.into_iter().enumerate() {
        let id = i64::try_from(i).unwrap_or(0) + 1;
        let row = old_row(id, at, region, value, retracts, &prev);
        prev = row.hash.clone();
        rows.push(row);
    }
    let mut writer = istore::WritePooled::acquire(db)
        .await
        .unwrap_or_else(|e| panic!("acquire: {e}"));
    istore::insert_submissions(&mut writer.conn(), &rows)
        .await
        .unwrap_or_else(|e| panic!("old rows: {e}"));
    drop(writer);
    let mut conn = db
        .pool
        .acquire()
        .await
        .unwrap_or_else(|e| panic!("acquire: {e}"));
    for (id, from, to) in [
        (1, t0, t0 + 10),
        (2, t0 + 10, t0 + 20),
        (5, t0 + 40, t0 + 50),
    ] {
        let r = &rows[usize::try_from(id - 1).unwrap_or(0)];
        sqlx::query(
            "INSERT INTO value_versions (submission_id, vkey, metric, region, period, \
             department, domain, task_id, value, valid_from, valid_to) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(id)
        .bind(r.vkey())
        .bind(METRIC)
        .bind(r.region.as_str())
        .bind(PERIOD)
        .bind("samr")
        .bind("")
        .bind("")
        .bind(r.value.as_str())
        .bind(from)
        .bind(to)
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("old version: {e}"));
    }
    sqlx::query(
        "UPDATE chain_head SET last_id = $1, last_hash = $2, last_micros = $3 WHERE id = 1",
    )
    .bind(7_i64)
    .bind(prev.as_str())
    .bind(t0 + 50)
    .execute(&mut *conn)
    .await
    .unwrap_or_else(|e| panic!("old head: {e}"));
}

async fn current(c: &mut SubmissionClient, region: &str) -> Option<(String, String)> {
    let r = c
        .query_aggregates(pb::QueryAggregatesRequest {
            region_code: region.into(),
            period: PERIOD.into(),
            as_of: None,
            approved_only: false,
        })
        .await
        .unwrap_or_else(|e| panic!("aggregates: {e}"))
        .into_inner();
    r.metrics
        .into_iter()
        .find(|m| m.metric_key == METRIC)
        .map(|m| {
            let value = match m.value.and_then(|v| v.value) {
                Some(pb::metric_value::Value::Number(n)) => n,
                other => format!("{other:?}"),
            };
            let source = m
                .sources
                .first()
                .map(|s| s.submission.clone())
                .unwrap_or_default();
            (value, source)
        })
}

async fn verify(c: &mut SubmissionClient, name: &str) -> pb::VerifyAuditChainResponse {
    c.verify_audit_chain(pb::VerifyAuditChainRequest::default())
        .await
        .unwrap_or_else(|e| panic!("{name}: verify: {e}"))
        .into_inner()
}

async fn retract(c: &mut SubmissionClient, target: &str) -> Result<pb::Submission, tonic::Status> {
    c.retract_submission(pb::RetractSubmissionRequest {
        name: target.into(),
        reason: "wrong figure".into(),
        idempotency_key: String::new(),
    })
    .await
    .map(|r| r.into_inner().retraction.unwrap_or_default())
}

async fn a_store_with_duplicate_retractions_migrates(backend: Backend) {
    let schema = fresh_schema();
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let name = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let db = match backend {
        Backend::Sqlite => {
            let url = sqlite_url(&data.path().join("citycredit.db"));
            Db::connect(&url, 2, Duration::from_secs(10), None).await
        }
        Backend::Postgres => {
            let url = citycredit_tests::postgres_url();
            let admin = Db::connect(&url, 1, Duration::from_secs(10), None)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            // SQL-safe: a schema name `fresh_schema` generated ([a-z0-9_]).
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA \"{}\"",
                &*schema
            )))
            .execute(&admin.pool)
            .await
            .unwrap_or_else(|e| panic!("{name}: create schema: {e}"));
            admin.pool.close().await;
            Db::connect(&url, 2, Duration::from_secs(10), Some(schema.to_string())).await
        }
    }
    .unwrap_or_else(|e| panic!("{name}: connect: {e}"));

    migrate_before_0210(&db).await;
    let t0 = now_micros() - 3_600_000_000;
    write_old_history(&db, t0).await;

    // The migration succeeds on duplicates and keeps the first retraction of each value.
    db.migrate()
        .await
        .unwrap_or_else(|e| panic!("{name}: migrating a store with duplicate retractions: {e}"));
    let kept: Vec<(i64, i64)> =
        sqlx::query_as("SELECT target, by_id FROM retractions ORDER BY target")
            .fetch_all(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(kept, [(2, 3), (5, 6)], "{name}");
    let history: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM submissions")
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(history, 7, "{name}: history is append-only");

    let server = TestServer::start_in(data.path(), |c| use_backend(c, backend, &schema)).await;
    let admin_channel = server.admin();
    let mut admin =
        pb::metric_submission_service_client::MetricSubmissionServiceClient::new(admin_channel);
    // The first call waits for the server.
    let mut up = None;
    for _ in 0..100 {
        match admin
            .verify_audit_chain(pb::VerifyAuditChainRequest::default())
            .await
        {
            Ok(r) => {
                up = Some(r.into_inner());
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let v = up.unwrap_or_else(|| panic!("{name}: the server did not come up"));
    assert!(v.intact, "{name}: {v:?}");
    assert_eq!(
        (v.rows_checked, v.versions_checked),
        (7, 3),
        "{name}: {v:?}"
    );

    // What the old writer answered still holds: no current value on either key.
    assert_eq!(current(&mut admin, "330802").await, None, "{name}");
    assert_eq!(current(&mut admin, "330803").await, None, "{name}");

    // Retracting again names the first retraction.
    let e = retract(&mut admin, "submissions/2")
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: retracted submissions/2 a third time"));
    assert_eq!(e.code(), Code::FailedPrecondition, "{name}: {e:?}");
    let details = e.get_error_details();
    let info = details.error_info();
    assert_eq!(
        info.map(|i| i.reason.as_str()),
        Some("ALREADY_RETRACTED"),
        "{name}: {e:?}"
    );
    assert_eq!(
        info.and_then(|i| i.metadata.get("retracted_by"))
            .map(String::as_str),
        Some("submissions/3"),
        "{name}: {e:?}"
    );

    // New retractions follow the new rules: a new correction retracted is an undo back to the
    // latest earlier value not retracted (1, since 2 is retracted), once.
    let fresh = admin
        .submit_value(pb::SubmitValueRequest {
            value: Some(number_input(METRIC, "330802", PERIOD, "samr", "130")),
            idempotency_key: String::new(),
            validate_only: false,
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: submit: {e}"))
        .into_inner()
        .submission
        .unwrap_or_default();
    assert_eq!(fresh.id, 8, "{name}");
    assert_eq!(
        current(&mut admin, "330802").await,
        Some(("130".into(), "submissions/8".into())),
        "{name}"
    );
    let r = retract(&mut admin, "submissions/8")
        .await
        .unwrap_or_else(|e| panic!("{name}: retract the new value: {e}"));
    assert_eq!(r.retracts, "submissions/8", "{name}");
    assert_eq!(
        current(&mut admin, "330802").await,
        Some(("100".into(), "submissions/1".into())),
        "{name}: an undo back to submissions/1"
    );
    let e = retract(&mut admin, "submissions/8").await.err();
    assert_eq!(
        e.map(|e| e.code()),
        Some(Code::FailedPrecondition),
        "{name}"
    );

    let v = verify(&mut admin, name).await;
    assert!(v.intact, "{name}: {v:?}");
    assert_eq!(v.rows_checked, 9, "{name}: {v:?}");

    // The database refuses a second retraction whoever writes it.
    let dup = sqlx::query(
        "INSERT INTO submissions (id, principal, department, region, period, metric, domain, \
         task_id, value, evidence_uri, note, idempotency_key, accept_micros, kind, retracts, \
         reason, prev_hash, hash) SELECT 1000000, principal, department, region, period, metric, \
         domain, task_id, value, evidence_uri, note, 'dup', accept_micros, kind, retracts, \
         reason, prev_hash, hash FROM submissions WHERE id = 9",
    )
    .execute(&db.pool)
    .await;
    assert!(
        dup.is_err(),
        "{name}: a second retraction of submissions/8 went in"
    );

    // VerifyAuditChain vouches for `retractions` too (the writer reads it to refuse a second
    // retraction and to find the value an undo brings back): a deleted row, or one the chain
    // does not give, is named.
    let exec = |sql: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query(sql)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    };
    exec("DELETE FROM retractions WHERE target = 8").await;
    let v = verify(&mut admin, name).await;
    assert!(!v.intact, "{name}: {v:?}");
    assert_eq!(v.first_bad_submission_id, 9, "{name}: {v:?}");
    assert!(v.problem.contains("retractions"), "{name}: {v:?}");
    exec("INSERT INTO retractions (target, by_id) VALUES (8, 9)").await;
    assert!(verify(&mut admin, name).await.intact, "{name}: restored");
    exec("INSERT INTO retractions (target, by_id) VALUES (1, 4)").await;
    let v = verify(&mut admin, name).await;
    assert!(!v.intact, "{name}: {v:?}");
    assert_eq!(v.first_bad_submission_id, 4, "{name}: {v:?}");

    db.pool.close().await;
    server
        .stop()
        .await
        .unwrap_or_else(|e| panic!("{name}: stop: {e}"));
}

both_databases!(a_store_with_duplicate_retractions_migrates);
