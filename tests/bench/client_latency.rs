//! `citycredit-bench client-latency`: the serial latency table of issue 15 point 2 as a client
//! that is not ours sees it. The loader is tests/bench/serial_latency.py (Python grpcio, its own
//! process, a real loopback socket, one call in flight): SubmitValue, SubmitBatch of 100,
//! GetScorecard cached and uncached, ExplainIndicator, GetDepartmentWorklist and
//! QueryAggregates, first DIRECT to the all-in-one `citycredit serve`, then THROUGH THE GATEWAY
//! of the split topology (four processes). Beside every figure: the echo anchor (a bare tonic
//! unary RPC served by this process, tests/bench/echo.rs) called by the same loader with the
//! same request and answer sizes, and the ratio. After each load: VmRSS and VmHWM of every
//! platform process. The database is PostgreSQL when DATABASE_URL names it, else SQLite.
//!
//! The loader exits non-zero on any RPC error and so does this command; before measuring, it
//! proves that by running the loader once with a wrong key, which must fail.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

use crate::gateway::{Topology, memory_of};

const PYTHON: &str = "target/ci-tools/pyvenv/bin/python";
const LOADER: &str = "tests/bench/serial_latency.py";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Topo {
    Direct,
    Gateway,
    Both,
}

/// Exits 2, saying how to make it, when the Python venv or the stubs are missing.
pub fn need_python(command: &str) {
    if !Path::new(PYTHON).exists()
        || !Path::new("tests/python/gen/citycredit/v1/common_pb2.py").exists()
    {
        eprintln!(
            "{command} needs the Python venv (target/ci-tools/pyvenv) and the stubs (tests/python/gen): \
             run tests/python/run.sh once from the repository root, which creates both"
        );
        std::process::exit(2);
    }
}

/// Runs the loader; returns whether it succeeded.
pub async fn loader(
    addr: &str,
    key: &str,
    calls: usize,
    workload: &str,
    echo: Option<SocketAddr>,
) -> bool {
    let mut cmd = Command::new(PYTHON);
    cmd.args([
        LOADER,
        "--addr",
        addr,
        "--key",
        key,
        "--calls",
        &calls.to_string(),
        "--workload",
        workload,
    ]);
    if let Some(echo) = echo {
        cmd.args(["--echo", &echo.to_string()]);
    }
    cmd.stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .await
        .unwrap_or_else(|e| panic!("python: {e}"))
        .success()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub async fn run(bin: &str, calls: usize, topology: Topo) {
    need_python("client-latency");
    let echo = crate::echo::start();
    let db = match std::env::var("DATABASE_URL") {
        Ok(u) if u.starts_with("postgres") => "PostgreSQL",
        _ => "SQLite",
    };
    println!(
        "client: Python grpcio ({LOADER}), its own process, one call in flight, {calls} calls per RPC; \
         anchor: bare tonic echo at {echo} (this process); {db}; load average {}",
        load_average()
    );
    if matches!(topology, Topo::Direct | Topo::Both) {
        let platform = crate::attacks::start_platform(bin).await;
        let addr = platform.addr.to_string();
        // The loader must fail on an RPC error: a wrong key is refused, so this run must fail.
        assert!(
            !loader(&addr, "not-a-key", 1, "client", None).await,
            "the loader succeeded with a wrong key: it does not fail on RPC errors"
        );
        println!("(checked: the loader exits non-zero on an RPC error, as just shown above)");
        println!(
            "DIRECT to the platform (all in one process, {bin}) at {addr}, load average {}:",
            load_average()
        );
        assert!(
            loader(&addr, crate::attacks::ADMIN, calls, "client", Some(echo)).await,
            "the Python loader failed (direct)"
        );
        let pid = platform.child.id().unwrap_or(0);
        println!("memory after this load: {}", memory_of("platform", pid));
    }
    if matches!(topology, Topo::Gateway | Topo::Both) {
        let top = Topology::start(bin, &[]);
        println!(
            "THROUGH THE GATEWAY (split topology, four processes) at {}, load average {}:",
            top.gateway().addr,
            load_average()
        );
        assert!(
            loader(
                &top.gateway().addr,
                crate::gateway::ADMIN,
                calls,
                "client",
                Some(echo)
            )
            .await,
            "the Python loader failed (through the gateway)"
        );
        println!("memory after this load: {}", top.memory());
    }
}
