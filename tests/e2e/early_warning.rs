//! The veto-risk early warning (issue 13, point 6) through the gateway, on SQLite and (with
//! `DATABASE_URL`) PostgreSQL: monthly values pushed for January to June 2026, history read
//! through June, the review in December.
//!
//! - B05 (1), 双公示 licences: 99.5% falling by 0.5 points a month to 97% in June (FLOW months):
//!   failing now, projected to 94% by December; 市营商办 is 300 records short.
//! - B08, repair training: 60% falling to 51% (LEVEL months): passing now, projected below 50%
//!   by December: at risk, nobody short yet.
//! - B07, exits: 31% rising to 36%: not at risk.
//! - B06, credit reports: two months only: "too few points", no trend; failing now.
//! - As of an instant before B06 was pushed, B06 has no warning.

use citycredit_tests::ok;
use std::time::{Duration, SystemTime};

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::scoring_service_client::ScoringServiceClient;
use citycredit_tests::ingestion::{IngestionServer, number_input, platform, samr_veto_trend};
use citycredit_tests::{Backend, both_databases};
use tonic::Code;

const CITY: &str = "330800";
const MONTHS: [&str; 6] = [
    "2026-01", "2026-02", "2026-03", "2026-04", "2026-05", "2026-06",
];

async fn push(s: &IngestionServer, values: Vec<pb::SubmissionInput>) {
    let mut client = s.client(Some(&platform())).await;
    ok(client
        .submit_batch(tokio_stream::iter([pb::SubmitBatchRequest {
            idempotency_key: String::new(),
            validate_only: false,
            values,
        }]))
        .await);
}

fn request(
    as_of: Option<prost_types::Timestamp>,
) -> tonic::Request<pb::GetVetoRiskWarningsRequest> {
    let mut r = tonic::Request::new(pb::GetVetoRiskWarningsRequest {
        region_code: CITY.into(),
        review_date: "2026-12-15".into(),
        history_months: 6,
        last_month: "2026-06".into(),
        as_of,
        rule_version: String::new(),
    });
    r.metadata_mut().insert(
        "accept-language",
        "en".parse().unwrap_or_else(|e| panic!("{e}")),
    );
    r
}

fn find<'a>(
    w: &'a [pb::VetoRiskWarning],
    code: &str,
    label: &str,
) -> Option<&'a pb::VetoRiskWarning> {
    w.iter()
        .find(|x| x.indicator_code == code && x.condition == label)
}

async fn trends_are_flagged_before_the_review(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let mut values = samr_veto_trend(CITY, &MONTHS);
    for (i, month) in MONTHS.iter().enumerate() {
        let i = i64::try_from(i).unwrap_or_default();
        let licences = "double_publicity.licenses_total";
        values.push(number_input(licences, CITY, month, "business-env", "10000"));
        values.push(number_input(
            "double_publicity.licenses_reported",
            CITY,
            month,
            "business-env",
            &(9950 - 50 * i).to_string(),
        ));
    }
    push(&s, values).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before_b06 = prost_types::Timestamp::from(SystemTime::now());
    tokio::time::sleep(Duration::from_millis(20)).await;
    push(
        &s,
        ["2026-05", "2026-06"]
            .iter()
            .flat_map(|m| {
                [
                    number_input("credit_report.target_entities", CITY, m, "samr", "100"),
                    number_input("credit_report.submitted", CITY, m, "samr", "70"),
                ]
            })
            .collect(),
    )
    .await;

    let mut scoring = ScoringServiceClient::new(s.channel(Some(&platform())).await);
    let r = ok(scoring.get_veto_risk_warnings(request(None)).await);
    assert_eq!(r.months, MONTHS, "{}", s.name());
    assert_eq!(r.rule_version, "2019.2");
    assert!(r.method.contains("least squares"), "{}", r.method);
    let w = &r.warnings;
    let codes: Vec<String> = w
        .iter()
        .map(|x| format!("{}({}) {}", x.indicator_code, x.condition, x.at_risk))
        .collect();
    // Only conditions with monthly figures, at-risk ones first.
    assert_eq!(
        codes,
        ["B05(1) true", "B06(1) true", "B08(1) true", "B07(1) false"],
        "{}",
        s.name()
    );

    let b05 = find(w, "B05", "1").unwrap_or_else(|| panic!("no B05"));
    assert_eq!(b05.trend, pb::TrendStatus::Fitted as i32);
    assert_eq!(b05.points, 6);
    assert_eq!(b05.current, "0.970000");
    assert_eq!(b05.current_period, "2026-06");
    assert!(b05.current_failing);
    assert_eq!(
        b05.projected, "0.940000",
        "a perfect line: 0.995 - 0.005 x 11"
    );
    assert_eq!(b05.slope_per_month, "-0.005000");
    assert_eq!(b05.prediction_standard_error, "0.000000");
    assert_eq!(b05.threshold, "1");
    assert_eq!(b05.shortfall, "300");
    assert_eq!(b05.shortfall_metric, "double_publicity.licenses_reported");
    assert_eq!(b05.departments.len(), 1);
    let dept = &b05.departments[0];
    assert_eq!(
        (
            dept.department_code.as_str(),
            dept.display_name.as_str(),
            dept.shortfall.as_str()
        ),
        ("business-env", "市营商办", "300")
    );
    assert!(
        b05.description.contains("市营商办 is 300 short")
            && b05.description.contains("trending to 94.00%"),
        "{}",
        b05.description
    );
    assert_eq!(b05.history.len(), 6);

    let b08 = find(w, "B08", "1").unwrap_or_else(|| panic!("no B08"));
    assert!(!b08.current_failing, "51% meets 50% now");
    assert!(b08.at_risk, "but trends below it by December");
    assert!(b08.projected.as_str() < "0.500000", "{}", b08.projected);
    assert_ne!(
        b08.prediction_standard_error, "0.000000",
        "not a perfect line"
    );
    assert_eq!(b08.shortfall, "0");
    assert_eq!(b08.departments[0].department_code, "samr");

    let b07 = find(w, "B07", "1").unwrap_or_else(|| panic!("no B07"));
    assert!(!b07.at_risk && !b07.current_failing);
    assert!(
        b07.slope_per_month.starts_with('+'),
        "{}",
        b07.slope_per_month
    );

    let b06 = find(w, "B06", "1").unwrap_or_else(|| panic!("no B06"));
    assert_eq!(b06.trend, pb::TrendStatus::TooFewPoints as i32);
    assert_eq!(b06.points, 2);
    assert!(b06.projected.is_empty() && b06.slope_per_month.is_empty());
    assert!(b06.current_failing && b06.at_risk);
    assert_eq!(b06.shortfall, "10", "80 of 100 needed, 70 reported");
    assert!(
        b06.description.contains("too few points"),
        "{}",
        b06.description
    );

    // As the values stood before B06 was pushed.
    let earlier = ok(scoring
        .get_veto_risk_warnings(request(Some(before_b06)))
        .await);
    assert!(find(&earlier.warnings, "B06", "1").is_none());
    assert!(find(&earlier.warnings, "B05", "1").is_some());

    // Chinese by default.
    let mut zh = request(None);
    zh.metadata_mut().remove("accept-language");
    let zh = ok(scoring.get_veto_risk_warnings(zh).await);
    let b05 = find(&zh.warnings, "B05", "1").unwrap_or_else(|| panic!("no B05"));
    assert!(
        b05.description.contains("市营商办 还差 300"),
        "{}",
        b05.description
    );

    // Without a review date, the cycle covering the last month gives it (the seeded
    // 2026-demonstration: 2027-03-31, projected to 2027-03).
    let mut from_cycle = request(None);
    from_cycle.get_mut().review_date = String::new();
    let from_cycle = ok(scoring.get_veto_risk_warnings(from_cycle).await);
    assert_eq!(
        (
            from_cycle.cycle_id.as_str(),
            from_cycle.review_date.as_str()
        ),
        ("2026-demonstration", "2027-03-31")
    );
    assert_eq!(from_cycle.rule_version, "2019.2");
    assert!(find(&from_cycle.warnings, "B05", "1").is_some());
    assert_eq!(
        ok(scoring.get_veto_risk_warnings(request(None)).await).cycle_id,
        "2026-demonstration",
        "a review date asked for still names the covering cycle"
    );

    // A review date is required where no cycle covers the history, and must be a day not
    // before it.
    for (date, last) in [
        ("", "2024-06"),
        ("2026-02-30", "2026-06"),
        ("2026-05-01", "2026-06"),
    ] {
        let mut bad = request(None);
        bad.get_mut().review_date = date.into();
        bad.get_mut().last_month = last.into();
        let e = scoring
            .get_veto_risk_warnings(bad)
            .await
            .err()
            .unwrap_or_else(|| panic!("{date} accepted"));
        assert_eq!(e.code(), Code::InvalidArgument, "{date}: {e:?}");
    }
    let mut bad = request(None);
    bad.get_mut().history_months = 37;
    let e = scoring
        .get_veto_risk_warnings(bad)
        .await
        .err()
        .unwrap_or_else(|| panic!("37 months accepted"));
    assert_eq!(e.code(), Code::InvalidArgument);
}

both_databases!(trends_are_flagged_before_the_review);
