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
    assert_eq!(city.responsibilities.len(), 32);
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
    assert_eq!(direct_lead, ["B01", "B02", "B06", "B07", "E08", "E10"]);
    let all: Vec<&str> = subjects.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(
        all,
        [
            "B01", "B02", "B03", "B06", "B07", "B08", "B09", "G11", "G12", "G15", "G18", "G19",
            "G20", "E02", "E04", "E05", "E08", "E09", "E10", "E12"
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
            .contains("responsibilities.B11: no indicator or evaluation item has this code"),
        "{e}"
    );
    assert!(
        e.to_string().contains("responsibilities.B10: missing"),
        "{e}"
    );
}
