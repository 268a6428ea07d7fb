//! The transport under every listener: accepted TCP connections with `TCP_NODELAY` set, a
//! handshake timeout, a write timeout for peers that stop reading, and a watch over the
//! responses of the connection so that one the peer never takes (an HTTP/2 window left at
//! zero) closes the connection instead of holding memory and a caller's slots for ever. An
//! HTTP/2 connection's writes are gathered into one system call per round of the scheduler
//! (`coalesce.rs`; the write timeout applies to the socket writes beneath).
//!
//! tonic's `Server` serves these connections unchanged (TLS, when configured, runs over them):
//! it inserts [`ConnInfo`] into every request's extensions, which is how the gateway learns the
//! peer's address and the connection's [`ConnWatch`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

use crate::coalesce::Coalesced;

/// The HTTP/2 client preface (24 bytes) and the header of the SETTINGS frame that must follow
/// it (9 bytes): a connection that has not sent this much within the handshake timeout is
/// closed. With TLS the TLS handshake comes first and is bounded by the same timeout.
pub const HANDSHAKE_BYTES: usize = 24 + 9;

/// Transport limits of a listener.
#[derive(Clone, Copy, Debug)]
pub struct TransportLimits {
    pub handshake_timeout: Duration,
    pub write_timeout: Duration,
}

/// Milliseconds since the first call in this process, plus one (0 means "not set").
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

/// One response's state as the connection's watch sees it: since when the peer has owed us a
/// read (0: it owes nothing, the response waits for its own data or is done).
#[derive(Debug, Default)]
pub struct Owed(AtomicU64);

impl Owed {
    /// The response handed data to HTTP/2 and waits to be asked for more: from now on, only the
    /// peer taking data (flow control, TCP) lets it continue.
    pub fn waiting_for_peer(&self) {
        let _ = self
            .0
            .compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The response was asked for more data: the peer is reading.
    pub fn peer_read(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    fn waiting_ms(&self, now: u64) -> u64 {
        match self.0.load(Ordering::Relaxed) {
            0 => 0,
            since => now.saturating_sub(since),
        }
    }
}

/// The responses of one connection, watched for a peer that stopped reading.
#[derive(Debug, Default)]
pub struct ConnWatch {
    responses: Mutex<Vec<Weak<Owed>>>,
}

impl ConnWatch {
    /// Watches one response; it stops being watched when the returned cell is dropped.
    pub fn watch(&self) -> Arc<Owed> {
        let owed = Arc::new(Owed::default());
        let mut responses = self
            .responses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Streams per connection are capped (SETTINGS_MAX_CONCURRENT_STREAMS), so pruning when
        // the list doubles keeps it within twice the live responses.
        if responses.len() >= 64 {
            responses.retain(|w| w.strong_count() > 0);
        }
        responses.push(Arc::downgrade(&owed));
        owed
    }

    /// How long the response the peer has neglected longest has waited, in milliseconds.
    fn longest_wait_ms(&self) -> u64 {
        let now = now_ms();
        let mut responses = self
            .responses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        responses.retain(|w| w.strong_count() > 0);
        responses
            .iter()
            .filter_map(Weak::upgrade)
            .map(|o| o.waiting_ms(now))
            .max()
            .unwrap_or(0)
    }
}

/// What a request knows of its connection (in its extensions).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    pub watch: Arc<ConnWatch>,
}

/// An accepted connection with the transport limits applied.
pub struct GuardedIo {
    inner: TcpStream,
    info: ConnInfo,
    limits: TransportLimits,
    /// Bytes read until the handshake is done; then the deadline is dropped.
    read: usize,
    handshake: Option<Pin<Box<Sleep>>>,
    /// Fires every half write timeout while the connection lives, to look for responses the
    /// peer neglects even when nothing else wakes the connection.
    check: Pin<Box<Sleep>>,
    /// Set while a write waits for the peer to take bytes (TCP window full).
    write_blocked: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for GuardedIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedIo")
            .field("remote", &self.info.remote)
            .finish_non_exhaustive()
    }
}

impl GuardedIo {
    pub fn new(tcp: TcpStream, limits: TransportLimits) -> GuardedIo {
        // Without it a response written as headers, body and trailers waits ~40 ms for the
        // peer's delayed ACK (Nagle) whenever it is larger than a few segments.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let remote = tcp.peer_addr().ok();
        GuardedIo {
            inner: tcp,
            info: ConnInfo {
                remote,
                watch: Arc::new(ConnWatch::default()),
            },
            limits,
            read: 0,
            handshake: Some(Box::pin(tokio::time::sleep(limits.handshake_timeout))),
            check: Box::pin(tokio::time::sleep(check_period(limits))),
            write_blocked: None,
        }
    }

    /// Errors that close the connection when a limit is passed.
    fn poll_limits(&mut self, cx: &mut Context<'_>) -> Result<(), io::Error> {
        if let Some(h) = self.handshake.as_mut()
            && h.as_mut().poll(cx).is_ready()
        {
            tracing::debug!(remote = ?self.info.remote, "handshake timeout: closing the connection");
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within the handshake timeout",
            ));
        }
        if self.check.as_mut().poll(cx).is_ready() {
            let waited = self.info.watch.longest_wait_ms();
            let limit = u64::try_from(self.limits.write_timeout.as_millis()).unwrap_or(u64::MAX);
            if waited > limit {
                tracing::info!(
                    remote = ?self.info.remote,
                    waited_ms = waited,
                    "the peer has not read a response within the write timeout: closing the connection"
                );
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer stopped reading a response",
                ));
            }
            let next = tokio::time::Instant::now() + check_period(self.limits);
            self.check.as_mut().reset(next);
            // Register the waker for the next check.
            let _ = self.check.as_mut().poll(cx);
        }
        Ok(())
    }

    fn on_write(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Pending => {
                let timeout = self.limits.write_timeout;
                let timer = self
                    .write_blocked
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    tracing::info!(
                        remote = ?self.info.remote,
                        "the peer has not taken written bytes within the write timeout: closing the connection"
                    );
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "write timeout: the peer stopped reading",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.write_blocked = None;
                ready
            }
        }
    }
}

fn check_period(limits: TransportLimits) -> Duration {
    (limits.write_timeout / 2).max(Duration::from_millis(10))
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if let Err(e) = me.poll_limits(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut me.inner).poll_read(cx, buf);
        if me.handshake.is_some() {
            me.read += buf.filled().len() - before;
            if me.read >= HANDSHAKE_BYTES {
                me.handshake = None;
            }
        }
        result
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let result = Pin::new(&mut me.inner).poll_write(cx, buf);
        me.on_write(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let result = Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        me.on_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Connected for GuardedIo {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl<T: Connected> Connected for Coalesced<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> T::ConnectInfo {
        self.get_ref().connect_info()
    }
}

/// The connections accepted on `listener`, each with the limits applied; an HTTP/2
/// connection's writes are gathered into one system call per round of the scheduler
/// (`coalesce.rs`).
pub fn incoming(
    listener: TcpListener,
    limits: TransportLimits,
) -> impl Stream<Item = io::Result<Coalesced<GuardedIo>>> + Send + 'static {
    futures::stream::unfold(listener, move |listener| async move {
        let accepted = listener
            .accept()
            .await
            .map(|(tcp, _)| Coalesced::detect(GuardedIo::new(tcp, limits)));
        Some((accepted, listener))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_neglected_only_while_the_peer_owes_a_read() {
        let watch = ConnWatch::default();
        let owed = watch.watch();
        assert_eq!(watch.longest_wait_ms(), 0);
        owed.waiting_for_peer();
        std::thread::sleep(Duration::from_millis(30));
        assert!(watch.longest_wait_ms() >= 25, "{}", watch.longest_wait_ms());
        owed.peer_read();
        assert_eq!(watch.longest_wait_ms(), 0);
        owed.waiting_for_peer();
        drop(owed);
        assert_eq!(
            watch.longest_wait_ms(),
            0,
            "a finished response is forgotten"
        );
        assert!(
            watch
                .responses
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_empty()
        );
    }
}
