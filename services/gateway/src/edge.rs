//! The gateway: the one front door. For every call it, in order,
//!
//! 1. answers health checks and reflection itself (no credential needed);
//! 2. finds the RPC in the descriptor table (UNIMPLEMENTED for unknown methods, all counted under
//!    one `unknown` label);
//! 3. discards any identity the caller sent and authenticates its API key (UNAUTHENTICATED);
//!    failed attempts are limited per source address and logged as a periodic summary;
//! 4. admits the call: the caller's rate limit, its budget of calls or streams in flight, the
//!    global cap; a request that is one message is read whole (within the read timeout, its
//!    bytes reserved in the caller's and the gateway's byte budgets as they arrive, hashed as
//!    they arrive for step 6); a unary call then takes a place in the adaptive limit, of which
//!    one principal may hold half; the excess is shed at once with RESOURCE_EXHAUSTED and
//!    RetryInfo;
//! 5. sets the deadline: the caller's `grpc-timeout` (or the default), capped per kind of call,
//!    enforced to the end of the response (DEADLINE_EXCEEDED) and passed on;
//! 6. signs the principal for the service (`x-citycredit-identity`: its audience, the path, the
//!    principal's API key, and the digest of a request that is one message; for an RPC that
//!    only reads, the principal's read grant for that RPC, reused for 10 s) and passes the
//!    trace on;
//! 7. forwards the raw HTTP/2 request to the service's upstream, in process or remote, streaming
//!    bodies through without decoding them (a request stream idle for the read timeout ends; a
//!    request read whole goes on as the bytes that were read);
//! 8. when the service answers, gives back its place in the adaptive limit and the request's
//!    bytes; when the response has been sent (or dropped), frees the call's other places, logs
//!    it (principal, method, code, latency) and counts it, with the code read from the
//!    trailers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::Code;
use tower::{Service, ServiceExt};
use tracing::Instrument;

use citycredit::auth::identity::BodyBinding;
use citycredit::localize::{Locale, localize};
use citycredit::status::{Reason, clip, retry_after_reason, with_reason};
use citycredit_core::auth::Principal;
use citycredit_registry::KeyView;
use citycredit_registry::authn::{authenticate, is_open_path};

use crate::body::{CallBody, OnEnd, ReadTimeoutBody, Stall, code_in, stalled_status};
use crate::direct::WholeRequest;
use crate::internal_identity::EdgeSigner;
use crate::limits::{
    CallKind, CallPermit, FAILURE_SUMMARY_EVERY, HeldBytes, Limits, Refusal, ServePermit,
};
use crate::metrics::{Metrics, UNKNOWN_METHOD, code_name};
use crate::rpc_table::{RpcInfo, RpcTable, format_grpc_timeout, parse_grpc_timeout};
use crate::settings::GatewaySettings;
use crate::trace_context;
use crate::transport::ConnInfo;
use crate::upstream::{Body, Upstream};

/// Everything the gateway needs.
pub struct GatewayParts {
    pub table: RpcTable,
    /// gRPC service name -> upstream.
    pub routes: HashMap<String, Upstream>,
    /// The gateway's own health and reflection.
    pub open: Upstream,
    pub keys: KeyView,
    /// Reloads the key cache from the store when an unknown key arrives (a key just created in
    /// another process), at most every `KEY_RELOAD_EVERY`.
    pub registry: Option<Arc<citycredit_registry::Registry>>,
    pub signer: Arc<EdgeSigner>,
    pub settings: GatewaySettings,
    pub metrics: Arc<Metrics>,
}

/// The gateway as a tower service over raw HTTP requests.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    parts: GatewayParts,
    limits: Limits,
    /// One registry look-up at a time for unknown keys (they cost a query each).
    key_lookup: tokio::sync::Mutex<()>,
    unknown: Arc<str>,
    access_log: Arc<AccessLog>,
    /// The `grpc-timeout` passed on for a unary call whose caller sent none (most calls), made
    /// once: the deadline it stands for and its header value.
    default_timeout: (Duration, Option<http::HeaderValue>),
}

/// Which ended calls get an access-log line: every call that did not end OK, and one in
/// `successes` of those that did (`access_log_successes`; 0: none of them).
struct AccessLog {
    successes: u64,
    ok_calls: std::sync::atomic::AtomicU64,
}

impl AccessLog {
    fn logs(&self, code: Code) -> bool {
        if code != Code::Ok {
            return true;
        }
        if self.successes <= 1 {
            return self.successes == 1;
        }
        let n = self
            .ok_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        n.is_multiple_of(self.successes)
    }
}

/// Longest part of an unknown path that the access log, the span and the answer show.
const LOGGED_PATH_CHARS: usize = 128;

impl Gateway {
    pub fn new(parts: GatewayParts) -> Gateway {
        let limits = Limits::new(&parts.settings);
        let access_log = Arc::new(AccessLog {
            successes: u64::from(parts.settings.access_log_successes),
            ok_calls: std::sync::atomic::AtomicU64::new(0),
        });
        let default_deadline = parts
            .settings
            .default_deadline()
            .min(Duration::from_millis(parts.settings.max_deadline_unary_ms));
        let default_timeout = (
            default_deadline,
            http::HeaderValue::from_str(&format_grpc_timeout(default_deadline)).ok(),
        );
        let inner = Arc::new(Inner {
            parts,
            limits,
            access_log,
            default_timeout,
            key_lookup: tokio::sync::Mutex::new(()),
            unknown: Arc::from(UNKNOWN_METHOD),
        });
        // Every second the adaptive limit's gauge, every 10 s the summary of failed
        // authentications, every minute idle principals' and sources' buckets are forgotten.
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let summary_every = FAILURE_SUMMARY_EVERY.as_secs().max(1);
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                n += 1;
                let Some(inner) = weak.upgrade() else { break };
                inner
                    .parts
                    .metrics
                    .adaptive_limit
                    .set(i64::try_from(inner.limits.adaptive_limit()).unwrap_or(i64::MAX));
                if n.is_multiple_of(summary_every) {
                    inner.limits.log_failed_auth();
                }
                if n.is_multiple_of(60) {
                    inner.limits.forget_idle();
                }
            }
        });
        Gateway { inner }
    }
}

/// A refusal of the gateway's own, with its specific reason (and through it, its code).
fn refuse(reason: Reason, message: impl Into<String>) -> http::Response<Body> {
    with_reason(reason.code(), reason, message, &[]).into_http()
}

/// What the gateway holds for a call until its response ends.
#[derive(Default)]
struct Call {
    principal: Option<Arc<str>>,
    permit: Option<CallPermit>,
    serve: Option<ServePermit>,
    /// The request body's bytes in the byte budget (a request that is one message).
    held: Option<HeldBytes>,
    /// When the call must end, and the duration it was given.
    deadline: Option<(tokio::time::Instant, Duration)>,
}

impl Inner {
    async fn handle(self: Arc<Self>, mut req: http::Request<Body>) -> http::Response<Body> {
        let path = req.uri().path();
        if is_open_path(path) {
            return self.forward(self.parts.open.clone(), req).await;
        }
        let started = Instant::now();
        let rpc = self.parts.table.get_shared(path);
        let method = rpc
            .as_ref()
            .map_or_else(|| Arc::clone(&self.unknown), |r| Arc::clone(&r.path));
        let logged: Arc<str> = match &rpc {
            Some(r) => Arc::clone(&r.path),
            None => Arc::from(clip(path, LOGGED_PATH_CHARS)),
        };
        let span = tracing::info_span!("gateway", rpc = %logged, principal = tracing::field::Empty);
        trace_context::continue_trace(&span, req.headers());
        let conn = req.extensions().get::<ConnInfo>().cloned();
        let locale = Locale::negotiate(
            req.headers()
                .get(http::header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok()),
            self.parts.settings.default_locale,
        );
        // The services write gaps and steps in the language chosen here, default included.
        req.headers_mut().insert(
            http::header::ACCEPT_LANGUAGE,
            http::HeaderValue::from_static(locale.tag()),
        );
        let mut call = Call::default();
        let response = self
            .admit_and_forward(req, rpc.as_deref(), conn.as_ref(), &mut call, &span)
            .instrument(span.clone())
            .await;

        let (mut parts, body) = response.into_parts();
        let header_code = code_in(&parts.headers);
        if header_code.is_some_and(|c| c != Code::Ok) {
            // A trailers-only answer: the status is in the headers.
            localize(&mut parts.headers, locale);
        }
        let owed = match &conn {
            Some(c) if !http_body::Body::is_end_stream(&body) => Some(c.watch.watch()),
            _ => None,
        };
        let metrics = Arc::clone(&self.parts.metrics);
        let access_log = Arc::clone(&self.access_log);
        let Call {
            principal,
            permit,
            serve,
            held,
            deadline,
        } = call;
        // A unary call's answer is whole when its headers come (the service's handler is done):
        // the services' capacity is free again, whatever the caller does with the body. A
        // caller that never reads it keeps only its own budget (`permit`, freed at the end).
        if let Some(serve) = serve {
            serve.complete(matches!(
                header_code,
                Some(Code::DeadlineExceeded | Code::Unavailable)
            ));
        }
        // The service has the request (in process it decoded it; apart, it was sent before the
        // answer came): its bytes are no longer the gateway's to hold.
        drop(held);
        let on_end: OnEnd = Box::new(move |code: Code| {
            drop(permit);
            let elapsed = started.elapsed();
            metrics.observe(&method, code, elapsed);
            if !access_log.logs(code) {
                return;
            }
            tracing::info!(
                target: "citycredit::access",
                parent: &span,
                principal = principal.as_deref().unwrap_or("-"),
                rpc = %logged,
                code = code_name(code),
                latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                "call"
            );
        });
        let body = CallBody::new(body, header_code, deadline, owed, on_end).localized(locale);
        http::Response::from_parts(parts, Body::new(body))
    }

    /// Steps 2-7.
    async fn admit_and_forward(
        &self,
        mut req: http::Request<Body>,
        rpc: Option<&RpcInfo>,
        conn: Option<&ConnInfo>,
        call: &mut Call,
        span: &tracing::Span,
    ) -> http::Response<Body> {
        let Some(rpc) = rpc else {
            return refuse(
                Reason::UnknownMethod,
                format!(
                    "unknown method {}",
                    clip(req.uri().path(), LOGGED_PATH_CHARS)
                ),
            );
        };
        let Some(upstream) = self.parts.routes.get(&rpc.service) else {
            return refuse(
                Reason::UnknownMethod,
                format!("{} is not served here", rpc.service),
            );
        };

        // Identity comes only from the API key.
        req.extensions_mut().remove::<Principal>();
        req.headers_mut().remove(crate::headers::IDENTITY);
        let principal = match authenticate(&self.parts.keys, &req) {
            Ok(p) => p,
            Err(refusal) => {
                // Counted per source; beyond the source's rate, refused without a look-up.
                let source = conn.and_then(|c| c.remote).map(|a| a.ip());
                let prefix = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(|k| citycredit_registry::keys::prefix_of(k.trim()));
                if let Err(wait) = self.limits.failed_auth(source, prefix) {
                    self.parts.metrics.shed("failed_auth");
                    return retry_after_reason(
                        Code::ResourceExhausted,
                        Reason::AuthFailuresLimited,
                        "too many failed authentications from this address; retry later",
                        wait,
                        &[],
                    )
                    .into_http();
                }
                // Perhaps a key created a moment ago in another process: look again, once.
                self.refresh_keys().await;
                match authenticate(&self.parts.keys, &req) {
                    Ok(p) => p,
                    Err(_) => return refusal.into_response(),
                }
            }
        };
        span.record("principal", principal.id.as_str());
        let id: Arc<str> = Arc::from(principal.id.as_str());
        call.principal = Some(Arc::clone(&id));
        self.forward_as(&principal, &id, rpc, upstream.clone(), req, call, span)
            .await
    }

    /// Refuses a call the limits did not admit.
    fn refused(&self, why: Refusal, principal: &str) -> http::Response<Body> {
        let (label, reason, message, wait, metadata) = match why {
            Refusal::Bytes { scope, limit } => {
                self.parts.metrics.shed("request_bytes");
                let (message, setting) = match scope {
                    crate::limits::ByteScope::Principal => (
                        format!(
                            "principal `{principal}` already holds {limit} bytes of request \
                             bodies at the gateway; retry when its calls are answered"
                        ),
                        "max_buffered_request_bytes_per_principal",
                    ),
                    crate::limits::ByteScope::All => (
                        format!("the gateway holds {limit} bytes of request bodies; retry shortly"),
                        "max_buffered_request_bytes",
                    ),
                };
                let limit = limit.to_string();
                return retry_after_reason(
                    Code::ResourceExhausted,
                    Reason::RequestBytes,
                    message,
                    Duration::from_millis(100),
                    &[
                        ("scope", scope.as_str()),
                        ("limit", &limit),
                        ("setting", setting),
                    ],
                )
                .into_http();
            }
            Refusal::PrincipalBudget { kind, limit } => {
                let what = match kind {
                    CallKind::Unary => "calls",
                    CallKind::Stream => "streams",
                };
                (
                    "principal_budget",
                    Reason::PrincipalBudget,
                    format!(
                        "principal `{principal}` already has {limit} {what} open \
                         (max_{what}_per_principal); wait for one to finish"
                    ),
                    Duration::from_millis(100),
                    vec![("what", what.to_owned()), ("limit", limit.to_string())],
                )
            }
            Refusal::PrincipalShare { limit } => (
                "principal_share",
                Reason::PrincipalShare,
                format!(
                    "principal `{principal}` already has {limit} calls being served, half of \
                     what the platform takes at once now; retry shortly"
                ),
                Duration::from_millis(50),
                vec![("limit", limit.to_string())],
            ),
            Refusal::Capacity { retry_after } => (
                "capacity",
                Reason::Overloaded,
                "the platform is at capacity; retry shortly".to_owned(),
                retry_after,
                Vec::new(),
            ),
        };
        self.parts.metrics.shed(label);
        let metadata: Vec<(&str, &str)> = metadata.iter().map(|(k, v)| (*k, v.as_str())).collect();
        retry_after_reason(Code::ResourceExhausted, reason, message, wait, &metadata).into_http()
    }

    /// The deadline a call gets: the caller's (a little shorter, so that the caller hears
    /// DEADLINE_EXCEEDED from the platform rather than giving up on its own), else the default
    /// (for a watch, its cap), never more than the cap of its kind.
    fn deadline_for(&self, rpc: &RpcInfo, asked: Option<Duration>) -> Duration {
        let s = &self.parts.settings;
        let cap = Duration::from_millis(if rpc.server_streaming {
            s.max_deadline_server_streaming_ms
        } else if rpc.client_streaming {
            s.max_deadline_client_streaming_ms
        } else {
            s.max_deadline_unary_ms
        });
        let wanted = match asked {
            // A tenth, at most 20 ms, before the caller's.
            Some(d) => d
                .saturating_sub((d / 10).min(Duration::from_millis(20)))
                .max(Duration::from_millis(1)),
            None if rpc.server_streaming => cap,
            None => s.default_deadline(),
        };
        wanted.min(cap)
    }

    /// Steps 4-7 for an authenticated principal.
    #[allow(clippy::too_many_arguments, reason = "one call's parts, passed once")]
    async fn forward_as(
        &self,
        principal: &Principal,
        id: &Arc<str>,
        rpc: &RpcInfo,
        upstream: Upstream,
        mut req: http::Request<Body>,
        call: &mut Call,
        span: &tracing::Span,
    ) -> http::Response<Body> {
        let path: &str = &rpc.path;
        if let Err(wait) = self.limits.check_rate(&principal.id) {
            self.parts.metrics.shed("rate");
            return retry_after_reason(
                Code::ResourceExhausted,
                Reason::RateLimited,
                format!("rate limit for principal `{}` exceeded", principal.id),
                wait.max(Duration::from_millis(1)),
                &[],
            )
            .into_http();
        }
        let kind = if rpc.streams() {
            CallKind::Stream
        } else {
            CallKind::Unary
        };
        match self.limits.admit(id, kind) {
            Ok(permit) => call.permit = Some(permit),
            Err(why) => return self.refused(why, &principal.id),
        }

        let asked = req
            .headers()
            .get(crate::headers::GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let given = self.deadline_for(rpc, asked);
        let deadline = tokio::time::Instant::now() + given;
        call.deadline = Some((deadline, given));
        let timeout = match &self.default_timeout {
            (d, value) if *d == given => value.clone(),
            _ => http::HeaderValue::from_str(&format_grpc_timeout(given)).ok(),
        };
        if let Some(v) = timeout {
            req.headers_mut().insert(crate::headers::GRPC_TIMEOUT, v);
        }

        let read_timeout = Duration::from_millis(self.parts.settings.request_read_timeout_ms);
        let stall = Arc::new(Stall::default());
        let binding = if rpc.client_streaming {
            let body = std::mem::replace(req.body_mut(), Body::empty());
            *req.body_mut() =
                Body::new(ReadTimeoutBody::new(body, read_timeout, Arc::clone(&stall)));
            BodyBinding::Stream
        } else {
            // A request that is one message is read whole before the call takes a place that
            // the services' capacity bounds (a caller that sends headers and then nothing holds
            // only its own budget), within the byte budget, and hashed as it arrives for the
            // signed identity: one buffer, one pass, then passed on as it is.
            let limit = self.parts.settings.max_message_bytes.saturating_add(5);
            let body = std::mem::replace(req.body_mut(), Body::empty());
            let held = call.held.insert(self.limits.hold_bytes(id));
            let whole =
                match tokio::time::timeout(read_timeout.min(given), read_whole(body, limit, held))
                    .await
                {
                    Ok(Ok(whole)) => whole,
                    Ok(Err(ReadError::TooLarge)) => {
                        return refuse(
                            Reason::MessageTooLarge,
                            format!("the request is larger than {limit} bytes"),
                        );
                    }
                    Ok(Err(ReadError::Budget(why))) => return self.refused(why, &principal.id),
                    Ok(Err(ReadError::Broken(status))) => {
                        return refuse(
                            Reason::RequestStreamBroken,
                            format!("the request stream broke: {}", status.message()),
                        );
                    }
                    Err(_) if read_timeout < given => {
                        return stalled_status(read_timeout).into_http();
                    }
                    Err(_) => {
                        return refuse(
                            Reason::TimedOut,
                            format!("deadline of {} ms exceeded", given.as_millis()),
                        );
                    }
                };
            // A remote upstream sends these bytes as they are (`direct.rs`); one in process
            // reads the body, which holds the same bytes.
            req.extensions_mut()
                .insert(WholeRequest(whole.bytes.clone()));
            *req.body_mut() = Body::new(http_body_util::Full::new(whole.bytes));
            if kind == CallKind::Unary {
                match self.limits.serve(id) {
                    Ok(permit) => call.serve = Some(permit),
                    Err(why) => return self.refused(why, &principal.id),
                }
            }
            BodyBinding::Digest(whole.digest)
        };

        // The identity for the upstream's audience, bound to the request body.
        let now = citycredit_store::now_micros();
        if let Err(why) = self
            .parts
            .signer
            .sign(principal, path, binding, req.headers_mut(), now)
        {
            tracing::error!(rpc = path, why, "cannot sign the caller's identity");
            return refuse(Reason::InternalFault, "internal error");
        }
        trace_context::pass_on_trace(span, req.headers_mut());
        if path.starts_with("/citycredit.v1.MetricSubmissionService/Submit") {
            self.parts.metrics.push(id);
        }

        tokio::select! {
            biased;
            () = stall.wait() => stalled_status(read_timeout).into_http(),
            // An in-process service may answer in the same poll in which the stream stalled:
            // the caller is told why, not what the service made of the broken stream.
            r = self.forward(upstream, req) => if stall.fired() {
                stalled_status(read_timeout).into_http()
            } else {
                r
            },
            () = tokio::time::sleep_until(deadline) => refuse(
                Reason::TimedOut,
                format!("deadline of {} ms exceeded", given.as_millis()),
            ),
        }
    }

    /// Reloads the key cache if the registry changed since it was loaded (one check at a time;
    /// calls waiting meanwhile see the result of the check in progress).
    async fn refresh_keys(&self) {
        let Some(registry) = &self.parts.registry else {
            return;
        };
        let _one_at_a_time = self.key_lookup.lock().await;
        if let Err(e) = registry.refresh_if_changed().await {
            tracing::warn!(error = %e, "key cache refresh failed");
        }
    }

    async fn forward(&self, upstream: Upstream, req: http::Request<Body>) -> http::Response<Body> {
        match upstream.oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}

/// Why a request that is one message could not be read whole.
enum ReadError {
    TooLarge,
    /// Its bytes would take the caller or the gateway past the byte budget.
    Budget(Refusal),
    Broken(tonic::Status),
}

/// A request body read whole, and the SHA-256 of its bytes.
struct WholeBody {
    bytes: bytes::Bytes,
    digest: [u8; 32],
}

/// The buffer of a body being read: nothing yet, its first frame as it came (a small request
/// is one frame: no copy), or one buffer the frames are copied into.
enum Buffer {
    Empty,
    One(bytes::Bytes),
    Many(Vec<u8>),
}

/// The capacity to give a buffer that must hold `needed` bytes and holds `have` (its capacity
/// now) of a body whose first bytes are `prefix`: half as much again as it holds (so a body
/// of n bytes is copied about three times n in all), and no more than the gRPC message's
/// declared length, so an honest body ends in a buffer of exactly its size and a body that
/// announces a large message and sends it slowly holds at most half as much again as it sent.
fn capacity_for(needed: usize, have: usize, prefix: &[u8], limit: usize) -> usize {
    let grown = needed.max(have.saturating_add(have / 2));
    let declared = match prefix.get(..5) {
        Some(&[_, a, b, c, d]) => {
            usize::try_from(u32::from_be_bytes([a, b, c, d])).map_or(limit, |n| n + 5)
        }
        _ => limit,
    };
    grown.min(declared.max(needed)).min(limit).max(needed)
}

/// The whole body, at most `limit` bytes, its bytes reserved in `held` as they arrive (for a
/// buffer, its capacity: what the process really holds).
async fn read_whole(
    mut body: Body,
    limit: usize,
    held: &mut HeldBytes,
) -> Result<WholeBody, ReadError> {
    use http_body_util::BodyExt;
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut buffer = Buffer::Empty;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Broken)?;
        let Ok(data) = frame.into_data() else {
            // Request trailers mean nothing to gRPC; they end the body.
            break;
        };
        if data.is_empty() {
            continue;
        }
        len = len.saturating_add(data.len());
        if len > limit {
            return Err(ReadError::TooLarge);
        }
        hasher.update(&data);
        buffer = match buffer {
            Buffer::Empty => {
                held.grow_to(len).map_err(ReadError::Budget)?;
                Buffer::One(data)
            }
            Buffer::One(first) => {
                let capacity = capacity_for(len, first.len(), &first, limit);
                held.grow_to(capacity).map_err(ReadError::Budget)?;
                let mut all = Vec::with_capacity(capacity);
                all.extend_from_slice(&first);
                all.extend_from_slice(&data);
                Buffer::Many(all)
            }
            Buffer::Many(mut all) => {
                if len > all.capacity() {
                    let capacity = capacity_for(len, all.capacity(), &all, limit);
                    held.grow_to(capacity).map_err(ReadError::Budget)?;
                    all.reserve_exact(capacity - all.len());
                }
                all.extend_from_slice(&data);
                Buffer::Many(all)
            }
        };
    }
    let bytes = match buffer {
        Buffer::Empty => bytes::Bytes::new(),
        Buffer::One(first) => first,
        Buffer::Many(all) => bytes::Bytes::from(all),
    };
    Ok(WholeBody {
        bytes,
        digest: hasher.finalize().into(),
    })
}

impl<B> Service<http::Request<B>> for Gateway
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        let req = req.map(Body::new);
        Box::pin(async move { Ok(inner.handle(req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_grows_by_half_and_never_past_the_declared_message() {
        let header = |n: u32| {
            let mut h = vec![0u8];
            h.extend(n.to_be_bytes());
            h
        };
        let limit = 8 * 1024 * 1024 + 5;
        // A 1 MiB message arriving in 16 KiB frames: the buffer grows by half up to it, and
        // ends exactly at its size.
        let declared = header(1024 * 1024);
        assert_eq!(capacity_for(32_768, 16_384, &declared, limit), 32_768);
        assert_eq!(capacity_for(40_000, 32_768, &declared, limit), 49_152);
        assert_eq!(
            capacity_for(1_000_000, 900_000, &declared, limit),
            1024 * 1024 + 5
        );
        // A body that announces 8 MiB and has sent 32 KiB holds 48 KiB at most.
        let big = header(8 * 1024 * 1024);
        assert_eq!(capacity_for(32_768, 32_000, &big, limit), 48_000);
        // More bytes than declared (a broken or hostile frame): what is needed, within the limit.
        assert_eq!(capacity_for(2_000, 1_000, &header(10), limit), 2_000);
        assert_eq!(capacity_for(limit, limit - 1, &big, limit), limit);
    }
}
