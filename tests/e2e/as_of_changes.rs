//! Figures as of an instant (QueryAggregates `as_of`), through the real server on SQLite and
//! PostgreSQL: the answer for an instant is the answer "now" gave at that instant. A history of
//! commits (new keys, corrections, two values of one key in one batch, undos, a key retracted
//! to nothing and back, changes outside the region or period asked) is written through gRPC;
//! after each commit the current figures of the city and of one county are recorded; then every
//! commit's instant, and the microsecond before it, is asked as of and compared with what was
//! recorded.
//!
//! The service answers an instant from the current values corrected by what was accepted after
//! it, while that is no more than its bound (the current values behind the figures, at least
//! 256 submissions); further back it reads every value as of the instant. The history's bulk
//! commit of [`BULK`] values outside the period asked puts every instant before it past the
//! bound, so both ways are compared with the record. A later commit of [`WALKED`] values puts
//! the instants before it past the walk's first round trip, within the bound.

use prost_types::Timestamp;

use citycredit::proto::v1 as pb;
use citycredit_tests::ingestion::*;
use citycredit_tests::{Backend, both_databases};

/// Values of the bulk commit, past the walk's bound of 256 submissions.
const BULK: usize = 300;
/// Values of a later commit outside the period asked: past the walk's first round trip (64
/// submissions), within its bound.
const WALKED: usize = 100;
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
        // Outside the period asked (2023 reaches no 2026 figure), past the walk's bound.
        /* 8 */
        Values(
            (0..BULK)
                .map(|i| value(CODES, "330802", "2023", &i.to_string()))
                .collect(),
        ),
        // The key retracted to nothing gets a value again, then loses it again.
        /* 9 */
        Values(vec![value(CODES, "330803", "2026", "21")]),
        /* 10 */ Retract(9),
        // A correction and a new key in one commit; then a change in another county only.
        /* 11 */
        Values(vec![
            value(LICENSES, "330802", "2026-01", "30"),
            value(CODES, "330881", "2026", "7"),
        ]),
        /* 12 */ Values(vec![value(CODES, "330824", "2026", "8")]),
        /* 13 */ Values(vec![value(CODES, "330802", "2026", "12")]),
        // Past the walk's first round trip (64 submissions) but within its bound: the instants
        // before it walk back over two round trips to find the change above, and are still
        // answered from the current values.
        /* 14 */
        Values(
            (0..WALKED)
                .map(|i| value(LICENSES, "330881", "2023-03", &i.to_string()))
                .collect(),
        ),
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
    assert_ne!(done[10].2, done[11].2, "{name}: step 11 changed nothing");
    assert_eq!(
        done[11].2[1], done[12].2[1],
        "{name}: step 12 is another county's"
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
