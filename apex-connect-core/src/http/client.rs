//! [`HttpClient`]: the per-connection client and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use http::{Method, header};
use reqwest::{Response, redirect};
use reqwest_middleware::{ClientWithMiddleware, RequestBuilder};
use serde::de::DeserializeOwned;
use url::Url;

use super::auth::AuthMiddleware;
use super::clock::{Clock, TokioClock};
use super::credentials::Credentials;
use super::gate::{DEFAULT_MAX_WAIT, GateMiddleware, RateGate};
use super::hosts::{HostAllowList, is_loopback};
use super::paging::link_for_context;
use super::policy::{DefaultPolicy, PlatformPolicy, with_request_context};
use super::retry::{RetryConfig, RetryMiddleware};
use super::stats::HttpStats;
use super::trace::TracingMiddleware;
use crate::error::{Error, ErrorKind, Result, redact_url};

/// The HTTP client of one connection: base URL, middleware stack, host policy, stats.
///
/// Cheap to clone (one `Arc`); clones share the stack, the allowed hosts and the counters.
/// See the [module documentation](super) for the middleware order.
///
/// # Examples
///
/// ```no_run
/// # use std::sync::Arc;
/// # use apex_connect_core::http::{HttpClient, RateGate, StaticToken};
/// # async fn run() -> apex_connect_core::Result<()> {
/// let http = HttpClient::builder("https://api2.frontapp.com")
///     .credentials(Arc::new(StaticToken::bearer("token")))
///     .rate_gate(RateGate::per_minute(100)?)
///     .extra_api_hosts(["*.api.frontapp.com"])
///     .build()?;
/// let me: serde_json::Value = http.get_json("/me", &[]).await?;
/// println!("{}", http.stats().snapshot());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

struct Inner {
    base: Url,
    client: ClientWithMiddleware,
    plain: reqwest::Client,
    policy: Arc<dyn PlatformPolicy>,
    hosts: HostAllowList,
    stats: HttpStats,
    gate: Option<RateGate>,
    retry: RetryConfig,
    max_body_bytes: usize,
    max_wait: Duration,
    has_credentials: bool,
}

/// Builds an [`HttpClient`]; see [`HttpClient::builder`].
pub struct HttpClientBuilder {
    base_url: String,
    credentials: Option<Arc<dyn Credentials>>,
    policy: Arc<dyn PlatformPolicy>,
    gate: Option<RateGate>,
    retry: RetryConfig,
    extra_hosts: Vec<String>,
    timeout: Duration,
    connect_timeout: Duration,
    headers_timeout: Duration,
    user_agent: String,
    max_body_bytes: usize,
    clock: Arc<dyn Clock>,
}

/// Default cap on a response body read into memory: 32 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Default [`HttpClientBuilder::headers_timeout`]: 30 s.
pub const DEFAULT_HEADERS_TIMEOUT: Duration = Duration::from_secs(30);

impl HttpClient {
    /// Starts building a client for `base_url` (`https://`, or `http://` on loopback only).
    pub fn builder(base_url: impl Into<String>) -> HttpClientBuilder {
        HttpClientBuilder {
            base_url: base_url.into(),
            credentials: None,
            policy: Arc::new(DefaultPolicy),
            gate: None,
            retry: RetryConfig::default(),
            extra_hosts: Vec::new(),
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            headers_timeout: DEFAULT_HEADERS_TIMEOUT,
            user_agent: concat!("apex-connect/", env!("CARGO_PKG_VERSION")).to_string(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            clock: Arc::new(TokioClock),
        }
    }

    /// The base URL paths are joined to.
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// The client with the full middleware stack (tracing, retry, auth, rate gate).
    pub fn middleware_client(&self) -> &ClientWithMiddleware {
        &self.inner.client
    }

    /// A plain `reqwest::Client` with the same timeouts and user agent, but no middleware,
    /// no credentials and no redirects: for OAuth token endpoints.
    pub fn plain_client(&self) -> &reqwest::Client {
        &self.inner.plain
    }

    /// The platform policy.
    pub fn policy(&self) -> &Arc<dyn PlatformPolicy> {
        &self.inner.policy
    }

    /// The rate gate, if one was configured.
    pub fn rate_gate(&self) -> Option<&RateGate> {
        self.inner.gate.as_ref()
    }

    /// The retry configuration.
    pub fn retry_config(&self) -> &RetryConfig {
        &self.inner.retry
    }

    /// The live counters of this client (shared by its clones).
    pub fn stats(&self) -> &HttpStats {
        &self.inner.stats
    }

    /// Allows one more API host (exact or `*.suffix`) for this client and its clones, e.g.
    /// Salesforce's `instance_url` once the token response tells it.
    ///
    /// # Errors
    /// `Config` if the pattern is not a host or a `*.suffix` wildcard of two labels or more.
    pub fn add_api_host(&self, pattern: &str) -> Result<()> {
        self.inner.hosts.add(pattern)
    }

    /// Checks a link from a response (a pagination `next` URL) before it is followed.
    ///
    /// The link must be an absolute `http(s)` URL: a relative link (or any text that is not
    /// a URL) is refused, never joined onto the base URL. Its origin (scheme, host **and**
    /// port) must be the base URL's, or a host matching one of the policy's
    /// [`api_hosts`](PlatformPolicy::api_hosts), the builder's extra hosts or a host added
    /// with [`add_api_host`](Self::add_api_host) (on the base URL's scheme, and on the
    /// base URL's port unless the pattern names one); the scheme must be `https` (`http`
    /// only on loopback); the URL must not carry userinfo.
    ///
    /// Connectors that follow links in a loop also pass each one to a
    /// [`LinkGuard`](super::LinkGuard), which catches cycles.
    ///
    /// # Errors
    /// `InvalidResponse` (permanent), with context `link`: the link without its query
    /// string (the message names the host, never the query).
    pub fn follow_url(&self, next: &str) -> Result<Url> {
        let text = next.trim();
        let shown = link_for_context(text);
        let not_absolute = |why: String| {
            Error::new(
                ErrorKind::InvalidResponse,
                format!("pagination link is not an absolute http(s) URL: {why}"),
            )
            .permanent()
            .with_context("link", shown.clone())
        };
        let url = Url::parse(text).map_err(|e| match e {
            url::ParseError::RelativeUrlWithoutBase => {
                not_absolute("it has no scheme (a relative link is never followed)".into())
            }
            e => not_absolute(e.to_string()),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(not_absolute(format!(
                "unsupported scheme {:?}",
                url.scheme()
            )));
        }
        self.inner
            .hosts
            .check(&url)
            .map_err(|e| e.with_context("link", shown.clone()))?;
        Ok(url)
    }

    /// The URL for `path_or_url`: a path starting with `/` is appended to the base URL
    /// (keeping the base path); an absolute URL goes through [`follow_url`](Self::follow_url).
    ///
    /// # Errors
    /// `InvalidInput` for anything else; `InvalidResponse` from `follow_url`.
    pub fn url_for(&self, path_or_url: &str) -> Result<Url> {
        if path_or_url.starts_with('/') {
            let base = self.inner.base.as_str().trim_end_matches('/');
            return Url::parse(&format!("{base}{path_or_url}")).map_err(|e| {
                Error::invalid_input(format!("invalid request path: {e}")).permanent()
            });
        }
        if Url::parse(path_or_url).is_ok() {
            return self.follow_url(path_or_url);
        }
        Err(Error::invalid_input(
            "expected a path starting with `/` or an absolute URL",
        ))
    }

    /// A request builder on the full stack for `path_or_url` (see [`url_for`](Self::url_for)),
    /// for requests the helpers do not cover (extra headers, an [`super::Idempotent`] marker).
    ///
    /// # Errors
    /// As [`url_for`](Self::url_for).
    pub fn request(&self, method: Method, path_or_url: &str) -> Result<RequestBuilder> {
        let url = self.url_for(path_or_url)?;
        Ok(self.inner.client.request(method, url))
    }

    fn request_with_query(
        &self,
        method: Method,
        path_or_url: &str,
        query: &[(&str, String)],
    ) -> Result<RequestBuilder> {
        let mut url = self.url_for(path_or_url)?;
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(self.inner.client.request(method, url))
    }

    /// Sends `builder` through the stack. A non-2xx response becomes the policy's error.
    ///
    /// # Behavior
    /// - A response whose hint (`Retry-After`, reset headers) asks for a longer wait than the
    ///   maximum wait (the rate gate's [`max_wait`](RateGate::max_wait), or
    ///   [`DEFAULT_MAX_WAIT`] without a gate) fails with the policy's kind (`RateLimited`
    ///   for a 429) marked **permanent** for this call, its `retry_after` the hint (at most
    ///   [`MAX_RETRY_HINT`](super::MAX_RETRY_HINT)), and a message naming both waits.
    ///
    /// # Errors
    /// The policy's classification for non-2xx; `Network` for transport failures;
    /// `InvalidResponse` for a redirect to a host that is not allowed; errors of the
    /// credentials (`Unauthenticated`) and of the rate gate (`RateLimited`) as they are.
    /// Every error carries `method` and `url` (without query) context.
    pub async fn send(&self, builder: RequestBuilder) -> Result<Response> {
        self.send_inner(builder).await.map(|(resp, _, _)| resp)
    }

    async fn send_inner(&self, mut builder: RequestBuilder) -> Result<(Response, Method, Url)> {
        let mut ext = std::mem::take(builder.extensions());
        let (client, req) = builder.build_split();
        let req = req.map_err(|e| {
            Error::invalid_input("could not build the request").set_source(e.without_url())
        })?;
        let method = req.method().clone();
        let url = req.url().clone();
        let resp = client
            .execute_with_extensions(req, &mut ext)
            .await
            .map_err(|e| map_send_error(e, &method, &url))?;
        let status = resp.status();
        if status.is_success() {
            return Ok((resp, method, url));
        }
        let headers = resp.headers().clone();
        // Best effort: an error body we cannot read still gives a classified error.
        let body = read_capped(resp, 64 * 1024, &method, &url)
            .await
            .unwrap_or_default();
        let err = self
            .inner
            .policy
            .classify(status, &headers, &body, &method, &url);
        let err = beyond_max_wait(err, self.inner.max_wait);
        Err(with_request_context(err, &method, Some(status), &url))
    }

    /// Sends `builder` and decodes a JSON body (an empty body decodes as `null`, so `()` and
    /// `Option<_>` work for 204).
    ///
    /// # Errors
    /// As [`send`](Self::send); `InvalidResponse` for a body over `max_body_bytes`, malformed
    /// JSON (permanent) or a truncated body (temporary).
    pub async fn send_json<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<T> {
        let builder = builder.header(header::ACCEPT, "application/json");
        let (resp, method, url) = self.send_inner(builder).await?;
        let status = resp.status();
        let body = read_capped(resp, self.inner.max_body_bytes, &method, &url).await?;
        let body: &[u8] = if body.is_empty() { b"null" } else { &body };
        serde_json::from_slice(body).map_err(|e| {
            with_request_context(Error::from_json(e, "response"), &method, Some(status), &url)
        })
    }

    /// `GET path_or_url?query` and decode JSON.
    ///
    /// # Errors
    /// As [`send_json`](Self::send_json).
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path_or_url: &str,
        query: &[(&str, String)],
    ) -> Result<T> {
        let rb = self.request_with_query(Method::GET, path_or_url, query)?;
        self.send_json(rb).await
    }

    /// `method path_or_url` with an optional JSON body, and decode JSON.
    ///
    /// # Errors
    /// As [`send_json`](Self::send_json).
    pub async fn request_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path_or_url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T> {
        let rb = self.request(method, path_or_url)?;
        let rb = match body {
            Some(b) => rb.json(b),
            None => rb,
        };
        self.send_json(rb).await
    }

    /// `GET path_or_url?query` and return the body bytes.
    ///
    /// # Errors
    /// As [`send`](Self::send); `InvalidResponse` for a body over `max_body_bytes` or cut short.
    pub async fn get_bytes(&self, path_or_url: &str, query: &[(&str, String)]) -> Result<Bytes> {
        let rb = self.request_with_query(Method::GET, path_or_url, query)?;
        let (resp, method, url) = self.send_inner(rb).await?;
        read_capped(resp, self.inner.max_body_bytes, &method, &url).await
    }

    /// `GET path_or_url?query` and stream the body line by line (JSON-lines exports):
    /// `\n` or `\r\n` separated, empty lines skipped, each line at most `max_body_bytes`.
    /// The whole body is never held in memory.
    ///
    /// # Errors
    /// The request as [`send`](Self::send). Items: `InvalidResponse` for a line over the cap
    /// or not UTF-8 (permanent), or a body cut short (temporary); the stream ends after an
    /// error.
    pub async fn get_lines(
        &self,
        path_or_url: &str,
        query: &[(&str, String)],
    ) -> Result<BoxStream<'static, Result<String>>> {
        let rb = self.request_with_query(Method::GET, path_or_url, query)?;
        let (resp, method, url) = self.send_inner(rb).await?;
        Ok(lines(resp, self.inner.max_body_bytes, method, url))
    }
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("HttpClient")
            .field("base_url", &redact_url(i.base.as_str()))
            .field("credentials", &i.has_credentials.then_some("[redacted]"))
            .field("policy", &i.policy)
            .field("rate_gate", &i.gate)
            .field("retry", &i.retry)
            .field("max_body_bytes", &i.max_body_bytes)
            .field("max_wait", &i.max_wait)
            .field("hosts", &i.hosts)
            .field("stats", &i.stats)
            .finish()
    }
}

impl HttpClientBuilder {
    /// Where the `Authorization` header comes from (none: requests go unauthenticated).
    pub fn credentials(mut self, credentials: Arc<dyn Credentials>) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// The platform policy (default [`DefaultPolicy`]).
    pub fn policy(mut self, policy: Arc<dyn PlatformPolicy>) -> Self {
        self.policy = policy;
        self
    }

    /// The rate gate; pass clones of one gate to every client of the same account.
    pub fn rate_gate(mut self, gate: RateGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The retry configuration (default [`RetryConfig::default`]).
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// More API host patterns (exact or `*.suffix`) besides the policy's.
    pub fn extra_api_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_hosts.extend(hosts.into_iter().map(Into::into));
        self
    }

    /// Timeout of one attempt, from sending to the end of the body (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Timeout from handing an attempt to the transport until its response headers have
    /// arrived (connect, send, server think time), default [`DEFAULT_HEADERS_TIMEOUT`] (30 s).
    ///
    /// A server that accepts the connection but never finishes its headers fails the
    /// attempt after this long (`Network`, temporary), rather than after the whole-request
    /// [`timeout`](Self::timeout). Like other timeouts it is retried only for idempotent
    /// requests (the server may have acted on the request). Waits at the rate gate do not
    /// count.
    pub fn headers_timeout(mut self, timeout: Duration) -> Self {
        self.headers_timeout = timeout;
        self
    }

    /// Timeout to establish a connection (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The `User-Agent` header (default `apex-connect/<version>`).
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// The largest body read into memory (default [`DEFAULT_MAX_BODY_BYTES`]).
    pub fn max_body_bytes(mut self, max: usize) -> Self {
        self.max_body_bytes = max;
        self
    }

    /// The clock the retry layer sleeps on (default tokio time). Tests pass a
    /// [`super::RecordingClock`] (and the same one to [`RateGate::with_clock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Validates the configuration and builds the client.
    ///
    /// # Errors
    /// `Config` for a base URL that does not parse, has no host, carries userinfo, a query
    /// or a fragment, or uses `http` off loopback; an invalid host pattern, user agent or
    /// retry configuration (zero `max_elapsed`); a zero `max_body_bytes` or timeout.
    pub fn build(self) -> Result<HttpClient> {
        let base = Url::parse(self.base_url.trim()).map_err(|e| {
            Error::config(format!(
                "invalid base URL {}: {e}",
                redact_url(&self.base_url)
            ))
        })?;
        let shown = redact_url(base.as_str());
        if base.host_str().is_none_or(str::is_empty) {
            return Err(Error::config(format!("base URL {shown} has no host")));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(Error::config("base URL must not carry credentials"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(Error::config(format!(
                "base URL {shown} must not have a query or fragment"
            )));
        }
        match base.scheme() {
            "https" => {}
            "http" if is_loopback(&base) => {}
            _ => {
                return Err(Error::config(format!(
                    "base URL {shown} must use https (http is allowed on loopback only)"
                )));
            }
        }
        if self.max_body_bytes == 0 {
            return Err(Error::config("max_body_bytes must not be zero"));
        }
        if self.timeout.is_zero()
            || self.connect_timeout.is_zero()
            || self.headers_timeout.is_zero()
        {
            return Err(Error::config("timeouts must not be zero"));
        }
        self.retry.validate()?;
        let mut patterns = self.policy.api_hosts();
        patterns.extend(self.extra_hosts.iter().cloned());
        let hosts = HostAllowList::new(&base, &patterns)?;

        let redirect_hosts = hosts.clone();
        let redirect_policy = redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error(RedirectRefused("too many redirects".into()));
            }
            match redirect_hosts.check(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => {
                    let msg = format!("redirect refused: {}", e.message());
                    attempt.error(RedirectRefused(msg))
                }
            }
        });
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .user_agent(self.user_agent.clone())
            .redirect(redirect_policy)
            .build()
            .map_err(|e| Error::config("could not build the HTTP client").set_source(e))?;
        let plain = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .user_agent(self.user_agent.clone())
            .redirect(redirect::Policy::none())
            .build()
            .map_err(|e| Error::config("could not build the HTTP client").set_source(e))?;

        let stats = HttpStats::new();
        let max_wait = self
            .gate
            .as_ref()
            .map_or(DEFAULT_MAX_WAIT, RateGate::max_wait);
        let mut stack = reqwest_middleware::ClientBuilder::new(client)
            .with(TracingMiddleware)
            .with(RetryMiddleware {
                config: self.retry.clone(),
                clock: self.clock.clone(),
                policy: self.policy.clone(),
                stats: stats.clone(),
                max_wait,
            });
        if let Some(credentials) = &self.credentials {
            stack = stack.with(AuthMiddleware {
                credentials: credentials.clone(),
                stats: stats.clone(),
                hosts: hosts.clone(),
            });
        }
        let stack = stack
            .with(GateMiddleware {
                gate: self.gate.clone(),
                policy: self.policy.clone(),
                stats: stats.clone(),
                headers_timeout: self.headers_timeout,
            })
            .build();

        Ok(HttpClient {
            inner: Arc::new(Inner {
                base,
                client: stack,
                plain,
                policy: self.policy,
                hosts,
                stats,
                gate: self.gate,
                retry: self.retry,
                max_body_bytes: self.max_body_bytes,
                max_wait,
                has_credentials: self.credentials.is_some(),
            }),
        })
    }
}

impl fmt::Debug for HttpClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClientBuilder")
            .field("base_url", &redact_url(&self.base_url))
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "[redacted]"),
            )
            .field("policy", &self.policy)
            .field("rate_gate", &self.gate)
            .field("retry", &self.retry)
            .field("extra_api_hosts", &self.extra_hosts)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("headers_timeout", &self.headers_timeout)
            .field("user_agent", &self.user_agent)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// An error whose `retry_after` exceeds `max_wait` becomes permanent for this call, with a
/// message that says so (the original error is kept as source, its context copied).
fn beyond_max_wait(err: Error, max_wait: Duration) -> Error {
    let Some(hint) = err.retry_after() else {
        return err;
    };
    if hint <= max_wait {
        return err;
    }
    let hint = hint.min(super::policy::MAX_RETRY_HINT);
    let mut e = Error::new(
        err.kind(),
        format!(
            "{}: the platform asks to wait {} s, longer than the maximum wait of {} s; \
             not retried (try again after retry_after)",
            err.message(),
            hint.as_secs(),
            max_wait.as_secs()
        ),
    )
    .permanent()
    .with_retry_after(hint);
    for (k, v) in err.context() {
        e = e.with_context(k, v);
    }
    e.set_source(err)
}

/// The redirect policy's refusal; its message names the host, never the query.
#[derive(Debug)]
struct RedirectRefused(String);

impl fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedirectRefused {}

/// Maps a failure of the stack (no response) to an [`Error`] with request context.
pub(crate) fn map_send_error(err: reqwest_middleware::Error, method: &Method, url: &Url) -> Error {
    let e = match err {
        reqwest_middleware::Error::Middleware(inner) => match inner.downcast::<Error>() {
            Ok(e) => e,
            Err(other) => {
                Error::new(ErrorKind::Unexpected, "HTTP middleware failed").set_source(other)
            }
        },
        reqwest_middleware::Error::Reqwest(e) => map_reqwest_error(e),
    };
    with_request_context(e, method, None, url)
}

fn map_reqwest_error(e: reqwest::Error) -> Error {
    // reqwest puts the full URL (query included) in its Display: strip it.
    let e = e.without_url();
    if e.is_redirect() {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = src {
            if let Some(r) = s.downcast_ref::<RedirectRefused>() {
                return Error::new(ErrorKind::InvalidResponse, r.0.clone()).permanent();
            }
            src = s.source();
        }
        return Error::new(ErrorKind::InvalidResponse, "redirect refused")
            .permanent()
            .set_source(e);
    }
    if e.is_timeout() {
        return Error::new(ErrorKind::Network, "request timed out")
            .temporary()
            .set_source(e);
    }
    if e.is_connect() {
        return Error::new(ErrorKind::Network, "could not connect")
            .temporary()
            .set_source(e);
    }
    if e.is_body() || e.is_decode() {
        return Error::new(
            ErrorKind::InvalidResponse,
            "response body ended early (connection closed)",
        )
        .temporary()
        .set_source(e);
    }
    Error::new(ErrorKind::Network, "request failed")
        .temporary()
        .set_source(e)
}

/// Reads a body of at most `max` bytes.
async fn read_capped(mut resp: Response, max: usize, method: &Method, url: &Url) -> Result<Bytes> {
    let status = resp.status();
    let too_big = || {
        with_request_context(
            Error::new(
                ErrorKind::InvalidResponse,
                format!("response body exceeds the limit of {max} bytes"),
            )
            .permanent(),
            method,
            Some(status),
            url,
        )
    };
    if resp.content_length().is_some_and(|len| len > max as u64) {
        return Err(too_big());
    }
    let mut buf = BytesMut::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > max {
                    return Err(too_big());
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => {
                return Err(with_request_context(
                    map_reqwest_error(e),
                    method,
                    Some(status),
                    url,
                ));
            }
        }
    }
}

struct LineState {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    buf: Vec<u8>,
    scanned: usize,
    eof: bool,
    failed: bool,
    max: usize,
    method: Method,
    url: Url,
    status: http::StatusCode,
}

fn lines(
    resp: Response,
    max: usize,
    method: Method,
    url: Url,
) -> BoxStream<'static, Result<String>> {
    let state = LineState {
        status: resp.status(),
        body: resp.bytes_stream().boxed(),
        buf: Vec::new(),
        scanned: 0,
        eof: false,
        failed: false,
        max,
        method,
        url,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.failed {
                return None;
            }
            if let Some(pos) = st.buf[st.scanned..].iter().position(|b| *b == b'\n') {
                let end = st.scanned + pos;
                let mut line: Vec<u8> = st.buf.drain(..=end).collect();
                st.scanned = 0;
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.is_empty() {
                    continue;
                }
                return Some((st.finish_line(line), st));
            }
            st.scanned = st.buf.len();
            if st.buf.len() > st.max {
                st.failed = true;
                let e = Error::new(
                    ErrorKind::InvalidResponse,
                    format!(
                        "a line of the response exceeds the limit of {} bytes",
                        st.max
                    ),
                )
                .permanent();
                let e = st.context(e);
                return Some((Err(e), st));
            }
            if st.eof {
                if st.buf.is_empty() {
                    return None;
                }
                let mut line = std::mem::take(&mut st.buf);
                st.scanned = 0;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.is_empty() {
                    return None;
                }
                return Some((st.finish_line(line), st));
            }
            match st.body.next().await {
                Some(Ok(chunk)) => st.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    st.failed = true;
                    let e = st.context(map_reqwest_error(e));
                    return Some((Err(e), st));
                }
                None => st.eof = true,
            }
        }
    })
    .boxed()
}

impl LineState {
    fn context(&self, e: Error) -> Error {
        with_request_context(e, &self.method, Some(self.status), &self.url)
    }

    fn finish_line(&mut self, line: Vec<u8>) -> Result<String> {
        String::from_utf8(line).map_err(|e| {
            self.failed = true;
            self.context(
                Error::new(
                    ErrorKind::InvalidResponse,
                    "a line of the response is not UTF-8",
                )
                .permanent()
                .set_source(e),
            )
        })
    }
}
