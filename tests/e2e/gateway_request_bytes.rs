//! The gateway's budget of bytes held in request bodies, through a real server at its limits.
//!
//! The gateway reads the request of every RPC whose request is one message whole before passing
//! it on. Its bytes are reserved as they arrive in the caller's budget
//! (`max_buffered_request_bytes_per_principal`) and the gateway's
//! (`max_buffered_request_bytes`), and given back when the service answers: a body announcing a
//! large message and sending little holds what it sent, a call whose bytes would cross a budget
//! is refused at once (RESOURCE_EXHAUSTED, RetryInfo, ErrorInfo reason `REQUEST_BYTES` with the
//! scope), and other callers go on.
//!
//! Raw HTTP/2 (the `h2` crate) sends bodies that stop half way. The gateway reads them in the
//! background, so the test waits for them to be counted by probing: a call that fits only if
//! they are not counted yet is retried until it is refused (bounded).

use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::ResponseFuture;
use prost::Message;
use tonic::Code;
use tonic_types::StatusExt;

use citycredit::proto::v1 as pb;
use citycredit_tests::TestServer;
use citycredit_tests::h2raw::{self, RawConn, grpc_request};

const PATH: &str = "/citycredit.v1.MetricSubmissionService/SubmitValue";
/// `max_message_bytes`: with its 5-byte frame header, the largest body.
const MAX_MESSAGE: usize = 256 * 1024;
const LARGEST: usize = MAX_MESSAGE + 5;
const PER_PRINCIPAL: usize = 300 * 1024;
const IN_ALL: usize = 350_000;
/// What each stalled body sends: one HTTP/2 DATA frame (at most 16 KiB), so it is held as it
/// came, without a copy, and counted exactly.
const STALLED: usize = 16_000;

/// A gRPC body of exactly `size` bytes: a valid SubmitValue (validate_only) whose note fills it
/// (the service answers INVALID_ARGUMENT for so long a note; what matters here is that the call
/// got past the gateway).
fn body_of(size: usize) -> Bytes {
    let mut note = size.saturating_sub(64);
    loop {
        let m = pb::SubmitValueRequest {
            value: Some(pb::SubmissionInput {
                metric_key: "uscc.codes_total".into(),
                note: "x".repeat(note),
                ..Default::default()
            }),
            idempotency_key: String::new(),
            validate_only: true,
        };
        let len = m.encoded_len() + 5;
        match len.cmp(&size) {
            std::cmp::Ordering::Equal => return h2raw::grpc_frame(&m),
            std::cmp::Ordering::Less => note += size - len,
            std::cmp::Ordering::Greater => note -= (len - size).min(note),
        }
    }
}

/// The first bytes of a body announcing the largest message: the frame header and
/// `STALLED - 5` bytes of it.
fn stalled_start() -> Bytes {
    let mut b = vec![0u8];
    b.extend(u32::try_from(MAX_MESSAGE).unwrap_or(0).to_be_bytes());
    b.resize(STALLED, 0);
    Bytes::from(b)
}

/// How a call ended: its gRPC code and status.
async fn outcome(response: ResponseFuture) -> tonic::Status {
    let resp = tokio::time::timeout(Duration::from_secs(20), response)
        .await
        .unwrap_or_else(|_| panic!("no answer within 20 s"))
        .unwrap_or_else(|e| panic!("response: {e}"));
    if let Some(status) = tonic::Status::from_header_map(resp.headers()) {
        return status;
    }
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("data: {e}"));
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body
        .trailers()
        .await
        .unwrap_or_else(|e| panic!("trailers: {e}"))
        .unwrap_or_default();
    tonic::Status::from_header_map(&trailers).unwrap_or_else(|| panic!("no grpc-status"))
}

/// A whole call of `size` bytes by `key`.
async fn call(conn: &mut RawConn, key: &str, size: usize) -> tonic::Status {
    let (response, _stream) = conn
        .start(grpc_request(PATH, Some(key)), Some(body_of(size)))
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    outcome(response).await
}

/// A call by `key` that sends [`STALLED`] bytes of its body and stops; the stream stays open
/// until it is reset.
async fn stall(conn: &mut RawConn, key: &str) -> (ResponseFuture, h2::SendStream<Bytes>) {
    let (response, mut stream) = conn
        .start(grpc_request(PATH, Some(key)), None)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    stream
        .send_data(stalled_start(), false)
        .unwrap_or_else(|e| panic!("send: {e}"));
    (response, stream)
}

fn is_budget_refusal(s: &tonic::Status, scope: &str, limit: usize) -> bool {
    let details = s.get_error_details();
    s.code() == Code::ResourceExhausted
        && details.retry_info().is_some()
        && details.error_info().is_some_and(|i| {
            i.reason == "REQUEST_BYTES"
                && i.metadata.get("scope").map(String::as_str) == Some(scope)
                && i.metadata.get("limit") == Some(&limit.to_string())
        })
}

/// Sends whole calls of `size` bytes by `key` until one is refused for `scope` (what the
/// stalled bodies sent is then counted); panics after 10 s.
async fn until_refused(conn: &mut RawConn, key: &str, size: usize, scope: &str, limit: usize) {
    let started = Instant::now();
    loop {
        let s = call(conn, key, size).await;
        if is_budget_refusal(&s, scope, limit) {
            return;
        }
        assert_ne!(
            s.code(),
            Code::ResourceExhausted,
            "refused otherwise: {s:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the stalled bodies were not counted within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn request_bodies_held_at_the_gateway_are_bounded_per_principal_and_in_all() {
    let server = TestServer::start_with(|c| {
        c.gateway.max_message_bytes = MAX_MESSAGE;
        c.gateway.max_buffered_request_bytes_per_principal = PER_PRINCIPAL;
        c.gateway.max_buffered_request_bytes = IN_ALL;
        // Stalled bodies stay until the test resets them.
        c.gateway.request_read_timeout_ms = 60_000;
    })
    .await;
    let a = server
        .create_principal("bytes-a", pb::Role::Platform, None)
        .await;
    let b = server
        .create_principal("bytes-b", pb::Role::Platform, None)
        .await;
    let c = server
        .create_principal("bytes-c", pb::Role::Platform, None)
        .await;
    let d = server
        .create_principal("bytes-d", pb::Role::Platform, None)
        .await;
    let mut conn = h2raw::connect(server.addr, 65_535)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // The largest body fits a principal's budget and is answered by the service.
    let s = call(&mut conn, &a, LARGEST).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

    // A sends three bodies that announce the largest message and stop after 16,000 bytes:
    // they hold 48,000 bytes, not 3 x 262,149.
    let mut a_stalled = Vec::new();
    for _ in 0..3 {
        a_stalled.push(stall(&mut conn, &a).await);
    }
    // Counted: the largest body no longer fits A's budget (48,000 + 262,149 > 307,200).
    until_refused(&mut conn, &a, LARGEST, "principal", PER_PRINCIPAL).await;
    // At the limit: 307,200 - 48,000 bytes fit exactly, one byte more is refused at once.
    let room = PER_PRINCIPAL - 3 * STALLED;
    let s = call(&mut conn, &a, room).await;
    assert_eq!(
        s.code(),
        Code::InvalidArgument,
        "exactly at A's budget: {s:?}"
    );
    let started = Instant::now();
    let s = call(&mut conn, &a, room + 1).await;
    assert!(
        is_budget_refusal(&s, "principal", PER_PRINCIPAL),
        "one byte past A's budget: {s:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "refused slowly");
    // Another principal is not touched by A's budget.
    let s = call(&mut conn, &d, LARGEST).await;
    assert_eq!(s.code(), Code::InvalidArgument, "D while A is full: {s:?}");

    // In all: B stalls 48,000 bytes too; with A's 48,000 the gateway holds 96,000 of its
    // 350,000.
    let mut b_stalled = Vec::new();
    for _ in 0..3 {
        b_stalled.push(stall(&mut conn, &b).await);
    }
    until_refused(&mut conn, &c, LARGEST, "all", IN_ALL).await;
    let room = IN_ALL - 6 * STALLED;
    let s = call(&mut conn, &c, room).await;
    assert_eq!(
        s.code(),
        Code::InvalidArgument,
        "exactly at the gateway's budget: {s:?}"
    );
    let s = call(&mut conn, &c, room + 1).await;
    assert!(
        is_budget_refusal(&s, "all", IN_ALL),
        "one byte past the gateway's budget: {s:?}"
    );

    // The stalled calls are given up: their bytes come back.
    for (_, mut stream) in a_stalled.into_iter().chain(b_stalled) {
        stream.send_reset(h2::Reason::CANCEL);
    }
    let started = Instant::now();
    loop {
        let s = call(&mut conn, &c, LARGEST).await;
        if s.code() == Code::InvalidArgument {
            break;
        }
        assert!(
            is_budget_refusal(&s, "all", IN_ALL),
            "after the resets: {s:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the stalled bodies' bytes did not come back within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A has its whole budget back.
    let s = call(&mut conn, &a, LARGEST).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
}
