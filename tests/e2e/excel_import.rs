//! Excel and CSV through the real binary (`target/debug/citycredit import` and `template`)
//! against a real server on a loopback port, SQLite and PostgreSQL (issue 14, points 3 and 4):
//!
//! - template -> fill in -> `import --dry-run` (nothing stored) -> `import` -> the scorecard
//!   changes as expected -> the same file again stores nothing (unchanged) -> one changed value
//!   is an update; a new template shows the current values;
//! - the template has one row per expected metric and region (per domain for domain flags),
//!   Chinese names, units and data validation in the value cells;
//! - a .csv with bad rows names each bad row (row, column, reason) and stores nothing, a value
//!   the caller may not submit included;
//! - an unknown column is refused by name and nothing is stored; without the key in the
//!   environment nothing runs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use calamine::{Data, Reader, Xlsx};
use tokio::process::Command;

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::department_registry_service_client::DepartmentRegistryServiceClient;
use citycredit::proto::v1::indicator_service_client::IndicatorServiceClient;
use citycredit::proto::v1::metric_submission_service_client::MetricSubmissionServiceClient;
use citycredit::proto::v1::scoring_service_client::ScoringServiceClient;
use citycredit_app::sheet::Column;
use citycredit_tests::topology::binary;
use citycredit_tests::{Backend, TestServer, both_databases, fresh_schema, use_backend};

const CITY: &str = "330800";
const PERIOD: &str = "2026";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `key` in CITYCREDIT_API_KEY (or none).
async fn citycredit(key: Option<&str>, args: &[&str]) -> Run {
    let mut cmd = Command::new(binary());
    cmd.args(args).env_remove("CITYCREDIT_API_KEY");
    if let Some(k) = key {
        cmd.env("CITYCREDIT_API_KEY", k);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("citycredit {args:?} ran for 2 minutes"))
        .unwrap_or_else(|e| panic!("citycredit {args:?}: {e}"));
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn text(d: &Data) -> String {
    match d {
        Data::Empty => String::new(),
        Data::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The first worksheet's cells as text, row by row.
fn read_xlsx(path: &Path) -> Vec<Vec<String>> {
    let mut book: Xlsx<_> =
        calamine::open_workbook(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = book.sheet_names()[0].clone();
    let range = book
        .worksheet_range(&name)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    range.rows().map(|r| r.iter().map(text).collect()).collect()
}

/// The first worksheet's XML (to see its data validations).
fn sheet_xml(path: &Path) -> String {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{e}"));
    let mut zip = zip::ZipArchive::new(file).unwrap_or_else(|e| panic!("{e}"));
    let mut xml = String::new();
    zip.by_name("xl/worksheets/sheet1.xml")
        .unwrap_or_else(|e| panic!("{e}"))
        .read_to_string(&mut xml)
        .unwrap_or_else(|e| panic!("{e}"));
    xml
}

fn col(c: Column) -> usize {
    Column::ALL
        .iter()
        .position(|x| *x == c)
        .unwrap_or_else(|| panic!("{c:?}"))
}

/// Writes `rows` (the template's, header first) to `path` with values set: a number where
/// `values` gives one for (metric, region).
fn fill(path: &Path, rows: &[Vec<String>], values: &BTreeMap<(&str, &str), f64>) {
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    for (r, row) in rows.iter().enumerate() {
        let rn = u32::try_from(r).unwrap_or(u32::MAX);
        for (c, cell) in row.iter().enumerate() {
            let cn = u16::try_from(c).unwrap_or(u16::MAX);
            if !cell.is_empty() {
                sheet
                    .write_string(rn, cn, cell)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
        if r == 0 {
            continue;
        }
        let key = (
            row[col(Column::Metric)].as_str(),
            row[col(Column::Region)].as_str(),
        );
        if let Some(v) = values.get(&key) {
            // Typed as a number, the way a person fills in a cell.
            sheet
                .write_number(rn, u16::try_from(col(Column::Value)).unwrap_or(0), *v)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    book.save(path).unwrap_or_else(|e| panic!("{e}"));
}

async fn stored(s: &TestServer) -> usize {
    let mut c = MetricSubmissionServiceClient::new(s.admin());
    c.list_submissions(pb::ListSubmissionsRequest {
        page_size: 1_000,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("list: {e}"))
    .into_inner()
    .submissions
    .len()
}

async fn statuses(s: &TestServer, codes: &[&str]) -> Vec<pb::IndicatorStatus> {
    let mut scoring = ScoringServiceClient::new(s.admin());
    let card = scoring
        .get_scorecard(pb::GetScorecardRequest {
            region_code: CITY.into(),
            period: PERIOD.into(),
            as_of: None,
            rule_version: String::new(),
            approved_only: false,
        })
        .await
        .unwrap_or_else(|e| panic!("scorecard: {e}"))
        .into_inner()
        .scorecard
        .unwrap_or_else(|| panic!("no scorecard"));
    codes
        .iter()
        .map(|code| {
            let i = card
                .indicators
                .iter()
                .find(|i| i.code == *code)
                .unwrap_or_else(|| panic!("no {code}"));
            pb::IndicatorStatus::try_from(i.status).unwrap_or(pb::IndicatorStatus::Unspecified)
        })
        .collect()
}

async fn template_fill_import_score(backend: Backend) {
    let schema = fresh_schema();
    let s = TestServer::start_with(|c| use_backend(c, backend, &schema)).await;
    let addr = format!("http://{}", s.addr);
    let key = s
        .create_principal("samr-office", pb::Role::Department, Some("samr"))
        .await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let template = dir.path().join("samr-2026.xlsx");
    let t = template.to_str().unwrap_or_default();

    // The template.
    let run = citycredit(
        Some(&key),
        &[
            "template",
            "--department",
            "samr",
            "--period",
            PERIOD,
            "--out",
            t,
            "--addr",
            &addr,
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let rows = read_xlsx(&template);
    let header: Vec<String> = Column::ALL.iter().map(|c| c.header()).collect();
    assert_eq!(rows[0], header);

    // One row per expected metric and region, per domain for a domain flag.
    let duties = DepartmentRegistryServiceClient::new(s.admin())
        .get_department_duties(pb::GetDepartmentDutiesRequest {
            department: "samr".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let metrics: BTreeMap<String, pb::Metric> = IndicatorServiceClient::new(s.admin())
        .list_metrics(pb::ListMetricsRequest::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .metrics
        .into_iter()
        .map(|m| (m.key.clone(), m))
        .collect();
    let mut want: BTreeSet<(String, String, String)> = BTreeSet::new();
    for report in &duties.expected_reports {
        let m = &metrics[&report.metric_key];
        let domains: Vec<String> = if m.kind == pb::MetricKind::DomainFlag as i32 {
            DepartmentRegistryServiceClient::new(s.admin())
                .list_domains(pb::ListDomainsRequest {
                    domain_set: m.domain_set.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .into_inner()
                .domains
                .into_iter()
                .map(|d| d.code)
                .collect()
        } else {
            vec![String::new()]
        };
        for region in &report.regions {
            for d in &domains {
                want.insert((
                    report.metric_key.clone(),
                    region.trim_start_matches("regions/").to_owned(),
                    d.clone(),
                ));
            }
        }
    }
    let got: BTreeSet<(String, String, String)> = rows[1..]
        .iter()
        .map(|r| {
            (
                r[col(Column::Metric)].clone(),
                r[col(Column::Region)].clone(),
                r[col(Column::Domain)].clone(),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(rows.len() - 1, want.len(), "no row twice");
    let row_of = |metric: &str| {
        rows.iter()
            .position(|r| r[col(Column::Metric)] == metric && r[col(Column::Region)] == CITY)
            .unwrap_or_else(|| panic!("the template has no row for {metric} at {CITY}"))
    };
    let total = row_of("uscc.stock_codes_total");
    assert_eq!(
        rows[total][col(Column::MetricName)],
        metrics["uscc.stock_codes_total"].title
    );
    assert_eq!(rows[total][col(Column::Unit)], "个 count");
    assert_eq!(rows[total][col(Column::Department)], "samr");
    assert_eq!(rows[total][col(Column::Period)], PERIOD);
    assert_eq!(rows[total][col(Column::RegionName)], "衢州市");
    assert_eq!(rows[total][col(Column::CurrentValue)], "");
    // Data validation: the COUNT value cell takes whole numbers >= 0.
    let xml = sheet_xml(&template);
    let value_cell = format!(
        "sqref=\"{}{}\"",
        citycredit_app::sheet::column_letter(col(Column::Value)),
        total + 1
    );
    let validation = xml
        .split("<dataValidation ")
        .find(|v| v.contains(&value_cell))
        .unwrap_or_else(|| panic!("no data validation on {value_cell}"));
    assert!(
        validation.contains("type=\"whole\"")
            && validation.contains("operator=\"greaterThanOrEqual\"")
            && validation.contains("<formula1>0</formula1>"),
        "{validation}"
    );
    if let Some(flag_row) = rows
        .iter()
        .position(|r| r[col(Column::Unit)] == "是/否 true/false")
    {
        let cell = format!(
            "sqref=\"{}{}\"",
            citycredit_app::sheet::column_letter(col(Column::Value)),
            flag_row + 1
        );
        let v = xml
            .split("<dataValidation ")
            .find(|v| v.contains(&cell))
            .unwrap_or_else(|| panic!("no data validation on {cell}"));
        assert!(
            v.contains("type=\"list\"") && v.contains("true,false"),
            "{v}"
        );
    }

    // Fill in B01 (every stock code converted) and B02 (1 bad code in 20,000).
    let mut values = BTreeMap::new();
    values.insert(("uscc.stock_codes_total", CITY), 100.0);
    values.insert(("uscc.stock_codes_converted", CITY), 100.0);
    values.insert(("uscc.codes_total", CITY), 20_000.0);
    values.insert(("uscc.codes_duplicate_or_invalid", CITY), 1.0);
    for (metric, _) in values.keys() {
        row_of(metric);
    }
    let filled = dir.path().join("filled.xlsx");
    let f = filled.to_str().unwrap_or_default();
    fill(&filled, &rows, &values);
    assert_eq!(
        statuses(&s, &["B01", "B02"]).await,
        [
            pb::IndicatorStatus::MissingData,
            pb::IndicatorStatus::MissingData
        ]
    );

    // Dry run: checked, nothing stored.
    let run = citycredit(Some(&key), &["import", f, "--addr", &addr, "--dry-run"]).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("would be imported 4, updated 0, unchanged 0, refused 0"),
        "{}",
        run.stdout
    );
    let skipped = want.len() - 4;
    assert!(
        run.stdout
            .contains(&format!("({skipped} rows without a value skipped)")),
        "{}",
        run.stdout
    );
    assert_eq!(stored(&s).await, 0, "a dry run stored something");

    // The import: stored, and the scorecard passes B01 and B02.
    let run = citycredit(Some(&key), &["import", f, "--addr", &addr]).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("imported 4, updated 0, unchanged 0, refused 0"),
        "{}",
        run.stdout
    );
    assert_eq!(stored(&s).await, 4);
    assert_eq!(
        statuses(&s, &["B01", "B02"]).await,
        [pb::IndicatorStatus::Pass, pb::IndicatorStatus::Pass]
    );

    // The same file again stores nothing.
    let run = citycredit(Some(&key), &["import", f, "--addr", &addr]).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("imported 0, updated 0, unchanged 4, refused 0"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("nothing to store"), "{}", run.stdout);
    assert_eq!(stored(&s).await, 4);

    // One value changed: an update, and B01 fails (90 of 100 converted).
    values.insert(("uscc.stock_codes_converted", CITY), 90.0);
    fill(&filled, &rows, &values);
    let run = citycredit(Some(&key), &["import", f, "--addr", &addr]).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("imported 0, updated 1, unchanged 3, refused 0"),
        "{}",
        run.stdout
    );
    assert_eq!(stored(&s).await, 5);
    assert_eq!(
        statuses(&s, &["B01", "B02"]).await,
        [pb::IndicatorStatus::Fail, pb::IndicatorStatus::Pass]
    );

    // A new template shows the current values.
    let run = citycredit(
        Some(&key),
        &[
            "template",
            "--department",
            "samr",
            "--period",
            PERIOD,
            "--out",
            t,
            "--addr",
            &addr,
        ],
    )
    .await;
    assert_eq!(run.code, Some(2), "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("--force"), "{}", run.stderr);
    let run = citycredit(
        Some(&key),
        &[
            "template",
            "--department",
            "samr",
            "--period",
            PERIOD,
            "--out",
            t,
            "--addr",
            &addr,
            "--force",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let rows = read_xlsx(&template);
    let current = |metric: &str| {
        rows.iter()
            .find(|r| r[col(Column::Metric)] == metric && r[col(Column::Region)] == CITY)
            .map(|r| r[col(Column::CurrentValue)].clone())
            .unwrap_or_default()
    };
    assert_eq!(current("uscc.stock_codes_total"), "100");
    assert_eq!(current("uscc.stock_codes_converted"), "90");
    assert_eq!(current("uscc.codes_total"), "20000");
}
both_databases!(
    template_fill_import_score,
    flavor = "multi_thread",
    worker_threads = 2
);

async fn bad_rows_are_named_and_nothing_is_stored(backend: Backend) {
    let schema = fresh_schema();
    let s = TestServer::start_with(|c| use_backend(c, backend, &schema)).await;
    let addr = format!("http://{}", s.addr);
    let key = s
        .create_principal("samr-office", pb::Role::Department, Some("samr"))
        .await;
    // A COUNT metric samr may not report (permission is per metric and region).
    let duties = DepartmentRegistryServiceClient::new(s.admin())
        .get_department_duties(pb::GetDepartmentDutiesRequest {
            department: "samr".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let metrics = IndicatorServiceClient::new(s.admin())
        .list_metrics(pb::ListMetricsRequest::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .metrics;
    let forbidden = metrics
        .iter()
        .find(|m| {
            m.kind == pb::MetricKind::Count as i32 && !duties.permitted_metrics.contains(&m.key)
        })
        .map(|m| m.key.clone())
        .unwrap_or_else(|| panic!("samr may report every COUNT metric"));

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let csv = dir.path().join("bad.csv");
    let body = format!(
        "指标,地区,期间,部门,数值,备注\n\
         uscc.codes_total,{CITY},{PERIOD},samr,5,good\n\
         uscc.stock_codes_total,{CITY},{PERIOD},samr,1.5,a fraction\n\
         uscc.stock_codes_converted,999999,{PERIOD},samr,3,unknown region\n\
         \n\
         uscc.codes_duplicate_or_invalid,{CITY},2026-13,samr,1,bad period\n\
         {forbidden},{CITY},{PERIOD},samr,7,not samr's\n\
         uscc.codes_total,{CITY},{PERIOD},samr,6,the same key as row 2\n"
    );
    std::fs::write(&csv, body).unwrap_or_else(|e| panic!("{e}"));
    let c = csv.to_str().unwrap_or_default();
    for dry in [true, false] {
        let mut args = vec!["import", c, "--addr", &addr];
        if dry {
            args.push("--dry-run");
        }
        let run = citycredit(Some(&key), &args).await;
        assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
        let lines: Vec<&str> = run
            .stdout
            .lines()
            .filter(|l| l.starts_with("refused: "))
            .collect();
        let expect = [
            "refused: row 3, column 数值 (E): ",
            "refused: row 4, column 地区 (B): unknown region `999999`",
            "refused: row 6, column 期间 (C): ",
            "refused: row 7, column 指标 (A): ",
            "refused: row 8, column 指标 (A): row 2 has the same",
        ];
        assert_eq!(lines.len(), expect.len(), "{}", run.stdout);
        for (line, want) in lines.iter().zip(expect) {
            assert!(line.starts_with(want), "{line:?} is not {want:?}");
        }
        assert!(lines[0].contains("1.5"), "{}", lines[0]);
        assert!(lines[2].contains("2026-13"), "{}", lines[2]);
        assert!(
            lines[3].contains(&forbidden) && lines[3].contains("may not"),
            "{}",
            lines[3]
        );
        assert!(run.stdout.contains("refused 5"), "{}", run.stdout);
        assert!(run.stdout.contains("nothing was stored"), "{}", run.stdout);
        assert_eq!(stored(&s).await, 0, "a file with bad rows stored something");
    }

    // An unknown column is refused by name; nothing stored.
    let csv = dir.path().join("colour.csv");
    std::fs::write(
        &csv,
        format!("metric,region,period,department,value,colour\nuscc.codes_total,{CITY},{PERIOD},samr,5,red\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let c = csv.to_str().unwrap_or_default();
    let run = citycredit(Some(&key), &["import", c, "--addr", &addr]).await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("refused: row 1, column colour (F): unknown column `colour`"),
        "{}",
        run.stdout
    );
    assert_eq!(stored(&s).await, 0);

    // Without the key nothing runs; with a wrong one the server refuses; nothing stored.
    let run = citycredit(None, &["import", c, "--addr", &addr]).await;
    assert_eq!(run.code, Some(2), "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("CITYCREDIT_API_KEY"), "{}", run.stderr);
    let csv = dir.path().join("good.csv");
    std::fs::write(
        &csv,
        format!("metric,region,period,value\nuscc.codes_total,{CITY},{PERIOD},5\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let c = csv.to_str().unwrap_or_default();
    let run = citycredit(
        Some("not-a-key-0123456789abcdef"),
        &["import", c, "--addr", &addr],
    )
    .await;
    assert_eq!(run.code, Some(2), "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("Unauthenticated"), "{}", run.stderr);
    assert_eq!(stored(&s).await, 0);
    // The department principal may leave the department empty: its own is used.
    let run = citycredit(Some(&key), &["import", c, "--addr", &addr]).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("imported 1"), "{}", run.stdout);
    let run = citycredit(Some(&key), &["import", c, "--addr", &addr]).await;
    assert!(run.stdout.contains("unchanged 1"), "{}", run.stdout);
    assert_eq!(stored(&s).await, 1);
}
both_databases!(
    bad_rows_are_named_and_nothing_is_stored,
    flavor = "multi_thread",
    worker_threads = 2
);
