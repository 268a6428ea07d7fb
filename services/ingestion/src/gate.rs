//! The write gate of the review cycle (README "The review cycle"): a value for (department,
//! region, period) is refused while a part it reaches is SUBMITTED (`AWAITING_APPROVAL`) or
//! APPROVED (`PERIOD_APPROVED`), or once the deadline that applies plus the cycle's grace days
//! has passed (`PERIOD_CLOSED`); an administrator's lock exception for exactly that (department,
//! region, period) lets one write through before it expires. The decision is pure
//! (`citycredit_core::review::Gate`); this module reads its inputs and marks exceptions used.
//!
//! Aggregation asks the same question the other way round ([`Approvals`]): which APPROVED part
//! covers a stored value, by the same reach ([`write_reaches`]) that makes an approved part
//! refuse the write: a value is approved exactly when its write would be refused as
//! `PERIOD_APPROVED`.
//!
//! The writer reads the gate inside its transaction, with one query per attempt for every
//! department of the group ([`load`]), after `chain_head` is locked: the review service's
//! transitions lock the same row (SQLite: both hold the write lock), so no write commits between
//! a submission or approval and the check that would have refused it.

use std::collections::HashMap;

use citycredit_core::catalog::{Catalog, TimeClass};
use citycredit_core::period::Period;
use citycredit_core::review::{
    Exception, Gate, GateDeadline, Lock, Refusal, SignOffState, Verdict, WriteTarget, write_reaches,
};

use crate::error::{IngestError, LockRefusal};
use crate::store::WriteConn;
use crate::validation::NewValue;

/// Metric key -> time class, for what a value reaches.
#[derive(Clone, Debug, Default)]
pub struct TimeClasses(HashMap<String, TimeClass>);

impl TimeClasses {
    pub fn of(catalog: &Catalog) -> TimeClasses {
        TimeClasses(
            catalog
                .metrics
                .iter()
                .map(|m| (m.key.clone(), m.time))
                .collect(),
        )
    }

    /// The class of `metric`; LEVEL (the wider reach) for a key the catalog does not know.
    pub fn class(&self, metric: &str) -> TimeClass {
        self.0.get(metric).copied().unwrap_or(TimeClass::Level)
    }
}

/// One row of the gate's query: a sign-off lock (`S`), a deadline (`D`) or an exception (`X`).
#[derive(sqlx::FromRow)]
struct GateRow {
    kind: String,
    department_code: String,
    region: String,
    period: String,
    label: String,
    subject: String,
    n1: i64,
    n2: i64,
}

macro_rules! gate_query {
    ($departments:literal) => {
        concat!(
            "SELECT 'S' AS kind, department_code, region, period, state AS label, '' AS subject, \
             CAST(0 AS BIGINT) AS n1, CAST(0 AS BIGINT) AS n2 FROM review_signoffs \
             WHERE state IN ('SUBMITTED', 'APPROVED') AND department_code ",
            $departments,
            " UNION ALL SELECT 'D', d.department_code, '', d.period, d.cycle_id, d.subject, \
             d.due_micros, CAST(c.grace_days AS BIGINT) FROM review_deadlines d \
             JOIN review_cycles c ON c.id = d.cycle_id WHERE d.department_code ",
            $departments,
            " UNION ALL SELECT 'X', department_code, region, period, id, '', expire_micros, \
             CAST(0 AS BIGINT) FROM review_lock_exceptions \
             WHERE used_micros IS NULL AND expire_micros > $2 AND department_code ",
            $departments
        )
    };
}

/// The gate for `departments` at `now`, in one query.
pub async fn load(
    conn: &mut WriteConn<'_>,
    departments: &[String],
    now: i64,
) -> Result<Gate, sqlx::Error> {
    if departments.is_empty() {
        return Ok(Gate::default());
    }
    let rows: Vec<GateRow> = match conn {
        WriteConn::Sqlite(c) => {
            sqlx::query_as(gate_query!("IN (SELECT value FROM json_each($1))"))
                .bind(
                    serde_json::to_string(departments)
                        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
                )
                .bind(now)
                .fetch_all(&mut **c)
                .await?
        }
        WriteConn::Postgres(c) => {
            sqlx::query_as(gate_query!("= ANY($1::text[])"))
                .bind(departments)
                .bind(now)
                .fetch_all(&mut **c)
                .await?
        }
    };
    let (mut locks, mut deadlines, mut exceptions) = (Vec::new(), Vec::new(), Vec::new());
    for r in rows {
        // Periods are validated where they are written; one that is not is skipped.
        let Ok(period) = r.period.parse::<Period>() else {
            continue;
        };
        match r.kind.as_str() {
            "S" => {
                if let Some(state) = SignOffState::parse(&r.label) {
                    locks.push(Lock {
                        department: r.department_code,
                        region: r.region,
                        period,
                        state,
                    });
                }
            }
            "D" => deadlines.push(GateDeadline {
                cycle_id: r.label,
                department: r.department_code,
                subject: r.subject,
                period,
                due_micros: r.n1,
                grace_days: r.n2,
            }),
            _ => exceptions.push(Exception {
                id: r.label,
                department: r.department_code,
                region: r.region,
                period,
                expire_micros: r.n1,
            }),
        }
    }
    Ok(Gate::new(locks, deadlines, exceptions))
}

/// The APPROVED parts of some departments and regions, for aggregation: which part covers a
/// value. By department, then region (looked up by `&str`, with no key built per value).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Approvals(HashMap<String, HashMap<String, Vec<Period>>>);

impl Approvals {
    /// From (department, region, period) rows of APPROVED sign-offs; unparsable periods are
    /// skipped (periods are validated where they are written).
    pub fn new(parts: impl IntoIterator<Item = (String, String, String)>) -> Approvals {
        let mut out: HashMap<String, HashMap<String, Vec<Period>>> = HashMap::new();
        for (department, region, period) in parts {
            if let Ok(p) = period.parse::<Period>() {
                out.entry(department)
                    .or_default()
                    .entry(region)
                    .or_default()
                    .push(p);
            }
        }
        for periods in out.values_mut().flat_map(HashMap::values_mut) {
            periods.sort();
            periods.dedup();
        }
        Approvals(out)
    }

    /// The smallest APPROVED period of (department, region) that covers a value reported for
    /// `period` of a metric of `class` (the gate's reach: the same period, one containing it,
    /// or for LEVEL one it carries forward to). None without a department.
    pub fn covering(
        &self,
        department: &str,
        region: &str,
        period: &Period,
        class: TimeClass,
    ) -> Option<Period> {
        if department.is_empty() {
            return None;
        }
        self.0
            .get(department)?
            .get(region)?
            .iter()
            .filter(|locked| write_reaches(period, locked, class))
            .min_by_key(|p| (p.end_month_index() - p.start_month_index(), **p))
            .copied()
    }
}

/// The APPROVED parts at `regions` now that can cover a value reaching `period`: a value
/// reaching it ends at most 12 months before its end, and a part covers a value inside it or
/// one it carries forward to, so the part's period lies in `period`'s year or the one before or
/// after.
pub async fn approvals(
    db: &citycredit_store::Db,
    regions: &[String],
    period: &Period,
) -> Result<Approvals, sqlx::Error> {
    let year = period.year();
    let years: Vec<u16> = [year.checked_sub(1), Some(year), year.checked_add(1)]
        .into_iter()
        .flatten()
        .collect();
    Ok(Approvals::new(
        crate::store::approved_parts(db, regions, &years).await?,
    ))
}

/// What one value is, for the gate.
pub struct Target<'a> {
    pub department: &'a str,
    pub region: &'a str,
    pub period: &'a str,
    pub metric: &'a str,
    pub task_id: &'a str,
}

impl<'a> Target<'a> {
    pub fn of_value(v: &'a NewValue) -> Target<'a> {
        Target {
            department: &v.department,
            region: &v.region,
            period: &v.period,
            metric: &v.metric,
            task_id: &v.task_id,
        }
    }
}

/// The gate's answer for a job's values: Ok with the exceptions it uses (their ids), or the
/// refusal of its first refused value. `used` holds the exceptions earlier jobs of the same
/// attempt used: one exception lets one write through.
pub fn check<'a>(
    gate: &Gate,
    classes: &TimeClasses,
    targets: impl IntoIterator<Item = Target<'a>>,
    used: &[String],
    now: i64,
) -> Result<Vec<String>, IngestError> {
    let mut mine: Vec<String> = Vec::new();
    for t in targets {
        let Ok(period) = t.period.parse::<Period>() else {
            continue;
        };
        let w = WriteTarget {
            department: t.department,
            region: t.region,
            period,
            metric: t.metric,
            task_id: t.task_id,
            class: classes.class(t.metric),
        };
        let refusal: Refusal = match gate.decide(&w, now) {
            Verdict::Open => continue,
            Verdict::Excepted { id, refusal } => {
                if !used.contains(&id) {
                    if !mine.contains(&id) {
                        mine.push(id);
                    }
                    continue;
                }
                refusal
            }
            Verdict::Refused(r) => r,
        };
        return Err(IngestError::Locked(Box::new(LockRefusal {
            department: t.department.to_owned(),
            region: t.region.to_owned(),
            period: t.period.to_owned(),
            refusal,
        })));
    }
    Ok(mine)
}

/// Marks exceptions used by the write whose first submission is `first_id`.
pub async fn mark_used(
    conn: &mut WriteConn<'_>,
    ids: &[String],
    first_id: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    for id in ids {
        crate::store::on_conn_execute(
            conn,
            "UPDATE review_lock_exceptions SET used_micros = $1, used_by = $2 \
             WHERE id = $3 AND used_micros IS NULL",
            now,
            first_id,
            id,
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Period {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    fn approvals() -> Approvals {
        Approvals::new([
            ("samr".into(), "330800".into(), "2026".into()),
            ("samr".into(), "330800".into(), "2026-Q1".into()),
            ("tax".into(), "330802".into(), "2026-03".into()),
        ])
    }

    #[test]
    fn an_approved_part_covers_what_it_would_refuse_to_write() {
        let a = approvals();
        // Its own period, and the periods inside it: the smallest approved one is named.
        for class in [TimeClass::Flow, TimeClass::Level] {
            assert_eq!(
                a.covering("samr", "330800", &p("2026"), class),
                Some(p("2026"))
            );
            assert_eq!(
                a.covering("samr", "330800", &p("2026-02"), class),
                Some(p("2026-Q1"))
            );
            assert_eq!(
                a.covering("samr", "330800", &p("2026-08"), class),
                Some(p("2026"))
            );
            assert_eq!(
                a.covering("tax", "330802", &p("2026-03"), class),
                Some(p("2026-03"))
            );
        }
        // A LEVEL value carried forward into an approved period is covered; a FLOW one is not.
        assert_eq!(
            a.covering("samr", "330800", &p("2025-12"), TimeClass::Level),
            Some(p("2026-Q1"))
        );
        assert_eq!(
            a.covering("samr", "330800", &p("2025-12"), TimeClass::Flow),
            None
        );
    }

    #[test]
    fn other_parts_and_values_without_a_department_are_not_covered() {
        let a = approvals();
        let level = TimeClass::Level;
        assert_eq!(a.covering("samr", "330802", &p("2026"), level), None);
        assert_eq!(a.covering("tax", "330800", &p("2026"), level), None);
        // A quarter is not inside its last month; its LEVEL value carries forward to it.
        assert_eq!(
            a.covering("tax", "330802", &p("2026-Q1"), TimeClass::Flow),
            None
        );
        assert_eq!(
            a.covering("tax", "330802", &p("2026-Q1"), level),
            Some(p("2026-03"))
        );
        assert_eq!(a.covering("", "330800", &p("2026"), level), None);
        assert_eq!(
            a.covering("civil-affairs", "330800", &p("2026"), level),
            None
        );
    }
}
