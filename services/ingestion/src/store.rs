//! The ingestion tables and their SQL. Reads are written once for sqlx `Any` (`$n`
//! placeholders, only i64 and text columns; statements of run-time shape, such as a filtered
//! listing, are built with sqlx's `QueryBuilder` and numbered by
//! [`citycredit_store::numbered`]; rows are read by column name with `FromRow`). The writer's
//! statements go through [`WriteConn`]: one statement per table per group commit with the rows
//! as PostgreSQL arrays (a native connection), or on SQLite multi-row `INSERT ... VALUES` of a
//! few fixed sizes with anonymous `?` binds. `submissions` is append-only; `value_versions` is derived from it in
//! the same transaction; `retractions` (the retraction that counts for each retracted
//! submission) is filled by a trigger in the statement that inserts the retraction row;
//! `idempotency` remembers keys; `chain_head` is the writer's one row.

use futures::TryStreamExt;
use futures::stream::BoxStream;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnection;
use sqlx::{Any, AnyConnection, Connection, Postgres, QueryBuilder, Transaction};

use citycredit_store::{Backend, Db, numbered_as};

/// The writer's connection. On PostgreSQL a native connection binds each column as one array
/// (`UNNEST`; the `Any` driver cannot bind arrays), one statement per table per group commit.
/// On SQLite the inserts are multi-row `VALUES` lists with anonymous `?` parameters
/// ([`sqlite_insert`]): sqlx binds a `$n` parameter by asking SQLite for its name, which walks
/// the statement's parameter list (n parameters cost O(n^2)), but a `?` has no name, so
/// binding is linear. They replaced one JSON text per table unpacked with `json_each`, which
/// cost SQLite a JSON parse of every row per column read (`->>`): a third of the SQLite
/// worker's time in the gateway's ingest (perf). The lookups by key still pass one JSON array.
pub enum WriteConn<'a> {
    Sqlite(&'a mut AnyConnection),
    Postgres(&'a mut PgConnection),
}

/// A pooled connection for the writer: [`Db::bulk`] on PostgreSQL, the `Any` pool on SQLite.
pub enum WritePooled {
    Sqlite(PoolConnection<Any>),
    Postgres(PoolConnection<Postgres>),
}

/// The writer's open transaction.
pub enum WriteTx<'c> {
    Sqlite(Transaction<'c, Any>),
    Postgres(Transaction<'c, Postgres>),
}

impl WritePooled {
    pub async fn acquire(db: &Db) -> Result<WritePooled, sqlx::Error> {
        Ok(match &db.bulk {
            Some(pg) => WritePooled::Postgres(pg.acquire().await?),
            None => WritePooled::Sqlite(db.pool.acquire().await?),
        })
    }

    /// Begins a transaction. SQLite's takes the write lock at BEGIN (IMMEDIATE), where the busy
    /// timeout applies: a deferred transaction that has read and then writes gets SQLITE_BUSY
    /// at once (no waiting) while another connection still holds the lock, e.g. the rollback
    /// of a failed attempt. PostgreSQL's writers are serialised by `chain_head`'s row lock
    /// ([`lock_head`]).
    pub async fn begin(&mut self) -> Result<WriteTx<'_>, sqlx::Error> {
        Ok(match self {
            WritePooled::Sqlite(c) => WriteTx::Sqlite(c.begin_with("BEGIN IMMEDIATE").await?),
            WritePooled::Postgres(c) => WriteTx::Postgres(c.begin().await?),
        })
    }

    /// The connection outside any transaction.
    pub fn conn(&mut self) -> WriteConn<'_> {
        match self {
            WritePooled::Sqlite(c) => WriteConn::Sqlite(c),
            WritePooled::Postgres(c) => WriteConn::Postgres(c),
        }
    }
}

impl WriteTx<'static> {
    /// Begins a transaction on a pooled connection it owns (given back to the pool when the
    /// transaction ends), so the writer can leave it committing while it prepares the next
    /// group on another connection (PostgreSQL). Same BEGIN as [`WritePooled::begin`]. On
    /// SQLite the connection is the writer's own ([`Db::writer`]: one connection, where the
    /// multi-row inserts are prepared once and the page cache stays warm between groups; the
    /// writer holds one transaction at a time there); the shared pool only when a `Db` has none.
    pub async fn begin_owned(db: &Db) -> Result<WriteTx<'static>, sqlx::Error> {
        Ok(match (&db.bulk, &db.writer) {
            (Some(pg), _) => WriteTx::Postgres(pg.begin().await?),
            (None, Some(writer)) => WriteTx::Sqlite(writer.begin_with("BEGIN IMMEDIATE").await?),
            (None, None) => WriteTx::Sqlite(db.pool.begin_with("BEGIN IMMEDIATE").await?),
        })
    }
}

impl WriteTx<'_> {
    pub fn conn(&mut self) -> WriteConn<'_> {
        match self {
            WriteTx::Sqlite(t) => WriteConn::Sqlite(t),
            WriteTx::Postgres(t) => WriteConn::Postgres(t),
        }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            WriteTx::Sqlite(t) => t.commit().await,
            WriteTx::Postgres(t) => t.commit().await,
        }
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            WriteTx::Sqlite(t) => t.rollback().await,
            WriteTx::Postgres(t) => t.rollback().await,
        }
    }
}

/// Runs `$body` with `$c` bound to the connection of either database (a statement whose text
/// both accept; each arm is type-checked for its own driver).
macro_rules! on_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            WriteConn::Sqlite(inner) => {
                let $c = &mut **inner;
                $body
            }
            WriteConn::Postgres(inner) => {
                let $c = &mut **inner;
                $body
            }
        }
    };
}

fn json_texts(items: &[String]) -> Result<String, sqlx::Error> {
    serde_json::to_string(items).map_err(json_error)
}

fn json_ints(items: &[i64]) -> Result<String, sqlx::Error> {
    serde_json::to_string(items).map_err(json_error)
}

fn json_error(e: impl std::error::Error + Send + Sync + 'static) -> sqlx::Error {
    sqlx::Error::Encode(Box::new(e))
}

/// Rows per multi-row INSERT on SQLite: a group's rows go in statements of 128, then at most
/// one of each smaller power of two, so a table has 8 statement texts (prepared once, on the
/// writer's connection [`Db::writer`], and kept in its sqlx statement cache) and a group of n rows costs n / 128 + 7
/// statements at most. 128 rows of `submissions` bind 2,304 parameters (SQLite allows 32,766).
const SQLITE_CHUNKS: [usize; 8] = [128, 64, 32, 16, 8, 4, 2, 1];

/// One table's multi-row INSERT on SQLite: `head`, then `VALUES (?, ...), ...` with `columns`
/// parameters a row, then `tail`; the text of each size of [`SQLITE_CHUNKS`] built once.
struct SqliteInsert {
    head: &'static str,
    columns: usize,
    tail: &'static str,
    texts: std::sync::OnceLock<Vec<String>>,
}

impl SqliteInsert {
    const fn new(head: &'static str, columns: usize, tail: &'static str) -> SqliteInsert {
        SqliteInsert {
            head,
            columns,
            tail,
            texts: std::sync::OnceLock::new(),
        }
    }

    /// The statement for the `chunk`-th size of [`SQLITE_CHUNKS`].
    fn sql(&'static self, chunk: usize) -> &'static str {
        let texts = self.texts.get_or_init(|| {
            let row = format!("({})", vec!["?"; self.columns].join(", "));
            SQLITE_CHUNKS
                .iter()
                .map(|&rows| {
                    format!(
                        "{} VALUES {}{}",
                        self.head,
                        vec![row.as_str(); rows].join(", "),
                        self.tail
                    )
                })
                .collect()
        });
        &texts[chunk]
    }
}

type AnyQuery = sqlx::query::Query<'static, Any, sqlx::any::AnyArguments>;

/// Inserts `rows` with `insert`'s statements, `bind` binding one row's columns in order.
async fn sqlite_insert<T>(
    c: &mut AnyConnection,
    insert: &'static SqliteInsert,
    rows: &[T],
    bind: impl Fn(AnyQuery, &T) -> AnyQuery,
) -> Result<(), sqlx::Error> {
    let mut at = 0;
    for (chunk, &size) in SQLITE_CHUNKS.iter().enumerate() {
        while rows.len() - at >= size {
            let mut q = sqlx::query(insert.sql(chunk));
            for row in &rows[at..at + size] {
                q = bind(q, row);
            }
            q.execute(&mut *c).await?;
            at += size;
        }
    }
    Ok(())
}

/// Runs one statement that binds (i64, i64, text), on either database (the write gate marks a
/// lock exception used with it); returns the rows it changed.
pub async fn on_conn_execute(
    conn: &mut WriteConn<'_>,
    sql: &'static str,
    a: i64,
    b: i64,
    c: &str,
) -> Result<u64, sqlx::Error> {
    Ok(on_conn!(conn, x => {
        sqlx::query(sql)
            .bind(a)
            .bind(b)
            .bind(c)
            .execute(x)
            .await?
            .rows_affected()
    }))
}

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

static SQLITE_SUBMISSIONS: SqliteInsert = SqliteInsert::new(
    concat!("INSERT INTO submissions (", submission_columns!(), ")"),
    18,
    "",
);

pub async fn insert_submissions(
    conn: &mut WriteConn<'_>,
    rows: &[StoredRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    match conn {
        WriteConn::Sqlite(c) => {
            sqlite_insert(c, &SQLITE_SUBMISSIONS, rows, |q, r| {
                q.bind(r.id)
                    .bind(r.principal.clone())
                    .bind(r.department.clone())
                    .bind(r.region.clone())
                    .bind(r.period.clone())
                    .bind(r.metric.clone())
                    .bind(r.domain.clone())
                    .bind(r.task_id.clone())
                    .bind(r.value.clone())
                    .bind(r.evidence_uri.clone())
                    .bind(r.note.clone())
                    .bind(r.idempotency_key.clone())
                    .bind(r.accept_micros)
                    .bind(r.kind.clone())
                    .bind(r.retracts)
                    .bind(r.reason.clone())
                    .bind(r.prev_hash.clone())
                    .bind(r.hash.clone())
            })
            .await?;
        }
        WriteConn::Postgres(c) => {
            let text = |f: fn(&StoredRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
            sqlx::query(concat!(
                "INSERT INTO submissions (",
                submission_columns!(),
                ") SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], \
                 $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], \
                 $11::text[], $12::text[], $13::bigint[], $14::text[], $15::bigint[], \
                 $16::text[], $17::text[], $18::text[])"
            ))
            .bind(rows.iter().map(|r| r.id).collect::<Vec<i64>>())
            .bind(text(|r| &r.principal))
            .bind(text(|r| &r.department))
            .bind(text(|r| &r.region))
            .bind(text(|r| &r.period))
            .bind(text(|r| &r.metric))
            .bind(text(|r| &r.domain))
            .bind(text(|r| &r.task_id))
            .bind(text(|r| &r.value))
            .bind(text(|r| &r.evidence_uri))
            .bind(text(|r| &r.note))
            .bind(text(|r| &r.idempotency_key))
            .bind(rows.iter().map(|r| r.accept_micros).collect::<Vec<i64>>())
            .bind(text(|r| &r.kind))
            .bind(
                rows.iter()
                    .map(|r| r.retracts)
                    .collect::<Vec<Option<i64>>>(),
            )
            .bind(text(|r| &r.reason))
            .bind(text(|r| &r.prev_hash))
            .bind(text(|r| &r.hash))
            .execute(&mut **c)
            .await?;
        }
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

impl Version {
    /// The version as aggregation reads it.
    pub fn into_row(self) -> VersionRow {
        VersionRow {
            submission_id: self.submission_id,
            metric: self.metric,
            region: self.region,
            period: self.period,
            department: self.department,
            domain: self.domain,
            task_id: self.task_id,
            value: self.value,
            accepted_micros: self.accepted_micros,
        }
    }
}

/// Every column of `value_versions`, as a literal for `concat!`.
macro_rules! version_columns {
    () => {
        "submission_id, vkey, metric, region, period, department, domain, task_id, value, \
         valid_from, valid_to, accepted_micros"
    };
}

static SQLITE_VERSIONS: SqliteInsert = SqliteInsert::new(
    concat!("INSERT INTO value_versions (", version_columns!(), ")"),
    12,
    "",
);
static SQLITE_VALUE_KEYS: SqliteInsert = SqliteInsert::new(
    "INSERT INTO value_keys (vkey, period, region)",
    3,
    " ON CONFLICT (vkey) DO NOTHING",
);

/// Inserts `versions` into `value_versions`; their keys are listed in `value_keys` by
/// [`insert_value_keys`].
pub async fn insert_versions(
    conn: &mut WriteConn<'_>,
    versions: &[Version],
) -> Result<(), sqlx::Error> {
    if versions.is_empty() {
        return Ok(());
    }
    match conn {
        WriteConn::Sqlite(c) => {
            sqlite_insert(c, &SQLITE_VERSIONS, versions, |q, v| {
                q.bind(v.submission_id)
                    .bind(v.vkey.clone())
                    .bind(v.metric.clone())
                    .bind(v.region.clone())
                    .bind(v.period.clone())
                    .bind(v.department.clone())
                    .bind(v.domain.clone())
                    .bind(v.task_id.clone())
                    .bind(v.value.clone())
                    .bind(v.valid_from)
                    .bind(v.valid_to)
                    .bind(v.accepted_micros)
            })
            .await?;
        }
        WriteConn::Postgres(c) => {
            let text = |f: fn(&Version) -> &str| versions.iter().map(f).collect::<Vec<&str>>();
            sqlx::query(concat!(
                "INSERT INTO value_versions (",
                version_columns!(),
                ") SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], \
                 $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], \
                 $11::bigint[], $12::bigint[])"
            ))
            .bind(
                versions
                    .iter()
                    .map(|v| v.submission_id)
                    .collect::<Vec<i64>>(),
            )
            .bind(text(|v| &v.vkey))
            .bind(text(|v| &v.metric))
            .bind(text(|v| &v.region))
            .bind(text(|v| &v.period))
            .bind(text(|v| &v.department))
            .bind(text(|v| &v.domain))
            .bind(text(|v| &v.task_id))
            .bind(text(|v| &v.value))
            .bind(versions.iter().map(|v| v.valid_from).collect::<Vec<i64>>())
            .bind(
                versions
                    .iter()
                    .map(|v| v.valid_to)
                    .collect::<Vec<Option<i64>>>(),
            )
            .bind(
                versions
                    .iter()
                    .map(|v| v.accepted_micros)
                    .collect::<Vec<i64>>(),
            )
            .execute(&mut **c)
            .await?;
        }
    }
    Ok(())
}

/// Lists the keys of `versions` in `value_keys` (a key already listed is left as it is). The
/// writer passes only the versions of keys that had no current version: a key is listed with
/// its first version and never removed, so a key with a current version is listed already.
pub async fn insert_value_keys(
    conn: &mut WriteConn<'_>,
    versions: &[&Version],
) -> Result<(), sqlx::Error> {
    if versions.is_empty() {
        return Ok(());
    }
    match conn {
        WriteConn::Sqlite(c) => {
            sqlite_insert(c, &SQLITE_VALUE_KEYS, versions, |q, v| {
                q.bind(v.vkey.clone())
                    .bind(v.period.clone())
                    .bind(v.region.clone())
            })
            .await?;
        }
        WriteConn::Postgres(c) => {
            let text =
                |f: fn(&Version) -> &str| versions.iter().map(|v| f(v)).collect::<Vec<&str>>();
            sqlx::query(
                "INSERT INTO value_keys (vkey, period, region) \
                 SELECT DISTINCT * FROM UNNEST($1::text[], $2::text[], $3::text[]) \
                 ON CONFLICT (vkey) DO NOTHING",
            )
            .bind(text(|v| &v.vkey))
            .bind(text(|v| &v.period))
            .bind(text(|v| &v.region))
            .execute(&mut **c)
            .await?;
        }
    }
    Ok(())
}

/// Tells PostgreSQL listeners on `channel` (the change feed of other processes).
pub async fn notify(
    conn: &mut WriteConn<'_>,
    channel: &str,
    payload: &str,
) -> Result<(), sqlx::Error> {
    on_conn!(conn, c => {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(c)
            .await?;
    });
    Ok(())
}

/// Closes the current versions of these submissions at `at`.
pub async fn close_versions(
    conn: &mut WriteConn<'_>,
    submission_ids: &[i64],
    at: i64,
) -> Result<(), sqlx::Error> {
    if submission_ids.is_empty() {
        return Ok(());
    }
    match conn {
        WriteConn::Sqlite(c) => {
            sqlx::query(
                "UPDATE value_versions SET valid_to = $1 WHERE valid_to IS NULL \
                 AND submission_id IN (SELECT value FROM json_each($2))",
            )
            .bind(at)
            .bind(json_ints(submission_ids)?)
            .execute(&mut **c)
            .await?;
        }
        WriteConn::Postgres(c) => {
            // A join with the ids, not `= ANY($2)`: see [`current_of_keys`].
            sqlx::query(
                "UPDATE value_versions v SET valid_to = $1 FROM UNNEST($2::bigint[]) AS c(id) \
                 WHERE v.submission_id = c.id AND v.valid_to IS NULL",
            )
            .bind(at)
            .bind(submission_ids)
            .execute(&mut **c)
            .await?;
        }
    }
    Ok(())
}

/// vkey -> current submission id, for the given keys.
pub async fn current_of_keys(
    conn: &mut WriteConn<'_>,
    keys: &[String],
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    match conn {
        WriteConn::Sqlite(c) => {
            sqlx::query_as(
                "SELECT vkey, submission_id FROM value_versions WHERE valid_to IS NULL \
                 AND vkey IN (SELECT value FROM json_each($1))",
            )
            .bind(json_texts(keys)?)
            .fetch_all(&mut **c)
            .await
        }
        WriteConn::Postgres(c) => {
            // A join with the keys, one index lookup each: with `vkey = ANY($1)` and a group's
            // hundreds of keys PostgreSQL 15 plans a sequential scan of the whole history
            // (measured: 14 ms at 100,000 versions against 0.6 ms for the join, growing with
            // the history).
            sqlx::query_as(
                "SELECT v.vkey, v.submission_id FROM UNNEST($1::text[]) AS k(vkey) \
                 JOIN value_versions v ON v.vkey = k.vkey AND v.valid_to IS NULL",
            )
            .bind(keys)
            .fetch_all(&mut **c)
            .await
        }
    }
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

/// Idempotency keys are scoped per principal: (principal, key) as one unambiguous text.
pub fn scoped_key(principal: &str, key: &str) -> String {
    format!("{}:{principal}{key}", principal.len())
}

pub async fn idempotency_records(
    conn: &mut WriteConn<'_>,
    scoped_keys: &[String],
) -> Result<Vec<IdempotencyRecord>, sqlx::Error> {
    if scoped_keys.is_empty() {
        return Ok(Vec::new());
    }
    match conn {
        WriteConn::Sqlite(c) => {
            sqlx::query_as(concat!(
                "SELECT ",
                idempotency_columns!(),
                " FROM idempotency WHERE scoped_key IN (SELECT value FROM json_each($1))"
            ))
            .bind(json_texts(scoped_keys)?)
            .fetch_all(&mut **c)
            .await
        }
        WriteConn::Postgres(c) => {
            // A join with the keys, not `= ANY($1)`: see [`current_of_keys`].
            sqlx::query_as(
                "SELECT i.scoped_key, i.fingerprint, i.first_id, i.last_id, i.accept_micros \
                 FROM UNNEST($1::text[]) AS k(scoped_key) \
                 JOIN idempotency i ON i.scoped_key = k.scoped_key",
            )
            .bind(scoped_keys)
            .fetch_all(&mut **c)
            .await
        }
    }
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

static SQLITE_IDEMPOTENCY: SqliteInsert = SqliteInsert::new(
    concat!("INSERT INTO idempotency (", idempotency_columns!(), ")"),
    5,
    "",
);

pub async fn insert_idempotency(
    conn: &mut WriteConn<'_>,
    records: &[IdempotencyRecord],
) -> Result<(), sqlx::Error> {
    if records.is_empty() {
        return Ok(());
    }
    match conn {
        WriteConn::Sqlite(c) => {
            sqlite_insert(c, &SQLITE_IDEMPOTENCY, records, |q, r| {
                q.bind(r.scoped_key.clone())
                    .bind(r.fingerprint.clone())
                    .bind(r.first_id)
                    .bind(r.last_id)
                    .bind(r.accept_micros)
            })
            .await?;
        }
        WriteConn::Postgres(c) => {
            sqlx::query(concat!(
                "INSERT INTO idempotency (",
                idempotency_columns!(),
                ") SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], \
                 $5::bigint[])"
            ))
            .bind(
                records
                    .iter()
                    .map(|r| r.scoped_key.as_str())
                    .collect::<Vec<&str>>(),
            )
            .bind(
                records
                    .iter()
                    .map(|r| r.fingerprint.as_str())
                    .collect::<Vec<&str>>(),
            )
            .bind(records.iter().map(|r| r.first_id).collect::<Vec<i64>>())
            .bind(records.iter().map(|r| r.last_id).collect::<Vec<i64>>())
            .bind(
                records
                    .iter()
                    .map(|r| r.accept_micros)
                    .collect::<Vec<i64>>(),
            )
            .execute(&mut **c)
            .await?;
        }
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

pub async fn lock_head(conn: &mut WriteConn<'_>) -> Result<Head, sqlx::Error> {
    match conn {
        // SQLite: the transaction began IMMEDIATE, so it holds the write lock already.
        WriteConn::Sqlite(c) => {
            sqlx::query_as("SELECT last_id, last_hash, last_micros FROM chain_head WHERE id = 1")
                .fetch_one(&mut **c)
                .await
        }
        WriteConn::Postgres(c) => {
            sqlx::query_as(
                "SELECT last_id, last_hash, last_micros FROM chain_head WHERE id = 1 FOR UPDATE",
            )
            .fetch_one(&mut **c)
            .await
        }
    }
}

pub async fn head(db: &Db) -> Result<Head, sqlx::Error> {
    sqlx::query_as("SELECT last_id, last_hash, last_micros FROM chain_head WHERE id = 1")
        .fetch_one(&db.pool)
        .await
}

pub async fn set_head(conn: &mut WriteConn<'_>, head: &Head) -> Result<(), sqlx::Error> {
    const SQL: &str =
        "UPDATE chain_head SET last_id = $1, last_hash = $2, last_micros = $3 WHERE id = 1";
    on_conn!(conn, c => {
        sqlx::query(SQL)
            .bind(head.last_id)
            .bind(head.last_hash.as_str())
            .bind(head.last_micros)
            .execute(c)
            .await?;
    });
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
    conn: &mut WriteConn<'_>,
    targets: &[i64],
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    match conn {
        WriteConn::Sqlite(c) => {
            sqlx::query_as(
                "SELECT target, by_id FROM retractions \
                 WHERE target IN (SELECT value FROM json_each($1))",
            )
            .bind(json_ints(targets)?)
            .fetch_all(&mut **c)
            .await
        }
        WriteConn::Postgres(c) => {
            sqlx::query_as(
                "SELECT r.target, r.by_id FROM UNNEST($1::bigint[]) AS t(id) \
                 JOIN retractions r ON r.target = t.id",
            )
            .bind(targets)
            .fetch_all(&mut **c)
            .await
        }
    }
}

/// The latest value of `of`'s key stored before it that is not retracted (in the store, or
/// by this transaction: `retracted`): what becomes current again when `of` is retracted.
pub async fn previous_value(
    conn: &mut WriteConn<'_>,
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
    const SQL: &str = concat!(
        "SELECT ",
        submission_columns!(),
        " FROM submissions s WHERE metric = $1 AND region = $2 \
             AND period = $3 AND department = $4 AND domain = $5 AND task_id = $6 \
             AND kind = $7 AND id < $8 \
             AND NOT EXISTS (SELECT 1 FROM retractions r WHERE r.target = s.id) \
             ORDER BY id DESC LIMIT ",
        page!()
    );
    let mut before = of.id;
    loop {
        let rows: Vec<StoredRow> = on_conn!(conn, c => sqlx::query_as(SQL)
        .bind(of.metric.as_str())
        .bind(of.region.as_str())
        .bind(of.period.as_str())
        .bind(of.department.as_str())
        .bind(of.domain.as_str())
        .bind(of.task_id.as_str())
        .bind(KIND_VALUE)
        .bind(before)
        .fetch_all(c)
        .await?);
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

/// A value key, borrowed: (metric, region, period, department, domain, task_id).
pub type KeyRef<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, &'a str);

impl VersionRow {
    /// The row's value key (one current version per key).
    pub fn key(&self) -> KeyRef<'_> {
        (
            &self.metric,
            &self.region,
            &self.period,
            &self.department,
            &self.domain,
            &self.task_id,
        )
    }
}

/// The versions valid for any of `periods` at `regions`: current ones, or those valid at
/// `as_of`. Aggregation passes every period whose values can reach the one asked for
/// (`Period::reached_by`: at most 20), which the `(period, region)` indexes serve.
///
/// As of `t`, each key of `value_keys` at those periods and regions takes its latest version
/// with `valid_from <= t` (one probe of `(vkey, valid_from, submission_id)`), kept when still
/// open at `t`: a key's intervals never overlap (a new version closes the old one as it opens,
/// a retraction closes without a successor; two opened at one instant order by submission, the
/// first closed at once), so that version is the one valid at `t` if any is. The cost is one
/// index lookup per key, not a walk over every version of those periods and regions.
pub async fn versions(
    db: &Db,
    regions: &[String],
    periods: &[String],
    as_of: Option<i64>,
) -> Result<Vec<VersionRow>, sqlx::Error> {
    // The same statement either way; on PostgreSQL the native pool decodes the rows.
    if let Some(reads) = &db.reads {
        let mut qb = QueryBuilder::<Postgres>::new("");
        push_versions(&mut qb, regions, periods, as_of);
        return qb.build_query_as().fetch_all(reads).await;
    }
    let mut qb = QueryBuilder::<Any>::new("");
    push_versions(&mut qb, regions, periods, as_of);
    numbered_as(&mut qb)?.fetch_all(&db.pool).await
}

/// Binds each of `items`, separated by commas, then pushes `close` (the end of an `IN` list).
fn push_list<'a, DB>(qb: &mut QueryBuilder<DB>, items: &'a [String], close: &str)
where
    DB: sqlx::Database,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut list = qb.separated(", ");
    for item in items {
        list.push_bind(item.as_str());
    }
    list.push_unseparated(close);
}

/// The statement of [`versions`].
fn push_versions<'a, DB>(
    qb: &mut QueryBuilder<DB>,
    regions: &'a [String],
    periods: &'a [String],
    as_of: Option<i64>,
) where
    DB: sqlx::Database,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    match as_of {
        None => {
            qb.push(
                "SELECT submission_id, metric, region, period, department, domain, task_id, \
                 value, accepted_micros FROM value_versions WHERE valid_to IS NULL AND period IN (",
            );
        }
        Some(t) => {
            qb.push(
                "SELECT v.submission_id, v.metric, v.region, v.period, v.department, v.domain, \
                 v.task_id, v.value, v.accepted_micros FROM value_keys k \
                 JOIN value_versions v ON v.submission_id = (\
                 SELECT w.submission_id FROM value_versions w WHERE w.vkey = k.vkey \
                 AND w.valid_from <= ",
            )
            .push_bind(t)
            .push(
                " ORDER BY w.valid_from DESC, w.submission_id DESC LIMIT 1) \
                 AND v.valid_from <= ",
            )
            // A submission an undo reopened has a second version: only the one opened by t.
            .push_bind(t)
            .push(" WHERE (v.valid_to IS NULL OR v.valid_to > ")
            .push_bind(t)
            .push(") AND k.period IN (");
        }
    }
    push_list(qb, periods, ")");
    qb.push(match as_of {
        None => " AND region IN (",
        Some(_) => " AND k.region IN (",
    });
    push_list(qb, regions, ")");
}

/// A version closed after an instant, as [`closed_after`] reads it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Closed {
    #[sqlx(flatten)]
    pub version: VersionRow,
    /// When the version became current (later than its submission's accept time for a value
    /// that an undo reopened).
    pub valid_from: i64,
}

/// What [`closed_after`] found.
#[derive(Debug, Default)]
pub struct ClosedAfter {
    /// The versions closed after `t` at the periods and regions asked (none read when there are
    /// more than the limit everywhere).
    pub versions: Vec<Closed>,
    /// The versions closed after `t` everywhere, counted up to one past the limit.
    pub scanned: usize,
}

/// The versions at `periods` and `regions` closed after `t`, when no more than `limit` were
/// closed after `t` anywhere. Two range scans of `value_versions_closed`, each bounded by
/// `limit`: one counts the index entries after `t` (up to one past the limit), the other, only
/// when the count is within it and not 0, reads the versions asked for. A count past the limit is
/// `scanned`, with no versions read.
///
/// One statement that counted the scan with a window function beside the rows cost 2.6 times
/// as much on SQLite (the statements alone: 44.6 against 17.7 ms for 9,000 rows of a synthetic
/// store) and held every row on PostgreSQL to count them (about 6 of 11.9 ms at 9,340 rows). In
/// the bench (1 M submissions, 9,340 versions closed after t) the scan took p50 96 ms that way
/// and 69 ms this way on SQLite, 15.8 and 12.6 ms on PostgreSQL.
pub async fn closed_after(
    db: &Db,
    regions: &[String],
    periods: &[String],
    t: i64,
    limit: usize,
) -> Result<ClosedAfter, sqlx::Error> {
    const COUNT: &str = "SELECT COUNT(*) FROM (SELECT 1 FROM value_versions WHERE valid_to > $1 \
                         ORDER BY valid_to LIMIT $2) AS c";
    let over = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
    let counted: i64 = match &db.reads {
        Some(reads) => {
            sqlx::query_scalar(COUNT)
                .bind(t)
                .bind(over)
                .fetch_one(reads)
                .await?
        }
        None => {
            sqlx::query_scalar(COUNT)
                .bind(t)
                .bind(over)
                .fetch_one(&db.pool)
                .await?
        }
    };
    let scanned = usize::try_from(counted).unwrap_or(usize::MAX);
    // Nothing closed after `t` (the usual instant, just before now): no second round trip.
    if scanned == 0 || scanned > limit {
        return Ok(ClosedAfter {
            versions: Vec::new(),
            scanned,
        });
    }
    // Bounded too: commits after the count may have closed more.
    let versions = if let Some(reads) = &db.reads {
        let mut qb = QueryBuilder::<Postgres>::new("");
        push_closed_after(&mut qb, regions, periods, t, over);
        qb.build_query_as().fetch_all(reads).await?
    } else {
        let mut qb = QueryBuilder::<Any>::new("");
        push_closed_after(&mut qb, regions, periods, t, over);
        numbered_as(&mut qb)?.fetch_all(&db.pool).await?
    };
    Ok(ClosedAfter {
        scanned: scanned.max(versions.len()),
        versions,
    })
}

/// The statement of [`closed_after`] that reads the versions: those closed after `t` at the
/// periods and regions asked, in the order they were closed (which the partial index gives),
/// at most `limit`.
fn push_closed_after<'a, DB>(
    qb: &mut QueryBuilder<DB>,
    regions: &'a [String],
    periods: &'a [String],
    t: i64,
    limit: i64,
) where
    DB: sqlx::Database,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    qb.push(
        "SELECT submission_id, metric, region, period, department, domain, task_id, value, \
         accepted_micros, valid_from FROM value_versions WHERE valid_to > ",
    )
    .push_bind(t)
    .push(" AND period IN (");
    push_list(qb, periods, ") AND region IN (");
    push_list(qb, regions, ") ORDER BY valid_to LIMIT ");
    qb.push_bind(limit);
}

/// (department, region, period) of every APPROVED sign-off at `regions` for a period of one
/// of `years` (the review service's table; read for approved-only figures and each source's
/// approval: a part that can cover a value reaching period P lies in P's year, the year before
/// or the year after).
pub async fn approved_parts(
    db: &Db,
    regions: &[String],
    years: &[u16],
) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    if regions.is_empty() || years.is_empty() {
        return Ok(Vec::new());
    }
    let patterns: Vec<String> = years.iter().map(|y| format!("{y:04}%")).collect();
    // Read with every aggregation: on PostgreSQL on the native pool, as `versions` is.
    if let Some(reads) = &db.reads {
        let mut qb = QueryBuilder::<Postgres>::new("");
        push_approved_parts(&mut qb, regions, &patterns);
        return qb.build_query_as().fetch_all(reads).await;
    }
    let mut qb = QueryBuilder::<Any>::new("");
    push_approved_parts(&mut qb, regions, &patterns);
    numbered_as(&mut qb)?.fetch_all(&db.pool).await
}

/// The statement of [`approved_parts`] (`patterns`: `LIKE` patterns of the years).
fn push_approved_parts<'a, DB>(
    qb: &mut QueryBuilder<DB>,
    regions: &'a [String],
    patterns: &'a [String],
) where
    DB: sqlx::Database,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    qb.push(
        "SELECT department_code, region, period FROM review_signoffs \
         WHERE state = 'APPROVED' AND region IN (",
    );
    push_list(qb, regions, ") AND (");
    let mut any = qb.separated(" OR ");
    for p in patterns {
        any.push("period LIKE ").push_bind_unseparated(p.as_str());
    }
    any.push_unseparated(")");
}

/// The lowest submission id among value versions whose key `value_keys` lacks or lists with
/// another period or region: an as_of read would skip such a key (`audit_chain`).
pub async fn first_version_without_key(db: &Db) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT MIN(v.submission_id) FROM value_versions v \
         LEFT JOIN value_keys k ON k.vkey = v.vkey \
         WHERE k.vkey IS NULL OR k.period <> v.period OR k.region <> v.region",
    )
    .fetch_one(&db.pool)
    .await
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
