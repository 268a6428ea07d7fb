//! Timeliness (issue 13, point 4) through the real gRPC API (the gateway in front of every
//! service), on SQLite and (with `DATABASE_URL`) PostgreSQL: a cycle with deadlines in the past
//! and the future for two departments; a value before its deadline, corrected after it (still
//! ON_TIME); another after its deadline, within the grace days (LATE); one whose only value was
//! retracted and the rest missing (MISSING_OVERDUE); one not yet due; the per-department
//! counts; the supervision office's assessment with a return from review; a department sees
//! only its own rows; the cycle's history (ListCycleEvents); unknown cycles and periods.

use citycredit_core::clock::now_micros;
use citycredit_tests::{ok, refused};
use std::time::Duration;

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::metric_submission_service_client::MetricSubmissionServiceClient as Submissions;
use citycredit::proto::v1::review_service_client::ReviewServiceClient as Reviews;
use citycredit_tests::ingestion::number_input;
use citycredit_tests::{
    AuthChannel, Backend, TestServer, both_databases, fresh_schema, use_backend,
};
use tonic::Code;
use tonic_types::StatusExt;

const CITY: &str = "330800";
const PERIOD: &str = "2025-Q4";
const CYCLE: &str = "timeliness-2025";
/// samr's figure with its own deadline: first reported on time, corrected after the deadline.
const ON_TIME: &str = "approval_items.total";
/// samr's figure under its whole-period deadline, reported after it (within the grace days).
const LATE: &str = "blacklist.in_operation";
/// samr's figure whose only value is retracted: missing.
const RETRACTED: &str = "credit_repair.trained";
/// cbirc reports these two; its deadline is a month ahead.
const CBIRC_REPORTED: &str = "finance.loan_balance";
const CBIRC_PENDING: &str = "finance.npl_balance";
const DAY_SECS: i64 = 86_400;

fn ts(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1_000).unwrap_or(0),
    }
}

fn micros(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000)
        .unwrap_or_else(|| panic!("a timestamp"))
}

fn deadline(department: &str, subject: &str, due_micros: i64) -> pb::CycleDeadline {
    pb::CycleDeadline {
        department_code: department.into(),
        subject: subject.into(),
        period: PERIOD.into(),
        due_time: Some(ts(due_micros)),
        milestone: "四季度数据".into(),
    }
}

async fn write(
    c: &mut Submissions<AuthChannel>,
    department: &str,
    metric: &str,
    n: &str,
) -> pb::Submission {
    c.submit_value(pb::SubmitValueRequest {
        value: Some(number_input(metric, CITY, PERIOD, department, n)),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{metric}: {e:?}"))
    .into_inner()
    .submission
    .unwrap_or_else(|| panic!("a submission"))
}

async fn timeliness(
    r: &mut Reviews<AuthChannel>,
    department: &str,
) -> Result<pb::GetTimelinessResponse, tonic::Status> {
    r.get_timeliness(pb::GetTimelinessRequest {
        cycle_id: format!("cycles/{CYCLE}"),
        period: PERIOD.into(),
        department_code: department.into(),
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

fn row<'a>(rows: &'a [pb::TimelinessRow], department: &str, metric: &str) -> &'a pb::TimelinessRow {
    rows.iter()
        .find(|r| {
            r.department_code == department && r.metric_key == metric && r.region_code == CITY
        })
        .unwrap_or_else(|| panic!("no row for {department} {metric}"))
}

async fn timeliness_end_to_end(backend: Backend) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let schema = fresh_schema();
    let schema_name = schema.to_owned();
    let server =
        TestServer::start_in(dir.path(), move |c| use_backend(c, backend, &schema_name)).await;
    let samr_key = server
        .create_principal("samr-sys", pb::Role::Department, Some("samr"))
        .await;
    let office_key = server
        .create_principal("credit-office-1", pb::Role::CreditOffice, None)
        .await;
    let mut samr_write = Submissions::new(server.with_key(&samr_key));
    let mut samr = Reviews::new(server.with_key(&samr_key));
    let mut office = Reviews::new(server.with_key(&office_key));
    let mut admin_write = Submissions::new(server.admin());

    // samr's deadlines pass in a few seconds (writes stay open for the 7 grace days); cbirc's
    // is a month ahead.
    let soon = now_micros() + 5_000_000;
    let created = ok(office
        .create_cycle(pb::CreateCycleRequest {
            cycle: Some(pb::Cycle {
                id: CYCLE.into(),
                title: "2025 四季度报送考核".into(),
                rule_version: "2019.2".into(),
                periods: vec![PERIOD.into()],
                review_date: "2026-03-31".into(),
                grace_days: 7,
                on_time_days: 15,
                deadlines: vec![deadline("samr", ON_TIME, soon), deadline("samr", "", soon)],
                ..Default::default()
            }),
        })
        .await)
    .cycle
    .unwrap_or_else(|| panic!("cycle"));
    ok(office
        .set_deadlines(pb::SetDeadlinesRequest {
            name: created.name.clone(),
            deadlines: vec![deadline(
                "cbirc",
                "",
                now_micros() + 30 * DAY_SECS * 1_000_000,
            )],
        })
        .await);

    // Before the deadline: samr's first figure, and a value it then retracts.
    let first = write(&mut samr_write, "samr", ON_TIME, "10").await;
    let gone = write(&mut samr_write, "samr", RETRACTED, "3").await;
    ok(samr_write
        .retract_submission(pb::RetractSubmissionRequest {
            name: gone.name.clone(),
            reason: "误报".into(),
            idempotency_key: String::new(),
        })
        .await);
    write(&mut admin_write, "cbirc", CBIRC_REPORTED, "1000.50").await;
    // Submitted for approval and returned by the credit office: one return from review.
    ok(samr
        .submit_for_approval(pb::SubmitForApprovalRequest {
            part: Some(pb::SignOffPart {
                department_code: "samr".into(),
                region_code: CITY.into(),
                period: PERIOD.into(),
            }),
            ..Default::default()
        })
        .await);
    ok(office
        .r#return(pb::ReturnRequest {
            part: Some(pb::SignOffPart {
                department_code: "samr".into(),
                region_code: CITY.into(),
                period: PERIOD.into(),
            }),
            comment: "审批事项数与台账不符".into(),
            expected_revision: 0,
        })
        .await);
    // Before the deadline passes nothing of samr's is missing yet.
    let early = timeliness(&mut office, "samr")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        row(&early.rows, "samr", LATE).state(),
        pb::TimelinessState::NotYetDue
    );

    // After the deadline: a correction of the timely figure, and a late one.
    let wait = soon - now_micros() + 300_000;
    if wait > 0 {
        tokio::time::sleep(Duration::from_micros(u64::try_from(wait).unwrap_or(0))).await;
    }
    let corrected = write(&mut samr_write, "samr", ON_TIME, "11").await;
    let late = write(&mut samr_write, "samr", LATE, "7").await;
    assert!(micros(corrected.accept_time.as_ref()) > soon);

    let all = ok(office
        .get_timeliness(pb::GetTimelinessRequest {
            cycle_id: CYCLE.into(),
            period: PERIOD.into(),
            page_size: 5_000,
            ..Default::default()
        })
        .await);
    let on_time = row(&all.rows, "samr", ON_TIME);
    assert_eq!(on_time.state(), pb::TimelinessState::OnTime, "{on_time:?}");
    assert_eq!(on_time.due_basis(), pb::DueBasis::MetricDeadline);
    assert_eq!(on_time.deadline_subject, ON_TIME);
    assert_eq!(micros(on_time.due_time.as_ref()), soon);
    assert_eq!(
        micros(on_time.first_accept_time.as_ref()),
        micros(first.accept_time.as_ref()),
        "the first accept time, not the correction's"
    );
    let late_row = row(&all.rows, "samr", LATE);
    assert_eq!(late_row.state(), pb::TimelinessState::Late);
    assert_eq!(late_row.due_basis(), pb::DueBasis::DepartmentDeadline);
    assert_eq!(
        micros(late_row.first_accept_time.as_ref()),
        micros(late.accept_time.as_ref())
    );
    let retracted = row(&all.rows, "samr", RETRACTED);
    assert_eq!(retracted.state(), pb::TimelinessState::MissingOverdue);
    assert!(retracted.first_accept_time.is_none());
    assert_eq!(
        row(&all.rows, "cbirc", CBIRC_REPORTED).state(),
        pb::TimelinessState::OnTime
    );
    assert_eq!(
        row(&all.rows, "cbirc", CBIRC_PENDING).state(),
        pb::TimelinessState::NotYetDue
    );
    // A department without a deadline in the cycle: due 15 days after the period's end, long
    // past.
    let health = all
        .rows
        .iter()
        .find(|r| r.department_code == "health")
        .unwrap_or_else(|| panic!("health's rows"));
    assert_eq!(health.due_basis(), pb::DueBasis::OnTimeDays);
    assert_eq!(health.state(), pb::TimelinessState::MissingOverdue);

    let samr_rows: Vec<&pb::TimelinessRow> = all
        .rows
        .iter()
        .filter(|r| r.department_code == "samr")
        .collect();
    let expected = i32::try_from(samr_rows.len()).unwrap_or(0);
    assert!(
        expected > 3,
        "samr is expected to report {expected} figures"
    );
    let counts = all
        .departments
        .iter()
        .find(|d| d.department_code == "samr")
        .unwrap_or_else(|| panic!("samr's counts"));
    assert_eq!(
        (
            counts.on_time,
            counts.late,
            counts.missing_overdue,
            counts.not_yet_due
        ),
        (1, 1, expected - 2, 0)
    );
    let cbirc = all
        .departments
        .iter()
        .find(|d| d.department_code == "cbirc")
        .unwrap_or_else(|| panic!("cbirc's counts"));
    assert_eq!((cbirc.on_time, cbirc.not_yet_due), (1, 1));
    assert_eq!(cbirc.on_time_rate, "1.0000");

    // Paging: the same rows, a page at a time.
    let page = ok(office
        .get_timeliness(pb::GetTimelinessRequest {
            cycle_id: CYCLE.into(),
            period: PERIOD.into(),
            page_size: 2,
            ..Default::default()
        })
        .await);
    assert_eq!(page.rows.len(), 2);
    assert!(!page.next_page_token.is_empty());
    assert_eq!(page.departments, all.departments, "counts cover every row");

    // A department sees only its own rows and row.
    let own = timeliness(&mut samr, "")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(!own.rows.is_empty());
    assert!(own.rows.iter().all(|r| r.department_code == "samr"));
    assert_eq!(own.departments.len(), 1);
    refused(
        timeliness(&mut samr, "cbirc").await,
        Code::PermissionDenied,
        "ACTION_NOT_ALLOWED",
    );

    // The supervision office's assessment.
    let assessment = ok(office
        .get_department_assessment(pb::GetDepartmentAssessmentRequest {
            cycle_id: CYCLE.into(),
        })
        .await)
    .departments;
    let a = assessment
        .iter()
        .find(|d| d.department_code == "samr")
        .unwrap_or_else(|| panic!("samr's assessment"));
    // Two tasks: the figure's own deadline (done), the whole period (not done, overdue).
    assert_eq!((a.tasks_total, a.tasks_done, a.overdue), (2, 1, 1), "{a:?}");
    assert_eq!(
        (
            a.figures_on_time,
            a.figures_late,
            a.figures_missing,
            a.figures_not_yet_due
        ),
        (1, 1, expected - 2, 0)
    );
    assert_eq!(a.returns, 1);
    assert_eq!(a.on_time_rate, counts.on_time_rate);
    assert!(!a.on_time_rate.is_empty());
    let c = assessment
        .iter()
        .find(|d| d.department_code == "cbirc")
        .unwrap_or_else(|| panic!("cbirc's assessment"));
    assert_eq!(
        (c.tasks_total, c.tasks_done, c.overdue, c.returns),
        (1, 0, 0, 0)
    );
    let mine = ok(samr
        .get_department_assessment(pb::GetDepartmentAssessmentRequest {
            cycle_id: CYCLE.into(),
        })
        .await)
    .departments;
    assert_eq!(mine.len(), 1);
    assert_eq!(&mine[0], a);

    // The cycle's history: created, then cbirc's deadline set.
    let events = ok(office
        .list_cycle_events(pb::ListCycleEventsRequest {
            cycle_id: CYCLE.into(),
            ..Default::default()
        })
        .await)
    .events;
    let seen: Vec<(i64, &str, &str)> = events
        .iter()
        .map(|e| (e.seq, e.kind.as_str(), e.principal.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (1, "CREATE", "credit-office-1"),
            (2, "SET_DEADLINES", "credit-office-1")
        ]
    );
    assert!(events[1].detail.contains("cbirc"));
    let first_page = ok(office
        .list_cycle_events(pb::ListCycleEventsRequest {
            cycle_id: CYCLE.into(),
            page_size: 1,
            ..Default::default()
        })
        .await);
    assert_eq!(first_page.events.len(), 1);
    assert!(!first_page.next_page_token.is_empty());

    // Unknown cycles, periods outside the cycle.
    refused(
        office
            .get_timeliness(pb::GetTimelinessRequest {
                cycle_id: "no-such-cycle".into(),
                period: PERIOD.into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    refused(
        office
            .get_department_assessment(pb::GetDepartmentAssessmentRequest {
                cycle_id: "cycles/no-such-cycle".into(),
            })
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    refused(
        office
            .list_cycle_events(pb::ListCycleEventsRequest {
                cycle_id: String::new(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_FIELDS",
    );
    let s = office
        .get_timeliness(pb::GetTimelinessRequest {
            cycle_id: CYCLE.into(),
            period: "2026-Q1".into(),
            region_code: "999999".into(),
            ..Default::default()
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("a period outside the cycle is refused"));
    assert_eq!(s.code(), Code::InvalidArgument);
    let fields: Vec<String> = s
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["period", "region_code"]);

    // The README's examples, against the seeded cycle.
    let mut admin = Reviews::new(server.admin());
    let seeded = ok(admin
        .get_timeliness(pb::GetTimelinessRequest {
            cycle_id: "2026-demonstration".into(),
            period: "2026".into(),
            department_code: "samr".into(),
            page_size: 5,
            ..Default::default()
        })
        .await);
    assert_eq!(seeded.rows.len(), 5);
    assert!(!seeded.next_page_token.is_empty());
    assert!(
        seeded
            .rows
            .iter()
            .all(|r| r.first_accept_time.is_none() && r.due_basis() == pb::DueBasis::OnTimeDays),
        "{seeded:?}"
    );
    let seeded = ok(admin
        .get_department_assessment(pb::GetDepartmentAssessmentRequest {
            cycle_id: "2026-demonstration".into(),
        })
        .await);
    assert!(
        seeded
            .departments
            .iter()
            .any(|d| d.department_code == "health" && d.tasks_total == 1),
        "{seeded:?}"
    );
    let history = ok(admin
        .list_cycle_events(pb::ListCycleEventsRequest {
            cycle_id: "cycles/2026-demonstration".into(),
            ..Default::default()
        })
        .await)
    .events;
    assert_eq!(
        history
            .first()
            .map(|e| (e.kind.as_str(), e.principal.as_str())),
        Some(("CREATE", "seed"))
    );

    let _ = tokio::time::timeout(Duration::from_secs(10), server.stop()).await;
}

both_databases!(
    timeliness_end_to_end,
    flavor = "multi_thread",
    worker_threads = 2
);
