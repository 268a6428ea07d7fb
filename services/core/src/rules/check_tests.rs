//! Evaluation task checks (rulebook section 5, v2): each check kind passes, fails, or is
//! missing when its data is, and an item is DONE only when every task is DONE and every check
//! passes.

use crate::catalog::Catalog;
use crate::numbers::Num;
use crate::rules::{CheckResult, Scorecard, TaskStatus, TermOutcome, Values, score};

fn catalog() -> &'static Catalog {
    static CATALOG: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
    CATALOG.get_or_init(|| Catalog::builtin().unwrap_or_else(|e| panic!("{e}")))
}

fn n(v: &str) -> Num {
    Num::parse_decimal(v).unwrap_or_else(|e| panic!("{e}"))
}

/// The checks of one task in a scorecard.
fn checks<'a>(card: &'a Scorecard, task: &str) -> &'a [CheckResult] {
    let item = task.split('.').next().unwrap_or_default();
    card.item(item)
        .and_then(|i| i.tasks.iter().find(|t| t.id == task))
        .map(|t| t.checks.as_slice())
        .unwrap_or_else(|| panic!("no task {task}"))
}

fn outcomes(values: &Values, task: &str) -> Vec<TermOutcome> {
    checks(&score(catalog(), values), task)
        .iter()
        .map(|c| c.outcome)
        .collect()
}

#[test]
fn every_task_has_the_rulebooks_checks() {
    let c = catalog();
    let summaries = |task: &str| -> Vec<String> {
        c.task(task)
            .unwrap_or_else(|| panic!("{task}"))
            .checks
            .iter()
            .map(|k| k.summary())
            .collect()
    };
    assert_eq!(summaries("E02.1"), ["campaign.integrity_tour > 0"]);
    assert_eq!(summaries("E02.2"), ["campaign.special_governance > 0"]);
    assert_eq!(
        summaries("E03.1"),
        ["integrity.civil_servant_files is true"]
    );
    assert_eq!(summaries("E03.2"), ["indicator B03 passes"]);
    assert_eq!(summaries("E03.3"), ["indicator B10 conditions (1, 2) hold"]);
    assert_eq!(
        summaries("E08.1"),
        [
            "indicator B01 passes",
            "indicator B02 passes",
            "ratio(uscc.individual_business_mapped, uscc.individual_business_total) >= 1"
        ]
    );
    assert_eq!(
        summaries("E08.2"),
        [
            "sharing.national_jrp_docked is true",
            "sharing.red_black_list_embedded is true",
            "indicator B04 passes"
        ]
    );
    assert_eq!(
        summaries("E08.3"),
        ["ratio(sharing.units_connected, sharing.units_required) >= 1"]
    );
    assert_eq!(summaries("E09.1"), ["indicator G17 scores above 0"]);
    assert_eq!(summaries("E09.2"), ["indicator G18 scores above 0"]);
    let e10: Vec<String> = (1..=8)
        .flat_map(|i| summaries(&format!("E10.{i}")))
        .collect();
    assert_eq!(
        e10,
        [
            "indicator B09 passes",
            "indicator G12 scores above 0",
            "indicator G11 scores above 0",
            "indicator G16 scores above 0",
            "indicator G15 scores above 0",
            "indicator B07 passes",
            "indicator B08 passes",
            "indicator B06 passes"
        ]
    );
    assert_eq!(summaries("E11.2"), ["finance.credit_budget > 0"]);
    for task in ["E01.1", "E07.2", "E07.6", "E11.1", "E11.3", "E12.1"] {
        assert!(summaries(task).is_empty(), "{task}");
    }
}

#[test]
fn descriptions_carry_the_sources_sub_criteria_and_e08_1s_reading() {
    let c = catalog();
    let description = |task: &str| {
        c.task(task)
            .and_then(|t| t.description.clone())
            .unwrap_or_default()
    };
    assert!(description("E07.2").contains("区域担保圈风险"));
    let e07_6 = description("E07.6");
    assert!(e07_6.starts_with("不得：1）") && e07_6.contains("3）限制资金在地区间的正常流动"));
    assert!(description("E07.7").contains("3）管理不到位，发生重大风险事件"));
    assert!(description("E07.8").contains("4）发生金融风险未能有效处置"));
    let e08_1 = description("E08.1");
    assert!(e08_1.contains("重错码率＜0") && e08_1.contains("低于万分之一"));
}

#[test]
fn a_metric_above_zero_passes_fails_and_is_missing() {
    let mut v = Values::new();
    assert_eq!(outcomes(&v, "E11.2"), [TermOutcome::Missing]);
    let card = score(catalog(), &v);
    assert_eq!(
        checks(&card, "E11.2")[0].missing_metrics,
        ["finance.credit_budget"]
    );
    v.set_number("finance.credit_budget", Num::zero());
    assert_eq!(outcomes(&v, "E11.2"), [TermOutcome::Unmet]);
    v.set_number("finance.credit_budget", n("0.01"));
    assert_eq!(outcomes(&v, "E11.2"), [TermOutcome::Met]);
    // A SCORE assessed above 0.
    v.set_number("campaign.integrity_tour", Num::zero());
    assert_eq!(outcomes(&v, "E02.1"), [TermOutcome::Unmet]);
    v.set_number("campaign.integrity_tour", n("1.4"));
    assert_eq!(outcomes(&v, "E02.1"), [TermOutcome::Met]);
    assert_eq!(outcomes(&v, "E02.2"), [TermOutcome::Missing]);
}

#[test]
fn named_conditions_of_a_basic_indicator_pass_without_the_others() {
    let mut v = Values::new();
    assert_eq!(outcomes(&v, "E03.3"), [TermOutcome::Missing]);
    v.set_number("monitoring.counties_total", n("6"));
    v.set_number("monitoring.counties_covered", n("6"));
    // Condition 2 unreported: missing, not failed.
    assert_eq!(outcomes(&v, "E03.3"), [TermOutcome::Missing]);
    let card = score(catalog(), &v);
    assert_eq!(
        checks(&card, "E03.3")[0].missing_metrics,
        ["monitoring.township_extension_plan"]
    );
    v.set_flag("monitoring.township_extension_plan", true);
    // No rank reported: B10 itself lacks data, E03.3 passes.
    let card = score(catalog(), &v);
    assert_eq!(
        card.indicator("B10").map(|r| r.status),
        Some(crate::rules::Status::MissingData)
    );
    assert_eq!(outcomes(&v, "E03.3"), [TermOutcome::Met]);
    // A rank outside the top 100 fails B10, not E03.3.
    v.set_number("monitoring.city_rank", n("150"));
    assert_eq!(outcomes(&v, "E03.3"), [TermOutcome::Met]);
    v.set_number("monitoring.counties_covered", n("5"));
    assert_eq!(outcomes(&v, "E03.3"), [TermOutcome::Unmet]);
    // A cross-metric violation on a metric the named conditions read is invalid.
    v.set_number("monitoring.counties_covered", n("7"));
    assert_eq!(outcomes(&v, "E03.3"), [TermOutcome::Invalid]);
    let card = score(catalog(), &v);
    let violation = card
        .violations
        .iter()
        .find(|x| x.numerator == "monitoring.counties_covered")
        .unwrap_or_else(|| panic!("no violation"));
    assert_eq!(violation.affects, ["B10", "E03"]);
}

#[test]
fn a_whole_basic_indicator_passes_fails_and_is_missing() {
    let mut v = Values::new();
    assert_eq!(outcomes(&v, "E03.2"), [TermOutcome::Missing]);
    v.set_number("gov.dishonesty_events_total", n("4"));
    v.set_number("gov.dishonesty_events_rectified", n("3"));
    assert_eq!(outcomes(&v, "E03.2"), [TermOutcome::Unmet]);
    v.set_number("gov.dishonesty_events_rectified", n("4"));
    assert_eq!(outcomes(&v, "E03.2"), [TermOutcome::Met]);
}

#[test]
fn a_guiding_indicator_scored_above_zero_passes_fails_and_is_missing() {
    let mut v = Values::new();
    assert_eq!(outcomes(&v, "E09.1"), [TermOutcome::Missing]);
    v.set_number("population.registered", n("1000"));
    v.set_number("personal_credit_score.holders", n("500"));
    // c = 1/2 scores 0, every part computed: failed.
    assert_eq!(outcomes(&v, "E09.1"), [TermOutcome::Unmet]);
    v.set_number("personal_credit_score.holders", n("600"));
    assert_eq!(outcomes(&v, "E09.1"), [TermOutcome::Met]);
    let card = score(catalog(), &v);
    assert_eq!(checks(&card, "E09.1")[0].computed, Some(n("2")));

    // G18 with one domain in service and its ratios unreported: PARTIAL, yet above 0.
    let mut v = Values::new();
    assert_eq!(outcomes(&v, "E09.2"), [TermOutcome::Missing]);
    v.set_domains("xinyi_plus.domain_in_service", ["xinyidai"]);
    let card = score(catalog(), &v);
    assert_eq!(
        card.indicator("G18").map(|r| r.status),
        Some(crate::rules::Status::Partial)
    );
    assert_eq!(outcomes(&v, "E09.2"), [TermOutcome::Met]);

    // G11 counts unreported domain flags as 0 domains; its check is missing data, not failed,
    // until someone reports flags.
    let mut v = Values::new();
    let card = score(catalog(), &v);
    assert_eq!(
        card.indicator("G11").map(|r| r.status),
        Some(crate::rules::Status::Scored)
    );
    assert_eq!(outcomes(&v, "E10.3"), [TermOutcome::Missing]);
    assert_eq!(
        checks(&card, "E10.3")[0].missing_metrics,
        ["joint_rp.domain_implemented"]
    );
    v.set_domains("joint_rp.domain_implemented", Vec::<String>::new());
    assert_eq!(outcomes(&v, "E10.3"), [TermOutcome::Unmet]);
    v.set_domains("joint_rp.domain_implemented", ["jrp-00"]);
    assert_eq!(outcomes(&v, "E10.3"), [TermOutcome::Met]);
}

#[test]
fn e08_3_needs_every_unit_connected_not_merely_g13_above_zero() {
    let mut v = Values::new();
    assert_eq!(outcomes(&v, "E08.3"), [TermOutcome::Missing]);
    v.set_number("sharing.units_required", n("10"));
    v.set_number("sharing.units_connected", n("9"));
    let card = score(catalog(), &v);
    assert_eq!(
        card.indicator("G13").and_then(|r| r.score.clone()),
        Some(n("3.5"))
    );
    assert_eq!(outcomes(&v, "E08.3"), [TermOutcome::Unmet]);
    v.set_number("sharing.units_connected", n("10"));
    assert_eq!(outcomes(&v, "E08.3"), [TermOutcome::Met]);
}

#[test]
fn e08_1_reads_b01_b02_and_the_individual_business_mapping() {
    let mut v = Values::new();
    for (k, x) in [
        ("uscc.stock_codes_total", "100"),
        ("uscc.stock_codes_converted", "100"),
        ("uscc.codes_total", "100000"),
        ("uscc.codes_duplicate_or_invalid", "0"),
    ] {
        v.set_number(k, n(x));
    }
    assert_eq!(
        outcomes(&v, "E08.1"),
        [TermOutcome::Met, TermOutcome::Met, TermOutcome::Missing]
    );
    v.set_number("uscc.individual_business_total", n("50"));
    v.set_number("uscc.individual_business_mapped", n("49"));
    assert_eq!(
        outcomes(&v, "E08.1"),
        [TermOutcome::Met, TermOutcome::Met, TermOutcome::Unmet]
    );
    // More mapped than exist: the cross-metric check is violated and reported.
    v.set_number("uscc.individual_business_mapped", n("51"));
    let card = score(catalog(), &v);
    assert_eq!(
        outcomes(&v, "E08.1"),
        [TermOutcome::Met, TermOutcome::Met, TermOutcome::Invalid]
    );
    let violation = card
        .violations
        .iter()
        .find(|x| x.numerator == "uscc.individual_business_mapped")
        .unwrap_or_else(|| panic!("no violation"));
    assert_eq!(violation.affects, ["E08"]);
}

#[test]
fn unreported_domain_flags_make_a_domain_check_missing() {
    let mut v = Values::new();
    assert_eq!(outcomes(&v, "E04.1"), [TermOutcome::Missing]);
    for m in [
        "integrity.credit_records",
        "integrity.portal_disclosure",
        "integrity.red_black_lists",
        "integrity.graded_supervision",
    ] {
        v.set_domains(m, ["production"]);
    }
    assert_eq!(outcomes(&v, "E04.1"), [TermOutcome::Unmet]);
}

#[test]
fn an_item_is_done_when_every_task_is_done_and_every_check_passes() {
    let mut v = Values::new();
    for task in ["E11.1", "E11.2", "E11.3", "E11.4", "E11.5"] {
        v.set_task("task.status", task, TaskStatus::Done);
    }
    let done = |v: &Values| score(catalog(), v).item("E11").is_some_and(|i| i.done);
    // E11.2's budget is missing: not done.
    assert!(!done(&v));
    v.set_number("finance.credit_budget", n("2000000"));
    assert!(done(&v));
    v.set_task("task.status", "E11.4", TaskStatus::InProgress);
    assert!(!done(&v));
}
