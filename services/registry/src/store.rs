//! The registry's SQL: seeding from the city file, loading the organisation and the keys, and
//! every write, each through [`RegistryStore::write`]: one transaction together with its entry
//! in the change log and a bump of the registry revision (which other processes poll to
//! reload). Rows are read by column name (`FromRow`).

use std::collections::{BTreeMap, BTreeSet};

use sqlx::AnyConnection;

use citycredit_core::auth::{Principal, Role};
use citycredit_core::catalog::Catalog;
use citycredit_core::city::{City, Department, Group, Region, ReportingDuty, Responsibility};
use citycredit_store::{Db, StoreError, now_micros};

use crate::keys::{CachedKey, KeyMap};

const SEEDED: &str = "registry.seeded_from";
const CITY_CODE: &str = "registry.city_code";
const CITY_NAME: &str = "registry.city_name";
const REVISION: &str = "registry.revision";

/// A stored principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrincipalRow {
    pub id: String,
    pub display_name: String,
    pub role: Role,
    pub department: Option<String>,
    pub create_micros: i64,
}

/// A `principals` row as stored (the role as text).
#[derive(sqlx::FromRow)]
struct PrincipalRecord {
    id: String,
    display_name: String,
    role: String,
    department: Option<String>,
    create_micros: i64,
}

impl From<PrincipalRecord> for PrincipalRow {
    fn from(r: PrincipalRecord) -> Self {
        PrincipalRow {
            id: r.id,
            display_name: r.display_name,
            role: Role::parse(&r.role).unwrap_or(Role::Operator),
            department: r.department,
            create_micros: r.create_micros,
        }
    }
}

/// A stored API key's public record.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyRow {
    pub prefix: String,
    pub principal: String,
    pub create_micros: i64,
    pub expire_micros: Option<i64>,
    pub revoke_micros: Option<i64>,
}

/// One logged registry write.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ChangeRow {
    pub id: i64,
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub detail: String,
    pub change_micros: i64,
}

/// What a rename changes: the display name of a region or of a department.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renamed {
    Region,
    Department,
}

/// Who made a write and what it was, for the change log.
pub struct Audit<'a> {
    pub principal: &'a str,
    pub action: &'a str,
    pub resource: &'a str,
    pub detail: String,
}

#[derive(Clone, Debug)]
pub struct RegistryStore {
    pub db: Db,
}

#[derive(sqlx::FromRow)]
struct RegionRecord {
    code: String,
    name: String,
    parent: Option<String>,
}

#[derive(sqlx::FromRow)]
struct DepartmentRecord {
    code: String,
    name: String,
    aliases: String,
    governs: Option<String>,
}

/// An unrevoked key joined with its principal.
#[derive(sqlx::FromRow)]
struct ActiveKeyRecord {
    prefix: String,
    key_hash: Vec<u8>,
    expire_micros: Option<i64>,
    id: String,
    role: String,
    department: Option<String>,
}

#[derive(sqlx::FromRow)]
struct ReportingDutyRecord {
    id: String,
    party: String,
    metrics: String,
    regions: String,
}

impl From<ReportingDutyRecord> for ReportingDuty {
    fn from(r: ReportingDutyRecord) -> Self {
        ReportingDuty {
            id: r.id,
            party: r.party,
            metrics: split_aliases(&r.metrics),
            regions: split_aliases(&r.regions),
        }
    }
}

fn join_aliases(aliases: &[String]) -> String {
    aliases.join("\n")
}

fn split_aliases(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

impl RegistryStore {
    pub fn new(db: Db) -> Self {
        RegistryStore { db }
    }

    /// Seeds the organisation from `city` unless the store was seeded before. Returns whether
    /// it seeded. Idempotent: restarting never duplicates, and changes made since survive.
    pub async fn seed(&self, city: &City) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let seeded: Option<String> =
            sqlx::query_scalar("SELECT value FROM store_meta WHERE key = $1")
                .bind(SEEDED)
                .fetch_optional(&mut *tx)
                .await?;
        if seeded.is_some() {
            return Ok(false);
        }
        let now = now_micros();
        // Parents before children.
        let mut regions: Vec<&Region> = city.regions.iter().collect();
        regions.sort_by_key(|r| {
            let mut depth = 0;
            let mut at = r.parent.as_deref();
            while let Some(p) = at {
                depth += 1;
                at = city.region(p).and_then(|r| r.parent.as_deref());
                if depth > city.regions.len() {
                    break;
                }
            }
            depth
        });
        for r in regions {
            insert_region(&mut tx, r, now).await?;
        }
        for d in &city.departments {
            insert_department(&mut tx, d, now).await?;
        }
        for g in &city.groups {
            sqlx::query("INSERT INTO dept_groups (code, name) VALUES ($1, $2)")
                .bind(&g.code)
                .bind(&g.name)
                .execute(&mut *tx)
                .await?;
            insert_members(&mut tx, &g.code, &g.members).await?;
        }
        for r in &city.responsibilities {
            insert_parties(&mut tx, &r.subject, &r.parties).await?;
        }
        for duty in &city.reporting_duties {
            insert_reporting_duty(&mut tx, duty, now).await?;
        }
        for (key, value) in [
            (SEEDED, city.source.as_str()),
            (CITY_CODE, &city.code),
            (CITY_NAME, &city.name),
        ] {
            set_meta(&mut tx, key, value).await?;
        }
        set_meta(&mut tx, REVISION, "1").await?;
        tx.commit().await?;
        Ok(true)
    }

    /// True once the store has been seeded from a city file.
    pub async fn is_seeded(&self) -> Result<bool, StoreError> {
        Ok(self.db.meta(SEEDED).await?.is_some())
    }

    /// The organisation as stored.
    pub async fn load_city(&self) -> Result<City, StoreError> {
        let pool = &self.db.pool;
        let code = self.db.meta(CITY_CODE).await?.unwrap_or_default();
        let name = self.db.meta(CITY_NAME).await?.unwrap_or_default();
        let source = self.db.meta(SEEDED).await?.unwrap_or_default();
        let regions = sqlx::query_as::<_, RegionRecord>(
            "SELECT code, name, parent FROM regions ORDER BY code",
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| Region {
            code: r.code,
            name: r.name,
            parent: r.parent,
        })
        .collect();
        let departments = sqlx::query_as::<_, DepartmentRecord>(
            "SELECT code, name, aliases, governs FROM departments ORDER BY create_micros, code",
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|d| Department {
            aliases: split_aliases(&d.aliases),
            code: d.code,
            name: d.name,
            governs: d.governs,
        })
        .collect();
        let mut groups: Vec<Group> = sqlx::query_as::<_, (String, String)>(
            "SELECT code, name FROM dept_groups ORDER BY code",
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|(code, name)| Group {
            code,
            name,
            members: Vec::new(),
        })
        .collect();
        for (group_code, department) in sqlx::query_as::<_, (String, String)>(
            "SELECT group_code, department FROM group_members ORDER BY group_code, position",
        )
        .fetch_all(pool)
        .await?
        {
            if let Some(group) = groups.iter_mut().find(|g| g.code == group_code) {
                group.members.push(department);
            }
        }
        let mut by_subject: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (subject, party) in sqlx::query_as::<_, (String, String)>(
            "SELECT subject, party FROM responsibilities ORDER BY subject, position",
        )
        .fetch_all(pool)
        .await?
        {
            by_subject.entry(subject).or_default().push(party);
        }
        let responsibilities = by_subject
            .into_iter()
            .map(|(subject, parties)| Responsibility { subject, parties })
            .collect();
        let reporting_duties = self.reporting_duties().await?;
        Ok(City {
            code,
            name,
            source,
            regions,
            departments,
            groups,
            responsibilities,
            reporting_duties,
            // Cycles live in the review service's tables.
            cycles: Vec::new(),
        })
    }

    /// The reporting duties in id order.
    pub async fn reporting_duties(&self) -> Result<Vec<ReportingDuty>, StoreError> {
        Ok(sqlx::query_as::<_, ReportingDutyRecord>(
            "SELECT id, party, metrics, regions FROM reporting_duties ORDER BY id",
        )
        .fetch_all(&self.db.pool)
        .await?
        .into_iter()
        .map(ReportingDuty::from)
        .collect())
    }

    /// Brings a store seeded before items had sections (rulebook v1) to sections: an item that
    /// has sections in `catalog` but a list of its own in the store gets the city file's section
    /// lists instead, logged as a change by `system`. Returns the items upgraded; a store already
    /// by section is left alone (so administrators' changes survive).
    pub async fn upgrade_to_sections(
        &self,
        catalog: &Catalog,
        seed: &City,
    ) -> Result<Vec<String>, StoreError> {
        let stored: BTreeSet<String> =
            sqlx::query_scalar("SELECT DISTINCT subject FROM responsibilities")
                .fetch_all(&self.db.pool)
                .await?
                .into_iter()
                .collect();
        let mut upgraded = Vec::new();
        for item in &catalog.items {
            let sections = item.subjects();
            if item.sections().is_empty()
                || !stored.contains(&item.code)
                || sections.iter().any(|s| stored.contains(s))
            {
                continue;
            }
            let lists: Vec<(String, Vec<String>)> = sections
                .iter()
                .map(|s| (s.clone(), seed.parties(s)))
                .collect();
            let detail = lists
                .iter()
                .map(|(s, p)| format!("{s}: {}", p.join(", ")))
                .collect::<Vec<_>>()
                .join("; ");
            let resource = format!("items/{}", item.code);
            self.write(
                Audit {
                    principal: "system",
                    action: "UpgradeToSections",
                    resource: &resource,
                    detail,
                },
                async |conn| {
                    sqlx::query("DELETE FROM responsibilities WHERE subject = $1")
                        .bind(&item.code)
                        .execute(&mut *conn)
                        .await?;
                    for (subject, parties) in &lists {
                        insert_parties(conn, subject, parties).await?;
                    }
                    Ok(())
                },
            )
            .await?;
            upgraded.push(item.code.clone());
        }
        Ok(upgraded)
    }

    /// Registered domains by set.
    pub async fn load_domains(&self) -> Result<BTreeMap<String, BTreeSet<String>>, StoreError> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (set, code) in
            sqlx::query_as::<_, (String, String)>("SELECT domain_set, code FROM registered_domains")
                .fetch_all(&self.db.pool)
                .await?
        {
            out.entry(set).or_default().insert(code);
        }
        Ok(out)
    }

    /// Registered domains of one set with names, in registration order.
    pub async fn domains_of(&self, set: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT code, name FROM registered_domains WHERE domain_set = $1 \
             ORDER BY create_micros, code",
        )
        .bind(set)
        .fetch_all(&self.db.pool)
        .await?)
    }

    /// Every unrevoked key with its principal.
    pub async fn load_keys(&self) -> Result<KeyMap, StoreError> {
        let rows = sqlx::query_as::<_, ActiveKeyRecord>(
            "SELECT k.prefix, k.key_hash, k.expire_micros, p.id, p.role, p.department \
             FROM api_keys k JOIN principals p ON p.id = k.principal WHERE k.revoke_micros IS NULL",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let mut map = KeyMap::default();
        for r in rows {
            let Some(role) = Role::parse(&r.role) else {
                tracing::error!(
                    role = r.role,
                    "stored principal has an unknown role; its keys are ignored"
                );
                continue;
            };
            map.keys.insert(
                r.prefix.clone(),
                CachedKey {
                    hash: r.key_hash,
                    expire_micros: r.expire_micros,
                    principal: Principal {
                        id: r.id,
                        role,
                        department: r.department,
                        credential: Some(r.prefix),
                    },
                },
            );
        }
        Ok(map)
    }

    /// The registry revision: bumped by every write.
    pub async fn revision(&self) -> Result<i64, StoreError> {
        Ok(self
            .db
            .meta(REVISION)
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    pub async fn principal_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM principals")
            .fetch_one(&self.db.pool)
            .await?)
    }

    pub async fn principals(
        &self,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<PrincipalRow>, i64), StoreError> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM principals")
            .fetch_one(&self.db.pool)
            .await?;
        let rows = sqlx::query_as::<_, PrincipalRecord>(
            "SELECT id, display_name, role, department, create_micros FROM principals \
             ORDER BY id LIMIT $1 OFFSET $2",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.db.pool)
        .await?;
        Ok((rows.into_iter().map(PrincipalRow::from).collect(), total))
    }

    pub async fn principal(&self, id: &str) -> Result<Option<PrincipalRow>, StoreError> {
        let row = sqlx::query_as::<_, PrincipalRecord>(
            "SELECT id, display_name, role, department, create_micros FROM principals WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(row.map(PrincipalRow::from))
    }

    pub async fn keys(&self, principal: Option<&str>) -> Result<Vec<KeyRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT prefix, principal, create_micros, expire_micros, revoke_micros FROM api_keys \
             WHERE ($1 = '' OR principal = $1) ORDER BY create_micros, prefix",
        )
        .bind(principal.unwrap_or(""))
        .fetch_all(&self.db.pool)
        .await?)
    }

    pub async fn key(&self, prefix: &str) -> Result<Option<KeyRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT prefix, principal, create_micros, expire_micros, revoke_micros FROM api_keys \
             WHERE prefix = $1",
        )
        .bind(prefix)
        .fetch_optional(&self.db.pool)
        .await?)
    }

    /// The change log, newest first; with `about`, only the changes to that resource and the
    /// resources below it (`principals/x` and `principals/x/apiKeys/...`).
    pub async fn changes(
        &self,
        about: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<ChangeRow>, i64), StoreError> {
        // An empty `about` matches everything; otherwise the resource itself or, compared as a
        // prefix with substr (not LIKE: ids may hold `_`), what lies below it.
        let about = about.unwrap_or("");
        let below = if about.is_empty() {
            String::new()
        } else {
            format!("{about}/")
        };
        let below_len = i64::try_from(below.chars().count()).unwrap_or(i64::MAX);
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM registry_changes \
             WHERE ($1 = '' OR resource = $1 OR substr(resource, 1, CAST($2 AS INTEGER)) = $3)",
        )
        .bind(about)
        .bind(below_len)
        .bind(&below)
        .fetch_one(&self.db.pool)
        .await?;
        let rows = sqlx::query_as(
            "SELECT id, principal, action, resource, detail, change_micros FROM registry_changes \
             WHERE ($1 = '' OR resource = $1 OR substr(resource, 1, CAST($2 AS INTEGER)) = $3) \
             ORDER BY id DESC LIMIT $4 OFFSET $5",
        )
        .bind(about)
        .bind(below_len)
        .bind(&below)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.db.pool)
        .await?;
        Ok((rows, total))
    }

    // ----- writes: each one transaction with its change-log entry and a revision bump -----

    /// Runs one registry write: `statements` in a transaction, then the change-log entry that
    /// says who made the write and what it was, and a bump of the registry revision, then the
    /// commit. Every write goes through here, so none can skip its log entry or the bump.
    async fn write(
        &self,
        audit: Audit<'_>,
        statements: impl AsyncFnOnce(&mut AnyConnection) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().await?;
        statements(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO registry_changes (principal, action, resource, detail, change_micros) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(audit.principal)
        .bind(audit.action)
        .bind(audit.resource)
        .bind(&audit.detail)
        .bind(now_micros())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO store_meta (key, value) VALUES ($1, '1') ON CONFLICT (key) DO UPDATE \
             SET value = CAST(CAST(store_meta.value AS BIGINT) + 1 AS TEXT)",
        )
        .bind(REVISION)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn create_region(&self, r: &Region, audit: Audit<'_>) -> Result<(), StoreError> {
        self.write(audit, async |conn| {
            insert_region(conn, r, now_micros()).await
        })
        .await
    }

    pub async fn create_department(
        &self,
        d: &Department,
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        self.write(audit, async |conn| {
            insert_department(conn, d, now_micros()).await
        })
        .await
    }

    /// Renames a region or a department (the display name only; codes never change).
    pub async fn rename(
        &self,
        kind: Renamed,
        code: &str,
        name: &str,
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        let sql = match kind {
            Renamed::Region => "UPDATE regions SET name = $1 WHERE code = $2",
            Renamed::Department => "UPDATE departments SET name = $1 WHERE code = $2",
        };
        self.write(audit, async |conn| {
            sqlx::query(sql).bind(name).bind(code).execute(conn).await?;
            Ok(())
        })
        .await
    }

    pub async fn set_group_members(
        &self,
        group: &str,
        members: &[String],
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        self.write(audit, async |conn| {
            sqlx::query("DELETE FROM group_members WHERE group_code = $1")
                .bind(group)
                .execute(&mut *conn)
                .await?;
            insert_members(conn, group, members).await
        })
        .await
    }

    pub async fn set_responsibilities(
        &self,
        subject: &str,
        parties: &[String],
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        self.write(audit, async |conn| {
            sqlx::query("DELETE FROM responsibilities WHERE subject = $1")
                .bind(subject)
                .execute(&mut *conn)
                .await?;
            insert_parties(conn, subject, parties).await
        })
        .await
    }

    pub async fn create_reporting_duty(
        &self,
        duty: &ReportingDuty,
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        self.write(audit, async |conn| {
            insert_reporting_duty(conn, duty, now_micros()).await
        })
        .await
    }

    pub async fn delete_reporting_duty(
        &self,
        id: &str,
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        self.write(audit, async |conn| {
            sqlx::query("DELETE FROM reporting_duties WHERE id = $1")
                .bind(id)
                .execute(conn)
                .await?;
            Ok(())
        })
        .await
    }

    pub async fn register_domain(
        &self,
        set: &str,
        code: &str,
        name: &str,
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        self.write(audit, async |conn| {
            sqlx::query(
                "INSERT INTO registered_domains (domain_set, code, name, create_micros) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(set)
            .bind(code)
            .bind(name)
            .bind(now_micros())
            .execute(conn)
            .await?;
            Ok(())
        })
        .await
    }

    pub async fn create_principal(
        &self,
        p: &PrincipalRow,
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        self.write(audit, async |conn| {
            sqlx::query(
                "INSERT INTO principals (id, display_name, role, department, create_micros) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&p.id)
            .bind(&p.display_name)
            .bind(p.role.as_str())
            .bind(p.department.as_deref())
            .bind(p.create_micros)
            .execute(conn)
            .await?;
            Ok(())
        })
        .await
    }

    pub async fn create_key(
        &self,
        k: &KeyRow,
        hash: &[u8],
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        self.write(audit, async |conn| {
            sqlx::query(
                "INSERT INTO api_keys (prefix, principal, key_hash, create_micros, expire_micros) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&k.prefix)
            .bind(&k.principal)
            .bind(hash.to_vec())
            .bind(k.create_micros)
            .bind(k.expire_micros)
            .execute(conn)
            .await?;
            Ok(())
        })
        .await
    }

    pub async fn revoke_key(
        &self,
        prefix: &str,
        at: i64,
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        self.write(audit, async |conn| {
            sqlx::query(
                "UPDATE api_keys SET revoke_micros = $1 WHERE prefix = $2 AND revoke_micros IS NULL",
            )
            .bind(at)
            .bind(prefix)
            .execute(conn)
            .await?;
            Ok(())
        })
        .await
    }
}

async fn insert_region(
    conn: &mut AnyConnection,
    r: &Region,
    create_micros: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO regions (code, name, parent, create_micros) VALUES ($1, $2, $3, $4)")
        .bind(&r.code)
        .bind(&r.name)
        .bind(r.parent.as_deref())
        .bind(create_micros)
        .execute(conn)
        .await?;
    Ok(())
}

async fn insert_department(
    conn: &mut AnyConnection,
    d: &Department,
    create_micros: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO departments (code, name, aliases, governs, create_micros) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&d.code)
    .bind(&d.name)
    .bind(join_aliases(&d.aliases))
    .bind(d.governs.as_deref())
    .bind(create_micros)
    .execute(conn)
    .await?;
    Ok(())
}

async fn insert_members(
    conn: &mut AnyConnection,
    group: &str,
    members: &[String],
) -> Result<(), StoreError> {
    for (i, m) in members.iter().enumerate() {
        sqlx::query(
            "INSERT INTO group_members (group_code, department, position) VALUES ($1, $2, $3)",
        )
        .bind(group)
        .bind(m)
        .bind(i64::try_from(i).unwrap_or(i64::MAX))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn insert_parties(
    conn: &mut AnyConnection,
    subject: &str,
    parties: &[String],
) -> Result<(), StoreError> {
    for (i, p) in parties.iter().enumerate() {
        sqlx::query("INSERT INTO responsibilities (subject, party, position) VALUES ($1, $2, $3)")
            .bind(subject)
            .bind(p)
            .bind(i64::try_from(i).unwrap_or(i64::MAX))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn insert_reporting_duty(
    conn: &mut AnyConnection,
    duty: &ReportingDuty,
    create_micros: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO reporting_duties (id, party, metrics, regions, create_micros) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&duty.id)
    .bind(&duty.party)
    .bind(join_aliases(&duty.metrics))
    .bind(join_aliases(&duty.regions))
    .bind(create_micros)
    .execute(conn)
    .await?;
    Ok(())
}

async fn set_meta(conn: &mut AnyConnection, key: &str, value: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO store_meta (key, value) VALUES ($1, $2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value)
    .execute(conn)
    .await?;
    Ok(())
}
