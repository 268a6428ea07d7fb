//! The review cycle's timeliness on the pages (issue 13, point 4; issue 14's "reported, late,
//! missing"): the completeness grid's on-time/late state per (department × metric), and the
//! supervision office's (督考办) assessment page. Both ask `ReviewService` through the gateway
//! with the session's key, like every page.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use citycredit::proto::v1 as pb;
use citycredit_core::auth::Role;

use super::html::{self, esc, q};
use super::pages::department_name;
use super::session::Session;
use super::{Ask, PageError, Web, banner, call};

/// Most cycles looked through for the one covering a period.
const MAX_CYCLES: i32 = 500;
/// Rows asked per GetTimeliness page, and most pages read for one grid (50,000 figures).
const ROWS_PER_PAGE: i32 = 5_000;
const MAX_PAGES: usize = 10;

/// A figure's timeliness in words: Chinese, English, CSS class.
pub fn state_text(s: pb::TimelinessState) -> (&'static str, &'static str, &'static str) {
    match s {
        pb::TimelinessState::OnTime => ("按时", "on time", "ok"),
        pb::TimelinessState::Late => ("迟报", "late", "late"),
        pb::TimelinessState::MissingOverdue => ("逾期未报", "missing, overdue", "fail"),
        pb::TimelinessState::NotYetDue => ("未到期", "not yet due", "pending"),
        pb::TimelinessState::Unspecified => ("—", "", "none"),
    }
}

/// The legend of the timeliness states, in Chinese with English.
pub const LEGEND: &str = "按时 on time：首次报送不晚于截止时间 · 迟报 late：首次报送晚于截止时间 · \
     逾期未报 missing, overdue：已过截止时间仍未报送 · 未到期 not yet due：尚未报送、未到截止时间";

/// How bad a state is, for the worst over a department's regions.
fn severity(s: pb::TimelinessState) -> u8 {
    match s {
        pb::TimelinessState::MissingOverdue => 4,
        pb::TimelinessState::Late => 3,
        pb::TimelinessState::NotYetDue => 2,
        pb::TimelinessState::OnTime => 1,
        pb::TimelinessState::Unspecified => 0,
    }
}

/// The grid's timeliness for one period: the cycle covering it, the worst state per
/// (department, metric) over the regions asked, and each department's counts.
#[derive(Debug, Default)]
pub struct GridTimeliness {
    pub cycle: pb::Cycle,
    pub cells: BTreeMap<(String, String), pb::TimelinessState>,
    pub counts: BTreeMap<String, pb::DepartmentTimeliness>,
}

impl GridTimeliness {
    pub fn state(&self, department: &str, metric: &str) -> Option<pb::TimelinessState> {
        self.cells
            .get(&(department.to_owned(), metric.to_owned()))
            .copied()
    }
}

async fn cycles(web: &Web, s: &Session) -> Result<Vec<pb::Cycle>, PageError> {
    Ok(web
        .reviews()
        .list_cycles(call(
            &s.key,
            pb::ListCyclesRequest {
                page_size: MAX_CYCLES,
                page_token: String::new(),
            },
        ))
        .await?
        .into_inner()
        .cycles)
}

/// The timeliness for the grid of `ask` (a department principal's own rows only), or None when
/// no review cycle covers the period.
pub async fn fetch_grid(
    web: &Web,
    s: &Session,
    ask: &Ask,
) -> Result<Option<GridTimeliness>, PageError> {
    let Some(cycle) = cycles(web, s)
        .await?
        .into_iter()
        .find(|c| c.periods.iter().any(|p| p == &ask.period))
    else {
        return Ok(None);
    };
    let department = match s.principal.role {
        Role::Department => s.principal.department.clone().unwrap_or_default(),
        _ => String::new(),
    };
    let mut out = GridTimeliness {
        cycle: cycle.clone(),
        ..GridTimeliness::default()
    };
    let mut token = String::new();
    for _ in 0..MAX_PAGES {
        let page = web
            .reviews()
            .get_timeliness(call(
                &s.key,
                pb::GetTimelinessRequest {
                    cycle_id: cycle.id.clone(),
                    period: ask.period.clone(),
                    region_code: ask.region.clone(),
                    department_code: department.clone(),
                    page_size: ROWS_PER_PAGE,
                    page_token: token,
                },
            ))
            .await?
            .into_inner();
        for r in &page.rows {
            let slot = out
                .cells
                .entry((r.department_code.clone(), r.metric_key.clone()))
                .or_insert(pb::TimelinessState::Unspecified);
            if severity(r.state()) > severity(*slot) {
                *slot = r.state();
            }
        }
        if out.counts.is_empty() {
            out.counts = page
                .departments
                .into_iter()
                .map(|d| (d.department_code.clone(), d))
                .collect();
        }
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    Ok(Some(out))
}

/// Who may see the assessment: the credit office, operators and administrators.
fn may_assess(s: &Session) -> Result<(), PageError> {
    match s.principal.role {
        Role::CreditOffice | Role::Operator | Role::Admin => Ok(()),
        _ => Err(PageError::Forbidden(
            "督考办考核仅限信用办、运营和管理员查看 The department assessment is for the credit office, operators and administrators"
                .into(),
        )),
    }
}

/// The assessment asked for: the cycle named by `cycle`, else the one covering the period,
/// else the first; with every cycle (for the chooser).
pub async fn fetch_assessment(
    web: &Web,
    s: &Session,
    ask: &Ask,
) -> Result<
    (
        pb::Cycle,
        Vec<pb::Cycle>,
        pb::GetDepartmentAssessmentResponse,
    ),
    PageError,
> {
    may_assess(s)?;
    let all = cycles(web, s).await?;
    let asked = ask.params.get("cycle").filter(|c| !c.is_empty());
    let cycle = match asked {
        Some(id) => all.iter().find(|c| &c.id == id).cloned().ok_or_else(|| {
            PageError::BadRequest(format!("没有考核周期 {id} No review cycle {id}"))
        })?,
        None => all
            .iter()
            .find(|c| c.periods.iter().any(|p| p == &ask.period))
            .or_else(|| all.first())
            .cloned()
            .ok_or_else(|| PageError::BadRequest("没有考核周期 No review cycle exists".into()))?,
    };
    let answer = web
        .reviews()
        .get_department_assessment(call(
            &s.key,
            pb::GetDepartmentAssessmentRequest {
                cycle_id: cycle.id.clone(),
            },
        ))
        .await?
        .into_inner();
    Ok((cycle, all, answer))
}

/// The assessment table's columns: Chinese and English.
pub const COLUMNS: [(&str, &str); 11] = [
    ("部门", "Department"),
    ("代码", "Code"),
    ("任务数", "Tasks"),
    ("已完成", "Done"),
    ("逾期任务", "Overdue tasks"),
    ("按时报送", "On time"),
    ("迟报", "Late"),
    ("逾期未报", "Missing"),
    ("未到期", "Not yet due"),
    ("审核退回", "Returns"),
    ("按时率", "On-time rate"),
];

/// One department's line, as the page and the workbook show it.
pub fn cells(org: &citycredit_core::org::Org, d: &pb::DepartmentAssessment) -> [String; 11] {
    [
        department_name(org, &d.department_code),
        d.department_code.clone(),
        d.tasks_total.to_string(),
        d.tasks_done.to_string(),
        d.overdue.to_string(),
        d.figures_on_time.to_string(),
        d.figures_late.to_string(),
        d.figures_missing.to_string(),
        d.figures_not_yet_due.to_string(),
        d.returns.to_string(),
        if d.on_time_rate.is_empty() {
            "—".to_owned()
        } else {
            d.on_time_rate.clone()
        },
    ]
}

/// The supervision office's (督考办) assessment page.
pub async fn assessment(web: &Web, s: &Session, ask: &Ask) -> Result<String, PageError> {
    let org = web.org.borrow().clone();
    let (cycle, all, answer) = fetch_assessment(web, s, ask).await?;
    let mut body = String::from(
        "<form method=\"get\" action=\"/assessment\" class=\"chooser\">\
         <label>考核周期 <span class=\"en\">Cycle</span> <select name=\"cycle\" id=\"cycle\">",
    );
    for c in &all {
        let sel = if c.id == cycle.id { " selected" } else { "" };
        let _ = write!(
            body,
            "<option value=\"{}\"{sel}>{} {}</option>",
            esc(&c.id),
            esc(&c.title),
            esc(&c.id)
        );
    }
    body.push_str(
        "</select></label> <button type=\"submit\">查看 <span class=\"en\">Show</span></button></form>",
    );
    let _ = write!(
        body,
        "<p class=\"noprint download\"><a href=\"{}\" id=\"download\" download>下载 Excel \
         <span class=\"en\">Download .xlsx</span></a></p>",
        esc(&format!("/assessment.xlsx?cycle={}", q(&cycle.id)))
    );
    let _ = write!(
        body,
        "<h1>督考办考核 <span class=\"en\">Department assessment</span> · {}</h1>\
         <p class=\"legend-line\">期间 <span class=\"en\">Periods</span>：{} · 评审日 <span class=\"en\">Review date</span>：{}</p>\
         <p class=\"legend-line\">任务为周期内的截止要求；按时率 = 按时报送 ÷（按时 + 迟报 + 逾期未报）。\
         <span class=\"en\">Tasks are the cycle's deadlines; on-time rate = on time ÷ (on time + late + missing).</span></p>\
         <div class=\"scroll\"><table id=\"assessment\" class=\"sortable\"><thead><tr>",
        esc(&cycle.title),
        esc(&cycle.periods.join("、")),
        esc(&cycle.review_date)
    );
    for (zh, en) in COLUMNS {
        let _ = write!(body, "<th>{zh} <span class=\"en\">{en}</span></th>");
    }
    body.push_str("</tr></thead><tbody>");
    for d in &answer.departments {
        let _ = write!(body, "<tr data-department=\"{}\">", esc(&d.department_code));
        for (i, c) in cells(&org, d).iter().enumerate() {
            let class = if i >= 2 { " class=\"num\"" } else { "" };
            let _ = write!(body, "<td{class}>{}</td>", esc(c));
        }
        body.push_str("</tr>");
    }
    body.push_str("</tbody></table></div>");
    Ok(html::page(
        "督考办考核 Assessment",
        "/assessment",
        Some(&banner(s)),
        &body,
    ))
}

/// A grid cell: the mark of the completeness report (✔ reported, ✘ missing, · not expected)
/// with the figure's timeliness, when a cycle covers the period. Returns the CSS class, the
/// mark, the timeliness label (Chinese, English) and its code (`LATE`, ...).
pub fn grid_cell(
    reported: bool,
    missing: bool,
    state: Option<pb::TimelinessState>,
) -> (
    &'static str,
    &'static str,
    Option<(&'static str, &'static str, &'static str)>,
) {
    let label = state.map(|s| {
        let (zh, en, _) = state_text(s);
        let code = s
            .as_str_name()
            .strip_prefix("TIMELINESS_STATE_")
            .unwrap_or("");
        (zh, en, code)
    });
    match (reported, missing, state) {
        (true, _, Some(pb::TimelinessState::Late)) => ("late", "✔", label),
        (true, _, _) => ("ok", "✔", label),
        (false, true, Some(pb::TimelinessState::NotYetDue)) => ("pending", "✘", label),
        (false, true, _) => ("fail", "✘", label),
        _ => ("none", "·", None),
    }
}
