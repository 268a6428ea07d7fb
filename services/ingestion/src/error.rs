//! The ingestion service's one error type: each case names its code and specific reason
//! (`citycredit::status::ServiceError`), and `citycredit::status::to_status` turns it into a
//! `tonic::Status` with `ErrorInfo`.

use std::time::Duration;

use tonic::Status;

use citycredit::status::{self, Reason, ServiceError, Violation};
use citycredit_core::auth::Denied;
use citycredit_core::review::Refusal;

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
    /// A WatchChanges watcher fell this many changes behind the feed: it re-reads and watches
    /// again.
    #[error("the watcher fell {0} changes behind: re-read and watch again")]
    Lagged(u64),
    /// The review cycle's write gate refused a value (`crate::gate`).
    #[error("{}", .0.sentence())]
    Locked(Box<LockRefusal>),
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

/// A value the write gate refused: for which department, region and period, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockRefusal {
    pub department: String,
    pub region: String,
    pub period: String,
    pub refusal: Refusal,
}

impl LockRefusal {
    /// What happened and what to do, in English (the localized sentence comes from the reason).
    fn sentence(&self) -> String {
        let (d, r, p) = (&self.department, &self.region, &self.period);
        match &self.refusal {
            Refusal::Approved { locked } => format!(
                "the figures of department {d} for region {r}, period {locked} are approved: a value for {p} cannot change; ask the credit office to unapprove them, or an administrator for a lock exception"
            ),
            Refusal::AwaitingApproval { locked } => format!(
                "the figures of department {d} for region {r}, period {locked} are submitted and await approval: a value for {p} cannot change; ask the credit office to return them"
            ),
            Refusal::Closed {
                locked, cycle_id, ..
            } => format!(
                "writes of department {d} for period {locked} closed after its deadline and grace days (cycle {cycle_id}): a value for {p} is too late; ask an administrator for a lock exception"
            ),
        }
    }

    fn reason(&self) -> Reason {
        match self.refusal {
            Refusal::Approved { .. } => Reason::PeriodApproved,
            Refusal::AwaitingApproval { .. } => Reason::AwaitingApproval,
            Refusal::Closed { .. } => Reason::PeriodClosed,
        }
    }

    fn metadata(&self) -> Vec<(&'static str, String)> {
        let locked = match &self.refusal {
            Refusal::Approved { locked }
            | Refusal::AwaitingApproval { locked }
            | Refusal::Closed { locked, .. } => locked.to_string(),
        };
        let mut m = vec![
            ("department", self.department.clone()),
            ("region", self.region.clone()),
            ("period", self.period.clone()),
            ("locked_period", locked),
        ];
        if let Refusal::Closed {
            cycle_id,
            closes_micros,
            ..
        } = &self.refusal
        {
            m.push(("cycle", cycle_id.clone()));
            m.push(("closed_at", closes_micros.to_string()));
        }
        m
    }
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

impl ServiceError for IngestError {
    fn reason(&self) -> Reason {
        match self {
            IngestError::Invalid(_) | IngestError::InvalidMany { .. } => Reason::InvalidFields,
            IngestError::Denied(d) => d.reason(),
            IngestError::KeyConflict(_) => Reason::IdempotencyKeyReused,
            IngestError::NotFound(_) => Reason::NotFound,
            IngestError::AlreadyRetracted { .. } => Reason::AlreadyRetracted,
            IngestError::NotRetractable(_) => Reason::NotRetractable,
            IngestError::TooLarge { reason, .. } => *reason,
            IngestError::Busy { .. } => Reason::AuditCapacity,
            IngestError::Lagged(_) => Reason::WatchLagged,
            IngestError::Locked(l) => l.reason(),
            IngestError::Revoked => Reason::CredentialRevoked,
            IngestError::ClientStream(_) => Reason::RequestStreamBroken,
            IngestError::Unavailable(_) => Reason::StorageUnavailable,
            IngestError::WriterGone => Reason::WriterStopped,
            IngestError::Internal { .. } => Reason::InternalFault,
        }
    }

    fn message(&self) -> String {
        match self {
            IngestError::AlreadyRetracted { id, by: Some(by) } => {
                format!("submissions/{id} is already retracted by submissions/{by}")
            }
            IngestError::Unavailable(context) => format!("storage unavailable ({context}); retry"),
            IngestError::WriterGone => "the submission writer is not running; retry".to_owned(),
            e => e.to_string(),
        }
    }

    fn metadata(&self) -> Vec<(&'static str, String)> {
        match self {
            IngestError::Denied(d) => d.metadata(),
            IngestError::KeyConflict(key) => vec![("idempotency_key", key.clone())],
            IngestError::NotFound(resource) => vec![("resource", resource.clone())],
            IngestError::AlreadyRetracted { id, by } => {
                let mut m = vec![("resource", format!("submissions/{id}"))];
                if let Some(by) = by {
                    m.push(("retracted_by", format!("submissions/{by}")));
                }
                m
            }
            IngestError::NotRetractable(id) => vec![("resource", format!("submissions/{id}"))],
            IngestError::Locked(l) => l.metadata(),
            IngestError::TooLarge { what, limit, .. } | IngestError::Busy { what, limit, .. } => {
                vec![("what", (*what).to_owned()), ("limit", limit.to_string())]
            }
            _ => Vec::new(),
        }
    }

    fn violations(&self) -> Option<(&[Violation], usize)> {
        match self {
            IngestError::Invalid(v) => Some((v, v.len())),
            IngestError::InvalidMany { first, total } => Some((first, *total)),
            _ => None,
        }
    }

    fn retry_delay(&self) -> Option<Duration> {
        match self {
            IngestError::Busy { retry, .. } => Some(*retry),
            IngestError::Lagged(_) => Some(Duration::from_millis(100)),
            IngestError::Unavailable(_) => Some(Duration::from_millis(500)),
            IngestError::WriterGone => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

impl From<IngestError> for Status {
    fn from(e: IngestError) -> Status {
        status::to_status(&e)
    }
}

/// Result alias for ingestion code.
pub type Result<T, E = IngestError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    /// Every case: its code, its reason and its message, as callers see them.
    #[test]
    fn every_error_names_its_code_and_a_specific_reason() {
        let cases = [
            (
                IngestError::Invalid(vec![Violation::new("value", "required")]),
                Code::InvalidArgument,
                "INVALID_FIELDS",
                "invalid request: value: required",
            ),
            (
                IngestError::KeyConflict("k1".into()),
                Code::AlreadyExists,
                "IDEMPOTENCY_KEY_REUSED",
                "idempotency key `k1` was already used with a different request",
            ),
            (
                IngestError::NotFound("submissions/9".into()),
                Code::NotFound,
                "NOT_FOUND",
                "submissions/9 not found",
            ),
            (
                IngestError::AlreadyRetracted { id: 2, by: Some(5) },
                Code::FailedPrecondition,
                "ALREADY_RETRACTED",
                "submissions/2 is already retracted by submissions/5",
            ),
            (
                IngestError::NotRetractable(5),
                Code::FailedPrecondition,
                "NOT_RETRACTABLE",
                "submissions/5 is a retraction and cannot be retracted",
            ),
            (
                IngestError::Lagged(7),
                Code::ResourceExhausted,
                "WATCH_LAGGED",
                "the watcher fell 7 changes behind: re-read and watch again",
            ),
            (
                IngestError::Locked(Box::new(LockRefusal {
                    department: "samr".into(),
                    region: "330802".into(),
                    period: "2026-03".into(),
                    refusal: Refusal::AwaitingApproval {
                        locked: citycredit_core::period::Period::Quarter(2026, 1),
                    },
                })),
                Code::FailedPrecondition,
                "AWAITING_APPROVAL",
                "the figures of department samr for region 330802, period 2026-Q1 are submitted and await approval: a value for 2026-03 cannot change; ask the credit office to return them",
            ),
            (
                IngestError::Revoked,
                Code::Unauthenticated,
                "CREDENTIAL_REVOKED",
                "the API key of this call was revoked or has expired",
            ),
            (
                IngestError::ClientStream("reset".into()),
                Code::Cancelled,
                "REQUEST_STREAM_BROKEN",
                "the request stream ended abnormally: reset",
            ),
            (
                IngestError::Unavailable("read submission".into()),
                Code::Unavailable,
                "STORAGE_UNAVAILABLE",
                "storage unavailable (read submission); retry",
            ),
            (
                IngestError::WriterGone,
                Code::Unavailable,
                "WRITER_STOPPED",
                "the submission writer is not running; retry",
            ),
            (
                IngestError::internal("group commit", "disk I/O error"),
                Code::Internal,
                "INTERNAL_FAULT",
                "internal error",
            ),
        ];
        for (error, code, reason, message) in cases {
            let name = format!("{error:?}");
            let retry = matches!(
                error,
                IngestError::Lagged(_) | IngestError::Unavailable(_) | IngestError::WriterGone
            );
            assert_eq!(error.reason().as_str(), reason, "{name}");
            assert_eq!(error.retry_delay().is_some(), retry, "{name}");
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{name}");
            assert_eq!(status.message(), message, "{name}");
        }
    }
}
