//! Scorecards and the review cycle through the real gRPC API, on SQLite and (with
//! `DATABASE_URL`) PostgreSQL: a 2026 scorecard names the seeded cycle `2026-demonstration`
//! and its rule version, a period no cycle covers names none, and a cycle that pins the second
//! loaded rule version has its periods scored by it; with two departments' values
//! feeding one indicator (B02's `uscc.codes_total`), approving one department's part leaves the
//! indicator's inputs not approved and names the other part; an approved-only scorecard counts
//! only approved values (exact figures); approving the other approves the inputs, and an
//! unapproval drops its value from approved-only figures again. QueryAggregates answers the
//! same selection with each source's approval. With every service apart behind a gateway,
//! scoring reads the cycles from the shared store and approved-only figures from ingestion
//! over gRPC.

use citycredit_tests::ok;
use std::time::{Duration, Instant};

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::metric_submission_service_client::MetricSubmissionServiceClient as Submissions;
use citycredit::proto::v1::review_service_client::ReviewServiceClient as Reviews;
use citycredit::proto::v1::scoring_service_client::ScoringServiceClient as Scoring;
use citycredit_app::config::ServiceMode;
use citycredit_tests::ingestion::number_input;
use citycredit_tests::{
    AuthChannel, Backend, TestServer, both_databases, fresh_schema, use_backend,
};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const METRIC: &str = "uscc.codes_total";
const INDICATOR: &str = "B02";
const CITY: &str = "330800";
const YEAR: &str = "2026";
const SEEDED: &str = "2026-demonstration";
/// Two departments responsible for B02, so both may report its metrics.
const SAMR: &str = "samr";
const CIVIL: &str = "civil-affairs";
/// The second rule version the server loads (a test fixture).
const DRAFT: &str = "2026.1-draft";

fn draft_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/catalogs/national-2026-draft.toml")
}

fn part(department: &str) -> Option<pb::SignOffPart> {
    Some(pb::SignOffPart {
        department_code: department.into(),
        region_code: CITY.into(),
        period: YEAR.into(),
    })
}

async fn scorecard(
    c: &mut Scoring<AuthChannel>,
    period: &str,
    approved_only: bool,
) -> pb::Scorecard {
    ok(c.get_scorecard(pb::GetScorecardRequest {
        region_code: CITY.into(),
        period: period.into(),
        approved_only,
        ..Default::default()
    })
    .await)
    .scorecard
    .unwrap_or_else(|| panic!("scorecard"))
}

fn indicator(card: &pb::Scorecard) -> &pb::IndicatorResult {
    card.indicators
        .iter()
        .find(|i| i.code == INDICATOR)
        .unwrap_or_else(|| panic!("{INDICATOR} in {card:?}"))
}

/// The figure of `METRIC` behind the indicator ("" when not reported).
fn figure(card: &pb::Scorecard) -> String {
    indicator(card)
        .inputs
        .iter()
        .find(|i| i.metric_key == METRIC)
        .map(|i| i.value.clone())
        .unwrap_or_default()
}

fn holding(r: &pb::IndicatorResult) -> Vec<(String, String, String)> {
    r.unapproved_parts
        .iter()
        .map(|p| {
            (
                p.department_code.clone(),
                p.region_code.clone(),
                p.period.clone(),
            )
        })
        .collect()
}

/// The (cached) scorecard once `check` holds: scoring reads sign-off changes every second.
async fn eventually(
    c: &mut Scoring<AuthChannel>,
    what: &str,
    check: impl Fn(&pb::Scorecard) -> bool,
) -> pb::Scorecard {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let card = scorecard(c, YEAR, false).await;
        if check(&card) {
            return card;
        }
        assert!(Instant::now() < deadline, "{what}: {:?}", indicator(&card));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scorecards_name_their_cycle_and_count_approved_values(backend: Backend) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let schema = fresh_schema();
    let schema_name = schema.to_owned();
    let server = TestServer::start_in(dir.path(), move |c| {
        use_backend(c, backend, &schema_name);
        c.rule_versions = vec![draft_path()];
    })
    .await;
    let samr_key = server
        .create_principal("samr-sys", pb::Role::Department, Some(SAMR))
        .await;
    let civil_key = server
        .create_principal("civil-sys", pb::Role::Department, Some(CIVIL))
        .await;
    let office_key = server
        .create_principal("credit-office-1", pb::Role::CreditOffice, None)
        .await;
    let mut scoring = Scoring::new(server.with_key(&office_key));
    let mut office = Reviews::new(server.with_key(&office_key));

    // The seeded cycle names itself on a 2026 scorecard, and on its months; 2025 has none.
    let card = scorecard(&mut scoring, YEAR, false).await;
    assert_eq!(card.cycle_id, SEEDED);
    assert_eq!(card.cycle_rule_version, "2019.2");
    assert_eq!(card.catalog_version, "2019.2");
    assert!(!card.cycle_rule_version_not_loaded);
    assert!(!card.approved_only);
    assert_eq!(
        scorecard(&mut scoring, "2026-05", false).await.cycle_id,
        SEEDED
    );
    let uncovered = scorecard(&mut scoring, "2025", false).await;
    assert_eq!(uncovered.cycle_id, "");
    assert_eq!(uncovered.cycle_rule_version, "");
    // Nothing reported: no inputs, so not approved.
    assert!(!indicator(&card).inputs_approved);

    // A cycle pinning the second loaded version: its period is scored by it (once scoring has
    // read the new cycle, within a second).
    ok(office
        .create_cycle(pb::CreateCycleRequest {
            cycle: Some(pb::Cycle {
                id: "draft-2027".into(),
                title: "2027 年度（征求意见稿）".into(),
                rule_version: DRAFT.into(),
                periods: vec!["2027".into()],
                review_date: "2028-03-31".into(),
                grace_days: 7,
                on_time_days: 15,
                ..Default::default()
            }),
        })
        .await);
    let deadline = Instant::now() + Duration::from_secs(10);
    let card = loop {
        let card = scorecard(&mut scoring, "2027-Q3", false).await;
        if !card.cycle_id.is_empty() || Instant::now() > deadline {
            break card;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(card.cycle_id, "draft-2027");
    assert_eq!(card.cycle_rule_version, DRAFT);
    assert_eq!(card.catalog_version, DRAFT);
    // Asked by name, the primary scores it.
    let named = ok(scoring
        .get_scorecard(pb::GetScorecardRequest {
            region_code: CITY.into(),
            period: "2027-Q3".into(),
            rule_version: "2019.2".into(),
            ..Default::default()
        })
        .await)
    .scorecard
    .unwrap_or_else(|| panic!("scorecard"));
    assert_eq!(named.catalog_version, "2019.2");
    assert_eq!(named.cycle_id, "draft-2027");

    // Two departments' values feed one figure.
    for (key, department, n) in [(&samr_key, SAMR, "100"), (&civil_key, CIVIL, "50")] {
        ok(Submissions::new(server.with_key(key))
            .submit_value(pb::SubmitValueRequest {
                value: Some(number_input(METRIC, CITY, YEAR, department, n)),
                ..Default::default()
            })
            .await);
    }
    let card = eventually(&mut scoring, "both values", |c| figure(c) == "150").await;
    let b02 = indicator(&card);
    assert!(!b02.inputs_approved);
    assert_eq!(b02.unapproved_part_count, 2);
    assert_eq!(
        holding(b02),
        [
            (CIVIL.into(), CITY.into(), YEAR.into()),
            (SAMR.into(), CITY.into(), YEAR.into())
        ]
    );
    // Approved-only figures with nothing approved: not reported.
    let approved = scorecard(&mut scoring, YEAR, true).await;
    assert!(approved.approved_only);
    assert_eq!(approved.cycle_id, SEEDED);
    assert_eq!(figure(&approved), "");

    // samr submits and the credit office approves: civil-affairs holds the inputs back.
    ok(Reviews::new(server.with_key(&samr_key))
        .submit_for_approval(pb::SubmitForApprovalRequest {
            part: part(SAMR),
            ..Default::default()
        })
        .await);
    ok(office
        .approve(pb::ApproveRequest {
            part: part(SAMR),
            ..Default::default()
        })
        .await);
    let card = eventually(&mut scoring, "samr approved", |c| {
        indicator(c).unapproved_part_count == 1
    })
    .await;
    let b02 = indicator(&card);
    assert!(!b02.inputs_approved);
    assert_eq!(holding(b02), [(CIVIL.into(), CITY.into(), YEAR.into())]);
    assert_eq!(figure(&card), "150", "all values still count");
    let approved = scorecard(&mut scoring, YEAR, true).await;
    assert_eq!(figure(&approved), "100", "only samr's approved value");
    assert_eq!(holding(indicator(&approved)), []);
    assert!(indicator(&approved).inputs_approved);
    let explained = ok(scoring
        .explain_indicator(pb::ExplainIndicatorRequest {
            region_code: CITY.into(),
            period: YEAR.into(),
            indicator: INDICATOR.into(),
            approved_only: true,
            ..Default::default()
        })
        .await)
    .result
    .unwrap_or_else(|| panic!("result"));
    let input = explained
        .inputs
        .iter()
        .find(|i| i.metric_key == METRIC)
        .unwrap_or_else(|| panic!("{explained:?}"));
    assert_eq!(input.value, "100");
    assert_eq!(input.sources.len(), 1);
    assert_eq!(input.sources[0].department_code, SAMR);
    let batch = ok(scoring
        .batch_get_scorecards(pb::BatchGetScorecardsRequest {
            region_codes: vec![CITY.into()],
            period: YEAR.into(),
            approved_only: true,
            ..Default::default()
        })
        .await)
    .scorecards;
    assert_eq!(batch.len(), 1);
    assert_eq!(figure(&batch[0]), "100");
    assert!(batch[0].approved_only);

    // QueryAggregates answers the same selection, with each source's approved part.
    let figures = ok(Submissions::new(server.with_key(&office_key))
        .query_aggregates(pb::QueryAggregatesRequest {
            region_code: CITY.into(),
            period: YEAR.into(),
            as_of: None,
            approved_only: true,
        })
        .await);
    assert!(figures.approved_only);
    let m = figures
        .metrics
        .iter()
        .find(|m| m.metric_key == METRIC)
        .unwrap_or_else(|| panic!("{figures:?}"));
    assert_eq!(m.sources.len(), 1);
    assert_eq!(m.approvals.len(), 1);
    assert_eq!(m.approvals[0].submission, m.sources[0].submission);
    assert_eq!(m.approvals[0].approved_period, YEAR);

    // civil-affairs approved too: the inputs are approved.
    ok(Reviews::new(server.with_key(&civil_key))
        .submit_for_approval(pb::SubmitForApprovalRequest {
            part: part(CIVIL),
            ..Default::default()
        })
        .await);
    ok(office
        .approve(pb::ApproveRequest {
            part: part(CIVIL),
            ..Default::default()
        })
        .await);
    let card = eventually(&mut scoring, "both approved", |c| {
        indicator(c).inputs_approved
    })
    .await;
    assert_eq!(holding(indicator(&card)), []);
    assert_eq!(indicator(&card).unapproved_part_count, 0);
    assert_eq!(figure(&scorecard(&mut scoring, YEAR, true).await), "150");

    // Unapproved from above: approved-only figures drop civil-affairs' value again.
    ok(office
        .unapprove(pb::UnapproveRequest {
            part: part(CIVIL),
            reason: "复核发现问题".into(),
            expected_revision: 0,
        })
        .await);
    assert_eq!(figure(&scorecard(&mut scoring, YEAR, true).await), "100");
    let card = eventually(&mut scoring, "civil-affairs unapproved", |c| {
        !indicator(c).inputs_approved
    })
    .await;
    assert_eq!(
        holding(indicator(&card)),
        [(CIVIL.into(), CITY.into(), YEAR.into())]
    );

    let _ = tokio::time::timeout(Duration::from_secs(10), server.stop()).await;
}

both_databases!(
    scorecards_name_their_cycle_and_count_approved_values,
    flavor = "multi_thread",
    worker_threads = 2
);

/// Waits until `server` reports SERVING.
async fn serving(server: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = HealthClient::new(server.channel())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()
            .map(|r| r.into_inner().status());
        if status == Some(ServingStatus::Serving) {
            return;
        }
        assert!(Instant::now() < deadline, "{} never served", server.addr);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The registry (with the review cycle), ingestion and scoring each on a server of its own over
/// one store, behind a gateway.
async fn approved_figures_reach_scoring_apart(backend: Backend) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let keys = citycredit_tests::make_keys(dir.path());
    let schema = fresh_schema();
    let part_of = |mode: ServiceMode| {
        let (keys, schema) = (keys.clone(), schema.to_owned());
        move |c: &mut citycredit_app::Config| {
            citycredit_tests::apart(mode, &keys)(c);
            use_backend(c, backend, &schema);
        }
    };
    let registry = TestServer::start_in(dir.path(), part_of(ServiceMode::Registry)).await;
    serving(&registry).await;
    let ingestion = TestServer::start_in(dir.path(), part_of(ServiceMode::Ingestion)).await;
    serving(&ingestion).await;
    let ing_url = format!("http://{}", ingestion.addr);
    let (ing, scoring_part) = (ing_url.clone(), part_of(ServiceMode::Scoring));
    let scoring_server = TestServer::start_in(dir.path(), move |c| {
        scoring_part(c);
        c.upstreams.ingestion = Some(ing);
    })
    .await;
    let (reg_url, sco_url) = (
        format!("http://{}", registry.addr),
        format!("http://{}", scoring_server.addr),
    );
    let gateway_part = part_of(ServiceMode::Gateway);
    let gateway = TestServer::start_in(dir.path(), move |c| {
        gateway_part(c);
        c.upstreams.registry = Some(reg_url);
        c.upstreams.ingestion = Some(ing_url);
        c.upstreams.scoring = Some(sco_url);
    })
    .await;
    serving(&gateway).await;

    let samr_key = gateway
        .create_principal("samr-sys", pb::Role::Department, Some(SAMR))
        .await;
    let civil_key = gateway
        .create_principal("civil-sys", pb::Role::Department, Some(CIVIL))
        .await;
    let office_key = gateway
        .create_principal("credit-office-1", pb::Role::CreditOffice, None)
        .await;
    // Keys written by the registry reach the gateway within its refresh period.
    let mut scoring = Scoring::new(gateway.with_key(&office_key));
    let deadline = Instant::now() + Duration::from_secs(10);
    let card = loop {
        match scoring
            .get_scorecard(pb::GetScorecardRequest {
                region_code: CITY.into(),
                period: YEAR.into(),
                ..Default::default()
            })
            .await
        {
            Ok(r) => break r.into_inner().scorecard.unwrap_or_default(),
            Err(e) => assert!(Instant::now() < deadline, "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(card.cycle_id, SEEDED, "scoring apart reads the cycles");
    assert_eq!(card.cycle_rule_version, "2019.2");
    for (key, department, n) in [(&samr_key, SAMR, "100"), (&civil_key, CIVIL, "50")] {
        let mut c = Submissions::new(gateway.with_key(key));
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = c
            .submit_value(pb::SubmitValueRequest {
                value: Some(number_input(METRIC, CITY, YEAR, department, n)),
                ..Default::default()
            })
            .await
        {
            assert!(Instant::now() < deadline, "{e:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut samr = Reviews::new(gateway.with_key(&samr_key));
    ok(samr
        .submit_for_approval(pb::SubmitForApprovalRequest {
            part: part(SAMR),
            ..Default::default()
        })
        .await);
    ok(Reviews::new(gateway.with_key(&office_key))
        .approve(pb::ApproveRequest {
            part: part(SAMR),
            ..Default::default()
        })
        .await);
    let approved = scorecard(&mut scoring, YEAR, true).await;
    assert!(approved.approved_only);
    assert_eq!(
        figure(&approved),
        "100",
        "over QueryAggregates, approved values only"
    );
    assert!(indicator(&approved).inputs_approved);
    let card = eventually(&mut scoring, "samr approved, apart", |c| {
        figure(c) == "150" && indicator(c).unapproved_part_count == 1
    })
    .await;
    assert_eq!(
        holding(indicator(&card)),
        [(CIVIL.into(), CITY.into(), YEAR.into())]
    );

    for server in [gateway, scoring_server, ingestion, registry] {
        let _ = tokio::time::timeout(Duration::from_secs(10), server.stop()).await;
    }
}

both_databases!(
    approved_figures_reach_scoring_apart,
    flavor = "multi_thread",
    worker_threads = 2
);
