//! The ingestion service's one error type and its one conversion to `tonic::Status` (through
//! `citycredit::status`, so every error carries `ErrorInfo`).

use std::time::Duration;

use tonic::{Code, Status};

use citycredit::auth::Denied;
use citycredit::status::{self, Violation};

/// Everything that can go wrong in ingestion. Clone, because one failed group commit answers
/// every caller in the group with the same error.
#[derive(Clone, Debug, thiserror::Error)]
pub enum IngestError {
    /// Bad input: one violation per problem.
    #[error("invalid request ({} problems)", .0.len())]
    Invalid(Vec<Violation>),
    /// The principal may not do this.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// An idempotency key reused with another payload.
    #[error("idempotency key `{0}` was already used with a different request")]
    KeyConflict(String),
    /// An unknown resource ("submissions/42").
    #[error("{0} not found")]
    NotFound(String),
    /// Valid, but the stored state forbids it (retracting a retraction).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Too many values or codes in one call.
    #[error("{what}: at most {limit} per call")]
    TooLarge { what: &'static str, limit: usize },
    /// The client's stream broke off; nothing was stored.
    #[error("the request stream ended abnormally: {0}")]
    ClientStream(String),
    /// Storage is unreachable or busy; retrying helps.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The writer task is gone (shutting down).
    #[error("the submission writer is not running")]
    WriterGone,
    /// A bug or an unexpected storage error; the detail is logged, never sent.
    #[error("{context}: {detail}")]
    Internal {
        context: &'static str,
        detail: String,
    },
}

impl IngestError {
    pub fn internal(context: &'static str, detail: impl std::fmt::Display) -> Self {
        IngestError::Internal {
            context,
            detail: detail.to_string(),
        }
    }

    /// A storage error: transient ones become UNAVAILABLE (retry), others INTERNAL.
    pub fn storage(context: &'static str, e: &sqlx::Error) -> Self {
        if citycredit::store::is_transient(e) {
            tracing::warn!(error = %e, context, "transient storage error");
            IngestError::Unavailable(context.to_owned())
        } else {
            IngestError::internal(context, e)
        }
    }
}

impl From<IngestError> for Status {
    fn from(e: IngestError) -> Status {
        match e {
            IngestError::Invalid(v) => status::invalid_argument(&v),
            IngestError::Denied(d) => d.into(),
            IngestError::KeyConflict(key) => status::with_info(
                Code::AlreadyExists,
                format!("idempotency key `{key}` was already used with a different request"),
                &[("idempotency_key", &key)],
            ),
            IngestError::NotFound(resource) => status::not_found(&resource),
            IngestError::FailedPrecondition(m) => {
                status::with_info(Code::FailedPrecondition, m, &[])
            }
            e @ IngestError::TooLarge { .. } => {
                status::with_info(Code::ResourceExhausted, e.to_string(), &[])
            }
            e @ IngestError::ClientStream(_) => {
                status::with_info(Code::Cancelled, e.to_string(), &[])
            }
            IngestError::Unavailable(context) => status::retry_after(
                Code::Unavailable,
                format!("storage unavailable ({context}); retry"),
                Duration::from_millis(500),
            ),
            IngestError::WriterGone => status::retry_after(
                Code::Unavailable,
                "the submission writer is not running; retry",
                Duration::from_secs(1),
            ),
            IngestError::Internal { context, detail } => status::internal(context, &detail),
        }
    }
}

/// Result alias for ingestion code.
pub type Result<T, E = IngestError> = std::result::Result<T, E>;
