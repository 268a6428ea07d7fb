//! Assembles the platform from its configuration and serves it on one listener: the citycredit
//! services, `grpc.health.v1` and reflection (`v1` and `v1alpha`), with graceful shutdown.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use citycredit::catalog::{Catalog, LoadError};
use citycredit::city::City;
use citycredit::proto::v1::department_registry_service_server::DepartmentRegistryServiceServer;
use citycredit::proto::v1::indicator_service_server::IndicatorServiceServer;
use citycredit::proto::v1::scoring_service_server::ScoringServiceServer;
use citycredit::store::{Db, StoreError};
use citycredit_ingestion::{Ingestion, IngestionOptions, WriterConfig};
use citycredit_registry::{ApiKeyLayer, Registry, RegistryApi};
use citycredit_scoring::{IndicatorApi, ScoringApi};

use crate::config::Config;

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

/// gRPC service names this process serves (health reports each).
pub const SERVED: &[&str] = &[
    "citycredit.v1.IndicatorService",
    "citycredit.v1.DepartmentRegistryService",
    "citycredit.v1.MetricSubmissionService",
    "citycredit.v1.CodeAuditService",
    "citycredit.v1.ScoringService",
];

/// Serves the platform on `listener` until `shutdown` completes, then lets in-flight RPCs finish
/// for up to the configured grace period.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let (catalog, city) = load_data(&config)?;
    tracing::info!(
        catalog = %catalog.source,
        version = %catalog.version,
        city = %city.name,
        indicators = catalog.indicators.len(),
        metrics = catalog.metrics.len(),
        "catalog loaded"
    );
    let catalog = Arc::new(catalog);

    let opts = config.store_options();
    let db = Db::open(&opts).await?;
    tracing::info!(
        backend = db.backend.as_str(),
        url = %opts.url.as_deref().map(citycredit::store::redact).unwrap_or_else(|| opts.data_dir.join("citycredit.db").display().to_string()),
        "store open"
    );
    let registry = Registry::open(
        db.clone(),
        Arc::clone(&catalog),
        &city,
        config.bootstrap_admin_key.as_deref(),
    )
    .await?;
    let refresh =
        registry.spawn_refresh(std::time::Duration::from_millis(config.registry_refresh_ms));
    let org = registry.org();
    let ingestion = start_ingestion(&config, db.clone(), Arc::clone(&catalog), org.clone());
    let scoring = ScoringApi::new(
        Arc::clone(&catalog),
        org.clone(),
        Arc::new(ingestion.clone()),
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in SERVED {
        health
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    health.set_service_status("", ServingStatus::Serving).await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(citycredit::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            // Both reflection versions, so `list` shows both whichever one a client speaks.
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    tracing::info!(%addr, "serving gRPC");

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let router = Server::builder()
        .layer(ApiKeyLayer::new(registry.keys()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(IndicatorServiceServer::new(IndicatorApi::new(
            Arc::clone(&catalog),
            org,
        )))
        .add_service(DepartmentRegistryServiceServer::new(RegistryApi::new(
            Arc::clone(&registry),
        )))
        .add_service(ingestion.submission_service())
        .add_service(ingestion.code_audit_service())
        .add_service(ScoringServiceServer::new(scoring));
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        TcpListenerStream::new(listener),
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        },
    ));

    shutdown.await;
    tracing::info!(
        grace_secs = config.shutdown_grace_secs,
        "shutting down: draining in-flight calls"
    );
    for name in SERVED {
        health
            .set_service_status(*name, ServingStatus::NotServing)
            .await;
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(config.shutdown_grace(), server).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => tracing::error!(error = %join, "server task failed"),
        Err(_) => tracing::warn!("grace period over: stopping with calls still in flight"),
    }
    refresh.abort();
    db.pool.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Starts ingestion's single writer and change feed over the open store.
fn start_ingestion(
    config: &Config,
    db: Db,
    catalog: Arc<Catalog>,
    org: citycredit::org::OrgView,
) -> Ingestion {
    let options = IngestionOptions {
        writer: WriterConfig {
            window: std::time::Duration::from_micros(config.ingest_group_commit_window_micros),
            max_rows: config.ingest_group_commit_max_rows,
            ..WriterConfig::default()
        },
        max_batch_values: config.ingest_max_batch_values,
        max_message_bytes: config.ingest_max_message_bytes,
        listen_url: config.database_url.clone(),
        // LISTEN/NOTIFY channels are per database: one per schema keeps cities apart.
        notify_channel: match &config.database_schema {
            Some(schema) => format!("citycredit_changes_{schema}"),
            None => "citycredit_changes".to_owned(),
        },
    };
    Ingestion::start(db, catalog, org, options)
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

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
