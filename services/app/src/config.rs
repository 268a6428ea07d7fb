//! Configuration in layers: built-in defaults, then an optional TOML file, then `CITYCREDIT_*`
//! environment variables (`CITYCREDIT_LISTEN=127.0.0.1:6000`), then command-line flags; the
//! result is validated before anything starts. Every setting is documented in
//! `deploy/config/citycredit.example.toml`. The edge's own sections (`[gateway]`,
//! `[upstream_tls]`) are defined beside the edge, in `citycredit_gateway::settings`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use citycredit_gateway::settings::{GatewaySettings, UpstreamTlsSettings};

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Which part of the platform this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    /// Every service behind the gateway, in one process (the default).
    All,
    /// The gateway alone, in front of remote services (`upstreams`).
    Gateway,
    /// `MetricSubmissionService` and `CodeAuditService`.
    Ingestion,
    /// `ScoringService` and `IndicatorService` (reads ingestion at `upstreams.ingestion`).
    Scoring,
    /// `DepartmentRegistryService` (the only process that seeds the store).
    Registry,
}

impl ServiceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceMode::All => "all",
            ServiceMode::Gateway => "gateway",
            ServiceMode::Ingestion => "ingestion",
            ServiceMode::Scoring => "scoring",
            ServiceMode::Registry => "registry",
        }
    }
}

/// Where the gateway (and scoring) reach the other services when they run apart.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upstreams {
    /// e.g. `http://registry:50051`
    pub registry: Option<String>,
    pub ingestion: Option<String>,
    pub scoring: Option<String>,
}

/// TLS for the listener (rustls). With `client_ca`, clients must present a certificate signed
/// by it (mTLS, for platform-to-platform links).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA whose client certificates are required; unset: no client certificates.
    pub client_ca: Option<PathBuf>,
}

/// The keys of the internal identity (files made by `citycredit keys generate`). Which a
/// process needs depends on what it runs: the gateway signs, the services verify, scoring
/// signs its own reads of ingestion. Everything in one process needs none (its keys are made
/// in memory at start and never leave it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySettings {
    /// This process's private signing key: the gateway's (`gateway`), or scoring's own
    /// (`scoring`). No other process may hold one.
    pub signing_key: Option<PathBuf>,
    /// The gateway's public key: every service verifies callers' identities with it.
    pub gateway_public_key: Option<PathBuf>,
    /// Scoring's public key: ingestion accepts it for scoring's own reads only.
    pub scoring_public_key: Option<PathBuf>,
}

/// Everything `citycredit serve` needs to know.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server listens on.
    pub listen: SocketAddr,
    /// Where the embedded SQLite database lives when no `database_url` is set.
    pub data_dir: PathBuf,
    /// A database URL (`postgres://...` or `sqlite://...`); unset means SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// PostgreSQL only: the schema holding citycredit's tables (created when missing).
    pub database_schema: Option<String>,
    /// A catalog file to use instead of the built-in national criteria.
    pub catalog: Option<PathBuf>,
    /// Further catalog files scored side by side with the primary one (`catalog`), each with a
    /// version of its own; ingestion and the city file keep to the primary.
    #[serde(default)]
    pub rule_versions: Vec<PathBuf>,
    /// A city file to use instead of the built-in Quzhou seed.
    pub city: Option<PathBuf>,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax.
    pub log_filter: String,
    /// How long in-flight RPCs may run after SIGTERM before the server stops anyway.
    pub shutdown_grace_secs: u64,
    /// Threads that run this process's calls (`serve`); unset: one per core the process may
    /// use. A gateway sharing a small machine with the services does less work per call on
    /// one (BENCHMARKS.md).
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// The bootstrap administrator's API key, used only when the store has no principals yet
    /// (`CITYCREDIT_BOOTSTRAP_ADMIN_KEY`). Unset: a key is generated and printed once.
    pub bootstrap_admin_key: Option<String>,
    /// How often the registry checks for changes made by other processes (milliseconds):
    /// the bound on how long a revoked key keeps working elsewhere.
    pub registry_refresh_ms: u64,
    /// Connections of this process's shared database pool. On PostgreSQL a process may open up
    /// to 7 more, each only once used: 3 for the ingestion writer's bulk statements and 4 for
    /// the values read behind aggregations (`citycredit_store::Db::bulk`, `Db::reads`).
    pub db_max_connections: u32,
    /// How long a database call waits for a connection before failing with UNAVAILABLE.
    pub db_acquire_timeout_ms: u64,
    /// Most values one SubmitBatch stream may carry.
    #[serde(default = "defaults::ingest_max_batch_values")]
    pub ingest_max_batch_values: usize,
    /// Largest gRPC message the ingestion services decode, in bytes.
    #[serde(default = "defaults::ingest_max_message_bytes")]
    pub ingest_max_message_bytes: usize,
    /// Most bytes (encoded messages) one SubmitBatch stream may carry.
    #[serde(default = "defaults::ingest_max_batch_bytes")]
    pub ingest_max_batch_bytes: usize,
    /// Most distinct valid codes one code audit remembers (about 46 bytes each).
    #[serde(default = "defaults::ingest_max_audit_distinct_codes")]
    pub ingest_max_audit_distinct_codes: usize,
    /// Most code audits running at once in this process.
    #[serde(default = "defaults::ingest_max_concurrent_audits")]
    pub ingest_max_concurrent_audits: usize,
    /// Most code audits one principal runs at once.
    #[serde(default = "defaults::ingest_max_audits_per_principal")]
    pub ingest_max_audits_per_principal: usize,
    /// Most current value versions ingestion keeps in memory for aggregation (about 350 bytes
    /// each; 0 keeps none). On PostgreSQL they are kept only with the change-feed listener.
    /// Also the most source references of the figures kept per metric (about 300 bytes each).
    #[serde(default = "defaults::ingest_current_rows_max")]
    pub ingest_current_rows_max: usize,
    /// Group commit: the longest a submission waits for others to share its transaction.
    #[serde(default = "defaults::ingest_group_commit_window_micros")]
    pub ingest_group_commit_window_micros: u64,
    /// Group commit: a transaction is written as soon as it holds this many rows.
    #[serde(default = "defaults::ingest_group_commit_max_rows")]
    pub ingest_group_commit_max_rows: usize,
    /// Which part of the platform this process runs.
    pub service: ServiceMode,
    /// Replaced by `[identity]` (asymmetric keys): a shared secret let any service mint any
    /// identity. Refused when set, with a message saying what to do instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_identity_secret: Option<String>,
    /// The internal identity's keys, when services run apart.
    #[serde(default)]
    pub identity: IdentitySettings,
    /// Gateway protection.
    #[serde(default)]
    pub gateway: GatewaySettings,
    /// Remote services, for `service = "gateway"` and `"scoring"`.
    #[serde(default)]
    pub upstreams: Upstreams,
    /// The read-only web pages on the gRPC port (modes `all` and `gateway`).
    #[serde(default)]
    pub web: crate::web::WebSettings,
    /// Reminders and notifications: the outbox's scheduler and delivery worker (mode `all`).
    #[serde(default)]
    pub notify: citycredit_notify::NotifySettings,
    /// TLS for this process's listener.
    pub tls: Option<TlsSettings>,
    /// TLS for calls to upstreams.
    pub upstream_tls: Option<UpstreamTlsSettings>,
    /// Prometheus metrics on `http://<metrics_listen>/metrics`; unset: no metrics endpoint.
    /// Bind it to loopback or the pod network, never to a published address.
    pub metrics_listen: Option<SocketAddr>,
    /// A plaintext listener serving `grpc.health.v1` only (no reflection, no RPCs), for probes
    /// that cannot present a client certificate (Kubernetes' gRPC probes) when the main
    /// listener requires one; unset: none.
    #[serde(default)]
    pub health_listen: Option<SocketAddr>,
    /// OTLP/gRPC endpoint for traces (`OTEL_EXPORTER_OTLP_ENDPOINT` is honoured too); unset:
    /// no export.
    pub otlp_endpoint: Option<String>,
}

/// Defaults of the ingestion settings.
mod defaults {
    pub fn ingest_max_batch_values() -> usize {
        10_000
    }
    pub fn ingest_max_message_bytes() -> usize {
        4 * 1024 * 1024
    }
    pub fn ingest_max_batch_bytes() -> usize {
        64 * 1024 * 1024
    }
    pub fn ingest_max_audit_distinct_codes() -> usize {
        1_000_000
    }
    pub fn ingest_max_concurrent_audits() -> usize {
        2
    }
    pub fn ingest_max_audits_per_principal() -> usize {
        1
    }
    pub fn ingest_current_rows_max() -> usize {
        citycredit_ingestion::DEFAULT_CURRENT_ROWS_MAX
    }
    pub fn ingest_group_commit_window_micros() -> u64 {
        2_000
    }
    pub fn ingest_group_commit_max_rows() -> usize {
        5_000
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("data"),
            database_url: None,
            database_schema: None,
            catalog: None,
            rule_versions: Vec::new(),
            city: None,
            log_format: LogFormat::Text,
            log_filter: "info".into(),
            shutdown_grace_secs: 10,
            worker_threads: None,
            bootstrap_admin_key: None,
            registry_refresh_ms: 1000,
            db_max_connections: 16,
            db_acquire_timeout_ms: 3000,
            ingest_max_batch_values: defaults::ingest_max_batch_values(),
            ingest_max_batch_bytes: defaults::ingest_max_batch_bytes(),
            ingest_max_audit_distinct_codes: defaults::ingest_max_audit_distinct_codes(),
            ingest_max_concurrent_audits: defaults::ingest_max_concurrent_audits(),
            ingest_max_audits_per_principal: defaults::ingest_max_audits_per_principal(),
            ingest_max_message_bytes: defaults::ingest_max_message_bytes(),
            ingest_current_rows_max: defaults::ingest_current_rows_max(),
            ingest_group_commit_window_micros: defaults::ingest_group_commit_window_micros(),
            ingest_group_commit_max_rows: defaults::ingest_group_commit_max_rows(),
            service: ServiceMode::All,
            internal_identity_secret: None,
            identity: IdentitySettings::default(),
            gateway: GatewaySettings::default(),
            upstreams: Upstreams::default(),
            web: crate::web::WebSettings::default(),
            notify: citycredit_notify::NotifySettings::default(),
            tls: None,
            upstream_tls: None,
            metrics_listen: None,
            health_listen: None,
            otlp_endpoint: None,
        }
    }
}

/// Most threads `worker_threads` may ask for.
pub const MAX_WORKER_THREADS: usize = 256;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("configuration: {field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

impl Config {
    /// Loads defaults, then `file` (if given), then `CITYCREDIT_*` variables, then `overrides`
    /// (from the command line). `DATABASE_URL` is honoured when `CITYCREDIT_DATABASE_URL` is not
    /// set, as most tools expect.
    pub fn load(file: Option<&Path>, overrides: Figment) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig
            .merge(
                Env::raw()
                    .only(&["DATABASE_URL"])
                    .map(|_| "database_url".into()),
            )
            .merge(
                Env::raw()
                    .only(&["OTEL_EXPORTER_OTLP_ENDPOINT"])
                    .map(|_| "otlp_endpoint".into()),
            )
            // Nested settings with a double underscore: CITYCREDIT_UPSTREAMS__INGESTION.
            .merge(Env::prefixed("CITYCREDIT_").split("__"))
            .merge(overrides);
        let config: Config = fig.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.notify
            .validate()
            .map_err(|(field, problem)| ConfigError::Invalid { field, problem })?;
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
        {
            return Err(ConfigError::Invalid {
                field: "database_url",
                problem: "must start with postgres://, postgresql:// or sqlite:".into(),
            });
        }
        if let Some(schema) = &self.database_schema
            && !citycredit_store::valid_schema_name(schema)
        {
            return Err(ConfigError::Invalid {
                field: "database_schema",
                problem: "1-63 lowercase letters, digits or '_', not starting with a digit".into(),
            });
        }
        if self.shutdown_grace_secs > 600 {
            return Err(ConfigError::Invalid {
                field: "shutdown_grace_secs",
                problem: "at most 600".into(),
            });
        }
        if let Some(n) = self.worker_threads
            && !(1..=MAX_WORKER_THREADS).contains(&n)
        {
            return Err(ConfigError::Invalid {
                field: "worker_threads",
                problem: format!("between 1 and {MAX_WORKER_THREADS}, or unset"),
            });
        }
        if let Some(key) = &self.bootstrap_admin_key
            && let Some(problem) = citycredit_core::auth::secrets::secret_problem(key)
        {
            return Err(ConfigError::Invalid {
                field: "bootstrap_admin_key",
                problem: format!(
                    "{problem}; {}",
                    citycredit_core::auth::secrets::HOW_TO_MAKE_ONE
                ),
            });
        }
        if !(100..=60_000).contains(&self.registry_refresh_ms) {
            return Err(ConfigError::Invalid {
                field: "registry_refresh_ms",
                problem: "between 100 and 60000".into(),
            });
        }
        if self.db_max_connections == 0 {
            return Err(ConfigError::Invalid {
                field: "db_max_connections",
                problem: "at least 1".into(),
            });
        }
        if self.ingest_max_batch_values == 0 || self.ingest_group_commit_window_micros > 1_000_000 {
            return Err(ConfigError::Invalid {
                field: "ingest_max_batch_values / ingest_group_commit_window_micros",
                problem: "at least 1 value per batch; a window of at most 1,000,000 µs".into(),
            });
        }
        if self.ingest_max_batch_bytes == 0
            || self.ingest_max_audit_distinct_codes == 0
            || self.ingest_max_concurrent_audits == 0
            || self.ingest_max_audits_per_principal == 0
        {
            return Err(ConfigError::Invalid {
                field: "ingest_max_batch_bytes / ingest_max_audit_distinct_codes / \
                        ingest_max_concurrent_audits / ingest_max_audits_per_principal",
                problem: "at least 1".into(),
            });
        }
        if self.internal_identity_secret.is_some() {
            return Err(ConfigError::Invalid {
                field: "internal_identity_secret",
                problem: "no longer used: the gateway signs identities with a private key and the services hold only its public key; make the keys with `citycredit keys generate --out DIR` and set [identity] (see deploy/config)".into(),
            });
        }
        self.validate_identity()?;
        // With TLS to the upstreams every URL must say https (tonic would quietly connect in
        // plaintext to an http:// one), and https needs the CA to verify against.
        let scheme = if self.upstream_tls.is_some() {
            "https://"
        } else {
            "http://"
        };
        let need = |name: &'static str, url: &Option<String>| match url {
            Some(u) if u.starts_with(scheme) => Ok(()),
            Some(_) => Err(ConfigError::Invalid {
                field: name,
                problem: if self.upstream_tls.is_some() {
                    "an https:// URL: [upstream_tls] is set".into()
                } else {
                    "an http:// URL (https:// needs [upstream_tls])".into()
                },
            }),
            None => Err(ConfigError::Invalid {
                field: name,
                problem: "required for this service mode".into(),
            }),
        };
        match self.service {
            ServiceMode::Gateway => {
                need("upstreams.registry", &self.upstreams.registry)?;
                need("upstreams.ingestion", &self.upstreams.ingestion)?;
                need("upstreams.scoring", &self.upstreams.scoring)?;
            }
            ServiceMode::Scoring => need("upstreams.ingestion", &self.upstreams.ingestion)?,
            _ => {}
        }
        let g = &self.gateway;
        if g.max_concurrent_calls == 0 || g.per_principal_rate == 0 || g.per_principal_burst == 0 {
            return Err(ConfigError::Invalid {
                field: "gateway",
                problem: "max_concurrent_calls, per_principal_rate and per_principal_burst must be at least 1".into(),
            });
        }
        if g.default_deadline_ms == 0 || g.max_message_bytes < 1024 {
            return Err(ConfigError::Invalid {
                field: "gateway",
                problem: "default_deadline_ms at least 1, max_message_bytes at least 1024".into(),
            });
        }
        // A principal must be able to send one message of the largest size (and its 5-byte
        // frame header), and the budget in all must hold one principal's.
        if g.max_buffered_request_bytes_per_principal < g.max_message_bytes.saturating_add(5)
            || g.max_buffered_request_bytes < g.max_buffered_request_bytes_per_principal
        {
            return Err(ConfigError::Invalid {
                field: "gateway.max_buffered_request_bytes_per_principal",
                problem: "at least max_message_bytes + 5, and at most max_buffered_request_bytes"
                    .into(),
            });
        }
        if g.min_concurrent_calls == 0 || g.min_concurrent_calls > g.max_concurrent_calls {
            return Err(ConfigError::Invalid {
                field: "gateway.min_concurrent_calls",
                problem: "at least 1 and at most max_concurrent_calls".into(),
            });
        }
        if g.max_calls_per_principal == 0
            || g.max_streams_per_principal == 0
            || g.http2_max_concurrent_streams == 0
            || g.upstream_connections == 0
            || g.failed_auth_per_source_rate == 0
            || g.failed_auth_per_source_burst == 0
        {
            return Err(ConfigError::Invalid {
                field: "gateway",
                problem: "max_calls_per_principal, max_streams_per_principal, \
                          http2_max_concurrent_streams, upstream_connections and \
                          failed_auth_per_source_rate/burst must be at least 1"
                    .into(),
            });
        }
        for (field, ms) in [
            ("gateway.max_deadline_unary_ms", g.max_deadline_unary_ms),
            (
                "gateway.max_deadline_client_streaming_ms",
                g.max_deadline_client_streaming_ms,
            ),
            (
                "gateway.max_deadline_server_streaming_ms",
                g.max_deadline_server_streaming_ms,
            ),
            ("gateway.request_read_timeout_ms", g.request_read_timeout_ms),
            ("gateway.write_timeout_ms", g.write_timeout_ms),
            ("gateway.handshake_timeout_ms", g.handshake_timeout_ms),
        ] {
            // A day is far beyond any call this platform serves; zero would refuse everything.
            if ms == 0 || ms > 86_400_000 {
                return Err(ConfigError::Invalid {
                    field,
                    problem: "between 1 and 86400000 (a day)".into(),
                });
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_filter).is_err() {
            return Err(ConfigError::Invalid {
                field: "log_filter",
                problem: format!("`{}` is not a valid filter", self.log_filter),
            });
        }
        Ok(())
    }

    /// Each mode holds exactly the identity keys its part needs: the gateway signs, services
    /// only verify, scoring signs its own reads; a verifying service holding a signing key
    /// would defeat the point, so it is refused.
    fn validate_identity(&self) -> Result<(), ConfigError> {
        let id = &self.identity;
        let (sign, gateway_pub, scoring_pub) = match self.service {
            ServiceMode::All => (false, false, false),
            ServiceMode::Gateway => (true, false, false),
            ServiceMode::Registry => (false, true, false),
            ServiceMode::Ingestion => (false, true, true),
            ServiceMode::Scoring => (true, true, false),
        };
        let mode = self.service.as_str();
        for (field, want, have) in [
            ("identity.signing_key", sign, id.signing_key.is_some()),
            (
                "identity.gateway_public_key",
                gateway_pub,
                id.gateway_public_key.is_some(),
            ),
            (
                "identity.scoring_public_key",
                scoring_pub,
                id.scoring_public_key.is_some(),
            ),
        ] {
            let problem = match (want, have) {
                (true, false) => format!(
                    "required when running `{mode}`: make the keys with `citycredit keys generate --out DIR`"
                ),
                (false, true) if self.service == ServiceMode::All => {
                    "not used when everything runs in one process (its keys are made in memory); remove it".into()
                }
                (false, true) => format!(
                    "`{mode}` must not hold this key: each process holds only the keys its part needs"
                ),
                _ => continue,
            };
            return Err(ConfigError::Invalid { field, problem });
        }
        Ok(())
    }

    pub fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.gateway.default_deadline_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// Where and how to open the store.
    pub fn store_options(&self) -> citycredit_store::StoreOptions {
        citycredit_store::StoreOptions {
            url: self.database_url.clone(),
            data_dir: self.data_dir.clone(),
            max_connections: self.db_max_connections,
            acquire_timeout: Duration::from_millis(self.db_acquire_timeout_ms),
            schema: self.database_schema.clone(),
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::result_large_err,
    reason = "figment::Jail closures must return figment::Result"
)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_then_file_then_env_then_flags() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "c.toml",
                "listen = \"127.0.0.1:6001\"\nlog_format = \"json\"\n",
            )?;
            let c = Config::load(Some(Path::new("c.toml")), Figment::new())
                .map_err(|e| e.to_string())?;
            assert_eq!(c.listen.port(), 6001);
            assert_eq!(c.log_format, LogFormat::Json);
            assert_eq!(c.data_dir, PathBuf::from("data"));

            jail.set_env("CITYCREDIT_LISTEN", "127.0.0.1:6002");
            let c = Config::load(Some(Path::new("c.toml")), Figment::new())
                .map_err(|e| e.to_string())?;
            assert_eq!(c.listen.port(), 6002);

            let flags = Figment::from(Serialized::default("listen", "127.0.0.1:6003"));
            let c = Config::load(Some(Path::new("c.toml")), flags).map_err(|e| e.to_string())?;
            assert_eq!(c.listen.port(), 6003);
            Ok(())
        });
    }

    #[test]
    fn nested_settings_come_from_double_underscore_variables() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("CITYCREDIT_UPSTREAMS__INGESTION", "http://127.0.0.1:7");
            jail.set_env("CITYCREDIT_GATEWAY__DEFAULT_DEADLINE_MS", "1234");
            jail.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
            let c = Config::load(None, Figment::new()).map_err(|e| e.to_string())?;
            assert_eq!(c.upstreams.ingestion.as_deref(), Some("http://127.0.0.1:7"));
            assert_eq!(c.gateway.default_deadline_ms, 1234);
            assert_eq!(c.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4317"));
            Ok(())
        });
    }

    #[test]
    fn worker_threads_are_one_per_core_unless_set_and_never_zero() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let c = Config::load(None, Figment::new()).map_err(|e| e.to_string())?;
            assert_eq!(c.worker_threads, None);
            jail.set_env("CITYCREDIT_WORKER_THREADS", "1");
            let c = Config::load(None, Figment::new()).map_err(|e| e.to_string())?;
            assert_eq!(c.worker_threads, Some(1));
            for bad in ["0", "257"] {
                jail.set_env("CITYCREDIT_WORKER_THREADS", bad);
                match Config::load(None, Figment::new()) {
                    Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, "worker_threads"),
                    other => panic!("{bad}: {other:?}"),
                }
            }
            Ok(())
        });
    }

    #[test]
    fn database_url_falls_back_to_the_usual_variable() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("DATABASE_URL", "postgres://127.0.0.1/test");
            let c = Config::load(None, Figment::new()).map_err(|e| e.to_string())?;
            assert_eq!(c.database_url.as_deref(), Some("postgres://127.0.0.1/test"));
            jail.set_env("CITYCREDIT_DATABASE_URL", "sqlite://x.db");
            let c = Config::load(None, Figment::new()).map_err(|e| e.to_string())?;
            assert_eq!(c.database_url.as_deref(), Some("sqlite://x.db"));
            Ok(())
        });
    }

    #[test]
    fn each_mode_holds_exactly_the_identity_keys_its_part_needs() {
        let base = |mode: ServiceMode| Config {
            service: mode,
            upstreams: Upstreams {
                registry: Some("http://r:1".into()),
                ingestion: Some("http://i:1".into()),
                scoring: Some("http://s:1".into()),
            },
            ..Config::default()
        };
        let key = || Some(PathBuf::from("k"));
        let field = |c: &Config| match c.validate() {
            Err(ConfigError::Invalid { field, .. }) => Some(field),
            _ => None,
        };
        // Missing keys.
        assert_eq!(
            field(&base(ServiceMode::Gateway)),
            Some("identity.signing_key")
        );
        assert_eq!(
            field(&base(ServiceMode::Registry)),
            Some("identity.gateway_public_key")
        );
        let mut c = base(ServiceMode::Ingestion);
        c.identity.gateway_public_key = key();
        assert_eq!(field(&c), Some("identity.scoring_public_key"));
        c.identity.scoring_public_key = key();
        assert_eq!(field(&c), None);
        // A verifying service holding a signing key, and keys in one process.
        c.identity.signing_key = key();
        assert_eq!(field(&c), Some("identity.signing_key"));
        let mut all = base(ServiceMode::All);
        all.identity.gateway_public_key = key();
        assert_eq!(field(&all), Some("identity.gateway_public_key"));
        // Scoring signs its own reads and verifies the gateway's identities.
        let mut s = base(ServiceMode::Scoring);
        s.identity.signing_key = key();
        s.identity.gateway_public_key = key();
        assert_eq!(field(&s), None);
        // With TLS to the upstreams, http:// would quietly be plaintext.
        s.upstream_tls = Some(UpstreamTlsSettings {
            ca: PathBuf::from("ca"),
            domain: None,
            cert: None,
            key: None,
        });
        assert_eq!(field(&s), Some("upstreams.ingestion"));
        s.upstreams.ingestion = Some("https://i:1".into());
        assert_eq!(field(&s), None);
        // The retired shared secret and placeholder bootstrap keys.
        s.internal_identity_secret = Some("x".repeat(40));
        assert_eq!(field(&s), Some("internal_identity_secret"));
        let mut b = base(ServiceMode::All);
        b.bootstrap_admin_key = Some("CHANGE-ME-to-32-or-more-random-characters".into());
        assert_eq!(field(&b), Some("bootstrap_admin_key"));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("c.toml", "listen_addr = \"127.0.0.1:1\"\n")?;
            let e = Config::load(Some(Path::new("c.toml")), Figment::new())
                .err()
                .map(|e| e.to_string());
            assert!(e.is_some_and(|e| e.contains("listen_addr")));
            jail.create_file("d.toml", "database_url = \"mysql://x\"\n")?;
            let e = Config::load(Some(Path::new("d.toml")), Figment::new())
                .err()
                .map(|e| e.to_string());
            assert!(e.is_some_and(|e| e.contains("database_url")));
            assert!(Config::load(Some(Path::new("missing.toml")), Figment::new()).is_err());
            Ok(())
        });
    }
}
