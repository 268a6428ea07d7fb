//! The tamper-evident history: every submission row is hashed (SHA-256) over an unambiguous
//! encoding of all its columns (each field length-prefixed) and the previous row's hash.
//! Verification walks the rows in id order and names the first one that does not fit.

use sha2::{Digest, Sha256};

use citycredit::store::Db;

use crate::store::{self, StoredRow};

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
    /// The first bad row's id (0 when intact).
    pub first_bad: u64,
    pub problem: String,
}

/// Walks the chain: ids contiguous from 1, each `prev_hash` the previous row's `hash`, each
/// `hash` right, and the last row the recorded chain head (catches a deleted tail).
pub async fn verify(db: &Db) -> Result<Verdict, sqlx::Error> {
    let mut expected: i64 = 1;
    let mut prev = GENESIS.to_owned();
    let mut checked = 0u64;
    let mut bad: Option<(i64, String)> = None;
    store::walk_submissions(db, |row| {
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
        let head = store::head(db).await?;
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
    Ok(match bad {
        None => Verdict {
            intact: true,
            rows_checked: checked,
            first_bad: 0,
            problem: String::new(),
        },
        Some((id, problem)) => Verdict {
            intact: false,
            rows_checked: checked,
            first_bad: u64::try_from(id).unwrap_or(0),
            problem,
        },
    })
}
