//! The ingestion tables and their SQL (written once for sqlx `Any`: `$n` placeholders, only
//! i64 and text columns; statements of run-time shape, such as a bulk insert or an `IN` list,
//! are built with sqlx's `QueryBuilder` and numbered by [`citycredit_store::numbered`]; rows
//! are read by column name with `FromRow`). `submissions` is append-only; `value_versions` is derived from it in
//! the same transaction; `retractions` (the retraction that counts for each retracted
//! submission) is filled by a trigger in the statement that inserts the retraction row;
//! `idempotency` remembers keys; `chain_head` is the writer's one row.

use futures::TryStreamExt;
use futures::stream::BoxStream;
use sqlx::{Any, AnyConnection, QueryBuilder};

use citycredit_store::{Backend, Db, numbered, numbered_as};

/// Kinds of submission rows.
pub const KIND_VALUE: &str = "value";
pub const KIND_RETRACTION: &str = "retraction";

/// One stored submission row, every column.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
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

/// Every column of `submissions`, as a literal for `concat!` (so queries stay `&'static str`).
macro_rules! submission_columns {
    () => {
        "id, principal, department, region, period, metric, domain, task_id, value, \
         evidence_uri, note, idempotency_key, accept_micros, kind, retracts, reason, prev_hash, \
         hash"
    };
}
const SUBMISSION_ARITY: usize = 18;

impl StoredRow {
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
        let mut qb = QueryBuilder::<Any>::new(concat!(
            "INSERT INTO submissions (",
            submission_columns!(),
            ") "
        ));
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(r.id)
                .push_bind(r.principal.as_str())
                .push_bind(r.department.as_str())
                .push_bind(r.region.as_str())
                .push_bind(r.period.as_str())
                .push_bind(r.metric.as_str())
                .push_bind(r.domain.as_str())
                .push_bind(r.task_id.as_str())
                .push_bind(r.value.as_str())
                .push_bind(r.evidence_uri.as_str())
                .push_bind(r.note.as_str())
                .push_bind(r.idempotency_key.as_str())
                .push_bind(r.accept_micros)
                .push_bind(r.kind.as_str())
                .push_bind(r.retracts)
                .push_bind(r.reason.as_str())
                .push_bind(r.prev_hash.as_str())
                .push_bind(r.hash.as_str());
        });
        numbered(&mut qb)?.execute(&mut *conn).await?;
    }
    Ok(())
}

/// One version of a value key.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
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

/// Every column of `value_versions`, as a literal for `concat!`.
macro_rules! version_columns {
    () => {
        "submission_id, vkey, metric, region, period, department, domain, task_id, value, \
         valid_from, valid_to, accepted_micros"
    };
}
const VERSION_ARITY: usize = 12;

pub async fn insert_versions(
    conn: &mut AnyConnection,
    versions: &[Version],
) -> Result<(), sqlx::Error> {
    let n = rows_per_statement(conn, VERSION_ARITY);
    for chunk in versions.chunks(n) {
        let mut qb = QueryBuilder::<Any>::new(concat!(
            "INSERT INTO value_versions (",
            version_columns!(),
            ") "
        ));
        qb.push_values(chunk, |mut b, v| {
            b.push_bind(v.submission_id)
                .push_bind(v.vkey.as_str())
                .push_bind(v.metric.as_str())
                .push_bind(v.region.as_str())
                .push_bind(v.period.as_str())
                .push_bind(v.department.as_str())
                .push_bind(v.domain.as_str())
                .push_bind(v.task_id.as_str())
                .push_bind(v.value.as_str())
                .push_bind(v.valid_from)
                .push_bind(v.valid_to)
                .push_bind(v.accepted_micros);
        });
        numbered(&mut qb)?.execute(&mut *conn).await?;
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
        let mut qb = QueryBuilder::<Any>::new("UPDATE value_versions SET valid_to = ");
        qb.push_bind(at)
            .push(" WHERE valid_to IS NULL AND submission_id IN (");
        let mut ids = qb.separated(", ");
        for id in chunk {
            ids.push_bind(*id);
        }
        ids.push_unseparated(")");
        numbered(&mut qb)?.execute(&mut *conn).await?;
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
        let mut qb = QueryBuilder::<Any>::new(
            "SELECT vkey, submission_id FROM value_versions WHERE valid_to IS NULL AND vkey IN (",
        );
        let mut list = qb.separated(", ");
        for k in chunk {
            list.push_bind(k.as_str());
        }
        list.push_unseparated(")");
        out.extend(
            numbered_as::<(String, i64)>(&mut qb)?
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    Ok(out)
}

/// A remembered idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct IdempotencyRecord {
    pub scoped_key: String,
    pub fingerprint: String,
    pub first_id: i64,
    pub last_id: i64,
    pub accept_micros: i64,
}

/// Every column of `idempotency`, as a literal for `concat!`.
macro_rules! idempotency_columns {
    () => {
        "scoped_key, fingerprint, first_id, last_id, accept_micros"
    };
}
const IDEMPOTENCY_ARITY: usize = 5;

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
        let mut qb = QueryBuilder::<Any>::new(concat!(
            "SELECT ",
            idempotency_columns!(),
            " FROM idempotency WHERE scoped_key IN ("
        ));
        let mut list = qb.separated(", ");
        for k in chunk {
            list.push_bind(k.as_str());
        }
        list.push_unseparated(")");
        out.extend(
            numbered_as::<IdempotencyRecord>(&mut qb)?
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    Ok(out)
}

pub async fn idempotency_record(
    db: &Db,
    scoped_key: &str,
) -> Result<Option<IdempotencyRecord>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        idempotency_columns!(),
        " FROM idempotency WHERE scoped_key = $1"
    ))
    .bind(scoped_key)
    .fetch_optional(&db.pool)
    .await
}

pub async fn insert_idempotency(
    conn: &mut AnyConnection,
    records: &[IdempotencyRecord],
) -> Result<(), sqlx::Error> {
    let n = rows_per_statement(conn, IDEMPOTENCY_ARITY);
    for chunk in records.chunks(n) {
        let mut qb = QueryBuilder::<Any>::new(concat!(
            "INSERT INTO idempotency (",
            idempotency_columns!(),
            ") "
        ));
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(r.scoped_key.as_str())
                .push_bind(r.fingerprint.as_str())
                .push_bind(r.first_id)
                .push_bind(r.last_id)
                .push_bind(r.accept_micros);
        });
        numbered(&mut qb)?.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The chain head: last id, last hash, last accept time.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
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
    sqlx::query_as(sql).fetch_one(&mut *conn).await
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
    sqlx::query_as(concat!(
        "SELECT ",
        submission_columns!(),
        " FROM submissions WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&db.pool)
    .await
}

pub async fn range(db: &Db, first: i64, last: i64) -> Result<Vec<StoredRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        submission_columns!(),
        " FROM submissions WHERE id >= $1 AND id <= $2 ORDER BY id"
    ))
    .bind(first)
    .bind(last)
    .fetch_all(&db.pool)
    .await
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
        let mut qb =
            QueryBuilder::<Any>::new("SELECT target, by_id FROM retractions WHERE target IN (");
        let mut list = qb.separated(", ");
        for t in chunk {
            list.push_bind(*t);
        }
        list.push_unseparated(")");
        out.extend(
            numbered_as::<(i64, i64)>(&mut qb)?
                .fetch_all(&mut *conn)
                .await?,
        );
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
    macro_rules! page {
        () => {
            16
        };
    }
    const PAGE: i64 = page!();
    let mut before = of.id;
    loop {
        let rows: Vec<StoredRow> = sqlx::query_as(concat!(
            "SELECT ",
            submission_columns!(),
            " FROM submissions s WHERE metric = $1 AND region = $2 \
             AND period = $3 AND department = $4 AND domain = $5 AND task_id = $6 \
             AND kind = $7 AND id < $8 \
             AND NOT EXISTS (SELECT 1 FROM retractions r WHERE r.target = s.id) \
             ORDER BY id DESC LIMIT ",
            page!()
        ))
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
        for row in rows {
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
    let texts: Vec<(&str, &str)> = [
        ("region = ", &f.region),
        ("period = ", &f.period),
        ("metric = ", &f.metric),
        ("department = ", &f.department),
        ("principal = ", &f.principal),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(cond, v)| (cond, v.as_str()))
    .collect();
    let ints: Vec<(&str, i64)> = [
        ("accept_micros >= ", f.start_micros),
        ("accept_micros < ", f.end_micros),
        ("id < ", f.before_id),
    ]
    .into_iter()
    .filter_map(|(cond, v)| Some((cond, v?)))
    .collect();
    let mut qb = QueryBuilder::<Any>::new(concat!(
        "SELECT ",
        submission_columns!(),
        " FROM submissions"
    ));
    if !texts.is_empty() || !ints.is_empty() {
        qb.push(" WHERE ");
    }
    let mut conditions = qb.separated(" AND ");
    for (cond, v) in texts {
        conditions.push(cond).push_bind_unseparated(v);
    }
    for (cond, v) in ints {
        conditions.push(cond).push_bind_unseparated(v);
    }
    // A number, not text: nothing from the caller reaches the SQL.
    qb.push(" ORDER BY id DESC LIMIT ").push(limit);
    numbered_as(&mut qb)?.fetch_all(&db.pool).await
}

/// Every submission up to `last_id` in id order, streamed to `visit` (stops early when it
/// returns false).
pub async fn walk_submissions(
    db: &Db,
    last_id: i64,
    mut visit: impl FnMut(StoredRow) -> bool,
) -> Result<(), sqlx::Error> {
    let mut rows = sqlx::query_as(concat!(
        "SELECT ",
        submission_columns!(),
        " FROM submissions WHERE id <= $1 ORDER BY id"
    ))
    .bind(last_id)
    .fetch(&db.pool);
    while let Some(row) = rows.try_next().await? {
        if !visit(row) {
            break;
        }
    }
    Ok(())
}

/// A current (or as-of) version for aggregation.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct VersionRow {
    pub submission_id: i64,
    pub metric: String,
    pub region: String,
    /// The period the value was reported for.
    pub period: String,
    pub department: String,
    pub domain: String,
    pub task_id: String,
    pub value: String,
    /// When the submission behind this version was accepted.
    pub accepted_micros: i64,
}

/// The versions valid for any of `periods` at `regions`: current ones, or those valid at
/// `as_of`. Aggregation passes every period whose values can reach the one asked for
/// (`Period::reached_by`: at most 20), which the `(period, region)` indexes serve.
pub async fn versions(
    db: &Db,
    regions: &[String],
    periods: &[String],
    as_of: Option<i64>,
) -> Result<Vec<VersionRow>, sqlx::Error> {
    let mut qb = QueryBuilder::<Any>::new(
        "SELECT submission_id, metric, region, period, department, domain, task_id, value, \
         accepted_micros FROM value_versions WHERE period IN (",
    );
    let mut list = qb.separated(", ");
    for p in periods {
        list.push_bind(p.as_str());
    }
    list.push_unseparated(")");
    qb.push(" AND region IN (");
    let mut list = qb.separated(", ");
    for r in regions {
        list.push_bind(r.as_str());
    }
    list.push_unseparated(")");
    match as_of {
        None => {
            qb.push(" AND valid_to IS NULL");
        }
        Some(t) => {
            qb.push(" AND valid_from <= ")
                .push_bind(t)
                .push(" AND (valid_to IS NULL OR valid_to > ")
                .push_bind(t)
                .push(")");
        }
    }
    numbered_as(&mut qb)?.fetch_all(&db.pool).await
}

/// The value key's columns in the order both verification streams sort by, compared byte by
/// byte as Rust compares strings (SQLite's default BINARY collation; `C` on PostgreSQL), so the
/// two streams can be merged in Rust. A literal for `concat!`, per database.
macro_rules! key_order {
    (sqlite) => {
        "metric, region, period, department, domain, task_id"
    };
    (postgres) => {
        "metric COLLATE \"C\", region COLLATE \"C\", period COLLATE \"C\", \
         department COLLATE \"C\", domain COLLATE \"C\", task_id COLLATE \"C\""
    };
}

/// A value key as a tuple that sorts like `key_order!`.
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
    let sql = match db.backend {
        Backend::Sqlite => concat!(
            "SELECT ",
            submission_columns!(),
            " FROM submissions WHERE id <= $1 ORDER BY ",
            key_order!(sqlite),
            ", id"
        ),
        Backend::Postgres => concat!(
            "SELECT ",
            submission_columns!(),
            " FROM submissions WHERE id <= $1 ORDER BY ",
            key_order!(postgres),
            ", id"
        ),
    };
    sqlx::query_as(sql).bind(last_id).fetch(&db.pool)
}

/// Every stored version that had begun by `until`, by value key, then start, then submission.
pub fn versions_by_key(db: &Db, until: i64) -> BoxStream<'_, Result<Version, sqlx::Error>> {
    let sql = match db.backend {
        Backend::Sqlite => concat!(
            "SELECT ",
            version_columns!(),
            " FROM value_versions WHERE valid_from <= $1 ORDER BY ",
            key_order!(sqlite),
            ", valid_from, submission_id"
        ),
        Backend::Postgres => concat!(
            "SELECT ",
            version_columns!(),
            " FROM value_versions WHERE valid_from <= $1 ORDER BY ",
            key_order!(postgres),
            ", valid_from, submission_id"
        ),
    };
    sqlx::query_as(sql).bind(until).fetch(&db.pool)
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
