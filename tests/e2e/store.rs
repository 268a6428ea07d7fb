//! The store on each database: what the `Any` driver carries, and the identity nonce table every
//! replica shares. These were unit tests beside the code; they live here because only this
//! crate's build reads `DATABASE_URL` (`tests/build.rs`), so that a changed `DATABASE_URL`
//! rebuilds the tests and not the whole workspace.

use citycredit::auth::identity::WINDOW_MICROS;
use citycredit_gateway::internal_identity::SharedNonces;
use citycredit_store::testing;
use citycredit_tests::{Backend, both_databases, postgres_only};

async fn meta_round_trips(backend: Backend) {
    let db = testing::open(backend).await;
    assert_eq!(db.meta("k").await.ok().flatten(), None, "{}", db.name());
    db.set_meta("k", "v1")
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", db.name()));
    db.set_meta("k", "v2")
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", db.name()));
    assert_eq!(db.meta("k").await.ok().flatten().as_deref(), Some("v2"));
    // The types Any carries on both databases.
    let row: (i64, String, Vec<u8>, i64) =
        sqlx::query_as("SELECT CAST($1 AS BIGINT), CAST($2 AS TEXT), $3, CAST($4 AS BIGINT)")
            .bind(i64::MAX)
            .bind("文本")
            .bind(vec![0u8, 255])
            .bind(1i64)
            .fetch_one(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", db.name()));
    assert_eq!(row, (i64::MAX, "文本".to_owned(), vec![0, 255], 1));
}

both_databases!(meta_round_trips);

async fn a_nonce_is_claimed_once_per_store_and_pruned_after_its_window(backend: Backend) {
    let db = testing::open(backend).await;
    let nonces = SharedNonces::new(db.db().clone());
    let t = 1_000_000_000_000;
    assert!(
        nonces.claim("00ff", t).await.unwrap_or(false),
        "{}",
        db.name()
    );
    assert!(
        !nonces.claim("00ff", t).await.unwrap_or(true),
        "{}",
        db.name()
    );
    // A second replica is another pool on the same store.
    let other = SharedNonces::new(db.db().clone());
    assert!(
        !other.claim("00ff", t).await.unwrap_or(true),
        "{}",
        db.name()
    );
    assert_eq!(nonces.prune(t + WINDOW_MICROS).await.ok(), Some(0));
    assert_eq!(nonces.prune(t + 2 * WINDOW_MICROS + 1).await.ok(), Some(1));
    assert!(
        nonces.claim("00ff", t).await.unwrap_or(false),
        "{}",
        db.name()
    );

    // The cost of a claim: one INSERT per call that changes state.
    let n: u32 = 300;
    let started = std::time::Instant::now();
    for i in 0..n {
        let claimed = nonces.claim(&format!("{i:032x}"), t).await;
        assert_eq!(claimed.ok(), Some(true));
    }
    eprintln!(
        "identity nonce claim on {}: {} µs/call ({n} sequential claims)",
        db.name(),
        (started.elapsed() / n).as_micros()
    );
}

both_databases!(a_nonce_is_claimed_once_per_store_and_pruned_after_its_window);

/// A test's schema is dropped at its end even while a session holds a lock in it, as the test's
/// own server does when it stops mid-transaction: that server is a task on the test's runtime,
/// which the blocking drop holds, so it can never finish. The drop waits a bounded time for its
/// lock, ends the sessions holding locks in the schema, and drops it. An unbounded drop waited
/// for ever (a CI run hung until its own limit).
async fn a_test_schema_is_dropped_while_a_session_still_holds_a_lock_in_it() {
    let url = testing::postgres_url();
    let db = testing::postgres().await;
    let schema = db
        .postgres_schema()
        .map(|(_, s)| s.to_owned())
        .unwrap_or_else(|| panic!("a PostgreSQL test store has a schema"));
    let mut open = db.pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
    sqlx::query("SELECT count(*) FROM store_meta")
        .execute(&mut *open)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = std::time::Instant::now();
    testing::drop_schema(&url, &schema);
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    let admin = citycredit_store::Db::connect(&url, 1, std::time::Duration::from_secs(5), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
        .bind(&schema)
        .fetch_one(&admin.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(left, 0, "{schema} is still there after {took:?}");
    // The session that held the lock was ended.
    assert!(open.commit().await.is_err());
    admin.close().await;
}

postgres_only!(a_test_schema_is_dropped_while_a_session_still_holds_a_lock_in_it);
