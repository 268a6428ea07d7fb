//! The department registry: the city's organisation (regions, departments, groups,
//! responsibilities, open-set domains), principals and API keys, and the API-key authentication
//! (`authn::authenticate`) with which the gateway's edge turns an API key into a principal.
//!
//! The registry is the only writer of its tables. It publishes two snapshots that the other
//! services read without I/O: the organisation (`OrgView`: city, domains, access index) and the
//! active keys (`KeyView`). Both are replaced immediately after a write in this process, and
//! within `refresh_interval` after a write in another process (the registry revision is polled).

pub mod authn;
pub mod error;
pub mod keys;
pub mod service;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::sync::{Mutex, watch};

use citycredit::org::OrgView;
use citycredit_core::auth::Role;
use citycredit_core::catalog::Catalog;
use citycredit_core::city::City;
use citycredit_core::org::Org;
use citycredit_store::{Db, StoreError, now_micros};

pub use error::RegistryError;
pub use keys::{KeyMap, KeyView};
pub use service::RegistryApi;
use store::{Audit, KeyRow, PrincipalRow, RegistryStore};

/// The id of the administrator created on an empty store.
pub const BOOTSTRAP_ADMIN: &str = "admin";

/// The registry and the snapshots it publishes.
pub struct Registry {
    pub store: RegistryStore,
    pub catalog: Arc<Catalog>,
    org_tx: watch::Sender<Arc<Org>>,
    keys_tx: watch::Sender<Arc<KeyMap>>,
    revision: AtomicI64,
    reload_lock: Mutex<()>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("revision", &self.revision.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Seeds an empty store from `seed` (idempotently), creates the bootstrap administrator on
    /// a store without principals, and loads the snapshots.
    ///
    /// The bootstrap key is `bootstrap_key` when given; otherwise one is generated and printed
    /// once to standard error. It is never printed again.
    pub async fn open(
        db: Db,
        catalog: Arc<Catalog>,
        seed: &City,
        bootstrap_key: Option<&str>,
    ) -> Result<Arc<Registry>, StoreError> {
        let store = RegistryStore::new(db);
        if store.seed(seed).await? {
            tracing::info!(city = %seed.name, source = %seed.source, "registry seeded from the city file");
        }
        let upgraded = store.upgrade_to_sections(&catalog, seed).await?;
        if !upgraded.is_empty() {
            tracing::info!(items = ?upgraded, "responsibilities upgraded to item sections from the city file");
        }
        if store.principal_count().await? == 0 {
            bootstrap_admin(&store, bootstrap_key).await?;
        }
        Registry::load(store, catalog).await
    }

    /// Joins a store another process seeds (services running apart from the registry): waits
    /// until it is seeded, then loads the snapshots. Never seeds, never creates principals.
    /// Looks again with exponential backoff and jitter (50 ms doubling to 500 ms, plus up to
    /// as much jitter), waiting `wait` in all.
    pub async fn attach(
        db: Db,
        catalog: Arc<Catalog>,
        wait: Duration,
    ) -> Result<Arc<Registry>, StoreError> {
        let store = RegistryStore::new(db);
        let backoff = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_millis(500))
            .with_jitter()
            .with_total_delay(Some(wait))
            .without_max_times();
        let seeded = &store;
        (move || async move {
            match seeded.is_seeded().await? {
                true => Ok(()),
                false => Err(StoreError::NotSeeded),
            }
        })
        .retry(backoff)
        .when(|e| matches!(e, StoreError::NotSeeded))
        .notify(|_, next| {
            tracing::debug!(
                retry_in_ms = next.as_millis(),
                "store not seeded yet; waiting for the registry"
            );
        })
        .await?;
        Registry::load(store, catalog).await
    }

    /// The registry over a seeded store, with its snapshots loaded.
    async fn load(
        store: RegistryStore,
        catalog: Arc<Catalog>,
    ) -> Result<Arc<Registry>, StoreError> {
        let (revision, org, keys) = snapshots(&store, &catalog).await?;
        Ok(Arc::new(Registry {
            store,
            catalog,
            org_tx: watch::channel(Arc::new(org)).0,
            keys_tx: watch::channel(Arc::new(keys)).0,
            revision: AtomicI64::new(revision),
            reload_lock: Mutex::new(()),
        }))
    }

    /// The organisation snapshot.
    pub fn org(&self) -> OrgView {
        self.org_tx.subscribe()
    }

    /// The key snapshot.
    pub fn keys(&self) -> KeyView {
        self.keys_tx.subscribe()
    }

    /// Reloads both snapshots from the store and publishes them.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let _guard = self.reload_lock.lock().await;
        let (revision, org, keys) = snapshots(&self.store, &self.catalog).await?;
        self.org_tx.send_replace(Arc::new(org));
        self.keys_tx.send_replace(Arc::new(keys));
        self.revision.store(revision, Ordering::Relaxed);
        Ok(())
    }

    /// Reloads when another process changed the registry since the last load; true if it did.
    pub async fn refresh_if_changed(&self) -> Result<bool, StoreError> {
        let rev = self.store.revision().await?;
        if rev == self.revision.load(Ordering::Relaxed) {
            return Ok(false);
        }
        self.reload().await?;
        Ok(true)
    }

    /// Polls the registry revision every `every` and reloads when another process changed it.
    pub fn spawn_refresh(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let registry = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match registry.store.revision().await {
                    Ok(rev) if rev != registry.revision.load(Ordering::Relaxed) => {
                        if let Err(e) = registry.reload().await {
                            tracing::warn!(error = %e, "registry reload failed; keeping the last snapshot");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "registry revision poll failed"),
                }
            }
        })
    }
}

/// The revision, organisation and keys as stored. The revision is read first, so a write that
/// lands meanwhile leaves a newer revision than the one recorded and is loaded again next time.
async fn snapshots(
    store: &RegistryStore,
    catalog: &Catalog,
) -> Result<(i64, Org, KeyMap), StoreError> {
    let revision = store.revision().await?;
    let mut city = store.load_city().await?;
    city.sort_by_catalog(catalog);
    let org = Org::with_domains(catalog, city, store.load_domains().await?);
    Ok((revision, org, store.load_keys().await?))
}

async fn bootstrap_admin(store: &RegistryStore, given: Option<&str>) -> Result<(), StoreError> {
    let now = now_micros();
    let admin = PrincipalRow {
        id: BOOTSTRAP_ADMIN.into(),
        display_name: "bootstrap administrator".into(),
        role: Role::Admin,
        department: None,
        create_micros: now,
    };
    let audit = |action| Audit {
        principal: "system",
        action,
        resource: "principals/admin",
        detail: "created on an empty store".into(),
    };
    store
        .create_principal(&admin, audit("CreatePrincipal"))
        .await?;
    let (prefix, key, generated) = match given {
        Some(k) => (keys::prefix_of(k).to_owned(), k.to_owned(), false),
        None => {
            let (p, k) = keys::generate();
            (p, k, true)
        }
    };
    let row = KeyRow {
        prefix: prefix.clone(),
        principal: BOOTSTRAP_ADMIN.into(),
        create_micros: now,
        expire_micros: None,
        revoke_micros: None,
    };
    store
        .create_key(&row, &keys::hash(&key), audit("CreateApiKey"))
        .await?;
    if generated {
        // Printed once, on purpose, outside the structured log: the only way to learn it.
        eprintln!(
            "\n=== citycredit: bootstrap administrator key (shown once; store it now) ===\n{key}\n\
             === use it as `authorization: Bearer <key>`; set CITYCREDIT_BOOTSTRAP_ADMIN_KEY to choose it ===\n"
        );
        tracing::warn!(key_prefix = %prefix, "created the bootstrap administrator with a generated key (printed above)");
    } else {
        tracing::info!(key_prefix = %prefix, "created the bootstrap administrator with the configured key");
    }
    Ok(())
}

impl citycredit_core::org::OrgRefresh for Registry {
    fn refresh(&self) -> citycredit_core::BoxFuture<'_, bool> {
        Box::pin(async move {
            match self.refresh_if_changed().await {
                Ok(changed) => changed,
                Err(e) => {
                    tracing::warn!(error = %e, "registry refresh failed");
                    false
                }
            }
        })
    }
}

impl citycredit_core::auth::CredentialCheck for Registry {
    fn still_valid(&self, principal: &citycredit_core::auth::Principal, now_micros: i64) -> bool {
        let Some(prefix) = &principal.credential else {
            return true;
        };
        let keys = self.keys_tx.borrow();
        // The key must still be active and still name this very principal (id, role and
        // department), so an identity can claim nothing its key does not grant.
        keys.keys.get(prefix).is_some_and(|k| {
            k.principal.id == principal.id
                && k.principal.role == principal.role
                && k.principal.department == principal.department
                && k.expire_micros.is_none_or(|e| now_micros < e)
        })
    }
}
