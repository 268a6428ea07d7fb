//! Planner statistics for the tables ingestion writes, on PostgreSQL servers where autovacuum
//! does not keep them (the server's `autovacuum = off`, or a table's `autovacuum_enabled =
//! false`).
//!
//! Without statistics PostgreSQL plans from defaults, and the writer's statements then go
//! wrong as history grows: measured at 400,000 submissions on a never-analyzed store, closing
//! 800 superseded versions by primary key took 2.4 s (a generic plan that scanned the whole
//! current-key index once per id) instead of milliseconds, and a bulk load of a year of monthly
//! values (1 M submissions) took 804 s, against about 21 s with statistics kept. So a task checks every [`EVERY`] how many rows of
//! each such table changed since it was last analyzed and runs `ANALYZE` on it past
//! autovacuum's default threshold (50 rows and a tenth of the table). Where autovacuum runs,
//! the task finds nothing to do.

use std::time::Duration;

use sqlx::AnyPool;

/// How often the tables are checked.
pub const EVERY: Duration = Duration::from_secs(5);

/// The tables of this store (the connection's schema) that autovacuum leaves alone and that
/// changed past the threshold since their last analysis.
async fn due(pool: &AnyPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT s.relname::text FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid \
         WHERE s.schemaname = current_schema() \
         AND s.relname IN ('submissions', 'value_versions', 'value_keys') \
         AND (current_setting('autovacuum') = 'off' OR EXISTS (\
             SELECT 1 FROM unnest(c.reloptions) o \
             WHERE lower(o) IN ('autovacuum_enabled=false', 'autovacuum_enabled=off', \
                                'autovacuum_enabled=0', 'autovacuum_enabled=no'))) \
         AND s.n_mod_since_analyze > 50 + 0.1 * greatest(c.reltuples, 0)",
    )
    .fetch_all(pool)
    .await
}

/// Analyzes the tables that are due; returns their names.
pub async fn analyze_due(pool: &AnyPool) -> Result<Vec<String>, sqlx::Error> {
    let mut done = Vec::new();
    for table in due(pool).await? {
        // One literal statement per table: no name from the catalog reaches the SQL.
        let statement = match table.as_str() {
            "submissions" => "ANALYZE submissions",
            "value_versions" => "ANALYZE value_versions",
            "value_keys" => "ANALYZE value_keys",
            _ => continue,
        };
        sqlx::query(statement).execute(pool).await?;
        done.push(table);
    }
    Ok(done)
}
