//! Crash safety and database outages, against the platform run as four real processes
//! (`citycredit_tests::topology`) on PostgreSQL (`DATABASE_URL`; without it libtest reports them
//! as ignored).
//!
//! - `kill_9_ingestion_under_load`: clients push through the gateway (every push with an
//!   idempotency key, retried with the same key after errors) while the ingestion process is
//!   killed with SIGKILL at random moments and restarted; then the store is reconciled with the
//!   clients' logs of acknowledged submissions.
//! - `database_faults_under_load`: the same, with the ingestion process's database connections
//!   delayed, reset and blackholed by the test's TCP proxy.
//! - `database_outage_fails_fast_and_recovers`: calls during a cut fail fast (UNAVAILABLE with
//!   RetryInfo, or DEADLINE_EXCEEDED within the deadline), health follows the database, the
//!   process stays up and its connections do not leak.
//!
//! Each is named `<test>::postgres`. CI runs a few cycles. The long runs (RELIABILITY.md):
//! `CHAOS_CYCLES=25 cargo test -p citycredit-tests --test chaos -- --nocapture --test-threads 1`.
//! `CHAOS_SEED=<n>` replays the random moments of a run (the seed is printed).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

use citycredit::proto::v1 as pb;
use citycredit_tests::ingestion::number_input;
use citycredit_tests::topology::{Fault, Part, Topology, TopologyOptions};
use citycredit_tests::{AuthChannel, postgres_only};

type Client = pb::metric_submission_service_client::MetricSubmissionServiceClient<AuthChannel>;

/// Kill or fault cycles: `CHAOS_CYCLES`, else `ci`.
fn cycles(ci: usize) -> usize {
    std::env::var("CHAOS_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ci)
}

/// A small deterministic generator (xorshift) so a run can be replayed with `CHAOS_SEED`.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("CHAOS_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| citycredit_store::now_micros().unsigned_abs());
        eprintln!("{test}: CHAOS_SEED={seed}");
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

// ---------------------------------------------------------------------------------------------
// The load and its log.

/// One push: its key and values (unique numbers), and whether it is a batch.
#[derive(Clone, Debug)]
struct Push {
    key: String,
    values: Vec<String>,
    batch: bool,
}

/// What the clients did.
#[derive(Default)]
struct Ledger {
    /// Every push attempted, by key.
    attempted: BTreeMap<String, Push>,
    /// Acknowledged pushes: key -> (first id, last id).
    acked: BTreeMap<String, (u64, u64)>,
    /// Error codes seen (the pushes were retried).
    errors: BTreeMap<String, u64>,
    /// Acknowledgements that were replays of an earlier, unacknowledged success.
    replayed: u64,
    /// Pushes given up on (never acknowledged).
    given_up: u64,
}

const METRIC: &str = "uscc.codes_total";

fn input(v: &str) -> pb::SubmissionInput {
    number_input(METRIC, "330802", "2026", "samr", v)
}

/// Sends `push` once; Ok((first id, last id, replayed)).
async fn send(
    c: &mut Client,
    push: &Push,
    deadline: Duration,
) -> Result<(u64, u64, bool), tonic::Status> {
    if push.batch {
        // Two messages, the key on the first: the stream is all or nothing.
        let (a, b) = push.values.split_at(push.values.len() / 2);
        let msgs = vec![
            pb::SubmitBatchRequest {
                idempotency_key: push.key.clone(),
                validate_only: false,
                values: a.iter().map(|v| input(v)).collect(),
            },
            pb::SubmitBatchRequest {
                idempotency_key: String::new(),
                validate_only: false,
                values: b.iter().map(|v| input(v)).collect(),
            },
        ];
        let mut req = tonic::Request::new(tokio_stream::iter(msgs));
        req.set_timeout(deadline);
        let r = c.submit_batch(req).await?.into_inner();
        Ok((r.first_submission_id, r.last_submission_id, r.replayed))
    } else {
        let mut req = tonic::Request::new(pb::SubmitValueRequest {
            value: Some(input(&push.values[0])),
            idempotency_key: push.key.clone(),
            validate_only: false,
        });
        req.set_timeout(deadline);
        let r = c.submit_value(req).await?.into_inner();
        let id = r.submission.map_or(0, |s| s.id);
        Ok((id, id, r.replayed))
    }
}

/// One client: pushes until `stop`, each push retried with its key until acknowledged (or
/// `give_up` has passed).
async fn client_loop(
    n: u64,
    mut c: Client,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    acks: Arc<AtomicU64>,
) {
    let give_up = Duration::from_secs(90);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let batch = seq % 4 == 3;
        let count = if batch { 6 } else { 1 };
        let push = Push {
            key: format!("chaos-c{n}-{seq}"),
            values: (0..count)
                .map(|j| (n * 100_000_000 + seq * 10 + j).to_string())
                .collect(),
            batch,
        };
        lock(&ledger)
            .attempted
            .insert(push.key.clone(), push.clone());
        let started = Instant::now();
        let mut failed_before = false;
        loop {
            match send(&mut c, &push, Duration::from_secs(5)).await {
                Ok((first, last, replayed)) => {
                    let mut l = lock(&ledger);
                    l.acked.insert(push.key.clone(), (first, last));
                    if replayed {
                        l.replayed += 1;
                        assert!(failed_before, "{}: a first attempt was a replay", push.key);
                    }
                    acks.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(status) => {
                    failed_before = true;
                    *lock(&ledger)
                        .errors
                        .entry(format!("{:?}", status.code()))
                        .or_default() += 1;
                    assert!(
                        matches!(
                            status.code(),
                            // Never INTERNAL: a service killed mid-answer is UNAVAILABLE.
                            Code::Unavailable
                                | Code::DeadlineExceeded
                                | Code::Cancelled
                                | Code::Unknown
                                | Code::ResourceExhausted
                        ),
                        "{}: unexpected {status:?}",
                        push.key
                    );
                    if started.elapsed() > give_up {
                        lock(&ledger).given_up += 1;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        seq += 1;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Clients pushing through the gateway.
struct Load {
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    acks: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(t: &Topology, clients: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let acks = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|n| {
                let c = Client::new(t.admin());
                tokio::spawn(client_loop(
                    n,
                    c,
                    Arc::clone(&stop),
                    Arc::clone(&ledger),
                    Arc::clone(&acks),
                ))
            })
            .collect();
        Load {
            stop,
            ledger,
            acks,
            tasks,
        }
    }

    fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    /// Waits until `more` pushes are acknowledged (the platform is taking load again).
    async fn progress(&self, more: u64, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let target = self.acks() + more;
        while start.elapsed() < limit {
            if self.acks() >= target {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Stops the clients after their current push (retried until acknowledged).
    async fn finish(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap_or_else(|e| panic!("client: {e}"));
        }
        std::mem::take(&mut *lock(&self.ledger))
    }
}

// ---------------------------------------------------------------------------------------------
// Reconciliation.

/// Figures of one reconciliation.
#[derive(Debug)]
struct Reconciled {
    rows: usize,
    acked_pushes: usize,
    acked_values: usize,
    unacked_stored: usize,
}

/// Checks the store against the ledger: every acknowledged value present exactly once with its
/// key and its acknowledged id; no unknown value; every unacknowledged push all or nothing;
/// replays of acknowledged pushes answer the first result and store nothing; the audit chain
/// is intact.
async fn reconcile(t: &Topology, ledger: &Ledger) -> Reconciled {
    use sqlx::Row;
    let db = t.store().await;
    let rows = sqlx::query(
        "SELECT id, idempotency_key, value FROM submissions WHERE kind = 'value' ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap_or_else(|e| panic!("read the store: {e}"));
    let mut by_value: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for r in &rows {
        let id: i64 = r.try_get(0).unwrap_or_default();
        let key: String = r.try_get(1).unwrap_or_default();
        let value: String = r.try_get(2).unwrap_or_default();
        by_value.entry(value).or_default().push((id, key));
    }
    let mut owner: HashMap<&str, &Push> = HashMap::new();
    for p in ledger.attempted.values() {
        for v in &p.values {
            owner.insert(v.as_str(), p);
        }
    }
    for (value, stored) in &by_value {
        let push = owner
            .get(value.as_str())
            .unwrap_or_else(|| panic!("value {value} is stored but was never sent"));
        assert_eq!(
            stored.len(),
            1,
            "value {value} is stored {} times: {stored:?}",
            stored.len()
        );
        assert_eq!(stored[0].1, push.key, "value {value} carries the wrong key");
    }
    let mut acked_values = 0;
    let mut unacked_stored = 0;
    for (key, push) in &ledger.attempted {
        let present: Vec<i64> = push
            .values
            .iter()
            .filter_map(|v| by_value.get(v).map(|s| s[0].0))
            .collect();
        match ledger.acked.get(key) {
            Some(&(first, last)) => {
                assert_eq!(
                    present.len(),
                    push.values.len(),
                    "{key}: acknowledged but {} of {} values stored",
                    present.len(),
                    push.values.len()
                );
                let want: Vec<i64> = (first..=last).map(|i| i as i64).collect();
                assert_eq!(
                    present, want,
                    "{key}: stored ids differ from the acknowledgement"
                );
                acked_values += push.values.len();
            }
            None => {
                assert!(
                    present.is_empty() || present.len() == push.values.len(),
                    "{key}: unacknowledged and half stored ({} of {})",
                    present.len(),
                    push.values.len()
                );
                if !present.is_empty() {
                    unacked_stored += 1;
                }
            }
        }
    }

    // Retrying acknowledged pushes with the same keys replays and stores nothing.
    let mut c = Client::new(t.admin());
    for key in ledger
        .acked
        .keys()
        .step_by((ledger.acked.len() / 40).max(1))
    {
        let push = &ledger.attempted[key];
        let (first, last, replayed) = send(&mut c, push, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{key}: retry after the run: {e}"));
        assert!(replayed, "{key}: a retry was not a replay");
        assert_eq!(
            (first, last),
            ledger.acked[key],
            "{key}: a replay answered other ids"
        );
    }
    let after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM submissions")
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(after as usize, rows.len(), "retries stored something");

    let v = c
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .unwrap_or_else(|e| panic!("verify: {e}"))
        .into_inner();
    assert!(v.intact, "audit chain broken: {v:?}");
    assert_eq!(v.rows_checked as usize, rows.len());
    db.pool.close().await;
    Reconciled {
        rows: rows.len(),
        acked_pushes: ledger.acked.len(),
        acked_values,
        unacked_stored,
    }
}

fn summary(name: &str, cycles: usize, ledger: &Ledger, r: &Reconciled, extra: &str) {
    eprintln!(
        "{name}: {cycles} cycles survived; {} pushes acknowledged ({} values), {} rows stored, \
         0 lost, 0 doubled; {} unacknowledged pushes stored whole; {} acknowledgements were \
         replays after an error; {} given up; errors retried: {:?}{extra}",
        r.acked_pushes,
        r.acked_values,
        r.rows,
        r.unacked_stored,
        ledger.replayed,
        ledger.given_up,
        ledger.errors
    );
}

// ---------------------------------------------------------------------------------------------
// The tests.

async fn kill_9_ingestion_under_load() {
    let mut t = Topology::start(TopologyOptions::default()).await;
    let n = cycles(3);
    let mut rng = Rng::new("kill_9_ingestion_under_load");
    let load = Load::start(&t, 6);
    load.progress(20, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("no progress before the first kill"));
    let mut recoveries = Vec::new();
    for cycle in 0..n {
        tokio::time::sleep(rng.millis(100, 1500)).await;
        t.kill(Part::Ingestion).await;
        tokio::time::sleep(rng.millis(0, 500)).await;
        let restarted = Instant::now();
        t.start_part(Part::Ingestion).await;
        let back = load
            .progress(5, Duration::from_secs(60))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "cycle {cycle}: no progress after the restart; ingestion log:\n{}",
                    t.log_tail(Part::Ingestion, 40)
                )
            });
        recoveries.push(restarted.elapsed().max(back));
    }
    let ledger = load.finish().await;
    let r = reconcile(&t, &ledger).await;
    let worst = recoveries.iter().max().copied().unwrap_or_default();
    summary(
        "kill -9 ingestion",
        n,
        &ledger,
        &r,
        &format!("; worst restart-to-progress {worst:?}"),
    );
    assert_eq!(t.starts(Part::Ingestion) as usize, n + 1);
    assert_eq!(ledger.given_up, 0);
}

postgres_only!(
    kill_9_ingestion_under_load,
    flavor = "multi_thread",
    worker_threads = 2
);

async fn database_faults_under_load() {
    let mut t = Topology::start(TopologyOptions {
        proxy_ingestion_db: true,
        ..TopologyOptions::default()
    })
    .await;
    let n = cycles(3);
    let mut rng = Rng::new("database_faults_under_load");
    let load = Load::start(&t, 6);
    load.progress(20, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("no progress before the first fault"));
    let faults = [
        Fault::Delay(Duration::from_millis(200)),
        Fault::Reset,
        Fault::Blackhole,
    ];
    let mut worst: BTreeMap<String, Duration> = BTreeMap::new();
    for cycle in 0..n.max(3) {
        let fault = faults[cycle % faults.len()];
        tokio::time::sleep(rng.millis(100, 1000)).await;
        let proxy = t.proxy.as_ref().unwrap_or_else(|| panic!("no proxy"));
        proxy.set(fault);
        tokio::time::sleep(rng.millis(500, 2500)).await;
        // Every third cycle also kills the process while its database is cut, and starts it
        // again once the database is back (a process cannot start without its database).
        let killed = cycle % 3 == 2;
        if killed {
            t.kill(Part::Ingestion).await;
        }
        let proxy = t.proxy.as_ref().unwrap_or_else(|| panic!("no proxy"));
        proxy.set(Fault::Pass);
        if killed {
            t.start_part(Part::Ingestion).await;
        }
        let healed = Instant::now();
        load.progress(5, Duration::from_secs(60))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "cycle {cycle} ({fault:?}): no progress after the fault; ingestion log:\n{}",
                    t.log_tail(Part::Ingestion, 40)
                )
            });
        let name = format!("{fault:?}")
            .split('(')
            .next()
            .unwrap_or_default()
            .to_owned();
        let e = worst.entry(name).or_default();
        *e = (*e).max(healed.elapsed());
        assert!(t.alive(Part::Ingestion), "cycle {cycle}: ingestion exited");
    }
    let ledger = load.finish().await;
    let r = reconcile(&t, &ledger).await;
    summary(
        "database faults",
        n.max(3),
        &ledger,
        &r,
        &format!("; worst heal-to-progress by fault {worst:?}"),
    );
    assert_eq!(ledger.given_up, 0);
}

postgres_only!(
    database_faults_under_load,
    flavor = "multi_thread",
    worker_threads = 2
);

/// One probe call during an outage.
#[derive(Debug)]
struct Probe {
    code: Code,
    latency: Duration,
    retry_info: bool,
    /// The client's own deadline timer ended the call (tonic: CANCELLED "Timeout expired").
    client_deadline: bool,
}

impl Probe {
    fn of(err: Option<&tonic::Status>, latency: Duration) -> Probe {
        match err {
            None => Probe {
                code: Code::Ok,
                latency,
                retry_info: false,
                client_deadline: false,
            },
            Some(s) => Probe {
                code: s.code(),
                latency,
                retry_info: s.get_error_details().retry_info().is_some(),
                client_deadline: s.code() == Code::Cancelled && s.message() == "Timeout expired",
            },
        }
    }
}

/// Submits (fresh keys, one attempt each) and reads, every 100 ms, with a 2 s deadline,
/// until `stop`; returns the probes and the acknowledged keys (with their pushes).
async fn probe(t: &Topology, stop: Arc<AtomicBool>, round: u64) -> (Vec<Probe>, Vec<Push>) {
    let mut c = Client::new(t.admin());
    let mut probes = Vec::new();
    let mut pushes = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let push = Push {
            key: format!("outage-{round}-{i}"),
            values: vec![(900_000_000_000 + round * 1_000_000 + i).to_string()],
            batch: false,
        };
        let deadline = Duration::from_secs(2);
        let started = Instant::now();
        let result = send(&mut c, &push, deadline).await;
        let latency = started.elapsed();
        probes.push(Probe::of(result.as_ref().err(), latency));
        pushes.push(push);
        let mut req = tonic::Request::new(pb::ListSubmissionsRequest {
            page_size: 1,
            ..Default::default()
        });
        req.set_timeout(deadline);
        let started = Instant::now();
        let result = c.list_submissions(req).await;
        let latency = started.elapsed();
        probes.push(Probe::of(result.as_ref().err(), latency));
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (probes, pushes)
}

async fn database_outage_fails_fast_and_recovers() {
    let t = Topology::start(TopologyOptions {
        proxy_ingestion_db: true,
        ..TopologyOptions::default()
    })
    .await;
    let t = Arc::new(t);
    // Warm up: the pool holds its connections.
    let load = Load::start(&t, 4);
    load.progress(40, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("no progress"));
    let ledger = load.finish().await;
    let proxy = t.proxy.as_ref().unwrap_or_else(|| panic!("no proxy"));
    let before = proxy.open_connections();
    let mut all_pushes = Vec::new();
    let mut acked_during = Vec::new();
    let mut report = Vec::new();
    let mut after_each = Vec::new();

    for (round, fault) in [Fault::Blackhole, Fault::Reset, Fault::Blackhole]
        .into_iter()
        .enumerate()
    {
        let stop = Arc::new(AtomicBool::new(false));
        let prober = {
            let t = Arc::clone(&t);
            let stop = Arc::clone(&stop);
            let round = round as u64;
            tokio::spawn(async move { probe(&t, stop, round).await })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let proxy = t.proxy.as_ref().unwrap_or_else(|| panic!("no proxy"));
        proxy.set(fault);
        let down = t
            .wait_health(
                Part::Ingestion,
                ServingStatus::NotServing,
                Duration::from_secs(15),
            )
            .await
            .unwrap_or_else(|| panic!("{fault:?}: health never turned NOT_SERVING"));
        // Keep the cut for 8 s in all.
        tokio::time::sleep(Duration::from_secs(8).saturating_sub(down)).await;
        assert!(
            t.alive_pid(Part::Ingestion),
            "{fault:?}: the ingestion process exited during the cut"
        );
        proxy.set(Fault::Pass);
        let up = t
            .wait_health(
                Part::Ingestion,
                ServingStatus::Serving,
                Duration::from_secs(15),
            )
            .await
            .unwrap_or_else(|| panic!("{fault:?}: health never came back to SERVING"));
        // Writes succeed again.
        let healed = Instant::now();
        let mut c = Client::new(t.admin());
        let mut first_write = None;
        for i in 0..300 {
            let push = Push {
                key: format!("after-{round}-{i}"),
                values: vec![(800_000_000_000 + round as u64 * 1000 + i).to_string()],
                batch: false,
            };
            let ok = send(&mut c, &push, Duration::from_secs(2)).await.is_ok();
            all_pushes.push(push.clone());
            if ok {
                acked_during.push(push);
                first_write = Some(healed.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let first_write = first_write.unwrap_or_else(|| {
            panic!(
                "{fault:?}: no write succeeded after recovery; log:\n{}",
                t.log_tail(Part::Ingestion, 40)
            )
        });
        stop.store(true, Ordering::Relaxed);
        let (probes, pushes) = prober.await.unwrap_or_else(|e| panic!("{e}"));
        let failed: Vec<&Probe> = probes.iter().filter(|p| p.code != Code::Ok).collect();
        let worst = probes.iter().map(|p| p.latency).max().unwrap_or_default();
        let worst_failed = failed.iter().map(|p| p.latency).max().unwrap_or_default();
        let mut codes: BTreeMap<String, usize> = BTreeMap::new();
        for p in &probes {
            *codes.entry(format!("{:?}", p.code)).or_default() += 1;
        }
        for p in &failed {
            // tonic's client enforces the deadline it sends and reports its own expiry as
            // CANCELLED ("Timeout expired"): that is DEADLINE_EXCEEDED seen from this side.
            assert!(
                matches!(p.code, Code::Unavailable | Code::DeadlineExceeded)
                    || (p.code == Code::Cancelled && p.client_deadline),
                "{fault:?}: a call failed with {p:?}"
            );
            if p.code == Code::Unavailable {
                assert!(p.retry_info, "{fault:?}: UNAVAILABLE without RetryInfo");
            }
            assert!(
                p.latency <= Duration::from_millis(2_500),
                "{fault:?}: a call took {:?} against a 2 s deadline",
                p.latency
            );
        }
        assert!(!failed.is_empty(), "{fault:?}: the cut did not show");
        assert!(
            down <= Duration::from_secs(5),
            "{fault:?}: NOT_SERVING after {down:?}"
        );
        assert!(
            up <= Duration::from_secs(5),
            "{fault:?}: SERVING after {up:?}"
        );
        for (push, p) in pushes.iter().zip(probes.iter().step_by(2)) {
            all_pushes.push(push.clone());
            if p.code == Code::Ok {
                acked_during.push(push.clone());
            }
        }
        // Connections settle back (idle ones are reused, broken ones dropped).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let open = proxy.open_connections();
        after_each.push(open);
        report.push(format!(
            "{fault:?}: NOT_SERVING after {down:?}, SERVING {up:?} after recovery, first write \
             {first_write:?} after recovery; {} probes {codes:?}, worst latency {worst:?} \
             (failed calls {worst_failed:?}); proxy connections open {open}",
            probes.len()
        ));
    }
    assert!(t.alive_pid(Part::Ingestion), "the ingestion process exited");
    eprintln!(
        "database outage: connections through the proxy before {before}, after each cut {after_each:?}, accepted in all {}",
        proxy.accepted_connections()
    );
    for line in &report {
        eprintln!("database outage: {line}");
    }
    // No leak: never more than the pool plus the change feed's LISTEN connection, and no
    // growth from one cut to the next.
    for open in &after_each {
        assert!(*open <= 16 + 2, "connections leak: {after_each:?}");
    }
    assert!(
        after_each[2] <= after_each[0].max(before) + 1,
        "connections grow from cut to cut: before {before}, after {after_each:?}"
    );

    // No acknowledged value lost: everything acknowledged during and after the cuts is stored
    // once, and retrying every other push with its key completes it without doubling.
    let mut c = Client::new(t.admin());
    for push in &all_pushes {
        send(&mut c, push, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{}: retry after recovery: {e}", push.key));
    }
    let mut ledger = ledger;
    for push in &acked_during {
        ledger.attempted.insert(push.key.clone(), push.clone());
    }
    let db = t.store().await;
    for push in &acked_during {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM submissions WHERE value = $1")
            .bind(&push.values[0])
            .fetch_one(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            n, 1,
            "{}: acknowledged during an outage, stored {n} times",
            push.key
        );
    }
    for push in &all_pushes {
        ledger.attempted.insert(push.key.clone(), push.clone());
    }
    db.pool.close().await;
    let r = reconcile_values_once(&t, &ledger).await;
    eprintln!("database outage: {r} rows after retrying every push, each value once");
}

postgres_only!(
    database_outage_fails_fast_and_recovers,
    flavor = "multi_thread",
    worker_threads = 2
);

/// Every value sent is stored exactly once (after every push was retried to success).
async fn reconcile_values_once(t: &Topology, ledger: &Ledger) -> usize {
    use sqlx::Row;
    let db = t.store().await;
    let rows = sqlx::query("SELECT value FROM submissions WHERE kind = 'value'")
        .fetch_all(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &rows {
        *seen
            .entry(r.try_get::<String, _>(0).unwrap_or_default())
            .or_default() += 1;
    }
    for (key, push) in &ledger.attempted {
        let acked =
            ledger.acked.contains_key(key) || key.starts_with("outage") || key.starts_with("after");
        for v in &push.values {
            let n = seen.get(v).copied().unwrap_or(0);
            if acked {
                assert_eq!(n, 1, "{key}: value {v} stored {n} times");
            } else {
                assert!(n <= 1, "{key}: value {v} stored {n} times");
            }
        }
    }
    db.pool.close().await;
    rows.len()
}
