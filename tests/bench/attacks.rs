//! `citycredit-bench attacks`: one principal (or a key-less caller) attacks, another principal
//! works, and the bench measures what the victim keeps (issue 10 point 3). The platform is the
//! real binary in its own process (`serve`, everything in one process, SQLite or `DATABASE_URL`);
//! the victim's callers run in this process; each attack runs in a process of its own (this
//! binary again, `attack-worker`), all through real sockets.
//!
//! Attacks: `idle-streams` (SubmitBatch streams that never send), `header-only` (unary calls
//! whose message never comes, raw HTTP/2), `zero-window` (responses never read: an HTTP/2
//! window of zero, raw HTTP/2), `random-paths` (calls to random 4 KB paths, no key),
//! `failed-auth` (calls with made-up keys). For each: the victim's goodput alone and under the
//! attack, the server's resident memory before and at its peak, what the attacker got.

#![allow(
    clippy::float_arithmetic,
    clippy::cast_precision_loss,
    reason = "benchmark rates and ratios, never scores"
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::Code;

use citycredit::proto::v1 as pb;
use citycredit_tests::AuthChannel;
use citycredit_tests::h2raw::{self, grpc_frame, grpc_request};
use citycredit_tests::ingestion::{channel_with_key, number_input};

pub const ADMIN: &str = "bench-attacks-admin-key-0123456789abcdef";
pub const KINDS: [&str; 5] = [
    "idle-streams",
    "header-only",
    "zero-window",
    "random-paths",
    "failed-auth",
];

/// Settings of one run.
pub struct Attacks {
    pub bin: String,
    pub seconds: u64,
    pub victims: usize,
    pub only: Option<String>,
}

/// The platform process.
pub struct Platform {
    pub child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

pub async fn start_platform(bin: &str) -> Platform {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("CITYCREDIT_BOOTSTRAP_ADMIN_KEY", ADMIN)
        .env("CITYCREDIT_LOG_FILTER", "warn,citycredit_gateway::server=info")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => {
            cmd.env("CITYCREDIT_DATABASE_URL", url).env(
                "CITYCREDIT_DATABASE_SCHEMA",
                format!("cc_attacks_{}", std::process::id()),
            );
        }
        _ => {
            cmd.env_remove("DATABASE_URL");
        }
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {bin}: {e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("stderr"));
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        match lines.next_line().await {
            Ok(Some(l)) if l.contains("serving gRPC") => {
                let a = l
                    .split("addr=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|a| a.parse().ok());
                if let Some(a) = a {
                    break a;
                }
            }
            Ok(Some(_)) => {}
            _ => panic!("the platform did not start"),
        }
    };
    // Keep draining its log so it never blocks on a full pipe; print what it warns about.
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("WARN") || l.contains("ERROR") {
                eprintln!("  platform: {}", l.chars().take(200).collect::<String>());
            }
        }
    });
    Platform {
        child,
        addr,
        _dir: dir,
    }
}

fn rss_kib(pid: u32) -> u64 {
    citycredit_tests::topology::rss_kib(pid).unwrap_or(0)
}

async fn create_key(addr: SocketAddr, id: &str, role: pb::Role) -> String {
    let mut reg =
        pb::department_registry_service_client::DepartmentRegistryServiceClient::new(
            channel_with_key(addr, ADMIN),
        );
    let started = Instant::now();
    loop {
        match reg
            .create_principal(pb::CreatePrincipalRequest {
                principal: Some(pb::Principal {
                    id: id.into(),
                    role: role as i32,
                    ..Default::default()
                }),
            })
            .await
        {
            Ok(_) => break,
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("create principal {id}: {e}"),
        }
    }
    reg.create_api_key(pb::CreateApiKeyRequest {
        principal: format!("principals/{id}"),
        expire_time: None,
    })
    .await
    .unwrap_or_else(|e| panic!("key for {id}: {e}"))
    .into_inner()
    .secret
}

/// The victim: closed-loop callers, each alternating a push and a scorecard.
struct Victim {
    ok: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn victim_start(addr: SocketAddr, key: &str, callers: usize, seq: Arc<AtomicU64>) -> Victim {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let channels: Vec<AuthChannel> = (0..4).map(|_| channel_with_key(addr, key)).collect();
    let tasks = (0..callers)
        .map(|i| {
            let ch = channels[i % channels.len()].clone();
            let (ok, errors, stop, seq) = (
                Arc::clone(&ok),
                Arc::clone(&errors),
                Arc::clone(&stop),
                Arc::clone(&seq),
            );
            tokio::spawn(async move {
                let mut subs = pb::metric_submission_service_client::MetricSubmissionServiceClient::new(ch.clone());
                let mut scoring = pb::scoring_service_client::ScoringServiceClient::new(ch);
                while !stop.load(Ordering::Relaxed) {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let result = if n % 2 == 0 {
                        let mut req = tonic::Request::new(pb::SubmitValueRequest {
                            value: Some(number_input(
                                "uscc.codes_total",
                                "330802",
                                "2026",
                                "samr",
                                &n.to_string(),
                            )),
                            idempotency_key: format!("victim-{n}"),
                            validate_only: false,
                        });
                        req.set_timeout(Duration::from_secs(5));
                        subs.submit_value(req).await.map(|_| ())
                    } else {
                        let mut req = tonic::Request::new(pb::GetScorecardRequest {
                            region_code: "330800".into(),
                            period: "2026".into(),
                            as_of: None,
                        });
                        req.set_timeout(Duration::from_secs(5));
                        scoring.get_scorecard(req).await.map(|_| ())
                    };
                    match result {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            *errors
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .entry(format!("{:?}", e.code()))
                                .or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        })
        .collect();
    Victim {
        ok,
        errors,
        stop,
        tasks,
    }
}

impl Victim {
    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// What one measurement saw.
struct Phase {
    goodput: f64,
    errors: BTreeMap<String, u64>,
    rss_before: u64,
    rss_peak: u64,
}

/// Measures the victim for `seconds` while sampling the platform's memory.
async fn measure(victim: &Victim, pid: u32, seconds: u64) -> Phase {
    let rss_before = rss_kib(pid);
    let errors_before = victim
        .errors
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let ok_before = victim.ok.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut peak = rss_before;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_kib(pid));
    }
    let ok = victim.ok.load(Ordering::Relaxed) - ok_before;
    let mut errors = victim
        .errors
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    for (k, v) in &errors_before {
        if let Some(e) = errors.get_mut(k) {
            *e -= v;
        }
    }
    errors.retain(|_, v| *v > 0);
    Phase {
        goodput: ok as f64 / started.elapsed().as_secs_f64(),
        errors,
        rss_before,
        rss_peak: peak,
    }
}

pub async fn run(a: Attacks) {
    let platform = start_platform(&a.bin).await;
    let pid = platform.child.id().unwrap_or(0);
    let db = match std::env::var("DATABASE_URL") {
        Ok(u) if u.starts_with("postgres") => "PostgreSQL",
        _ => "SQLite",
    };
    let victim_key = create_key(platform.addr, "victim", pb::Role::Platform).await;
    let attacker_key = create_key(platform.addr, "attacker", pb::Role::Platform).await;
    let catalog_size = {
        let mut c = pb::indicator_service_client::IndicatorServiceClient::new(channel_with_key(
            platform.addr,
            ADMIN,
        ));
        let r = c
            .get_catalog(pb::GetCatalogRequest {})
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner();
        prost::Message::encoded_len(&r)
    };
    println!(
        "platform: {} (all in one process, {db}, default limits), pid {pid}; victim: {} closed-loop callers (SubmitValue and GetScorecard alternately, 5 s deadlines); GetCatalog answer {catalog_size} bytes",
        platform.addr, a.victims
    );
    let seq = Arc::new(AtomicU64::new(0));
    let victim = victim_start(platform.addr, &victim_key, a.victims, Arc::clone(&seq));
    // Warm up, then the victim alone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alone = measure(&victim, pid, a.seconds).await;
    println!(
        "victim alone: {:.0} calls/s, errors {:?}, platform RSS {} MiB",
        alone.goodput,
        alone.errors,
        alone.rss_peak / 1024
    );
    let me = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let mut worst_ratio = f64::MAX;
    let mut worst_growth = 0u64;
    for kind in KINDS {
        if a.only.as_deref().is_some_and(|o| o != kind) {
            continue;
        }
        let key = if matches!(kind, "random-paths" | "failed-auth") {
            String::new()
        } else {
            attacker_key.clone()
        };
        let attacker = Command::new(&me)
            .args([
                "attack-worker",
                "--kind",
                kind,
                "--addr",
                &platform.addr.to_string(),
                "--key",
                &key,
                "--seconds",
                &(a.seconds + 2).to_string(),
            ])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start the attacker: {e}"));
        // Let the attack build up, then measure.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let under = measure(&victim, pid, a.seconds).await;
        let out = attacker
            .wait_with_output()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let report = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let ratio = under.goodput / alone.goodput.max(1.0);
        let growth = under.rss_peak.saturating_sub(alone.rss_peak.max(under.rss_before));
        worst_ratio = worst_ratio.min(ratio);
        worst_growth = worst_growth.max(growth);
        println!(
            "{kind:>13}: victim {:.0} calls/s = {:.0}% of alone (goal >= 90%), victim errors {:?}; platform RSS {} -> peak {} MiB (+{} MiB, goal <= +64); attacker: {report}",
            under.goodput,
            ratio * 100.0,
            under.errors,
            under.rss_before / 1024,
            under.rss_peak / 1024,
            growth / 1024
        );
        // Let the platform settle before the next attack.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    victim.stop().await;
    println!(
        "worst: victim kept {:.0}% of its goodput; memory grew at most {} MiB",
        worst_ratio * 100.0,
        worst_growth / 1024
    );
}

/// Counts of what the attacker got, printed at its end.
#[derive(Default)]
struct Tally(std::sync::Mutex<BTreeMap<String, u64>>);

impl Tally {
    fn add(&self, what: impl Into<String>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(what.into())
            .or_default() += 1;
    }
    fn add_code(&self, code: i32) {
        self.add(format!("{:?}", Code::from_i32(code)));
    }
    fn line(&self) -> String {
        let m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total: u64 = m.values().sum();
        format!("{total} attempts: {m:?}")
    }
}

/// The attacker's process: runs `kind` against `addr` for `seconds`, then prints what it got.
pub async fn worker(kind: String, addr: SocketAddr, key: String, seconds: u64) {
    let tally = Arc::new(Tally::default());
    let until = Instant::now() + Duration::from_secs(seconds);
    let key = (!key.is_empty()).then_some(key);
    let mut tasks = Vec::new();
    match kind.as_str() {
        "idle-streams" => {
            // 600 streams that send nothing, each reopened as soon as it ends.
            let channel = channel_with_key(addr, key.as_deref().unwrap_or_default());
            for _ in 0..600 {
                let (channel, tally) = (channel.clone(), Arc::clone(&tally));
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < until {
                        let mut c = pb::metric_submission_service_client::MetricSubmissionServiceClient::new(channel.clone());
                        let (_tx, rx) = tokio::sync::mpsc::channel::<pb::SubmitBatchRequest>(1);
                        let call = c.submit_batch(tokio_stream::wrappers::ReceiverStream::new(rx));
                        match tokio::time::timeout_at(until.into(), call).await {
                            Ok(Ok(_)) => tally.add("OK"),
                            Ok(Err(e)) => {
                                tally.add(format!("{:?}", e.code()));
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            Err(_) => tally.add("held to the end"),
                        }
                    }
                }));
            }
        }
        "header-only" => {
            // 600 unary calls whose message never comes, over 8 connections.
            for _ in 0..8 {
                let (key, tally) = (key.clone(), Arc::clone(&tally));
                tasks.push(tokio::spawn(async move {
                    let mut inner = Vec::new();
                    while Instant::now() < until {
                        let Ok(conn) = h2raw::connect(addr, 65_535).await else {
                            tally.add("connect failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        let conn = Arc::new(tokio::sync::Mutex::new(conn));
                        for _ in 0..75 {
                            let (conn, key, tally) = (Arc::clone(&conn), key.clone(), Arc::clone(&tally));
                            inner.push(tokio::spawn(async move {
                                while Instant::now() < until {
                                    let started = conn
                                        .lock()
                                        .await
                                        .start(grpc_request("/citycredit.v1.ScoringService/GetScorecard", key.as_deref()), None)
                                        .await;
                                    let Ok((response, stream)) = started else {
                                        tally.add("connection lost");
                                        return;
                                    };
                                    match tokio::time::timeout_at(until.into(), h2raw::grpc_code(response)).await {
                                        Ok(Ok(code)) => {
                                            tally.add_code(code);
                                            // Refused: come back a moment later, as a caller
                                            // holding as many calls as it can would.
                                            tokio::time::sleep(Duration::from_millis(10)).await;
                                        }
                                        Ok(Err(_)) => tally.add("reset"),
                                        Err(_) => tally.add("held to the end"),
                                    }
                                    drop(stream);
                                }
                            }));
                        }
                        break;
                    }
                    for t in inner {
                        let _ = t.await;
                    }
                }));
            }
        }
        "zero-window" => {
            // 8 connections that never grant a window, 100 GetCatalog calls on each (the
            // largest answer), reconnecting when the platform closes them.
            for _ in 0..8 {
                let (key, tally) = (key.clone(), Arc::clone(&tally));
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < until {
                        let Ok(mut conn) = h2raw::connect(addr, 0).await else {
                            tally.add("connect failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        let mut pending = Vec::new();
                        for _ in 0..100 {
                            match conn
                                .start(
                                    grpc_request("/citycredit.v1.IndicatorService/GetCatalog", key.as_deref()),
                                    Some(grpc_frame(&pb::GetCatalogRequest {})),
                                )
                                .await
                            {
                                Ok(call) => pending.push(call),
                                Err(_) => break,
                            }
                        }
                        tally.add(format!("{} calls left unread on a connection", pending.len()));
                        let closed = tokio::time::timeout_at(until.into(), conn.closed).await;
                        if closed.is_ok() {
                            tally.add("connection closed by the platform");
                        }
                        drop(pending);
                    }
                }));
            }
        }
        "random-paths" => {
            // 32 callers, random 4 KB paths, no key.
            for w in 0..32u64 {
                let tally = Arc::clone(&tally);
                tasks.push(tokio::spawn(async move {
                    let Ok(mut conn) = h2raw::connect(addr, 1 << 20).await else {
                        tally.add("connect failed");
                        return;
                    };
                    let mut n = w;
                    while Instant::now() < until {
                        n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        let junk: String = (0..4096u64)
                            .map(|j| char::from(b'a' + u8::try_from((n >> (j % 50)) % 26).unwrap_or(0)))
                            .collect();
                        let Ok((response, _s)) = conn
                            .start(grpc_request(&format!("/{n:x}.Svc/{junk}"), None), Some(bytes::Bytes::new()))
                            .await
                        else {
                            tally.add("connection lost");
                            return;
                        };
                        match h2raw::grpc_code(response).await {
                            Ok(code) => tally.add_code(code),
                            Err(_) => tally.add("reset"),
                        }
                    }
                }));
            }
        }
        "failed-auth" => {
            // 32 callers with made-up keys.
            for w in 0..32u64 {
                let tally = Arc::clone(&tally);
                tasks.push(tokio::spawn(async move {
                    let mut n = w;
                    let mut clients: Vec<_> = Vec::new();
                    for i in 0..4u64 {
                        clients.push(pb::indicator_service_client::IndicatorServiceClient::new(
                            channel_with_key(addr, &format!("cc_{:08x}_{:064x}", w * 4 + i, n)),
                        ));
                    }
                    while Instant::now() < until {
                        n += 1;
                        let c = &mut clients[usize::try_from(n % 4).unwrap_or(0)];
                        match c.get_catalog(pb::GetCatalogRequest {}).await {
                            Ok(_) => tally.add("OK"),
                            Err(e) => tally.add(format!("{:?}", e.code())),
                        }
                    }
                }));
            }
        }
        other => panic!("unknown attack {other}; one of {KINDS:?}"),
    }
    let started = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    let total: u64 = tally
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .values()
        .sum();
    println!(
        "{:.0} attempts/s; {}",
        total as f64 / (started.elapsed().as_secs_f64() + 1e-9).max(1.0),
        tally.line()
    );
}
