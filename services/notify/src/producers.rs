//! What puts notices in the outbox on the scheduler's passes:
//!
//! - deadline reminders, from the review cycle's deadlines (migration 0300): on the nearest of
//!   `reminder_days_before` days before the due time, and once a day after it for
//!   `overdue_days_max` days, to a department that still owes a value: a metric it is expected
//!   to report (rulebook section 9, `Access::expected_reports`) for a region, with no current
//!   value from it for the period or a period inside it (a value carried forward from an
//!   earlier period does not discharge a deadline for this one);
//! - a basic indicator turning FAIL for the city or a county, for the periods of the review
//!   cycles, to the credit office: the last outcome seen is kept per (region, period,
//!   indicator), so a FAIL is announced once (again only after it passed or lost its data).
//!   A scheduled pass scores only the (region, period) pairs a change of figures reaches
//!   (`changes::Changed`); every pair at start, after the change feed lagged or closed, and on
//!   RunNotifierPass;
//! - veto-risk notices from the early warning (`veto_risk.rs`);
//! - daily digests: from `digest_hour` (Asia/Shanghai), one summary per DAILY_DIGEST
//!   subscription and recipient of the notices waiting for it.
//!
//! Every notice has a dedupe key: a pass repeated, or one after a restart, enqueues nothing new.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use citycredit_core::period::Period;
use citycredit_core::review::timeliness::{reporting_periods, subject_metrics};

use crate::changes::Changed;
use crate::error::NotifyError;
use crate::store::{self, DeadlineRow, NewNotice};
use crate::{CREDIT_OFFICE, DAY_MICROS, Notifier, shanghai_day, shanghai_hour};

/// Most deadlines one pass considers.
const MAX_DEADLINES_PER_PASS: usize = 10_000;
/// Most cycle periods whose basic indicators one pass checks.
const MAX_OUTCOME_PERIODS: usize = 24;
/// Most digests built per pass, and notices listed in one digest (the rest wait a day).
const MAX_DIGESTS_PER_PASS: usize = 1_000;
const MAX_DIGEST_ITEMS: usize = 50;

/// A basic indicator's outcome as the notifier tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    /// Missing or invalid data: neither passes nor fails yet.
    NoData,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::NoData => "NO_DATA",
        }
    }
}

/// One basic indicator's outcome for a region and period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasicOutcome {
    pub indicator: String,
    pub title: String,
    pub outcome: Outcome,
}

/// Where basic indicators' outcomes come from: in the application, the scoring service in
/// process (its cache is invalidated by the change feed).
#[tonic::async_trait]
pub trait OutcomeSource: Send + Sync {
    async fn basic_outcomes(&self, region: &str, period: &str)
    -> Result<Vec<BasicOutcome>, String>;
}

fn micros_of_days(days: u32) -> i64 {
    i64::from(days) * DAY_MICROS
}

/// "YYYY-MM-DD HH:MM" in Asia/Shanghai.
fn shanghai_time(micros: i64) -> String {
    let minute = (micros + 8 * 3_600_000_000).rem_euclid(3_600_000_000) / 60_000_000;
    format!(
        "{} {:02}:{minute:02}",
        shanghai_day(micros),
        shanghai_hour(micros)
    )
}

/// Deadline reminders due now; returns how many notices were enqueued.
pub async fn deadline_reminders(n: &Notifier, now: i64) -> Result<u64, NotifyError> {
    let s = n.settings();
    let max_before = s.reminder_days_before.iter().copied().max().unwrap_or(0);
    let from = now.saturating_sub(micros_of_days(s.overdue_days_max.saturating_add(1)));
    let to = now.saturating_add(micros_of_days(max_before));
    let rows = store::deadlines_between(n.db(), from, to, MAX_DEADLINES_PER_PASS).await?;
    let mut days: Vec<u32> = s.reminder_days_before.clone();
    days.sort_unstable();
    let mut enqueued = 0;
    for row in rows {
        let stage = if now < row.due_micros {
            // The nearest reminder day whose window has opened.
            days.iter()
                .find(|d| now >= row.due_micros.saturating_sub(micros_of_days(**d)))
                .map(|d| Stage::Before(*d))
        } else {
            let late = u32::try_from((now - row.due_micros) / DAY_MICROS).unwrap_or(u32::MAX);
            (late < s.overdue_days_max).then_some(Stage::Overdue(late))
        };
        let Some(stage) = stage else { continue };
        let key = match stage {
            Stage::Before(d) => format!(
                "deadline-before:{}:{}:{}:{}:{d}",
                row.cycle_id, row.department_code, row.subject, row.period
            ),
            Stage::Overdue(k) => format!(
                "deadline-overdue:{}:{}:{}:{}:{k}",
                row.cycle_id, row.department_code, row.subject, row.period
            ),
        };
        if store::notice_exists(n.db(), &key).await? {
            continue;
        }
        let missing = owed(n, &row).await?;
        if missing.is_empty() {
            continue;
        }
        let notice = reminder(n, &row, stage, key, &missing);
        if n.enqueue(notice).await?.is_some() {
            enqueued += 1;
        }
    }
    Ok(enqueued)
}

#[derive(Clone, Copy, Debug)]
enum Stage {
    /// This many days (or fewer) before the due time.
    Before(u32),
    /// The (k+1)-th day after it.
    Overdue(u32),
}

/// What `row`'s department still owes: metric -> the regions without a current value from it.
async fn owed(
    n: &Notifier,
    row: &DeadlineRow,
) -> Result<BTreeMap<String, Vec<String>>, NotifyError> {
    let Ok(period) = row.period.parse::<Period>() else {
        tracing::warn!(cycle = %row.cycle_id, period = %row.period, "deadline with an unreadable period: skipped");
        return Ok(BTreeMap::new());
    };
    let periods: Vec<String> = reporting_periods(&period)
        .iter()
        .map(ToString::to_string)
        .collect();
    let org = n.org();
    // The metrics the deadline's subject covers (a metric, a task's checks, an indicator, an
    // item or section; None: everything), as timeliness reads them.
    let subject_metrics = subject_metrics(n.catalog(), &row.subject);
    let expected: Vec<(String, Vec<String>)> = org
        .access
        .expected_reports(&row.department_code)
        .into_iter()
        .filter(|(m, _)| subject_metrics.as_ref().is_none_or(|s| s.contains(m)))
        .map(|(m, regions)| {
            (
                m.to_owned(),
                regions.into_iter().map(str::to_owned).collect(),
            )
        })
        .collect();
    if expected.is_empty() {
        return Ok(BTreeMap::new());
    }
    let reported: BTreeSet<(String, String)> =
        citycredit_store::reported::current(n.db(), &row.department_code, &periods)
            .await
            .map_err(|e| NotifyError::storage("reported values", &e))?
            .into_iter()
            .collect();
    let mut missing = BTreeMap::new();
    for (metric, regions) in expected {
        let open: Vec<String> = regions
            .into_iter()
            .filter(|r| !reported.contains(&(metric.clone(), r.clone())))
            .collect();
        if !open.is_empty() {
            missing.insert(metric, open);
        }
    }
    Ok(missing)
}

pub(crate) fn department_name(n: &Notifier, code: &str) -> String {
    if code == CREDIT_OFFICE {
        return "信用办".to_owned();
    }
    n.org()
        .city
        .department(code)
        .map_or_else(|| code.to_owned(), |d| d.name.clone())
}

pub(crate) fn region_name(n: &Notifier, code: &str) -> String {
    n.org()
        .city
        .region(code)
        .map_or_else(|| code.to_owned(), |r| r.name.clone())
}

fn reminder(
    n: &Notifier,
    row: &DeadlineRow,
    stage: Stage,
    key: String,
    missing: &BTreeMap<String, Vec<String>>,
) -> NewNotice {
    let dept = department_name(n, &row.department_code);
    let due = shanghai_time(row.due_micros);
    let count = missing.len();
    let (kind, title_zh, title_en, days) = match stage {
        Stage::Before(d) => (
            "deadline_before",
            format!(
                "【催报】{dept}：{} 尚有 {count} 项指标未报送，{d} 天内截止",
                row.period
            ),
            format!(
                "Reminder: {} has {count} metrics to report for {}, due within {d} days",
                row.department_code, row.period
            ),
            i64::from(d),
        ),
        Stage::Overdue(k) => (
            "deadline_overdue",
            format!(
                "【逾期】{dept}：{} 尚有 {count} 项指标未报送，已逾期 {} 天",
                row.period,
                k + 1
            ),
            format!(
                "Overdue: {} has {count} metrics unreported for {}, {} days late",
                row.department_code,
                row.period,
                k + 1
            ),
            -i64::from(k + 1),
        ),
    };
    let mut lines_zh = Vec::new();
    let mut lines_en = Vec::new();
    let mut items = Vec::new();
    for (metric, regions) in missing {
        let title = n
            .catalog()
            .metric(metric)
            .map_or_else(|| metric.clone(), |m| m.title.clone());
        let names: Vec<String> = regions.iter().map(|r| region_name(n, r)).collect();
        lines_zh.push(format!("- {title}（`{metric}`）：{}", names.join("、")));
        lines_en.push(format!("- `{metric}`: {}", regions.join(", ")));
        items.push(serde_json::json!({"metric": metric, "title": title, "regions": regions}));
    }
    NewNotice {
        dedupe_key: key,
        kind: kind.to_owned(),
        recipient: row.department_code.clone(),
        body_zh: format!(
            "{}\n\n截止时间：{due}（北京时间）\n\n未报送：\n{}",
            row.cycle_title,
            lines_zh.join("\n")
        ),
        body_en: format!(
            "Cycle {}; due {due} (Asia/Shanghai).\n\nNot reported:\n{}",
            row.cycle_id,
            lines_en.join("\n")
        ),
        title_zh,
        title_en,
        payload: serde_json::json!({
            "cycle": row.cycle_id,
            "department": row.department_code,
            "subject": row.subject,
            "period": row.period,
            "due_micros": row.due_micros,
            "days": days,
            "missing": items,
        }),
        digest_of: None,
    }
}

/// The regions the notifier scores and warns for: the city and the counties right below it.
pub(crate) fn regions_scored(n: &Notifier) -> Vec<String> {
    let org = n.org();
    let city = org.city.code.clone();
    let mut regions = vec![city.clone()];
    regions.extend(
        org.city
            .regions
            .iter()
            .filter(|r| r.parent.as_deref() == Some(city.as_str()))
            .map(|r| r.code.clone()),
    );
    regions
}

/// Basic indicators that turned FAIL since the last pass, for the (region, period) pairs
/// `changed` reaches among the cycle periods × (city + counties); returns how many notices were
/// enqueued and the pairs to try again (their outcomes could not be had).
pub async fn basic_failures(
    n: &Notifier,
    now: i64,
    changed: &Changed,
) -> Result<(u64, Changed), NotifyError> {
    let mut retry = Changed::default();
    let Some(source) = n.outcomes().cloned() else {
        return Ok((0, retry));
    };
    if changed.is_empty() {
        return Ok((0, retry));
    }
    let periods: Vec<String> = store::cycle_periods(n.db())
        .await?
        .into_iter()
        .filter(|p| p.parse::<Period>().is_ok())
        .take(MAX_OUTCOME_PERIODS)
        .collect();
    let regions = regions_scored(n);
    let mut enqueued = 0;
    for (region, period) in changed.select(&regions, &periods) {
        let (region, period) = (&region, &period);
        let outcomes = match source.basic_outcomes(region, period).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, %region, %period, "basic outcomes unavailable; next pass retries");
                retry.record_pair(region, period);
                continue;
            }
        };
        let last: HashMap<String, (String, i64)> = store::outcomes(n.db(), region, period)
            .await?
            .into_iter()
            .map(|(i, o, t)| (i, (o, t)))
            .collect();
        for o in outcomes {
            let previous = last.get(&o.indicator);
            if previous.is_some_and(|(p, _)| p == o.outcome.as_str()) {
                continue;
            }
            if o.outcome == Outcome::Fail {
                // Keyed by the previous outcome's time: the same transition is one notice
                // even if the pass stops before recording the new outcome.
                let since = previous.map_or(0, |(_, t)| *t);
                let was = previous.map_or("NONE", |(p, _)| p.as_str());
                let name = region_name(n, region);
                let notice = NewNotice {
                    dedupe_key: format!("basic-fail:{region}:{period}:{}:{since}", o.indicator),
                    kind: "basic_fail".to_owned(),
                    recipient: CREDIT_OFFICE.to_owned(),
                    title_zh: format!(
                        "【否决风险】{name} {period}：基础性指标 {} {} 未达标",
                        o.indicator, o.title
                    ),
                    body_zh: format!(
                        "基础性指标 {} {} 在 {name}（{region}）{period} 的结果由 {was} 变为 FAIL（一票否决）。请查看计分卡及其差距说明。",
                        o.indicator, o.title
                    ),
                    title_en: format!(
                        "Veto risk: basic indicator {} fails for {region} {period}",
                        o.indicator
                    ),
                    body_en: format!(
                        "Basic indicator {} went from {was} to FAIL for region {region}, period {period} (one-vote veto). See the scorecard and its gaps.",
                        o.indicator
                    ),
                    payload: serde_json::json!({
                        "region": region,
                        "period": period,
                        "indicator": o.indicator,
                        "previous": was,
                        "outcome": "FAIL",
                    }),
                    digest_of: None,
                };
                if n.enqueue(notice).await?.is_some() {
                    enqueued += 1;
                }
            }
            store::set_outcome(
                n.db(),
                region,
                period,
                &o.indicator,
                o.outcome.as_str(),
                now,
            )
            .await?;
        }
    }
    Ok((enqueued, retry))
}

/// The day's digests, from `digest_hour` on; returns how many were enqueued.
pub async fn digests(n: &Notifier, now: i64) -> Result<u64, NotifyError> {
    if shanghai_hour(now) < n.settings().digest_hour {
        return Ok(0);
    }
    let day = shanghai_day(now);
    let mut enqueued = 0;
    for (subscription, recipient) in store::digest_groups(n.db(), MAX_DIGESTS_PER_PASS).await? {
        let key = format!("digest:{subscription}:{recipient}:{day}");
        if store::notice_exists(n.db(), &key).await? {
            continue;
        }
        let items =
            store::digest_notices(n.db(), subscription, &recipient, MAX_DIGEST_ITEMS).await?;
        if items.is_empty() {
            continue;
        }
        let who = department_name(n, &recipient);
        let zh: Vec<String> = items.iter().map(|i| format!("- {}", i.title_zh)).collect();
        let en: Vec<String> = items.iter().map(|i| format!("- {}", i.title_en)).collect();
        let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
        let notice = NewNotice {
            dedupe_key: key,
            kind: "digest".to_owned(),
            recipient: recipient.clone(),
            title_zh: format!("【每日汇总】{who} {day}：{} 条通知", items.len()),
            body_zh: zh.join("\n"),
            title_en: format!(
                "Daily digest for {recipient}, {day}: {} notices",
                items.len()
            ),
            body_en: en.join("\n"),
            payload: serde_json::json!({
                "day": day,
                "subscription": format!("subscriptions/{subscription}"),
                "notices": ids,
            }),
            digest_of: Some((subscription, ids.clone())),
        };
        if n.enqueue(notice).await?.is_some() {
            enqueued += 1;
        }
    }
    Ok(enqueued)
}
