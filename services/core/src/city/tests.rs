use super::*;

fn load() -> (Catalog, City) {
    let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    let city = City::builtin(&catalog).unwrap_or_else(|e| panic!("{e}"));
    (catalog, city)
}

#[test]
fn quzhou_has_the_rulebooks_organisation() {
    let (_, city) = load();
    assert_eq!(city.regions.len(), 7);
    assert_eq!(city.departments.len(), 50);
    assert_eq!(city.groups.len(), 4);
    assert_eq!(
        city.department("samr").map(|d| d.name.as_str()),
        Some("市市场监管局")
    );
    assert_eq!(
        city.department("gov-330881")
            .and_then(|d| d.governs.as_deref()),
        Some("330881")
    );
    assert_eq!(
        city.group("city-departments").map(|g| g.members.len()),
        Some(37)
    );
    // 20 indicators, 9 items without sections and E07 (3), E08 (2), E11 (2) by section.
    assert_eq!(city.responsibilities.len(), 36);
    assert!(city.reporting_duties.is_empty());
}

#[test]
fn b01_is_led_by_samr_and_groups_expand() {
    let (_, city) = load();
    let duties = city.duties_for_subject("B01");
    let codes: Vec<&str> = duties.iter().map(|d| d.department.as_str()).collect();
    assert_eq!(codes, ["samr", "cpc-staffing", "civil-affairs"]);
    assert_eq!(duties[0].role, Role::Lead);
    let g13 = city.duties_for_subject("G13");
    assert!(
        g13.iter()
            .any(|d| d.department == "utility-gas" && d.via_group.as_deref() == Some("utilities"))
    );
}

#[test]
fn samr_duties_match_the_rulebook() {
    let (_, city) = load();
    let subjects: Vec<(String, Role, bool)> = city
        .duties_of_department("samr")
        .into_iter()
        .map(|d| (d.subject, d.role, d.via_group.is_some()))
        .collect();
    let direct_lead: Vec<&str> = subjects
        .iter()
        .filter(|(_, r, g)| *r == Role::Lead && !g)
        .map(|(s, _, _)| s.as_str())
        .collect();
    assert_eq!(direct_lead, ["B01", "B02", "B06", "B07", "E08/uscc", "E10"]);
    let all: Vec<&str> = subjects.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(
        all,
        [
            "B01", "B02", "B03", "B06", "B07", "B08", "B09", "G11", "G12", "G15", "G18", "G19",
            "G20", "E02", "E04", "E05", "E08/uscc", "E09", "E10", "E12"
        ]
    );
}

fn broken(from: &str, to: &str) -> LoadError {
    let (catalog, _) = load();
    assert!(
        BUILTIN_CITY_TOML.contains(from),
        "fixture text `{from}` not found"
    );
    let text = BUILTIN_CITY_TOML.replacen(from, to, 1);
    match City::from_toml(&text, "city.toml", &catalog) {
        Ok(_) => panic!("a city with `{to}` must be refused"),
        Err(e) => e,
    }
}

#[test]
fn unknown_department_or_group_in_a_responsibility_is_refused() {
    let e = broken(r#"B10 = ["business-env"]"#, r#"B10 = ["business-envv"]"#);
    assert!(
        e.problems.iter().any(|p| p.key == "responsibilities.B10"
            && p.message
                .contains("unknown department or group `business-envv`")
            && p.line.is_some()),
        "{e}"
    );
}

#[test]
fn a_region_whose_parent_is_missing_is_refused() {
    let e = broken(
        "code = \"330881\"\nname = \"江山市\"\nparent = \"330800\"",
        "code = \"330881\"\nname = \"江山市\"\nparent = \"330899\"",
    );
    assert!(
        e.problems
            .iter()
            .any(|p| p.key == "region 330881"
                && p.message.contains("parent region `330899` is missing")),
        "{e}"
    );
}

#[test]
fn duplicate_departments_and_unknown_subjects_are_refused() {
    let e = broken(r#"code = "cpc-publicity""#, r#"code = "cpc-org""#);
    assert!(e.to_string().contains("duplicate department code"), "{e}");
    let e = broken("B10 = ", "B11 = ");
    assert!(
        e.to_string()
            .contains("responsibilities.B11: no indicator, evaluation item or item section"),
        "{e}"
    );
    assert!(
        e.to_string().contains("responsibilities.B10: missing"),
        "{e}"
    );
}

#[test]
fn sections_have_their_own_lists_and_the_item_takes_the_union() {
    let (_, city) = load();
    assert_eq!(city.parties("E07/rule-of-law"), ["finance-office", "court"]);
    assert_eq!(
        city.parties("E07"),
        ["finance-office", "pboc", "cbirc", "court"]
    );
    // E08's lead is its first section's lead.
    assert_eq!(
        city.parties("E08").first().map(String::as_str),
        Some("samr")
    );
    let court: Vec<String> = city
        .duties_of_department("court")
        .into_iter()
        .map(|d| d.subject)
        .filter(|s| s.starts_with("E07"))
        .collect();
    assert_eq!(court, ["E07/rule-of-law"]);
}

#[test]
fn an_item_with_sections_takes_lists_per_section() {
    let e = broken(
        r#""E07/rule-of-law" = ["finance-office", "court"]"#,
        r#"E07 = ["finance-office", "court"]"#,
    );
    let text = e.to_string();
    assert!(text.contains("item E07 has sections"), "{text}");
    assert!(
        text.contains("responsibilities.E07/rule-of-law: missing"),
        "{text}"
    );
}

#[test]
fn reporting_duties_are_read_and_checked() {
    let (catalog, _) = load();
    let duty = "\n[[reporting_duty]]\nid = \"housing-credit-records\"\nparty = \"housing\"\nmetrics = [\"integrity.credit_records\"]\nregions = [\"330800\"]\n";
    let text = format!("{BUILTIN_CITY_TOML}{duty}");
    let city = City::from_toml(&text, "city.toml", &catalog).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        city.reporting_duties,
        [ReportingDuty {
            id: "housing-credit-records".into(),
            party: "housing".into(),
            metrics: vec!["integrity.credit_records".into()],
            regions: vec!["330800".into()],
        }]
    );
    let bad = format!(
        "{BUILTIN_CITY_TOML}{}",
        duty.replace("integrity.credit_records", "campaign.integrity_tour")
            .replace("330800", "330899")
    );
    let e = City::from_toml(&bad, "city.toml", &catalog)
        .err()
        .unwrap_or_else(|| panic!("a duty for an assessed metric must be refused"));
    let text = e.to_string();
    assert!(text.contains("reported by assessors"), "{text}");
    assert!(text.contains("unknown region `330899`"), "{text}");
}

#[test]
fn quzhou_seeds_one_review_cycle_and_a_bad_cycle_is_refused_with_its_line() {
    let (catalog, city) = load();
    assert_eq!(city.cycles.len(), 1);
    let c = &city.cycles[0];
    assert_eq!(c.id, "2026-demonstration");
    assert_eq!(c.title, "2026 年度示范城市创建");
    assert_eq!(c.rule_version, catalog.version);
    assert_eq!(c.review_date, "2027-03-31");
    assert_eq!((c.grace_days, c.on_time_days), (7, 15));
    assert_eq!(c.periods.len(), 5);
    assert!(!c.deadlines.is_empty());
    assert!(c.deadlines.iter().all(|d| d.due_micros > 0));

    let bad = BUILTIN_CITY_TOML.replace("rule_version = \"2019.2\"", "rule_version = \"1999.9\"");
    let err = City::from_toml(&bad, "bad.toml", &catalog)
        .err()
        .unwrap_or_else(|| panic!("an unknown rule version must be refused"));
    let text = err.to_string();
    assert!(
        text.contains("cycle 2026-demonstration") && text.contains("rule_version"),
        "{text}"
    );
}

#[test]
fn a_region_s_ancestry_runs_up_to_the_city() {
    let (_, city) = load();
    assert_eq!(city.ancestry("330802"), ["330802", "330800"]);
    assert_eq!(city.ancestry("330800"), ["330800"]);
    assert_eq!(
        city.ancestry("999999"),
        ["999999"],
        "an unknown region alone"
    );
    assert!(city.is_within("330802", "330800"));
    assert!(city.is_within("330800", "330800"));
    assert!(!city.is_within("330800", "330802"));
    assert!(!city.is_within("330802", "330803"));
}
