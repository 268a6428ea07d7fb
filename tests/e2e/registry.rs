//! DepartmentRegistryService and API-key authentication through a real server, on SQLite and
//! (when `DATABASE_URL` names one) PostgreSQL.

use std::time::Duration;

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::department_registry_service_client::DepartmentRegistryServiceClient as Registry;
use citycredit::proto::v1::indicator_service_client::IndicatorServiceClient;
use citycredit_tests::{
    Backend, TestServer, both_databases, fresh_schema, postgres_only, use_backend,
};
use tonic::Code;
use tonic_types::StatusExt;

async fn start(backend: Backend, schema: &str, dir: &std::path::Path) -> TestServer {
    let schema = schema.to_owned();
    TestServer::start_in(dir, move |c| use_backend(c, backend, &schema)).await
}

fn ok<T>(r: Result<tonic::Response<T>, tonic::Status>) -> T {
    r.unwrap_or_else(|e| panic!("{e:?}")).into_inner()
}

async fn seeding_is_idempotent_and_changes_survive_restarts(backend: Backend) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let schema = fresh_schema();
    let server = start(backend, &schema, dir.path()).await;
    let mut reg = server.registry();
    let depts = ok(reg
        .list_departments(pb::ListDepartmentsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await);
    assert_eq!(depts.departments.len(), 50, "{backend:?}");
    let samr = depts
        .departments
        .iter()
        .find(|d| d.code == "samr")
        .unwrap_or_else(|| panic!("samr"));
    assert_eq!(samr.display_name, "市市场监管局");
    let court = depts
        .departments
        .iter()
        .find(|d| d.code == "court")
        .unwrap_or_else(|| panic!("court"));
    assert_eq!(court.aliases, ["市法院", "市中院"]);
    let groups = ok(reg.list_groups(pb::ListGroupsRequest {}).await).groups;
    assert_eq!(groups.len(), 4);
    let regions = ok(reg.list_regions(pb::ListRegionsRequest::default()).await).regions;
    assert_eq!(regions.len(), 7);
    assert_eq!(
        regions.iter().find(|r| r.code == "330881").map(|r| (
            r.display_name.as_str(),
            r.parent.as_str(),
            r.level
        )),
        Some(("江山市", "regions/330800", 1))
    );

    // Changes through the API.
    ok(reg
        .create_department(pb::CreateDepartmentRequest {
            department: Some(pb::Department {
                code: "stats".into(),
                display_name: "市统计局".into(),
                ..Default::default()
            }),
        })
        .await);
    ok(reg
        .create_region(pb::CreateRegionRequest {
            region: Some(pb::Region {
                code: "330802001".into(),
                display_name: "信安街道".into(),
                parent: "regions/330802".into(),
                ..Default::default()
            }),
        })
        .await);
    ok(reg
        .update_department(pb::UpdateDepartmentRequest {
            name: "departments/big-data".into(),
            display_name: "市数据局".into(),
        })
        .await);
    server.stop().await.unwrap_or_else(|e| panic!("{e}"));

    // Restart on the same store: nothing duplicated, the changes are there.
    let server = start(backend, &schema, dir.path()).await;
    let mut reg = server.registry();
    let depts = ok(reg
        .list_departments(pb::ListDepartmentsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await)
    .departments;
    assert_eq!(depts.len(), 51, "{backend:?}");
    assert_eq!(
        depts
            .iter()
            .find(|d| d.code == "big-data")
            .map(|d| d.display_name.as_str()),
        Some("市数据局")
    );
    let township = ok(reg
        .get_region(pb::GetRegionRequest {
            name: "regions/330802001".into(),
        })
        .await)
    .region
    .unwrap_or_default();
    assert_eq!(
        (township.level, township.parent.as_str()),
        (2, "regions/330802")
    );
    assert_eq!(
        ok(reg.list_groups(pb::ListGroupsRequest {}).await)
            .groups
            .len(),
        4
    );
    let changes = ok(reg
        .list_registry_changes(pb::ListRegistryChangesRequest::default())
        .await)
    .changes;
    let actions: Vec<(&str, &str)> = changes
        .iter()
        .map(|c| (c.action.as_str(), c.principal.as_str()))
        .take(3)
        .collect();
    assert_eq!(
        actions,
        [
            ("UpdateDepartment", "principals/admin"),
            ("CreateRegion", "principals/admin"),
            ("CreateDepartment", "principals/admin")
        ]
    );
    assert!(changes[0].change_time.is_some());
    server.stop().await.unwrap_or_else(|e| panic!("{e}"));
}

both_databases!(seeding_is_idempotent_and_changes_survive_restarts);

#[tokio::test]
async fn responsibility_views_expand_groups_lead_first() {
    let server = TestServer::start().await;
    let mut reg = server.registry();
    let duties = ok(reg
        .get_department_duties(pb::GetDepartmentDutiesRequest {
            department: "departments/samr".into(),
        })
        .await);
    let subjects: Vec<&str> = duties.duties.iter().map(|d| d.subject.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "indicators/B01",
            "indicators/B02",
            "indicators/B03",
            "indicators/B06",
            "indicators/B07",
            "indicators/B08",
            "indicators/B09",
            "indicators/G11",
            "indicators/G12",
            "indicators/G15",
            "indicators/G18",
            "indicators/G19",
            "indicators/G20",
            "items/E02",
            "items/E04",
            "items/E05",
            "items/E08",
            "items/E09",
            "items/E10",
            "items/E12",
        ]
    );
    let b01 = &duties.duties[0];
    assert_eq!(
        (b01.role(), b01.via_group.as_str()),
        (pb::ResponsibilityRole::Lead, "")
    );
    let b03 = &duties.duties[2];
    assert_eq!(
        (b03.role(), b03.via_group.as_str()),
        (pb::ResponsibilityRole::Co, "groups/city-departments")
    );
    assert!(
        duties
            .expected_metrics
            .contains(&"uscc.stock_codes_converted".to_owned())
    );
    assert!(
        !duties
            .expected_metrics
            .contains(&"campaign.integrity_tour".to_owned())
    );

    let g13 = ok(reg
        .list_responsible_departments(pb::ListResponsibleDepartmentsRequest {
            subject: "indicators/G13".into(),
        })
        .await);
    assert_eq!(
        &g13.department_codes[..4],
        ["big-data", "business-env", "court", "procuratorate"]
    );
    assert_eq!(g13.departments[0].role(), pb::ResponsibilityRole::Lead);
    assert!(
        g13.department_codes.contains(&"utility-telecom".to_owned())
            && g13.department_codes.contains(&"gov-330881".to_owned())
    );

    // Changing a responsibility changes the views (and the catalog's listing).
    ok(reg
        .set_responsibilities(pb::SetResponsibilitiesRequest {
            subject: "indicators/B10".into(),
            parties: vec![
                "departments/big-data".into(),
                "groups/county-governments".into(),
            ],
        })
        .await);
    let b10 = ok(reg
        .list_responsible_departments(pb::ListResponsibleDepartmentsRequest {
            subject: "B10".into(),
        })
        .await);
    assert_eq!(b10.department_codes.len(), 7);
    assert_eq!(b10.department_codes[0], "big-data");
    let mut catalog = IndicatorServiceClient::new(server.admin());
    let ind = ok(catalog
        .get_indicator(pb::GetIndicatorRequest { name: "B10".into() })
        .await)
    .indicator
    .unwrap_or_default();
    assert_eq!(ind.responsible[0].party, "departments/big-data");

    let err = reg
        .set_responsibilities(pb::SetResponsibilitiesRequest {
            subject: "indicators/B10".into(),
            parties: vec!["departments/nobody".into()],
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("unknown party"));
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.get_error_details()
            .bad_request()
            .map(|b| b.field_violations[0].field.clone()),
        Some("parties[0]".into())
    );
}

#[tokio::test]
async fn domains_register_only_in_open_sets() {
    let server = TestServer::start().await;
    let mut reg = server.registry();
    ok(reg
        .register_domain(pb::RegisterDomainRequest {
            domain: Some(pb::RegisteredDomain {
                domain_set: "joint_reward_punishment".into(),
                code: "jrp-00".into(),
                display_name: "失信被执行人".into(),
                builtin: false,
            }),
        })
        .await);
    let again = reg
        .register_domain(pb::RegisterDomainRequest {
            domain: Some(pb::RegisteredDomain {
                domain_set: "joint_reward_punishment".into(),
                code: "jrp-00".into(),
                display_name: "x".into(),
                builtin: false,
            }),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("duplicate"));
    assert_eq!(again.code(), Code::AlreadyExists);
    let closed = reg
        .register_domain(pb::RegisterDomainRequest {
            domain: Some(pb::RegisteredDomain {
                domain_set: "integrity_domains".into(),
                code: "mining".into(),
                display_name: "采矿".into(),
                builtin: false,
            }),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("closed set"));
    assert_eq!(closed.code(), Code::FailedPrecondition);
    let listed = ok(reg
        .list_domains(pb::ListDomainsRequest {
            domain_set: "joint_reward_punishment".into(),
        })
        .await)
    .domains;
    assert_eq!(
        listed
            .iter()
            .map(|d| (d.code.as_str(), d.builtin))
            .collect::<Vec<_>>(),
        [("jrp-00", false)]
    );
    let xinyi = ok(reg
        .list_domains(pb::ListDomainsRequest {
            domain_set: "xinyi_plus".into(),
        })
        .await)
    .domains;
    assert_eq!(xinyi.len(), 8);
}

async fn credentials_are_required_checked_and_revocable(backend: Backend) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let schema = fresh_schema();
    let server = start(backend, &schema, dir.path()).await;

    // No credential, a malformed one, an unknown one.
    let mut anon = Registry::new(server.channel());
    let err = anon
        .list_departments(pb::ListDepartmentsRequest::default())
        .await
        .err()
        .unwrap_or_else(|| panic!("anonymous"));
    assert_eq!(err.code(), Code::Unauthenticated, "{backend:?}");
    assert_eq!(
        err.get_error_details()
            .error_info()
            .map(|i| i.domain.clone()),
        Some("citycredit".into())
    );
    let mut stranger =
        Registry::new(server.with_key(
            "cc_00000000_0000000000000000000000000000000000000000000000000000000000000000",
        ));
    assert_eq!(
        stranger
            .list_departments(pb::ListDepartmentsRequest::default())
            .await
            .err()
            .map(|e| e.code()),
        Some(Code::Unauthenticated)
    );

    // A key works until it is revoked, and is refused right after.
    let key = server
        .create_principal("ops-1", pb::Role::Operator, None)
        .await;
    let mut ops = Registry::new(server.with_key(&key));
    ok(ops
        .list_departments(pb::ListDepartmentsRequest::default())
        .await);
    let mut admin = server.registry();
    let keys = ok(admin
        .list_api_keys(pb::ListApiKeysRequest {
            principal: "principals/ops-1".into(),
        })
        .await)
    .api_keys;
    assert_eq!(keys.len(), 1);
    assert!(
        key.starts_with(&keys[0].prefix),
        "the visible prefix names the key"
    );
    let revoked = ok(admin
        .revoke_api_key(pb::RevokeApiKeyRequest {
            name: keys[0].name.clone(),
        })
        .await)
    .api_key
    .unwrap_or_default();
    assert!(revoked.revoke_time.is_some());
    let err = ops
        .list_departments(pb::ListDepartmentsRequest::default())
        .await
        .err()
        .unwrap_or_else(|| panic!("revoked key accepted"));
    assert_eq!(err.code(), Code::Unauthenticated, "{backend:?}");

    // An expired key is refused.
    ok(admin
        .create_principal(pb::CreatePrincipalRequest {
            principal: Some(pb::Principal {
                id: "short".into(),
                role: pb::Role::Operator as i32,
                ..Default::default()
            }),
        })
        .await);
    let soon = std::time::SystemTime::now() + Duration::from_millis(300);
    let soon = soon
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secret = ok(admin
        .create_api_key(pb::CreateApiKeyRequest {
            principal: "principals/short".into(),
            expire_time: Some(prost_types::Timestamp {
                seconds: i64::try_from(soon.as_secs()).unwrap_or(0),
                nanos: i32::try_from(soon.subsec_nanos()).unwrap_or(0),
            }),
        })
        .await)
    .secret;
    let mut short = Registry::new(server.with_key(&secret));
    ok(short.list_groups(pb::ListGroupsRequest {}).await);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        short
            .list_groups(pb::ListGroupsRequest {})
            .await
            .err()
            .map(|e| e.code()),
        Some(Code::Unauthenticated)
    );
    server.stop().await.unwrap_or_else(|e| panic!("{e}"));
}

both_databases!(credentials_are_required_checked_and_revocable);

/// Two servers on one PostgreSQL schema stand for two processes (or replicas).
async fn revocation_reaches_another_process_within_seconds() {
    let schema = fresh_schema();
    let (d1, d2) = (
        tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")),
        tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")),
    );
    let one = start(Backend::Postgres, &schema, d1.path()).await;
    let key = one
        .create_principal("ops-2", pb::Role::Operator, None)
        .await;
    let two = start(Backend::Postgres, &schema, d2.path()).await;
    let mut on_two = Registry::new(two.with_key(&key));
    ok(on_two.list_groups(pb::ListGroupsRequest {}).await);
    let mut admin = one.registry();
    let keys = ok(admin
        .list_api_keys(pb::ListApiKeysRequest {
            principal: "principals/ops-2".into(),
        })
        .await)
    .api_keys;
    ok(admin
        .revoke_api_key(pb::RevokeApiKeyRequest {
            name: keys[0].prefix.clone(),
        })
        .await);
    let started = std::time::Instant::now();
    loop {
        match on_two.list_groups(pb::ListGroupsRequest {}).await {
            Err(e) if e.code() == Code::Unauthenticated => break,
            _ if started.elapsed() > Duration::from_secs(3) => {
                panic!("revocation not honoured by the other process within 3 s")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

postgres_only!(revocation_reaches_another_process_within_seconds);

#[tokio::test]
async fn only_administrators_write_and_every_role_reads() {
    let server = TestServer::start().await;
    let roles = [
        ("op", pb::Role::Operator, None),
        ("plat", pb::Role::Platform, None),
        ("assess", pb::Role::Assessor, None),
        ("samr-sys", pb::Role::Department, Some("samr")),
        ("kecheng-sys", pb::Role::Department, Some("gov-330802")),
    ];
    for (id, role, dept) in roles {
        let mut reg = Registry::new(server.channel_as(id, role, dept).await);
        ok(reg
            .list_departments(pb::ListDepartmentsRequest::default())
            .await);
        ok(reg
            .get_department_duties(pb::GetDepartmentDutiesRequest {
                department: "samr".into(),
            })
            .await);
        let err = reg
            .create_department(pb::CreateDepartmentRequest {
                department: Some(pb::Department {
                    code: format!("{id}-x"),
                    display_name: "x".into(),
                    ..Default::default()
                }),
            })
            .await
            .err()
            .unwrap_or_else(|| panic!("{id} must not write the registry"));
        assert_eq!(err.code(), Code::PermissionDenied, "{id}");
        assert!(
            err.message().contains(&format!("principal `{id}`")),
            "{}",
            err.message()
        );
        assert!(
            err.message().contains("may not administer"),
            "{}",
            err.message()
        );
        let err = reg
            .list_api_keys(pb::ListApiKeysRequest::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("{id} lists keys"));
        assert_eq!(err.code(), Code::PermissionDenied);
    }
}

#[tokio::test]
async fn bad_registry_input_names_each_field() {
    let server = TestServer::start().await;
    let mut reg = server.registry();
    let err = reg
        .create_principal(pb::CreatePrincipalRequest {
            principal: Some(pb::Principal {
                id: "Bad Id".into(),
                role: pb::Role::Department as i32,
                department_code: "nowhere".into(),
                ..Default::default()
            }),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("must be refused"));
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = err
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["principal.id", "principal.department_code"]);
    let err = reg
        .create_region(pb::CreateRegionRequest {
            region: Some(pb::Region {
                code: "33x".into(),
                display_name: String::new(),
                parent: "regions/999999".into(),
                ..Default::default()
            }),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("must be refused"));
    let fields: Vec<String> = err
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    assert_eq!(
        fields,
        ["region.code", "region.display_name", "region.parent"]
    );
    let err = reg
        .create_department(pb::CreateDepartmentRequest {
            department: Some(pb::Department {
                code: "samr".into(),
                display_name: "重复".into(),
                ..Default::default()
            }),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("dup"));
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = reg
        .create_api_key(pb::CreateApiKeyRequest {
            principal: "principals/ghost".into(),
            expire_time: None,
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("ghost"));
    assert_eq!(err.code(), Code::NotFound);
}
