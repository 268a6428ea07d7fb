//! `citycredit-bench access-log`: what the gateway's access log costs (issue 15 point 6). The
//! split topology (four processes) is started once per setting of
//! `[gateway] access_log_successes` — 1 (the default: an INFO line for every call), N (one
//! success in N) and 0 (failures only) — with the gateway's log filter at its default (`info`).
//! Closed-loop callers (tonic, this process, `clients` in flight) call GetMetric (a small
//! answer, so the rate is as high as this machine allows) through the gateway for `seconds`;
//! printed: calls/s, the gateway's CPU (utime + stime from /proc/<pid>/stat) in cores and in
//! µs per call, the bytes of log the gateway wrote per call, what that is at 20,000 calls/s,
//! and the gateway's memory.

#![allow(
    clippy::float_arithmetic,
    clippy::cast_precision_loss,
    reason = "benchmark rates and ratios, never scores"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::indicator_service_client::IndicatorServiceClient;

use crate::gateway::{ADMIN, Topology, memory_of};

/// Clock ticks per second of /proc/<pid>/stat (USER_HZ, 100 on every Linux this runs on).
const TICKS: f64 = 100.0;

/// utime + stime of process `pid` ("self" for this one), in seconds.
pub(crate) fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime is field 14 and stime 15 of the whole line: 11 and 12 counted from the state.
    (ticks(11) + ticks(12)) as f64 / TICKS
}

pub async fn run(bin: &str, seconds: u64, clients: usize, sampled: u32) {
    for (label, successes) in [
        ("default: every call", 1),
        ("sampled: one success in N", sampled),
        ("failures only", 0),
    ] {
        let top = Topology::start(
            bin,
            &[
                ("CITYCREDIT_LOG_FILTER", "info".to_owned()),
                (
                    "CITYCREDIT_GATEWAY__ACCESS_LOG_SUCCESSES",
                    successes.to_string(),
                ),
            ],
        );
        let pid = top.gateway().child.id();
        let channel = Endpoint::from_shared(format!("http://{}", top.gateway().addr))
            .unwrap_or_else(|e| panic!("{e}"))
            .connect_lazy();
        let bearer: MetadataValue<_> = format!("Bearer {ADMIN}")
            .parse()
            .unwrap_or_else(|_| panic!("header"));
        let calls = Arc::new(AtomicU64::new(0));
        let phase = |secs: u64| {
            let (channel, bearer, calls) = (channel.clone(), bearer.clone(), Arc::clone(&calls));
            async move {
                let until = Instant::now() + Duration::from_secs(secs);
                let mut tasks = Vec::new();
                for _ in 0..clients {
                    let (channel, bearer, calls) =
                        (channel.clone(), bearer.clone(), Arc::clone(&calls));
                    tasks.push(tokio::spawn(async move {
                        let mut client = IndicatorServiceClient::new(channel);
                        while Instant::now() < until {
                            let mut req = tonic::Request::new(pb::GetMetricRequest {
                                name: "uscc.codes_total".into(),
                            });
                            req.metadata_mut().insert("authorization", bearer.clone());
                            client
                                .get_metric(req)
                                .await
                                .unwrap_or_else(|e| panic!("GetMetric through the gateway: {e}"));
                            calls.fetch_add(1, Ordering::Relaxed);
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap_or_else(|e| panic!("a caller failed: {e}"));
                }
            }
        };
        // Warm up (connections, key cache), then measure.
        phase(2).await;
        let (calls0, cpu0, log0) = (
            calls.load(Ordering::Relaxed),
            cpu_secs(&pid.to_string()),
            top.gateway().log_bytes.load(Ordering::Relaxed),
        );
        let started = Instant::now();
        phase(seconds).await;
        let wall = started.elapsed().as_secs_f64();
        // Let the log drain into the counter.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n = (calls.load(Ordering::Relaxed) - calls0) as f64;
        let cpu = cpu_secs(&pid.to_string()) - cpu0;
        let log = (top.gateway().log_bytes.load(Ordering::Relaxed) - log0) as f64;
        let per_call = log / n;
        println!(
            "access_log_successes = {successes} ({label}): {:.0} calls/s through the gateway ({clients} in flight, {seconds} s); \
             gateway CPU {:.2} cores, {:.1} us per call; log {per_call:.1} bytes per call ({:.2} MB/s here, {:.2} MB/s at 20,000 calls/s); {}",
            n / wall,
            cpu / wall,
            cpu / n * 1e6,
            log / wall / 1e6,
            per_call * 20_000.0 / 1e6,
            memory_of("gateway", pid)
        );
    }
}
