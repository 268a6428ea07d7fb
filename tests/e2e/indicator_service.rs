//! IndicatorService, health and reflection through a real server.

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::indicator_service_client::IndicatorServiceClient;
use citycredit_tests::ok;
use citycredit_tests::{Backend, TestServer, both_databases, fresh_schema, use_backend};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

#[tokio::test]
async fn lists_all_twenty_indicators_with_names_scores_rules_and_leads() {
    let server = TestServer::start().await;
    let mut client = IndicatorServiceClient::new(server.admin());
    let list = client
        .list_indicators(pb::ListIndicatorsRequest::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert_eq!(list.indicators.len(), 20);
    assert!(list.next_page_token.is_empty());

    let b01 = &list.indicators[0];
    assert_eq!(b01.code, "B01");
    assert_eq!(b01.name, "indicators/B01");
    assert_eq!(b01.kind(), pb::IndicatorKind::Basic);
    assert!(b01.title.contains("统一社会信用代码"));
    // The rule in words: Chinese by default, with the metrics' Chinese titles ...
    assert_eq!(
        b01.rule_summary,
        "（1）“已转换为统一社会信用代码的存量代码数”占“存量代码总数”的比例 ≥ 100%"
    );
    assert_eq!(b01.terms[0].summary, b01.rule_summary["（1）".len()..]);
    // ... and in English for a caller who asks for it.
    let mut english = tonic::Request::new(pb::GetIndicatorRequest {
        name: "indicators/B01".into(),
    });
    english.metadata_mut().insert(
        "accept-language",
        tonic::metadata::MetadataValue::from_static("en"),
    );
    let b01_en = client
        .get_indicator(english)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .indicator
        .unwrap_or_default();
    assert_eq!(
        b01_en.rule_summary,
        "(1) the share of \"Legacy codes converted to unified social credit codes\" in \"Legacy organisation codes in stock (total)\" ≥ 100%"
    );
    assert_eq!(b01_en.terms[0].summary, b01_en.rule_summary["(1) ".len()..]);
    let parties: Vec<(&str, pb::ResponsibilityRole)> = b01
        .responsible
        .iter()
        .map(|p| (p.party.as_str(), p.role()))
        .collect();
    assert_eq!(
        parties,
        [
            ("departments/samr", pb::ResponsibilityRole::Lead),
            ("departments/cpc-staffing", pb::ResponsibilityRole::Co),
            ("departments/civil-affairs", pb::ResponsibilityRole::Co),
        ]
    );
    assert_eq!(b01.responsible[0].display_name, "市市场监管局");

    let g19 = list
        .indicators
        .iter()
        .find(|i| i.code == "G19")
        .unwrap_or_else(|| panic!("G19"));
    assert_eq!(g19.kind(), pb::IndicatorKind::Guiding);
    assert_eq!(g19.max_score, "20.00");
    let part_max: Vec<&str> = g19.terms.iter().map(|t| t.max_score.as_str()).collect();
    assert_eq!(part_max, ["2.00", "12.00", "3.00", "1.00", "2.00"]);
    assert_eq!(g19.responsible[0].party, "departments/cpc-org");
    assert_eq!(g19.responsible[2].party, "groups/leading-group-members");
    assert_eq!(
        g19.responsible[2].display_name,
        "市信用衢州建设领导小组成员单位"
    );

    let maxima: Vec<&str> = list
        .indicators
        .iter()
        .filter(|i| i.kind() == pb::IndicatorKind::Guiding)
        .map(|i| i.max_score.as_str())
        .collect();
    assert_eq!(
        maxima,
        [
            "1.00", "2.00", "4.00", "4.00", "3.00", "2.00", "4.00", "10.00", "20.00", "4.00"
        ]
    );

    // Filtering and paging.
    let basics = client
        .list_indicators(pb::ListIndicatorsRequest {
            kind: pb::IndicatorKind::Basic as i32,
            page_size: 4,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert_eq!(
        basics
            .indicators
            .iter()
            .map(|i| i.code.as_str())
            .collect::<Vec<_>>(),
        ["B01", "B02", "B03", "B04"]
    );
    let next = client
        .list_indicators(pb::ListIndicatorsRequest {
            kind: pb::IndicatorKind::Basic as i32,
            page_size: 4,
            page_token: basics.next_page_token.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert_eq!(next.indicators[0].code, "B05");
    server.stop().await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn lists_every_metric_with_kind_and_aggregation() {
    let server = TestServer::start().await;
    let mut client = IndicatorServiceClient::new(server.admin());
    let metrics = client
        .list_metrics(pb::ListMetricsRequest::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .metrics;
    assert_eq!(metrics.len(), 68);
    let find = |k: &str| {
        metrics
            .iter()
            .find(|m| m.key == k)
            .unwrap_or_else(|| panic!("{k}"))
    };
    assert_eq!(find("uscc.codes_total").kind(), pb::MetricKind::Count);
    assert_eq!(find("uscc.codes_total").aggregation(), pb::Aggregation::Sum);
    assert_eq!(
        find("monitoring.city_rank").aggregation(),
        pb::Aggregation::AtRegion
    );
    assert_eq!(find("campaign.integrity_tour").max_value, "2");
    assert_eq!(
        find("joint_rp.domain_implemented").domain_set,
        "joint_reward_punishment"
    );
    assert_eq!(
        find("joint_rp.domain_implemented").aggregation(),
        pb::Aggregation::DomainUnion
    );
    assert_eq!(
        find("task.status").aggregation(),
        pb::Aggregation::LatestAtRegion
    );
    assert_eq!(
        find("blacklist.in_operation").used_by,
        ["B07", "B08", "B09"]
    );

    let items = client
        .list_evaluation_items(pb::ListEvaluationItemsRequest::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .items;
    assert_eq!(items.len(), 12);
    let e07 = &items[6];
    assert_eq!(e07.tasks.len(), 8);
    assert_eq!(e07.tasks[2].section, "法治环境");
    assert_eq!(
        e07.tasks[0].checks,
        ["“不良贷款余额（元）”占“各项贷款余额（元）”的比例 < 2%"]
    );

    let sets = client
        .list_domain_sets(pb::ListDomainSetsRequest::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .domain_sets;
    assert_eq!(
        sets.iter()
            .map(|s| (s.code.as_str(), s.open, s.domains.len()))
            .collect::<Vec<_>>(),
        [
            ("integrity_domains", false, 20),
            ("xinyi_plus", true, 8),
            ("joint_reward_punishment", true, 0),
        ]
    );
    server.stop().await.unwrap_or_else(|e| panic!("{e}"));
}

/// A request whose caller reads English.
fn in_english<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        "accept-language",
        tonic::metadata::MetadataValue::from_static("en"),
    );
    req
}

/// Issue 14, Chinese first: every catalog title reaches callers in English beside the official
/// Chinese one, which stays in `title` whatever language the caller asks for (machine clients
/// rely on it).
async fn catalog_titles_come_in_english_beside_the_official_chinese(backend: Backend) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let schema = fresh_schema();
    let schema_name = schema.to_string();
    let server =
        TestServer::start_in(dir.path(), move |c| use_backend(c, backend, &schema_name)).await;
    let mut client = IndicatorServiceClient::new(server.admin());
    let catalog: pb::GetCatalogResponse =
        ok(client.get_catalog(pb::GetCatalogRequest::default()).await);
    assert!(catalog.title.starts_with("社会信用体系建设示范城市"));
    assert_eq!(
        catalog.title_en,
        "Social credit system demonstration city: hard indicators (10 basic, 10 guiding) and evaluation items (12)"
    );

    // B01, for a caller who asks for Chinese (the default) and one who asks for English.
    for req in [
        tonic::Request::new(pb::GetIndicatorRequest {
            name: "indicators/B01".into(),
        }),
        in_english(pb::GetIndicatorRequest {
            name: "indicators/B01".into(),
        }),
    ] {
        let resp: pb::GetIndicatorResponse = ok(client.get_indicator(req).await);
        let b01 = resp.indicator.unwrap_or_default();
        assert_eq!(b01.title, "存量代码100%转换为统一社会信用代码。");
        assert_eq!(
            b01.title_en,
            "100% of legacy codes converted to unified social credit codes."
        );
    }
    let all: pb::ListIndicatorsResponse = ok(client
        .list_indicators(pb::ListIndicatorsRequest::default())
        .await);
    let b05 = all
        .indicators
        .iter()
        .find(|i| i.code == "B05")
        .unwrap_or_else(|| panic!("B05"));
    assert_eq!(
        b05.title_en,
        "100% of administrative licensing and penalty information reported to the Credit China website for publication."
    );
    assert!(
        all.indicators
            .iter()
            .all(|i| !i.title_en.is_empty() && i.title_en != i.title)
    );

    let metric: pb::GetMetricResponse = ok(client
        .get_metric(pb::GetMetricRequest {
            name: "metrics/population.registered".into(),
        })
        .await);
    let metric = metric.metric.unwrap_or_default();
    assert_eq!(metric.title, "城市户籍人口");
    assert_eq!(metric.title_en, "Registered (hukou) population of the city");
    let metrics: pb::ListMetricsResponse =
        ok(client.list_metrics(pb::ListMetricsRequest::default()).await);
    assert_eq!(metrics.metrics.len(), 68);
    assert!(metrics.metrics.iter().all(|m| !m.title_en.is_empty()));

    let e07: pb::GetEvaluationItemResponse = ok(client
        .get_evaluation_item(in_english(pb::GetEvaluationItemRequest {
            name: "items/E07".into(),
        }))
        .await);
    let e07 = e07.item.unwrap_or_default();
    assert_eq!(e07.title, "金融生态环境建设（由人民银行评分）");
    assert_eq!(
        e07.title_en,
        "Building the financial ecosystem (scored by the People's Bank of China)"
    );
    let task = &e07.tasks[2];
    assert_eq!(task.id, "E07.3");
    assert_eq!(task.title, "金融案件执结率提到至≥80%。");
    assert_eq!(
        task.title_en,
        "Raise the enforcement and conclusion rate of financial cases to ≥ 80%."
    );
    assert_eq!(
        (task.section.as_str(), task.section_en.as_str()),
        ("法治环境", "Rule-of-law environment")
    );
    let e07_6 = &e07.tasks[5];
    assert!(e07_6.description.starts_with("不得："));
    assert!(
        e07_6
            .description_en
            .starts_with("It must not: 1) induce or interfere"),
        "{}",
        e07_6.description_en
    );
    assert!(
        e07.tasks[2].description_en.is_empty(),
        "E07.3 has no description"
    );
    let sections: Vec<(&str, &str)> = e07
        .sections
        .iter()
        .map(|s| (s.code.as_str(), s.title_en.as_str()))
        .collect();
    assert_eq!(
        sections,
        [
            ("credit-environment", "Credit environment"),
            ("rule-of-law", "Rule-of-law environment"),
            ("policy-environment", "Policy environment"),
        ]
    );
    let items: pb::ListEvaluationItemsResponse = ok(client
        .list_evaluation_items(pb::ListEvaluationItemsRequest::default())
        .await);
    assert!(items.items.iter().all(|i| {
        !i.title_en.is_empty()
            && i.tasks
                .iter()
                .all(|t| !t.title_en.is_empty() && t.title_en != t.title)
    }));

    let sets: pb::ListDomainSetsResponse = ok(client
        .list_domain_sets(pb::ListDomainSetsRequest::default())
        .await);
    let production = sets
        .domain_sets
        .iter()
        .flat_map(|s| s.domains.iter())
        .find(|d| d.code == "production")
        .unwrap_or_else(|| panic!("production"));
    assert_eq!(
        (production.title.as_str(), production.title_en.as_str()),
        ("生产", "Production")
    );
    server.stop().await.unwrap_or_else(|e| panic!("{e}"));
    drop(schema);
}
both_databases!(catalog_titles_come_in_english_beside_the_official_chinese);

#[tokio::test]
async fn unknown_codes_are_not_found_with_error_info() {
    let server = TestServer::start().await;
    let mut client = IndicatorServiceClient::new(server.admin());
    let err = client
        .get_indicator(pb::GetIndicatorRequest {
            name: "indicators/B99".into(),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("B99 must not exist"));
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("indicators/B99"));
    let info = err
        .get_error_details()
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("no ErrorInfo"));
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("NOT_FOUND", "citycredit")
    );

    let err = client
        .list_metrics(pb::ListMetricsRequest {
            page_token: "bogus".into(),
            ..Default::default()
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("a bogus token must be refused"));
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.get_error_details()
            .bad_request()
            .map(|b| b.field_violations[0].field.clone()),
        Some("page_token".into())
    );
    server.stop().await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn health_and_both_reflection_versions_are_served() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel());
    for service in ["", "citycredit.v1.IndicatorService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient as V1;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest as V1Req;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse as V1Resp;
    let mut v1 = V1::new(server.channel());
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(V1Req::ListServices(String::new())),
    };
    let mut stream = v1
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let mut names = Vec::new();
    while let Some(msg) = stream.next().await {
        if let Some(V1Resp::ListServicesResponse(list)) =
            msg.unwrap_or_else(|e| panic!("{e}")).message_response
        {
            names.extend(list.service.into_iter().map(|s| s.name));
        }
    }
    for want in [
        "citycredit.v1.IndicatorService",
        "citycredit.v1.MetricSubmissionService",
        "citycredit.v1.CodeAuditService",
        "citycredit.v1.ScoringService",
        "citycredit.v1.DepartmentRegistryService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }

    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as V1a;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as V1aReq;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as V1aResp;
    let mut v1a = V1a::new(server.channel());
    let req = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(V1aReq::FileContainingSymbol(
            "citycredit.v1.Scorecard".into(),
        )),
    };
    let mut stream = v1a
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let msg = stream
        .next()
        .await
        .unwrap_or_else(|| panic!("no answer"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(msg.message_response, Some(V1aResp::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty())
    );
    server.stop().await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn a_broken_catalog_file_stops_the_start_with_a_precise_message() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("catalog.toml");
    let text = citycredit_core::catalog::BUILTIN_CATALOG_TOML.replacen(
        "denominator = \"service_halls.total\"",
        "denominator = \"service_halls.totl\"",
        1,
    );
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    let server = TestServer::start_with(|c| c.catalog = Some(path.clone())).await;
    let err = server
        .stop()
        .await
        .err()
        .unwrap_or_else(|| panic!("the server must refuse the catalog"))
        .to_string();
    assert!(err.contains("catalog.toml:"), "{err}");
    assert!(
        err.contains(
            "check service_halls.connected, denominator: unknown metric `service_halls.totl`"
        ),
        "{err}"
    );
}
