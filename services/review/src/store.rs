//! The review tables and their SQL, written once for sqlx `Any` (`$n` placeholders, i64 and
//! text columns): `review_cycles` and `review_deadlines` (migration 0300), `review_signoffs`,
//! `review_events`, `review_cycle_events` and `review_lock_exceptions` (0310).
//!
//! A transition is one transaction: on SQLite it begins IMMEDIATE (the write lock, as the
//! ingestion writer's); on PostgreSQL it first locks `chain_head`'s row, as every group commit
//! does, so a transition and a group commit never interleave: a write either commits before a
//! submission (and the approver sees it) or reads the new state inside its own transaction and
//! is refused. The state change is a compare-and-set on (state, revision).

use std::collections::{BTreeMap, HashSet};

use sqlx::{Any, AnyConnection, Connection, QueryBuilder, Transaction};

use citycredit_core::review::{Cycle, Deadline, SignOffState, Transition};
use citycredit_store::{Backend, Db, StoreError, numbered};

use crate::error::ReviewError;

/// store_meta: set once the city file's cycles were seeded.
const CYCLES_SEEDED: &str = "review.cycles_seeded";

/// A stored cycle with who created it and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCycle {
    pub cycle: Cycle,
    pub created_by: String,
    pub create_micros: i64,
}

#[derive(sqlx::FromRow)]
struct CycleRow {
    id: String,
    title: String,
    rule_version: String,
    periods: String,
    review_date: String,
    grace_days: i64,
    on_time_days: i64,
    created_by: String,
    create_micros: i64,
}

#[derive(sqlx::FromRow)]
struct DeadlineRow {
    cycle_id: String,
    department_code: String,
    subject: String,
    period: String,
    due_micros: i64,
    milestone: String,
}

/// The columns of `review_cycles`, as a literal for `concat!` (queries stay `&'static str`).
macro_rules! cycle_columns {
    () => {
        "id, title, rule_version, periods, review_date, \
         CAST(grace_days AS BIGINT) AS grace_days, CAST(on_time_days AS BIGINT) AS on_time_days, \
         created_by, create_micros"
    };
}

/// One department's part for a region and period.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Part {
    pub department: String,
    pub region: String,
    pub period: String,
}

/// A part's sign-off (OPEN at revision 0 when it never left it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignOff {
    pub part: Part,
    pub state: SignOffState,
    pub revision: i64,
    pub update_micros: Option<i64>,
}

/// One transition as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct EventRow {
    pub department_code: String,
    pub region: String,
    pub period: String,
    pub revision: i64,
    pub transition: String,
    pub from_state: String,
    pub to_state: String,
    pub principal: String,
    pub event_micros: i64,
    pub comment: String,
}

/// A lock exception as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockExceptionRow {
    pub id: String,
    pub part: Part,
    pub reason: String,
    pub granted_by: String,
    pub grant_micros: i64,
    pub expire_micros: i64,
}

/// Begins a write transaction (see the module comment).
async fn write_tx<'c>(
    db: &Db,
    conn: &'c mut AnyConnection,
) -> Result<Transaction<'c, Any>, sqlx::Error> {
    match db.backend {
        Backend::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await,
        Backend::Postgres => conn.begin().await,
    }
}

fn cycle_of(row: CycleRow, deadlines: Vec<Deadline>) -> StoredCycle {
    StoredCycle {
        cycle: Cycle {
            id: row.id,
            title: row.title,
            rule_version: row.rule_version,
            periods: row
                .periods
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            review_date: row.review_date,
            grace_days: u32::try_from(row.grace_days).unwrap_or(0),
            on_time_days: u32::try_from(row.on_time_days).unwrap_or(0),
            deadlines,
        },
        created_by: row.created_by,
        create_micros: row.create_micros,
    }
}

fn days(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

async fn insert_deadline(
    tx: &mut AnyConnection,
    cycle_id: &str,
    d: &Deadline,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM review_deadlines \
         WHERE cycle_id = $1 AND department_code = $2 AND subject = $3 AND period = $4",
    )
    .bind(cycle_id)
    .bind(&d.department)
    .bind(&d.subject)
    .bind(&d.period)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO review_deadlines \
         (cycle_id, department_code, subject, period, due_micros, milestone) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(cycle_id)
    .bind(&d.department)
    .bind(&d.subject)
    .bind(&d.period)
    .bind(d.due_micros)
    .bind(&d.milestone)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn deadlines_json(deadlines: &[Deadline]) -> String {
    let list: Vec<serde_json::Value> = deadlines
        .iter()
        .map(|d| {
            serde_json::json!({
                "department": d.department,
                "subject": d.subject,
                "period": d.period,
                "due_micros": d.due_micros,
                "milestone": d.milestone,
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

async fn append_cycle_event(
    tx: &mut AnyConnection,
    cycle_id: &str,
    kind: &str,
    principal: &str,
    now: i64,
    detail: &str,
) -> Result<(), sqlx::Error> {
    let seq: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) FROM review_cycle_events WHERE cycle_id = $1",
    )
    .bind(cycle_id)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO review_cycle_events (cycle_id, seq, kind, principal, event_micros, detail) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(cycle_id)
    .bind(seq + 1)
    .bind(kind)
    .bind(principal)
    .bind(now)
    .bind(detail)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_cycle_in(
    tx: &mut AnyConnection,
    c: &Cycle,
    by: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO review_cycles (id, title, rule_version, periods, review_date, grace_days, \
         on_time_days, created_by, create_micros) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&c.id)
    .bind(&c.title)
    .bind(&c.rule_version)
    .bind(c.periods.join("\n"))
    .bind(&c.review_date)
    .bind(days(c.grace_days))
    .bind(days(c.on_time_days))
    .bind(by)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    for d in &c.deadlines {
        insert_deadline(tx, &c.id, d).await?;
    }
    append_cycle_event(tx, &c.id, "CREATE", by, now, &deadlines_json(&c.deadlines)).await
}

/// Seeds the city file's cycles once (a later start, or a cycle deleted from the file, changes
/// nothing stored). Returns whether it seeded.
pub async fn seed_cycles(db: &Db, cycles: &[Cycle], now: i64) -> Result<bool, StoreError> {
    let mut conn = db.pool.acquire().await?;
    let mut tx = write_tx(db, &mut conn).await?;
    let seeded: Option<String> = sqlx::query_scalar("SELECT value FROM store_meta WHERE key = $1")
        .bind(CYCLES_SEEDED)
        .fetch_optional(&mut *tx)
        .await?;
    if seeded.is_some() {
        return Ok(false);
    }
    for c in cycles {
        let exists: Option<String> =
            sqlx::query_scalar("SELECT id FROM review_cycles WHERE id = $1")
                .bind(&c.id)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            insert_cycle_in(&mut tx, c, "seed", now).await?;
        }
    }
    sqlx::query("INSERT INTO store_meta (key, value) VALUES ($1, $2)")
        .bind(CYCLES_SEEDED)
        .bind(now.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// Stores a new cycle; ALREADY_EXISTS when its id is taken.
pub async fn create_cycle(db: &Db, c: &Cycle, by: &str, now: i64) -> Result<(), ReviewError> {
    let mut conn = db.pool.acquire().await.map_err(StoreError::from)?;
    let mut tx = write_tx(db, &mut conn).await?;
    let exists: Option<String> = sqlx::query_scalar("SELECT id FROM review_cycles WHERE id = $1")
        .bind(&c.id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_some() {
        return Err(ReviewError::AlreadyExists(format!("cycles/{}", c.id)));
    }
    insert_cycle_in(&mut tx, c, by, now).await?;
    tx.commit().await?;
    Ok(())
}

async fn deadlines_of(
    db: &Db,
    ids: &[String],
) -> Result<BTreeMap<String, Vec<Deadline>>, StoreError> {
    let mut out: BTreeMap<String, Vec<Deadline>> = BTreeMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let mut qb: QueryBuilder<Any> = QueryBuilder::new(
        "SELECT cycle_id, department_code, subject, period, due_micros, milestone \
         FROM review_deadlines WHERE cycle_id IN (",
    );
    let mut sep = qb.separated(", ");
    for id in ids {
        sep.push_bind(id.clone());
    }
    qb.push(") ORDER BY cycle_id, period, department_code, subject");
    let rows = numbered(&mut qb)?
        .fetch_all(&db.pool)
        .await?
        .iter()
        .map(<DeadlineRow as sqlx::FromRow<'_, sqlx::any::AnyRow>>::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    for r in rows {
        out.entry(r.cycle_id).or_default().push(Deadline {
            department: r.department_code,
            subject: r.subject,
            period: r.period,
            due_micros: r.due_micros,
            milestone: r.milestone,
        });
    }
    Ok(out)
}

/// One cycle with its deadlines.
pub async fn get_cycle(db: &Db, id: &str) -> Result<Option<StoredCycle>, StoreError> {
    let row: Option<CycleRow> = sqlx::query_as(concat!(
        "SELECT ",
        cycle_columns!(),
        " FROM review_cycles WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let mut deadlines = deadlines_of(db, &[id.to_owned()]).await?;
    let d = deadlines.remove(id).unwrap_or_default();
    Ok(Some(cycle_of(row, d)))
}

/// Cycles in id order from `offset`, at most `limit`, and how many there are.
pub async fn list_cycles(
    db: &Db,
    offset: usize,
    limit: usize,
) -> Result<(Vec<StoredCycle>, usize), StoreError> {
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM review_cycles")
        .fetch_one(&db.pool)
        .await?;
    let rows: Vec<CycleRow> = sqlx::query_as(concat!(
        "SELECT ",
        cycle_columns!(),
        " FROM review_cycles ORDER BY id LIMIT $1 OFFSET $2"
    ))
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .bind(i64::try_from(offset).unwrap_or(i64::MAX))
    .fetch_all(&db.pool)
    .await?;
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut deadlines = deadlines_of(db, &ids).await?;
    let cycles = rows
        .into_iter()
        .map(|r| {
            let d = deadlines.remove(&r.id).unwrap_or_default();
            cycle_of(r, d)
        })
        .collect();
    Ok((cycles, usize::try_from(total).unwrap_or(0)))
}

/// Adds or replaces deadlines of a cycle, with an event that records them.
pub async fn set_deadlines(
    db: &Db,
    cycle_id: &str,
    deadlines: &[Deadline],
    by: &str,
    now: i64,
) -> Result<(), ReviewError> {
    let mut conn = db.pool.acquire().await.map_err(StoreError::from)?;
    let mut tx = write_tx(db, &mut conn).await?;
    for d in deadlines {
        insert_deadline(&mut tx, cycle_id, d).await?;
    }
    append_cycle_event(
        &mut tx,
        cycle_id,
        "SET_DEADLINES",
        by,
        now,
        &deadlines_json(deadlines),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn signoff_in(conn: &mut AnyConnection, part: &Part) -> Result<SignOff, sqlx::Error> {
    let row: Option<(String, i64, i64)> = sqlx::query_as(
        "SELECT state, revision, update_micros FROM review_signoffs \
         WHERE department_code = $1 AND region = $2 AND period = $3",
    )
    .bind(&part.department)
    .bind(&part.region)
    .bind(&part.period)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some((state, revision, at)) => SignOff {
            part: part.clone(),
            state: SignOffState::parse(&state).unwrap_or(SignOffState::Open),
            revision,
            update_micros: Some(at),
        },
        None => SignOff {
            part: part.clone(),
            state: SignOffState::Open,
            revision: 0,
            update_micros: None,
        },
    })
}

/// The sign-off of one part.
pub async fn signoff(db: &Db, part: &Part) -> Result<SignOff, StoreError> {
    let mut conn = db.pool.acquire().await?;
    Ok(signoff_in(&mut conn, part).await?)
}

/// The states of `department`'s parts for `period` in `regions`.
async fn states_in(
    conn: &mut AnyConnection,
    department: &str,
    period: &str,
    regions: &[String],
) -> Result<Vec<(String, SignOffState)>, sqlx::Error> {
    if regions.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT region, state FROM review_signoffs WHERE department_code = $1 AND period = $2",
    )
    .bind(department)
    .bind(period)
    .fetch_all(&mut *conn)
    .await?;
    let wanted: HashSet<&str> = regions.iter().map(String::as_str).collect();
    Ok(rows
        .into_iter()
        .filter(|(r, _)| wanted.contains(r.as_str()))
        .map(|(r, s)| (r, SignOffState::parse(&s).unwrap_or(SignOffState::Open)))
        .collect())
}

/// What a transition is checked against besides the part's own state.
#[derive(Debug)]
pub struct TransitionCheck {
    /// The regions below the part's region: an approval waits for their submitted parts.
    pub below: Vec<String>,
    /// The regions above it: an unapproval waits for their approvals to be undone first.
    pub above: Vec<String>,
}

/// Applies `t` to `part` in one transaction (see the module comment) and appends its event.
#[allow(clippy::too_many_arguments)]
pub async fn transition(
    db: &Db,
    part: &Part,
    t: Transition,
    principal: &str,
    comment: &str,
    expected_revision: i64,
    check: &TransitionCheck,
    now: i64,
) -> Result<SignOff, ReviewError> {
    let mut conn = db.pool.acquire().await.map_err(StoreError::from)?;
    let mut tx = write_tx(db, &mut conn).await?;
    if db.backend == Backend::Postgres {
        // Serialises with the ingestion writer's group commits (module comment).
        sqlx::query("SELECT last_id FROM chain_head WHERE id = 1 FOR UPDATE")
            .fetch_optional(&mut *tx)
            .await?;
    }
    let current = signoff_in(&mut tx, part).await?;
    let state_error = |message: String| ReviewError::State {
        state: current.state,
        revision: current.revision,
        message,
    };
    if expected_revision != 0 && expected_revision != current.revision {
        return Err(state_error(format!(
            "expected revision {expected_revision}"
        )));
    }
    let Some(to) = t.apply(current.state) else {
        return Err(state_error(format!(
            "{} does not apply to a part that is {}",
            t.as_str(),
            current.state.as_str()
        )));
    };
    match t {
        Transition::Approve => {
            let below = states_in(&mut tx, &part.department, &part.period, &check.below).await?;
            let waiting = citycredit_core::review::regions_not_approved(&below);
            if !waiting.is_empty() {
                return Err(ReviewError::CountiesNotApproved { regions: waiting });
            }
        }
        Transition::Unapprove => {
            let above = states_in(&mut tx, &part.department, &part.period, &check.above).await?;
            if let Some((region, _)) = above.iter().find(|(_, s)| *s == SignOffState::Approved) {
                return Err(state_error(format!(
                    "region {region} above it is approved for this department and period: unapprove it first"
                )));
            }
        }
        Transition::Submit | Transition::Return => {}
    }
    let revision = current.revision + 1;
    let changed = if current.update_micros.is_none() {
        sqlx::query(
            "INSERT INTO review_signoffs \
             (department_code, region, period, state, revision, update_micros) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&part.department)
        .bind(&part.region)
        .bind(&part.period)
        .bind(to.as_str())
        .bind(revision)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
    } else {
        sqlx::query(
            "UPDATE review_signoffs SET state = $1, revision = $2, update_micros = $3 \
             WHERE department_code = $4 AND region = $5 AND period = $6 \
             AND state = $7 AND revision = $8",
        )
        .bind(to.as_str())
        .bind(revision)
        .bind(now)
        .bind(&part.department)
        .bind(&part.region)
        .bind(&part.period)
        .bind(current.state.as_str())
        .bind(current.revision)
        .execute(&mut *tx)
        .await?
        .rows_affected()
    };
    if changed != 1 {
        return Err(state_error("a concurrent transition won".to_owned()));
    }
    sqlx::query(
        "INSERT INTO review_events (department_code, region, period, revision, transition, \
         from_state, to_state, principal, event_micros, comment) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&part.department)
    .bind(&part.region)
    .bind(&part.period)
    .bind(revision)
    .bind(t.as_str())
    .bind(current.state.as_str())
    .bind(to.as_str())
    .bind(principal)
    .bind(now)
    .bind(comment)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(SignOff {
        part: part.clone(),
        state: to,
        revision,
        update_micros: Some(now),
    })
}

/// Events matching the filters (empty: any), oldest first, from `offset`, at most `limit`;
/// and how many match.
pub async fn list_events(
    db: &Db,
    department: &str,
    region: &str,
    period: &str,
    offset: usize,
    limit: usize,
) -> Result<(Vec<EventRow>, usize), StoreError> {
    let filter = |qb: &mut QueryBuilder<Any>| {
        qb.push(" WHERE 1 = 1");
        for (col, v) in [
            ("department_code", department),
            ("region", region),
            ("period", period),
        ] {
            if !v.is_empty() {
                qb.push(format!(" AND {col} = "));
                qb.push_bind(v.to_owned());
            }
        }
    };
    let mut count: QueryBuilder<Any> = QueryBuilder::new("SELECT COUNT(*) FROM review_events");
    filter(&mut count);
    let total: i64 = numbered(&mut count)?
        .fetch_one(&db.pool)
        .await
        .and_then(|row| sqlx::Row::try_get::<i64, _>(&row, 0))?;
    let mut qb: QueryBuilder<Any> = QueryBuilder::new(
        "SELECT department_code, region, period, revision, transition, from_state, to_state, \
         principal, event_micros, comment FROM review_events",
    );
    filter(&mut qb);
    qb.push(" ORDER BY event_micros, department_code, region, period, revision LIMIT ");
    qb.push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
    qb.push(" OFFSET ");
    qb.push_bind(i64::try_from(offset).unwrap_or(i64::MAX));
    let rows = numbered(&mut qb)?
        .fetch_all(&db.pool)
        .await?
        .iter()
        .map(<EventRow as sqlx::FromRow<'_, sqlx::any::AnyRow>>::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((rows, usize::try_from(total).unwrap_or(0)))
}

/// Stores a lock exception.
pub async fn grant_exception(db: &Db, x: &LockExceptionRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO review_lock_exceptions (id, department_code, region, period, reason, \
         granted_by, grant_micros, expire_micros, used_micros, used_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL)",
    )
    .bind(&x.id)
    .bind(&x.part.department)
    .bind(&x.part.region)
    .bind(&x.part.period)
    .bind(&x.reason)
    .bind(&x.granted_by)
    .bind(x.grant_micros)
    .bind(x.expire_micros)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// One entry of a cycle's history as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct CycleEventRow {
    pub cycle_id: String,
    pub seq: i64,
    pub kind: String,
    pub principal: String,
    pub event_micros: i64,
    pub detail: String,
}

/// A cycle's history, oldest first, from `offset`, at most `limit`; and how many entries it has.
pub async fn list_cycle_events(
    db: &Db,
    cycle_id: &str,
    offset: usize,
    limit: usize,
) -> Result<(Vec<CycleEventRow>, usize), StoreError> {
    let total: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM review_cycle_events WHERE cycle_id = $1")
            .bind(cycle_id)
            .fetch_one(&db.pool)
            .await?;
    let rows: Vec<CycleEventRow> = sqlx::query_as(
        "SELECT cycle_id, seq, kind, principal, event_micros, detail FROM review_cycle_events \
         WHERE cycle_id = $1 ORDER BY seq LIMIT $2 OFFSET $3",
    )
    .bind(cycle_id)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .bind(i64::try_from(offset).unwrap_or(i64::MAX))
    .fetch_all(&db.pool)
    .await?;
    Ok((rows, usize::try_from(total).unwrap_or(0)))
}

/// How many times each department's parts for `periods` were returned from review (RETURN
/// transitions), over every region.
pub async fn returns(db: &Db, periods: &[String]) -> Result<Vec<(String, i64)>, StoreError> {
    if periods.is_empty() {
        return Ok(Vec::new());
    }
    let mut qb: QueryBuilder<Any> = QueryBuilder::new(
        "SELECT department_code, CAST(COUNT(*) AS BIGINT) FROM review_events \
         WHERE transition = 'RETURN' AND period IN (",
    );
    let mut list = qb.separated(", ");
    for p in periods {
        list.push_bind(p.clone());
    }
    qb.push(") GROUP BY department_code");
    let rows = numbered(&mut qb)?.fetch_all(&db.pool).await?;
    rows.iter()
        .map(|r| Ok(<(String, i64) as sqlx::FromRow<'_, sqlx::any::AnyRow>>::from_row(r)?))
        .collect()
}

/// The most cycles scoring reads (the newest [`SCORED_CYCLES`]): a bound on what it holds and
/// reads every second; a period only older cycles cover names none.
pub const SCORED_CYCLES: usize = 1_000;

/// The review state as scoring reads it ([`citycredit::cycles::CycleSource`]), over the shared
/// database: the newest cycles' ids, pinned rule versions, periods and creation times, and the
/// sum of the sign-offs' revisions (every transition adds one, so it changes with each).
#[derive(Clone, Debug)]
pub struct CycleReader {
    db: Db,
}

impl CycleReader {
    pub fn new(db: Db) -> CycleReader {
        CycleReader { db }
    }

    async fn read(&self) -> Result<citycredit::cycles::ReviewSnapshot, StoreError> {
        // The newest cycles only: the latest created covers a period first.
        let rows: Vec<(String, String, String, i64, String)> = sqlx::query_as(
            "SELECT id, rule_version, periods, create_micros, review_date FROM review_cycles \
             ORDER BY create_micros DESC, id DESC LIMIT $1",
        )
        .bind(i64::try_from(SCORED_CYCLES).unwrap_or(i64::MAX))
        .fetch_all(&self.db.pool)
        .await?;
        let signoff_revision: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(revision), 0) AS BIGINT) FROM review_signoffs",
        )
        .fetch_one(&self.db.pool)
        .await?;
        let cycles = rows
            .into_iter()
            .map(|(id, rule_version, periods, create_micros, review_date)| {
                citycredit::cycles::CycleInfo {
                    id,
                    rule_version,
                    periods: periods
                        .lines()
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    create_micros,
                    review_date,
                }
            })
            .collect();
        Ok(citycredit::cycles::ReviewSnapshot {
            cycles,
            signoff_revision,
        })
    }
}

impl citycredit::cycles::CycleSource for CycleReader {
    fn snapshot(
        &self,
    ) -> citycredit_core::BoxFuture<
        '_,
        Result<citycredit::cycles::ReviewSnapshot, citycredit_core::source::SourceError>,
    > {
        Box::pin(async move {
            self.read()
                .await
                .map_err(|e| citycredit_core::source::SourceError::Internal {
                    context: "read review cycles".to_owned(),
                    detail: e.to_string(),
                })
        })
    }
}
