//! The registry's errors: each case names its code and specific reason
//! (`citycredit::status::ServiceError`), and `citycredit::status::to_status` turns it into a
//! `tonic::Status`.

use std::time::Duration;

use tonic::Status;

use citycredit::status::{self, Reason, ServiceError, Violation};
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

impl ServiceError for RegistryError {
    fn reason(&self) -> Reason {
        match self {
            RegistryError::Invalid(_) => Reason::InvalidFields,
            RegistryError::NotFound(_) => Reason::NotFound,
            RegistryError::AlreadyExists(_) => Reason::ResourceExists,
            RegistryError::DomainSetClosed(_) => Reason::DomainSetClosed,
            RegistryError::Denied(d) => d.reason(),
            RegistryError::Store(e) if e.is_unique_violation() => Reason::ResourceExists,
            RegistryError::Store(e) if e.is_transient() => Reason::StorageUnavailable,
            RegistryError::Store(_) => Reason::InternalFault,
        }
    }

    fn message(&self) -> String {
        match self {
            RegistryError::Store(e) if e.is_unique_violation() => {
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
            RegistryError::Store(e) if !e.is_unique_violation() && e.is_transient() => {
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

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn every_error_names_its_code_and_a_specific_reason() {
        let cases = [
            (
                RegistryError::invalid("name", "required"),
                Code::InvalidArgument,
                "INVALID_FIELDS",
                "invalid request: name: required",
            ),
            (
                RegistryError::NotFound("regions/1".into()),
                Code::NotFound,
                "NOT_FOUND",
                "regions/1 not found",
            ),
            (
                RegistryError::AlreadyExists("departments/samr".into()),
                Code::AlreadyExists,
                "RESOURCE_EXISTS",
                "departments/samr already exists",
            ),
            (
                RegistryError::DomainSetClosed("industry".into()),
                Code::FailedPrecondition,
                "DOMAIN_SET_CLOSED",
                "domain set `industry` is closed: its domains are fixed by the catalog",
            ),
            (
                RegistryError::Store(StoreError::NotSeeded),
                Code::Internal,
                "INTERNAL_FAULT",
                "internal error",
            ),
        ];
        for (error, code, reason, message) in cases {
            let name = format!("{error:?}");
            assert_eq!(error.reason().as_str(), reason, "{name}");
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{name}");
            assert_eq!(status.message(), message, "{name}");
        }
    }
}
