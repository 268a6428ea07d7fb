//! Figures as of an instant (QueryAggregates `as_of`), through the real server on SQLite and
//! PostgreSQL: the answer for an instant is the answer "now" gave at that instant. A history of
//! commits (new keys, corrections, two values of one key in one batch, undos, a key retracted
//! to nothing and back, changes outside the region or period asked) is written through gRPC;
//! after each commit the current figures of the city and of one county are recorded; then every
//! commit's instant, and the microsecond before it, is asked as of and compared with what was
//! recorded.
//!
//! The service answers an instant from the current values corrected by the versions closed after
//! it, while those are no more than its bound (the current values behind the figures, at least
//! 256 versions); further back it reads every value as of the instant. The history's correction
//! of [`BULK`] values outside the period asked closes that many versions, which puts every
//! instant before it past the bound, so both ways are compared with the record. A later
//! correction of [`OUTSIDE`] of them leaves the instants just before it with versions closed
//! after them, all outside what they ask.

use prost_types::Timestamp;

use citycredit::proto::v1 as pb;
use citycredit_tests::ingestion::*;
use citycredit_tests::{Backend, both_databases};

/// Values of the bulk commit and of its correction, past the bound of 256 versions.
const BULK: usize = 300;
/// Values corrected again by a later commit outside the period asked, within the bound.
const OUTSIDE: usize = 100;
const CODES: &str = "uscc.codes_total";
const LICENSES: &str = "double_publicity.licenses_total";

/// One commit of the history.
enum Step {
    Values(Vec<pb::SubmissionInput>),
    /// Retracts the first submission of the step with this index.
    Retract(usize),
}

fn value(metric: &str, region: &str, period: &str, n: &str) -> pb::SubmissionInput {
    number_input(metric, region, period, "samr", n)
}

/// The `i`-th month from January 2000: none reaches a 2026 figure (2025's do).
fn month(i: usize) -> String {
    format!("{}-{:02}", 2000 + i / 12, i % 12 + 1)
}

/// The bulk's keys (distinct months of one metric and county), the first `n`, at `value`.
fn bulk(n: usize, value: usize) -> Step {
    Step::Values(
        (0..n)
            .map(|i| number_input(LICENSES, "330881", &month(i), "samr", &value.to_string()))
            .collect(),
    )
}

fn history() -> Vec<Step> {
    use Step::{Retract, Values};
    vec![
        /* 0 */ Values(vec![value(CODES, "330802", "2026", "10")]),
        /* 1 */ Values(vec![value(CODES, "330803", "2026", "20")]),
        /* 2 */ Values(vec![value(LICENSES, "330802", "2026-01", "3")]),
        /* 3 */ Values(vec![value(CODES, "330802", "2026", "11")]),
        // Two values of one key in one commit: the second is current.
        /* 4 */
        Values(vec![
            value(CODES, "330822", "2026", "5"),
            value(CODES, "330822", "2026", "6"),
        ]),
        // Undo of the correction: 10 is current again.
        /* 5 */ Retract(3),
        // The key's only value: none is left.
        /* 6 */ Retract(1),
        /* 7 */ Values(vec![value(LICENSES, "330803", "2026-02", "4")]),
        // Outside the period asked: new keys, then each corrected. The correction closes
        // BULK versions, past the bound for every instant before it.
        /* 8 */
        bulk(BULK, 1),
        /* 9 */ bulk(BULK, 2),
        // The key retracted to nothing gets a value again, then loses it again.
        /* 10 */
        Values(vec![value(CODES, "330803", "2026", "21")]),
        /* 11 */ Retract(10),
        // A correction and a new key in one commit; then a change in another county only.
        /* 12 */
        Values(vec![
            value(LICENSES, "330802", "2026-01", "30"),
            value(CODES, "330881", "2026", "7"),
        ]),
        /* 13 */ Values(vec![value(CODES, "330824", "2026", "8")]),
        /* 14 */ Values(vec![value(CODES, "330802", "2026", "12")]),
        // Within the bound, and outside the period asked: the instants between step 14 and
        // this one find versions closed after them, none of them in what they ask.
        /* 15 */
        bulk(OUTSIDE, 3),
    ]
}

/// The figures of `region` for 2026 as of `t` (now when None), without the instant itself.
async fn figures(
    c: &mut SubmissionClient,
    region: &str,
    t: Option<Timestamp>,
) -> pb::QueryAggregatesResponse {
    let mut r = c
        .query_aggregates(pb::QueryAggregatesRequest {
            region_code: region.into(),
            period: "2026".into(),
            as_of: t,
            approved_only: false,
        })
        .await
        .unwrap_or_else(|e| panic!("{region}: {e}"))
        .into_inner();
    r.as_of = None;
    r
}

fn before(t: &Timestamp) -> Timestamp {
    let micros = t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000 - 1;
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1_000).unwrap_or(0),
    }
}

async fn figures_as_of_an_instant_are_those_current_then(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let name = s.name();
    let mut c = s.client(Some(&platform())).await;
    let regions = ["330800", "330802"];
    let mut empty = Vec::new();
    for region in regions {
        empty.push(figures(&mut c, region, None).await);
    }
    // Per step: its first submission's name, its instant, and the figures right after it.
    let mut done: Vec<(String, Timestamp, Vec<pb::QueryAggregatesResponse>)> = Vec::new();
    for (i, step) in history().into_iter().enumerate() {
        let (first, at) = match step {
            Step::Values(values) if values.len() == 1 => {
                let r = c
                    .submit_value(pb::SubmitValueRequest {
                        value: values.into_iter().next(),
                        idempotency_key: String::new(),
                        validate_only: false,
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{name}: step {i}: {e}"))
                    .into_inner()
                    .submission
                    .unwrap_or_default();
                (r.name, r.accept_time.unwrap_or_default())
            }
            Step::Values(values) => {
                let r = c
                    .submit_batch(tokio_stream::iter([pb::SubmitBatchRequest {
                        idempotency_key: String::new(),
                        validate_only: false,
                        values,
                    }]))
                    .await
                    .unwrap_or_else(|e| panic!("{name}: step {i}: {e}"))
                    .into_inner();
                (
                    format!("submissions/{}", r.first_submission_id),
                    r.accept_time.unwrap_or_default(),
                )
            }
            Step::Retract(target) => {
                let r = c
                    .retract_submission(pb::RetractSubmissionRequest {
                        name: done[target].0.clone(),
                        reason: "wrong figure".into(),
                        idempotency_key: String::new(),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{name}: step {i}: {e}"))
                    .into_inner()
                    .retraction
                    .unwrap_or_default();
                (r.name, r.accept_time.unwrap_or_default())
            }
        };
        let mut now = Vec::new();
        for region in regions {
            now.push(figures(&mut c, region, None).await);
        }
        done.push((first, at, now));
    }
    // The history moved the figures it should have (so the comparisons below compare something).
    let city = |r: &pb::QueryAggregatesResponse, metric: &str| {
        r.metrics
            .iter()
            .find(|m| m.metric_key == metric)
            .map(|m| m.sources.len())
    };
    assert_eq!(city(&done[4].2[0], CODES), Some(3), "{name}: step 4");
    assert_eq!(city(&done[6].2[0], CODES), Some(2), "{name}: step 6");
    assert_ne!(done[11].2, done[12].2, "{name}: step 12 changed nothing");
    assert_eq!(
        done[12].2[1], done[13].2[1],
        "{name}: step 13 is another county's"
    );
    assert_eq!(
        done[14].2, done[15].2,
        "{name}: step 15 is outside what is asked"
    );
    // Each instant, and the microsecond before it, as of: what was current then.
    for (i, (_, at, then)) in done.iter().enumerate() {
        let earlier = if i == 0 { &empty } else { &done[i - 1].2 };
        for (r, region) in regions.iter().enumerate() {
            let at_step = figures(&mut c, region, Some(*at)).await;
            assert_eq!(at_step, then[r], "{name}: {region} as of step {i}");
            let just_before = figures(&mut c, region, Some(before(at))).await;
            assert_eq!(
                just_before, earlier[r],
                "{name}: {region} just before step {i}"
            );
        }
    }
    // Now, as an instant: the current figures.
    let last = done.last().map(|d| d.1).unwrap_or_default();
    let later = Timestamp {
        seconds: last.seconds + 1,
        nanos: last.nanos,
    };
    for (r, region) in regions.iter().enumerate() {
        let now = figures(&mut c, region, Some(later)).await;
        assert_eq!(now, done[done.len() - 1].2[r], "{name}: {region} as of now");
    }
}

both_databases!(figures_as_of_an_instant_are_those_current_then);
