//! The gateway: the one front door. For every call it, in order,
//!
//! 1. answers health checks and reflection itself (no credential needed);
//! 2. finds the RPC in the descriptor table (UNIMPLEMENTED for unknown methods);
//! 3. discards any identity the caller sent and authenticates its API key (UNAUTHENTICATED);
//! 4. applies the caller's rate limit and the global limit on calls in flight, shedding the excess
//!    at once with RESOURCE_EXHAUSTED and RetryInfo;
//! 5. sets the deadline: the caller's `grpc-timeout`, or the default for calls that do not stream
//!    responses, and enforces it (DEADLINE_EXCEEDED) while passing it on;
//! 6. signs the principal for the service (`x-citycredit-identity`: its audience, the path, the
//!    principal's API key, and the request body of a unary call) and passes the trace on;
//! 7. forwards the raw HTTP/2 request to the service's upstream, in process or remote, streaming
//!    bodies through without decoding them;
//! 8. logs the call (principal, method, code, latency) and counts it.

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

use citycredit::auth::Principal;
use citycredit::auth::identity::HEADER as IDENTITY_HEADER;
use citycredit::status::{retry_after, with_info};
use citycredit_registry::KeyView;
use citycredit_registry::authn::{authenticate, is_open_path};

use crate::config::GatewaySettings;
use crate::internal_identity::EdgeSigner;
use crate::limits::Limits;
use crate::metrics::{Metrics, PrincipalLabels};
use crate::rpc_table::{RpcTable, format_grpc_timeout, parse_grpc_timeout, service_of};
use crate::telemetry;
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
}

impl Gateway {
    pub fn new(parts: GatewayParts) -> Gateway {
        let limits = Limits::new(&parts.settings);
        let inner = Arc::new(Inner {
            parts,
            limits,
            key_lookup: tokio::sync::Mutex::new(()),
        });
        // Idle principals' rate buckets are forgotten now and then.
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(inner) => inner.limits.forget_idle(),
                    None => break,
                }
            }
        });
        Gateway { inner }
    }
}

fn refuse(code: Code, message: impl Into<String>) -> http::Response<Body> {
    with_info(code, message, &[]).into_http()
}

/// The gRPC status code of a response whose headers carry it (errors, trailers-only answers);
/// "streamed" when it will come in the trailers.
fn code_of(resp: &http::Response<Body>) -> String {
    match resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        Some(code) => Code::from_bytes(code.as_bytes()).description().to_owned(),
        None => "streamed".to_owned(),
    }
}

impl Inner {
    async fn handle(self: Arc<Self>, req: http::Request<Body>) -> http::Response<Body> {
        let started = Instant::now();
        let path = req.uri().path().to_owned();
        if is_open_path(&path) {
            return self.forward(self.parts.open.clone(), req).await;
        }
        let span = tracing::info_span!("gateway", rpc = %path, principal = tracing::field::Empty);
        telemetry::continue_trace(&span, req.headers());
        let (response, principal) = self
            .admit_and_forward(req, &path, &span)
            .instrument(span.clone())
            .await;
        let elapsed = started.elapsed();
        let code = code_of(&response);
        let principal = principal.unwrap_or_else(|| "-".to_owned());
        self.parts.metrics.observe(&path, &code, elapsed);
        tracing::info!(
            target: "citycredit::access",
            parent: &span,
            principal,
            rpc = %path,
            code,
            latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "call"
        );
        response
    }

    /// Steps 2-7: the response, and the authenticated principal's id for the access log.
    async fn admit_and_forward(
        &self,
        mut req: http::Request<Body>,
        path: &str,
        span: &tracing::Span,
    ) -> (http::Response<Body>, Option<String>) {
        let Some(rpc) = self.parts.table.get(path) else {
            let unknown = refuse(Code::Unimplemented, format!("unknown method {path}"));
            return (unknown, None);
        };
        let Some(upstream) = service_of(path).and_then(|s| self.parts.routes.get(s)) else {
            let elsewhere = refuse(
                Code::Unimplemented,
                format!("{} is not served here", rpc.service),
            );
            return (elsewhere, None);
        };

        // Identity comes only from the API key.
        req.extensions_mut().remove::<Principal>();
        req.headers_mut().remove(IDENTITY_HEADER);
        let principal = match authenticate(&self.parts.keys, &req) {
            Ok(p) => p,
            Err(refusal) => {
                // Perhaps a key created a moment ago in another process: look again, once.
                self.refresh_keys().await;
                match authenticate(&self.parts.keys, &req) {
                    Ok(p) => p,
                    Err(_) => return (refusal.into_response(), None),
                }
            }
        };
        span.record("principal", principal.id.as_str());
        let response = self
            .forward_as(
                &principal,
                rpc.server_streaming,
                upstream.clone(),
                req,
                path,
                span,
            )
            .await;
        (response, Some(principal.id))
    }

    /// Steps 4-7 for an authenticated principal.
    async fn forward_as(
        &self,
        principal: &Principal,
        server_streaming: bool,
        upstream: Upstream,
        mut req: http::Request<Body>,
        path: &str,
        span: &tracing::Span,
    ) -> http::Response<Body> {
        req.extensions_mut().insert(principal.clone());
        if let Err(wait) = self.limits.check_rate(&principal.id) {
            self.parts.metrics.shed.inc();
            return retry_after(
                Code::ResourceExhausted,
                format!("rate limit for principal `{}` exceeded", principal.id),
                wait.max(Duration::from_millis(1)),
            )
            .into_http();
        }
        let Some(permit) = self.limits.admit() else {
            self.parts.metrics.shed.inc();
            return retry_after(
                Code::ResourceExhausted,
                "the platform is at capacity; retry shortly",
                Duration::from_millis(100),
            )
            .into_http();
        };

        // The deadline: the caller's, else the default unless responses stream (watches).
        let asked = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        // Answer a little before the caller's deadline (a tenth, at most 20 ms) so the caller hears
        // DEADLINE_EXCEEDED from the platform rather than giving up on its own.
        let deadline = asked
            .map(|d| {
                d.saturating_sub((d / 10).min(Duration::from_millis(20)))
                    .max(Duration::from_millis(1))
            })
            .or_else(|| (!server_streaming).then(|| self.parts.settings.default_deadline()));
        if let Some(d) = deadline
            && let Ok(v) = http::HeaderValue::from_str(&format_grpc_timeout(d))
        {
            req.headers_mut().insert("grpc-timeout", v);
        }

        // The identity for the upstream's audience, bound to the request body.
        let now = citycredit::store::now_micros();
        req = match self
            .parts
            .signer
            .sign_request(principal, path, req, now)
            .await
        {
            Ok(signed) => signed,
            Err(refusal) => return refusal,
        };
        telemetry::pass_on_trace(span, req.headers_mut());
        if path.starts_with("/citycredit.v1.MetricSubmissionService/Submit") {
            self.parts
                .metrics
                .pushes
                .get_or_create(&PrincipalLabels {
                    principal: principal.id.clone(),
                })
                .inc();
        }

        let call = self.forward(upstream, req);
        let response = match deadline {
            Some(d) => match tokio::time::timeout(d, call).await {
                Ok(r) => r,
                Err(_) => refuse(
                    Code::DeadlineExceeded,
                    format!("deadline of {} ms exceeded", d.as_millis()),
                ),
            },
            None => call.await,
        };
        drop(permit);
        response
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
