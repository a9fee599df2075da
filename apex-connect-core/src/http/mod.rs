//! The HTTP stack: one client per connection with retry, auth, rate gate and host policy.
//!
//! [`HttpClient`] is built once per connection and cloned cheaply. Its requests pass through
//! four [`reqwest_middleware::Middleware`]s, outermost first:
//!
//! ```text
//! tracing -> retry -> auth -> rate gate -> transport (reqwest)
//! ```
//!
//! Why this order:
//! - **tracing** is outermost so its `http.request` span covers the whole logical request,
//!   all attempts and waits included; the retry layer opens an `http.attempt` child span per
//!   attempt. Spans carry method, host and path, never the query, headers or bodies.
//! - **retry** sits outside auth so that each attempt asks the [`Credentials`] again (a token
//!   refreshed by another task meanwhile is picked up), and outside the gate so that every
//!   attempt, retries included, pays the rate budget. Backoff sleeps happen here; hints
//!   (`Retry-After`, the platform's reset headers) raise the delay, and the total-time bound
//!   is checked before each sleep.
//! - **auth** is inside retry and outside the gate: the one repeat after a 401 and a refresh
//!   is itself gated. A 401 is never retried by the retry layer.
//! - **rate gate** is innermost, next to the transport: it is the last point before a request
//!   leaves, so its token bucket counts exactly the requests the platform sees, and it reads
//!   every response's rate headers (and 429s) first, closing the gate for all clones.
//!
//! Non-2xx responses are turned into [`Error`](crate::Error)s by the [`PlatformPolicy`] in the
//! request helpers ([`HttpClient::get_json`] and friends), never inside the stack: the raw
//! [`HttpClient::middleware_client`] returns responses as they came (after retries).
//!
//! Pagination links are followed only when they are absolute URLs on the connection's API
//! origins (scheme, host and port: [`HttpClient::follow_url`]), and redirects only to those
//! origins; the auth layer never attaches credentials to a request for any other origin.
//! [`LinkGuard`] catches pagination cycles and runs of pages without new records, and
//! [`check_page_len`] pages far larger than the `limit` asked for. Ids go into paths through
//! [`path_segment`].
//!
//! Timeouts, outermost first: the retry layer's total budget ([`RetryConfig::max_elapsed`],
//! waits and attempts together), the whole-attempt timeout (connect to the end of the body,
//! [`HttpClientBuilder::timeout`]), the time to response headers
//! ([`HttpClientBuilder::headers_timeout`]) and the connect timeout.

mod auth;
mod client;
mod clock;
mod credentials;
mod gate;
mod hosts;
mod observe;
mod paging;
mod path;
mod policy;
mod retry;
mod stats;
mod trace;

pub use client::{DEFAULT_HEADERS_TIMEOUT, DEFAULT_MAX_BODY_BYTES, HttpClient, HttpClientBuilder};
pub use clock::{Clock, RecordingClock, TokioClock};
pub use credentials::{Credentials, StaticToken};
pub use gate::{DEFAULT_MAX_WAIT, RateGate};
pub use governor::Quota;
pub use observe::{GateWaitObserver, observe_gate_waits};
pub use paging::{
    DEFAULT_MAX_LINKS, DEFAULT_MAX_STALE_PAGES, LinkGuard, check_page_len, page_len_slack,
};
pub use path::path_segment;
pub use policy::{
    DefaultPolicy, MAX_RETRY_HINT, PlatformPolicy, RateState, RateWindow, classify_status,
    reset_to_duration, retry_after, with_request_context, x_ratelimit_state,
};
pub use retry::{IdempotencyExt, IdempotencyKey, Idempotent, RetryConfig};
pub use stats::{HttpStats, HttpStatsSnapshot};
