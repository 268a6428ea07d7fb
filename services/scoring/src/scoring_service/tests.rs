use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex as StdMutex;

use citycredit::aggregates::SourceRef;
use citycredit_core::BoxFuture;
use citycredit_core::auth::{Principal, Role};
use citycredit_core::city::City;
use citycredit_core::source::SourceError;
use tokio_stream::StreamExt;
use tonic::Code;

use super::*;

/// Figures held in memory; `set` replaces them and announces the change.
struct FakeSource {
    figures: StdMutex<HashMap<(String, String), Aggregates>>,
    changes: broadcast::Sender<Change>,
    reads: std::sync::atomic::AtomicUsize,
}

impl FakeSource {
    fn new() -> Arc<Self> {
        Arc::new(FakeSource {
            figures: StdMutex::new(HashMap::new()),
            changes: broadcast::channel(64).0,
            reads: Default::default(),
        })
    }

    fn set(
        &self,
        region: &str,
        period: &str,
        values: rules::Values,
        sources: Vec<(&str, SourceRef)>,
    ) {
        let mut agg = Aggregates {
            region: region.into(),
            period: period.into(),
            as_of_micros: 1,
            values,
            ..Default::default()
        };
        let mut by_metric: BTreeMap<String, Vec<SourceRef>> = BTreeMap::new();
        for (m, s) in sources {
            by_metric.entry(m.to_owned()).or_default().push(s);
        }
        agg.sources = by_metric.into_iter().map(|(m, s)| (m, s.into())).collect();
        self.figures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((region.into(), period.into()), agg);
        let _ = self.changes.send(Change {
            region: region.into(),
            period: period.into(),
            last_submission_id: 1,
            commit_micros: 1,
        });
    }
}

impl AggregateSource for FakeSource {
    fn aggregates<'a>(
        &'a self,
        region: &'a str,
        period: &'a str,
        _as_of: Option<i64>,
        _selection: Selection,
    ) -> BoxFuture<'a, Result<Aggregates, SourceError>> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let found = self
            .figures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(region.to_owned(), period.to_owned()))
            .cloned();
        let empty = Aggregates {
            region: region.into(),
            period: period.into(),
            ..Default::default()
        };
        Box::pin(async move { Ok(found.unwrap_or(empty)) })
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

fn status_of(card: &Scorecard, code: &str) -> Option<rules::Status> {
    card.indicator(code).map(|r| r.status)
}

fn api(source: Arc<FakeSource>) -> ScoringApi {
    let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    let city = City::builtin(&catalog).unwrap_or_else(|e| panic!("{e}"));
    let org = citycredit::org::fixed(Org::new(&catalog, city));
    ScoringApi::new(Arc::new(catalog), org, source)
}

fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.extensions_mut().insert(Principal {
        id: "ops".into(),
        role: Role::Operator,
        department: None,
        credential: None,
    });
    r
}

fn baseline() -> rules::Values {
    let mut v = rules::Values::new();
    for (k, n) in [
        ("uscc.stock_codes_total", 43089),
        ("uscc.stock_codes_converted", 43089),
        ("uscc.codes_total", 344606),
        ("uscc.codes_duplicate_or_invalid", 0),
        ("gov.dishonesty_events_total", 0),
        ("gov.dishonesty_events_rectified", 0),
        ("service_halls.total", 70),
        ("service_halls.connected", 70),
        ("double_publicity.licenses_total", 10),
        ("double_publicity.licenses_reported", 10),
        ("double_publicity.penalties_total", 10),
        ("double_publicity.penalties_reported", 10),
        ("credit_report.target_entities", 100),
        ("credit_report.submitted", 80),
        ("blacklist.in_operation", 100),
        ("blacklist.exited_after_rectification", 30),
        ("credit_repair.trained", 50),
        ("market_entities.in_operation", 1000),
        ("commitment.proactive_or_self_discipline_entities", 900),
        ("commitment.approval_substitution_items", 19),
        ("approval_items.total", 5),
        ("commitment.tolerance_acceptance_items", 5),
        ("commitment.repair_commitment_entities", 100),
        ("monitoring.counties_total", 6),
        ("monitoring.counties_covered", 6),
        ("monitoring.city_rank", 49),
        ("penetration.unit_dishonesty_records", 100),
        ("penetration.linked_records", 50),
    ] {
        v.set_number(k, Num::from_int(n));
    }
    v.set_flag("monitoring.township_extension_plan", true);
    v
}

fn source_ref(id: u64, dept: &str) -> SourceRef {
    SourceRef {
        submission_id: id,
        department: dept.into(),
        region: "330800".into(),
        domain: String::new(),
        task_id: String::new(),
        period: "2026".into(),
        value: pb::MetricValue::default(),
        accept_micros: 1,
        approved_period: None,
    }
}

#[tokio::test]
async fn scorecards_are_cached_until_a_change_arrives() {
    let source = FakeSource::new();
    source.set(
        "330800",
        "2026",
        baseline(),
        vec![("uscc.stock_codes_total", source_ref(7, "samr"))],
    );
    let api = api(Arc::clone(&source));
    let card = api
        .get_scorecard(req(pb::GetScorecardRequest {
            region_code: "330800".into(),
            period: "2026".into(),
            as_of: None,
            rule_version: String::new(),
            approved_only: false,
        }))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .scorecard
        .unwrap_or_default();
    assert_eq!(card.outcome(), pb::Outcome::Passed);
    assert_eq!(card.guiding_total, "1.00"); // G12: 50/100 x 2
    let b01 = card
        .indicators
        .iter()
        .find(|i| i.code == "B01")
        .unwrap_or_else(|| panic!("B01"));
    assert_eq!(b01.inputs[1].sources[0].submission, "submissions/7");
    assert_eq!(b01.terms[0].computed, "1.000000");

    let reads = || source.reads.load(std::sync::atomic::Ordering::SeqCst);
    let before = reads();
    api.scored("330800", "2026", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reads(), before, "a second read is served from the cache");

    let mut v = baseline();
    v.set_number("uscc.stock_codes_converted", Num::from_int(43000));
    source.set("330800", "2026", v, Vec::new());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = api
        .scored("330800", "2026", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(reads() > before, "the change invalidated the entry");
    assert_eq!(status_of(&after.card, "B01"), Some(rules::Status::Fail));
    assert_eq!(
        after
            .card
            .indicator("B01")
            .map(|r| r.gaps[0].change.clone()),
        Some("+89".into())
    );
}

#[tokio::test]
async fn what_if_stores_nothing_and_reports_the_difference() {
    let source = FakeSource::new();
    source.set("330800", "2026", baseline(), Vec::new());
    let api = api(Arc::clone(&source));
    let overrides = vec![
        pb::ValueOverride {
            metric_key: "penetration.linked_records".into(),
            value: Some(pb::MetricValue {
                value: Some(pb::metric_value::Value::Number("100".into())),
            }),
            ..Default::default()
        },
        pb::ValueOverride {
            metric_key: "monitoring.city_rank".into(),
            value: Some(pb::MetricValue {
                value: Some(pb::metric_value::Value::Number("101".into())),
            }),
            ..Default::default()
        },
    ];
    let out = api
        .what_if(req(pb::WhatIfRequest {
            region_code: "330800".into(),
            period: "2026".into(),
            overrides,
            rule_version: String::new(),
        }))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert_eq!(
        out.scorecard.as_ref().map(|c| c.outcome()),
        Some(pb::Outcome::Vetoed)
    );
    assert_eq!(
        out.baseline.as_ref().map(|c| c.outcome()),
        Some(pb::Outcome::Passed)
    );
    assert_eq!(out.guiding_total_change, "+1.00");
    let codes: Vec<&str> = out.differences.iter().map(|d| d.code.as_str()).collect();
    assert_eq!(codes, ["B10", "G12"]);
    // The stored figures are untouched.
    let again = api
        .scored("330800", "2026", None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.card.guiding_total.to_fixed(2), "1.00");

    let bad = vec![
        pb::ValueOverride {
            metric_key: "nope".into(),
            ..Default::default()
        },
        pb::ValueOverride {
            metric_key: "uscc.codes_total".into(),
            value: Some(pb::MetricValue {
                value: Some(pb::metric_value::Value::Number("1.5".into())),
            }),
            ..Default::default()
        },
    ];
    let err = api
        .what_if(req(pb::WhatIfRequest {
            region_code: "330800".into(),
            period: "2026".into(),
            overrides: bad,
            rule_version: String::new(),
        }))
        .await
        .err()
        .unwrap_or_else(|| panic!("must fail"));
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("overrides[0].metric_key")
            && err.message().contains("overrides[1].value"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn samr_worklist_with_nothing_reported() {
    let api = api(FakeSource::new());
    let out = api
        .get_department_worklist(req(pb::GetDepartmentWorklistRequest {
            department: "departments/samr".into(),
            period: "2026".into(),
            region_code: String::new(),
        }))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let by_code: HashMap<&str, &pb::WorklistEntry> =
        out.entries.iter().map(|e| (e.code.as_str(), e)).collect();
    for code in ["B01", "B02", "B06", "B07"] {
        assert_eq!(
            (by_code[code].role(), by_code[code].via_group.as_str()),
            (pb::ResponsibilityRole::Lead, ""),
            "{code}"
        );
    }
    for code in ["B08", "B09", "G12"] {
        assert_eq!(
            (by_code[code].role(), by_code[code].via_group.as_str()),
            (pb::ResponsibilityRole::Co, ""),
            "{code}"
        );
    }
    for code in ["B03", "G11", "G15", "G18", "G19", "G20"] {
        assert!(
            !by_code[code].via_group.is_empty(),
            "{code} comes through a group"
        );
    }
    // Rulebook v2: samr answers for E08's 统一社会信用代码 section, not for the whole item.
    for code in ["E02", "E04", "E05", "E08/uscc", "E09", "E10", "E12"] {
        assert!(by_code.contains_key(code), "{code}");
    }
    assert_eq!(out.entries.len(), 20);
    // Where samr is named it has metrics to report or to get assessed; through a group it may
    // report but is not expected to (rulebook v2 section 9), so B03's figures are not chased.
    for e in out.entries.iter().filter(|e| e.via_group.is_empty()) {
        assert!(
            !e.missing_metrics.is_empty() || !e.awaiting_assessment.is_empty(),
            "{} lists the metrics still to report",
            e.code
        );
    }
    assert!(by_code["B03"].missing_metrics.is_empty());
    assert_eq!(
        by_code["B01"].missing_metrics,
        ["uscc.stock_codes_converted", "uscc.stock_codes_total"]
    );
    assert_eq!(by_code["B01"].status(), pb::IndicatorStatus::MissingData);
    assert!(
        by_code["G20"].missing_metrics.is_empty(),
        "samr cannot report assessed scores"
    );
    assert_eq!(
        by_code["G20"].awaiting_assessment,
        ["campaign.integrity_tour", "campaign.special_governance"]
    );
    // Rulebook v2: E02's tasks check the two assessed campaign scores.
    assert_eq!(
        by_code["E02"].awaiting_assessment,
        [
            "task.status",
            "campaign.integrity_tour",
            "campaign.special_governance"
        ]
    );
    assert!(by_code["B01"].gaps.iter().any(|g| g.change == "report"));
}

#[tokio::test]
async fn completeness_counts_what_each_department_reported() {
    let source = FakeSource::new();
    source.set(
        "330800",
        "2026",
        baseline(),
        vec![
            ("uscc.stock_codes_total", source_ref(1, "samr")),
            ("uscc.codes_total", source_ref(2, "samr")),
        ],
    );
    let api = api(source);
    let out = api
        .get_completeness_report(req(pb::GetCompletenessReportRequest {
            period: "2026".into(),
            region_code: String::new(),
        }))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let samr = out
        .departments
        .iter()
        .find(|d| d.department_code == "samr")
        .unwrap_or_else(|| panic!("samr"));
    assert_eq!(
        samr.reported,
        ["uscc.codes_total", "uscc.stock_codes_total"]
    );
    let expected = samr.reported.len() + samr.missing.len();
    assert_eq!(
        samr.reporting_rate,
        Num::ratio(2, i64::try_from(expected).unwrap_or(1)).to_fixed(4)
    );
    let court = out
        .departments
        .iter()
        .find(|d| d.department_code == "court")
        .unwrap_or_else(|| panic!("court"));
    assert_eq!(court.reporting_rate, "0.0000");
}

#[tokio::test]
async fn counties_rank_by_outcome_then_total() {
    let source = FakeSource::new();
    let mut strong = baseline();
    strong.set_number("penetration.linked_records", Num::from_int(100));
    source.set("330802", "2026", strong, Vec::new());
    source.set("330803", "2026", baseline(), Vec::new());
    let mut vetoed = baseline();
    vetoed.set_number("monitoring.city_rank", Num::from_int(150));
    vetoed.set_number("penetration.linked_records", Num::from_int(100));
    source.set("330822", "2026", vetoed, Vec::new());
    let api = api(source);
    let out = api
        .compare_counties(req(pb::CompareCountiesRequest {
            period: "2026".into(),
        }))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let order: Vec<(&str, u32)> = out
        .rankings
        .iter()
        .map(|r| (r.region_code.as_str(), r.rank))
        .collect();
    assert_eq!(order.len(), 6);
    assert_eq!(&order[..2], [("330802", 1), ("330803", 2)]);
    assert_eq!(order[5], ("330822", 6));
    assert_eq!(out.rankings[5].failing_basic, ["B10"]);
    assert_eq!(out.rankings[0].region_name, "柯城区");
}

/// A watch of the city's 2026 scorecard.
async fn watch_city(api: &ScoringApi) -> WatchStream {
    api.watch_scorecard(req(pb::WatchScorecardRequest {
        region_code: "330800".into(),
        period: "2026".into(),
    }))
    .await
    .unwrap_or_else(|e| panic!("{e}"))
    .into_inner()
}

#[tokio::test]
async fn watch_sends_the_scorecard_again_after_a_change() {
    let source = FakeSource::new();
    source.set("330800", "2026", baseline(), Vec::new());
    let api = api(Arc::clone(&source));
    let mut stream = watch_city(&api).await;
    let first = stream
        .next()
        .await
        .unwrap_or_else(|| panic!("first"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        first.scorecard.map(|c| c.outcome()),
        Some(pb::Outcome::Passed)
    );
    let mut v = baseline();
    v.set_number("monitoring.city_rank", Num::from_int(101));
    let started = std::time::Instant::now();
    source.set("330800", "2026", v, Vec::new());
    let next = tokio::time::timeout(Duration::from_secs(1), stream.next())
        .await
        .unwrap_or_else(|_| panic!("no update within 1 s"))
        .unwrap_or_else(|| panic!("closed"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        next.scorecard.map(|c| c.outcome()),
        Some(pb::Outcome::Vetoed)
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// On the paused clock: the first change after a quiet spell is delivered without waiting
/// (the coalescing window used to delay every update by 100 ms), showing the changed figures
/// (never a scorecard cached before the change); a burst right after an update waits for the
/// window's end and comes as one update showing its last change.
#[tokio::test(start_paused = true)]
async fn watch_delivers_at_once_and_coalesces_a_burst() {
    let source = FakeSource::new();
    source.set("330800", "2026", baseline(), Vec::new());
    let api = api(Arc::clone(&source));
    let mut stream = watch_city(&api).await;
    let outcome = |m: Option<Result<pb::WatchScorecardResponse, Status>>| {
        m.unwrap_or_else(|| panic!("closed"))
            .unwrap_or_else(|e| panic!("{e}"))
            .scorecard
            .map(|c| c.outcome())
    };
    assert_eq!(outcome(stream.next().await), Some(pb::Outcome::Passed));
    // A quiet spell, longer than the window.
    tokio::time::sleep(WATCH_COALESCE * 3).await;
    let vetoed = || {
        let mut v = baseline();
        v.set_number("monitoring.city_rank", Num::from_int(101));
        v
    };
    let changed = Instant::now();
    source.set("330800", "2026", vetoed(), Vec::new());
    assert_eq!(outcome(stream.next().await), Some(pb::Outcome::Vetoed));
    let first = Instant::now();
    assert!(
        first - changed < WATCH_COALESCE,
        "the first change waited {:?}",
        first - changed
    );
    // A burst at once: vetoed again, then passed.
    source.set("330800", "2026", vetoed(), Vec::new());
    source.set("330800", "2026", baseline(), Vec::new());
    assert_eq!(outcome(stream.next().await), Some(pb::Outcome::Passed));
    assert!(Instant::now() - first >= WATCH_COALESCE);
    assert!(
        tokio::time::timeout(WATCH_COALESCE * 2, stream.next())
            .await
            .is_err(),
        "the burst came as more than one update"
    );
}

#[tokio::test]
async fn bad_regions_and_periods_are_named() {
    let api = api(FakeSource::new());
    let err = api
        .get_scorecard(req(pb::GetScorecardRequest {
            region_code: "999999".into(),
            period: "2026-13".into(),
            as_of: None,
            rule_version: String::new(),
            approved_only: false,
        }))
        .await
        .err()
        .unwrap_or_else(|| panic!("must fail"));
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("region_code") && err.message().contains("period"),
        "{}",
        err.message()
    );
    let anon = api
        .get_scorecard(Request::new(pb::GetScorecardRequest {
            region_code: "330800".into(),
            period: "2026".into(),
            as_of: None,
            rule_version: String::new(),
            approved_only: false,
        }))
        .await
        .err()
        .unwrap_or_else(|| panic!("anonymous"));
    assert_eq!(anon.code(), Code::Unauthenticated);
}

/// Cycles as a review store would give them.
struct FakeCycles(StdMutex<citycredit::cycles::ReviewSnapshot>);

impl CycleSource for FakeCycles {
    fn snapshot(&self) -> BoxFuture<'_, Result<citycredit::cycles::ReviewSnapshot, SourceError>> {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Box::pin(async move { Ok(s) })
    }
}

fn cycles(rule_version: &str) -> Arc<FakeCycles> {
    Arc::new(FakeCycles(StdMutex::new(
        citycredit::cycles::ReviewSnapshot {
            cycles: vec![citycredit::cycles::CycleInfo {
                id: "c-2026".into(),
                rule_version: rule_version.into(),
                periods: vec!["2026".into(), "2026-Q2".into()],
                create_micros: 1,
                review_date: "2027-03-31".into(),
            }],
            signoff_revision: 0,
        },
    )))
}

async fn card_of(api: &ScoringApi, period: &str, rule_version: &str) -> pb::Scorecard {
    api.get_scorecard(req(pb::GetScorecardRequest {
        region_code: "330800".into(),
        period: period.into(),
        rule_version: rule_version.into(),
        ..Default::default()
    }))
    .await
    .unwrap_or_else(|e| panic!("{e:?}"))
    .into_inner()
    .scorecard
    .unwrap_or_else(|| panic!("scorecard"))
}

#[tokio::test]
async fn a_scorecard_names_its_cycle_and_scores_by_its_loaded_rule_version() {
    let api = api(FakeSource::new()).with_cycles(cycles("2019.2"));
    let card = card_of(&api, "2026-05", "").await;
    assert_eq!(card.cycle_id, "c-2026");
    assert_eq!(card.cycle_rule_version, "2019.2");
    assert_eq!(card.catalog_version, "2019.2");
    assert!(!card.cycle_rule_version_not_loaded);
    let resolved = api
        .resolve("rule_version", "", "2026-05")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    // The smallest cycle period containing May is the second quarter.
    assert_eq!(resolved.mark.part_period, "2026-Q2");
    let uncovered = card_of(&api, "2025", "").await;
    assert_eq!(
        (
            uncovered.cycle_id.as_str(),
            uncovered.cycle_rule_version.as_str()
        ),
        ("", "")
    );
}

#[tokio::test]
async fn a_cycle_version_not_loaded_falls_back_to_the_primary_and_says_so() {
    let api = api(FakeSource::new()).with_cycles(cycles("1999.1"));
    let card = card_of(&api, "2026", "").await;
    assert_eq!(card.cycle_id, "c-2026");
    assert_eq!(card.cycle_rule_version, "1999.1");
    assert_eq!(card.catalog_version, "2019.2");
    assert!(card.cycle_rule_version_not_loaded);
    // Asked by name, the version asked for scores it and nothing falls back.
    let named = card_of(&api, "2026", "2019.2").await;
    assert!(!named.cycle_rule_version_not_loaded);
    assert_eq!(named.cycle_id, "c-2026");
}

#[tokio::test]
async fn a_sign_off_change_drops_cached_scorecards() {
    let source = FakeSource::new();
    source.set("330800", "2026", baseline(), Vec::new());
    let fake = cycles("2019.2");
    let api = api(Arc::clone(&source)).with_cycles(Arc::clone(&fake) as Arc<dyn CycleSource>);
    card_of(&api, "2026", "").await;
    card_of(&api, "2026", "").await;
    let reads = source.reads.load(std::sync::atomic::Ordering::SeqCst);
    fake.0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .signoff_revision = 1;
    let started = std::time::Instant::now();
    loop {
        card_of(&api, "2026", "").await;
        if source.reads.load(std::sync::atomic::Ordering::SeqCst) > reads {
            break;
        }
        assert!(
            started.elapsed() < REVIEW_REFRESH * 3,
            "the cache outlived a sign-off change"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn inputs_are_approved_only_when_every_source_is() {
    let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    let card = rules::score(&catalog, &rules::Values::new());
    let b02 = card
        .indicator("B02")
        .unwrap_or_else(|| panic!("B02"))
        .clone();
    let mut agg = Aggregates {
        region: "330800".into(),
        period: "2026".into(),
        ..Default::default()
    };
    // No inputs reported: not approved, nothing holds it.
    assert_eq!(convert::approval(&b02, &agg, "2026"), (false, vec![], 0));
    let mut approved = source_ref(1, "samr");
    approved.approved_period = Some("2026".into());
    agg.sources
        .insert("uscc.codes_total".into(), vec![approved.clone()].into());
    assert_eq!(convert::approval(&b02, &agg, "2026"), (true, vec![], 0));
    // Many departments not approved: listed up to the bound, all counted.
    let mut sources = vec![approved];
    for i in 0..30 {
        sources.push(source_ref(10 + i, &format!("d{i:02}")));
    }
    agg.sources
        .insert("uscc.codes_total".into(), sources.into());
    let (ok, parts, count) = convert::approval(&b02, &agg, "2026");
    assert!(!ok);
    assert_eq!(count, 30);
    assert_eq!(parts.len(), convert::MAX_UNAPPROVED_PARTS);
    assert_eq!(parts[0].department_code, "d00");
    assert_eq!(parts[0].period, "2026");
}
