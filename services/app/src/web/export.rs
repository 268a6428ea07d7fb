//! The pages' tables as `.xlsx` downloads (issue 14: "the scorecard, worklists and completeness
//! grid can be downloaded from the pages"). Each workbook is built from the same gRPC answer as
//! its page (`pages::fetch_*`, through the gateway with the session's key), so a department
//! downloads only what it may read. Figures are written as the text the API gives ("12.50"),
//! exactly as the page shows them: a spreadsheet number is a binary float.

use rust_xlsxwriter::{Format, FormatAlign, Workbook, Worksheet, XlsxError};

use citycredit::proto::v1 as pb;
use citycredit_core::catalog::Catalog;
use citycredit_core::org::Org;

use super::html;
use super::pages::{
    self, department_name, grid_metrics, indicator_title, metric_name, region_name,
};
use super::session::Session;
use super::timeliness::{self, GridTimeliness};
use super::{Ask, PageError, Web};

/// The content type of an `.xlsx` file.
pub const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

/// A worksheet being written row by row, with the one header style.
struct Sheet<'a> {
    ws: &'a mut Worksheet,
    row: u32,
    bold: Format,
}

impl<'a> Sheet<'a> {
    fn new(ws: &'a mut Worksheet, name: &str) -> Result<Self, XlsxError> {
        ws.set_name(name)?;
        Ok(Sheet {
            ws,
            row: 0,
            bold: Format::new().set_bold().set_align(FormatAlign::Top),
        })
    }

    /// A label and its value on one row.
    fn pair(&mut self, label: &str, value: &str) -> Result<(), XlsxError> {
        self.ws
            .write_string_with_format(self.row, 0, label, &self.bold)?;
        self.ws.write_string(self.row, 1, value)?;
        self.row += 1;
        Ok(())
    }

    /// A header row, frozen when it is the first row of a table.
    fn header(&mut self, cells: &[&str]) -> Result<(), XlsxError> {
        for (c, text) in cells.iter().enumerate() {
            self.ws
                .write_string_with_format(self.row, col(c), *text, &self.bold)?;
        }
        self.ws.set_freeze_panes(self.row + 1, 0)?;
        self.row += 1;
        Ok(())
    }

    fn line(&mut self, cells: &[String]) -> Result<(), XlsxError> {
        for (c, text) in cells.iter().enumerate() {
            if !text.is_empty() {
                self.ws.write_string(self.row, col(c), text)?;
            }
        }
        self.row += 1;
        Ok(())
    }

    fn blank(&mut self) {
        self.row += 1;
    }

    fn widths(&mut self, widths: &[f64]) -> Result<(), XlsxError> {
        for (c, w) in widths.iter().enumerate() {
            self.ws.set_column_width(col(c), *w)?;
        }
        Ok(())
    }
}

fn col(c: usize) -> u16 {
    u16::try_from(c).unwrap_or(u16::MAX)
}

fn status_text(s: i32) -> String {
    let (zh, en, _) = html::status(s);
    if en.is_empty() {
        zh.to_owned()
    } else {
        format!("{zh} {en}")
    }
}

fn named_metric(catalog: &Catalog, key: &str) -> String {
    match metric_name(catalog, key) {
        n if n.is_empty() => key.to_owned(),
        n => format!("{n}（{key}）"),
    }
}

/// The scorecard: a summary, the twenty indicators, the twelve items' tasks and checks, and
/// the data checks violated.
pub fn scorecard(
    catalog: &Catalog,
    org: &Org,
    card: &pb::Scorecard,
    region: &str,
    period: &str,
) -> Result<Vec<u8>, XlsxError> {
    let mut book = Workbook::new();
    {
        let mut s = Sheet::new(book.add_worksheet(), "评分卡")?;
        s.widths(&[14.0, 36.0, 12.0, 16.0, 10.0, 10.0, 80.0])?;
        s.pair(
            "地区 Region",
            &format!("{} {}", region_name(org, region), region),
        )?;
        s.pair("期间 Period", period)?;
        s.pair("结论 Outcome", html::outcome(card.outcome).0)?;
        s.pair(
            "引导性指标得分 Guiding total",
            &format!("{} / {}", card.guiding_total, card.guiding_max),
        )?;
        s.pair("一票否决 Vetoed by", &card.failing_basic.join("、"))?;
        s.pair("缺少数据 Lacking data", &card.incomplete_basic.join("、"))?;
        s.pair("规则版本 Rule version", &card.catalog_version)?;
        s.blank();
        s.header(&[
            "指标 Code",
            "名称 Title",
            "类别 Kind",
            "状态 Status",
            "得分 Score",
            "满分 Max",
            "差距 Gaps",
        ])?;
        for i in &card.indicators {
            let kind = if i.kind == pb::IndicatorKind::Basic as i32 {
                "基础性 basic"
            } else {
                "引导性 guiding"
            };
            s.line(&[
                i.code.clone(),
                indicator_title(catalog, &i.code),
                kind.to_owned(),
                status_text(i.status),
                i.score.clone(),
                i.max_score.clone(),
                i.gaps
                    .iter()
                    .map(|g| g.description.as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ])?;
        }
    }
    {
        let mut s = Sheet::new(book.add_worksheet(), "评估指标")?;
        s.widths(&[10.0, 12.0, 40.0, 20.0, 10.0, 80.0])?;
        s.header(&[
            "评估指标 Item",
            "任务 Task",
            "名称 Title",
            "进度 Progress",
            "结果 Result",
            "检查 Check",
        ])?;
        for item in &card.items {
            for t in &item.tasks {
                let title = catalog
                    .task(&t.id)
                    .map(|t| t.title.clone())
                    .unwrap_or_default();
                if t.checks.is_empty() {
                    s.line(&[
                        item.code.clone(),
                        t.id.clone(),
                        title.clone(),
                        html::task(t.status).to_owned(),
                        String::new(),
                        String::new(),
                    ])?;
                }
                for c in &t.checks {
                    s.line(&[
                        item.code.clone(),
                        t.id.clone(),
                        title.clone(),
                        html::task(t.status).to_owned(),
                        html::check(c.status).0.to_owned(),
                        c.summary.clone(),
                    ])?;
                }
            }
        }
    }
    if !card.violations.is_empty() {
        let mut s = Sheet::new(book.add_worksheet(), "数据校验")?;
        s.widths(&[40.0, 14.0, 40.0, 14.0, 20.0])?;
        s.header(&[
            "指标 Metric",
            "数值 Value",
            "上限指标 Bound by",
            "上限 Bound",
            "影响 Affects",
        ])?;
        for v in &card.violations {
            s.line(&[
                named_metric(catalog, &v.numerator),
                v.numerator_value.clone(),
                named_metric(catalog, &v.denominator),
                v.bound.clone(),
                v.affects.join(", "),
            ])?;
        }
    }
    book.save_to_buffer()
}

/// A department's worklist, one row per subject.
pub fn worklist(
    catalog: &Catalog,
    org: &Org,
    list: &pb::GetDepartmentWorklistResponse,
    region: &str,
    period: &str,
) -> Result<Vec<u8>, XlsxError> {
    let mut book = Workbook::new();
    let mut s = Sheet::new(book.add_worksheet(), "工作清单")?;
    s.widths(&[12.0, 36.0, 12.0, 16.0, 50.0, 50.0, 80.0])?;
    s.pair(
        "部门 Department",
        &format!(
            "{} {}",
            department_name(org, &list.department_code),
            list.department_code
        ),
    )?;
    s.pair(
        "地区 Region",
        &format!("{} {}", region_name(org, region), region),
    )?;
    s.pair("期间 Period", period)?;
    s.blank();
    s.header(&[
        "事项 Subject",
        "名称 Title",
        "职责 Role",
        "状态 Status",
        "未报送 Not reported",
        "待评估 Awaiting assessment",
        "差距 Gaps",
    ])?;
    for e in &list.entries {
        let (subject, _) = Catalog::split_subject(&e.code);
        let status = if e.status != pb::IndicatorStatus::Unspecified as i32 {
            status_text(e.status)
        } else if e.item_done {
            "已完成 done".to_owned()
        } else {
            "未完成 not done".to_owned()
        };
        let metrics = |keys: &[String]| {
            keys.iter()
                .map(|m| named_metric(catalog, m))
                .collect::<Vec<_>>()
                .join("\n")
        };
        s.line(&[
            e.code.clone(),
            indicator_title(catalog, subject),
            html::role(e.role).to_owned(),
            status,
            metrics(&e.missing_metrics),
            metrics(&e.awaiting_assessment),
            e.gaps
                .iter()
                .map(|g| g.description.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        ])?;
    }
    book.save_to_buffer()
}

/// The completeness grid: one row per department, one column per metric, ✔ reported,
/// ✘ missing, · not expected; with each figure's timeliness when a review cycle covers the
/// period ("✔ 迟报": reported late), and each department's timeliness counts.
pub fn completeness(
    catalog: &Catalog,
    org: &Org,
    rows: &[pb::DepartmentCompleteness],
    timely: Option<&GridTimeliness>,
    region: &str,
    period: &str,
) -> Result<Vec<u8>, XlsxError> {
    let metrics = grid_metrics(rows);
    let mut book = Workbook::new();
    let mut s = Sheet::new(book.add_worksheet(), "报送完整性")?;
    s.pair(
        "地区 Region",
        &format!("{} {}", region_name(org, region), region),
    )?;
    s.pair("期间 Period", period)?;
    s.pair(
        "图例 Legend",
        "✔ 已报送 reported · ✘ 未报送 missing · · 无需报送 not expected",
    )?;
    if let Some(t) = timely {
        s.pair(
            "考核周期 Cycle",
            &format!("{}（{}）", t.cycle.title, t.cycle.id),
        )?;
        s.pair("按时 Timeliness", timeliness::LEGEND)?;
    }
    s.blank();
    let mut header: Vec<String> = vec![
        "部门 Department".into(),
        "代码 Code".into(),
        "报送率 Rate".into(),
    ];
    if timely.is_some() {
        header.extend([
            "按时 On time".to_owned(),
            "迟报 Late".to_owned(),
            "逾期未报 Overdue".to_owned(),
            "未到期 Not yet due".to_owned(),
        ]);
    }
    header.extend(metrics.iter().map(|m| named_metric(catalog, m)));
    let refs: Vec<&str> = header.iter().map(String::as_str).collect();
    s.header(&refs)?;
    let mut widths = vec![24.0, 12.0, 10.0];
    if timely.is_some() {
        widths.extend([10.0; 4]);
    }
    widths.extend(metrics.iter().map(|_| 14.0));
    s.widths(&widths)?;
    for r in rows {
        let mut cells = vec![
            department_name(org, &r.department_code),
            r.department_code.clone(),
            r.reporting_rate.clone(),
        ];
        if let Some(t) = timely {
            let c = t
                .counts
                .get(&r.department_code)
                .cloned()
                .unwrap_or_default();
            cells.extend([
                c.on_time.to_string(),
                c.late.to_string(),
                c.missing_overdue.to_string(),
                c.not_yet_due.to_string(),
            ]);
        }
        for m in &metrics {
            let state = timely.and_then(|t| t.state(&r.department_code, m));
            let (_, mark, label) = timeliness::grid_cell(
                r.reported.iter().any(|x| x == m),
                r.missing.iter().any(|x| x == m),
                state,
            );
            cells.push(match label {
                Some((zh, _, _)) => format!("{mark} {zh}"),
                None => mark.to_owned(),
            });
        }
        s.line(&cells)?;
    }
    book.save_to_buffer()
}

/// The supervision office's (督考办) assessment of a cycle: one row per department.
pub fn assessment(
    org: &Org,
    cycle: &pb::Cycle,
    answer: &pb::GetDepartmentAssessmentResponse,
) -> Result<Vec<u8>, XlsxError> {
    let mut book = Workbook::new();
    let mut s = Sheet::new(book.add_worksheet(), "督考办考核")?;
    s.pair(
        "考核周期 Cycle",
        &format!("{}（{}）", cycle.title, cycle.id),
    )?;
    s.pair("期间 Periods", &cycle.periods.join("、"))?;
    s.pair("评审日 Review date", &cycle.review_date)?;
    s.pair(
        "说明 Notes",
        "任务为周期内的截止要求；按时率 = 按时报送 ÷（按时 + 迟报 + 逾期未报） \
         Tasks are the cycle's deadlines; on-time rate = on time ÷ (on time + late + missing)",
    )?;
    s.blank();
    let header: Vec<String> = timeliness::COLUMNS
        .iter()
        .map(|(zh, en)| format!("{zh} {en}"))
        .collect();
    let refs: Vec<&str> = header.iter().map(String::as_str).collect();
    s.header(&refs)?;
    let mut widths = vec![24.0, 16.0];
    widths.extend([12.0; 9]);
    s.widths(&widths)?;
    for d in &answer.departments {
        s.line(&timeliness::cells(org, d))?;
    }
    book.save_to_buffer()
}

/// The downloads the pages offer, by path.
pub const PATHS: [&str; 4] = [
    "/scorecard.xlsx",
    "/worklist.xlsx",
    "/completeness.xlsx",
    "/assessment.xlsx",
];

/// The workbook at `path` (one of `PATHS`) for what `ask` names, and its file name.
pub async fn download(
    web: &Web,
    s: &Session,
    ask: &Ask,
    path: &str,
) -> Result<(String, Vec<u8>), PageError> {
    let org = web.org.borrow().clone();
    let (region, period) = (ask.region.as_str(), ask.period.as_str());
    let (name, built) = match path {
        "/scorecard.xlsx" => {
            let card = pages::fetch_scorecard(web, s, ask).await?;
            (
                file_name("scorecard", &[region, period]),
                scorecard(&web.catalog, &org, &card, region, period),
            )
        }
        "/worklist.xlsx" => {
            let list = pages::fetch_worklist(web, s, ask).await?;
            (
                file_name("worklist", &[&list.department_code, region, period]),
                worklist(&web.catalog, &org, &list, region, period),
            )
        }
        "/assessment.xlsx" => {
            let (cycle, _, answer) = timeliness::fetch_assessment(web, s, ask).await?;
            (
                file_name("assessment", &[&cycle.id]),
                assessment(&org, &cycle, &answer),
            )
        }
        _ => {
            let rows = pages::fetch_completeness(web, s, ask).await?;
            let timely = timeliness::fetch_grid(web, s, ask).await?;
            (
                file_name("completeness", &[region, period]),
                completeness(&web.catalog, &org, &rows, timely.as_ref(), region, period),
            )
        }
    };
    let bytes = built.map_err(|e| {
        PageError::Status(tonic::Status::internal(format!(
            "the workbook could not be written: {e}"
        )))
    })?;
    Ok((name, bytes))
}

/// The download's file name: ASCII, from the page and what it shows ("scorecard-331100-2026.xlsx").
pub fn file_name(page: &str, parts: &[&str]) -> String {
    let mut name = page.to_owned();
    for p in parts {
        name.push('-');
        name.extend(
            p.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    name.push_str(".xlsx");
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_plain_ascii() {
        assert_eq!(
            file_name("scorecard", &["331100", "2026-Q1"]),
            "scorecard-331100-2026_Q1.xlsx"
        );
        assert_eq!(
            file_name("worklist", &["市\"住建局", "2026"]),
            "worklist-_____-2026.xlsx"
        );
    }
}
