//! How services share the organisation snapshot (`citycredit_core::org::Org`): a watch channel
//! the registry publishes on, read without locking or I/O.

use std::sync::Arc;

use tokio::sync::watch;

use citycredit_core::org::Org;

/// Readers' handle on the current snapshot.
pub type OrgView = watch::Receiver<Arc<Org>>;

/// A fixed snapshot, for tests and tools that never change the organisation.
pub fn fixed(org: Org) -> OrgView {
    // The value stays readable after the sender is gone; nobody waits for changes to it.
    watch::channel(Arc::new(org)).1
}
