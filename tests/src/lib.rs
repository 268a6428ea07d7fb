//! Test harness: starts a real citycredit server in-process on `127.0.0.1:0` (the test binds the
//! listener and hands the same listener to the server: no port guessing) and gives clients for
//! it. Shutdown is graceful and awaited when the `TestServer` is stopped.

pub mod ingestion;

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use citycredit_gateway::Config;
use citycredit_gateway::server::{self, StartError};

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), StartError>>>,
    _data: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with default configuration and a fresh data directory.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts a server after `adjust` changes the configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let data = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let mut config = Config {
            listen: addr,
            data_dir: data.path().to_owned(),
            shutdown_grace_secs: 5,
            ..Config::default()
        };
        adjust(&mut config);
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server::serve(config, listener, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            stop: Some(tx),
            task: Some(task),
            _data: data,
        }
    }

    /// A channel to the server (connects lazily, so the first call waits for it to listen).
    pub fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap_or_else(|e| panic!("endpoint: {e}"))
            .connect_lazy()
    }

    /// Stops the server gracefully and returns how `serve` ended.
    pub async fn stop(mut self) -> Result<(), StartError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| panic!("server task: {e}")),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
