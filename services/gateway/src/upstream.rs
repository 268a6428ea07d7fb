//! Upstreams: where the gateway sends a call, by gRPC service name. An upstream is either a
//! service in this process or a remote endpoint; both are the same boxed tower service over raw
//! HTTP/2 requests, so the gateway forwards bodies as they stream, without decoding messages.
//!
//! A remote upstream is several HTTP/2 connections (`gateway.upstream_connections`): one
//! connection is driven by one task, whose frame processing caps what one connection carries
//! at a fraction of what the gateway's cores can forward. Each call goes to the connection with
//! the fewest calls waiting for their response, ties taken in turn, so even serial calls use
//! every connection. On a plaintext upstream a call whose request the edge read whole goes over
//! that connection's [`Direct`] HTTP/2 connection (`direct.rs`: no task hand-offs per call);
//! client streams, and every call to a TLS upstream, over its tonic channel.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tower::Service;
use tower::util::BoxCloneSyncService;

use citycredit::status::{Reason, retry_after_reason};

use crate::direct::{Direct, WholeRequest};
use crate::front::{FrontParts, ServiceFront};
use crate::settings::UpstreamTlsSettings;

/// The body of every request and response the gateway handles.
pub type Body = tonic::body::Body;

/// A routed service.
pub type Upstream = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// Why an upstream cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {url}: {source}")]
    Endpoint {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("upstream TLS file {path}: {source}")]
    TlsFile {
        path: String,
        source: std::io::Error,
    },
}

/// Client TLS for upstream connections.
pub fn client_tls(s: &UpstreamTlsSettings) -> Result<ClientTlsConfig, UpstreamError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|source| UpstreamError::TlsFile {
            path: p.display().to_string(),
            source,
        })
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&s.ca)?));
    // Unset: each upstream's certificate must carry the host name of its URL.
    if let Some(domain) = &s.domain {
        tls = tls.domain_name(domain.clone());
    }
    if let (Some(cert), Some(key)) = (&s.cert, &s.key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}

/// A lazily connected channel to `url`.
pub fn channel(url: &str, tls: Option<&ClientTlsConfig>) -> Result<Channel, UpstreamError> {
    let err = |source| UpstreamError::Endpoint {
        url: url.to_owned(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(err)?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.clone()).map_err(err)?;
    }
    Ok(endpoint.connect_lazy())
}

/// The connections to one remote upstream, shared by the services it serves.
#[derive(Clone)]
pub struct Connections {
    conns: Arc<[Conn]>,
}

impl Connections {
    /// The first connection's channel (the readiness check asks over it: no extra connection).
    pub fn first_channel(&self) -> Channel {
        self.conns[0].channel.clone()
    }
}

/// `n` (at least one) lazily made connections to `url`: each a tonic channel (its own HTTP/2
/// connection) and, when the upstream is plaintext (`http://`, no `tls`), a [`Direct`] one for
/// the calls whose request was read whole.
pub fn connections(
    url: &str,
    tls: Option<&ClientTlsConfig>,
    n: usize,
) -> Result<Connections, UpstreamError> {
    let conns = (0..n.max(1))
        .map(|_| {
            Ok(Conn {
                channel: channel(url, tls)?,
                direct: if tls.is_none() {
                    Direct::for_url(url)
                } else {
                    None
                },
                waiting: AtomicUsize::new(0),
            })
        })
        .collect::<Result<Vec<Conn>, UpstreamError>>()?;
    Ok(Connections {
        conns: conns.into(),
    })
}

/// A remote service over `connections` (each call to the least loaded one; see the module
/// comment): transport failures become UNAVAILABLE answers with RetryInfo.
pub fn remote(connections: &Connections) -> Upstream {
    BoxCloneSyncService::new(Remote {
        conns: Arc::clone(&connections.conns),
        turn: Arc::new(AtomicUsize::new(0)),
    })
}

/// A service in this process, behind the same front the remote services have (the signed
/// identity verified, the trace continued).
pub fn local<S>(svc: S, front: Arc<FrontParts>) -> Upstream
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    BoxCloneSyncService::new(ServiceFront::new(svc, front))
}

/// One connection of a remote upstream.
struct Conn {
    channel: Channel,
    /// For calls whose request was read whole, on a plaintext upstream.
    direct: Option<Direct>,
    /// Calls sent on it still waiting for their response head.
    waiting: AtomicUsize,
}

#[derive(Clone)]
struct Remote {
    conns: Arc<[Conn]>,
    /// Where the search for the least loaded connection starts (ties go in turn).
    turn: Arc<AtomicUsize>,
}

impl Remote {
    /// The index of the connection with the fewest calls waiting, first from this call's turn.
    fn pick(&self) -> usize {
        let n = self.conns.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = start;
        let mut least = usize::MAX;
        for k in 0..n {
            let i = (start + k) % n;
            let waiting = self.conns[i].waiting.load(Ordering::Relaxed);
            if waiting < least {
                best = i;
                least = waiting;
            }
        }
        best
    }
}

/// Counts a call as waiting on its connection until dropped.
struct Waiting {
    conns: Arc<[Conn]>,
    at: usize,
}

impl Waiting {
    fn new(conns: Arc<[Conn]>, at: usize) -> Waiting {
        conns[at].waiting.fetch_add(1, Ordering::Relaxed);
        Waiting { conns, at }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.conns[self.at].waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Service<http::Request<Body>> for Remote {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Channel buffers internally; readiness is checked per call below.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let at = self.pick();
        // Counted from here, so calls started together spread before any is sent.
        let waiting = Waiting::new(Arc::clone(&self.conns), at);
        let whole = req.extensions_mut().remove::<WholeRequest>();
        Box::pin(async move {
            use tower::ServiceExt;
            let conn = &waiting.conns[at];
            let result: Result<http::Response<Body>, tower::BoxError> = match (&conn.direct, whole)
            {
                (Some(direct), Some(WholeRequest(bytes))) => {
                    direct.call(req, bytes).await.map_err(Into::into)
                }
                _ => match conn.channel.clone().ready().await {
                    Ok(ch) => ch.call(req).await.map_err(Into::into),
                    Err(e) => Err(e.into()),
                },
            };
            drop(waiting);
            Ok(result.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "upstream unreachable");
                retry_after_reason(
                    Code::Unavailable,
                    Reason::ServiceUnavailable,
                    "the service is unavailable; retry shortly",
                    Duration::from_millis(500),
                    &[],
                )
                .into_http()
            }))
        })
    }
}
