//! `as_of` reads by value key (issue 15): `store::versions(.., Some(t))` takes, for each key of
//! `value_keys` at the periods and regions asked, the latest version with `valid_from <= t`
//! kept when still open at t. These tests compare it, on SQLite and PostgreSQL, with the
//! brute-force answer (the interval scan it replaced, kept here only) at every instant of a
//! history with updates, retractions, re-submissions, two versions opened at one instant and
//! keys that appear late; and check that a store written before migration 0220 (no
//! `value_keys`) answers the same after it.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use sqlx::{Any, QueryBuilder};

use citycredit_ingestion::store::{self as istore, Version, VersionRow, WritePooled};
use citycredit_store::{Db, numbered_as, sqlite_url, testing};
use citycredit_tests::{Backend, both_databases, fresh_schema};

const REGIONS: [&str; 3] = ["330800", "330802", "330803"];
const PERIODS: [&str; 3] = ["2025", "2026", "2026-03"];
const METRICS: [&str; 4] = ["m.a", "m.b", "m.c", "m.d"];
/// Microseconds between two events of the history.
const STEP: i64 = 1_000;

/// One change of the history.
#[derive(Clone, Copy, Debug)]
enum Event {
    /// A new value for key `k` (closing the current one, if any).
    Put(usize),
    /// The current value of key `k` retracted (closed without a successor), if any.
    Retract(usize),
}

/// Key `k` as (metric, region, period).
fn key(k: usize) -> (&'static str, &'static str, &'static str) {
    (
        METRICS[k % METRICS.len()],
        REGIONS[(k / METRICS.len()) % REGIONS.len()],
        PERIODS[(k / (METRICS.len() * REGIONS.len())) % PERIODS.len()],
    )
}

fn vkey_of(k: usize, department: &str) -> String {
    let (metric, region, period) = key(k);
    istore::vkey(metric, region, period, department, "", "")
}

/// The events, each with its instant: key 0 is put, retracted, then put again (an instant
/// between the retraction and the re-submission has no value for it); key 1 gets two values at
/// one instant (the first closed at once); the others follow a fixed pseudo-random walk over 36
/// keys, so later keys appear late (instants before their first value).
fn history(base: i64) -> Vec<(i64, Vec<Event>)> {
    let mut out = vec![
        (base, vec![Event::Put(0)]),
        (base + STEP, vec![Event::Retract(0)]),
        (base + 3 * STEP, vec![Event::Put(0)]),
        (base + 4 * STEP, vec![Event::Put(1), Event::Put(1)]),
    ];
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut at = base + 5 * STEP;
    for step in 0..300usize {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let r = (seed >> 33) as usize;
        // Keys enter one by one: step s draws among the first 2 + s / 8 keys.
        let k = 2 + r % (34.min(1 + step / 8));
        let event = if r.is_multiple_of(5) {
            Event::Retract(k)
        } else {
            Event::Put(k)
        };
        out.push((at, vec![event]));
        at += STEP;
    }
    out
}

/// How the versions are written: by the writer's functions (which fill `value_keys`), or as
/// the writer before migration 0220 wrote them (`value_versions` only).
#[derive(Clone, Copy, PartialEq)]
enum Writer {
    Current,
    Before0220,
}

/// Writes [`history`] from `base` for `department`'s keys, submission ids from `first_id`.
async fn write_history(db: &Db, base: i64, writer: Writer, department: &str, first_id: i64) {
    let mut current: HashMap<usize, i64> = HashMap::new();
    let mut next_id = first_id;
    for (at, events) in history(base) {
        for event in events {
            let mut pooled = WritePooled::acquire(db)
                .await
                .unwrap_or_else(|e| panic!("acquire: {e}"));
            let mut tx = pooled
                .begin()
                .await
                .unwrap_or_else(|e| panic!("begin: {e}"));
            let k = match event {
                Event::Put(k) | Event::Retract(k) => k,
            };
            if let Some(old) = current.remove(&k) {
                istore::close_versions(&mut tx.conn(), &[old], at)
                    .await
                    .unwrap_or_else(|e| panic!("close: {e}"));
            }
            if let Event::Put(k) = event {
                let (metric, region, period) = key(k);
                let v = Version {
                    submission_id: next_id,
                    vkey: vkey_of(k, department),
                    metric: metric.into(),
                    region: region.into(),
                    period: period.into(),
                    department: department.into(),
                    domain: String::new(),
                    task_id: String::new(),
                    value: next_id.to_string(),
                    valid_from: at,
                    valid_to: None,
                    accepted_micros: at,
                };
                match writer {
                    Writer::Current => {
                        istore::insert_versions(&mut tx.conn(), std::slice::from_ref(&v))
                            .await
                            .unwrap_or_else(|e| panic!("insert: {e}"));
                        istore::insert_value_keys(&mut tx.conn(), &[&v])
                            .await
                            .unwrap_or_else(|e| panic!("list the key: {e}"));
                    }
                    Writer::Before0220 => {
                        tx.commit().await.unwrap_or_else(|e| panic!("commit: {e}"));
                        drop(pooled);
                        insert_without_keys(db, &v).await;
                        current.insert(k, next_id);
                        next_id += 1;
                        continue;
                    }
                }
                current.insert(k, next_id);
                next_id += 1;
            }
            tx.commit().await.unwrap_or_else(|e| panic!("commit: {e}"));
        }
    }
}

/// One open version, as the writer before migration 0220 stored it.
async fn insert_without_keys(db: &Db, v: &Version) {
    sqlx::query(
        "INSERT INTO value_versions (submission_id, vkey, metric, region, period, department, \
         domain, task_id, value, valid_from, valid_to, accepted_micros) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, $11)",
    )
    .bind(v.submission_id)
    .bind(v.vkey.as_str())
    .bind(v.metric.as_str())
    .bind(v.region.as_str())
    .bind(v.period.as_str())
    .bind(v.department.as_str())
    .bind(v.domain.as_str())
    .bind(v.task_id.as_str())
    .bind(v.value.as_str())
    .bind(v.valid_from)
    .bind(v.accepted_micros)
    .execute(&db.pool)
    .await
    .unwrap_or_else(|e| panic!("insert version: {e}"));
}

/// The interval scan `versions` used before migration 0220: every version of those periods
/// and regions, kept when valid at `t`.
async fn brute_force(db: &Db, regions: &[String], periods: &[String], t: i64) -> Vec<VersionRow> {
    let mut qb = QueryBuilder::<Any>::new(
        "SELECT submission_id, metric, region, period, department, domain, task_id, value, \
         accepted_micros FROM value_versions WHERE period IN (",
    );
    let mut list = qb.separated(", ");
    for p in periods {
        list.push_bind(p.as_str());
    }
    list.push_unseparated(") AND region IN (");
    let mut list = qb.separated(", ");
    for r in regions {
        list.push_bind(r.as_str());
    }
    list.push_unseparated(")");
    qb.push(" AND valid_from <= ")
        .push_bind(t)
        .push(" AND (valid_to IS NULL OR valid_to > ")
        .push_bind(t)
        .push(")");
    let mut rows: Vec<VersionRow> = numbered_as(&mut qb)
        .unwrap_or_else(|e| panic!("{e}"))
        .fetch_all(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("brute force: {e}"));
    rows.sort_by_key(|r| r.submission_id);
    rows
}

async fn by_keys(db: &Db, regions: &[String], periods: &[String], t: i64) -> Vec<VersionRow> {
    let mut rows = istore::versions(db, regions, periods, Some(t))
        .await
        .unwrap_or_else(|e| panic!("versions: {e}"));
    rows.sort_by_key(|r| r.submission_id);
    rows
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

/// At every instant of the history (each event, just before and just after it, before the
/// first and after the last), for all and for some periods and regions, the answer by key is
/// the brute-force answer. Returns how many (instant, selection) pairs were compared.
async fn compare_everywhere(db: &Db, base: i64, what: &str) -> usize {
    let selections = [
        (strings(&REGIONS), strings(&PERIODS)),
        (strings(&REGIONS[..2]), strings(&PERIODS[1..])),
        (strings(&REGIONS[1..2]), strings(&PERIODS[..1])),
    ];
    let mut instants = vec![base - 1];
    for (at, _) in history(base) {
        instants.extend([at - 1, at, at + 1]);
    }
    instants.push(base + 1_000 * STEP);
    let mut compared = 0;
    let mut nonempty = 0;
    for t in instants {
        for (regions, periods) in &selections {
            let want = brute_force(db, regions, periods, t).await;
            let got = by_keys(db, regions, periods, t).await;
            assert_eq!(got, want, "{what}: as_of {t}, {regions:?} {periods:?}");
            compared += 1;
            nonempty += usize::from(!want.is_empty());
        }
    }
    assert!(nonempty > compared / 2, "{what}: the history has values");
    compared
}

/// Key 0 has no value before its first, none between its retraction and its re-submission,
/// and its second value after; key 1's second value (same instant as its first) is the one.
async fn check_named_instants(db: &Db, base: i64, what: &str) {
    let (regions, periods) = (strings(&REGIONS), strings(&PERIODS));
    let of_key = |rows: Vec<VersionRow>, k: usize| -> Vec<String> {
        let (metric, region, period) = key(k);
        rows.into_iter()
            .filter(|r| r.metric == metric && r.region == region && r.period == period)
            .map(|r| r.value)
            .collect()
    };
    let at = |t| by_keys(db, &regions, &periods, t);
    assert!(of_key(at(base - 1).await, 0).is_empty(), "{what}: before");
    assert_eq!(of_key(at(base).await, 0), ["1"], "{what}: first value");
    assert!(
        of_key(at(base + 2 * STEP).await, 0).is_empty(),
        "{what}: retracted"
    );
    assert_eq!(
        of_key(at(base + 3 * STEP).await, 0),
        ["2"],
        "{what}: re-submitted"
    );
    assert_eq!(
        of_key(at(base + 4 * STEP).await, 1),
        ["4"],
        "{what}: same instant"
    );
}

async fn as_of_by_key_is_the_interval_scan(backend: Backend) {
    let tdb = testing::open(backend).await;
    let db = tdb.db();
    let base = 1_000_000_000;
    write_history(db, base, Writer::Current, "stats", 1).await;
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM value_keys")
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let distinct: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT vkey) FROM value_versions")
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(keys, distinct, "{backend:?}: every key once in value_keys");
    assert!(keys >= 30, "{backend:?}: many keys ({keys})");
    check_named_instants(db, base, &format!("{backend:?}")).await;
    let compared = compare_everywhere(db, base, &format!("{backend:?}")).await;
    assert!(compared > 900);
}

both_databases!(as_of_by_key_is_the_interval_scan);

/// A store at the migrations before 0220 (as the last release has it), not migrated further.
async fn store_before_0220(backend: Backend, dir: &Path, schema: &str) -> Db {
    let db = match backend {
        Backend::Sqlite => {
            let url = sqlite_url(&dir.join("citycredit.db"));
            Db::connect(&url, 2, Duration::from_secs(10), None).await
        }
        Backend::Postgres => {
            let url = citycredit_tests::postgres_url();
            let admin = Db::connect(&url, 1, Duration::from_secs(10), None)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            // SQL-safe: a schema name `fresh_schema` generated ([a-z0-9_]).
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
                .execute(&admin.pool)
                .await
                .unwrap_or_else(|e| panic!("create schema: {e}"));
            admin.pool.close().await;
            Db::connect(&url, 2, Duration::from_secs(10), Some(schema.to_string())).await
        }
    }
    .unwrap_or_else(|e| panic!("connect: {e}"));
    let folder = match db.backend {
        citycredit_store::Backend::Sqlite => "sqlite",
        citycredit_store::Backend::Postgres => "postgres",
    };
    let mut migrator = sqlx::migrate::Migrator::new(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../services/store/migrations")
            .join(folder),
    )
    .await
    .unwrap_or_else(|e| panic!("read migrations: {e}"));
    let old: Vec<sqlx::migrate::Migration> = migrator
        .migrations
        .iter()
        .filter(|m| m.version < 220)
        .cloned()
        .collect();
    assert!(old.iter().any(|m| m.version == 210));
    assert!(migrator.migrations.iter().any(|m| m.version == 220));
    migrator.migrations = old.into();
    migrator
        .run(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("migrate before 0220: {e}"));
    db
}

async fn a_store_before_0220_answers_the_same(backend: Backend) {
    let schema = fresh_schema();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let db = store_before_0220(backend, dir.path(), &schema).await;
    let base = 2_000_000_000;
    write_history(&db, base, Writer::Before0220, "stats", 1).await;
    let (regions, periods) = (strings(&REGIONS), strings(&PERIODS));
    let mut before = Vec::new();
    for (at, _) in history(base) {
        before.push(brute_force(&db, &regions, &periods, at).await);
    }
    db.migrate()
        .await
        .unwrap_or_else(|e| panic!("{backend:?}: migrate to 0220: {e}"));
    let what = format!("{backend:?} after 0220");
    for ((at, _), want) in history(base).into_iter().zip(before) {
        assert_eq!(
            by_keys(&db, &regions, &periods, at).await,
            want,
            "{what}: {at}"
        );
    }
    check_named_instants(&db, base, &what).await;
    compare_everywhere(&db, base, &what).await;
    // New keys after the migration enter value_keys; the old keys keep answering.
    write_history(
        &db,
        base + 10_000 * STEP,
        Writer::Current,
        "finance",
        10_000,
    )
    .await;
    compare_everywhere(&db, base + 10_000 * STEP, &what).await;
    db.pool.close().await;
}

both_databases!(a_store_before_0220_answers_the_same);
