//! The edge's settings, as sections of the `citycredit` configuration (`[gateway]`,
//! `[upstream_tls]`; loaded and validated by `citycredit_app::config`, documented in
//! `deploy/config/citycredit.example.toml`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use citycredit::localize::Locale;

/// Protection the gateway applies to every call, and the transport limits of every listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    /// Ceiling of the adaptive limit on unary calls being served at once across all callers,
    /// and the cap on unary calls in flight and (separately) streams open at once in all;
    /// beyond them calls are shed at once with RESOURCE_EXHAUSTED and RetryInfo.
    pub max_concurrent_calls: usize,
    /// Floor of the adaptive limit: it never admits fewer unary calls at once than this. Equal
    /// to `max_concurrent_calls`, the limit is fixed.
    pub min_concurrent_calls: usize,
    /// Calls per second each principal may start (token bucket refill rate).
    pub per_principal_rate: u32,
    /// Calls a principal may start in a burst.
    pub per_principal_burst: u32,
    /// Unary calls one principal may have in flight, from the request's arrival until its
    /// response is fully sent.
    pub max_calls_per_principal: usize,
    /// Streaming calls (SubmitBatch, AuditCodes, watches) one principal may have open.
    pub max_streams_per_principal: usize,
    /// Deadline for calls that send none (`grpc-timeout`), except server-streaming watches.
    pub default_deadline_ms: u64,
    /// The longest deadline a unary call gets, whatever the caller asks.
    pub max_deadline_unary_ms: u64,
    /// The longest deadline a client-streaming call (SubmitBatch, AuditCodes) gets.
    pub max_deadline_client_streaming_ms: u64,
    /// The longest a server-streaming call (a watch) stays open; also its deadline when the
    /// caller sends none.
    pub max_deadline_server_streaming_ms: u64,
    /// A request stream that sends nothing for this long ends with DEADLINE_EXCEEDED (a unary
    /// request must arrive whole within it).
    pub request_read_timeout_ms: u64,
    /// A connection whose response data the peer has not taken for this long (TCP or HTTP/2
    /// flow control) is closed.
    pub write_timeout_ms: u64,
    /// A connection must send its HTTP/2 preface (after TLS, when TLS is on) within this long.
    pub handshake_timeout_ms: u64,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`: streams one HTTP/2 connection may have open.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 connections the gateway keeps to each remote upstream (split topology); each
    /// call goes to the one with the fewest calls waiting. One connection is driven by one
    /// task, so one alone caps the gateway's throughput well below its cores'.
    pub upstream_connections: usize,
    /// RPCs that only read carry a read grant (`v3`) per (principal, RPC), reused for 10 s and
    /// verified once by the service, instead of a signature per call. A grant seen on the wire
    /// lets its holder make that one read as that principal for up to 30 s: turn this off when
    /// the links to the services run without mTLS and can be read (SECURITY.md).
    pub read_grants: bool,
    /// Failed authentications one source address may make per second; beyond it (and the
    /// burst) they are answered RESOURCE_EXHAUSTED without a key look-up.
    pub failed_auth_per_source_rate: u32,
    /// Failed authentications one source address may make in a burst.
    pub failed_auth_per_source_burst: u32,
    /// The access log (target `citycredit::access`, INFO, one line of about 240 bytes per call)
    /// writes every call that does not end OK, and one in this many that do: 1 logs every call,
    /// 0 no successful one. Its level is the log filter's (`citycredit::access=warn` turns it
    /// off); the metrics count every call either way.
    pub access_log_successes: u32,
    /// The language of error messages (`google.rpc.LocalizedMessage`) for callers whose
    /// `accept-language` names none the platform writes: `zh-CN` (the default) or `en`.
    pub default_locale: Locale,
    /// Largest message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// Bytes one principal's request bodies may hold at the gateway at once. The gateway reads
    /// the request of every RPC whose request is one message whole before passing it on (to
    /// admit it and to bind its digest to the signed identity); bytes are reserved as they
    /// arrive and given back when the service answers. Beyond it: RESOURCE_EXHAUSTED with
    /// RetryInfo, ErrorInfo reason `REQUEST_BYTES` (metadata `scope` = `principal`).
    pub max_buffered_request_bytes_per_principal: usize,
    /// Bytes all request bodies may hold at the gateway at once (`scope` = `all` beyond it).
    pub max_buffered_request_bytes: usize,
}

impl GatewaySettings {
    pub fn default_deadline(&self) -> Duration {
        Duration::from_millis(self.default_deadline_ms)
    }
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            max_concurrent_calls: 512,
            min_concurrent_calls: 16,
            per_principal_rate: 2000,
            per_principal_burst: 4000,
            max_calls_per_principal: 64,
            max_streams_per_principal: 32,
            default_deadline_ms: 30_000,
            max_deadline_unary_ms: 60_000,
            max_deadline_client_streaming_ms: 300_000,
            max_deadline_server_streaming_ms: 3_600_000,
            request_read_timeout_ms: 10_000,
            write_timeout_ms: 20_000,
            handshake_timeout_ms: 10_000,
            http2_max_concurrent_streams: 128,
            upstream_connections: 4,
            read_grants: true,
            failed_auth_per_source_rate: 5,
            failed_auth_per_source_burst: 50,
            access_log_successes: 1,
            default_locale: Locale::ZhCn,
            max_message_bytes: 8 * 1024 * 1024,
            max_buffered_request_bytes_per_principal: 64 * 1024 * 1024,
            max_buffered_request_bytes: 256 * 1024 * 1024,
        }
    }
}

/// TLS for calls to upstreams (gateway -> services, scoring -> ingestion).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSettings {
    /// PEM CA that signed the upstreams' certificates.
    pub ca: PathBuf,
    /// The name every upstream's certificate carries; unset (the usual case): each upstream's
    /// certificate must carry the host name of its URL.
    pub domain: Option<String>,
    /// Client certificate and key, for upstreams that require mTLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}
