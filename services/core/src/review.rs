//! The review cycle, pure: evaluation cycles (a pinned rule version, the periods covered, the
//! review date, grace and on-time days, deadlines per department and subject), the sign-off
//! state machine per (department, region, period), and the write gate's decision: whether a
//! value for (department, region, period) may be written now, given the sign-off states, the
//! deadlines and the administrators' lock exceptions. The review service stores and serves the
//! cycles and transitions; ingestion's writer reads the gate's inputs inside its transaction and
//! asks [`Gate::decide`].

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::Deserialize;

use crate::catalog::{Catalog, TimeClass};
use crate::period::Period;

pub mod timeliness;

/// One day in microseconds.
pub const DAY_MICROS: i64 = 86_400_000_000;
/// Asia/Shanghai is UTC+8 all year.
const SHANGHAI_OFFSET_MICROS: i64 = 8 * 3_600_000_000;
/// At most this many periods per cycle.
pub const MAX_CYCLE_PERIODS: usize = 64;
/// At most this many deadlines per cycle.
pub const MAX_CYCLE_DEADLINES: usize = 5_000;
/// At most this many grace or on-time days.
pub const MAX_DAYS: u32 = 366;
/// At most this many characters in a title, milestone, comment or reason.
pub const MAX_TEXT_CHARS: usize = 500;

/// A cycle as a city file writes it (`[[cycle]]`, deadlines as `[[cycle.deadline]]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CycleFile {
    pub id: String,
    pub title: String,
    pub rule_version: String,
    pub periods: Vec<String>,
    /// YYYY-MM-DD.
    pub review_date: String,
    pub grace_days: u32,
    pub on_time_days: u32,
    #[serde(default, rename = "deadline")]
    pub deadlines: Vec<DeadlineFile>,
}

/// A deadline as a city file writes it: due at the end of `due` (YYYY-MM-DD, Asia/Shanghai).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadlineFile {
    pub department: String,
    #[serde(default)]
    pub subject: String,
    pub period: String,
    pub due: String,
    #[serde(default)]
    pub milestone: String,
}

/// An evaluation cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cycle {
    pub id: String,
    pub title: String,
    pub rule_version: String,
    pub periods: Vec<String>,
    pub review_date: String,
    pub grace_days: u32,
    pub on_time_days: u32,
    pub deadlines: Vec<Deadline>,
}

/// A department owes its figures for `period` (of `subject`: '' for all it reports, else one
/// metric key or task id) by `due_micros`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deadline {
    pub department: String,
    pub subject: String,
    pub period: String,
    pub due_micros: i64,
    pub milestone: String,
}

/// A problem with a cycle: the field (as the API names it) and what is wrong.
pub type CycleProblem = (String, String);

/// What a cycle is checked against.
pub struct CycleContext<'a> {
    /// The rule versions loaded (catalog versions).
    pub versions: &'a [String],
    pub catalog: &'a Catalog,
    pub department_known: &'a dyn Fn(&str) -> bool,
}

impl fmt::Debug for CycleContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CycleContext")
            .field("versions", &self.versions)
            .finish_non_exhaustive()
    }
}

/// Whether `id` is a code: 1-64 lowercase ASCII letters, digits and '-', starting with a letter
/// or digit.
pub fn is_code(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A date `YYYY-MM-DD` (years 1949..=2999) as days since the epoch, or None.
pub fn parse_date(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = text.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1949..=2999).contains(&y) || !(1..=12).contains(&m) || d < 1 {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    (d <= days_in).then(|| days_from_civil(y, m, d))
}

/// The last microsecond of a date in Asia/Shanghai: a deadline "on" a date.
pub fn end_of_day_micros(date: &str) -> Option<i64> {
    parse_date(date).map(|days| (days + 1) * DAY_MICROS - SHANGHAI_OFFSET_MICROS - 1)
}

impl CycleFile {
    /// The cycle, with due dates as instants; a date that is not one is a problem.
    pub fn into_cycle(self, problems: &mut Vec<CycleProblem>) -> Cycle {
        let mut deadlines = Vec::with_capacity(self.deadlines.len());
        for (i, d) in self.deadlines.into_iter().enumerate() {
            let due_micros = end_of_day_micros(&d.due).unwrap_or_else(|| {
                problems.push((
                    format!("deadlines[{i}].due"),
                    format!("`{}` is not a date YYYY-MM-DD", d.due),
                ));
                0
            });
            deadlines.push(Deadline {
                department: d.department,
                subject: d.subject,
                period: d.period,
                due_micros,
                milestone: d.milestone,
            });
        }
        Cycle {
            id: self.id,
            title: self.title,
            rule_version: self.rule_version,
            periods: self.periods,
            review_date: self.review_date,
            grace_days: self.grace_days,
            on_time_days: self.on_time_days,
            deadlines,
        }
    }
}

fn check_text(field: &str, text: &str, required: bool, out: &mut Vec<CycleProblem>) {
    if required && text.trim().is_empty() {
        out.push((field.to_owned(), "required".to_owned()));
    } else if text.chars().count() > MAX_TEXT_CHARS {
        out.push((
            field.to_owned(),
            format!("at most {MAX_TEXT_CHARS} characters"),
        ));
    } else if let Err(e) = crate::text::check(text, crate::text::TextKind::FreeText) {
        out.push((field.to_owned(), e.to_string()));
    }
}

/// Every problem with a cycle's fields (not its deadlines).
pub fn check_cycle_header(c: &Cycle, ctx: &CycleContext<'_>) -> Vec<CycleProblem> {
    let mut out = Vec::new();
    if !is_code(&c.id) {
        out.push((
            "id".to_owned(),
            "a code: 1-64 lowercase letters, digits and '-'".to_owned(),
        ));
    }
    check_text("title", &c.title, true, &mut out);
    if !ctx.versions.iter().any(|v| v == &c.rule_version) {
        out.push((
            "rule_version".to_owned(),
            format!(
                "`{}` is not a loaded rule version (loaded: {})",
                clip(&c.rule_version),
                ctx.versions.join(", ")
            ),
        ));
    }
    if c.periods.is_empty() {
        out.push(("periods".to_owned(), "at least one period".to_owned()));
    }
    if c.periods.len() > MAX_CYCLE_PERIODS {
        out.push((
            "periods".to_owned(),
            format!("at most {MAX_CYCLE_PERIODS} periods"),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, p) in c.periods.iter().enumerate() {
        if let Err(e) = p.parse::<Period>() {
            out.push((format!("periods[{i}]"), e.to_string()));
        } else if !seen.insert(p) {
            out.push((format!("periods[{i}]"), format!("`{p}` is named twice")));
        }
    }
    if parse_date(&c.review_date).is_none() {
        out.push((
            "review_date".to_owned(),
            format!("`{}` is not a date YYYY-MM-DD", clip(&c.review_date)),
        ));
    }
    if c.grace_days > MAX_DAYS {
        out.push(("grace_days".to_owned(), format!("at most {MAX_DAYS}")));
    }
    if c.on_time_days > MAX_DAYS {
        out.push(("on_time_days".to_owned(), format!("at most {MAX_DAYS}")));
    }
    out
}

/// Every problem with deadlines of cycle `c` (`field` names the list: `deadlines`).
pub fn check_deadlines(
    c: &Cycle,
    deadlines: &[Deadline],
    field: &str,
    ctx: &CycleContext<'_>,
) -> Vec<CycleProblem> {
    let mut out = Vec::new();
    if deadlines.len() > MAX_CYCLE_DEADLINES {
        out.push((
            field.to_owned(),
            format!("at most {MAX_CYCLE_DEADLINES} deadlines"),
        ));
        return out;
    }
    let mut seen = BTreeSet::new();
    for (i, d) in deadlines.iter().enumerate() {
        let at = |f: &str| format!("{field}[{i}].{f}");
        if !(ctx.department_known)(&d.department) {
            out.push((
                at("department_code"),
                format!("unknown department `{}`", clip(&d.department)),
            ));
        }
        if !d.subject.is_empty()
            && ctx.catalog.metric(&d.subject).is_none()
            && ctx.catalog.task(&d.subject).is_none()
        {
            out.push((
                at("subject"),
                format!(
                    "`{}` is neither a metric key nor a task id (leave it empty for everything)",
                    clip(&d.subject)
                ),
            ));
        }
        if !c.periods.iter().any(|p| p == &d.period) {
            out.push((
                at("period"),
                format!(
                    "`{}` is not one of the cycle's periods ({})",
                    clip(&d.period),
                    c.periods.join(", ")
                ),
            ));
        }
        if d.due_micros <= 0 {
            out.push((at("due_time"), "required".to_owned()));
        }
        check_text(&at("milestone"), &d.milestone, false, &mut out);
        if !seen.insert((&d.department, &d.subject, &d.period)) {
            out.push((
                at("department_code"),
                "a second deadline for the same department, subject and period".to_owned(),
            ));
        }
    }
    out
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The state of one department's part for one region and period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignOffState {
    /// Writable (also: never submitted).
    Open,
    /// Submitted for approval: read-only for the department.
    Submitted,
    /// Approved by the credit office: read-only for everyone but a lock exception.
    Approved,
    /// Returned by the credit office with a comment: writable again.
    Returned,
}

impl SignOffState {
    pub fn as_str(self) -> &'static str {
        match self {
            SignOffState::Open => "OPEN",
            SignOffState::Submitted => "SUBMITTED",
            SignOffState::Approved => "APPROVED",
            SignOffState::Returned => "RETURNED",
        }
    }

    pub fn parse(s: &str) -> Option<SignOffState> {
        Some(match s {
            "OPEN" => SignOffState::Open,
            "SUBMITTED" => SignOffState::Submitted,
            "APPROVED" => SignOffState::Approved,
            "RETURNED" => SignOffState::Returned,
            _ => return None,
        })
    }

    /// Whether values of a part in this state may be written.
    pub fn writable(self) -> bool {
        matches!(self, SignOffState::Open | SignOffState::Returned)
    }
}

/// A sign-off transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transition {
    /// The department submits its figures: OPEN or RETURNED -> SUBMITTED.
    Submit,
    /// The credit office approves: SUBMITTED -> APPROVED.
    Approve,
    /// The credit office returns them with a comment: SUBMITTED -> RETURNED.
    Return,
    /// Undone from above with a reason: APPROVED -> OPEN.
    Unapprove,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Submit => "SUBMIT",
            Transition::Approve => "APPROVE",
            Transition::Return => "RETURN",
            Transition::Unapprove => "UNAPPROVE",
        }
    }

    /// The state after the transition from `from`, or None when it does not apply.
    pub fn apply(self, from: SignOffState) -> Option<SignOffState> {
        use SignOffState as S;
        match (self, from) {
            (Transition::Submit, S::Open | S::Returned) => Some(S::Submitted),
            (Transition::Approve, S::Submitted) => Some(S::Approved),
            (Transition::Return, S::Submitted) => Some(S::Returned),
            (Transition::Unapprove, S::Approved) => Some(S::Open),
            _ => None,
        }
    }

    /// Whether the transition needs a comment (a return) or a reason (an unapproval).
    pub fn needs_comment(self) -> bool {
        matches!(self, Transition::Return | Transition::Unapprove)
    }
}

/// The regions below a region (given with their states for one department and period) that
/// keep it from being approved: those SUBMITTED and not yet approved. A region below with a
/// part that was never submitted (OPEN) or was returned (RETURNED) does not hold it back; one
/// APPROVED is what approval from below means. Sorted.
pub fn regions_not_approved(below: &[(String, SignOffState)]) -> Vec<String> {
    let mut out: Vec<String> = below
        .iter()
        .filter(|(_, s)| *s == SignOffState::Submitted)
        .map(|(r, _)| r.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether a value for `written` can change a figure of `locked` for a metric of `class`: the
/// same period, a period inside it (FLOW and LEVEL roll-ups) or, for LEVEL, one that carries
/// forward to it (at most 12 months before its end, `Period::reaches`).
pub fn write_reaches(written: &Period, locked: &Period, class: TimeClass) -> bool {
    match class {
        TimeClass::Flow => written.is_inside(locked),
        TimeClass::Level => written.reaches(locked),
    }
}

/// A sign-off part that refuses writes (SUBMITTED or APPROVED).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    pub department: String,
    pub region: String,
    pub period: Period,
    pub state: SignOffState,
}

/// A deadline as the gate reads it, with its cycle's grace days.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateDeadline {
    pub cycle_id: String,
    pub department: String,
    pub subject: String,
    pub period: Period,
    pub due_micros: i64,
    pub grace_days: i64,
}

impl GateDeadline {
    /// The instant after which writes are closed: the deadline plus the grace days.
    pub fn closes_micros(&self) -> i64 {
        self.due_micros
            .saturating_add(self.grace_days.saturating_mul(DAY_MICROS))
    }
}

/// An unused, unexpired lock exception.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exception {
    pub id: String,
    pub department: String,
    pub region: String,
    pub period: Period,
    pub expire_micros: i64,
}

/// One value to write, as the gate sees it.
#[derive(Clone, Copy, Debug)]
pub struct WriteTarget<'a> {
    pub department: &'a str,
    pub region: &'a str,
    pub period: Period,
    pub metric: &'a str,
    pub task_id: &'a str,
    pub class: TimeClass,
}

/// Why a write is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The part for `locked` is APPROVED.
    Approved { locked: Period },
    /// The part for `locked` is SUBMITTED, awaiting approval.
    AwaitingApproval { locked: Period },
    /// The deadline for `locked` (cycle `cycle_id`) plus its grace days has passed.
    Closed {
        locked: Period,
        cycle_id: String,
        closes_micros: i64,
    },
}

/// The gate's answer for one value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing stands in the way.
    Open,
    /// Refused, but the lock exception `id` lets it through (and is used up by it).
    Excepted {
        id: String,
        refusal: Refusal,
    },
    Refused(Refusal),
}

/// Everything the gate knows for the departments of one commit group.
#[derive(Clone, Debug, Default)]
pub struct Gate {
    locks: HashMap<(String, String), Vec<Lock>>,
    deadlines: HashMap<String, Vec<GateDeadline>>,
    exceptions: HashMap<(String, String), Vec<Exception>>,
}

impl Gate {
    pub fn new(locks: Vec<Lock>, deadlines: Vec<GateDeadline>, exceptions: Vec<Exception>) -> Gate {
        let mut gate = Gate::default();
        for l in locks {
            gate.locks
                .entry((l.department.clone(), l.region.clone()))
                .or_default()
                .push(l);
        }
        for d in deadlines {
            gate.deadlines
                .entry(d.department.clone())
                .or_default()
                .push(d);
        }
        for x in exceptions {
            gate.exceptions
                .entry((x.department.clone(), x.region.clone()))
                .or_default()
                .push(x);
        }
        gate
    }

    /// True when the gate holds nothing (every write passes).
    pub fn is_empty(&self) -> bool {
        self.locks.is_empty() && self.deadlines.is_empty()
    }

    /// The decision for one value at `now`: an APPROVED part it reaches refuses it first, then
    /// a SUBMITTED one, then a closed deadline; a lock exception for exactly its department,
    /// region and period lets any of them through.
    pub fn decide(&self, w: &WriteTarget<'_>, now: i64) -> Verdict {
        let Some(refusal) = self.refusal(w, now) else {
            return Verdict::Open;
        };
        let key = (w.department.to_owned(), w.region.to_owned());
        match self.exceptions.get(&key).and_then(|xs| {
            xs.iter()
                .filter(|x| x.period == w.period && x.expire_micros > now)
                .min_by_key(|x| x.expire_micros)
        }) {
            Some(x) => Verdict::Excepted {
                id: x.id.clone(),
                refusal,
            },
            None => Verdict::Refused(refusal),
        }
    }

    fn refusal(&self, w: &WriteTarget<'_>, now: i64) -> Option<Refusal> {
        let key = (w.department.to_owned(), w.region.to_owned());
        let locks = self.locks.get(&key).map(Vec::as_slice).unwrap_or_default();
        let reaching = |s: SignOffState| {
            locks
                .iter()
                .filter(|l| l.state == s && write_reaches(&w.period, &l.period, w.class))
                .map(|l| l.period)
                .min()
        };
        if let Some(locked) = reaching(SignOffState::Approved) {
            return Some(Refusal::Approved { locked });
        }
        if let Some(locked) = reaching(SignOffState::Submitted) {
            return Some(Refusal::AwaitingApproval { locked });
        }
        let deadlines = self
            .deadlines
            .get(w.department)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // Per (cycle, period): the deadline of the value's metric or task wins over subject ''.
        let mut applying: HashMap<(&str, Period), &GateDeadline> = HashMap::new();
        for d in deadlines {
            if !write_reaches(&w.period, &d.period, w.class) {
                continue;
            }
            let specific =
                d.subject == w.metric || (!w.task_id.is_empty() && d.subject == w.task_id);
            if !specific && !d.subject.is_empty() {
                continue;
            }
            let slot = applying.entry((d.cycle_id.as_str(), d.period)).or_insert(d);
            if specific && slot.subject.is_empty() {
                *slot = d;
            }
        }
        applying
            .into_values()
            .filter(|d| now > d.closes_micros())
            .min_by_key(|d| (d.period, d.cycle_id.clone()))
            .map(|d| Refusal::Closed {
                locked: d.period,
                cycle_id: d.cycle_id.clone(),
                closes_micros: d.closes_micros(),
            })
    }
}

#[cfg(test)]
mod tests;
