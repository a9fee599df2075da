//! The simulator toolkit: what a platform crate needs to build its `sim` (an axum server on
//! loopback answering the platform's endpoints with its JSON shapes).
//!
//! - [`SimServer`] serves an [`axum::Router`] on `127.0.0.1:0` and shuts down on drop.
//! - [`Faults`] injects seeded 5xx, 429, resets, slow answers and truncated bodies.
//! - [`FixedWindowLimiter`] enforces "N requests per window" with the platform's headers.
//! - [`SimStats`] counts requests per route, path and status for assertions.
//! - [`paging`] has opaque, checksummed page tokens and JSON helpers.
//! - [`WebhookSender`] signs and delivers webhooks with retries, as platforms do.
//!
//! All three middlewares are [`Intercept`]s, turned into tower layers with
//! [`Intercept::layer`] (or their own `layer()` method):
//!
//! ```no_run
//! # async fn demo() -> apex_connect_core::Result<()> {
//! use std::time::Duration;
//! use apex_connect_testkit::sim::{Faults, FixedWindowLimiter, RateLimitHeaders, SimServer, SimStats};
//! use axum::{Router, routing::get};
//!
//! let faults = Faults::new(42);
//! let limiter = FixedWindowLimiter::new(50, Duration::from_secs(1))
//!     .with_headers(RateLimitHeaders::front());
//! let stats = SimStats::new();
//! let app = Router::new()
//!     .route("/contacts", get(|| async { "[]" }))
//!     // the last layer added runs first: stats see every request, faults come before limits
//!     .layer(limiter.layer())
//!     .layer(faults.layer())
//!     .layer(stats.layer());
//! let sim = SimServer::start(app).await?;
//! let url = format!("{}/contacts", sim.base_url());
//! # let _ = url; Ok(()) }
//! ```

mod faults;
mod intercept;
mod limiter;
pub mod paging;
mod server;
mod stats;
mod webhook;

pub use faults::{FaultCounts, FaultKind, Faults, InjectedFault};
pub use intercept::{Intercept, Next, SimLayer, SimService};
pub use limiter::{FixedWindowLimiter, LimiterStats, RateLimitHeaders, ResetFormat};
pub use server::{SimHandle, SimServer};
pub use stats::SimStats;
pub use webhook::{WebhookDelivery, WebhookSender};
