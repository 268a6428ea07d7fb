//! Who may do what with credentials and the registry's records, through a real server on each
//! database: the one spelling of `Bearer`, revoking a key only under its own principal, and the
//! listings (principals, change log) that show each non-administrator only itself.

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::department_registry_service_client::DepartmentRegistryServiceClient as Registry;
use citycredit_tests::{Backend, TestServer, both_databases, fresh_schema, use_backend};
use tonic::Code;
use tonic_types::StatusExt;

async fn server(backend: Backend) -> (TestServer, citycredit_tests::TestSchema) {
    let schema = fresh_schema();
    let s = TestServer::start_with(|c| use_backend(c, backend, &schema)).await;
    (s, schema)
}

/// The visible prefix of a generated key (`cc_xxxxxxxx`).
fn prefix(key: &str) -> &str {
    &key[..11]
}

async fn list_regions_with(server: &TestServer, authorization: &str) -> Result<(), tonic::Status> {
    let mut reg = Registry::new(server.channel());
    let mut req = tonic::Request::new(pb::ListRegionsRequest::default());
    let value = tonic::metadata::MetadataValue::try_from(authorization)
        .map_err(|e| tonic::Status::internal(format!("not header text: {e}")))?;
    req.metadata_mut().insert("authorization", value);
    reg.list_regions(req).await.map(|_| ())
}

async fn bearer_has_one_canonical_form(backend: Backend) {
    let (server, _schema) = server(backend).await;
    let key = server
        .create_principal("ops-bearer", pb::Role::Operator, None)
        .await;
    assert!(
        list_regions_with(&server, &format!("Bearer {key}"))
            .await
            .is_ok(),
        "{backend:?}: the canonical form"
    );
    // Reaches the platform unchanged: refused by it.
    for (what, value) in [
        ("two spaces", format!("Bearer  {key}")),
        ("a tab after the scheme", format!("Bearer\t{key}")),
        ("a space and a tab", format!("Bearer \t{key}")),
        ("lower-case scheme", format!("bearer {key}")),
        ("upper-case scheme", format!("BEARER {key}")),
        ("text after the key", format!("Bearer {key} x")),
    ] {
        let err = list_regions_with(&server, &value)
            .await
            .err()
            .unwrap_or_else(|| panic!("{backend:?}: {what} was accepted"));
        assert_eq!(
            err.code(),
            Code::Unauthenticated,
            "{backend:?}: {what}: {err:?}"
        );
    }
    // Surrounding whitespace may already be refused by HTTP/2 (it is malformed there); either
    // way the call must not get through.
    for (what, value) in [
        ("a trailing space", format!("Bearer {key} ")),
        ("a trailing tab", format!("Bearer {key}\t")),
        ("a leading space", format!(" Bearer {key}")),
    ] {
        assert!(
            list_regions_with(&server, &value).await.is_err(),
            "{backend:?}: {what} was accepted"
        );
    }
}

both_databases!(
    bearer_has_one_canonical_form,
    flavor = "multi_thread",
    worker_threads = 2
);

async fn a_key_is_revoked_only_under_its_own_principal(backend: Backend) {
    let (server, _schema) = server(backend).await;
    let a = server
        .create_principal("ops-a", pb::Role::Operator, None)
        .await;
    let b = server
        .create_principal("ops-b", pb::Role::Operator, None)
        .await;
    let mut admin = server.registry();

    // B's key named under A: as unknown as a key that does not exist, word for word.
    let crossed = admin
        .revoke_api_key(pb::RevokeApiKeyRequest {
            name: format!("principals/ops-a/apiKeys/{}", prefix(&b)),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("{backend:?}: B's key was revoked under A"));
    let missing = admin
        .revoke_api_key(pb::RevokeApiKeyRequest {
            name: "principals/ops-a/apiKeys/cc_ffffffff".into(),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("{backend:?}: an unknown key was revoked"));
    assert_eq!(crossed.code(), Code::NotFound, "{crossed:?}");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert_eq!(
        crossed.message().replace(prefix(&b), "<prefix>"),
        missing.message().replace("cc_ffffffff", "<prefix>"),
        "{backend:?}: the answers differ, an oracle for which prefixes exist"
    );
    let info = |s: &tonic::Status| {
        s.get_error_details().error_info().map(|i| {
            (
                i.reason.clone(),
                i.metadata.keys().cloned().collect::<Vec<_>>(),
            )
        })
    };
    assert_eq!(info(&crossed), info(&missing));
    assert!(
        list_regions_with(&server, &format!("Bearer {b}"))
            .await
            .is_ok(),
        "{backend:?}: B's key stopped working"
    );

    // Under its own principal, or by its bare prefix, it is revoked.
    let revoked = admin
        .revoke_api_key(pb::RevokeApiKeyRequest {
            name: format!("principals/ops-b/apiKeys/{}", prefix(&b)),
        })
        .await
        .unwrap_or_else(|e| panic!("{backend:?}: {e}"))
        .into_inner();
    assert!(revoked.api_key.is_some_and(|k| k.revoke_time.is_some()));
    let err = list_regions_with(&server, &format!("Bearer {b}"))
        .await
        .err();
    assert_eq!(err.map(|e| e.code()), Some(Code::Unauthenticated));
    admin
        .revoke_api_key(pb::RevokeApiKeyRequest {
            name: prefix(&a).to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("{backend:?}: bare prefix: {e}"));

    for bad in [
        "principals/ops-a/keys/cc_00000000",
        "principals//apiKeys/x",
        "a/b",
        "",
    ] {
        let err = admin
            .revoke_api_key(pb::RevokeApiKeyRequest { name: bad.into() })
            .await
            .err()
            .unwrap_or_else(|| panic!("{backend:?}: {bad:?} accepted"));
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
    }
}

both_databases!(
    a_key_is_revoked_only_under_its_own_principal,
    flavor = "multi_thread",
    worker_threads = 2
);

async fn non_administrators_see_only_themselves(backend: Backend) {
    let (server, _schema) = server(backend).await;
    let ops = server
        .create_principal("ops-self", pb::Role::Operator, None)
        .await;
    let dept = server
        .create_principal("samr-self", pb::Role::Department, Some("samr"))
        .await;
    let _other = server
        .create_principal("ops-other", pb::Role::Operator, None)
        .await;

    let mut admin = server.registry();
    let everyone = admin
        .list_principals(pb::ListPrincipalsRequest::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let ids: Vec<String> = everyone.principals.iter().map(|p| p.id.clone()).collect();
    for id in ["admin", "ops-self", "samr-self", "ops-other"] {
        assert!(
            ids.contains(&id.to_owned()),
            "{backend:?}: admin misses {id}: {ids:?}"
        );
    }
    let all_changes = admin
        .list_registry_changes(pb::ListRegistryChangesRequest::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert!(
        all_changes
            .changes
            .iter()
            .any(|c| c.resource == "principals/ops-other"),
        "{backend:?}: the administrator sees every change"
    );

    for (id, key) in [("ops-self", &ops), ("samr-self", &dept)] {
        let mut me = Registry::new(server.with_key(key));
        let listed = me
            .list_principals(pb::ListPrincipalsRequest::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner();
        let ids: Vec<&str> = listed.principals.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, [id], "{backend:?}");
        assert!(listed.next_page_token.is_empty());

        let changes = me
            .list_registry_changes(pb::ListRegistryChangesRequest::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner();
        let own = format!("principals/{id}");
        let resources: Vec<&str> = changes
            .changes
            .iter()
            .map(|c| c.resource.as_str())
            .collect();
        assert!(
            resources.contains(&own.as_str())
                && resources
                    .iter()
                    .any(|r| r.starts_with(&format!("{own}/apiKeys/"))),
            "{backend:?}: {id} should see its own creation and key: {resources:?}"
        );
        assert!(
            resources
                .iter()
                .all(|r| *r == own || r.starts_with(&format!("{own}/"))),
            "{backend:?}: {id} sees others' changes: {resources:?}"
        );
    }
}

both_databases!(
    non_administrators_see_only_themselves,
    flavor = "multi_thread",
    worker_threads = 2
);
