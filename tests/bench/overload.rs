//! `citycredit-bench overload`: the platform as four processes (`citycredit_tests::topology`,
//! PostgreSQL from `DATABASE_URL`), pushes through the gateway by 8 platform principals. First
//! the sustainable push rate (closed loop, `--clients` callers), then an open loop at each of
//! `--factors` times that rate for `--seconds`: admitted calls must succeed with bounded
//! latency, the excess must be shed quickly with RESOURCE_EXHAUSTED and RetryInfo by the
//! gateway's adaptive limit (between `min_concurrent_calls` and `max_concurrent_calls`), goodput
//! must stay near the sustainable rate, and the gateway's resident memory bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic_types::StatusExt;

use citycredit::proto::v1 as pb;
use citycredit_tests::AuthChannel;
use citycredit_tests::ingestion::number_input;
use citycredit_tests::topology::{Part, Topology, TopologyOptions};

type Client = pb::metric_submission_service_client::MetricSubmissionServiceClient<AuthChannel>;

/// Settings of one run.
pub struct Overload {
    pub clients: usize,
    pub measure_secs: u64,
    pub seconds: u64,
    pub factors: Vec<u32>,
    pub max_concurrent_calls: usize,
    pub min_concurrent_calls: usize,
    pub per_principal_rate: u32,
    pub deadline_ms: u64,
}

/// The gateway's `/metrics` address, from its log.
fn metrics_addr(t: &Topology) -> Option<SocketAddr> {
    t.log_tail(Part::Gateway, 400)
        .lines()
        .filter(|l| l.contains("serving metrics"))
        .find_map(|l| {
            l.split("addr=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse().ok())
        })
}

/// One value of the gateway's metrics (the first series starting with `name`).
async fn scrape(addr: SocketAddr, name: &str) -> Option<u64> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.ok()?;
    String::from_utf8_lossy(&raw)
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn push(c: &mut Client, i: u64, deadline: Duration) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(pb::SubmitValueRequest {
        value: Some(number_input(
            "uscc.codes_total",
            "330802",
            "2026",
            "samr",
            &i.to_string(),
        )),
        idempotency_key: format!("overload-{i}"),
        validate_only: false,
    });
    req.set_timeout(deadline);
    c.submit_value(req).await.map(|_| ())
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = (sorted.len() * p).div_ceil(100).saturating_sub(1);
    sorted[i.min(sorted.len() - 1)]
}

#[allow(
    clippy::cast_precision_loss,
    clippy::float_arithmetic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "benchmark figures"
)]
pub async fn run(o: Overload) {
    if !std::env::var("DATABASE_URL").is_ok_and(|u| u.starts_with("postgres")) {
        eprintln!("overload needs DATABASE_URL=postgres://...");
        std::process::exit(2);
    }
    let t = Topology::start(TopologyOptions {
        common: vec!["metrics_listen = \"127.0.0.1:0\"".into()],
        gateway: vec![
            format!("max_concurrent_calls = {}", o.max_concurrent_calls),
            format!("min_concurrent_calls = {}", o.min_concurrent_calls),
            format!("per_principal_rate = {}", o.per_principal_rate),
            format!("per_principal_burst = {}", o.per_principal_rate),
            // One principal's budget is not what this measures: 8 principals share the load.
            "max_calls_per_principal = 4096".into(),
        ],
        ..TopologyOptions::default()
    })
    .await;
    let metrics = metrics_addr(&t);
    println!(
        "topology up: gateway {} (adaptive limit {}..{}, per_principal_rate {}/s), metrics {metrics:?}",
        t.addr(Part::Gateway),
        o.min_concurrent_calls,
        o.max_concurrent_calls,
        o.per_principal_rate
    );
    // 8 platform principals, one connection each (one HTTP/2 connection would queue streams
    // in the client).
    let mut registry =
        pb::department_registry_service_client::DepartmentRegistryServiceClient::new(t.admin());
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..8 {
        let id = format!("overload-{i}");
        registry
            .create_principal(pb::CreatePrincipalRequest {
                principal: Some(pb::Principal {
                    id: id.clone(),
                    role: pb::Role::Platform as i32,
                    ..Default::default()
                }),
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let key = registry
            .create_api_key(pb::CreateApiKeyRequest {
                principal: format!("principals/{id}"),
                expire_time: None,
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner()
            .secret;
        clients.push(Client::new(t.with_key(&key)));
    }
    let deadline = Duration::from_millis(o.deadline_ms);
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));

    // Warm-up, then the sustainable rate: a closed loop.
    let rss_start = t.rss_kib(Part::Gateway).unwrap_or(0);
    let closed_loop = |secs: u64| {
        let stop_at = Instant::now() + Duration::from_secs(secs);
        let ok = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks: Vec<_> = (0..o.clients)
            .map(|k| {
                let mut c = clients[k % clients.len()].clone();
                let (ok, counter) = (Arc::clone(&ok), Arc::clone(&counter));
                tokio::spawn(async move {
                    while Instant::now() < stop_at {
                        let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if push(&mut c, i, deadline).await.is_ok() {
                            ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        (ok, tasks)
    };
    let (_, warm) = closed_loop(3);
    for task in warm {
        let _ = task.await;
    }
    let (ok, tasks) = closed_loop(o.measure_secs);
    let started = Instant::now();
    for task in tasks {
        let _ = task.await;
    }
    let sustainable =
        ok.load(std::sync::atomic::Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!(
        "sustainable: {sustainable:.0} pushes/s ({} closed-loop callers, {} s)",
        o.clients, o.measure_secs
    );

    let mut goodputs = Vec::new();
    for &factor in &o.factors {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let g = open_loop(
            &t,
            &clients,
            &counter,
            metrics,
            sustainable,
            factor,
            &o,
            rss_start,
        )
        .await;
        goodputs.push((factor, g));
    }
    // A closed loop of a few callers underestimates what the platform takes (each caller waits
    // for its own answer): the highest goodput of the run is the better reference.
    let best = goodputs.iter().map(|(_, g)| *g).fold(sustainable, f64::max);
    for (factor, g) in goodputs {
        println!(
            "{factor}x: goodput {g:.0}/s = {:.0}% of the highest goodput of the run ({best:.0}/s)",
            100.0 * g / best.max(1.0)
        );
    }
}

/// The open loop at `factor` times `sustainable`, and its report.
#[allow(
    clippy::cast_precision_loss,
    clippy::float_arithmetic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::too_many_arguments,
    reason = "benchmark figures; one report's inputs"
)]
async fn open_loop(
    t: &Topology,
    clients: &[Client],
    counter: &Arc<std::sync::atomic::AtomicU64>,
    metrics: Option<SocketAddr>,
    sustainable: f64,
    factor: u32,
    o: &Overload,
    rss_start: u64,
) -> f64 {
    let deadline = Duration::from_millis(o.deadline_ms);
    let rate = sustainable * f64::from(factor);
    let results: Arc<Mutex<Vec<(Code, Duration, bool)>>> = Arc::new(Mutex::new(Vec::new()));
    let rss_peak = Arc::new(std::sync::atomic::AtomicU64::new(rss_start));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let limits: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let pid = t.pid(Part::Gateway).unwrap_or(0);
        let (peak, on, limits) = (
            Arc::clone(&rss_peak),
            Arc::clone(&sampling),
            Arc::clone(&limits),
        );
        tokio::spawn(async move {
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(kib) = citycredit_tests::topology::rss_kib(pid) {
                    peak.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                }
                if let Some(addr) = metrics
                    && let Some(l) = scrape(addr, "citycredit_adaptive_limit").await
                {
                    limits
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(l);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let rss_before = t.rss_kib(Part::Gateway).unwrap_or(0);
    let begin = Instant::now();
    let run_for = Duration::from_secs(o.seconds);
    let mut sent = 0u64;
    let mut inflight = Vec::new();
    while begin.elapsed() < run_for {
        let due = (begin.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let mut c = clients[(sent as usize) % clients.len()].clone();
            let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let results = Arc::clone(&results);
            inflight.push(tokio::spawn(async move {
                let s = Instant::now();
                let (code, retry_info) = match push(&mut c, i, deadline).await {
                    Ok(()) => (Code::Ok, false),
                    Err(e) => (e.code(), e.get_error_details().retry_info().is_some()),
                };
                results
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((code, s.elapsed(), retry_info));
            }));
            sent += 1;
        }
        inflight.retain(|h| !h.is_finished());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let offered_for = begin.elapsed();
    for h in inflight {
        let _ = h.await;
    }
    let elapsed = begin.elapsed();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = t.rss_kib(Part::Gateway).unwrap_or(0);

    let results = std::mem::take(
        &mut *results
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut admitted = Vec::new();
    let mut shed = Vec::new();
    let mut shed_with_retry = 0;
    for (code, d, retry) in &results {
        *codes.entry(format!("{code:?}")).or_default() += 1;
        match code {
            Code::Ok => admitted.push(*d),
            Code::ResourceExhausted => {
                shed.push(*d);
                if *retry {
                    shed_with_retry += 1;
                }
            }
            _ => {}
        }
    }
    admitted.sort();
    shed.sort();
    let secs = offered_for.as_secs_f64();
    let goodput = admitted.len() as f64 / elapsed.as_secs_f64();
    println!(
        "{factor}x: offered {sent} pushes in {secs:.1} s = {:.0}/s",
        sent as f64 / secs
    );
    println!(
        "{factor}x: goodput {goodput:.0} pushes/s = {:.0}% of sustainable (goal >= 90%); codes {codes:?}",
        100.0 * goodput / sustainable.max(1.0)
    );
    println!(
        "{factor}x: admitted latency p50 {:?}, p99 {:?}, max {:?}",
        percentile(&admitted, 50),
        percentile(&admitted, 99),
        admitted.last().copied().unwrap_or_default()
    );
    println!(
        "{factor}x: shed (RESOURCE_EXHAUSTED) {} ({:.0}%, {} with RetryInfo), latency p50 {:?}, p99 {:?}, max {:?}",
        shed.len(),
        100.0 * shed.len() as f64 / results.len().max(1) as f64,
        shed_with_retry,
        percentile(&shed, 50),
        percentile(&shed, 99),
        shed.last().copied().unwrap_or_default()
    );
    let mut l = limits
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    l.sort_unstable();
    if !l.is_empty() {
        println!(
            "{factor}x: adaptive limit min {} / median {} / max {}",
            l[0],
            l[l.len() / 2],
            l[l.len() - 1]
        );
    }
    let peak = rss_peak.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{factor}x: gateway RSS {} MiB at start, {} MiB before, peak {} MiB, {} MiB after",
        rss_start / 1024,
        rss_before / 1024,
        peak / 1024,
        rss_after / 1024
    );
    goodput
}
