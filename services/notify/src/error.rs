//! The notifier's errors, in the platform's one vocabulary (`citycredit::status`).

use tonic::Status;

use citycredit::status::{self, Reason, ServiceError, Violation};
use citycredit_core::auth::Denied;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Bad input: one violation per problem.
    #[error("invalid request ({} problems)", .0.len())]
    Invalid(Vec<Violation>),
    /// An unknown resource ("subscriptions/7").
    #[error("{0} not found")]
    NotFound(String),
    /// The principal may not do this.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// As many subscriptions exist as allowed.
    #[error("at most {0} subscriptions")]
    TooManySubscriptions(usize),
    /// The caller already holds as many WatchNotices streams as it may.
    #[error("at most {0} WatchNotices streams per principal")]
    TooManyWatchers(usize),
    /// The API key a stream began with was revoked or expired meanwhile.
    #[error("the API key of this call was revoked or has expired")]
    Revoked,
    /// A listener fell behind its bounded buffer.
    #[error(
        "the listener fell more than {0} notices behind: resume from the last notice id received"
    )]
    Lagged(usize),
    /// Storage is unreachable or busy; retrying helps.
    #[error("storage unavailable ({0}); retry")]
    Unavailable(&'static str),
    /// A bug or an unexpected storage error; logged once, never sent.
    #[error("{context}: {detail}")]
    Internal {
        context: &'static str,
        detail: String,
    },
}

impl NotifyError {
    /// A storage error: transient ones become UNAVAILABLE, others INTERNAL.
    pub fn storage(context: &'static str, e: &sqlx::Error) -> Self {
        if citycredit_store::is_transient(e) {
            tracing::warn!(error = %e, context, "transient storage error");
            NotifyError::Unavailable(context)
        } else {
            NotifyError::Internal {
                context,
                detail: e.to_string(),
            }
        }
    }

    /// INVALID_ARGUMENT for one field.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        NotifyError::Invalid(vec![Violation::new(field, description)])
    }
}

impl ServiceError for NotifyError {
    fn reason(&self) -> Reason {
        match self {
            NotifyError::Invalid(_) => Reason::InvalidFields,
            NotifyError::NotFound(_) => Reason::NotFound,
            NotifyError::Denied(d) => d.reason(),
            NotifyError::TooManySubscriptions(_) | NotifyError::TooManyWatchers(_) => {
                Reason::PrincipalBudget
            }
            NotifyError::Lagged(_) => Reason::WatchLagged,
            NotifyError::Revoked => Reason::CredentialRevoked,
            NotifyError::Unavailable(_) => Reason::StorageUnavailable,
            NotifyError::Internal { .. } => Reason::InternalFault,
        }
    }

    fn metadata(&self) -> Vec<(&'static str, String)> {
        match self {
            NotifyError::NotFound(resource) => vec![("resource", resource.clone())],
            NotifyError::Denied(d) => d.metadata(),
            NotifyError::TooManySubscriptions(limit) => {
                vec![
                    ("what", "subscriptions".into()),
                    ("limit", limit.to_string()),
                ]
            }
            NotifyError::TooManyWatchers(limit) => {
                vec![("what", "streams".into()), ("limit", limit.to_string())]
            }
            _ => Vec::new(),
        }
    }

    fn violations(&self) -> Option<(&[Violation], usize)> {
        match self {
            NotifyError::Invalid(v) => Some((v, v.len())),
            _ => None,
        }
    }

    fn retry_delay(&self) -> Option<std::time::Duration> {
        match self {
            NotifyError::Unavailable(_)
            | NotifyError::TooManyWatchers(_)
            | NotifyError::Lagged(_) => Some(std::time::Duration::from_secs(1)),
            _ => None,
        }
    }
}

impl From<NotifyError> for Status {
    fn from(e: NotifyError) -> Status {
        status::to_status(&e)
    }
}
