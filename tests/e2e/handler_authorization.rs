//! Issue 11, point 4: every handler of every service goes through the one authorization path
//! (`citycredit::auth`). The six services are served in process with no authentication
//! layer at all, and every RPC of the RPC table is called once without a principal: each must
//! answer UNAUTHENTICATED `CREDENTIAL_REFUSED` from the handler itself. A handler that skipped
//! the path would answer something else (data, or a validation error), and an RPC added to the
//! contracts without a handler here would leave the sweep short.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_types::StatusExt;

use citycredit::org;
use citycredit::proto::v1 as pb;
use citycredit_gateway::rpc_table::RpcTable;
use citycredit_ingestion::{Ingestion, IngestionOptions};
use citycredit_registry::{Registry, RegistryApi};
use citycredit_scoring::{IndicatorApi, ScoringApi};
use citycredit_store::testing;
use citycredit_tests::ingestion::catalog_and_org;
use citycredit_tests::raw_codec::Raw;

/// Calls `path` with one empty message and no credential; Ok with the first response message
/// (empty for a stream that sends none within a second), or the status.
async fn call(channel: Channel, path: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(tokio_stream::iter(vec![Vec::new()]));
    req.set_timeout(Duration::from_secs(20));
    let path = http::uri::PathAndQuery::try_from(path).unwrap_or_else(|e| panic!("{e}"));
    let mut stream = grpc.streaming(req, path, Raw).await?.into_inner();
    match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
        Ok(Ok(m)) => Ok(m.unwrap_or_default()),
        Ok(Err(status)) => Err(status),
        Err(_) => Ok(Vec::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_handler_refuses_a_call_without_a_principal() {
    let db = testing::sqlite().await;
    let (catalog, org_now) = catalog_and_org();
    let registry = Registry::open(db.db().clone(), Arc::clone(&catalog), &org_now.city, None)
        .await
        .unwrap_or_else(|e| panic!("registry: {e}"));
    let ing = Ingestion::start(
        db.db().clone(),
        Arc::clone(&catalog),
        org::fixed(org_now.clone()),
        IngestionOptions::default(),
    );
    let scoring = ScoringApi::new(
        Arc::clone(&catalog),
        org::fixed(org_now.clone()),
        Arc::new(ing.clone()),
    );
    let notifier = citycredit_notify::Notifier::new(
        db.db().clone(),
        Arc::clone(&catalog),
        org::fixed(org_now.clone()),
        citycredit_notify::NotifySettings::default(),
        None,
    );
    let review = Arc::new(citycredit_review::Review::new(
        db.db().clone(),
        Arc::clone(&catalog),
        org::fixed(org_now.clone()),
        vec![catalog.version.clone()],
    ));
    let indicators = IndicatorApi::new(Arc::clone(&catalog), org::fixed(org_now));

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    let router = Server::builder()
        .add_service(ing.submission_service())
        .add_service(ing.code_audit_service())
        .add_service(
            pb::department_registry_service_server::DepartmentRegistryServiceServer::new(
                RegistryApi::new(registry),
            ),
        )
        .add_service(pb::scoring_service_server::ScoringServiceServer::new(
            scoring,
        ))
        .add_service(pb::indicator_service_server::IndicatorServiceServer::new(
            indicators,
        ))
        .add_service(
            pb::notification_service_server::NotificationServiceServer::new(notifier.service()),
        )
        .add_service(pb::review_service_server::ReviewServiceServer::new(
            review.api(),
        ));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect_lazy();

    let table = RpcTable::citycredit();
    let paths = table.paths();
    assert!(paths.len() > 40, "the RPC table lists {} RPCs", paths.len());
    for path in &paths {
        let err = call(channel.clone(), path)
            .await
            .err()
            .unwrap_or_else(|| panic!("{path}: answered without a principal"));
        assert_eq!(err.code(), Code::Unauthenticated, "{path}: {err:?}");
        let reason = err
            .get_error_details()
            .error_info()
            .map(|i| i.reason.clone())
            .unwrap_or_default();
        assert_eq!(reason, "CREDENTIAL_REFUSED", "{path}: {err:?}");
        assert!(
            err.message().starts_with("no credential"),
            "{path}: not refused by the authorization path: {}",
            err.message()
        );
    }
    eprintln!("{} RPCs refused without a principal", paths.len());
}
