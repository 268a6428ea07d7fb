use super::*;

fn p(s: &str) -> Period {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

fn deadline(department: &str, subject: &str, period: &str, due_micros: i64) -> Deadline {
    Deadline {
        department: department.into(),
        subject: subject.into(),
        period: period.into(),
        due_micros,
        milestone: String::new(),
    }
}

fn cycle(deadlines: Vec<Deadline>) -> Cycle {
    Cycle {
        id: "c".into(),
        title: "t".into(),
        rule_version: "2019.2".into(),
        periods: vec!["2026".into(), "2026-Q1".into()],
        review_date: "2027-03-31".into(),
        grace_days: 7,
        on_time_days: 15,
        deadlines,
    }
}

fn catalog() -> Catalog {
    Catalog::builtin().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn periods_end_at_midnight_in_shanghai() {
    // 2026-03-31 23:59:59.999999 +08:00.
    assert_eq!(
        period_end_micros(&p("2026-Q1")),
        crate::review::end_of_day_micros("2026-03-31").unwrap_or_default()
    );
    assert_eq!(
        period_end_micros(&p("2026")),
        crate::review::end_of_day_micros("2026-12-31").unwrap_or_default()
    );
    assert_eq!(
        period_end_micros(&p("2024-02")),
        crate::review::end_of_day_micros("2024-02-29").unwrap_or_default()
    );
}

#[test]
fn a_period_is_reported_by_itself_and_the_periods_inside_it() {
    let q1: Vec<String> = reporting_periods(&p("2026-Q1"))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(q1, ["2026-Q1", "2026-01", "2026-02", "2026-03"]);
    let year = reporting_periods(&p("2026"));
    assert_eq!(year.len(), 12 + 4 + 1);
    assert!(!year.contains(&p("2025")), "no carry-forward");
    assert_eq!(reporting_periods(&p("2026-05")), [p("2026-05")]);
}

#[test]
fn the_metric_deadline_wins_then_a_covering_subject_then_the_whole_period_then_on_time_days() {
    let catalog = catalog();
    let metric = "uscc.codes_total";
    let other = "campaign.integrity_tour";
    let c = cycle(vec![
        deadline("samr", "", "2026-Q1", 300),
        deadline("samr", metric, "2026-Q1", 100),
        // B02 reads uscc.codes_total; E02.1 reads campaign.integrity_tour.
        deadline("samr", "B02", "2026-Q1", 200),
        deadline("samr", "E02.1", "2026-Q1", 250),
        deadline("health", "", "2026", 400),
    ]);
    let due = due_for(&c, &catalog, "samr", metric, &p("2026-Q1"));
    assert_eq!((due.micros, due.basis), (100, DueBasis::MetricDeadline));
    assert_eq!(due.subject, metric);

    let c2 = cycle(
        c.deadlines
            .iter()
            .filter(|d| d.subject != metric)
            .cloned()
            .collect(),
    );
    let due = due_for(&c2, &catalog, "samr", metric, &p("2026-Q1"));
    assert_eq!(
        (due.micros, due.basis, due.subject.as_str()),
        (200, DueBasis::SubjectDeadline, "B02")
    );
    let due = due_for(&c2, &catalog, "samr", other, &p("2026-Q1"));
    assert_eq!(
        (due.micros, due.basis, due.subject.as_str()),
        (250, DueBasis::SubjectDeadline, "E02.1"),
        "a task's deadline covers the metrics of its checks"
    );
    let due = due_for(
        &c2,
        &catalog,
        "samr",
        "gov.dishonesty_events_total",
        &p("2026-Q1"),
    );
    assert_eq!((due.micros, due.basis), (300, DueBasis::DepartmentDeadline));
    // Another department's or another period's deadline does not apply.
    let due = due_for(&c2, &catalog, "health", metric, &p("2026-Q1"));
    assert_eq!(due.basis, DueBasis::OnTimeDays);
    assert_eq!(
        due.micros,
        period_end_micros(&p("2026-Q1")) + 15 * DAY_MICROS
    );
    let due = due_for(&c2, &catalog, "health", metric, &p("2026"));
    assert_eq!((due.micros, due.basis), (400, DueBasis::DepartmentDeadline));
}

#[test]
fn states_follow_the_first_accept_time() {
    assert_eq!(Timeliness::of(100, Some(100), 500), Timeliness::OnTime);
    assert_eq!(Timeliness::of(100, Some(101), 500), Timeliness::Late);
    assert_eq!(Timeliness::of(100, None, 101), Timeliness::MissingOverdue);
    assert_eq!(Timeliness::of(100, None, 100), Timeliness::NotYetDue);
}

#[test]
fn figures_take_the_earliest_accept_of_the_period_and_the_periods_inside_it() {
    let catalog = catalog();
    let c = cycle(vec![deadline("samr", "", "2026-Q1", 1_000)]);
    let mut first = HashMap::new();
    let key = |m: &str, r: &str, per: &str| (m.to_owned(), r.to_owned(), p(per));
    first.insert(key("m1", "330802", "2026-02"), 900);
    first.insert(key("m1", "330802", "2026-Q1"), 1_200);
    first.insert(key("m1", "330803", "2026-Q1"), 1_100);
    // Carried forward from 2025: does not report 2026-Q1.
    first.insert(key("m2", "330802", "2025"), 10);
    let expected: Vec<(&str, Vec<&str>)> =
        vec![("m1", vec!["330802", "330803"]), ("m2", vec!["330802"])];
    let fs = figures(
        &c,
        &catalog,
        "samr",
        &expected,
        &p("2026-Q1"),
        &first,
        2_000,
    );
    let states: Vec<(&str, &str, Timeliness, Option<i64>)> = fs
        .iter()
        .map(|f| {
            (
                f.metric.as_str(),
                f.region.as_str(),
                f.state,
                f.first_accept,
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("m1", "330802", Timeliness::OnTime, Some(900)),
            ("m1", "330803", Timeliness::Late, Some(1_100)),
            ("m2", "330802", Timeliness::MissingOverdue, None),
        ]
    );

    let d = deadline("samr", "", "2026-Q1", 1_000);
    let later = deadline("samr", "m9", "2026", 5_000);
    let a = assess(&catalog, "samr", &fs, &[&d, &later], 2, 2_000);
    assert_eq!(
        (a.tasks_total, a.tasks_done, a.overdue, a.returns),
        (2, 1, 1, 2)
    );
    assert_eq!(
        (a.figures.on_time, a.figures.late, a.figures.missing_overdue),
        (1, 1, 1)
    );
    assert_eq!(a.figures.on_time_rate().as_deref(), Some("0.3333"));
    assert_eq!(Counts::default().on_time_rate(), None);
}
