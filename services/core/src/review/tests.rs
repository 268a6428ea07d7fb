use super::*;

fn p(s: &str) -> Period {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn dates_end_at_midnight_in_shanghai() {
    assert_eq!(
        parse_date("1900-01-01"),
        None,
        "before 1949 is not a review date"
    );
    assert_eq!(parse_date("1970-01-02"), Some(1));
    assert_eq!(parse_date("2026-02-29"), None);
    assert_eq!(parse_date("2024-02-29"), Some(19782));
    assert_eq!(parse_date("2026-13-01"), None);
    assert_eq!(parse_date("2026-1-01"), None);
    // 2027-03-31 23:59:59.999999 +08:00 = 2027-03-31T15:59:59.999999Z.
    let end = end_of_day_micros("2027-03-31").unwrap_or_default();
    assert_eq!(end, 1806508799999999);
}

#[test]
fn transitions_follow_the_state_machine() {
    use SignOffState as S;
    use Transition as T;
    assert_eq!(T::Submit.apply(S::Open), Some(S::Submitted));
    assert_eq!(T::Submit.apply(S::Returned), Some(S::Submitted));
    assert_eq!(T::Submit.apply(S::Submitted), None);
    assert_eq!(T::Submit.apply(S::Approved), None);
    assert_eq!(T::Approve.apply(S::Submitted), Some(S::Approved));
    assert_eq!(T::Approve.apply(S::Open), None);
    assert_eq!(
        T::Approve.apply(S::Approved),
        None,
        "a second approval loses"
    );
    assert_eq!(T::Return.apply(S::Submitted), Some(S::Returned));
    assert_eq!(T::Return.apply(S::Approved), None);
    assert_eq!(T::Unapprove.apply(S::Approved), Some(S::Open));
    assert_eq!(T::Unapprove.apply(S::Submitted), None);
    assert!(T::Return.needs_comment() && T::Unapprove.needs_comment());
    assert!(!T::Submit.needs_comment() && !T::Approve.needs_comment());
    for s in [S::Open, S::Submitted, S::Approved, S::Returned] {
        assert_eq!(S::parse(s.as_str()), Some(s));
    }
    assert!(S::Open.writable() && S::Returned.writable());
    assert!(!S::Submitted.writable() && !S::Approved.writable());
}

#[test]
fn the_city_waits_for_submitted_counties_only() {
    use SignOffState as S;
    let below = vec![
        ("330802".to_owned(), S::Approved),
        ("330803".to_owned(), S::Submitted),
        ("330822".to_owned(), S::Open),
        ("330824".to_owned(), S::Returned),
        ("330825".to_owned(), S::Submitted),
    ];
    assert_eq!(regions_not_approved(&below), ["330803", "330825"]);
    assert!(regions_not_approved(&below[..1]).is_empty());
}

fn target<'a>(period: &str, metric: &'a str, class: TimeClass) -> WriteTarget<'a> {
    WriteTarget {
        department: "samr",
        region: "330800",
        period: p(period),
        metric,
        task_id: "",
        class,
    }
}

fn lock(period: &str, state: SignOffState) -> Lock {
    Lock {
        department: "samr".into(),
        region: "330800".into(),
        period: p(period),
        state,
    }
}

#[test]
fn an_approved_period_locks_the_periods_that_reach_it() {
    let gate = Gate::new(vec![lock("2026", SignOffState::Approved)], vec![], vec![]);
    let year = p("2026");
    for w in ["2026", "2026-Q2", "2026-07"] {
        assert_eq!(
            gate.decide(&target(w, "m", TimeClass::Flow), 0),
            Verdict::Refused(Refusal::Approved { locked: year }),
            "{w}"
        );
    }
    // A FLOW value of 2025 never counts for 2026; a LEVEL one of December 2025 carries forward.
    assert_eq!(
        gate.decide(&target("2025-12", "m", TimeClass::Flow), 0),
        Verdict::Open
    );
    assert_eq!(
        gate.decide(&target("2025-12", "m", TimeClass::Level), 0),
        Verdict::Refused(Refusal::Approved { locked: year })
    );
    assert_eq!(
        gate.decide(&target("2027-01", "m", TimeClass::Level), 0),
        Verdict::Open
    );
    // Another region or department is not locked.
    let mut other = target("2026", "m", TimeClass::Flow);
    other.region = "330802";
    assert_eq!(gate.decide(&other, 0), Verdict::Open);
    other.region = "330800";
    other.department = "court";
    assert_eq!(gate.decide(&other, 0), Verdict::Open);
}

#[test]
fn approval_wins_over_waiting_and_waiting_over_a_closed_deadline() {
    let deadline = GateDeadline {
        cycle_id: "c".into(),
        department: "samr".into(),
        subject: String::new(),
        period: p("2026-Q1"),
        due_micros: 100,
        grace_days: 0,
    };
    let gate = Gate::new(
        vec![
            lock("2026-Q1", SignOffState::Submitted),
            lock("2026", SignOffState::Approved),
        ],
        vec![deadline.clone()],
        vec![],
    );
    assert_eq!(
        gate.decide(&target("2026-01", "m", TimeClass::Flow), 1_000),
        Verdict::Refused(Refusal::Approved { locked: p("2026") })
    );
    let gate = Gate::new(
        vec![lock("2026-Q1", SignOffState::Submitted)],
        vec![deadline.clone()],
        vec![],
    );
    assert_eq!(
        gate.decide(&target("2026-01", "m", TimeClass::Flow), 1_000),
        Verdict::Refused(Refusal::AwaitingApproval {
            locked: p("2026-Q1")
        })
    );
    let gate = Gate::new(vec![], vec![deadline], vec![]);
    assert_eq!(
        gate.decide(&target("2026-01", "m", TimeClass::Flow), 1_000),
        Verdict::Refused(Refusal::Closed {
            locked: p("2026-Q1"),
            cycle_id: "c".into(),
            closes_micros: 100
        })
    );
    assert_eq!(
        gate.decide(&target("2026-01", "m", TimeClass::Flow), 100),
        Verdict::Open,
        "closed only after the deadline"
    );
    assert_eq!(
        gate.decide(&target("2026-04", "m", TimeClass::Flow), 1_000),
        Verdict::Open
    );
}

#[test]
fn grace_days_and_the_subject_deadline_decide_closing() {
    let general = GateDeadline {
        cycle_id: "c".into(),
        department: "samr".into(),
        subject: String::new(),
        period: p("2026"),
        due_micros: 0,
        grace_days: 7,
    };
    let specific = GateDeadline {
        subject: "special.metric".into(),
        due_micros: 30 * DAY_MICROS,
        ..general.clone()
    };
    let gate = Gate::new(vec![], vec![general, specific], vec![]);
    let day = |n: i64| n * DAY_MICROS;
    // The general deadline + 7 days closes other metrics after day 7.
    assert_eq!(
        gate.decide(&target("2026", "other", TimeClass::Flow), day(7)),
        Verdict::Open
    );
    assert!(matches!(
        gate.decide(&target("2026", "other", TimeClass::Flow), day(7) + 1),
        Verdict::Refused(Refusal::Closed { .. })
    ));
    // The metric's own deadline wins: open until day 37.
    assert_eq!(
        gate.decide(&target("2026", "special.metric", TimeClass::Flow), day(20)),
        Verdict::Open
    );
    assert!(matches!(
        gate.decide(
            &target("2026", "special.metric", TimeClass::Flow),
            day(37) + 1
        ),
        Verdict::Refused(Refusal::Closed { .. })
    ));
    // A task's own deadline applies to values of that task.
    let task = GateDeadline {
        cycle_id: "c".into(),
        department: "samr".into(),
        subject: "E01.1".into(),
        period: p("2026"),
        due_micros: day(100),
        grace_days: 0,
    };
    let gate = Gate::new(vec![], vec![task], vec![]);
    let mut w = target("2026", "tasks.status", TimeClass::Level);
    assert_eq!(gate.decide(&w, day(101)), Verdict::Open, "not its task");
    w.task_id = "E01.1";
    assert!(matches!(
        gate.decide(&w, day(101)),
        Verdict::Refused(Refusal::Closed { .. })
    ));
}

#[test]
fn a_lock_exception_lets_its_period_through_until_it_expires() {
    let gate = Gate::new(
        vec![lock("2026", SignOffState::Approved)],
        vec![],
        vec![Exception {
            id: "x1".into(),
            department: "samr".into(),
            region: "330800".into(),
            period: p("2026-03"),
            expire_micros: 1_000,
        }],
    );
    assert_eq!(
        gate.decide(&target("2026-03", "m", TimeClass::Flow), 10),
        Verdict::Excepted {
            id: "x1".into(),
            refusal: Refusal::Approved { locked: p("2026") }
        }
    );
    assert!(matches!(
        gate.decide(&target("2026-04", "m", TimeClass::Flow), 10),
        Verdict::Refused(_)
    ));
    assert!(matches!(
        gate.decide(&target("2026-03", "m", TimeClass::Flow), 1_000),
        Verdict::Refused(_)
    ));
    assert!(!gate.is_empty());
    assert!(Gate::default().is_empty());
}

fn cycle() -> Cycle {
    CycleFile {
        id: "2026-demo".into(),
        title: "2026 年度示范城市创建".into(),
        rule_version: "2019.2".into(),
        periods: vec!["2026".into(), "2026-Q1".into()],
        review_date: "2027-03-31".into(),
        grace_days: 7,
        on_time_days: 15,
        deadlines: vec![DeadlineFile {
            department: "samr".into(),
            subject: String::new(),
            period: "2026-Q1".into(),
            due: "2026-04-15".into(),
            milestone: "一季度数据".into(),
        }],
    }
    .into_cycle(&mut Vec::new())
}

#[test]
fn cycles_are_checked() {
    let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
    let versions = vec![catalog.version.clone()];
    let known = |d: &str| d == "samr";
    let ctx = CycleContext {
        versions: &versions,
        catalog: &catalog,
        department_known: &known,
    };
    let c = cycle();
    assert!(check_cycle_header(&c, &ctx).is_empty());
    assert!(check_deadlines(&c, &c.deadlines, "deadlines", &ctx).is_empty());
    let bad = Cycle {
        id: "Bad Id".into(),
        title: " ".into(),
        rule_version: "1999".into(),
        periods: vec!["2026".into(), "2026".into(), "2026-13".into()],
        review_date: "2027-02-30".into(),
        grace_days: 400,
        ..c.clone()
    };
    let fields: Vec<String> = check_cycle_header(&bad, &ctx)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(
        fields,
        [
            "id",
            "title",
            "rule_version",
            "periods[1]",
            "periods[2]",
            "review_date",
            "grace_days"
        ]
    );
    let mut d = c.deadlines[0].clone();
    d.department = "nobody".into();
    d.subject = "no.such".into();
    d.period = "2027".into();
    d.due_micros = 0;
    let twice = vec![d.clone(), d];
    let fields: Vec<String> = check_deadlines(&c, &twice, "deadlines", &ctx)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(
        fields,
        [
            "deadlines[0].department_code",
            "deadlines[0].subject",
            "deadlines[0].period",
            "deadlines[0].due_time",
            "deadlines[1].department_code",
            "deadlines[1].subject",
            "deadlines[1].period",
            "deadlines[1].due_time",
            "deadlines[1].department_code",
        ]
    );
    let mut problems = Vec::new();
    let mut file_bad = CycleFile {
        id: "x".into(),
        title: "t".into(),
        rule_version: "2019.2".into(),
        periods: vec!["2026".into()],
        review_date: "2027-03-31".into(),
        grace_days: 0,
        on_time_days: 0,
        deadlines: vec![],
    };
    file_bad.deadlines.push(DeadlineFile {
        department: "samr".into(),
        subject: String::new(),
        period: "2026".into(),
        due: "tomorrow".into(),
        milestone: String::new(),
    });
    let _ = file_bad.into_cycle(&mut problems);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].0, "deadlines[0].due");
}
