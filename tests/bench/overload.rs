//! `citycredit-bench overload`: the platform as four processes (`citycredit_tests::topology`,
//! PostgreSQL from `DATABASE_URL`), pushes through the gateway. First the sustainable push rate
//! (closed loop, `--clients` callers), then an open loop at `--factor` times that rate for
//! `--seconds`: admitted calls must succeed with bounded latency, the excess must be shed
//! quickly with RESOURCE_EXHAUSTED by the gateway's `max_concurrent_calls` and per-principal
//! rate, and the gateway's resident memory must stay bounded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Code;

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
    pub factor: u32,
    pub max_concurrent_calls: usize,
    pub per_principal_rate: u32,
    pub deadline_ms: u64,
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
    let Some(t) = Topology::start(TopologyOptions {
        gateway: vec![
            format!("max_concurrent_calls = {}", o.max_concurrent_calls),
            format!("per_principal_rate = {}", o.per_principal_rate),
            format!("per_principal_burst = {}", o.per_principal_rate),
        ],
        ..TopologyOptions::default()
    })
    .await
    else {
        eprintln!("overload needs DATABASE_URL=postgres://...");
        std::process::exit(2);
    };
    println!(
        "topology up: gateway {} (max_concurrent_calls {}, per_principal_rate {}/s)",
        t.addr(Part::Gateway),
        o.max_concurrent_calls,
        o.per_principal_rate
    );
    // Several connections: one HTTP/2 connection would queue streams in the client.
    let clients: Vec<Client> = (0..8).map(|_| Client::new(t.admin())).collect();
    let deadline = Duration::from_millis(o.deadline_ms);
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let next = || counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);

    // Warm-up, then the sustainable rate: a closed loop.
    let rss_start = t.rss_kib(Part::Gateway).unwrap_or(0);
    let stop_at = Instant::now() + Duration::from_secs(o.measure_secs);
    let ok = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for k in 0..o.clients {
        let mut c = clients[k % clients.len()].clone();
        let ok = Arc::clone(&ok);
        let counter = Arc::clone(&counter);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop_at {
                let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if push(&mut c, i, deadline).await.is_ok() {
                    ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
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

    // The open loop at factor x sustainable.
    let rate = sustainable * f64::from(o.factor);
    let results: Arc<Mutex<Vec<(Code, Duration)>>> = Arc::new(Mutex::new(Vec::new()));
    let rss_peak = Arc::new(std::sync::atomic::AtomicU64::new(rss_start));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let pid = t.pid(Part::Gateway).unwrap_or(0);
        let peak = Arc::clone(&rss_peak);
        let on = Arc::clone(&sampling);
        tokio::spawn(async move {
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(kib) = citycredit_tests::topology::rss_kib(pid) {
                    peak.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
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
            let i = next();
            let results = Arc::clone(&results);
            inflight.push(tokio::spawn(async move {
                let s = Instant::now();
                let code = match push(&mut c, i, deadline).await {
                    Ok(()) => Code::Ok,
                    Err(e) => e.code(),
                };
                results
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((code, s.elapsed()));
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
    for (code, d) in &results {
        *codes.entry(format!("{code:?}")).or_default() += 1;
        match code {
            Code::Ok => admitted.push(*d),
            Code::ResourceExhausted => shed.push(*d),
            _ => {}
        }
    }
    admitted.sort();
    shed.sort();
    let secs = offered_for.as_secs_f64();
    println!(
        "offered: {sent} pushes in {secs:.1} s = {:.0}/s ({}x sustainable)",
        sent as f64 / secs,
        o.factor
    );
    println!(
        "goodput: {:.0} pushes/s acknowledged ({} in {:.1} s); codes {codes:?}",
        admitted.len() as f64 / elapsed.as_secs_f64(),
        admitted.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "admitted latency: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&admitted, 50),
        percentile(&admitted, 99),
        admitted.last().copied().unwrap_or_default()
    );
    println!(
        "rejected (RESOURCE_EXHAUSTED): {} ({:.0}%), latency p50 {:?}, p99 {:?}, max {:?}",
        shed.len(),
        100.0 * shed.len() as f64 / results.len().max(1) as f64,
        percentile(&shed, 50),
        percentile(&shed, 99),
        shed.last().copied().unwrap_or_default()
    );
    let peak = rss_peak.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "gateway RSS: {} MiB at start, {} MiB before the overload, peak {} MiB, {} MiB after",
        rss_start / 1024,
        rss_before / 1024,
        peak / 1024,
        rss_after / 1024
    );
}
