//! GetVetoRiskWarnings, the veto-risk early warning (issue 13, point 6): for each condition of a
//! basic indicator that puts a threshold on a number, the figure month by month from the same
//! aggregates the scorecard reads (each `YYYY-MM` period, as of the instant asked), a
//! least-squares trend projected to the review date's month (`citycredit_core::projection`),
//! whether it is at risk, and what the departments behind the figure are short now.
//!
//! A month counts as a point when a value of one of the condition's metrics was reported for
//! that month itself: a LEVEL value carried forward unchanged is not a new observation. A ratio
//! whose denominator is 0 has no figure that month.

use std::collections::BTreeMap;

use citycredit::aggregates::Aggregates;
use citycredit::localize::Locale;
use citycredit::proto::v1 as pb;
use citycredit::status::Violation;
use citycredit_core::catalog::{Catalog, Condition, IndicatorKind, Predicate};
use citycredit_core::city::City;
use citycredit_core::numbers::{Num, Precision};
use citycredit_core::period::Period;
use citycredit_core::projection::{self, MIN_POINTS, Point, Projection};
use tonic::Status;

use crate::error::ScoringError;
use crate::scoring_service::{ScoringApi, as_of, identifier};

/// Months of history read when the request says 0.
pub const DEFAULT_HISTORY_MONTHS: u32 = 12;
/// The fewest months of history a request may ask for (a trend needs `MIN_POINTS`).
pub const MIN_HISTORY_MONTHS: u32 = 3;
/// The most months of history one request reads (one aggregate read per month).
pub const MAX_HISTORY_MONTHS: u32 = 36;
/// Asia/Shanghai (UTC+8, no daylight saving): the month "now" falls in.
const SHANGHAI_OFFSET_MICROS: i64 = 8 * 3600 * 1_000_000;

/// A threshold on a number, as the early warning reads a condition.
enum Threshold<'a> {
    /// ratio(numerator, denominator) >= t, or < t when `ceiling`.
    Ratio {
        numerator: &'a str,
        denominator: &'a str,
        t: &'a Num,
        ceiling: bool,
    },
    /// metric >= t (`AtLeast`), > t (`Above`) or <= t (`AtMost`).
    Level {
        metric: &'a str,
        t: &'a Num,
        kind: LevelKind,
    },
}

#[derive(Clone, Copy)]
enum LevelKind {
    AtLeast,
    Above,
    AtMost,
}

impl<'a> Threshold<'a> {
    fn of(p: &'a Predicate) -> Option<Threshold<'a>> {
        Some(match p {
            Predicate::RatioAtLeast {
                numerator,
                denominator,
                threshold,
            } => Threshold::Ratio {
                numerator,
                denominator,
                t: threshold,
                ceiling: false,
            },
            Predicate::RatioBelow {
                numerator,
                denominator,
                threshold,
            } => Threshold::Ratio {
                numerator,
                denominator,
                t: threshold,
                ceiling: true,
            },
            Predicate::AtLeast { metric, threshold } => Threshold::Level {
                metric,
                t: threshold,
                kind: LevelKind::AtLeast,
            },
            Predicate::Above { metric, threshold } => Threshold::Level {
                metric,
                t: threshold,
                kind: LevelKind::Above,
            },
            Predicate::AtMost { metric, threshold } => Threshold::Level {
                metric,
                t: threshold,
                kind: LevelKind::AtMost,
            },
            Predicate::IsTrue { .. } | Predicate::Decreased { .. } => return None,
        })
    }

    fn t(&self) -> &Num {
        match self {
            Threshold::Ratio { t, .. } | Threshold::Level { t, .. } => t,
        }
    }

    fn metrics(&self) -> Vec<&'a str> {
        match self {
            Threshold::Ratio {
                numerator,
                denominator,
                ..
            } => vec![numerator, denominator],
            Threshold::Level { metric, .. } => vec![metric],
        }
    }

    /// The metric a shortfall counts.
    fn shortfall_metric(&self) -> &'a str {
        match self {
            Threshold::Ratio { numerator, .. } => numerator,
            Threshold::Level { metric, .. } => metric,
        }
    }

    fn is_ratio(&self) -> bool {
        matches!(self, Threshold::Ratio { .. })
    }

    /// Whether a figure meets the threshold.
    fn meets(&self, v: &Num) -> bool {
        match self {
            Threshold::Ratio { t, ceiling, .. } => {
                if *ceiling {
                    v < *t
                } else {
                    v >= *t
                }
            }
            Threshold::Level { t, kind, .. } => match kind {
                LevelKind::AtLeast => v >= *t,
                LevelKind::Above => v > *t,
                LevelKind::AtMost => v <= *t,
            },
        }
    }

    /// The figure from one month's (or one department's) numbers; None when not computable.
    fn figure(&self, number: impl Fn(&str) -> Option<Num>) -> Option<Num> {
        match self {
            Threshold::Ratio {
                numerator,
                denominator,
                ..
            } => {
                let d = number(denominator)?;
                if d.is_zero() {
                    return None;
                }
                Some(&number(numerator)? / &d)
            }
            Threshold::Level { metric, .. } => number(metric),
        }
    }

    /// How much the shortfall metric must change (up for a floor, down for a ceiling) for the
    /// numbers to meet the threshold at the current denominator; 0 when they do.
    fn shortfall(&self, number: impl Fn(&str) -> Option<Num>) -> Option<Num> {
        let zero = Num::zero();
        let need = match self {
            Threshold::Ratio {
                numerator,
                denominator,
                t,
                ceiling,
            } => {
                let n = number(numerator).unwrap_or_else(Num::zero);
                let d = number(denominator)?;
                let bound = (*t * &d).ceil();
                if *ceiling {
                    // The largest count strictly below t·d is ⌈t·d⌉ − 1.
                    &n - &(&bound - &Num::one())
                } else {
                    &bound - &n
                }
            }
            Threshold::Level { metric, t, kind } => {
                let v = number(metric)?;
                match kind {
                    LevelKind::AtLeast => &t.ceil() - &v,
                    LevelKind::Above => &(&t.floor() + &Num::one()) - &v,
                    LevelKind::AtMost => &v - &t.floor(),
                }
            }
        };
        Some(need.max(zero))
    }

    /// A figure as written out: ratios to 6 digits, other numbers exactly.
    fn written(&self, v: &Num) -> String {
        if self.is_ratio() {
            v.rounded(Precision::Ratio)
        } else {
            v.to_plain()
        }
    }

    /// A figure as a person reads it: ratios in percent (2 digits), other numbers exactly.
    fn spoken(&self, v: &Num) -> String {
        if self.is_ratio() {
            format!("{}%", (v * &Num::from_int(100)).rounded(Precision::Score))
        } else {
            v.to_plain()
        }
    }
}

/// (year, month) of an instant in Asia/Shanghai.
pub fn shanghai_month(micros: i64) -> Period {
    let days = (micros + SHANGHAI_OFFSET_MICROS).div_euclid(86_400_000_000);
    let (y, m, _) = civil_from_days(days);
    Period::Month(
        u16::try_from(y).unwrap_or(u16::MAX),
        u8::try_from(m).unwrap_or(1),
    )
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// The month of a date "YYYY-MM-DD" (a real calendar day, year 1949..=2999), or why not.
pub fn review_month(date: &str) -> Result<Period, String> {
    let bad = || format!("`{date}` is not a date YYYY-MM-DD");
    let b = date.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let s = date.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let (Some(y), Some(m), Some(d)) = (digits(0..4), digits(5..7), digits(8..10)) else {
        return Err(bad());
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if !(1949..=2999).contains(&y) || d == 0 || d > days {
        return Err(bad());
    }
    Ok(Period::Month(
        u16::try_from(y).map_err(|_| bad())?,
        u8::try_from(m).map_err(|_| bad())?,
    ))
}

fn month_from_index(i: u32) -> Period {
    Period::Month(
        u16::try_from(i / 12).unwrap_or(u16::MAX),
        u8::try_from(i % 12 + 1).unwrap_or(1),
    )
}

/// The method in words.
pub fn method(locale: Locale) -> &'static str {
    match locale {
        Locale::ZhCn => {
            "对月度数值做普通最小二乘线性拟合（x 为月份，y 为阈值所比较的数值），全程精确有理数运算；\
             外推至评审日期所在月份；± 为该月一个新月度数值的预测标准误 \
             s·√(1 + 1/n + (x₀ − x̄)²/Sxx)（s 为残差标准误），开方精确到小数点后 12 位（截断）；\
             当月报送了该条件所用指标之一的月份才计为一个点；有数据的月份少于 3 个时不给出趋势。"
        }
        Locale::En => {
            "Ordinary least squares on the monthly figures (x = the month, y = the figure the \
             threshold applies to), in exact rationals; projected to the review date's month; \
             ± is the standard error of a new monthly figure there, s·√(1 + 1/n + (x₀ − x̄)²/Sxx) \
             with s the residual standard error, roots truncated at 12 fraction digits. A month \
             is a point when a value of one of the condition's metrics was reported for that \
             month itself; with fewer than 3 such months there is no trend."
        }
    }
}

/// The early warnings for a request (authorized by the caller).
pub async fn warnings(
    api: &ScoringApi,
    req: pb::GetVetoRiskWarningsRequest,
    locale: Locale,
) -> Result<pb::GetVetoRiskWarningsResponse, Status> {
    let at = as_of(req.as_of.as_ref())?;
    let org = api.org();
    let region = if req.region_code.is_empty() {
        org.city.code.clone()
    } else {
        req.region_code.clone()
    };
    let mut v = Vec::new();
    let mut review = None;
    if identifier("review_date", &req.review_date, &mut v) && !req.review_date.is_empty() {
        match review_month(&req.review_date) {
            Ok(m) => review = Some(m),
            Err(why) => v.push(Violation::new("review_date", why)),
        }
    }
    let history = match req.history_months {
        0 => DEFAULT_HISTORY_MONTHS,
        n if (MIN_HISTORY_MONTHS..=MAX_HISTORY_MONTHS).contains(&n) => n,
        _ => {
            v.push(Violation::new(
                "history_months",
                format!("{MIN_HISTORY_MONTHS} to {MAX_HISTORY_MONTHS}, or 0 for {DEFAULT_HISTORY_MONTHS}"),
            ));
            DEFAULT_HISTORY_MONTHS
        }
    };
    let mut last = None;
    if identifier("last_month", &req.last_month, &mut v) {
        if req.last_month.is_empty() {
            last = Some(shanghai_month(
                at.unwrap_or_else(citycredit_core::clock::now_micros),
            ));
        } else {
            match req.last_month.parse::<Period>() {
                Ok(p @ Period::Month(..)) => last = Some(p),
                _ => v.push(Violation::new("last_month", "a month, YYYY-MM")),
            }
        }
    }
    if !v.is_empty() {
        return Err(ScoringError::Invalid(v).into());
    }
    let Some(last) = last else {
        return Err(ScoringError::invalid("last_month", "a month, YYYY-MM").into());
    };
    api.check_region_period(&region, &last.to_string())?;
    // The cycle covering the last month gives the review date and the rule version when the
    // request names neither.
    let resolved = api
        .resolve("rule_version", &req.rule_version, &last.to_string())
        .await?;
    let catalog = resolved.catalog;
    let mut review_date = req.review_date.clone();
    let review = match review {
        Some(r) => r,
        None if !resolved.mark.review_date.is_empty() => {
            review_date = resolved.mark.review_date.clone();
            review_month(&review_date).map_err(|why| {
                Status::from(ScoringError::invalid(
                    "review_date",
                    format!("cycle {}'s review date: {why}", resolved.mark.cycle_id),
                ))
            })?
        }
        None => {
            return Err(ScoringError::invalid(
                "review_date",
                format!("required (YYYY-MM-DD): no review cycle covers {last} to take it from"),
            )
            .into());
        }
    };
    if review.start_month_index() < last.start_month_index() {
        return Err(ScoringError::invalid(
            "review_date",
            format!("the review date's month {review} is before the last month of history {last}"),
        )
        .into());
    }

    let (months, monthly) = read_months(api, &region, last, history, at).await?;
    let as_of_micros = monthly
        .last()
        .map(|(_, a)| a.as_of_micros)
        .unwrap_or_default();

    let mut out = each_condition(&catalog, |code, c, th| {
        warning(
            &catalog,
            &org.city,
            code,
            &c.label,
            &c.predicate.summary(),
            th,
            &monthly,
            review,
            locale,
        )
    });
    // At-risk first, catalog order kept within each.
    out.sort_by_key(|w| !w.at_risk);
    Ok(pb::GetVetoRiskWarningsResponse {
        region_code: region,
        review_date,
        months: months.iter().map(ToString::to_string).collect(),
        warnings: out,
        method: method(locale).to_owned(),
        rule_version: catalog.version.clone(),
        as_of: Some(citycredit::wire::timestamp(as_of_micros)),
        cycle_id: resolved.mark.cycle_id,
    })
}

/// A month's number for a metric.
fn number(a: &Aggregates, metric: &str) -> Option<Num> {
    a.values.number(metric).cloned()
}

/// Each department's own numbers for the metrics, from the submissions behind the figures.
fn by_department(a: &Aggregates, metrics: &[&str]) -> BTreeMap<String, BTreeMap<String, Num>> {
    use pb::metric_value::Value;
    let mut out: BTreeMap<String, BTreeMap<String, Num>> = BTreeMap::new();
    for m in metrics {
        for s in a.sources.get(*m).into_iter().flat_map(|s| s.iter()) {
            if s.department.is_empty() {
                continue;
            }
            let Some(Value::Number(text)) = s.value.value.as_ref() else {
                continue;
            };
            let Ok(n) = Num::parse_decimal(text) else {
                continue;
            };
            let slot = out
                .entry(s.department.clone())
                .or_default()
                .entry((*m).to_owned())
                .or_insert_with(Num::zero);
            *slot = &*slot + &n;
        }
    }
    out
}

#[allow(
    clippy::too_many_arguments,
    reason = "one condition's parts and the months read, passed once"
)]
fn warning(
    catalog: &Catalog,
    city: &City,
    code: &str,
    label: &str,
    rule: &str,
    th: &Threshold<'_>,
    monthly: &[(Period, Aggregates)],
    review: Period,
    locale: Locale,
) -> Option<pb::VetoRiskWarning> {
    let metrics = th.metrics();
    let mut points = Vec::new();
    let mut history = Vec::new();
    let mut latest: Option<(&Period, &Aggregates, Num)> = None;
    for (month, a) in monthly {
        let name = month.to_string();
        let own = metrics.iter().any(|m| {
            a.sources
                .get(*m)
                .is_some_and(|s| s.iter().any(|r| r.period == name))
        });
        if !own {
            continue;
        }
        let Some(y) = th.figure(|m| number(a, m)) else {
            continue;
        };
        points.push(Point {
            x: i64::from(month.start_month_index()),
            y: y.clone(),
        });
        history.push(pb::MonthlyFigure {
            period: name,
            value: th.written(&y),
        });
        latest = Some((month, a, y));
    }
    let (latest_month, latest_aggregates, current) = latest?;
    let current_failing = !th.meets(&current);
    let projection = projection::least_squares(&points, i64::from(review.start_month_index()));
    let trend = match &projection {
        Projection::Trend(t) => Some(t),
        Projection::TooFewPoints { .. } => None,
    };
    let at_risk = current_failing || trend.is_some_and(|t| !th.meets(&t.projected));
    let shortfall = th
        .shortfall(|m| number(latest_aggregates, m))
        .unwrap_or_else(Num::zero);
    let metric = th.shortfall_metric();

    // The departments whose values make the figure, else the indicator's responsible parties.
    let own = by_department(latest_aggregates, &metrics);
    let departments: Vec<pb::DepartmentShortfall> = if own.is_empty() {
        city.parties(code)
            .iter()
            .map(|p| department(city, p, &shortfall, metric, catalog, locale))
            .collect()
    } else {
        own.iter()
            .map(|(dept, numbers)| {
                let short = if th.is_ratio() {
                    th.shortfall(|m| numbers.get(m).cloned())
                        .unwrap_or_else(Num::zero)
                } else {
                    shortfall.clone()
                };
                department(city, dept, &short, metric, catalog, locale)
            })
            .collect()
    };

    let threshold = th.t().to_plain();
    let projected = trend.map(|t| th.written(&t.projected)).unwrap_or_default();
    let description = describe(
        th,
        code,
        label,
        &current,
        latest_month,
        &projection,
        review,
        &departments,
        at_risk,
        locale,
    );
    Some(pb::VetoRiskWarning {
        indicator_code: code.to_owned(),
        condition: label.to_owned(),
        rule: rule.to_owned(),
        threshold,
        current: th.written(&current),
        current_period: latest_month.to_string(),
        current_failing,
        trend: if trend.is_some() {
            pb::TrendStatus::Fitted
        } else {
            pb::TrendStatus::TooFewPoints
        } as i32,
        points: u32::try_from(points.len()).unwrap_or(u32::MAX),
        projected,
        prediction_standard_error: trend
            .map(|t| th.written(&t.prediction_se))
            .unwrap_or_default(),
        residual_standard_error: trend
            .map(|t| th.written(&t.residual_se))
            .unwrap_or_default(),
        slope_per_month: trend
            .map(|t| {
                let s = t.slope.rounded(Precision::Ratio);
                if t.slope.is_negative() || t.slope.is_zero() {
                    s
                } else {
                    format!("+{s}")
                }
            })
            .unwrap_or_default(),
        at_risk,
        departments,
        shortfall: shortfall.to_plain(),
        shortfall_metric: metric.to_owned(),
        description,
        history,
    })
}

fn department(
    city: &City,
    code: &str,
    short: &Num,
    metric: &str,
    catalog: &Catalog,
    locale: Locale,
) -> pb::DepartmentShortfall {
    let name = city
        .department(code)
        .map(|d| d.name.clone())
        .or_else(|| city.group(code).map(|g| g.name.clone()))
        .unwrap_or_else(|| code.to_owned());
    let title = catalog
        .metric(metric)
        .map(|m| m.title.clone())
        .unwrap_or_default();
    let description = match (locale, short.is_zero()) {
        (Locale::ZhCn, true) => format!("{name}：已达标"),
        (Locale::ZhCn, false) => format!("{name} 还差 {}（{title}，{metric}）", short.to_plain()),
        (Locale::En, true) => format!("{name} meets the threshold"),
        (Locale::En, false) => format!("{name} is {} short ({metric})", short.to_plain()),
    };
    pb::DepartmentShortfall {
        department_code: code.to_owned(),
        display_name: name,
        shortfall: short.to_plain(),
        description,
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one sentence, passed once"
)]
fn describe(
    th: &Threshold<'_>,
    code: &str,
    label: &str,
    current: &Num,
    month: &Period,
    projection: &Projection,
    review: Period,
    departments: &[pb::DepartmentShortfall],
    at_risk: bool,
    locale: Locale,
) -> String {
    let t = th.spoken(th.t());
    let now = th.spoken(current);
    let short: Vec<&str> = departments
        .iter()
        .filter(|d| d.shortfall != "0")
        .map(|d| d.description.as_str())
        .collect();
    match locale {
        Locale::ZhCn => {
            let trend = match projection {
                Projection::Trend(tr) => format!(
                    "，按趋势预计 {review} 为 {} ± {}",
                    th.spoken(&tr.projected),
                    th.spoken(&tr.prediction_se)
                ),
                Projection::TooFewPoints { points } => format!(
                    "，仅 {points} 个月有数据，点数过少（至少 {MIN_POINTS} 个），不作趋势外推"
                ),
            };
            let verdict = if at_risk {
                format!("，未达阈值 {t}，有否决风险")
            } else {
                format!("，达到阈值 {t}")
            };
            let who = if short.is_empty() {
                String::new()
            } else {
                format!("；{}", short.join("；"))
            };
            format!("{code} 条件 {label}：{month} 为 {now}{trend}{verdict}{who}")
        }
        Locale::En => {
            let trend = match projection {
                Projection::Trend(tr) => format!(
                    ", trending to {} ± {} by {review}",
                    th.spoken(&tr.projected),
                    th.spoken(&tr.prediction_se)
                ),
                Projection::TooFewPoints { points } => format!(
                    "; too few points for a trend ({points} months with figures, {MIN_POINTS} needed)"
                ),
            };
            let verdict = if at_risk {
                format!(", short of the threshold {t}: at risk of a veto")
            } else {
                format!(", meeting the threshold {t}")
            };
            let who = if short.is_empty() {
                String::new()
            } else {
                format!("; {}", short.join("; "))
            };
            format!("{code} condition {label}: {now} in {month}{trend}{verdict}{who}")
        }
    }
}

/// One condition's warning in both languages, from one read of the months.
#[derive(Clone, Debug, PartialEq)]
pub struct BilingualWarning {
    pub zh: pb::VetoRiskWarning,
    pub en: pb::VetoRiskWarning,
}

/// A region's early warnings for the notifier (issue 13, point 6: "the warning feeds the
/// reminders"): the same reading and projection as GetVetoRiskWarnings, without a gRPC request
/// and its caller, as of now, in both languages from one read of the months. The window is
/// `history` months (clamped to `MIN_HISTORY_MONTHS..=MAX_HISTORY_MONTHS`) ending with `last`;
/// `rule_version` is used when it is loaded, else the primary catalog. Every condition with a
/// figure is answered, at risk or not, in catalog order.
pub async fn region_warnings(
    api: &ScoringApi,
    region: &str,
    review: Period,
    last: Period,
    history: u32,
    rule_version: &str,
) -> Result<Vec<BilingualWarning>, Status> {
    api.check_region_period(region, &last.to_string())?;
    let catalog = api
        .rule_version("rule_version", rule_version)
        .or_else(|_| api.rule_version("rule_version", ""))?;
    let org = api.org();
    let history = history.clamp(MIN_HISTORY_MONTHS, MAX_HISTORY_MONTHS);
    let (_, monthly) = read_months(api, region, last, history, None).await?;
    let out = each_condition(&catalog, |code, c, th| {
        let rule = c.predicate.summary();
        let in_locale = |locale| {
            warning(
                &catalog, &org.city, code, &c.label, &rule, th, &monthly, review, locale,
            )
        };
        match (in_locale(Locale::ZhCn), in_locale(Locale::En)) {
            (Some(zh), Some(en)) => Some(BilingualWarning { zh, en }),
            _ => None,
        }
    });
    Ok(out)
}

/// The `history` months ending with `last`, and each month's figures for `region` (as of
/// `at`, or now).
async fn read_months(
    api: &ScoringApi,
    region: &str,
    last: Period,
    history: u32,
    at: Option<i64>,
) -> Result<(Vec<Period>, Vec<(Period, Aggregates)>), Status> {
    let end = last.start_month_index();
    let months: Vec<Period> = (end.saturating_sub(history.saturating_sub(1))..=end)
        .map(month_from_index)
        .collect();
    let mut monthly = Vec::with_capacity(months.len());
    for m in &months {
        monthly.push((*m, api.aggregates(region, &m.to_string(), at).await?));
    }
    Ok((months, monthly))
}

/// `f` over every threshold condition of the catalog's basic indicators, in catalog order,
/// keeping what it answers.
fn each_condition<T>(
    catalog: &Catalog,
    mut f: impl FnMut(&str, &Condition, &Threshold) -> Option<T>,
) -> Vec<T> {
    let mut out = Vec::new();
    for ind in catalog
        .indicators
        .iter()
        .filter(|i| i.kind == IndicatorKind::Basic)
    {
        for c in &ind.conditions {
            if let Some(th) = Threshold::of(&c.predicate)
                && let Some(t) = f(&ind.code, c, &th)
            {
                out.push(t);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_of_instants_in_shanghai() {
        // 2026-11-30T16:00:00Z is 2026-12-01 00:00 in Shanghai.
        let micros = 1_796_054_400_000_000;
        assert_eq!(shanghai_month(micros), Period::Month(2026, 12));
        assert_eq!(shanghai_month(micros - 1), Period::Month(2026, 11));
        assert_eq!(shanghai_month(0), Period::Month(1970, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn review_dates_are_real_days() {
        assert_eq!(review_month("2026-12-15"), Ok(Period::Month(2026, 12)));
        assert_eq!(review_month("2028-02-29"), Ok(Period::Month(2028, 2)));
        for bad in [
            "2027-02-29",
            "2026-13-01",
            "2026-00-10",
            "2026-04-31",
            "2026-1-01",
            "26-01-01",
            "2026/01/01",
            "",
            "+026-01-01",
            "1900-01-01",
        ] {
            assert!(review_month(bad).is_err(), "{bad}");
        }
    }

    fn n(s: &str) -> Num {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn shortfalls_at_the_current_denominator() {
        let floor = Predicate::RatioAtLeast {
            numerator: "a".into(),
            denominator: "b".into(),
            threshold: Num::one(),
        };
        let th = Threshold::of(&floor).unwrap_or_else(|| panic!("a threshold"));
        let figures = |a: &str, b: &str| {
            let (a, b) = (n(a), n(b));
            move |m: &str| Some(if m == "a" { a.clone() } else { b.clone() })
        };
        assert_eq!(th.shortfall(figures("9659", "10000")), Some(n("341")));
        assert_eq!(th.shortfall(figures("10000", "10000")), Some(Num::zero()));
        let ceiling = Predicate::RatioBelow {
            numerator: "a".into(),
            denominator: "b".into(),
            threshold: Num::ratio(1, 10_000),
        };
        let th = Threshold::of(&ceiling).unwrap_or_else(|| panic!("a threshold"));
        // Below 1/10000 of 50000 is at most 4 duplicates: 7 must go.
        assert_eq!(th.shortfall(figures("11", "50000")), Some(n("7")));
        assert_eq!(th.shortfall(figures("4", "50000")), Some(Num::zero()));
        let rank = Predicate::AtMost {
            metric: "a".into(),
            threshold: Num::from_int(100),
        };
        let th = Threshold::of(&rank).unwrap_or_else(|| panic!("a threshold"));
        assert_eq!(th.shortfall(|_| Some(n("120"))), Some(n("20")));
        assert!(th.meets(&n("100")) && !th.meets(&n("101")));
    }
}
