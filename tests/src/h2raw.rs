//! A raw HTTP/2 gRPC client (the `h2` crate) for what tonic will not do on purpose: send a
//! call's headers and then nothing, never read a response (a flow-control window of zero), or
//! call paths that are not in the API. Used by the gateway's limit tests and by
//! `citycredit-bench attacks`.

use std::net::SocketAddr;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// One HTTP/2 connection.
pub struct RawConn {
    pub send: SendRequest<Bytes>,
    /// Fires when the connection ends (with the reason, if it failed).
    pub closed: oneshot::Receiver<Option<String>>,
    /// The task that drives the connection: aborting it closes the socket at once.
    driver: tokio::task::AbortHandle,
}

/// Connects with `window` as every stream's initial receive window (0: the server may send
/// headers but no data until the client grants some, which this client never does).
pub async fn connect(addr: SocketAddr, window: u32) -> Result<RawConn, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .max_concurrent_reset_streams(10_000)
        .handshake::<_, Bytes>(tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (tx, closed) = oneshot::channel();
    let driver = tokio::spawn(async move {
        let outcome = conn.await.err().map(|e| e.to_string());
        let _ = tx.send(outcome);
    })
    .abort_handle();
    Ok(RawConn {
        send,
        closed,
        driver,
    })
}

/// The headers of a gRPC call to `path`, with `authorization: Bearer <key>` when given.
pub fn grpc_request(path: &str, key: Option<&str>) -> http::Request<()> {
    let mut b = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(()).unwrap_or_else(|e| panic!("request: {e}"))
}

/// One gRPC message frame (uncompressed) holding `message`.
pub fn grpc_frame(message: &impl prost::Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(0);
    out.extend(u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend(body);
    Bytes::from(out)
}

impl RawConn {
    /// Drops the TCP connection without a word (no GOAWAY, no RST_STREAM): what a client that
    /// crashes or loses its network does. Whatever was queued and not yet written is lost.
    pub fn cut(self) {
        self.driver.abort();
    }

    /// Starts a call: its headers, then `body` (and the end of the request) when given; with
    /// `None` the request stays open with nothing sent. The stream handle is returned so that
    /// the caller decides how long the request stays open.
    pub async fn start(
        &mut self,
        req: http::Request<()>,
        body: Option<Bytes>,
    ) -> Result<(ResponseFuture, h2::SendStream<Bytes>), String> {
        let mut ready = self
            .send
            .clone()
            .ready()
            .await
            .map_err(|e| format!("ready: {e}"))?;
        let (response, mut stream) = ready
            .send_request(req, false)
            .map_err(|e| format!("send: {e}"))?;
        if let Some(b) = body {
            stream
                .send_data(b, true)
                .map_err(|e| format!("send data: {e}"))?;
        }
        Ok((response, stream))
    }
}

/// The gRPC code of a response: from its headers (a trailers-only answer), else from its
/// trailers (reading the body, which needs a window larger than zero).
pub async fn grpc_code(response: ResponseFuture) -> Result<i32, String> {
    let resp = response.await.map_err(|e| format!("response: {e}"))?;
    if let Some(code) = code_in(resp.headers()) {
        return Ok(code);
    }
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("data: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|e| format!("trailers: {e}"))?
        .unwrap_or_default();
    code_in(&trailers).ok_or_else(|| "no grpc-status".to_owned())
}

fn code_in(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// How the server answered one stream, as seen on the wire.
#[derive(Debug)]
pub enum StreamAnswer {
    /// A gRPC status (OK included): from the response headers (a trailers-only answer), else
    /// from the trailers after the body.
    Status(tonic::Status),
    /// The server reset the stream (RST_STREAM) with this reason.
    Reset(h2::Reason),
    /// An HTTP response without `grpc-status`.
    NotGrpc(http::StatusCode),
    /// The connection ended (GOAWAY or I/O) before an answer.
    Broken(String),
}

impl std::fmt::Display for StreamAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamAnswer::Status(s) => write!(f, "grpc-status {:?} ({})", s.code(), s.message()),
            StreamAnswer::Reset(r) => write!(f, "RST_STREAM {r:?}"),
            StreamAnswer::NotGrpc(c) => write!(f, "HTTP {c} without grpc-status"),
            StreamAnswer::Broken(e) => write!(f, "connection ended: {e}"),
        }
    }
}

/// Waits for the server's whole answer to one stream (the body is read and released, so any
/// window larger than zero will do).
pub async fn answer(response: ResponseFuture) -> StreamAnswer {
    let failed = |e: h2::Error| match e.reason() {
        Some(reason) if e.is_reset() && !e.is_go_away() => StreamAnswer::Reset(reason),
        _ => StreamAnswer::Broken(e.to_string()),
    };
    let resp = match response.await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    if let Some(status) = tonic::Status::from_header_map(resp.headers()) {
        return StreamAnswer::Status(status);
    }
    let http_status = resp.status();
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(chunk) => {
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            Err(e) => return failed(e),
        }
    }
    match body.trailers().await {
        Ok(trailers) => trailers
            .as_ref()
            .and_then(tonic::Status::from_header_map)
            .map_or(StreamAnswer::NotGrpc(http_status), StreamAnswer::Status),
        Err(e) => failed(e),
    }
}
