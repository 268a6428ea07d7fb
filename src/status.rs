//! How citycredit errors reach callers: gRPC status codes with `google.rpc` details. Every status
//! carries `ErrorInfo` (domain `citycredit`, a stable [`Reason`]); bad input carries one
//! `BadRequest` field violation per problem; retryable failures carry `RetryInfo`.
//!
//! One vocabulary: each service's error enum implements [`ServiceError`] (a code and a specific
//! reason per case, its metadata, violations and retry delay), and [`to_status`] is the one
//! conversion to `tonic::Status`. The gateway's own refusals name their specific reason too
//! ([`with_reason`], [`retry_after_reason`]); [`Reason::of_code`] gives each code a general
//! reason for the rest; no reason stands for a code other than its own.
//!
//! Every reason, its code and when it is sent (this table is checked against [`Reason::ALL`] by
//! a test; clients may match on the reasons):
//!
// reason-table-start
//! | reason                   | code                | when |
//! |--------------------------|---------------------|------|
//! | `INVALID_FIELDS`         | INVALID_ARGUMENT    | request fields are wrong: `BadRequest` names each (metadata `violations`, `violations_listed`) |
//! | `TOO_MANY_REGIONS`       | INVALID_ARGUMENT    | a BatchGetScorecards asks for more regions than one call scores (metadata `limit`) |
//! | `NOT_FOUND`              | NOT_FOUND           | an unknown resource (metadata `resource`) |
//! | `UNKNOWN_RULE_VERSION`   | NOT_FOUND           | a rule version (catalog version) that is not loaded (metadata `rule_version`, `loaded_versions`) |
//! | `RESOURCE_EXISTS`        | ALREADY_EXISTS      | the resource to create exists already (metadata `resource` when known) |
//! | `IDEMPOTENCY_KEY_REUSED` | ALREADY_EXISTS      | an idempotency key already used with a different request (metadata `idempotency_key`) |
//! | `ALREADY_RETRACTED`      | FAILED_PRECONDITION | the submission was retracted already (metadata `resource`, `retracted_by` when known) |
//! | `NOT_RETRACTABLE`        | FAILED_PRECONDITION | the submission is itself a retraction (metadata `resource`) |
//! | `DOMAIN_SET_CLOSED`      | FAILED_PRECONDITION | RegisterDomain in a domain set whose domains the catalog fixes (metadata `domain_set`) |
//! | `PERIOD_APPROVED`        | FAILED_PRECONDITION | a write to a (department, region, period) whose figures, or those of a period it reaches, are approved (metadata `department`, `region`, `period`, `locked_period`) |
//! | `AWAITING_APPROVAL`      | FAILED_PRECONDITION | a write to a (department, region, period) whose figures, or those of a period it reaches, are submitted for approval (metadata `department`, `region`, `period`, `locked_period`) |
//! | `PERIOD_CLOSED`          | FAILED_PRECONDITION | a write after the deadline that applies plus the cycle's grace days (metadata `department`, `region`, `period`, `locked_period`, `cycle`, `closed_at`) |
//! | `COUNTIES_NOT_APPROVED`  | FAILED_PRECONDITION | approving a region while regions below it have submitted figures not yet approved (metadata `regions`) |
//! | `REVIEW_STATE`           | FAILED_PRECONDITION | a sign-off transition that does not apply to the part's current state or revision (metadata `state`, `revision`) |
//! | `STATE_CONFLICT`         | FAILED_PRECONDITION | the general reason of the code: the request is valid but the stored state forbids it (not sent today) |
//! | `CREDENTIAL_REFUSED`     | UNAUTHENTICATED     | no credential, or one that is malformed, unknown, expired or not for this service |
//! | `CREDENTIAL_REVOKED`     | UNAUTHENTICATED     | the API key a long call began with was revoked or expired meanwhile |
//! | `ACTION_NOT_ALLOWED`     | PERMISSION_DENIED   | the principal may not do this (metadata `principal`, `action`, `metric`, `region`) |
//! | `BATCH_TOO_LARGE`        | RESOURCE_EXHAUSTED  | a SubmitBatch stream carries more values or bytes than allowed (metadata `limit`, `what`) |
//! | `AUDIT_TOO_LARGE`        | RESOURCE_EXHAUSTED  | a code audit holds more distinct codes than allowed (metadata `limit`, `what`) |
//! | `AUDIT_CAPACITY`         | RESOURCE_EXHAUSTED  | too many code audits run at once, in all or for the caller; RetryInfo |
//! | `REQUEST_BYTES`          | RESOURCE_EXHAUSTED  | the request bodies the gateway holds would exceed the caller's budget or the gateway's (metadata `scope`: `principal` or `all`, `limit`); RetryInfo |
//! | `WATCH_LAGGED`           | RESOURCE_EXHAUSTED  | a WatchChanges watcher fell behind the change feed, or a WatchNotices listener stopped reading: re-read (resume), then watch again; RetryInfo |
//! | `OVERLOADED`             | RESOURCE_EXHAUSTED  | the platform is at capacity (the gateway's adaptive limit), for every caller; RetryInfo |
//! | `RATE_LIMITED`           | RESOURCE_EXHAUSTED  | the caller's rate limit (calls per second) refused the call; RetryInfo |
//! | `AUTH_FAILURES_LIMITED`  | RESOURCE_EXHAUSTED  | too many failed authentications from the caller's address: refused without a key look-up; RetryInfo |
//! | `PRINCIPAL_BUDGET`       | RESOURCE_EXHAUSTED  | the caller already has as many calls or streams open as it may, or as many webhook subscriptions exist as allowed (metadata `what`, `limit`); RetryInfo |
//! | `PRINCIPAL_SHARE`        | RESOURCE_EXHAUSTED  | the caller already has half of what the platform serves at once (metadata `limit`); RetryInfo |
//! | `MESSAGE_TOO_LARGE`      | OUT_OF_RANGE        | a request message larger than the gateway takes |
//! | `REQUEST_STREAM_BROKEN`  | CANCELLED           | the caller's request stream broke off before its end; nothing was stored |
//! | `TIMED_OUT`              | DEADLINE_EXCEEDED   | the call's deadline passed (the caller's, capped per kind of call) |
//! | `REQUEST_READ_TIMEOUT`   | DEADLINE_EXCEEDED   | the caller sent nothing of its request for too long (`request_read_timeout_ms`), or not all of it within its deadline |
//! | `CONCURRENT_CHANGE`      | ABORTED             | the general reason of the code: a concurrent change won, retry the whole operation (not sent today) |
//! | `UNKNOWN_METHOD`         | UNIMPLEMENTED       | a method the gateway does not know or does not serve |
//! | `SERVICE_UNAVAILABLE`    | UNAVAILABLE         | a service, or the store the gateway asks, is unreachable; RetryInfo |
//! | `STORAGE_UNAVAILABLE`    | UNAVAILABLE         | a service's database is unreachable or busy; RetryInfo |
//! | `WRITER_STOPPED`         | UNAVAILABLE         | the submission writer is not running (the service is stopping); RetryInfo |
//! | `INTERNAL_FAULT`         | INTERNAL            | a bug or an unexpected storage error; logged once, never detailed |
//! | `UNKNOWN_FAILURE`        | UNKNOWN             | the general reason of the code: a failure of unknown kind (not sent today) |
//! | `DATA_CORRUPTED`         | DATA_LOSS           | the general reason of the code: stored data is lost or corrupt (not sent today) |
// reason-table-end
//!
//! A status travels in HTTP/2 trailers, and common clients refuse trailers above 8 KiB
//! (grpcio's default metadata limit; beyond it a call fails with "Stream removed"). So a message
//! is cut to [`MAX_MESSAGE_CHARS`] characters and [`MAX_MESSAGE_WIRE_BYTES`] bytes as sent
//! (percent-encoded), and INVALID_ARGUMENT lists at most [`MAX_VIOLATIONS`] violations and at
//! most [`MAX_VIOLATION_BYTES`] bytes of them; its `ErrorInfo` metadata carries the total
//! (`violations`) and how many are listed (`violations_listed`).

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use citycredit_core::auth::Denied;

/// The `ErrorInfo` domain of every citycredit error.
pub const DOMAIN: &str = "citycredit";

/// A specific, stable `ErrorInfo` reason (see the table above). Each belongs to one code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    InvalidFields,
    TooManyRegions,
    NotFound,
    UnknownRuleVersion,
    ResourceExists,
    IdempotencyKeyReused,
    AlreadyRetracted,
    NotRetractable,
    DomainSetClosed,
    PeriodApproved,
    AwaitingApproval,
    PeriodClosed,
    CountiesNotApproved,
    ReviewState,
    StateConflict,
    CredentialRefused,
    CredentialRevoked,
    ActionNotAllowed,
    BatchTooLarge,
    AuditTooLarge,
    AuditCapacity,
    RequestBytes,
    WatchLagged,
    Overloaded,
    RateLimited,
    AuthFailuresLimited,
    PrincipalBudget,
    PrincipalShare,
    MessageTooLarge,
    RequestStreamBroken,
    TimedOut,
    RequestReadTimeout,
    ConcurrentChange,
    UnknownMethod,
    ServiceUnavailable,
    StorageUnavailable,
    WriterStopped,
    InternalFault,
    UnknownFailure,
    DataCorrupted,
}

impl Reason {
    /// Every reason, in the order of the table above.
    pub const ALL: [Reason; 40] = [
        Reason::InvalidFields,
        Reason::TooManyRegions,
        Reason::NotFound,
        Reason::UnknownRuleVersion,
        Reason::ResourceExists,
        Reason::IdempotencyKeyReused,
        Reason::AlreadyRetracted,
        Reason::NotRetractable,
        Reason::DomainSetClosed,
        Reason::PeriodApproved,
        Reason::AwaitingApproval,
        Reason::PeriodClosed,
        Reason::CountiesNotApproved,
        Reason::ReviewState,
        Reason::StateConflict,
        Reason::CredentialRefused,
        Reason::CredentialRevoked,
        Reason::ActionNotAllowed,
        Reason::BatchTooLarge,
        Reason::AuditTooLarge,
        Reason::AuditCapacity,
        Reason::RequestBytes,
        Reason::WatchLagged,
        Reason::Overloaded,
        Reason::RateLimited,
        Reason::AuthFailuresLimited,
        Reason::PrincipalBudget,
        Reason::PrincipalShare,
        Reason::MessageTooLarge,
        Reason::RequestStreamBroken,
        Reason::TimedOut,
        Reason::RequestReadTimeout,
        Reason::ConcurrentChange,
        Reason::UnknownMethod,
        Reason::ServiceUnavailable,
        Reason::StorageUnavailable,
        Reason::WriterStopped,
        Reason::InternalFault,
        Reason::UnknownFailure,
        Reason::DataCorrupted,
    ];

    /// The reason as sent in `ErrorInfo.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidFields => "INVALID_FIELDS",
            Reason::TooManyRegions => "TOO_MANY_REGIONS",
            // Kept as it was first published: clients and tests match on it.
            Reason::NotFound => "NOT_FOUND",
            Reason::UnknownRuleVersion => "UNKNOWN_RULE_VERSION",
            Reason::ResourceExists => "RESOURCE_EXISTS",
            Reason::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Reason::AlreadyRetracted => "ALREADY_RETRACTED",
            Reason::NotRetractable => "NOT_RETRACTABLE",
            Reason::DomainSetClosed => "DOMAIN_SET_CLOSED",
            Reason::PeriodApproved => "PERIOD_APPROVED",
            Reason::AwaitingApproval => "AWAITING_APPROVAL",
            Reason::PeriodClosed => "PERIOD_CLOSED",
            Reason::CountiesNotApproved => "COUNTIES_NOT_APPROVED",
            Reason::ReviewState => "REVIEW_STATE",
            Reason::StateConflict => "STATE_CONFLICT",
            Reason::CredentialRefused => "CREDENTIAL_REFUSED",
            Reason::CredentialRevoked => "CREDENTIAL_REVOKED",
            Reason::ActionNotAllowed => "ACTION_NOT_ALLOWED",
            Reason::BatchTooLarge => "BATCH_TOO_LARGE",
            Reason::AuditTooLarge => "AUDIT_TOO_LARGE",
            Reason::AuditCapacity => "AUDIT_CAPACITY",
            Reason::RequestBytes => "REQUEST_BYTES",
            Reason::WatchLagged => "WATCH_LAGGED",
            Reason::Overloaded => "OVERLOADED",
            Reason::RateLimited => "RATE_LIMITED",
            Reason::AuthFailuresLimited => "AUTH_FAILURES_LIMITED",
            Reason::PrincipalBudget => "PRINCIPAL_BUDGET",
            Reason::PrincipalShare => "PRINCIPAL_SHARE",
            Reason::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Reason::RequestStreamBroken => "REQUEST_STREAM_BROKEN",
            Reason::TimedOut => "TIMED_OUT",
            Reason::RequestReadTimeout => "REQUEST_READ_TIMEOUT",
            Reason::ConcurrentChange => "CONCURRENT_CHANGE",
            Reason::UnknownMethod => "UNKNOWN_METHOD",
            Reason::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            Reason::StorageUnavailable => "STORAGE_UNAVAILABLE",
            Reason::WriterStopped => "WRITER_STOPPED",
            Reason::InternalFault => "INTERNAL_FAULT",
            Reason::UnknownFailure => "UNKNOWN_FAILURE",
            Reason::DataCorrupted => "DATA_CORRUPTED",
        }
    }

    /// The one gRPC code a status with this reason carries.
    pub fn code(self) -> Code {
        match self {
            Reason::InvalidFields | Reason::TooManyRegions => Code::InvalidArgument,
            Reason::NotFound | Reason::UnknownRuleVersion => Code::NotFound,
            Reason::ResourceExists | Reason::IdempotencyKeyReused => Code::AlreadyExists,
            Reason::AlreadyRetracted
            | Reason::NotRetractable
            | Reason::DomainSetClosed
            | Reason::PeriodApproved
            | Reason::AwaitingApproval
            | Reason::PeriodClosed
            | Reason::CountiesNotApproved
            | Reason::ReviewState
            | Reason::StateConflict => Code::FailedPrecondition,
            Reason::CredentialRefused | Reason::CredentialRevoked => Code::Unauthenticated,
            Reason::ActionNotAllowed => Code::PermissionDenied,
            Reason::BatchTooLarge
            | Reason::AuditTooLarge
            | Reason::AuditCapacity
            | Reason::RequestBytes
            | Reason::WatchLagged
            | Reason::Overloaded
            | Reason::RateLimited
            | Reason::AuthFailuresLimited
            | Reason::PrincipalBudget
            | Reason::PrincipalShare => Code::ResourceExhausted,
            Reason::MessageTooLarge => Code::OutOfRange,
            Reason::RequestStreamBroken => Code::Cancelled,
            Reason::TimedOut | Reason::RequestReadTimeout => Code::DeadlineExceeded,
            Reason::ConcurrentChange => Code::Aborted,
            Reason::UnknownMethod => Code::Unimplemented,
            Reason::ServiceUnavailable | Reason::StorageUnavailable | Reason::WriterStopped => {
                Code::Unavailable
            }
            Reason::InternalFault => Code::Internal,
            Reason::UnknownFailure => Code::Unknown,
            Reason::DataCorrupted => Code::DataLoss,
        }
    }

    /// When a status carries this reason: the "when" column of the table above.
    pub fn when(self) -> &'static str {
        match self {
            Reason::InvalidFields => {
                "request fields are wrong: `BadRequest` names each (metadata `violations`, `violations_listed`)"
            }
            Reason::TooManyRegions => {
                "a BatchGetScorecards asks for more regions than one call scores (metadata `limit`)"
            }
            Reason::NotFound => "an unknown resource (metadata `resource`)",
            Reason::UnknownRuleVersion => {
                "a rule version (catalog version) that is not loaded (metadata `rule_version`, `loaded_versions`)"
            }
            Reason::ResourceExists => {
                "the resource to create exists already (metadata `resource` when known)"
            }
            Reason::IdempotencyKeyReused => {
                "an idempotency key already used with a different request (metadata `idempotency_key`)"
            }
            Reason::AlreadyRetracted => {
                "the submission was retracted already (metadata `resource`, `retracted_by` when known)"
            }
            Reason::NotRetractable => "the submission is itself a retraction (metadata `resource`)",
            Reason::DomainSetClosed => {
                "RegisterDomain in a domain set whose domains the catalog fixes (metadata `domain_set`)"
            }
            Reason::PeriodApproved => {
                "a write to a (department, region, period) whose figures, or those of a period it reaches, are approved (metadata `department`, `region`, `period`, `locked_period`)"
            }
            Reason::AwaitingApproval => {
                "a write to a (department, region, period) whose figures, or those of a period it reaches, are submitted for approval (metadata `department`, `region`, `period`, `locked_period`)"
            }
            Reason::PeriodClosed => {
                "a write after the deadline that applies plus the cycle's grace days (metadata `department`, `region`, `period`, `locked_period`, `cycle`, `closed_at`)"
            }
            Reason::CountiesNotApproved => {
                "approving a region while regions below it have submitted figures not yet approved (metadata `regions`)"
            }
            Reason::ReviewState => {
                "a sign-off transition that does not apply to the part's current state or revision (metadata `state`, `revision`)"
            }
            Reason::StateConflict => {
                "the general reason of the code: the request is valid but the stored state forbids it (not sent today)"
            }
            Reason::CredentialRefused => {
                "no credential, or one that is malformed, unknown, expired or not for this service"
            }
            Reason::CredentialRevoked => {
                "the API key a long call began with was revoked or expired meanwhile"
            }
            Reason::ActionNotAllowed => {
                "the principal may not do this (metadata `principal`, `action`, `metric`, `region`)"
            }
            Reason::BatchTooLarge => {
                "a SubmitBatch stream carries more values or bytes than allowed (metadata `limit`, `what`)"
            }
            Reason::AuditTooLarge => {
                "a code audit holds more distinct codes than allowed (metadata `limit`, `what`)"
            }
            Reason::AuditCapacity => {
                "too many code audits run at once, in all or for the caller; RetryInfo"
            }
            Reason::RequestBytes => {
                "the request bodies the gateway holds would exceed the caller's budget or the gateway's (metadata `scope`: `principal` or `all`, `limit`); RetryInfo"
            }
            Reason::WatchLagged => {
                "a WatchChanges watcher fell behind the change feed, or a WatchNotices listener stopped reading: re-read (resume), then watch again; RetryInfo"
            }
            Reason::Overloaded => {
                "the platform is at capacity (the gateway's adaptive limit), for every caller; RetryInfo"
            }
            Reason::RateLimited => {
                "the caller's rate limit (calls per second) refused the call; RetryInfo"
            }
            Reason::AuthFailuresLimited => {
                "too many failed authentications from the caller's address: refused without a key look-up; RetryInfo"
            }
            Reason::PrincipalBudget => {
                "the caller already has as many calls or streams open as it may, or as many webhook subscriptions exist as allowed (metadata `what`, `limit`); RetryInfo"
            }
            Reason::PrincipalShare => {
                "the caller already has half of what the platform serves at once (metadata `limit`); RetryInfo"
            }
            Reason::MessageTooLarge => "a request message larger than the gateway takes",
            Reason::RequestStreamBroken => {
                "the caller's request stream broke off before its end; nothing was stored"
            }
            Reason::TimedOut => {
                "the call's deadline passed (the caller's, capped per kind of call)"
            }
            Reason::RequestReadTimeout => {
                "the caller sent nothing of its request for too long (`request_read_timeout_ms`), or not all of it within its deadline"
            }
            Reason::ConcurrentChange => {
                "the general reason of the code: a concurrent change won, retry the whole operation (not sent today)"
            }
            Reason::UnknownMethod => "a method the gateway does not know or does not serve",
            Reason::ServiceUnavailable => {
                "a service, or the store the gateway asks, is unreachable; RetryInfo"
            }
            Reason::StorageUnavailable => "a service's database is unreachable or busy; RetryInfo",
            Reason::WriterStopped => {
                "the submission writer is not running (the service is stopping); RetryInfo"
            }
            Reason::InternalFault => {
                "a bug or an unexpected storage error; logged once, never detailed"
            }
            Reason::UnknownFailure => {
                "the general reason of the code: a failure of unknown kind (not sent today)"
            }
            Reason::DataCorrupted => {
                "the general reason of the code: stored data is lost or corrupt (not sent today)"
            }
        }
    }

    /// The table above, as the module documentation shows it.
    pub fn table() -> String {
        let width = Reason::ALL
            .iter()
            .map(|r| r.as_str().len() + 2)
            .max()
            .unwrap_or(0);
        let code_width = "FAILED_PRECONDITION".len();
        let mut out = format!(
            "//! | {:<width$} | {:<code_width$} | when |\n//! |{}|{}|------|\n",
            "reason",
            "code",
            "-".repeat(width + 2),
            "-".repeat(code_width + 2),
        );
        for r in Reason::ALL {
            out.push_str(&format!(
                "//! | {:<width$} | {:<code_width$} | {} |\n",
                format!("`{}`", r.as_str()),
                code_name(r.code()),
                r.when(),
            ));
        }
        out
    }

    /// The general reason of `code`, for a refusal that names only its code (the gateway's own):
    /// always a reason of that code, never another's. None for OK, which is no error.
    pub fn of_code(code: Code) -> Option<Reason> {
        Some(match code {
            Code::Ok => return None,
            Code::Cancelled => Reason::RequestStreamBroken,
            Code::Unknown => Reason::UnknownFailure,
            Code::InvalidArgument => Reason::InvalidFields,
            Code::DeadlineExceeded => Reason::TimedOut,
            Code::NotFound => Reason::NotFound,
            Code::AlreadyExists => Reason::ResourceExists,
            Code::PermissionDenied => Reason::ActionNotAllowed,
            Code::ResourceExhausted => Reason::Overloaded,
            Code::FailedPrecondition => Reason::StateConflict,
            Code::Aborted => Reason::ConcurrentChange,
            Code::OutOfRange => Reason::MessageTooLarge,
            Code::Unimplemented => Reason::UnknownMethod,
            Code::Internal => Reason::InternalFault,
            Code::Unavailable => Reason::ServiceUnavailable,
            Code::DataLoss => Reason::DataCorrupted,
            Code::Unauthenticated => Reason::CredentialRefused,
        })
    }
}

/// A code's name as gRPC spells it (`FAILED_PRECONDITION`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One error of a citycredit service, as quickwit's `ServiceError`: which specific reason (and
/// so which code), what `ErrorInfo` metadata, which field violations and when to retry. Each
/// service's error enum implements it; [`to_status`] turns any of them into a `Status`.
pub trait ServiceError: std::fmt::Display {
    /// The specific reason of this error.
    fn reason(&self) -> Reason;

    /// The gRPC code: the reason's, always.
    fn code(&self) -> Code {
        self.reason().code()
    }

    /// What the caller is told (the `Display` text unless overridden). Never used for
    /// INTERNAL, whose detail is logged and replaced by "internal error".
    fn message(&self) -> String {
        self.to_string()
    }

    /// `ErrorInfo` metadata.
    fn metadata(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// The field violations of an INVALID_FIELDS error: the first ones and how many in all.
    fn violations(&self) -> Option<(&[Violation], usize)> {
        None
    }

    /// When waiting helps: the delay sent as `RetryInfo`.
    fn retry_delay(&self) -> Option<Duration> {
        None
    }
}

/// The one conversion of a service error to a `Status`. An INTERNAL error is logged here, once,
/// and reaches the caller as "internal error".
pub fn to_status(error: &dyn ServiceError) -> Status {
    if let Some((violations, total)) = error.violations() {
        return invalid_argument_of(violations, total);
    }
    let reason = error.reason();
    let message = if reason.code() == Code::Internal {
        tracing::error!(%error, "internal error");
        "internal error".to_owned()
    } else {
        error.message()
    };
    let metadata = error.metadata();
    let metadata: Vec<(&str, &str)> = metadata.iter().map(|(k, v)| (*k, v.as_str())).collect();
    build(
        error.code(),
        Some(reason),
        &message,
        &metadata,
        error.retry_delay(),
    )
}

/// A refused action is PERMISSION_DENIED `ACTION_NOT_ALLOWED`, naming who, what, which metric
/// and which region.
impl ServiceError for Denied {
    fn reason(&self) -> Reason {
        Reason::ActionNotAllowed
    }

    fn metadata(&self) -> Vec<(&'static str, String)> {
        vec![
            ("principal", self.principal.clone()),
            ("action", self.action.to_owned()),
            ("metric", self.metric.clone()),
            ("region", self.region.clone()),
        ]
    }
}

/// Longest message a status carries, in characters.
pub const MAX_MESSAGE_CHARS: usize = 1_024;
/// Longest message a status carries as sent: `grpc-message` is percent-encoded (a CJK
/// character costs 9 bytes) and repeated inside `grpc-status-details-bin` (base64).
pub const MAX_MESSAGE_WIRE_BYTES: usize = 512;
/// Most field violations one INVALID_ARGUMENT lists (the total is in its `ErrorInfo`).
pub const MAX_VIOLATIONS: usize = 100;
/// Most bytes of field violations one INVALID_ARGUMENT lists (encoded; about 6.7 KiB once in
/// base64), so that the whole status stays under 8 KiB of trailers.
pub const MAX_VIOLATION_BYTES: usize = 5_000;
/// Longest field violation description or `ErrorInfo` metadata value, in characters.
pub const MAX_DETAIL_CHARS: usize = 256;

/// `text` cut to `max` characters (with "…" when cut). Messages and details often quote the
/// caller's input; a hostile 1 MB field must not come back as a 1 MB status (it travels in
/// HTTP/2 trailers, where it can exceed the peer's header limit and break the call).
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// Bytes `text` takes as a `grpc-message` value (percent-encoded as tonic sends it).
pub fn message_wire_len(text: &str) -> usize {
    text.bytes()
        .map(|b| {
            let escaped = !(0x20..0x7f).contains(&b)
                || matches!(
                    b,
                    b' ' | b'"' | b'#' | b'%' | b'<' | b'>' | b'`' | b'?' | b'{' | b'}'
                );
            if escaped { 3 } else { 1 }
        })
        .sum()
}

/// `text` cut to [`MAX_MESSAGE_CHARS`] characters and [`MAX_MESSAGE_WIRE_BYTES`] bytes as sent.
pub fn clip_message(text: &str) -> String {
    let mut out = clip(text, MAX_MESSAGE_CHARS);
    if message_wire_len(&out) <= MAX_MESSAGE_WIRE_BYTES {
        return out;
    }
    // "…" costs 9 bytes encoded.
    let mut used = 9;
    let mut end = 0;
    for (i, c) in out.char_indices() {
        let mut buf = [0u8; 4];
        let n = message_wire_len(c.encode_utf8(&mut buf));
        if used + n > MAX_MESSAGE_WIRE_BYTES {
            break;
        }
        used += n;
        end = i + c.len_utf8();
    }
    out.truncate(end);
    out.push('…');
    out
}

fn metadata_map(metadata: &[(&str, &str)]) -> HashMap<String, String> {
    metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), clip(v, MAX_DETAIL_CHARS)))
        .collect()
}

/// The one place a status is put together: `ErrorInfo` with `reason` (none for OK) and the
/// metadata, `RetryInfo` when a delay is given, the message clipped.
fn build(
    code: Code,
    reason: Option<Reason>,
    message: &str,
    metadata: &[(&str, &str)],
    retry: Option<Duration>,
) -> Status {
    debug_assert!(
        reason.is_none_or(|r| r.code() == code),
        "{reason:?} is not a reason of {code:?}"
    );
    let mut details = ErrorDetails::new();
    if let Some(reason) = reason {
        details.set_error_info(reason.as_str(), DOMAIN, metadata_map(metadata));
    }
    if let Some(delay) = retry {
        details.set_retry_info(Some(delay));
    }
    Status::with_error_details(code, clip_message(message), details)
}

/// A refusal that names only its code (the gateway's own): `ErrorInfo` with the code's general
/// reason ([`Reason::of_code`]) and the given metadata.
pub fn with_info(code: Code, message: impl Into<String>, metadata: &[(&str, &str)]) -> Status {
    build(code, Reason::of_code(code), &message.into(), metadata, None)
}

/// A status with a specific `ErrorInfo` reason (of `code`) and the given metadata.
pub fn with_reason(
    code: Code,
    reason: Reason,
    message: impl Into<String>,
    metadata: &[(&str, &str)],
) -> Status {
    build(code, Some(reason), &message.into(), metadata, None)
}

/// A retryable status (UNAVAILABLE or RESOURCE_EXHAUSTED) with a specific reason, telling the
/// caller when to retry.
pub fn retry_after_reason(
    code: Code,
    reason: Reason,
    message: impl Into<String>,
    delay: Duration,
    metadata: &[(&str, &str)],
) -> Status {
    build(code, Some(reason), &message.into(), metadata, Some(delay))
}

/// One problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Path to the field, e.g. `values[3].value`.
    pub field: String,
    pub description: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Violation {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// INVALID_ARGUMENT with one field violation per problem: the first [`MAX_VIOLATIONS`] (and at
/// most [`MAX_VIOLATION_BYTES`] of them), the total in `ErrorInfo`. The message names the first
/// problems so that clients without rich error support still see what is wrong.
pub fn invalid_argument(violations: &[Violation]) -> Status {
    invalid_argument_of(violations, violations.len())
}

/// [`invalid_argument`] for a request with `total` problems of which only the first ones were
/// kept (`violations`): a caller that collects problems over a long stream keeps no more than
/// a status can list.
pub fn invalid_argument_of(violations: &[Violation], total: usize) -> Status {
    let total = total.max(violations.len());
    let clipped = |v: &Violation| {
        FieldViolation::new(
            clip(&v.field, MAX_DETAIL_CHARS),
            clip(&v.description, MAX_DETAIL_CHARS),
        )
    };
    let mut listed: Vec<FieldViolation> = Vec::new();
    let mut bytes = 0;
    for v in violations.iter().take(MAX_VIOLATIONS) {
        let f = clipped(v);
        // Two length-delimited strings in a message in a repeated field: 6 bytes of framing
        // (one-byte tags and lengths up to 127, two-byte lengths beyond; close enough).
        let cost = f.field.len() + f.description.len() + 8;
        if !listed.is_empty() && bytes + cost > MAX_VIOLATION_BYTES {
            break;
        }
        bytes += cost;
        listed.push(f);
    }
    let summary: Vec<String> = listed
        .iter()
        .take(3)
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect();
    let mut message = format!("invalid request: {}", summary.join("; "));
    let unnamed = total.saturating_sub(summary.len());
    if unnamed > 0 {
        message = format!(
            "invalid request ({} problems, {} listed in the details): {}",
            total,
            listed.len(),
            summary.join("; ")
        );
    }
    let total = total.to_string();
    let shown = listed.len().to_string();
    let mut details = ErrorDetails::with_bad_request(listed);
    details.set_error_info(
        Reason::InvalidFields.as_str(),
        DOMAIN,
        HashMap::from([
            ("violations".to_owned(), total),
            ("violations_listed".to_owned(), shown),
        ]),
    );
    Status::with_error_details(Code::InvalidArgument, clip_message(&message), details)
}

/// INVALID_ARGUMENT for a single field.
pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Status {
    invalid_argument(&[Violation::new(field, description)])
}

/// NOT_FOUND naming the resource (`indicators/B99`).
pub fn not_found(resource: &str) -> Status {
    with_reason(
        Code::NotFound,
        Reason::NotFound,
        format!("{resource} not found"),
        &[("resource", resource)],
    )
}

/// A retryable status (UNAVAILABLE or RESOURCE_EXHAUSTED) with the code's general reason,
/// telling the caller when to retry.
pub fn retry_after(code: Code, message: impl Into<String>, delay: Duration) -> Status {
    build(
        code,
        Reason::of_code(code),
        &message.into(),
        &[],
        Some(delay),
    )
}

/// INTERNAL: the detail is logged here once and never sent to the caller.
pub fn internal(context: &str, error: &dyn std::fmt::Display) -> Status {
    tracing::error!(%error, context, "internal error");
    with_reason(Code::Internal, Reason::InternalFault, "internal error", &[])
}

/// Parses AIP page parameters: `page_size` (0 means `default`, capped at `max`) and an opaque
/// `page_token` from a previous response. Returns (offset, limit).
pub fn page(
    page_size: i32,
    page_token: &str,
    default: usize,
    max: usize,
) -> Result<(usize, usize), Status> {
    if page_size < 0 {
        return Err(invalid_field("page_size", "must not be negative"));
    }
    let limit = match usize::try_from(page_size).unwrap_or(0) {
        0 => default,
        n => n.min(max),
    };
    let offset = if page_token.is_empty() {
        0
    } else {
        page_token
            .strip_prefix("o")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| invalid_field("page_token", "not a token from a previous response"))?
    };
    Ok((offset, limit))
}

/// The token for the page after `offset + limit`, or empty when `total` is reached.
pub fn next_page_token(offset: usize, limit: usize, total: usize) -> String {
    let next = offset.saturating_add(limit);
    if next < total {
        format!("o{next}")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_every_violation_and_error_info() {
        let status = invalid_argument(&[
            Violation::new("values[0].value", "a COUNT is a whole number"),
            Violation::new("values[3].period", "`2026-13` is not a period"),
        ]);
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details
            .bad_request()
            .map(|b| b.field_violations.clone())
            .unwrap_or_default();
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[1].field, "values[3].period");
        assert_eq!(
            details.error_info().map(|i| i.domain.as_str()),
            Some(DOMAIN)
        );
        assert!(status.message().contains("values[0].value"));
    }

    #[test]
    fn echoed_input_is_clipped() {
        // Regression (bad-input catalogue): a 1 MB number or region came back whole in the
        // message and the BadRequest detail.
        let huge = "7".repeat(1 << 20);
        let status = invalid_argument(&[Violation::new("value.value", format!("`{huge}` bad"))]);
        assert!(status.message().len() < 2 * MAX_DETAIL_CHARS + 64);
        let details = status.get_error_details();
        let bad = details.bad_request().map(|b| b.field_violations.clone());
        assert!(bad.is_some_and(|b| b[0].description.chars().count() == MAX_DETAIL_CHARS + 1));
        let status = with_info(Code::NotFound, huge.clone(), &[("resource", &huge)]);
        assert!(message_wire_len(status.message()) <= MAX_MESSAGE_WIRE_BYTES);
        assert!(status.message().ends_with('…'));
        // CJK text costs 9 bytes a character once percent-encoded.
        let status = with_info(Code::NotFound, "衢".repeat(1000), &[]);
        assert!(message_wire_len(status.message()) <= MAX_MESSAGE_WIRE_BYTES);
        assert_eq!(status.message().chars().count(), 56);
        assert_eq!(clip("衢州市", 2), "衢州…");
        assert_eq!(clip("衢州", 2), "衢州");
    }

    /// What a status costs in HTTP/2 trailers as grpcio counts them: name, value and 32 bytes
    /// per entry.
    fn trailer_bytes(status: &Status) -> usize {
        let mut headers = tonic::codegen::http::HeaderMap::new();
        let _ = status.add_header(&mut headers);
        headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum()
    }

    #[test]
    fn ten_thousand_violations_fit_in_8_kib() {
        // Regression (issue 10): a batch of 10,000 bad values produced an 8 MB trailer.
        let typical: Vec<Violation> = (0..10_000)
            .map(|i| {
                Violation::new(
                    format!("values[{i}].value"),
                    "a COUNT metric takes `number`",
                )
            })
            .collect();
        let worst: Vec<Violation> = (0..10_000)
            .map(|i| Violation::new(format!("values[{i}].region_code"), "衢".repeat(300)))
            .collect();
        for (name, v) in [("typical", typical), ("worst", worst)] {
            let status = invalid_argument(&v);
            let size = trailer_bytes(&status);
            assert!(size < 8 * 1024, "{name}: {size} bytes");
            let details = status.get_error_details();
            let listed = details
                .bad_request()
                .map_or(0, |b| b.field_violations.len());
            assert!((1..=MAX_VIOLATIONS).contains(&listed), "{name}: {listed}");
            let info = details
                .error_info()
                .map(|i| i.metadata.clone())
                .unwrap_or_default();
            assert_eq!(info.get("violations").map(String::as_str), Some("10000"));
            assert_eq!(info.get("violations_listed"), Some(&listed.to_string()));
            assert!(
                status.message().contains("10000 problems"),
                "{}",
                status.message()
            );
        }
        // Short violations: the first 100 are listed.
        let short: Vec<Violation> = (0..10_000)
            .map(|i| Violation::new(format!("values[{i}].period"), "required"))
            .collect();
        let status = invalid_argument(&short);
        let listed = status
            .get_error_details()
            .bad_request()
            .map(|b| b.field_violations.clone());
        assert_eq!(listed.as_ref().map(Vec::len), Some(MAX_VIOLATIONS));
        assert_eq!(
            listed
                .and_then(|l| l.last().map(|v| v.field.clone()))
                .as_deref(),
            Some("values[99].period")
        );
    }

    #[test]
    fn specific_reasons_are_carried() {
        let status = retry_after_reason(
            Code::ResourceExhausted,
            Reason::AuditCapacity,
            "busy",
            Duration::from_secs(1),
            &[("limit", "2")],
        );
        let details = status.get_error_details();
        assert_eq!(
            details.error_info().map(|i| i.reason.as_str()),
            Some("AUDIT_CAPACITY")
        );
        assert!(details.retry_info().is_some());
    }

    #[test]
    fn pages_round_trip() {
        assert_eq!(page(0, "", 100, 1000).ok(), Some((0, 100)));
        assert_eq!(page(5000, "o10", 100, 1000).ok(), Some((10, 1000)));
        assert!(page(-1, "", 100, 1000).is_err());
        assert!(page(10, "garbage", 100, 1000).is_err());
        assert_eq!(next_page_token(0, 10, 20), "o10");
        assert_eq!(next_page_token(10, 10, 20), "");
    }

    #[test]
    fn the_reason_table_is_the_enum() {
        // Generated text is checked: the table in this module's documentation is
        // `Reason::table()`, so a reason cannot be added, renamed or moved without it.
        let source = include_str!("status.rs");
        let table: String = source
            .lines()
            .skip_while(|l| *l != "// reason-table-start")
            .skip(1)
            .take_while(|l| *l != "// reason-table-end")
            .map(|l| format!("{l}\n"))
            .collect();
        let expected = Reason::table();
        assert!(
            table == expected,
            "the reason table of src/status.rs drifted from `Reason`; it should read:\n{expected}"
        );
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "{r:?} twice");
        }
    }

    #[test]
    fn every_code_has_a_reason_of_its_own() {
        for code in (0..=16).map(Code::from_i32) {
            match Reason::of_code(code) {
                None => assert_eq!(code, Code::Ok),
                Some(r) => {
                    assert_eq!(r.code(), code, "{r:?}");
                    assert!(Reason::ALL.contains(&r));
                }
            }
            if code == Code::Ok {
                continue;
            }
            let status = with_info(code, "m", &[]);
            let info = status.get_error_details().error_info().cloned();
            let reason = info.map(|i| i.reason).unwrap_or_default();
            let owner = Reason::ALL.iter().find(|r| r.as_str() == reason);
            assert_eq!(owner.map(|r| r.code()), Some(code), "{code:?}: {reason}");
        }
    }

    #[test]
    fn documents_name_only_reasons_that_exist() {
        let is_reason = |name: &str| Reason::ALL.iter().any(|r| r.as_str() == name);
        let is_code = |name: &str| (0..=16).any(|c| code_name(Code::from_i32(c)) == name);
        let upper = |w: &str| {
            w.len() > 1
                && w.starts_with(|c: char| c.is_ascii_uppercase())
                && w.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        };
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        // README, RELIABILITY, SECURITY and ARCHITECTURE quote reasons in backticks; each
        // quoted upper-case name there is a reason, a code, or one of the other names they use.
        let others = [
            "CARRIED_FORWARD", // a period marker (aggregates.rs)
            "CC_API_KEY",
            "CITYCREDIT_BIN",
            "DATABASE_URL",
            "INTERNAL_ERROR", // an HTTP/2 error code
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "PARTIAL_PERIOD", // a period marker (aggregates.rs)
            "PASS",
            "SCORED",
            "ROLE_ADMIN",
            "ROLE_ASSESSOR",
            "ROLE_CREDIT_OFFICE",
            "ROLE_DEPARTMENT",
            "ROLE_OPERATOR",
            "ROLE_PLATFORM",
            "SETTINGS_MAX_CONCURRENT_STREAMS",
            "TCP_NODELAY",
            "UNLOGGED",
            "YYYY",
        ];
        for doc in [
            "README.md",
            "RELIABILITY.md",
            "SECURITY.md",
            "ARCHITECTURE.md",
        ] {
            let text = read(&root.join(doc));
            let mut fenced = false;
            let prose = text.lines().filter(|l| {
                if l.trim_start().starts_with("```") {
                    fenced = !fenced;
                    return false;
                }
                !fenced
            });
            for quoted in prose.flat_map(|l| l.split('`').skip(1).step_by(2)) {
                if upper(quoted) && !others.contains(&quoted) {
                    assert!(
                        is_reason(quoted) || is_code(quoted),
                        "{doc} quotes `{quoted}`, which is no reason or code"
                    );
                }
            }
        }
        // The contracts' comments and the example configuration write "reason NAME".
        let mut files = vec![root.join("deploy/config/citycredit.example.toml")];
        let protos = root.join("proto/citycredit/v1");
        for entry in std::fs::read_dir(&protos).unwrap_or_else(|e| panic!("{e}")) {
            files.push(entry.unwrap_or_else(|e| panic!("{e}")).path());
        }
        let mut named = 0;
        for file in files {
            let text = read(&file);
            let words: Vec<&str> = text
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .collect();
            for pair in words.windows(2) {
                if pair[0] == "reason" && upper(pair[1]) {
                    named += 1;
                    assert!(
                        is_reason(pair[1]),
                        "{} names reason {}, which is no reason",
                        file.display(),
                        pair[1]
                    );
                }
            }
        }
        assert!(named >= 5, "only {named} reasons named in the contracts");
    }
}
