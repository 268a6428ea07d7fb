//! The scoring service's own errors (IndicatorService and ScoringService): each case names its
//! code and specific reason (`citycredit::status::ServiceError`), and
//! `citycredit::status::to_status` turns it into a `tonic::Status`. Failures of the aggregate
//! source reach the caller as the source answered them (ingestion's errors, with their reasons).

use tonic::Status;

use citycredit::status::{self, Reason, ServiceError, Violation};
use citycredit_core::auth::Denied;

#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    /// Bad input: one violation per problem.
    #[error("invalid request ({} problems)", .0.len())]
    Invalid(Vec<Violation>),
    /// A BatchGetScorecards asking for more regions than one call scores.
    #[error("at most {0} regions per call")]
    TooManyRegions(usize),
    /// An unknown resource ("indicators/B99").
    #[error("{0} not found")]
    NotFound(String),
    /// A rule version that is not loaded.
    #[error("rule version `{asked}` is not loaded (loaded: {})", .loaded.join(", "))]
    UnknownRuleVersion { asked: String, loaded: Vec<String> },
    /// The API key a watch began with was revoked or expired meanwhile.
    #[error("the API key of this call was revoked or has expired")]
    Revoked,
    /// The principal may not do this.
    #[error(transparent)]
    Denied(#[from] Denied),
}

impl ScoringError {
    /// INVALID_ARGUMENT for one field.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        ScoringError::Invalid(vec![Violation::new(field, description)])
    }
}

impl ServiceError for ScoringError {
    fn reason(&self) -> Reason {
        match self {
            ScoringError::Invalid(_) => Reason::InvalidFields,
            ScoringError::TooManyRegions(_) => Reason::TooManyRegions,
            ScoringError::NotFound(_) => Reason::NotFound,
            ScoringError::UnknownRuleVersion { .. } => Reason::UnknownRuleVersion,
            ScoringError::Revoked => Reason::CredentialRevoked,
            ScoringError::Denied(d) => d.reason(),
        }
    }

    fn metadata(&self) -> Vec<(&'static str, String)> {
        match self {
            ScoringError::TooManyRegions(limit) => vec![("limit", limit.to_string())],
            ScoringError::NotFound(resource) => vec![("resource", resource.clone())],
            ScoringError::UnknownRuleVersion { asked, loaded } => vec![
                ("rule_version", asked.clone()),
                ("loaded_versions", loaded.join(",")),
            ],
            ScoringError::Denied(d) => d.metadata(),
            _ => Vec::new(),
        }
    }

    fn violations(&self) -> Option<(&[Violation], usize)> {
        match self {
            ScoringError::Invalid(v) => Some((v, v.len())),
            _ => None,
        }
    }
}

impl From<ScoringError> for Status {
    fn from(e: ScoringError) -> Status {
        status::to_status(&e)
    }
}
