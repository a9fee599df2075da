//! Seeded fault injection: 5xx, 429, connection resets, slow answers, truncated bodies.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::{HeaderValue, Method, StatusCode, Uri, header};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::intercept::{Intercept, Next, SimLayer};

/// The largest response body the truncation fault buffers (larger bodies pass untouched).
const MAX_TRUNCATE_BODY: usize = 64 * 1024 * 1024;

/// One kind of fault.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// Answer with this status (500, 502, 503...) and a JSON error body, without calling the
    /// handler.
    Status(StatusCode),
    /// Answer `429 Too Many Requests` with `Retry-After` (whole seconds, rounded up).
    TooManyRequests {
        /// The wait announced in `Retry-After`.
        retry_after: Duration,
    },
    /// Close the connection without sending any response (the client sees a reset /
    /// "connection closed before message completed").
    ConnectionReset,
    /// Wait this long, then answer normally.
    Slow(Duration),
    /// Answer normally, but send only the first half of the body while advertising the full
    /// `Content-Length`, then fail the stream so the connection closes.
    TruncatedBody,
}

impl FaultKind {
    /// `500 Internal Server Error`.
    pub const INTERNAL: FaultKind = FaultKind::Status(StatusCode::INTERNAL_SERVER_ERROR);
    /// `502 Bad Gateway`.
    pub const BAD_GATEWAY: FaultKind = FaultKind::Status(StatusCode::BAD_GATEWAY);
    /// `503 Service Unavailable`.
    pub const UNAVAILABLE: FaultKind = FaultKind::Status(StatusCode::SERVICE_UNAVAILABLE);

    /// A 429 with `Retry-After: secs`.
    pub fn too_many_requests(secs: u64) -> FaultKind {
        FaultKind::TooManyRequests {
            retry_after: Duration::from_secs(secs),
        }
    }

    /// A short name for counters: `"status"`, `"too_many_requests"`, `"connection_reset"`,
    /// `"slow"`, `"truncated_body"`.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Status(_) => "status",
            FaultKind::TooManyRequests { .. } => "too_many_requests",
            FaultKind::ConnectionReset => "connection_reset",
            FaultKind::Slow(_) => "slow",
            FaultKind::TruncatedBody => "truncated_body",
        }
    }
}

/// A fault that was injected, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InjectedFault {
    /// The 1-based number of the (filtered) request it hit.
    pub request: u64,
    /// What was injected.
    pub kind: FaultKind,
    /// The request's method.
    pub method: Method,
    /// The request's path (no query string).
    pub path: String,
}

/// Counters of [`Faults`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FaultCounts {
    /// Requests the faults looked at (those passing the filter).
    pub requests: u64,
    /// Faults injected in total.
    pub injected: u64,
    /// Faults injected by [`FaultKind::name`].
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Injected status codes (5xx and 429) by code.
    pub by_status: BTreeMap<u16, u64>,
}

impl FaultCounts {
    /// How many faults of kind `name` (see [`FaultKind::name`]) were injected.
    pub fn kind(&self, name: &str) -> u64 {
        self.by_kind.get(name).copied().unwrap_or(0)
    }
}

type Filter = Arc<dyn Fn(&Method, &Uri) -> bool + Send + Sync>;
type ErrorBody = Arc<dyn Fn(StatusCode) -> Response + Send + Sync>;

struct State {
    enabled: bool,
    rng: StdRng,
    random: Vec<(FaultKind, f64)>,
    at: BTreeMap<u64, FaultKind>,
    queue: VecDeque<FaultKind>,
    counts: FaultCounts,
    log: Vec<InjectedFault>,
}

struct Inner {
    state: Mutex<State>,
    filter: Option<Filter>,
    error_body: Option<ErrorBody>,
}

/// Seeded fault injection, as an [`Intercept`] (add it with `router.layer(faults.layer())`).
///
/// Cheap to clone: clones share the schedule, the random generator and the counters, so a
/// test keeps one clone to steer the simulator at run time. Configure the filter and error
/// body (`with_filter`, `with_error_body`) before cloning: on an already shared value they
/// make a new, separate instance.
///
/// # Behavior
/// - Each request that passes the filter gets a number (1, 2, ...). Its fault is, in order of
///   precedence: one queued with [`Faults::push_scheduled`]; one scheduled for its number with
///   [`Faults::at`]; else one drawn from the probabilities of [`Faults::with_probability`]
///   using the seeded generator (the same seed and request order give the same faults).
/// - While disabled ([`Faults::set_enabled`]) nothing is injected and nothing is consumed
///   from the queue, but requests are still numbered.
/// - Injected error answers use a JSON body `{"error":{"status":..,"message":..}}` unless
///   [`Faults::with_error_body`] says otherwise.
#[derive(Clone)]
pub struct Faults {
    inner: Arc<Inner>,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("Faults")
            .field("enabled", &state.enabled)
            .field("random", &state.random)
            .field("scheduled", &state.at.len())
            .field("queued", &state.queue.len())
            .field("counts", &state.counts)
            .finish()
    }
}

impl Faults {
    /// Faults drawn from a generator seeded with `seed`; enabled, with nothing configured yet.
    pub fn new(seed: u64) -> Self {
        Faults {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    enabled: true,
                    rng: StdRng::seed_from_u64(seed),
                    random: Vec::new(),
                    at: BTreeMap::new(),
                    queue: VecDeque::new(),
                    counts: FaultCounts::default(),
                    log: Vec::new(),
                }),
                filter: None,
                error_body: None,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the counters inconsistent in a way that
        // matters to a simulator; keep going.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn rebuild(self, f: impl FnOnce(&mut Inner)) -> Self {
        // Builder methods run before the faults are shared; if they already are, the
        // configuration is copied into a fresh, unshared instance.
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => {
                let state = shared
                    .state
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                Inner {
                    state: Mutex::new(State {
                        enabled: state.enabled,
                        rng: state.rng.clone(),
                        random: state.random.clone(),
                        at: state.at.clone(),
                        queue: state.queue.clone(),
                        counts: state.counts.clone(),
                        log: state.log.clone(),
                    }),
                    filter: shared.filter.clone(),
                    error_body: shared.error_body.clone(),
                }
            }
        };
        f(&mut inner);
        Faults {
            inner: Arc::new(inner),
        }
    }

    /// Injects `kind` into each request with probability `p` (0.0 to 1.0). Several kinds may be
    /// given; their probabilities add up (one draw per request).
    pub fn with_probability(self, kind: FaultKind, p: f64) -> Self {
        let p = if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.state().random.push((kind, p));
        self
    }

    /// Injects `kind` into the `n`th request (1-based) that passes the filter.
    pub fn at(self, n: u64, kind: FaultKind) -> Self {
        self.state().at.insert(n, kind);
        self
    }

    /// Looks only at requests for which `filter(method, uri)` is true (for example, not at the
    /// OAuth token endpoint). Others pass untouched and are not numbered.
    pub fn with_filter(
        self,
        filter: impl Fn(&Method, &Uri) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.rebuild(|inner| inner.filter = Some(Arc::new(filter)))
    }

    /// Renders injected error answers (5xx and 429) with the platform's error shape; the 429's
    /// `Retry-After` header is added afterwards.
    pub fn with_error_body(
        self,
        render: impl Fn(StatusCode) -> Response + Send + Sync + 'static,
    ) -> Self {
        self.rebuild(|inner| inner.error_body = Some(Arc::new(render)))
    }

    /// Switches injection on or off at run time.
    pub fn set_enabled(&self, enabled: bool) {
        self.state().enabled = enabled;
    }

    /// Whether injection is on.
    pub fn is_enabled(&self) -> bool {
        self.state().enabled
    }

    /// Queues `kind` for the next request that passes the filter (first in, first out).
    pub fn push_scheduled(&self, kind: FaultKind) {
        self.state().queue.push_back(kind);
    }

    /// Schedules `kind` for the `n`th request (1-based, counted since creation).
    pub fn schedule_at(&self, n: u64, kind: FaultKind) {
        self.state().at.insert(n, kind);
    }

    /// Replaces the probabilities at run time.
    pub fn set_probabilities(&self, random: Vec<(FaultKind, f64)>) {
        self.state().random = random
            .into_iter()
            .map(|(k, p)| {
                (
                    k,
                    if p.is_finite() {
                        p.clamp(0.0, 1.0)
                    } else {
                        0.0
                    },
                )
            })
            .collect();
    }

    /// Drops every queued and scheduled fault and every probability.
    pub fn clear(&self) {
        let mut s = self.state();
        s.random.clear();
        s.at.clear();
        s.queue.clear();
    }

    /// The counters so far.
    pub fn counts(&self) -> FaultCounts {
        self.state().counts.clone()
    }

    /// Every fault injected so far, in order.
    pub fn injected(&self) -> Vec<InjectedFault> {
        self.state().log.clone()
    }

    /// This as a tower layer for [`axum::Router::layer`].
    pub fn layer(&self) -> SimLayer<Faults> {
        Intercept::layer(self)
    }

    /// Decides the fault for one request, updating counters.
    fn decide(&self, method: &Method, uri: &Uri) -> Option<FaultKind> {
        let mut s = self.state();
        s.counts.requests += 1;
        let n = s.counts.requests;
        if !s.enabled {
            return None;
        }
        let kind = if let Some(k) = s.queue.pop_front() {
            Some(k)
        } else if let Some(k) = s.at.remove(&n) {
            Some(k)
        } else if s.random.is_empty() {
            None
        } else {
            let r: f64 = s.rng.random();
            let mut acc = 0.0;
            let mut chosen = None;
            for (k, p) in &s.random {
                acc += p;
                if r < acc {
                    chosen = Some(k.clone());
                    break;
                }
            }
            chosen
        };
        if let Some(k) = &kind {
            s.counts.injected += 1;
            *s.counts.by_kind.entry(k.name()).or_default() += 1;
            match k {
                FaultKind::Status(code) => {
                    *s.counts.by_status.entry(code.as_u16()).or_default() += 1
                }
                FaultKind::TooManyRequests { .. } => {
                    *s.counts.by_status.entry(429).or_default() += 1
                }
                _ => {}
            }
            s.log.push(InjectedFault {
                request: n,
                kind: k.clone(),
                method: method.clone(),
                path: uri.path().to_string(),
            });
        }
        kind
    }

    fn error_response(&self, status: StatusCode) -> Response {
        match &self.inner.error_body {
            Some(render) => {
                let mut resp = render(status);
                *resp.status_mut() = status;
                resp
            }
            None => (
                status,
                axum::Json(serde_json::json!({
                    "error": {
                        "status": status.as_u16(),
                        "message": status.canonical_reason().unwrap_or("injected fault"),
                    }
                })),
            )
                .into_response(),
        }
    }
}

impl Intercept for Faults {
    fn intercept(&self, req: Request, next: Next) -> BoxFuture<'static, Response> {
        let this = self.clone();
        Box::pin(async move {
            if let Some(filter) = &this.inner.filter
                && !filter(req.method(), req.uri())
            {
                return next.run(req).await;
            }
            let Some(kind) = this.decide(req.method(), req.uri()) else {
                return next.run(req).await;
            };
            match kind {
                FaultKind::Status(code) => this.error_response(code),
                FaultKind::TooManyRequests { retry_after } => {
                    let mut resp = this.error_response(StatusCode::TOO_MANY_REQUESTS);
                    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                    resp
                }
                FaultKind::ConnectionReset => reset_response(),
                FaultKind::Slow(delay) => {
                    tokio::time::sleep(delay).await;
                    next.run(req).await
                }
                FaultKind::TruncatedBody => truncate(next.run(req).await).await,
            }
        })
    }
}

fn body_failure(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, what)
}

/// A response whose body fails at once: hyper has buffered the head but not flushed it, so it
/// closes the connection without sending a byte.
fn reset_response() -> Response {
    let body = Body::from_stream(futures::stream::once(async {
        Err::<Bytes, _>(body_failure("simulated connection reset"))
    }));
    Response::new(body)
}

async fn truncate(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_TRUNCATE_BODY).await {
        Ok(b) => b,
        Err(_) => {
            // The handler's own body failed or was too large: the client sees a broken body
            // either way.
            return reset_response();
        }
    };
    let full = bytes.len();
    let half = bytes.slice(..full / 2);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(full as u64));
    let stream = futures::stream::unfold(0u8, move |step| {
        let half = half.clone();
        async move {
            match step {
                0 => Some((Ok::<Bytes, std::io::Error>(half), 1)),
                1 => {
                    // Let hyper flush the head and the first half before the stream fails.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Some((Err(body_failure("simulated truncated body")), 2))
                }
                _ => None,
            }
        }
    });
    Response::from_parts(parts, Body::from_stream(stream))
}
