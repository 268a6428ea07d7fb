//! Issue 10, point 5: a WatchScorecard stream ends with UNAUTHENTICATED (reason
//! CREDENTIAL_REVOKED) soon after its caller's key is revoked. In process: scoring over
//! ingestion on SQLite and PostgreSQL, a principal carrying its key's prefix and a credential
//! check the test controls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use tonic::transport::{Endpoint, Server};
use tonic_types::StatusExt;

use citycredit::org;
use citycredit::proto::v1 as pb;
use citycredit_core::auth::{CredentialCheck, Principal, Role};
use citycredit_ingestion::{Ingestion, IngestionOptions};
use citycredit_scoring::ScoringApi;
use citycredit_store::testing;
use citycredit_tests::ingestion::*;
use citycredit_tests::{Backend, both_databases};

#[derive(Debug, Default)]
struct Switch {
    revoked: AtomicBool,
}

impl CredentialCheck for Switch {
    fn still_valid(&self, principal: &Principal, _now_micros: i64) -> bool {
        principal.credential.is_none() || !self.revoked.load(Ordering::SeqCst)
    }
}

async fn a_revoked_key_ends_its_scorecard_watch_soon(backend: Backend) {
    let db = testing::open(backend).await;
    let name = db.name();
    let switch = Arc::new(Switch::default());
    let (catalog, org_now) = catalog_and_org();
    let view = org::fixed(org_now);
    let ing = Ingestion::start(
        db.db().clone(),
        Arc::clone(&catalog),
        view.clone(),
        IngestionOptions::default(),
    );
    let scoring = ScoringApi::new(catalog, view, Arc::new(ing.clone()))
        .with_credentials(Arc::clone(&switch) as Arc<dyn CredentialCheck>);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    let principal = Principal {
        id: "watcher".into(),
        role: Role::Operator,
        department: None,
        credential: Some("cc_watcher".into()),
    };
    let authenticate = move |mut req: tonic::Request<()>| {
        req.extensions_mut().insert(principal.clone());
        Ok(req)
    };
    tokio::spawn(async move {
        let _ = Server::builder()
            .layer(tonic::service::InterceptorLayer::new(authenticate))
            .add_service(pb::scoring_service_server::ScoringServiceServer::new(
                scoring,
            ))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    let mut c = pb::scoring_service_client::ScoringServiceClient::new(
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .connect_lazy(),
    );
    let mut watch = c
        .watch_scorecard(pb::WatchScorecardRequest {
            region_code: "330800".into(),
            period: "2026".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    // The first scorecard arrives while the key stands.
    let first = watch
        .message()
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(first.is_some(), "{name}");
    switch.revoked.store(true, Ordering::SeqCst);
    let revoked_at = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(e) => return Some(e),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name}: the revoked key's watch kept going"))
    .unwrap_or_else(|| panic!("{name}: the watch ended without a status"));
    let took = revoked_at.elapsed();
    assert_eq!(end.code(), Code::Unauthenticated, "{name}: {end:?}");
    assert_eq!(
        end.get_error_details()
            .error_info()
            .map(|i| i.reason.clone())
            .as_deref(),
        Some("CREDENTIAL_REVOKED")
    );
    assert!(took < Duration::from_secs(1), "{name}: {took:?}");
    eprintln!("{name}: scorecard watch ended {took:?} after the revocation");
}

both_databases!(a_revoked_key_ends_its_scorecard_watch_soon);
