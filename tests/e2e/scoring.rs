//! ScoringService end to end: values pushed through the real server by the principals who may
//! push them, scorecards read back. SQLite always, PostgreSQL when `DATABASE_URL` names one.

use citycredit_tests::ok;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::scoring_service_client::ScoringServiceClient;
use citycredit_core::auth::Role;
use citycredit_tests::ingestion::{IngestionServer, flag_input, number_input, platform, principal};
use citycredit_tests::{Backend, both_databases};
use serde_json::Value as Json;
use tokio_stream::StreamExt;

const GOLDEN: &str = include_str!("../fixtures/golden/public-cases.json");

async fn submit_batch(
    s: &IngestionServer,
    who: &citycredit_core::auth::Principal,
    values: Vec<pb::SubmissionInput>,
) {
    if values.is_empty() {
        return;
    }
    let mut client = s.client(Some(who)).await;
    let req = pb::SubmitBatchRequest {
        idempotency_key: String::new(),
        validate_only: false,
        values,
    };
    ok(client.submit_batch(tokio_stream::iter([req])).await);
}

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

async fn every_public_golden_case_through_the_server(backend: Backend) {
    let cases: Vec<Json> = serde_json::from_str(GOLDEN).unwrap_or_else(|e| panic!("{e}"));
    let assessor = principal("assessor-1", Role::Assessor, None);
    let score_metrics = ["campaign.integrity_tour", "campaign.special_governance"];
    let s = IngestionServer::start(backend).await;
    // An administrator registers the joint reward and punishment domains the cases use.
    let jrp: BTreeSet<String> = cases
        .iter()
        .flat_map(|c| c["domain_flags"].as_object().into_iter().flatten())
        .flat_map(|(_, v)| v.as_array().into_iter().flatten().filter_map(Json::as_str))
        .filter(|d| d.starts_with("jrp-"))
        .map(str::to_owned)
        .collect();
    let mut registry = s.server.registry();
    for code in &jrp {
        ok(registry
            .register_domain(pb::RegisterDomainRequest {
                domain: Some(pb::RegisteredDomain {
                    domain_set: "joint_reward_punishment".into(),
                    code: code.clone(),
                    display_name: format!("联合奖惩领域 {code}"),
                    builtin: false,
                    display_name_en: String::new(),
                }),
            })
            .await);
    }
    let mut scoring = ScoringServiceClient::new(s.channel(Some(&platform())).await);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        // Each case in a year of its own on the same server, two years apart: a LEVEL value
        // carries forward up to 12 months (rulebook section 2, "Time"), so one case's values
        // must not reach the next case's year.
        let period = (2000 + 2 * i).to_string();
        let region = case["region"].as_str().unwrap_or("330800");
        let mut by_platform = Vec::new();
        let mut by_assessor = Vec::new();
        for (metric, v) in case["values"].as_object().into_iter().flatten() {
            let input = match v {
                Json::Bool(b) => bool_input(metric, region, &period, *b),
                Json::Number(n) => number_input(metric, region, &period, "", &n.to_string()),
                Json::String(t) => number_input(metric, region, &period, "", t),
                other => panic!("{metric}: {other}"),
            };
            if score_metrics.contains(&metric.as_str()) {
                by_assessor.push(input)
            } else {
                by_platform.push(input)
            }
        }
        for (metric, domains) in case["domain_flags"].as_object().into_iter().flatten() {
            for d in domains
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Json::as_str)
            {
                by_platform.push(flag_input(metric, region, &period, "", d, true));
            }
        }
        submit_batch(&s, &platform(), by_platform).await;
        submit_batch(&s, &assessor, by_assessor).await;

        let card = ok(scoring
            .get_scorecard(pb::GetScorecardRequest {
                region_code: region.into(),
                period: period.clone(),
                as_of: None,
                rule_version: String::new(),
                approved_only: false,
            })
            .await)
        .scorecard
        .unwrap_or_default();
        let name = case["name"].as_str().unwrap_or("?");
        let expect = &case["expect"];
        let outcome = card
            .outcome()
            .as_str_name()
            .trim_start_matches("OUTCOME_")
            .to_owned();
        if outcome != expect["outcome"] {
            failures.push(format!(
                "{name}: outcome {outcome} want {}",
                expect["outcome"]
            ));
        }
        if card.guiding_total != expect["guiding_total"] {
            failures.push(format!(
                "{name}: total {} want {}",
                card.guiding_total, expect["guiding_total"]
            ));
        }
        for (code, want) in expect["indicators"].as_object().into_iter().flatten() {
            let got = card
                .indicators
                .iter()
                .find(|r| &r.code == code)
                .unwrap_or_else(|| panic!("{name}: no {code}"));
            let status = got
                .status()
                .as_str_name()
                .trim_start_matches("INDICATOR_STATUS_")
                .to_owned();
            if status != want["status"] {
                failures.push(format!(
                    "{name}: {code} status {status} want {}",
                    want["status"]
                ));
            }
            if let Some(score) = want.get("score")
                && got.score != *score
            {
                failures.push(format!("{name}: {code} score {} want {score}", got.score));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}: {} mismatches:\n{}",
        s.name(),
        failures.len(),
        failures.join("\n")
    );
}

both_databases!(
    every_public_golden_case_through_the_server,
    flavor = "multi_thread",
    worker_threads = 2
);

async fn departments_and_counties_roll_up_with_attribution_corrections_and_as_of(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let env = principal("business-env-sys", Role::Department, Some("business-env"));
    let kecheng = principal("kecheng-sys", Role::Department, Some("gov-330802"));
    let qujiang = principal("qujiang-sys", Role::Department, Some("gov-330803"));
    let p = "2026-Q3";
    submit_batch(
        &s,
        &env,
        vec![
            number_input("service_halls.total", "330800", p, "", "10"),
            number_input("service_halls.connected", "330800", p, "", "10"),
        ],
    )
    .await;
    submit_batch(
        &s,
        &kecheng,
        vec![
            number_input("service_halls.total", "330802", p, "", "5"),
            number_input("service_halls.connected", "330802", p, "", "5"),
        ],
    )
    .await;
    submit_batch(
        &s,
        &qujiang,
        vec![
            number_input("service_halls.total", "330803", p, "", "3"),
            number_input("service_halls.connected", "330803", p, "", "2"),
        ],
    )
    .await;

    let mut scoring = ScoringServiceClient::new(s.channel(Some(&env)).await);
    let explain = |region: &str| pb::ExplainIndicatorRequest {
        region_code: region.into(),
        period: p.into(),
        indicator: "indicators/B04".into(),
        as_of: None,
        rule_version: String::new(),
        approved_only: false,
    };
    let city = ok(scoring.explain_indicator(explain("330800")).await);
    let b04 = city.result.clone().unwrap_or_default();
    assert_eq!(b04.status(), pb::IndicatorStatus::Fail, "{}", s.name());
    assert_eq!(b04.terms[0].computed, "0.944444"); // 17 / 18
    let total = b04
        .inputs
        .iter()
        .find(|i| i.metric_key == "service_halls.total")
        .unwrap_or_else(|| panic!("input"));
    assert_eq!(total.value, "18");
    let depts: BTreeSet<&str> = total
        .sources
        .iter()
        .map(|x| x.department_code.as_str())
        .collect();
    assert_eq!(
        depts,
        BTreeSet::from(["business-env", "gov-330802", "gov-330803"]),
        "per-department attribution"
    );
    assert_eq!(b04.gaps[0].change, "+1");
    assert_eq!(city.responsible[0].party, "departments/business-env");
    // The rule in Chinese (the default), naming the metric by its title, not its key.
    assert!(
        city.rule_summary
            .contains("“已接入信用信息共享平台和信用网站的政务服务大厅数”"),
        "{}",
        city.rule_summary
    );
    // The title in both languages.
    assert!(city.title.contains("政务服务"), "{}", city.title);
    assert!(
        !city.title_en.is_empty() && city.title_en.is_ascii(),
        "{}",
        city.title_en
    );

    let county = ok(scoring.explain_indicator(explain("330803")).await)
        .result
        .unwrap_or_default();
    assert_eq!(
        (county.status(), county.terms[0].computed.as_str()),
        (pb::IndicatorStatus::Fail, "0.666667")
    );
    let kecheng_card = ok(scoring.explain_indicator(explain("330802")).await)
        .result
        .unwrap_or_default();
    assert_eq!(kecheng_card.status(), pb::IndicatorStatus::Pass);

    // The county corrects its figure: the city passes B04; as of before, it failed.
    let before = prost_types::Timestamp::from(std::time::SystemTime::now());
    tokio::time::sleep(Duration::from_millis(20)).await;
    submit_batch(
        &s,
        &qujiang,
        vec![number_input(
            "service_halls.connected",
            "330803",
            p,
            "",
            "3",
        )],
    )
    .await;
    let now = ok(scoring.explain_indicator(explain("330800")).await)
        .result
        .unwrap_or_default();
    assert_eq!(now.status(), pb::IndicatorStatus::Pass, "{}", s.name());
    let mut old = explain("330800");
    old.as_of = Some(before);
    let then = ok(scoring.explain_indicator(old).await)
        .result
        .unwrap_or_default();
    assert_eq!(
        (then.status(), then.terms[0].computed.as_str()),
        (pb::IndicatorStatus::Fail, "0.944444")
    );

    // Ranking and batch views see the counties.
    let batch = ok(scoring
        .batch_get_scorecards(pb::BatchGetScorecardsRequest {
            region_codes: vec![],
            period: p.into(),
            as_of: None,
            rule_version: String::new(),
            approved_only: false,
        })
        .await)
    .scorecards;
    assert_eq!(batch.len(), 7);
    let ranks = ok(scoring
        .compare_counties(pb::CompareCountiesRequest { period: p.into() })
        .await)
    .rankings;
    assert_eq!(ranks.len(), 6);
}

both_databases!(departments_and_counties_roll_up_with_attribution_corrections_and_as_of);

#[tokio::test]
async fn samr_worklist_lists_its_duties_and_missing_metrics() {
    let s = IngestionServer::start(Backend::Sqlite).await;
    let mut scoring = ScoringServiceClient::new(s.channel(Some(&platform())).await);
    let list = ok(scoring
        .get_department_worklist(pb::GetDepartmentWorklistRequest {
            department: "departments/samr".into(),
            period: "2026".into(),
            region_code: String::new(),
        })
        .await);
    let lead: Vec<&str> = list
        .entries
        .iter()
        .filter(|e| e.role() == pb::ResponsibilityRole::Lead && e.via_group.is_empty())
        .map(|e| e.code.as_str())
        .collect();
    assert_eq!(lead, ["B01", "B02", "B06", "B07", "E08/uscc", "E10"]);
    let co: Vec<&str> = list
        .entries
        .iter()
        .filter(|e| e.role() == pb::ResponsibilityRole::Co && e.via_group.is_empty())
        .map(|e| e.code.as_str())
        .collect();
    assert_eq!(co, ["B08", "B09", "G12", "E02", "E04", "E05"]);
    let via: Vec<&str> = list
        .entries
        .iter()
        .filter(|e| !e.via_group.is_empty())
        .map(|e| e.code.as_str())
        .collect();
    assert_eq!(
        via,
        ["B03", "G11", "G15", "G18", "G19", "G20", "E09", "E12"]
    );
    // Where samr is named it has something to report or to get assessed.
    assert!(
        list.entries
            .iter()
            .filter(|e| e.via_group.is_empty())
            .all(|e| !e.missing_metrics.is_empty() || !e.awaiting_assessment.is_empty())
    );
    // Rulebook v2 (section 9): samr may report B03's government dishonesty events (through
    // city-departments) but is not expected to, so its worklist does not chase them.
    let b03 = list
        .entries
        .iter()
        .find(|e| e.code == "B03")
        .unwrap_or_else(|| panic!("B03"));
    assert!(b03.missing_metrics.is_empty(), "{:?}", b03.missing_metrics);
    let g20 = list
        .entries
        .iter()
        .find(|e| e.code == "G20")
        .unwrap_or_else(|| panic!("G20"));
    assert_eq!(
        g20.awaiting_assessment,
        ["campaign.integrity_tour", "campaign.special_governance"]
    );

    // After samr reports B01's figures they leave its list.
    let samr = principal("samr-sys", Role::Department, Some("samr"));
    submit_batch(
        &s,
        &samr,
        vec![
            number_input("uscc.stock_codes_total", "330800", "2026", "", "100"),
            number_input("uscc.stock_codes_converted", "330800", "2026", "", "90"),
        ],
    )
    .await;
    let list = ok(scoring
        .get_department_worklist(pb::GetDepartmentWorklistRequest {
            department: "samr".into(),
            period: "2026".into(),
            region_code: String::new(),
        })
        .await);
    let b01 = list
        .entries
        .iter()
        .find(|e| e.code == "B01")
        .unwrap_or_else(|| panic!("B01"));
    assert!(b01.missing_metrics.is_empty());
    assert_eq!(b01.status(), pb::IndicatorStatus::Fail);
    assert_eq!(b01.gaps[0].change, "+10");
    let report = ok(scoring
        .get_completeness_report(pb::GetCompletenessReportRequest {
            period: "2026".into(),
            region_code: String::new(),
        })
        .await);
    let row = report
        .departments
        .iter()
        .find(|d| d.department_code == "samr")
        .unwrap_or_else(|| panic!("samr row"));
    assert_eq!(
        row.reported,
        ["uscc.stock_codes_converted", "uscc.stock_codes_total"]
    );
}

async fn watch_delivers_the_new_scorecard_within_a_second_of_the_commit(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let mut scoring = ScoringServiceClient::new(s.channel(Some(&platform())).await);
    let mut watch = ok(scoring
        .watch_scorecard(pb::WatchScorecardRequest {
            region_code: "330800".into(),
            period: "2027".into(),
        })
        .await);
    let first = watch
        .next()
        .await
        .unwrap_or_else(|| panic!("first"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        first.scorecard.map(|c| c.outcome()),
        Some(pb::Outcome::Incomplete)
    );
    let kecheng = principal("kecheng-sys", Role::Department, Some("gov-330802"));
    let committed = Instant::now();
    // A county's value changes the city's scorecard too.
    submit_batch(
        &s,
        &kecheng,
        vec![
            number_input("service_halls.total", "330802", "2027", "", "4"),
            number_input("service_halls.connected", "330802", "2027", "", "1"),
        ],
    )
    .await;
    let update = tokio::time::timeout(Duration::from_secs(2), watch.next())
        .await
        .unwrap_or_else(|_| panic!("{}: no update", s.name()))
        .unwrap_or_else(|| panic!("closed"))
        .unwrap_or_else(|e| panic!("{e}"));
    let elapsed = committed.elapsed();
    let b04 = update
        .scorecard
        .unwrap_or_default()
        .indicators
        .into_iter()
        .find(|i| i.code == "B04")
        .unwrap_or_default();
    assert_eq!(b04.status(), pb::IndicatorStatus::Fail);
    assert!(
        elapsed < Duration::from_secs(1),
        "{}: update after {elapsed:?}",
        s.name()
    );
}

both_databases!(watch_delivers_the_new_scorecard_within_a_second_of_the_commit);
