//! Serving a simulator's router on loopback.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use apex_connect_core::{Error, ErrorKind, Result};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long [`SimHandle::shutdown`] waits for open requests before aborting the server.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Starts simulators.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimServer;

impl SimServer {
    /// Serves `router` on `127.0.0.1` on a free port, in a background task of the current
    /// tokio runtime.
    ///
    /// # Errors
    /// `Config` when no loopback port can be bound.
    pub async fn start(router: Router) -> Result<SimHandle> {
        Self::start_on(router, 0).await
    }

    /// Serves `router` on `127.0.0.1:port` (`0`: a free port), in a background task of the
    /// current tokio runtime; for simulators run as their own process at a known address.
    ///
    /// # Errors
    /// `Config` when the port cannot be bound.
    pub async fn start_on(router: Router, port: u16) -> Result<SimHandle> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
            Error::new(
                ErrorKind::Config,
                "cannot bind a loopback port for the simulator",
            )
            .with_context("port", port)
            .set_source(e)
        })?;
        let addr = listener.local_addr().map_err(|e| {
            Error::new(ErrorKind::Config, "simulator listener has no address").set_source(e)
        })?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                // Either an explicit shutdown or the handle being dropped ends the server.
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "simulator server stopped with an error");
            }
        });
        Ok(SimHandle {
            addr,
            base_url: format!("http://{addr}"),
            shutdown: Some(tx),
            task: Some(task),
        })
    }
}

/// A running simulator. Dropping it stops the server (gracefully, in the background).
pub struct SimHandle {
    addr: SocketAddr,
    base_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The socket address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, lets open requests finish (up to 5 s), and waits for the
    /// server task to end.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .field("running", &self.shutdown.is_some())
            .finish()
    }
}
