//! Harness for the ingestion tests: the ingestion services over a fresh store on each database
//! (`citycredit::store::testing::databases`), served by a real tonic server on `127.0.0.1:0`.
//!
//! Until the API-key layer is merged, the server wraps the services in a test-only interceptor
//! that turns an `x-test-principal: id;role[;department]` header into a `Principal` (no header:
//! no principal, so UNAUTHENTICATED). Clients from `client`/`audit_client` send that header.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Status};

use citycredit::auth::{Principal, Role};
use citycredit::catalog::Catalog;
use citycredit::city::City;
use citycredit::org::{self, Org};
use citycredit::proto::v1 as pb;
use citycredit::store::testing::{self, TestDb};
use citycredit_ingestion::{Ingestion, IngestionOptions};

pub type SubmissionClient = pb::metric_submission_service_client::MetricSubmissionServiceClient<
    InterceptedService<Channel, PrincipalHeader>,
>;
pub type AuditClient = pb::code_audit_service_client::CodeAuditServiceClient<
    InterceptedService<Channel, PrincipalHeader>,
>;

/// A principal for tests.
pub fn principal(id: &str, role: Role, department: Option<&str>) -> Principal {
    Principal {
        id: id.to_owned(),
        role,
        department: department.map(str::to_owned),
    }
}

pub fn platform() -> Principal {
    principal("platform-1", Role::Platform, None)
}

pub fn admin() -> Principal {
    principal("admin-1", Role::Admin, None)
}

/// Server side: header -> `Principal` in the request's extensions.
fn test_authentication(mut req: Request<()>) -> Result<Request<()>, Status> {
    let header = req
        .metadata()
        .get("x-test-principal")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(h) = header {
        let mut parts = h.split(';');
        let id = parts.next().unwrap_or_default().to_owned();
        let role = parts
            .next()
            .and_then(Role::parse)
            .ok_or_else(|| Status::unauthenticated("bad x-test-principal"))?;
        let department = parts.next().map(str::to_owned);
        req.extensions_mut().insert(Principal {
            id,
            role,
            department,
        });
    }
    Ok(req)
}

/// Client side: sends the principal header.
#[derive(Clone)]
pub struct PrincipalHeader(Option<String>);

impl tonic::service::Interceptor for PrincipalHeader {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.0
            && let Ok(v) = MetadataValue::try_from(h.as_str())
        {
            req.metadata_mut().insert("x-test-principal", v);
        }
        Ok(req)
    }
}

fn header(p: Option<&Principal>) -> PrincipalHeader {
    PrincipalHeader(p.map(|p| {
        format!(
            "{};{}{}",
            p.id,
            p.role.as_str(),
            p.department
                .as_deref()
                .map(|d| format!(";{d}"))
                .unwrap_or_default()
        )
    }))
}

/// Ingestion served over one test database.
pub struct IngestionServer {
    pub db: TestDb,
    pub ingestion: Ingestion,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

/// The built-in catalog and Quzhou with `jrp-01`..`jrp-03` registered in the open set
/// `joint_reward_punishment`.
pub fn catalog_and_org() -> (Arc<Catalog>, Org) {
    let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    let city = City::builtin(&catalog).unwrap_or_else(|e| panic!("{e}"));
    let org = Org::with_domains(
        &catalog,
        city,
        [(
            "joint_reward_punishment".to_owned(),
            ["jrp-01", "jrp-02", "jrp-03"]
                .into_iter()
                .map(str::to_owned)
                .collect(),
        )]
        .into_iter()
        .collect(),
    );
    (Arc::new(catalog), org)
}

impl IngestionServer {
    /// One server per database (SQLite always, PostgreSQL with `DATABASE_URL`).
    pub async fn start_all() -> Vec<IngestionServer> {
        let mut out = Vec::new();
        for db in testing::databases().await {
            out.push(IngestionServer::start(db, IngestionOptions::default()).await);
        }
        out
    }

    pub async fn start(db: TestDb, mut options: IngestionOptions) -> IngestionServer {
        let (catalog, org) = catalog_and_org();
        if let Some((url, schema)) = db.postgres_schema() {
            // One NOTIFY channel per test schema, so parallel tests do not hear each other.
            options.listen_url = Some(url.to_owned());
            options.notify_channel = schema.to_owned();
        }
        let ingestion = Ingestion::start(db.db().clone(), catalog, org::fixed(org), options);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let (tx, rx) = oneshot::channel::<()>();
        let router = Server::builder()
            .add_service(InterceptedService::new(
                ingestion.submission_service(),
                test_authentication,
            ))
            .add_service(InterceptedService::new(
                ingestion.code_audit_service(),
                test_authentication,
            ));
        tokio::spawn(router.serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            async {
                let _ = rx.await;
            },
        ));
        IngestionServer {
            db,
            ingestion,
            addr,
            stop: Some(tx),
        }
    }

    pub fn name(&self) -> &'static str {
        self.db.name()
    }

    fn channel(&self) -> Channel {
        channel_to(self.addr)
    }

    /// A submission client acting as `p` (None: no credential).
    pub fn client(&self, p: Option<&Principal>) -> SubmissionClient {
        pb::metric_submission_service_client::MetricSubmissionServiceClient::with_interceptor(
            self.channel(),
            header(p),
        )
    }

    /// A code audit client acting as `p`.
    pub fn audit_client(&self, p: Option<&Principal>) -> AuditClient {
        pb::code_audit_service_client::CodeAuditServiceClient::with_interceptor(
            self.channel(),
            header(p),
        )
    }
}

impl Drop for IngestionServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A lazily connecting channel to `addr`.
pub fn channel_to(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("endpoint: {e}"))
        .connect_lazy()
}

/// A submission client for any address acting as `p`.
pub fn client_at(addr: SocketAddr, p: Option<&Principal>) -> SubmissionClient {
    pb::metric_submission_service_client::MetricSubmissionServiceClient::with_interceptor(
        channel_to(addr),
        header(p),
    )
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
