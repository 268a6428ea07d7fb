//! Assembles the platform from its configuration and serves it on one listener, with graceful
//! shutdown. The same parts make every mode:
//!
//! - `all` (the default): the gateway in front of every service in this process;
//! - `gateway`: the gateway in front of remote services (`upstreams`);
//! - `ingestion`, `scoring`, `registry`: one service alone, behind the front that verifies the
//!   gateway's signed identity (and, for ingestion, scoring's own).
//!
//! Keys: in `all` the gateway's signing key is made in memory at start and never leaves the
//! process; apart, each process reads only the keys its part needs (`[identity]`).
//!
//! Every mode serves `grpc.health.v1` (reporting the health of what it depends on) and
//! reflection (`v1` and `v1alpha`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use citycredit::auth::identity::{
    Audience, IdentitySigner, IdentityVerifier, Issuer, KeyError, parse_public_key,
};
use citycredit::proto::v1 as pb;
use citycredit::proto::v1::department_registry_service_server::DepartmentRegistryServiceServer;
use citycredit::proto::v1::indicator_service_server::IndicatorServiceServer;
use citycredit::proto::v1::notification_service_server::NotificationServiceServer;
use citycredit::proto::v1::review_service_server::ReviewServiceServer;
use citycredit::proto::v1::scoring_service_server::ScoringServiceServer;
use citycredit_core::catalog::{Catalog, LoadError, RuleVersions};
use citycredit_core::city::City;
use citycredit_ingestion::{Ingestion, IngestionOptions, WriterConfig};
use citycredit_registry::{Registry, RegistryApi};
use citycredit_review::Review;
use citycredit_review::store::CycleReader;
use citycredit_scoring::{IndicatorApi, RemoteAggregates, ScoringApi};
use citycredit_store::{Db, StoreError};

use crate::config::{Config, ServiceMode};
use crate::health::{self, Check};
use citycredit_gateway::edge::{Gateway, GatewayParts};
use citycredit_gateway::front::{FrontParts, ServiceFront};
use citycredit_gateway::internal_identity::{EdgeSigner, SharedNonces};
use citycredit_gateway::metrics::{self, Metrics};
use citycredit_gateway::rpc_table::RpcTable;
use citycredit_gateway::transport::{self, TransportLimits};
use citycredit_gateway::upstream::{self, Upstream, UpstreamError};

/// Why the platform could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Data(#[from] LoadError),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("TLS file {path}: {source}")]
    TlsFile {
        path: String,
        source: std::io::Error,
    },
    #[error("metrics endpoint: {0}")]
    Metrics(std::io::Error),
    #[error("{field} {path}: {problem}")]
    IdentityKey {
        field: &'static str,
        path: String,
        problem: String,
    },
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The catalog and city the platform runs with: the built-in ones or the files configured.
pub fn load_data(config: &Config) -> Result<(Catalog, City), LoadError> {
    let catalog = match &config.catalog {
        Some(path) => Catalog::from_path(path)?,
        None => Catalog::builtin()?,
    };
    let city = match &config.city {
        Some(path) => City::from_path(path, &catalog)?,
        None => City::builtin(&catalog)?,
    };
    Ok((catalog, city))
}

/// The primary catalog with the extra ones configured (`rule_versions`), each validated by the
/// same loader, all with distinct versions.
pub fn load_rule_versions(
    config: &Config,
    primary: Arc<Catalog>,
) -> Result<RuleVersions, LoadError> {
    let extra = config
        .rule_versions
        .iter()
        .map(|path| Catalog::from_path(path))
        .collect::<Result<Vec<_>, _>>()?;
    RuleVersions::new(primary, extra)
}

const INDICATOR: &str = pb::indicator_service_server::SERVICE_NAME;
const SCORING: &str = pb::scoring_service_server::SERVICE_NAME;
const SUBMISSION: &str = pb::metric_submission_service_server::SERVICE_NAME;
const CODE_AUDIT: &str = pb::code_audit_service_server::SERVICE_NAME;
const REGISTRY: &str = pb::department_registry_service_server::SERVICE_NAME;
const NOTIFICATION: &str = pb::notification_service_server::SERVICE_NAME;
const REVIEW: &str = pb::review_service_server::SERVICE_NAME;

/// gRPC services each mode serves (health reports each).
pub fn served(mode: ServiceMode) -> &'static [&'static str] {
    match mode {
        ServiceMode::All | ServiceMode::Gateway => &[
            INDICATOR,
            SCORING,
            SUBMISSION,
            CODE_AUDIT,
            REGISTRY,
            NOTIFICATION,
            REVIEW,
        ],
        ServiceMode::Ingestion => &[SUBMISSION, CODE_AUDIT],
        ServiceMode::Scoring => &[INDICATOR, SCORING, NOTIFICATION],
        // The review service lives with the registry: both are the city's organisation and
        // its administration, small and rarely called.
        ServiceMode::Registry => &[REGISTRY, REVIEW],
    }
}

/// How often health checks run.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// How long a service started apart from the registry waits for it to seed the store.
const SEED_WAIT: Duration = Duration::from_secs(120);

/// Serves the platform on `listener` until `shutdown` completes, then lets in-flight RPCs finish
/// for up to the configured grace period.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let mode = config.service;
    let (catalog, city) = load_data(&config)?;
    tracing::info!(
        service = mode.as_str(),
        catalog = %catalog.source,
        version = %catalog.version,
        city = %city.name,
        "catalog loaded"
    );
    let catalog = Arc::new(catalog);
    let versions = Arc::new(load_rule_versions(&config, Arc::clone(&catalog))?);
    if !config.rule_versions.is_empty() {
        tracing::info!(versions = ?versions.versions(), "rule versions loaded");
    }
    let metrics = Metrics::new();
    if let Some(addr) = config.metrics_listen {
        metrics::serve(addr, Arc::clone(&metrics))
            .await
            .map_err(StartError::Metrics)?;
    }
    let keys = IdentityKeys::load(&config)?;

    let opts = config.store_options();
    let db = open_store(&opts).await?;
    tracing::info!(
        backend = db.backend.as_str(),
        url = %opts.url.as_deref().map(citycredit_store::redact).unwrap_or_else(|| opts.data_dir.join("citycredit.db").display().to_string()),
        "store open"
    );
    let registry = match mode {
        ServiceMode::All | ServiceMode::Registry => {
            Registry::open(
                db.clone(),
                Arc::clone(&catalog),
                &city,
                config.bootstrap_admin_key.as_deref(),
            )
            .await?
        }
        _ => Registry::attach(db.clone(), Arc::clone(&catalog), SEED_WAIT).await?,
    };
    let refresh = registry.spawn_refresh(Duration::from_millis(config.registry_refresh_ms));
    let org = registry.org();
    // The review cycle, where the registry is: seeds the city file's cycles once.
    let review = match mode {
        ServiceMode::All | ServiceMode::Registry => {
            let review = Arc::new(Review::new(
                db.clone(),
                Arc::clone(&catalog),
                org.clone(),
                // A cycle may pin any loaded rule version; scoring scores its periods by it.
                versions.versions().into_iter().map(str::to_owned).collect(),
            ));
            review.seed(&city).await?;
            Some(review)
        }
        _ => None,
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    let health_for_probes = health_service.clone();
    let names: Vec<String> = served(mode).iter().map(|s| (*s).to_owned()).collect();
    let mut checks = vec![Check::Database(db.clone())];

    let upstream_tls = match &config.upstream_tls {
        Some(t) => Some(upstream::client_tls(t)?),
        None => None,
    };
    let max_message = config.gateway.max_message_bytes;
    let mut background: Vec<tokio::task::JoinHandle<()>> = vec![refresh];
    // Services apart share one replay guard through the store; in one process no identity
    // ever crosses a network.
    let nonces = match mode {
        ServiceMode::Registry | ServiceMode::Ingestion | ServiceMode::Scoring => {
            let nonces = Arc::new(SharedNonces::new(db.clone()));
            background.push(nonces.spawn_pruning());
            Some(nonces)
        }
        ServiceMode::All | ServiceMode::Gateway => None,
    };
    let gateway_public = keys.gateway_public;
    let scoring_public = keys.scoring_public;
    let mut signer = keys.signer;
    let front = |audience: Audience| {
        FrontParts::new(
            IdentityVerifier::new(audience, gateway_public, scoring_public),
            Arc::clone(&registry),
            nonces.clone(),
            max_message,
        )
    };

    let served: Served = match mode {
        ServiceMode::All => {
            let ingestion = start_ingestion(&config, db.clone(), Arc::clone(&catalog), &registry);
            let scoring = ScoringApi::new(
                Arc::clone(&catalog),
                org.clone(),
                Arc::new(ingestion.clone()),
            )
            .with_rule_versions(Arc::clone(&versions))
            .with_cycles(Arc::new(CycleReader::new(db.clone())))
            .with_credentials(
                Arc::clone(&registry) as Arc<dyn citycredit_core::auth::CredentialCheck>
            );
            let notifier = start_notifier(
                &config,
                &db,
                &catalog,
                &scoring,
                &registry,
                citycredit::aggregates::AggregateSource::changes(&ingestion),
                &mut background,
            );
            let mut routes: HashMap<String, Upstream> = HashMap::new();
            routes.insert(
                NOTIFICATION.into(),
                upstream::local(
                    NotificationServiceServer::new(notifier.service())
                        .max_decoding_message_size(max_message),
                    front(Audience::Scoring),
                ),
            );
            routes.insert(
                INDICATOR.into(),
                upstream::local(
                    IndicatorServiceServer::new(
                        IndicatorApi::new(Arc::clone(&catalog), org.clone())
                            .with_rule_versions(Arc::clone(&versions)),
                    )
                    .max_decoding_message_size(max_message),
                    front(Audience::Scoring),
                ),
            );
            routes.insert(
                SCORING.into(),
                upstream::local(
                    ScoringServiceServer::new(scoring).max_decoding_message_size(max_message),
                    front(Audience::Scoring),
                ),
            );
            routes.insert(
                REGISTRY.into(),
                upstream::local(
                    DepartmentRegistryServiceServer::new(RegistryApi::new(Arc::clone(&registry)))
                        .max_decoding_message_size(max_message),
                    front(Audience::Registry),
                ),
            );
            if let Some(review) = &review {
                routes.insert(
                    REVIEW.into(),
                    upstream::local(
                        ReviewServiceServer::new(review.api())
                            .max_decoding_message_size(max_message),
                        front(Audience::Registry),
                    ),
                );
            }
            let ingestion_front = front(Audience::Ingestion);
            routes.insert(
                SUBMISSION.into(),
                upstream::local(ingestion.submission_service(), Arc::clone(&ingestion_front)),
            );
            routes.insert(
                CODE_AUDIT.into(),
                upstream::local(ingestion.code_audit_service(), ingestion_front),
            );
            let edge = edge_signer(signer.take(), config.gateway.read_grants)?;
            let gateway = gateway(&config, routes, health_service, &registry, edge, &metrics)?;
            with_pages(&config, gateway, &registry, &catalog)
        }
        ServiceMode::Gateway => {
            let mut routes: HashMap<String, Upstream> = HashMap::new();
            let u = &config.upstreams;
            for (name, url, services) in [
                ("registry", &u.registry, &[REGISTRY, REVIEW][..]),
                ("ingestion", &u.ingestion, &[SUBMISSION, CODE_AUDIT][..]),
                (
                    "scoring",
                    &u.scoring,
                    &[SCORING, INDICATOR, NOTIFICATION][..],
                ),
            ] {
                let url = url.as_deref().unwrap_or_default();
                let connections = upstream::connections(
                    url,
                    upstream_tls.as_ref(),
                    config.gateway.upstream_connections,
                )?;
                // The readiness check asks over the first connection (no extra one).
                checks.push(Check::Upstream {
                    name: name.into(),
                    channel: connections.first_channel(),
                });
                for s in services {
                    routes.insert((*s).into(), upstream::remote(&connections));
                }
            }
            let edge = edge_signer(signer.take(), config.gateway.read_grants)?;
            let gateway = gateway(&config, routes, health_service, &registry, edge, &metrics)?;
            with_pages(&config, gateway, &registry, &catalog)
        }
        ServiceMode::Ingestion => {
            let ingestion = start_ingestion(&config, db.clone(), Arc::clone(&catalog), &registry);
            let routes = open_routes(health_service)?
                .add_service(ingestion.submission_service())
                .add_service(ingestion.code_audit_service());
            Served::Routes(alone(routes, front(Audience::Ingestion)))
        }
        ServiceMode::Scoring => {
            let url = config.upstreams.ingestion.as_deref().unwrap_or_default();
            let channel = upstream::channel(url, upstream_tls.as_ref())?;
            checks.push(Check::Upstream {
                name: "ingestion".into(),
                channel: channel.clone(),
            });
            let own = signer
                .take()
                .ok_or_else(|| missing_key("identity.signing_key"))?;
            let source = RemoteAggregates::start(channel, Arc::new(own), Arc::clone(&catalog));
            let changes = citycredit::aggregates::AggregateSource::changes(&*source);
            let scoring = ScoringApi::new(Arc::clone(&catalog), org.clone(), source)
                .with_rule_versions(Arc::clone(&versions))
                // Scoring apart reads the cycles from the shared database too.
                .with_cycles(Arc::new(CycleReader::new(db.clone())))
                .with_credentials(
                    Arc::clone(&registry) as Arc<dyn citycredit_core::auth::CredentialCheck>
                );
            let notifier = start_notifier(
                &config,
                &db,
                &catalog,
                &scoring,
                &registry,
                changes,
                &mut background,
            );
            let routes = open_routes(health_service)?
                .add_service(
                    IndicatorServiceServer::new(
                        IndicatorApi::new(Arc::clone(&catalog), org.clone())
                            .with_rule_versions(Arc::clone(&versions)),
                    )
                    .max_decoding_message_size(max_message),
                )
                .add_service(
                    ScoringServiceServer::new(scoring).max_decoding_message_size(max_message),
                )
                .add_service(
                    NotificationServiceServer::new(notifier.service())
                        .max_decoding_message_size(max_message),
                );
            Served::Routes(alone(routes, front(Audience::Scoring)))
        }
        ServiceMode::Registry => {
            let mut routes = open_routes(health_service)?.add_service(
                DepartmentRegistryServiceServer::new(RegistryApi::new(Arc::clone(&registry)))
                    .max_decoding_message_size(max_message),
            );
            if let Some(review) = &review {
                routes = routes.add_service(
                    ReviewServiceServer::new(review.api()).max_decoding_message_size(max_message),
                );
            }
            Served::Routes(alone(routes, front(Audience::Registry)))
        }
    };
    background.push(health::spawn(health.clone(), names.clone(), checks, HEALTH_EVERY).await);
    let g = &config.gateway;
    let limits = TransportLimits {
        handshake_timeout: Duration::from_millis(g.handshake_timeout_ms),
        write_timeout: Duration::from_millis(g.write_timeout_ms),
    };
    if let Some(addr) = config.health_listen {
        background.push(serve_health_for_probes(addr, health_for_probes, limits).await?);
    }

    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    tracing::info!(%addr, service = mode.as_str(), tls = config.tls.is_some(), "serving gRPC");
    let pages = config.web.enabled && matches!(mode, ServiceMode::All | ServiceMode::Gateway);
    if pages {
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(url = %format!("{scheme}://{addr}/"), "serving web pages");
    }

    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(g.http2_max_concurrent_streams))
        // A peer that opens and resets streams in a loop (rapid reset) is cut off early.
        .http2_max_pending_accept_reset_streams(Some(
            usize::try_from(g.http2_max_concurrent_streams).unwrap_or(usize::MAX),
        ))
        // Browsers speak HTTP/1.1 to a plaintext address; gRPC callers keep HTTP/2.
        .accept_http1(pages);
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(server_tls(tls)?.timeout(limits.handshake_timeout))?;
    }
    let (stop_tx, mut stop_rx) = watch::channel(false);
    // Every accepted connection gets TCP_NODELAY and the transport limits (`transport.rs`);
    // tonic's own `tcp_nodelay` applies only to listeners it binds itself.
    let server = tokio::spawn(builder.serve_with_incoming_shutdown(
        served,
        transport::incoming(listener, limits),
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        },
    ));

    shutdown.await;
    tracing::info!(
        grace_secs = config.shutdown_grace_secs,
        "shutting down: draining in-flight calls"
    );
    for task in &background {
        task.abort();
    }
    for name in &names {
        health
            .set_service_status(name.as_str(), tonic_health::ServingStatus::NotServing)
            .await;
    }
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let _ = stop_tx.send(true);
    match tokio::time::timeout(config.shutdown_grace(), server).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => tracing::error!(error = %join, "server task failed"),
        Err(_) => tracing::warn!("grace period over: stopping with calls still in flight"),
    }
    db.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// How long start-up waits, in all, for an unreachable database before giving up.
const STORE_START_WAIT: Duration = Duration::from_secs(60);

/// Opens the store, waiting while the database is unreachable (exponential backoff with
/// jitter: 200 ms doubling to 5 s between attempts, plus up to as much jitter, a minute of
/// waiting in all, each retry logged), so a process started before its database comes up does
/// not exit.
async fn open_store(opts: &citycredit_store::StoreOptions) -> Result<Db, StartError> {
    let backoff = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .with_total_delay(Some(STORE_START_WAIT))
        .without_max_times();
    let db = (|| Db::open(opts))
        .retry(backoff)
        .when(StoreError::is_transient)
        .notify(|e, wait| {
            tracing::warn!(
                error = %e,
                retry_in_ms = wait.as_millis(),
                "database unreachable at start; waiting for it"
            );
        })
        .await?;
    Ok(db)
}

/// The identity keys this process holds (see [`crate::config::IdentitySettings`]).
struct IdentityKeys {
    /// The gateway's signing key (generated in memory for `all`), or scoring's own.
    signer: Option<IdentitySigner>,
    /// What every front verifies the gateway's identities with (`all`: the generated key's).
    gateway_public: ed25519_dalek::VerifyingKey,
    /// Ingestion only: scoring's public key.
    scoring_public: Option<ed25519_dalek::VerifyingKey>,
}

fn missing_key(field: &'static str) -> StartError {
    StartError::IdentityKey {
        field,
        path: String::new(),
        problem: "required: make the keys with `citycredit keys generate --out DIR`".into(),
    }
}

impl IdentityKeys {
    /// The keys `config`'s mode needs, read and checked (placeholders and weak keys refused).
    fn load(config: &Config) -> Result<IdentityKeys, StartError> {
        let id = &config.identity;
        let read = |field: &'static str, path: &Option<std::path::PathBuf>| {
            let path = path.as_ref().ok_or_else(|| missing_key(field))?;
            std::fs::read_to_string(path)
                .map(|text| (path.display().to_string(), text))
                .map_err(|e| StartError::IdentityKey {
                    field,
                    path: path.display().to_string(),
                    problem: e.to_string(),
                })
        };
        let bad = |field: &'static str, path: String| {
            move |e: KeyError| StartError::IdentityKey {
                field,
                path,
                problem: e.to_string(),
            }
        };
        let signer = |issuer: Issuer| -> Result<IdentitySigner, StartError> {
            let (path, text) = read("identity.signing_key", &id.signing_key)?;
            IdentitySigner::from_text(issuer, &text).map_err(bad("identity.signing_key", path))
        };
        let public = |field: &'static str, p: &Option<std::path::PathBuf>| {
            let (path, text) = read(field, p)?;
            parse_public_key(&text).map_err(bad(field, path))
        };
        match config.service {
            ServiceMode::All => {
                let signer = IdentitySigner::generate(Issuer::Gateway);
                Ok(IdentityKeys {
                    gateway_public: signer.public_key(),
                    signer: Some(signer),
                    scoring_public: None,
                })
            }
            ServiceMode::Gateway => {
                let signer = signer(Issuer::Gateway)?;
                Ok(IdentityKeys {
                    gateway_public: signer.public_key(),
                    signer: Some(signer),
                    scoring_public: None,
                })
            }
            ServiceMode::Registry => Ok(IdentityKeys {
                signer: None,
                gateway_public: public("identity.gateway_public_key", &id.gateway_public_key)?,
                scoring_public: None,
            }),
            ServiceMode::Ingestion => Ok(IdentityKeys {
                signer: None,
                gateway_public: public("identity.gateway_public_key", &id.gateway_public_key)?,
                scoring_public: Some(public(
                    "identity.scoring_public_key",
                    &id.scoring_public_key,
                )?),
            }),
            ServiceMode::Scoring => {
                let signer = signer(Issuer::Scoring)?;
                let gateway_public = public("identity.gateway_public_key", &id.gateway_public_key)?;
                // Scoring holding the gateway's private key could mint any identity.
                if signer.public_key() == gateway_public {
                    return Err(StartError::IdentityKey {
                        field: "identity.signing_key",
                        path: id
                            .signing_key
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default(),
                        problem: "this is the gateway's key: scoring must sign with its own (scoring/identity.key from `citycredit keys generate`)".into(),
                    });
                }
                Ok(IdentityKeys {
                    signer: Some(signer),
                    gateway_public,
                    scoring_public: None,
                })
            }
        }
    }
}

/// The gateway's signer over the key loaded for it.
fn edge_signer(
    signer: Option<IdentitySigner>,
    read_grants: bool,
) -> Result<Arc<EdgeSigner>, StartError> {
    let signer = signer.ok_or_else(|| missing_key("identity.signing_key"))?;
    Ok(Arc::new(EdgeSigner::new(signer, read_grants)))
}

/// `grpc.health.v1` alone, in plaintext, for probes that cannot present a client certificate:
/// it tells whether the process serves and nothing else.
async fn serve_health_for_probes(
    addr: std::net::SocketAddr,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    limits: TransportLimits,
) -> Result<tokio::task::JoinHandle<()>, StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr, source })?;
    tracing::info!(addr = %bound, "serving health checks for probes");
    Ok(tokio::spawn(async move {
        let served = Server::builder()
            .add_service(health)
            .serve_with_incoming(transport::incoming(listener, limits))
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "health endpoint for probes stopped");
        }
    }))
}

/// Health and reflection (over every citycredit service, health, rich error types and
/// reflection itself, in both versions: grpcurl releases differ).
fn open_routes(
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> Result<Routes, StartError> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(citycredit::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    Ok(Routes::new(health)
        .add_service(builder().build_v1()?)
        .add_service(builder().build_v1alpha()?))
}

/// The web pages beside the gateway on the same port, when enabled (`crate::web`):
/// `application/grpc*` requests go to the gateway, everything else to the pages.
fn with_pages(
    config: &Config,
    gateway: Gateway,
    registry: &Arc<Registry>,
    catalog: &Arc<Catalog>,
) -> Served {
    if !config.web.enabled {
        return Served::Edge {
            gateway,
            pages: None,
        };
    }
    let pages = crate::web::mount(
        axum::Router::new().fallback_service(gateway.clone()),
        &config.web,
        registry.keys(),
        Arc::clone(catalog),
        registry.org(),
        config.tls.is_some(),
    );
    Served::Edge {
        gateway,
        pages: Some(pages),
    }
}

/// What the listener serves.
#[derive(Clone)]
enum Served {
    /// The gateway (modes `all` and `gateway`): a gRPC request goes to it straight from the
    /// connection, with no router in between (it routes by service itself); any other request
    /// to the web pages when they are served, else to the gateway too (which refuses it).
    Edge {
        gateway: Gateway,
        pages: Option<axum::Router>,
    },
    /// A service alone, behind its front.
    Routes(Routes),
}

type ServedFuture = std::pin::Pin<
    Box<
        dyn Future<Output = Result<http::Response<tonic::body::Body>, std::convert::Infallible>>
            + Send,
    >,
>;

impl tower::Service<http::Request<tonic::body::Body>> for Served {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = ServedFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // The gateway and axum's routers are always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> ServedFuture {
        match self {
            Served::Edge {
                pages: Some(pages), ..
            } if !crate::web::is_grpc(&req) => {
                let answer = tower::Service::call(pages, req);
                Box::pin(async move {
                    let Ok(res) = answer.await;
                    Ok(res.map(tonic::body::Body::new))
                })
            }
            Served::Edge { gateway, .. } => tower::Service::call(gateway, req),
            Served::Routes(routes) => Box::pin(tower::Service::call(routes, req)),
        }
    }
}

/// Services running alone: behind the front that verifies the gateway's signed identity.
fn alone(routes: Routes, front: Arc<FrontParts>) -> Routes {
    let front = ServiceFront::new(routes.prepare(), front);
    Routes::from(axum::Router::new().fallback_service(front)).prepare()
}

/// The gateway in front of `routes`, answering health and reflection itself.
fn gateway(
    config: &Config,
    routes: HashMap<String, Upstream>,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    registry: &Arc<Registry>,
    signer: Arc<EdgeSigner>,
    metrics: &Arc<Metrics>,
) -> Result<Gateway, StartError> {
    let open = open_routes(health)?.prepare();
    Ok(Gateway::new(GatewayParts {
        table: RpcTable::citycredit(),
        routes,
        open: tower::util::BoxCloneSyncService::new(open),
        keys: registry.keys(),
        registry: Some(Arc::clone(registry)),
        signer,
        settings: config.gateway.clone(),
        metrics: Arc::clone(metrics),
    }))
}

fn server_tls(t: &crate::config::TlsSettings) -> Result<ServerTlsConfig, StartError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|source| StartError::TlsFile {
            path: p.display().to_string(),
            source,
        })
    };
    let mut tls =
        ServerTlsConfig::new().identity(Identity::from_pem(read(&t.cert)?, read(&t.key)?));
    if let Some(ca) = &t.client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    Ok(tls)
}

/// Starts ingestion's single writer and change feed over the open store.
fn start_ingestion(
    config: &Config,
    db: Db,
    catalog: Arc<Catalog>,
    registry: &Arc<Registry>,
) -> Ingestion {
    let org = registry.org();
    let options = IngestionOptions {
        writer: WriterConfig {
            window: Duration::from_micros(config.ingest_group_commit_window_micros),
            max_rows: config.ingest_group_commit_max_rows,
            ..WriterConfig::default()
        },
        max_batch_values: config.ingest_max_batch_values,
        max_batch_bytes: config.ingest_max_batch_bytes,
        max_audit_distinct_codes: config.ingest_max_audit_distinct_codes,
        max_concurrent_audits: config.ingest_max_concurrent_audits,
        max_audits_per_principal: config.ingest_max_audits_per_principal,
        credential_recheck: IngestionOptions::default().credential_recheck,
        max_message_bytes: config.ingest_max_message_bytes,
        listen_url: config.database_url.clone(),
        current_rows_max: config.ingest_current_rows_max,
        // LISTEN/NOTIFY channels are per database: one per schema keeps cities apart.
        notify_channel: match &config.database_schema {
            Some(schema) => format!("citycredit_changes_{schema}"),
            None => "citycredit_changes".to_owned(),
        },
        org_refresh: Some(Arc::clone(registry) as Arc<dyn citycredit_core::org::OrgRefresh>),
        credentials: Some(Arc::clone(registry) as Arc<dyn citycredit_core::auth::CredentialCheck>),
    };
    Ingestion::start(db, catalog, org, options)
}

/// The notifier (`[notify]`) beside scoring (modes `all` and `scoring`): its service, and its
/// scheduler and delivery worker when enabled, woken by `changes`; basic indicators' outcomes
/// come from `scoring` in this process. Several processes may run it on one PostgreSQL store:
/// notices are deduplicated by key and deliveries claimed with `FOR UPDATE SKIP LOCKED`.
fn start_notifier(
    config: &Config,
    db: &Db,
    catalog: &Arc<Catalog>,
    scoring: &ScoringApi,
    registry: &Arc<Registry>,
    changes: tokio::sync::broadcast::Receiver<citycredit::aggregates::Change>,
    background: &mut Vec<tokio::task::JoinHandle<()>>,
) -> citycredit_notify::Notifier {
    let notifier = citycredit_notify::Notifier::new(
        db.clone(),
        Arc::clone(catalog),
        registry.org(),
        config.notify.clone(),
        Some(Arc::new(crate::notifier::ScoringOutcomes {
            scoring: scoring.clone(),
            catalog: Arc::clone(catalog),
        })),
    )
    .with_credentials(Arc::clone(registry) as Arc<dyn citycredit_core::auth::CredentialCheck>)
    .with_warnings(Arc::new(crate::notifier::ScoringWarnings {
        scoring: scoring.clone(),
    }));
    if config.notify.enabled {
        background.extend(notifier.spawn(Some(changes)));
    }
    notifier
}

/// Binds the configured address.
pub async fn bind(config: &Config) -> Result<TcpListener, StartError> {
    TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })
}

/// Completes on SIGTERM or Ctrl-C. The handlers are installed when this is called, not when
/// the future is first polled: a signal that arrives while the server is still starting (after
/// it has said "serving gRPC", before `serve` polls its shutdown future) is not lost, nor does
/// it kill the process with the default action.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = int.recv() => {},
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM or SIGINT");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %e, "cannot listen for ctrl-c");
                std::future::pending::<()>().await;
            }
        }
    }
}
