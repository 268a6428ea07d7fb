//! The review cycle through the real gRPC API (the gateway in front of every service), on
//! SQLite and (with `DATABASE_URL`) PostgreSQL: a cycle created; a department submits and can
//! no longer write (AWAITING_APPROVAL); the credit office returns it with a comment; corrected
//! and resubmitted; two concurrent approvals, exactly one wins; a later write refused with
//! PERIOD_APPROVED and its metadata; a lock exception lets one correction through; the city is
//! not approved before its counties; unapproval from above reopens it; a deadline in the past
//! plus grace closes writes (PERIOD_CLOSED); every transition in ListReviewEvents with who,
//! when and why; a department cannot approve.

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

const METRIC: &str = "uscc.codes_total";
const CITY: &str = "330800";
const KECHENG: &str = "330802";
const QUJIANG: &str = "330803";
const MARCH: &str = "2026-03";
const DAY_SECS: i64 = 86_400;
/// The bootstrap administrator's principal id.
const ADMIN: &str = "admin";

fn meta(s: &tonic::Status, key: &str) -> String {
    s.get_error_details()
        .error_info()
        .and_then(|i| i.metadata.get(key).cloned())
        .unwrap_or_default()
}

fn part(department: &str, region: &str, period: &str) -> Option<pb::SignOffPart> {
    Some(pb::SignOffPart {
        department_code: department.into(),
        region_code: region.into(),
        period: period.into(),
    })
}

fn ts_in(secs: i64) -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0);
    prost_types::Timestamp {
        seconds: now + secs,
        nanos: 0,
    }
}

async fn write(
    c: &mut Submissions<AuthChannel>,
    region: &str,
    period: &str,
    n: &str,
) -> Result<pb::SubmitValueResponse, tonic::Status> {
    c.submit_value(pb::SubmitValueRequest {
        value: Some(number_input(METRIC, region, period, "samr", n)),
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn submit(
    r: &mut Reviews<AuthChannel>,
    region: &str,
    period: &str,
) -> Result<pb::SubmitForApprovalResponse, tonic::Status> {
    r.submit_for_approval(pb::SubmitForApprovalRequest {
        part: part("samr", region, period),
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn approve(
    r: &mut Reviews<AuthChannel>,
    region: &str,
    period: &str,
) -> Result<pb::ApproveResponse, tonic::Status> {
    r.approve(pb::ApproveRequest {
        part: part("samr", region, period),
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

fn state_of(s: Option<pb::SignOff>) -> (pb::SignOffState, i64) {
    let s = s.unwrap_or_else(|| panic!("no sign-off"));
    (s.state(), s.revision)
}

async fn the_review_cycle_end_to_end(backend: Backend) {
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
    let mut office2 = Reviews::new(server.with_key(&office_key));
    let mut admin = Reviews::new(server.admin());

    // The seeded cycle is there; the credit office creates another.
    let seeded = ok(office
        .get_cycle(pb::GetCycleRequest {
            name: "cycles/2026-demonstration".into(),
        })
        .await)
    .cycle
    .unwrap_or_else(|| panic!("seeded cycle"));
    assert_eq!(seeded.title, "2026 年度示范城市创建");
    assert_eq!(seeded.rule_version, "2019.2");
    assert_eq!(seeded.grace_days, 7);
    assert!(!seeded.deadlines.is_empty());
    let created = ok(office
        .create_cycle(pb::CreateCycleRequest {
            cycle: Some(pb::Cycle {
                id: "test-2026".into(),
                title: "2026 一季度核查".into(),
                rule_version: "2019.2".into(),
                periods: vec!["2026-Q1".into(), MARCH.into()],
                review_date: "2027-03-31".into(),
                grace_days: 7,
                on_time_days: 15,
                deadlines: vec![pb::CycleDeadline {
                    department_code: "samr".into(),
                    subject: String::new(),
                    period: MARCH.into(),
                    due_time: Some(ts_in(300 * DAY_SECS)),
                    milestone: "三月数据".into(),
                }],
                ..Default::default()
            }),
        })
        .await)
    .cycle
    .unwrap_or_else(|| panic!("cycle"));
    assert_eq!(created.name, "cycles/test-2026");
    assert_eq!(created.created_by, "credit-office-1");
    let bad_version = office
        .create_cycle(pb::CreateCycleRequest {
            cycle: Some(pb::Cycle {
                id: "bad".into(),
                title: "x".into(),
                rule_version: "1999.1".into(),
                periods: vec!["2026".into()],
                review_date: "2027-03-31".into(),
                ..Default::default()
            }),
        })
        .await;
    let s = refused(bad_version, Code::InvalidArgument, "INVALID_FIELDS");
    assert!(
        s.get_error_details().bad_request().is_some_and(|b| b
            .field_violations
            .iter()
            .any(|v| v.field == "cycle.rule_version")),
        "{s:?}"
    );
    // A department manages no cycles.
    refused(
        samr.create_cycle(pb::CreateCycleRequest {
            cycle: Some(created.clone()),
        })
        .await,
        Code::PermissionDenied,
        "ACTION_NOT_ALLOWED",
    );
    let cycles = ok(office
        .list_cycles(pb::ListCyclesRequest {
            page_size: 1,
            ..Default::default()
        })
        .await);
    assert_eq!(cycles.cycles.len(), 1);
    assert!(!cycles.next_page_token.is_empty());

    // A department writes, then submits: its part is read-only for it.
    write(&mut samr_write, KECHENG, MARCH, "10")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let (state, rev) = state_of(
        submit(&mut samr, KECHENG, MARCH)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"))
            .sign_off,
    );
    assert_eq!((state, rev), (pb::SignOffState::Submitted, 1));
    let s = refused(
        write(&mut samr_write, KECHENG, MARCH, "11").await,
        Code::FailedPrecondition,
        "AWAITING_APPROVAL",
    );
    assert_eq!(meta(&s, "department"), "samr");
    assert_eq!(meta(&s, "region"), KECHENG);
    assert_eq!(meta(&s, "period"), MARCH);
    // A validate_only write reports it too.
    refused(
        samr_write
            .submit_value(pb::SubmitValueRequest {
                value: Some(number_input(METRIC, KECHENG, MARCH, "samr", "11")),
                validate_only: true,
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "AWAITING_APPROVAL",
    );
    // Another county of the same department is not locked.
    write(&mut samr_write, QUJIANG, MARCH, "5")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    // A department cannot approve, nor submit another department's figures.
    refused(
        approve(&mut samr, KECHENG, MARCH).await,
        Code::PermissionDenied,
        "ACTION_NOT_ALLOWED",
    );
    refused(
        office
            .submit_for_approval(pb::SubmitForApprovalRequest {
                part: part("samr", KECHENG, MARCH),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "ACTION_NOT_ALLOWED",
    );

    // Returned with a comment (required), the department corrects and resubmits.
    refused(
        office
            .r#return(pb::ReturnRequest {
                part: part("samr", KECHENG, MARCH),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_FIELDS",
    );
    let returned = ok(office
        .r#return(pb::ReturnRequest {
            part: part("samr", KECHENG, MARCH),
            comment: "三月数据与台账不符，请核对".into(),
            expected_revision: 1,
        })
        .await);
    assert_eq!(state_of(returned.sign_off), (pb::SignOffState::Returned, 2));
    let corrected = write(&mut samr_write, KECHENG, MARCH, "12")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .submission
        .unwrap_or_else(|| panic!("submission"))
        .name;
    let (state, rev) = state_of(
        submit(&mut samr, KECHENG, MARCH)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"))
            .sign_off,
    );
    assert_eq!((state, rev), (pb::SignOffState::Submitted, 3));

    // Two concurrent approvals: exactly one wins, the other is told the current state.
    let (a, b) = tokio::join!(
        approve(&mut office, KECHENG, MARCH),
        approve(&mut office2, KECHENG, MARCH)
    );
    let (won, lost) = match (a, b) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        other => panic!("exactly one approval wins: {other:?}"),
    };
    assert_eq!(state_of(won.sign_off), (pb::SignOffState::Approved, 4));
    let lost = refused(Err::<(), _>(lost), Code::FailedPrecondition, "REVIEW_STATE");
    assert_eq!(meta(&lost, "state"), "APPROVED");

    // Approved: a later write is refused with the reason, its metadata and what to do.
    let s = refused(
        write(&mut samr_write, KECHENG, MARCH, "13").await,
        Code::FailedPrecondition,
        "PERIOD_APPROVED",
    );
    assert_eq!(meta(&s, "department"), "samr");
    assert_eq!(meta(&s, "region"), KECHENG);
    assert_eq!(meta(&s, "period"), MARCH);
    assert_eq!(meta(&s, "locked_period"), MARCH);
    // A retraction is a write too.
    refused(
        samr_write
            .retract_submission(pb::RetractSubmissionRequest {
                name: corrected.clone(),
                reason: "撤回".into(),
                idempotency_key: String::new(),
            })
            .await,
        Code::FailedPrecondition,
        "PERIOD_APPROVED",
    );
    let localized = s
        .get_error_details()
        .localized_message()
        .map(|m| m.message.clone())
        .unwrap_or_default();
    assert!(localized.contains("信用办"), "{localized}");

    // A lock exception: only an administrator grants it; it lets one correction through.
    let grant = |reason: &str| pb::GrantLockExceptionRequest {
        exception: Some(pb::LockException {
            part: part("samr", KECHENG, MARCH),
            reason: reason.into(),
            expire_time: Some(ts_in(3_600)),
            ..Default::default()
        }),
    };
    refused(
        office.grant_lock_exception(grant("更正")).await,
        Code::PermissionDenied,
        "ACTION_NOT_ALLOWED",
    );
    let granted = ok(admin
        .grant_lock_exception(grant("核实后更正三月数据"))
        .await);
    assert!(granted.exception.is_some_and(|x| x.id.starts_with("lx-")));
    write(&mut samr_write, KECHENG, MARCH, "13")
        .await
        .unwrap_or_else(|e| panic!("the exception lets one correction through: {e:?}"));
    refused(
        write(&mut samr_write, KECHENG, MARCH, "14").await,
        Code::FailedPrecondition,
        "PERIOD_APPROVED",
    );

    // The city is approved only after its counties with submitted figures.
    write(&mut samr_write, CITY, MARCH, "30")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    submit(&mut samr, QUJIANG, MARCH)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    submit(&mut samr, CITY, MARCH)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let s = refused(
        approve(&mut office, CITY, MARCH).await,
        Code::FailedPrecondition,
        "COUNTIES_NOT_APPROVED",
    );
    assert_eq!(meta(&s, "regions"), QUJIANG);
    approve(&mut office, QUJIANG, MARCH)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    approve(&mut office, CITY, MARCH)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));

    // Unapproval from above: a reason is required; a county waits for its city.
    let unapprove = |region: &str, reason: &str| pb::UnapproveRequest {
        part: part("samr", region, MARCH),
        reason: reason.into(),
        expected_revision: 0,
    };
    refused(
        office.unapprove(unapprove(KECHENG, "")).await,
        Code::InvalidArgument,
        "INVALID_FIELDS",
    );
    refused(
        office.unapprove(unapprove(KECHENG, "复核发现问题")).await,
        Code::FailedPrecondition,
        "REVIEW_STATE",
    );
    let city = ok(office
        .unapprove(unapprove(CITY, "市级汇总需重新核对"))
        .await);
    assert_eq!(state_of(city.sign_off).0, pb::SignOffState::Open);
    let county = ok(admin.unapprove(unapprove(KECHENG, "复核发现问题")).await);
    assert_eq!(state_of(county.sign_off), (pb::SignOffState::Open, 5));
    write(&mut samr_write, KECHENG, MARCH, "15")
        .await
        .unwrap_or_else(|e| panic!("unapproval reopens it: {e:?}"));

    // Every transition is an event with who, when and why.
    let events = ok(office
        .list_review_events(pb::ListReviewEventsRequest {
            department_code: "samr".into(),
            region_code: KECHENG.into(),
            period: MARCH.into(),
            ..Default::default()
        })
        .await)
    .events;
    let seen: Vec<(&str, &str, i64)> = events
        .iter()
        .map(|e| (e.transition.as_str(), e.principal.as_str(), e.revision))
        .collect();
    assert_eq!(
        seen,
        [
            ("SUBMIT", "samr-sys", 1),
            ("RETURN", "credit-office-1", 2),
            ("SUBMIT", "samr-sys", 3),
            ("APPROVE", "credit-office-1", 4),
            ("UNAPPROVE", ADMIN, 5),
        ]
    );
    assert_eq!(events[1].comment, "三月数据与台账不符，请核对");
    assert_eq!(events[4].comment, "复核发现问题");
    assert_eq!(events[4].from_state(), pb::SignOffState::Approved);
    assert_eq!(events[4].to_state(), pb::SignOffState::Open);
    assert!(events.iter().all(|e| e.event_time.is_some()));
    let first_page = ok(office
        .list_review_events(pb::ListReviewEventsRequest {
            department_code: "samr".into(),
            page_size: 2,
            ..Default::default()
        })
        .await);
    assert_eq!(first_page.events.len(), 2);
    assert!(!first_page.next_page_token.is_empty());

    // A deadline in the past plus the grace days closes writes.
    let late = ok(office
        .create_cycle(pb::CreateCycleRequest {
            cycle: Some(pb::Cycle {
                id: "late-2025".into(),
                title: "2025 四季度".into(),
                rule_version: "2019.2".into(),
                periods: vec!["2025-Q4".into()],
                review_date: "2026-03-31".into(),
                grace_days: 7,
                on_time_days: 15,
                deadlines: vec![pb::CycleDeadline {
                    department_code: "samr".into(),
                    subject: String::new(),
                    period: "2025-Q4".into(),
                    due_time: Some(ts_in(-6 * DAY_SECS)),
                    milestone: String::new(),
                }],
                ..Default::default()
            }),
        })
        .await)
    .cycle
    .unwrap_or_else(|| panic!("cycle"));
    write(&mut samr_write, KECHENG, "2025-11", "3")
        .await
        .unwrap_or_else(|e| panic!("within the grace days: {e:?}"));
    ok(office
        .set_deadlines(pb::SetDeadlinesRequest {
            name: late.name.clone(),
            deadlines: vec![pb::CycleDeadline {
                department_code: "samr".into(),
                subject: String::new(),
                period: "2025-Q4".into(),
                due_time: Some(ts_in(-8 * DAY_SECS)),
                milestone: "提前截止".into(),
            }],
        })
        .await);
    let s = refused(
        write(&mut samr_write, KECHENG, "2025-11", "4").await,
        Code::FailedPrecondition,
        "PERIOD_CLOSED",
    );
    assert_eq!(meta(&s, "cycle"), "late-2025");
    assert_eq!(meta(&s, "locked_period"), "2025-Q4");
    assert_eq!(meta(&s, "period"), "2025-11");
    let after = ok(office
        .get_cycle(pb::GetCycleRequest {
            name: "late-2025".into(),
        })
        .await)
    .cycle
    .unwrap_or_else(|| panic!("cycle"));
    assert_eq!(after.deadlines.len(), 1);
    assert_eq!(after.deadlines[0].milestone, "提前截止");

    let _ = tokio::time::timeout(Duration::from_secs(10), server.stop()).await;
}

both_databases!(
    the_review_cycle_end_to_end,
    flavor = "multi_thread",
    worker_threads = 2
);

/// The gate inside the group commit: writes refused for a submitted part share transactions with
/// writes that pass, and only the refused ones fail; a batch with one refused value stores
/// nothing; a validate_only batch reports the refusal.
async fn a_refused_write_fails_alone_in_its_group(backend: Backend) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let schema = fresh_schema();
    let schema_name = schema.to_owned();
    let server =
        TestServer::start_in(dir.path(), move |c| use_backend(c, backend, &schema_name)).await;
    let samr_key = server
        .create_principal("samr-sys", pb::Role::Department, Some("samr"))
        .await;
    let mut samr_write = Submissions::new(server.with_key(&samr_key));
    let mut samr = Reviews::new(server.with_key(&samr_key));
    let may = "2026-05";
    write(&mut samr_write, KECHENG, may, "1")
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    submit(&mut samr, KECHENG, may)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));

    // Two principals of the department, six calls each (within a principal's share of calls).
    let second_key = server
        .create_principal("samr-sys-2", pb::Role::Department, Some("samr"))
        .await;
    let mut calls = Vec::new();
    for i in 0..12 {
        let key = if i < 6 { &samr_key } else { &second_key };
        let mut c = Submissions::new(server.with_key(key));
        let region = if i % 2 == 0 { KECHENG } else { QUJIANG };
        calls.push(tokio::spawn(async move {
            (region, write(&mut c, region, may, &i.to_string()).await)
        }));
    }
    let (mut stored, mut locked) = (0, 0);
    for call in calls {
        let (region, result) = call.await.unwrap_or_else(|e| panic!("{e}"));
        match result {
            Ok(_) => {
                assert_eq!(region, QUJIANG);
                stored += 1;
            }
            Err(s) => {
                assert_eq!(region, KECHENG, "{s:?}");
                refused(
                    Err::<(), _>(s),
                    Code::FailedPrecondition,
                    "AWAITING_APPROVAL",
                );
                locked += 1;
            }
        }
    }
    assert_eq!((stored, locked), (6, 6));

    let batch = |validate_only: bool| pb::SubmitBatchRequest {
        idempotency_key: String::new(),
        validate_only,
        values: vec![
            number_input(METRIC, QUJIANG, may, "samr", "7"),
            number_input(METRIC, KECHENG, may, "samr", "8"),
        ],
    };
    refused(
        samr_write
            .submit_batch(tokio_stream::iter([batch(true)]))
            .await,
        Code::FailedPrecondition,
        "AWAITING_APPROVAL",
    );
    let before = ok(samr_write
        .list_submissions(pb::ListSubmissionsRequest {
            region_code: QUJIANG.into(),
            period: may.into(),
            page_size: 100,
            ..Default::default()
        })
        .await)
    .submissions
    .len();
    refused(
        samr_write
            .submit_batch(tokio_stream::iter([batch(false)]))
            .await,
        Code::FailedPrecondition,
        "AWAITING_APPROVAL",
    );
    let after = ok(samr_write
        .list_submissions(pb::ListSubmissionsRequest {
            region_code: QUJIANG.into(),
            period: may.into(),
            page_size: 100,
            ..Default::default()
        })
        .await)
    .submissions
    .len();
    assert_eq!(before, after, "a refused batch stores nothing");
    let _ = tokio::time::timeout(Duration::from_secs(10), server.stop()).await;
}

both_databases!(
    a_refused_write_fails_alone_in_its_group,
    flavor = "multi_thread",
    worker_threads = 2
);
