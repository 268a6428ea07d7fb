//! The platform's store: one SQL database shared by the services, an SQLite file by default
//! (WAL, `synchronous=FULL`) or PostgreSQL when a URL names one.
//!
//! Queries are written once against sqlx's `Any` driver with `$n` placeholders, which both
//! databases accept; statements built at run time use sqlx's `QueryBuilder` and [`numbered`],
//! which gives them the same placeholders. Types are restricted to what `Any` carries on both
//! (i64, text, bytes):
//! booleans are i64 0/1 (an SQLite `bool` comes back as BIGINT through `Any`), times are i64
//! microseconds since the Unix epoch. Schemas differ where the databases
//! do (auto-increment, types), so each database has its own migrations folder with the same
//! versions. Each service owns its tables and queries; this crate owns connecting, migrating
//! and, behind the `testing` feature (tests only, never the production binary), the helpers
//! tests use to run against both databases.

pub mod reported;
#[cfg(feature = "testing")]
pub mod testing;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyArguments, AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::query::{Query, QueryAs};
use sqlx::{Any, AnyPool, Execute, Executor, FromRow, QueryBuilder};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Which database a store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database url must start with postgres://, postgresql:// or sqlite: (got `{0}`)")]
    BadUrl(String),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to the {backend} database: {source}")]
    Connect {
        backend: &'static str,
        source: sqlx::Error,
    },
    #[error("database schema name `{0}` must be 1-63 lowercase letters, digits or '_'")]
    BadSchema(String),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    #[error(
        "the store has not been seeded: start the registry (or `serve` with every service) first"
    )]
    NotSeeded,
}

impl StoreError {
    /// True for failures a retry may cure (connection lost, pool timed out, database
    /// restarting), as opposed to bugs and constraint violations.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Connect { .. } => true,
            StoreError::Query(e) => is_transient(e),
            _ => false,
        }
    }

    /// True when a write failed on a uniqueness constraint (a concurrent create won the race).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Query(e) if is_unique_violation(e))
    }
}

/// True when an sqlx error is a uniqueness constraint's refusal: PostgreSQL 23505; SQLite's
/// extended codes 1555 (primary key) and 2067 (unique).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("23505" | "1555" | "2067"))
        }
        _ => false,
    }
}

/// True when an sqlx error is about reaching the database rather than the query.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            // PostgreSQL: 08xxx connection exceptions, 57Pxx operator intervention (shutdown),
            // 40001/40P01 serialization failure and deadlock. SQLite: 5 BUSY, 6 LOCKED.
            let code = db.code().unwrap_or_default();
            code.starts_with("08")
                || code.starts_with("57P")
                || code == "40001"
                || code == "40P01"
                || code == "5"
                || code == "6"
        }
        _ => false,
    }
}

/// A connection pool to the store.
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    /// PostgreSQL only: a small native pool (same URL and schema) for bulk writes. The `Any`
    /// driver cannot bind arrays, so a group commit through it binds every value of every row
    /// as a parameter of its own; natively, one statement takes a whole column as one array
    /// (`INSERT ... SELECT * FROM UNNEST($1::bigint[], ...)`). Connects lazily; its
    /// connections carry the `application_name` [`BULK_APPLICATION_NAME`].
    pub bulk: Option<PgPool>,
    /// PostgreSQL only: a small native pool (same URL and schema) for the reads whose rows are
    /// many and hot: the values behind every aggregation. The `Any` driver copies each row
    /// into owned values and looks its columns up by name, which cost about three times what
    /// PostgreSQL spends on the query itself. Connects lazily; its connections carry the
    /// `application_name` [`READ_APPLICATION_NAME`].
    pub reads: Option<PgPool>,
    /// SQLite only: the ingestion writer's own pool of one connection ([`WRITER_PRAGMAS`]).
    /// Its big multi-row inserts are prepared once, on this connection, instead of on every
    /// connection of [`Db::pool`] the writer happened to take (they cost about 9 MiB across
    /// the pool), and its page cache stays warm from one group commit to the next: SQLite drops
    /// a connection's whole cache when another connection wrote since its last transaction,
    /// which is what every write on a connection of a shared pool found. Connects lazily.
    pub writer: Option<AnyPool>,
}

/// The PostgreSQL `application_name` of the native bulk-write connections (visible in
/// `pg_stat_activity`).
pub const BULK_APPLICATION_NAME: &str = "citycredit-bulk-writer";

/// Connections of the native bulk-write pool: the single writer uses two at a time (one group
/// committing while the next is prepared); a third covers a connection being replaced and the
/// write gate's reads for checked-only batches.
const BULK_CONNECTIONS: u32 = 3;

/// The PostgreSQL `application_name` of the native read connections.
pub const READ_APPLICATION_NAME: &str = "citycredit-reader";

/// Connections of the native read pool (beside the `Any` pool's `max_connections`): reads of
/// about a millisecond each, so a few serve every aggregation a process runs at once.
const READ_CONNECTIONS: u32 = 4;

/// The pragmas of every SQLite connection. WAL lets readers run beside the writer; FULL makes
/// every commit durable; the busy timeout queues writers instead of failing. Statement journals
/// (the undo of one statement inside a transaction, never read after a crash) in memory, not in
/// a temp file: they were 12 % of the writer's time (perf, batched ingest); one is at most the
/// pages one statement changes (the writer's statements insert at most 128 rows).
pub const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;";

/// The writer connection's ([`Db::writer`]) pragmas beyond [`SQLITE_PRAGMAS`] (the same
/// durability): a page cache of 8 MiB instead of SQLite's 2 MiB, as it is the only connection
/// that walks the indexes every group commit touches.
pub const WRITER_PRAGMAS: &str = "PRAGMA cache_size = -8192;";

/// How to reach the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `postgres://...` or `sqlite:...`; None means `citycredit.db` in `data_dir`.
    pub url: Option<String>,
    pub data_dir: std::path::PathBuf,
    pub max_connections: u32,
    /// How long a query waits for a pooled connection before failing (so calls fail fast when
    /// the database is down instead of hanging).
    pub acquire_timeout: Duration,
    /// PostgreSQL only: keep every table in this schema (created when missing), so several
    /// cities or test runs can share one database.
    pub schema: Option<String>,
}

impl Db {
    /// Begins a transaction that will write. On SQLite it takes the write lock at BEGIN
    /// (IMMEDIATE), where the busy timeout applies: a deferred transaction that reads first
    /// and then writes fails at once with "database is locked" when another writer holds the
    /// lock, as SQLite cannot wait there without risking a deadlock.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Connects (creating the SQLite file and its directory when needed) and runs migrations.
    pub async fn open(opts: &StoreOptions) -> Result<Db, StoreError> {
        sqlx::any::install_default_drivers();
        let url = match &opts.url {
            Some(url) => url.clone(),
            None => {
                std::fs::create_dir_all(&opts.data_dir).map_err(|source| StoreError::DataDir {
                    path: opts.data_dir.display().to_string(),
                    source,
                })?;
                sqlite_url(&opts.data_dir.join("citycredit.db"))
            }
        };
        if let Some(schema) = &opts.schema {
            if !valid_schema_name(schema) {
                return Err(StoreError::BadSchema(schema.clone()));
            }
            if url.starts_with("postgres") {
                let admin = Db::connect(&url, 1, opts.acquire_timeout, None).await?;
                // SQL-safe: an identifier cannot be bound; `valid_schema_name` (checked above)
                // allows only [a-z0-9_].
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
                )))
                .execute(&admin.pool)
                .await?;
                admin.pool.close().await;
            }
        }
        let db = Db::connect(
            &url,
            opts.max_connections,
            opts.acquire_timeout,
            opts.schema.clone(),
        )
        .await?;
        db.migrate().await?;
        Ok(db)
    }

    /// Connects without migrating. `search_path`, for PostgreSQL, confines every connection to
    /// one schema (tests use it for isolation).
    pub async fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
        search_path: Option<String>,
    ) -> Result<Db, StoreError> {
        sqlx::any::install_default_drivers();
        // The schema is spliced into `SET search_path` (identifiers cannot be bound).
        if let Some(schema) = &search_path
            && !valid_schema_name(schema)
        {
            return Err(StoreError::BadSchema(schema.clone()));
        }
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::BadUrl(redact(url)));
        };
        let connect_err = |source| StoreError::Connect {
            backend: backend.as_str(),
            source,
        };
        let mut url = url.to_owned();
        if backend == Backend::Sqlite && !url.contains("mode=") {
            url.push_str(if url.contains('?') {
                "&mode=rwc"
            } else {
                "?mode=rwc"
            });
        }
        let options = AnyConnectOptions::from_str(&url).map_err(connect_err)?;
        let native = |name, connections| {
            Self::native_pool(
                &url,
                acquire_timeout,
                search_path.clone(),
                name,
                connections,
            )
        };
        let (bulk, reads) = match backend {
            Backend::Postgres => (
                Some(native(BULK_APPLICATION_NAME, BULK_CONNECTIONS)?),
                Some(native(READ_APPLICATION_NAME, READ_CONNECTIONS)?),
            ),
            Backend::Sqlite => (None, None),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .after_connect(move |conn, _meta| {
                let search_path = search_path.clone();
                Box::pin(async move {
                    match backend {
                        Backend::Sqlite => {
                            conn.execute(SQLITE_PRAGMAS).await?;
                        }
                        Backend::Postgres => {
                            if let Some(schema) = search_path {
                                // SQL-safe: an identifier cannot be bound; `connect` checked it
                                // with `valid_schema_name` ([a-z0-9_] only).
                                conn.execute(sqlx::AssertSqlSafe(format!(
                                    "SET search_path TO \"{schema}\""
                                )))
                                .await?;
                            }
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await
            .map_err(connect_err)?;
        let writer = match backend {
            Backend::Sqlite => Some(Self::sqlite_writer_pool(options, acquire_timeout)),
            Backend::Postgres => None,
        };
        Ok(Db {
            pool,
            backend,
            bulk,
            reads,
            writer,
        })
    }

    /// The SQLite writer's pool of one connection (see [`Db::writer`]), connected lazily.
    fn sqlite_writer_pool(options: AnyConnectOptions, acquire_timeout: Duration) -> AnyPool {
        AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(acquire_timeout)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(SQLITE_PRAGMAS).await?;
                    conn.execute(WRITER_PRAGMAS).await?;
                    Ok(())
                })
            })
            .connect_lazy_with(options)
    }

    /// A native PostgreSQL pool of `connections` named `application_name` (see [`Db::bulk`]
    /// and [`Db::reads`]), connected lazily.
    fn native_pool(
        url: &str,
        acquire_timeout: Duration,
        search_path: Option<String>,
        application_name: &str,
        connections: u32,
    ) -> Result<PgPool, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|source| StoreError::Connect {
                backend: Backend::Postgres.as_str(),
                source,
            })?
            .application_name(application_name);
        Ok(PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(acquire_timeout)
            .after_connect(move |conn, _meta| {
                let search_path = search_path.clone();
                Box::pin(async move {
                    if let Some(schema) = search_path {
                        // SQL-safe: an identifier cannot be bound; `connect` checked it with
                        // `valid_schema_name` ([a-z0-9_] only).
                        conn.execute(sqlx::AssertSqlSafe(format!(
                            "SET search_path TO \"{schema}\""
                        )))
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(options))
    }

    /// Runs the embedded migrations of this backend.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// Closes every pool (waits for connections in use to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
        for native in [&self.bulk, &self.reads].into_iter().flatten() {
            native.close().await;
        }
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Reads a `store_meta` value.
    pub async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM store_meta WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Sets a `store_meta` value.
    pub async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO store_meta (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// A statement built with sqlx's `QueryBuilder`, ready to run on either database.
///
/// Under the `Any` driver, `QueryBuilder::push_bind` writes every placeholder as `?`: the
/// driver learns which database it talks to only when the query runs (launchbadge/sqlx#3000).
/// SQLite accepts `?`, PostgreSQL does not. This numbers them `$1, $2, ...`, which both accept
/// and which the static queries use. The SQL fragments pushed into a builder never contain `?`
/// themselves; should one ever do, the count no longer matches the bound values and this
/// returns an error instead of a statement with shifted parameters.
pub fn numbered(
    qb: &mut QueryBuilder<Any>,
) -> Result<Query<'static, Any, AnyArguments>, sqlx::Error> {
    let (sql, arguments) = numbered_parts(qb)?;
    Ok(sqlx::query_with(sql, arguments))
}

/// [`numbered`], for rows read into `T` by column name.
pub fn numbered_as<T>(
    qb: &mut QueryBuilder<Any>,
) -> Result<QueryAs<'static, Any, T, AnyArguments>, sqlx::Error>
where
    T: for<'r> FromRow<'r, AnyRow>,
{
    let (sql, arguments) = numbered_parts(qb)?;
    Ok(sqlx::query_as_with(sql, arguments))
}

fn numbered_parts(
    qb: &mut QueryBuilder<Any>,
) -> Result<(sqlx::AssertSqlSafe<String>, AnyArguments), sqlx::Error> {
    let mut query = qb.build();
    let arguments = query
        .take_arguments()
        .map_err(sqlx::Error::Encode)?
        .unwrap_or_default();
    let (sql, placeholders) = number_placeholders(query.sql().as_str());
    if placeholders != sqlx::Arguments::len(&arguments) {
        return Err(sqlx::Error::InvalidArgument(format!(
            "statement has {placeholders} placeholders for {} bound values",
            sqlx::Arguments::len(&arguments)
        )));
    }
    // SQL-safe: the text of a `QueryBuilder`, whose values are all bound; only its `?`
    // placeholders are rewritten, as `$n`.
    Ok((sqlx::AssertSqlSafe(sql), arguments))
}

/// `sql` with each `?` replaced by `$1`, `$2`, ... in order, and how many there were.
fn number_placeholders(sql: &str) -> (String, usize) {
    use std::fmt::Write;
    let mut out = String::with_capacity(sql.len() + sql.len() / 4);
    let mut n = 0usize;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            let _ = write!(out, "${n}");
        } else {
            out.push(c);
        }
    }
    (out, n)
}

/// Schema names are put into SQL text, so only plain identifiers are accepted.
pub fn valid_schema_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

/// An `sqlite:` URL for a file path.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// A database URL with any password removed, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Microseconds since the Unix epoch: how the store keeps instants (the core's clock).
pub use citycredit_core::clock::now_micros;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_builder_placeholders_are_numbered_for_both_databases() {
        let mut qb = QueryBuilder::<Any>::new("SELECT a FROM t WHERE b IN (");
        let mut list = qb.separated(", ");
        for v in ["x", "y", "z"] {
            list.push_bind(v);
        }
        list.push_unseparated(") AND c = ");
        qb.push_bind(7i64);
        let (sql, arguments) = numbered_parts(&mut qb).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sql.0, "SELECT a FROM t WHERE b IN ($1, $2, $3) AND c = $4");
        assert_eq!(sqlx::Arguments::len(&arguments), 4);

        // A `?` of its own in the SQL text would shift every parameter: refused.
        let mut qb = QueryBuilder::<Any>::new("SELECT '?' FROM t WHERE b = ");
        qb.push_bind("x");
        assert!(matches!(
            numbered_parts(&mut qb),
            Err(sqlx::Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact("sqlite:///x.db"), "sqlite:///x.db");
    }
}
