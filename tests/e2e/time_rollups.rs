//! Rulebook v2 time (section 2, "Time") through the real gRPC API, on SQLite and (with
//! `DATABASE_URL`) PostgreSQL: monthly values of a FLOW metric roll up into their quarter and
//! year, with PARTIAL_PERIOD naming the months missing; a LEVEL value carries forward up to 12
//! months, marked CARRIED_FORWARD with its period; `as_of` applies to every step; cached
//! scorecards and WatchScorecard for a year follow a change to one of its months.

use citycredit_tests::ok;
use std::time::Duration;

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::scoring_service_client::ScoringServiceClient;
use citycredit_core::auth::{Principal, Role};
use citycredit_tests::ingestion::{IngestionServer, number_input, platform, principal};
use citycredit_tests::{Backend, both_databases};
use tokio_stream::StreamExt;

const KECHENG: &str = "330802";
const CITY: &str = "330800";
const TOTAL: &str = "double_publicity.licenses_total";
const REPORTED: &str = "double_publicity.licenses_reported";
const RANK: &str = "monitoring.city_rank";

fn kecheng() -> Principal {
    principal("kecheng-sys", Role::Department, Some("gov-330802"))
}

fn business_env() -> Principal {
    principal("business-env-sys", Role::Department, Some("business-env"))
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

async fn scorecard(
    s: &IngestionServer,
    region: &str,
    period: &str,
    as_of: Option<prost_types::Timestamp>,
) -> pb::Scorecard {
    let mut scoring = ScoringServiceClient::new(s.channel(Some(&platform())).await);
    ok(scoring
        .get_scorecard(pb::GetScorecardRequest {
            region_code: region.into(),
            period: period.into(),
            as_of,
            rule_version: String::new(),
            approved_only: false,
        })
        .await)
    .scorecard
    .unwrap_or_else(|| panic!("no scorecard"))
}

async fn aggregates(
    s: &IngestionServer,
    region: &str,
    period: &str,
) -> pb::QueryAggregatesResponse {
    let mut client = s.client(Some(&platform())).await;
    ok(client
        .query_aggregates(pb::QueryAggregatesRequest {
            region_code: region.into(),
            period: period.into(),
            as_of: None,
            approved_only: false,
        })
        .await)
}

fn figure<'a>(agg: &'a pb::QueryAggregatesResponse, key: &str) -> Option<&'a pb::AggregatedMetric> {
    agg.metrics.iter().find(|m| m.metric_key == key)
}

fn number(m: Option<&pb::AggregatedMetric>) -> Option<String> {
    match m?.value.as_ref()?.value.as_ref()? {
        pb::metric_value::Value::Number(n) => Some(n.clone()),
        _ => None,
    }
}

/// An indicator's input for `metric`, when it has a value (an input not reported is listed with
/// an empty value).
fn input<'a>(card: &'a pb::Scorecard, code: &str, metric: &str) -> Option<&'a pb::IndicatorInput> {
    card.indicators
        .iter()
        .find(|i| i.code == code)
        .unwrap_or_else(|| panic!("no {code}"))
        .inputs
        .iter()
        .find(|i| i.metric_key == metric && !i.value.is_empty())
}

fn months(year: u16, ms: impl IntoIterator<Item = u8>) -> Vec<String> {
    ms.into_iter().map(|m| format!("{year}-{m:02}")).collect()
}

async fn flow_months_roll_up_into_quarters_and_the_year(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    // Twelve monthly totals (1 + 2 + ... + 12 = 78 thousand) and five months reported.
    let mut values: Vec<pb::SubmissionInput> = (1u8..=12)
        .map(|m| {
            let v = (u32::from(m) * 1000).to_string();
            number_input(TOTAL, KECHENG, &format!("2026-{m:02}"), "", &v)
        })
        .collect();
    for m in [1u8, 2, 3, 5, 8] {
        let v = (u32::from(m) * 1000).to_string();
        values.push(number_input(
            REPORTED,
            KECHENG,
            &format!("2026-{m:02}"),
            "",
            &v,
        ));
    }
    submit(&s, &kecheng(), values).await;

    // QueryAggregates for the year: the sum, every month behind it, each with its period.
    let agg = aggregates(&s, KECHENG, "2026").await;
    let total = figure(&agg, TOTAL);
    assert_eq!(number(total), Some("78000".into()), "{}", s.name());
    let total = total.unwrap_or_else(|| panic!("total"));
    let mut source_periods: Vec<String> = total.sources.iter().map(|x| x.period.clone()).collect();
    source_periods.sort();
    assert_eq!(source_periods, months(2026, 1..=12));
    assert!(total.markers.is_empty(), "{:?}", total.markers);
    // Five of twelve months: the sum so far, PARTIAL_PERIOD naming the other seven.
    let reported = figure(&agg, REPORTED);
    assert_eq!(number(reported), Some("19000".into()));
    let reported = reported.unwrap_or_else(|| panic!("reported"));
    assert_eq!(reported.markers.len(), 1, "{:?}", reported.markers);
    let marker = &reported.markers[0];
    assert_eq!(marker.marker, "PARTIAL_PERIOD");
    assert_eq!(marker.region_code, KECHENG);
    assert_eq!(marker.periods, months(2026, [4, 6, 7, 9, 10, 11, 12]));

    // The city sees the county's roll-up; a quarter sums its own months; a month its own value.
    let city = aggregates(&s, CITY, "2026").await;
    assert_eq!(number(figure(&city, TOTAL)), Some("78000".into()));
    let q2 = aggregates(&s, KECHENG, "2026-Q2").await;
    assert_eq!(number(figure(&q2, TOTAL)), Some("15000".into()));
    let q2_reported = figure(&q2, REPORTED).unwrap_or_else(|| panic!("Q2 reported"));
    assert_eq!(number(Some(q2_reported)), Some("5000".into()));
    assert_eq!(q2_reported.markers[0].periods, ["2026-04", "2026-06"]);
    let may = aggregates(&s, KECHENG, "2026-05").await;
    assert_eq!(number(figure(&may, TOTAL)), Some("5000".into()));
    assert!(figure(&may, TOTAL).is_some_and(|m| m.markers.is_empty()));
    // Nothing of 2026 reaches 2025's figures; a FLOW value never carries forward.
    let before = aggregates(&s, KECHENG, "2025").await;
    assert!(figure(&before, TOTAL).is_none());
    let after = aggregates(&s, KECHENG, "2027-01").await;
    assert!(
        figure(&after, TOTAL).is_none(),
        "{:?}",
        figure(&after, TOTAL)
    );

    // The scorecard's inputs for the year: B05's ratio uses the sums, the partial one marked.
    let card = scorecard(&s, KECHENG, "2026", None).await;
    let t = input(&card, "B05", TOTAL).unwrap_or_else(|| panic!("B05 total input"));
    assert_eq!(t.value, "78000");
    assert_eq!(t.sources.len(), 12);
    let r = input(&card, "B05", REPORTED).unwrap_or_else(|| panic!("B05 reported input"));
    assert_eq!(r.value, "19000");
    assert_eq!(r.markers.len(), 1);
    assert_eq!(r.markers[0].marker, "PARTIAL_PERIOD");
    assert_eq!(r.markers[0].periods.len(), 7);

    // ExplainIndicator shows the same inputs and markers.
    let mut scoring = ScoringServiceClient::new(s.channel(Some(&platform())).await);
    let explained = ok(scoring
        .explain_indicator(pb::ExplainIndicatorRequest {
            region_code: KECHENG.into(),
            period: "2026".into(),
            indicator: "B05".into(),
            as_of: None,
            rule_version: String::new(),
            approved_only: false,
        })
        .await)
    .result
    .unwrap_or_default();
    let r = explained
        .inputs
        .iter()
        .find(|i| i.metric_key == REPORTED)
        .unwrap_or_else(|| panic!("explained input"));
    assert_eq!(r.markers.len(), 1);

    // The county government's worklist for the year no longer chases the monthly metrics.
    let worklist = ok(scoring
        .get_department_worklist(pb::GetDepartmentWorklistRequest {
            department: "gov-330802".into(),
            period: "2026".into(),
            region_code: KECHENG.into(),
        })
        .await);
    let b05 = worklist
        .entries
        .iter()
        .find(|e| e.code == "B05")
        .unwrap_or_else(|| panic!("B05 on the worklist: {worklist:?}"));
    assert!(
        !b05.missing_metrics
            .iter()
            .any(|m| m == TOTAL || m == REPORTED),
        "{:?}",
        b05.missing_metrics
    );
    let last_year = ok(scoring
        .get_department_worklist(pb::GetDepartmentWorklistRequest {
            department: "gov-330802".into(),
            period: "2025".into(),
            region_code: KECHENG.into(),
        })
        .await);
    let b05 = last_year.entries.iter().find(|e| e.code == "B05");
    assert!(
        b05.is_some_and(|e| e.missing_metrics.iter().any(|m| m == TOTAL)),
        "2025 has none of 2026's months: {b05:?}"
    );

    // The scorecard is cached; a change to one month reaches the cached year at once.
    submit(
        &s,
        &kecheng(),
        vec![number_input(REPORTED, KECHENG, "2026-04", "", "4000")],
    )
    .await;
    let card = scorecard(&s, KECHENG, "2026", None).await;
    let r = input(&card, "B05", REPORTED).unwrap_or_else(|| panic!("input"));
    assert_eq!(r.value, "23000");
    assert_eq!(r.markers[0].periods, months(2026, [6, 7, 9, 10, 11, 12]));

    // A value reported for the year itself comes first: no sum, no marker.
    submit(
        &s,
        &kecheng(),
        vec![number_input(REPORTED, KECHENG, "2026", "", "78000")],
    )
    .await;
    let card = scorecard(&s, KECHENG, "2026", None).await;
    let r = input(&card, "B05", REPORTED).unwrap_or_else(|| panic!("input"));
    assert_eq!(r.value, "78000");
    assert!(r.markers.is_empty());
    assert_eq!(r.sources.len(), 1);
    assert_eq!(r.sources[0].period, "2026");
}

both_databases!(flow_months_roll_up_into_quarters_and_the_year);

async fn level_values_carry_forward_twelve_months_marked_with_their_period(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let before = scorecard(&s, CITY, "2026-05", None).await;
    assert!(input(&before, "B10", RANK).is_none());
    let cut = prost_types::Timestamp::from(std::time::SystemTime::now());
    tokio::time::sleep(Duration::from_millis(5)).await;
    submit(
        &s,
        &business_env(),
        vec![number_input(RANK, CITY, "2025", "", "42")],
    )
    .await;

    // The 2025 rank reaches May 2026, marked with where it came from.
    let card = scorecard(&s, CITY, "2026-05", None).await;
    let rank = input(&card, "B10", RANK).unwrap_or_else(|| panic!("{}: rank", s.name()));
    assert_eq!(rank.value, "42");
    assert_eq!(rank.markers.len(), 1, "{:?}", rank.markers);
    assert_eq!(rank.markers[0].marker, "CARRIED_FORWARD");
    assert_eq!(rank.markers[0].periods, ["2025"]);
    assert_eq!(rank.markers[0].department_code, "business-env");
    assert_eq!(rank.sources[0].period, "2025");
    // Up to December 2026 (12 months after the end of 2025), not January 2027.
    let dec = scorecard(&s, CITY, "2026-12", None).await;
    assert!(input(&dec, "B10", RANK).is_some());
    let jan = scorecard(&s, CITY, "2027-01", None).await;
    assert!(input(&jan, "B10", RANK).is_none());
    // As of before the submission, nothing reaches May either.
    let then = scorecard(&s, CITY, "2026-05", Some(cut)).await;
    assert!(input(&then, "B10", RANK).is_none());

    // A Q2 value ends after May, so May keeps the 2025 rank; June takes Q2's, marked.
    submit(
        &s,
        &business_env(),
        vec![number_input(RANK, CITY, "2026-Q2", "", "37")],
    )
    .await;
    let may = scorecard(&s, CITY, "2026-05", None).await;
    assert_eq!(
        input(&may, "B10", RANK).map(|i| i.value.as_str()),
        Some("42")
    );
    let june = scorecard(&s, CITY, "2026-06", None).await;
    let rank = input(&june, "B10", RANK).unwrap_or_else(|| panic!("june rank"));
    assert_eq!(rank.value, "37");
    assert_eq!(rank.markers[0].periods, ["2026-Q2"]);
    // For the year, Q2 is inside it: the latest value inside the year counts, unmarked.
    let year = aggregates(&s, CITY, "2026").await;
    let rank = figure(&year, RANK).unwrap_or_else(|| panic!("year rank"));
    assert_eq!(number(Some(rank)), Some("37".into()));
    assert!(rank.markers.is_empty(), "{:?}", rank.markers);
}

both_databases!(level_values_carry_forward_twelve_months_marked_with_their_period);

async fn watching_a_year_fires_when_one_of_its_months_changes(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let mut scoring = ScoringServiceClient::new(s.channel(Some(&platform())).await);
    let mut watch = ok(scoring
        .watch_scorecard(pb::WatchScorecardRequest {
            region_code: CITY.into(),
            period: "2026".into(),
        })
        .await);
    let first = watch
        .next()
        .await
        .unwrap_or_else(|| panic!("first"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(input(&first.scorecard.unwrap_or_default(), "B05", TOTAL).is_none());
    // A month at a county: the city's year changes.
    submit(
        &s,
        &kecheng(),
        vec![number_input(TOTAL, KECHENG, "2026-03", "", "300")],
    )
    .await;
    let update = tokio::time::timeout(Duration::from_secs(2), watch.next())
        .await
        .unwrap_or_else(|_| panic!("{}: no update for a month of the year", s.name()))
        .unwrap_or_else(|| panic!("closed"))
        .unwrap_or_else(|e| panic!("{e}"));
    let card = update.scorecard.unwrap_or_default();
    let total = input(&card, "B05", TOTAL).unwrap_or_else(|| panic!("input"));
    assert_eq!(total.value, "300");
    assert_eq!(total.markers[0].marker, "PARTIAL_PERIOD");
    assert_eq!(total.markers[0].periods.len(), 11);
    // A month of another year does not wake the watch.
    submit(
        &s,
        &kecheng(),
        vec![number_input(TOTAL, KECHENG, "2027-01", "", "5")],
    )
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(600), watch.next())
            .await
            .is_err(),
        "a change to 2027-01 must not update the 2026 watch"
    );
}

both_databases!(watching_a_year_fires_when_one_of_its_months_changes);
