//! How citycredit errors reach callers: gRPC status codes with `google.rpc` details. Every status
//! carries `ErrorInfo` (domain `citycredit`, a stable reason); bad input carries one `BadRequest`
//! field violation per problem; retryable failures carry `RetryInfo`. Services build statuses
//! only through these functions so that the table below stays the one place to read.
//!
//! | reason               | code                | when |
//! |----------------------|---------------------|------|
//! | `INVALID_ARGUMENT`   | INVALID_ARGUMENT    | a request field is wrong (violations name each) |
//! | `NOT_FOUND`          | NOT_FOUND           | an unknown resource |
//! | `ALREADY_EXISTS`     | ALREADY_EXISTS      | a resource or idempotency key already used differently |
//! | `FAILED_PRECONDITION`| FAILED_PRECONDITION | the request is valid but the state forbids it |
//! | `UNAUTHENTICATED`    | UNAUTHENTICATED     | no or unknown credential |
//! | `PERMISSION_DENIED`  | PERMISSION_DENIED   | the principal may not do this |
//! | `RESOURCE_EXHAUSTED` | RESOURCE_EXHAUSTED  | too big or too many; RetryInfo when waiting helps |
//! | `UNAVAILABLE`        | UNAVAILABLE         | storage or an upstream is down; RetryInfo |
//! | `INTERNAL`           | INTERNAL            | a bug or unexpected storage error; logged, never detailed |

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// The `ErrorInfo` domain of every citycredit error.
pub const DOMAIN: &str = "citycredit";

fn reason(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::Unavailable => "UNAVAILABLE",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::Unimplemented => "UNIMPLEMENTED",
        _ => "INTERNAL",
    }
}

/// Longest message a status carries, in characters.
pub const MAX_MESSAGE_CHARS: usize = 1_024;
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

/// A status with `ErrorInfo` and the given metadata.
pub fn with_info(code: Code, message: impl Into<String>, metadata: &[(&str, &str)]) -> Status {
    let mut details = ErrorDetails::new();
    let meta: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), clip(v, MAX_DETAIL_CHARS)))
        .collect();
    details.set_error_info(reason(code), DOMAIN, meta);
    Status::with_error_details(code, clip(&message.into(), MAX_MESSAGE_CHARS), details)
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

/// INVALID_ARGUMENT with one field violation per problem. The message names the first problems
/// so that clients without rich error support still see what is wrong.
pub fn invalid_argument(violations: &[Violation]) -> Status {
    let summary: Vec<String> = violations
        .iter()
        .take(3)
        .map(|v| {
            format!(
                "{}: {}",
                clip(&v.field, MAX_DETAIL_CHARS),
                clip(&v.description, MAX_DETAIL_CHARS)
            )
        })
        .collect();
    let more = violations.len().saturating_sub(3);
    let mut message = format!("invalid request: {}", summary.join("; "));
    if more > 0 {
        message.push_str(&format!(" (and {more} more)"));
    }
    let mut details = ErrorDetails::with_bad_request(
        violations
            .iter()
            .map(|v| {
                FieldViolation::new(
                    clip(&v.field, MAX_DETAIL_CHARS),
                    clip(&v.description, MAX_DETAIL_CHARS),
                )
            })
            .collect::<Vec<_>>(),
    );
    details.set_error_info(
        reason(Code::InvalidArgument),
        DOMAIN,
        HashMap::from([("violations".to_owned(), violations.len().to_string())]),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// INVALID_ARGUMENT for a single field.
pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Status {
    invalid_argument(&[Violation::new(field, description)])
}

/// NOT_FOUND naming the resource (`indicators/B99`).
pub fn not_found(resource: &str) -> Status {
    with_info(
        Code::NotFound,
        format!("{resource} not found"),
        &[("resource", resource)],
    )
}

/// A retryable status (UNAVAILABLE or RESOURCE_EXHAUSTED) telling the caller when to retry.
pub fn retry_after(code: Code, message: impl Into<String>, delay: Duration) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason(code), DOMAIN, HashMap::new());
    details.set_retry_info(Some(delay));
    Status::with_error_details(code, clip(&message.into(), MAX_MESSAGE_CHARS), details)
}

/// INTERNAL: the detail is logged here once and never sent to the caller.
pub fn internal(context: &str, error: &dyn std::fmt::Display) -> Status {
    tracing::error!(%error, context, "internal error");
    with_info(Code::Internal, "internal error", &[])
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
        assert_eq!(status.message().chars().count(), MAX_MESSAGE_CHARS + 1);
        assert_eq!(clip("衢州市", 2), "衢州…");
        assert_eq!(clip("衢州", 2), "衢州");
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
}
