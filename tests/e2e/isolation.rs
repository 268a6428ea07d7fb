//! Issue 10, point 1: work batched for speed never fails for one member's input. Many innocent
//! callers and a few poisoned ones submit at the same moment, so their values share group
//! commits: every innocent value is stored exactly once and every poisoned one is refused on
//! its own, with its field named. Twice: through the real server (where request validation now
//! refuses the poison), and at the writer (validation bypassed, so the database itself refuses
//! the poison inside the shared transaction), on SQLite and PostgreSQL.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::Code;

use citycredit::org;
use citycredit::proto::v1 as pb;
use citycredit_core::auth::{Principal, Role};
use citycredit_ingestion::validation::NewValue;
use citycredit_ingestion::{IngestError, Ingestion, IngestionOptions};
use citycredit_store::testing;
use citycredit_tests::ingestion::*;
use citycredit_tests::{Backend, both_databases};

const INNOCENT: usize = 200;

fn unary(input: pb::SubmissionInput, key: &str) -> pb::SubmitValueRequest {
    pb::SubmitValueRequest {
        value: Some(input),
        idempotency_key: key.to_owned(),
        validate_only: false,
    }
}

/// Stored (idempotency key -> rows) for every key.
async fn stored_keys(db: &citycredit_store::Db) -> HashMap<String, i64> {
    use sqlx::Row;
    sqlx::query("SELECT idempotency_key, COUNT(*) FROM submissions GROUP BY idempotency_key")
        .fetch_all(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("count keys: {e}"))
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
        .collect()
}

async fn innocent_values_are_stored_once_and_poison_is_refused_through_the_server(
    backend: Backend,
) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let innocent = s.client(Some(&platform())).await;
    let attacker = s
        .client(Some(&principal("careless-1", Role::Platform, None)))
        .await;
    let mut tasks = Vec::new();
    for i in 0..INNOCENT {
        let mut c = innocent.clone();
        let key = format!("ok-{i}");
        tasks.push(tokio::spawn(async move {
            let r = c
                .submit_value(unary(
                    number_input("uscc.codes_total", "330802", "2026", "samr", &i.to_string()),
                    &key,
                ))
                .await;
            (key, r.map(|_| ()), None)
        }));
        if i % 25 == 0 {
            // Poison in every field kind the database refuses, interleaved with the innocent.
            let poisons: Vec<(pb::SubmitValueRequest, &str)> = vec![
                (
                    unary(
                        pb::SubmissionInput {
                            note: format!("note with NUL \0 number {i}"),
                            ..number_input("uscc.codes_total", "330803", "2026", "samr", "1")
                        },
                        &format!("bad-note-{i}"),
                    ),
                    "value.note",
                ),
                (
                    unary(
                        number_input("uscc.codes_total", "330803", "2026", "samr", "2"),
                        &format!("bad-key-\0-{i}"),
                    ),
                    "idempotency_key",
                ),
                (
                    unary(
                        pb::SubmissionInput {
                            evidence_uri: format!("https://example.org/\0{i}"),
                            ..number_input("uscc.codes_total", "330803", "2026", "samr", "3")
                        },
                        &format!("bad-uri-{i}"),
                    ),
                    "value.evidence_uri",
                ),
            ];
            for (request, field) in poisons {
                let mut c = attacker.clone();
                tasks.push(tokio::spawn(async move {
                    let key = request.idempotency_key.clone();
                    let r = c.submit_value(request).await;
                    (key, r.map(|_| ()), Some(field))
                }));
            }
        }
    }
    let mut poisoned = 0;
    let mut failed: Vec<String> = Vec::new();
    let mut stored_poison: Vec<&str> = Vec::new();
    for t in tasks {
        let (key, result, poison) = t.await.unwrap_or_else(|e| panic!("{name}: {e}"));
        match (poison, result) {
            (None, Ok(())) => {}
            (None, Err(e)) => failed.push(format!("{key}: {:?}", e.code())),
            (Some(field), Ok(())) => stored_poison.push(field),
            (Some(field), Err(e)) => {
                poisoned += 1;
                assert_eq!(e.code(), Code::InvalidArgument, "{name}: {field}: {e:?}");
                assert_eq!(violation_fields(&e), [field], "{name}: {e:?}");
                assert!(e.message().contains("U+0000"), "{name}: {}", e.message());
            }
        }
    }
    eprintln!(
        "{name}: {} of {INNOCENT} innocent pushes failed, {} of 24 poisoned ones stored",
        failed.len(),
        stored_poison.len()
    );
    assert!(
        failed.is_empty(),
        "{name}: innocent pushes failed: {failed:?}"
    );
    assert!(
        stored_poison.is_empty(),
        "{name}: poison stored: {stored_poison:?}"
    );
    assert_eq!(poisoned, 24, "{name}");
    let keys = stored_keys(&s.db).await;
    for i in 0..INNOCENT {
        assert_eq!(keys.get(&format!("ok-{i}")), Some(&1), "{name}: ok-{i}");
    }
    assert_eq!(keys.len(), INNOCENT, "{name}: {keys:?}");
    let v = s
        .client(Some(&admin()))
        .await
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_inner();
    assert!(v.intact, "{name}: {v:?}");
}

both_databases!(innocent_values_are_stored_once_and_poison_is_refused_through_the_server);

fn test_principal(id: &str) -> Principal {
    Principal {
        id: id.to_owned(),
        role: Role::Platform,
        department: None,
        credential: None,
    }
}

/// A checked value (validation passes), for the writer.
fn checked(ing: &Ingestion, p: &Principal, n: usize) -> NewValue {
    ing.check(
        p,
        &[number_input(
            "uscc.codes_total",
            "330802",
            "2026",
            "samr",
            &n.to_string(),
        )],
        true,
    )
    .unwrap_or_else(|e| panic!("check: {e}"))
    .remove(0)
}

enum Expect {
    Stored,
    Refused(&'static str),
}

/// A job's key, what it should get, and what it got.
type Answer = (String, Expect, Result<(), IngestError>);

async fn the_writer_commits_the_innocent_and_refuses_the_poisoned_alone(backend: Backend) {
    let db = testing::open(backend).await;
    let name = db.name();
    let (catalog, org_now) = catalog_and_org();
    let ing = Ingestion::start(
        db.db().clone(),
        catalog,
        org::fixed(org_now),
        IngestionOptions::default(),
    );
    let innocent = test_principal("innocent");
    let careless = test_principal("careless");

    // A value to retract with a poisoned reason.
    let target = ing
        .write_values(
            &innocent,
            vec![checked(&ing, &innocent, 7)],
            "target",
            "value",
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let target = ing
        .get(target.first_id)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));

    let mut tasks: Vec<tokio::task::JoinHandle<Answer>> = Vec::new();
    let shared = Arc::new(ing);
    for i in 0..INNOCENT {
        let (ing, p) = (Arc::clone(&shared), innocent.clone());
        let value = checked(&ing, &p, i);
        tasks.push(tokio::spawn(async move {
            let key = format!("ok-{i}");
            // Every tenth key is sent twice at once: stored once, replayed once.
            let again = if i % 10 == 0 {
                let (ing2, p2, v2, k2) = (Arc::clone(&ing), p.clone(), value.clone(), key.clone());
                Some(tokio::spawn(async move {
                    ing2.write_values(&p2, vec![v2], &k2, "value").await
                }))
            } else {
                None
            };
            let mut r = ing
                .write_values(&p, vec![value], &key, "value")
                .await
                .map(|_| ());
            if let Some(again) = again {
                let other = again.await.unwrap_or_else(|e| panic!("{e}"));
                r = r.and(other.map(|_| ()));
            }
            (key, Expect::Stored, r)
        }));
        if i % 40 == 0 {
            // Validation is bypassed: the database refuses the NUL inside the group commit.
            let (ing, p) = (Arc::clone(&shared), careless.clone());
            let mut bad = checked(&ing, &p, 1000 + i);
            bad.note = format!("NUL \0 in a note {i}");
            tasks.push(tokio::spawn(async move {
                let key = format!("bad-note-{i}");
                let r = ing.write_values(&p, vec![bad], &key, "value").await;
                (key, Expect::Refused("value.note"), r.map(|_| ()))
            }));
            let (ing, p) = (Arc::clone(&shared), careless.clone());
            let good = checked(&ing, &p, 2000 + i);
            let mut bad = checked(&ing, &p, 3000 + i);
            bad.task_id = "\0".into();
            tasks.push(tokio::spawn(async move {
                let key = format!("bad-batch-{i}");
                let r = ing.write_values(&p, vec![good, bad], &key, "batch").await;
                (key, Expect::Refused("values[1].task_id"), r.map(|_| ()))
            }));
            let (ing, p, t) = (Arc::clone(&shared), careless.clone(), target.clone());
            tasks.push(tokio::spawn(async move {
                let key = format!("bad-reason-{i}");
                let r = ing
                    .write_retraction(&p, t, format!("reason \0 {i}"), &key)
                    .await;
                (key, Expect::Refused("reason"), r.map(|_| ()))
            }));
        }
    }
    let mut refused = 0;
    for t in tasks {
        let (key, expect, result) = t.await.unwrap_or_else(|e| panic!("{name}: {e}"));
        match (expect, result) {
            (Expect::Stored, Ok(())) => {}
            (Expect::Stored, Err(e)) => panic!("{name}: innocent {key} failed: {e:?}"),
            (Expect::Refused(field), Ok(())) => panic!("{name}: {key} stored ({field})"),
            (Expect::Refused(field), Err(IngestError::Invalid(v))) => {
                refused += 1;
                let fields: Vec<&str> = v.iter().map(|x| x.field.as_str()).collect();
                assert_eq!(fields, [field], "{name}: {key}: {v:?}");
                assert!(v[0].description.starts_with("U+0000"), "{name}: {v:?}");
            }
            (Expect::Refused(field), Err(e)) => {
                panic!("{name}: {key} ({field}) refused as {e:?}, not INVALID_ARGUMENT")
            }
        }
    }
    assert_eq!(refused, 15, "{name}");
    let keys = stored_keys(db.db()).await;
    for i in 0..INNOCENT {
        assert_eq!(keys.get(&format!("ok-{i}")), Some(&1), "{name}: ok-{i}");
    }
    // The innocent values, the target; nothing poisoned.
    assert_eq!(keys.len(), INNOCENT + 1, "{name}: {keys:?}");
    let verdict = citycredit_ingestion::audit_chain::verify(db.db())
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(verdict.intact, "{name}: {verdict:?}");
}

both_databases!(the_writer_commits_the_innocent_and_refuses_the_poisoned_alone);
