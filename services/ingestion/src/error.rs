//! The ingestion service's one error type and its one conversion to `tonic::Status` (through
//! `citycredit::status`, so every error carries `ErrorInfo`).

use std::time::Duration;

use tonic::{Code, Status};

use citycredit::status::{self, Reason, Violation};
use citycredit_core::auth::Denied;

/// Everything that can go wrong in ingestion. Clone, because one failed group commit answers
/// every caller in the group with the same error.
#[derive(Clone, Debug, thiserror::Error)]
pub enum IngestError {
    /// Bad input: one violation per problem.
    #[error("invalid request ({} problems)", .0.len())]
    Invalid(Vec<Violation>),
    /// Bad input with more problems than one status lists: the first ones, and how many in
    /// all (a `validate_only` batch checks every message).
    #[error("invalid request ({total} problems)")]
    InvalidMany { first: Vec<Violation>, total: usize },
    /// The principal may not do this.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// An idempotency key reused with another payload.
    #[error("idempotency key `{0}` was already used with a different request")]
    KeyConflict(String),
    /// An unknown resource ("submissions/42").
    #[error("{0} not found")]
    NotFound(String),
    /// Valid, but the stored state forbids it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The submission is retracted already (by `by`, when known).
    #[error("submissions/{id} is already retracted")]
    AlreadyRetracted { id: i64, by: Option<i64> },
    /// The submission is itself a retraction.
    #[error("submissions/{0} is a retraction and cannot be retracted")]
    NotRetractable(i64),
    /// Too many values, bytes or codes in one call.
    #[error("{what}: at most {limit} per call")]
    TooLarge {
        what: &'static str,
        limit: usize,
        reason: Reason,
    },
    /// Too many calls of a kind run at once (in all or for this principal); waiting helps.
    #[error("{what}: at most {limit} at once; retry later")]
    Busy {
        what: &'static str,
        limit: usize,
        retry: Duration,
    },
    /// The API key the call began with was revoked or expired meanwhile.
    #[error("the API key of this call was revoked or has expired")]
    Revoked,
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
        if citycredit_store::is_transient(e) {
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
            IngestError::InvalidMany { first, total } => status::invalid_argument_of(&first, total),
            IngestError::Denied(d) => citycredit::auth::denied(d),
            IngestError::KeyConflict(key) => status::with_info(
                Code::AlreadyExists,
                format!("idempotency key `{key}` was already used with a different request"),
                &[("idempotency_key", &key)],
            ),
            IngestError::NotFound(resource) => status::not_found(&resource),
            IngestError::FailedPrecondition(m) => {
                status::with_info(Code::FailedPrecondition, m, &[])
            }
            IngestError::AlreadyRetracted { id, by } => {
                let resource = format!("submissions/{id}");
                match by {
                    Some(by) => {
                        let by = format!("submissions/{by}");
                        status::with_reason(
                            Code::FailedPrecondition,
                            Reason::AlreadyRetracted,
                            format!("{resource} is already retracted by {by}"),
                            &[("resource", &resource), ("retracted_by", &by)],
                        )
                    }
                    None => status::with_reason(
                        Code::FailedPrecondition,
                        Reason::AlreadyRetracted,
                        format!("{resource} is already retracted"),
                        &[("resource", &resource)],
                    ),
                }
            }
            IngestError::NotRetractable(id) => {
                let resource = format!("submissions/{id}");
                status::with_reason(
                    Code::FailedPrecondition,
                    Reason::NotRetractable,
                    format!("{resource} is a retraction and cannot be retracted"),
                    &[("resource", &resource)],
                )
            }
            IngestError::TooLarge {
                what,
                limit,
                reason,
            } => status::with_reason(
                Code::ResourceExhausted,
                reason,
                format!("{what}: at most {limit} per call"),
                &[("what", what), ("limit", &limit.to_string())],
            ),
            IngestError::Busy { what, limit, retry } => status::retry_after_reason(
                Code::ResourceExhausted,
                Reason::AuditCapacity,
                format!("{what}: at most {limit} at once; retry later"),
                retry,
                &[("what", what), ("limit", &limit.to_string())],
            ),
            IngestError::Revoked => status::with_reason(
                Code::Unauthenticated,
                Reason::CredentialRevoked,
                "the API key of this call was revoked or has expired",
                &[],
            ),
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
