//! The database's own ceiling for the rows the platform writes per value (issue 15 point 3):
//! one `submissions` row and one `value_versions` row, of the same shape and sizes as the
//! `gateway` subcommand's ingest writes, into a scratch store made by this branch's migrations
//! (so the same columns, indexes and constraints), with no platform in between, through the
//! database's native driver. PostgreSQL ([`postgres`]) two ways:
//! - multi-row `INSERT … SELECT FROM UNNEST($1::bigint[], …)`, 100 values per transaction from
//!   8 connections: the platform's own commit granularity and concurrency;
//! - `COPY … FROM STDIN` of every value in one transaction: the bulk path's ceiling.
//!
//! SQLite ([`sqlite`]) on one connection, as SQLite has one writer: 100 values per transaction,
//! and every value in one transaction.
//!
//! Every value here is a new value key, so the ceiling does no supersede (the platform closes
//! the previous version of a key it writes again, and on SQLite also records the key in
//! `value_keys`): that work is part of what the ratio shows.

#![allow(
    clippy::float_arithmetic,
    clippy::cast_precision_loss,
    clippy::cast_possible_wrap,
    reason = "benchmark rates and ratios, never scores"
)]

use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Instant;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection as _, Executor as _, QueryBuilder, Sqlite};

/// The rows of value `i`, as the `gateway` subcommand's i-th value is written.
struct Rows {
    id: Vec<i64>,
    department: Vec<String>,
    period: Vec<String>,
    value: Vec<String>,
    vkey: Vec<String>,
    prev_hash: Vec<String>,
    hash: Vec<String>,
}

fn rows(from: usize, to: usize, departments: &[String], at: i64) -> Rows {
    let mut r = Rows {
        id: Vec::new(),
        department: Vec::new(),
        period: Vec::new(),
        value: Vec::new(),
        vkey: Vec::new(),
        prev_hash: Vec::new(),
        hash: Vec::new(),
    };
    for i in from..to {
        let department = departments[i % departments.len()].clone();
        let period = format!("{}", 2000 + i / 5000);
        // A canonical key of the same length as the platform's, unique per value.
        r.vkey.push(format!(
            "16:uscc.codes_total|6:330800|{}:{period}|{}:{department}|0:|0:|#{i}",
            period.len(),
            department.len()
        ));
        r.id.push(i as i64 + 1);
        r.department.push(department);
        r.period.push(period);
        r.value.push((i % 1000).to_string());
        r.prev_hash.push(format!(
            "{:064x}",
            (i as u64).wrapping_mul(0x9e37_79b9) ^ at as u64
        ));
        r.hash.push(format!(
            "{:064x}",
            (i as u64 + 1).wrapping_mul(0x9e37_79b9) ^ at as u64
        ));
    }
    r
}

/// The columns of `submissions` each way of writing fills, in order (a literal for `concat!`).
macro_rules! submission_columns {
    () => {
        "id, principal, department, region, period, metric, domain, task_id, value, \
         evidence_uri, note, idempotency_key, accept_micros, kind, retracts, reason, prev_hash, \
         hash"
    };
}

/// The columns of `value_versions` each way of writing fills, in order.
macro_rules! version_columns {
    () => {
        "submission_id, vkey, metric, region, period, department, domain, task_id, value, \
         valid_from, valid_to, accepted_micros"
    };
}

const INSERT_SUBMISSIONS: &str = concat!(
    "INSERT INTO submissions (",
    submission_columns!(),
    ") SELECT id, 'bench-platform', department, '330800', period, 'uscc.codes_total', '', '', value, \
     '', '', '', $7, 'value', NULL, '', prev_hash, hash \
     FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
     AS t(id, department, period, value, prev_hash, hash)"
);

const INSERT_VERSIONS: &str = concat!(
    "INSERT INTO value_versions (",
    version_columns!(),
    ") SELECT id, vkey, 'uscc.codes_total', '330800', period, department, '', '', value, $6, NULL, $6 \
     FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[]) \
     AS t(id, vkey, period, department, value)"
);

/// Measures PostgreSQL's two ceilings for `values` values and prints the platform's
/// `platform_rate` (values per second) as a fraction of each.
pub async fn postgres(values: usize, platform_rate: f64) {
    let departments = crate::gateway::departments();
    let unnest = {
        let scratch = citycredit_store::testing::postgres().await;
        let pool = native_pool(&scratch, 8).await;
        let at = citycredit_store::now_micros();
        let batches = values.div_ceil(100);
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (pool, next) = (pool.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if b >= batches {
                        break;
                    }
                    let r = rows(b * 100, ((b + 1) * 100).min(values), departments, at);
                    let mut tx = pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
                    sqlx::query(INSERT_SUBMISSIONS)
                        .bind(&r.id)
                        .bind(&r.department)
                        .bind(&r.period)
                        .bind(&r.value)
                        .bind(&r.prev_hash)
                        .bind(&r.hash)
                        .bind(at)
                        .execute(&mut *tx)
                        .await
                        .unwrap_or_else(|e| panic!("UNNEST submissions: {e}"));
                    sqlx::query(INSERT_VERSIONS)
                        .bind(&r.id)
                        .bind(&r.vkey)
                        .bind(&r.period)
                        .bind(&r.department)
                        .bind(&r.value)
                        .bind(at)
                        .execute(&mut *tx)
                        .await
                        .unwrap_or_else(|e| panic!("UNNEST value_versions: {e}"));
                    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
                }
            }));
        }
        for t in tasks {
            t.await
                .unwrap_or_else(|e| panic!("an UNNEST writer failed: {e}"));
        }
        let rate = values as f64 / started.elapsed().as_secs_f64();
        count(&pool, values).await;
        pool.close().await;
        rate
    };
    let copy = {
        let scratch = citycredit_store::testing::postgres().await;
        let pool = native_pool(&scratch, 1).await;
        let at = citycredit_store::now_micros();
        let r = rows(0, values, departments, at);
        let mut subs = String::new();
        let mut vers = String::new();
        for k in 0..r.id.len() {
            let _ = writeln!(
                subs,
                "{}\tbench-platform\t{}\t330800\t{}\tuscc.codes_total\t\t\t{}\t\t\t\t{at}\tvalue\t\\N\t\t{}\t{}",
                r.id[k], r.department[k], r.period[k], r.value[k], r.prev_hash[k], r.hash[k]
            );
            let _ = writeln!(
                vers,
                "{}\t{}\tuscc.codes_total\t330800\t{}\t{}\t\t\t{}\t{at}\t\\N\t{at}",
                r.id[k], r.vkey[k], r.period[k], r.department[k], r.value[k]
            );
        }
        let started = Instant::now();
        let mut tx = pool.begin().await.unwrap_or_else(|e| panic!("{e}"));
        let mut c = tx
            .copy_in_raw(concat!(
                "COPY submissions (",
                submission_columns!(),
                ") FROM STDIN"
            ))
            .await
            .unwrap_or_else(|e| panic!("COPY submissions: {e}"));
        c.send(subs.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("COPY submissions: {e}"));
        c.finish()
            .await
            .unwrap_or_else(|e| panic!("COPY submissions: {e}"));
        let mut c = tx
            .copy_in_raw(concat!(
                "COPY value_versions (",
                version_columns!(),
                ") FROM STDIN"
            ))
            .await
            .unwrap_or_else(|e| panic!("COPY value_versions: {e}"));
        c.send(vers.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("COPY value_versions: {e}"));
        c.finish()
            .await
            .unwrap_or_else(|e| panic!("COPY value_versions: {e}"));
        tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
        let rate = values as f64 / started.elapsed().as_secs_f64();
        count(&pool, values).await;
        pool.close().await;
        rate
    };
    println!(
        "PostgreSQL alone, the same rows (1 submissions + 1 value_versions row per value, this branch's schema, no platform, native driver), {values} values: \
         UNNEST 100 per transaction from 8 connections {unnest:.0} values/s; COPY in one transaction {copy:.0} values/s"
    );
    println!(
        "platform ingest through the gateway {platform_rate:.0} values/s = {:.2} of UNNEST, {:.2} of COPY",
        platform_rate / unnest,
        platform_rate / copy
    );
}

/// A pool of the native driver on the scratch schema of `scratch`.
async fn native_pool(
    scratch: &citycredit_store::testing::TestDb,
    connections: u32,
) -> sqlx::PgPool {
    let (url, schema) = scratch
        .postgres_schema()
        .unwrap_or_else(|| panic!("the ceiling needs PostgreSQL"));
    let options = PgConnectOptions::from_str(url)
        .unwrap_or_else(|e| panic!("{e}"))
        .options([("search_path", schema)]);
    PgPoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL: {e}"))
}

/// Fails the run unless both tables hold `values` rows (a ceiling of lost rows is no ceiling).
async fn count(pool: &sqlx::PgPool, values: usize) {
    for table in [
        "SELECT count(*) FROM submissions",
        "SELECT count(*) FROM value_versions",
    ] {
        let n: i64 = sqlx::query_scalar(table)
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, values as i64, "{table}");
    }
}

/// Measures SQLite's two ceilings for `values` values and prints the platform's
/// `platform_rate` (values per second) as a fraction of each. The database is a file made by
/// this branch's migrations, opened with the platform writer's pragmas (WAL,
/// `synchronous=FULL`, the same page cache), through the native SQLite driver; one connection,
/// as SQLite has one writer:
/// - 100 values per transaction (`BEGIN IMMEDIATE`, one multi-row `INSERT` per table, commit):
///   the callers' batches, each its own durable commit;
/// - every value in one transaction, in statements of 100 rows: the bulk path's ceiling.
pub async fn sqlite(values: usize, platform_rate: f64) {
    let departments = crate::gateway::departments();
    let per_batch = sqlite_run(values, 100, departments).await;
    let one = sqlite_run(values, values, departments).await;
    println!(
        "SQLite alone, the same rows (1 submissions + 1 value_versions row per value, this branch's schema, the writer's pragmas, no platform, native driver, one connection), {values} values: \
         100 per transaction {per_batch:.0} values/s; all in one transaction {one:.0} values/s"
    );
    println!(
        "platform ingest through the gateway {platform_rate:.0} values/s = {:.2} of 100 per transaction, {:.2} of one transaction",
        platform_rate / per_batch,
        platform_rate / one
    );
}

/// Writes `values` values into a fresh store, `per_tx` values per transaction; values/s.
async fn sqlite_run(values: usize, per_tx: usize, departments: &[String]) -> f64 {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let db = citycredit_store::Db::open(&citycredit_store::StoreOptions {
        url: None,
        data_dir: dir.path().to_owned(),
        max_connections: 1,
        acquire_timeout: std::time::Duration::from_secs(10),
        schema: None,
    })
    .await
    .unwrap_or_else(|e| panic!("migrate the scratch SQLite store: {e}"));
    db.close().await;
    let options = SqliteConnectOptions::new().filename(dir.path().join("citycredit.db"));
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .unwrap_or_else(|e| panic!("SQLite: {e}"));
    // The platform writer's own pragmas: the same durability and page cache.
    for pragmas in [
        citycredit_store::SQLITE_PRAGMAS,
        citycredit_store::WRITER_PRAGMAS,
    ] {
        conn.execute(pragmas)
            .await
            .unwrap_or_else(|e| panic!("{pragmas}: {e}"));
    }
    let at = citycredit_store::now_micros();
    let started = Instant::now();
    let mut from = 0;
    while from < values {
        let to = (from + per_tx).min(values);
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut at_row = from;
        while at_row < to {
            let end = (at_row + 100).min(to);
            let r = rows(at_row, end, departments, at);
            let mut q = QueryBuilder::<Sqlite>::new(concat!(
                "INSERT INTO submissions (",
                submission_columns!(),
                ") "
            ));
            q.push_values(0..r.id.len(), |mut b, k| {
                b.push_bind(r.id[k])
                    .push_bind("bench-platform")
                    .push_bind(&r.department[k])
                    .push_bind("330800")
                    .push_bind(&r.period[k])
                    .push_bind("uscc.codes_total")
                    .push_bind("")
                    .push_bind("")
                    .push_bind(&r.value[k])
                    .push_bind("")
                    .push_bind("")
                    .push_bind("")
                    .push_bind(at)
                    .push_bind("value")
                    .push_bind(None::<i64>)
                    .push_bind("")
                    .push_bind(&r.prev_hash[k])
                    .push_bind(&r.hash[k]);
            });
            q.build()
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("INSERT submissions: {e}"));
            let mut q = QueryBuilder::<Sqlite>::new(concat!(
                "INSERT INTO value_versions (",
                version_columns!(),
                ") "
            ));
            q.push_values(0..r.id.len(), |mut b, k| {
                b.push_bind(r.id[k])
                    .push_bind(&r.vkey[k])
                    .push_bind("uscc.codes_total")
                    .push_bind("330800")
                    .push_bind(&r.period[k])
                    .push_bind(&r.department[k])
                    .push_bind("")
                    .push_bind("")
                    .push_bind(&r.value[k])
                    .push_bind(at)
                    .push_bind(None::<i64>)
                    .push_bind(at);
            });
            q.build()
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("INSERT value_versions: {e}"));
            at_row = end;
        }
        tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
        from = to;
    }
    let rate = values as f64 / started.elapsed().as_secs_f64();
    for table in [
        "SELECT count(*) FROM submissions",
        "SELECT count(*) FROM value_versions",
    ] {
        let n: i64 = sqlx::query_scalar(table)
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, values as i64, "{table}");
    }
    rate
}
