//! `citycredit-bench gateway`: the split topology as real OS processes (registry, ingestion,
//! scoring, gateway), and the cost of the gateway measured in one run: throughput direct to a
//! service vs through the gateway at 64 calls in flight, added median latency at one call in
//! flight, batched ingest through the gateway, and the gateway process's memory.

#![allow(
    clippy::float_arithmetic,
    clippy::cast_precision_loss,
    reason = "benchmark rates and ratios, never scores"
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use citycredit::auth::identity::{Audience, GRANT_REUSE_MICROS, HEADER, IdentitySigner, Issuer};
use citycredit::proto::v1 as pb;
use citycredit::proto::v1::indicator_service_client::IndicatorServiceClient;
use citycredit::proto::v1::metric_submission_service_client::MetricSubmissionServiceClient;
use citycredit_core::auth::{Principal, Role};

pub const ADMIN: &str = "bench-bootstrap-admin-key-0123456789abcdef";
const CATALOG_PATH: &str = "/citycredit.v1.IndicatorService/GetCatalog";

pub struct Proc {
    pub child: Child,
    pub addr: String,
    /// Bytes the process has written to its log (stderr) so far.
    pub log_bytes: Arc<AtomicU64>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

pub fn start(bin: &str, service: &str, dir: &std::path::Path, env: &[(&str, String)]) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.args([
        "serve",
        "--service",
        service,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(dir)
    .env("CITYCREDIT_BOOTSTRAP_ADMIN_KEY", ADMIN)
    .env("CITYCREDIT_LOG_FILTER", "warn,citycredit_app::server=info")
    .env("CITYCREDIT_GATEWAY__PER_PRINCIPAL_RATE", "1000000")
    .env("CITYCREDIT_GATEWAY__PER_PRINCIPAL_BURST", "1000000")
    .env("CITYCREDIT_GATEWAY__MAX_CONCURRENT_CALLS", "4096")
    // A fixed limit: these benches measure what forwarding costs, not shedding (the `overload`
    // subcommand measures that). With the adaptive limit, one principal's 64 calls in flight
    // are shed (RESOURCE_EXHAUSTED) once the limit falls, and a run of failures is no figure.
    .env("CITYCREDIT_GATEWAY__MIN_CONCURRENT_CALLS", "4096")
    .env("CITYCREDIT_GATEWAY__MAX_CALLS_PER_PRINCIPAL", "4096")
    .stderr(Stdio::piped());
    if let Ok(url) = std::env::var("DATABASE_URL") {
        cmd.env("CITYCREDIT_DATABASE_URL", url);
        cmd.env(
            "CITYCREDIT_DATABASE_SCHEMA",
            format!("cc_bench_{}", std::process::id()),
        );
    } else {
        cmd.env_remove("DATABASE_URL");
    }
    for (k, v) in citycredit_tests::topology::identity_env(service, &dir.join("keys")) {
        cmd.env(k, v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {service}: {e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("stderr"));
    let mut lines = BufReader::new(stderr).lines();
    let line = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("serving gRPC"))
        .unwrap_or_else(|| panic!("{service} did not start"));
    let addr = line
        .split("addr=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    // Keep draining its log so it never blocks on a full pipe, and count its bytes.
    let log_bytes = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&log_bytes);
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            counted.fetch_add(l.len() as u64 + 1, Ordering::Relaxed);
        }
    });
    Proc {
        child,
        addr,
        log_bytes,
    }
}

fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect_lazy()
}

/// Calls GetCatalog `total` times with `inflight` in flight; returns (calls per second, latencies).
async fn load(
    inflight: usize,
    total: usize,
    call: Arc<dyn Fn() -> futures::future::BoxFuture<'static, Duration> + Send + Sync>,
) -> (f64, Vec<Duration>) {
    let started = Instant::now();
    let per = total / inflight;
    let mut tasks = Vec::new();
    for _ in 0..inflight {
        let call = Arc::clone(&call);
        tasks.push(tokio::spawn(async move {
            let mut l = Vec::with_capacity(per);
            for _ in 0..per {
                l.push(call().await);
            }
            l
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_else(|e| panic!("a caller failed: {e}")));
    }
    let secs = started.elapsed().as_secs_f64();
    (all.len() as f64 / secs, all)
}

/// The CPU each process spent over the phases of one path, per call: what sets the gateway's
/// share on a machine where loader, gateway and service share the cores.
struct CpuPerCall {
    pids: Vec<(&'static str, String)>,
    /// Seconds of CPU per process over the phases measured so far.
    spent: Vec<f64>,
    calls: usize,
}

impl CpuPerCall {
    fn new(pids: Vec<(&'static str, String)>) -> CpuPerCall {
        let spent = vec![0.0; pids.len()];
        CpuPerCall {
            pids,
            spent,
            calls: 0,
        }
    }

    fn now(&self) -> Vec<f64> {
        self.pids
            .iter()
            .map(|(_, p)| crate::access_log::cpu_secs(p))
            .collect()
    }

    /// Adds a phase of `calls` calls that began when `before` was read.
    fn add(&mut self, before: &[f64], calls: usize) {
        let now = self.now();
        for ((spent, t1), t0) in self.spent.iter_mut().zip(now).zip(before) {
            *spent += t1 - t0;
        }
        self.calls += calls;
    }

    /// "loader 31 µs, scoring 52 µs, ..." over the phases added.
    fn per_call(&self) -> String {
        self.pids
            .iter()
            .zip(&self.spent)
            .map(|((name, _), s)| format!("{name} {:.0} µs", s / self.calls as f64 * 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Rounds of the share measurement: direct and through the gateway take turns, so a machine
/// that speeds up or slows down during the run weighs on both paths alike.
const SHARE_ROUNDS: usize = 4;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The split topology as four processes: registry, ingestion, scoring and the gateway in front.
pub struct Topology {
    registry: Option<Proc>,
    ingestion: Option<Proc>,
    scoring: Option<Proc>,
    gateway: Option<Proc>,
    pub keys: std::path::PathBuf,
    pub db: &'static str,
    schema: String,
    _dir: tempfile::TempDir,
}

impl Drop for Topology {
    /// Stops the processes, gateway first, then drops the PostgreSQL schema (best effort).
    fn drop(&mut self) {
        drop(self.gateway.take());
        drop(self.scoring.take());
        drop(self.ingestion.take());
        drop(self.registry.take());
        if let Ok(url) = std::env::var("DATABASE_URL") {
            let _ = Command::new("psql")
                .args([
                    "-q",
                    &url,
                    "-c",
                    &format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Topology {
    /// Starts the four parts of `bin`; `gateway_env` is added to the gateway's environment.
    pub fn start(bin: &str, gateway_env: &[(&str, String)]) -> Topology {
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let keys = citycredit_tests::topology::make_keys(std::path::Path::new(bin), dir.path());
        // A schema of its own for each topology of this run (PostgreSQL), dropped at the end.
        let schema = format!(
            "cc_bench_{}_{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        );
        let in_schema: Vec<(&str, String)> = if std::env::var("DATABASE_URL").is_ok() {
            vec![("CITYCREDIT_DATABASE_SCHEMA", schema.clone())]
        } else {
            Vec::new()
        };
        let registry = start(bin, "registry", dir.path(), &in_schema);
        let ingestion = start(bin, "ingestion", dir.path(), &in_schema);
        let mut env = in_schema.clone();
        env.push((
            "CITYCREDIT_UPSTREAMS__INGESTION",
            format!("http://{}", ingestion.addr),
        ));
        let scoring = start(bin, "scoring", dir.path(), &env);
        let mut env = in_schema.clone();
        env.extend([
            (
                "CITYCREDIT_UPSTREAMS__REGISTRY",
                format!("http://{}", registry.addr),
            ),
            (
                "CITYCREDIT_UPSTREAMS__INGESTION",
                format!("http://{}", ingestion.addr),
            ),
            (
                "CITYCREDIT_UPSTREAMS__SCORING",
                format!("http://{}", scoring.addr),
            ),
        ]);
        env.extend(gateway_env.iter().cloned());
        let gateway = start(bin, "gateway", dir.path(), &env);
        let db = if std::env::var("DATABASE_URL").is_ok() {
            "PostgreSQL"
        } else {
            "SQLite"
        };
        println!(
            "topology: registry {}, ingestion {}, scoring {}, gateway {} ({db})",
            registry.addr, ingestion.addr, scoring.addr, gateway.addr
        );
        Topology {
            registry: Some(registry),
            ingestion: Some(ingestion),
            scoring: Some(scoring),
            gateway: Some(gateway),
            keys,
            db,
            schema,
            _dir: dir,
        }
    }

    pub fn registry(&self) -> &Proc {
        self.registry.as_ref().unwrap_or_else(|| panic!("stopped"))
    }
    pub fn ingestion(&self) -> &Proc {
        self.ingestion.as_ref().unwrap_or_else(|| panic!("stopped"))
    }
    pub fn scoring(&self) -> &Proc {
        self.scoring.as_ref().unwrap_or_else(|| panic!("stopped"))
    }
    pub fn gateway(&self) -> &Proc {
        self.gateway.as_ref().unwrap_or_else(|| panic!("stopped"))
    }

    /// VmRSS and peak VmHWM of each process, in one line.
    pub fn memory(&self) -> String {
        [
            ("registry", self.registry()),
            ("ingestion", self.ingestion()),
            ("scoring", self.scoring()),
            ("gateway", self.gateway()),
        ]
        .iter()
        .map(|(name, p)| memory_of(name, p.child.id()))
        .collect::<Vec<_>>()
        .join("; ")
    }
}

/// "NAME VmRSS x MiB (peak VmHWM y MiB)" for the process `pid`.
pub fn memory_of(name: &str, pid: u32) -> String {
    format!(
        "{name} VmRSS {:.1} MiB (peak VmHWM {:.1} MiB)",
        rss_kib(pid, "VmRSS:") as f64 / 1024.0,
        rss_kib(pid, "VmHWM:") as f64 / 1024.0
    )
}

/// A key of a new platform principal (it may submit every metric), made by the administrator
/// through the gateway, as `authorization` metadata.
pub async fn platform_key(
    gateway: &Channel,
    admin: &MetadataValue<tonic::metadata::Ascii>,
) -> MetadataValue<tonic::metadata::Ascii> {
    use citycredit::proto::v1::department_registry_service_client::DepartmentRegistryServiceClient;
    let mut reg = DepartmentRegistryServiceClient::new(gateway.clone());
    let id = format!("bench-platform-{}", std::process::id());
    let mut req = tonic::Request::new(pb::CreatePrincipalRequest {
        principal: Some(pb::Principal {
            id: id.clone(),
            role: pb::Role::Platform as i32,
            ..Default::default()
        }),
    });
    req.metadata_mut().insert("authorization", admin.clone());
    reg.create_principal(req)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut req = tonic::Request::new(pb::CreateApiKeyRequest {
        principal: format!("principals/{id}"),
        expire_time: None,
    });
    req.metadata_mut().insert("authorization", admin.clone());
    let key = reg
        .create_api_key(req)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .secret;
    format!("Bearer {key}")
        .parse()
        .unwrap_or_else(|_| panic!("header"))
}

/// The departments of the built-in city, for spreading load values over departments.
pub fn departments() -> &'static [String] {
    static DEPARTMENTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    DEPARTMENTS.get_or_init(|| {
        let catalog =
            citycredit_core::catalog::Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        citycredit_core::city::City::builtin(&catalog)
            .unwrap_or_else(|e| panic!("{e}"))
            .departments
            .iter()
            .map(|d| d.code.clone())
            .collect()
    })
}

/// Load batch number `b`: 100 values of `uscc.codes_total` for the city, spread over the
/// departments and over years from 2000 (5,000 values a year), so no two batches write the
/// same key and no load value reaches the current years. A failed batch fails the run: a rate
/// of failures is not a rate.
pub async fn submit_load_batch(
    client: &mut MetricSubmissionServiceClient<Channel>,
    platform: &MetadataValue<tonic::metadata::Ascii>,
    b: usize,
) {
    let departments = departments();
    let values: Vec<pb::SubmissionInput> = (0..100)
        .map(|i| pb::SubmissionInput {
            metric_key: "uscc.codes_total".into(),
            region_code: "330800".into(),
            department_code: departments[(b * 100 + i) % departments.len()].clone(),
            period: format!("{}", 2000 + (b * 100 + i) / 5000),
            value: Some(pb::MetricValue {
                value: Some(pb::metric_value::Value::Number(
                    ((b * 100 + i) % 1000).to_string(),
                )),
            }),
            ..Default::default()
        })
        .collect();
    let mut req = tonic::Request::new(tokio_stream::iter([pb::SubmitBatchRequest {
        idempotency_key: String::new(),
        validate_only: false,
        values,
    }]));
    req.metadata_mut().insert("authorization", platform.clone());
    client
        .submit_batch(req)
        .await
        .unwrap_or_else(|e| panic!("batch: {e}"));
}

pub async fn run(bin: String, calls: usize, values: usize, gateway_threads: Option<usize>) {
    let gateway_env: Vec<(&str, String)> = gateway_threads
        .map(|n| ("CITYCREDIT_WORKER_THREADS", n.to_string()))
        .into_iter()
        .collect();
    let top = Topology::start(&bin, &gateway_env);
    let (keys, db) = (top.keys.clone(), top.db);
    let (scoring, gateway) = (top.scoring(), top.gateway());

    // Calls straight to scoring carry an identity signed with the gateway's key, as the
    // gateway's do: for this read, a read grant made once and used again for
    // GRANT_REUSE_MICROS, as the gateway does (identity.rs).
    let gateway_key = std::fs::read_to_string(keys.join("gateway/identity.key"))
        .unwrap_or_else(|e| panic!("gateway key: {e}"));
    let signer = Arc::new(
        IdentitySigner::from_text(Issuer::Gateway, &gateway_key)
            .unwrap_or_else(|e| panic!("signer: {e}")),
    );
    // The bootstrap administrator, as the gateway signs it (its key is in the bootstrap
    // format, so its credential is the bootstrap prefix): the front checks the key stands.
    let ops = Principal {
        id: "admin".into(),
        role: Role::Admin,
        department: None,
        credential: Some("cc_bootstrap".into()),
    };
    let direct_ch = channel(&scoring.addr);
    let gateway_ch = channel(&gateway.addr);
    let bearer: MetadataValue<_> = format!("Bearer {ADMIN}")
        .parse()
        .unwrap_or_else(|_| panic!("header"));

    let grant = Arc::new(std::sync::Mutex::new((
        MetadataValue::from_static("none"),
        i64::MIN / 2,
    )));
    let direct: Arc<dyn Fn() -> futures::future::BoxFuture<'static, Duration> + Send + Sync> = {
        let (ch, signer, ops) = (direct_ch.clone(), Arc::clone(&signer), ops.clone());
        Arc::new(move || {
            let (ch, signer, ops, grant) = (
                ch.clone(),
                Arc::clone(&signer),
                ops.clone(),
                Arc::clone(&grant),
            );
            Box::pin(async move {
                let msg = pb::GetCatalogRequest {};
                let now = citycredit_store::now_micros();
                let h = {
                    let mut g = grant.lock().unwrap_or_else(|e| panic!("{e}"));
                    if now - g.1 >= GRANT_REUSE_MICROS {
                        let fresh = signer
                            .grant(&ops, Audience::Scoring, CATALOG_PATH, now)
                            .unwrap_or_default();
                        *g = (fresh.parse().unwrap_or_else(|_| panic!("header")), now);
                    }
                    g.0.clone()
                };
                let mut req = tonic::Request::new(msg);
                req.metadata_mut().insert(HEADER, h);
                let t = Instant::now();
                IndicatorServiceClient::new(ch)
                    .get_catalog(req)
                    .await
                    .unwrap_or_else(|e| panic!("direct: {e}"));
                t.elapsed()
            })
        })
    };
    let through: Arc<dyn Fn() -> futures::future::BoxFuture<'static, Duration> + Send + Sync> = {
        let (ch, bearer) = (gateway_ch.clone(), bearer.clone());
        Arc::new(move || {
            let (ch, bearer) = (ch.clone(), bearer.clone());
            Box::pin(async move {
                let mut req = tonic::Request::new(pb::GetCatalogRequest {});
                req.metadata_mut().insert("authorization", bearer);
                let t = Instant::now();
                IndicatorServiceClient::new(ch)
                    .get_catalog(req)
                    .await
                    .unwrap_or_else(|e| panic!("gateway: {e}"));
                t.elapsed()
            })
        })
    };
    // Warm both paths (connections, caches).
    let _ = load(8, 800, Arc::clone(&direct)).await;
    let _ = load(8, 800, Arc::clone(&through)).await;

    let pids = || {
        vec![
            ("loader", "self".to_owned()),
            ("gateway", gateway.child.id().to_string()),
            ("scoring", scoring.child.id().to_string()),
        ]
    };
    let (mut d_cpu, mut g_cpu) = (CpuPerCall::new(pids()), CpuPerCall::new(pids()));
    let (mut d_secs, mut g_secs) = (0.0, 0.0);
    let mut ratios = Vec::new();
    let per_round = calls / SHARE_ROUNDS;
    for _ in 0..SHARE_ROUNDS {
        let before = d_cpu.now();
        let (d_rate, _) = load(64, per_round, Arc::clone(&direct)).await;
        d_cpu.add(&before, per_round);
        let before = g_cpu.now();
        let (g_rate, _) = load(64, per_round, Arc::clone(&through)).await;
        g_cpu.add(&before, per_round);
        d_secs += per_round as f64 / d_rate;
        g_secs += per_round as f64 / g_rate;
        ratios.push(g_rate / d_rate);
    }
    let (d_rate, g_rate) = (
        (per_round * SHARE_ROUNDS) as f64 / d_secs,
        (per_round * SHARE_ROUNDS) as f64 / g_secs,
    );
    let threads = gateway_threads.map_or("one per core".to_owned(), |n| n.to_string());
    println!(
        "GetCatalog, 64 in flight, {} calls each way in {SHARE_ROUNDS} alternating rounds (gateway worker threads: {threads}): direct {d_rate:.0}/s, through the gateway {g_rate:.0}/s, ratio {:.2} (goal >= 0.70); ratio by round {}",
        per_round * SHARE_ROUNDS,
        g_rate / d_rate,
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  CPU per call (utime+stime), direct: {}; through the gateway: {}",
        d_cpu.per_call(),
        g_cpu.per_call()
    );

    let (mut dl, mut gl) = (Vec::new(), Vec::new());
    for _ in 0..SHARE_ROUNDS {
        dl.extend(load(1, 3000 / SHARE_ROUNDS, Arc::clone(&direct)).await.1);
        gl.extend(load(1, 3000 / SHARE_ROUNDS, Arc::clone(&through)).await.1);
    }
    let (dm, gm) = (median(dl), median(gl));
    println!(
        "one call in flight, 3000 calls each way in {SHARE_ROUNDS} alternating rounds: median direct {:.3} ms, through the gateway {:.3} ms, added {:.3} ms (goal <= 0.1 ms)",
        dm.as_secs_f64() * 1e3,
        gm.as_secs_f64() * 1e3,
        (gm.as_secs_f64() - dm.as_secs_f64()) * 1e3
    );

    // Batched ingest through the gateway as the credit sharing platform.
    let platform = platform_key(&gateway_ch, &bearer).await;
    let clients = 8usize;
    let batches = values / 100;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (ch, platform) = (gateway_ch.clone(), platform.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = MetricSubmissionServiceClient::new(ch);
            for b in (c..batches).step_by(clients) {
                submit_load_batch(&mut client, &platform, b).await;
            }
        }));
    }
    for t in tasks {
        // A failed batch fails the run: a rate of failures is not a rate.
        t.await
            .unwrap_or_else(|e| panic!("an ingest caller failed: {e}"));
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "batched ingest through the gateway ({db}), batches of 100, {clients} callers: {:.0} values/s ({} values in {secs:.2} s; goal >= 30,000 on PostgreSQL, >= 25,000 on SQLite)",
        (batches * 100) as f64 / secs,
        batches * 100
    );
    println!(
        "memory after these loads (target <= 64 MiB each): {}",
        top.memory()
    );
    let rate = (batches * 100) as f64 / secs;
    if db == "PostgreSQL" {
        crate::ceiling::postgres(batches * 100, rate).await;
    } else {
        crate::ceiling::sqlite(batches * 100, rate).await;
    }
}
