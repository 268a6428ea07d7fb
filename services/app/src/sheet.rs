//! Spreadsheets for people: the columns of an import file and of a reporting template (named in
//! Chinese or English), and reading a `.xlsx` (calamine) or `.csv` (csv) file into rows of text,
//! within fixed bounds.
//!
//! A header cell names one column, in either language or both ("指标", "metric",
//! "指标 metric", "指标/metric", "指标 (metric)"). The template's read-only columns (metric
//! name, unit, region name, domain name, current value) are known and ignored on import, so a
//! filled-in template imports as it is; any other header is refused by name.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use calamine::{DataRef, Reader, Xlsx};

/// Largest file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Largest total of an `.xlsx` file's parts once unpacked, as the file declares them.
pub const MAX_UNPACKED_BYTES: u64 = 128 * 1024 * 1024;
/// Most data rows (the header not counted; blank rows not counted). The server's default batch
/// limit is the same, and one file is one all-or-nothing batch.
pub const MAX_ROWS: usize = 10_000;
/// Most columns in the header.
pub const MAX_COLUMNS: usize = 64;
/// Longest cell, in characters (an evidence URI may have 2,048; a note 2,000).
pub const MAX_CELL_CHARS: usize = 2_048;

/// A column of an import file or template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Column {
    Metric,
    MetricName,
    Unit,
    Region,
    RegionName,
    Period,
    Department,
    Domain,
    DomainName,
    Task,
    Value,
    CurrentValue,
    EvidenceUri,
    Note,
}

impl Column {
    /// Every column, in template order.
    pub const ALL: [Column; 14] = [
        Column::Metric,
        Column::MetricName,
        Column::Unit,
        Column::Region,
        Column::RegionName,
        Column::Period,
        Column::Department,
        Column::Domain,
        Column::DomainName,
        Column::Task,
        Column::Value,
        Column::CurrentValue,
        Column::EvidenceUri,
        Column::Note,
    ];

    /// The English name.
    pub fn en(self) -> &'static str {
        match self {
            Column::Metric => "metric",
            Column::MetricName => "metric_name",
            Column::Unit => "unit",
            Column::Region => "region",
            Column::RegionName => "region_name",
            Column::Period => "period",
            Column::Department => "department",
            Column::Domain => "domain",
            Column::DomainName => "domain_name",
            Column::Task => "task",
            Column::Value => "value",
            Column::CurrentValue => "current_value",
            Column::EvidenceUri => "evidence_uri",
            Column::Note => "note",
        }
    }

    /// The Chinese name.
    pub fn zh(self) -> &'static str {
        match self {
            Column::Metric => "指标",
            Column::MetricName => "指标名称",
            Column::Unit => "单位",
            Column::Region => "地区",
            Column::RegionName => "地区名称",
            Column::Period => "期间",
            Column::Department => "部门",
            Column::Domain => "领域",
            Column::DomainName => "领域名称",
            Column::Task => "任务",
            Column::Value => "数值",
            Column::CurrentValue => "当前值",
            Column::EvidenceUri => "佐证链接",
            Column::Note => "备注",
        }
    }

    /// The template's header: both names.
    pub fn header(self) -> String {
        format!("{} {}", self.zh(), self.en())
    }

    /// Read-only columns: written by the template for people, ignored on import.
    pub fn read_only(self) -> bool {
        matches!(
            self,
            Column::MetricName
                | Column::Unit
                | Column::RegionName
                | Column::DomainName
                | Column::CurrentValue
        )
    }

    /// Columns an import file must have.
    pub const REQUIRED: [Column; 4] = [
        Column::Metric,
        Column::Region,
        Column::Period,
        Column::Value,
    ];

    fn by_name(token: &str) -> Option<Column> {
        Column::ALL
            .into_iter()
            .find(|c| c.zh() == token || c.en().eq_ignore_ascii_case(token))
    }

    /// The column a header cell names: its words (split at spaces, '/', '|' and brackets) must
    /// each name the same column.
    pub fn parse_header(text: &str) -> Option<Column> {
        let mut found = None;
        for token in text
            .split(|c: char| c.is_whitespace() || "/|()（）".contains(c))
            .filter(|t| !t.is_empty())
        {
            let c = Column::by_name(token)?;
            if found.is_some_and(|f| f != c) {
                return None;
            }
            found = Some(c);
        }
        found
    }
}

/// A spreadsheet column letter: 0 is "A", 26 is "AA".
pub fn column_letter(index: usize) -> String {
    let mut n = index + 1;
    let mut out = Vec::new();
    while n > 0 {
        let rem = (n - 1) % 26;
        out.push(char::from(b'A' + u8::try_from(rem).unwrap_or(0)));
        n = (n - 1) / 26;
    }
    out.iter().rev().collect()
}

/// One cell as read: text, or why it cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    Text(String),
    Bad(String),
}

impl Cell {
    fn empty(&self) -> bool {
        matches!(self, Cell::Text(t) if t.trim().is_empty())
    }
}

/// A data row: its number as the spreadsheet shows it (the header is row 1) and its cells, one
/// per header column (missing cells are empty).
#[derive(Clone, Debug)]
pub struct Row {
    pub number: usize,
    pub cells: Vec<Cell>,
}

/// A file read: the header as written and the non-blank data rows.
#[derive(Clone, Debug)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Row>,
}

/// Why a file cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
}

fn refused(why: impl Into<String>) -> ReadError {
    ReadError::Refused(why.into())
}

/// Reads `path` (`.xlsx`: its first worksheet; `.csv`: UTF-8, comma-separated) within the
/// bounds above.
pub fn read(path: &Path) -> Result<Table, ReadError> {
    let io = |source| ReadError::Io {
        path: path.display().to_string(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_FILE_BYTES {
        return Err(refused(format!(
            "{} is {size} bytes; at most {MAX_FILE_BYTES} bytes are read",
            path.display()
        )));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let mut bytes = Vec::new();
    File::open(path)
        .map_err(io)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_FILE_BYTES {
        return Err(refused(format!(
            "{} is larger than {MAX_FILE_BYTES} bytes",
            path.display()
        )));
    }
    match ext.as_deref() {
        Some("xlsx") => read_xlsx(bytes),
        Some("csv") => read_csv(&bytes),
        _ => Err(refused(format!(
            "{}: only .xlsx and .csv files are read",
            path.display()
        ))),
    }
}

/// Collects cells into rows: the first non-blank row is the header.
struct Builder {
    headers: Option<Vec<String>>,
    rows: Vec<Row>,
}

impl Builder {
    fn push(&mut self, number: usize, cells: Vec<Cell>) -> Result<(), ReadError> {
        if cells.iter().all(Cell::empty) {
            return Ok(());
        }
        let Some(headers) = &self.headers else {
            if cells.len() > MAX_COLUMNS {
                return Err(refused(format!(
                    "the header (row {number}) has {} columns; at most {MAX_COLUMNS}",
                    cells.len()
                )));
            }
            let mut headers = Vec::with_capacity(cells.len());
            for (i, c) in cells.into_iter().enumerate() {
                match c {
                    Cell::Text(t) => headers.push(t.trim().to_owned()),
                    Cell::Bad(why) => {
                        return Err(refused(format!(
                            "header cell {}{number}: {why}",
                            column_letter(i)
                        )));
                    }
                }
            }
            self.headers = Some(headers);
            return Ok(());
        };
        if self.rows.len() >= MAX_ROWS {
            return Err(refused(format!(
                "more than {MAX_ROWS} rows (row {number}); split the file"
            )));
        }
        let width = headers.len();
        let mut cells = cells;
        if let Some(i) = cells.iter().skip(width).position(|c| !c.empty()) {
            return Err(refused(format!(
                "row {number} has a value in column {}, which has no header",
                column_letter(width + i)
            )));
        }
        cells.resize(width, Cell::Text(String::new()));
        cells.truncate(width);
        self.rows.push(Row { number, cells });
        Ok(())
    }

    fn finish(self) -> Result<Table, ReadError> {
        let headers = self
            .headers
            .ok_or_else(|| refused("the file is empty: no header row"))?;
        Ok(Table {
            headers,
            rows: self.rows,
        })
    }
}

fn bounded(text: String) -> Cell {
    let n = text.chars().count();
    if n > MAX_CELL_CHARS {
        Cell::Bad(format!("{n} characters; at most {MAX_CELL_CHARS}"))
    } else {
        Cell::Text(text)
    }
}

fn xlsx_cell(value: &DataRef<'_>) -> Cell {
    match value {
        DataRef::Empty => Cell::Text(String::new()),
        DataRef::String(s) => bounded(s.clone()),
        DataRef::SharedString(s) => bounded((*s).to_owned()),
        DataRef::Int(i) => Cell::Text(i.to_string()),
        // The shortest decimal that reads back as the same binary number: what was typed
        // ("12.5", "0.1"). Checked as text by the server like any other number.
        DataRef::Float(f) if f.is_finite() => Cell::Text(format!("{f}")),
        DataRef::Float(_) => Cell::Bad("not a finite number".into()),
        DataRef::Bool(b) => Cell::Text(b.to_string()),
        DataRef::DateTime(_) | DataRef::DateTimeIso(_) | DataRef::DurationIso(_) => Cell::Bad(
            "a date or time: type periods and codes as text (format the cell as Text)".into(),
        ),
        DataRef::Error(e) => Cell::Bad(format!("a formula error ({e})")),
    }
}

fn read_xlsx(bytes: Vec<u8>) -> Result<Table, ReadError> {
    // A small file can unpack to a huge one: check what it declares before anything unpacks.
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes))
        .map_err(|e| refused(format!("not an .xlsx file (not a zip archive): {e}")))?;
    let mut unpacked: u64 = 0;
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| refused(format!("a damaged .xlsx file: {e}")))?;
        unpacked = unpacked.saturating_add(entry.size());
    }
    if unpacked > MAX_UNPACKED_BYTES {
        return Err(refused(format!(
            "the .xlsx file unpacks to {unpacked} bytes; at most {MAX_UNPACKED_BYTES}"
        )));
    }
    drop(zip);
    let mut book: Xlsx<_> = Xlsx::new(BufReader::new(std::io::Cursor::new(bytes)))
        .map_err(|e| refused(format!("not a readable .xlsx file: {e}")))?;
    let first = book
        .sheet_names()
        .first()
        .cloned()
        .ok_or_else(|| refused("the workbook has no worksheet"))?;
    let mut reader = book
        .worksheet_cells_reader(&first)
        .map_err(|e| refused(format!("worksheet {first}: {e}")))?;
    let mut builder = Builder {
        headers: None,
        rows: Vec::new(),
    };
    let mut current: Option<(u32, Vec<Cell>)> = None;
    while let Some(cell) = reader
        .next_cell()
        .map_err(|e| refused(format!("worksheet {first}: {e}")))?
    {
        let (row, col) = cell.get_position();
        let col = usize::try_from(col).unwrap_or(usize::MAX);
        if col >= MAX_COLUMNS * 4 {
            if matches!(cell.get_value(), DataRef::Empty) {
                continue;
            }
            return Err(refused(format!(
                "cell {}{} is beyond the last column read",
                column_letter(col.min(16_383)),
                u64::from(row) + 1
            )));
        }
        if current.as_ref().is_some_and(|(r, _)| *r != row)
            && let Some((r, cells)) = current.take()
        {
            builder.push(usize::try_from(r).unwrap_or(usize::MAX) + 1, cells)?;
        }
        let cells = &mut current.get_or_insert_with(|| (row, Vec::new())).1;
        if cells.len() <= col {
            cells.resize(col + 1, Cell::Text(String::new()));
        }
        cells[col] = xlsx_cell(cell.get_value());
    }
    if let Some((r, cells)) = current.take() {
        builder.push(usize::try_from(r).unwrap_or(usize::MAX) + 1, cells)?;
    }
    builder.finish()
}

fn read_csv(bytes: &[u8]) -> Result<Table, ReadError> {
    // Excel's "CSV UTF-8" starts with a byte order mark.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if std::str::from_utf8(bytes).is_err() {
        return Err(refused(
            "the .csv file is not UTF-8: save it as \"CSV UTF-8\" (Excel: CSV UTF-8 (逗号分隔))",
        ));
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut builder = Builder {
        headers: None,
        rows: Vec::new(),
    };
    // A .csv row is numbered by the line it starts on: what a spreadsheet shows, as long as no
    // cell before it holds a line break. The csv reader skips blank lines and may give the
    // offset of the line break before the record: count the line breaks before its first
    // character (counted on from the previous record: records only move forward).
    let mut counted = 0usize;
    let mut line = 1usize;
    for record in reader.records() {
        let record = record.map_err(|e| refused(format!("the .csv file: {e}")))?;
        let start = record
            .position()
            .map_or(0, |p| usize::try_from(p.byte()).unwrap_or(usize::MAX))
            .clamp(counted, bytes.len());
        let first = bytes[start..]
            .iter()
            .position(|b| *b != b'\n' && *b != b'\r')
            .map_or(bytes.len(), |i| start + i);
        line += bytes[counted..first]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        counted = first;
        let cells = record.iter().map(|f| bounded(f.to_owned())).collect();
        builder.push(line, cells)?;
    }
    builder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_in_either_language_or_both() {
        for (text, want) in [
            ("指标", Some(Column::Metric)),
            ("metric", Some(Column::Metric)),
            ("Metric", Some(Column::Metric)),
            ("指标 metric", Some(Column::Metric)),
            ("指标/metric", Some(Column::Metric)),
            ("指标（metric）", Some(Column::Metric)),
            ("佐证链接 evidence_uri", Some(Column::EvidenceUri)),
            ("当前值 current_value", Some(Column::CurrentValue)),
            ("指标 value", None),
            ("colour", None),
            ("", None),
        ] {
            assert_eq!(Column::parse_header(text), want, "{text:?}");
        }
        for c in Column::ALL {
            assert_eq!(Column::parse_header(&c.header()), Some(c));
        }
    }

    #[test]
    fn column_letters() {
        assert_eq!(column_letter(0), "A");
        assert_eq!(column_letter(25), "Z");
        assert_eq!(column_letter(26), "AA");
        assert_eq!(column_letter(27), "AB");
        assert_eq!(column_letter(701), "ZZ");
        assert_eq!(column_letter(702), "AAA");
    }

    #[test]
    fn csv_rows_are_numbered_as_a_spreadsheet_shows_them() {
        let table = read_csv(b"\xEF\xBB\xBFmetric,value\n\na,1\n,\nb,\"2\n3\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(table.headers, ["metric", "value"]);
        let numbers: Vec<usize> = table.rows.iter().map(|r| r.number).collect();
        assert_eq!(numbers, [3, 5]);
        assert_eq!(table.rows[1].cells[1], Cell::Text("2\n3".into()));
    }

    #[test]
    fn xlsx_cells_as_text() {
        let mut book = rust_xlsxwriter::Workbook::new();
        let sheet = book.add_worksheet();
        let write = |r: Result<&mut rust_xlsxwriter::Worksheet, rust_xlsxwriter::XlsxError>| {
            r.unwrap_or_else(|e| panic!("{e}"));
        };
        write(sheet.write_string(0, 0, "指标 metric"));
        write(sheet.write_string(0, 1, "数值 value"));
        write(sheet.write_string(0, 2, "期间 period"));
        // Row 2 is blank; row 3 has a typed number, a boolean and a date.
        write(sheet.write_string(2, 0, "uscc.codes_total"));
        write(sheet.write_number(2, 1, 12.5));
        let date =
            rust_xlsxwriter::ExcelDateTime::from_ymd(2026, 1, 1).unwrap_or_else(|e| panic!("{e}"));
        let date_format = rust_xlsxwriter::Format::new().set_num_format("yyyy-mm");
        write(sheet.write_datetime_with_format(2, 2, &date, &date_format));
        write(sheet.write_boolean(3, 1, true));
        write(sheet.write_number(3, 2, 2026.0));
        let bytes = book.save_to_buffer().unwrap_or_else(|e| panic!("{e}"));
        let table = read_xlsx(bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(table.headers, ["指标 metric", "数值 value", "期间 period"]);
        let numbers: Vec<usize> = table.rows.iter().map(|r| r.number).collect();
        assert_eq!(numbers, [3, 4]);
        assert_eq!(
            table.rows[0].cells[0],
            Cell::Text("uscc.codes_total".into())
        );
        assert_eq!(table.rows[0].cells[1], Cell::Text("12.5".into()));
        assert!(
            matches!(&table.rows[0].cells[2], Cell::Bad(why) if why.contains("date")),
            "{:?}",
            table.rows[0].cells[2]
        );
        assert_eq!(table.rows[1].cells[0], Cell::Text(String::new()));
        assert_eq!(table.rows[1].cells[1], Cell::Text("true".into()));
        assert_eq!(table.rows[1].cells[2], Cell::Text("2026".into()));
        assert!(read_xlsx(b"not a zip".to_vec()).is_err());
    }

    #[test]
    fn csv_bounds() {
        let long = format!("metric\n{}\n", "x".repeat(MAX_CELL_CHARS + 1));
        let table = read_csv(long.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(table.rows[0].cells[0], Cell::Bad(_)));
        let mut many = String::from("metric\n");
        for _ in 0..=MAX_ROWS {
            many.push_str("a\n");
        }
        assert!(read_csv(many.as_bytes()).is_err());
        assert!(
            read_csv(b"metric\na,b\n").is_err(),
            "a cell without a header"
        );
        assert!(read_csv(b"\xFFmetric\n").is_err(), "not UTF-8");
        assert!(read_csv(b"").is_err(), "no header");
    }
}
