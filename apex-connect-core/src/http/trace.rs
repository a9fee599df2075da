//! Our own tracing middleware: spans with method, host and path, never queries, headers or
//! bodies (reqwest-tracing records full URLs, which may carry credentials).

use std::time::Instant;

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use tracing::field::Empty;
use tracing::{Instrument, Span};

/// The outermost middleware: one `http.request` span per logical request (all attempts),
/// with `method`, `host`, `path`, and at the end `status`, `attempts` and `elapsed_ms`.
/// The retry layer opens one `http.attempt` child span per attempt (see [`attempt_span`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TracingMiddleware;

/// How many attempts the retry layer made, left in the extensions for the tracing layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttemptCount(pub(crate) u32);

#[async_trait::async_trait]
impl Middleware for TracingMiddleware {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let span = tracing::debug_span!(
            "http.request",
            method = %req.method(),
            host = req.url().host_str().unwrap_or(""),
            path = req.url().path(),
            status = Empty,
            attempts = Empty,
            elapsed_ms = Empty,
            error = Empty,
        );
        let start = Instant::now();
        let result = next.run(req, extensions).instrument(span.clone()).await;
        let attempts = extensions.get::<AttemptCount>().map_or(1, |a| a.0);
        span.record("attempts", attempts);
        record_outcome(&span, &result, start);
        let _enter = span.enter();
        match &result {
            Ok(resp) => tracing::debug!(
                status = resp.status().as_u16(),
                attempts,
                "http request done"
            ),
            Err(e) => tracing::debug!(error = describe(e), attempts, "http request failed"),
        }
        result
    }
}

/// The span of one attempt: `method`, `host`, `path` (no query), `attempt`, and later
/// `status` and `elapsed_ms`.
pub(crate) fn attempt_span(req: &Request, attempt: u32) -> Span {
    tracing::debug_span!(
        "http.attempt",
        method = %req.method(),
        host = req.url().host_str().unwrap_or(""),
        path = req.url().path(),
        attempt,
        status = Empty,
        elapsed_ms = Empty,
        error = Empty,
    )
}

/// Records `status`/`error` and `elapsed_ms` on `span`, and emits a debug event in it.
pub(crate) fn finish_attempt(
    span: &Span,
    result: &reqwest_middleware::Result<Response>,
    start: Instant,
) {
    record_outcome(span, result, start);
    let _enter = span.enter();
    let elapsed_ms = start.elapsed().as_millis() as u64;
    match result {
        Ok(resp) => tracing::debug!(status = resp.status().as_u16(), elapsed_ms, "http attempt"),
        Err(e) => tracing::debug!(error = describe(e), elapsed_ms, "http attempt failed"),
    }
}

fn record_outcome(span: &Span, result: &reqwest_middleware::Result<Response>, start: Instant) {
    span.record("elapsed_ms", start.elapsed().as_millis() as u64);
    match result {
        Ok(resp) => {
            span.record("status", resp.status().as_u16());
        }
        Err(e) => {
            span.record("error", describe(e));
        }
    }
}

/// A short description of a transport or middleware error that never includes a URL.
pub(crate) fn describe(err: &reqwest_middleware::Error) -> &'static str {
    match err {
        reqwest_middleware::Error::Middleware(e) => match e.downcast_ref::<crate::Error>() {
            Some(inner) => inner.kind().as_str(),
            None => "middleware",
        },
        reqwest_middleware::Error::Reqwest(e) => {
            if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect"
            } else if e.is_redirect() {
                "redirect"
            } else if e.is_body() || e.is_decode() {
                "body"
            } else {
                "request"
            }
        }
    }
}
