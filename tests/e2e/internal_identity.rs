//! The internal identity through real processes (`serve --service ...`, the real binary, keys
//! and certificates made by `citycredit keys generate`), on SQLite and PostgreSQL:
//!
//! - every non-open RPC of every standalone service answers UNAUTHENTICATED without an
//!   identity, even over a valid mTLS connection (one call per RPC of the RPC table);
//! - an identity minted with scoring's own key is refused by the registry (and by ingestion for
//!   anything but scoring's reads): the scoring process cannot act as anybody else;
//! - a captured identity works once: not again on another replica, not with another body, not
//!   for another audience; nor for a principal that does not exist or whose key was revoked;
//! - the shipped split configuration runs with mTLS, and a plaintext connection, one without a
//!   client certificate and one with a certificate of another CA are all refused.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

use citycredit::auth::identity::{
    Audience, BodyBinding, HEADER, IdentitySigner, Issuer, SCORING_PRINCIPAL,
};
use citycredit::proto::v1 as pb;
use citycredit::proto::v1::department_registry_service_client::DepartmentRegistryServiceClient as Registry;
use citycredit::proto::v1::indicator_service_client::IndicatorServiceClient as Indicators;
use citycredit::proto::v1::scoring_service_client::ScoringServiceClient as Scoring;
use citycredit_core::auth::{Principal, Role};
use citycredit_gateway::rpc_table::RpcTable;
use citycredit_tests::raw_codec::Raw;
use citycredit_tests::topology::{Part, Store, Topology, TopologyOptions};
use citycredit_tests::{Backend, both_databases};

// ---------------------------------------------------------------------------------------------
// Raw calls: any RPC, any bytes, any identity header.

/// Calls `path` with one message of `body` bytes and `identity` (if any); Ok with the first
/// response message (empty for a stream that sends none within a second), or the status.
async fn call(
    channel: Channel,
    path: &str,
    body: Vec<u8>,
    identity: Option<&str>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(tokio_stream::iter(vec![body]));
    req.set_timeout(Duration::from_secs(20));
    if let Some(h) = identity {
        req.metadata_mut().insert(
            HEADER,
            h.parse().unwrap_or_else(|_| panic!("identity header")),
        );
    }
    let path = http::uri::PathAndQuery::try_from(path).unwrap_or_else(|e| panic!("{e}"));
    let mut stream = grpc.streaming(req, path, Raw).await?.into_inner();
    match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
        Ok(Ok(m)) => Ok(m.unwrap_or_default()),
        Ok(Err(status)) => Err(status),
        Err(_) => Ok(Vec::new()),
    }
}

/// The bytes of `message` (the raw client frames them as tonic does, which is what the
/// identity's body digest covers).
fn encoded<M: Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

fn key(t: &Topology, file: &str) -> String {
    std::fs::read_to_string(t.keys_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn gateway_signer(t: &Topology) -> IdentitySigner {
    IdentitySigner::from_text(Issuer::Gateway, &key(t, "gateway/identity.key"))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The bootstrap administrator as the gateway signs it (a key in the bootstrap format is
/// named by the bootstrap prefix).
fn admin() -> Principal {
    Principal {
        id: "admin".into(),
        role: Role::Admin,
        department: None,
        credential: Some("cc_bootstrap".into()),
    }
}

fn sign<M: Message>(
    signer: &IdentitySigner,
    who: &Principal,
    audience: Audience,
    path: &str,
    msg: &M,
) -> String {
    signer
        .sign(
            who,
            audience,
            path,
            BodyBinding::of_message(msg),
            citycredit_store::now_micros(),
        )
        .unwrap_or_else(|| panic!("sign"))
}

async fn topology(backend: Backend, options: TopologyOptions) -> Topology {
    Topology::start(TopologyOptions {
        store: Store::from(backend),
        ..options
    })
    .await
}

fn assert_refused_at_front(r: Result<Vec<u8>, tonic::Status>, what: &str) {
    let err = r.err().unwrap_or_else(|| panic!("{what}: answered"));
    assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
}

// ---------------------------------------------------------------------------------------------

/// One call per RPC of the RPC table, without an identity, against each standalone service
/// (over a valid mTLS connection: a certificate is no identity).
async fn every_rpc_without_identity_is_refused_by_every_service(backend: Backend) {
    let t = topology(
        backend,
        TopologyOptions {
            mtls: true,
            ..TopologyOptions::default()
        },
    )
    .await;
    let table = RpcTable::citycredit();
    let mut swept = 0;
    for part in Part::SERVICES {
        let channel = t.direct(t.addr(part));
        // Health stays open.
        let health = call(
            channel.clone(),
            "/grpc.health.v1.Health/Check",
            Vec::new(),
            None,
        )
        .await;
        assert!(health.is_ok(), "{part:?} health: {health:?}");
        for path in table.paths() {
            let Some(rpc) = table.get(&path) else {
                continue;
            };
            if !part.grpc_services().contains(&rpc.service.as_str()) {
                continue;
            }
            let err = call(channel.clone(), &path, Vec::new(), None)
                .await
                .err()
                .unwrap_or_else(|| panic!("{part:?} {path}: answered without an identity"));
            assert_eq!(
                err.code(),
                Code::Unauthenticated,
                "{part:?} {path}: {err:?}"
            );
            assert!(
                err.message().contains("no internal identity"),
                "{part:?} {path}: refused by the handler, not the front: {}",
                err.message()
            );
            swept += 1;
        }
    }
    assert_eq!(
        swept,
        table.paths().len(),
        "every RPC belongs to one service"
    );
    eprintln!("{backend:?}: {swept} RPCs refused without an identity");
}

both_databases!(
    every_rpc_without_identity_is_refused_by_every_service,
    flavor = "multi_thread",
    worker_threads = 2
);

/// Scoring's own key: good for scoring's reads of ingestion, worthless anywhere else.
async fn a_header_minted_with_scorings_key_is_refused(backend: Backend) {
    let t = topology(backend, TopologyOptions::default()).await;
    let scoring = IdentitySigner::from_text(Issuer::Scoring, &key(&t, "scoring/identity.key"))
        .unwrap_or_else(|e| panic!("{e}"));
    let registry = t.direct(t.addr(Part::Registry));
    let ingestion = t.direct(t.addr(Part::Ingestion));

    // What a compromised scoring process would try: make itself an administrator's key.
    let path = "/citycredit.v1.DepartmentRegistryService/CreateApiKey";
    let msg = pb::CreateApiKeyRequest {
        principal: "principals/admin".into(),
        expire_time: None,
    };
    for (audience, who) in [
        (Audience::Registry, admin()),
        (
            Audience::Registry,
            citycredit_scoring::remote_source::service_principal(),
        ),
    ] {
        let h = sign(&scoring, &who, audience, path, &msg);
        assert_refused_at_front(
            call(registry.clone(), path, encoded(&msg), Some(&h)).await,
            "registry with scoring's key",
        );
        // Passed off as the gateway's.
        let forged = h.replacen("v2;scoring;", "v2;gateway;", 1);
        assert_refused_at_front(
            call(registry.clone(), path, encoded(&msg), Some(&forged)).await,
            "registry with scoring's key passed off as the gateway's",
        );
    }
    // Nor may it write to ingestion, as itself or as anyone.
    let path = "/citycredit.v1.MetricSubmissionService/SubmitValue";
    let submit = pb::SubmitValueRequest::default();
    for who in [
        admin(),
        citycredit_scoring::remote_source::service_principal(),
    ] {
        let h = sign(&scoring, &who, Audience::Ingestion, path, &submit);
        assert_refused_at_front(
            call(ingestion.clone(), path, encoded(&submit), Some(&h)).await,
            "ingestion write with scoring's key",
        );
    }
    // Its own reads work (the control: the key itself is fine).
    let path = "/citycredit.v1.MetricSubmissionService/QueryAggregates";
    let query = pb::QueryAggregatesRequest {
        region_code: "330800".into(),
        period: "2025".into(),
        as_of: None,
        approved_only: false,
    };
    let me = Principal {
        id: SCORING_PRINCIPAL.into(),
        role: Role::Operator,
        department: None,
        credential: None,
    };
    let h = sign(&scoring, &me, Audience::Ingestion, path, &query);
    let answer = call(ingestion.clone(), path, encoded(&query), Some(&h)).await;
    assert!(answer.is_ok(), "scoring's own read: {answer:?}");
}

both_databases!(
    a_header_minted_with_scorings_key_is_refused,
    flavor = "multi_thread",
    worker_threads = 2
);

fn value(idempotency: &str, number: &str) -> pb::SubmitValueRequest {
    pb::SubmitValueRequest {
        value: Some(pb::SubmissionInput {
            metric_key: "monitoring.city_rank".into(),
            region_code: "330800".into(),
            period: "2026".into(),
            value: Some(pb::MetricValue {
                value: Some(pb::metric_value::Value::Number(number.into())),
            }),
            ..Default::default()
        }),
        idempotency_key: idempotency.into(),
        ..Default::default()
    }
}

/// A header taken off one call (as the gateway signed it) and presented again.
async fn a_captured_header_works_once_for_its_body_and_audience(backend: Backend) {
    let mut t = topology(backend, TopologyOptions::default()).await;
    let second = t.start_replica(Part::Ingestion).await;
    let gateway = gateway_signer(&t);
    let one = t.direct(t.addr(Part::Ingestion));
    let two = t.direct(second);
    let path = "/citycredit.v1.MetricSubmissionService/SubmitValue";

    let first = value("captured-1", "120");
    let captured = sign(&gateway, &admin(), Audience::Ingestion, path, &first);
    let stored = call(one.clone(), path, encoded(&first), Some(&captured)).await;
    assert!(stored.is_ok(), "the original call: {stored:?}");
    // The same header and body again: on another replica (the store's nonce table) and here.
    assert_refused_at_front(
        call(two.clone(), path, encoded(&first), Some(&captured)).await,
        "replayed on a second replica",
    );
    assert_refused_at_front(
        call(one.clone(), path, encoded(&first), Some(&captured)).await,
        "replayed on the same replica",
    );

    // A fresh header with another body under it.
    let signed_for = value("captured-2", "120");
    let h = sign(&gateway, &admin(), Audience::Ingestion, path, &signed_for);
    let other = value("captured-2", "1");
    let err = call(two.clone(), path, encoded(&other), Some(&h))
        .await
        .err()
        .unwrap_or_else(|| panic!("another body was accepted under a signed header"));
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("another request body"),
        "{}",
        err.message()
    );

    // A header the gateway made for another service.
    let h = sign(&gateway, &admin(), Audience::Registry, path, &signed_for);
    assert_refused_at_front(
        call(two.clone(), path, encoded(&signed_for), Some(&h)).await,
        "an identity for the registry presented to ingestion",
    );

    // Nothing but the original value was stored.
    let db = t.store().await;
    let rows: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM submissions WHERE idempotency_key IN ('captured-1', 'captured-2')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows, 1);
}

both_databases!(
    a_captured_header_works_once_for_its_body_and_audience,
    flavor = "multi_thread",
    worker_threads = 2
);

/// A well-signed identity whose principal does not exist, or whose key was revoked.
async fn identities_of_unknown_principals_and_revoked_keys_are_refused(backend: Backend) {
    let t = topology(backend, TopologyOptions::default()).await;
    let gateway = gateway_signer(&t);
    let scoring = t.direct(t.addr(Part::Scoring));
    let path = "/citycredit.v1.IndicatorService/GetCatalog";
    let msg = pb::GetCatalogRequest {};
    let ghost = Principal {
        id: "ghost".into(),
        role: Role::Admin,
        department: None,
        credential: Some("cc_00000000".into()),
    };
    let h = sign(&gateway, &ghost, Audience::Scoring, path, &msg);
    assert_refused_at_front(
        call(scoring.clone(), path, encoded(&msg), Some(&h)).await,
        "a principal that does not exist",
    );

    // A real operator and key, made through the gateway.
    let mut reg = Registry::new(t.admin());
    reg.create_principal(pb::CreatePrincipalRequest {
        principal: Some(pb::Principal {
            id: "ops-front".into(),
            role: pb::Role::Operator as i32,
            ..Default::default()
        }),
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let made = reg
        .create_api_key(pb::CreateApiKeyRequest {
            principal: "principals/ops-front".into(),
            expire_time: None,
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let prefix = made.api_key.map(|k| k.prefix).unwrap_or_default();
    let ops = Principal {
        id: "ops-front".into(),
        role: Role::Operator,
        department: None,
        credential: Some(prefix.clone()),
    };
    // Fine while the key stands (the scoring process learns the new key on the miss).
    let h = sign(&gateway, &ops, Audience::Scoring, path, &msg);
    let ok = call(scoring.clone(), path, encoded(&msg), Some(&h)).await;
    assert!(ok.is_ok(), "{ok:?}");
    // The same principal claiming to be an administrator.
    let promoted = Principal {
        role: Role::Admin,
        ..ops.clone()
    };
    let h = sign(&gateway, &promoted, Audience::Scoring, path, &msg);
    assert_refused_at_front(
        call(scoring.clone(), path, encoded(&msg), Some(&h)).await,
        "a key's principal with another role",
    );

    reg.revoke_api_key(pb::RevokeApiKeyRequest {
        name: format!("principals/ops-front/apiKeys/{prefix}"),
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // Refused by the registry's own process at once, and by every other process once its
    // snapshot catches up: within `registry_refresh_ms` (500 ms here), the documented bound.
    let registry = t.direct(t.addr(Part::Registry));
    let regions = "/citycredit.v1.DepartmentRegistryService/ListRegions";
    let list = pb::ListRegionsRequest::default();
    let h = sign(&gateway, &ops, Audience::Registry, regions, &list);
    assert_refused_at_front(
        call(registry, regions, encoded(&list), Some(&h)).await,
        "a revoked key at the registry",
    );
    let revoked_at = std::time::Instant::now();
    loop {
        let h = sign(&gateway, &ops, Audience::Scoring, path, &msg);
        match call(scoring.clone(), path, encoded(&msg), Some(&h)).await {
            Err(e) if e.code() == Code::Unauthenticated => break,
            other => assert!(
                revoked_at.elapsed() < Duration::from_secs(3),
                "a revoked key still works at scoring after {:?}: {other:?}",
                revoked_at.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{backend:?}: the revoked key was refused at scoring {:?} after the revocation",
        revoked_at.elapsed()
    );
}

both_databases!(
    identities_of_unknown_principals_and_revoked_keys_are_refused,
    flavor = "multi_thread",
    worker_threads = 2
);

/// Another CA's keys, for the wrong-certificate connection.
fn foreign_keys(dir: &Path) -> std::path::PathBuf {
    citycredit_tests::topology::make_keys(&citycredit_tests::topology::binary(), dir)
}

async fn tls_call(channel: Channel) -> Result<Vec<u8>, tonic::Status> {
    call(channel, "/grpc.health.v1.Health/Check", Vec::new(), None).await
}

fn foreign_channel(addr: SocketAddr, keys: &Path, ca: &Path) -> Channel {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |p: std::path::PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{e}"));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca.join("gateway/ca.crt"))))
        .identity(Identity::from_pem(
            read(keys.join("gateway/client.crt")),
            read(keys.join("gateway/client.key")),
        ));
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)
        .unwrap_or_else(|e| panic!("{e}"))
        .connect_lazy()
}

/// The shipped split configuration (`deploy/config/*.toml`, only paths and addresses
/// rewritten): mTLS on every internal link by default.
async fn the_shipped_split_configuration_runs_with_mtls(backend: Backend) {
    let t = topology(
        backend,
        TopologyOptions {
            shipped_configs: true,
            ..TopologyOptions::default()
        },
    )
    .await;
    // Through the gateway everything works: the registry, and scoring reading ingestion over
    // its own mTLS link with its own key.
    let mut reg = Registry::new(t.admin());
    let regions = reg
        .list_regions(pb::ListRegionsRequest::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!regions.into_inner().regions.is_empty());
    let catalog = Indicators::new(t.admin())
        .get_catalog(pb::GetCatalogRequest {})
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!catalog.into_inner().version.is_empty());
    let card = Scoring::new(t.admin())
        .get_scorecard(pb::GetScorecardRequest {
            region_code: "330800".into(),
            period: "2025".into(),
            ..Default::default()
        })
        .await;
    assert!(card.is_ok(), "{card:?}");

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let foreign = foreign_keys(dir.path());
    let ours = t.keys_dir();
    for part in Part::SERVICES {
        let addr = t.addr(part);
        // The control: the gateway's certificate gets through TLS (and health is open).
        assert!(
            tls_call(t.direct(addr)).await.is_ok(),
            "{part:?} with the gateway's certificate"
        );
        let plaintext = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        for (what, channel) in [
            ("plaintext", plaintext),
            ("no client certificate", t.tls_channel(addr, None)),
            (
                "a client certificate of another CA",
                foreign_channel(addr, &foreign, &ours),
            ),
        ] {
            let err = tls_call(channel)
                .await
                .err()
                .unwrap_or_else(|| panic!("{part:?}: {what} was answered"));
            assert!(
                matches!(
                    err.code(),
                    Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
                ),
                "{part:?}: {what}: {err:?}"
            );
        }
    }
}

both_databases!(
    the_shipped_split_configuration_runs_with_mtls,
    flavor = "multi_thread",
    worker_threads = 2
);
