use super::*;

/// Every metric key of the rulebook's section 2 table, in its order.
const RULEBOOK_METRICS: &[(&str, &str)] = &[
    ("uscc.stock_codes_total", "COUNT"),
    ("uscc.stock_codes_converted", "COUNT"),
    ("uscc.codes_total", "COUNT"),
    ("uscc.codes_duplicate_or_invalid", "COUNT"),
    ("gov.dishonesty_events_total", "COUNT"),
    ("gov.dishonesty_events_rectified", "COUNT"),
    ("service_halls.total", "COUNT"),
    ("service_halls.connected", "COUNT"),
    ("double_publicity.licenses_total", "COUNT"),
    ("double_publicity.licenses_reported", "COUNT"),
    ("double_publicity.penalties_total", "COUNT"),
    ("double_publicity.penalties_reported", "COUNT"),
    ("credit_report.target_entities", "COUNT"),
    ("credit_report.submitted", "COUNT"),
    ("blacklist.in_operation", "COUNT"),
    ("blacklist.exited_after_rectification", "COUNT"),
    ("credit_repair.trained", "COUNT"),
    ("market_entities.in_operation", "COUNT"),
    ("commitment.proactive_or_self_discipline_entities", "COUNT"),
    ("commitment.approval_substitution_items", "COUNT"),
    ("approval_items.total", "COUNT"),
    ("commitment.tolerance_acceptance_items", "COUNT"),
    ("commitment.repair_commitment_entities", "COUNT"),
    ("monitoring.counties_total", "COUNT"),
    ("monitoring.counties_covered", "COUNT"),
    ("monitoring.township_extension_plan", "BOOL"),
    ("monitoring.city_rank", "RANK"),
    ("joint_rp.domain_implemented", "DOMAIN_FLAG"),
    ("penetration.unit_dishonesty_records", "COUNT"),
    ("penetration.linked_records", "COUNT"),
    ("sharing.units_required", "COUNT"),
    ("sharing.units_connected", "COUNT"),
    ("portal.disclosed_records", "COUNT"),
    ("legal_entities.total", "COUNT"),
    ("portal.daily_avg_clicks", "COUNT"),
    ("population.registered", "COUNT"),
    ("joint_rp.valid_cases", "COUNT"),
    ("red_black_list.in_operation", "COUNT"),
    ("joint_rp.domain_automated", "DOMAIN_FLAG"),
    ("personal_credit_score.holders", "COUNT"),
    ("xinyi_plus.domain_in_service", "DOMAIN_FLAG"),
    ("approval.departments_with_power", "COUNT"),
    ("approval.departments_with_tolerance_acceptance", "COUNT"),
    ("xinyidai.loan_amount", "AMOUNT"),
    ("integrity.civil_servant_files", "BOOL"),
    ("integrity.credit_records", "DOMAIN_FLAG"),
    ("integrity.portal_disclosure", "DOMAIN_FLAG"),
    ("integrity.red_black_lists", "DOMAIN_FLAG"),
    ("integrity.graded_supervision", "DOMAIN_FLAG"),
    ("judicial.professional_files_graded", "BOOL"),
    ("judicial.info_disclosure", "BOOL"),
    ("judicial.red_black_lists", "BOOL"),
    ("campaign.integrity_tour", "SCORE"),
    ("campaign.special_governance", "SCORE"),
    ("finance.npl_balance", "AMOUNT"),
    ("finance.loan_balance", "AMOUNT"),
    ("finance.cases_total", "COUNT"),
    ("finance.cases_concluded", "COUNT"),
    ("finance.amount_adjudicated", "AMOUNT"),
    ("finance.amount_realized", "AMOUNT"),
    ("finance.illegal_fundraising_cases", "COUNT"),
    ("finance.illegal_fundraising_cases_prev", "COUNT"),
    ("uscc.individual_business_total", "COUNT"),
    ("uscc.individual_business_mapped", "COUNT"),
    ("sharing.national_jrp_docked", "BOOL"),
    ("sharing.red_black_list_embedded", "BOOL"),
    ("finance.credit_budget", "AMOUNT"),
    ("task.status", "TASK_STATUS"),
];

fn builtin() -> Catalog {
    Catalog::builtin().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn builtin_catalog_holds_every_rulebook_metric_in_order() {
    let c = builtin();
    let got: Vec<(&str, &str)> = c
        .metrics
        .iter()
        .map(|m| (m.key.as_str(), m.kind.as_str()))
        .collect();
    assert_eq!(got, RULEBOOK_METRICS);
}

#[test]
fn builtin_catalog_has_the_criteria() {
    let c = builtin();
    let codes: Vec<&str> = c.indicators.iter().map(|i| i.code.as_str()).collect();
    let want: Vec<String> = (1..=10)
        .map(|n| format!("B{n:02}"))
        .chain((11..=20).map(|n| format!("G{n}")))
        .collect();
    assert_eq!(codes, want);
    assert_eq!(c.guiding_max_total(), Num::from_int(54));
    let tasks: Vec<usize> = c.items.iter().map(|i| i.tasks.len()).collect();
    assert_eq!(tasks, [3, 2, 3, 1, 1, 3, 8, 4, 2, 8, 5, 1]);
    assert_eq!(c.checks.len(), 21);
    assert_eq!(
        c.domain_set("integrity_domains").map(|s| s.domains.len()),
        Some(20)
    );
    assert_eq!(c.domain_set("xinyi_plus").map(|s| s.domains.len()), Some(8));
    assert!(
        c.domain_set("joint_reward_punishment")
            .is_some_and(|s| s.open && s.domains.is_empty())
    );
    assert_eq!(
        c.metric("uscc.codes_total").map(|m| m.used_by.clone()),
        Some(vec!["B02".to_owned()])
    );
    assert!(c.task("E07.5").is_some());
}

/// Replaces `from` (which must occur) in the builtin text and loads the result.
fn broken(from: &str, to: &str) -> LoadError {
    assert!(
        BUILTIN_CATALOG_TOML.contains(from),
        "fixture text `{from}` not found"
    );
    let text = BUILTIN_CATALOG_TOML.replacen(from, to, 1);
    match Catalog::from_toml(&text, "broken.toml") {
        Ok(_) => panic!("a catalog with `{to}` must be refused"),
        Err(e) => e,
    }
}

fn assert_problem(e: &LoadError, key: &str, message: &str) {
    let text = e.to_string();
    assert!(
        e.problems
            .iter()
            .any(|p| p.key.contains(key) && p.message.contains(message) && p.line.is_some()),
        "expected a problem at `{key}` saying `{message}` with a line, got:\n{text}"
    );
    assert!(text.starts_with("broken.toml has "), "{text}");
}

#[test]
fn unknown_metric_in_a_rule_is_refused_with_its_line() {
    let e = broken(
        r#"numerator = "uscc.stock_codes_converted", denominator"#,
        r#"numerator = "uscc.stock_codes_convertd", denominator"#,
    );
    assert_problem(
        &e,
        "indicator B01, condition 1, numerator",
        "unknown metric `uscc.stock_codes_convertd`",
    );
    let line = e.problems[0].line.unwrap_or_default();
    let b01_line = BUILTIN_CATALOG_TOML
        .lines()
        .position(|l| l.contains(r#"code = "B01""#))
        .unwrap_or_default()
        + 1;
    assert!(
        line.abs_diff(b01_line) <= 2,
        "line {line} should point at B01 (line {b01_line})"
    );
}

#[test]
fn a_rule_whose_metric_kind_does_not_fit_is_refused() {
    let e = broken(
        r#"type = "is_true", metric = "monitoring.township_extension_plan""#,
        r#"type = "is_true", metric = "monitoring.city_rank""#,
    );
    assert_problem(
        &e,
        "indicator B10, condition 2, metric",
        "is RANK, this rule needs BOOL",
    );
    let e = broken(
        r#"type = "capped_domain_count", metric = "joint_rp.domain_implemented""#,
        r#"type = "capped_domain_count", metric = "population.registered""#,
    );
    assert_problem(
        &e,
        "indicator G11, part a, metric",
        "is COUNT, this rule needs DOMAIN_FLAG",
    );
}

#[test]
fn duplicate_codes_are_refused() {
    let e = broken(r#"code = "B02""#, r#"code = "B01""#);
    assert_problem(&e, "indicator B01", "duplicate indicator code");
    let e = broken(
        r#"key = "uscc.codes_total""#,
        r#"key = "uscc.stock_codes_total""#,
    );
    assert_problem(&e, "metric uscc.stock_codes_total", "duplicate metric key");
}

#[test]
fn a_wrong_max_score_is_refused() {
    let e = broken("max_score = \"20\"", "max_score = \"21\"");
    assert_problem(
        &e,
        "indicator G19",
        "max_score 21 differs from the sum of its parts' maxima 20",
    );
}

#[test]
fn toml_syntax_errors_name_the_line() {
    let text = BUILTIN_CATALOG_TOML.replacen("[[indicator]]", "[[indicator]", 1);
    let e = Catalog::from_toml(&text, "broken.toml")
        .err()
        .unwrap_or_else(|| panic!("must fail"));
    assert!(e.problems[0].line.is_some(), "{e}");
    let text = BUILTIN_CATALOG_TOML.replacen("threshold = \"0.8\"", "threshold = \"eighty\"", 1);
    let e = Catalog::from_toml(&text, "broken.toml")
        .err()
        .unwrap_or_else(|| panic!("must fail"));
    assert!(e.to_string().contains("eighty"), "{e}");
}

#[test]
fn numbers_as_toml_floats_are_refused() {
    let text = BUILTIN_CATALOG_TOML.replacen("threshold = \"0.8\"", "threshold = 0.8", 1);
    assert!(Catalog::from_toml(&text, "broken.toml").is_err());
}

#[test]
fn misnumbered_tasks_are_refused() {
    let e = broken(r#"id = "E07.5""#, r#"id = "E07.9""#);
    assert_problem(&e, "item E07", "task `E07.9` should be `E07.5`");
}

#[test]
fn misspelled_rule_fields_are_refused() {
    let text = BUILTIN_CATALOG_TOML.replacen("threshold = \"0.8\"", "treshold = \"0.8\"", 1);
    let e = Catalog::from_toml(&text, "broken.toml")
        .err()
        .unwrap_or_else(|| panic!("must fail"));
    assert!(e.to_string().contains("treshold"), "{e}");
}

#[test]
fn the_catalog_says_which_rulebook_it_renders() {
    assert_eq!(builtin().rulebook_version, RULEBOOK_VERSION);
    let e = broken("rulebook_version = 2\n", "");
    assert!(
        e.problems
            .iter()
            .any(|p| p.key == "catalog.rulebook_version" && p.message.contains("is required")),
        "{e}"
    );
    let e = broken("rulebook_version = 2\n", "rulebook_version = 1\n");
    assert!(
        e.to_string()
            .contains("renders rulebook version 1; this platform implements version 2"),
        "{e}"
    );
}

/// The line of `needle` in the builtin text (1-based).
fn line_of(needle: &str) -> usize {
    BUILTIN_CATALOG_TOML
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` not in the catalog"))
        + 1
}

#[test]
fn task_checks_naming_unknown_indicators_or_conditions_are_refused_at_the_tasks_line() {
    let e = broken(
        r#"{ type = "indicator_passes", indicator = "B03" }"#,
        r#"{ type = "indicator_passes", indicator = "B33" }"#,
    );
    assert_problem(
        &e,
        "item E03, task E03.2, check 1",
        "unknown indicator `B33`",
    );
    let task_line = line_of(r#"id = "E03.2""#);
    assert!(
        e.problems.iter().any(|p| p.line == Some(task_line)),
        "the problem should name E03.2's line {task_line}: {e}"
    );
    assert!(
        e.to_string()
            .contains(&format!("broken.toml:{task_line}: item E03, task E03.2")),
        "{e}"
    );

    let e = broken(r#"conditions = ["1", "2"]"#, r#"conditions = ["1", "4"]"#);
    assert_problem(
        &e,
        "item E03, task E03.3, check 1, conditions",
        "indicator `B10` has no condition `4` (it has 1, 2, 3)",
    );
    let e = broken(r#"conditions = ["1", "2"]"#, r#"conditions = ["1", "1"]"#);
    assert_problem(&e, "task E03.3", "condition `1` is named twice");

    let e = broken(
        r#"{ type = "indicator_scores", indicator = "G17" }"#,
        r#"{ type = "indicator_scores", indicator = "B06" }"#,
    );
    assert_problem(&e, "task E09.1", "`B06` is a basic indicator");
    let e = broken(
        r#"{ type = "indicator_passes", indicator = "B09" }"#,
        r#"{ type = "indicator_passes", indicator = "G19" }"#,
    );
    assert_problem(&e, "task E10.1", "`G19` is a guiding indicator");
    let e = broken(
        r#"metric = "finance.credit_budget", threshold = "0""#,
        r#"metric = "finance.credit_budgets", threshold = "0""#,
    );
    assert_problem(
        &e,
        "item E11, task E11.2, check 1, metric",
        "unknown metric `finance.credit_budgets`",
    );
}

#[test]
fn unknown_check_types_and_misspelt_check_fields_are_refused() {
    let text = BUILTIN_CATALOG_TOML.replacen(
        r#"{ type = "indicator_passes", indicator = "B03" }"#,
        r#"{ type = "indicator_pass", indicator = "B03" }"#,
        1,
    );
    let e = Catalog::from_toml(&text, "broken.toml")
        .err()
        .unwrap_or_else(|| panic!("must fail"));
    assert!(
        e.to_string()
            .contains("unknown check type `indicator_pass`"),
        "{e}"
    );
    assert!(e.problems[0].line.is_some(), "{e}");
    let text =
        BUILTIN_CATALOG_TOML.replacen(r#"conditions = ["1", "2"]"#, r#"condition = ["1", "2"]"#, 1);
    let e = Catalog::from_toml(&text, "broken.toml")
        .err()
        .unwrap_or_else(|| panic!("must fail"));
    assert!(e.to_string().contains("condition"), "{e}");
}

#[test]
fn the_seven_flow_metrics_are_flow_and_every_other_is_a_level() {
    let c = builtin();
    let flow: Vec<&str> = c
        .metrics
        .iter()
        .filter(|m| m.time == TimeClass::Flow)
        .map(|m| m.key.as_str())
        .collect();
    assert_eq!(
        flow,
        [
            "double_publicity.licenses_total",
            "double_publicity.licenses_reported",
            "double_publicity.penalties_total",
            "double_publicity.penalties_reported",
            "xinyidai.loan_amount",
            "finance.illegal_fundraising_cases",
            "finance.illegal_fundraising_cases_prev",
        ]
    );
    assert_eq!(
        c.metric("monitoring.city_rank").map(|m| m.time),
        Some(TimeClass::Level)
    );
    let e = broken(
        "key = \"xinyidai.loan_amount\"\nkind = \"AMOUNT\"\ntime = \"flow\"\n",
        "key = \"xinyidai.loan_amount\"\nkind = \"AMOUNT\"\ntime = \"stock\"\n",
    );
    assert!(e.to_string().contains("stock"), "{e}");
}

#[test]
fn g13s_units_aggregate_at_the_region_itself() {
    let c = builtin();
    for key in ["sharing.units_required", "sharing.units_connected"] {
        assert_eq!(
            c.metric(key).map(Metric::scope),
            Some(AggregationScope::Region)
        );
    }
    assert_eq!(
        c.metric("service_halls.total").map(Metric::scope),
        Some(AggregationScope::Subtree)
    );
    assert_eq!(
        c.metric("monitoring.city_rank").map(Metric::scope),
        Some(AggregationScope::Region)
    );
    let e = broken(
        "kind = \"RANK\"\n",
        "kind = \"RANK\"\nscope = \"subtree\"\n",
    );
    assert_problem(
        &e,
        "metric monitoring.city_rank",
        "a RANK metric always takes the value at the region itself",
    );
}

#[test]
fn an_item_reads_only_the_named_conditions_metrics() {
    let c = builtin();
    let e03 = c.subject_metrics("E03");
    assert!(e03.contains(&"monitoring.township_extension_plan"));
    assert!(e03.contains(&"integrity.civil_servant_files"));
    assert!(!e03.contains(&"monitoring.city_rank"), "{e03:?}");
    let e08 = c.subject_metrics("E08");
    for m in [
        "uscc.individual_business_mapped",
        "sharing.national_jrp_docked",
        "sharing.red_black_list_embedded",
        "service_halls.connected",
        "sharing.units_connected",
    ] {
        assert!(e08.contains(&m), "{m}: {e08:?}");
    }
    assert!(c.subject_metrics("E11").contains(&"finance.credit_budget"));
}

#[test]
fn only_additive_metrics_can_flow() {
    let e = broken(
        "key = \"monitoring.city_rank\"\nkind = \"RANK\"\n",
        "key = \"monitoring.city_rank\"\nkind = \"RANK\"\ntime = \"flow\"\n",
    );
    assert_problem(
        &e,
        "metric monitoring.city_rank",
        "only COUNT and AMOUNT metrics can be time = \"flow\"",
    );
}

/// Issue 14, Chinese first: every title and description a person reads has English beside the
/// official Chinese, and the English is a rendering, not a copy.
#[test]
fn every_builtin_title_and_description_has_english() {
    let c = builtin();
    let texts = c.texts();
    // 1 catalog + 68 metrics + 28 domains + 20 indicators + 12 items + 7 sections + 41 tasks +
    // 8 descriptions: the count keeps `texts()` from silently skipping a kind of text.
    assert_eq!(texts.len(), 185);
    let mut missing = Vec::new();
    for t in &texts {
        assert!(!t.zh.trim().is_empty(), "{}: no Chinese text", t.place);
        match t.en {
            None => missing.push(t.place.clone()),
            Some(en) => {
                assert!(!en.trim().is_empty(), "{}: blank English", t.place);
                assert_ne!(en, t.zh, "{}: the English repeats the Chinese", t.place);
                assert_eq!(en, en.trim(), "{}: stray spaces", t.place);
                assert!(
                    !en.chars().any(|ch| ('\u{4e00}'..='\u{9fff}').contains(&ch)),
                    "{}: Chinese characters in the English `{en}`",
                    t.place
                );
            }
        }
    }
    assert!(missing.is_empty(), "no English for: {missing:?}");
}

#[test]
fn english_titles_use_the_rulebooks_terms() {
    let c = builtin();
    let en = |t: Option<&String>| t.cloned().unwrap_or_default();
    assert_eq!(
        en(c.indicator("B01").and_then(|i| i.title_en.as_ref())),
        "100% of legacy codes converted to unified social credit codes."
    );
    assert!(
        en(c.indicator("B05").and_then(|i| i.title_en.as_ref())).contains("Credit China"),
        "B05 names Credit China"
    );
    assert_eq!(
        en(c.metric("population.registered")
            .and_then(|m| m.title_en.as_ref())),
        "Registered (hukou) population of the city"
    );
    assert_eq!(
        c.section("E07/rule-of-law")
            .and_then(|s| s.title_en.clone()),
        Some("Rule-of-law environment".to_owned())
    );
    assert_eq!(
        en(c.task("E08.4").and_then(|t| t.title_en.as_ref())),
        en(c.indicator("B05").and_then(|i| i.title_en.as_ref())),
        "E08.4 restates B05 and says it in the same English"
    );
}

#[test]
fn a_catalog_without_english_loads() {
    let text: String = BUILTIN_CATALOG_TOML
        .lines()
        .filter(|l| !l.starts_with("title_en = ") && !l.starts_with("description_en = "))
        .map(|l| {
            // Inline tables: domains and sections.
            match l.find(", title_en = \"") {
                Some(at) => {
                    let rest = &l[at + ", title_en = \"".len()..];
                    let end = rest.find('"').map_or(rest.len(), |e| e + 1);
                    format!("{}{}", &l[..at], &rest[end..])
                }
                None => l.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!text.contains("_en ="), "every English key was removed");
    let c = Catalog::from_toml(&text, "plain.toml").unwrap_or_else(|e| panic!("{e}"));
    assert!(c.texts().iter().all(|t| t.en.is_none()));
    assert_eq!(c.texts().len(), 185);
}

#[test]
fn blank_or_orphan_english_is_refused_with_its_line() {
    let e = broken(
        "title_en = \"Government service halls\"",
        "title_en = \"  \"",
    );
    assert_problem(&e, "metric service_halls.total", "`title_en` is blank");
    // E07.5 has no description, so English for one renders nothing.
    let e = broken(
        "title = \"非法集资发案数增长率控制在＜0%。\"\n",
        "title = \"非法集资发案数增长率控制在＜0%。\"\ndescription_en = \"orphan\"\n",
    );
    assert_problem(
        &e,
        "task E07.5",
        "`description_en` without the Chinese text it renders",
    );
}

#[test]
fn a_section_keeps_one_english_title() {
    let e = broken(
        "section = { code = \"rule-of-law\", title = \"法治环境\", title_en = \"Rule-of-law environment\" }\ntitle = \"金融案件标的额兑现率",
        "section = { code = \"rule-of-law\", title = \"法治环境\", title_en = \"Legal environment\" }\ntitle = \"金融案件标的额兑现率",
    );
    assert_problem(&e, "item E07", "in English elsewhere");
}
