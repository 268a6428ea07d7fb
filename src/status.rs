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
//!
//! Where a client must tell one case of a code from another, the reason is specific ([`Reason`]):
//!
//! | reason                  | code                | when |
//! |-------------------------|---------------------|------|
//! | `ALREADY_RETRACTED`     | FAILED_PRECONDITION | the submission was retracted already (metadata `retracted_by` when known) |
//! | `NOT_RETRACTABLE`       | FAILED_PRECONDITION | the submission is itself a retraction |
//! | `BATCH_TOO_LARGE`       | RESOURCE_EXHAUSTED  | a SubmitBatch stream carries more values or bytes than allowed (metadata `limit`, `what`) |
//! | `AUDIT_TOO_LARGE`       | RESOURCE_EXHAUSTED  | a code audit holds more distinct codes than allowed (metadata `limit`) |
//! | `AUDIT_CAPACITY`        | RESOURCE_EXHAUSTED  | too many code audits run at once, in all or for the caller; RetryInfo |
//! | `CREDENTIAL_REVOKED`    | UNAUTHENTICATED     | the API key a long call began with was revoked or expired meanwhile |
//! | `REQUEST_BYTES`         | RESOURCE_EXHAUSTED  | the request bodies the gateway holds would exceed the caller's budget or the gateway's (metadata `scope`: `principal` or `all`, `limit`); RetryInfo |
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

/// A specific, stable `ErrorInfo` reason (see the table above). Clients may match on these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    AlreadyRetracted,
    NotRetractable,
    BatchTooLarge,
    AuditTooLarge,
    AuditCapacity,
    CredentialRevoked,
    RequestBytes,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AlreadyRetracted => "ALREADY_RETRACTED",
            Reason::NotRetractable => "NOT_RETRACTABLE",
            Reason::BatchTooLarge => "BATCH_TOO_LARGE",
            Reason::AuditTooLarge => "AUDIT_TOO_LARGE",
            Reason::AuditCapacity => "AUDIT_CAPACITY",
            Reason::CredentialRevoked => "CREDENTIAL_REVOKED",
            Reason::RequestBytes => "REQUEST_BYTES",
        }
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

/// A status with `ErrorInfo` and the given metadata.
pub fn with_info(code: Code, message: impl Into<String>, metadata: &[(&str, &str)]) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason(code), DOMAIN, metadata_map(metadata));
    Status::with_error_details(code, clip_message(&message.into()), details)
}

/// A status with a specific `ErrorInfo` reason and the given metadata.
pub fn with_reason(
    code: Code,
    reason: Reason,
    message: impl Into<String>,
    metadata: &[(&str, &str)],
) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason.as_str(), DOMAIN, metadata_map(metadata));
    Status::with_error_details(code, clip_message(&message.into()), details)
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
    let mut details = ErrorDetails::new();
    details.set_error_info(reason.as_str(), DOMAIN, metadata_map(metadata));
    details.set_retry_info(Some(delay));
    Status::with_error_details(code, clip_message(&message.into()), details)
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
        reason(Code::InvalidArgument),
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
    Status::with_error_details(code, clip_message(&message.into()), details)
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
}
