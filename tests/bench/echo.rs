//! The echo anchor: a bare tonic unary RPC (`/citycredit.bench.Echo/Echo`, raw bytes through
//! `citycredit_tests::raw_codec::Raw`, no platform code at all) served in the bench's own
//! process with TCP_NODELAY. The request starts with the answer's size in ASCII decimal and a
//! `;` and is padded to any length; the answer is that many bytes. The Python loader calls it
//! with the request and answer sizes of each platform RPC it measures, so every platform figure
//! has the floor of the same client, socket, HTTP/2 and machine beside it, measured in the same
//! run.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::transport::server::TcpIncoming;

use citycredit_tests::raw_codec::Raw;

/// Largest answer the echo makes (the largest platform answer measured is far below it).
const MAX_ANSWER: usize = 4 * 1024 * 1024;

#[derive(Clone, Copy)]
struct EchoServer;

impl NamedService for EchoServer {
    const NAME: &'static str = "citycredit.bench.Echo";
}

struct EchoCall;

impl UnaryService<Vec<u8>> for EchoCall {
    type Response = Vec<u8>;
    type Future = BoxFuture<tonic::Response<Vec<u8>>, tonic::Status>;
    fn call(&mut self, request: tonic::Request<Vec<u8>>) -> Self::Future {
        Box::pin(async move {
            let body = request.into_inner();
            let size = body
                .iter()
                .position(|&b| b == b';')
                .and_then(|end| std::str::from_utf8(&body[..end]).ok())
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| n <= MAX_ANSWER)
                .ok_or_else(|| {
                    tonic::Status::invalid_argument(format!(
                        "the request must start with the answer's size (at most {MAX_ANSWER}) and ';'"
                    ))
                })?;
            Ok(tonic::Response::new(vec![b'e'; size]))
        })
    }
}

impl Service<http::Request<Body>> for EchoServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            if req.uri().path() == "/citycredit.bench.Echo/Echo" {
                let mut grpc = Grpc::new(Raw);
                Ok(grpc.unary(EchoCall, req).await)
            } else {
                Ok(tonic::Status::unimplemented("only Echo").into_http())
            }
        })
    }
}

/// Serves the echo on a free loopback port until the process ends; returns its address.
pub fn start() -> SocketAddr {
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("echo: {e}"))
        .with_nodelay(Some(true));
    let addr = incoming
        .local_addr()
        .unwrap_or_else(|e| panic!("echo: {e}"));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer)
            .serve_with_incoming(incoming),
    );
    addr
}
