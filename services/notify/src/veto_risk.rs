//! Veto-risk notices: the early warning feeds the reminders (issue 13, point 6).
//!
//! For every review cycle whose review date is ahead (at most `MAX_WARNING_CYCLES`, nearest
//! review first), once per Asia/Shanghai day per cycle on the scheduler's passes (and on every
//! RunNotifierPass), the early warning of the city and each county (`WarningSource`, in the
//! application GetVetoRiskWarnings' reading and projection) is computed over the cycle's months
//! up to the current one (3 to 36 months), projected to the cycle's review date, by the cycle's
//! rule version when it is loaded. For every basic indicator at risk (a condition failing now
//! or projected to fail by the review date):
//!
//! - each department named at risk is told, once per (cycle, indicator, region, department,
//!   month): the departments with a shortfall, or, when none has one yet (the trend alone is
//!   at risk), every department behind the figure; a group is its members (at a county, those
//!   of its government and the city's departments);
//! - the credit office gets one summary per (cycle, region, Shanghai day) of the indicators at
//!   risk.
//!
//! Dedupe keys make a repeated pass, or a pass after a restart, enqueue nothing new; the
//! in-memory "done today" only saves the work.

use std::collections::BTreeMap;

use citycredit_core::city::City;
use citycredit_core::period::Period;

use crate::error::NotifyError;
use crate::producers::{department_name, region_name, regions_scored};
use crate::store::{self, CycleRow, NewNotice};
use crate::{CREDIT_OFFICE, Notifier, shanghai_day};

/// Most review cycles one pass warns for (the nearest reviews first).
pub const MAX_WARNING_CYCLES: usize = 8;
/// The window of months read: at least the fewest a trend needs, at most the early warning's
/// maximum.
const MIN_WINDOW_MONTHS: u32 = 3;
const MAX_WINDOW_MONTHS: u32 = 36;

/// What the early warning is asked for one region of one cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarningQuery {
    pub region: String,
    /// The cycle's review date, YYYY-MM-DD.
    pub review_date: String,
    /// The last month of the window.
    pub last_month: Period,
    /// Months in the window, ending with `last_month`.
    pub history_months: u32,
    /// The cycle's rule version ("" or one not loaded: the primary catalog).
    pub rule_version: String,
}

/// One condition of a basic indicator, as the early warning judged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VetoRisk {
    pub indicator: String,
    pub condition: String,
    /// Failing now, or projected to fail by the review date.
    pub at_risk: bool,
    pub current_failing: bool,
    /// As the early warning writes them: the threshold, the latest figure and its month, the
    /// projection ("" without a trend).
    pub threshold: String,
    pub current: String,
    pub current_period: String,
    pub projected: String,
    /// What the shortfalls count.
    pub shortfall_metric: String,
    /// The warning in words.
    pub description_zh: String,
    pub description_en: String,
    pub departments: Vec<DepartmentShortfall>,
}

/// A department (or group) behind a warning's figure and what it is short.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepartmentShortfall {
    pub code: String,
    /// "0" when its own figures meet the threshold.
    pub shortfall: String,
    pub description_zh: String,
    pub description_en: String,
}

/// Where the early warnings come from: in the application, the scoring service in process.
#[tonic::async_trait]
pub trait WarningSource: Send + Sync {
    async fn veto_risks(&self, query: &WarningQuery) -> Result<Vec<VetoRisk>, String>;
}

/// The window for a cycle this month: (last month, months), or None when the cycle's periods
/// start after `now_month` (nothing to read yet) or none can be read.
pub fn window(periods: &str, now_month: Period) -> Option<(Period, u32)> {
    let parsed: Vec<Period> = periods
        .lines()
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    let first = parsed.iter().map(Period::start_month_index).min()?;
    let covered = parsed.iter().map(Period::end_month_index).max()?;
    let last = covered.min(now_month.start_month_index());
    if last < first {
        return None;
    }
    let months = (last - first + 1).clamp(MIN_WINDOW_MONTHS, MAX_WINDOW_MONTHS);
    let month = Period::Month(
        u16::try_from(last / 12).ok()?,
        u8::try_from(last % 12 + 1).ok()?,
    );
    Some((month, months))
}

/// Who is told of one warning at `region`: the departments with a shortfall, else all named;
/// groups as their members (at a county, its own government's and the city's departments).
pub fn recipients(city: &City, region: &str, risk: &VetoRisk) -> Vec<String> {
    let short: Vec<&DepartmentShortfall> = risk
        .departments
        .iter()
        .filter(|d| d.shortfall != "0")
        .collect();
    let named: Vec<&DepartmentShortfall> = if short.is_empty() {
        risk.departments.iter().collect()
    } else {
        short
    };
    let mut out: Vec<String> = Vec::new();
    for d in named {
        let members: Vec<String> = match city.group(&d.code) {
            None => vec![d.code.clone()],
            Some(g) => g
                .members
                .iter()
                .filter(|m| {
                    city.department(m)
                        .and_then(|dep| dep.governs.as_deref())
                        .is_none_or(|governed| city.is_within(governed, region))
                })
                .cloned()
                .collect(),
        };
        for m in members {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

/// The veto-risk producer; returns how many notices were enqueued. `force`: every cycle now,
/// whether or not it was warned for today.
pub async fn veto_risks(n: &Notifier, now: i64, force: bool) -> Result<u64, NotifyError> {
    let Some(source) = n.warnings().cloned() else {
        return Ok(0);
    };
    let today = shanghai_day(now);
    let Ok(this_month) = today.get(..7).unwrap_or_default().parse::<Period>() else {
        return Ok(0);
    };
    let cycles = store::cycles_reviewed_after(n.db(), &today, MAX_WARNING_CYCLES).await?;
    n.forget_warned_except(&cycles);
    let regions = regions_scored(n);
    let mut enqueued = 0;
    for cycle in &cycles {
        if !force && n.warned_on(&cycle.id, &today) {
            continue;
        }
        let Some((last_month, history_months)) = window(&cycle.periods, this_month) else {
            n.set_warned(&cycle.id, &today);
            continue;
        };
        let mut complete = true;
        for region in &regions {
            let query = WarningQuery {
                region: region.clone(),
                review_date: cycle.review_date.clone(),
                last_month,
                history_months,
                rule_version: cycle.rule_version.clone(),
            };
            let risks = match source.veto_risks(&query).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, cycle = %cycle.id, %region, "early warning unavailable; next pass retries");
                    complete = false;
                    continue;
                }
            };
            let at_risk: Vec<&VetoRisk> = risks.iter().filter(|r| r.at_risk).collect();
            if at_risk.is_empty() {
                continue;
            }
            for notice in department_notices(n, cycle, region, &at_risk, this_month) {
                if n.enqueue(notice).await?.is_some() {
                    enqueued += 1;
                }
            }
            if n.enqueue(office_summary(n, cycle, region, &at_risk, &today))
                .await?
                .is_some()
            {
                enqueued += 1;
            }
        }
        if complete {
            n.set_warned(&cycle.id, &today);
        }
    }
    Ok(enqueued)
}

/// A condition at risk with the line of the department told (None: not named in it).
type ConditionFor<'a> = (&'a VetoRisk, Option<&'a DepartmentShortfall>);

/// One notice per (indicator, department) at risk, its conditions together.
fn department_notices(
    n: &Notifier,
    cycle: &CycleRow,
    region: &str,
    at_risk: &[&VetoRisk],
    month: Period,
) -> Vec<NewNotice> {
    let org = n.org();
    // (indicator, department) -> the conditions at risk with the department's own line.
    let mut grouped: BTreeMap<(String, String), Vec<ConditionFor<'_>>> = BTreeMap::new();
    for risk in at_risk {
        for dept in recipients(&org.city, region, risk) {
            let own = risk.departments.iter().find(|d| d.code == dept);
            grouped
                .entry((risk.indicator.clone(), dept))
                .or_default()
                .push((risk, own));
        }
    }
    let place = region_name(n, region);
    grouped
        .into_iter()
        .map(|((indicator, dept), conditions)| {
            let title = indicator_title(n, &indicator);
            let who = department_name(n, &dept);
            let mut zh = Vec::new();
            let mut en = Vec::new();
            let mut facts = Vec::new();
            for (risk, own) in &conditions {
                zh.push(format!("- {}", risk.description_zh));
                en.push(format!("- {}", risk.description_en));
                facts.push(serde_json::json!({
                    "condition": risk.condition,
                    "threshold": risk.threshold,
                    "current": risk.current,
                    "current_period": risk.current_period,
                    "projected": risk.projected,
                    "current_failing": risk.current_failing,
                    "shortfall": own.map_or("0", |d| d.shortfall.as_str()),
                    "shortfall_metric": risk.shortfall_metric,
                }));
            }
            // The department's own line from the first condition that names it with a
            // shortfall; otherwise it is told of the trend.
            let line = conditions
                .iter()
                .find_map(|(_, own)| own.filter(|d| d.shortfall != "0"));
            let (short_zh, short_en) = match line {
                Some(d) => (d.description_zh.clone(), d.description_en.clone()),
                None => (
                    format!("{who}：目前达标，但按趋势预计到评审日将低于阈值"),
                    format!("{dept} meets the threshold now but is trending below it by the review date"),
                ),
            };
            NewNotice {
                dedupe_key: format!(
                    "veto-risk:{}:{indicator}:{region}:{dept}:{month}",
                    cycle.id
                ),
                kind: "veto_risk".to_owned(),
                recipient: dept.clone(),
                title_zh: format!(
                    "【否决预警】{place} {indicator} {title}：预计到评审日（{}）未达标；{short_zh}",
                    cycle.review_date
                ),
                body_zh: format!(
                    "{}（评审日 {}）\n\n{place}（{region}）基础性指标 {indicator} {title} 有一票否决风险：\n{}\n\n{short_zh}。",
                    cycle.title,
                    cycle.review_date,
                    zh.join("\n")
                ),
                title_en: format!(
                    "Veto risk: {indicator} for {region} short of its threshold by the review date ({}); {short_en}",
                    cycle.review_date
                ),
                body_en: format!(
                    "Cycle {} (review on {}).\n\nBasic indicator {indicator} for region {region} is at risk of a veto:\n{}\n\n{short_en}.",
                    cycle.id,
                    cycle.review_date,
                    en.join("\n")
                ),
                payload: serde_json::json!({
                    "cycle": cycle.id,
                    "review_date": cycle.review_date,
                    "region": region,
                    "indicator": indicator,
                    "department": dept,
                    "month": month.to_string(),
                    "conditions": facts,
                }),
                digest_of: None,
            }
        })
        .collect()
}

/// The credit office's summary of a region's indicators at risk today.
fn office_summary(
    n: &Notifier,
    cycle: &CycleRow,
    region: &str,
    at_risk: &[&VetoRisk],
    day: &str,
) -> NewNotice {
    let place = region_name(n, region);
    let mut indicators: Vec<&str> = at_risk.iter().map(|r| r.indicator.as_str()).collect();
    indicators.dedup();
    let count = indicators.len();
    let zh: Vec<String> = at_risk
        .iter()
        .map(|r| format!("- {}", r.description_zh))
        .collect();
    let en: Vec<String> = at_risk
        .iter()
        .map(|r| format!("- {}", r.description_en))
        .collect();
    NewNotice {
        dedupe_key: format!("veto-risk-summary:{}:{region}:{day}", cycle.id),
        kind: "veto_risk_summary".to_owned(),
        recipient: CREDIT_OFFICE.to_owned(),
        title_zh: format!(
            "【否决预警汇总】{place} {day}：{count} 项基础性指标预计到评审日（{}）未达标（{}）",
            cycle.review_date,
            indicators.join("、")
        ),
        body_zh: format!(
            "{}（评审日 {}）\n\n{place}（{region}）：\n{}",
            cycle.title,
            cycle.review_date,
            zh.join("\n")
        ),
        title_en: format!(
            "Veto risk summary for {region}, {day}: {count} basic indicators short by the review date ({}): {}",
            cycle.review_date,
            indicators.join(", ")
        ),
        body_en: format!(
            "Cycle {} (review on {}), region {region}:\n{}",
            cycle.id,
            cycle.review_date,
            en.join("\n")
        ),
        payload: serde_json::json!({
            "cycle": cycle.id,
            "review_date": cycle.review_date,
            "region": region,
            "day": day,
            "indicators": indicators,
        }),
        digest_of: None,
    }
}

fn indicator_title(n: &Notifier, code: &str) -> String {
    n.catalog()
        .indicator(code)
        .map_or_else(String::new, |i| i.title.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use citycredit_core::catalog::Catalog;

    #[test]
    fn the_window_is_the_cycles_months_up_to_now() {
        let year = "2026\n2026-Q1\n2026-Q2\n2026-Q3\n2026-Q4";
        assert_eq!(
            window(year, Period::Month(2026, 7)),
            Some((Period::Month(2026, 7), 7))
        );
        // After the cycle's periods: its last month.
        assert_eq!(
            window(year, Period::Month(2027, 2)),
            Some((Period::Month(2026, 12), 12))
        );
        // Early in the cycle: at least three months, reaching before it.
        assert_eq!(
            window(year, Period::Month(2026, 1)),
            Some((Period::Month(2026, 1), 3))
        );
        assert_eq!(window(year, Period::Month(2025, 12)), None, "not begun");
        assert_eq!(window("", Period::Month(2026, 1)), None);
        assert_eq!(
            window("2024\n2025\n2026", Period::Month(2026, 12)),
            Some((Period::Month(2026, 12), 36))
        );
    }

    fn risk(departments: &[(&str, &str)]) -> VetoRisk {
        VetoRisk {
            indicator: "B05".into(),
            condition: "1".into(),
            at_risk: true,
            current_failing: true,
            threshold: "1".into(),
            current: "0.97".into(),
            current_period: "2026-06".into(),
            projected: "0.94".into(),
            shortfall_metric: "m".into(),
            description_zh: String::new(),
            description_en: String::new(),
            departments: departments
                .iter()
                .map(|(code, short)| DepartmentShortfall {
                    code: (*code).into(),
                    shortfall: (*short).into(),
                    description_zh: String::new(),
                    description_en: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn those_short_are_told_else_everyone_behind_the_figure() {
        let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        let city = City::builtin(&catalog).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            recipients(&city, "330800", &risk(&[("samr", "0"), ("housing", "341")])),
            vec!["housing".to_owned()]
        );
        assert_eq!(
            recipients(&city, "330800", &risk(&[("samr", "0"), ("housing", "0")])),
            vec!["samr".to_owned(), "housing".to_owned()]
        );
        // A group of county governments: at a county, only its own government.
        let Some(group) = city.groups.iter().find(|g| {
            g.members.iter().any(|m| {
                city.department(m)
                    .is_some_and(|d| d.governs.as_deref() == Some("330802"))
            })
        }) else {
            panic!("no group with the 柯城区 government");
        };
        let at_county = recipients(&city, "330802", &risk(&[(&group.code, "5")]));
        assert!(!at_county.is_empty());
        for m in &at_county {
            let governs = city.department(m).and_then(|d| d.governs.clone());
            assert!(
                governs.is_none() || governs.as_deref() == Some("330802"),
                "{m} governs {governs:?}"
            );
        }
        let at_city = recipients(&city, "330800", &risk(&[(&group.code, "5")]));
        assert_eq!(at_city.len(), group.members.len());
    }
}
