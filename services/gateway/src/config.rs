//! Configuration in layers: built-in defaults, then an optional TOML file, then `CITYCREDIT_*`
//! environment variables (`CITYCREDIT_LISTEN=127.0.0.1:6000`), then command-line flags; the
//! result is validated before anything starts. Every setting is documented in
//! `deploy/config/citycredit.example.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

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

/// Protection the gateway applies to every call, and the transport limits of every listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    /// Ceiling of the adaptive limit on unary calls being served at once across all callers,
    /// and the cap on unary calls in flight and (separately) streams open at once in all;
    /// beyond them calls are shed at once with RESOURCE_EXHAUSTED and RetryInfo.
    pub max_concurrent_calls: usize,
    /// Floor of the adaptive limit: it never admits fewer unary calls at once than this. Equal
    /// to `max_concurrent_calls`, the limit is fixed.
    pub min_concurrent_calls: usize,
    /// Calls per second each principal may start (token bucket refill rate).
    pub per_principal_rate: u32,
    /// Calls a principal may start in a burst.
    pub per_principal_burst: u32,
    /// Unary calls one principal may have in flight, from the request's arrival until its
    /// response is fully sent.
    pub max_calls_per_principal: usize,
    /// Streaming calls (SubmitBatch, AuditCodes, watches) one principal may have open.
    pub max_streams_per_principal: usize,
    /// Deadline for calls that send none (`grpc-timeout`), except server-streaming watches.
    pub default_deadline_ms: u64,
    /// The longest deadline a unary call gets, whatever the caller asks.
    pub max_deadline_unary_ms: u64,
    /// The longest deadline a client-streaming call (SubmitBatch, AuditCodes) gets.
    pub max_deadline_client_streaming_ms: u64,
    /// The longest a server-streaming call (a watch) stays open; also its deadline when the
    /// caller sends none.
    pub max_deadline_server_streaming_ms: u64,
    /// A request stream that sends nothing for this long ends with DEADLINE_EXCEEDED (a unary
    /// request must arrive whole within it).
    pub request_read_timeout_ms: u64,
    /// A connection whose response data the peer has not taken for this long (TCP or HTTP/2
    /// flow control) is closed.
    pub write_timeout_ms: u64,
    /// A connection must send its HTTP/2 preface (after TLS, when TLS is on) within this long.
    pub handshake_timeout_ms: u64,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`: streams one HTTP/2 connection may have open.
    pub http2_max_concurrent_streams: u32,
    /// Failed authentications one source address may make per second; beyond it (and the
    /// burst) they are answered RESOURCE_EXHAUSTED without a key look-up.
    pub failed_auth_per_source_rate: u32,
    /// Failed authentications one source address may make in a burst.
    pub failed_auth_per_source_burst: u32,
    /// Largest message accepted or sent, in bytes.
    pub max_message_bytes: usize,
}

impl GatewaySettings {
    pub fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.default_deadline_ms)
    }
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            max_concurrent_calls: 512,
            min_concurrent_calls: 16,
            per_principal_rate: 2000,
            per_principal_burst: 4000,
            max_calls_per_principal: 64,
            max_streams_per_principal: 32,
            default_deadline_ms: 30_000,
            max_deadline_unary_ms: 60_000,
            max_deadline_client_streaming_ms: 300_000,
            max_deadline_server_streaming_ms: 3_600_000,
            request_read_timeout_ms: 10_000,
            write_timeout_ms: 20_000,
            handshake_timeout_ms: 10_000,
            http2_max_concurrent_streams: 128,
            failed_auth_per_source_rate: 5,
            failed_auth_per_source_burst: 50,
            max_message_bytes: 8 * 1024 * 1024,
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

/// TLS for calls to upstreams (gateway -> services, scoring -> ingestion).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSettings {
    /// PEM CA that signed the upstreams' certificates.
    pub ca: PathBuf,
    /// The name the upstreams' certificates carry.
    pub domain: String,
    /// Client certificate and key, for upstreams that require mTLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
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
    /// A city file to use instead of the built-in Quzhou seed.
    pub city: Option<PathBuf>,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax.
    pub log_filter: String,
    /// How long in-flight RPCs may run after SIGTERM before the server stops anyway.
    pub shutdown_grace_secs: u64,
    /// The bootstrap administrator's API key, used only when the store has no principals yet
    /// (`CITYCREDIT_BOOTSTRAP_ADMIN_KEY`). Unset: a key is generated and printed once.
    pub bootstrap_admin_key: Option<String>,
    /// How often the registry checks for changes made by other processes (milliseconds):
    /// the bound on how long a revoked key keeps working elsewhere.
    pub registry_refresh_ms: u64,
    /// Most database connections this process opens.
    pub db_max_connections: u32,
    /// How long a database call waits for a connection before failing with UNAVAILABLE.
    pub db_acquire_timeout_ms: u64,
    /// Most values one SubmitBatch stream may carry.
    #[serde(default = "defaults::ingest_max_batch_values")]
    pub ingest_max_batch_values: usize,
    /// Largest gRPC message the ingestion services decode, in bytes.
    #[serde(default = "defaults::ingest_max_message_bytes")]
    pub ingest_max_message_bytes: usize,
    /// Group commit: the longest a submission waits for others to share its transaction.
    #[serde(default = "defaults::ingest_group_commit_window_micros")]
    pub ingest_group_commit_window_micros: u64,
    /// Group commit: a transaction is written as soon as it holds this many rows.
    #[serde(default = "defaults::ingest_group_commit_max_rows")]
    pub ingest_group_commit_max_rows: usize,
    /// Which part of the platform this process runs.
    pub service: ServiceMode,
    /// The secret the gateway signs callers' identities with and services verify them with
    /// (at least 32 characters; `CITYCREDIT_INTERNAL_IDENTITY_SECRET`). Required when services
    /// run apart; generated per process when everything runs in one.
    pub internal_identity_secret: Option<String>,
    /// Gateway protection.
    #[serde(default)]
    pub gateway: GatewaySettings,
    /// Remote services, for `service = "gateway"` and `"scoring"`.
    #[serde(default)]
    pub upstreams: Upstreams,
    /// TLS for this process's listener.
    pub tls: Option<TlsSettings>,
    /// TLS for calls to upstreams.
    pub upstream_tls: Option<UpstreamTlsSettings>,
    /// Prometheus metrics on `http://<metrics_listen>/metrics`; unset: no metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
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
            city: None,
            log_format: LogFormat::Text,
            log_filter: "info".into(),
            shutdown_grace_secs: 10,
            bootstrap_admin_key: None,
            registry_refresh_ms: 1000,
            db_max_connections: 16,
            db_acquire_timeout_ms: 3000,
            ingest_max_batch_values: defaults::ingest_max_batch_values(),
            ingest_max_message_bytes: defaults::ingest_max_message_bytes(),
            ingest_group_commit_window_micros: defaults::ingest_group_commit_window_micros(),
            ingest_group_commit_max_rows: defaults::ingest_group_commit_max_rows(),
            service: ServiceMode::All,
            internal_identity_secret: None,
            gateway: GatewaySettings::default(),
            upstreams: Upstreams::default(),
            tls: None,
            upstream_tls: None,
            metrics_listen: None,
            otlp_endpoint: None,
        }
    }
}

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
            && !citycredit::store::valid_schema_name(schema)
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
        if let Some(key) = &self.bootstrap_admin_key
            && key.len() < 32
        {
            return Err(ConfigError::Invalid {
                field: "bootstrap_admin_key",
                problem: "at least 32 characters (use a long random secret)".into(),
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
        if let Some(secret) = &self.internal_identity_secret
            && secret.len() < 32
        {
            return Err(ConfigError::Invalid {
                field: "internal_identity_secret",
                problem: "at least 32 characters".into(),
            });
        }
        if self.service != ServiceMode::All && self.internal_identity_secret.is_none() {
            return Err(ConfigError::Invalid {
                field: "internal_identity_secret",
                problem: format!(
                    "required when running `{}` alone: the gateway and the services must share it",
                    self.service.as_str()
                ),
            });
        }
        let need = |name: &'static str, url: &Option<String>| match url {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => Ok(()),
            Some(_) => Err(ConfigError::Invalid {
                field: name,
                problem: "an http:// or https:// URL".into(),
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
        if g.min_concurrent_calls == 0 || g.min_concurrent_calls > g.max_concurrent_calls {
            return Err(ConfigError::Invalid {
                field: "gateway.min_concurrent_calls",
                problem: "at least 1 and at most max_concurrent_calls".into(),
            });
        }
        if g.max_calls_per_principal == 0
            || g.max_streams_per_principal == 0
            || g.http2_max_concurrent_streams == 0
            || g.failed_auth_per_source_rate == 0
            || g.failed_auth_per_source_burst == 0
        {
            return Err(ConfigError::Invalid {
                field: "gateway",
                problem: "max_calls_per_principal, max_streams_per_principal, \
                          http2_max_concurrent_streams and failed_auth_per_source_rate/burst \
                          must be at least 1"
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

    pub fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.gateway.default_deadline_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// Where and how to open the store.
    pub fn store_options(&self) -> citycredit::store::StoreOptions {
        citycredit::store::StoreOptions {
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
