//! The front every service sits behind, in process or alone. It checks identity once for every
//! RPC of the service, so no handler can forget to:
//!
//! 1. health and reflection pass (they need no identity);
//! 2. every other call must carry an internal identity (`x-citycredit-identity`) that verifies
//!    with a key this service trusts, names this service as its audience, is inside its window
//!    and was not seen before here: otherwise UNAUTHENTICATED;
//! 3. an identity from the gateway must name a principal whose API key (its credential) is
//!    active in this process's registry snapshot (reloaded once when it is not: a key made a
//!    moment ago elsewhere), so a revoked, expired or unknown key is refused here too;
//! 4. for an RPC whose request is one message, the body is buffered and must match the digest
//!    the identity was signed with, unless the RPC only reads and the identity is a read grant
//!    (`v3`, bound to the principal and the RPC, not to one request); a client stream must be
//!    signed as one;
//! 5. a call that changes state claims its nonce in the store, so a captured identity is
//!    refused on every other replica too (UNAVAILABLE with RetryInfo while the store is down);
//! 6. the verified principal goes into the request's extensions for the handler's
//!    authorization, and the caller's trace (W3C `traceparent`) is continued in a span.
//!
//! Identity from anywhere else (an extension, an unverifiable header) is discarded.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Code;
use tower::Service;
use tracing::Instrument;

use citycredit::auth::identity::{BodyBinding, IdentityVerifier, Issuer, Verified};
use citycredit::status::{Reason, retry_after_reason, with_reason};
use citycredit_core::auth::{CredentialCheck, Principal};
use citycredit_registry::Registry;
use citycredit_registry::authn::is_open_path;

use crate::internal_identity::{SharedNonces, body_wait, is_read_only, read_body};
use crate::rpc_table::RpcTable;
use crate::trace_context;
use crate::upstream::Body;

/// What a front checks identities with.
pub struct FrontParts {
    verifier: IdentityVerifier,
    /// The process's registry snapshot (credentials), reloaded on a miss.
    registry: Arc<Registry>,
    /// The replay guard shared by replicas; None when everything runs in one process (the keys
    /// never leave it, so no identity can be captured).
    nonces: Option<Arc<SharedNonces>>,
    table: RpcTable,
    max_message: usize,
    reload: tokio::sync::Mutex<()>,
    refusals: RefusalLog,
}

impl std::fmt::Debug for FrontParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontParts")
            .field("verifier", &self.verifier)
            .field("shared_nonces", &self.nonces.is_some())
            .finish_non_exhaustive()
    }
}

impl FrontParts {
    pub fn new(
        verifier: IdentityVerifier,
        registry: Arc<Registry>,
        nonces: Option<Arc<SharedNonces>>,
        max_message: usize,
    ) -> Arc<FrontParts> {
        Arc::new(FrontParts {
            verifier,
            registry,
            nonces,
            table: RpcTable::citycredit(),
            max_message,
            reload: tokio::sync::Mutex::new(()),
            refusals: RefusalLog::default(),
        })
    }

    /// Steps 2-5: the request to pass on with its principal, or the refusal.
    async fn admit(
        &self,
        req: http::Request<Body>,
        path: &str,
        header: Option<http::HeaderValue>,
    ) -> Result<(http::Request<Body>, Principal), http::Response<Body>> {
        let unauthenticated = |m: &str| {
            with_reason(Code::Unauthenticated, Reason::CredentialRefused, m, &[]).into_http()
        };
        let Some(header) = header else {
            self.refusals.note(path, "no internal identity");
            return Err(unauthenticated(
                "no internal identity: services answer only calls that come through the gateway",
            ));
        };
        let now = citycredit_store::now_micros();
        let verified = header
            .to_str()
            .map_err(|_| "internal identity is not text".to_owned())
            .and_then(|v| {
                self.verifier
                    .verify(v, path, now)
                    .map_err(|e| e.to_string())
            });
        let Verified {
            issuer,
            principal,
            issued_micros,
            nonce,
            body: binding,
        } = match verified {
            Ok(v) => v,
            Err(why) => {
                self.refusals.note(path, &why);
                return Err(unauthenticated("internal identity refused"));
            }
        };
        if issuer == Issuer::Gateway && !self.credential_stands(&principal, now).await {
            self.refusals.note(
                path,
                "the identity's api key is unknown, revoked or expired here",
            );
            return Err(unauthenticated(
                "the caller's api key is unknown, revoked or expired",
            ));
        }

        let client_stream = self.table.get(path).is_some_and(|r| r.client_streaming);
        let (parts, body) = req.into_parts();
        let body = match (client_stream, binding) {
            (true, BodyBinding::Stream) => body,
            // Only for an RPC that reads (the verifier refuses any other): buffered all the
            // same, so a call's request is bounded in size and time in one place.
            (false, BodyBinding::Unbound) if is_read_only(path) => {
                let bytes = read_body(body, self.max_message, body_wait(&parts.headers)).await?;
                Body::new(http_body_util::Full::new(bytes))
            }
            (false, BodyBinding::Digest(want)) => {
                let bytes = read_body(body, self.max_message, body_wait(&parts.headers)).await?;
                if BodyBinding::of(&bytes) != BodyBinding::Digest(want) {
                    self.refusals.note(
                        path,
                        "the request body is not the one the identity was signed for",
                    );
                    return Err(unauthenticated(
                        "internal identity refused: it was signed for another request body",
                    ));
                }
                Body::new(http_body_util::Full::new(bytes))
            }
            _ => {
                self.refusals.note(
                    path,
                    "the identity binds the body the wrong way for this RPC",
                );
                return Err(unauthenticated("internal identity refused"));
            }
        };

        if let Some(nonces) = &self.nonces
            && !is_read_only(path)
        {
            match nonces.claim(&nonce, issued_micros).await {
                Ok(true) => {}
                Ok(false) => {
                    self.refusals
                        .note(path, "internal identity replayed (seen by another replica)");
                    return Err(unauthenticated("internal identity refused"));
                }
                Err(e) => {
                    tracing::warn!(error = %e, rpc = %path, "identity nonce check failed");
                    return Err(retry_after_reason(
                        Code::Unavailable,
                        Reason::StorageUnavailable,
                        "the store is unavailable; retry shortly",
                        Duration::from_millis(500),
                        &[],
                    )
                    .into_http());
                }
            }
        }
        Ok((http::Request::from_parts(parts, body), principal))
    }

    /// True when `principal`'s key is active in this process's registry snapshot, reloading the
    /// snapshot once (one reload at a time) when it is not.
    async fn credential_stands(&self, principal: &Principal, now: i64) -> bool {
        // The gateway signs only principals that came with an API key.
        if principal.credential.is_none() {
            return false;
        }
        if self.registry.still_valid(principal, now) {
            return true;
        }
        let _one_at_a_time = self.reload.lock().await;
        if self.registry.still_valid(principal, now) {
            return true;
        }
        if let Err(e) = self.registry.refresh_if_changed().await {
            tracing::warn!(error = %e, "registry reload for an identity's credential failed");
        }
        self.registry.still_valid(principal, now)
    }
}

/// Refusals are logged as a summary at most once a second (the count since the last line and
/// the latest reason), so a flood of bad calls cannot flood the log.
#[derive(Debug, Default)]
struct RefusalLog {
    last_micros: AtomicI64,
    since: AtomicU64,
}

impl RefusalLog {
    fn note(&self, path: &str, why: &str) {
        let count = self.since.fetch_add(1, Ordering::Relaxed) + 1;
        let now = citycredit_store::now_micros();
        let last = self.last_micros.load(Ordering::Relaxed);
        if now - last >= 1_000_000
            && self
                .last_micros
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.since.store(0, Ordering::Relaxed);
            tracing::warn!(
                refused = count,
                rpc = %path,
                latest = %why,
                "calls without a valid internal identity refused"
            );
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct ServiceFront<S> {
    inner: S,
    parts: Arc<FrontParts>,
}

impl<S> ServiceFront<S> {
    pub fn new(inner: S, parts: Arc<FrontParts>) -> Self {
        ServiceFront { inner, parts }
    }
}

impl<S, B> Service<http::Request<B>> for ServiceFront<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let parts = Arc::clone(&self.parts);
        let mut req = req.map(Body::new);
        let path = req.uri().path().to_owned();
        let span = tracing::info_span!("service", rpc = %path, principal = tracing::field::Empty);
        trace_context::continue_trace(&span, req.headers());

        req.extensions_mut().remove::<Principal>();
        let header = req.headers_mut().remove(crate::headers::IDENTITY);
        if is_open_path(&path) {
            return Box::pin(inner.call(req).instrument(span));
        }
        Box::pin(async move {
            match parts.admit(req, &path, header).await {
                Ok((mut req, principal)) => {
                    span.record("principal", principal.id.as_str());
                    req.extensions_mut().insert(principal);
                    inner.call(req).instrument(span).await
                }
                Err(refusal) => Ok(refusal),
            }
        })
    }
}
