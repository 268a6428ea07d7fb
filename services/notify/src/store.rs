//! The notifier's SQL (migration 0320), written once for both databases through sqlx's `Any`
//! driver; the one statement that differs is the claim (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL, where several processes may run workers; SQLite has one process).
//!
//! It also reads, and never writes, the review cycle's tables (migration 0300) and ingestion's
//! current values (`value_versions`, valid_to NULL).

use sqlx::{Any, QueryBuilder, Row};

use citycredit_store::{Backend, Db, numbered};

use crate::error::NotifyError;

type Result<T> = std::result::Result<T, NotifyError>;

fn storage(context: &'static str) -> impl Fn(sqlx::Error) -> NotifyError {
    move |e| NotifyError::storage(context, &e)
}

/// A subscription as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SubscriptionRow {
    pub id: i64,
    pub recipient: String,
    pub url: String,
    pub format: String,
    pub secret: String,
    pub mode: String,
    pub create_micros: i64,
}

/// A notice as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct NoticeRow {
    pub id: i64,
    pub kind: String,
    pub recipient: String,
    pub title_zh: String,
    pub body_zh: String,
    pub title_en: String,
    pub body_en: String,
    pub payload: String,
    pub create_micros: i64,
}

/// A delivery as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: i64,
    pub notice_id: i64,
    pub subscription_id: i64,
    pub attempts: i64,
    pub next_micros: i64,
    pub delivered_micros: Option<i64>,
    pub dead_micros: Option<i64>,
    pub last_error: String,
}

/// A notice to put in the outbox.
#[derive(Clone, Debug)]
pub struct NewNotice {
    /// Unique: the same key is never enqueued twice.
    pub dedupe_key: String,
    pub kind: String,
    pub recipient: String,
    pub title_zh: String,
    pub body_zh: String,
    pub title_en: String,
    pub body_en: String,
    pub payload: serde_json::Value,
    /// A digest: delivered only to this subscription, and carrying these notices (their
    /// digest items are marked in the same transaction).
    pub digest_of: Option<(i64, Vec<i64>)>,
}

const NOTICE_COLUMNS: &str =
    "id, kind, recipient, title_zh, body_zh, title_en, body_en, payload, create_micros";

pub async fn create_subscription(
    db: &Db,
    s: &SubscriptionRow,
    created_by: &str,
    max: usize,
) -> Result<i64> {
    let mut tx = db.begin_write().await.map_err(storage("begin"))?;
    let count: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM notify_subscriptions WHERE deleted_micros IS NULL",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(storage("count subscriptions"))?;
    if usize::try_from(count).unwrap_or(usize::MAX) >= max {
        return Err(NotifyError::TooManySubscriptions(max));
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO notify_subscriptions (recipient, url, format, secret, mode, created_by, create_micros) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(&s.recipient)
    .bind(&s.url)
    .bind(&s.format)
    .bind(&s.secret)
    .bind(&s.mode)
    .bind(created_by)
    .bind(s.create_micros)
    .fetch_one(&mut *tx)
    .await
    .map_err(storage("create subscription"))?;
    tx.commit().await.map_err(storage("commit"))?;
    Ok(id)
}

pub async fn list_subscriptions(db: &Db, after: i64, limit: usize) -> Result<Vec<SubscriptionRow>> {
    sqlx::query_as(
        "SELECT id, recipient, url, format, secret, mode, create_micros FROM notify_subscriptions \
         WHERE deleted_micros IS NULL AND id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&db.pool)
    .await
    .map_err(storage("list subscriptions"))
}

/// Marks a subscription deleted (the row stays: its deliveries name it). False if unknown.
pub async fn delete_subscription(db: &Db, id: i64, now: i64) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE notify_subscriptions SET deleted_micros = $1 WHERE id = $2 AND deleted_micros IS NULL",
    )
    .bind(now)
    .bind(id)
    .execute(&db.pool)
    .await
    .map_err(storage("delete subscription"))?;
    Ok(done.rows_affected() > 0)
}

/// True when a notice with this key is in the outbox already.
pub async fn notice_exists(db: &Db, key: &str) -> Result<bool> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notify_notices WHERE dedupe_key = $1")
        .bind(key)
        .fetch_one(&db.pool)
        .await
        .map_err(storage("notice exists"))?;
    Ok(n > 0)
}

/// Puts a notice in the outbox with one delivery per matching EACH subscription and one digest
/// item per matching DAILY_DIGEST subscription, in one transaction. `None` when its key was
/// enqueued before (nothing changes).
pub async fn enqueue(db: &Db, n: &NewNotice, day: &str, now: i64) -> Result<Option<NoticeRow>> {
    let mut tx = db.begin_write().await.map_err(storage("begin"))?;
    // SQL-safe: only the constant column list is spliced in; every value is bound.
    let row: Option<NoticeRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO notify_notices (dedupe_key, kind, recipient, title_zh, body_zh, title_en, body_en, payload, create_micros) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (dedupe_key) DO NOTHING RETURNING {NOTICE_COLUMNS}"
    )))
    .bind(&n.dedupe_key)
    .bind(&n.kind)
    .bind(&n.recipient)
    .bind(&n.title_zh)
    .bind(&n.body_zh)
    .bind(&n.title_en)
    .bind(&n.body_en)
    .bind(n.payload.to_string())
    .bind(now)
    .fetch_optional(&mut *tx)
    .await
    .map_err(storage("enqueue notice"))?;
    let Some(row) = row else {
        tx.commit().await.map_err(storage("commit"))?;
        return Ok(None);
    };
    let subscriptions: Vec<(i64, String)> = match &n.digest_of {
        Some((sub, _)) => vec![(*sub, "EACH".to_owned())],
        None => sqlx::query(
            "SELECT id, mode FROM notify_subscriptions WHERE deleted_micros IS NULL \
             AND (recipient = $1 OR recipient = '*') ORDER BY id",
        )
        .bind(&n.recipient)
        .fetch_all(&mut *tx)
        .await
        .map_err(storage("matching subscriptions"))?
        .iter()
        .map(|r| (r.get::<i64, _>("id"), r.get::<String, _>("mode")))
        .collect(),
    };
    for (sub, mode) in subscriptions {
        if mode == "DAILY_DIGEST" {
            sqlx::query(
                "INSERT INTO notify_digest_items (subscription_id, notice_id, day, digest_id) VALUES ($1, $2, $3, NULL)",
            )
            .bind(sub)
            .bind(row.id)
            .bind(day)
            .execute(&mut *tx)
            .await
            .map_err(storage("digest item"))?;
        } else {
            sqlx::query(
                "INSERT INTO notify_deliveries (notice_id, subscription_id, attempts, next_micros, delivered_micros, dead_micros, last_error) \
                 VALUES ($1, $2, 0, $3, NULL, NULL, '')",
            )
            .bind(row.id)
            .bind(sub)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(storage("delivery"))?;
        }
    }
    if let Some((sub, carried)) = &n.digest_of
        && !carried.is_empty()
    {
        let mut qb: QueryBuilder<Any> =
            QueryBuilder::new("UPDATE notify_digest_items SET digest_id = ");
        qb.push_bind(row.id)
            .push(" WHERE subscription_id = ")
            .push_bind(*sub)
            .push(" AND notice_id IN (");
        let mut list = qb.separated(", ");
        for id in carried {
            list.push_bind(*id);
        }
        qb.push(")");
        numbered(&mut qb)
            .map_err(storage("mark digest items"))?
            .execute(&mut *tx)
            .await
            .map_err(storage("mark digest items"))?;
    }
    tx.commit().await.map_err(storage("commit"))?;
    Ok(Some(row))
}

/// A claimed delivery with what sending it needs.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Claimed {
    pub delivery_id: i64,
    pub attempts: i64,
    pub url: String,
    pub format: String,
    pub secret: String,
    #[sqlx(flatten)]
    pub notice: NoticeRow,
}

/// Claims up to `limit` due deliveries of live subscriptions: each attempt is counted and its
/// next time moved `lease` ahead, so that no other worker takes it meanwhile and a worker that
/// dies leaves it to be attempted again when the lease is over.
pub async fn claim_due(db: &Db, now: i64, lease: i64, limit: usize) -> Result<Vec<Claimed>> {
    let lock = match db.backend {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let sql = format!(
        "UPDATE notify_deliveries SET attempts = attempts + 1, next_micros = $1 \
         WHERE id IN (SELECT id FROM notify_deliveries \
           WHERE delivered_micros IS NULL AND dead_micros IS NULL AND next_micros <= $2 \
             AND subscription_id IN (SELECT id FROM notify_subscriptions WHERE deleted_micros IS NULL) \
           ORDER BY next_micros, id LIMIT $3{lock}) \
         RETURNING id"
    );
    // SQL-safe: `lock` is one of two constants chosen by the backend; every value is bound.
    let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(now.saturating_add(lease))
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&db.pool)
        .await
        .map_err(storage("claim deliveries"))?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut qb: QueryBuilder<Any> = QueryBuilder::new(
        "SELECT d.id AS delivery_id, d.attempts, s.url, s.format, s.secret, \
         n.id, n.kind, n.recipient, n.title_zh, n.body_zh, n.title_en, n.body_en, n.payload, n.create_micros \
         FROM notify_deliveries d JOIN notify_notices n ON n.id = d.notice_id \
         JOIN notify_subscriptions s ON s.id = d.subscription_id WHERE d.id IN (",
    );
    let mut list = qb.separated(", ");
    for id in &ids {
        list.push_bind(*id);
    }
    qb.push(") ORDER BY d.id");
    citycredit_store::numbered_as::<Claimed>(&mut qb)
        .map_err(storage("claimed deliveries"))?
        .fetch_all(&db.pool)
        .await
        .map_err(storage("claimed deliveries"))
}

pub async fn mark_delivered(db: &Db, id: i64, now: i64) -> Result<()> {
    sqlx::query(
        "UPDATE notify_deliveries SET delivered_micros = $1, last_error = '' WHERE id = $2",
    )
    .bind(now)
    .bind(id)
    .execute(&db.pool)
    .await
    .map_err(storage("mark delivered"))?;
    Ok(())
}

/// A failed attempt: retried at `next`, or dead (`next` None) with the error kept.
pub async fn mark_failed(db: &Db, id: i64, error: &str, next: Option<i64>, now: i64) -> Result<()> {
    let q = match next {
        Some(at) => sqlx::query(
            "UPDATE notify_deliveries SET last_error = $1, next_micros = $2 WHERE id = $3",
        )
        .bind(error)
        .bind(at),
        None => sqlx::query(
            "UPDATE notify_deliveries SET last_error = $1, dead_micros = $2 WHERE id = $3",
        )
        .bind(error)
        .bind(now),
    };
    q.bind(id)
        .execute(&db.pool)
        .await
        .map_err(storage("mark failed"))?;
    Ok(())
}

/// Notices after `after` in id order, only `recipient`'s when given.
pub async fn notices_after(
    db: &Db,
    after: i64,
    recipient: Option<&str>,
    limit: usize,
) -> Result<Vec<NoticeRow>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // SQL-safe: only the constant column list is spliced in; the recipient and bounds are bound.
    let q = match recipient {
        Some(r) => sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {NOTICE_COLUMNS} FROM notify_notices WHERE id > $1 AND recipient = $2 ORDER BY id LIMIT $3"
        )))
        .bind(after)
        .bind(r.to_owned())
        .bind(limit),
        None => sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {NOTICE_COLUMNS} FROM notify_notices WHERE id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after)
        .bind(limit),
    };
    q.fetch_all(&db.pool).await.map_err(storage("list notices"))
}

/// Deliveries after `after` in id order; `state` "PENDING", "DELIVERED", "DEAD" or None.
pub async fn list_deliveries(
    db: &Db,
    state: Option<&str>,
    after: i64,
    limit: usize,
) -> Result<Vec<DeliveryRow>> {
    let filter = match state {
        Some("PENDING") => "AND delivered_micros IS NULL AND dead_micros IS NULL",
        Some("DELIVERED") => "AND delivered_micros IS NOT NULL",
        Some("DEAD") => "AND dead_micros IS NOT NULL",
        _ => "",
    };
    // SQL-safe: `filter` is one of four constants chosen by the state; the rest is bound.
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, notice_id, subscription_id, attempts, next_micros, delivered_micros, dead_micros, last_error \
         FROM notify_deliveries WHERE id > $1 {filter} ORDER BY id LIMIT $2"
    )))
    .bind(after)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&db.pool)
    .await
    .map_err(storage("list deliveries"))
}

/// A deadline of a review cycle (migration 0300) with its cycle's title.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DeadlineRow {
    pub cycle_id: String,
    pub cycle_title: String,
    pub department_code: String,
    pub subject: String,
    pub period: String,
    pub due_micros: i64,
}

/// Deadlines due between `from` and `to` (microseconds), in due order, at most `limit`.
pub async fn deadlines_between(
    db: &Db,
    from: i64,
    to: i64,
    limit: usize,
) -> Result<Vec<DeadlineRow>> {
    sqlx::query_as(
        "SELECT d.cycle_id, c.title AS cycle_title, d.department_code, d.subject, d.period, d.due_micros \
         FROM review_deadlines d JOIN review_cycles c ON c.id = d.cycle_id \
         WHERE d.due_micros >= $1 AND d.due_micros <= $2 \
         ORDER BY d.due_micros, d.cycle_id, d.department_code, d.subject, d.period LIMIT $3",
    )
    .bind(from)
    .bind(to)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&db.pool)
    .await
    .map_err(storage("deadlines"))
}

/// The periods of every review cycle (one per line in `review_cycles.periods`).
pub async fn cycle_periods(db: &Db) -> Result<Vec<String>> {
    let rows: Vec<String> = sqlx::query_scalar("SELECT periods FROM review_cycles ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .map_err(storage("cycle periods"))?;
    let mut out: Vec<String> = rows
        .iter()
        .flat_map(|p| p.lines())
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// A review cycle as the veto-risk producer reads it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CycleRow {
    pub id: String,
    pub title: String,
    pub rule_version: String,
    /// One period per line.
    pub periods: String,
    /// YYYY-MM-DD.
    pub review_date: String,
}

/// The cycles whose review date is after `day` (YYYY-MM-DD), nearest review first, at most
/// `limit`.
pub async fn cycles_reviewed_after(db: &Db, day: &str, limit: usize) -> Result<Vec<CycleRow>> {
    sqlx::query_as(
        "SELECT id, title, rule_version, periods, review_date FROM review_cycles \
         WHERE review_date > $1 ORDER BY review_date, id LIMIT $2",
    )
    .bind(day)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&db.pool)
    .await
    .map_err(storage("cycles ahead"))
}

/// The last outcome seen per basic indicator for (region, period): (indicator, outcome, when).
pub async fn outcomes(db: &Db, region: &str, period: &str) -> Result<Vec<(String, String, i64)>> {
    let rows = sqlx::query(
        "SELECT indicator, outcome, update_micros FROM notify_outcomes WHERE region = $1 AND period = $2",
    )
    .bind(region)
    .bind(period)
    .fetch_all(&db.pool)
    .await
    .map_err(storage("outcomes"))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<String, _>("indicator"),
                r.get::<String, _>("outcome"),
                r.get::<i64, _>("update_micros"),
            )
        })
        .collect())
}

pub async fn set_outcome(
    db: &Db,
    region: &str,
    period: &str,
    indicator: &str,
    outcome: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO notify_outcomes (region, period, indicator, outcome, update_micros) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (region, period, indicator) DO UPDATE SET outcome = excluded.outcome, update_micros = excluded.update_micros",
    )
    .bind(region)
    .bind(period)
    .bind(indicator)
    .bind(outcome)
    .bind(now)
    .execute(&db.pool)
    .await
    .map_err(storage("set outcome"))?;
    Ok(())
}

/// (subscription, recipient) pairs with notices waiting for a digest, at most `limit`.
pub async fn digest_groups(db: &Db, limit: usize) -> Result<Vec<(i64, String)>> {
    let rows = sqlx::query(
        "SELECT DISTINCT i.subscription_id, n.recipient FROM notify_digest_items i \
         JOIN notify_notices n ON n.id = i.notice_id \
         JOIN notify_subscriptions s ON s.id = i.subscription_id \
         WHERE i.digest_id IS NULL AND s.deleted_micros IS NULL \
         ORDER BY i.subscription_id, n.recipient LIMIT $1",
    )
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&db.pool)
    .await
    .map_err(storage("digest groups"))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<i64, _>("subscription_id"),
                r.get::<String, _>("recipient"),
            )
        })
        .collect())
}

/// The notices waiting for `subscription`'s digest to `recipient`, in id order, at most `limit`.
pub async fn digest_notices(
    db: &Db,
    subscription: i64,
    recipient: &str,
    limit: usize,
) -> Result<Vec<NoticeRow>> {
    sqlx::query_as(
        "SELECT n.id, n.kind, n.recipient, n.title_zh, n.body_zh, n.title_en, n.body_en, n.payload, n.create_micros \
         FROM notify_digest_items i JOIN notify_notices n ON n.id = i.notice_id \
         WHERE i.subscription_id = $1 AND i.digest_id IS NULL AND n.recipient = $2 ORDER BY n.id LIMIT $3",
    )
    .bind(subscription)
    .bind(recipient)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&db.pool)
    .await
    .map_err(storage("digest notices"))
}
