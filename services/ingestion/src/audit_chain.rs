//! The tamper-evident history: every submission row is hashed (SHA-256) over an unambiguous
//! encoding of all its columns (each field length-prefixed) and the previous row's hash.
//! Verification walks the rows in id order and names the first one that does not fit; then,
//! because scoring reads `value_versions` and not the chain, it rebuilds every value version
//! from the chain and compares it with the stored one (an edit of a current value, or of the
//! history `as_of` reads, is named by its submission).

use futures::TryStreamExt;
use futures::stream::BoxStream;
use sha2::{Digest, Sha256};

use citycredit_store::Db;

use crate::store::{self, KIND_RETRACTION, KIND_VALUE, StoredRow};

/// The `prev_hash` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// Hex SHA-256 of a row's canonical encoding (every column but `hash`, `prev_hash` last).
pub fn row_hash(r: &StoredRow) -> String {
    let mut h = Sha256::new();
    h.update(b"citycredit.submission.v1");
    field(&mut h, &r.id.to_be_bytes());
    for text in [
        &r.principal,
        &r.department,
        &r.region,
        &r.period,
        &r.metric,
        &r.domain,
        &r.task_id,
        &r.value,
        &r.evidence_uri,
        &r.note,
        &r.idempotency_key,
    ] {
        field(&mut h, text.as_bytes());
    }
    field(&mut h, &r.accept_micros.to_be_bytes());
    field(&mut h, r.kind.as_bytes());
    match r.retracts {
        Some(id) => field(&mut h, &id.to_be_bytes()),
        None => field(&mut h, b""),
    }
    field(&mut h, r.reason.as_bytes());
    field(&mut h, r.prev_hash.as_bytes());
    hex::encode(h.finalize())
}

/// The outcome of a verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub intact: bool,
    pub rows_checked: u64,
    /// Value versions compared with the ones rebuilt from the chain.
    pub versions_checked: u64,
    /// The first bad row's id (0 when intact).
    pub first_bad: u64,
    pub problem: String,
}

/// Verifies the store as of its chain head (read first, so commits made meanwhile are not
/// mistaken for damage): the chain, then the value versions, then their keys (`value_keys`),
/// then `retractions`.
pub async fn verify(db: &Db) -> Result<Verdict, sqlx::Error> {
    let head = store::head(db).await?;
    let (checked, bad) = verify_chain(db, &head).await?;
    let mut verdict = Verdict {
        intact: true,
        rows_checked: checked,
        versions_checked: 0,
        first_bad: 0,
        problem: String::new(),
    };
    let bad = match bad {
        // A broken chain cannot vouch for anything rebuilt from it.
        Some(bad) => Some(bad),
        None => {
            let (versions, bad) = verify_versions(db, &head).await?;
            verdict.versions_checked = versions;
            match bad {
                Some(bad) => Some(bad),
                None => match verify_keys(db).await? {
                    Some(bad) => Some(bad),
                    None => verify_retractions(db, &head).await?,
                },
            }
        }
    };
    if let Some((id, problem)) = bad {
        verdict.intact = false;
        verdict.first_bad = u64::try_from(id).unwrap_or(0);
        verdict.problem = problem;
    }
    Ok(verdict)
}

/// Walks the chain up to `head`: ids contiguous from 1, each `prev_hash` the previous row's
/// `hash`, each `hash` right, and the last row the recorded chain head (catches a deleted
/// tail).
async fn verify_chain(
    db: &Db,
    head: &store::Head,
) -> Result<(u64, Option<(i64, String)>), sqlx::Error> {
    let mut expected: i64 = 1;
    let mut prev = GENESIS.to_owned();
    let mut checked = 0u64;
    let mut bad: Option<(i64, String)> = None;
    store::walk_submissions(db, head.last_id, |row| {
        checked += 1;
        let problem = if row.id != expected {
            Some((expected, format!("missing row {expected}")))
        } else if row_hash(&row) != row.hash {
            Some((
                row.id,
                "hash mismatch: the row's content was changed".to_owned(),
            ))
        } else if row.prev_hash != prev {
            Some((
                row.id,
                format!("broken link: prev_hash does not match row {}", row.id - 1),
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            bad = Some(p);
            return false;
        }
        expected += 1;
        prev = row.hash;
        true
    })
    .await?;
    if bad.is_none() {
        if head.last_id != expected - 1 {
            bad = Some((
                expected,
                format!(
                    "missing row {expected} (the chain head is row {})",
                    head.last_id
                ),
            ));
        } else if head.last_hash != prev {
            bad = Some((
                expected - 1,
                "the last row does not match the chain head".to_owned(),
            ));
        }
    }
    Ok((checked, bad))
}

/// `retractions` (what the writer reads to refuse a second retraction and to find the value a
/// retraction brings back) against the chain: each row names a retraction that retracts its
/// target, and the first one; each retraction in the chain has its target's row.
async fn verify_retractions(
    db: &Db,
    head: &store::Head,
) -> Result<Option<(i64, String)>, sqlx::Error> {
    if let Some((target, by)) = store::retraction_not_in_chain(db).await? {
        return Ok(Some((
            by,
            format!(
                "retractions: submissions/{target} is recorded as retracted by submissions/{by}, \
                 which is not its first retraction in the chain"
            ),
        )));
    }
    Ok(store::retraction_not_recorded(db, head.last_id)
        .await?
        .map(|(id, target)| {
            (
                id,
                format!(
                    "retractions: submissions/{id} retracts submissions/{target}, which is not \
                     recorded as retracted"
                ),
            )
        }))
}

/// One version as the chain gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Expected {
    submission_id: i64,
    value: String,
    valid_from: i64,
    valid_to: Option<i64>,
    accepted_micros: i64,
}

/// The versions of one value key, rebuilt from its submissions in id order with the writer's
/// rules: a value closes the current version and opens its own; a retraction of the current
/// value closes it and reopens the latest earlier value that is not retracted (for retractions
/// from `undo_from` on; earlier ones, stored before migration 0210, only closed it); a
/// retraction of an older value changes nothing current; a second retraction of one value
/// changes nothing; a version closed by the commit that opened it is not stored. Memory: this
/// key's history only.
fn rebuild(rows: &[StoredRow], undo_from: i64) -> Vec<Expected> {
    let mut out: Vec<Expected> = Vec::new();
    // Values not retracted, in id order; the last one is the current value.
    let mut live: Vec<&StoredRow> = Vec::new();
    let close = |out: &mut Vec<Expected>, at: i64| {
        if let Some(last) = out.last_mut()
            && last.valid_to.is_none()
        {
            if last.valid_from == at {
                out.pop();
            } else {
                last.valid_to = Some(at);
            }
        }
    };
    let open = |out: &mut Vec<Expected>, row: &StoredRow, at: i64| {
        out.push(Expected {
            submission_id: row.id,
            value: row.value.clone(),
            valid_from: at,
            valid_to: None,
            accepted_micros: row.accept_micros,
        });
    };
    for row in rows {
        if row.kind == KIND_VALUE {
            close(&mut out, row.accept_micros);
            live.push(row);
            open(&mut out, row, row.accept_micros);
        } else if row.kind == KIND_RETRACTION {
            let Some(target) = row.retracts else { continue };
            // A second retraction of one value (stored before migration 0210) changes nothing:
            // the first is the one in `retractions`.
            let Some(at) = live.iter().position(|r| r.id == target) else {
                continue;
            };
            let was_current = at + 1 == live.len();
            live.remove(at);
            if was_current {
                close(&mut out, row.accept_micros);
                if row.id >= undo_from
                    && let Some(earlier) = live.last()
                {
                    open(&mut out, earlier, row.accept_micros);
                }
            }
        }
    }
    out
}

/// Every value version's key is listed in `value_keys` with its period and region: as_of reads
/// go through that table, so a key missing there would silently drop out of them.
async fn verify_keys(db: &Db) -> Result<Option<(i64, String)>, sqlx::Error> {
    Ok(store::first_version_without_key(db).await?.map(|id| {
        (
            id,
            format!(
                "value_keys: the key of submissions/{id} is missing or names another period or \
                 region (as_of reads would skip it)"
            ),
        )
    }))
}

/// Compares the stored versions that had begun by the head's commit with the ones rebuilt from
/// the chain, key by key: both are read sorted by value key (two streams merged here), so
/// memory holds one key's history at a time, whatever the size of the store. Returns the
/// versions compared and the mismatch with the lowest submission id.
async fn verify_versions(
    db: &Db,
    head: &store::Head,
) -> Result<(u64, Option<(i64, String)>), sqlx::Error> {
    let until = head.last_micros;
    let Some(undo_from) = store::retraction_undo_from(db).await? else {
        // Without it the versions cannot be rebuilt as they were made.
        return Ok((
            0,
            Some((
                1,
                format!(
                    "store_meta: `{}` is missing or not a number",
                    store::RETRACTION_UNDO_FROM
                ),
            )),
        ));
    };
    let mut subs = Peekable::new(store::submissions_by_key(db, head.last_id));
    let mut vers = Peekable::new(store::versions_by_key(db, until));
    let mut checked = 0u64;
    let mut worst: Option<(i64, String)> = None;
    let mut note = |id: i64, problem: String| {
        if worst.as_ref().is_none_or(|(w, _)| id < *w) {
            worst = Some((id, format!("value_versions: {problem}")));
        }
    };
    while let Some(first) = subs.next().await? {
        let key = first.key_tuple();
        let mut rows = vec![first];
        while let Some(next) = subs.peek().await? {
            if next.key_tuple() != key {
                break;
            }
            if let Some(r) = subs.next().await? {
                rows.push(r);
            }
        }
        // Stored versions of keys no submission has.
        while let Some(v) = vers.peek().await? {
            if v.key_tuple() >= key {
                break;
            }
            checked += 1;
            note(
                v.submission_id,
                format!(
                    "a version of submissions/{} that the chain does not give",
                    v.submission_id
                ),
            );
            vers.next().await?;
        }
        let mut stored = Vec::new();
        while let Some(v) = vers.peek().await? {
            if v.key_tuple() != key {
                break;
            }
            if let Some(v) = vers.next().await? {
                stored.push(v);
            }
        }
        checked += u64::try_from(stored.len()).unwrap_or(u64::MAX);
        let vkey = rows[0].vkey();
        let expected = rebuild(&rows, undo_from);
        for i in 0..expected.len().max(stored.len()) {
            match (expected.get(i), stored.get(i)) {
                (Some(e), Some(s)) => {
                    // A version closed after the head's commit was still open at it.
                    let valid_to = s.valid_to.filter(|t| *t <= until);
                    let problem = if s.submission_id != e.submission_id {
                        Some(format!(
                            "a version of submissions/{} where the chain gives submissions/{}",
                            s.submission_id, e.submission_id
                        ))
                    } else if s.value != e.value {
                        Some(format!(
                            "submissions/{} has value `{}` where the chain gives `{}`",
                            s.submission_id,
                            status_safe(&s.value),
                            status_safe(&e.value)
                        ))
                    } else if s.valid_from != e.valid_from || valid_to != e.valid_to {
                        Some(format!(
                            "submissions/{} is current from {} to {:?} where the chain gives \
                             {} to {:?}",
                            s.submission_id, s.valid_from, valid_to, e.valid_from, e.valid_to
                        ))
                    } else if s.accepted_micros != e.accepted_micros || s.vkey != vkey {
                        Some(format!(
                            "submissions/{} has a wrong accept time or key",
                            s.submission_id
                        ))
                    } else {
                        None
                    };
                    if let Some(p) = problem {
                        note(e.submission_id.min(s.submission_id), p);
                    }
                }
                (Some(e), None) => note(
                    e.submission_id,
                    format!(
                        "missing version of submissions/{} (current from {})",
                        e.submission_id, e.valid_from
                    ),
                ),
                (None, Some(s)) => note(
                    s.submission_id,
                    format!(
                        "a version of submissions/{} that the chain does not give",
                        s.submission_id
                    ),
                ),
                (None, None) => {}
            }
        }
    }
    while let Some(v) = vers.next().await? {
        checked += 1;
        note(
            v.submission_id,
            format!(
                "a version of submissions/{} that the chain does not give",
                v.submission_id
            ),
        );
    }
    Ok((checked, worst))
}

/// Stored text quoted in a problem, cut short and with refused characters shown as code points
/// (the database was edited by someone who should not have: do not relay their bytes).
fn status_safe(text: &str) -> String {
    text.chars()
        .take(64)
        .map(|c| match citycredit_core::text::classify(c) {
            Some(_) => citycredit_core::text::code_point(c),
            None => c.to_string(),
        })
        .collect()
}

/// A stream with one item of look-ahead.
struct Peekable<'a, T> {
    stream: BoxStream<'a, Result<T, sqlx::Error>>,
    next: Option<T>,
}

impl<'a, T> Peekable<'a, T> {
    fn new(stream: BoxStream<'a, Result<T, sqlx::Error>>) -> Self {
        Peekable { stream, next: None }
    }

    async fn peek(&mut self) -> Result<Option<&T>, sqlx::Error> {
        if self.next.is_none() {
            self.next = self.stream.try_next().await?;
        }
        Ok(self.next.as_ref())
    }

    async fn next(&mut self) -> Result<Option<T>, sqlx::Error> {
        match self.next.take() {
            Some(t) => Ok(Some(t)),
            None => self.stream.try_next().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, at: i64, kind: &str, value: &str, retracts: Option<i64>) -> StoredRow {
        StoredRow {
            id,
            principal: "p".into(),
            department: String::new(),
            region: "330800".into(),
            period: "2026".into(),
            metric: "uscc.codes_total".into(),
            domain: String::new(),
            task_id: String::new(),
            value: value.into(),
            evidence_uri: String::new(),
            note: String::new(),
            idempotency_key: String::new(),
            accept_micros: at,
            kind: kind.into(),
            retracts,
            reason: String::new(),
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    fn version(id: i64, from: i64, to: Option<i64>, accepted: i64) -> (i64, i64, Option<i64>, i64) {
        (id, from, to, accepted)
    }

    fn shape(out: &[Expected]) -> Vec<(i64, i64, Option<i64>, i64)> {
        out.iter()
            .map(|e| (e.submission_id, e.valid_from, e.valid_to, e.accepted_micros))
            .collect()
    }

    #[test]
    fn retracting_the_current_value_undoes_it() {
        // v1, v2, v3; retract v3 -> v2; retract v2 -> v1; retract v1 -> nothing.
        let rows = [
            row(1, 10, KIND_VALUE, "1", None),
            row(2, 20, KIND_VALUE, "2", None),
            row(3, 30, KIND_VALUE, "3", None),
            row(4, 40, KIND_RETRACTION, "", Some(3)),
            row(5, 50, KIND_RETRACTION, "", Some(2)),
            row(6, 60, KIND_RETRACTION, "", Some(1)),
        ];
        assert_eq!(
            shape(&rebuild(&rows, 1)),
            [
                version(1, 10, Some(20), 10),
                version(2, 20, Some(30), 20),
                version(3, 30, Some(40), 30),
                version(2, 40, Some(50), 20),
                version(1, 50, Some(60), 10),
            ]
        );
    }

    #[test]
    fn retracting_an_older_value_changes_nothing_current() {
        let rows = [
            row(1, 10, KIND_VALUE, "1", None),
            row(2, 20, KIND_VALUE, "2", None),
            row(3, 30, KIND_RETRACTION, "", Some(1)),
            row(4, 40, KIND_RETRACTION, "", Some(1)),
            row(5, 50, KIND_RETRACTION, "", Some(2)),
        ];
        // Retracting 2 finds 1 retracted already: nothing is current.
        assert_eq!(
            shape(&rebuild(&rows, 1)),
            [version(1, 10, Some(20), 10), version(2, 20, Some(50), 20)]
        );
    }

    #[test]
    fn retractions_before_the_undo_rule_keep_their_meaning_and_a_second_one_is_a_no_op() {
        // Stored before migration 0210 (undo from id 6 on): retracting the current value 2
        // (twice, as the old race allowed) left no current value; retracting 5 after the
        // migration reopens 1, the latest earlier value not retracted.
        let rows = [
            row(1, 10, KIND_VALUE, "1", None),
            row(2, 20, KIND_VALUE, "2", None),
            row(3, 30, KIND_RETRACTION, "", Some(2)),
            row(4, 30, KIND_RETRACTION, "", Some(2)),
            row(5, 40, KIND_VALUE, "5", None),
            row(6, 50, KIND_RETRACTION, "", Some(5)),
            row(7, 60, KIND_RETRACTION, "", Some(5)),
        ];
        assert_eq!(
            shape(&rebuild(&rows, 6)),
            [
                version(1, 10, Some(20), 10),
                version(2, 20, Some(30), 20),
                version(5, 40, Some(50), 40),
                version(1, 50, None, 10),
            ]
        );
        // Under the new rule from the start, 1 would have come back at 30.
        assert_eq!(shape(&rebuild(&rows, 1))[2], version(1, 30, Some(40), 10));
    }

    #[test]
    fn versions_of_one_commit_are_not_stored() {
        // Two values and a retraction in one commit (one accept time).
        let rows = [
            row(1, 10, KIND_VALUE, "1", None),
            row(2, 20, KIND_VALUE, "2", None),
            row(3, 20, KIND_VALUE, "3", None),
            row(4, 20, KIND_RETRACTION, "", Some(3)),
        ];
        assert_eq!(
            shape(&rebuild(&rows, 1)),
            [version(1, 10, Some(20), 10), version(2, 20, None, 20)]
        );
    }
}
