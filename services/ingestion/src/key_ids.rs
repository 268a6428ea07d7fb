//! Process-wide ids of value keys without their metric and period: (region, department,
//! domain, task_id), the key an aggregation groups a metric's rows by before rolling periods up
//! (`crate::aggregation`).
//!
//! A row's key texts are four heap strings of their own. Grouping a metric's rows by them
//! compared those strings row by row, and each comparison reached memory the row had not touched
//! since it was read: 82 % of a fresh aggregation's metric time went to those comparisons
//! (`perf`, the city's monthly values at 1 M submissions). A [`PairRows`] takes each row's id once,
//! when it is read, and the aggregation sorts and groups by the ids.
//!
//! The same texts always get the same id and ids are never reused, so equal ids are equal keys
//! everywhere in the process. At most [`KEYS`] keys get an id; a key past that gets
//! [`NO_ID`], and a metric with such a row is grouped by its texts as before.
//!
//! [`PairRows`]: crate::current_rows::PairRows

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, PoisonError, RwLock};

use crate::store::VersionRow;

/// A key without an id (past [`KEYS`]): compare its texts.
pub const NO_ID: u32 = u32::MAX;

/// Keys given an id, at most (about 100 bytes each).
pub const KEYS: usize = 1 << 16;

/// `v`'s key as one text, length-prefixed: no two keys share a text, whatever characters they
/// hold.
fn text_of(v: &VersionRow, text: &mut String) {
    text.clear();
    for part in [&v.region, &v.department, &v.domain, &v.task_id] {
        let _ = write!(text, "{}:", part.len());
        text.push_str(part);
    }
}

/// Ids by each key's text ([`text_of`]).
#[derive(Default)]
struct Table {
    ids: HashMap<Box<str>, u32, foldhash::fast::FixedState>,
    text: String,
}

impl Table {
    /// `v`'s key's id, given one if there is room for `limit` ids.
    fn id(&mut self, v: &VersionRow, limit: usize) -> u32 {
        text_of(v, &mut self.text);
        if let Some(&id) = self.ids.get(self.text.as_str()) {
            return id;
        }
        if self.ids.len() >= limit {
            return NO_ID;
        }
        let id = u32::try_from(self.ids.len()).unwrap_or(NO_ID);
        self.ids.insert(self.text.as_str().into(), id);
        id
    }
}

static TABLE: LazyLock<RwLock<Table>> = LazyLock::new(RwLock::default);

/// The ids of `rows`' keys, in order ([`NO_ID`] past [`KEYS`]). The keys known already are
/// looked up under a shared lock, so reads of different pairs do not wait for each other; only
/// new keys take the table's lock alone.
pub fn of<R: Borrow<VersionRow>>(rows: &[R]) -> Vec<u32> {
    let mut text = String::new();
    let mut new = Vec::new();
    let mut ids: Vec<u32> = {
        let table = TABLE.read().unwrap_or_else(PoisonError::into_inner);
        rows.iter()
            .enumerate()
            .map(|(i, v)| {
                text_of(v.borrow(), &mut text);
                table.ids.get(text.as_str()).copied().unwrap_or_else(|| {
                    new.push(i);
                    NO_ID
                })
            })
            .collect()
    };
    if !new.is_empty() {
        let mut table = TABLE.write().unwrap_or_else(PoisonError::into_inner);
        for i in new {
            ids[i] = table.id(rows[i].borrow(), KEYS);
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(region: &str, department: &str, domain: &str, task: &str) -> VersionRow {
        VersionRow {
            submission_id: 1,
            metric: "m".into(),
            region: region.into(),
            period: "2026".into(),
            department: department.into(),
            domain: domain.into(),
            task_id: task.into(),
            value: "1".into(),
            accepted_micros: 1,
        }
    }

    #[test]
    fn the_same_texts_get_the_same_id_and_others_another() {
        let rows = [
            row("330802", "samr", "", ""),
            row("330802", "samr", "", ""),
            row("330802", "tax", "", ""),
            // The same characters split differently are another key.
            row("330802", "sa", "mr", ""),
            row("330802", "", "samr", ""),
        ];
        let ids = of(&rows);
        assert_eq!(ids[0], ids[1]);
        assert_ne!(ids[0], NO_ID);
        let mut distinct = vec![ids[0], ids[2], ids[3], ids[4]];
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "{ids:?}");
        // Asked again, later: the same ids.
        assert_eq!(of(&rows), ids);
    }

    #[test]
    fn past_the_limit_a_new_key_has_no_id_and_the_keys_with_one_keep_it() {
        let mut table = Table::default();
        let (a, b, c) = (
            row("1", "a", "", ""),
            row("1", "b", "", ""),
            row("1", "c", "", ""),
        );
        assert_eq!(table.id(&a, 2), 0);
        assert_eq!(table.id(&b, 2), 1);
        // At the limit: a new key gets none, every time; the others keep theirs.
        assert_eq!(table.id(&c, 2), NO_ID);
        assert_eq!(table.id(&c, 2), NO_ID);
        assert_eq!(table.id(&a, 2), 0);
        assert_eq!(table.id(&b, 2), 1);
    }
}
