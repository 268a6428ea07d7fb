//! The catalog loader on structured mutations of the built-in catalog file: the fuzz input is a
//! list of edits (delete, duplicate or swap lines, replace a value, insert text), so most
//! inputs stay valid TOML and reach the semantic validation (references, caps, formulas).
#![no_main]

use arbitrary::Arbitrary;
use citycredit_core::catalog::{BUILTIN_CATALOG_TOML, Catalog};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Edit {
    Delete(u16),
    Duplicate(u16),
    Swap(u16, u16),
    /// Replaces what follows the first `=` on a line.
    Value(u16, Value),
    Insert(u16, String),
}

#[derive(Arbitrary, Debug)]
enum Value {
    Int(i64),
    Decimal(u32, u8),
    Text(String),
    Quoted(String),
    Empty,
    Copy(u16),
}

fuzz_target!(|edits: Vec<Edit>| {
    let mut lines: Vec<String> = BUILTIN_CATALOG_TOML.lines().map(str::to_owned).collect();
    for edit in edits.into_iter().take(16) {
        let n = lines.len().max(1);
        let at = |i: u16| usize::from(i) % n;
        match edit {
            Edit::Delete(i) if !lines.is_empty() => {
                lines.remove(at(i));
            }
            Edit::Duplicate(i) if !lines.is_empty() => {
                let l = lines[at(i)].clone();
                lines.insert(at(i), l);
            }
            Edit::Swap(a, b) if !lines.is_empty() => {
                let (a, b) = (at(a), at(b));
                lines.swap(a, b);
            }
            Edit::Value(i, v) if !lines.is_empty() => {
                let i = at(i);
                let text = match v {
                    Value::Int(x) => x.to_string(),
                    Value::Decimal(x, d) => format!("\"{}.{}\"", x, d),
                    Value::Text(t) => t,
                    Value::Quoted(t) => format!("{t:?}"),
                    Value::Empty => "\"\"".to_owned(),
                    Value::Copy(j) => lines[at(j)]
                        .split_once('=')
                        .map_or(String::new(), |(_, v)| v.to_owned()),
                };
                if let Some((k, _)) = lines[i].split_once('=') {
                    lines[i] = format!("{k}= {text}");
                }
            }
            Edit::Insert(i, t) => {
                let i = usize::from(i) % (lines.len() + 1);
                lines.insert(i, t);
            }
            _ => {}
        }
    }
    let text = lines.join("\n");
    match Catalog::from_toml(&text, "mutated.toml") {
        Ok(c) => {
            // Whatever loads is internally consistent enough to score.
            let _ = c.guiding_max_total();
            for m in &c.metrics {
                assert!(c.metric(&m.key).is_some());
            }
        }
        Err(e) => assert!(!e.problems.is_empty()),
    }
});
