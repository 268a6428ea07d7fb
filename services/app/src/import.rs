//! `citycredit import FILE`: metric values from a spreadsheet (`.xlsx` or `.csv`), submitted
//! through the platform's gRPC API as the caller (`CITYCREDIT_API_KEY`), so every rule and
//! permission applies.
//!
//! The whole file is one all-or-nothing batch. It is checked first (SubmitBatch
//! `validate_only`, repeated without the refused rows until every problem is found): a file
//! with any refused row stores nothing and every refused row is named with its column and the
//! reason. A clean file is then compared with the values already current: rows whose value is
//! already current are "unchanged" and not sent, so importing the same file twice stores
//! nothing the second time; the rest are sent in one batch (new: "imported", replacing another
//! value: "updated") under an idempotency key derived from what is sent and what was current,
//! so a retry after a lost answer stores nothing twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use prost::Message as _;
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic_types::StatusExt;

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::metric_value::Value as V;
use citycredit_core::numbers::Num;

use crate::remote::{self, Remote, RemoteError};
use crate::sheet::{self, Cell, Column, Table};

/// Files with at least this many rows get a progress bar (on a terminal).
const PROGRESS_FROM_ROWS: usize = 500;
/// Values per SubmitBatch message, and the encoded size a message stays under (the server
/// decodes messages of at most 4 MiB).
const VALUES_PER_MESSAGE: usize = 500;
const MESSAGE_BYTES: usize = 1024 * 1024;
/// Rounds of checking: each round after the first runs without the rows the last one refused.
const MAX_CHECK_ROUNDS: usize = 50;
/// Pages of ListSubmissions read to find the current RANK, SCORE and TASK_STATUS values of one
/// metric, region and period (1,000 submissions a page).
const MAX_HISTORY_PAGES: usize = 20;

/// What `citycredit import` was asked to do.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    pub file: PathBuf,
    pub addr: String,
    pub ca_cert: Option<PathBuf>,
    pub dry_run: bool,
}

/// One refused row (or header).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refusal {
    /// The row as the spreadsheet numbers it (the header is row 1).
    pub row: usize,
    /// The column: its header as written and its letter.
    pub column: String,
    pub reason: String,
}

/// What an import did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub imported: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub refused: Vec<Refusal>,
    /// Rows without a value (a template's rows nobody filled in).
    pub skipped: usize,
    /// Set when checking stopped before every row was checked.
    pub incomplete: bool,
    pub dry_run: bool,
    /// The stored submissions' ids (first, last), when something was stored.
    pub stored: Option<(u64, u64)>,
    /// True when the server answered a retried batch from its first commit.
    pub replayed: bool,
}

impl Summary {
    /// The lines printed for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for r in &self.refused {
            let _ = writeln!(
                out,
                "refused: row {}, column {}: {}",
                r.row, r.column, r.reason
            );
        }
        if self.incomplete {
            let _ = writeln!(
                out,
                "checking stopped after {MAX_CHECK_ROUNDS} rounds: fix the rows above and import again to check the rest"
            );
        }
        let _ = write!(
            out,
            "{}imported {}, updated {}, unchanged {}, refused {}",
            if self.dry_run && self.refused.is_empty() {
                "would be "
            } else {
                ""
            },
            self.imported,
            self.updated,
            self.unchanged,
            self.refused.len()
        );
        if self.skipped > 0 {
            let _ = write!(out, " ({} rows without a value skipped)", self.skipped);
        }
        out.push('\n');
        if !self.refused.is_empty() {
            out.push_str(
                "nothing was stored: correct the refused rows and import the file again\n",
            );
        } else if self.dry_run {
            out.push_str("dry run: everything was checked, nothing was stored\n");
        } else if let Some((first, last)) = self.stored {
            let ids = if first == last {
                format!("submissions/{first}")
            } else {
                format!("submissions/{first}..submissions/{last}")
            };
            let _ = writeln!(
                out,
                "stored as {ids}{}",
                if self.replayed {
                    " (an earlier attempt had stored them)"
                } else {
                    ""
                }
            );
        } else {
            out.push_str("nothing to store: every value is already current\n");
        }
        out
    }
}

/// Why an import could not run (as opposed to rows it refused).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Read(#[from] sheet::ReadError),
    #[error("{0}")]
    Remote(#[from] RemoteError),
    #[error("the server refused the call: {0}")]
    Server(String),
}

fn server(status: &tonic::Status) -> ImportError {
    let mut text = remote::describe(status);
    if status.code() == Code::Unauthenticated {
        text.push_str(&format!(" (check {})", remote::KEY_VARIABLE));
    }
    ImportError::Server(text)
}

/// Runs `citycredit import`: exit 0 when the file was stored (or checked, with `--dry-run`)
/// or nothing needed storing, 1 when rows or columns were refused (nothing stored), 2 when the
/// import could not run.
pub fn run(opts: &ImportOptions) -> ExitCode {
    let outcome = match remote::block_on(import(opts)) {
        Ok(outcome) => outcome,
        Err(code) => return code,
    };
    match outcome {
        Ok(summary) => {
            print!("{}", summary.render());
            if summary.refused.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("citycredit: {e}");
            ExitCode::from(2)
        }
    }
}

/// The columns of a file, by position.
struct Columns {
    /// For each position: the column it holds (None: a blank header over an empty column).
    by_position: Vec<Option<Column>>,
    headers: Vec<String>,
}

impl Columns {
    fn position(&self, c: Column) -> Option<usize> {
        self.by_position.iter().position(|p| *p == Some(c))
    }

    fn label(&self, c: Column) -> String {
        match self.position(c) {
            Some(i) => format!("{} ({})", self.headers[i], sheet::column_letter(i)),
            None => format!("{} (not in the file)", c.header()),
        }
    }

    /// Reads the header; refuses unknown, repeated and missing columns, each by name.
    fn of(table: &Table) -> Result<Columns, Vec<Refusal>> {
        let mut refusals = Vec::new();
        let mut by_position = Vec::with_capacity(table.headers.len());
        let mut seen: BTreeMap<Column, usize> = BTreeMap::new();
        for (i, h) in table.headers.iter().enumerate() {
            let letter = sheet::column_letter(i);
            let column = if h.is_empty() {
                if let Some(row) = table.rows.iter().find(|r| {
                    matches!(&r.cells[i], Cell::Text(t) if !t.trim().is_empty())
                        || matches!(&r.cells[i], Cell::Bad(_))
                }) {
                    refusals.push(Refusal {
                        row: 1,
                        column: format!("({letter})"),
                        reason: format!(
                            "the column has no header but row {} has a value in it",
                            row.number
                        ),
                    });
                }
                None
            } else {
                match Column::parse_header(h) {
                    Some(c) => {
                        if let Some(first) = seen.insert(c, i) {
                            refusals.push(Refusal {
                                row: 1,
                                column: format!("{h} ({letter})"),
                                reason: format!(
                                    "the column {} appears twice (also {})",
                                    c.en(),
                                    sheet::column_letter(first)
                                ),
                            });
                        }
                        Some(c)
                    }
                    None => {
                        refusals.push(Refusal {
                            row: 1,
                            column: format!("{h} ({letter})"),
                            reason: format!("unknown column `{h}`; known columns: {}", known()),
                        });
                        None
                    }
                }
            };
            by_position.push(column);
        }
        for c in Column::REQUIRED {
            if !seen.contains_key(&c) {
                refusals.push(Refusal {
                    row: 1,
                    column: c.header(),
                    reason: format!("the file has no {} / {} column", c.zh(), c.en()),
                });
            }
        }
        if refusals.is_empty() {
            Ok(Columns {
                by_position,
                headers: table.headers.clone(),
            })
        } else {
            Err(refusals)
        }
    }
}

fn known() -> String {
    Column::ALL
        .iter()
        .filter(|c| !c.read_only())
        .map(|c| format!("{}/{}", c.zh(), c.en()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The key a value is current under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    metric: String,
    region: String,
    period: String,
    department: String,
    domain: String,
    task: String,
}

/// One data row ready to send.
struct Line {
    row: usize,
    input: pb::SubmissionInput,
    kind: Option<pb::MetricKind>,
    key: Key,
}

/// A metric's kind as the catalog gives it.
fn kind_of(m: &pb::Metric) -> Option<pb::MetricKind> {
    pb::MetricKind::try_from(m.kind).ok()
}

/// A cell's text for a value of `kind`, or why it is not one.
pub fn parse_value(kind: Option<pb::MetricKind>, text: &str) -> Result<pb::MetricValue, String> {
    let value = match kind {
        Some(pb::MetricKind::Bool | pb::MetricKind::DomainFlag) => {
            match text.to_lowercase().as_str() {
                "true" | "是" => V::Flag(true),
                "false" | "否" => V::Flag(false),
                _ => return Err(format!("`{text}` is not true or false (是 or 否)")),
            }
        }
        Some(pb::MetricKind::TaskStatus) => {
            let upper = text.to_ascii_uppercase();
            let name = upper.strip_prefix("TASK_STATUS_").unwrap_or(&upper);
            V::TaskStatus(match name {
                "NOT_STARTED" | "未开始" => pb::TaskStatus::NotStarted,
                "IN_PROGRESS" | "进行中" => pb::TaskStatus::InProgress,
                "DONE" | "已完成" => pb::TaskStatus::Done,
                _ => {
                    return Err(format!(
                        "`{text}` is not a task status: NOT_STARTED, IN_PROGRESS or DONE (未开始, 进行中, 已完成)"
                    ));
                }
            } as i32)
        }
        // Numbers, and metrics the catalog does not know (the server names those).
        _ => V::Number(text.to_owned()),
    };
    Ok(pb::MetricValue { value: Some(value) })
}

/// Do two values of a metric say the same? Numbers compare exactly ("12.50" is "12.5").
fn same_value(a: &pb::MetricValue, b: &pb::MetricValue) -> bool {
    match (&a.value, &b.value) {
        (Some(V::Number(x)), Some(V::Number(y))) => {
            match (Num::parse_decimal(x), Num::parse_decimal(y)) {
                (Ok(x), Ok(y)) => x.0 == y.0,
                _ => x == y,
            }
        }
        (x, y) => x == y,
    }
}

/// Reads every row of the file into lines; rows the file itself shows to be wrong are refused.
fn lines_of(
    table: &Table,
    columns: &Columns,
    metrics: &HashMap<String, pb::Metric>,
    own_department: Option<&str>,
    summary: &mut Summary,
) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut first_of: HashMap<Key, usize> = HashMap::new();
    for row in &table.rows {
        let mut bad = false;
        let mut text = |c: Column, summary: &mut Summary| -> String {
            let Some(i) = columns.position(c) else {
                return String::new();
            };
            match &row.cells[i] {
                Cell::Text(t) if c == Column::Note => t.replace("\r\n", "\n").replace('\r', "\n"),
                Cell::Text(t) => t.trim().to_owned(),
                Cell::Bad(why) => {
                    summary.refused.push(Refusal {
                        row: row.number,
                        column: columns.label(c),
                        reason: why.clone(),
                    });
                    bad = true;
                    String::new()
                }
            }
        };
        let value = text(Column::Value, summary);
        let metric_key = text(Column::Metric, summary);
        let region_code = text(Column::Region, summary);
        let period = text(Column::Period, summary);
        let department_code = text(Column::Department, summary);
        let domain = text(Column::Domain, summary);
        let task_id = text(Column::Task, summary);
        let evidence_uri = text(Column::EvidenceUri, summary);
        let note = text(Column::Note, summary);
        if bad {
            continue;
        }
        if value.is_empty() {
            summary.skipped += 1;
            continue;
        }
        let kind = metrics.get(&metric_key).and_then(kind_of);
        let value = match parse_value(kind, &value) {
            Ok(v) => v,
            Err(why) => {
                summary.refused.push(Refusal {
                    row: row.number,
                    column: columns.label(Column::Value),
                    reason: why,
                });
                continue;
            }
        };
        let key = Key {
            metric: metric_key.clone(),
            region: region_code.clone(),
            period: period.clone(),
            department: if department_code.is_empty() {
                own_department.unwrap_or_default().to_owned()
            } else {
                department_code.clone()
            },
            domain: domain.clone(),
            task: task_id.clone(),
        };
        if let Some(first) = first_of.get(&key) {
            summary.refused.push(Refusal {
                row: row.number,
                column: columns.label(Column::Metric),
                reason: format!(
                    "row {first} has the same metric, region, period, department, domain and task: keep one"
                ),
            });
            continue;
        }
        first_of.insert(key.clone(), row.number);
        lines.push(Line {
            row: row.number,
            input: pb::SubmissionInput {
                metric_key,
                region_code,
                period,
                department_code,
                domain,
                task_id,
                value: Some(value),
                evidence_uri,
                note,
            },
            kind,
            key,
        });
    }
    lines
}

/// The column a field violation path names ("values[3].region_code").
fn violation_target(field: &str) -> Option<(usize, Column)> {
    let rest = field.strip_prefix("values[")?;
    let (index, rest) = rest.split_once(']')?;
    let index: usize = index.parse().ok()?;
    let name = rest.strip_prefix('.').unwrap_or(rest);
    let name = name.split('.').next().unwrap_or_default();
    let column = match name {
        "metric_key" => Column::Metric,
        "region_code" => Column::Region,
        "period" => Column::Period,
        "department_code" => Column::Department,
        "domain" => Column::Domain,
        "task_id" => Column::Task,
        "evidence_uri" => Column::EvidenceUri,
        "note" => Column::Note,
        // "value" and anything about the value, and the whole value ("values[3]").
        _ => Column::Value,
    };
    Some((index, column))
}

/// The messages of one batch: at most `VALUES_PER_MESSAGE` values and about `MESSAGE_BYTES`
/// each.
fn messages(
    inputs: &[&pb::SubmissionInput],
    validate_only: bool,
    key: &str,
) -> Vec<(pb::SubmitBatchRequest, usize)> {
    let mut out = Vec::new();
    let mut current: Vec<pb::SubmissionInput> = Vec::new();
    let mut bytes = 0usize;
    for input in inputs {
        let size = input.encoded_len() + 8;
        if !current.is_empty()
            && (current.len() >= VALUES_PER_MESSAGE || bytes + size > MESSAGE_BYTES)
        {
            let n = current.len();
            out.push((
                pb::SubmitBatchRequest {
                    idempotency_key: key.to_owned(),
                    validate_only,
                    values: std::mem::take(&mut current),
                },
                n,
            ));
            bytes = 0;
        }
        bytes += size;
        current.push((*input).clone());
    }
    let n = current.len();
    out.push((
        pb::SubmitBatchRequest {
            idempotency_key: key.to_owned(),
            validate_only,
            values: current,
        },
        n,
    ));
    out
}

/// Streams one batch, advancing `progress` as messages go out.
async fn send_batch(
    remote: &mut Remote,
    inputs: &[&pb::SubmissionInput],
    validate_only: bool,
    key: &str,
    progress: &ProgressBar,
) -> Result<pb::SubmitBatchResponse, tonic::Status> {
    let bar = progress.clone();
    bar.set_position(0);
    bar.set_length(u64::try_from(inputs.len()).unwrap_or(u64::MAX));
    let stream = tokio_stream::iter(messages(inputs, validate_only, key)).map(move |(m, n)| {
        bar.inc(u64::try_from(n).unwrap_or(0));
        m
    });
    remote
        .submissions
        .submit_batch(stream)
        .await
        .map(tonic::Response::into_inner)
}

fn progress_bar(rows: usize) -> ProgressBar {
    if rows < PROGRESS_FROM_ROWS {
        return ProgressBar::hidden();
    }
    // Drawn on stderr, and only when stderr is a terminal (indicatif hides it otherwise).
    let bar = ProgressBar::with_draw_target(
        Some(u64::try_from(rows).unwrap_or(u64::MAX)),
        ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} rows") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Checks `lines` with the server (validate_only) until a round finds nothing more; returns
/// the refusals.
async fn check(
    remote: &mut Remote,
    lines: &[Line],
    columns: &Columns,
    progress: &ProgressBar,
    summary: &mut Summary,
) -> Result<(), ImportError> {
    let mut candidates: Vec<usize> = (0..lines.len()).collect();
    progress.set_message("checking");
    for _ in 0..MAX_CHECK_ROUNDS {
        if candidates.is_empty() {
            return Ok(());
        }
        let inputs: Vec<&pb::SubmissionInput> =
            candidates.iter().map(|&i| &lines[i].input).collect();
        let status = match send_batch(remote, &inputs, true, "", progress).await {
            Ok(_) => return Ok(()),
            Err(s) => s,
        };
        let mut dropped: BTreeSet<usize> = BTreeSet::new();
        match status.code() {
            Code::InvalidArgument => {
                let details = status.get_error_details();
                let Some(bad) = details.bad_request() else {
                    return Err(server(&status));
                };
                for v in &bad.field_violations {
                    let Some((index, column)) = violation_target(&v.field) else {
                        return Err(server(&status));
                    };
                    let Some(&line) = candidates.get(index) else {
                        return Err(server(&status));
                    };
                    summary.refused.push(Refusal {
                        row: lines[line].row,
                        column: columns.label(column),
                        reason: v.description.clone(),
                    });
                    dropped.insert(index);
                }
            }
            Code::PermissionDenied => {
                // The caller may not submit this metric for this region: every row asking it
                // is refused.
                let info = status.get_error_details();
                let info = info.error_info();
                let field = |k: &str| info.and_then(|i| i.metadata.get(k).cloned());
                let (Some(metric), Some(region)) = (field("metric"), field("region")) else {
                    return Err(server(&status));
                };
                for (index, &line) in candidates.iter().enumerate() {
                    let input = &lines[line].input;
                    if input.metric_key == metric && input.region_code == region {
                        summary.refused.push(Refusal {
                            row: lines[line].row,
                            column: columns.label(Column::Metric),
                            reason: status.message().to_owned(),
                        });
                        dropped.insert(index);
                    }
                }
            }
            _ => return Err(server(&status)),
        }
        if dropped.is_empty() {
            return Err(server(&status));
        }
        candidates = candidates
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !dropped.contains(i))
            .map(|(_, l)| l)
            .collect();
    }
    summary.incomplete = !candidates.is_empty();
    Ok(())
}

/// A value current now, and the submission behind it.
#[derive(Clone, Debug)]
struct Current {
    value: pb::MetricValue,
    submission: String,
}

/// The values current now under the keys of `lines`.
async fn current_values(
    remote: &mut Remote,
    lines: &[Line],
) -> Result<HashMap<Key, Current>, ImportError> {
    let mut out: HashMap<Key, Current> = HashMap::new();
    // COUNT, AMOUNT, BOOL and DOMAIN_FLAG figures list every current value behind them.
    let summed = |k: Option<pb::MetricKind>| {
        matches!(
            k,
            Some(
                pb::MetricKind::Count
                    | pb::MetricKind::Amount
                    | pb::MetricKind::Bool
                    | pb::MetricKind::DomainFlag
            )
        )
    };
    let places: BTreeSet<(&str, &str)> = lines
        .iter()
        .filter(|l| summed(l.kind))
        .map(|l| (l.key.region.as_str(), l.key.period.as_str()))
        .collect();
    for (region, period) in places {
        let figures = remote
            .submissions
            .query_aggregates(pb::QueryAggregatesRequest {
                region_code: region.to_owned(),
                period: period.to_owned(),
                as_of: None,
                approved_only: false,
            })
            .await
            .map_err(|s| server(&s))?
            .into_inner();
        for m in figures.metrics {
            for s in m.sources {
                let Some(value) = s.value else { continue };
                out.entry(Key {
                    metric: m.metric_key.clone(),
                    region: s.region_code,
                    period: period.to_owned(),
                    department: s.department_code,
                    domain: s.domain,
                    task: String::new(),
                })
                .or_insert(Current {
                    value,
                    submission: s.submission,
                });
            }
        }
    }
    // RANK, SCORE and TASK_STATUS figures show only the latest value: read the history.
    let latest_only: BTreeSet<(&str, &str, &str)> = lines
        .iter()
        .filter(|l| !summed(l.kind) && l.kind.is_some())
        .map(|l| {
            (
                l.key.metric.as_str(),
                l.key.region.as_str(),
                l.key.period.as_str(),
            )
        })
        .collect();
    for (metric, region, period) in latest_only {
        let mut retracted: BTreeSet<String> = BTreeSet::new();
        let mut token = String::new();
        for _ in 0..MAX_HISTORY_PAGES {
            let page = remote
                .submissions
                .list_submissions(pb::ListSubmissionsRequest {
                    region_code: region.to_owned(),
                    period: period.to_owned(),
                    metric_key: metric.to_owned(),
                    page_size: 1_000,
                    page_token: token.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|s| server(&s))?
                .into_inner();
            // Newest first: a retraction comes before what it retracts; the newest value not
            // retracted is current.
            for s in page.submissions {
                if !s.retracts.is_empty() {
                    retracted.insert(s.retracts);
                    continue;
                }
                if retracted.contains(&s.name) {
                    continue;
                }
                let Some(input) = s.input else { continue };
                let Some(value) = input.value else { continue };
                out.entry(Key {
                    metric: input.metric_key,
                    region: input.region_code,
                    period: input.period,
                    department: input.department_code,
                    domain: input.domain,
                    task: input.task_id,
                })
                .or_insert(Current {
                    value,
                    submission: s.name,
                });
            }
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
    }
    Ok(out)
}

/// The caller's own department, when the caller is a department principal (a department
/// principal who leaves the department empty reports for its own).
async fn own_department(remote: &mut Remote) -> Result<Option<String>, ImportError> {
    let page = remote
        .registry
        .list_principals(pb::ListPrincipalsRequest {
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .map_err(|s| server(&s))?
        .into_inner();
    Ok(match page.principals.as_slice() {
        [me] if me.role == pb::Role::Department as i32 => Some(me.department_code.clone()),
        _ => None,
    })
}

/// The idempotency key of the batch: what is sent and what was current when it was decided.
fn batch_key(sent: &[&Line], current: &HashMap<Key, Current>) -> String {
    let mut hash = Sha256::new();
    for line in sent {
        hash.update(line.input.encode_to_vec());
        hash.update(b"\x1f");
        if let Some(c) = current.get(&line.key) {
            hash.update(c.submission.as_bytes());
        }
        hash.update(b"\x1e");
    }
    let digest = hex::encode(hash.finalize());
    format!("import-{}", &digest[..40])
}

/// Reads, checks, compares and (without `dry_run`) stores the file.
pub async fn import(opts: &ImportOptions) -> Result<Summary, ImportError> {
    let mut summary = Summary {
        dry_run: opts.dry_run,
        ..Summary::default()
    };
    // The key is checked before the file is read: nothing to do without it.
    remote::key_from_env()?;
    let table = sheet::read(&opts.file)?;
    let columns = match Columns::of(&table) {
        Ok(c) => c,
        Err(refused) => {
            summary.refused = refused;
            return Ok(summary);
        }
    };
    let mut remote = remote::connect(&opts.addr, opts.ca_cert.as_deref()).await?;
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
    let own = own_department(&mut remote).await?;
    let lines = lines_of(&table, &columns, &metrics, own.as_deref(), &mut summary);
    let progress = progress_bar(lines.len());
    check(&mut remote, &lines, &columns, &progress, &mut summary).await?;
    if !summary.refused.is_empty() || summary.incomplete {
        progress.finish_and_clear();
        summary.refused.sort();
        return Ok(summary);
    }
    let current = current_values(&mut remote, &lines).await?;
    let mut sent: Vec<&Line> = Vec::new();
    for line in &lines {
        match (current.get(&line.key), &line.input.value) {
            (Some(c), Some(v)) if same_value(&c.value, v) => summary.unchanged += 1,
            (Some(_), _) => {
                summary.updated += 1;
                sent.push(line);
            }
            (None, _) => {
                summary.imported += 1;
                sent.push(line);
            }
        }
    }
    if opts.dry_run || sent.is_empty() {
        progress.finish_and_clear();
        return Ok(summary);
    }
    let key = batch_key(&sent, &current);
    let inputs: Vec<&pb::SubmissionInput> = sent.iter().map(|l| &l.input).collect();
    progress.set_message("storing");
    let mut attempt = 0u32;
    let answer = loop {
        match send_batch(&mut remote, &inputs, false, &key, &progress).await {
            Ok(a) => break a,
            // The same key makes the retry safe: a batch that was stored is answered again.
            Err(s) if matches!(s.code(), Code::Unavailable | Code::Unknown) && attempt < 3 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500) * attempt).await;
            }
            Err(s) => {
                progress.finish_and_clear();
                return Err(server(&s));
            }
        }
    };
    progress.finish_and_clear();
    summary.stored = Some((answer.first_submission_id, answer.last_submission_id));
    summary.replayed = answer.replayed;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violation_paths_name_columns() {
        assert_eq!(
            violation_target("values[3].region_code"),
            Some((3, Column::Region))
        );
        assert_eq!(
            violation_target("values[0].value"),
            Some((0, Column::Value))
        );
        assert_eq!(
            violation_target("values[12].value.number"),
            Some((12, Column::Value))
        );
        assert_eq!(violation_target("values[2]"), Some((2, Column::Value)));
        assert_eq!(violation_target("idempotency_key"), None);
    }

    #[test]
    fn values_by_kind() {
        let flag = |t| parse_value(Some(pb::MetricKind::Bool), t).map(|v| v.value);
        assert_eq!(flag("true"), Ok(Some(V::Flag(true))));
        assert_eq!(flag("FALSE"), Ok(Some(V::Flag(false))));
        assert_eq!(flag("是"), Ok(Some(V::Flag(true))));
        assert!(flag("yes").is_err());
        let task = |t| parse_value(Some(pb::MetricKind::TaskStatus), t).map(|v| v.value);
        assert_eq!(
            task("in_progress"),
            Ok(Some(V::TaskStatus(pb::TaskStatus::InProgress as i32)))
        );
        assert_eq!(
            task("TASK_STATUS_DONE"),
            Ok(Some(V::TaskStatus(pb::TaskStatus::Done as i32)))
        );
        assert_eq!(
            task("未开始"),
            Ok(Some(V::TaskStatus(pb::TaskStatus::NotStarted as i32)))
        );
        assert!(task("finished").is_err());
        let n = parse_value(Some(pb::MetricKind::Count), "12").map(|v| v.value);
        assert_eq!(n, Ok(Some(V::Number("12".into()))));
    }

    #[test]
    fn numbers_compare_exactly() {
        let n = |t: &str| pb::MetricValue {
            value: Some(V::Number(t.into())),
        };
        assert!(same_value(&n("12.50"), &n("12.5")));
        assert!(!same_value(&n("12.5"), &n("12.51")));
        assert!(same_value(&n("100"), &n("0100")));
    }

    #[test]
    fn messages_stay_small() {
        let big = pb::SubmissionInput {
            note: "备".repeat(2_000),
            ..Default::default()
        };
        let inputs: Vec<&pb::SubmissionInput> = std::iter::repeat_n(&big, 1_200).collect();
        let out = messages(&inputs, true, "");
        assert_eq!(out.iter().map(|(_, n)| n).sum::<usize>(), 1_200);
        for (m, _) in &out {
            assert!(m.encoded_len() <= MESSAGE_BYTES + 7_000);
            assert!(m.values.len() <= VALUES_PER_MESSAGE);
        }
    }
}
