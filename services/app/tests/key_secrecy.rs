//! Security check (SECURITY.md): API keys never appear in the logs. Starts the real binary
//! with debug logging, creates a principal and a key, uses the key (accepted, denied, invalid
//! input), revokes it, presents the revoked key and a tampered one, and then reads everything
//! the process wrote: neither the new key's secret nor the administrator's may appear; the
//! key's visible prefix does (that is what names a refused key in the log).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::department_registry_service_client::DepartmentRegistryServiceClient;
use citycredit::proto::v1::metric_submission_service_client::MetricSubmissionServiceClient;

const BIN: &str = env!("CARGO_BIN_EXE_citycredit");
const ADMIN_KEY: &str = "security-test-admin-secret-0123456789abcdef";

fn authed<T>(key: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    let v: MetadataValue<_> = format!("Bearer {key}")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    r.metadata_mut().insert("authorization", v);
    r
}

fn read_log(path: &std::path::Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_never_appear_in_the_logs() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("{e}"));
    let out = log.try_clone().unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("DATABASE_URL")
        .env("CITYCREDIT_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));

    // The address from "serving gRPC addr=127.0.0.1:port".
    let started = Instant::now();
    let addr = loop {
        let text = read_log(&log_path);
        if let Some(line) = text.lines().find(|l| l.contains("serving gRPC")) {
            let at = line.find("127.0.0.1:").unwrap_or_else(|| panic!("{line}"));
            let addr: String = line[at..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            break addr;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not serving: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let channel: Channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect_lazy();
    let mut registry = DepartmentRegistryServiceClient::new(channel.clone());
    let mut submissions = MetricSubmissionServiceClient::new(channel);

    registry
        .create_principal(authed(
            ADMIN_KEY,
            pb::CreatePrincipalRequest {
                principal: Some(pb::Principal {
                    id: "leaky".into(),
                    role: pb::Role::Platform as i32,
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("create principal: {e}"));
    let created = registry
        .create_api_key(authed(
            ADMIN_KEY,
            pb::CreateApiKeyRequest {
                principal: "principals/leaky".into(),
                expire_time: None,
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("create key: {e}"))
        .into_inner();
    let secret = created.secret.clone();
    let prefix = created.api_key.map(|k| k.prefix).unwrap_or_default();
    assert!(secret.starts_with(&prefix) && secret.len() > prefix.len() + 32);

    // The key is never returned again.
    let listed = registry
        .list_api_keys(authed(
            ADMIN_KEY,
            pb::ListApiKeysRequest {
                principal: "principals/leaky".into(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("list keys: {e}"))
        .into_inner();
    assert!(!format!("{listed:?}").contains(&secret[prefix.len()..]));

    let value = |n: &str, metric: &str| pb::SubmitValueRequest {
        value: Some(pb::SubmissionInput {
            metric_key: metric.into(),
            region_code: "330800".into(),
            period: "2026".into(),
            value: Some(pb::MetricValue {
                value: Some(pb::metric_value::Value::Number(n.into())),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Accepted, denied, invalid.
    submissions
        .submit_value(authed(&secret, value("10", "uscc.codes_total")))
        .await
        .unwrap_or_else(|e| panic!("submit: {e}"));
    let denied = submissions
        .submit_value(authed(&secret, value("1", "campaign.integrity_tour")))
        .await
        .err()
        .map(|e| e.code());
    assert_eq!(denied, Some(Code::PermissionDenied));
    let invalid = submissions
        .submit_value(authed(&secret, value("-1", "uscc.codes_total")))
        .await
        .err()
        .map(|e| e.code());
    assert_eq!(invalid, Some(Code::InvalidArgument));

    // Revoked, then presented again; and a tampered key.
    registry
        .revoke_api_key(authed(
            ADMIN_KEY,
            pb::RevokeApiKeyRequest {
                name: prefix.clone(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("revoke: {e}"));
    let refused = submissions
        .submit_value(authed(&secret, value("11", "uscc.codes_total")))
        .await
        .err()
        .map(|e| e.code());
    assert_eq!(refused, Some(Code::Unauthenticated));
    let mut tampered = secret.clone();
    let last = if tampered.ends_with('0') { "1" } else { "0" };
    tampered.replace_range(tampered.len() - 1.., last);
    let refused = registry
        .list_departments(authed(&tampered, pb::ListDepartmentsRequest::default()))
        .await
        .err()
        .map(|e| e.code());
    assert_eq!(refused, Some(Code::Unauthenticated));

    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let _ = child.wait();

    let text = read_log(&log_path);
    let random_part = &secret[prefix.len() + 1..];
    assert!(
        !text.contains(random_part),
        "the key's secret is in the log"
    );
    assert!(
        !text.contains(&tampered[prefix.len() + 1..]),
        "a presented key is in the log"
    );
    assert!(!text.contains(ADMIN_KEY), "the admin key is in the log");
    assert!(
        text.contains(&prefix),
        "the refused key's prefix should name it in the log:\n{text}"
    );
}
