//! `citycredit template --department D --period P --out FILE.xlsx`: a department's reporting
//! template (填报模板), read from a running platform as the caller (`CITYCREDIT_API_KEY`).
//!
//! One row per metric the department is expected to report (rulebook section 9:
//! GetDepartmentDuties `expected_reports`) and per region it reports it for; a DOMAIN_FLAG
//! metric has one row per domain of its domain set. Each row carries the metric's Chinese name,
//! its unit (from its kind: the catalog gives no other), the region's name and the value current
//! now, if any; the value cell has data validation by kind (whole numbers >= 0 for COUNT,
//! decimals >= 0 for AMOUNT, true/false for BOOL and DOMAIN_FLAG, the task statuses for
//! TASK_STATUS, whole numbers >= 1 for RANK, 0..max for SCORE). The header row names every
//! column in Chinese and English ([`Column::header`]), so the filled-in file imports as it is.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;

use rust_xlsxwriter::{
    Color, DataValidation, DataValidationRule, Format, FormatBorder, Workbook, XlsxError,
};

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::metric_value::Value as V;
use citycredit_core::period::Period;

use crate::remote::{self, Remote, RemoteError};
use crate::sheet::{self, Column};

/// What `citycredit template` was asked to do.
#[derive(Clone, Debug)]
pub struct TemplateOptions {
    pub department: String,
    pub period: String,
    pub out: PathBuf,
    pub addr: String,
    pub ca_cert: Option<PathBuf>,
    pub force: bool,
}

/// Why a template could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{0}")]
    Remote(#[from] RemoteError),
    #[error("the server refused the call: {0}")]
    Server(String),
    #[error("--period {0}: not a period (YYYY, YYYY-Qn or YYYY-MM)")]
    Period(String),
    #[error("{0} exists: choose another --out or add --force to replace it")]
    Exists(String),
    #[error("--out {0}: the template is an .xlsx file")]
    NotXlsx(String),
    #[error(
        "department {department} is expected to report {rows} rows; at most {max} fit a template"
    )]
    TooLarge {
        department: String,
        rows: usize,
        max: usize,
    },
    #[error("cannot write the workbook: {0}")]
    Xlsx(#[from] XlsxError),
}

fn server(status: &tonic::Status) -> TemplateError {
    TemplateError::Server(remote::describe(status))
}

/// Runs `citycredit template`: exit 0 when the file was written, 2 otherwise.
pub fn run(opts: &TemplateOptions) -> ExitCode {
    let outcome = match remote::block_on(template(opts)) {
        Ok(outcome) => outcome,
        Err(code) => return code,
    };
    match outcome {
        Ok(rows) => {
            println!(
                "{}: {rows} rows for department {} and period {}",
                opts.out.display(),
                opts.department,
                opts.period
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("citycredit: {e}");
            ExitCode::from(2)
        }
    }
}

/// One row of the template.
#[derive(Clone, Debug)]
struct TemplateRow {
    metric: String,
    metric_name: String,
    kind: Option<pb::MetricKind>,
    max_value: String,
    region: String,
    region_name: String,
    domain: String,
    domain_name: String,
    current: Option<String>,
}

/// The unit of a metric of `kind`, for people.
pub fn unit(kind: Option<pb::MetricKind>, max_value: &str) -> String {
    match kind {
        Some(pb::MetricKind::Count) => "个 count".into(),
        Some(pb::MetricKind::Amount) => "元 yuan".into(),
        Some(pb::MetricKind::Bool | pb::MetricKind::DomainFlag) => "是/否 true/false".into(),
        Some(pb::MetricKind::Rank) => "名次 rank (1 = best)".into(),
        Some(pb::MetricKind::Score) => format!("分 score 0-{max_value}"),
        Some(pb::MetricKind::TaskStatus) => "状态 status".into(),
        _ => String::new(),
    }
}

/// A value as the template shows it (and as the importer reads it back).
fn shown(value: &pb::MetricValue) -> String {
    match &value.value {
        Some(V::Number(n)) => n.clone(),
        Some(V::Flag(b)) => b.to_string(),
        Some(V::TaskStatus(s)) => match pb::TaskStatus::try_from(*s) {
            Ok(pb::TaskStatus::NotStarted) => "NOT_STARTED".into(),
            Ok(pb::TaskStatus::InProgress) => "IN_PROGRESS".into(),
            Ok(pb::TaskStatus::Done) => "DONE".into(),
            _ => String::new(),
        },
        None => String::new(),
    }
}

/// The data validation of a value cell of `kind`.
fn validation(
    kind: Option<pb::MetricKind>,
    max_value: &str,
) -> Result<Option<DataValidation>, XlsxError> {
    let v = DataValidation::new();
    let (v, hint) = match kind {
        Some(pb::MetricKind::Count) => (
            v.allow_whole_number(DataValidationRule::GreaterThanOrEqualTo(0)),
            "请填写非负整数 / a whole number, 0 or more",
        ),
        Some(pb::MetricKind::Amount) => (
            v.allow_decimal_number(DataValidationRule::GreaterThanOrEqualTo(0.0)),
            "请填写金额（元，最多两位小数）/ an amount in yuan, at most 2 decimals",
        ),
        Some(pb::MetricKind::Rank) => (
            v.allow_whole_number(DataValidationRule::GreaterThanOrEqualTo(1)),
            "请填写名次（1为最好）/ a rank, 1 is best",
        ),
        Some(pb::MetricKind::Score) => {
            let Ok(max) = max_value.parse::<f64>() else {
                return Ok(None);
            };
            (
                v.allow_decimal_number(DataValidationRule::Between(0.0, max)),
                "请填写分数 / a score between 0 and the maximum",
            )
        }
        Some(pb::MetricKind::Bool | pb::MetricKind::DomainFlag) => (
            v.allow_list_strings(&["true", "false"])?,
            "true（是）或 false（否）/ true or false",
        ),
        Some(pb::MetricKind::TaskStatus) => (
            v.allow_list_strings(&["NOT_STARTED", "IN_PROGRESS", "DONE"])?,
            "任务状态 / the task's status",
        ),
        _ => return Ok(None),
    };
    Ok(Some(
        v.set_input_title("数值 value")?
            .set_input_message(hint)?
            .set_error_title("数值不符合要求 / not a valid value")?
            .set_error_message(hint)?,
    ))
}

async fn rows_of(
    remote: &mut Remote,
    opts: &TemplateOptions,
) -> Result<(String, Vec<TemplateRow>), TemplateError> {
    let duties = remote
        .registry
        .get_department_duties(pb::GetDepartmentDutiesRequest {
            department: opts.department.clone(),
        })
        .await
        .map_err(|s| server(&s))?
        .into_inner();
    let metrics: HashMap<String, pb::Metric> = remote
        .indicators
        .list_metrics(pb::ListMetricsRequest::default())
        .await
        .map_err(|s| server(&s))?
        .into_inner()
        .metrics
        .into_iter()
        .map(|m| (m.key.clone(), m))
        .collect();
    let mut region_names: HashMap<String, String> = HashMap::new();
    let mut token = String::new();
    // A city has tens of regions; a hundred pages of a thousand is far beyond any.
    for _ in 0..100 {
        let page = remote
            .registry
            .list_regions(pb::ListRegionsRequest {
                page_size: 1_000,
                page_token: token.clone(),
                parent: String::new(),
            })
            .await
            .map_err(|s| server(&s))?
            .into_inner();
        for r in page.regions {
            region_names.insert(r.code, r.display_name);
        }
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let mut domains: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let code = |region: &str| region.strip_prefix("regions/").unwrap_or(region).to_owned();
    // The values current now, by (metric, region, domain), for this department.
    let mut current: HashMap<(String, String, String), String> = HashMap::new();
    let mut regions: Vec<String> = duties
        .expected_reports
        .iter()
        .flat_map(|r| r.regions.iter().map(|g| code(g)))
        .collect();
    regions.sort();
    regions.dedup();
    for region in &regions {
        let figures = remote
            .submissions
            .query_aggregates(pb::QueryAggregatesRequest {
                region_code: region.clone(),
                period: opts.period.clone(),
                as_of: None,
                approved_only: false,
            })
            .await
            .map_err(|s| server(&s))?
            .into_inner();
        for m in figures.metrics {
            for s in m.sources {
                if s.region_code != *region || s.department_code != duties.department_code {
                    continue;
                }
                if let Some(v) = &s.value {
                    current
                        .entry((
                            m.metric_key.clone(),
                            s.region_code.clone(),
                            s.domain.clone(),
                        ))
                        .or_insert_with(|| shown(v));
                }
            }
        }
    }
    let mut rows = Vec::new();
    for report in &duties.expected_reports {
        let metric = metrics.get(&report.metric_key);
        let kind = metric.and_then(|m| pb::MetricKind::try_from(m.kind).ok());
        let domain_list: Vec<(String, String)> = match (kind, metric) {
            (Some(pb::MetricKind::DomainFlag), Some(m)) => {
                if !domains.contains_key(&m.domain_set) {
                    let list = remote
                        .registry
                        .list_domains(pb::ListDomainsRequest {
                            domain_set: m.domain_set.clone(),
                        })
                        .await
                        .map_err(|s| server(&s))?
                        .into_inner()
                        .domains
                        .into_iter()
                        .map(|d| (d.code, d.display_name))
                        .collect();
                    domains.insert(m.domain_set.clone(), list);
                }
                domains.get(&m.domain_set).cloned().unwrap_or_default()
            }
            _ => vec![(String::new(), String::new())],
        };
        for region in &report.regions {
            let region = code(region);
            for (domain, domain_name) in &domain_list {
                rows.push(TemplateRow {
                    metric: report.metric_key.clone(),
                    metric_name: metric.map(|m| m.title.clone()).unwrap_or_default(),
                    kind,
                    max_value: metric.map(|m| m.max_value.clone()).unwrap_or_default(),
                    region_name: region_names.get(&region).cloned().unwrap_or_default(),
                    current: current
                        .get(&(report.metric_key.clone(), region.clone(), domain.clone()))
                        .cloned(),
                    region: region.clone(),
                    domain: domain.clone(),
                    domain_name: domain_name.clone(),
                });
            }
        }
        if rows.len() > sheet::MAX_ROWS {
            return Err(TemplateError::TooLarge {
                department: opts.department.clone(),
                rows: rows.len(),
                max: sheet::MAX_ROWS,
            });
        }
    }
    Ok((duties.department_code, rows))
}

/// Writes the template; returns its number of rows.
pub async fn template(opts: &TemplateOptions) -> Result<usize, TemplateError> {
    remote::key_from_env()?;
    if opts.period.parse::<Period>().is_err() {
        return Err(TemplateError::Period(opts.period.clone()));
    }
    let is_xlsx = opts
        .out
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("xlsx"));
    if !is_xlsx {
        return Err(TemplateError::NotXlsx(opts.out.display().to_string()));
    }
    if opts.out.exists() && !opts.force {
        return Err(TemplateError::Exists(opts.out.display().to_string()));
    }
    let mut remote = remote::connect(&opts.addr, opts.ca_cert.as_deref()).await?;
    let (department, rows) = rows_of(&mut remote, opts).await?;
    let mut book = Workbook::new();
    let sheet = book.add_worksheet();
    sheet.set_name("填报模板")?;
    let header = Format::new()
        .set_bold()
        .set_background_color(Color::RGB(0x00DD_EBF7))
        .set_border(FormatBorder::Thin);
    let header_read_only = Format::new()
        .set_bold()
        .set_background_color(Color::RGB(0x00E7_E6E6))
        .set_border(FormatBorder::Thin);
    let text = Format::new().set_num_format("@");
    let read_only = Format::new()
        .set_num_format("@")
        .set_background_color(Color::RGB(0x00F2_F2F2));
    let width = |c: Column| match c {
        Column::MetricName => 48,
        Column::Metric | Column::EvidenceUri | Column::Note => 30,
        Column::Unit | Column::DomainName | Column::RegionName => 18,
        _ => 14,
    };
    let mut col_of: BTreeMap<Column, u16> = BTreeMap::new();
    for (i, c) in Column::ALL.into_iter().enumerate() {
        let col = u16::try_from(i).unwrap_or(u16::MAX);
        col_of.insert(c, col);
        sheet.set_column_width(col, width(c))?;
        // Codes and periods are text: a typed 2026-01 must not become a date.
        sheet.set_column_format(col, if c.read_only() { &read_only } else { &text })?;
        sheet.write_string_with_format(
            0,
            col,
            c.header(),
            if c.read_only() {
                &header_read_only
            } else {
                &header
            },
        )?;
    }
    sheet.set_freeze_panes(1, 0)?;
    let mut validations: HashMap<(Option<pb::MetricKind>, String), Option<DataValidation>> =
        HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        let r = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let cells = [
            (Column::Metric, row.metric.clone()),
            (Column::MetricName, row.metric_name.clone()),
            (Column::Unit, unit(row.kind, &row.max_value)),
            (Column::Region, row.region.clone()),
            (Column::RegionName, row.region_name.clone()),
            (Column::Period, opts.period.clone()),
            (Column::Department, department.clone()),
            (Column::Domain, row.domain.clone()),
            (Column::DomainName, row.domain_name.clone()),
            (
                Column::CurrentValue,
                row.current.clone().unwrap_or_default(),
            ),
        ];
        for (c, value) in cells {
            if value.is_empty() {
                continue;
            }
            let format = if c.read_only() { &read_only } else { &text };
            sheet.write_string_with_format(r, col_of[&c], value, format)?;
        }
        let key = (row.kind, row.max_value.clone());
        if !validations.contains_key(&key) {
            validations.insert(key.clone(), validation(row.kind, &row.max_value)?);
        }
        if let Some(Some(v)) = validations.get(&key) {
            let col = col_of[&Column::Value];
            sheet.add_data_validation(r, col, r, col, v)?;
        }
    }
    book.save(&opts.out)?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_by_kind() {
        assert_eq!(unit(Some(pb::MetricKind::Count), ""), "个 count");
        assert_eq!(unit(Some(pb::MetricKind::Score), "5"), "分 score 0-5");
        assert_eq!(unit(None, ""), "");
    }

    #[test]
    fn every_kind_but_unknown_ones_has_a_validation() {
        for kind in [
            pb::MetricKind::Count,
            pb::MetricKind::Amount,
            pb::MetricKind::Bool,
            pb::MetricKind::Rank,
            pb::MetricKind::Score,
            pb::MetricKind::DomainFlag,
            pb::MetricKind::TaskStatus,
        ] {
            assert!(
                matches!(validation(Some(kind), "5"), Ok(Some(_))),
                "{kind:?}"
            );
        }
        assert!(matches!(validation(None, ""), Ok(None)));
    }
}
