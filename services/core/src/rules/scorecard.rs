//! The engine's output: a scorecard with exact numbers. Rounding happens only when it is
//! written out (see `to_proto`).

use crate::catalog::IndicatorKind;
use crate::numbers::Num;
use crate::rules::TaskStatus;

/// The veto outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Vetoed,
    Incomplete,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "PASSED",
            Outcome::Vetoed => "VETOED",
            Outcome::Incomplete => "INCOMPLETE",
        }
    }
}

/// An indicator's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    MissingData,
    InvalidData,
    Scored,
    Partial,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::MissingData => "MISSING_DATA",
            Status::InvalidData => "INVALID_DATA",
            Status::Scored => "SCORED",
            Status::Partial => "PARTIAL",
        }
    }
}

/// How one condition, part or check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TermOutcome {
    Met,
    /// Met because the denominator is 0: nothing to do.
    Vacuous,
    Unmet,
    Missing,
    Scored,
    Invalid,
}

impl TermOutcome {
    pub fn is_met(self) -> bool {
        matches!(self, TermOutcome::Met | TermOutcome::Vacuous)
    }
}

/// Flags a term can raise.
pub const FLAG_UNDEFINED_RATIO: &str = "UNDEFINED_RATIO";

/// One condition or part evaluated.
#[derive(Clone, Debug, PartialEq)]
pub struct TermResult {
    pub label: String,
    pub summary: String,
    pub outcome: TermOutcome,
    /// The ratio or quantity compared or scored.
    pub computed: Option<Num>,
    pub threshold: Option<Num>,
    /// Guiding parts: points scored (0 when missing).
    pub score: Option<Num>,
    /// Guiding parts: the most points the part gives.
    pub max_score: Option<Num>,
    pub flags: Vec<&'static str>,
    pub missing_metrics: Vec<String>,
}

/// A metric figure an indicator used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    pub metric: String,
    /// None when not reported.
    pub value: Option<String>,
    /// DOMAIN_FLAG: the domains flagged.
    pub domains: Vec<String>,
}

/// The smallest change in one metric that meets a condition (or reaches a score).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The condition or part label.
    pub term: String,
    pub metric: String,
    /// None when not reported.
    pub current: Option<String>,
    pub required: String,
    /// "+1234", "-3", "report", "set true", "+2 domains", "correct".
    pub change: String,
    pub description: String,
}

/// What a guiding indicator needs to reach a score.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub score: Num,
    pub changes: Vec<Gap>,
    pub description: String,
}

/// One indicator's result.
#[derive(Clone, Debug, PartialEq)]
pub struct IndicatorResult {
    pub code: String,
    pub kind: IndicatorKind,
    pub status: Status,
    /// Guiding: the exact score (0 when invalid or missing).
    pub score: Option<Num>,
    pub max_score: Option<Num>,
    pub terms: Vec<TermResult>,
    pub inputs: Vec<Input>,
    pub gaps: Vec<Gap>,
    pub next_step: Option<Step>,
    pub to_max: Option<Step>,
    pub flags: Vec<&'static str>,
}

/// One check of an evaluation task. Its outcome is met (or vacuous), unmet, missing (a metric
/// it needs was not reported: not failed) or invalid (a cross-metric check on a metric it
/// reads is violated).
#[derive(Clone, Debug, PartialEq)]
pub struct CheckResult {
    pub summary: String,
    /// The check's type as the catalog file names it ("indicator_passes", "above", ...).
    pub check_type: &'static str,
    pub outcome: TermOutcome,
    pub indicator: Option<(String, Status)>,
    /// The ratio, quantity or score compared, if one was computed.
    pub computed: Option<Num>,
    /// Metrics the check needs that were not reported (through its indicator too).
    pub missing_metrics: Vec<String>,
}

/// One task of an evaluation item.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskResult {
    pub id: String,
    pub status: TaskStatus,
    pub checks: Vec<CheckResult>,
}

/// One evaluation item.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemResult {
    pub code: String,
    pub done: bool,
    pub tasks: Vec<TaskResult>,
}

/// A cross-metric check the figures violate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub numerator: String,
    pub numerator_value: Num,
    /// None for a fixed bound.
    pub denominator: Option<String>,
    pub bound: Num,
    /// Indicators and items made INVALID_DATA.
    pub affects: Vec<String>,
}

/// All indicators and items for one region and period.
#[derive(Clone, Debug, PartialEq)]
pub struct Scorecard {
    pub outcome: Outcome,
    pub failing_basic: Vec<String>,
    pub incomplete_basic: Vec<String>,
    /// The exact sum of guiding scores.
    pub guiding_total: Num,
    pub guiding_max: Num,
    pub indicators: Vec<IndicatorResult>,
    pub items: Vec<ItemResult>,
    pub violations: Vec<Violation>,
    pub catalog_version: String,
}

impl Scorecard {
    pub fn indicator(&self, code: &str) -> Option<&IndicatorResult> {
        self.indicators.iter().find(|i| i.code == code)
    }

    pub fn item(&self, code: &str) -> Option<&ItemResult> {
        self.items.iter().find(|i| i.code == code)
    }
}
