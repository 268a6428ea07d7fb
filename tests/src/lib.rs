//! Test harness: starts a real citycredit server in-process on `127.0.0.1:0` (the test binds the
//! listener and hands the same listener to the server: no port guessing) and gives clients for
//! it, authenticated the way real callers are: principals and API keys created through the
//! registry API with the bootstrap administrator's key. Shutdown is graceful and awaited when
//! the `TestServer` is stopped.

pub mod h2raw;
pub mod ingestion;
pub mod raw_codec;
pub mod topology;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::department_registry_service_client::DepartmentRegistryServiceClient;
use citycredit_app::Config;
use citycredit_app::server::{self, StartError};

/// The bootstrap administrator key every test server starts with.
pub const ADMIN_KEY: &str = "test-bootstrap-admin-key-0123456789abcdef";

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel that authenticates as one principal.
pub type AuthChannel = InterceptedService<Channel, Bearer>;

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), StartError>>>,
    _data: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server with default configuration and a fresh data directory (SQLite).
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts a server after `adjust` changes the configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let data = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = data.path().to_owned();
        let mut server = TestServer::start_in(&path, adjust).await;
        server._data = Some(data);
        server
    }

    /// Starts a server on an existing data directory (to restart on the same store).
    pub async fn start_in(data_dir: &Path, adjust: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_on("127.0.0.1:0", data_dir, adjust).await
    }

    /// Starts a server on a given address (to restart one where its callers expect it).
    pub async fn start_on(
        addr: &str,
        data_dir: &Path,
        adjust: impl FnOnce(&mut Config),
    ) -> TestServer {
        let mut listener = None;
        // The port of a server stopped a moment ago can take a moment to free.
        for _ in 0..50 {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        let listener = listener.unwrap_or_else(|| panic!("bind {addr}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let mut config = Config {
            listen: addr,
            data_dir: data_dir.to_owned(),
            shutdown_grace_secs: 5,
            bootstrap_admin_key: Some(ADMIN_KEY.into()),
            registry_refresh_ms: 200,
            ..Config::default()
        };
        adjust(&mut config);
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server::serve(config, listener, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            data_dir: data_dir.to_owned(),
            stop: Some(tx),
            task: Some(task),
            _data: None,
        }
    }

    /// An unauthenticated channel (connects lazily: the first call waits for the server).
    pub fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap_or_else(|e| panic!("endpoint: {e}"))
            .connect_lazy()
    }

    /// A channel that sends `key`.
    pub fn with_key(&self, key: &str) -> AuthChannel {
        let value = format!("Bearer {key}")
            .parse()
            .unwrap_or_else(|e| panic!("key is not header text: {e}"));
        InterceptedService::new(self.channel(), Bearer(Some(value)))
    }

    /// A channel authenticated as the bootstrap administrator.
    pub fn admin(&self) -> AuthChannel {
        self.with_key(ADMIN_KEY)
    }

    /// A registry client as the administrator.
    pub fn registry(&self) -> DepartmentRegistryServiceClient<AuthChannel> {
        DepartmentRegistryServiceClient::new(self.admin())
    }

    /// Creates a principal (through the registry API) and an API key for it; returns the key.
    pub async fn create_principal(
        &self,
        id: &str,
        role: pb::Role,
        department: Option<&str>,
    ) -> String {
        let mut registry = self.registry();
        registry
            .create_principal(pb::CreatePrincipalRequest {
                principal: Some(pb::Principal {
                    id: id.into(),
                    role: role as i32,
                    department_code: department.unwrap_or_default().into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_or_else(|e| panic!("create principal {id}: {e}"));
        registry
            .create_api_key(pb::CreateApiKeyRequest {
                principal: format!("principals/{id}"),
                expire_time: None,
            })
            .await
            .unwrap_or_else(|e| panic!("create key for {id}: {e}"))
            .into_inner()
            .secret
    }

    /// A channel authenticated as a new principal with `role` (and `department`).
    pub async fn channel_as(
        &self,
        id: &str,
        role: pb::Role,
        department: Option<&str>,
    ) -> AuthChannel {
        let key = self.create_principal(id, role, department).await;
        self.with_key(&key)
    }

    /// Stops the server gracefully and returns how `serve` ended.
    pub async fn stop(mut self) -> Result<(), StartError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| panic!("server task: {e}")),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// How long one test declared by [`both_databases!`] or [`postgres_only!`] may run (not the
/// measurements run by hand, which are declared ignored): the longest takes well under a minute
/// in CI's debug build.
pub const TEST_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Ends the test process when a test runs past [`TEST_TIME_LIMIT`], naming the test: a test that
/// hangs fails the run at once instead of holding CI until its own limit (libtest has no time
/// limit, and a hang once held a CI run for 90 minutes). Dropped when the test ends, passing or
/// panicking.
pub struct Watchdog {
    _running: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    /// A watchdog for `test` that stops the process with exit status 101 at the limit.
    pub fn start(test: &'static str) -> Watchdog {
        Watchdog::with_limit(TEST_TIME_LIMIT, move || {
            eprintln!(
                "{test}: still running after {} s; stopping the test process (a hang)",
                TEST_TIME_LIMIT.as_secs()
            );
            std::process::exit(101);
        })
    }

    /// A watchdog that calls `expired` if it is not dropped within `limit`.
    pub fn with_limit(
        limit: std::time::Duration,
        expired: impl FnOnce() + Send + 'static,
    ) -> Watchdog {
        let (running, ended) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = ended.recv_timeout(limit) {
                expired();
            }
        });
        Watchdog { _running: running }
    }
}

/// Where a test server keeps its data.
pub use citycredit_store::Backend;
pub use citycredit_store::testing::postgres_url;

/// Declares a test per database for `async fn <scenario>(backend: Backend)`:
/// `<scenario>::sqlite` and `<scenario>::postgres`. The PostgreSQL one is reported by libtest as
/// ignored, with the reason, when the tests were built without a PostgreSQL `DATABASE_URL`
/// (`tests/build.rs` sets `cfg(citycredit_pg)`); with one, it runs and fails if PostgreSQL
/// cannot be reached. Arguments after the name go to `#[tokio::test(...)]`:
///
/// ```text
/// async fn keys_survive_a_restart(backend: Backend) { /* ... */ }
/// both_databases!(keys_survive_a_restart, flavor = "multi_thread", worker_threads = 2);
/// ```
///
/// A leading `#[ignore = "why"]` ignores both (a measurement run by hand with `--ignored`).
#[macro_export]
macro_rules! both_databases {
    (#[ignore = $why:literal] $scenario:ident $(, $($arg:tt)*)?) => {
        mod $scenario {
            #[::tokio::test$(($($arg)*))?]
            #[ignore = $why]
            async fn sqlite() {
                super::$scenario($crate::Backend::Sqlite).await
            }

            #[::tokio::test$(($($arg)*))?]
            #[ignore = $why]
            async fn postgres() {
                super::$scenario($crate::Backend::Postgres).await
            }
        }
    };
    ($scenario:ident $(, $($arg:tt)*)?) => {
        mod $scenario {
            #[::tokio::test$(($($arg)*))?]
            async fn sqlite() {
                let _watchdog = $crate::Watchdog::start(concat!(module_path!(), "::sqlite"));
                super::$scenario($crate::Backend::Sqlite).await
            }

            #[::tokio::test$(($($arg)*))?]
            #[cfg_attr(not(citycredit_pg), ignore = "PostgreSQL: set DATABASE_URL to run")]
            async fn postgres() {
                let _watchdog = $crate::Watchdog::start(concat!(module_path!(), "::postgres"));
                super::$scenario($crate::Backend::Postgres).await
            }
        }
    };
}

/// Declares `<scenario>::postgres` for `async fn <scenario>()`, a test that needs PostgreSQL
/// (the multi-process topology, a second server on the same store): ignored, with the same
/// reason as in [`both_databases!`], when the tests were built without `DATABASE_URL`.
/// Arguments after the name go to `#[tokio::test(...)]`; a leading `#[ignore = "why"]` ignores
/// it in any case (a measurement run by hand).
#[macro_export]
macro_rules! postgres_only {
    (#[ignore = $why:literal] $scenario:ident $(, $($arg:tt)*)?) => {
        mod $scenario {
            #[::tokio::test$(($($arg)*))?]
            #[ignore = $why]
            async fn postgres() {
                super::$scenario().await
            }
        }
    };
    ($scenario:ident $(, $($arg:tt)*)?) => {
        mod $scenario {
            #[::tokio::test$(($($arg)*))?]
            #[cfg_attr(not(citycredit_pg), ignore = "PostgreSQL: set DATABASE_URL to run")]
            async fn postgres() {
                let _watchdog = $crate::Watchdog::start(concat!(module_path!(), "::postgres"));
                super::$scenario().await
            }
        }
    };
}

/// A fresh PostgreSQL schema name for one test; the schema (if one was created) is dropped
/// when this is dropped.
pub struct TestSchema(String);

impl std::ops::Deref for TestSchema {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let Ok(url) = std::env::var("DATABASE_URL") else {
            return;
        };
        if url.starts_with("postgres") {
            citycredit_store::testing::drop_schema(&url, &self.0);
        }
    }
}

/// A connection of the test's own to a server's store (the SQLite file `citycredit.db` in
/// `data_dir`, or the PostgreSQL `schema`), to look at what the server wrote.
pub async fn connect_store(
    backend: Backend,
    data_dir: &std::path::Path,
    schema: &str,
    connections: u32,
) -> citycredit_store::Db {
    let (url, schema) = match backend {
        Backend::Sqlite => (
            citycredit_store::sqlite_url(&data_dir.join("citycredit.db")),
            None,
        ),
        Backend::Postgres => (postgres_url(), Some(schema.to_owned())),
    };
    citycredit_store::Db::connect(
        &url,
        connections,
        std::time::Duration::from_secs(10),
        schema,
    )
    .await
    .unwrap_or_else(|e| panic!("connect to the test store: {e}"))
}

/// A fresh PostgreSQL schema name for one test (created by the server that uses it).
pub fn fresh_schema() -> TestSchema {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    TestSchema(format!("cc_e2e_{:x}_{}", nanos, std::process::id()))
}

/// Points a configuration at `backend`; for PostgreSQL at `schema` on `DATABASE_URL`.
pub fn use_backend(config: &mut Config, backend: Backend, schema: &str) {
    match backend {
        Backend::Sqlite => config.database_url = None,
        Backend::Postgres => {
            config.database_url = Some(postgres_url());
            config.database_schema = Some(schema.to_owned());
        }
    }
}

/// A configuration for `mode` running apart, with its part's identity keys from `keys` (made
/// by [`make_keys`]).
pub fn apart(
    mode: citycredit_app::config::ServiceMode,
    keys: &std::path::Path,
) -> impl FnOnce(&mut citycredit_app::Config) {
    let dir = keys.join(mode.as_str());
    move |c| {
        c.service = mode;
        c.database_url = None;
        let id = &mut c.identity;
        if matches!(
            mode,
            citycredit_app::config::ServiceMode::Gateway
                | citycredit_app::config::ServiceMode::Scoring
        ) {
            id.signing_key = Some(dir.join("identity.key"));
        }
        if matches!(
            mode,
            citycredit_app::config::ServiceMode::Registry
                | citycredit_app::config::ServiceMode::Ingestion
                | citycredit_app::config::ServiceMode::Scoring
        ) {
            id.gateway_public_key = Some(dir.join("gateway-identity.pub"));
        }
        if mode == citycredit_app::config::ServiceMode::Ingestion {
            id.scoring_public_key = Some(dir.join("scoring-identity.pub"));
        }
    }
}

/// Every key and certificate of the split topology (`citycredit_app::keys::generate`),
/// names valid for 127.0.0.1, under `dir/keys` (one subdirectory per part).
pub fn make_keys(dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join("keys");
    citycredit_app::keys::generate(&citycredit_app::keys::KeyOptions {
        out: out.clone(),
        extra_names: vec!["127.0.0.1".into()],
        namespace: None,
        days: 1,
    })
    .unwrap_or_else(|e| panic!("keys: {e}"));
    out
}

/// The message of a call that must succeed (the status in the panic otherwise).
pub fn ok<T>(r: Result<tonic::Response<T>, tonic::Status>) -> T {
    r.unwrap_or_else(|e| panic!("{e:?}")).into_inner()
}

/// The status of a call that must be refused with `code` and the ErrorInfo `reason`.
pub fn refused<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: tonic::Code,
    reason: &str,
) -> tonic::Status {
    use tonic_types::StatusExt;
    let s = match r {
        Ok(v) => panic!("expected {reason}, got {v:?}"),
        Err(s) => s,
    };
    assert_eq!(s.code(), code, "{s:?}");
    let info = s.get_error_details().error_info().cloned();
    assert_eq!(
        info.as_ref().map(|i| i.reason.as_str()),
        Some(reason),
        "{s:?}"
    );
    s
}

#[cfg(test)]
mod watchdog_tests {
    use super::Watchdog;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_test_past_its_limit_is_reported_and_one_within_it_is_not() {
        let (tx, fired) = mpsc::channel();
        let late = tx.clone();
        let _past = Watchdog::with_limit(Duration::from_millis(50), move || {
            let _ = late.send("past");
        });
        let within = Watchdog::with_limit(Duration::from_secs(2), move || {
            let _ = tx.send("within");
        });
        assert_eq!(fired.recv_timeout(Duration::from_secs(5)), Ok("past"));
        drop(within);
        // The dropped watchdog's thread ends without calling back: the channel closes.
        assert_eq!(
            fired.recv_timeout(Duration::from_secs(5)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
