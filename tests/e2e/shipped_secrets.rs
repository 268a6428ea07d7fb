//! What ships: the real binary refuses placeholder and weak secrets and misplaced keys at start
//! (saying how to make good ones), `deploy/` carries no filled-in secret, the split
//! configurations require mTLS and keep metrics off published addresses, and the Kubernetes
//! manifests render with a NetworkPolicy and take their keys from the documented secret step.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use citycredit_app::Config;
use citycredit_tests::topology::{binary, make_keys, shipped_config_dir};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Runs `citycredit serve` with `env`, which must fail within 30 s (a server that starts
/// instead is killed and reported).
fn serve_must_fail(args: &[&str], env: &[(&str, String)]) -> Output {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(binary());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("CITYCREDIT_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
            panic!(
                "the server started with {env:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn placeholder_and_weak_bootstrap_keys_are_refused_at_start() {
    for key in [
        // What deploy/k8s/secret.yaml used to ship.
        "CHANGE-ME-to-32-or-more-random-characters",
        "changeme-changeme-changeme-changeme-changeme",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "12345678901234567890123456789012",
        "passwordpasswordpasswordpassword",
    ] {
        let out = serve_must_fail(&[], &[("CITYCREDIT_BOOTSTRAP_ADMIN_KEY", key.into())]);
        assert_eq!(out.status.code(), Some(2), "{key}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("bootstrap_admin_key") && err.contains("openssl rand -hex 32"),
            "{key}: the message must say how to make a good one: {err}"
        );
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
    p.display().to_string()
}

#[test]
fn placeholder_weak_and_misplaced_identity_keys_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let keys = make_keys(&binary(), dir.path());
    let good_pub = keys
        .join("registry/gateway-identity.pub")
        .display()
        .to_string();
    let gateway_key = keys.join("gateway/identity.key").display().to_string();

    // A key file someone forgot to fill in, and one that is all zeros.
    let placeholder = write(dir.path(), "placeholder.pub", "CHANGE-ME-to-a-public-key\n");
    let zeros = write(dir.path(), "zeros.key", &format!("{}\n", "0".repeat(64)));
    for (service, var, file) in [
        (
            "registry",
            "CITYCREDIT_IDENTITY__GATEWAY_PUBLIC_KEY",
            &placeholder,
        ),
        ("gateway", "CITYCREDIT_IDENTITY__SIGNING_KEY", &zeros),
    ] {
        let mut env = vec![(var, file.clone())];
        if service == "gateway" {
            for (k, v) in [
                ("CITYCREDIT_UPSTREAMS__REGISTRY", "http://127.0.0.1:9"),
                ("CITYCREDIT_UPSTREAMS__INGESTION", "http://127.0.0.1:9"),
                ("CITYCREDIT_UPSTREAMS__SCORING", "http://127.0.0.1:9"),
            ] {
                env.push((k, v.into()));
            }
        }
        let out = serve_must_fail(&["--service", service], &env);
        assert_eq!(out.status.code(), Some(1), "{service}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("citycredit keys generate"),
            "{service}: {}",
            stderr(&out)
        );
    }

    // Scoring given the gateway's private key could mint any identity.
    let out = serve_must_fail(
        &["--service", "scoring"],
        &[
            ("CITYCREDIT_IDENTITY__SIGNING_KEY", gateway_key.clone()),
            ("CITYCREDIT_IDENTITY__GATEWAY_PUBLIC_KEY", good_pub.clone()),
            (
                "CITYCREDIT_UPSTREAMS__INGESTION",
                "http://127.0.0.1:9".into(),
            ),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the gateway's key"),
        "{}",
        stderr(&out)
    );

    // A verifying service holding a signing key, and the old shared secret.
    let out = serve_must_fail(
        &["--service", "registry"],
        &[
            ("CITYCREDIT_IDENTITY__SIGNING_KEY", gateway_key),
            ("CITYCREDIT_IDENTITY__GATEWAY_PUBLIC_KEY", good_pub.clone()),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("identity.signing_key"),
        "{}",
        stderr(&out)
    );
    let out = serve_must_fail(
        &["--service", "registry"],
        &[
            ("CITYCREDIT_IDENTITY__GATEWAY_PUBLIC_KEY", good_pub),
            (
                "CITYCREDIT_INTERNAL_IDENTITY_SECRET",
                "CHANGE-ME-to-32-or-more-random-characters".into(),
            ),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("citycredit keys generate"),
        "{}",
        stderr(&out)
    );
}

/// Every file under `deploy/`.
fn deploy_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                // Keys an operator made locally are not shipped (git ignores them).
                if !p.ends_with("keys") {
                    walk(&p, out);
                }
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy_dir(), &mut out);
    out
}

fn load(path: &Path) -> Config {
    Config::load(Some(path), figment::Figment::new())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn deploy_ships_no_secret_and_the_split_configs_default_to_mtls_and_private_metrics() {
    for f in deploy_files() {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let name = f.display().to_string();
        for marker in ["CHANGE-ME", "PRIVATE KEY", "kind: Secret"] {
            assert!(
                !text.contains(marker),
                "{name} ships `{marker}`: secrets come from the documented secret step"
            );
        }
        assert!(
            !text.contains("internal-identity-secret")
                && !text.contains("INTERNAL_IDENTITY_SECRET"),
            "{name} still speaks of the shared identity secret"
        );
        // Passwords only ever come from the environment of whoever deploys.
        for line in text.lines() {
            if line.to_ascii_lowercase().contains("password:") {
                assert!(line.contains("${"), "{name}: a filled-in password: {line}");
            }
        }
    }

    for part in ["registry", "ingestion", "scoring", "gateway", "all-in-one"] {
        let c = load(&shipped_config_dir().join(format!("{part}.toml")));
        if let Some(m) = c.metrics_listen {
            assert!(m.ip().is_loopback(), "{part}: metrics on {m}");
        }
    }
    let example = load(&shipped_config_dir().join("citycredit.example.toml"));
    assert!(example.metrics_listen.is_none_or(|m| m.ip().is_loopback()));
    for part in ["registry", "ingestion", "scoring"] {
        let c = load(&shipped_config_dir().join(format!("{part}.toml")));
        let tls = c
            .tls
            .unwrap_or_else(|| panic!("{part}: no TLS on the service's listener"));
        assert!(
            tls.client_ca.is_some(),
            "{part}: client certificates not required"
        );
        assert!(
            c.identity.signing_key.is_none() || part == "scoring",
            "{part}"
        );
    }
    for part in ["gateway", "scoring"] {
        let c = load(&shipped_config_dir().join(format!("{part}.toml")));
        let up = c
            .upstream_tls
            .unwrap_or_else(|| panic!("{part}: plaintext to its upstreams"));
        assert!(
            up.cert.is_some() && up.key.is_some(),
            "{part}: no client certificate"
        );
        for url in [
            c.upstreams.registry,
            c.upstreams.ingestion,
            c.upstreams.scoring,
        ]
        .into_iter()
        .flatten()
        {
            assert!(url.starts_with("https://"), "{part}: {url}");
        }
    }

    let compose = std::fs::read_to_string(deploy_dir().join("compose.yaml")).unwrap_or_default();
    assert!(!compose.contains("9464"), "compose publishes metrics");
    for part in ["gateway", "registry", "ingestion", "scoring"] {
        let manifest = std::fs::read_to_string(deploy_dir().join(format!("k8s/{part}.yaml")))
            .unwrap_or_default();
        let service = manifest.split("kind: Service").nth(1).unwrap_or_default();
        assert!(
            !service.contains("9464") && !service.contains("name: metrics"),
            "{part}: its Service exposes metrics"
        );
        assert!(
            manifest.contains(&format!("secretName: citycredit-{part}-keys")),
            "{part}: keys not from its own Secret"
        );
    }
}

/// `kubectl` renders the manifests offline and runs the secret step in dry-run mode; without
/// `kubectl` (found at build time, `tests/build.rs`) the test is reported as ignored.
#[test]
#[cfg_attr(
    not(citycredit_kubectl),
    ignore = "kubectl is not installed: the manifests cannot be rendered"
)]
fn the_manifests_render_and_the_secret_step_gives_each_part_only_its_keys() {
    let rendered = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy_dir())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(rendered.status.success(), "{}", stderr(&rendered));
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert_eq!(text.matches("kind: NetworkPolicy").count(), 4, "{text}");
    assert!(!text.contains("kind: Secret"));
    // Each service's gRPC port admits the gateway (and, for ingestion, scoring) and nobody else.
    for policy in text.split("kind: NetworkPolicy").skip(1) {
        let policy = policy.split("\n---").next().unwrap_or_default();
        if policy.contains("name: citycredit-gateway") {
            continue;
        }
        let grpc_rule = policy
            .split("- from:")
            .find(|r| r.contains("port: grpc"))
            .unwrap_or_else(|| panic!("no gRPC rule: {policy}"));
        assert!(grpc_rule.contains("component: gateway"), "{policy}");
        let others = grpc_rule.matches("component:").count();
        let allowed = if policy.contains("name: citycredit-ingestion") {
            2
        } else {
            1
        };
        assert_eq!(others, allowed, "{policy}");
    }

    let out = Command::new(deploy_dir().join("k8s/create-secrets.sh"))
        .args(["city", "postgres://citycredit:pw@db:5432/citycredit"])
        .env("CITYCREDIT_BIN", binary())
        .env("KUBECTL", "kubectl --dry-run=client -o yaml")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}", stderr(&out));
    let secrets = String::from_utf8_lossy(&out.stdout);
    let secret = |name: &str| -> String {
        secrets
            .split("apiVersion:")
            .find(|s| s.contains(&format!("name: {name}\n")))
            .unwrap_or_else(|| panic!("no secret {name}: {secrets}"))
            .to_owned()
    };
    let files = |s: &str| -> Vec<String> {
        let mut f: Vec<String> = s
            .lines()
            .filter_map(|l| l.strip_prefix("  "))
            .filter_map(|l| l.split_once(':').map(|(k, _)| k.to_owned()))
            .filter(|k| !k.starts_with(' ') && (k.contains('.') || k.contains('-')))
            .filter(|k| k != "creationTimestamp")
            .collect();
        f.sort();
        f
    };
    assert_eq!(
        files(&secret("citycredit-gateway-keys")),
        ["ca.crt", "client.crt", "client.key", "identity.key"]
    );
    assert_eq!(
        files(&secret("citycredit-registry-keys")),
        ["ca.crt", "gateway-identity.pub", "server.crt", "server.key"]
    );
    assert_eq!(
        files(&secret("citycredit-ingestion-keys")),
        [
            "ca.crt",
            "gateway-identity.pub",
            "scoring-identity.pub",
            "server.crt",
            "server.key"
        ]
    );
    assert_eq!(
        files(&secret("citycredit-scoring-keys")),
        [
            "ca.crt",
            "client.crt",
            "client.key",
            "gateway-identity.pub",
            "identity.key",
            "server.crt",
            "server.key"
        ]
    );
    assert_eq!(
        files(&secret("citycredit")),
        ["bootstrap-admin-key", "database-url"]
    );
    assert!(stderr(&out).contains("bootstrap administrator key"));
}

/// The plaintext health port the Kubernetes probes use (the gRPC port requires a client
/// certificate the kubelet does not have): health answers there, nothing else does.
#[tokio::test]
async fn the_probes_health_port_answers_health_and_nothing_else() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let keys = make_keys(&binary(), dir.path());
    let config = std::fs::read_to_string(shipped_config_dir().join("registry.toml"))
        .unwrap_or_default()
        .replace(
            "/etc/citycredit/keys/",
            &format!("{}/", keys.join("registry").display()),
        );
    let file = dir.path().join("registry.toml");
    std::fs::write(&file, config).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = tokio::process::Command::new(binary());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("DATABASE_URL")
        .env("CITYCREDIT_LOG_FORMAT", "text")
        .env("CITYCREDIT_METRICS_LISTEN", "127.0.0.1:0")
        .env("CITYCREDIT_HEALTH_LISTEN", "127.0.0.1:0")
        .env(
            "CITYCREDIT_BOOTSTRAP_ADMIN_KEY",
            "probe-test-admin-key-0123456789abcdefghijk",
        )
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("stderr"));
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut probe = None;
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("serving health checks for probes")
                && let Some(rest) = line.split("addr=").nth(1)
            {
                probe = rest.split_whitespace().next().map(str::to_owned);
            }
            if line.contains("serving gRPC") {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "the registry did not start");
    let probe = probe.unwrap_or_else(|| panic!("no health port for probes in the log"));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{probe}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect_lazy();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let started = Instant::now();
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status())
            .ok();
        if status == Some(tonic_health::pb::health_check_response::ServingStatus::Serving) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "health on the probes' port: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = citycredit::proto::v1::department_registry_service_client::DepartmentRegistryServiceClient::new(channel)
        .list_groups(citycredit::proto::v1::ListGroupsRequest {})
        .await
        .err()
        .unwrap_or_else(|| panic!("the probes' port served the registry"));
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    let _ = child.kill().await;
}
