//! The registry's errors and their one conversion to gRPC status.

use tonic::{Code, Status};

use citycredit::status::{self, Violation};
use citycredit_core::auth::Denied;
use citycredit_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid request")]
    Invalid(Vec<Violation>),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
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

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Status {
        match e {
            RegistryError::Invalid(v) => status::invalid_argument(&v),
            RegistryError::NotFound(resource) => status::not_found(&resource),
            RegistryError::AlreadyExists(resource) => status::with_info(
                Code::AlreadyExists,
                format!("{resource} already exists"),
                &[("resource", &resource)],
            ),
            RegistryError::FailedPrecondition(why) => {
                status::with_info(Code::FailedPrecondition, why, &[])
            }
            RegistryError::Denied(d) => citycredit::auth::denied(d),
            RegistryError::Store(e) if is_unique_violation(&e) => {
                status::with_info(Code::AlreadyExists, "the resource already exists", &[])
            }
            RegistryError::Store(e) if e.is_transient() => status::retry_after(
                Code::Unavailable,
                "the registry's database is unavailable; retry shortly",
                std::time::Duration::from_secs(1),
            ),
            RegistryError::Store(e) => status::internal("registry store", &e),
        }
    }
}
