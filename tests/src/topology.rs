//! The platform as separate OS processes: the real `citycredit` binary started four times
//! (`--service registry|ingestion|scoring|gateway`) on loopback ports, all on one fresh
//! PostgreSQL schema (`DATABASE_URL`) or one SQLite file, optionally with the ingestion
//! process's database connections going through a fault-injecting TCP proxy ([`Proxy`]: pass,
//! delay, reset, blackhole). Processes can be killed with SIGKILL and restarted on the same
//! port, and extra replicas started; everything is killed (SIGKILL, each child) and the schema
//! dropped when the [`Topology`] is dropped.
//!
//! Keys and certificates are made for each run by the real binary (`citycredit keys
//! generate`); each process gets only its part's identity keys, and with `mtls` (or the
//! shipped configurations) the services require the gateway's client certificate.
//!
//! Each process reads a TOML configuration file written here (or its shipped one, rewritten to
//! this run's paths and addresses); its address comes from its `serving gRPC addr=...` log
//! line on the first start, and it is restarted on the same port.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::ingestion::channel_with_key;
use crate::{ADMIN_KEY, AuthChannel, TestSchema, fresh_schema};

// ---------------------------------------------------------------------------------------------
// The fault-injecting TCP proxy.

/// What the proxy does to the bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward both ways.
    Pass,
    /// Forward every chunk after this delay.
    Delay(Duration),
    /// Close every open connection at once and every new one as soon as it is accepted.
    Reset,
    /// A partition: new connections are accepted and whatever they send is dropped without an
    /// answer; open connections stop moving (their bytes wait, as TCP retransmits them) and
    /// resume when the fault ends. New connections accepted during the partition are closed
    /// when it ends.
    Blackhole,
}

struct ProxyShared {
    mode: watch::Sender<Fault>,
    /// Connections open now (each counted once, for both directions).
    open: AtomicUsize,
    /// Connections accepted since the start.
    accepted: AtomicU64,
}

/// A TCP proxy on `127.0.0.1:0` in front of `upstream`, with switchable faults.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<ProxyShared>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("proxy bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy addr: {e}"));
        let (mode, _) = watch::channel(Fault::Pass);
        let shared = Arc::new(ProxyShared {
            mode,
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                s.accepted.fetch_add(1, Ordering::Relaxed);
                let s = Arc::clone(&s);
                tokio::spawn(async move { connection(s, client, upstream).await });
            }
        });
        Proxy { addr, shared, task }
    }

    /// Switches the fault (effective at once for open connections too).
    pub fn set(&self, fault: Fault) {
        self.shared.mode.send_replace(fault);
    }

    pub fn fault(&self) -> Fault {
        *self.shared.mode.borrow()
    }

    /// Connections open through the proxy now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Connections accepted since the start.
    pub fn accepted_connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.set(Fault::Reset);
    }
}

/// Counts a connection as open while alive.
struct OpenGuard(Arc<ProxyShared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(s: Arc<ProxyShared>, mut client: TcpStream, upstream: SocketAddr) {
    s.open.fetch_add(1, Ordering::Relaxed);
    let _guard = OpenGuard(Arc::clone(&s));
    let mut mode = s.mode.subscribe();
    let now = *mode.borrow_and_update();
    match now {
        Fault::Reset => return,
        Fault::Blackhole => {
            // Swallow everything until the partition ends, then close.
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                tokio::select! {
                    r = client.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { return },
                    changed = mode.changed() => {
                        if changed.is_err() || *mode.borrow_and_update() != Fault::Blackhole {
                            return;
                        }
                    }
                }
            }
        }
        Fault::Pass | Fault::Delay(_) => {}
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // Either direction ending (or a reset) ends the connection: both sockets are dropped.
    tokio::select! {
        () = pump(cr, sw, s.mode.subscribe()) => {}
        () = pump(sr, cw, s.mode.subscribe()) => {}
    }
}

/// Copies `from` to `to` under the current fault until either side closes or a reset.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Fault>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // Wait while partitioned (bytes stay in the kernel's buffers); end on reset.
        loop {
            let now = *mode.borrow_and_update();
            match now {
                Fault::Reset => return,
                Fault::Blackhole => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                Fault::Pass | Fault::Delay(_) => break,
            }
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        // The chunk is in hand: hold it while partitioned, delay it, or drop it on reset.
        loop {
            let m = *mode.borrow_and_update();
            match m {
                Fault::Reset => return,
                Fault::Blackhole => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                Fault::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Fault::Pass => break,
            }
        }
        if *mode.borrow() == Fault::Reset || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The processes.

/// One of the four processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    Registry,
    Ingestion,
    Scoring,
    Gateway,
}

impl Part {
    pub const ALL: [Part; 4] = [
        Part::Registry,
        Part::Ingestion,
        Part::Scoring,
        Part::Gateway,
    ];

    /// The parts that run a service behind the front (everything but the gateway).
    pub const SERVICES: [Part; 3] = [Part::Registry, Part::Ingestion, Part::Scoring];

    pub fn as_str(self) -> &'static str {
        match self {
            Part::Registry => "registry",
            Part::Ingestion => "ingestion",
            Part::Scoring => "scoring",
            Part::Gateway => "gateway",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The gRPC services this part serves.
    pub fn grpc_services(self) -> &'static [&'static str] {
        match self {
            Part::Registry => &[
                "citycredit.v1.DepartmentRegistryService",
                "citycredit.v1.ReviewService",
            ],
            Part::Ingestion => &[
                "citycredit.v1.MetricSubmissionService",
                "citycredit.v1.CodeAuditService",
            ],
            Part::Scoring => &[
                "citycredit.v1.ScoringService",
                "citycredit.v1.IndicatorService",
                "citycredit.v1.NotificationService",
            ],
            Part::Gateway => &[],
        }
    }
}

/// Where the processes keep their data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// A fresh schema on `DATABASE_URL`.
    Postgres,
    /// One SQLite file every process opens.
    Sqlite,
}

impl From<crate::Backend> for Store {
    fn from(b: crate::Backend) -> Store {
        match b {
            crate::Backend::Sqlite => Store::Sqlite,
            crate::Backend::Postgres => Store::Postgres,
        }
    }
}

/// How to run the topology.
#[derive(Clone, Debug)]
pub struct TopologyOptions {
    /// PostgreSQL (the default; `DATABASE_URL` must name it) or one SQLite file.
    pub store: Store,
    /// mTLS between the gateway and the services and between scoring and ingestion, with the
    /// certificates `citycredit keys generate` makes. (The gateway's own listener stays
    /// plaintext, as callers reach it in tests.)
    pub mtls: bool,
    /// Run each part from its shipped configuration file (`deploy/config/<part>.toml`) with
    /// only its paths and addresses rewritten to this run's, and everything else from
    /// `CITYCREDIT_*` variables: what a deployment gets, mTLS and all.
    pub shipped_configs: bool,
    /// Put the fault proxy between the ingestion process and PostgreSQL.
    pub proxy_ingestion_db: bool,
    /// Extra TOML lines for every process's configuration (top-level keys).
    pub common: Vec<String>,
    /// Extra top-level TOML lines for one process (e.g. `db_acquire_timeout_ms = 1000`).
    pub ingestion: Vec<String>,
    /// Lines of the gateway's `[gateway]` table (e.g. `max_concurrent_calls = 64`).
    pub gateway: Vec<String>,
    /// The `citycredit` binary; default: `target/<profile>/citycredit` next to this executable,
    /// or `CITYCREDIT_BIN`.
    pub binary: Option<PathBuf>,
    /// `log_filter` of every process.
    pub log_filter: String,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        TopologyOptions {
            store: Store::Postgres,
            mtls: false,
            shipped_configs: false,
            proxy_ingestion_db: false,
            common: Vec::new(),
            ingestion: Vec::new(),
            gateway: Vec::new(),
            binary: None,
            log_filter: "warn,citycredit=info,citycredit::access=warn".into(),
        }
    }
}

/// A running process and the tail of its log.
struct Proc {
    part: Part,
    child: Option<Child>,
    pid: Option<u32>,
    addr: SocketAddr,
    log: Arc<Mutex<VecDeque<String>>>,
    starts: u32,
}

/// The platform as four processes (and any extra replicas) on one store.
pub struct Topology {
    dir: tempfile::TempDir,
    binary: PathBuf,
    options: TopologyOptions,
    url: String,
    schema: TestSchema,
    pub proxy: Option<Proxy>,
    /// The four parts (by `Part::index`), then extra replicas.
    procs: Vec<Proc>,
}

/// `host:port` of a PostgreSQL URL.
fn db_socket(url: &str) -> SocketAddr {
    let rest = url.split("://").nth(1).unwrap_or_default();
    let hostport = rest.rsplit('@').next().unwrap_or_default();
    let hostport = hostport.split(['/', '?']).next().unwrap_or_default();
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    };
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport
        .parse()
        .unwrap_or_else(|e| panic!("DATABASE_URL host {hostport}: {e}"))
}

/// The URL with its host and port replaced by `addr`.
fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (userinfo, hostrest) = match rest.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), rest),
    };
    let tail = hostrest
        .find(['/', '?'])
        .map_or(String::new(), |i| hostrest[i..].to_owned());
    format!("{scheme}://{userinfo}{addr}{tail}")
}

/// The `citycredit` binary next to the running executable (target/<profile>/).
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("CITYCREDIT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current exe: {e}"));
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("citycredit");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p citycredit-app` first (or set CITYCREDIT_BIN)",
        bin.display()
    );
    bin
}

/// The repository's `deploy/config` directory.
pub fn shipped_config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config")
}

/// Makes every key and certificate with the real binary (`citycredit keys generate`), names
/// valid for 127.0.0.1; returns the directory (one subdirectory per part).
pub fn make_keys(binary: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("keys");
    let done = std::process::Command::new(binary)
        .args(["keys", "generate", "--san", "127.0.0.1", "--out"])
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("citycredit keys generate: {e}"));
    assert!(
        done.status.success(),
        "citycredit keys generate: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    out
}

/// The `CITYCREDIT_*` variables that give `part` its identity keys from `keys` (made by
/// [`make_keys`]).
pub fn identity_env(part: &str, keys: &Path) -> Vec<(String, String)> {
    let file = |f: &str| keys.join(part).join(f).display().to_string();
    let mut env = Vec::new();
    if matches!(part, "gateway" | "scoring") {
        env.push((
            "CITYCREDIT_IDENTITY__SIGNING_KEY".into(),
            file("identity.key"),
        ));
    }
    if matches!(part, "registry" | "ingestion" | "scoring") {
        env.push((
            "CITYCREDIT_IDENTITY__GATEWAY_PUBLIC_KEY".into(),
            file("gateway-identity.pub"),
        ));
    }
    if part == "ingestion" {
        env.push((
            "CITYCREDIT_IDENTITY__SCORING_PUBLIC_KEY".into(),
            file("scoring-identity.pub"),
        ));
    }
    env
}

impl Topology {
    /// Starts registry, ingestion, scoring and gateway, in that order, each once serving.
    /// Panics when the store is PostgreSQL and `DATABASE_URL` does not name one (declare such
    /// tests with `postgres_only!` or `both_databases!`, which report them as ignored then).
    pub async fn start(options: TopologyOptions) -> Topology {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let url = match options.store {
            Store::Postgres => crate::postgres_url(),
            Store::Sqlite => format!("sqlite://{}", dir.path().join("citycredit.db").display()),
        };
        assert!(
            !(options.proxy_ingestion_db && options.store == Store::Sqlite),
            "the database proxy needs PostgreSQL"
        );
        let binary = options.binary.clone().unwrap_or_else(binary);
        let proxy = if options.proxy_ingestion_db {
            Some(Proxy::start(db_socket(&url)).await)
        } else {
            None
        };
        make_keys(&binary, dir.path());
        let mut t = Topology {
            dir,
            binary,
            options,
            url,
            schema: fresh_schema(),
            proxy,
            procs: Vec::new(),
        };
        for part in Part::ALL {
            t.procs.push(Proc {
                part,
                child: None,
                pid: None,
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                log: Arc::new(Mutex::new(VecDeque::new())),
                starts: 0,
            });
            t.start_index(part.index()).await;
        }
        t
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The database URL the processes use (without the proxy).
    pub fn database_url(&self) -> &str {
        &self.url
    }

    pub fn store_kind(&self) -> Store {
        self.options.store
    }

    pub fn addr(&self, part: Part) -> SocketAddr {
        self.procs[part.index()].addr
    }

    /// The process id of `part`, when running.
    pub fn pid(&self, part: Part) -> Option<u32> {
        self.procs[part.index()].pid
    }

    /// How many times `part` has been started.
    pub fn starts(&self, part: Part) -> u32 {
        self.procs[part.index()].starts
    }

    /// The keys and certificates of this run (one directory per part).
    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// True when the services require mTLS.
    pub fn mtls(&self) -> bool {
        self.options.mtls || self.options.shipped_configs
    }

    /// An administrator's channel to the gateway.
    pub fn admin(&self) -> AuthChannel {
        channel_with_key(self.addr(Part::Gateway), ADMIN_KEY)
    }

    /// A channel to the gateway with `key`.
    pub fn with_key(&self, key: &str) -> AuthChannel {
        channel_with_key(self.addr(Part::Gateway), key)
    }

    /// A channel straight to the process at `addr` (a part or a replica of one), as the
    /// gateway reaches it: with the gateway's client certificate when the services require
    /// mTLS, plaintext otherwise. It carries no identity.
    pub fn direct(&self, addr: SocketAddr) -> tonic::transport::Channel {
        if self.mtls() {
            self.tls_channel(addr, Some("gateway"))
        } else {
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap_or_else(|e| panic!("endpoint: {e}"))
                .connect_lazy()
        }
    }

    /// A TLS channel to `addr` that trusts this run's CA and presents the client certificate
    /// of `client` (`gateway` or `scoring`), or none.
    pub fn tls_channel(&self, addr: SocketAddr, client: Option<&str>) -> tonic::transport::Channel {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let keys = self.keys_dir();
        let read =
            |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(keys.join("gateway/ca.crt"))));
        if let Some(c) = client {
            tls = tls.identity(Identity::from_pem(
                read(keys.join(c).join("client.crt")),
                read(keys.join(c).join("client.key")),
            ));
        }
        Endpoint::from_shared(format!("https://{addr}"))
            .unwrap_or_else(|e| panic!("endpoint: {e}"))
            .connect_timeout(Duration::from_secs(5))
            .tls_config(tls)
            .unwrap_or_else(|e| panic!("tls: {e}"))
            .connect_lazy()
    }

    fn url_of(&self, part: Part) -> String {
        let scheme = if self.mtls() { "https" } else { "http" };
        // A part not started yet (the registry's configuration is written first) has no
        // address; nothing that starts before it needs one.
        let addr = self
            .procs
            .get(part.index())
            .map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)), |p| p.addr);
        format!("{scheme}://{addr}")
    }

    /// The configuration file `part` starts with, and the environment it gets.
    fn config(&self, part: Part) -> (String, Vec<(String, String)>) {
        let db = match (&self.proxy, part) {
            (Some(p), Part::Ingestion) => via(&self.url, p.addr),
            _ => self.url.clone(),
        };
        let keys = self.keys_dir();
        let mut env = identity_env(part.as_str(), &keys);
        if self.options.shipped_configs {
            env.extend(self.shipped_env(&db));
            return (self.shipped_config(part), env);
        }
        let mut lines = vec![
            format!("service = \"{}\"", part.as_str()),
            format!("database_url = \"{db}\""),
            format!("bootstrap_admin_key = \"{ADMIN_KEY}\""),
            format!("log_filter = \"{}\"", self.options.log_filter),
            "registry_refresh_ms = 500".into(),
            "shutdown_grace_secs = 2".into(),
        ];
        if self.options.store == Store::Postgres {
            lines.push(format!("database_schema = \"{}\"", &*self.schema));
        }
        lines.extend(self.options.common.iter().cloned());
        if part == Part::Ingestion {
            lines.extend(self.options.ingestion.iter().cloned());
        }
        let file = |f: &str| keys.join(part.as_str()).join(f).display().to_string();
        if self.options.mtls && part != Part::Gateway {
            lines.push("[tls]".into());
            lines.push(format!("cert = \"{}\"", file("server.crt")));
            lines.push(format!("key = \"{}\"", file("server.key")));
            lines.push(format!("client_ca = \"{}\"", file("ca.crt")));
        }
        if self.options.mtls && matches!(part, Part::Gateway | Part::Scoring) {
            lines.push("[upstream_tls]".into());
            lines.push(format!("ca = \"{}\"", file("ca.crt")));
            lines.push(format!("cert = \"{}\"", file("client.crt")));
            lines.push(format!("key = \"{}\"", file("client.key")));
        }
        match part {
            Part::Scoring => {
                lines.push("[upstreams]".into());
                lines.push(format!("ingestion = \"{}\"", self.url_of(Part::Ingestion)));
            }
            Part::Gateway => {
                lines.push("[upstreams]".into());
                lines.push(format!("registry = \"{}\"", self.url_of(Part::Registry)));
                lines.push(format!("ingestion = \"{}\"", self.url_of(Part::Ingestion)));
                lines.push(format!("scoring = \"{}\"", self.url_of(Part::Scoring)));
                lines.push("[gateway]".into());
                lines.extend(self.options.gateway.iter().cloned());
            }
            _ => {}
        }
        (lines.join("\n") + "\n", env)
    }

    /// `deploy/config/<part>.toml` with its key paths pointing at this run's keys and its
    /// upstreams at this run's processes; everything the file does not say about this run
    /// (database, bootstrap key, log format, ports) comes from the environment.
    fn shipped_config(&self, part: Part) -> String {
        let path = shipped_config_dir().join(format!("{}.toml", part.as_str()));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut text = text.replace(
            "/etc/citycredit/keys/",
            &format!("{}/", self.keys_dir().join(part.as_str()).display()),
        );
        for up in [Part::Registry, Part::Ingestion, Part::Scoring] {
            text = text.replace(
                &format!("https://citycredit-{}:50051", up.as_str()),
                &self.url_of(up),
            );
        }
        text
    }

    /// The environment a shipped configuration needs for this run.
    fn shipped_env(&self, db: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("CITYCREDIT_DATABASE_URL".to_owned(), db.to_owned()),
            ("CITYCREDIT_BOOTSTRAP_ADMIN_KEY".into(), ADMIN_KEY.into()),
            ("CITYCREDIT_LOG_FORMAT".into(), "text".into()),
            (
                "CITYCREDIT_LOG_FILTER".into(),
                self.options.log_filter.clone(),
            ),
            ("CITYCREDIT_METRICS_LISTEN".into(), "127.0.0.1:0".into()),
            ("CITYCREDIT_REGISTRY_REFRESH_MS".into(), "500".into()),
            ("CITYCREDIT_SHUTDOWN_GRACE_SECS".into(), "2".into()),
        ];
        if self.options.store == Store::Postgres {
            env.push(("CITYCREDIT_DATABASE_SCHEMA".into(), self.schema.to_string()));
        }
        env
    }

    /// Starts `part` (on its previous port when it ran before) and waits until it serves.
    pub async fn start_part(&mut self, part: Part) {
        self.start_index(part.index()).await;
    }

    /// Starts one more process of `part` (a replica on the same store, with the same
    /// configuration) and returns its address. It is killed with the topology.
    pub async fn start_replica(&mut self, part: Part) -> SocketAddr {
        self.procs.push(Proc {
            part,
            child: None,
            pid: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: Arc::new(Mutex::new(VecDeque::new())),
            starts: 0,
        });
        let i = self.procs.len() - 1;
        self.start_index(i).await;
        self.procs[i].addr
    }

    async fn start_index(&mut self, i: usize) {
        let part = self.procs[i].part;
        assert!(self.procs[i].child.is_none(), "{part:?} is already running");
        let (text, env) = self.config(part);
        let file = self.dir.path().join(format!("{}-{i}.toml", part.as_str()));
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("config: {e}"));
        let listen = self.procs[i].addr;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("serve")
            .arg("--config")
            .arg(&file)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--data-dir")
            .arg(self.dir.path())
            .env_remove("RUST_LOG")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, _) in std::env::vars() {
            if k.starts_with("CITYCREDIT_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {part:?}: {e}"));
        let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
        let log = Arc::clone(&self.procs[i].log);
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("serving gRPC")
                    && let Some(rest) = line.split("addr=").nth(1)
                    && let Some(tx) = addr_tx.take()
                {
                    let a = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(a.parse::<SocketAddr>().ok());
                }
                let mut log = log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if log.len() >= 400 {
                    log.pop_front();
                }
                log.push_back(line);
            }
        });
        let pid = child.id();
        let p = &mut self.procs[i];
        p.child = Some(child);
        p.pid = pid;
        p.starts += 1;
        let addr = match tokio::time::timeout(Duration::from_secs(120), addr_rx).await {
            Ok(Ok(Some(addr))) => addr,
            _ => panic!(
                "{part:?} did not start serving; its log:\n{}",
                self.log_tail_of(i, 60)
            ),
        };
        self.procs[i].addr = addr;
    }

    /// SIGKILL to `part`, and waits for it to be gone.
    pub async fn kill(&mut self, part: Part) {
        let p = &mut self.procs[part.index()];
        if let Some(mut child) = p.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        p.pid = None;
    }

    /// SIGKILL, then a start on the same port.
    pub async fn restart(&mut self, part: Part) {
        self.kill(part).await;
        self.start_part(part).await;
    }

    /// True while the process of `part` has not exited.
    pub fn alive(&mut self, part: Part) -> bool {
        match self.procs[part.index()].child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// True while the process of `part` runs (from /proc; usable through a shared reference).
    pub fn alive_pid(&self, part: Part) -> bool {
        self.pid(part).is_some_and(process_running)
    }

    /// The last `n` lines `part` logged.
    pub fn log_tail(&self, part: Part, n: usize) -> String {
        self.log_tail_of(part.index(), n)
    }

    fn log_tail_of(&self, i: usize, n: usize) -> String {
        let log = self.procs[i]
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let skip = log.len().saturating_sub(n);
        log.iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Resident memory of `part` in KiB (`VmRSS` from /proc).
    pub fn rss_kib(&self, part: Part) -> Option<u64> {
        rss_kib(self.pid(part)?)
    }

    /// The health `part` reports for the whole server (""), or None when it does not answer
    /// within `timeout`.
    pub async fn health(&self, part: Part, timeout: Duration) -> Option<ServingStatus> {
        let addr = self.addr(part);
        let channel = if part == Part::Gateway {
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .ok()?
                .connect_timeout(timeout)
                .timeout(timeout)
                .connect_lazy()
        } else {
            self.direct(addr)
        };
        let call = async {
            let r = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .ok()?;
            Some(r.into_inner().status())
        };
        tokio::time::timeout(timeout, call).await.ok().flatten()
    }

    /// Waits until `part` reports `want`; returns how long it took, or None after `limit`.
    pub async fn wait_health(
        &self,
        part: Part,
        want: ServingStatus,
        limit: Duration,
    ) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.health(part, Duration::from_millis(500)).await == Some(want) {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// A direct connection to the topology's store (for reconciliation), not through the proxy.
    pub async fn store(&self) -> citycredit_store::Db {
        let schema = (self.options.store == Store::Postgres).then(|| self.schema.to_string());
        citycredit_store::Db::connect(&self.url, 2, Duration::from_secs(10), schema)
            .await
            .unwrap_or_else(|e| panic!("connect to the topology's store: {e}"))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // SIGKILL every child now (kill_on_drop would too, but do not rely on drop order), so
        // no process outlives the test; the schema is dropped after them (field order).
        for p in &mut self.procs {
            if let Some(child) = p.child.as_mut() {
                let _ = child.start_kill();
            }
            if let Some(pid) = p.pid {
                // Reap synchronously: wait until /proc no longer lists it as running.
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && process_running(pid) {
                    std::thread::sleep(Duration::from_millis(10));
                    if let Some(child) = p.child.as_mut() {
                        let _ = child.try_wait();
                    }
                }
            }
        }
    }
}

/// Whether `pid` exists and is not a zombie.
fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Resident memory of a process in KiB (`VmRSS` from /proc).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_rewritten_through_the_proxy() {
        let url = "postgres://postgres@127.0.0.1:5432/test";
        assert_eq!(db_socket(url), SocketAddr::from(([127, 0, 0, 1], 5432)));
        let a = SocketAddr::from(([127, 0, 0, 1], 6000));
        assert_eq!(via(url, a), "postgres://postgres@127.0.0.1:6000/test");
        assert_eq!(
            via("postgres://u:p@localhost/db?x=1", a),
            "postgres://u:p@127.0.0.1:6000/db?x=1"
        );
        assert_eq!(
            db_socket("postgres://localhost/db"),
            SocketAddr::from(([127, 0, 0, 1], 5432))
        );
    }

    #[tokio::test]
    async fn proxy_passes_delays_resets_and_blackholes() {
        let echo = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let upstream = echo.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let proxy = Proxy::start(upstream).await;
        let mut c = TcpStream::connect(proxy.addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut buf = [0u8; 4];
        c.write_all(b"ping").await.unwrap_or_else(|e| panic!("{e}"));
        c.read_exact(&mut buf)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&buf, b"ping");
        assert_eq!(proxy.open_connections(), 1);

        proxy.set(Fault::Delay(Duration::from_millis(100)));
        let t = Instant::now();
        c.write_all(b"slow").await.unwrap_or_else(|e| panic!("{e}"));
        c.read_exact(&mut buf)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );

        // A partition holds the bytes of open connections and answers nothing.
        proxy.set(Fault::Blackhole);
        c.write_all(b"held").await.unwrap_or_else(|e| panic!("{e}"));
        let held = tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut buf)).await;
        assert!(held.is_err(), "an answer crossed the partition");
        let mut fresh = TcpStream::connect(proxy.addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        fresh
            .write_all(b"lost")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut b2 = [0u8; 4];
        let lost =
            tokio::time::timeout(Duration::from_millis(300), fresh.read_exact(&mut b2)).await;
        assert!(
            lost.is_err(),
            "a new connection was answered in a partition"
        );
        proxy.set(Fault::Pass);
        c.read_exact(&mut buf)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            &buf, b"held",
            "the partition lost bytes of an open connection"
        );

        // A reset closes open connections at once.
        proxy.set(Fault::Reset);
        let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0) | Err(_))), "{r:?}");
        proxy.set(Fault::Pass);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(proxy.open_connections(), 0);
        assert!(proxy.accepted_connections() >= 2);
    }
}
