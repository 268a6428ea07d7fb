//! Whether a department reported a metric for a period: one reading of ingestion's tables that
//! the notifier (who still owes what, for its reminders) and the review service (who reported
//! on time) share, so both answer the same question the same way.
//!
//! A department reported (metric, region) for a period P when it has a value for it for P or a
//! period inside it (`citycredit_core::review::timeliness::reporting_periods`); a value carried
//! forward from an earlier period does not count. Callers pass those periods.

use sqlx::{Any, QueryBuilder, Row};

use crate::{Db, numbered};

/// The (metric, region) pairs `department` has a current value for (ingestion's
/// `value_versions`, `valid_to` NULL), in any of `periods`.
pub async fn current(
    db: &Db,
    department: &str,
    periods: &[String],
) -> Result<Vec<(String, String)>, sqlx::Error> {
    if periods.is_empty() {
        return Ok(Vec::new());
    }
    let mut qb: QueryBuilder<Any> = QueryBuilder::new(
        "SELECT DISTINCT metric, region FROM value_versions WHERE valid_to IS NULL AND department = ",
    );
    qb.push_bind(department.to_owned()).push(" AND period IN (");
    let mut list = qb.separated(", ");
    for p in periods {
        list.push_bind(p.clone());
    }
    qb.push(")");
    let rows = numbered(&mut qb)?.fetch_all(&db.pool).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<String, _>("metric"), r.get::<String, _>("region")))
        .collect())
}

/// The earliest accept time of a department's values for (metric, region, period).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirstAccept {
    pub department: String,
    pub metric: String,
    pub region: String,
    pub period: String,
    pub accept_micros: i64,
}

/// For each (department, metric, region, period) with `period` in `periods` (and `department`
/// when given), the earliest accept time among the department's value submissions that were
/// not retracted (history: a later correction does not move it; a key whose values were all
/// retracted has none).
pub async fn first_accepts(
    db: &Db,
    department: Option<&str>,
    periods: &[String],
) -> Result<Vec<FirstAccept>, sqlx::Error> {
    if periods.is_empty() {
        return Ok(Vec::new());
    }
    let mut qb: QueryBuilder<Any> = QueryBuilder::new(
        "SELECT department, metric, region, period, \
         CAST(MIN(accept_micros) AS BIGINT) AS first_micros FROM submissions s \
         WHERE kind = 'value' \
         AND NOT EXISTS (SELECT 1 FROM retractions r WHERE r.target = s.id) AND period IN (",
    );
    let mut list = qb.separated(", ");
    for p in periods {
        list.push_bind(p.clone());
    }
    qb.push(")");
    if let Some(d) = department {
        qb.push(" AND department = ").push_bind(d.to_owned());
    }
    qb.push(" GROUP BY department, metric, region, period");
    let rows = numbered(&mut qb)?.fetch_all(&db.pool).await?;
    rows.iter()
        .map(|r| {
            Ok(FirstAccept {
                department: r.try_get("department")?,
                metric: r.try_get("metric")?,
                region: r.try_get("region")?,
                period: r.try_get("period")?,
                accept_micros: r.try_get("first_micros")?,
            })
        })
        .collect()
}
