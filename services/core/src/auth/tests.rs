use super::*;

fn access() -> Access {
    let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    let city = City::builtin(&catalog).unwrap_or_else(|e| panic!("{e}"));
    Access::new(&catalog, &city)
}

fn who(role: Role, department: Option<&str>) -> Principal {
    Principal {
        id: format!("{}-1", role.as_str()),
        role,
        department: department.map(str::to_owned),
        credential: None,
    }
}

#[test]
fn every_role_against_every_kind_of_action() {
    let a = access();
    let count = Action::Submit {
        metric: "uscc.stock_codes_converted",
        region: "330800",
    };
    let score = Action::Submit {
        metric: "campaign.integrity_tour",
        region: "330800",
    };
    let task = Action::Submit {
        metric: "task.status",
        region: "330800",
    };
    // B04 (business-env; county-governments) and, through the checks of E08's
    // 信息归集共享和公开 section, its parties; no longer samr (v2: samr answers for E08's
    // 统一社会信用代码 section only).
    let county = Action::Submit {
        metric: "service_halls.connected",
        region: "330802",
    };
    //            role,           dept,          Read, Administer, count, score, task, county
    let table: &[(Role, Option<&str>, [bool; 6])] = &[
        (Role::Admin, None, [true, true, true, true, true, true]),
        (
            Role::Operator,
            None,
            [true, false, false, false, false, false],
        ),
        (
            Role::Platform,
            None,
            [true, false, true, false, false, true],
        ),
        (
            Role::Assessor,
            None,
            [true, false, false, true, true, false],
        ),
        (
            Role::Department,
            Some("samr"),
            [true, false, true, false, false, false],
        ),
        (
            Role::Department,
            Some("cbirc"),
            [true, false, false, false, false, false],
        ),
        (
            Role::Department,
            Some("gov-330802"),
            [true, false, false, false, false, true],
        ),
        (
            Role::Department,
            Some("gov-330803"),
            [true, false, false, false, false, false],
        ),
    ];
    for (role, dept, want) in table {
        let p = who(*role, *dept);
        let got = [Action::Read, Action::Administer, count, score, task, county]
            .map(|act| a.decide(&p, act).is_ok());
        assert_eq!(&got, want, "{p}");
    }
}

#[test]
fn samr_reports_codes_but_not_assessed_scores() {
    let a = access();
    let samr = who(Role::Department, Some("samr"));
    assert!(
        a.decide(
            &samr,
            Action::Submit {
                metric: "uscc.stock_codes_converted",
                region: "330800"
            }
        )
        .is_ok()
    );
    let denied = a
        .decide(
            &samr,
            Action::Submit {
                metric: "campaign.integrity_tour",
                region: "330800",
            },
        )
        .err()
        .unwrap_or_else(|| panic!("samr must not report an assessed score"));
    let text = denied.to_string();
    assert!(
        text.contains("principal `department-1` (department samr)"),
        "{text}"
    );
    assert!(
        text.contains("`campaign.integrity_tour`") && text.contains("region 330800"),
        "{text}"
    );
    // Its gRPC form (PERMISSION_DENIED) is checked beside the conversion, in `citycredit::auth`.
    // A metric none of samr's subjects use.
    assert!(
        a.decide(
            &samr,
            Action::Submit {
                metric: "finance.npl_balance",
                region: "330800"
            }
        )
        .is_err()
    );
}

#[test]
fn county_governments_report_only_for_their_own_county() {
    let a = access();
    let kecheng = who(Role::Department, Some("gov-330802"));
    assert!(
        a.decide(
            &kecheng,
            Action::Submit {
                metric: "service_halls.total",
                region: "330802"
            }
        )
        .is_ok()
    );
    let denied = a
        .decide(
            &kecheng,
            Action::Submit {
                metric: "service_halls.total",
                region: "330803",
            },
        )
        .err()
        .unwrap_or_else(|| panic!("Kecheng must not report for Qujiang"));
    assert!(
        denied.reason.contains("reports only for region 330802"),
        "{denied}"
    );
    assert!(
        a.decide(
            &kecheng,
            Action::Submit {
                metric: "service_halls.total",
                region: "330800"
            }
        )
        .is_err()
    );
    // A city-level department reports for any region.
    let env = who(Role::Department, Some("business-env"));
    assert!(
        a.decide(
            &env,
            Action::Submit {
                metric: "service_halls.total",
                region: "330803"
            }
        )
        .is_ok()
    );
}

#[test]
fn department_metrics_follow_responsibilities_through_groups() {
    let a = access();
    let utility = a.department_metrics("utility-gas");
    assert!(utility.contains(&"sharing.units_connected"), "{utility:?}");
    // Utilities co-lead E08's 信息归集共享和公开 section (B04, G13, B05), not its 统一社会信用代码
    // section (B01, B02): no USCC figures (rulebook v2).
    assert!(
        !utility.iter().any(|m| m.starts_with("uscc.")),
        "{utility:?}"
    );
    assert!(!utility.contains(&"finance.npl_balance"));
    // 市中院 answers for 法治环境's case figures, not for 信用环境's NPL ratio.
    let court = a.department_metrics("court");
    assert!(court.contains(&"finance.cases_concluded"), "{court:?}");
    assert!(!court.contains(&"finance.npl_balance"), "{court:?}");
    let cbirc = a.department_metrics("cbirc");
    assert!(
        cbirc.contains(&"finance.npl_balance") && !cbirc.contains(&"uscc.codes_total"),
        "{cbirc:?}"
    );
    assert!(
        !a.department_metrics("samr")
            .contains(&"campaign.integrity_tour")
    );
}

#[test]
fn departments_retract_only_their_own_values() {
    let a = access();
    let samr = who(Role::Department, Some("samr"));
    let court = who(Role::Department, Some("court"));
    let retract = |dept| Action::Retract {
        metric: "uscc.codes_total",
        region: "330800",
        department: dept,
    };
    assert!(a.decide(&samr, retract("samr")).is_ok());
    let denied = a
        .decide(&court, retract("samr"))
        .err()
        .unwrap_or_else(|| panic!("court retracted samr's value"));
    assert!(denied.to_string().contains("may not retract"), "{denied}");
    // The platform may retract what it may submit, whoever it was reported for.
    assert!(
        a.decide(&who(Role::Platform, None), retract("samr"))
            .is_ok()
    );
    assert!(
        a.decide(&who(Role::Operator, None), retract("samr"))
            .is_err()
    );
}

#[test]
fn expected_reporters_are_named_departments_not_groups() {
    let a = access();
    // Named individually in E07's 法治环境 section, whose checks read the case figures.
    assert!(a.expected_metrics("court").contains(&"finance.cases_total"));
    assert!(!a.expected_metrics("court").contains(&"finance.npl_balance"));
    // The section list wins over the indicator list: cpc-org answers for civil-servant files
    // (E03.1) but not for G19's judicial flags (E06 names court, procuratorate, justice).
    // samr is named for B01 in E08's 统一社会信用代码 section; city-departments members only
    // through a group are not expected.
    let samr = a.expected_metrics("samr");
    assert!(samr.contains(&"uscc.stock_codes_total"), "{samr:?}");
    // 市住建局 is named in E04 (integrity records) but reaches B03 only through
    // city-departments: permitted, not expected.
    assert!(
        a.expected_metrics("housing")
            .contains(&"integrity.credit_records")
    );
    assert!(
        a.department_metrics("housing")
            .contains(&"gov.dishonesty_events_total")
    );
    assert!(
        !a.expected_metrics("housing")
            .contains(&"gov.dishonesty_events_total")
    );
    // County governments for their own county, through the county-governments group (B04).
    assert_eq!(
        a.expected_reports("gov-330802")
            .into_iter()
            .find(|(m, _)| *m == "service_halls.total")
            .map(|(_, r)| r),
        Some(vec!["330802"])
    );
    assert!(
        a.expected_within("gov-330802", "330800")
            .contains(&"service_halls.total")
    );
    assert!(a.expected_within("business-env", "330802").is_empty());
    // The more specific list wins: E06 (court, procuratorate, justice) reads the judicial flags
    // directly, so G19's departments (cpc-org, business-env) are not expected for them.
    assert!(
        a.expected_metrics("court")
            .contains(&"judicial.info_disclosure")
    );
    assert!(
        !a.expected_metrics("cpc-org")
            .contains(&"judicial.info_disclosure")
    );
    assert!(
        a.department_metrics("cpc-org")
            .contains(&"judicial.info_disclosure")
    );
    // Assessed metrics are expected from the assessor role, from no department.
    assert!(
        !a.expected_metrics("cpc-publicity")
            .contains(&"campaign.integrity_tour")
    );
}

#[test]
fn a_reporting_duty_replaces_the_defaults_and_permits() {
    let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    let mut city = City::builtin(&catalog).unwrap_or_else(|e| panic!("{e}"));
    let before = Access::new(&catalog, &city);
    assert!(
        before
            .expected_metrics("samr")
            .contains(&"uscc.stock_codes_total")
    );
    city.reporting_duties.push(crate::city::ReportingDuty {
        id: "utilities-codes".into(),
        party: "utilities".into(),
        metrics: vec!["uscc.stock_codes_total".into()],
        regions: vec!["330800".into()],
    });
    let after = Access::new(&catalog, &city);
    assert!(
        !after
            .expected_metrics("samr")
            .contains(&"uscc.stock_codes_total")
    );
    assert!(
        after
            .expected_metrics("utility-gas")
            .contains(&"uscc.stock_codes_total")
    );
    assert!(
        after
            .decide(
                &who(Role::Department, Some("utility-gas")),
                Action::Submit {
                    metric: "uscc.stock_codes_total",
                    region: "330800"
                }
            )
            .is_ok()
    );
}

#[test]
fn the_review_cycle_has_its_own_roles() {
    let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    let city = City::builtin(&catalog).unwrap_or_else(|e| panic!("{e}"));
    let a = Access::new(&catalog, &city);
    let office = who(Role::CreditOffice, None);
    let admin = who(Role::Admin, None);
    let samr = who(Role::Department, Some("samr"));
    let kecheng = who(Role::Department, Some("gov-330802"));
    let operator = who(Role::Operator, None);
    let submit = |department, region| Action::SubmitForApproval { department, region };

    // The credit office reads, manages cycles and reviews; it neither submits values nor
    // administers nor grants lock exceptions.
    for ok in [Action::Read, Action::ManageCycles, Action::Review] {
        assert!(a.decide(&office, ok).is_ok(), "{ok:?}");
    }
    for no in [
        Action::Administer,
        Action::GrantLockException,
        submit("samr", "330800"),
        Action::Submit {
            metric: "double_publicity.licenses_total",
            region: "330800",
        },
    ] {
        assert!(a.decide(&office, no).is_err(), "{no:?}");
    }
    // A department submits only its own figures, a county government only for its county.
    assert!(a.decide(&samr, submit("samr", "330800")).is_ok());
    assert!(a.decide(&samr, submit("court", "330800")).is_err());
    assert!(a.decide(&kecheng, submit("gov-330802", "330802")).is_ok());
    assert!(a.decide(&kecheng, submit("gov-330802", "330803")).is_err());
    for no in [
        Action::Review,
        Action::ManageCycles,
        Action::GrantLockException,
    ] {
        assert!(a.decide(&samr, no).is_err(), "{no:?}");
        assert!(a.decide(&operator, no).is_err(), "{no:?}");
    }
    assert!(a.decide(&operator, submit("samr", "330800")).is_err());
    // The administrator may do everything, and alone grants lock exceptions.
    for ok in [
        Action::ManageCycles,
        Action::Review,
        Action::GrantLockException,
        submit("samr", "330800"),
    ] {
        assert!(a.decide(&admin, ok).is_ok(), "{ok:?}");
    }
    assert_eq!(Role::parse("credit_office"), Some(Role::CreditOffice));
    assert_eq!(Role::CreditOffice.as_str(), "credit_office");
}
