//! The registry's SQL: seeding from the city file, loading the organisation and the keys, and
//! every write, each in one transaction together with its entry in the change log and a bump of
//! the registry revision (which other processes poll to reload).

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{Any, Row, Transaction};

use citycredit_core::auth::{Principal, Role};
use citycredit_core::city::{City, Department, Group, Region, Responsibility};
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

/// A stored API key's public record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRow {
    pub prefix: String,
    pub principal: String,
    pub create_micros: i64,
    pub expire_micros: Option<i64>,
    pub revoke_micros: Option<i64>,
}

/// One logged registry write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeRow {
    pub id: i64,
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub detail: String,
    pub change_micros: i64,
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
        let mut tx = self.db.pool.begin().await?;
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
            sqlx::query(
                "INSERT INTO regions (code, name, parent, create_micros) VALUES ($1, $2, $3, $4)",
            )
            .bind(&r.code)
            .bind(&r.name)
            .bind(r.parent.as_deref())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        for d in &city.departments {
            sqlx::query(
                "INSERT INTO departments (code, name, aliases, governs, create_micros) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&d.code)
            .bind(&d.name)
            .bind(join_aliases(&d.aliases))
            .bind(d.governs.as_deref())
            .bind(now)
            .execute(&mut *tx)
            .await?;
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
        let regions = sqlx::query("SELECT code, name, parent FROM regions ORDER BY code")
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                Ok(Region {
                    code: r.try_get(0)?,
                    name: r.try_get(1)?,
                    parent: r.try_get(2)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let departments = sqlx::query(
            "SELECT code, name, aliases, governs FROM departments ORDER BY create_micros, code",
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| {
            Ok(Department {
                code: r.try_get(0)?,
                name: r.try_get(1)?,
                aliases: split_aliases(&r.try_get::<String, _>(2)?),
                governs: r.try_get(3)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let mut groups: Vec<Group> =
            sqlx::query("SELECT code, name FROM dept_groups ORDER BY code")
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| {
                    Ok(Group {
                        code: r.try_get(0)?,
                        name: r.try_get(1)?,
                        members: Vec::new(),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
        for row in sqlx::query(
            "SELECT group_code, department FROM group_members ORDER BY group_code, position",
        )
        .fetch_all(pool)
        .await?
        {
            let g: String = row.try_get(0)?;
            if let Some(group) = groups.iter_mut().find(|x| x.code == g) {
                group.members.push(row.try_get(1)?);
            }
        }
        let mut by_subject: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in
            sqlx::query("SELECT subject, party FROM responsibilities ORDER BY subject, position")
                .fetch_all(pool)
                .await?
        {
            by_subject
                .entry(row.try_get(0)?)
                .or_default()
                .push(row.try_get(1)?);
        }
        let responsibilities = by_subject
            .into_iter()
            .map(|(subject, parties)| Responsibility { subject, parties })
            .collect();
        Ok(City {
            code,
            name,
            source,
            regions,
            departments,
            groups,
            responsibilities,
        })
    }

    /// Registered domains by set.
    pub async fn load_domains(&self) -> Result<BTreeMap<String, BTreeSet<String>>, StoreError> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for row in sqlx::query("SELECT domain_set, code FROM registered_domains")
            .fetch_all(&self.db.pool)
            .await?
        {
            out.entry(row.try_get(0)?)
                .or_default()
                .insert(row.try_get(1)?);
        }
        Ok(out)
    }

    /// Registered domains of one set with names, in registration order.
    pub async fn domains_of(&self, set: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT code, name FROM registered_domains WHERE domain_set = $1 ORDER BY create_micros, code")
            .bind(set)
            .fetch_all(&self.db.pool)
            .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Every unrevoked key with its principal.
    pub async fn load_keys(&self) -> Result<KeyMap, StoreError> {
        let rows = sqlx::query(
            "SELECT k.prefix, k.key_hash, k.expire_micros, p.id, p.role, p.department \
             FROM api_keys k JOIN principals p ON p.id = k.principal WHERE k.revoke_micros IS NULL",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let mut map = KeyMap::default();
        for r in rows {
            let role: String = r.try_get(4)?;
            let Some(role) = Role::parse(&role) else {
                tracing::error!(
                    role,
                    "stored principal has an unknown role; its keys are ignored"
                );
                continue;
            };
            let prefix: String = r.try_get(0)?;
            map.keys.insert(
                prefix.clone(),
                CachedKey {
                    hash: r.try_get(1)?,
                    expire_micros: r.try_get(2)?,
                    principal: Principal {
                        id: r.try_get(3)?,
                        role,
                        department: r.try_get(5)?,
                        credential: Some(prefix),
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
        let rows = sqlx::query(
            "SELECT id, display_name, role, department, create_micros FROM principals ORDER BY id LIMIT $1 OFFSET $2",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.db.pool)
        .await?;
        let out = rows
            .into_iter()
            .map(|r| principal_row(&r))
            .collect::<Result<_, _>>()?;
        Ok((out, total))
    }

    pub async fn principal(&self, id: &str) -> Result<Option<PrincipalRow>, StoreError> {
        let row = sqlx::query("SELECT id, display_name, role, department, create_micros FROM principals WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?;
        row.map(|r| principal_row(&r)).transpose()
    }

    pub async fn keys(&self, principal: Option<&str>) -> Result<Vec<KeyRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT prefix, principal, create_micros, expire_micros, revoke_micros FROM api_keys \
             WHERE ($1 = '' OR principal = $1) ORDER BY create_micros, prefix",
        )
        .bind(principal.unwrap_or(""))
        .fetch_all(&self.db.pool)
        .await?;
        rows.into_iter().map(|r| key_row(&r)).collect()
    }

    pub async fn key(&self, prefix: &str) -> Result<Option<KeyRow>, StoreError> {
        let row = sqlx::query(
            "SELECT prefix, principal, create_micros, expire_micros, revoke_micros FROM api_keys WHERE prefix = $1",
        )
        .bind(prefix)
        .fetch_optional(&self.db.pool)
        .await?;
        row.map(|r| key_row(&r)).transpose()
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
        let rows = sqlx::query(
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
        let out = rows
            .into_iter()
            .map(|r| {
                Ok(ChangeRow {
                    id: r.try_get(0)?,
                    principal: r.try_get(1)?,
                    action: r.try_get(2)?,
                    resource: r.try_get(3)?,
                    detail: r.try_get(4)?,
                    change_micros: r.try_get(5)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok((out, total))
    }

    // ----- writes: each one transaction with its change-log entry and a revision bump -----

    pub async fn create_region(&self, r: &Region, audit: Audit<'_>) -> Result<(), StoreError> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query(
            "INSERT INTO regions (code, name, parent, create_micros) VALUES ($1, $2, $3, $4)",
        )
        .bind(&r.code)
        .bind(&r.name)
        .bind(r.parent.as_deref())
        .bind(now_micros())
        .execute(&mut *tx)
        .await?;
        finish(tx, audit).await
    }

    pub async fn rename_region(
        &self,
        code: &str,
        name: &str,
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query("UPDATE regions SET name = $1 WHERE code = $2")
            .bind(name)
            .bind(code)
            .execute(&mut *tx)
            .await?;
        finish(tx, audit).await
    }

    pub async fn create_department(
        &self,
        d: &Department,
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query("INSERT INTO departments (code, name, aliases, governs, create_micros) VALUES ($1, $2, $3, $4, $5)")
            .bind(&d.code)
            .bind(&d.name)
            .bind(join_aliases(&d.aliases))
            .bind(d.governs.as_deref())
            .bind(now_micros())
            .execute(&mut *tx)
            .await?;
        finish(tx, audit).await
    }

    pub async fn rename_department(
        &self,
        code: &str,
        name: &str,
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query("UPDATE departments SET name = $1 WHERE code = $2")
            .bind(name)
            .bind(code)
            .execute(&mut *tx)
            .await?;
        finish(tx, audit).await
    }

    pub async fn set_group_members(
        &self,
        group: &str,
        members: &[String],
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query("DELETE FROM group_members WHERE group_code = $1")
            .bind(group)
            .execute(&mut *tx)
            .await?;
        insert_members(&mut tx, group, members).await?;
        finish(tx, audit).await
    }

    pub async fn set_responsibilities(
        &self,
        subject: &str,
        parties: &[String],
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query("DELETE FROM responsibilities WHERE subject = $1")
            .bind(subject)
            .execute(&mut *tx)
            .await?;
        insert_parties(&mut tx, subject, parties).await?;
        finish(tx, audit).await
    }

    pub async fn register_domain(
        &self,
        set: &str,
        code: &str,
        name: &str,
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query("INSERT INTO registered_domains (domain_set, code, name, create_micros) VALUES ($1, $2, $3, $4)")
            .bind(set)
            .bind(code)
            .bind(name)
            .bind(now_micros())
            .execute(&mut *tx)
            .await?;
        finish(tx, audit).await
    }

    pub async fn create_principal(
        &self,
        p: &PrincipalRow,
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query("INSERT INTO principals (id, display_name, role, department, create_micros) VALUES ($1, $2, $3, $4, $5)")
            .bind(&p.id)
            .bind(&p.display_name)
            .bind(p.role.as_str())
            .bind(p.department.as_deref())
            .bind(p.create_micros)
            .execute(&mut *tx)
            .await?;
        finish(tx, audit).await
    }

    pub async fn create_key(
        &self,
        k: &KeyRow,
        hash: &[u8],
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query(
            "INSERT INTO api_keys (prefix, principal, key_hash, create_micros, expire_micros) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&k.prefix)
        .bind(&k.principal)
        .bind(hash.to_vec())
        .bind(k.create_micros)
        .bind(k.expire_micros)
        .execute(&mut *tx)
        .await?;
        finish(tx, audit).await
    }

    pub async fn revoke_key(
        &self,
        prefix: &str,
        at: i64,
        audit: Audit<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.pool.begin().await?;
        sqlx::query(
            "UPDATE api_keys SET revoke_micros = $1 WHERE prefix = $2 AND revoke_micros IS NULL",
        )
        .bind(at)
        .bind(prefix)
        .execute(&mut *tx)
        .await?;
        finish(tx, audit).await
    }
}

fn principal_row(r: &sqlx::any::AnyRow) -> Result<PrincipalRow, StoreError> {
    let role: String = r.try_get(2)?;
    Ok(PrincipalRow {
        id: r.try_get(0)?,
        display_name: r.try_get(1)?,
        role: Role::parse(&role).unwrap_or(Role::Operator),
        department: r.try_get(3)?,
        create_micros: r.try_get(4)?,
    })
}

fn key_row(r: &sqlx::any::AnyRow) -> Result<KeyRow, StoreError> {
    Ok(KeyRow {
        prefix: r.try_get(0)?,
        principal: r.try_get(1)?,
        create_micros: r.try_get(2)?,
        expire_micros: r.try_get(3)?,
        revoke_micros: r.try_get(4)?,
    })
}

async fn insert_members(
    tx: &mut Transaction<'_, Any>,
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
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn insert_parties(
    tx: &mut Transaction<'_, Any>,
    subject: &str,
    parties: &[String],
) -> Result<(), StoreError> {
    for (i, p) in parties.iter().enumerate() {
        sqlx::query("INSERT INTO responsibilities (subject, party, position) VALUES ($1, $2, $3)")
            .bind(subject)
            .bind(p)
            .bind(i64::try_from(i).unwrap_or(i64::MAX))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

async fn set_meta(tx: &mut Transaction<'_, Any>, key: &str, value: &str) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO store_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(value)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Logs the write, bumps the revision and commits.
async fn finish(mut tx: Transaction<'_, Any>, audit: Audit<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO registry_changes (principal, action, resource, detail, change_micros) VALUES ($1, $2, $3, $4, $5)",
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
