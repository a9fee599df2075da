//! Request counters of a simulator, for assertions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use futures::future::BoxFuture;

use super::intercept::{Intercept, Next, SimLayer};

#[derive(Debug, Default)]
struct Counts {
    total: u64,
    by_path: BTreeMap<String, u64>,
    by_route: BTreeMap<String, u64>,
    by_status: BTreeMap<u16, u64>,
}

/// Counts requests per method + route (`"GET /contacts/{id}"`), per method + path
/// (`"GET /contacts/crd_1"`) and per answered status, as an [`Intercept`].
///
/// Add it as the outermost layer (the last `.layer(..)`) to count every request, including
/// those answered by faults or the limiter. Requests matching no route count under the
/// route `"<METHOD> <unmatched>"`. Cheap to clone; clones share the counters.
#[derive(Debug, Clone, Default)]
pub struct SimStats {
    inner: Arc<Mutex<Counts>>,
}

impl SimStats {
    /// Empty counters.
    pub fn new() -> Self {
        Self::default()
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Requests seen in total.
    pub fn requests(&self) -> u64 {
        self.counts().total
    }

    /// Requests for `"<METHOD> <path>"`, e.g. `"GET /contacts"` (the path without query).
    pub fn path(&self, method_and_path: &str) -> u64 {
        self.counts()
            .by_path
            .get(method_and_path)
            .copied()
            .unwrap_or(0)
    }

    /// Requests for `"<METHOD> <route>"`, e.g. `"GET /contacts/{id}"`.
    pub fn route(&self, method_and_route: &str) -> u64 {
        self.counts()
            .by_route
            .get(method_and_route)
            .copied()
            .unwrap_or(0)
    }

    /// Answers with `status`.
    pub fn status(&self, status: u16) -> u64 {
        self.counts().by_status.get(&status).copied().unwrap_or(0)
    }

    /// All counts per `"<METHOD> <path>"`.
    pub fn by_path(&self) -> BTreeMap<String, u64> {
        self.counts().by_path.clone()
    }

    /// All counts per `"<METHOD> <route>"`.
    pub fn by_route(&self) -> BTreeMap<String, u64> {
        self.counts().by_route.clone()
    }

    /// All counts per answered status.
    pub fn by_status(&self) -> BTreeMap<u16, u64> {
        self.counts().by_status.clone()
    }

    /// Sets every counter back to zero.
    pub fn reset(&self) {
        *self.counts() = Counts::default();
    }

    /// This as a tower layer for [`axum::Router::layer`].
    pub fn layer(&self) -> SimLayer<SimStats> {
        Intercept::layer(self)
    }
}

impl Intercept for SimStats {
    fn intercept(&self, req: Request, next: Next) -> BoxFuture<'static, Response> {
        let this = self.clone();
        let method = req.method().clone();
        let path = format!("{method} {}", req.uri().path());
        let route = match req.extensions().get::<MatchedPath>() {
            Some(m) => format!("{method} {}", m.as_str()),
            None => format!("{method} <unmatched>"),
        };
        {
            let mut c = this.counts();
            c.total += 1;
            *c.by_path.entry(path).or_default() += 1;
            *c.by_route.entry(route).or_default() += 1;
        }
        Box::pin(async move {
            let resp = next.run(req).await;
            *this
                .counts()
                .by_status
                .entry(resp.status().as_u16())
                .or_default() += 1;
            resp
        })
    }
}
