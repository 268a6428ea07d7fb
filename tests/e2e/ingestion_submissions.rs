//! MetricSubmissionService through a real server, on SQLite and (with `DATABASE_URL`) on
//! PostgreSQL: idempotency, atomic batches, validate-only, retraction, supersession, as-of,
//! roll-up, domain unions, the change feed and group commit under concurrency; on PostgreSQL
//! the writer's bulk statements run on a native connection with array parameters.

use std::time::Duration;

use tonic::Code;

use citycredit::proto::v1 as pb;
use citycredit_core::auth::Role;
use citycredit_tests::ingestion::*;
use citycredit_tests::{Backend, both_databases, postgres_only};

fn unary(input: pb::SubmissionInput, key: &str) -> pb::SubmitValueRequest {
    pb::SubmitValueRequest {
        value: Some(input),
        idempotency_key: key.to_owned(),
        validate_only: false,
    }
}

/// A batch as a stream of messages of `per_message` values each.
fn batch(
    values: Vec<pb::SubmissionInput>,
    key: &str,
    validate_only: bool,
    per_message: usize,
) -> impl tokio_stream::Stream<Item = pb::SubmitBatchRequest> + Send + 'static {
    let mut msgs = Vec::new();
    for (i, chunk) in values.chunks(per_message).enumerate() {
        msgs.push(pb::SubmitBatchRequest {
            idempotency_key: if i == 0 {
                key.to_owned()
            } else {
                String::new()
            },
            validate_only,
            values: chunk.to_vec(),
        });
    }
    tokio_stream::iter(msgs)
}

async fn list_all(s: &IngestionServer) -> Vec<pb::Submission> {
    let mut c = s.client(Some(&platform())).await;
    c.list_submissions(pb::ListSubmissionsRequest {
        page_size: 1000,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{}: list: {e}", s.name()))
    .into_inner()
    .submissions
}

async fn aggregates(
    s: &IngestionServer,
    region: &str,
    as_of: Option<prost_types::Timestamp>,
) -> pb::QueryAggregatesResponse {
    s.client(Some(&platform()))
        .await
        .query_aggregates(pb::QueryAggregatesRequest {
            region_code: region.to_owned(),
            period: "2026".to_owned(),
            as_of,
            approved_only: false,
        })
        .await
        .unwrap_or_else(|e| panic!("{}: aggregates: {e}", s.name()))
        .into_inner()
}

fn number_of(r: &pb::QueryAggregatesResponse, metric: &str) -> Option<String> {
    r.metrics
        .iter()
        .find(|m| m.metric_key == metric)
        .and_then(|m| m.value.as_ref())
        .and_then(|v| match &v.value {
            Some(pb::metric_value::Value::Number(n)) => Some(n.clone()),
            Some(pb::metric_value::Value::Flag(b)) => Some(b.to_string()),
            _ => None,
        })
}

fn metric<'a>(r: &'a pb::QueryAggregatesResponse, key: &str) -> Option<&'a pb::AggregatedMetric> {
    r.metrics.iter().find(|m| m.metric_key == key)
}

async fn idempotent_retry_and_conflicting_key(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let mut c = s.client(Some(&platform())).await;
    let input = number_input("uscc.codes_total", "330802", "2026", "samr", "10");
    let first = c
        .submit_value(unary(input.clone(), "k1"))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    assert!(!first.replayed);
    let again = c
        .submit_value(unary(input.clone(), "k1"))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    assert!(again.replayed, "{name}");
    assert_eq!(again.submission, first.submission, "{name}");
    let other = number_input("uscc.codes_total", "330802", "2026", "samr", "11");
    let err = c
        .submit_value(unary(other, "k1"))
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: reused key accepted"));
    assert_eq!(err.code(), Code::AlreadyExists, "{name}: {err:?}");
    // Keys are per principal: another principal may use the same key.
    let mut other_principal = s
        .client(Some(&principal("platform-2", Role::Platform, None)))
        .await;
    let theirs = other_principal
        .submit_value(unary(input.clone(), "k1"))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    assert!(!theirs.replayed);

    // Batches: retried whole.
    let values: Vec<_> = (0..250)
        .map(|i| number_input("uscc.codes_total", "330803", "2026", "samr", &i.to_string()))
        .collect();
    let b1 = c
        .submit_batch(batch(values.clone(), "b1", false, 100))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    assert_eq!(b1.accepted_count, 250);
    assert_eq!(b1.last_submission_id - b1.first_submission_id, 249);
    let b2 = c
        .submit_batch(batch(values.clone(), "b1", false, 7))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    assert!(
        b2.replayed && b2.first_submission_id == b1.first_submission_id,
        "{name}"
    );
    let mut changed = values.clone();
    changed[200] = number_input("uscc.codes_total", "330803", "2026", "samr", "9999");
    let err = c
        .submit_batch(batch(changed, "b1", false, 100))
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: changed batch accepted"));
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(list_all(&s).await.len(), 252, "{name}");
}

both_databases!(idempotent_retry_and_conflicting_key);

async fn a_bad_item_stores_nothing_and_every_problem_is_reported(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let mut c = s.client(Some(&platform())).await;
    let mut values: Vec<_> = (0..6)
        .map(|i| number_input("uscc.codes_total", "330802", "2026", "samr", &i.to_string()))
        .collect();
    values[1] = number_input("uscc.codes_total", "330802", "2026", "samr", "1.5");
    values[3].region_code = "999999".into();
    values[4].period = "2026-13".into();
    values[5].metric_key = "no.such_metric".into();
    for validate_only in [false, true] {
        // Every problem of a message is reported at once.
        let err = c
            .submit_batch(batch(values.clone(), "bad", validate_only, 6))
            .await
            .err()
            .unwrap_or_else(|| panic!("{name}: bad batch accepted"));
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            violation_fields(&err),
            [
                "values[1].value",
                "values[3].region_code",
                "values[4].period",
                "values[5].metric_key"
            ],
            "{name}"
        );
        // A batch to store ends at its first message with a problem (issue 10: a batch is
        // checked as it arrives), so later messages' problems are not reached; a
        // validate_only batch is checked to its end.
        let err = c
            .submit_batch(batch(values.clone(), "bad", validate_only, 2))
            .await
            .err()
            .unwrap_or_else(|| panic!("{name}: bad batch accepted"));
        assert_eq!(err.code(), Code::InvalidArgument);
        let reached: &[&str] = if validate_only {
            &[
                "values[1].value",
                "values[3].region_code",
                "values[4].period",
                "values[5].metric_key",
            ]
        } else {
            &["values[1].value"]
        };
        assert_eq!(violation_fields(&err), reached, "{name}");
    }
    assert!(
        list_all(&s).await.is_empty(),
        "{name}: something was stored"
    );

    // validate_only on a good batch and a good value: accepted, nothing stored.
    let good: Vec<_> = (0..6)
        .map(|i| number_input("uscc.codes_total", "330802", "2026", "samr", &i.to_string()))
        .collect();
    let r = c
        .submit_batch(batch(good.clone(), "", true, 4))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    assert_eq!((r.accepted_count, r.first_submission_id), (6, 0));
    let r = c
        .submit_value(pb::SubmitValueRequest {
            value: good.first().cloned(),
            idempotency_key: String::new(),
            validate_only: true,
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    assert!(r.submission.is_none());
    assert!(
        list_all(&s).await.is_empty(),
        "{name}: validate_only stored"
    );

    // Unary: every problem at once.
    let bad = pb::SubmissionInput {
        metric_key: "joint_rp.domain_implemented".into(),
        region_code: "330800".into(),
        period: "26".into(),
        domain: "jrp-99".into(),
        evidence_uri: "relative/path".into(),
        value: Some(pb::MetricValue {
            value: Some(pb::metric_value::Value::Number("1".into())),
        }),
        ..Default::default()
    };
    let err = c
        .submit_value(unary(bad, ""))
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: accepted"));
    assert_eq!(
        violation_fields(&err),
        [
            "value.period",
            "value.domain",
            "value.value",
            "value.evidence_uri"
        ]
    );

    // Limits and credentials.
    let too_many: Vec<_> = (0..10_001)
        .map(|_| number_input("uscc.codes_total", "330802", "2026", "samr", "1"))
        .collect();
    let err = c
        .submit_batch(batch(too_many, "", false, 1000))
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: oversized batch accepted"));
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("10000"), "{}", err.message());
    let err = s
        .client(None)
        .await
        .submit_value(unary(good[0].clone(), ""))
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: anonymous accepted"));
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = s
        .client(Some(&principal("op", Role::Operator, None)))
        .await
        .submit_value(unary(good[0].clone(), ""))
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: operator accepted"));
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut dept = good[0].clone();
    dept.department_code = "tax".into();
    let err = s
        .client(Some(&principal("samr-sys", Role::Department, Some("samr"))))
        .await
        .submit_value(unary(dept, ""))
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: other department accepted"));
    assert_eq!(violation_fields(&err), ["value.department_code"]);
    assert!(list_all(&s).await.is_empty(), "{name}");
}

both_databases!(a_bad_item_stores_nothing_and_every_problem_is_reported);

async fn supersession_retraction_and_as_of(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let samr = principal("samr-sys", Role::Department, Some("samr"));
    let mut c = s.client(Some(&samr)).await;
    let submit = |n: &str| {
        unary(
            number_input("uscc.codes_total", "330802", "2026", "", n),
            "",
        )
    };
    let v10 = c
        .submit_value(submit("10"))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    let v10 = v10.submission.unwrap_or_default();
    assert_eq!(
        v10.input.as_ref().map(|i| i.department_code.as_str()),
        Some("samr")
    );
    let v12 = c
        .submit_value(submit("12"))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    let v12 = v12.submission.unwrap_or_default();

    let now = aggregates(&s, "330800", None).await;
    assert_eq!(
        number_of(&now, "uscc.codes_total").as_deref(),
        Some("12"),
        "{name}"
    );
    let then = aggregates(&s, "330800", v10.accept_time).await;
    assert_eq!(
        number_of(&then, "uscc.codes_total").as_deref(),
        Some("10"),
        "{name}"
    );

    let r = c
        .retract_submission(pb::RetractSubmissionRequest {
            name: v12.name.clone(),
            reason: "typo".into(),
            idempotency_key: "r1".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    let retraction = r.retraction.unwrap_or_default();
    assert_eq!(retraction.retracts, v12.name);
    let again = c
        .retract_submission(pb::RetractSubmissionRequest {
            name: v12.name.clone(),
            reason: "typo".into(),
            idempotency_key: "r1".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    assert!(again.replayed && again.retraction.map(|x| x.id) == Some(retraction.id));
    // Retracting a correction is an undo (issue 10): the value it superseded is current
    // again; the past still reads as it was.
    let now = aggregates(&s, "330800", None).await;
    assert_eq!(
        number_of(&now, "uscc.codes_total").as_deref(),
        Some("10"),
        "{name}"
    );
    let before = aggregates(&s, "330800", v12.accept_time).await;
    assert_eq!(
        number_of(&before, "uscc.codes_total").as_deref(),
        Some("12")
    );
    // The 10 has two versions now (until the 12, and again since the undo): as of its first
    // one the store reads one version, not both, and the figure counts it once.
    let first = aggregates(&s, "330800", v10.accept_time).await;
    assert_eq!(
        number_of(&first, "uscc.codes_total").as_deref(),
        Some("10"),
        "{name}: as of the first version of a value the undo reopened"
    );
    let t1 = v10
        .accept_time
        .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000)
        .unwrap_or_default();
    let rows = citycredit_ingestion::store::versions(
        &s.db,
        &["330802".to_owned()],
        &["2026".to_owned()],
        Some(t1),
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(rows.len(), 1, "{name}: {rows:?}");
    // Retracting the only value left leaves none; history keeps every row.
    c.retract_submission(pb::RetractSubmissionRequest {
        name: v10.name.clone(),
        reason: "old".into(),
        idempotency_key: String::new(),
    })
    .await
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    let now = aggregates(&s, "330800", None).await;
    assert_eq!(number_of(&now, "uscc.codes_total"), None, "{name}");
    let err = c
        .retract_submission(pb::RetractSubmissionRequest {
            name: v10.name.clone(),
            reason: "twice".into(),
            idempotency_key: String::new(),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: retracted twice"));
    assert_eq!(err.code(), Code::FailedPrecondition);
    let v13 = c
        .submit_value(submit("13"))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(v13.into_inner().submission.is_some());
    let now = aggregates(&s, "330800", None).await;
    assert_eq!(number_of(&now, "uscc.codes_total").as_deref(), Some("13"));
    assert_eq!(list_all(&s).await.len(), 5, "{name}");
    let got = c
        .get_submission(pb::GetSubmissionRequest {
            name: v12.name.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    assert_eq!(got.submission.map(|x| x.hash), Some(v12.hash.clone()));
    let err = c
        .get_submission(pb::GetSubmissionRequest {
            name: "submissions/999".into(),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: found a ghost"));
    assert_eq!(err.code(), Code::NotFound);
}

both_databases!(supersession_retraction_and_as_of);

async fn roll_up_department_sums_and_domain_union(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let mut c = s.client(Some(&platform())).await;
    let values = vec![
        number_input("uscc.codes_total", "330802", "2026", "samr", "10"),
        number_input("uscc.codes_total", "330802", "2026", "civil-affairs", "5"),
        number_input("uscc.codes_total", "330803", "2026", "samr", "7"),
        number_input("uscc.codes_total", "330800", "2026", "samr", "100"),
        number_input("uscc.codes_total", "330800", "2025", "samr", "1000"),
        number_input("xinyidai.loan_amount", "330802", "2026", "", "0.10"),
        number_input("xinyidai.loan_amount", "330803", "2026", "", "0.25"),
        number_input("monitoring.city_rank", "330800", "2026", "", "3"),
        flag_input(
            "integrity.credit_records",
            "330802",
            "2026",
            "samr",
            "production",
            true,
        ),
        flag_input(
            "integrity.credit_records",
            "330803",
            "2026",
            "tax",
            "production",
            false,
        ),
        flag_input(
            "xinyi_plus.domain_in_service",
            "330881",
            "2026",
            "",
            "xinyidai",
            true,
        ),
    ];
    c.submit_batch(batch(values, "", false, 5))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut bool_in = flag_input(
        "monitoring.township_extension_plan",
        "330803",
        "2026",
        "",
        "",
        true,
    );
    bool_in.domain.clear();
    c.submit_value(unary(bool_in, ""))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));

    let city = aggregates(&s, "330800", None).await;
    assert_eq!(
        number_of(&city, "uscc.codes_total").as_deref(),
        Some("122"),
        "{name}"
    );
    assert_eq!(
        metric(&city, "uscc.codes_total").map(|m| m.sources.len()),
        Some(4)
    );
    assert_eq!(
        number_of(&city, "xinyidai.loan_amount").as_deref(),
        Some("0.35")
    );
    assert_eq!(
        number_of(&city, "monitoring.city_rank").as_deref(),
        Some("3")
    );
    assert_eq!(
        number_of(&city, "monitoring.township_extension_plan").as_deref(),
        Some("true")
    );
    assert_eq!(
        metric(&city, "integrity.credit_records").map(|m| m.domains.clone()),
        Some(vec!["production".to_owned()])
    );
    assert_eq!(
        metric(&city, "xinyi_plus.domain_in_service").map(|m| m.domains.clone()),
        Some(vec!["xinyidai".to_owned()])
    );
    let county = aggregates(&s, "330802", None).await;
    assert_eq!(
        number_of(&county, "uscc.codes_total").as_deref(),
        Some("15")
    );
    // A rank is the city's alone: the county has none, and cannot be given one.
    assert_eq!(number_of(&county, "monitoring.city_rank"), None);
    let err = c
        .submit_value(pb::SubmitValueRequest {
            value: Some(number_input(
                "monitoring.city_rank",
                "330802",
                "2026",
                "",
                "1",
            )),
            ..Default::default()
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: a county rank was accepted"));
    assert_eq!(violation_fields(&err), ["value.region_code"]);
    assert_eq!(
        number_of(&county, "monitoring.township_extension_plan"),
        None
    );
    let other = aggregates(&s, "330803", None).await;
    assert!(metric(&other, "integrity.credit_records").is_some_and(|m| m.domains.is_empty()));

    // A false flag of one key removes nothing another key flagged; superseding the true
    // key's own flag does.
    let more = vec![
        flag_input(
            "integrity.credit_records",
            "330800",
            "2026",
            "tax",
            "taxation",
            true,
        ),
        flag_input(
            "integrity.credit_records",
            "330803",
            "2026",
            "tax",
            "production",
            false,
        ),
    ];
    c.submit_batch(batch(more, "", false, 10))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let city = aggregates(&s, "330800", None).await;
    assert_eq!(
        metric(&city, "integrity.credit_records").map(|m| m.domains.clone()),
        Some(vec!["production".to_owned(), "taxation".to_owned()])
    );
    c.submit_value(unary(
        flag_input(
            "integrity.credit_records",
            "330802",
            "2026",
            "samr",
            "production",
            false,
        ),
        "",
    ))
    .await
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    let city = aggregates(&s, "330800", None).await;
    assert_eq!(
        metric(&city, "integrity.credit_records").map(|m| m.domains.clone()),
        Some(vec!["taxation".to_owned()])
    );

    // Task statuses: the latest per task at the region itself.
    let mut a = s
        .client(Some(&principal("assessor-1", Role::Assessor, None)))
        .await;
    for status in [pb::TaskStatus::InProgress, pb::TaskStatus::Done] {
        a.submit_value(unary(
            pb::SubmissionInput {
                metric_key: "task.status".into(),
                region_code: "330800".into(),
                period: "2026".into(),
                task_id: "E01.1".into(),
                value: Some(pb::MetricValue {
                    value: Some(pb::metric_value::Value::TaskStatus(status as i32)),
                }),
                ..Default::default()
            },
            "",
        ))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let city = aggregates(&s, "330800", None).await;
    assert_eq!(
        metric(&city, "task.status").and_then(|m| m.task_statuses.get("E01.1").copied()),
        Some(pb::TaskStatus::Done as i32)
    );

    // The in-process source gives scoring the same figures, exactly.
    use citycredit::aggregates::{AggregateSource, Selection};
    let agg = s
        .second_process()
        .aggregates("330800", "2026", None, Selection::All)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        agg.values.number("uscc.codes_total"),
        Some(&citycredit_core::numbers::Num::from_int(122))
    );
    assert_eq!(
        agg.values.task_status("task.status", "E01.1"),
        citycredit_core::rules::TaskStatus::Done
    );
}

both_databases!(roll_up_department_sums_and_domain_union);

async fn change_feed_reports_region_and_ancestors(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let mut watch = s
        .client(Some(&platform()))
        .await
        .watch_changes(pb::WatchChangesRequest {
            region_code: "330800".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    let r = s
        .client(Some(&platform()))
        .await
        .submit_value(unary(
            number_input("uscc.codes_total", "330881", "2026-Q3", "samr", "4"),
            "",
        ))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    let id = r.submission.map(|x| x.id).unwrap_or_default();
    let event = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap_or_else(|_| panic!("{name}: no change event"))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .unwrap_or_default();
    assert_eq!(
        (
            event.region_code.as_str(),
            event.period.as_str(),
            event.last_submission_id
        ),
        ("330800", "2026-Q3", id)
    );
    // A watcher of the county sees it too; one of another county does not.
    let mut county = s
        .client(Some(&platform()))
        .await
        .watch_changes(pb::WatchChangesRequest {
            region_code: "330881".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    let mut elsewhere = s
        .client(Some(&platform()))
        .await
        .watch_changes(pb::WatchChangesRequest {
            region_code: "330802".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    let r = s
        .client(Some(&platform()))
        .await
        .submit_value(unary(
            number_input("uscc.codes_total", "330881", "2026-Q3", "samr", "5"),
            "",
        ))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let id = r.into_inner().submission.map(|x| x.id).unwrap_or_default();
    let event = tokio::time::timeout(Duration::from_secs(10), county.message())
        .await
        .unwrap_or_else(|_| panic!("{name}: no county event"))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .unwrap_or_default();
    assert_eq!(
        (event.region_code.as_str(), event.last_submission_id),
        ("330881", id)
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), elsewhere.message())
            .await
            .is_err(),
        "{name}: another county heard the change"
    );

    // Another process's writes reach this server's watchers: on PostgreSQL over
    // LISTEN/NOTIFY (SQLite is one process by design).
    if s.schema.is_some() {
        let w = write_from_another_process(&s, "1").await;
        let event = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let c = watch
                    .message()
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
                    .unwrap_or_default();
                if c.period == "2026" {
                    return c;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("postgres: no cross-process notification"));
        assert_eq!(event.region_code, "330800");
        assert_eq!(
            event.last_submission_id,
            u64::try_from(w.last_id).unwrap_or(0)
        );
    }
}

both_databases!(change_feed_reports_region_and_ancestors);

/// Writes `n` for `uscc.codes_total` at 330822 for 2026 as samr, from another writer over the
/// same store (as a second process would; on PostgreSQL it notifies the server's change feed).
async fn write_from_another_process(s: &IngestionServer, n: &str) -> citycredit_ingestion::Written {
    let other = s.second_process();
    let p = platform();
    let values = other
        .check(
            &p,
            &[number_input(
                "uscc.codes_total",
                "330822",
                "2026",
                "samr",
                n,
            )],
            false,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    other
        .write_values(&p, values, "", "batch")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Ingestion keeps the current values of each (region, period) in memory once an aggregation
/// read them, and drops a pair when a commit changes it, before the writer answers: every
/// aggregation through the API sees every write acknowledged before it (a new value, one that
/// supersedes, a retraction), in this process and, on PostgreSQL, in another one.
async fn aggregates_follow_every_write_while_current_values_are_kept(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let samr = principal("samr-sys", Role::Department, Some("samr"));
    let mut c = s.client(Some(&samr)).await;
    let submit =
        |region: &str, n: &str| unary(number_input("uscc.codes_total", region, "2026", "", n), "");
    let total = |r: pb::QueryAggregatesResponse| number_of(&r, "uscc.codes_total");
    // Nothing kept yet: the first aggregation reads every pair and keeps them.
    assert_eq!(total(aggregates(&s, "330800", None).await), None, "{name}");
    for (region, n, want) in [
        ("330802", "10", "10"),
        ("330802", "15", "15"), // supersedes the 10
        ("330803", "7", "22"),
    ] {
        c.submit_value(submit(region, n))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            total(aggregates(&s, "330800", None).await).as_deref(),
            Some(want),
            "{name}: the city after {region} = {n}"
        );
    }
    // The county alone: its pairs come from memory (read for the city).
    assert_eq!(
        total(aggregates(&s, "330802", None).await).as_deref(),
        Some("15"),
        "{name}"
    );
    let eight = c
        .submit_value(submit("330803", "8"))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner()
        .submission
        .unwrap_or_default();
    assert_eq!(
        total(aggregates(&s, "330800", None).await).as_deref(),
        Some("23"),
        "{name}: the 8 supersedes the 7"
    );
    c.retract_submission(pb::RetractSubmissionRequest {
        name: eight.name.clone(),
        reason: "typo".into(),
        idempotency_key: String::new(),
    })
    .await
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    let city = total(aggregates(&s, "330800", None).await);
    assert_eq!(
        city.as_deref(),
        Some("22"),
        "{name}: the retraction undid the 8, so the 7 counts again"
    );
    // The same as the store answers as of now, where nothing kept in memory is used.
    let now = prost_types::Timestamp::from(std::time::SystemTime::now());
    assert_eq!(
        total(aggregates(&s, "330800", Some(now)).await),
        city,
        "{name}"
    );

    // Another process's commit: heard over LISTEN/NOTIFY, which drops the pair here.
    if s.schema.is_some() {
        write_from_another_process(&s, "5").await;
        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let city = total(aggregates(&s, "330800", None).await);
                if city.as_deref() == Some("27") {
                    return;
                }
                assert_eq!(
                    city.as_deref(),
                    Some("22"),
                    "{name}: neither before nor after"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            seen.is_ok(),
            "postgres: another process's value never reached the figures"
        );
    }
}

both_databases!(aggregates_follow_every_write_while_current_values_are_kept);

async fn concurrent_unary_submissions_share_commits_and_keep_the_chain(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let mut tasks = Vec::new();
    // One HTTP/2 connection, many concurrent calls.
    let shared = s.client(Some(&platform())).await;
    for i in 0..300 {
        let mut c = shared.clone();
        tasks.push(tokio::spawn(async move {
            c.submit_value(unary(
                number_input("uscc.codes_total", "330802", "2026", "samr", &i.to_string()),
                &format!("k{i}"),
            ))
            .await
            .map(|r| r.into_inner().submission.map(|x| x.id).unwrap_or_default())
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(
            t.await
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .unwrap_or_else(|e| panic!("{name}: {e}")),
        );
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=300).collect::<Vec<u64>>(), "{name}");
    let v = s
        .client(Some(&admin()))
        .await
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    assert!(v.intact, "{name}: {v:?}");
    assert_eq!(v.rows_checked, 300);
    let err = s
        .client(Some(&platform()))
        .await
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: non-admin verified"));
    assert_eq!(err.code(), Code::PermissionDenied);
    // Fewer transactions than calls: accept times are shared within a group.
    let rows = s
        .client(Some(&platform()))
        .await
        .list_submissions(pb::ListSubmissionsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner()
        .submissions;
    let mut times: Vec<_> = rows
        .iter()
        .filter_map(|r| r.accept_time.map(|t| (t.seconds, t.nanos)))
        .collect();
    times.sort_unstable();
    times.dedup();
    assert!(times.len() < 300, "{name}: no call shared a commit");
}

both_databases!(concurrent_unary_submissions_share_commits_and_keep_the_chain);

/// Issue 15: on PostgreSQL the writer's statements take whole columns as arrays (`UNNEST`) on
/// a native connection (the `Any` driver cannot bind arrays). Caught in the act: with
/// `value_versions` locked, the writer's insert into it waits, and PostgreSQL shows the waiting
/// statement and the connection it came from.
async fn on_postgresql_the_writer_inserts_whole_columns_on_a_native_connection() {
    let s = IngestionServer::start(Backend::Postgres).await;
    let mut lock =
        s.db.pool
            .begin()
            .await
            .unwrap_or_else(|e| panic!("begin: {e}"));
    sqlx::query("LOCK TABLE value_versions IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .unwrap_or_else(|e| panic!("lock: {e}"));
    let mut c = s.client(Some(&platform())).await;
    let call = tokio::spawn(async move {
        c.submit_value(unary(
            number_input("uscc.codes_total", "330802", "2026", "samr", "7"),
            "native-1",
        ))
        .await
    });
    let started = std::time::Instant::now();
    let waiting: String = loop {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT query FROM pg_stat_activity WHERE application_name = $1 \
             AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO value_versions%'",
        )
        .bind(citycredit_store::BULK_APPLICATION_NAME)
        .fetch_optional(&s.db.pool)
        .await
        .unwrap_or_else(|e| panic!("pg_stat_activity: {e}"));
        if let Some(q) = found {
            break q;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no insert into value_versions waited on a connection named {}",
            citycredit_store::BULK_APPLICATION_NAME
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(waiting.contains("UNNEST("), "not a bulk insert: {waiting}");
    lock.rollback()
        .await
        .unwrap_or_else(|e| panic!("rollback: {e}"));
    let stored = call
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("submit: {e}"))
        .into_inner()
        .submission
        .unwrap_or_default();
    assert_eq!(stored.id, 1);
    let current: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM value_versions WHERE valid_to IS NULL")
            .fetch_one(&s.db.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(current, 1);
}

postgres_only!(on_postgresql_the_writer_inserts_whole_columns_on_a_native_connection);

/// Where autovacuum leaves the writer's tables alone (a server with `autovacuum = off`, or
/// tables with `autovacuum_enabled = false` as here), ingestion keeps their planner statistics
/// itself: 168 new values written through the API get `value_versions` analyzed within a few
/// checks.
/// Without statistics the writer's statements are planned from defaults and slow down by
/// orders of magnitude as history grows.
async fn tables_autovacuum_leaves_alone_are_analyzed_as_they_grow() {
    let s = IngestionServer::start(Backend::Postgres).await;
    for statement in [
        "ALTER TABLE submissions SET (autovacuum_enabled = false)",
        "ALTER TABLE value_versions SET (autovacuum_enabled = false)",
        "ALTER TABLE value_keys SET (autovacuum_enabled = false)",
    ] {
        sqlx::query(statement)
            .execute(&s.db.pool)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let analyzed = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM pg_stat_user_tables WHERE schemaname = current_schema() \
             AND relname = 'value_versions' AND last_analyze IS NOT NULL",
        )
        .fetch_one(&s.db.pool)
        .await
        .unwrap_or_else(|e| panic!("pg_stat_user_tables: {e}"))
    };
    assert_eq!(analyzed().await, 0, "a new store was never analyzed");
    // 168 keys: every region, each month of two years.
    let regions = [
        "330800", "330802", "330803", "330822", "330824", "330825", "330881",
    ];
    let values: Vec<pb::SubmissionInput> = (0..168)
        .map(|i| {
            let period = format!("{}-{:02}", 2025 + i / 84, i % 12 + 1);
            let region = regions[(i / 12) % 7];
            number_input("uscc.codes_total", region, &period, "samr", &i.to_string())
        })
        .collect();
    let mut c = s.client(Some(&platform())).await;
    for (i, chunk) in values.chunks(100).enumerate() {
        c.submit_batch(batch(chunk.to_vec(), &format!("stats-{i}"), false, 100))
            .await
            .unwrap_or_else(|e| panic!("batch {i}: {e}"));
    }
    let deadline = std::time::Instant::now()
        + citycredit_ingestion::table_stats::EVERY * 4
        + std::time::Duration::from_secs(5);
    while analyzed().await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "value_versions was not analyzed within {:?} of 168 values written",
            citycredit_ingestion::table_stats::EVERY * 4
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

postgres_only!(tables_autovacuum_leaves_alone_are_analyzed_as_they_grow);
