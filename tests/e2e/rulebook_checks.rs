//! Rulebook v2 through the real gRPC API, on SQLite and (with `DATABASE_URL`) PostgreSQL: every
//! evaluation task's checks with PASS / FAIL / MISSING results, the five new metrics and their
//! cross-metric check, G13's units counted at the region itself, the `utilities` group as the
//! source names it, and the catalog's rulebook version.

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::indicator_service_client::IndicatorServiceClient;
use citycredit::proto::v1::scoring_service_client::ScoringServiceClient;
use citycredit_core::auth::{Principal, Role};
use citycredit_tests::ingestion::{IngestionServer, number_input, platform, principal};
use citycredit_tests::ok;
use citycredit_tests::{Backend, both_databases};

fn bool_input(metric: &str, region: &str, period: &str, b: bool) -> pb::SubmissionInput {
    pb::SubmissionInput {
        metric_key: metric.into(),
        region_code: region.into(),
        period: period.into(),
        value: Some(pb::MetricValue {
            value: Some(pb::metric_value::Value::Flag(b)),
        }),
        ..Default::default()
    }
}

async fn submit(s: &IngestionServer, who: &Principal, values: Vec<pb::SubmissionInput>) {
    let mut client = s.client(Some(who)).await;
    let req = pb::SubmitBatchRequest {
        idempotency_key: String::new(),
        validate_only: false,
        values,
    };
    ok(client.submit_batch(tokio_stream::iter([req])).await);
}

async fn scorecard(s: &IngestionServer, region: &str, period: &str) -> pb::Scorecard {
    let mut scoring = ScoringServiceClient::new(s.channel(Some(&platform())).await);
    ok(scoring
        .get_scorecard(pb::GetScorecardRequest {
            region_code: region.into(),
            period: period.into(),
            as_of: None,
            rule_version: String::new(),
            approved_only: false,
        })
        .await)
    .scorecard
    .unwrap_or_else(|| panic!("no scorecard"))
}

/// The checks of one task in a scorecard.
fn checks<'a>(card: &'a pb::Scorecard, task: &str) -> &'a [pb::CheckResult] {
    card.items
        .iter()
        .flat_map(|i| i.tasks.iter())
        .find(|t| t.id == task)
        .map(|t| t.checks.as_slice())
        .unwrap_or_else(|| panic!("no task {task}"))
}

fn statuses(card: &pb::Scorecard, task: &str) -> Vec<pb::CheckStatus> {
    checks(card, task).iter().map(|c| c.status()).collect()
}

fn indicator<'a>(card: &'a pb::Scorecard, code: &str) -> &'a pb::IndicatorResult {
    card.indicators
        .iter()
        .find(|i| i.code == code)
        .unwrap_or_else(|| panic!("no {code}"))
}

async fn task_checks_pass_fail_or_are_missing(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let p = "2026";
    let city = "330800";

    // Nothing reported: every measured check is MISSING, naming what it lacks, never FAIL.
    let card = scorecard(&s, city, p).await;
    for item in &card.items {
        for task in &item.tasks {
            for c in &task.checks {
                assert_eq!(
                    c.status(),
                    pb::CheckStatus::Missing,
                    "{}: {} {}",
                    s.name(),
                    task.id,
                    c.summary
                );
                assert!(!c.missing_metrics.is_empty(), "{} {}", task.id, c.summary);
            }
        }
    }
    let e11_2 = &checks(&card, "E11.2")[0];
    assert_eq!(e11_2.missing_metrics, ["finance.credit_budget"]);
    assert_eq!(e11_2.check_type, "above");

    // E08.3: 9 of 10 units connected fails although G13 scores 3.50.
    let big_data = principal("big-data-sys", Role::Department, Some("big-data"));
    submit(
        &s,
        &big_data,
        vec![
            number_input("sharing.units_required", city, p, "", "10"),
            number_input("sharing.units_connected", city, p, "", "9"),
        ],
    )
    .await;
    // E03.3: counties covered and the township plan, no rank.
    let env = principal("business-env-sys", Role::Department, Some("business-env"));
    submit(
        &s,
        &env,
        vec![
            number_input("monitoring.counties_total", city, p, "", "6"),
            number_input("monitoring.counties_covered", city, p, "", "6"),
            bool_input("monitoring.township_extension_plan", city, p, true),
        ],
    )
    .await;
    let card = scorecard(&s, city, p).await;
    let g13 = indicator(&card, "G13");
    assert_eq!(
        (g13.status(), g13.score.as_str()),
        (pb::IndicatorStatus::Scored, "3.50")
    );
    let e08_3 = &checks(&card, "E08.3")[0];
    assert_eq!(e08_3.status(), pb::CheckStatus::Fail, "{}", s.name());
    assert_eq!(e08_3.computed, "0.900000");
    assert_eq!(e08_3.check_type, "ratio_at_least");
    assert_eq!(
        indicator(&card, "B10").status(),
        pb::IndicatorStatus::MissingData
    );
    let e03_3 = &checks(&card, "E03.3")[0];
    assert_eq!(e03_3.status(), pb::CheckStatus::Pass, "{}", s.name());
    assert_eq!(
        (e03_3.indicator_code.as_str(), e03_3.indicator_status()),
        ("B10", pb::IndicatorStatus::MissingData)
    );
    // The check in words, in Chinese (the default language).
    assert_eq!(e03_3.summary, "硬指标 B10 的条件（1、2）成立");

    // The last unit connects: E08.3 passes.
    submit(
        &s,
        &big_data,
        vec![number_input("sharing.units_connected", city, p, "", "10")],
    )
    .await;
    let card = scorecard(&s, city, p).await;
    assert_eq!(statuses(&card, "E08.3"), [pb::CheckStatus::Pass]);

    // An item is DONE when every task is DONE and every check passes.
    let assessor = principal("assessor-1", Role::Assessor, None);
    let done = |task: &str| pb::SubmissionInput {
        metric_key: "task.status".into(),
        region_code: city.into(),
        period: p.into(),
        task_id: task.into(),
        value: Some(pb::MetricValue {
            value: Some(pb::metric_value::Value::TaskStatus(
                pb::TaskStatus::Done as i32,
            )),
        }),
        ..Default::default()
    };
    submit(
        &s,
        &assessor,
        ["E11.1", "E11.2", "E11.3", "E11.4", "E11.5"]
            .into_iter()
            .map(done)
            .collect(),
    )
    .await;
    let e11_done = |card: &pb::Scorecard| card.items.iter().any(|i| i.code == "E11" && i.done);
    assert!(!e11_done(&scorecard(&s, city, p).await), "budget missing");
    let finance = principal("finance-sys", Role::Department, Some("finance"));
    submit(
        &s,
        &finance,
        vec![number_input(
            "finance.credit_budget",
            city,
            p,
            "",
            "2000000.00",
        )],
    )
    .await;
    let card = scorecard(&s, city, p).await;
    assert_eq!(statuses(&card, "E11.2"), [pb::CheckStatus::Pass]);
    assert!(e11_done(&card), "{}", s.name());
}

both_databases!(task_checks_pass_fail_or_are_missing);

async fn the_five_new_metrics_are_accepted_and_their_cross_check_reported(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let (p, city) = ("2026-Q2", "330800");
    let samr = principal("samr-sys", Role::Department, Some("samr"));
    submit(
        &s,
        &samr,
        vec![
            number_input("uscc.individual_business_total", city, p, "", "120"),
            number_input("uscc.individual_business_mapped", city, p, "", "125"),
        ],
    )
    .await;
    let env = principal("business-env-sys", Role::Department, Some("business-env"));
    submit(
        &s,
        &env,
        vec![
            bool_input("sharing.national_jrp_docked", city, p, true),
            bool_input("sharing.red_black_list_embedded", city, p, false),
        ],
    )
    .await;
    let finance = principal("finance-sys", Role::Department, Some("finance"));
    submit(
        &s,
        &finance,
        vec![number_input("finance.credit_budget", city, p, "", "0")],
    )
    .await;

    // Only departments responsible for an item whose checks read the metric may report it:
    // 市中院 answers for none of E11's tasks.
    let court = principal("court-sys", Role::Department, Some("court"));
    let mut client = s.client(Some(&court)).await;
    let denied = client
        .submit_value(pb::SubmitValueRequest {
            value: Some(number_input("finance.credit_budget", city, p, "", "1")),
            idempotency_key: String::new(),
            validate_only: false,
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("{}: court may not report the credit budget", s.name()));
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    let card = scorecard(&s, city, p).await;
    let violation = card
        .violations
        .iter()
        .find(|v| v.numerator == "uscc.individual_business_mapped")
        .unwrap_or_else(|| panic!("{}: the violation is not reported", s.name()));
    assert_eq!(
        (
            violation.numerator_value.as_str(),
            violation.denominator.as_str(),
            violation.bound.as_str()
        ),
        ("125", "uscc.individual_business_total", "120")
    );
    assert_eq!(violation.affects, ["E08"]);
    // E08.1: B01 and B02 unreported, the mapping ratio invalid.
    assert_eq!(
        statuses(&card, "E08.1"),
        [
            pb::CheckStatus::Missing,
            pb::CheckStatus::Missing,
            pb::CheckStatus::InvalidData
        ]
    );
    // E08.2: docked, not embedded, B04 unreported.
    assert_eq!(
        statuses(&card, "E08.2"),
        [
            pb::CheckStatus::Pass,
            pb::CheckStatus::Fail,
            pb::CheckStatus::Missing
        ]
    );
    // E11.2: a budget of 0 is reported and fails.
    assert_eq!(statuses(&card, "E11.2"), [pb::CheckStatus::Fail]);

    // The figures read back as submitted.
    let mut client = s.client(Some(&platform())).await;
    let agg = ok(client
        .query_aggregates(pb::QueryAggregatesRequest {
            region_code: city.into(),
            period: p.into(),
            as_of: None,
            approved_only: false,
        })
        .await);
    let keys: Vec<&str> = agg.metrics.iter().map(|m| m.metric_key.as_str()).collect();
    for key in [
        "uscc.individual_business_total",
        "uscc.individual_business_mapped",
        "sharing.national_jrp_docked",
        "sharing.red_black_list_embedded",
        "finance.credit_budget",
    ] {
        assert!(
            keys.contains(&key),
            "{}: {key} not stored: {keys:?}",
            s.name()
        );
    }

    // Correcting the figure clears the violation; E08.1's third check then fails (119 of 120).
    submit(
        &s,
        &samr,
        vec![number_input(
            "uscc.individual_business_mapped",
            city,
            p,
            "",
            "119",
        )],
    )
    .await;
    let card = scorecard(&s, city, p).await;
    assert!(card.violations.is_empty(), "{:?}", card.violations);
    assert_eq!(checks(&card, "E08.1")[2].status(), pb::CheckStatus::Fail);
}

both_databases!(the_five_new_metrics_are_accepted_and_their_cross_check_reported);

async fn g13_counts_the_regions_own_units_not_its_counties(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let p = "2026";
    let big_data = principal("big-data-sys", Role::Department, Some("big-data"));
    submit(
        &s,
        &big_data,
        vec![
            number_input("sharing.units_required", "330800", p, "", "10"),
            number_input("sharing.units_connected", "330800", p, "", "10"),
            number_input("service_halls.total", "330800", p, "", "3"),
        ],
    )
    .await;
    // 柯城区 reports its own units (and halls): 2 of 5 connected.
    let kecheng = principal("kecheng-sys", Role::Department, Some("gov-330802"));
    submit(
        &s,
        &kecheng,
        vec![
            number_input("sharing.units_required", "330802", p, "", "5"),
            number_input("sharing.units_connected", "330802", p, "", "2"),
            number_input("service_halls.total", "330802", p, "", "4"),
        ],
    )
    .await;

    // The city: its own 10 of 10 (not 12 of 15), full marks, E08.3 passes.
    let card = scorecard(&s, "330800", p).await;
    let g13 = indicator(&card, "G13");
    assert_eq!(g13.score, "4.00", "{}", s.name());
    let required = g13
        .inputs
        .iter()
        .find(|i| i.metric_key == "sharing.units_required")
        .unwrap_or_else(|| panic!("input"));
    assert_eq!(required.value, "10");
    assert!(
        required.sources.iter().all(|x| x.region_code == "330800"),
        "{:?}",
        required.sources
    );
    assert_eq!(statuses(&card, "E08.3"), [pb::CheckStatus::Pass]);

    // The county: its own 2 of 5.
    let county = scorecard(&s, "330802", p).await;
    assert_eq!(indicator(&county, "G13").score, "2.50");
    assert_eq!(statuses(&county, "E08.3"), [pb::CheckStatus::Fail]);

    // QueryAggregates agrees; a metric of the default scope still adds up over the counties.
    let mut client = s.client(Some(&platform())).await;
    let agg = ok(client
        .query_aggregates(pb::QueryAggregatesRequest {
            region_code: "330800".into(),
            period: p.into(),
            as_of: None,
            approved_only: false,
        })
        .await);
    let figure = |key: &str| {
        agg.metrics
            .iter()
            .find(|m| m.metric_key == key)
            .and_then(|m| m.value.clone())
            .and_then(|v| v.value)
    };
    let number = |v: &str| Some(pb::metric_value::Value::Number(v.into()));
    assert_eq!(figure("sharing.units_required"), number("10"));
    assert_eq!(figure("sharing.units_connected"), number("10"));
    assert_eq!(figure("service_halls.total"), number("7"));

    // The catalog says so.
    let mut catalog = IndicatorServiceClient::new(s.channel(Some(&platform())).await);
    let metric = ok(catalog
        .get_metric(pb::GetMetricRequest {
            name: "metrics/sharing.units_required".into(),
        })
        .await)
    .metric
    .unwrap_or_default();
    assert_eq!(metric.scope(), pb::AggregationScope::Region);
    assert_eq!(metric.time_class(), pb::TimeClass::Level);
    let loans = ok(catalog
        .get_metric(pb::GetMetricRequest {
            name: "metrics/xinyidai.loan_amount".into(),
        })
        .await)
    .metric
    .unwrap_or_default();
    assert_eq!(loans.time_class(), pb::TimeClass::Flow);
}

both_databases!(g13_counts_the_regions_own_units_not_its_counties);

async fn the_utilities_group_has_the_three_members_the_source_names(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let mut registry = s.server.registry();
    let groups = ok(registry.list_groups(pb::ListGroupsRequest {}).await).groups;
    let utilities = groups
        .iter()
        .find(|g| g.code == "utilities")
        .unwrap_or_else(|| panic!("no utilities group"));
    assert_eq!(
        utilities.members,
        ["utility-gas", "utility-heat", "utility-telecom"],
        "{}",
        s.name()
    );
    assert_eq!(utilities.display_name, "气、热、通信等公用企事业单位");
}

both_databases!(the_utilities_group_has_the_three_members_the_source_names);

async fn the_catalog_shows_its_rulebook_version_descriptions_and_checks(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let mut catalog = IndicatorServiceClient::new(s.channel(Some(&platform())).await);
    let info = ok(catalog.get_catalog(pb::GetCatalogRequest {}).await);
    assert_eq!(info.rulebook_version, 2);
    assert_eq!(info.metric_count, 68);

    let e07 = ok(catalog
        .get_evaluation_item(pb::GetEvaluationItemRequest {
            name: "items/E07".into(),
        })
        .await)
    .item
    .unwrap_or_default();
    let description = |id: &str| {
        e07.tasks
            .iter()
            .find(|t| t.id == id)
            .map(|t| t.description.clone())
            .unwrap_or_default()
    };
    assert!(description("E07.2").starts_with("如："));
    assert!(description("E07.6").starts_with("不得：1）诱导和干预金融机构的日常经营"));
    assert!(description("E07.7").contains("3）管理不到位"));
    assert!(description("E07.8").contains("4）发生金融风险未能有效处置"));

    let e03 = ok(catalog
        .get_evaluation_item(pb::GetEvaluationItemRequest { name: "E03".into() })
        .await)
    .item
    .unwrap_or_default();
    let e03_3 = &e03.tasks[2].check_details[0];
    assert_eq!(
        (
            e03_3.check_type.as_str(),
            e03_3.indicator_code.as_str(),
            e03_3.condition_labels.clone()
        ),
        (
            "indicator_passes",
            "B10",
            vec!["1".to_owned(), "2".to_owned()]
        )
    );
    assert_eq!(
        e03_3.metric_keys,
        [
            "monitoring.counties_covered",
            "monitoring.counties_total",
            "monitoring.township_extension_plan"
        ]
    );
    let e08 = ok(catalog
        .get_evaluation_item(pb::GetEvaluationItemRequest { name: "E08".into() })
        .await)
    .item
    .unwrap_or_default();
    assert!(e08.tasks[0].description.contains("低于万分之一"));
    assert_eq!(
        e08.tasks[2].checks,
        [
            "“已联通信用信息共享平台并归集共享信息的单位数”占“应联通的司法、行政部门和水电气热通信等公用企事业单位数”的比例 ≥ 100%"
        ]
    );
}

both_databases!(the_catalog_shows_its_rulebook_version_descriptions_and_checks);
