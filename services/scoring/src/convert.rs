//! Engine results to their wire form, with the submissions behind every input. Computed numbers
//! are written with `Num::rounded` (scores to 2 fraction digits, ratios to 6: `Precision`),
//! inputs and thresholds exactly (`Num::to_plain`).

use std::collections::BTreeSet;
use std::time::Duration;

use tonic::Code;

use citycredit::aggregates::{Aggregates, PeriodMarker, SourceRef};
use citycredit::proto::v1 as pb;
use citycredit::status::{self as wire_status, Reason, Violation};
pub use citycredit::wire::{micros, timestamp};
use citycredit_core::catalog::IndicatorKind;
use citycredit_core::numbers::{Num, Precision};
use citycredit_core::rules::{self, Outcome, Status, TaskStatus, TermOutcome};
use citycredit_core::source::SourceError;

use crate::indicator_service::indicator_kind;

pub fn outcome(o: Outcome) -> pb::Outcome {
    match o {
        Outcome::Passed => pb::Outcome::Passed,
        Outcome::Vetoed => pb::Outcome::Vetoed,
        Outcome::Incomplete => pb::Outcome::Incomplete,
    }
}

pub fn status(s: Status) -> pb::IndicatorStatus {
    match s {
        Status::Pass => pb::IndicatorStatus::Pass,
        Status::Fail => pb::IndicatorStatus::Fail,
        Status::MissingData => pb::IndicatorStatus::MissingData,
        Status::InvalidData => pb::IndicatorStatus::InvalidData,
        Status::Scored => pb::IndicatorStatus::Scored,
        Status::Partial => pb::IndicatorStatus::Partial,
    }
}

pub fn term_outcome(o: TermOutcome) -> pb::TermOutcome {
    match o {
        TermOutcome::Met => pb::TermOutcome::Met,
        TermOutcome::Vacuous => pb::TermOutcome::Vacuous,
        TermOutcome::Unmet => pb::TermOutcome::Unmet,
        TermOutcome::Missing => pb::TermOutcome::Missing,
        TermOutcome::Scored => pb::TermOutcome::Scored,
        TermOutcome::Invalid => pb::TermOutcome::Invalid,
    }
}

/// A task check's result: met (or vacuous) passes, unmet fails, missing data is MISSING.
pub fn check_status(o: TermOutcome) -> pb::CheckStatus {
    match o {
        TermOutcome::Met | TermOutcome::Vacuous | TermOutcome::Scored => pb::CheckStatus::Pass,
        TermOutcome::Unmet => pb::CheckStatus::Fail,
        TermOutcome::Missing => pb::CheckStatus::Missing,
        TermOutcome::Invalid => pb::CheckStatus::InvalidData,
    }
}

pub fn task_status(s: TaskStatus) -> pb::TaskStatus {
    match s {
        TaskStatus::NotStarted => pb::TaskStatus::NotStarted,
        TaskStatus::InProgress => pb::TaskStatus::InProgress,
        TaskStatus::Done => pb::TaskStatus::Done,
    }
}

fn score(n: &Option<Num>) -> String {
    n.as_ref()
        .map(|v| v.rounded(Precision::Score))
        .unwrap_or_default()
}

fn ratio(n: &Option<Num>) -> String {
    n.as_ref()
        .map(|v| v.rounded(Precision::Ratio))
        .unwrap_or_default()
}

pub fn gap(g: &rules::Gap) -> pb::Gap {
    pb::Gap {
        condition: g.term.clone(),
        metric_key: g.metric.clone(),
        current: g.current.clone().unwrap_or_default(),
        required: g.required.clone(),
        change: g.change.clone(),
        description: g.description.clone(),
    }
}

fn step(s: &Option<rules::Step>) -> Option<pb::ScoreStep> {
    s.as_ref().map(|s| pb::ScoreStep {
        score: s.score.rounded(Precision::Score),
        changes: s.changes.iter().map(gap).collect(),
        description: s.description.clone(),
    })
}

/// The most parts an indicator lists as holding its approval back.
pub const MAX_UNAPPROVED_PARTS: usize = 20;

/// Whether an indicator's inputs are approved: true when it has at least one submission behind
/// its inputs and an APPROVED part covers every one. With it, the parts holding it back (each
/// department and region with a submission not covered, with `part_period`: the period whose
/// sign-off covers them), sorted, at most [`MAX_UNAPPROVED_PARTS`], and how many there are.
pub fn approval(
    r: &rules::IndicatorResult,
    aggregates: &Aggregates,
    part_period: &str,
) -> (bool, Vec<pb::SignOffPart>, u32) {
    let mut any = false;
    let mut holding: BTreeSet<(&str, &str)> = BTreeSet::new();
    let metrics: BTreeSet<&str> = r.inputs.iter().map(|i| i.metric.as_str()).collect();
    for s in metrics
        .into_iter()
        .filter_map(|m| aggregates.sources.get(m))
        .flat_map(|s| s.iter())
    {
        any = true;
        if s.approved_period.is_none() {
            holding.insert((&s.department, &s.region));
        }
    }
    let count = u32::try_from(holding.len()).unwrap_or(u32::MAX);
    let parts = holding
        .into_iter()
        .take(MAX_UNAPPROVED_PARTS)
        .map(|(department, region)| pb::SignOffPart {
            department_code: department.to_owned(),
            region_code: region.to_owned(),
            period: part_period.to_owned(),
        })
        .collect();
    (any && count == 0, parts, count)
}

/// One indicator's result, with the scorecard's own period as the sign-off period of the parts
/// holding its approval back.
pub fn indicator(r: &rules::IndicatorResult, aggregates: &Aggregates) -> pb::IndicatorResult {
    indicator_in(r, aggregates, &aggregates.period)
}

/// One indicator's result; `part_period` is the sign-off period that covers its inputs (see
/// [`approval`]).
pub fn indicator_in(
    r: &rules::IndicatorResult,
    aggregates: &Aggregates,
    part_period: &str,
) -> pb::IndicatorResult {
    let (inputs_approved, unapproved_parts, unapproved_part_count) =
        approval(r, aggregates, part_period);
    pb::IndicatorResult {
        inputs_approved,
        unapproved_parts,
        unapproved_part_count,
        code: r.code.clone(),
        kind: indicator_kind(r.kind) as i32,
        status: status(r.status) as i32,
        score: if r.kind == IndicatorKind::Guiding {
            score(&r.score)
        } else {
            String::new()
        },
        max_score: score(&r.max_score),
        terms: r
            .terms
            .iter()
            .map(|t| pb::TermResult {
                label: t.label.clone(),
                summary: t.summary.clone(),
                outcome: term_outcome(t.outcome) as i32,
                computed: ratio(&t.computed),
                threshold: t.threshold.as_ref().map(Num::to_plain).unwrap_or_default(),
                score: score(&t.score),
                max_score: score(&t.max_score),
                flags: t.flags.iter().map(|f| (*f).to_owned()).collect(),
                missing_metrics: t.missing_metrics.clone(),
            })
            .collect(),
        inputs: r
            .inputs
            .iter()
            .map(|i| pb::IndicatorInput {
                metric_key: i.metric.clone(),
                value: i.value.clone().unwrap_or_default(),
                domains: i.domains.clone(),
                sources: aggregates
                    .sources
                    .get(&i.metric)
                    .map(|s| s.iter().map(SourceRef::wire).collect())
                    .unwrap_or_default(),
                markers: aggregates
                    .markers
                    .get(&i.metric)
                    .map(|m| m.iter().map(PeriodMarker::wire).collect())
                    .unwrap_or_default(),
            })
            .collect(),
        gaps: r.gaps.iter().map(gap).collect(),
        next_step: step(&r.next_step),
        to_max: step(&r.to_max),
        flags: r.flags.iter().map(|f| (*f).to_owned()).collect(),
    }
}

/// A scorecard, with its own period as the sign-off period of the parts holding approvals
/// back.
pub fn scorecard(card: &rules::Scorecard, aggregates: &Aggregates) -> pb::Scorecard {
    scorecard_in(card, aggregates, &aggregates.period)
}

/// A scorecard; `part_period` is the sign-off period that covers its inputs (see [`approval`]).
/// The cycle fields are left for the caller.
pub fn scorecard_in(
    card: &rules::Scorecard,
    aggregates: &Aggregates,
    part_period: &str,
) -> pb::Scorecard {
    pb::Scorecard {
        region_code: aggregates.region.clone(),
        period: aggregates.period.clone(),
        outcome: outcome(card.outcome) as i32,
        failing_basic: card.failing_basic.clone(),
        incomplete_basic: card.incomplete_basic.clone(),
        guiding_total: card.guiding_total.rounded(Precision::Score),
        guiding_max: card.guiding_max.rounded(Precision::Score),
        indicators: card
            .indicators
            .iter()
            .map(|r| indicator_in(r, aggregates, part_period))
            .collect(),
        items: card
            .items
            .iter()
            .map(|i| pb::ItemResult {
                code: i.code.clone(),
                done: i.done,
                tasks: i
                    .tasks
                    .iter()
                    .map(|t| pb::TaskResult {
                        id: t.id.clone(),
                        status: task_status(t.status) as i32,
                        checks: t
                            .checks
                            .iter()
                            .map(|c| pb::CheckResult {
                                summary: c.summary.clone(),
                                outcome: term_outcome(c.outcome) as i32,
                                indicator_code: c
                                    .indicator
                                    .as_ref()
                                    .map(|(code, _)| code.clone())
                                    .unwrap_or_default(),
                                indicator_status: c
                                    .indicator
                                    .as_ref()
                                    .map_or(pb::IndicatorStatus::Unspecified, |(_, s)| status(*s))
                                    as i32,
                                computed: ratio(&c.computed),
                                status: check_status(c.outcome) as i32,
                                missing_metrics: c.missing_metrics.clone(),
                                check_type: c.check_type.to_owned(),
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
        violations: card
            .violations
            .iter()
            .map(|v| pb::CheckViolation {
                numerator: v.numerator.clone(),
                numerator_value: v.numerator_value.to_plain(),
                denominator: v.denominator.clone().unwrap_or_default(),
                bound: v.bound.to_plain(),
                affects: v.affects.clone(),
            })
            .collect(),
        catalog_version: card.catalog_version.clone(),
        as_of: Some(timestamp(aggregates.as_of_micros)),
        approved_only: aggregates.approved_only,
        ..Default::default()
    }
}

/// A signed, 2-digit difference: "+1.50", "-0.25", "0.00".
pub fn signed_score(n: &Num) -> String {
    let text = n.rounded(Precision::Score);
    if n.is_negative() || n.rounded(Precision::Score) == "0.00" {
        text
    } else {
        format!("+{text}")
    }
}

/// A figures source's error as the caller's answer: what ingestion itself answers for the same
/// problem (in process), or ingestion's own status as it came (over gRPC).
pub fn source_error(e: SourceError) -> tonic::Status {
    match e {
        SourceError::Invalid(problems) => wire_status::invalid_argument(
            &problems
                .into_iter()
                .map(|p| Violation::new(p.field, p.description))
                .collect::<Vec<_>>(),
        ),
        // As `IngestError::Unavailable` answers it in process: the same reason, text and delay.
        SourceError::Unavailable { context } => wire_status::retry_after_reason(
            Code::Unavailable,
            Reason::StorageUnavailable,
            format!("storage unavailable ({context}); retry"),
            Duration::from_millis(500),
            &[],
        ),
        SourceError::Internal { context, detail } => wire_status::internal(&context, &detail),
        SourceError::Remote(e) => match e.downcast::<tonic::Status>() {
            Ok(status) => *status,
            Err(e) => wire_status::internal("remote aggregates", &e),
        },
    }
}
