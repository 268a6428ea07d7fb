//! The organisation snapshot services hold: the city (regions, departments, groups,
//! responsibilities) and the access index derived from it. The registry publishes a new
//! snapshot on every change; readers take the current one without locking or I/O.

use std::sync::Arc;

use tokio::sync::watch;

use crate::auth::Access;
use crate::catalog::Catalog;
use crate::city::City;

/// One consistent view of the organisation.
#[derive(Clone, Debug)]
pub struct Org {
    pub city: City,
    pub access: Access,
}

impl Org {
    pub fn new(catalog: &Catalog, city: City) -> Org {
        let access = Access::new(catalog, &city);
        Org { city, access }
    }
}

/// Readers' handle on the current snapshot.
pub type OrgView = watch::Receiver<Arc<Org>>;

/// A fixed snapshot, for tests and tools that never change the organisation.
pub fn fixed(org: Org) -> OrgView {
    // The value stays readable after the sender is gone; nobody waits for changes to it.
    watch::channel(Arc::new(org)).1
}
