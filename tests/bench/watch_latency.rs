//! `citycredit-bench watch-latency`: how long a WatchScorecard listener waits for a change while
//! the platform ingests at full speed (issue 15: p99 ≤ 500 ms from commit to delivery while
//! 25,000 values/s are ingested). The split topology as real processes (`gateway::Topology`);
//! this process is the loader, the listener and the prober, all through the gateway's socket.
//!
//! A prober changes one value behind the watched scorecard (the city's
//! `uscc.stock_codes_converted` for 2026) every `--every-ms`, each time to a new number; the
//! listener records, for every probe, the time from sending it to the first update that shows
//! it (or a later probe: an update that coalesces two shows the later). Sending is before the
//! commit, so each figure is an upper bound of commit → delivery. The anchor, in the same run:
//! the same probes with no load. The load: 8 callers sending batches of 100 values of another
//! metric and other years (`gateway::submit_load_batch`), which the watch must not deliver.

#![allow(
    clippy::float_arithmetic,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "benchmark latencies and rates, never scores"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::metric_submission_service_client::MetricSubmissionServiceClient;
use citycredit::proto::v1::scoring_service_client::ScoringServiceClient;

use crate::gateway::{self, ADMIN, Topology};

const REGION: &str = "330800";
const PERIOD: &str = "2026";
const METRIC: &str = "uscc.stock_codes_converted";
/// Probe `i` sets the value to `BASE + i`.
const BASE: u64 = 1_000_000;

/// Probes sent and not yet seen: probe number → when it was sent.
type Pending = Arc<Mutex<BTreeMap<u64, Instant>>>;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p99 = percentile(&v, 0.99);
    println!(
        "{name}: {} probes, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        v.len(),
        ms(percentile(&v, 0.5)),
        ms(p99),
        ms(v.last().copied().unwrap_or_default())
    );
    p99
}

/// The value of the probed input in an update, if the scorecard shows it.
fn probed(card: &pb::Scorecard) -> Option<u64> {
    card.indicators
        .iter()
        .find(|i| i.code == "B01")?
        .inputs
        .iter()
        .find(|i| i.metric_key == METRIC)?
        .value
        .parse()
        .ok()
}

/// Listens to the watched scorecard and turns each update into latencies of the probes it
/// shows; counts the updates that show no new probe (the load must not cause any).
async fn listen(
    ch: Channel,
    admin: MetadataValue<Ascii>,
    pending: Pending,
    seen: Arc<Mutex<Vec<(Instant, Duration)>>>,
    spurious: Arc<AtomicUsize>,
) {
    let mut scoring = ScoringServiceClient::new(ch);
    let mut req = tonic::Request::new(pb::WatchScorecardRequest {
        region_code: REGION.into(),
        period: PERIOD.into(),
    });
    req.metadata_mut().insert("authorization", admin);
    let mut stream = scoring
        .watch_scorecard(req)
        .await
        .unwrap_or_else(|e| panic!("watch: {e}"))
        .into_inner();
    let mut last = None;
    while let Some(update) = stream
        .message()
        .await
        .unwrap_or_else(|e| panic!("the watch broke off: {e}"))
    {
        let now = Instant::now();
        let Some(value) = update.scorecard.as_ref().and_then(probed) else {
            continue;
        };
        if last == Some(value) {
            spurious.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        last = Some(value);
        let Some(probe) = value.checked_sub(BASE) else {
            continue;
        };
        let mut pending = pending.lock().await;
        let shown: Vec<u64> = pending.range(..=probe).map(|(k, _)| *k).collect();
        let mut seen = seen.lock().await;
        for k in shown {
            if let Some(sent) = pending.remove(&k) {
                seen.push((sent, now - sent));
            }
        }
    }
}

async fn probe(
    client: &mut MetricSubmissionServiceClient<Channel>,
    platform: &MetadataValue<Ascii>,
    pending: &Pending,
    i: u64,
) {
    let mut req = tonic::Request::new(pb::SubmitValueRequest {
        value: Some(pb::SubmissionInput {
            metric_key: METRIC.into(),
            region_code: REGION.into(),
            department_code: "samr".into(),
            period: PERIOD.into(),
            value: Some(pb::MetricValue {
                value: Some(pb::metric_value::Value::Number((BASE + i).to_string())),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    req.metadata_mut().insert("authorization", platform.clone());
    pending.lock().await.insert(i, Instant::now());
    client
        .submit_value(req)
        .await
        .unwrap_or_else(|e| panic!("probe {i}: {e}"));
}

/// Probes every `every` for `span`, numbering from `first`; returns the next number.
async fn probes(
    client: &mut MetricSubmissionServiceClient<Channel>,
    platform: &MetadataValue<Ascii>,
    pending: &Pending,
    first: u64,
    every: Duration,
    span: Duration,
) -> u64 {
    let end = Instant::now() + span;
    let mut i = first;
    let mut tick = tokio::time::interval(every);
    while Instant::now() < end {
        tick.tick().await;
        probe(client, platform, pending, i).await;
        i += 1;
    }
    i
}

pub async fn run(bin: &str, seconds: u64, every_ms: u64) {
    let top = Topology::start(bin, &[]);
    let ch = Endpoint::from_shared(format!("http://{}", top.gateway().addr))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect_lazy();
    let admin: MetadataValue<Ascii> = format!("Bearer {ADMIN}")
        .parse()
        .unwrap_or_else(|_| panic!("header"));
    let platform = gateway::platform_key(&ch, &admin).await;
    let mut prober = MetricSubmissionServiceClient::new(ch.clone());
    let every = Duration::from_millis(every_ms);

    let pending: Pending = Arc::default();
    let seen: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::default();
    let spurious = Arc::new(AtomicUsize::new(0));
    // A first value, so the watched input exists before the listener starts.
    probe(&mut prober, &platform, &pending, 0).await;
    pending.lock().await.clear();
    let listener = tokio::spawn(listen(
        ch.clone(),
        admin.clone(),
        Arc::clone(&pending),
        Arc::clone(&seen),
        Arc::clone(&spurious),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The anchor: the same probes, nothing else running.
    let quiet = Duration::from_secs(seconds.clamp(3, 10));
    let next = probes(&mut prober, &platform, &pending, 1, every, quiet).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let anchor: Vec<Duration> = seen.lock().await.drain(..).map(|(_, d)| d).collect();
    let lost_quiet = std::mem::take(&mut *pending.lock().await).len();

    // Under load.
    let stop = Arc::new(AtomicBool::new(false));
    let loaded = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for c in 0..8usize {
        let (ch, platform, stop, loaded) = (
            ch.clone(),
            platform.clone(),
            Arc::clone(&stop),
            Arc::clone(&loaded),
        );
        load.push(tokio::spawn(async move {
            let mut client = MetricSubmissionServiceClient::new(ch);
            let mut b = c;
            while !stop.load(Ordering::Relaxed) {
                gateway::submit_load_batch(&mut client, &platform, b).await;
                loaded.fetch_add(100, Ordering::Relaxed);
                b += 8;
            }
        }));
    }
    // Let the load reach its pace before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let load_start = (Instant::now(), loaded.load(Ordering::Relaxed));
    probes(
        &mut prober,
        &platform,
        &pending,
        next,
        every,
        Duration::from_secs(seconds),
    )
    .await;
    let load_values = loaded.load(Ordering::Relaxed) - load_start.1;
    let load_secs = load_start.0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await
            .unwrap_or_else(|e| panic!("a load caller failed: {e}"));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let under_load: Vec<Duration> = seen.lock().await.drain(..).map(|(_, d)| d).collect();
    let lost_loaded = pending.lock().await.len();
    listener.abort();

    println!(
        "WatchScorecard through the gateway ({}), a probe every {every_ms} ms; latency from sending the change to the update that shows it (an upper bound of commit -> delivery):",
        top.db
    );
    let quiet_p99 = summary("  anchor, no load", anchor);
    let load_p99 = summary(
        &format!(
            "  while ingesting {:.0} values/s (batches of 100, 8 callers)",
            load_values as f64 / load_secs
        ),
        under_load,
    );
    println!(
        "  ratio p99 loaded / anchor: {:.1}x; goal p99 <= 500 ms while 25,000 values/s are ingested: {}",
        load_p99.as_secs_f64() / quiet_p99.as_secs_f64().max(1e-6),
        if load_p99 <= Duration::from_millis(500) {
            "met at this rate"
        } else {
            "missed"
        }
    );
    println!(
        "  probes never shown: {lost_quiet} quiet, {lost_loaded} loaded; updates showing no change (the load woke the watch): {}",
        spurious.load(Ordering::Relaxed)
    );
    println!("memory after the run: {}", top.memory());
}
