//! `citycredit-bench attacks`: one principal (or a key-less caller) attacks, another principal
//! works, and the bench measures what the victim keeps (issue 10 point 3). The platform is the
//! real binary in its own process (`serve`, everything in one process, SQLite or `DATABASE_URL`);
//! the victim's callers run in this process; each attack runs in a process of its own (this
//! binary again, `attack-worker`), all through real sockets.
//!
//! Attacks: `idle-streams` (SubmitBatch streams that never send), `header-only` (unary calls
//! whose message never comes, raw HTTP/2), `zero-window` (responses never read: an HTTP/2
//! window of zero, raw HTTP/2), `random-paths` (calls to random 4 KB paths, no key),
//! `failed-auth` (calls with made-up keys). The slot attacks keep 600 streams or calls open,
//! trying a refused one again a second later; the key-less floods run at `--flood-rate`
//! calls/s (0: as fast as the attacker's process goes, which on a shared 2-core machine measures
//! CPU contention more than isolation). For each: the victim's goodput alone and under the
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
use tonic_types::StatusExt;

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
    /// Calls per second of the key-less floods (random paths, failed authentication); 0: as
    /// fast as the attacker's process goes.
    pub flood_rate: u64,
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
        .env("CITYCREDIT_LOG_FILTER", "warn,citycredit_app::server=info")
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
    let mut reg = pb::department_registry_service_client::DepartmentRegistryServiceClient::new(
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
                let mut subs =
                    pb::metric_submission_service_client::MetricSubmissionServiceClient::new(
                        ch.clone(),
                    );
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
                            rule_version: String::new(),
                            approved_only: false,
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
    let cards_size = {
        let mut c = pb::scoring_service_client::ScoringServiceClient::new(channel_with_key(
            platform.addr,
            ADMIN,
        ));
        let r = c
            .batch_get_scorecards(pb::BatchGetScorecardsRequest {
                region_codes: Vec::new(),
                period: "2026".into(),
                as_of: None,
                rule_version: String::new(),
                approved_only: false,
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner();
        prost::Message::encoded_len(&r)
    };
    println!(
        "floods (random-paths, failed-auth) at {}",
        if a.flood_rate == 0 {
            "full speed".to_owned()
        } else {
            format!("{} calls/s", a.flood_rate)
        }
    );
    println!(
        "platform: {} (all in one process, {db}, default limits), pid {pid}; victim: {} closed-loop callers (SubmitValue and GetScorecard alternately, 5 s deadlines); BatchGetScorecards of every region: {cards_size} bytes",
        platform.addr, a.victims
    );
    let seq = Arc::new(AtomicU64::new(0));
    let victim = victim_start(platform.addr, &victim_key, a.victims, Arc::clone(&seq));
    // Warm up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if a.only.as_deref() == Some("alone") {
        // No attack: how the victim's own goodput and the platform's memory drift.
        for _ in 0..6 {
            let p = measure(&victim, pid, a.seconds).await;
            println!(
                "alone: {:.0} calls/s, errors {:?}, platform RSS {} -> {} MiB",
                p.goodput,
                p.errors,
                p.rss_before / 1024,
                p.rss_peak / 1024
            );
        }
        victim.stop().await;
        return;
    }
    let me = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let mut worst_ratio = f64::MAX;
    let mut worst_growth = 0u64;
    for kind in KINDS {
        if a.only.as_deref().is_some_and(|o| o != kind) {
            continue;
        }
        // The victim alone right before each attack, twice over (alone, attacked, alone,
        // attacked): on a shared machine the baseline drifts (other work, the store growing),
        // so each attack is compared with its own neighbours.
        let key = if matches!(kind, "random-paths" | "failed-auth") {
            String::new()
        } else {
            attacker_key.clone()
        };
        let (mut alone_sum, mut under_sum) = (0.0, 0.0);
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let (mut rss_before, mut rss_peak) = (u64::MAX, 0);
        let (mut platform_cpu, mut attacker_cpu) = (0u64, 0u64);
        let mut reports = Vec::new();
        for _round in 0..2 {
            let alone = measure(&victim, pid, a.seconds).await;
            alone_sum += alone.goodput;
            rss_before = rss_before.min(alone.rss_peak);
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
                    "--rate",
                    &a.flood_rate.to_string(),
                ])
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("start the attacker: {e}"));
            let attacker_pid = attacker.id().unwrap_or(0);
            // Let the attack build up, then measure.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let cpu_before = (cpu_ticks(pid), cpu_ticks(attacker_pid));
            let under = measure(&victim, pid, a.seconds).await;
            platform_cpu += cpu_ticks(pid).saturating_sub(cpu_before.0);
            attacker_cpu += cpu_ticks(attacker_pid).saturating_sub(cpu_before.1);
            under_sum += under.goodput;
            rss_peak = rss_peak.max(under.rss_peak);
            for (k, v) in under.errors {
                *errors.entry(k).or_default() += v;
            }
            let out = attacker
                .wait_with_output()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            reports.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let ratio = under_sum / alone_sum.max(1.0);
        let growth = rss_peak.saturating_sub(rss_before);
        worst_ratio = worst_ratio.min(ratio);
        worst_growth = worst_growth.max(growth);
        // Clock ticks are 1/100 s on Linux: ticks per second = percent of one core.
        let pct = |ticks: u64| ticks as f64 / (2 * a.seconds) as f64;
        println!(
            "{kind:>13}: victim {:.0} calls/s alone, {:.0} under attack = {:.0}% (goal >= 90%), victim errors {errors:?}; platform RSS {} -> peak {} MiB (+{} MiB, goal <= +64); CPU under attack: platform {:.0}%, attacker {:.0}% of a core; attacker: {}",
            alone_sum / 2.0,
            under_sum / 2.0,
            ratio * 100.0,
            rss_before / 1024,
            rss_peak / 1024,
            growth / 1024,
            pct(platform_cpu),
            pct(attacker_cpu),
            reports.join(" | ")
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

/// User and system CPU time of a process, in clock ticks (/proc/<pid>/stat fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit(')').next()?.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After the command: state is field 3, utime 14, stime 15 (1-based in man proc).
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0)
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

/// One of the 32 flood callers' pace for `rate` calls/s in all (None: as fast as it goes).
fn pacer(rate: u64) -> Option<tokio::time::Interval> {
    (rate > 0).then(|| {
        let mut i = tokio::time::interval(Duration::from_micros(32_000_000 / rate));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    })
}

/// The attacker's process: runs `kind` against `addr` for `seconds` (floods at `rate` calls/s,
/// 0 for as fast as they go), then prints what it got.
pub async fn worker(kind: String, addr: SocketAddr, key: String, seconds: u64, rate: u64) {
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
                                // Refused: tried again a second later (or when RetryInfo says,
                                // if later), so that the 600 stay open as far as the platform
                                // allows: a slot attack, not a flood.
                                let wait = e
                                    .get_error_details()
                                    .retry_info()
                                    .and_then(|r| r.retry_delay)
                                    .unwrap_or_default()
                                    .max(Duration::from_secs(1));
                                tokio::time::sleep(wait).await;
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
                            let (conn, key, tally) =
                                (Arc::clone(&conn), key.clone(), Arc::clone(&tally));
                            inner.push(tokio::spawn(async move {
                                while Instant::now() < until {
                                    let started = conn
                                        .lock()
                                        .await
                                        .start(
                                            grpc_request(
                                                "/citycredit.v1.ScoringService/GetScorecard",
                                                key.as_deref(),
                                            ),
                                            None,
                                        )
                                        .await;
                                    let Ok((response, stream)) = started else {
                                        tally.add("connection lost");
                                        return;
                                    };
                                    match tokio::time::timeout_at(
                                        until.into(),
                                        h2raw::grpc_code(response),
                                    )
                                    .await
                                    {
                                        Ok(Ok(code)) => {
                                            tally.add_code(code);
                                            // Ended (refused, or at the read timeout): tried
                                            // again a second later, so that the 600 stay open as
                                            // far as the platform allows: a slot attack, not a
                                            // flood.
                                            tokio::time::sleep(Duration::from_secs(1)).await;
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
            // 8 connections that never grant a window, 100 calls on each for the largest answer
            // there is (the scorecards of every region: the 7 regions asked 14 times each,
            // about 145 KB once repeated regions are answered once), reconnecting when the
            // platform closes them.
            let regions = [
                "330800", "330802", "330803", "330822", "330824", "330825", "330881",
            ];
            let request = pb::BatchGetScorecardsRequest {
                region_codes: regions
                    .iter()
                    .cycle()
                    .take(98)
                    .map(|r| (*r).to_owned())
                    .collect(),
                period: "2026".into(),
                as_of: None,
                rule_version: String::new(),
                approved_only: false,
            };
            for _ in 0..8 {
                let (key, tally, request) = (key.clone(), Arc::clone(&tally), request.clone());
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
                                    grpc_request(
                                        "/citycredit.v1.ScoringService/BatchGetScorecards",
                                        key.as_deref(),
                                    ),
                                    Some(grpc_frame(&request)),
                                )
                                .await
                            {
                                Ok(call) => pending.push(call),
                                Err(_) => break,
                            }
                        }
                        // Headers come whatever the window: refused calls carry their code,
                        // admitted ones wait for a body that cannot come.
                        let mut held = Vec::new();
                        for (response, stream) in pending {
                            match tokio::time::timeout(Duration::from_secs(2), response).await {
                                Ok(Ok(r)) => match r.headers().get("grpc-status") {
                                    Some(code) => tally.add(format!(
                                        "refused with grpc-status {}",
                                        code.to_str().unwrap_or("?")
                                    )),
                                    None => {
                                        tally.add("answer left unread");
                                        held.push((r, stream));
                                    }
                                },
                                Ok(Err(_)) => tally.add("reset"),
                                Err(_) => tally.add("no headers"),
                            }
                        }
                        let closed = tokio::time::timeout_at(until.into(), conn.closed).await;
                        if closed.is_ok() {
                            tally.add("connection closed by the platform");
                        }
                        drop(held);
                    }
                }));
            }
        }
        "random-paths" => {
            // 32 callers, random 4 KB paths, no key, `rate` calls/s in all.
            for w in 0..32u64 {
                let tally = Arc::clone(&tally);
                let mut pace = pacer(rate);
                tasks.push(tokio::spawn(async move {
                    let Ok(mut conn) = h2raw::connect(addr, 1 << 20).await else {
                        tally.add("connect failed");
                        return;
                    };
                    let mut n = w;
                    while Instant::now() < until {
                        if let Some(p) = pace.as_mut() {
                            p.tick().await;
                        }
                        n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        let junk: String = (0..4096u64)
                            .map(|j| {
                                char::from(b'a' + u8::try_from((n >> (j % 50)) % 26).unwrap_or(0))
                            })
                            .collect();
                        let Ok((response, _s)) = conn
                            .start(
                                grpc_request(&format!("/{n:x}.Svc/{junk}"), None),
                                Some(bytes::Bytes::new()),
                            )
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
            // 32 callers with made-up keys, `rate` calls/s in all.
            for w in 0..32u64 {
                let tally = Arc::clone(&tally);
                let mut pace = pacer(rate);
                tasks.push(tokio::spawn(async move {
                    let mut n = w;
                    let mut clients: Vec<_> = Vec::new();
                    for i in 0..4u64 {
                        clients.push(pb::indicator_service_client::IndicatorServiceClient::new(
                            channel_with_key(addr, &format!("cc_{:08x}_{:064x}", w * 4 + i, n)),
                        ));
                    }
                    while Instant::now() < until {
                        if let Some(p) = pace.as_mut() {
                            p.tick().await;
                        }
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
