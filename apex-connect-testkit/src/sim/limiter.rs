//! A fixed-window (or rolling-window) rate limiter with the platform's headers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apex_connect_core::http::Clock;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};

use super::intercept::{Intercept, Next, SimLayer};

/// How the "reset" header expresses the end of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResetFormat {
    /// Unix time in seconds at which the window ends (Front's `x-ratelimit-reset`), rounded up.
    UnixSeconds,
    /// Unix time in milliseconds at which the window ends.
    UnixMillis,
    /// Seconds until the window ends, rounded up.
    SecondsRemaining,
    /// Milliseconds until the window ends.
    MillisRemaining,
    /// The window's length in milliseconds (HubSpot's `X-HubSpot-RateLimit-Interval-Milliseconds`).
    WindowMillis,
}

/// Which headers announce the limit, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitHeaders {
    /// The header carrying the limit per window (`None`: not sent).
    pub limit: Option<HeaderName>,
    /// The header carrying the requests left in this window.
    pub remaining: Option<HeaderName>,
    /// The header carrying the window's reset.
    pub reset: Option<HeaderName>,
    /// The format of `reset`.
    pub reset_format: ResetFormat,
}

impl RateLimitHeaders {
    /// Custom header names.
    pub fn new(
        limit: Option<HeaderName>,
        remaining: Option<HeaderName>,
        reset: Option<HeaderName>,
        reset_format: ResetFormat,
    ) -> Self {
        RateLimitHeaders {
            limit,
            remaining,
            reset,
            reset_format,
        }
    }

    /// FrontApp: `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset` (Unix seconds).
    pub fn front() -> Self {
        Self::new(
            Some(HeaderName::from_static("x-ratelimit-limit")),
            Some(HeaderName::from_static("x-ratelimit-remaining")),
            Some(HeaderName::from_static("x-ratelimit-reset")),
            ResetFormat::UnixSeconds,
        )
    }

    /// HubSpot: `X-HubSpot-RateLimit-Max`, `X-HubSpot-RateLimit-Remaining`,
    /// `X-HubSpot-RateLimit-Interval-Milliseconds` (the window length).
    pub fn hubspot() -> Self {
        Self::new(
            Some(HeaderName::from_static("x-hubspot-ratelimit-max")),
            Some(HeaderName::from_static("x-hubspot-ratelimit-remaining")),
            Some(HeaderName::from_static(
                "x-hubspot-ratelimit-interval-milliseconds",
            )),
            ResetFormat::WindowMillis,
        )
    }

    /// No rate-limit headers at all (only 429 + `Retry-After`).
    pub fn none() -> Self {
        Self::new(None, None, None, ResetFormat::SecondsRemaining)
    }
}

impl Default for RateLimitHeaders {
    fn default() -> Self {
        Self::front()
    }
}

/// Counters of a [`FixedWindowLimiter`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimiterStats {
    /// Requests seen (passing the filter), allowed or not.
    pub requests: u64,
    /// Requests answered with 429.
    pub rejected: u64,
    /// 429s by window index (0 = the window the limiter started in).
    pub rejected_by_window: BTreeMap<u64, u64>,
    /// Allowed requests by window index.
    pub allowed_by_window: BTreeMap<u64, u64>,
}

type KeyFn = Arc<dyn Fn(&Parts) -> String + Send + Sync>;
type Filter = Arc<dyn Fn(&Method, &Uri) -> bool + Send + Sync>;
type BodyFn = Arc<dyn Fn() -> Response + Send + Sync>;

struct State {
    /// Per key: (window index, requests allowed in it).
    windows: HashMap<String, (u64, u32)>,
    /// Rolling mode, per key: when the requests of the last window were allowed, oldest first.
    logs: HashMap<String, VecDeque<Instant>>,
    stats: LimiterStats,
}

impl State {
    fn new() -> State {
        State {
            windows: HashMap::new(),
            logs: HashMap::new(),
            stats: LimiterStats::default(),
        }
    }
}

struct Inner {
    limit: u32,
    window: Duration,
    start: Instant,
    start_wall: SystemTime,
    headers: RateLimitHeaders,
    key: Option<KeyFn>,
    filter: Option<Filter>,
    body: Option<BodyFn>,
    rolling: bool,
    clock: Option<Arc<dyn Clock>>,
    state: Mutex<State>,
}

/// "`limit` requests per fixed `window`", per key, as an [`Intercept`].
///
/// Windows use real time (it runs in a real server). By default they are aligned on multiples
/// of the window length since the Unix epoch, like a platform's wall-clock windows (so a 1 s
/// window's reset in Unix seconds is exact); window 0 is the one the limiter was created in,
/// and is therefore usually partial. [`FixedWindowLimiter::with_epoch_alignment`]`(false)`
/// starts window 0 at creation instead.
///
/// # Behavior
/// - The first `limit` requests of a key in a window pass; each answer carries the limit, the
///   remaining count (after this request) and the reset, under the configured header names.
/// - Request `limit + 1` and later in the window get `429` with `Retry-After` (whole seconds
///   until the window ends, rounded up, at least 1), the same headers with remaining `0`, and
///   the configured body (default `{"error":{"status":429,"message":"rate limit exceeded"}}`).
///   Refused requests do not count against the window.
/// - The builder methods (`with_*`, `keyed_by_header`) are meant for set-up: on a value
///   already cloned into a router they make a new, separate limiter.
/// - The key defaults to one global account; [`FixedWindowLimiter::with_key`] derives it from
///   the request (the `Authorization` header, say).
/// - In rolling mode ([`FixedWindowLimiter::with_rolling_window`]) a request passes when
///   fewer than `limit` requests of its key passed in the last `window` (a sliding window, as
///   HubSpot counts its ten seconds); the remaining count is what that leaves, and the reset
///   (and `Retry-After`) is when the oldest of them leaves the window.
/// - Time is real time, or the [`Clock`] given to [`FixedWindowLimiter::with_clock`] (tests
///   share a virtual clock between a simulator and the client's rate gate).
#[derive(Clone)]
pub struct FixedWindowLimiter {
    inner: Arc<Inner>,
}

impl fmt::Debug for FixedWindowLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixedWindowLimiter")
            .field("limit", &self.inner.limit)
            .field("window", &self.inner.window)
            .field("headers", &self.inner.headers)
            .field("stats", &self.stats())
            .finish()
    }
}

impl FixedWindowLimiter {
    /// `limit` requests per `window` for one global key, with Front's headers. A zero window
    /// is treated as one millisecond.
    pub fn new(limit: u32, window: Duration) -> Self {
        let window = window.max(Duration::from_millis(1));
        let (start, start_wall) = window_origin(window, true);
        FixedWindowLimiter {
            inner: Arc::new(Inner {
                limit,
                window,
                start,
                start_wall,
                headers: RateLimitHeaders::front(),
                key: None,
                filter: None,
                body: None,
                rolling: false,
                clock: None,
                state: Mutex::new(State::new()),
            }),
        }
    }

    fn map(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => Inner {
                limit: shared.limit,
                window: shared.window,
                start: shared.start,
                start_wall: shared.start_wall,
                headers: shared.headers.clone(),
                key: shared.key.clone(),
                filter: shared.filter.clone(),
                body: shared.body.clone(),
                rolling: shared.rolling,
                clock: shared.clock.clone(),
                state: Mutex::new(State::new()),
            },
        };
        f(&mut inner);
        FixedWindowLimiter {
            inner: Arc::new(inner),
        }
    }

    /// Aligns windows on the Unix epoch (`true`, the default) or starts window 0 now
    /// (`false`: a test then has a whole first window, away from any edge).
    pub fn with_epoch_alignment(self, aligned: bool) -> Self {
        self.map(|i| (i.start, i.start_wall) = window_origin(i.window, aligned))
    }

    /// Counts requests in a rolling window (`true`: at most `limit` in any span of `window`,
    /// as HubSpot does) instead of fixed windows (`false`, the default).
    pub fn with_rolling_window(self, rolling: bool) -> Self {
        self.map(|i| i.rolling = rolling)
    }

    /// Reads the time from `clock` instead of the real clock (a virtual clock shared with the
    /// client under test).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        self.map(|i| {
            // Window 0 starts as long before the clock's now as it did before real now.
            let now = clock.now().into_std();
            let behind = Instant::now().saturating_duration_since(i.start);
            i.start = now.checked_sub(behind).unwrap_or(now);
            i.clock = Some(clock);
        })
    }

    /// Announces the limit with these headers.
    pub fn with_headers(self, headers: RateLimitHeaders) -> Self {
        self.map(|i| i.headers = headers)
    }

    /// Keys the windows by `key(request parts)` (one account per key).
    pub fn with_key(self, key: impl Fn(&Parts) -> String + Send + Sync + 'static) -> Self {
        self.map(|i| i.key = Some(Arc::new(key)))
    }

    /// Keys the windows by the value of header `name` (e.g. `authorization`); requests without
    /// it share one key.
    pub fn keyed_by_header(self, name: HeaderName) -> Self {
        self.with_key(move |parts| {
            parts
                .headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        })
    }

    /// Limits only requests for which `filter(method, uri)` is true.
    pub fn with_filter(
        self,
        filter: impl Fn(&Method, &Uri) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.map(|i| i.filter = Some(Arc::new(filter)))
    }

    /// Renders the 429 body (status, `Retry-After` and rate headers are set afterwards).
    pub fn with_body(self, body: impl Fn() -> Response + Send + Sync + 'static) -> Self {
        self.map(|i| i.body = Some(Arc::new(body)))
    }

    /// The limit per window.
    pub fn limit(&self) -> u32 {
        self.inner.limit
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        self.inner.window
    }

    /// The index of the current window.
    pub fn current_window(&self) -> u64 {
        self.window_index(self.now())
    }

    fn now(&self) -> Instant {
        match &self.inner.clock {
            Some(c) => c.now().into_std(),
            None => Instant::now(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> LimiterStats {
        self.state().stats.clone()
    }

    /// This as a tower layer for [`axum::Router::layer`].
    pub fn layer(&self) -> SimLayer<FixedWindowLimiter> {
        Intercept::layer(self)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn window_index(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.inner.start);
        (elapsed.as_nanos() / self.inner.window.as_nanos()) as u64
    }

    /// The length of `n` windows.
    fn windows_len(&self, n: u64) -> Duration {
        self.inner
            .window
            .saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Counts one request of `key` now: (allowed, remaining, window index, time left in window).
    fn admit(&self, key: String) -> (bool, u32, u64, Duration) {
        let now = self.now();
        if self.inner.rolling {
            return self.admit_rolling(key, now);
        }
        let idx = self.window_index(now);
        let window_end = self.inner.start + self.windows_len(idx + 1);
        let left = window_end.saturating_duration_since(now);
        let mut s = self.state();
        s.stats.requests += 1;
        let entry = s.windows.entry(key).or_insert((idx, 0));
        if entry.0 != idx {
            *entry = (idx, 0);
        }
        let allowed = entry.1 < self.inner.limit;
        if allowed {
            entry.1 += 1;
        }
        let remaining = self.inner.limit.saturating_sub(entry.1);
        if allowed {
            *s.stats.allowed_by_window.entry(idx).or_default() += 1;
        } else {
            s.stats.rejected += 1;
            *s.stats.rejected_by_window.entry(idx).or_default() += 1;
        }
        (allowed, remaining, idx, left)
    }

    /// Rolling mode: as [`admit`](Self::admit), the "time left" being when the oldest request
    /// of the window leaves it.
    fn admit_rolling(&self, key: String, now: Instant) -> (bool, u32, u64, Duration) {
        let window = self.inner.window;
        let idx = self.window_index(now);
        let limit = self.inner.limit;
        let mut s = self.state();
        s.stats.requests += 1;
        let log = s.logs.entry(key).or_default();
        while log.front().is_some_and(|t| *t + window <= now) {
            log.pop_front();
        }
        let used = u32::try_from(log.len()).unwrap_or(u32::MAX);
        let allowed = used < limit;
        if allowed {
            log.push_back(now);
        }
        let remaining = limit.saturating_sub(used.saturating_add(u32::from(allowed)));
        let left = log
            .front()
            .map_or(window, |t| (*t + window).saturating_duration_since(now));
        if allowed {
            *s.stats.allowed_by_window.entry(idx).or_default() += 1;
        } else {
            s.stats.rejected += 1;
            *s.stats.rejected_by_window.entry(idx).or_default() += 1;
        }
        (allowed, remaining, idx, left)
    }

    fn set_headers(&self, headers: &mut HeaderMap, remaining: u32, idx: u64, left: Duration) {
        let h = &self.inner.headers;
        if let Some(name) = &h.limit {
            headers.insert(name.clone(), HeaderValue::from(self.inner.limit));
        }
        if let Some(name) = &h.remaining {
            headers.insert(name.clone(), HeaderValue::from(remaining));
        }
        if let Some(name) = &h.reset {
            let end_wall = self.inner.start_wall + self.windows_len(idx + 1);
            let since_epoch = end_wall.duration_since(UNIX_EPOCH).unwrap_or_default();
            let value = match h.reset_format {
                ResetFormat::UnixSeconds => ceil_secs(since_epoch),
                ResetFormat::UnixMillis => since_epoch.as_millis() as u64,
                ResetFormat::SecondsRemaining => ceil_secs(left),
                ResetFormat::MillisRemaining => left.as_millis() as u64,
                ResetFormat::WindowMillis => self.inner.window.as_millis() as u64,
            };
            headers.insert(name.clone(), HeaderValue::from(value));
        }
    }
}

/// The start of window 0: now, or the last multiple of `window` since the Unix epoch.
fn window_origin(window: Duration, aligned: bool) -> (Instant, SystemTime) {
    let now = Instant::now();
    let now_wall = SystemTime::now();
    if !aligned {
        return (now, now_wall);
    }
    let since_epoch = now_wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let phase = Duration::from_nanos((since_epoch.as_nanos() % window.as_nanos()) as u64);
    match (now.checked_sub(phase), now_wall.checked_sub(phase)) {
        (Some(start), Some(start_wall)) => (start, start_wall),
        _ => (now, now_wall),
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Intercept for FixedWindowLimiter {
    fn intercept(&self, req: Request, next: Next) -> BoxFuture<'static, Response> {
        let this = self.clone();
        Box::pin(async move {
            if let Some(filter) = &this.inner.filter
                && !filter(req.method(), req.uri())
            {
                return next.run(req).await;
            }
            let (parts, body) = req.into_parts();
            let key = this
                .inner
                .key
                .as_ref()
                .map(|k| k(&parts))
                .unwrap_or_default();
            let req = Request::from_parts(parts, body);
            let (allowed, remaining, idx, left) = this.admit(key);
            let mut resp = if allowed {
                next.run(req).await
            } else {
                let mut resp = match &this.inner.body {
                    Some(render) => render(),
                    None => axum::Json(serde_json::json!({
                        "error": {"status": 429, "message": "rate limit exceeded"}
                    }))
                    .into_response(),
                };
                *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                resp.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(ceil_secs(left).max(1)),
                );
                resp
            };
            this.set_headers(resp.headers_mut(), remaining, idx, left);
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apex_connect_core::http::RecordingClock;

    #[tokio::test]
    async fn rolling_window_counts_the_last_window_and_resets_when_the_oldest_leaves() {
        let clock = Arc::new(RecordingClock::new());
        let l = FixedWindowLimiter::new(3, Duration::from_secs(10))
            .with_rolling_window(true)
            .with_headers(RateLimitHeaders::hubspot())
            .with_clock(clock.clone());
        // t = 0, 4, 8: three allowed; the third leaves nothing.
        for (i, left) in [(2, 10), (1, 6), (0, 2)] {
            let (ok, remaining, _, until) = l.admit(String::new());
            assert!(ok);
            assert_eq!(remaining, i);
            assert_eq!(until, Duration::from_secs(left));
            clock.sleep(Duration::from_secs(4)).await;
        }
        // t = 12: the first (t = 0) left at 10, the second (t = 4) leaves at 14.
        let (ok, remaining, _, until) = l.admit(String::new());
        assert!(ok, "a fixed window of 10 s would refuse this one");
        assert_eq!((remaining, until), (0, Duration::from_secs(2)));
        let (ok, remaining, _, until) = l.admit(String::new());
        assert!(!ok);
        assert_eq!((remaining, until), (0, Duration::from_secs(2)));
        clock.sleep(Duration::from_secs(2)).await;
        assert!(l.admit(String::new()).0);
        let stats = l.stats();
        assert_eq!((stats.requests, stats.rejected), (6, 1));
        let mut h = HeaderMap::new();
        l.set_headers(&mut h, 0, 0, Duration::from_secs(1));
        assert_eq!(h["x-hubspot-ratelimit-interval-milliseconds"], "10000");
        assert_eq!(h["x-hubspot-ratelimit-max"], "3");
    }
}
