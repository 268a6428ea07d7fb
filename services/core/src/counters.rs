//! Process-wide counters that services bump and the metrics endpoint reads.

use std::sync::atomic::{AtomicU64, Ordering};

static INGESTED_ROWS: AtomicU64 = AtomicU64::new(0);

/// Records `n` committed submissions.
pub fn add_ingested_rows(n: u64) {
    INGESTED_ROWS.fetch_add(n, Ordering::Relaxed);
}

/// Submissions committed by this process so far.
pub fn ingested_rows() -> u64 {
    INGESTED_ROWS.load(Ordering::Relaxed)
}
