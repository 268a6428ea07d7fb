//! Issue 10, point 5, through the real server on SQLite and PostgreSQL: concurrent retractions
//! of one value store exactly one; VerifyAuditChain covers the value versions scoring reads; a
//! retraction of a correction is an undo that aggregates, scorecards and `as_of` agree on; a
//! batch of 10,000 bad values is refused with a status small enough for any client.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

use citycredit::proto::v1 as pb;
use citycredit_tests::ingestion::*;
use citycredit_tests::{Backend, both_databases};

fn unary(input: pb::SubmissionInput) -> pb::SubmitValueRequest {
    pb::SubmitValueRequest {
        value: Some(input),
        idempotency_key: String::new(),
        validate_only: false,
    }
}

async fn submit(c: &mut SubmissionClient, n: &str) -> pb::Submission {
    c.submit_value(unary(number_input(
        "uscc.codes_total",
        "330802",
        "2026",
        "samr",
        n,
    )))
    .await
    .unwrap_or_else(|e| panic!("submit {n}: {e}"))
    .into_inner()
    .submission
    .unwrap_or_default()
}

async fn retract(c: &mut SubmissionClient, name: &str) -> Result<pb::Submission, Status> {
    c.retract_submission(pb::RetractSubmissionRequest {
        name: name.to_owned(),
        reason: "wrong figure".into(),
        idempotency_key: String::new(),
    })
    .await
    .map(|r| r.into_inner().retraction.unwrap_or_default())
}

fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

async fn of_concurrent_retractions_exactly_one_is_stored(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let mut c = s.client(Some(&platform())).await;
    for round in 0..3 {
        let v = submit(&mut c, &round.to_string()).await;
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let mut c = c.clone();
            let target = v.name.clone();
            tasks.push(tokio::spawn(async move { retract(&mut c, &target).await }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap_or_else(|e| panic!("{e}")) {
                Ok(r) => {
                    assert_eq!(r.retracts, v.name);
                    ok += 1;
                }
                Err(e) => {
                    assert_eq!(e.code(), Code::FailedPrecondition, "{name}: {e:?}");
                    assert_eq!(reason(&e), "ALREADY_RETRACTED", "{name}: {e:?}");
                }
            }
        }
        assert_eq!(ok, 1, "{name}: round {round}");
        let stored: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM submissions WHERE retracts = $1")
                .bind(i64::try_from(v.id).unwrap_or(0))
                .fetch_one(&s.db.pool)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(stored, 1, "{name}: round {round}");
    }
    // A retraction cannot be retracted.
    let r =
        sqlx::query_scalar::<_, i64>("SELECT MAX(id) FROM submissions WHERE retracts IS NOT NULL")
            .fetch_one(&s.db.pool)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    let e = retract(&mut c, &format!("submissions/{r}"))
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: retracted a retraction"));
    assert_eq!(reason(&e), "NOT_RETRACTABLE", "{name}: {e:?}");
    // The database itself refuses a second retraction, whatever the writer does.
    let dup = sqlx::query(
        "INSERT INTO submissions (id, principal, department, region, period, metric, domain, \
         task_id, value, evidence_uri, note, idempotency_key, accept_micros, kind, retracts, \
         reason, prev_hash, hash) SELECT 1000000, principal, department, region, period, metric, \
         domain, task_id, value, evidence_uri, note, 'dup', accept_micros, kind, retracts, \
         reason, prev_hash, hash FROM submissions WHERE id = $1",
    )
    .bind(r)
    .execute(&s.db.pool)
    .await;
    assert!(
        dup.is_err(),
        "{name}: the unique index let a second retraction in"
    );
}

both_databases!(of_concurrent_retractions_exactly_one_is_stored);

async fn aggregate_of(
    s: &IngestionServer,
    as_of: Option<prost_types::Timestamp>,
) -> Option<String> {
    let r = s
        .client(Some(&platform()))
        .await
        .query_aggregates(pb::QueryAggregatesRequest {
            region_code: "330800".into(),
            period: "2026".into(),
            as_of,
            approved_only: false,
        })
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", s.name()))
        .into_inner();
    r.metrics
        .iter()
        .find(|m| m.metric_key == "uscc.codes_total")
        .and_then(|m| m.value.as_ref())
        .and_then(|v| match &v.value {
            Some(pb::metric_value::Value::Number(n)) => Some(n.clone()),
            _ => None,
        })
}

/// The figure B02 reads and the submission behind it, from the scorecard.
async fn scorecard_of(
    s: &IngestionServer,
    as_of: Option<prost_types::Timestamp>,
) -> Option<(String, String)> {
    let card =
        pb::scoring_service_client::ScoringServiceClient::new(s.channel(Some(&platform())).await)
            .get_scorecard(pb::GetScorecardRequest {
                region_code: "330800".into(),
                period: "2026".into(),
                as_of,
                rule_version: String::new(),
                approved_only: false,
            })
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", s.name()))
            .into_inner()
            .scorecard
            .unwrap_or_default();
    card.indicators
        .iter()
        .flat_map(|i| &i.inputs)
        .find(|i| i.metric_key == "uscc.codes_total" && !i.sources.is_empty())
        .map(|i| {
            (
                i.value.clone(),
                i.sources
                    .first()
                    .map(|r| r.submission.clone())
                    .unwrap_or_default(),
            )
        })
}

async fn retracting_a_correction_brings_the_previous_value_back(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let mut c = s.client(Some(&platform())).await;
    let v1 = submit(&mut c, "100").await;
    let v2 = submit(&mut c, "200").await;
    let v3 = submit(&mut c, "300").await;
    let expect = |value: Option<&str>, source: &pb::Submission| {
        value.map(|v| (v.to_owned(), source.name.clone()))
    };
    assert_eq!(
        aggregate_of(&s, None).await.as_deref(),
        Some("300"),
        "{name}"
    );
    let r3 = retract(&mut c, &v3.name)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        aggregate_of(&s, None).await.as_deref(),
        Some("200"),
        "{name}: v3 undone"
    );
    assert_eq!(
        scorecard_of(&s, None).await,
        expect(Some("200"), &v2),
        "{name}"
    );
    // The submission behind the figure keeps its own accept time.
    let r2 = retract(&mut c, &v2.name)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        aggregate_of(&s, None).await.as_deref(),
        Some("100"),
        "{name}: v2 undone"
    );
    assert_eq!(
        scorecard_of(&s, None).await,
        expect(Some("100"), &v1),
        "{name}"
    );
    // as_of sees each state as it was.
    for (at, want, source) in [
        (v1.accept_time, "100", &v1),
        (v3.accept_time, "300", &v3),
        (r3.accept_time, "200", &v2),
        (r2.accept_time, "100", &v1),
    ] {
        assert_eq!(
            aggregate_of(&s, at).await.as_deref(),
            Some(want),
            "{name}: as of {at:?}"
        );
        assert_eq!(
            scorecard_of(&s, at).await,
            expect(Some(want), source),
            "{name}"
        );
    }
    // A new value after the undo supersedes the reopened one, and its retraction brings the
    // reopened one back again.
    let v4 = submit(&mut c, "400").await;
    assert_eq!(
        aggregate_of(&s, None).await.as_deref(),
        Some("400"),
        "{name}"
    );
    retract(&mut c, &v4.name)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        aggregate_of(&s, None).await.as_deref(),
        Some("100"),
        "{name}"
    );
    // Retracting the only value left leaves none.
    let r1 = retract(&mut c, &v1.name)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(aggregate_of(&s, None).await, None, "{name}");
    assert_eq!(scorecard_of(&s, None).await, None, "{name}");
    assert_eq!(aggregate_of(&s, r1.accept_time).await, None, "{name}");
    // History is append-only: every value and retraction is a row, and the versions the undo
    // made verify against the chain.
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM submissions")
        .fetch_one(&s.db.pool)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(rows, 8, "{name}");
    let v = verify(&s).await;
    assert!(v.intact, "{name}: {v:?}");
    assert!(v.versions_checked >= 7, "{name}: {v:?}");
}

both_databases!(retracting_a_correction_brings_the_previous_value_back);

async fn verify(s: &IngestionServer) -> pb::VerifyAuditChainResponse {
    s.client(Some(&admin()))
        .await
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", s.name()))
        .into_inner()
}

async fn exec(s: &IngestionServer, sql: &'static str) {
    sqlx::query(sql)
        .execute(&s.db.pool)
        .await
        .unwrap_or_else(|e| panic!("{}: {sql}: {e}", s.name()));
}

async fn an_edit_of_the_values_scoring_reads_is_caught(backend: Backend) {
    // Each edit on a fresh store: what was changed, and the submission that must be named.
    let edits: [(&str, u64, &str); 6] = [
        // The current value, as scoring reads it.
        (
            "UPDATE value_versions SET value = '999' WHERE submission_id = 5",
            5,
            "value",
        ),
        // A past value, as as_of reads it.
        (
            "UPDATE value_versions SET value = '999' WHERE submission_id = 2",
            2,
            "value",
        ),
        // When a value was current.
        (
            "UPDATE value_versions SET valid_to = valid_to + 1 WHERE submission_id = 3",
            3,
            "current from",
        ),
        // A current value deleted.
        (
            "DELETE FROM value_versions WHERE submission_id = 5",
            5,
            "missing version",
        ),
        // A value that never was.
        (
            "INSERT INTO value_versions (submission_id, vkey, metric, region, period, department, \
             domain, task_id, value, valid_from, valid_to, accepted_micros) SELECT 1, \
             vkey || '-2027', metric, region, '2027', department, domain, task_id, '5', \
             valid_from + 1, NULL, accepted_micros FROM value_versions WHERE submission_id = 1",
            1,
            "does not give",
        ),
        // A key as_of reads go through, deleted (the value would drop out of them).
        (
            "DELETE FROM value_keys WHERE vkey = (SELECT vkey FROM value_versions WHERE submission_id = 5)",
            5,
            "value_keys: the key of submissions/5",
        ),
    ];
    for (sql, bad, problem) in edits {
        let s = IngestionServer::start(backend).await;
        let name = s.name();
        let mut c = s.client(Some(&platform())).await;
        for n in ["1", "2", "3", "4"] {
            submit(&mut c, n).await;
        }
        // A value on another key, current.
        c.submit_value(unary(number_input(
            "uscc.codes_total",
            "330803",
            "2026",
            "samr",
            "9",
        )))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        // Undo 4: 3 is current again (a reopened version).
        retract(&mut c, "submissions/4")
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let before = verify(&s).await;
        assert!(before.intact, "{name}: {before:?}");
        // 1, 2, 3, 4 and 5 once each, and 3 again when 4 was undone.
        assert_eq!(before.versions_checked, 6, "{name}: {before:?}");
        exec(&s, sql).await;
        let after = verify(&s).await;
        assert!(!after.intact, "{name}: {sql}: {after:?}");
        assert_eq!(
            after.first_bad_submission_id, bad,
            "{name}: {sql}: {after:?}"
        );
        assert!(
            (after.problem.starts_with("value_versions")
                || after.problem.starts_with("value_keys"))
                && after.problem.contains(problem),
            "{name}: {sql}: {}",
            after.problem
        );
    }
}

both_databases!(an_edit_of_the_values_scoring_reads_is_caught);

/// What a status costs in HTTP/2 trailers as grpcio counts them (name, value and 32 bytes per
/// entry): its default limit is 8 KiB.
fn trailer_bytes(status: &Status) -> usize {
    let mut headers = tonic::codegen::http::HeaderMap::new();
    let _ = status.add_header(&mut headers);
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 32)
        .sum()
}

async fn a_batch_of_ten_thousand_bad_values_is_refused_in_under_8_kib(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let mut c = s.client(Some(&platform())).await;
    let bad: Vec<pb::SubmissionInput> = (0..10_000)
        .map(|i| {
            let mut v = number_input("uscc.codes_total", "330802", "2026", "samr", "1.5");
            v.note = format!("row {i}");
            v
        })
        .collect();
    // One message: every problem of it is counted.
    let e = c
        .submit_batch(tokio_stream::iter(vec![pb::SubmitBatchRequest {
            values: bad,
            ..Default::default()
        }]))
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: accepted"));
    assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
    let size = trailer_bytes(&e);
    assert!(size < 8 * 1024, "{name}: {size} bytes of trailers");
    let details = e.get_error_details();
    let listed = details
        .bad_request()
        .map(|b| b.field_violations.clone())
        .unwrap_or_default();
    assert!(
        (50..=100).contains(&listed.len()),
        "{name}: {}",
        listed.len()
    );
    eprintln!(
        "{name}: 10,000 bad values: {size} bytes of trailers, {} violations listed",
        listed.len()
    );
    assert_eq!(listed[0].field, "values[0].value");
    let meta = details
        .error_info()
        .map(|i| i.metadata.clone())
        .unwrap_or_default();
    assert_eq!(
        meta.get("violations").map(String::as_str),
        Some("10000"),
        "{name}"
    );
    assert!(
        e.message().contains("10000 problems"),
        "{name}: {}",
        e.message()
    );
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM submissions")
        .fetch_one(&s.db.pool)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(stored, 0, "{name}");
    // The server keeps serving.
    tokio::time::timeout(Duration::from_secs(10), submit(&mut c, "1"))
        .await
        .unwrap_or_else(|_| panic!("{name}: stuck"));
}

both_databases!(a_batch_of_ten_thousand_bad_values_is_refused_in_under_8_kib);
