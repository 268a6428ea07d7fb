//! The two migration folders (`src/store/migrations/{sqlite,postgres}`) must give one schema:
//! the queries are written once for both databases. Each folder is migrated into a fresh
//! database (SQLite in a temporary file, PostgreSQL in a fresh schema on `DATABASE_URL`) and
//! the schemas are read back from the databases' own catalogues and compared: tables, columns
//! (name, order, nullability, a normalised type), primary keys and indexes (name, columns,
//! uniqueness, partial or not).
//!
//! What is normalised, and why:
//! - types: SQLite keeps every integer in up to 8 bytes, so its `INTEGER` and `BIGINT` are one
//!   type there (`int64`), PostgreSQL's `bigint` and `bigserial` are that type, its `integer`
//!   is not (`int32`); `BLOB` and `bytea` are bytes.
//! - nullability: PostgreSQL makes every primary-key column NOT NULL; SQLite lets a
//!   primary-key column other than an `INTEGER PRIMARY KEY` hold NULL (a quirk it keeps for
//!   compatibility) even where the migration does not say `NOT NULL`. Primary-key columns count
//!   as NOT NULL on both.
//! - indexes behind a PRIMARY KEY or UNIQUE constraint are named by each database after its own
//!   fashion (`sqlite_autoindex_retractions_2`, `retractions_by_id_key`): they are compared by
//!   columns and uniqueness only, and the primary key on its own.
//! - sqlx's `_sqlx_migrations` and SQLite's own `sqlite_*` tables are not ours.
//!
//! Triggers are not compared: SQLite has one PostgreSQL does not need (refusing NUL in text,
//! which PostgreSQL refuses by itself; see migration 0210).

use std::collections::{BTreeMap, BTreeSet};

use citycredit_store::{Backend, Db, testing};
use citycredit_tests::postgres_only;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Column {
    name: String,
    not_null: bool,
    ty: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Index {
    /// None for an index that backs a UNIQUE constraint (its name is the database's choice).
    name: Option<String>,
    columns: Vec<String>,
    unique: bool,
    partial: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Table {
    columns: Vec<Column>,
    primary_key: Vec<String>,
    indexes: BTreeSet<Index>,
}

type Schema = BTreeMap<String, Table>;

fn sqlite_type(declared: &str) -> String {
    match declared.to_ascii_lowercase().as_str() {
        "integer" | "bigint" | "int" => "int64".into(),
        "text" => "text".into(),
        "blob" => "bytes".into(),
        other => format!("unknown sqlite type `{other}`"),
    }
}

fn postgres_type(data_type: &str) -> String {
    match data_type {
        "bigint" => "int64".into(),
        "integer" => "int32".into(),
        "smallint" => "int16".into(),
        "text" => "text".into(),
        "bytea" => "bytes".into(),
        other => format!("unknown postgres type `{other}`"),
    }
}

fn must<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[derive(sqlx::FromRow)]
struct SqliteColumn {
    name: String,
    #[sqlx(rename = "type")]
    declared: String,
    notnull: i64,
    pk: i64,
}

#[derive(sqlx::FromRow)]
struct SqliteIndex {
    name: String,
    unique: i64,
    /// `c` for CREATE INDEX, `u` for a UNIQUE constraint, `pk` for the PRIMARY KEY.
    origin: String,
    partial: i64,
}

async fn sqlite_schema(db: &Db) -> Schema {
    let tables: Vec<String> = must(
        "sqlite tables",
        sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite!_%' ESCAPE '!' AND name <> '_sqlx_migrations' ORDER BY name",
        )
        .fetch_all(&db.pool)
        .await,
    );
    let mut schema = Schema::new();
    for name in tables {
        let mut table = Table::default();
        let columns: Vec<SqliteColumn> = must(
            "sqlite columns",
            sqlx::query_as(
                "SELECT name, type, \"notnull\", pk FROM pragma_table_info($1) ORDER BY cid",
            )
            .bind(&name)
            .fetch_all(&db.pool)
            .await,
        );
        let mut primary_key: Vec<(i64, String)> = Vec::new();
        for c in columns {
            if c.pk > 0 {
                primary_key.push((c.pk, c.name.clone()));
            }
            table.columns.push(Column {
                not_null: c.notnull != 0 || c.pk > 0,
                ty: sqlite_type(&c.declared),
                name: c.name,
            });
        }
        primary_key.sort();
        table.primary_key = primary_key.into_iter().map(|(_, c)| c).collect();
        let indexes: Vec<SqliteIndex> = must(
            "sqlite indexes",
            sqlx::query_as("SELECT name, \"unique\", origin, partial FROM pragma_index_list($1)")
                .bind(&name)
                .fetch_all(&db.pool)
                .await,
        );
        for i in indexes {
            if i.origin == "pk" {
                continue;
            }
            let columns: Vec<Option<String>> = must(
                "sqlite index columns",
                sqlx::query_scalar("SELECT name FROM pragma_index_info($1) ORDER BY seqno")
                    .bind(&i.name)
                    .fetch_all(&db.pool)
                    .await,
            );
            table.indexes.insert(Index {
                name: (i.origin != "u").then_some(i.name),
                columns: columns
                    .into_iter()
                    .map(|c| c.unwrap_or_else(|| "(expression)".into()))
                    .collect(),
                unique: i.unique != 0,
                partial: i.partial != 0,
            });
        }
        schema.insert(name, table);
    }
    schema
}

#[derive(sqlx::FromRow)]
struct PostgresColumn {
    column_name: String,
    is_nullable: String,
    data_type: String,
}

#[derive(sqlx::FromRow)]
struct PostgresIndex {
    table_name: String,
    index_name: String,
    is_primary: bool,
    is_unique: bool,
    is_partial: bool,
    by_unique_constraint: bool,
    /// Column names, comma-separated, in index order.
    columns: String,
}

async fn postgres_schema(db: &Db) -> Schema {
    let tables: Vec<String> = must(
        "postgres tables",
        sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
             AND table_name <> '_sqlx_migrations' ORDER BY table_name",
        )
        .fetch_all(&db.pool)
        .await,
    );
    let mut schema = Schema::new();
    for name in tables {
        let columns: Vec<PostgresColumn> = must(
            "postgres columns",
            sqlx::query_as(
                "SELECT column_name::text AS column_name, is_nullable::text AS is_nullable, \
                 data_type::text AS data_type FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 \
                 ORDER BY ordinal_position",
            )
            .bind(&name)
            .fetch_all(&db.pool)
            .await,
        );
        let table = Table {
            columns: columns
                .into_iter()
                .map(|c| Column {
                    name: c.column_name,
                    not_null: c.is_nullable == "NO",
                    ty: postgres_type(&c.data_type),
                })
                .collect(),
            ..Table::default()
        };
        schema.insert(name, table);
    }
    let indexes: Vec<PostgresIndex> = must(
        "postgres indexes",
        sqlx::query_as(
            "SELECT t.relname::text AS table_name, i.relname::text AS index_name, \
             ix.indisprimary AS is_primary, ix.indisunique AS is_unique, \
             ix.indpred IS NOT NULL AS is_partial, \
             EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = ix.indexrelid \
                     AND c.conrelid = ix.indrelid AND c.contype = 'u') AS by_unique_constraint, \
             array_to_string(ARRAY( \
                 SELECT a.attname::text \
                 FROM unnest(ix.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                 JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.attnum \
                 ORDER BY k.ord), ',') AS columns \
             FROM pg_index ix \
             JOIN pg_class i ON i.oid = ix.indexrelid \
             JOIN pg_class t ON t.oid = ix.indrelid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE n.nspname = current_schema() AND t.relname <> '_sqlx_migrations'",
        )
        .fetch_all(&db.pool)
        .await,
    );
    for i in indexes {
        let table = schema.entry(i.table_name).or_default();
        let columns: Vec<String> = i.columns.split(',').map(str::to_owned).collect();
        if i.is_primary {
            table.primary_key = columns;
            continue;
        }
        table.indexes.insert(Index {
            name: (!i.by_unique_constraint).then_some(i.index_name),
            columns,
            unique: i.is_unique,
            partial: i.is_partial,
        });
    }
    // PostgreSQL makes primary-key columns NOT NULL whatever the migration said.
    for table in schema.values_mut() {
        for c in &mut table.columns {
            if table.primary_key.contains(&c.name) {
                c.not_null = true;
            }
        }
    }
    schema
}

/// Where two schemas differ, one line each; empty when they agree.
fn drift(sqlite: &Schema, postgres: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    let names: BTreeSet<&String> = sqlite.keys().chain(postgres.keys()).collect();
    for name in names {
        let (s, p) = match (sqlite.get(name), postgres.get(name)) {
            (Some(s), Some(p)) => (s, p),
            (Some(_), None) => {
                out.push(format!("table {name}: only in SQLite"));
                continue;
            }
            (None, _) => {
                out.push(format!("table {name}: only in PostgreSQL"));
                continue;
            }
        };
        if s.columns != p.columns {
            out.push(format!(
                "table {name}: columns differ\n  SQLite:     {:?}\n  PostgreSQL: {:?}",
                s.columns, p.columns
            ));
        }
        if s.primary_key != p.primary_key {
            out.push(format!(
                "table {name}: primary key {:?} on SQLite, {:?} on PostgreSQL",
                s.primary_key, p.primary_key
            ));
        }
        for i in s.indexes.difference(&p.indexes) {
            out.push(format!("table {name}: index only in SQLite: {i:?}"));
        }
        for i in p.indexes.difference(&s.indexes) {
            out.push(format!("table {name}: index only in PostgreSQL: {i:?}"));
        }
    }
    out
}

/// The schema reader itself, on SQLite alone (so it is checked without PostgreSQL too): it
/// sees what migration 0210 left.
#[tokio::test]
async fn the_sqlite_schema_is_read_back_from_its_catalogue() {
    let db = testing::open(Backend::Sqlite).await;
    let schema = sqlite_schema(&db).await;
    assert!(!schema.contains_key("_sqlx_migrations") && !schema.contains_key("sqlite_sequence"));
    let versions = schema
        .get("value_versions")
        .unwrap_or_else(|| panic!("no value_versions in {:?}", schema.keys()));
    assert_eq!(versions.primary_key, ["submission_id", "valid_from"]);
    assert_eq!(versions.columns.len(), 12);
    assert!(versions.indexes.contains(&Index {
        name: Some("value_versions_current_key".into()),
        columns: vec!["vkey".into()],
        unique: true,
        partial: true,
    }));
    let retractions = &schema["retractions"];
    assert!(retractions.indexes.contains(&Index {
        name: None,
        columns: vec!["by_id".into()],
        unique: true,
        partial: false,
    }));
    let nonce = &schema["identity_nonces"].columns[0];
    assert_eq!(
        (nonce.name.as_str(), nonce.not_null, nonce.ty.as_str()),
        ("nonce", true, "text")
    );
}

async fn migrations_give_both_databases_the_same_schema() {
    let sqlite = testing::open(Backend::Sqlite).await;
    let postgres = testing::open(Backend::Postgres).await;
    let s = sqlite_schema(&sqlite).await;
    let p = postgres_schema(&postgres).await;
    assert!(s.len() >= 14, "too few tables read: {:?}", s.keys());
    let found = drift(&s, &p);
    assert!(
        found.is_empty(),
        "src/store/migrations/sqlite and src/store/migrations/postgres drifted apart:\n{}",
        found.join("\n")
    );

    // And the comparison sees a difference when there is one.
    must(
        "create index",
        sqlx::query("CREATE INDEX drift_probe ON store_meta (value)")
            .execute(&postgres.pool)
            .await,
    );
    let found = drift(&s, &postgres_schema(&postgres).await);
    assert!(
        found.len() == 1 && found[0].contains("drift_probe"),
        "{found:?}"
    );
}

postgres_only!(migrations_give_both_databases_the_same_schema);
