//! The real `citycredit` binary: `check` and `serve` with a graceful SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_citycredit");

#[test]
fn check_summarises_the_builtin_data() {
    let out = Command::new(BIN)
        .arg("check")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "(version 2019.2, rulebook 2): 68 metrics, 20 indicators, 12 evaluation items, guiding max 54.00"
        ),
        "{text}"
    );
    assert!(text.contains("city 330800 衢州市"), "{text}");
    assert!(
        text.contains("7 regions, 50 departments, 4 groups, 36 responsibilities"),
        "{text}"
    );
}

#[test]
fn check_refuses_a_broken_city_file_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("city.toml");
    let text = citycredit_core::city::BUILTIN_CITY_TOML.replacen(
        "G14 = [\"business-env\"]",
        "G14 = [\"business-environment\"]",
        1,
    );
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(BIN)
        .args(["check", "--city"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("city.toml:"), "{err}");
    assert!(
        err.contains("responsibilities.G14: unknown department or group `business-environment`"),
        "{err}"
    );
}

#[test]
fn check_refuses_a_catalog_whose_task_checks_name_unknown_indicators_or_conditions() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("catalog.toml");
    let text = citycredit_core::catalog::BUILTIN_CATALOG_TOML
        .replacen(
            r#"conditions = ["1", "2"]"#,
            r#"conditions = ["1", "9"]"#,
            1,
        )
        .replacen(
            r#"{ type = "indicator_passes", indicator = "B04" }"#,
            r#"{ type = "indicator_passes", indicator = "B40" }"#,
            1,
        );
    std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(BIN)
        .args(["check", "--catalog"])
        .arg(&path)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    // file:line: key: message, the line being the task's.
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .map_or(0, |i| i + 1)
    };
    let e03_3 = format!(
        "catalog.toml:{}: item E03, task E03.3, check 1, conditions: indicator `B10` has no condition `9`",
        line_of(r#"id = "E03.3""#)
    );
    assert!(err.contains(&e03_3), "{err}");
    let e08_2 = format!(
        "catalog.toml:{}: item E08, task E08.2, check 3: unknown indicator `B40`",
        line_of(r#"id = "E08.2""#)
    );
    assert!(err.contains(&e08_2), "{err}");
}

#[test]
fn unknown_configuration_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\nlisten_port = 5\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen_port"));
}

#[test]
fn serve_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let mut lines = BufReader::new(stderr).lines();
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("serving gRPC"))
        .unwrap_or_else(|| panic!("the server never said it was serving"));
    assert!(serving.contains("addr=127.0.0.1:"), "{serving}");

    let pid = child.id().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(kill.success());
    let started = Instant::now();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "exit {status:?}: {rest:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(rest.iter().any(|l| l.contains("shutting down")), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}

#[test]
fn every_shipped_configuration_file_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} configuration files found");
}
