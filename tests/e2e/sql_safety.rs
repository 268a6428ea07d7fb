//! Security check (SECURITY.md): SQL is built only with bound parameters. sqlx 0.9 accepts a
//! non-`'static` SQL string only through `AssertSqlSafe` or its `QueryBuilder`, so every
//! dynamically built statement goes through one of them. A `QueryBuilder` binds values with
//! `push_bind` and needs no comment; an `AssertSqlSafe` must carry a `SQL-safe:` comment (within
//! the 12 lines before it) saying why nothing from a caller is spliced in. A new `AssertSqlSafe`
//! without one fails here. (`services/gateway/src` is scanned too; it has none today.)

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() && !matches!(name, "target" | "fuzz" | ".git") {
            rust_files(&p, out);
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_dynamic_sql_string_is_justified() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["src", "services", "tests"] {
        rust_files(&root.join(dir), &mut files);
    }
    let mut sites = 0;
    let mut unjustified = Vec::new();
    for f in &files {
        if f.ends_with("sql_safety.rs") {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            if line.contains("QueryBuilder::") && line.contains("new(") {
                sites += 1;
                continue;
            }
            if !line.contains("AssertSqlSafe(") {
                continue;
            }
            sites += 1;
            let from = i.saturating_sub(12);
            if !lines[from..i].iter().any(|l| l.contains("SQL-safe:")) {
                unjustified.push(format!("{}:{}", f.display(), i + 1));
            }
        }
    }
    assert!(
        sites >= 10,
        "only {sites} AssertSqlSafe and QueryBuilder sites found: is the scan broken?"
    );
    assert!(
        unjustified.is_empty(),
        "AssertSqlSafe without a `SQL-safe:` comment:\n{}",
        unjustified.join("\n")
    );
}
