//! The hardened HTTP listener of `serve`: a connection cap, a header-read timeout and header
//! size limits (hyper), and per request a timeout and a concurrency limit that sheds load with
//! `503` + `Retry-After` (tower).
//!
//! [`serve`] is what the `apex-connect` binary runs for the webhook and the admin listeners; a
//! host mounting [`crate::webhook_router`] in its own app can apply the request layers with
//! [`limit_requests`] (the connection-level limits belong to whatever server it runs).

use std::sync::Arc;
use std::time::Duration;

use apex_connect_core::engine::CancellationToken;
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::timeout::TimeoutLayer;
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// The limits of a listener (`[limits]` in the configuration; see
/// [`crate::config::LimitSettings`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpLimits {
    /// A connection that has not sent a whole request head (request line and headers) this
    /// long after it opened, or after its previous response, is closed (default 10 s).
    pub header_read_timeout: Duration,
    /// A request not answered this long after its head arrived (body included) is answered
    /// `503` with `Retry-After` (default 30 s).
    pub request_timeout: Duration,
    /// Requests handled at once; above it a request is answered `503` with `Retry-After` at
    /// once (default 512).
    pub max_concurrent_requests: usize,
    /// Open connections; a connection accepted above it is closed at once (default 4096).
    pub max_connections: usize,
    /// Largest request head (request line and headers) in bytes; larger is answered `431`
    /// and the connection closed (default 16 KiB).
    pub max_header_bytes: usize,
    /// Most headers in a request; more is answered `431` (default 100).
    pub max_headers: usize,
    /// The `Retry-After` sent with a `503` from the limits (default 1 s, whole seconds).
    pub retry_after: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 512,
            max_connections: 4096,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            retry_after: Duration::from_secs(1),
        }
    }
}

/// `router` with the request layers of `limits`: a request timeout and a concurrency limit
/// with load shedding, both answered `503` with `Retry-After` (every platform retries a 503).
pub fn limit_requests(router: Router, limits: &HttpLimits) -> Router {
    let retry_after = HeaderValue::from(limits.retry_after.as_secs().max(1));
    router.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(move |e: BoxError| {
                let retry_after = retry_after.clone();
                async move { limit_answer(&e, retry_after) }
            }))
            .layer(LoadShedLayer::new())
            .layer(GlobalConcurrencyLimitLayer::new(
                limits.max_concurrent_requests.max(1),
            ))
            .layer(TimeoutLayer::new(limits.request_timeout)),
    )
}

fn limit_answer(e: &BoxError, retry_after: HeaderValue) -> Response {
    let body = if e.is::<tower::load_shed::error::Overloaded>() {
        r#"{"status":"overloaded"}"#
    } else if e.is::<tower::timeout::error::Elapsed>() {
        r#"{"status":"timeout"}"#
    } else {
        tracing::warn!(error = %e, "request failed in a limit layer");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::RETRY_AFTER, retry_after),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        body,
    )
        .into_response()
}

/// Serves `router` on `listener` with `limits` (HTTP/1.1) until `shutdown`, then stops
/// accepting, lets each connection finish its request in progress, and returns when every
/// connection is closed.
///
/// - At most `max_connections` connections are open: one accepted above the cap is closed at
///   once (the platform retries), so slow clients cannot exhaust descriptors or memory.
/// - hyper closes a connection whose request head is not complete within
///   `header_read_timeout` (an idle keep-alive connection too), and answers `431` to a head
///   over `max_header_bytes` or with more than `max_headers` headers.
/// - Requests pass [`limit_requests`]; each carries the peer's address as
///   [`ConnectInfo<std::net::SocketAddr>`](ConnectInfo) (the admin API's loopback check reads it).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let app = limit_requests(router, &limits);
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: wait a little
                    // instead of spinning.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection cap reached: connection closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request)
        });
        let conn = http1.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}
