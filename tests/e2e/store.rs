//! The store on each database: what the `Any` driver carries, and the identity nonce table every
//! replica shares. These were unit tests beside the code; they live here because only this
//! crate's build reads `DATABASE_URL` (`tests/build.rs`), so that a changed `DATABASE_URL`
//! rebuilds the tests and not the whole workspace.

use citycredit::auth::identity::WINDOW_MICROS;
use citycredit_gateway::internal_identity::SharedNonces;
use citycredit_store::testing;
use citycredit_tests::{Backend, both_databases};

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
