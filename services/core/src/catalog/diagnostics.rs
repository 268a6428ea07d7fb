//! Load-time problems of data files (catalog and city), each naming the file, the line and the
//! key at fault, all reported at once.

use std::fmt;
use std::ops::Range;

/// One problem in a data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the table or value at fault, when known.
    pub line: Option<usize>,
    /// Where in the data, e.g. `indicator B01, condition 1, numerator`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found while loading one file. Loading refuses the file if there is any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    /// The file's name or `builtin:<name>`.
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{} has {n} problem{}:",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            match p.line {
                Some(line) => write!(f, "\n  {}:{line}: {}: {}", self.file, p.key, p.message)?,
                None => write!(f, "\n  {}: {}: {}", self.file, p.key, p.message)?,
            }
        }
        Ok(())
    }
}

/// Collects problems for one file, turning byte spans into line numbers.
#[derive(Debug)]
pub struct Diagnostics<'a> {
    file: String,
    text: &'a str,
    problems: Vec<Problem>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(file: impl Into<String>, text: &'a str) -> Self {
        Diagnostics {
            file: file.into(),
            text,
            problems: Vec::new(),
        }
    }

    /// The 1-based line where a span starts.
    pub fn line_of(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The span of the first occurrence of `needle` at or after the start of `from` (a table's
    /// span), so that a problem in a nested entry (a task of an item, whose `[[item.task]]`
    /// tables lie outside the item's own span) names that entry's line; `from` itself when the
    /// text is not there.
    pub fn span_of_text(&self, from: &Range<usize>, needle: &str) -> Range<usize> {
        let start = from.start.min(self.text.len());
        self.text
            .get(start..)
            .and_then(|t| t.find(needle))
            .map_or_else(|| from.clone(), |at| start + at..start + at + needle.len())
    }

    pub fn at(&mut self, span: &Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let line = Some(self.line_of(span));
        self.problems.push(Problem {
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    pub fn nowhere(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            line: None,
            key: key.into(),
            message: message.into(),
        });
    }

    /// A TOML syntax or shape error from the parser (which knows its own span).
    pub fn parse_error(file: impl Into<String>, text: &str, err: &toml::de::Error) -> LoadError {
        let mut d = Diagnostics::new(file, text);
        let message = err.message().to_owned();
        match err.span() {
            Some(span) => d.at(&span, "toml", message),
            None => d.nowhere("toml", message),
        }
        LoadError {
            file: d.file,
            problems: d.problems,
        }
    }

    pub fn has_problems(&self) -> bool {
        !self.problems.is_empty()
    }

    pub fn finish(self) -> Result<(), LoadError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(LoadError {
                file: self.file,
                problems: self.problems,
            })
        }
    }
}
