//! `citycredit-bench`: measures the ingestion service on this machine and prints figures and
//! ratios to the targets of the ingestion issue. Build with `--release`. PostgreSQL runs use
//! `DATABASE_URL` and a fresh schema that is dropped afterwards.

mod access_log;
mod attacks;
mod ceiling;
mod client_latency;
mod echo;
mod overload;
mod serial_latency;
mod watch_latency;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

mod gateway;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use citycredit::org;
use citycredit::proto::v1 as pb;
use citycredit_core::auth::{Principal, Role};
use citycredit_core::catalog::Catalog;
use citycredit_core::city::City;
use citycredit_core::org::Org;
use citycredit_ingestion::code_audit::{MAX_DISTINCT, complete};
use citycredit_ingestion::{Ingestion, IngestionOptions};
use citycredit_store::testing::{self, TestDb};

#[derive(Parser)]
#[command(name = "citycredit-bench", about = "Ingestion benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Db {
    Sqlite,
    Postgres,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Periods {
    Yearly,
    Monthly,
}

#[derive(Subcommand)]
enum Cmd {
    /// The split topology as real processes: direct vs through the gateway, ingest through it,
    /// the memory of every process, and on PostgreSQL the database's own ceiling for the same
    /// rows (UNNEST and COPY, no platform). Uses DATABASE_URL when set (PostgreSQL), else SQLite.
    Gateway {
        /// The citycredit binary (build it with --release).
        #[arg(long, default_value = "target/release/citycredit")]
        bin: String,
        #[arg(long, default_value_t = 64_000)]
        calls: usize,
        #[arg(long, default_value_t = 100_000)]
        values: usize,
        /// The gateway's `worker_threads` (unset: its default, one per core).
        #[arg(long)]
        gateway_threads: Option<usize>,
    },
    /// Batches of `batch` values submitted by `clients` concurrent callers, direct to the service.
    IngestBatch {
        #[arg(long, value_enum, default_value = "sqlite")]
        db: Db,
        #[arg(long, default_value_t = 200_000)]
        values: usize,
        #[arg(long, default_value_t = 100)]
        batch: usize,
        #[arg(long, default_value_t = 8)]
        clients: usize,
    },
    /// Single-value submissions from `clients` concurrent callers (group commit).
    IngestUnary {
        #[arg(long, value_enum, default_value = "postgres")]
        db: Db,
        #[arg(long, default_value_t = 50_000)]
        values: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
    },
    /// Streams codes through CodeAuditService over loopback gRPC.
    CodeAudit {
        #[arg(long, default_value_t = 5_000_000)]
        codes: usize,
        #[arg(long, default_value_t = 10_000)]
        per_message: usize,
    },
    /// Aggregation query for the city with `submissions` stored submissions.
    Aggregate {
        #[arg(long, value_enum, default_value = "postgres")]
        db: Db,
        #[arg(long, default_value_t = 1_000_000)]
        submissions: usize,
        #[arg(long, default_value_t = 2_000)]
        queries: usize,
        /// `monthly`: each value is reported for one month of 2026 (a year of monthly pushes),
        /// so the city's figures for 2026 are roll-ups (rulebook v2 time); `yearly`: every value
        /// is reported for 2026 itself.
        #[arg(long, value_enum, default_value = "yearly")]
        periods: Periods,
    },
    /// One principal (or a key-less caller) attacks the platform (the real binary, all in one
    /// process), another principal works: the victim's goodput alone and under each attack,
    /// the platform's memory, what the attacker got. Uses DATABASE_URL when set, else SQLite.
    Attacks {
        /// The citycredit binary (build it with --release).
        #[arg(long, default_value = "target/release/citycredit")]
        bin: String,
        /// Length of each measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The victim's closed-loop callers.
        #[arg(long, default_value_t = 8)]
        victims: usize,
        /// Run only this attack (idle-streams, header-only, zero-window, random-paths,
        /// failed-auth).
        #[arg(long)]
        only: Option<String>,
        /// Calls per second of the key-less floods (0: as fast as the attacker goes).
        #[arg(long, default_value_t = 2000)]
        flood_rate: u64,
    },
    /// One attack, in a process of its own (started by `attacks`).
    #[command(hide = true)]
    AttackWorker {
        #[arg(long)]
        kind: String,
        #[arg(long)]
        addr: std::net::SocketAddr,
        #[arg(long, default_value = "")]
        key: String,
        #[arg(long)]
        seconds: u64,
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Serial (one call in flight) latency as a Python grpcio client sees it, through a real
    /// socket, against the real binary (all in one process, SQLite): GetScorecard (about 20 KB),
    /// ListDepartments and GetCatalog. Needs tests/python/run.sh to have set up its venv.
    SerialLatency {
        /// The citycredit binary (build it with --release).
        #[arg(long, default_value = "target/release/citycredit")]
        bin: String,
        #[arg(long, default_value_t = 500)]
        calls: usize,
    },
    /// The serial latency table as a Python grpcio client sees it (its own process, real
    /// sockets): SubmitValue, SubmitBatch of 100, GetScorecard cached and uncached,
    /// ExplainIndicator, GetDepartmentWorklist, QueryAggregates, direct to the all-in-one
    /// platform and through the gateway of the split topology, each beside a bare tonic echo
    /// anchor of the same sizes called by the same client; memory of every process after each
    /// load. PostgreSQL when DATABASE_URL names it, else SQLite. Needs tests/python/run.sh to
    /// have set up its venv (exits 2 otherwise).
    ClientLatency {
        /// The citycredit binary (build it with --release).
        #[arg(long, default_value = "target/release/citycredit")]
        bin: String,
        #[arg(long, default_value_t = 300)]
        calls: usize,
        #[arg(long, value_enum, default_value = "both")]
        topology: client_latency::Topo,
    },
    /// WatchScorecard latency from a change to the update that shows it, with no load (the
    /// anchor) and while batches are ingested at full speed through the gateway (split
    /// topology, four processes). PostgreSQL when DATABASE_URL names it, else SQLite.
    WatchLatency {
        /// The citycredit binary (build it with --release).
        #[arg(long, default_value = "target/release/citycredit")]
        bin: String,
        /// Seconds of probing under load.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Milliseconds between probes.
        #[arg(long, default_value_t = 200)]
        every_ms: u64,
    },
    /// The gateway's access log at its default (every call), sampled and failures only:
    /// calls/s, the gateway's CPU, bytes of log per call (split topology, four processes).
    AccessLog {
        /// The citycredit binary (build it with --release).
        #[arg(long, default_value = "target/release/citycredit")]
        bin: String,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// N of the sampled run: one successful call in N is logged.
        #[arg(long, default_value_t = 100)]
        sampled: u32,
    },
    /// Overload through the gateway of four processes (PostgreSQL from DATABASE_URL): the
    /// sustainable push rate, then each factor times it; goodput, p99, shedding, the adaptive
    /// limit and gateway memory.
    Overload {
        /// Closed-loop callers that measure the sustainable rate.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        measure_secs: u64,
        /// Length of each overload.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        /// Multiples of the sustainable rate to offer, one open loop each.
        #[arg(long, value_delimiter = ',', default_value = "2,4")]
        factors: Vec<u32>,
        /// The gateway's `gateway.max_concurrent_calls` (ceiling of the adaptive limit).
        #[arg(long, default_value_t = 512)]
        max_concurrent_calls: usize,
        /// The gateway's `gateway.min_concurrent_calls` (floor of the adaptive limit).
        #[arg(long, default_value_t = 16)]
        min_concurrent_calls: usize,
        /// The gateway's `gateway.per_principal_rate` (and burst).
        #[arg(long, default_value_t = 100_000)]
        per_principal_rate: u32,
        /// Each call's deadline.
        #[arg(long, default_value_t = 5000)]
        deadline_ms: u64,
    },
}

fn platform() -> Principal {
    Principal {
        id: "bench-platform".into(),
        role: Role::Platform,
        department: None,
        credential: None,
    }
}

const REGIONS: [&str; 7] = [
    "330800", "330802", "330803", "330822", "330824", "330825", "330881",
];
const DEPARTMENTS: [&str; 5] = ["samr", "tax", "court", "civil-affairs", "business-env"];

/// The i-th value: COUNT metrics over every region and a few departments, so values supersede
/// each other as they would in real use.
fn value(catalog: &Catalog, i: usize) -> pb::SubmissionInput {
    let counts: Vec<&str> = catalog
        .metrics
        .iter()
        .filter(|m| m.kind == citycredit_core::catalog::MetricKind::Count)
        .map(|m| m.key.as_str())
        .collect();
    pb::SubmissionInput {
        metric_key: counts[i % counts.len()].to_owned(),
        region_code: REGIONS[(i / counts.len()) % REGIONS.len()].to_owned(),
        period: "2026".into(),
        department_code: DEPARTMENTS[(i / 7) % DEPARTMENTS.len()].to_owned(),
        value: Some(pb::MetricValue {
            value: Some(pb::metric_value::Value::Number((i % 100_000).to_string())),
        }),
        ..Default::default()
    }
}

async fn store(db: Db) -> TestDb {
    match db {
        Db::Sqlite => testing::sqlite().await,
        Db::Postgres => testing::postgres().await,
    }
}

fn ingestion(db: &TestDb) -> (Ingestion, Arc<Catalog>) {
    let catalog = Arc::new(Catalog::builtin().unwrap_or_else(|e| panic!("{e}")));
    let city = City::builtin(&catalog).unwrap_or_else(|e| panic!("{e}"));
    let org = org::fixed(Org::new(&catalog, city));
    // As the platform runs on PostgreSQL: with the change-feed listener (other processes'
    // commits are heard, so current values are kept in memory).
    let options = match db.postgres_schema() {
        Some((url, schema)) => IngestionOptions {
            listen_url: Some(url.to_owned()),
            notify_channel: format!("citycredit_changes_{schema}"),
            ..IngestionOptions::default()
        },
        None => IngestionOptions::default(),
    };
    let ing = Ingestion::start(db.db().clone(), catalog.clone(), org, options);
    (ing, catalog)
}

fn ratio(measured: f64, target: f64) -> String {
    #[allow(clippy::float_arithmetic, reason = "benchmark ratios, not scores")]
    let r = measured / target;
    format!("{r:.2}x target")
}

#[allow(
    clippy::cast_precision_loss,
    clippy::float_arithmetic,
    reason = "benchmark figures"
)]
fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

async fn ingest_batch(db: Db, values: usize, batch: usize, clients: usize) {
    let tdb = store(db).await;
    let (ing, catalog) = ingestion(&tdb);
    let p = platform();
    let inputs: Vec<pb::SubmissionInput> = (0..values).map(|i| value(&catalog, i)).collect();
    let batches: Vec<Vec<pb::SubmissionInput>> = inputs.chunks(batch).map(<[_]>::to_vec).collect();
    let queue = Arc::new(std::sync::Mutex::new(batches.into_iter().enumerate()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (ing, p, queue) = (ing.clone(), p.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.next());
                let Some((i, b)) = next else { break };
                let checked = ing.check(&p, &b, false).unwrap_or_else(|e| panic!("{e}"));
                ing.write_values(&p, checked, &format!("batch-{i}"), "batch")
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let took = start.elapsed();
    let rate = per_sec(values, took);
    let target = if db == Db::Postgres {
        25_000.0
    } else {
        20_000.0
    };
    println!(
        "ingest-batch db={db:?} values={values} batch={batch} clients={clients}: {took:.2?}, {rate:.0} values/s ({})",
        ratio(rate, target)
    );
}

async fn ingest_unary(db: Db, values: usize, clients: usize) {
    let tdb = store(db).await;
    let (ing, catalog) = ingestion(&tdb);
    let p = platform();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (ing, p, next, catalog) = (ing.clone(), p.clone(), next.clone(), catalog.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= values {
                    break;
                }
                let input = value(&catalog, i);
                let checked = ing
                    .check(&p, std::slice::from_ref(&input), true)
                    .unwrap_or_else(|e| panic!("{e}"));
                ing.write_values(&p, checked, &format!("u-{i}"), "value")
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let took = start.elapsed();
    let rate = per_sec(values, took);
    println!(
        "ingest-unary db={db:?} values={values} clients={clients}: {took:.2?}, {rate:.0} submissions/s ({})",
        ratio(rate, 5_000.0)
    );
}

async fn code_audit(codes: usize, per_message: usize) {
    let tdb = store(Db::Sqlite).await;
    let (ing, _) = ingestion(&tdb);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let svc = tonic::service::interceptor::InterceptedService::new(
        ing.code_audit_service()
            .max_decoding_message_size(64 * 1024 * 1024),
        |mut r: tonic::Request<()>| {
            r.extensions_mut().insert(platform());
            Ok(r)
        },
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    // Real-form codes, 1 in 100 repeated.
    let all: Vec<String> = (0..codes)
        .map(|i| {
            let n = if i % 100 == 99 { i - 1 } else { i };
            complete(&format!("9133{:02}{:010}", n % 100, n)).unwrap_or_default()
        })
        .collect();
    let msgs: Vec<pb::AuditCodesRequest> = all
        .chunks(per_message)
        .map(|c| pb::AuditCodesRequest {
            codes: c.to_vec(),
            record: None,
        })
        .collect();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut client = pb::code_audit_service_client::CodeAuditServiceClient::new(channel)
        .max_encoding_message_size(64 * 1024 * 1024);
    let start = Instant::now();
    let r = client
        .audit_codes(tokio_stream::iter(msgs))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let took = start.elapsed();
    let rate = per_sec(codes, took);
    println!(
        "code-audit codes={codes} per_message={per_message}: {took:.2?}, {rate:.0} codes/s ({}); valid={} duplicate={}; memory: 16 bytes per distinct valid code in a u128 hash set, at most {} bytes with table overhead, capped at {MAX_DISTINCT} distinct codes",
        ratio(rate, 1_000_000.0),
        r.valid,
        r.duplicate,
        citycredit_ingestion::code_audit::BYTES_PER_CODE
    );
}

/// Writes the i-th value at one of the counties (in turn) for 2026: a change that drops one
/// (county, year) pair of the city's current values.
async fn change_a_county_value(ing: &Ingestion, catalog: &Catalog, p: &Principal, i: usize) {
    let mut v = value(catalog, i);
    v.region_code = REGIONS[1 + i % (REGIONS.len() - 1)].to_owned();
    let checked = ing.check(p, &[v], false).unwrap_or_else(|e| panic!("{e}"));
    ing.write_values(p, checked, "", "batch")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The anchors' state: no current values and no figures kept in memory, so the next
/// aggregation reads every pair and computes every metric.
fn forget_what_is_kept(ing: &Ingestion) {
    ing.current_rows().drop_all();
    ing.kept_figures().clear();
}

async fn aggregate(db: Db, submissions: usize, queries: usize, periods: Periods) {
    let tdb = store(db).await;
    let (ing, catalog) = ingestion(&tdb);
    let p = platform();
    let load = Instant::now();
    let mut done = 0;
    let mut tasks = Vec::new();
    let chunk = 5_000;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..4 {
        let (ing, p, next, catalog) = (ing.clone(), p.clone(), next.clone(), catalog.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(chunk, std::sync::atomic::Ordering::Relaxed);
                if start >= submissions {
                    break;
                }
                let inputs: Vec<_> = (start..(start + chunk).min(submissions))
                    .map(|i| {
                        let mut v = value(&catalog, i);
                        if periods == Periods::Monthly {
                            // Every key (metric, region, department) gets each month in turn.
                            v.period = format!("2026-{:02}", (i / 5_000) % 12 + 1);
                        }
                        v
                    })
                    .collect();
                let checked = ing
                    .check(&p, &inputs, false)
                    .unwrap_or_else(|e| panic!("{e}"));
                ing.write_values(&p, checked, "", "batch")
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{e}"));
        done += 1;
    }
    let _ = done;
    let loaded = load.elapsed();
    if db == Db::Postgres {
        let _ = sqlx::query("ANALYZE").execute(&tdb.pool).await;
    }
    // Three ways a city aggregation meets the current values kept in memory: after one value
    // changed (what a scorecard is recomputed after: a county's value for the year is written
    // before each query, and only its pairs are read again), with nothing changed, and with
    // nothing kept (each query reads every pair: the anchor). The anchor runs in a loop of its
    // own after the others: forgetting everything between two queries after a change would
    // measure them right after 19,000 rows were freed and read again, which a running
    // service does not see.
    let mut after_change = Vec::with_capacity(queries);
    let mut unchanged = Vec::with_capacity(queries);
    let mut nothing_kept = Vec::with_capacity(queries);
    let mut figures = 0;
    let city = || ing.aggregates_of("330800", "2026", None);
    std::hint::black_box(city().await.unwrap_or_else(|e| panic!("{e}")));
    for q in 0..queries {
        change_a_county_value(&ing, &catalog, &p, submissions + q).await;
        let t = Instant::now();
        let agg = city().await.unwrap_or_else(|e| panic!("{e}"));
        after_change.push(t.elapsed());
        figures = agg.sources.values().map(|s| s.len()).sum();
        let t = Instant::now();
        std::hint::black_box(city().await.unwrap_or_else(|e| panic!("{e}")));
        unchanged.push(t.elapsed());
    }
    for _ in 0..queries {
        forget_what_is_kept(&ing);
        let t = Instant::now();
        std::hint::black_box(city().await.unwrap_or_else(|e| panic!("{e}")));
        nothing_kept.push(t.elapsed());
    }
    let pct = |t: &mut Vec<Duration>, q: usize| {
        t.sort_unstable();
        t[(t.len() * q / 100).min(t.len() - 1)]
    };
    let p99 = pct(&mut after_change, 99);
    let (pairs, kept) = ing.current_rows().size();
    println!(
        "aggregate db={db:?} periods={periods:?} submissions={submissions} (loaded in {loaded:.2?}) queries={queries}: after one value changed p50 {:.2?}, p99 {p99:.2?}, max {:.2?}; {figures} current values behind the city's figures; p99 {} the 2 ms goal",
        pct(&mut after_change, 50),
        after_change.last().copied().unwrap_or_default(),
        if p99 <= Duration::from_millis(2) {
            "meets"
        } else {
            "misses"
        }
    );
    let anchor99 = pct(&mut nothing_kept, 99);
    let hundredths = p99.as_micros() * 100 / anchor99.as_micros().max(1);
    println!(
        "  nothing changed: p50 {:.2?}, p99 {:.2?}; anchor, nothing kept in memory (every pair read): p50 {:.2?}, p99 {anchor99:.2?}; after a change / anchor p99 {}.{:02}; kept at the end: {pairs} pairs, {kept} rows",
        pct(&mut unchanged, 50),
        pct(&mut unchanged, 99),
        pct(&mut nothing_kept, 50),
        hundredths / 100,
        hundredths % 100,
    );
    breakdown(&ing, queries).await;
    after_change_breakdown(&ing, &catalog, &p, submissions + queries, queries).await;
    scorecards(&ing, &catalog, &p, submissions + queries).await;
    let as_of = as_of_depths(&ing, &tdb).await;
    as_of_anchor(&tdb, as_of).await;
}

/// Where a city aggregation after one value changed spends its time: its parts as the service
/// runs them (the current values: the pairs kept in memory and a read of the changed ones; the
/// sign-offs; the aggregation with the figures kept), timed one after the other, `queries`
/// times each after a county's value changed.
async fn after_change_breakdown(
    ing: &Ingestion,
    catalog: &Catalog,
    p: &Principal,
    first: usize,
    queries: usize,
) {
    use citycredit_ingestion::kept_figures::Figures;
    use citycredit_ingestion::{aggregation, gate};
    let regions = ing.org().borrow().subtree("330800");
    let asked: citycredit_core::period::Period = "2026".parse().unwrap_or_else(|e| panic!("{e:?}"));
    let periods: Vec<String> = asked.reached_by().iter().map(ToString::to_string).collect();
    // Warm: every pair kept, every figure kept.
    ing.aggregates_of("330800", "2026", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut current, mut signoffs, mut compute, mut rows_in) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    for q in 0..queries {
        change_a_county_value(ing, catalog, p, first + q).await;
        let t = Instant::now();
        let slices = ing
            .current_values(&regions, &periods)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        current.push(t.elapsed());
        let t = Instant::now();
        let approvals = gate::approvals(ing.db(), &regions, &asked)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        signoffs.push(t.elapsed());
        rows_in = slices.iter().map(|s| s.len()).sum();
        let t = Instant::now();
        std::hint::black_box(aggregation::aggregate_pairs(
            ing.catalog(),
            "330800",
            &asked,
            0,
            &slices,
            [],
            &approvals,
            citycredit::aggregates::Selection::All,
            Figures::UseAndKeep(ing.kept_figures()),
        ));
        compute.push(t.elapsed());
    }
    let pct = |t: &mut Vec<Duration>, q: usize| {
        t.sort_unstable();
        t[(t.len() * q / 100).min(t.len() - 1)]
    };
    println!(
        "  after one value changed, its parts one after the other ({queries} each, {rows_in} current rows): current values (kept pairs and a read of the changed ones) p50 {:.2?} p99 {:.2?}; sign-offs read p50 {:.2?} p99 {:.2?}; aggregation with the figures kept p50 {:.2?} p99 {:.2?}",
        pct(&mut current, 50),
        pct(&mut current, 99),
        pct(&mut signoffs, 50),
        pct(&mut signoffs, 99),
        pct(&mut compute, 50),
        pct(&mut compute, 99),
    );
}

/// Where one city aggregation's time goes: its parts timed one after the other (the service
/// runs the two reads together), `queries` times each, p50 and p99 of each part.
async fn breakdown(ing: &Ingestion, queries: usize) {
    use citycredit_ingestion::{aggregation, gate, store};
    let regions = ing.org().borrow().subtree("330800");
    let asked: citycredit_core::period::Period = "2026".parse().unwrap_or_else(|e| panic!("{e:?}"));
    let periods: Vec<String> = asked.reached_by().iter().map(ToString::to_string).collect();
    let (mut read, mut signoffs, mut compute) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..queries {
        let t = Instant::now();
        let rows = store::versions(ing.db(), &regions, &periods, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        read.push(t.elapsed());
        let t = Instant::now();
        let approvals = gate::approvals(ing.db(), &regions, &asked)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        signoffs.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(aggregation::aggregate(
            ing.catalog(),
            "330800",
            &asked,
            0,
            &rows,
            &approvals,
            citycredit::aggregates::Selection::All,
            citycredit_ingestion::kept_figures::Figures::Fresh,
        ));
        compute.push(t.elapsed());
    }
    let pct = |t: &mut Vec<Duration>, q: usize| {
        t.sort_unstable();
        t[(t.len() * q / 100).min(t.len() - 1)]
    };
    println!(
        "aggregate, its parts one after the other ({queries} each): versions read p50 {:.2?} p99 {:.2?}; sign-offs read p50 {:.2?} p99 {:.2?}; aggregation::aggregate p50 {:.2?} p99 {:.2?}",
        pct(&mut read, 50),
        pct(&mut read, 99),
        pct(&mut signoffs, 50),
        pct(&mut signoffs, 99),
        pct(&mut compute, 50),
        pct(&mut compute, 99),
    );
    // Anchor on PostgreSQL: the same statement through the `Any` pool, which the read used
    // before it had a native pool of its own.
    if ing.db().reads.is_some() {
        let any = citycredit_store::Db {
            reads: None,
            ..ing.db().clone()
        };
        let mut through_any = Vec::new();
        for _ in 0..queries {
            let t = Instant::now();
            std::hint::black_box(
                store::versions(&any, &regions, &periods, None)
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            );
            through_any.push(t.elapsed());
        }
        let (native, old) = (pct(&mut read, 50), pct(&mut through_any, 50));
        let hundredths = native.as_micros() * 100 / old.as_micros().max(1);
        println!(
            "  anchor: the same read through the `Any` driver p50 {old:.2?} p99 {:.2?}; native / Any p50 {}.{:02}",
            pct(&mut through_any, 99),
            hundredths / 100,
            hundredths % 100,
        );
    }
}

/// City aggregations as of instants further and further back: just before now (nothing
/// accepted since), and before the last 1, 100, 1,000 and 30,000 submissions. Each is the
/// current values corrected by the versions closed after the instant, while those are fewer
/// than the current values behind the figures; further back, every key is read as of the
/// instant. Returns the first instant, for the anchor.
async fn as_of_depths(ing: &Ingestion, tdb: &TestDb) -> i64 {
    use citycredit_ingestion::{as_of, store};
    let regions = ing.org().borrow().subtree("330800");
    let periods: Vec<String> = "2026"
        .parse::<citycredit_core::period::Period>()
        .unwrap_or_else(|e| panic!("{e:?}"))
        .reached_by()
        .iter()
        .map(ToString::to_string)
        .collect();
    let current = store::versions(ing.db(), &regions, &periods, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .len();
    let head: i64 = sqlx::query_scalar("SELECT last_id FROM chain_head")
        .fetch_one(&tdb.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pct = |t: &mut Vec<Duration>, q: usize| {
        t.sort_unstable();
        t[(t.len() * q / 100).min(t.len() - 1)]
    };
    let mut first = 0;
    for back in [0_i64, 1, 100, 1_000, 30_000] {
        let t = if back == 0 {
            citycredit_store::now_micros() - 1
        } else {
            let accepted: i64 =
                sqlx::query_scalar("SELECT accept_micros FROM submissions WHERE id = $1")
                    .bind(head - back + 1)
                    .fetch_one(&tdb.pool)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            accepted - 1
        };
        if back == 0 {
            first = t;
        }
        // The service's bound: past it, every key is read as of the instant.
        let limit = current.max(256);
        let changes = as_of::changes_after(ing.db(), &regions, &periods, t, limit)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (path, closed, keys) = match &changes {
            Some(c) => (
                "current values corrected",
                c.scanned.to_string(),
                c.keys().to_string(),
            ),
            None => (
                "every key read as of it",
                format!("over {limit}"),
                "-".into(),
            ),
        };
        let mut took = Vec::new();
        for _ in 0..50 {
            let q = Instant::now();
            std::hint::black_box(
                ing.aggregates_of("330800", "2026", Some(t))
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            );
            took.push(q.elapsed());
        }
        // Its first part alone: the scan of the versions closed after the instant (up to the
        // bound).
        let mut scan = Vec::new();
        for _ in 0..50 {
            let q = Instant::now();
            std::hint::black_box(
                as_of::changes_after(ing.db(), &regions, &periods, t, limit)
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            );
            scan.push(q.elapsed());
        }
        let p99 = pct(&mut took, 99);
        println!(
            "aggregate as_of before the last {back} submissions ({closed} versions closed after it, of {keys} of the city's keys; {path}): p50 {:.2?}, p99 {p99:.2?} over 50 queries (of which the scan of closed versions alone: p50 {:.2?}, p99 {:.2?}); p99 {} the 20 ms goal",
            pct(&mut took, 50),
            pct(&mut scan, 50),
            pct(&mut scan, 99),
            if p99 <= Duration::from_millis(20) {
                "meets"
            } else {
                "misses"
            }
        );
    }
    first
}

/// The `as_of` read alone, as the store answers it (one probe per key of `value_keys`), and,
/// as the anchor in the same run on the same data, the query it replaced (every version of
/// those periods and regions, filtered by interval, over the index it had), run directly
/// through sqlx.
async fn as_of_anchor(tdb: &TestDb, as_of: i64) {
    let regions: Vec<String> = sqlx::query_scalar("SELECT DISTINCT region FROM value_keys")
        .fetch_all(&tdb.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let periods: Vec<String> = "2026"
        .parse::<citycredit_core::period::Period>()
        .unwrap_or_else(|e| panic!("{e}"))
        .reached_by()
        .iter()
        .map(ToString::to_string)
        .collect();
    let runs = 20;
    let t = Instant::now();
    let mut new_rows = 0;
    for _ in 0..runs {
        new_rows = citycredit_ingestion::store::versions(tdb.db(), &regions, &periods, Some(as_of))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .len();
    }
    let new = t.elapsed() / runs;
    // The anchor gets the index it had (migration 0220 dropped it).
    sqlx::query("CREATE INDEX value_versions_as_of ON value_versions (period, region, valid_from)")
        .execute(&tdb.pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    if tdb.db().backend == citycredit_store::Backend::Postgres {
        let _ = sqlx::query("ANALYZE value_versions")
            .execute(&tdb.pool)
            .await;
    }
    let t = Instant::now();
    let mut old_rows = 0;
    for _ in 0..runs {
        let mut qb = sqlx::QueryBuilder::<sqlx::Any>::new(
            "SELECT submission_id FROM value_versions WHERE period IN (",
        );
        let mut list = qb.separated(", ");
        for p in &periods {
            list.push_bind(p.as_str());
        }
        list.push_unseparated(") AND region IN (");
        let mut list = qb.separated(", ");
        for r in &regions {
            list.push_bind(r.as_str());
        }
        list.push_unseparated(")");
        qb.push(" AND valid_from <= ")
            .push_bind(as_of)
            .push(" AND (valid_to IS NULL OR valid_to > ")
            .push_bind(as_of)
            .push(")");
        old_rows = citycredit_store::numbered_as::<(i64,)>(&mut qb)
            .unwrap_or_else(|e| panic!("{e}"))
            .fetch_all(&tdb.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .len();
    }
    let old = t.elapsed() / runs;
    let tenths = old.as_micros() * 10 / new.as_micros().max(1);
    let _ = sqlx::query("DROP INDEX value_versions_as_of")
        .execute(&tdb.pool)
        .await;
    println!(
        "as_of read alone ({} regions, {} periods), mean over {runs}: {new:.2?} for {new_rows} rows by value key; anchor, the old interval scan on the same data: {old:.2?} for {old_rows} rows ({}.{}x)",
        regions.len(),
        periods.len(),
        tenths / 10,
        tenths % 10
    );
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async {
        match cli.command {
            Cmd::Gateway {
                bin,
                calls,
                values,
                gateway_threads,
            } => gateway::run(bin, calls, values, gateway_threads).await,
            Cmd::IngestBatch {
                db,
                values,
                batch,
                clients,
            } => ingest_batch(db, values, batch, clients).await,
            Cmd::IngestUnary {
                db,
                values,
                clients,
            } => ingest_unary(db, values, clients).await,
            Cmd::CodeAudit { codes, per_message } => code_audit(codes, per_message).await,
            Cmd::Aggregate {
                db,
                submissions,
                queries,
                periods,
            } => aggregate(db, submissions, queries, periods).await,
            Cmd::Attacks {
                bin,
                seconds,
                victims,
                only,
                flood_rate,
            } => {
                attacks::run(attacks::Attacks {
                    bin,
                    seconds,
                    victims,
                    only,
                    flood_rate,
                })
                .await;
            }
            Cmd::AttackWorker {
                kind,
                addr,
                key,
                seconds,
                rate,
            } => attacks::worker(kind, addr, key, seconds, rate).await,
            Cmd::SerialLatency { bin, calls } => serial_latency::run(&bin, calls).await,
            Cmd::WatchLatency {
                bin,
                seconds,
                every_ms,
            } => watch_latency::run(&bin, seconds, every_ms).await,
            Cmd::ClientLatency {
                bin,
                calls,
                topology,
            } => client_latency::run(&bin, calls, topology).await,
            Cmd::AccessLog {
                bin,
                seconds,
                clients,
                sampled,
            } => access_log::run(&bin, seconds, clients, sampled).await,
            Cmd::Overload {
                clients,
                measure_secs,
                seconds,
                factors,
                max_concurrent_calls,
                min_concurrent_calls,
                per_principal_rate,
                deadline_ms,
            } => {
                overload::run(overload::Overload {
                    clients,
                    measure_secs,
                    seconds,
                    factors,
                    max_concurrent_calls,
                    min_concurrent_calls,
                    per_principal_rate,
                    deadline_ms,
                })
                .await;
            }
        }
    });
}

/// Scorecards through the ScoringService handler over the loaded store: uncached (aggregates,
/// engine and wire conversion, as a cache miss does), cached, and all 7 regions in one call.
/// The city's scorecard computed afresh (aggregates, engine, wire form), as after a change: one
/// county value is written before each; the anchor computes it with nothing kept in memory.
/// Then the cached scorecard through the service, and all 7 regions in one call.
async fn scorecards(ing: &Ingestion, catalog: &Arc<Catalog>, p: &Principal, first: usize) {
    use citycredit::proto::v1::scoring_service_server::ScoringService;
    let (_, org_value) = catalog_and_org(catalog);
    let org = org::fixed(org_value);
    let api = citycredit_scoring::ScoringApi::new(Arc::clone(catalog), org, Arc::new(ing.clone()));
    let ops = Principal {
        id: "bench".into(),
        role: Role::Operator,
        department: None,
        credential: None,
    };
    let req = |region: &str| {
        let mut r = tonic::Request::new(pb::GetScorecardRequest {
            region_code: region.into(),
            period: "2026".into(),
            as_of: None,
            rule_version: String::new(),
            approved_only: false,
        });
        r.extensions_mut().insert(ops.clone());
        r
    };
    let pct = |t: &mut Vec<Duration>, q: usize| {
        t.sort_unstable();
        t[(t.len() * q / 100).min(t.len() - 1)]
    };
    let fresh = || async {
        let t = Instant::now();
        let agg = ing
            .aggregates_of("330800", "2026", None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let card = citycredit_core::rules::score(catalog, &agg.values);
        std::hint::black_box(citycredit_scoring::convert::scorecard(&card, &agg));
        t.elapsed()
    };
    // The anchor in a loop of its own, as in `aggregate`.
    let (mut cold, mut nothing_kept) = (Vec::new(), Vec::new());
    fresh().await;
    for q in 0..300 {
        change_a_county_value(ing, catalog, p, first + q).await;
        cold.push(fresh().await);
    }
    for _ in 0..300 {
        forget_what_is_kept(ing);
        nothing_kept.push(fresh().await);
    }
    let mut warm = Vec::new();
    api.get_scorecard(req("330800"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..2000 {
        let t = Instant::now();
        api.get_scorecard(req("330800"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        warm.push(t.elapsed());
    }
    println!(
        "scorecard for the city (1,000,000 stored submissions): uncached, after one value changed, p50 {:.2?} p99 {:.2?} (goal p99 <= 5 ms); anchor, nothing kept in memory: p50 {:.2?} p99 {:.2?}; cached p50 {:.2?} p99 {:.2?} (target p99 <= 1 ms)",
        pct(&mut cold, 50),
        pct(&mut cold, 99),
        pct(&mut nothing_kept, 50),
        pct(&mut nothing_kept, 99),
        pct(&mut warm, 50),
        pct(&mut warm, 99)
    );
    // All 7 regions in one call, nothing cached yet for the counties.
    let api7 = citycredit_scoring::ScoringApi::new(
        Arc::clone(catalog),
        org::fixed(catalog_and_org(catalog).1),
        Arc::new(ing.clone()),
    );
    let mut r = tonic::Request::new(pb::BatchGetScorecardsRequest {
        region_codes: vec![],
        period: "2026".into(),
        as_of: None,
        rule_version: String::new(),
        approved_only: false,
    });
    r.extensions_mut().insert(ops.clone());
    let t = Instant::now();
    let n = api7
        .batch_get_scorecards(r)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .scorecards
        .len();
    println!(
        "scorecards for all {n} regions in one call, uncached: {:.2?} (target <= 50 ms)",
        t.elapsed()
    );
}

fn catalog_and_org(catalog: &Arc<Catalog>) -> ((), Org) {
    let city = City::builtin(catalog).unwrap_or_else(|e| panic!("{e}"));
    ((), Org::new(catalog, city))
}
