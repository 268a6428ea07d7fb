//! The review service's errors: each case names its code and specific reason
//! (`citycredit::status::ServiceError`); `citycredit::status::to_status` makes the status.

use std::time::Duration;

use tonic::Status;

use citycredit::status::{Reason, ServiceError, Violation};
use citycredit_core::auth::Denied;
use citycredit_core::review::SignOffState;
use citycredit_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("invalid request")]
    Invalid(Vec<Violation>),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The transition does not apply to the part's current state or revision.
    #[error("{message} (the part is {} at revision {revision})", state.as_str())]
    State {
        state: SignOffState,
        revision: i64,
        message: String,
    },
    /// Approving a region before the regions below it with submitted figures.
    #[error("approve the regions below first: {} submitted and not approved", regions.join(", "))]
    CountiesNotApproved { regions: Vec<String> },
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ReviewError {
    fn from(e: sqlx::Error) -> Self {
        ReviewError::Store(StoreError::Query(e))
    }
}

impl ReviewError {
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        ReviewError::Invalid(vec![Violation::new(field, description)])
    }
}

impl ServiceError for ReviewError {
    fn reason(&self) -> Reason {
        match self {
            ReviewError::Invalid(_) => Reason::InvalidFields,
            ReviewError::NotFound(_) => Reason::NotFound,
            ReviewError::AlreadyExists(_) => Reason::ResourceExists,
            ReviewError::State { .. } => Reason::ReviewState,
            ReviewError::CountiesNotApproved { .. } => Reason::CountiesNotApproved,
            ReviewError::Denied(d) => d.reason(),
            ReviewError::Store(e) if e.is_unique_violation() => Reason::ConcurrentChange,
            ReviewError::Store(e) if e.is_transient() => Reason::StorageUnavailable,
            ReviewError::Store(_) => Reason::InternalFault,
        }
    }

    fn message(&self) -> String {
        match self {
            ReviewError::Store(e) if e.is_unique_violation() => {
                "a concurrent change won; read the current state and retry".to_owned()
            }
            ReviewError::Store(e) if e.is_transient() => {
                "the review's database is unavailable; retry shortly".to_owned()
            }
            e => e.to_string(),
        }
    }

    fn metadata(&self) -> Vec<(&'static str, String)> {
        match self {
            ReviewError::NotFound(r) | ReviewError::AlreadyExists(r) => {
                vec![("resource", r.clone())]
            }
            ReviewError::State {
                state, revision, ..
            } => vec![
                ("state", state.as_str().to_owned()),
                ("revision", revision.to_string()),
            ],
            ReviewError::CountiesNotApproved { regions } => {
                vec![("regions", regions.join(","))]
            }
            ReviewError::Denied(d) => d.metadata(),
            _ => Vec::new(),
        }
    }

    fn violations(&self) -> Option<(&[Violation], usize)> {
        match self {
            ReviewError::Invalid(v) => Some((v, v.len())),
            _ => None,
        }
    }

    fn retry_delay(&self) -> Option<Duration> {
        match self {
            ReviewError::Store(e) if !e.is_unique_violation() && e.is_transient() => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }
}

impl From<ReviewError> for Status {
    fn from(e: ReviewError) -> Status {
        citycredit::status::to_status(&e)
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;

    fn info(s: &Status) -> (String, std::collections::HashMap<String, String>) {
        let d = s.get_error_details();
        d.error_info()
            .map(|i| (i.reason.clone(), i.metadata.clone()))
            .unwrap_or_default()
    }

    #[test]
    fn every_error_names_its_code_a_specific_reason_and_its_metadata() {
        let s = Status::from(ReviewError::State {
            state: SignOffState::Approved,
            revision: 4,
            message: "APPROVE does not apply to a part that is APPROVED".into(),
        });
        assert_eq!(s.code(), Code::FailedPrecondition);
        let (reason, meta) = info(&s);
        assert_eq!(reason, "REVIEW_STATE");
        assert_eq!(meta.get("state").map(String::as_str), Some("APPROVED"));
        assert_eq!(meta.get("revision").map(String::as_str), Some("4"));
        assert!(s.message().contains("at revision 4"), "{}", s.message());

        let s = Status::from(ReviewError::CountiesNotApproved {
            regions: vec!["330803".into(), "330825".into()],
        });
        assert_eq!(s.code(), Code::FailedPrecondition);
        let (reason, meta) = info(&s);
        assert_eq!(reason, "COUNTIES_NOT_APPROVED");
        assert_eq!(
            meta.get("regions").map(String::as_str),
            Some("330803,330825")
        );

        let s = Status::from(ReviewError::NotFound("cycles/x".into()));
        assert_eq!(
            (s.code(), info(&s).0.as_str()),
            (Code::NotFound, "NOT_FOUND")
        );
        let s = Status::from(ReviewError::invalid("comment", "required"));
        assert_eq!(
            (s.code(), info(&s).0.as_str()),
            (Code::InvalidArgument, "INVALID_FIELDS")
        );
    }
}
