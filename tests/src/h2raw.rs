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
    tokio::spawn(async move {
        let outcome = conn.await.err().map(|e| e.to_string());
        let _ = tx.send(outcome);
    });
    Ok(RawConn { send, closed })
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
