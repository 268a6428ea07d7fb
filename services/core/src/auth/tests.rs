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
    // B04 (business-env; county-governments) and, through E08's checks, samr.
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
            [true, false, true, false, false, true],
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
    // Utilities co-lead E08, whose tasks are measured by B01, B02, B04, B05 and G13.
    assert!(utility.contains(&"uscc.codes_total"));
    assert!(!utility.contains(&"finance.npl_balance"));
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
