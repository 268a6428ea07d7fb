//! `citycredit-bench serial-latency`: one call in flight, as a department's script or an
//! operator's grpcurl makes them, measured by a Python grpcio client (not ours) in its own
//! process through a real socket against the real binary (issue 15 point 1). Before
//! TCP_NODELAY every answer above ~2.8 KB waited ~40 ms for the client's delayed ACK.

use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

use crate::attacks::{ADMIN, start_platform};

pub async fn run(bin: &str, calls: usize) {
    crate::client_latency::need_python("serial-latency");
    let python = Path::new("target/ci-tools/pyvenv/bin/python");
    let platform = start_platform(bin).await;
    let db = match std::env::var("DATABASE_URL") {
        Ok(u) if u.starts_with("postgres") => "PostgreSQL",
        _ => "SQLite",
    };
    println!(
        "platform: {} ({bin}, all in one process, {db}); client: Python grpcio, one call in flight, {calls} calls per RPC",
        platform.addr
    );
    let status = Command::new(python)
        .args([
            "tests/bench/serial_latency.py",
            "--addr",
            &platform.addr.to_string(),
            "--key",
            ADMIN,
            "--calls",
            &calls.to_string(),
        ])
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .await
        .unwrap_or_else(|e| panic!("python: {e}"));
    assert!(status.success(), "the Python client failed: {status}");
}
