//! Writes of an HTTP/2 connection gathered into one system call per round of the scheduler.
//!
//! `h2` writes to its socket whenever its connection task flushes, and that task is woken by
//! every stream that queues a frame: under tokio the woken connection task runs next (the
//! scheduler's LIFO slot), so with 64 calls in flight each response, and each request the
//! gateway sends upstream, went out in a `writev` of its own (2.06 per call through the
//! gateway, counted with `perf stat`), and on loopback each write also pays the peer's receive
//! path. [`Coalesced`] keeps what the connection writes in small pieces (headers, small
//! messages: below [`MAX_COPIED`] bytes) in a buffer of at most [`MAX_GATHERED`] bytes; a
//! larger piece goes out at once, with what was gathered before it, in one `writev`. A flush
//! does not write the buffer at once: it wakes the connection's task again, and a task that
//! wakes itself while it runs is queued behind the tasks already waiting to run (the other
//! calls, which queue their frames meanwhile). What is gathered is written at the start of the
//! connection's next read, with the next large piece, before it shuts down, or when the buffer
//! is full. The task is sure to come back, since it asked to be woken, and an `h2` connection
//! reads on every poll until the socket has nothing more, so no byte waits longer than one
//! round of the scheduler. A lone call pays one extra poll of its connection, not a wait.
//!
//! Only HTTP/2 connections gather: an HTTP/1.1 connection streaming a response (the web pages'
//! server-sent events) need not read between writes. [`Coalesced::detect`] turns gathering on
//! once the peer's first bytes are the HTTP/2 client preface; until then (and for TLS, whose
//! bytes are not the preface) every write goes straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes gathered before they are written.
pub const MAX_GATHERED: usize = 64 * 1024;
/// Writes of fewer bytes are gathered (copied); a larger one (a large DATA frame) is worth its
/// own system call: it goes out at once, in one `writev` with what was gathered before it.
pub const MAX_COPIED: usize = 4 * 1024;

/// The start of the HTTP/2 client preface (RFC 9113 3.4).
const PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Writes go through until the peer's first bytes show which protocol it speaks.
    Detect,
    Gather,
    Through,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Coalesced<T> {
    inner: T,
    mode: Mode,
    /// Gathered bytes; `buf[written..]` are not written yet.
    buf: Vec<u8>,
    written: usize,
    /// A flush was answered without writing: the task woke itself to write on its next poll.
    owed: bool,
    /// Preface bytes seen so far while detecting.
    seen: usize,
}

impl<T> Coalesced<T> {
    /// Gathers writes from the start (the caller knows the connection speaks HTTP/2).
    pub fn gather(inner: T) -> Coalesced<T> {
        Coalesced::with_mode(inner, Mode::Gather)
    }

    /// Gathers writes once the peer's first bytes are the HTTP/2 client preface.
    pub fn detect(inner: T) -> Coalesced<T> {
        Coalesced::with_mode(inner, Mode::Detect)
    }

    fn with_mode(inner: T, mode: Mode) -> Coalesced<T> {
        Coalesced {
            inner,
            mode,
            buf: Vec::new(),
            written: 0,
            owed: false,
            seen: 0,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Whether writes are gathered now.
    pub fn gathers(&self) -> bool {
        self.mode == Mode::Gather
    }

    fn pending_len(&self) -> usize {
        self.buf.len() - self.written
    }

    /// Looks at bytes the peer sent first, while the protocol is not known.
    fn detect_from(&mut self, first: &[u8]) {
        if self.mode != Mode::Detect || first.is_empty() {
            return;
        }
        let want = &PREFACE_START[self.seen..];
        let n = want.len().min(first.len());
        if first[..n] != want[..n] {
            self.mode = Mode::Through;
            return;
        }
        self.seen += n;
        if self.seen == PREFACE_START.len() {
            self.mode = Mode::Gather;
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes everything gathered.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = match Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        self.owed = false;
        Poll::Ready(Ok(()))
    }

    /// Whether `incoming` more bytes are gathered (Ready(true), after writing out what is
    /// gathered when they would not fit) or go out at once (Ready(false): not gathering, or at
    /// least [`MAX_COPIED`] bytes).
    fn poll_room(&mut self, cx: &mut Context<'_>, incoming: usize) -> Poll<io::Result<bool>> {
        if self.mode != Mode::Gather || incoming >= MAX_COPIED {
            return Poll::Ready(Ok(false));
        }
        if self.pending_len() + incoming > MAX_GATHERED {
            std::task::ready!(self.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(true))
    }

    /// Writes `bufs` at once, after what is gathered and in the same system call.
    fn poll_through(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            let pending = self.pending_len();
            if pending == 0 {
                return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            }
            let mut slices = Vec::with_capacity(bufs.len() + 1);
            slices.push(io::IoSlice::new(&self.buf[self.written..]));
            slices.extend(bufs.iter().map(|b| io::IoSlice::new(b)));
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n < pending {
                self.written += n;
                continue;
            }
            self.buf.clear();
            self.written = 0;
            self.owed = false;
            if n > pending {
                return Poll::Ready(Ok(n - pending));
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.pending_len() > 0 {
            // What a flush left gathered goes out now. A socket that cannot take it yet
            // wakes the task when it can; reading goes on meanwhile.
            if let Poll::Ready(Err(e)) = me.poll_write_out(cx) {
                return Poll::Ready(Err(e));
            }
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut me.inner).poll_read(cx, buf);
        if me.mode == Mode::Detect && result.is_ready() {
            let filled = buf.filled();
            me.detect_from(&filled[before..]);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if std::task::ready!(me.poll_room(cx, data.len()))? {
            me.buf.extend_from_slice(data);
            Poll::Ready(Ok(data.len()))
        } else {
            me.poll_through(cx, &[io::IoSlice::new(data)])
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let total = bufs.iter().map(|b| b.len()).sum::<usize>();
        if std::task::ready!(me.poll_room(cx, total))? {
            for b in bufs {
                me.buf.extend_from_slice(b);
            }
            Poll::Ready(Ok(total))
        } else {
            me.poll_through(cx, bufs)
        }
    }

    fn is_write_vectored(&self) -> bool {
        // Small slices are copied into one buffer; large ones go to the socket's `writev`.
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.pending_len() == 0 {
            return Pin::new(&mut me.inner).poll_flush(cx);
        }
        if me.mode != Mode::Gather {
            std::task::ready!(me.poll_write_out(cx))?;
            return Pin::new(&mut me.inner).poll_flush(cx);
        }
        if !me.owed {
            // Written at the start of the next read, after the tasks already waiting to run
            // have queued their frames.
            me.owed = true;
            cx.waker().wake_by_ref();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        std::task::ready!(me.poll_write_out(cx))?;
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A waker that counts its wake-ups.
    struct Count(AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn available(peer: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut *peer).poll_read(&mut cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    out.extend_from_slice(rb.filled());
                }
                _ => return out,
            }
        }
    }

    #[tokio::test]
    async fn a_flush_writes_at_the_next_read_and_wakes_the_task_to_do_it() {
        let (ours, mut peer) = tokio::io::duplex(1 << 20);
        let mut io = Coalesced::gather(ours);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        for frame in [&b"first"[..], b"second", b"third"] {
            assert!(matches!(
                Pin::new(&mut io).poll_write(&mut cx, frame),
                Poll::Ready(Ok(n)) if n == frame.len()
            ));
            assert!(matches!(
                Pin::new(&mut io).poll_flush(&mut cx),
                Poll::Ready(Ok(()))
            ));
        }
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "one wake-up per round");
        assert!(available(&mut peer).is_empty(), "nothing written yet");
        // The next poll of the task reads: everything goes out in one write first.
        let mut space = [0u8; 16];
        let mut rb = ReadBuf::new(&mut space);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut rb).is_pending());
        assert_eq!(available(&mut peer), b"firstsecondthird");
        // A new round wakes the task again.
        let _ = Pin::new(&mut io).poll_write(&mut cx, b"more");
        let _ = Pin::new(&mut io).poll_flush(&mut cx);
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_full_buffer_is_written_and_a_large_write_goes_out_at_once() {
        let (ours, mut peer) = tokio::io::duplex(4 << 20);
        let mut io = Coalesced::gather(ours);
        // Small writes are gathered up to MAX_GATHERED bytes.
        let small = vec![1u8; MAX_COPIED - 1];
        let fit = MAX_GATHERED / small.len();
        for _ in 0..fit {
            io.write_all(&small).await.unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(available(&mut peer).is_empty());
        // One more does not fit: what was gathered is written before it.
        io.write_all(&small).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(available(&mut peer).len(), fit * small.len());
        // A write of MAX_COPIED bytes is not gathered: it goes out at once, after the small
        // one gathered before it.
        let large = vec![2u8; MAX_COPIED];
        io.write_all(&large).await.unwrap_or_else(|e| panic!("{e}"));
        let got = available(&mut peer);
        assert_eq!(got.len(), small.len() + large.len());
        assert!(got[..small.len()].iter().all(|b| *b == 1));
        assert!(got[small.len()..].iter().all(|b| *b == 2));
        // Shutting down writes what is left.
        io.write_all(b"tail")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        io.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(available(&mut peer), b"tail");
    }

    #[tokio::test]
    async fn only_a_peer_that_sends_the_http2_preface_is_gathered() {
        for (first, gathers) in [
            (&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], true),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false),
            // A TLS ClientHello.
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", false),
        ] {
            let (ours, mut peer) = tokio::io::duplex(1 << 16);
            let mut io = Coalesced::detect(ours);
            // Before the peer speaks, writes go through (an HTTP/2 server's SETTINGS).
            io.write_all(b"settings")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            io.flush().await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(available(&mut peer), b"settings");
            peer.write_all(first)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let mut got = vec![0u8; first.len()];
            io.read_exact(&mut got)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(io.gathers(), gathers, "{first:?}");
            io.write_all(b"answer")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            io.flush().await.unwrap_or_else(|e| panic!("{e}"));
            let seen = available(&mut peer);
            if gathers {
                assert!(seen.is_empty(), "gathered until the next read");
            } else {
                assert_eq!(seen, b"answer", "written at the flush");
            }
        }
    }

    #[tokio::test]
    async fn the_preface_may_arrive_in_pieces() {
        let (ours, mut peer) = tokio::io::duplex(1 << 16);
        let mut io = Coalesced::detect(ours);
        let mut got = [0u8; 4];
        peer.write_all(b"PRI ")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        io.read_exact(&mut got)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!io.gathers(), "not yet known");
        let mut rest = [0u8; 10];
        peer.write_all(b"* HTTP/2.0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        io.read_exact(&mut rest)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(io.gathers());
    }

    /// An HTTP/2 server and client that both gather, over a real socket: every answer arrives,
    /// one call at a time (nothing waits for a later read that never comes) and many at once.
    fn padding(n: usize) -> usize {
        1000 + (n % 3) * 10_000
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http2_calls_through_gathering_ends_complete_serially_and_at_once() {
        use bytes::Bytes;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
            // As every listener and upstream connection has it (no Nagle wait in the figures).
            tcp.set_nodelay(true).unwrap_or_else(|e| panic!("{e}"));
            let mut conn = h2::server::handshake(Coalesced::detect(tcp))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                tokio::spawn(async move {
                    let mut body = req.into_body();
                    let mut got = Vec::new();
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                        got.extend_from_slice(&chunk);
                    }
                    let mut send = respond
                        .send_response(http::Response::new(()), false)
                        .unwrap_or_else(|e| panic!("{e}"));
                    // Answers larger than h2 copies into its own buffer, and larger than the
                    // pieces gathered here.
                    let n: usize = std::str::from_utf8(&got)
                        .ok()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0);
                    got.resize(got.len() + padding(n), b'.');
                    let _ = send.send_data(Bytes::from(got), false);
                    let _ = send.send_trailers(http::HeaderMap::new());
                });
            }
        });
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tcp.set_nodelay(true).unwrap_or_else(|e| panic!("{e}"));
        let (client, conn) = h2::client::handshake(Coalesced::gather(tcp))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(conn);
        let call = |client: h2::client::SendRequest<Bytes>, n: usize| async move {
            let mut client = client.ready().await.unwrap_or_else(|e| panic!("{e}"));
            let req = http::Request::post(format!("http://{addr}/echo"))
                .body(())
                .unwrap_or_else(|e| panic!("{e}"));
            let (response, mut stream) = client
                .send_request(req, false)
                .unwrap_or_else(|e| panic!("{e}"));
            stream
                .send_data(Bytes::from(n.to_string()), true)
                .unwrap_or_else(|e| panic!("{e}"));
            let mut body = response.await.unwrap_or_else(|e| panic!("{e}")).into_body();
            let mut got = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                got.extend_from_slice(&chunk);
            }
            let trailers = body.trailers().await;
            assert!(matches!(trailers, Ok(Some(_))), "{trailers:?}");
            assert!(got.starts_with(n.to_string().as_bytes()));
            assert_eq!(got.len(), n.to_string().len() + padding(n));
        };
        let within = std::time::Duration::from_secs(5);
        let started = std::time::Instant::now();
        for n in 0..200 {
            tokio::time::timeout(within, call(client.clone(), n))
                .await
                .unwrap_or_else(|_| panic!("serial call {n} did not complete"));
        }
        // About 0.1 s here; a write left waiting for some later event (a timer, the peer's
        // next frame) would cost milliseconds per call.
        let serial = started.elapsed();
        assert!(
            serial < std::time::Duration::from_secs(2),
            "200 serial calls took {serial:?}"
        );
        let at_once: Vec<_> = (0..64)
            .map(|n| tokio::spawn(tokio::time::timeout(within, call(client.clone(), n))))
            .collect();
        for (n, t) in at_once.into_iter().enumerate() {
            t.await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|_| panic!("concurrent call {n} did not complete"));
        }
    }
}
