//! A remote service's HTTP/2 connection driven with `h2` directly, for the calls whose request
//! the gateway has read whole (every RPC but the client streams), over plaintext upstreams.
//!
//! Through a tonic `Channel` each such call was handed from task to task: the channel's buffer
//! worker, hyper's dispatch task, and a task hyper spawns per request to wait for the response
//! and send it back over a oneshot. Here the call's own task opens the stream, queues the whole
//! request (headers and one DATA frame that ends the stream) and waits for the response; only
//! the connection's task, which reads and writes the socket, runs besides it. Streaming
//! requests and TLS upstreams keep the tonic channel (`upstream.rs`).
//!
//! The connection is made on first use and again after it closes (the peer went away, a
//! GOAWAY, a transport error, or a keep-alive ping unanswered for 20 s); a call that finds no
//! connection and cannot make one within the connect timeout fails like an unreachable channel
//! (UNAVAILABLE with RetryInfo, in `upstream.rs`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::net::TcpStream;

use crate::coalesce::Coalesced;
use crate::upstream::Body;

/// The body of a request the edge has read whole, in the request's extensions: a remote
/// upstream sends it as one DATA frame (the request's body holds the same bytes, for the
/// upstreams that stream bodies).
#[derive(Clone, Debug)]
pub struct WholeRequest(pub Bytes);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A ping every 20 s, idle or not, as the tonic channels do (`http2_keep_alive_interval`,
/// `keep_alive_while_idle`); unanswered within 20 s (hyper's default timeout), the connection
/// is closed and the next call makes a new one.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(20);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// hyper's client defaults, which the tonic channels use.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;

/// Why a call could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    #[error("connect to {peer}: {source}")]
    Connect {
        peer: String,
        source: std::io::Error,
    },
    #[error("connect to {peer}: no connection within {} ms", CONNECT_TIMEOUT.as_millis())]
    ConnectTimeout { peer: String },
    #[error("HTTP/2 with {peer}: {source}")]
    H2 { peer: String, source: h2::Error },
    #[error("request to {peer}: {source}")]
    Request { peer: String, source: http::Error },
}

/// One HTTP/2 connection to a plaintext upstream (see the module documentation).
pub struct Direct {
    authority: http::uri::Authority,
    peer: String,
    live: std::sync::Mutex<Option<Live>>,
    /// One connection attempt at a time; calls arriving meanwhile use its result.
    connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Live {
    send: h2::client::SendRequest<Bytes>,
    /// Cleared by the connection's task when the connection ends.
    open: Arc<AtomicBool>,
}

impl Direct {
    /// A connection to `url` when it is a plaintext `http://host[:port]` URL (made on first
    /// use); None otherwise.
    pub fn for_url(url: &str) -> Option<Direct> {
        let uri: http::Uri = url.parse().ok()?;
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
            return None;
        }
        let authority = uri.authority()?.clone();
        let peer = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        Some(Direct {
            authority,
            peer,
            live: std::sync::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Live>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The open connection's sender, if there is one.
    fn current(&self) -> Option<h2::client::SendRequest<Bytes>> {
        self.lock()
            .as_ref()
            .filter(|l| l.open.load(Ordering::Acquire))
            .map(|l| l.send.clone())
    }

    async fn sender(&self) -> Result<h2::client::SendRequest<Bytes>, DirectError> {
        if let Some(send) = self.current() {
            return Ok(send);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(send) = self.current() {
            return Ok(send);
        }
        let live = match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
            Ok(live) => live?,
            Err(_) => {
                return Err(DirectError::ConnectTimeout {
                    peer: self.peer.clone(),
                });
            }
        };
        let send = live.send.clone();
        *self.lock() = Some(live);
        Ok(send)
    }

    async fn connect(&self) -> Result<Live, DirectError> {
        let tcp = TcpStream::connect(&self.peer)
            .await
            .map_err(|source| DirectError::Connect {
                peer: self.peer.clone(),
                source,
            })?;
        // Without it a small frame waits for the peer's delayed ACK (Nagle).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .enable_push(false);
        // Requests queued by many calls at once go out in one write (`coalesce.rs`).
        let (send, mut conn) = builder
            .handshake::<_, Bytes>(Coalesced::gather(tcp))
            .await
            .map_err(|source| self.h2_error(source))?;
        let open = Arc::new(AtomicBool::new(true));
        let ping = conn.ping_pong();
        let closed = Arc::clone(&open);
        let peer = self.peer.clone();
        tokio::spawn(async move {
            let ended = drive(conn, ping).await;
            closed.store(false, Ordering::Release);
            match ended {
                Ok(()) => tracing::debug!(%peer, "upstream connection closed"),
                Err(why) => tracing::info!(%peer, %why, "upstream connection ended"),
            }
        });
        Ok(Live { send, open })
    }

    fn h2_error(&self, source: h2::Error) -> DirectError {
        DirectError::H2 {
            peer: self.peer.clone(),
            source,
        }
    }

    /// Sends `req` with `whole` as its body and waits for the response's head.
    pub async fn call(
        &self,
        req: http::Request<Body>,
        whole: Bytes,
    ) -> Result<http::Response<Body>, DirectError> {
        let send = self.sender().await?;
        let mut send = send.ready().await.map_err(|e| self.h2_error(e))?;
        let (mut parts, _streamed_copy) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        parts.uri = http::Uri::builder()
            .scheme(http::uri::Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|source| DirectError::Request {
                peer: self.peer.clone(),
                source,
            })?;
        strip_connection_headers(&mut parts.headers);
        parts.extensions = http::Extensions::new();
        let head = http::Request::from_parts(parts, ());
        let empty = whole.is_empty();
        let (response, mut stream) = send
            .send_request(head, empty)
            .map_err(|e| self.h2_error(e))?;
        if !empty {
            stream
                .send_data(whole, true)
                .map_err(|e| self.h2_error(e))?;
        }
        let response = response.await.map_err(|e| self.h2_error(e))?;
        Ok(response.map(|recv| {
            Body::new(Answer {
                recv,
                data_done: false,
            })
        }))
    }
}

/// Keeps the connection going, with a keep-alive ping every [`KEEP_ALIVE_EVERY`]; ends when the
/// connection does or a ping goes unanswered (dropping the connection closes it).
async fn drive(
    conn: h2::client::Connection<Coalesced<TcpStream>, Bytes>,
    ping: Option<h2::PingPong>,
) -> Result<(), String> {
    let mut conn = std::pin::pin!(conn);
    let Some(mut ping) = ping else {
        return conn.await.map_err(|e| e.to_string());
    };
    let mut every = tokio::time::interval(KEEP_ALIVE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            ended = &mut conn => return ended.map_err(|e| e.to_string()),
            _ = every.tick() => {}
        }
        let pong = ping.ping(h2::Ping::opaque());
        let late = tokio::time::sleep(KEEP_ALIVE_TIMEOUT);
        tokio::select! {
            ended = &mut conn => return ended.map_err(|e| e.to_string()),
            answered = pong => {
                if let Err(e) = answered {
                    return Err(format!("keep-alive ping: {e}"));
                }
            }
            () = late => {
                return Err(format!(
                    "no answer to a keep-alive ping within {} s",
                    KEEP_ALIVE_TIMEOUT.as_secs()
                ));
            }
        }
    }
}

/// Headers HTTP/2 forbids (RFC 9113 8.2.2), as hyper strips them.
fn strip_connection_headers(headers: &mut http::HeaderMap) {
    for name in [
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
        http::HeaderName::from_static("keep-alive"),
        http::HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    if headers
        .get(http::header::TE)
        .is_some_and(|te| te != "trailers")
    {
        headers.remove(http::header::TE);
    }
}

/// A response body read from an h2 stream: its DATA frames (their bytes given back to the
/// flow-control window as they are passed on), then its trailers.
struct Answer {
    recv: h2::RecvStream,
    data_done: bool,
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let me = self.get_mut();
        if !me.data_done {
            match me.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    // Only fails for a stream already closed: nothing is owed then.
                    let _ = me.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => me.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match me.recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(trailers))) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plaintext_urls_are_driven_directly() {
        let d = Direct::for_url("http://127.0.0.1:7001").unwrap_or_else(|| panic!("http"));
        assert_eq!(d.peer, "127.0.0.1:7001");
        assert_eq!(
            Direct::for_url("http://scoring.internal")
                .map(|d| d.peer)
                .as_deref(),
            Some("scoring.internal:80")
        );
        assert!(Direct::for_url("https://scoring.internal:7001").is_none());
        assert!(Direct::for_url("not a url").is_none());
    }

    #[test]
    fn connection_headers_are_not_sent() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONNECTION,
            "keep-alive".parse().unwrap_or_else(|_| panic!()),
        );
        h.insert(
            http::header::TE,
            "trailers".parse().unwrap_or_else(|_| panic!()),
        );
        h.insert(
            "content-type",
            "application/grpc".parse().unwrap_or_else(|_| panic!()),
        );
        strip_connection_headers(&mut h);
        assert!(!h.contains_key(http::header::CONNECTION));
        assert_eq!(
            h.get(http::header::TE).map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
        h.insert(
            http::header::TE,
            "gzip".parse().unwrap_or_else(|_| panic!()),
        );
        strip_connection_headers(&mut h);
        assert!(!h.contains_key(http::header::TE));
        assert!(h.contains_key("content-type"));
    }
}
