//! Harness for the ingestion tests: a real citycredit server (the gateway, with the API-key
//! layer) on one backend (SQLite, or PostgreSQL from `DATABASE_URL` in a fresh schema; tests
//! run on each with `both_databases!`),
//! clients authenticated as principals created through the registry API, a direct connection
//! to the same store for tamper tests, and an in-process `Ingestion` handle over that store
//! (a "second process" for the change-feed and aggregate-source tests).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;

use citycredit::org;
use citycredit::proto::v1 as pb;
use citycredit_core::auth::{Principal, Role};
use citycredit_core::catalog::Catalog;
use citycredit_core::city::City;
use citycredit_core::org::Org;
use citycredit_ingestion::{Ingestion, IngestionOptions};
use citycredit_store::Db;

use crate::{
    AuthChannel, Backend, Bearer, TestSchema, TestServer, fresh_schema, postgres_url, use_backend,
};

pub type SubmissionClient =
    pb::metric_submission_service_client::MetricSubmissionServiceClient<AuthChannel>;
pub type AuditClient = pb::code_audit_service_client::CodeAuditServiceClient<AuthChannel>;

/// A principal for tests.
pub fn principal(id: &str, role: Role, department: Option<&str>) -> Principal {
    Principal {
        id: id.to_owned(),
        role,
        department: department.map(str::to_owned),
        credential: None,
    }
}

pub fn platform() -> Principal {
    principal("platform-1", Role::Platform, None)
}

pub fn admin() -> Principal {
    principal("admin-1", Role::Admin, None)
}

fn wire_role(r: Role) -> pb::Role {
    match r {
        Role::Department => pb::Role::Department,
        Role::Platform => pb::Role::Platform,
        Role::Assessor => pb::Role::Assessor,
        Role::Operator => pb::Role::Operator,
        Role::Admin => pb::Role::Admin,
        Role::CreditOffice => pb::Role::CreditOffice,
    }
}

/// The built-in catalog and Quzhou, as the server seeds them.
pub fn catalog_and_org() -> (Arc<Catalog>, Org) {
    let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    let city = City::builtin(&catalog).unwrap_or_else(|e| panic!("{e}"));
    let org = Org::new(&catalog, city);
    (Arc::new(catalog), org)
}

/// A real server on one backend, with helpers.
pub struct IngestionServer {
    pub server: TestServer,
    pub backend: Backend,
    /// A direct connection to the server's store (raw SQL in tests).
    pub db: Db,
    /// The schema on PostgreSQL.
    pub schema: Option<String>,
    keys: Mutex<HashMap<String, String>>,
    _schema: TestSchema,
}

impl IngestionServer {
    pub async fn start(backend: Backend) -> IngestionServer {
        IngestionServer::start_with(backend, |_| {}).await
    }

    /// Starts one after `adjust` changes the configuration (after the backend is set).
    pub async fn start_with(
        backend: Backend,
        adjust: impl FnOnce(&mut citycredit_app::Config),
    ) -> IngestionServer {
        let schema = fresh_schema();
        let server = TestServer::start_with(|c| {
            use_backend(c, backend, &schema);
            // These tests load the services (300 concurrent pushes from one principal); the
            // gateway's per-principal budgets and adaptive limit are tested in gateway_budgets.
            c.gateway.max_calls_per_principal = 4096;
            c.gateway.min_concurrent_calls = c.gateway.max_concurrent_calls;
            adjust(c);
        })
        .await;
        // The first authenticated call waits until the server (and its migrated store) is up.
        let mut registry = server.registry();
        for _ in 0..100 {
            if registry
                .list_principals(pb::ListPrincipalsRequest::default())
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let db = crate::connect_store(backend, &server.data_dir, &schema, 4).await;
        IngestionServer {
            server,
            backend,
            db,
            schema: (backend == Backend::Postgres).then(|| schema.to_string()),
            keys: Mutex::new(HashMap::new()),
            _schema: schema,
        }
    }

    pub fn name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// The API key of `p` (the principal and its key are created through the registry on
    /// first use).
    pub async fn key(&self, p: &Principal) -> String {
        let mut keys = self.keys.lock().await;
        match keys.get(&p.id) {
            Some(k) => k.clone(),
            None => {
                let k = self
                    .server
                    .create_principal(&p.id, wire_role(p.role), p.department.as_deref())
                    .await;
                keys.insert(p.id.clone(), k.clone());
                k
            }
        }
    }

    /// An authenticated channel for `p` (created through the registry on first use); None: no
    /// credential.
    pub async fn channel(&self, p: Option<&Principal>) -> AuthChannel {
        match p {
            Some(p) => self.server.with_key(&self.key(p).await),
            None => InterceptedService::new(self.server.channel(), Bearer(None)),
        }
    }

    /// A submission client acting as `p`.
    pub async fn client(&self, p: Option<&Principal>) -> SubmissionClient {
        pb::metric_submission_service_client::MetricSubmissionServiceClient::new(
            self.channel(p).await,
        )
    }

    /// A code audit client acting as `p`.
    pub async fn audit_client(&self, p: Option<&Principal>) -> AuditClient {
        pb::code_audit_service_client::CodeAuditServiceClient::new(self.channel(p).await)
    }

    /// An in-process ingestion handle over the same store: another writer, as a second process
    /// would have (on PostgreSQL it notifies the server's change feed).
    pub fn second_process(&self) -> Ingestion {
        let (catalog, org) = catalog_and_org();
        let mut options = IngestionOptions::default();
        if let Some(schema) = &self.schema {
            options.listen_url = Some(postgres_url());
            options.notify_channel = format!("citycredit_changes_{schema}");
        }
        Ingestion::start(self.db.clone(), catalog, org::fixed(org), options)
    }
}

/// A value input.
pub fn number_input(
    metric: &str,
    region: &str,
    period: &str,
    department: &str,
    n: &str,
) -> pb::SubmissionInput {
    pb::SubmissionInput {
        metric_key: metric.to_owned(),
        region_code: region.to_owned(),
        period: period.to_owned(),
        department_code: department.to_owned(),
        value: Some(pb::MetricValue {
            value: Some(pb::metric_value::Value::Number(n.to_owned())),
        }),
        ..Default::default()
    }
}

/// samr's values for B08 and B07 at `region` over `months` (at most six, in order): 1,000
/// blacklisted in operation each month; those trained in credit repair falling 600 → 510 (B08,
/// at least 50 %, trending below its floor); exits after rectification rising 310 → 360 (B07,
/// trending up: no risk).
pub fn samr_veto_trend(region: &str, months: &[impl AsRef<str>]) -> Vec<pb::SubmissionInput> {
    const TRAINED: [u32; 6] = [600, 580, 560, 540, 520, 510];
    months
        .iter()
        .zip(TRAINED)
        .zip((310..).step_by(10))
        .flat_map(|((month, trained), exited)| {
            let month = month.as_ref();
            [
                number_input("blacklist.in_operation", region, month, "samr", "1000"),
                number_input(
                    "credit_repair.trained",
                    region,
                    month,
                    "samr",
                    &trained.to_string(),
                ),
                number_input(
                    "blacklist.exited_after_rectification",
                    region,
                    month,
                    "samr",
                    &exited.to_string(),
                ),
            ]
        })
        .collect()
}

/// A DOMAIN_FLAG input.
pub fn flag_input(
    metric: &str,
    region: &str,
    period: &str,
    department: &str,
    domain: &str,
    flag: bool,
) -> pb::SubmissionInput {
    pb::SubmissionInput {
        metric_key: metric.to_owned(),
        region_code: region.to_owned(),
        period: period.to_owned(),
        department_code: department.to_owned(),
        domain: domain.to_owned(),
        value: Some(pb::MetricValue {
            value: Some(pb::metric_value::Value::Flag(flag)),
        }),
        ..Default::default()
    }
}

/// The field paths of an INVALID_ARGUMENT status's BadRequest violations.
pub fn violation_fields(status: &Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// A channel to any address that authenticates with `key` (for servers run as subprocesses).
pub fn channel_with_key(addr: std::net::SocketAddr, key: &str) -> AuthChannel {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("endpoint: {e}"))
        .connect_lazy();
    let value = format!("Bearer {key}")
        .parse()
        .unwrap_or_else(|e| panic!("key is not header text: {e}"));
    InterceptedService::new(channel, Bearer(Some(value)))
}
