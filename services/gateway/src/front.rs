//! The front every service sits behind, in process or alone: it verifies the gateway's signed
//! identity (a forged or replayed one is refused; identity from anywhere else is discarded) and
//! continues the caller's trace (W3C `traceparent`) in a span around the call.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Code;
use tower::Service;
use tracing::Instrument;

use citycredit::auth::Principal;
use citycredit::auth::identity::{HEADER, IdentitySigner};
use citycredit::status::with_info;
use citycredit_registry::authn::is_open_path;

use crate::telemetry;

/// See the module documentation.
#[derive(Clone)]
pub struct ServiceFront<S> {
    inner: S,
    signer: Arc<IdentitySigner>,
}

impl<S> ServiceFront<S> {
    pub fn new(inner: S, signer: Arc<IdentitySigner>) -> Self {
        ServiceFront { inner, signer }
    }
}

impl<S, B> Service<http::Request<B>> for ServiceFront<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path().to_owned();
        let span = tracing::info_span!("service", rpc = %path, principal = tracing::field::Empty);
        telemetry::continue_trace(&span, req.headers());

        req.extensions_mut().remove::<Principal>();
        let header = req.headers_mut().remove(HEADER);
        if let Some(value) = header {
            let now = citycredit::store::now_micros();
            let verified = value.to_str().map_err(|_| ()).and_then(|v| {
                self.signer.verify(v, &path, now).map_err(|e| {
                    tracing::warn!(error = %e, rpc = %path, "internal identity refused");
                })
            });
            match verified {
                Ok(principal) => {
                    span.record("principal", principal.id.as_str());
                    req.extensions_mut().insert(principal);
                }
                Err(()) => {
                    let refusal =
                        with_info(Code::Unauthenticated, "internal identity refused", &[])
                            .into_http();
                    return Box::pin(async move { Ok(refusal) });
                }
            }
        } else if !is_open_path(&path) {
            tracing::debug!(rpc = %path, "call without internal identity");
        }
        Box::pin(inner.call(req).instrument(span))
    }
}
