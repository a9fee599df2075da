//! The GA4 Data API of one property: `runReport`, `runFunnelReport` (v1alpha), `getMetadata`,
//! and the property's quotas, driven from the `propertyQuota` every answer carries.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use apex_connect_core::http::{Credentials, HttpClient, Idempotent, path_segment};
use apex_connect_core::{Error, ErrorKind, RateGate, Result};
use bytes::Bytes;
use http::Method;
use serde_json::Value;

use super::error::{Ga4Policy, QuotaKind, until_pacific_midnight};
use super::models::PropertyQuota;
use crate::days::WallClock;
use crate::quota::QuotaGate;

/// The Data API's base URL.
pub const DEFAULT_BASE_URL: &str = "https://analyticsdata.googleapis.com";

/// Hours since the epoch at `now` (hourly quotas are taken to refill on the hour).
fn hour_index(now: SystemTime) -> u64 {
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 3600)
}

/// The day in Los Angeles at `now` (daily quotas refill at midnight Pacific time).
fn pacific_day(now: SystemTime) -> chrono::NaiveDate {
    crate::days::today_in(chrono_tz::America::Los_Angeles, now)
}

/// What the last answers said of the property's quotas, and what this connection learned.
#[derive(Debug, Default, Clone)]
struct QuotaState {
    /// Tokens left today, and the day (in Los Angeles) that was said on.
    day_remaining: Option<(i64, chrono::NaiveDate)>,
    /// Tokens left this hour, and the hour (since the epoch) that was said in.
    hour_remaining: Option<(i64, u64)>,
    concurrent_remaining: Option<i64>,
    /// Until when a quota answer (429) closed a quota.
    blocked: Vec<(QuotaKind, SystemTime)>,
    /// The most tokens one request cost so far (the reserve kept back).
    max_cost: i64,
    answers: u64,
}

/// The property's quotas as this connection sees them: tokens left per day and per hour
/// (the lower of the property's and the project's share), concurrent requests, and quotas a
/// 429 closed. Before each request [`QuotaTracker::wait_needed`] says whether to wait.
#[derive(Debug)]
pub struct QuotaTracker {
    state: Mutex<QuotaState>,
    reserve: i64,
}

impl QuotaTracker {
    /// A tracker keeping `reserve` tokens back (at least the most one request cost).
    pub fn new(reserve: u32) -> Self {
        QuotaTracker {
            state: Mutex::new(QuotaState::default()),
            reserve: i64::from(reserve),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QuotaState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in an answer's `propertyQuota`, received at `now`.
    pub fn observe(&self, q: &PropertyQuota, now: SystemTime) {
        let mut s = self.lock();
        s.answers = s.answers.saturating_add(1);
        let remaining = |l: &apex_connect_core::lenient::Lenient<super::models::QuotaStatus>| {
            l.0.and_then(|q| q.remaining.0)
        };
        if let Some(r) = remaining(&q.tokens_per_day) {
            s.day_remaining = Some((r, pacific_day(now)));
        }
        let hourly = [
            remaining(&q.tokens_per_hour),
            remaining(&q.tokens_per_project_per_hour),
            remaining(&q.potentially_thresholded_requests_per_hour),
            remaining(&q.server_errors_per_project_per_hour)
                .map(|r| if r <= 0 { 0 } else { i64::MAX }),
        ];
        if let Some(min) = hourly.into_iter().flatten().min() {
            s.hour_remaining = Some((min, hour_index(now)));
        }
        s.concurrent_remaining = remaining(&q.concurrent_requests);
        for c in [&q.tokens_per_hour, &q.tokens_per_day] {
            if let Some(c) = c.0.and_then(|c| c.consumed.0) {
                s.max_cost = s.max_cost.max(c.min(1_000_000));
            }
        }
    }

    /// A 429 closed `kind` until `until`.
    pub fn exhausted(&self, kind: QuotaKind, until: SystemTime) {
        let mut s = self.lock();
        s.blocked.retain(|(k, _)| *k != kind);
        s.blocked.push((kind, until));
        if kind == QuotaKind::Concurrent {
            s.concurrent_remaining = Some(0);
        }
    }

    /// The tokens kept back now.
    pub fn reserve(&self) -> i64 {
        self.reserve.max(self.lock().max_cost).max(1)
    }

    /// Which quota must refill before the next request at `now`, and how long that takes;
    /// `None`: send.
    pub fn wait_needed(&self, now: SystemTime) -> Option<(QuotaKind, Duration)> {
        let reserve = self.reserve();
        let s = self.lock();
        let blocked = |kind: QuotaKind| {
            s.blocked
                .iter()
                .find(|(k, _)| *k == kind)
                .and_then(|(_, until)| until.duration_since(now).ok())
                .filter(|d| !d.is_zero())
        };
        if let Some(d) = blocked(QuotaKind::Day) {
            return Some((QuotaKind::Day, d));
        }
        // A count said on another day (hour) than now's is stale: that quota refilled.
        if s.day_remaining
            .is_some_and(|(r, day)| r < reserve && day == pacific_day(now))
        {
            return Some((QuotaKind::Day, until_pacific_midnight(now)));
        }
        if let Some(d) = blocked(QuotaKind::Hour) {
            return Some((QuotaKind::Hour, d));
        }
        if s.hour_remaining
            .is_some_and(|(r, hour)| r < reserve && hour == hour_index(now))
        {
            return Some((QuotaKind::Hour, QuotaKind::Hour.refill_after(now)));
        }
        if let Some(d) = blocked(QuotaKind::Concurrent) {
            return Some((QuotaKind::Concurrent, d));
        }
        if s.concurrent_remaining.is_some_and(|r| r <= 0) {
            return Some((QuotaKind::Concurrent, Duration::from_secs(1)));
        }
        None
    }

    /// After waiting for `kind` to refill: what is left of it is unknown until the next answer.
    pub fn refilled(&self, kind: QuotaKind) {
        let mut s = self.lock();
        s.blocked.retain(|(k, _)| *k != kind);
        match kind {
            QuotaKind::Day => {
                s.day_remaining = None;
                s.hour_remaining = None;
            }
            QuotaKind::Hour => s.hour_remaining = None,
            QuotaKind::Concurrent => s.concurrent_remaining = None,
        }
    }

    /// Answers with a `propertyQuota` taken in so far.
    pub fn answers(&self) -> u64 {
        self.lock().answers
    }
}

/// The Data API of one property.
#[derive(Clone)]
pub struct Ga4Api {
    http: HttpClient,
    slots: QuotaGate,
    tracker: Arc<QuotaTracker>,
    property: String,
    clock: WallClock,
    max_wait: Duration,
}

impl fmt::Debug for Ga4Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ga4Api")
            .field("http", &self.http)
            .field("slots", &self.slots)
            .field("tracker", &self.tracker)
            .field("property", &self.property)
            .finish_non_exhaustive()
    }
}

impl Ga4Api {
    /// The API of `config.property_id` with `credentials`, at `base_url` (default
    /// [`DEFAULT_BASE_URL`]); `timeout` bounds each attempt (default 60 s) and its wait for
    /// response headers (default 30 s).
    ///
    /// # Errors
    /// `Config` for a bad base URL or limits.
    pub fn new(
        config: &super::config::Ga4Config,
        credentials: Arc<dyn Credentials>,
        base_url: Option<&str>,
        clock: WallClock,
        timeout: Option<Duration>,
    ) -> Result<Self> {
        let max_wait = config.max_wait();
        let mut b = HttpClient::builder(base_url.unwrap_or(DEFAULT_BASE_URL))
            .credentials(credentials)
            .policy(Arc::new(Ga4Policy::new(clock.clone())))
            .rate_gate(RateGate::unlimited().with_max_wait(max_wait));
        if let Some(t) = timeout {
            b = b.timeout(t).headers_timeout(t).connect_timeout(t);
        }
        Ok(Ga4Api {
            http: b.build()?,
            slots: QuotaGate::new(config.max_concurrent, max_wait)?,
            tracker: Arc::new(QuotaTracker::new(config.token_reserve)),
            property: config.property_id.clone(),
            clock,
            max_wait,
        })
    }

    /// The HTTP client.
    pub fn client(&self) -> &HttpClient {
        &self.http
    }

    /// The quota tracker.
    pub fn quota(&self) -> &QuotaTracker {
        &self.tracker
    }

    /// Waits while a quota refills (up to the maximum wait), or fails.
    ///
    /// # Errors
    /// `RateLimited` with `retry_after` when the wait is longer than the maximum wait: the
    /// request is not sent (no storm of refused requests).
    async fn before(&self) -> Result<()> {
        for _ in 0..3 {
            let now = (self.clock)();
            let Some((kind, wait)) = self.tracker.wait_needed(now) else {
                return Ok(());
            };
            if wait > self.max_wait {
                return Err(Error::new(
                    ErrorKind::RateLimited,
                    format!(
                        "GA4 property quota ({}) is used up; it refills in {} s, longer than the \
                         maximum wait of {} s: no request sent",
                        kind.as_str(),
                        wait.as_secs(),
                        self.max_wait.as_secs()
                    ),
                )
                .permanent()
                .with_retry_after(wait)
                .with_context("connector", super::NAME)
                .with_context("quota", kind.as_str()));
            }
            tracing::info!(
                quota = kind.as_str(),
                wait_s = wait.as_secs(),
                "GA4 quota used up: waiting for it to refill"
            );
            tokio::time::sleep(wait).await;
            self.tracker.refilled(kind);
        }
        Ok(())
    }

    /// Takes in a quota error (a 429 that names a quota).
    fn note(&self, e: &Error) {
        if e.kind() != ErrorKind::RateLimited {
            return;
        }
        let kind = match e.context_value("quota") {
            Some("day") => QuotaKind::Day,
            Some("hour") => QuotaKind::Hour,
            Some("concurrent") => QuotaKind::Concurrent,
            _ => return,
        };
        let wait = e.retry_after().unwrap_or(Duration::from_secs(60));
        let until = (self.clock)()
            .checked_add(wait)
            .unwrap_or_else(|| (self.clock)());
        self.tracker.exhausted(kind, until);
    }

    /// Sends one request, pausing for used-up quotas: before sending when the last answers
    /// say a quota is used up, and after a 429 for as long as it says (each wait at most the
    /// maximum wait; a longer one fails with `RateLimited` and `retry_after`).
    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Bytes> {
        const ROUNDS: u32 = 3;
        let mut round = 0;
        loop {
            round += 1;
            self.before().await?;
            let result = self.send_once(method.clone(), path, body).await;
            match result {
                Err(e) if e.kind() == ErrorKind::RateLimited && round < ROUNDS => {
                    self.note(&e);
                    let wait = e.retry_after().unwrap_or(Duration::from_secs(30));
                    if wait > self.max_wait {
                        return Err(e);
                    }
                    if e.context_value("quota").is_none() {
                        // Closed by the rate gate (a 429 of another request): wait it out.
                        tokio::time::sleep(wait).await;
                    }
                    tracing::info!(
                        round,
                        wait_s = wait.as_secs(),
                        "GA4 quota: pausing, then resuming"
                    );
                }
                other => return other,
            }
        }
    }

    async fn send_once(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Bytes> {
        let _slot = self.slots.admit().await?;
        let mut rb = self.http.request(method, path)?.with_extension(Idempotent);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = self.http.send(rb).await?;
        crate::body::read_body(resp).await
    }

    /// `POST /v1beta/properties/{id}:runReport`.
    ///
    /// # Errors
    /// The HTTP stack's kinds; `RateLimited` for quotas.
    pub async fn run_report(&self, body: &Value) -> Result<Bytes> {
        let path = format!(
            "/v1beta/properties/{}:runReport",
            path_segment(&self.property)?
        );
        self.send(Method::POST, &path, Some(body)).await
    }

    /// `POST /v1alpha/properties/{id}:runFunnelReport` (funnels are only in v1alpha).
    ///
    /// # Errors
    /// As [`run_report`](Self::run_report).
    pub async fn run_funnel_report(&self, body: &Value) -> Result<Bytes> {
        let path = format!(
            "/v1alpha/properties/{}:runFunnelReport",
            path_segment(&self.property)?
        );
        self.send(Method::POST, &path, Some(body)).await
    }

    /// `GET /v1beta/properties/{id}/metadata`.
    ///
    /// # Errors
    /// As [`run_report`](Self::run_report).
    pub async fn metadata(&self) -> Result<Bytes> {
        let path = format!(
            "/v1beta/properties/{}/metadata",
            path_segment(&self.property)?
        );
        self.send(Method::GET, &path, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// Parsed from text, as answers are (lenient fields need a borrowing deserializer).
    fn quota(json: serde_json::Value) -> PropertyQuota {
        serde_json::from_str(&json.to_string()).unwrap()
    }

    #[test]
    fn the_tracker_keeps_the_largest_cost_in_reserve() {
        let t = QuotaTracker::new(0);
        let now = UNIX_EPOCH + Duration::from_secs(1_710_930_600); // 10:30 UTC
        assert!(t.wait_needed(now).is_none());
        t.observe(
            &quota(serde_json::json!({
                "tokensPerDay": {"consumed": 12, "remaining": 199_000},
                "tokensPerHour": {"consumed": 12, "remaining": 30},
                "tokensPerProjectPerHour": {"consumed": 12, "remaining": 13_000},
                "concurrentRequests": {"consumed": 0, "remaining": 10},
            })),
            now,
        );
        assert_eq!(t.reserve(), 12);
        assert!(t.wait_needed(now).is_none());
        t.observe(
            &quota(serde_json::json!({"tokensPerHour": {"consumed": 12, "remaining": 11}})),
            now,
        );
        let (kind, wait) = t.wait_needed(now).unwrap();
        assert_eq!(kind, QuotaKind::Hour);
        assert_eq!(wait, Duration::from_secs(30 * 60 + 60));
        // In the next hour the count is stale: no wait.
        assert!(t.wait_needed(now + Duration::from_secs(1800)).is_none());
        t.refilled(QuotaKind::Hour);
        assert!(t.wait_needed(now).is_none());
        // The project's hourly share counts too.
        t.observe(
            &quota(serde_json::json!({"tokensPerProjectPerHour": {"consumed": 1, "remaining": 3}})),
            now,
        );
        assert_eq!(t.wait_needed(now).unwrap().0, QuotaKind::Hour);
        t.refilled(QuotaKind::Hour);
        // A daily exhaustion wins and lasts until midnight in Los Angeles.
        t.exhausted(QuotaKind::Day, now + Duration::from_secs(5000));
        assert_eq!(
            t.wait_needed(now),
            Some((QuotaKind::Day, Duration::from_secs(5000)))
        );
        // Hostile numbers do not overflow.
        t.observe(
            &quota(
                serde_json::json!({"tokensPerHour": {"consumed": i64::MAX, "remaining": i64::MIN}}),
            ),
            now,
        );
        assert!(t.reserve() <= 1_000_000);
    }
}
