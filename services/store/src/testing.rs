//! Stores for tests: a fresh SQLite file, or a fresh schema of its own on the PostgreSQL server
//! that `DATABASE_URL` names, so tests can run in parallel and side by side on both databases.
//!
//! Nothing here skips. Whether a PostgreSQL test runs is decided when it is built: the
//! `citycredit-tests` crate declares such tests with `both_databases!` or `postgres_only!`,
//! which libtest reports as ignored, with the reason, when `DATABASE_URL` was unset at build
//! time. A test that asks for PostgreSQL here without a usable `DATABASE_URL` fails.

use std::ops::Deref;
use std::time::Duration;

use rand::Rng;

use super::{Backend, Db, sqlite_url};

/// A migrated store that cleans itself up.
pub struct TestDb {
    db: Db,
    /// Keeps the SQLite directory alive.
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL schema to drop at the end.
    schema: Option<(String, String)>,
}

impl TestDb {
    pub fn name(&self) -> &'static str {
        self.db.backend.as_str()
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The URL and schema for a second process (or a restarted server) to reach the same
    /// database.
    pub fn postgres_schema(&self) -> Option<(&str, &str)> {
        self.schema.as_ref().map(|(u, s)| (u.as_str(), s.as_str()))
    }
}

impl Deref for TestDb {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.db
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((url, schema)) = self.schema.take() {
            drop_schema(&url, &schema);
        }
    }
}

/// How long the drop of a test's schema waits for a lock before it ends the sessions that hold
/// one, and how many times it tries.
const DROP_LOCK_WAIT: &str = "2s";
const DROP_TRIES: usize = 3;

/// Drops a test's PostgreSQL `schema`, best effort and bounded, on a thread of its own (`Drop`
/// cannot await). Blocks the caller until it is done.
///
/// The caller is usually a test's `#[tokio::test]` runtime, with one thread: while this blocks it,
/// the test's own server (a task on that runtime) cannot run, so a transaction it left open keeps
/// its locks until this returns. An unbounded `DROP SCHEMA` waited for them for ever (a CI run
/// hung for 90 minutes). So the drop waits [`DROP_LOCK_WAIT`] for its locks; if they do not
/// come, it ends the sessions holding locks in this schema (only the test's own) and tries again,
/// [`DROP_TRIES`] times in all.
pub fn drop_schema(url: &str, schema: &str) {
    let (url, schema) = (url.to_owned(), schema.to_owned());
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            if let Err(e) = drop_schema_now(&url, &schema).await {
                eprintln!("test schema {schema} left behind: {e}");
            }
        });
    })
    .join();
}

async fn drop_schema_now(url: &str, schema: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection as _;
    use std::str::FromStr as _;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::postgres::PgConnection::connect_with(&options),
    )
    .await
    .map_err(|_| sqlx::Error::PoolTimedOut)??;
    // SQL-safe: a constant.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET lock_timeout = '{DROP_LOCK_WAIT}'"
    )))
    .execute(&mut conn)
    .await?;
    let mut last = None;
    for _ in 0..DROP_TRIES {
        // SQL-safe: a schema name this crate or the tests crate generated ([a-z0-9_]).
        let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        match sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
        {
            Ok(_) => {
                let _ = conn.close().await;
                return Ok(());
            }
            Err(e) => {
                let lock_wait = e
                    .as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|c| c == "55P03");
                if !lock_wait {
                    return Err(e);
                }
                last = Some(e);
                // The sessions holding locks on the schema's relations: the test's own server,
                // stopped mid-transaction.
                sqlx::query(
                    "SELECT pg_terminate_backend(l.pid) FROM (SELECT DISTINCT l.pid \
                     FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND l.pid <> pg_backend_pid()) l",
                )
                .bind(schema)
                .execute(&mut conn)
                .await?;
            }
        }
    }
    Err(last.unwrap_or(sqlx::Error::PoolTimedOut))
}

/// A migrated SQLite store in a temporary directory.
pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let url = sqlite_url(&dir.path().join("test.db"));
    let db = Db::connect(&url, 8, Duration::from_secs(10), None)
        .await
        .unwrap_or_else(|e| panic!("sqlite: {e}"));
    db.migrate()
        .await
        .unwrap_or_else(|e| panic!("sqlite migrate: {e}"));
    TestDb {
        db,
        _dir: Some(dir),
        schema: None,
    }
}

/// The PostgreSQL server of `DATABASE_URL`. Panics when it is unset, names another database,
/// or does not accept connections: a test that was meant to run on PostgreSQL must fail, not
/// pass on nothing, and fail at once with the reason rather than after its own timeouts.
pub fn postgres_url() -> String {
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => url,
        Ok(_) => panic!("this test runs on PostgreSQL: DATABASE_URL must be a postgres:// URL"),
        Err(_) => panic!("this test runs on PostgreSQL: set DATABASE_URL=postgres://..."),
    };
    // Once per test process: every PostgreSQL test asks.
    static REACHABLE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    if let Err(why) = REACHABLE.get_or_init(|| reachable(&url)) {
        panic!(
            "DATABASE_URL is set but PostgreSQL is unreachable ({why}): start it, or unset \
             DATABASE_URL to run only the SQLite tests (the PostgreSQL ones are then reported \
             as ignored)"
        );
    }
    url
}

/// Whether the server of a PostgreSQL URL accepts TCP connections (a Unix socket is left to
/// the driver).
fn reachable(url: &str) -> Result<(), String> {
    use std::net::{TcpStream, ToSocketAddrs};
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .map_err(|e| format!("DATABASE_URL: {e}"))?;
    if options.get_socket().is_some() || options.get_host().starts_with('/') {
        return Ok(());
    }
    let target = format!("{}:{}", options.get_host(), options.get_port());
    let addrs: Vec<_> = target
        .to_socket_addrs()
        .map_err(|e| format!("{target}: {e}"))?
        .collect();
    let mut last = format!("{target}: no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{target}: {e}"),
        }
    }
    Err(last)
}

/// A migrated PostgreSQL store in a fresh schema on [`postgres_url`]. Panics when PostgreSQL is
/// not configured or unreachable: CI must not skip silently.
pub async fn postgres() -> TestDb {
    let url = postgres_url();
    let schema = format!("cc_test_{:016x}", rand::rng().random::<u64>());
    let admin = Db::connect(&url, 1, Duration::from_secs(10), None)
        .await
        .unwrap_or_else(|e| panic!("DATABASE_URL is set but PostgreSQL is unreachable: {e}"));
    // SQL-safe: the schema name generated just above ([a-z0-9_]).
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&admin.pool)
        .await
        .unwrap_or_else(|e| panic!("create schema: {e}"));
    admin.pool.close().await;
    let db = Db::connect(&url, 8, Duration::from_secs(10), Some(schema.clone()))
        .await
        .unwrap_or_else(|e| panic!("postgres: {e}"));
    db.migrate()
        .await
        .unwrap_or_else(|e| panic!("postgres migrate: {e}"));
    debug_assert_eq!(db.backend, Backend::Postgres);
    TestDb {
        db,
        _dir: None,
        schema: Some((url, schema)),
    }
}

/// A migrated store on `backend`: a temporary SQLite file, or a fresh PostgreSQL schema.
pub async fn open(backend: Backend) -> TestDb {
    match backend {
        Backend::Sqlite => sqlite().await,
        Backend::Postgres => postgres().await,
    }
}
