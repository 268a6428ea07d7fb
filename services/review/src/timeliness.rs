//! `GetTimeliness`, `GetDepartmentAssessment` and `ListCycleEvents` (issue 13, point 4): the
//! reads of the review cycle that say who reported on time. The rules are pure, in
//! `citycredit_core::review::timeliness`; this module gathers their inputs (the cycle, the
//! expected reporters of rulebook section 9, the first accept times from
//! `citycredit_store::reported`, the returns from review) and scopes them to the caller: a
//! department principal sees only its own rows.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use citycredit::proto::v1 as pb;
use citycredit::status::{Violation, next_page_token, page};
use citycredit::wire::{bare, timestamp};
use citycredit_core::auth::{Denied, Principal, Role};
use citycredit_core::org::Org;
use citycredit_core::period::Period;
use citycredit_core::review::Cycle;
use citycredit_core::review::timeliness::{
    self, Assessment, Counts, DueBasis, Figure, Timeliness, reporting_periods,
};

use crate::error::ReviewError;
use crate::service::{ReviewApi, check_id, invalid_if_any};
use crate::store;

type Result<T> = std::result::Result<T, ReviewError>;
/// A handler's answer: a review error or a paging error, both already a status.
type Answer<T> = std::result::Result<T, tonic::Status>;

/// Timeliness rows: 500 by default, at most 5000 per page.
pub const ROWS_PAGE: (usize, usize) = (500, 5_000);
/// Cycle events: 100 by default, at most 1000 per page.
pub const CYCLE_EVENTS_PAGE: (usize, usize) = (100, 1_000);

fn state_pb(s: Timeliness) -> pb::TimelinessState {
    match s {
        Timeliness::OnTime => pb::TimelinessState::OnTime,
        Timeliness::Late => pb::TimelinessState::Late,
        Timeliness::MissingOverdue => pb::TimelinessState::MissingOverdue,
        Timeliness::NotYetDue => pb::TimelinessState::NotYetDue,
    }
}

fn basis_pb(b: DueBasis) -> pb::DueBasis {
    match b {
        DueBasis::MetricDeadline => pb::DueBasis::MetricDeadline,
        DueBasis::SubjectDeadline => pb::DueBasis::SubjectDeadline,
        DueBasis::DepartmentDeadline => pb::DueBasis::DepartmentDeadline,
        DueBasis::OnTimeDays => pb::DueBasis::OnTimeDays,
    }
}

fn count(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The department a caller may read: a department principal its own only (asking for another
/// is PERMISSION_DENIED); anyone else the one asked for, or every department (None).
fn scope(org: &Org, who: &Principal, asked: &str, field: &str) -> Result<Option<String>> {
    let mut v = Vec::new();
    check_id(field, asked, &mut v);
    invalid_if_any(v)?;
    let asked = bare(asked, "departments/");
    if who.role == Role::Department {
        let own = who.department.clone().unwrap_or_default();
        if asked.is_empty() || asked == own {
            return Ok(Some(own));
        }
        return Err(ReviewError::Denied(Denied {
            principal: who.to_string(),
            action: "read",
            metric: String::new(),
            region: String::new(),
            reason: format!(
                "a department reads only its own timeliness, not department `{asked}`'s"
            ),
        }));
    }
    if asked.is_empty() {
        return Ok(None);
    }
    if org.city.department(asked).is_none() {
        return Err(ReviewError::invalid(
            field,
            format!("unknown department `{asked}`"),
        ));
    }
    Ok(Some(asked.to_owned()))
}

/// `periods` and every period inside one of them, as text, once each.
fn reporting_texts(periods: &[Period]) -> Vec<String> {
    let texts: BTreeSet<String> = periods
        .iter()
        .flat_map(reporting_periods)
        .map(|p| p.to_string())
        .collect();
    texts.into_iter().collect()
}

impl ReviewApi {
    /// The figures of `periods` of `cycle`, for `department` (or every department) at regions
    /// within `region` (or all), decided at `now`.
    async fn figures(
        &self,
        cycle: &Cycle,
        periods: &[Period],
        department: Option<&str>,
        region: Option<&str>,
        now: i64,
    ) -> Result<BTreeMap<String, Vec<Figure>>> {
        let org = self.org();
        let texts = reporting_texts(periods);
        let mut first: HashMap<String, HashMap<(String, String, Period), i64>> = HashMap::new();
        for f in
            citycredit_store::reported::first_accepts(&self.review().db, department, &texts).await?
        {
            let Ok(p) = f.period.parse::<Period>() else {
                continue;
            };
            first
                .entry(f.department)
                .or_default()
                .insert((f.metric, f.region, p), f.accept_micros);
        }
        let none = HashMap::new();
        let mut out = BTreeMap::new();
        for d in &org.city.departments {
            if department.is_some_and(|x| x != d.code) {
                continue;
            }
            let expected: Vec<(&str, Vec<&str>)> = org
                .access
                .expected_reports(&d.code)
                .into_iter()
                .map(|(m, regions)| {
                    let within: Vec<&str> = regions
                        .into_iter()
                        .filter(|r| region.is_none_or(|x| org.access.region_within(r, x)))
                        .collect();
                    (m, within)
                })
                .filter(|(_, regions)| !regions.is_empty())
                .collect();
            let mine = first.get(&d.code).unwrap_or(&none);
            let mut figures = Vec::new();
            for p in periods {
                figures.extend(timeliness::figures(
                    cycle,
                    &self.review().catalog,
                    &d.code,
                    &expected,
                    p,
                    mine,
                    now,
                ));
            }
            out.insert(d.code.clone(), figures);
        }
        Ok(out)
    }

    pub(crate) async fn get_timeliness(
        &self,
        who: &Principal,
        r: &pb::GetTimelinessRequest,
    ) -> Answer<pb::GetTimelinessResponse> {
        let org = self.org();
        let department = scope(&org, who, &r.department_code, "department_code")?;
        let mut v = Vec::new();
        check_id("period", &r.period, &mut v);
        check_id("region_code", &r.region_code, &mut v);
        invalid_if_any(v)?;
        let stored = self.load_cycle_at("cycle_id", &r.cycle_id).await?;
        let mut v = Vec::new();
        let period = match r.period.parse::<Period>() {
            Err(_) if r.period.is_empty() => {
                v.push(Violation::new("period", "required"));
                None
            }
            Err(e) => {
                v.push(Violation::new("period", e.to_string()));
                None
            }
            Ok(p) if !stored.cycle.periods.iter().any(|x| x == &p.to_string()) => {
                v.push(Violation::new(
                    "period",
                    format!(
                        "`{p}` is not one of the cycle's periods ({})",
                        stored.cycle.periods.join(", ")
                    ),
                ));
                None
            }
            Ok(p) => Some(p),
        };
        let region = bare(&r.region_code, "regions/");
        if !region.is_empty() && org.city.region(region).is_none() {
            v.push(Violation::new(
                "region_code",
                format!("unknown region `{region}`"),
            ));
        }
        let (offset, limit) = page(r.page_size, &r.page_token, ROWS_PAGE.0, ROWS_PAGE.1)?;
        invalid_if_any(v)?;
        let Some(period) = period else {
            return Err(ReviewError::invalid("period", "required").into());
        };
        let now = citycredit_core::clock::now_micros();
        let by_department = self
            .figures(
                &stored.cycle,
                &[period],
                department.as_deref(),
                (!region.is_empty()).then_some(region),
                now,
            )
            .await?;
        let mut departments = Vec::new();
        let mut all: Vec<&Figure> = Vec::new();
        for (code, figures) in &by_department {
            if figures.is_empty() {
                continue;
            }
            let mut c = Counts::default();
            for f in figures {
                c.add(f.state);
            }
            departments.push(pb::DepartmentTimeliness {
                department_code: code.clone(),
                on_time: count(c.on_time),
                late: count(c.late),
                missing_overdue: count(c.missing_overdue),
                not_yet_due: count(c.not_yet_due),
                on_time_rate: c.on_time_rate().unwrap_or_default(),
            });
            all.extend(figures);
        }
        all.sort_by(|a, b| {
            (&a.department, &a.metric, &a.region).cmp(&(&b.department, &b.metric, &b.region))
        });
        let total = all.len();
        let rows = all
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|f| pb::TimelinessRow {
                department_code: f.department.clone(),
                metric_key: f.metric.clone(),
                region_code: f.region.clone(),
                state: state_pb(f.state) as i32,
                due_time: Some(timestamp(f.due.micros)),
                first_accept_time: f.first_accept.map(timestamp),
                due_basis: basis_pb(f.due.basis) as i32,
                deadline_subject: f.due.subject.clone(),
            })
            .collect();
        Ok(pb::GetTimelinessResponse {
            rows,
            departments,
            next_page_token: next_page_token(offset, limit, total),
            evaluate_time: Some(timestamp(now)),
        })
    }

    pub(crate) async fn get_department_assessment(
        &self,
        who: &Principal,
        r: &pb::GetDepartmentAssessmentRequest,
    ) -> Answer<pb::GetDepartmentAssessmentResponse> {
        let org = self.org();
        let department = scope(&org, who, "", "department_code")?;
        let stored = self.load_cycle_at("cycle_id", &r.cycle_id).await?;
        let cycle = &stored.cycle;
        let periods: Vec<Period> = cycle
            .periods
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect();
        let now = citycredit_core::clock::now_micros();
        let figures = self
            .figures(cycle, &periods, department.as_deref(), None, now)
            .await?;
        // The parts of the cycle's periods and of the periods inside them.
        let inside = reporting_texts(&periods);
        let returns: HashMap<String, u32> = store::returns(&self.review().db, &inside)
            .await
            .map_err(ReviewError::from)?
            .into_iter()
            .map(|(d, n)| (d, u32::try_from(n).unwrap_or(u32::MAX)))
            .collect();
        let mut with_duties: BTreeSet<&str> = figures
            .iter()
            .filter(|(_, f)| !f.is_empty())
            .map(|(d, _)| d.as_str())
            .collect();
        with_duties.extend(
            cycle
                .deadlines
                .iter()
                .map(|d| d.department.as_str())
                .filter(|d| department.as_deref().is_none_or(|x| x == *d)),
        );
        let none = Vec::new();
        let rows = with_duties
            .into_iter()
            .map(|d| {
                let deadlines: Vec<_> = cycle
                    .deadlines
                    .iter()
                    .filter(|x| x.department == d)
                    .collect();
                let a: Assessment = timeliness::assess(
                    &self.review().catalog,
                    d,
                    figures.get(d).unwrap_or(&none),
                    &deadlines,
                    returns.get(d).copied().unwrap_or(0),
                    now,
                );
                pb::DepartmentAssessment {
                    department_code: a.department.clone(),
                    tasks_total: count(a.tasks_total),
                    tasks_done: count(a.tasks_done),
                    figures_on_time: count(a.figures.on_time),
                    figures_late: count(a.figures.late),
                    figures_missing: count(a.figures.missing_overdue),
                    figures_not_yet_due: count(a.figures.not_yet_due),
                    returns: count(a.returns),
                    overdue: count(a.overdue),
                    on_time_rate: a.figures.on_time_rate().unwrap_or_default(),
                }
            })
            .collect();
        Ok(pb::GetDepartmentAssessmentResponse {
            departments: rows,
            evaluate_time: Some(timestamp(now)),
        })
    }

    pub(crate) async fn list_cycle_events(
        &self,
        r: &pb::ListCycleEventsRequest,
    ) -> Answer<pb::ListCycleEventsResponse> {
        let stored = self.load_cycle_at("cycle_id", &r.cycle_id).await?;
        let (offset, limit) = page(
            r.page_size,
            &r.page_token,
            CYCLE_EVENTS_PAGE.0,
            CYCLE_EVENTS_PAGE.1,
        )?;
        let (rows, total) =
            store::list_cycle_events(&self.review().db, &stored.cycle.id, offset, limit)
                .await
                .map_err(ReviewError::from)?;
        Ok(pb::ListCycleEventsResponse {
            events: rows
                .into_iter()
                .map(|e| pb::CycleEvent {
                    cycle_id: e.cycle_id,
                    seq: e.seq,
                    kind: e.kind,
                    principal: e.principal,
                    event_time: Some(timestamp(e.event_micros)),
                    detail: e.detail,
                })
                .collect(),
            next_page_token: next_page_token(offset, limit, total),
        })
    }
}
