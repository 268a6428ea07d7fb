//! A client of a running platform for the command line's `import` and `template`: the address
//! from `--addr`, the API key from the environment variable `CITYCREDIT_API_KEY` (never a flag,
//! so it stays out of shell history and process lists), `authorization: Bearer` on every call.

use std::path::Path;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use citycredit::proto::v1::department_registry_service_client::DepartmentRegistryServiceClient;
use citycredit::proto::v1::indicator_service_client::IndicatorServiceClient;
use citycredit::proto::v1::metric_submission_service_client::MetricSubmissionServiceClient;

/// The environment variable holding the API key.
pub const KEY_VARIABLE: &str = "CITYCREDIT_API_KEY";
/// The address used when `--addr` is not given.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";
/// How long one call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Adds the bearer key to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A channel that authenticates every call.
pub type AuthChannel = InterceptedService<Channel, Bearer>;

/// The clients `import` and `template` use.
#[derive(Clone)]
pub struct Remote {
    pub submissions: MetricSubmissionServiceClient<AuthChannel>,
    pub registry: DepartmentRegistryServiceClient<AuthChannel>,
    pub indicators: IndicatorServiceClient<AuthChannel>,
}

/// Why the platform cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("set the API key in the environment variable {KEY_VARIABLE}")]
    NoKey,
    #[error("the API key in {KEY_VARIABLE} is not visible ASCII text")]
    BadKey,
    #[error("--addr {addr}: {why}")]
    Addr { addr: String, why: String },
    #[error("--ca-cert {path}: {why}")]
    Ca { path: String, why: String },
    #[error("cannot connect to {addr}: {why}")]
    Connect { addr: String, why: String },
}

/// Reads the key from the environment.
pub fn key_from_env() -> Result<MetadataValue<Ascii>, RemoteError> {
    let key = std::env::var(KEY_VARIABLE).map_err(|_| RemoteError::NoKey)?;
    let key = key.trim();
    if key.is_empty() {
        return Err(RemoteError::NoKey);
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RemoteError::BadKey);
    }
    format!("Bearer {key}")
        .parse()
        .map_err(|_| RemoteError::BadKey)
}

/// Connects to `addr` (http:// or https://; for https a private CA from `ca_cert`, PEM).
pub async fn connect(addr: &str, ca_cert: Option<&Path>) -> Result<Remote, RemoteError> {
    let key = key_from_env()?;
    let bad = |why: String| RemoteError::Addr {
        addr: addr.to_owned(),
        why,
    };
    if !(addr.starts_with("http://") || addr.starts_with("https://")) {
        return Err(bad("must start with http:// or https://".into()));
    }
    let mut endpoint = Endpoint::from_shared(addr.to_owned())
        .map_err(|e| bad(e.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(CALL_TIMEOUT);
    if addr.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path).map_err(|e| RemoteError::Ca {
                path: path.display().to_string(),
                why: e.to_string(),
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| bad(e.to_string()))?;
    }
    let channel = endpoint.connect().await.map_err(|e| RemoteError::Connect {
        addr: addr.to_owned(),
        why: source_chain(&e),
    })?;
    let auth = InterceptedService::new(channel, Bearer(key));
    Ok(Remote {
        submissions: MetricSubmissionServiceClient::new(auth.clone()),
        registry: DepartmentRegistryServiceClient::new(auth.clone()),
        indicators: IndicatorServiceClient::new(auth),
    })
}

/// An error with its causes ("transport error: connection refused").
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// A status as one line: its code and message.
pub fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Runs a command's work on a one-thread runtime: `Err(2)` (the exit code of a command that
/// could not run) when the runtime cannot start.
pub fn block_on<F: std::future::Future>(work: F) -> Result<F::Output, std::process::ExitCode> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Ok(rt.block_on(work)),
        Err(e) => {
            eprintln!("citycredit: cannot start the runtime: {e}");
            Err(std::process::ExitCode::from(2))
        }
    }
}
