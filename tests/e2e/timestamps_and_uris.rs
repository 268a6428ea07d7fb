//! Issue 10, point 6 (the ingestion and scoring parts), through the real server on SQLite and
//! PostgreSQL: a timestamp outside 0001-01-01..9999-12-31 or with invalid nanos is
//! INVALID_ARGUMENT naming the field, never echoed back; evidence URIs are stored normalised,
//! and those with control characters, surrounding spaces or credentials are refused.

use tonic::{Code, Status};

use citycredit::proto::v1 as pb;
use citycredit_tests::ingestion::*;
use citycredit_tests::{Backend, both_databases};

fn ts(seconds: i64, nanos: i32) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos }
}

/// 10000-01-01T00:00:00Z.
const YEAR_10000: i64 = 253_402_300_800;

async fn timestamps_beyond_year_9999_are_refused_not_echoed(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let ch = s.channel(Some(&admin())).await;
    let mut sub =
        pb::metric_submission_service_client::MetricSubmissionServiceClient::new(ch.clone());
    let mut scoring = pb::scoring_service_client::ScoringServiceClient::new(ch.clone());
    let mut registry =
        pb::department_registry_service_client::DepartmentRegistryServiceClient::new(ch);
    for bad in [
        ts(YEAR_10000, 0),
        ts(i64::MAX, 0),
        ts(-62_135_596_801, 0),
        ts(0, -1),
        ts(0, 1_000_000_000),
    ] {
        let calls: Vec<(&str, Result<(), Status>)> = vec![
            (
                "as_of",
                sub.query_aggregates(pb::QueryAggregatesRequest {
                    region_code: "330800".into(),
                    period: "2026".into(),
                    as_of: Some(bad),
                    approved_only: false,
                })
                .await
                .map(drop),
            ),
            (
                "start_time",
                sub.list_submissions(pb::ListSubmissionsRequest {
                    start_time: Some(bad),
                    ..Default::default()
                })
                .await
                .map(drop),
            ),
            (
                "end_time",
                sub.list_submissions(pb::ListSubmissionsRequest {
                    end_time: Some(bad),
                    ..Default::default()
                })
                .await
                .map(drop),
            ),
            (
                "as_of",
                scoring
                    .get_scorecard(pb::GetScorecardRequest {
                        region_code: "330800".into(),
                        period: "2026".into(),
                        as_of: Some(bad),
                        rule_version: String::new(),
                        approved_only: false,
                    })
                    .await
                    .map(drop),
            ),
            (
                "as_of",
                scoring
                    .batch_get_scorecards(pb::BatchGetScorecardsRequest {
                        region_codes: vec!["330800".into()],
                        period: "2026".into(),
                        as_of: Some(bad),
                        rule_version: String::new(),
                        approved_only: false,
                    })
                    .await
                    .map(drop),
            ),
            (
                "as_of",
                scoring
                    .explain_indicator(pb::ExplainIndicatorRequest {
                        region_code: "330800".into(),
                        period: "2026".into(),
                        indicator: "indicators/B01".into(),
                        as_of: Some(bad),
                        rule_version: String::new(),
                        approved_only: false,
                    })
                    .await
                    .map(drop),
            ),
            (
                "expire_time",
                registry
                    .create_api_key(pb::CreateApiKeyRequest {
                        principal: "principals/admin-1".into(),
                        expire_time: Some(bad),
                    })
                    .await
                    .map(drop),
            ),
        ];
        for (field, result) in calls {
            let e = result
                .err()
                .unwrap_or_else(|| panic!("{name}: {field} {bad:?} accepted"));
            assert_eq!(e.code(), Code::InvalidArgument, "{name}: {field}: {e:?}");
            assert_eq!(violation_fields(&e), [field], "{name}: {e:?}");
            assert!(
                e.message().contains("9999-12-31"),
                "{name}: {}",
                e.message()
            );
        }
    }
    // The edges of the range are fine.
    for good in [ts(253_402_300_799, 999_999_999), ts(-62_135_596_800, 0)] {
        sub.query_aggregates(pb::QueryAggregatesRequest {
            region_code: "330800".into(),
            period: "2026".into(),
            as_of: Some(good),
            approved_only: false,
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {good:?}: {e}"));
    }
}

both_databases!(timestamps_beyond_year_9999_are_refused_not_echoed);

async fn evidence_uris_are_stored_normalised_and_hostile_ones_refused(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let mut c = s.client(Some(&platform())).await;
    let with_uri = |uri: &str| pb::SubmitValueRequest {
        value: Some(pb::SubmissionInput {
            evidence_uri: uri.to_owned(),
            ..number_input("uscc.codes_total", "330802", "2026", "samr", "1")
        }),
        idempotency_key: String::new(),
        validate_only: false,
    };
    for (bad, why) in [
        (" https://example.org/r.pdf", "spaces"),
        ("https://example.org/r.pdf\t", "U+0009"),
        ("https://example.org/r.pdf ", "spaces"),
        ("https://example.org/a\nb.pdf", "U+000A"),
        ("https://example.org/\u{1b}[31mred.pdf", "U+001B"),
        ("https://user:secret@example.org/r.pdf", "password"),
        ("https://user@example.org/r.pdf", "user name"),
    ] {
        let e = c
            .submit_value(with_uri(bad))
            .await
            .err()
            .unwrap_or_else(|| panic!("{name}: {bad:?} stored"));
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {bad:?}");
        assert_eq!(
            violation_fields(&e),
            ["value.evidence_uri"],
            "{name}: {bad:?}"
        );
        assert!(
            e.message().contains(why),
            "{name}: {bad:?}: {}",
            e.message()
        );
        assert!(!e.message().contains("secret"), "{name}: {}", e.message());
    }
    for (given, stored) in [
        (
            "HTTPS://Example.ORG:443/a b.pdf?x=1#p2",
            "https://example.org/a%20b.pdf?x=1#p2",
        ),
        ("http://example.org", "http://example.org/"),
    ] {
        let r = c
            .submit_value(with_uri(given))
            .await
            .unwrap_or_else(|e| panic!("{name}: {given:?}: {e}"))
            .into_inner();
        assert_eq!(
            r.submission
                .and_then(|x| x.input)
                .map(|i| i.evidence_uri)
                .as_deref(),
            Some(stored),
            "{name}"
        );
    }
}

both_databases!(evidence_uris_are_stored_normalised_and_hostile_ones_refused);
