//! Issue 10, point 5: a key revoked while its calls are open stops them. A SubmitBatch stream
//! commits nothing sent after the revocation (checked as each message arrives and again by the
//! writer inside its transaction); a WatchChanges stream ends with UNAUTHENTICATED within a
//! quarter of a second. In process, at the ingestion level (a principal carrying its key's
//! prefix and a credential check the test controls), on SQLite and PostgreSQL; and through the
//! real server, which needs the signed identity to carry the key prefix to the services.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Code;
use tonic::transport::{Endpoint, Server};
use tonic_types::StatusExt;

use citycredit::org;
use citycredit::proto::v1 as pb;
use citycredit_core::auth::{CredentialCheck, Principal, Role};
use citycredit_ingestion::{Ingestion, IngestionOptions};
use citycredit_store::testing::{self, TestDb};
use citycredit_tests::ingestion::*;
use citycredit_tests::{Backend, both_databases};

const PREFIX: &str = "cc_revoked";

/// A credential check the test flips.
#[derive(Debug, Default)]
struct Switch {
    revoked: AtomicBool,
}

impl CredentialCheck for Switch {
    fn still_valid(&self, principal: &Principal, _now_micros: i64) -> bool {
        principal.credential.as_deref() != Some(PREFIX) || !self.revoked.load(Ordering::SeqCst)
    }
}

fn keyed_principal() -> Principal {
    Principal {
        id: "platform-keyed".into(),
        role: Role::Platform,
        department: None,
        credential: Some(PREFIX.into()),
    }
}

/// Ingestion over `db` with the switch as its credential check, served on a loopback port
/// behind a layer that authenticates every call as `principal`.
async fn serve(db: &TestDb, switch: Arc<Switch>, principal: Principal) -> (Ingestion, SocketAddr) {
    let (catalog, org_now) = catalog_and_org();
    let options = IngestionOptions {
        credentials: Some(switch as Arc<dyn CredentialCheck>),
        ..IngestionOptions::default()
    };
    let ing = Ingestion::start(db.db().clone(), catalog, org::fixed(org_now), options);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    let authenticate = move |mut req: tonic::Request<()>| {
        req.extensions_mut().insert(principal.clone());
        Ok(req)
    };
    let svc = ing.submission_service();
    tokio::spawn(async move {
        let _ = Server::builder()
            .layer(tonic::service::InterceptorLayer::new(authenticate))
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    (ing, addr)
}

fn client(
    addr: SocketAddr,
) -> pb::metric_submission_service_client::MetricSubmissionServiceClient<tonic::transport::Channel>
{
    pb::metric_submission_service_client::MetricSubmissionServiceClient::new(
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .connect_lazy(),
    )
}

fn message(n: usize) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        values: (0..10)
            .map(|i| {
                number_input(
                    "uscc.codes_total",
                    "330802",
                    "2026",
                    "samr",
                    &(n * 10 + i).to_string(),
                )
            })
            .collect(),
        ..Default::default()
    }
}

async fn stored(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM submissions")
        .fetch_one(&db.db().pool)
        .await
        .unwrap_or_else(|e| panic!("count: {e}"))
}

async fn a_revoked_key_commits_nothing_more_and_its_watch_ends(backend: Backend) {
    let db = testing::open(backend).await;
    let name = db.name();
    let switch = Arc::new(Switch::default());
    let (ing, addr) = serve(&db, Arc::clone(&switch), keyed_principal()).await;
    let mut c = client(addr);

    // Control: with the key standing, a batch commits.
    let ok = c
        .submit_batch(tokio_stream::iter(vec![message(0), message(1)]))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    assert_eq!(ok.accepted_count, 20, "{name}");

    // A watch and a batch are open when the key is revoked.
    let mut watch = c
        .watch_changes(pb::WatchChangesRequest::default())
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    let (tx, rx) = mpsc::channel(4);
    let mut batch_client = c.clone();
    let batch = tokio::spawn(async move {
        batch_client
            .submit_batch(ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner())
    });
    tx.send(message(2)).await.unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    switch.revoked.store(true, Ordering::SeqCst);
    let revoked_at = Instant::now();
    // The rest arrives after the revocation (the stream may already be over).
    let _ = tx.send(message(3)).await;
    drop(tx);
    let e = batch
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .err()
        .unwrap_or_else(|| panic!("{name}: a revoked key's batch committed"));
    assert_eq!(e.code(), Code::Unauthenticated, "{name}: {e:?}");
    assert_eq!(
        e.get_error_details()
            .error_info()
            .map(|i| i.reason.clone())
            .as_deref(),
        Some("CREDENTIAL_REVOKED"),
        "{name}"
    );
    assert_eq!(
        stored(&db).await,
        20,
        "{name}: values after the revocation were stored"
    );

    // The watch ends soon, with UNAUTHENTICATED.
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
    .unwrap_or_else(|_| panic!("{name}: the revoked key's watch kept going"));
    let took = revoked_at.elapsed();
    let end = end.unwrap_or_else(|| panic!("{name}: the watch ended without a status"));
    assert_eq!(end.code(), Code::Unauthenticated, "{name}: {end:?}");
    assert!(took < Duration::from_secs(1), "{name}: {took:?}");
    eprintln!("{name}: watch ended {took:?} after the revocation");

    // The writer checks too, inside its transaction: a write queued by a caller whose key was
    // revoked after its checks is refused, not committed.
    let values = ing
        .check(
            &keyed_principal(),
            &[number_input(
                "uscc.codes_total",
                "330802",
                "2026",
                "samr",
                "5",
            )],
            true,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let w = ing
        .write_values(&keyed_principal(), values, "late", "value")
        .await
        .map_err(tonic::Status::from);
    assert_eq!(
        w.as_ref().err().map(tonic::Status::code),
        Some(Code::Unauthenticated),
        "{name}: {w:?}"
    );
    assert_eq!(stored(&db).await, 20, "{name}");
}

both_databases!(a_revoked_key_commits_nothing_more_and_its_watch_ends);

async fn a_key_revoked_through_the_registry_stops_its_open_calls(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let mut registry = s.server.registry();
    registry
        .create_principal(pb::CreatePrincipalRequest {
            principal: Some(pb::Principal {
                id: "doomed".into(),
                role: pb::Role::Platform as i32,
                ..Default::default()
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let key = registry
        .create_api_key(pb::CreateApiKeyRequest {
            principal: "principals/doomed".into(),
            expire_time: None,
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    let prefix = key.api_key.map(|k| k.prefix).unwrap_or_default();
    let channel = s.server.with_key(&key.secret);
    let mut c =
        pb::metric_submission_service_client::MetricSubmissionServiceClient::new(channel.clone());
    let mut watch = c
        .watch_changes(pb::WatchChangesRequest::default())
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    let mut scoring = pb::scoring_service_client::ScoringServiceClient::new(channel);
    let mut card = scoring
        .watch_scorecard(pb::WatchScorecardRequest {
            region_code: "330800".into(),
            period: "2026".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    let (tx, rx) = mpsc::channel(4);
    let batch =
        tokio::spawn(async move { c.submit_batch(ReceiverStream::new(rx)).await.map(drop) });
    tx.send(message(0)).await.unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    registry
        .revoke_api_key(pb::RevokeApiKeyRequest { name: prefix })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let _ = tx.send(message(1)).await;
    drop(tx);
    let e = batch
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .err()
        .unwrap_or_else(|| panic!("{name}: a revoked key's batch committed"));
    assert_eq!(e.code(), Code::Unauthenticated, "{name}: {e:?}");
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM submissions")
        .fetch_one(&s.db.pool)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(stored, 0, "{name}");
    for (what, end) in [
        (
            "WatchChanges",
            tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match watch.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => return None,
                        Err(e) => return Some(e.code()),
                    }
                }
            })
            .await,
        ),
        (
            "WatchScorecard",
            tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match card.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => return None,
                        Err(e) => return Some(e.code()),
                    }
                }
            })
            .await,
        ),
    ] {
        assert_eq!(end, Ok(Some(Code::Unauthenticated)), "{name}: {what}");
    }
}

both_databases!(a_key_revoked_through_the_registry_stops_its_open_calls);
