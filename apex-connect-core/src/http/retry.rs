//! The retry layer: exponential backoff with jitter, bounded in attempts and total time,
//! honouring `Retry-After` and the platform's reset hints.

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use http::{Extensions, Method, StatusCode};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use tracing::Instrument;

use super::clock::Clock;
use super::policy::{PlatformPolicy, retry_after};
use super::stats::HttpStats;
use super::trace::{AttemptCount, attempt_span, finish_attempt};
use crate::error::{Error, ErrorKind, Result};

/// How the retry layer retries.
///
/// Delays grow exponentially from `min_delay` by `factor` up to `max_delay`, with jitter,
/// and a hint from the platform (`Retry-After`, reset headers) raises a delay, never lowers
/// it. Retrying stops after `max_attempts` attempts, or when the next wait would end after
/// `max_elapsed` from the first attempt; then the last response (or error) is returned.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts in all, the first one included (1 = no retry). Default 5.
    pub max_attempts: u32,
    /// Budget for all attempts and waits together. Default 2 minutes.
    pub max_elapsed: Duration,
    /// The first backoff delay. Default 500 ms.
    pub min_delay: Duration,
    /// The largest backoff delay (hints may exceed it). Default 30 s.
    pub max_delay: Duration,
    /// Growth factor between delays. Default 2.
    pub factor: f32,
    /// Adds random jitter to each backoff delay. Default true.
    pub jitter: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 5,
            max_elapsed: Duration::from_secs(120),
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            factor: 2.0,
            jitter: true,
        }
    }
}

impl RetryConfig {
    /// One attempt, no retry.
    pub fn none() -> Self {
        RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(Error::config("retry: max_attempts must be at least 1"));
        }
        if self.min_delay > self.max_delay {
            return Err(Error::config("retry: min_delay must not exceed max_delay"));
        }
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(Error::config("retry: factor must be a finite number >= 1"));
        }
        Ok(())
    }

    pub(crate) fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        let b = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor)
            .without_max_times();
        let b = if self.jitter { b.with_jitter() } else { b };
        // backon computes in f32; round to whole milliseconds so delays are stable.
        b.build()
            .map(|d| Duration::from_millis((d.as_secs_f64() * 1000.0).round() as u64))
    }
}

/// Marks a request as safe to retry after a timeout even though its method is not
/// idempotent (a POST that carries an idempotency key). Insert it into the request's
/// extensions: `client.request(Method::POST, "/x")?.with_extension(Idempotent)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Idempotent;

fn is_idempotent(method: &Method, extensions: &Extensions) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    ) || extensions.get::<Idempotent>().is_some()
}

/// Statuses worth another attempt: 429 and every 5xx except 501/505 (which will not change).
fn retryable_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error()
            && status != StatusCode::NOT_IMPLEMENTED
            && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED)
}

/// What to do with an error result: `None` = do not retry, `Some(hint)` = retry, waiting
/// at least `hint`.
fn retryable_error(err: &reqwest_middleware::Error, idempotent: bool) -> Option<Duration> {
    match err {
        reqwest_middleware::Error::Reqwest(e) => {
            if e.is_timeout() {
                idempotent.then_some(Duration::ZERO)
            } else if e.is_connect() {
                Some(Duration::ZERO)
            } else if e.is_redirect() || e.is_builder() || e.is_body() || e.is_decode() {
                None
            } else if e.is_request() {
                // The connection failed while sending or before the response head (reset,
                // closed): the request may or may not have reached the server, so only an
                // idempotent request may be sent again (a POST could be applied twice).
                idempotent.then_some(Duration::ZERO)
            } else {
                None
            }
        }
        reqwest_middleware::Error::Middleware(e) => {
            let inner = e.downcast_ref::<Error>()?;
            match inner.kind() {
                ErrorKind::Unauthenticated => None,
                ErrorKind::RateLimited => Some(inner.retry_after().unwrap_or(Duration::ZERO)),
                _ if inner.is_temporary() => Some(Duration::ZERO),
                _ => None,
            }
        }
    }
}

/// The retry middleware (second from the outside: inside tracing, outside auth and the
/// rate gate, so every attempt gets a fresh credential and pays the gate).
pub(crate) struct RetryMiddleware {
    pub(crate) config: RetryConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) policy: Arc<dyn PlatformPolicy>,
    pub(crate) stats: HttpStats,
}

#[async_trait::async_trait]
impl Middleware for RetryMiddleware {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let idempotent = is_idempotent(req.method(), extensions);
        let start = self.clock.now();
        let mut backoff = self.config.backoff();
        let mut attempt: u32 = 1;
        loop {
            extensions.insert(AttemptCount(attempt));
            // A request whose body cannot be cloned (a stream) is sent once.
            let Some(this) = req.try_clone() else {
                let span = attempt_span(&req, attempt);
                let t0 = StdInstant::now();
                let result = next.run(req, extensions).instrument(span.clone()).await;
                finish_attempt(&span, &result, t0);
                return result;
            };
            let span = attempt_span(&this, attempt);
            let t0 = StdInstant::now();
            let result = next
                .clone()
                .run(this, extensions)
                .instrument(span.clone())
                .await;
            finish_attempt(&span, &result, t0);

            let hint = match &result {
                Ok(resp) if retryable_status(resp.status()) => Some(
                    retry_after(resp.headers(), SystemTime::now())
                        .or_else(|| self.policy.retry_hint(resp.status(), resp.headers()))
                        .unwrap_or(Duration::ZERO),
                ),
                Ok(_) => None,
                Err(e) => retryable_error(e, idempotent),
            };
            let Some(hint) = hint else {
                return result;
            };
            if attempt >= self.config.max_attempts {
                return result;
            }
            let delay = backoff.next().unwrap_or(self.config.max_delay).max(hint);
            let elapsed = self.clock.now().saturating_duration_since(start);
            let remaining = self.config.max_elapsed.saturating_sub(elapsed);
            if delay > remaining {
                // The wait would end outside the time budget: give up now. The last
                // response goes back to the caller, whose classifier turns a 429 into
                // `RateLimited` with `retry_after` from the same headers.
                tracing::debug!(
                    attempt,
                    delay_ms = delay.as_millis() as u64,
                    remaining_ms = remaining.as_millis() as u64,
                    "retry budget exhausted"
                );
                return result;
            }
            drop(result);
            self.stats.record_retry();
            self.clock.sleep(delay).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let c = RetryConfig {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            jitter: false,
            ..RetryConfig::default()
        };
        let d: Vec<_> = c.backoff().take(6).collect();
        assert_eq!(d[0], Duration::from_millis(100));
        assert_eq!(d[1], Duration::from_millis(200));
        assert_eq!(d[2], Duration::from_millis(400));
        assert_eq!(d[5], Duration::from_millis(1000));
    }

    #[test]
    fn jitter_stays_within_twice_the_delay() {
        let c = RetryConfig {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..RetryConfig::default()
        };
        for d in c.backoff().take(10) {
            assert!(
                d >= Duration::from_millis(100) && d <= Duration::from_millis(2000),
                "{d:?}"
            );
        }
    }

    #[test]
    fn status_and_method_rules() {
        assert!(retryable_status(StatusCode::TOO_MANY_REQUESTS));
        assert!(retryable_status(StatusCode::BAD_GATEWAY));
        assert!(retryable_status(StatusCode::INSUFFICIENT_STORAGE));
        assert!(!retryable_status(StatusCode::NOT_IMPLEMENTED));
        assert!(!retryable_status(StatusCode::NOT_FOUND));
        assert!(!retryable_status(StatusCode::UNAUTHORIZED));
        let mut ext = Extensions::new();
        assert!(is_idempotent(&Method::GET, &ext));
        assert!(is_idempotent(&Method::DELETE, &ext));
        assert!(!is_idempotent(&Method::POST, &ext));
        ext.insert(Idempotent);
        assert!(is_idempotent(&Method::POST, &ext));
    }

    #[test]
    fn middleware_errors_retry_by_kind() {
        let mw = |e: Error| reqwest_middleware::Error::middleware(e);
        assert_eq!(
            retryable_error(&mw(Error::new(ErrorKind::Unauthenticated, "x")), true),
            None
        );
        assert_eq!(
            retryable_error(
                &mw(Error::new(ErrorKind::RateLimited, "x")
                    .with_retry_after(Duration::from_secs(4))),
                false
            ),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            retryable_error(&mw(Error::new(ErrorKind::Network, "x")), false),
            Some(Duration::ZERO)
        );
        assert_eq!(retryable_error(&mw(Error::config("x")), true), None);
    }

    #[test]
    fn config_validation() {
        assert!(RetryConfig::default().validate().is_ok());
        assert!(
            RetryConfig {
                max_attempts: 0,
                ..RetryConfig::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            RetryConfig {
                factor: 0.5,
                ..RetryConfig::default()
            }
            .validate()
            .is_err()
        );
    }
}
