//! The ingestion tables and their SQL (written once for sqlx `Any`: `$n` placeholders, only
//! i64 and text columns). `submissions` is append-only; `value_versions` is derived from it in
//! the same transaction; `retractions` (the retraction that counts for each retracted
//! submission) is filled by a trigger in the statement that inserts the retraction row;
//! `idempotency` remembers keys; `chain_head` is the writer's one row.

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use citycredit_store::{Backend, Db};

/// Kinds of submission rows.
pub const KIND_VALUE: &str = "value";
pub const KIND_RETRACTION: &str = "retraction";

/// One stored submission row, every column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRow {
    pub id: i64,
    pub principal: String,
    pub department: String,
    pub region: String,
    pub period: String,
    pub metric: String,
    pub domain: String,
    pub task_id: String,
    pub value: String,
    pub evidence_uri: String,
    pub note: String,
    pub idempotency_key: String,
    pub accept_micros: i64,
    pub kind: String,
    pub retracts: Option<i64>,
    pub reason: String,
    pub prev_hash: String,
    pub hash: String,
}

pub const SUBMISSION_COLUMNS: &str = "id, principal, department, region, period, metric, domain, \
    task_id, value, evidence_uri, note, idempotency_key, accept_micros, kind, retracts, reason, \
    prev_hash, hash";
const SUBMISSION_ARITY: usize = 18;

impl StoredRow {
    pub fn from_row(r: &AnyRow) -> Result<StoredRow, sqlx::Error> {
        Ok(StoredRow {
            id: r.try_get(0)?,
            principal: r.try_get(1)?,
            department: r.try_get(2)?,
            region: r.try_get(3)?,
            period: r.try_get(4)?,
            metric: r.try_get(5)?,
            domain: r.try_get(6)?,
            task_id: r.try_get(7)?,
            value: r.try_get(8)?,
            evidence_uri: r.try_get(9)?,
            note: r.try_get(10)?,
            idempotency_key: r.try_get(11)?,
            accept_micros: r.try_get(12)?,
            kind: r.try_get(13)?,
            retracts: r.try_get(14)?,
            reason: r.try_get(15)?,
            prev_hash: r.try_get(16)?,
            hash: r.try_get(17)?,
        })
    }

    /// The key a value supersedes within: (metric, region, period, department, domain, task).
    pub fn vkey(&self) -> String {
        vkey(
            &self.metric,
            &self.region,
            &self.period,
            &self.department,
            &self.domain,
            &self.task_id,
        )
    }
}

/// Unambiguous text for a value key (length-prefixed fields).
pub fn vkey(
    metric: &str,
    region: &str,
    period: &str,
    department: &str,
    domain: &str,
    task_id: &str,
) -> String {
    let mut out = String::with_capacity(64);
    for f in [metric, region, period, department, domain, task_id] {
        out.push_str(&f.len().to_string());
        out.push(':');
        out.push_str(f);
    }
    out
}

/// `($1, $2, ...), (...)` for `rows` rows of `arity` columns.
pub fn placeholders(rows: usize, arity: usize) -> String {
    let mut s = String::with_capacity(rows * arity * 5);
    let mut n = 1;
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..arity {
            if c > 0 {
                s.push(',');
            }
            s.push('$');
            s.push_str(&n.to_string());
            n += 1;
        }
        s.push(')');
    }
    s
}

/// `$k, $k+1, ...` (n of them).
pub fn list(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parameters per statement. SQLite looks a parameter up by walking its list
/// (`sqlite3_bind_parameter_name`), so binding costs O(n^2) in the parameters of one
/// statement: keep SQLite statements small. PostgreSQL allows 65,535.
fn param_budget(conn: &AnyConnection) -> usize {
    if conn.backend_name().eq_ignore_ascii_case("sqlite") {
        180
    } else {
        9_000
    }
}

/// Rows per statement for `arity` parameters per row.
fn rows_per_statement(conn: &AnyConnection, arity: usize) -> usize {
    (param_budget(conn) / arity).max(1)
}

pub async fn insert_submissions(
    conn: &mut AnyConnection,
    rows: &[StoredRow],
) -> Result<(), sqlx::Error> {
    let n = rows_per_statement(conn, SUBMISSION_ARITY);
    for chunk in rows.chunks(n) {
        // SQL-safe: only column names, `$n` placeholders and a numeric LIMIT are spliced in.
        let sql = format!(
            "INSERT INTO submissions ({SUBMISSION_COLUMNS}) VALUES {}",
            placeholders(chunk.len(), SUBMISSION_ARITY)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            q = q
                .bind(r.id)
                .bind(r.principal.as_str())
                .bind(r.department.as_str())
                .bind(r.region.as_str())
                .bind(r.period.as_str())
                .bind(r.metric.as_str())
                .bind(r.domain.as_str())
                .bind(r.task_id.as_str())
                .bind(r.value.as_str())
                .bind(r.evidence_uri.as_str())
                .bind(r.note.as_str())
                .bind(r.idempotency_key.as_str())
                .bind(r.accept_micros)
                .bind(r.kind.as_str())
                .bind(r.retracts)
                .bind(r.reason.as_str())
                .bind(r.prev_hash.as_str())
                .bind(r.hash.as_str());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// One version of a value key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub submission_id: i64,
    pub vkey: String,
    pub metric: String,
    pub region: String,
    pub period: String,
    pub department: String,
    pub domain: String,
    pub task_id: String,
    pub value: String,
    pub valid_from: i64,
    pub valid_to: Option<i64>,
    /// When the submission was accepted (`valid_from` is when this version became current:
    /// later for a value reopened by a retraction).
    pub accepted_micros: i64,
}

const VERSION_ARITY: usize = 12;

pub async fn insert_versions(
    conn: &mut AnyConnection,
    versions: &[Version],
) -> Result<(), sqlx::Error> {
    let n = rows_per_statement(conn, VERSION_ARITY);
    for chunk in versions.chunks(n) {
        // SQL-safe: only column names, `$n` placeholders and a numeric LIMIT are spliced in.
        let sql = format!(
            "INSERT INTO value_versions (submission_id, vkey, metric, region, period, department, \
             domain, task_id, value, valid_from, valid_to, accepted_micros) VALUES {}",
            placeholders(chunk.len(), VERSION_ARITY)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for v in chunk {
            q = q
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
                .bind(v.valid_to)
                .bind(v.accepted_micros);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Closes the current versions of these submissions at `at`.
pub async fn close_versions(
    conn: &mut AnyConnection,
    submission_ids: &[i64],
    at: i64,
) -> Result<(), sqlx::Error> {
    let n = rows_per_statement(conn, 1);
    for chunk in submission_ids.chunks(n) {
        // SQL-safe: only column names, `$n` placeholders and a numeric LIMIT are spliced in.
        let sql = format!(
            "UPDATE value_versions SET valid_to = $1 WHERE valid_to IS NULL AND submission_id IN ({})",
            list(2, chunk.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(at);
        for id in chunk {
            q = q.bind(*id);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// vkey -> current submission id, for the given keys.
pub async fn current_of_keys(
    conn: &mut AnyConnection,
    keys: &[String],
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let mut out = Vec::new();
    let n = rows_per_statement(conn, 1);
    for chunk in keys.chunks(n) {
        // SQL-safe: only column names, `$n` placeholders and a numeric LIMIT are spliced in.
        let sql = format!(
            "SELECT vkey, submission_id FROM value_versions WHERE valid_to IS NULL AND vkey IN ({})",
            list(1, chunk.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for k in chunk {
            q = q.bind(k.as_str());
        }
        for r in q.fetch_all(&mut *conn).await? {
            out.push((r.try_get(0)?, r.try_get(1)?));
        }
    }
    Ok(out)
}

/// A remembered idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub scoped_key: String,
    pub fingerprint: String,
    pub first_id: i64,
    pub last_id: i64,
    pub accept_micros: i64,
}

impl IdempotencyRecord {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(IdempotencyRecord {
            scoped_key: r.try_get(0)?,
            fingerprint: r.try_get(1)?,
            first_id: r.try_get(2)?,
            last_id: r.try_get(3)?,
            accept_micros: r.try_get(4)?,
        })
    }
}

/// Idempotency keys are scoped per principal: (principal, key) as one unambiguous text.
pub fn scoped_key(principal: &str, key: &str) -> String {
    format!("{}:{principal}{key}", principal.len())
}

pub async fn idempotency_records(
    conn: &mut AnyConnection,
    scoped_keys: &[String],
) -> Result<Vec<IdempotencyRecord>, sqlx::Error> {
    let mut out = Vec::new();
    let n = rows_per_statement(conn, 1);
    for chunk in scoped_keys.chunks(n) {
        // SQL-safe: only column names, `$n` placeholders and a numeric LIMIT are spliced in.
        let sql = format!(
            "SELECT scoped_key, fingerprint, first_id, last_id, accept_micros FROM idempotency \
             WHERE scoped_key IN ({})",
            list(1, chunk.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for k in chunk {
            q = q.bind(k.as_str());
        }
        for r in q.fetch_all(&mut *conn).await? {
            out.push(IdempotencyRecord::from_row(&r)?);
        }
    }
    Ok(out)
}

pub async fn idempotency_record(
    db: &Db,
    scoped_key: &str,
) -> Result<Option<IdempotencyRecord>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT scoped_key, fingerprint, first_id, last_id, accept_micros FROM idempotency \
         WHERE scoped_key = $1",
    )
    .bind(scoped_key)
    .fetch_optional(&db.pool)
    .await?;
    row.map(|r| IdempotencyRecord::from_row(&r)).transpose()
}

pub async fn insert_idempotency(
    conn: &mut AnyConnection,
    records: &[IdempotencyRecord],
) -> Result<(), sqlx::Error> {
    let n = rows_per_statement(conn, 5);
    for chunk in records.chunks(n) {
        // SQL-safe: only column names, `$n` placeholders and a numeric LIMIT are spliced in.
        let sql = format!(
            "INSERT INTO idempotency (scoped_key, fingerprint, first_id, last_id, accept_micros) \
             VALUES {}",
            placeholders(chunk.len(), 5)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            q = q
                .bind(r.scoped_key.as_str())
                .bind(r.fingerprint.as_str())
                .bind(r.first_id)
                .bind(r.last_id)
                .bind(r.accept_micros);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The chain head: last id, last hash, last accept time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub last_id: i64,
    pub last_hash: String,
    pub last_micros: i64,
}

pub async fn lock_head(conn: &mut AnyConnection, for_update: bool) -> Result<Head, sqlx::Error> {
    let sql = if for_update {
        "SELECT last_id, last_hash, last_micros FROM chain_head WHERE id = 1 FOR UPDATE"
    } else {
        "SELECT last_id, last_hash, last_micros FROM chain_head WHERE id = 1"
    };
    let r = sqlx::query(sql).fetch_one(&mut *conn).await?;
    Ok(Head {
        last_id: r.try_get(0)?,
        last_hash: r.try_get(1)?,
        last_micros: r.try_get(2)?,
    })
}

pub async fn head(db: &Db) -> Result<Head, sqlx::Error> {
    let mut conn = db.pool.acquire().await?;
    lock_head(&mut conn, false).await
}

pub async fn set_head(conn: &mut AnyConnection, head: &Head) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE chain_head SET last_id = $1, last_hash = $2, last_micros = $3 WHERE id = 1",
    )
    .bind(head.last_id)
    .bind(head.last_hash.as_str())
    .bind(head.last_micros)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn get(db: &Db, id: i64) -> Result<Option<StoredRow>, sqlx::Error> {
    // SQL-safe: only column names, `$n` placeholders and a numeric LIMIT are spliced in.
    let sql = format!("SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    row.map(|r| StoredRow::from_row(&r)).transpose()
}

pub async fn range(db: &Db, first: i64, last: i64) -> Result<Vec<StoredRow>, sqlx::Error> {
    // SQL-safe: only column names, `$n` placeholders and a numeric LIMIT are spliced in.
    let sql = format!(
        "SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE id >= $1 AND id <= $2 ORDER BY id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(first)
        .bind(last)
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(StoredRow::from_row).collect()
}

/// The id of the submission that retracts `id`, if any (the first one: a store written before
/// migration 0210 may hold later ones too, which count for nothing).
pub async fn retraction_of(db: &Db, id: i64) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT by_id FROM retractions WHERE target = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await
}

/// A `retractions` row that the chain does not give: its retraction does not exist, retracts
/// another submission, or is not the first retraction of its target. (target, by_id).
pub async fn retraction_not_in_chain(db: &Db) -> Result<Option<(i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT r.target, r.by_id FROM retractions r \
         LEFT JOIN submissions s ON s.id = r.by_id AND s.retracts = r.target \
         WHERE s.id IS NULL \
         OR EXISTS (SELECT 1 FROM submissions e WHERE e.retracts = r.target AND e.id < r.by_id) \
         ORDER BY r.by_id LIMIT 1",
    )
    .fetch_optional(&db.pool)
    .await
}

/// A retraction in the chain (up to `last_id`) whose target has no `retractions` row. (id,
/// target).
pub async fn retraction_not_recorded(
    db: &Db,
    last_id: i64,
) -> Result<Option<(i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.id, s.retracts FROM submissions s WHERE s.retracts IS NOT NULL AND s.id <= $1 \
         AND NOT EXISTS (SELECT 1 FROM retractions r WHERE r.target = s.retracts) \
         ORDER BY s.id LIMIT 1",
    )
    .bind(last_id)
    .fetch_optional(&db.pool)
    .await
}

/// The first submission id whose retraction of a current value reopens the previous value (an
/// undo); retractions stored before migration 0210 only closed it. Recorded by that migration;
/// None when the row is missing or not a number (someone edited the store).
pub async fn retraction_undo_from(db: &Db) -> Result<Option<i64>, sqlx::Error> {
    let text: Option<String> = sqlx::query_scalar("SELECT value FROM store_meta WHERE key = $1")
        .bind(RETRACTION_UNDO_FROM)
        .fetch_optional(&db.pool)
        .await?;
    Ok(text.and_then(|t| t.parse::<i64>().ok()))
}

/// The `store_meta` key of [`retraction_undo_from`].
pub const RETRACTION_UNDO_FROM: &str = "ingestion.retraction_undo_from_id";

/// (target, the retraction that counts) for each of `targets` that is retracted.
pub async fn retractions_of(
    conn: &mut AnyConnection,
    targets: &[i64],
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    let mut out = Vec::new();
    let n = rows_per_statement(conn, 1);
    for chunk in targets.chunks(n) {
        // SQL-safe: only column names, `$n` placeholders and a numeric LIMIT are spliced in.
        let sql = format!(
            "SELECT target, by_id FROM retractions WHERE target IN ({})",
            list(1, chunk.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for t in chunk {
            q = q.bind(*t);
        }
        for r in q.fetch_all(&mut *conn).await? {
            out.push((r.try_get(0)?, r.try_get(1)?));
        }
    }
    Ok(out)
}

/// The latest value of `of`'s key stored before it that is not retracted (in the store, or
/// by this transaction: `retracted`): what becomes current again when `of` is retracted.
pub async fn previous_value(
    conn: &mut AnyConnection,
    of: &StoredRow,
    retracted: &std::collections::HashSet<i64>,
) -> Result<Option<StoredRow>, sqlx::Error> {
    // A few at a time: rows retracted by this very transaction are skipped here.
    const PAGE: i64 = 16;
    let mut before = of.id;
    loop {
        // SQL-safe: only column names, `$n` placeholders and a numeric LIMIT are spliced in.
        let sql = format!(
            "SELECT {SUBMISSION_COLUMNS} FROM submissions s WHERE metric = $1 AND region = $2 \
             AND period = $3 AND department = $4 AND domain = $5 AND task_id = $6 \
             AND kind = $7 AND id < $8 \
             AND NOT EXISTS (SELECT 1 FROM retractions r WHERE r.target = s.id) \
             ORDER BY id DESC LIMIT {PAGE}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(of.metric.as_str())
            .bind(of.region.as_str())
            .bind(of.period.as_str())
            .bind(of.department.as_str())
            .bind(of.domain.as_str())
            .bind(of.task_id.as_str())
            .bind(KIND_VALUE)
            .bind(before)
            .fetch_all(&mut *conn)
            .await?;
        let page = i64::try_from(rows.len()).unwrap_or(PAGE);
        for r in &rows {
            let row = StoredRow::from_row(r)?;
            if !retracted.contains(&row.id) {
                return Ok(Some(row));
            }
            before = row.id;
        }
        if page < PAGE {
            return Ok(None);
        }
    }
}

/// Filters of ListSubmissions (empty strings match everything).
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub region: String,
    pub period: String,
    pub metric: String,
    pub department: String,
    pub principal: String,
    pub start_micros: Option<i64>,
    pub end_micros: Option<i64>,
    /// Only ids below this (keyset pagination, newest first).
    pub before_id: Option<i64>,
}

pub async fn list_submissions(
    db: &Db,
    f: &ListFilter,
    limit: usize,
) -> Result<Vec<StoredRow>, sqlx::Error> {
    let mut clauses: Vec<String> = Vec::new();
    let mut texts: Vec<&str> = Vec::new();
    let mut n = 0;
    for (col, v) in [
        ("region", &f.region),
        ("period", &f.period),
        ("metric", &f.metric),
        ("department", &f.department),
        ("principal", &f.principal),
    ] {
        if !v.is_empty() {
            n += 1;
            clauses.push(format!("{col} = ${n}"));
            texts.push(v);
        }
    }
    let mut ints: Vec<i64> = Vec::new();
    for (cond, v) in [
        ("accept_micros >=", f.start_micros),
        ("accept_micros <", f.end_micros),
        ("id <", f.before_id),
    ] {
        if let Some(v) = v {
            n += 1;
            clauses.push(format!("{cond} ${n}"));
            ints.push(v);
        }
    }
    let filter = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    // SQL-safe: only column names, `$n` placeholders and a numeric LIMIT are spliced in.
    let sql = format!(
        "SELECT {SUBMISSION_COLUMNS} FROM submissions {filter} ORDER BY id DESC LIMIT {}",
        limit
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for t in texts {
        q = q.bind(t);
    }
    for i in ints {
        q = q.bind(i);
    }
    let rows = q.fetch_all(&db.pool).await?;
    rows.iter().map(StoredRow::from_row).collect()
}

/// Every submission up to `last_id` in id order, streamed to `visit` (stops early when it
/// returns false).
pub async fn walk_submissions(
    db: &Db,
    last_id: i64,
    mut visit: impl FnMut(StoredRow) -> bool,
) -> Result<(), sqlx::Error> {
    // SQL-safe: only column names, `$n` placeholders and a numeric LIMIT are spliced in.
    let sql = format!("SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE id <= $1 ORDER BY id");
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(last_id)
        .fetch(&db.pool);
    while let Some(r) = rows.try_next().await? {
        if !visit(StoredRow::from_row(&r)?) {
            break;
        }
    }
    Ok(())
}

/// A current (or as-of) version for aggregation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRow {
    pub submission_id: i64,
    pub metric: String,
    pub region: String,
    pub department: String,
    pub domain: String,
    pub task_id: String,
    pub value: String,
    /// When the submission behind this version was accepted.
    pub accepted_micros: i64,
}

/// The versions valid for `period` at `regions`: current ones, or those valid at `as_of`.
pub async fn versions(
    db: &Db,
    regions: &[String],
    period: &str,
    as_of: Option<i64>,
) -> Result<Vec<VersionRow>, sqlx::Error> {
    let cols = "submission_id, metric, region, department, domain, task_id, value, accepted_micros";
    let sql = match as_of {
        None => format!(
            "SELECT {cols} FROM value_versions WHERE period = $1 AND region IN ({}) \
             AND valid_to IS NULL",
            list(2, regions.len())
        ),
        Some(_) => format!(
            "SELECT {cols} FROM value_versions WHERE period = $1 AND region IN ({}) \
             AND valid_from <= ${} AND (valid_to IS NULL OR valid_to > ${})",
            list(2, regions.len()),
            regions.len() + 2,
            regions.len() + 3
        ),
    };
    // SQL-safe: only column names, `$n` placeholders and a numeric LIMIT are spliced in.
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(period);
    for r in regions {
        q = q.bind(r.as_str());
    }
    if let Some(t) = as_of {
        q = q.bind(t).bind(t);
    }
    let rows = q.fetch_all(&db.pool).await?;
    rows.iter()
        .map(|r| {
            Ok(VersionRow {
                submission_id: r.try_get(0)?,
                metric: r.try_get(1)?,
                region: r.try_get(2)?,
                department: r.try_get(3)?,
                domain: r.try_get(4)?,
                task_id: r.try_get(5)?,
                value: r.try_get(6)?,
                accepted_micros: r.try_get(7)?,
            })
        })
        .collect()
}

/// The value key's columns in the order both verification streams sort by, compared byte by
/// byte as Rust compares strings (SQLite's default BINARY collation; `C` on PostgreSQL), so the
/// two streams can be merged in Rust.
fn key_order(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "metric, region, period, department, domain, task_id",
        Backend::Postgres => {
            "metric COLLATE \"C\", region COLLATE \"C\", period COLLATE \"C\", \
             department COLLATE \"C\", domain COLLATE \"C\", task_id COLLATE \"C\""
        }
    }
}

/// A value key as a tuple that sorts like [`key_order`].
pub type KeyTuple = (String, String, String, String, String, String);

impl StoredRow {
    pub fn key_tuple(&self) -> KeyTuple {
        (
            self.metric.clone(),
            self.region.clone(),
            self.period.clone(),
            self.department.clone(),
            self.domain.clone(),
            self.task_id.clone(),
        )
    }
}

/// Submissions up to `last_id`, by value key then id.
pub fn submissions_by_key(db: &Db, last_id: i64) -> BoxStream<'_, Result<StoredRow, sqlx::Error>> {
    // SQL-safe: only column names, `$n` placeholders and constant collations are spliced in.
    let sql = format!(
        "SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE id <= $1 ORDER BY {}, id",
        key_order(db.backend)
    );
    Box::pin(
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(last_id)
            .fetch(&db.pool)
            .map(|r| r.and_then(|row| StoredRow::from_row(&row))),
    )
}

/// Every stored version that had begun by `until`, by value key, then start, then submission.
pub fn versions_by_key(db: &Db, until: i64) -> BoxStream<'_, Result<Version, sqlx::Error>> {
    // SQL-safe: only column names, `$n` placeholders and constant collations are spliced in.
    let sql = format!(
        "SELECT submission_id, vkey, metric, region, period, department, domain, task_id, value, \
         valid_from, valid_to, accepted_micros FROM value_versions WHERE valid_from <= $1 \
         ORDER BY {}, valid_from, submission_id",
        key_order(db.backend)
    );
    Box::pin(
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(until)
            .fetch(&db.pool)
            .map(|r| {
                r.and_then(|row| {
                    Ok(Version {
                        submission_id: row.try_get(0)?,
                        vkey: row.try_get(1)?,
                        metric: row.try_get(2)?,
                        region: row.try_get(3)?,
                        period: row.try_get(4)?,
                        department: row.try_get(5)?,
                        domain: row.try_get(6)?,
                        task_id: row.try_get(7)?,
                        value: row.try_get(8)?,
                        valid_from: row.try_get(9)?,
                        valid_to: row.try_get(10)?,
                        accepted_micros: row.try_get(11)?,
                    })
                })
            }),
    )
}

impl Version {
    pub fn key_tuple(&self) -> KeyTuple {
        (
            self.metric.clone(),
            self.region.clone(),
            self.period.clone(),
            self.department.clone(),
            self.domain.clone(),
            self.task_id.clone(),
        )
    }
}
