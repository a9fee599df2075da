//! The retry layer: exponential backoff with jitter, bounded in attempts and total time,
//! honouring `Retry-After` and the platform's reset hints.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use http::{Extensions, HeaderName, HeaderValue, Method, StatusCode};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next, RequestBuilder};
use tracing::Instrument;

use super::clock::Clock;
use super::policy::{MAX_RETRY_HINT, PlatformPolicy, retry_after};
use super::stats::HttpStats;
use super::trace::{AttemptCount, attempt_span, finish_attempt};
use crate::error::{Error, ErrorKind, Result};

/// How the retry layer retries.
///
/// Delays grow exponentially from `min_delay` by `factor` up to `max_delay`, with jitter,
/// and a hint from the platform (`Retry-After`, reset headers) raises a delay, never lowers
/// it. Retrying stops after `max_attempts` attempts, when the next wait would use up what is
/// left of `max_elapsed`, or when a hint is longer than the maximum wait (the rate gate's
/// [`max_wait`](super::RateGate::with_max_wait), 15 minutes by default); then the last
/// response (or error) is returned.
///
/// `max_elapsed` bounds the whole call: waits **and** attempts. Each attempt may only use
/// what is left of it (the rate gate fails at once rather than wait past it, and an attempt
/// still running when it runs out is cut off with a temporary `Network` error). The bound
/// is measured on the client's [`Clock`] and enforced on tokio's timer.
///
/// # Which requests are retried
/// - Idempotent ones (`GET`, `HEAD`, `PUT`, `DELETE`, `OPTIONS`, or any request marked
///   [`Idempotent`], e.g. one with an [`IdempotencyKey`]): on 429, 5xx (but 501 and 505),
///   connection errors, timeouts, and connections lost before the answer.
/// - Others (a `POST` that creates, a `PATCH`): only where the request cannot have been
///   applied: a 429, or a connection that could not be established (refused, DNS, TLS,
///   connect timeout). A 5xx, a timeout or a lost connection may come after the platform
///   applied the write, so repeating it could write twice: the error goes back to the
///   caller.
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
        if self.max_elapsed.is_zero() {
            return Err(Error::config("retry: max_elapsed must not be zero"));
        }
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

/// Marks a request as safe to repeat even though its method is not idempotent: a read sent
/// as `POST` (a search), or a write the platform deduplicates by an idempotency key (prefer
/// [`IdempotencyExt::idempotency_key`], which sends the key and sets this marker). Marked
/// requests are retried like `GET`s: on 5xx, timeouts and lost connections too. Insert it
/// into the request's extensions: `client.request(Method::POST, "/x")?.with_extension(Idempotent)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Idempotent;

/// An idempotency key: a header the platform uses to apply a write at most once, however
/// many times it is sent (Stripe's `Idempotency-Key`).
///
/// Generate one per logical write, before the first attempt, and attach it with
/// [`IdempotencyExt::idempotency_key`]: every attempt of that request then carries the same
/// key, and the retry layer may repeat it after a 5xx or a lost connection. Only use it
/// with platforms that document such a header; a platform that ignores the header would
/// apply a repeated write twice.
///
/// # Examples
///
/// ```no_run
/// # use apex_connect_core::http::{HttpClient, IdempotencyExt, IdempotencyKey};
/// # async fn run(http: HttpClient) -> apex_connect_core::Result<()> {
/// let key = IdempotencyKey::generate();
/// let rb = http
///     .request(http::Method::POST, "/v1/charges")?
///     .idempotency_key(&key)
///     .json(&serde_json::json!({"amount": 100}));
/// let created: serde_json::Value = http.send_json(rb).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    header: HeaderName,
    value: HeaderValue,
}

impl IdempotencyKey {
    /// The header name used by [`generate`](Self::generate): `Idempotency-Key`.
    pub const DEFAULT_HEADER: &'static str = "idempotency-key";

    /// A fresh random key (128 bits, 32 lowercase hex digits) in the `Idempotency-Key`
    /// header.
    pub fn generate() -> Self {
        let v: u128 = rand::random();
        IdempotencyKey {
            header: HeaderName::from_static(Self::DEFAULT_HEADER),
            value: HeaderValue::from_str(&format!("{v:032x}"))
                .expect("hex digits are a valid header value"),
        }
    }

    /// A key with a given value (e.g. derived from the host's own change id, so a write
    /// re-submitted after a crash keeps its key), in the `Idempotency-Key` header.
    ///
    /// # Errors
    /// `InvalidInput` if `value` is empty or not a valid header value.
    pub fn new(value: &str) -> Result<Self> {
        if value.is_empty() {
            return Err(Error::invalid_input("an idempotency key must not be empty"));
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| Error::invalid_input("an idempotency key must be a valid header value"))?;
        Ok(IdempotencyKey {
            header: HeaderName::from_static(Self::DEFAULT_HEADER),
            value,
        })
    }

    /// Sends the key in `header` instead (for platforms with their own header name).
    ///
    /// # Errors
    /// `InvalidInput` if `header` is not a valid header name.
    pub fn with_header(mut self, header: &str) -> Result<Self> {
        self.header = HeaderName::from_bytes(header.as_bytes())
            .map_err(|_| Error::invalid_input("invalid idempotency header name"))?;
        Ok(self)
    }

    /// The header the key is sent in.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The key.
    pub fn value(&self) -> &HeaderValue {
        &self.value
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyKey")
            .field("header", &self.header)
            .field("value", &self.value)
            .finish()
    }
}

/// Attaches an [`IdempotencyKey`] to a request builder.
pub trait IdempotencyExt {
    /// Sets the key's header and marks the request [`Idempotent`], so the retry layer
    /// repeats it (with the same key) after a 5xx, a timeout or a lost connection.
    #[must_use]
    fn idempotency_key(self, key: &IdempotencyKey) -> Self;
}

impl IdempotencyExt for RequestBuilder {
    fn idempotency_key(self, key: &IdempotencyKey) -> Self {
        self.header(key.header.clone(), key.value.clone())
            .with_extension(Idempotent)
    }
}

fn is_idempotent(method: &Method, extensions: &Extensions) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    ) || extensions.get::<Idempotent>().is_some()
}

/// Statuses worth another attempt: 429 always (the platform refused the request without
/// applying it); every 5xx except 501/505 (which will not change) only for idempotent
/// requests, because the platform may have applied the request before failing.
fn retryable_status(status: StatusCode, idempotent: bool) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || (idempotent
            && status.is_server_error()
            && status != StatusCode::NOT_IMPLEMENTED
            && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED)
}

/// What is left of the retry budget for the current attempt, for the rate gate (it fails
/// at once rather than wait past it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttemptBudget(pub(crate) Duration);

/// The source of an error for a request that was sent but got no answer in time: it may
/// have been applied, so only idempotent requests are repeated.
#[derive(Debug)]
pub(crate) struct SentWithoutAnswer(pub(crate) &'static str);

impl fmt::Display for SentWithoutAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for SentWithoutAnswer {}

/// What to do with an error result: `None` = do not retry, `Some(hint)` = retry, waiting
/// at least `hint`.
fn retryable_error(err: &reqwest_middleware::Error, idempotent: bool) -> Option<Duration> {
    match err {
        reqwest_middleware::Error::Reqwest(e) => {
            if e.is_connect() {
                // The connection was never established (refused, DNS, TLS, connect
                // timeout): nothing was sent, so any request may be sent again.
                Some(Duration::ZERO)
            } else if e.is_timeout() {
                idempotent.then_some(Duration::ZERO)
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
            if inner.downcast_source::<SentWithoutAnswer>().is_some() {
                return idempotent.then_some(Duration::ZERO);
            }
            match inner.kind() {
                ErrorKind::Unauthenticated => None,
                ErrorKind::RateLimited if inner.is_temporary() => {
                    Some(inner.retry_after().unwrap_or(Duration::ZERO))
                }
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
    /// The longest hint worth waiting for (the rate gate's `max_wait`).
    pub(crate) max_wait: Duration,
}

impl RetryMiddleware {
    /// One attempt, cut off when what is left of the budget runs out.
    async fn attempt(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
        attempt: u32,
        budget: Duration,
    ) -> reqwest_middleware::Result<Response> {
        extensions.insert(AttemptCount(attempt));
        extensions.insert(AttemptBudget(budget));
        let span = attempt_span(&req, attempt);
        let t0 = StdInstant::now();
        let run = next.run(req, extensions).instrument(span.clone());
        let result = match tokio::time::timeout(budget, run).await {
            Ok(result) => result,
            Err(_) => Err(reqwest_middleware::Error::middleware(
                Error::new(
                    ErrorKind::Network,
                    "request did not finish within the retry time budget (max_elapsed)",
                )
                .temporary()
                .with_context(
                    "max_elapsed_ms",
                    self.config.max_elapsed.as_millis().min(u64::MAX as u128),
                )
                .set_source(SentWithoutAnswer("cut off by the retry time budget")),
            )),
        };
        finish_attempt(&span, &result, t0);
        result
    }

    /// The wait a retryable response asks for, capped at [`MAX_RETRY_HINT`].
    fn response_hint(&self, resp: &Response) -> Duration {
        retry_after(resp.headers(), SystemTime::now())
            .or_else(|| self.policy.retry_hint(resp.status(), resp.headers()))
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_HINT)
    }

    fn remaining(&self, start: tokio::time::Instant) -> Duration {
        let elapsed = self.clock.now().saturating_duration_since(start);
        self.config.max_elapsed.saturating_sub(elapsed)
    }
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
            let budget = self.remaining(start);
            // A request whose body cannot be cloned (a stream) is sent once.
            let Some(this) = req.try_clone() else {
                return self.attempt(req, extensions, next, attempt, budget).await;
            };
            let result = self
                .attempt(this, extensions, next.clone(), attempt, budget)
                .await;

            let hint = match &result {
                Ok(resp) if retryable_status(resp.status(), idempotent) => {
                    Some(self.response_hint(resp))
                }
                Ok(_) => None,
                Err(e) => retryable_error(e, idempotent).map(|h| h.min(MAX_RETRY_HINT)),
            };
            let Some(hint) = hint else {
                return result;
            };
            if attempt >= self.config.max_attempts {
                return result;
            }
            if hint > self.max_wait {
                // The platform asks for a longer wait than we ever make: the caller gets
                // the answer now (`send` turns it into a permanent error with the hint).
                tracing::debug!(
                    attempt,
                    hint_ms = u64::try_from(hint.as_millis()).unwrap_or(u64::MAX),
                    "retry hint beyond the maximum wait"
                );
                return result;
            }
            let delay = backoff.next().unwrap_or(self.config.max_delay).max(hint);
            let remaining = self.remaining(start);
            if delay >= remaining {
                // The wait would leave no time for another attempt within the budget: give
                // up now. The last response goes back to the caller, whose classifier turns
                // a 429 into `RateLimited` with `retry_after` from the same headers.
                tracing::debug!(
                    attempt,
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    remaining_ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
                    "retry budget exhausted"
                );
                return result;
            }
            drop(result);
            self.stats.record_retry();
            self.clock.sleep(delay).await;
            attempt = attempt.saturating_add(1);
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
        assert!(retryable_status(StatusCode::TOO_MANY_REQUESTS, true));
        assert!(retryable_status(StatusCode::BAD_GATEWAY, true));
        assert!(retryable_status(StatusCode::INSUFFICIENT_STORAGE, true));
        assert!(!retryable_status(StatusCode::NOT_IMPLEMENTED, true));
        assert!(!retryable_status(StatusCode::NOT_FOUND, true));
        assert!(!retryable_status(StatusCode::UNAUTHORIZED, true));
        // Not idempotent: only a 429 says the request was not applied.
        assert!(retryable_status(StatusCode::TOO_MANY_REQUESTS, false));
        assert!(!retryable_status(StatusCode::BAD_GATEWAY, false));
        assert!(!retryable_status(StatusCode::SERVICE_UNAVAILABLE, false));
        assert!(!retryable_status(StatusCode::INTERNAL_SERVER_ERROR, false));
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
        // A hint beyond the maximum wait comes back permanent: not retried.
        assert_eq!(
            retryable_error(
                &mw(Error::new(ErrorKind::RateLimited, "x")
                    .permanent()
                    .with_retry_after(Duration::from_secs(4))),
                true
            ),
            None
        );
        // Sent but unanswered (headers timeout): only idempotent requests go again.
        let sent = || {
            mw(Error::new(ErrorKind::Network, "x")
                .temporary()
                .set_source(SentWithoutAnswer("headers timeout")))
        };
        assert_eq!(retryable_error(&sent(), true), Some(Duration::ZERO));
        assert_eq!(retryable_error(&sent(), false), None);
    }

    #[test]
    fn idempotency_keys() {
        let a = IdempotencyKey::generate();
        let b = IdempotencyKey::generate();
        assert_ne!(a, b);
        assert_eq!(a.header().as_str(), "idempotency-key");
        assert_eq!(a.value().len(), 32);
        assert!(
            a.value()
                .to_str()
                .unwrap()
                .bytes()
                .all(|c| c.is_ascii_hexdigit())
        );
        let k = IdempotencyKey::new("change-42")
            .unwrap()
            .with_header("X-Request-Id")
            .unwrap();
        assert_eq!(k.header().as_str(), "x-request-id");
        assert_eq!(k.value(), "change-42");
        assert!(IdempotencyKey::new("").is_err());
        assert!(IdempotencyKey::new("a\nb").is_err());
        assert!(k.clone().with_header("bad header").is_err());
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
                max_elapsed: Duration::ZERO,
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
