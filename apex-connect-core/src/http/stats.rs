//! Counters of what the HTTP stack did, shared by every clone of a client.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Live counters (atomics behind an `Arc`); [`HttpStats::snapshot`] reads them.
#[derive(Clone, Default)]
pub struct HttpStats {
    inner: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    requests_sent: AtomicU64,
    responses: [AtomicU64; 5],
    transport_errors: AtomicU64,
    rate_limited: AtomicU64,
    retries: AtomicU64,
    auth_refreshes: AtomicU64,
    gate_wait_nanos: AtomicU64,
}

/// A point-in-time copy of [`HttpStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpStatsSnapshot {
    /// Attempts handed to the transport (every retry counts).
    pub requests_sent: u64,
    /// Responses with a 1xx status.
    pub informational: u64,
    /// Responses with a 2xx status.
    pub success: u64,
    /// Responses with a 3xx status.
    pub redirection: u64,
    /// Responses with a 4xx status.
    pub client_error: u64,
    /// Responses with a 5xx status.
    pub server_error: u64,
    /// Attempts that got no response (connect error, reset, timeout).
    pub transport_errors: u64,
    /// 429 responses seen.
    pub rate_limited: u64,
    /// Attempts repeated by the retry layer.
    pub retries: u64,
    /// Credential refreshes after a 401.
    pub auth_refreshes: u64,
    /// Total time requests spent waiting on the rate gate.
    pub gate_wait: Duration,
}

impl HttpStats {
    /// Fresh counters at zero.
    pub fn new() -> Self {
        HttpStats::default()
    }

    /// Reads all counters.
    pub fn snapshot(&self) -> HttpStatsSnapshot {
        let c = &self.inner;
        let r = |i: usize| c.responses[i].load(Ordering::Relaxed);
        HttpStatsSnapshot {
            requests_sent: c.requests_sent.load(Ordering::Relaxed),
            informational: r(0),
            success: r(1),
            redirection: r(2),
            client_error: r(3),
            server_error: r(4),
            transport_errors: c.transport_errors.load(Ordering::Relaxed),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            auth_refreshes: c.auth_refreshes.load(Ordering::Relaxed),
            gate_wait: Duration::from_nanos(c.gate_wait_nanos.load(Ordering::Relaxed)),
        }
    }

    pub(crate) fn record_sent(&self) {
        self.inner.requests_sent.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_status(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.inner.responses[class].fetch_add(1, Ordering::Relaxed);
        if status == 429 {
            self.inner.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn record_transport_error(&self) {
        self.inner.transport_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_retry(&self) {
        self.inner.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_auth_refresh(&self) {
        self.inner.auth_refreshes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_gate_wait(&self, waited: Duration) {
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.inner
            .gate_wait_nanos
            .fetch_add(nanos, Ordering::Relaxed);
        super::observe::gate_waited(waited);
    }
}

impl fmt::Debug for HttpStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.snapshot(), f)
    }
}

impl fmt::Display for HttpStatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests sent ({} 2xx, {} 3xx, {} 4xx, {} 5xx, {} transport errors), \
             {} rate-limited, {} retries, {} auth refreshes, {:.1}s waited on the rate gate",
            self.requests_sent,
            self.success,
            self.redirection,
            self.client_error,
            self.server_error,
            self.transport_errors,
            self.rate_limited,
            self.retries,
            self.auth_refreshes,
            self.gate_wait.as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_class() {
        let s = HttpStats::new();
        let c = s.clone();
        for st in [200, 204, 301, 404, 429, 500, 503] {
            c.record_status(st);
        }
        c.record_gate_wait(Duration::from_millis(1500));
        let snap = s.snapshot();
        assert_eq!(snap.success, 2);
        assert_eq!(snap.redirection, 1);
        assert_eq!(snap.client_error, 2);
        assert_eq!(snap.server_error, 2);
        assert_eq!(snap.rate_limited, 1);
        assert_eq!(snap.gate_wait, Duration::from_millis(1500));
        assert!(snap.to_string().contains("1 rate-limited"));
    }
}
