//! The review cycle (issue 13, points 1 and 3): evaluation cycles and their deadlines, the
//! sign-off of each department's figures per (region, period), lock exceptions, and
//! `ReviewService`, which serves them. The rules are pure, in `citycredit_core::review`; the
//! write gate that enforces sign-off and deadlines on writes is ingestion's (`writer.rs`), which
//! reads the tables this crate writes.

#![forbid(unsafe_code)]

pub mod error;
pub mod service;
pub mod store;
pub mod timeliness;

use std::sync::Arc;

use citycredit::org::OrgView;
use citycredit_core::catalog::Catalog;
use citycredit_core::city::City;
use citycredit_store::{Db, StoreError};

pub use error::ReviewError;
pub use service::ReviewApi;
pub use store::Part;

/// The review cycle's shared handle.
#[derive(Debug)]
pub struct Review {
    db: Db,
    catalog: Arc<Catalog>,
    org: OrgView,
    /// The rule versions a cycle may name (the catalogs loaded).
    versions: Vec<String>,
}

impl Review {
    /// The review over an open store. `versions` are the rule (catalog) versions loaded; a
    /// cycle must name one of them.
    pub fn new(db: Db, catalog: Arc<Catalog>, org: OrgView, versions: Vec<String>) -> Review {
        Review {
            db,
            catalog,
            org,
            versions,
        }
    }

    /// Seeds the city file's cycles once (the process that seeds the registry does it).
    pub async fn seed(&self, city: &City) -> Result<bool, StoreError> {
        let seeded =
            store::seed_cycles(&self.db, &city.cycles, citycredit_core::clock::now_micros())
                .await?;
        if seeded {
            tracing::info!(
                cycles = city.cycles.len(),
                "review cycles seeded from the city file"
            );
        }
        Ok(seeded)
    }

    /// The gRPC service.
    pub fn api(self: &Arc<Self>) -> ReviewApi {
        ReviewApi::new(Arc::clone(self))
    }
}
