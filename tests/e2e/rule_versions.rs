//! Rule versions side by side (issue 13, point 2) through the gateway, on SQLite and (with
//! `DATABASE_URL`) PostgreSQL: a server loads the built-in catalog (2019.2, primary) and the
//! draft fixture (tests/fixtures/catalogs/national-2026-draft.toml, "2026.1-draft": B06 at 90%
//! instead of 80%, a new B11, no G14); the same pushed values score under both;
//! CompareRuleVersions lists exactly the three differences; a scorecard asked with the draft
//! says so; an unknown version is refused with UNKNOWN_RULE_VERSION naming the loaded ones.

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::indicator_service_client::IndicatorServiceClient;
use citycredit::proto::v1::scoring_service_client::ScoringServiceClient;
use citycredit_tests::ingestion::{IngestionServer, number_input, platform};
use citycredit_tests::ok;
use citycredit_tests::{Backend, both_databases};
use tonic::Code;
use tonic_types::StatusExt;

const CITY: &str = "330800";
const DRAFT: &str = "2026.1-draft";
const PRIMARY: &str = "2019.2";

fn draft_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/catalogs/national-2026-draft.toml")
}

fn english<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "accept-language",
        "en".parse().unwrap_or_else(|e| panic!("{e}")),
    );
    r
}

async fn scorecard(
    scoring: &mut ScoringServiceClient<citycredit_tests::AuthChannel>,
    version: &str,
) -> Result<pb::Scorecard, tonic::Status> {
    Ok(scoring
        .get_scorecard(pb::GetScorecardRequest {
            region_code: CITY.into(),
            period: "2026".into(),
            as_of: None,
            rule_version: version.into(),
            approved_only: false,
        })
        .await?
        .into_inner()
        .scorecard
        .unwrap_or_default())
}

async fn two_versions_score_the_same_values(backend: Backend) {
    let s = IngestionServer::start_with(backend, |c| c.rule_versions = vec![draft_path()]).await;
    let mut submit = s.client(Some(&platform())).await;
    // 85 of 100 target entities submitted a credit report: B06 passes at 80% (2019.2) and
    // fails at 90% (the draft); 85 of 5000 entities in operation is 1.7%: B11 passes.
    ok(submit
        .submit_batch(tokio_stream::iter([pb::SubmitBatchRequest {
            idempotency_key: String::new(),
            validate_only: false,
            values: vec![
                number_input("credit_report.target_entities", CITY, "2026", "samr", "100"),
                number_input("credit_report.submitted", CITY, "2026", "samr", "85"),
                number_input("market_entities.in_operation", CITY, "2026", "samr", "5000"),
            ],
        }]))
        .await);

    let mut indicators = IndicatorServiceClient::new(s.channel(Some(&platform())).await);
    let listed = ok(indicators
        .list_rule_versions(pb::ListRuleVersionsRequest {})
        .await)
    .rule_versions;
    let versions: Vec<(&str, bool, &str)> = listed
        .iter()
        .map(|v| (v.version.as_str(), v.primary, v.guiding_max_total.as_str()))
        .collect();
    assert_eq!(
        versions,
        [(PRIMARY, true, "54.00"), (DRAFT, false, "50.00")],
        "{}",
        s.name()
    );

    let mut scoring = ScoringServiceClient::new(s.channel(Some(&platform())).await);
    let primary = scorecard(&mut scoring, "")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(primary.catalog_version, PRIMARY);
    assert!(!primary.failing_basic.contains(&"B06".to_owned()));
    let draft = scorecard(&mut scoring, DRAFT)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        draft.catalog_version, DRAFT,
        "the scorecard names its version"
    );
    assert_eq!(draft.guiding_max, "50.00");
    assert_eq!(draft.failing_basic, ["B06"]);
    let codes: Vec<&str> = draft.indicators.iter().map(|i| i.code.as_str()).collect();
    assert!(
        codes.contains(&"B11") && !codes.contains(&"G14"),
        "{codes:?}"
    );
    // The primary's cached card is not the draft's.
    let again = scorecard(&mut scoring, PRIMARY)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(again.catalog_version, PRIMARY);
    assert_eq!(again.guiding_max, "54.00");

    let explained = ok(scoring
        .explain_indicator(pb::ExplainIndicatorRequest {
            region_code: CITY.into(),
            period: "2026".into(),
            indicator: "B06".into(),
            as_of: None,
            rule_version: DRAFT.into(),
            approved_only: false,
        })
        .await);
    let term = &explained.result.unwrap_or_default().terms[0];
    assert_eq!(
        (term.threshold.as_str(), term.computed.as_str()),
        ("0.9", "0.850000")
    );
    // A what-if under the draft: 95 reports would pass its 90%.
    let what_if = ok(scoring
        .what_if(pb::WhatIfRequest {
            region_code: CITY.into(),
            period: "2026".into(),
            overrides: vec![pb::ValueOverride {
                metric_key: "credit_report.submitted".into(),
                value: Some(pb::MetricValue {
                    value: Some(pb::metric_value::Value::Number("95".into())),
                }),
                ..Default::default()
            }],
            rule_version: DRAFT.into(),
        })
        .await);
    assert_eq!(what_if.baseline.unwrap_or_default().catalog_version, DRAFT);
    let changed: Vec<(&str, i32, i32)> = what_if
        .differences
        .iter()
        .map(|d| (d.code.as_str(), d.before_status, d.after_status))
        .collect();
    assert_eq!(
        changed,
        [(
            "B06",
            pb::IndicatorStatus::Fail as i32,
            pb::IndicatorStatus::Pass as i32
        )]
    );
    let b11_in_primary = scoring
        .explain_indicator(pb::ExplainIndicatorRequest {
            region_code: CITY.into(),
            period: "2026".into(),
            indicator: "B11".into(),
            as_of: None,
            rule_version: String::new(),
            approved_only: false,
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("B11 is not in 2019.2"));
    assert_eq!(b11_in_primary.code(), Code::NotFound);

    let compared = ok(scoring
        .compare_rule_versions(english(pb::CompareRuleVersionsRequest {
            region_code: CITY.into(),
            period: "2026".into(),
            version_a: PRIMARY.into(),
            version_b: DRAFT.into(),
            as_of: None,
        }))
        .await);
    let a = compared.a.unwrap_or_default();
    let b = compared.b.unwrap_or_default();
    assert_eq!((a.version.as_str(), b.version.as_str()), (PRIMARY, DRAFT));
    assert_eq!(
        (a.guiding_max.as_str(), b.guiding_max.as_str()),
        ("54.00", "50.00")
    );
    assert!(a.failing_basic.is_empty(), "{:?}", a.failing_basic);
    assert_eq!(b.failing_basic, ["B06"]);
    assert_eq!(b.outcome, pb::Outcome::Vetoed as i32);
    let diffs: Vec<(&str, i32)> = compared
        .differences
        .iter()
        .map(|d| (d.code.as_str(), d.presence))
        .collect();
    assert_eq!(
        diffs,
        [
            ("B06", pb::VersionPresence::Both as i32),
            ("G14", pb::VersionPresence::OnlyA as i32),
            ("B11", pb::VersionPresence::OnlyB as i32),
        ],
        "{}: exactly the fixture's differences",
        s.name()
    );
    let b06 = &compared.differences[0];
    assert_eq!(b06.status_a, pb::IndicatorStatus::Pass as i32);
    assert_eq!(b06.status_b, pb::IndicatorStatus::Fail as i32);
    assert_eq!(b06.terms.len(), 1);
    assert_eq!(
        (
            b06.terms[0].threshold_a.as_str(),
            b06.terms[0].threshold_b.as_str()
        ),
        ("0.8", "0.9")
    );
    assert_ne!(b06.rule_a, b06.rule_b);
    assert!(
        b06.description.contains("status PASS -> FAIL"),
        "{}",
        b06.description
    );
    assert_eq!(compared.differences[1].max_score_a, "4.00");
    assert_eq!(
        compared.differences[2].status_b,
        pb::IndicatorStatus::Pass as i32
    );

    // Unknown versions: the reason and the loaded versions.
    for refused in [
        scorecard(&mut scoring, "2030.1").await.err(),
        scoring
            .compare_rule_versions(pb::CompareRuleVersionsRequest {
                region_code: CITY.into(),
                period: "2026".into(),
                version_a: PRIMARY.into(),
                version_b: "2030.1".into(),
                as_of: None,
            })
            .await
            .err(),
    ] {
        let e = refused.unwrap_or_else(|| panic!("an unknown version was scored"));
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        let info = e
            .get_error_details()
            .error_info()
            .cloned()
            .unwrap_or_else(|| panic!("no ErrorInfo: {e:?}"));
        assert_eq!(info.reason, "UNKNOWN_RULE_VERSION");
        assert_eq!(
            info.metadata.get("loaded_versions").map(String::as_str),
            Some("2019.2,2026.1-draft")
        );
        assert_eq!(
            info.metadata.get("rule_version").map(String::as_str),
            Some("2030.1")
        );
    }
    // Both versions are required.
    let e = scoring
        .compare_rule_versions(pb::CompareRuleVersionsRequest {
            region_code: CITY.into(),
            period: "2026".into(),
            version_a: String::new(),
            version_b: DRAFT.into(),
            as_of: None,
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("version_a is required"));
    assert_eq!(e.code(), Code::InvalidArgument);
}

both_databases!(two_versions_score_the_same_values);

/// A server with a second catalog of the primary's version does not start.
#[tokio::test]
async fn a_catalog_version_loaded_twice_stops_the_start() {
    let builtin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/catalog/national-2019.toml");
    let server =
        citycredit_tests::TestServer::start_with(|c| c.rule_versions = vec![builtin]).await;
    let e = server
        .stop()
        .await
        .err()
        .unwrap_or_else(|| panic!("started with two catalogs of version 2019.2"));
    assert!(e.to_string().contains("loaded already"), "{e}");
}
