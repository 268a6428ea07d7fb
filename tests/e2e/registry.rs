//! DepartmentRegistryService and API-key authentication through a real server, on SQLite and
//! (when `DATABASE_URL` names one) PostgreSQL.

use citycredit_tests::ok;
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
            "items/E08/sections/uscc",
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
                display_name_en: String::new(),
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
                display_name_en: String::new(),
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
                display_name_en: String::new(),
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
    // Built-in domains carry the catalog's English name beside the Chinese one.
    assert!(
        xinyi
            .iter()
            .all(|d| !d.display_name.is_empty() && !d.display_name_en.is_empty()),
        "{xinyi:?}"
    );
    // A registered domain keeps one name: an English one is refused, not dropped.
    let english = reg
        .register_domain(pb::RegisterDomainRequest {
            domain: Some(pb::RegisteredDomain {
                domain_set: "joint_reward_punishment".into(),
                code: "jrp-01".into(),
                display_name: "重大税收违法".into(),
                builtin: false,
                display_name_en: "Major tax violations".into(),
            }),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("an English name on a registered domain"));
    assert_eq!(english.code(), Code::InvalidArgument);
    assert!(
        english.get_error_details().bad_request().is_some_and(|b| b
            .field_violations
            .iter()
            .any(|v| v.field == "domain.display_name_en")),
        "{english:?}"
    );
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

// ----- rulebook v2: item sections and expected reporters -----

/// A value through SubmitValue as `who`: Ok, or the refusal.
async fn submit_as(
    s: &citycredit_tests::ingestion::IngestionServer,
    who: &citycredit_core::auth::Principal,
    metric: &str,
    value: &str,
) -> Result<(), tonic::Status> {
    let mut c = s.client(Some(who)).await;
    c.submit_value(pb::SubmitValueRequest {
        value: Some(citycredit_tests::ingestion::number_input(
            metric, "330800", "2026", "", value,
        )),
        idempotency_key: String::new(),
        validate_only: false,
    })
    .await
    .map(drop)
}

fn parties(r: &[pb::ResponsibleParty]) -> Vec<&str> {
    r.iter().map(|p| p.party.as_str()).collect()
}

async fn sections_carry_their_own_responsible_departments(backend: Backend) {
    use citycredit_core::auth::Role;
    use citycredit_tests::ingestion::{IngestionServer, principal};
    let s = IngestionServer::start(backend).await;
    let mut catalog = IndicatorServiceClient::new(s.server.admin());
    let e07 = ok(catalog
        .get_evaluation_item(pb::GetEvaluationItemRequest { name: "E07".into() })
        .await)
    .item
    .unwrap_or_default();
    let sections: Vec<(&str, &str, &str)> = e07
        .sections
        .iter()
        .map(|x| (x.name.as_str(), x.code.as_str(), x.title.as_str()))
        .collect();
    assert_eq!(
        sections,
        [
            (
                "items/E07/sections/credit-environment",
                "credit-environment",
                "信用环境"
            ),
            ("items/E07/sections/rule-of-law", "rule-of-law", "法治环境"),
            (
                "items/E07/sections/policy-environment",
                "policy-environment",
                "政策环境"
            ),
        ]
    );
    // 市中院 only under 法治环境.
    for x in &e07.sections {
        let court = parties(&x.responsible).contains(&"departments/court");
        assert_eq!(court, x.code == "rule-of-law", "{}", x.code);
    }
    assert_eq!(e07.sections[1].task_ids, ["E07.3", "E07.4", "E07.5"]);
    let task = |id: &str| {
        e07.tasks
            .iter()
            .find(|t| t.id == id)
            .unwrap_or_else(|| panic!("{id}"))
    };
    assert_eq!(
        parties(&task("E07.1").responsible),
        [
            "departments/finance-office",
            "departments/pboc",
            "departments/cbirc"
        ]
    );
    assert_eq!(
        parties(&task("E07.3").responsible),
        ["departments/finance-office", "departments/court"]
    );
    assert_eq!(
        (
            task("E07.3").section.as_str(),
            task("E07.3").section_name.as_str()
        ),
        ("法治环境", "items/E07/sections/rule-of-law")
    );
    // The item's list is the union of its sections' lists, in source order.
    assert_eq!(
        parties(&e07.responsible),
        [
            "departments/finance-office",
            "departments/pboc",
            "departments/cbirc",
            "departments/court"
        ]
    );
    // E08's tasks 2-4 are led by 市营商办 (its information-sharing section), not 市市场监管局.
    let e08 = ok(catalog
        .get_evaluation_item(pb::GetEvaluationItemRequest {
            name: "items/E08".into(),
        })
        .await)
    .item
    .unwrap_or_default();
    assert_eq!(e08.tasks[0].responsible[0].party, "departments/samr");
    for t in &e08.tasks[1..] {
        assert_eq!(
            t.responsible[0].party, "departments/business-env",
            "{}",
            t.id
        );
    }

    // Duties follow the sections.
    let mut reg = Registry::new(s.server.admin());
    let duties = |department: &str| pb::GetDepartmentDutiesRequest {
        department: department.into(),
    };
    let court = ok(reg.get_department_duties(duties("court")).await);
    for list in [&court.expected_metrics, &court.permitted_metrics] {
        assert!(
            !list.contains(&"finance.npl_balance".to_owned()),
            "{list:?}"
        );
        assert!(list.contains(&"finance.cases_total".to_owned()), "{list:?}");
    }
    assert!(
        court
            .duties
            .iter()
            .any(|d| d.subject == "items/E07/sections/rule-of-law")
    );
    let gas = ok(reg.get_department_duties(duties("utility-gas")).await);
    assert!(
        !gas.permitted_metrics
            .iter()
            .chain(&gas.expected_metrics)
            .any(|m| m.starts_with("uscc.")),
        "{gas:?}"
    );
    // The utilities may report G13's figures but are expected only through a reporting duty.
    assert!(
        gas.permitted_metrics
            .contains(&"sharing.units_connected".to_owned())
    );
    assert!(
        gas.expected_metrics.is_empty(),
        "{:?}",
        gas.expected_metrics
    );

    // A per-section change moves a permission.
    let court_sys = principal("court-sys", Role::Department, Some("court"));
    submit_as(&s, &court_sys, "finance.cases_total", "10")
        .await
        .unwrap_or_else(|e| panic!("court reports its case figures: {e:?}"));
    let refused = submit_as(&s, &court_sys, "finance.npl_balance", "1")
        .await
        .err()
        .unwrap_or_else(|| panic!("court must not report the NPL balance"));
    assert_eq!(refused.code(), Code::PermissionDenied);
    ok(reg
        .set_responsibilities(pb::SetResponsibilitiesRequest {
            subject: "items/E07/sections/credit-environment".into(),
            parties: vec![
                "departments/finance-office".into(),
                "departments/pboc".into(),
                "departments/cbirc".into(),
                "departments/court".into(),
            ],
        })
        .await);
    ok(reg
        .set_responsibilities(pb::SetResponsibilitiesRequest {
            subject: "items/E07/sections/rule-of-law".into(),
            parties: vec!["departments/finance-office".into()],
        })
        .await);
    submit_as(&s, &court_sys, "finance.npl_balance", "1")
        .await
        .unwrap_or_else(|e| panic!("court now answers for 信用环境: {e:?}"));
    let refused = submit_as(&s, &court_sys, "finance.cases_total", "11")
        .await
        .err()
        .unwrap_or_else(|| panic!("court no longer answers for 法治环境"));
    assert_eq!(refused.code(), Code::PermissionDenied);
    // The item itself takes its sections' lists: it cannot be set as a whole.
    let err = reg
        .set_responsibilities(pb::SetResponsibilitiesRequest {
            subject: "items/E07".into(),
            parties: vec!["departments/court".into()],
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("a sectioned item set as a whole"));
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("items/E07/sections/rule-of-law"),
        "{}",
        err.message()
    );
    let listed = ok(reg
        .list_responsibilities(pb::ListResponsibilitiesRequest {
            subject: "items/E07".into(),
            party: String::new(),
        })
        .await);
    assert!(
        listed
            .responsibilities
            .iter()
            .all(|r| r.subject.starts_with("items/E07/sections/"))
            && listed.responsibilities.len() == 8,
        "{listed:?}"
    );
}

both_databases!(sections_carry_their_own_responsible_departments);

async fn expected_reporters_come_from_named_departments_and_reporting_duties(backend: Backend) {
    use citycredit::proto::v1::scoring_service_client::ScoringServiceClient;
    use citycredit_tests::ingestion::{IngestionServer, platform, principal};
    let s = IngestionServer::start(backend).await;
    let mut reg = Registry::new(s.server.admin());
    let mut scoring = ScoringServiceClient::new(s.channel(Some(&platform())).await);
    const METRIC: &str = "gov.dishonesty_events_total";
    let housing_row = async |scoring: &mut ScoringServiceClient<_>| {
        ok(scoring
            .get_completeness_report(pb::GetCompletenessReportRequest {
                period: "2026".into(),
                region_code: String::new(),
            })
            .await)
        .departments
        .into_iter()
        .find(|d| d.department_code == "housing")
        .unwrap_or_else(|| panic!("市住建局 is expected for E04's integrity records"))
    };
    let b03_missing = async |scoring: &mut ScoringServiceClient<_>| {
        ok(scoring
            .get_department_worklist(pb::GetDepartmentWorklistRequest {
                department: "housing".into(),
                period: "2026".into(),
                region_code: String::new(),
            })
            .await)
        .entries
        .into_iter()
        .find(|e| e.code == "B03")
        .map(|e| e.missing_metrics)
        .unwrap_or_else(|| panic!("housing answers for B03 through city-departments"))
    };

    // 市住建局 may report B03's government dishonesty events (through city-departments) but is
    // not expected to: completeness and its worklist do not chase it.
    let duties = ok(reg
        .get_department_duties(pb::GetDepartmentDutiesRequest {
            department: "housing".into(),
        })
        .await);
    assert!(duties.permitted_metrics.contains(&METRIC.to_owned()));
    assert!(!duties.expected_metrics.contains(&METRIC.to_owned()));
    assert!(
        duties
            .expected_metrics
            .contains(&"integrity.credit_records".to_owned())
    );
    let row = housing_row(&mut scoring).await;
    assert!(!row.missing.contains(&METRIC.to_owned()), "{row:?}");
    assert!(b03_missing(&mut scoring).await.is_empty());
    // By default the county governments are expected for their own county.
    let kecheng = ok(reg
        .get_department_duties(pb::GetDepartmentDutiesRequest {
            department: "gov-330802".into(),
        })
        .await);
    let report = kecheng
        .expected_reports
        .iter()
        .find(|r| r.metric_key == METRIC)
        .unwrap_or_else(|| panic!("{kecheng:?}"));
    assert_eq!(report.regions, ["regions/330802"]);

    // An administrator adds a reporting duty: "housing reports the events for the city".
    let created = ok(reg
        .create_reporting_duty(pb::CreateReportingDutyRequest {
            reporting_duty: Some(pb::ReportingDuty {
                id: "housing-dishonesty-events".into(),
                party: "departments/housing".into(),
                metric_keys: vec![METRIC.into()],
                regions: vec!["330800".into()],
                ..Default::default()
            }),
        })
        .await)
    .reporting_duty
    .unwrap_or_default();
    assert_eq!(created.name, "reportingDuties/housing-dishonesty-events");
    assert_eq!(created.regions, ["regions/330800"]);
    let listed = ok(reg
        .list_reporting_duties(pb::ListReportingDutiesRequest {})
        .await);
    assert_eq!(listed.reporting_duties, std::slice::from_ref(&created));
    let row = housing_row(&mut scoring).await;
    assert!(row.missing.contains(&METRIC.to_owned()), "{row:?}");
    assert_eq!(b03_missing(&mut scoring).await, [METRIC]);
    // The duty replaces the defaults for the metric: the counties are no longer expected.
    let kecheng = ok(reg
        .get_department_duties(pb::GetDepartmentDutiesRequest {
            department: "gov-330802".into(),
        })
        .await);
    assert!(!kecheng.expected_metrics.contains(&METRIC.to_owned()));
    // Once reported it counts as reported.
    let housing = principal(
        "housing-sys",
        citycredit_core::auth::Role::Department,
        Some("housing"),
    );
    submit_as(&s, &housing, METRIC, "3")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let row = housing_row(&mut scoring).await;
    assert!(row.reported.contains(&METRIC.to_owned()), "{row:?}");

    // The write is audited like every registry write; refusals are specific.
    let changes = ok(reg
        .list_registry_changes(pb::ListRegistryChangesRequest::default())
        .await)
    .changes;
    assert!(
        changes.iter().any(|c| c.action == "CreateReportingDuty"
            && c.resource == "reportingDuties/housing-dishonesty-events"
            && c.principal == "principals/admin"),
        "{changes:?}"
    );
    let again = reg
        .create_reporting_duty(pb::CreateReportingDutyRequest {
            reporting_duty: Some(created.clone()),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("a duplicate id"));
    assert_eq!(again.code(), Code::AlreadyExists);
    let bad = reg
        .create_reporting_duty(pb::CreateReportingDutyRequest {
            reporting_duty: Some(pb::ReportingDuty {
                id: "assessed".into(),
                party: "groups/utilities".into(),
                metric_keys: vec!["campaign.integrity_tour".into()],
                regions: vec!["330800".into()],
                ..Default::default()
            }),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("a duty for an assessed metric"));
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("assessors") || format!("{bad:?}").contains("assessors"));
    let mut samr = Registry::new(
        s.channel(Some(&principal(
            "samr-sys",
            citycredit_core::auth::Role::Department,
            Some("samr"),
        )))
        .await,
    );
    let denied = samr
        .delete_reporting_duty(pb::DeleteReportingDutyRequest {
            name: created.name.clone(),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("a department deleted a duty"));
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Deleting it restores the defaults.
    ok(reg
        .delete_reporting_duty(pb::DeleteReportingDutyRequest {
            name: created.name.clone(),
        })
        .await);
    assert!(b03_missing(&mut scoring).await.is_empty());
    let gone = reg
        .delete_reporting_duty(pb::DeleteReportingDutyRequest { name: created.name })
        .await
        .err()
        .unwrap_or_else(|| panic!("deleted twice"));
    assert_eq!(gone.code(), Code::NotFound);
}

both_databases!(expected_reporters_come_from_named_departments_and_reporting_duties);

async fn a_store_seeded_by_item_is_upgraded_to_sections(backend: Backend) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let schema = fresh_schema();
    let server = start(backend, &schema, dir.path()).await;
    server.stop().await.unwrap_or_else(|e| panic!("{e}"));
    // Make it a store seeded before sections (rulebook v1): E07 with one list of its own.
    let db = match backend {
        Backend::Sqlite => {
            citycredit_store::Db::connect(
                &citycredit_store::sqlite_url(&dir.path().join("citycredit.db")),
                1,
                Duration::from_secs(10),
                None,
            )
            .await
        }
        Backend::Postgres => {
            citycredit_store::Db::connect(
                &citycredit_tests::postgres_url(),
                1,
                Duration::from_secs(10),
                Some(schema.to_string()),
            )
            .await
        }
    }
    .unwrap_or_else(|e| panic!("{e}"));
    let mut conn = db.pool.acquire().await.unwrap_or_else(|e| panic!("{e}"));
    sqlx::query("DELETE FROM responsibilities WHERE subject LIKE 'E07/%'")
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for (i, p) in ["finance-office", "pboc", "cbirc", "court"]
        .iter()
        .enumerate()
    {
        sqlx::query(
            "INSERT INTO responsibilities (subject, party, position) VALUES ('E07', $1, $2)",
        )
        .bind(*p)
        .bind(i64::try_from(i).unwrap_or(0))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    drop(conn);
    db.pool.close().await;

    let server = start(backend, &schema, dir.path()).await;
    let mut reg = server.registry();
    let listed = ok(reg
        .list_responsibilities(pb::ListResponsibilitiesRequest {
            subject: "items/E07".into(),
            party: "departments/court".into(),
        })
        .await)
    .responsibilities;
    let subjects: Vec<&str> = listed.iter().map(|r| r.subject.as_str()).collect();
    assert_eq!(subjects, ["items/E07/sections/rule-of-law"], "{backend:?}");
    let changes = ok(reg
        .list_registry_changes(pb::ListRegistryChangesRequest::default())
        .await)
    .changes;
    assert!(
        changes.iter().any(|c| c.action == "UpgradeToSections"
            && c.resource == "items/E07"
            && c.principal == "principals/system"),
        "{changes:?}"
    );
    server.stop().await.unwrap_or_else(|e| panic!("{e}"));
}

both_databases!(a_store_seeded_by_item_is_upgraded_to_sections);
