//! The registry's errors: each case names its code and specific reason
//! (`citycredit::status::ServiceError`), and `citycredit::status::to_status` turns it into a
//! `tonic::Status`.

use std::time::Duration;

use tonic::Status;

use citycredit::auth::Denied;
use citycredit::status::{self, Reason, ServiceError, Violation};
use citycredit::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid request")]
    Invalid(Vec<Violation>),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// RegisterDomain in a domain set whose domains the catalog fixes.
    #[error("domain set `{0}` is closed: its domains are fixed by the catalog")]
    DomainSetClosed(String),
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RegistryError {
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        RegistryError::Invalid(vec![Violation::new(field, description)])
    }
}

/// True when a write failed on a uniqueness constraint (a concurrent create won the race).
fn is_unique_violation(e: &StoreError) -> bool {
    match e {
        StoreError::Query(sqlx::Error::Database(db)) => {
            // PostgreSQL 23505; SQLite extended codes 1555 (primary key) and 2067 (unique).
            matches!(db.code().as_deref(), Some("23505" | "1555" | "2067"))
        }
        _ => false,
    }
}

impl ServiceError for RegistryError {
    fn reason(&self) -> Reason {
        match self {
            RegistryError::Invalid(_) => Reason::InvalidFields,
            RegistryError::NotFound(_) => Reason::NotFound,
            RegistryError::AlreadyExists(_) => Reason::ResourceExists,
            RegistryError::DomainSetClosed(_) => Reason::DomainSetClosed,
            RegistryError::Denied(d) => d.reason(),
            RegistryError::Store(e) if is_unique_violation(e) => Reason::ResourceExists,
            RegistryError::Store(e) if e.is_transient() => Reason::StorageUnavailable,
            RegistryError::Store(_) => Reason::InternalFault,
        }
    }

    fn message(&self) -> String {
        match self {
            RegistryError::Store(e) if is_unique_violation(e) => {
                "the resource already exists".to_owned()
            }
            RegistryError::Store(e) if e.is_transient() => {
                "the registry's database is unavailable; retry shortly".to_owned()
            }
            e => e.to_string(),
        }
    }

    fn metadata(&self) -> Vec<(&'static str, String)> {
        match self {
            RegistryError::NotFound(resource) | RegistryError::AlreadyExists(resource) => {
                vec![("resource", resource.clone())]
            }
            RegistryError::DomainSetClosed(set) => vec![("domain_set", set.clone())],
            RegistryError::Denied(d) => d.metadata(),
            _ => Vec::new(),
        }
    }

    fn violations(&self) -> Option<(&[Violation], usize)> {
        match self {
            RegistryError::Invalid(v) => Some((v, v.len())),
            _ => None,
        }
    }

    fn retry_delay(&self) -> Option<Duration> {
        match self {
            RegistryError::Store(e) if !is_unique_violation(e) && e.is_transient() => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Status {
        status::to_status(&e)
    }
}
