//! The proactive rate gate: a shared token bucket plus a "paused until" fed by the platform.

use std::collections::VecDeque;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::{Extensions, StatusCode};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use tokio::time::Instant;

use super::clock::{Clock, TokioClock};
use super::policy::{MAX_RETRY_HINT, PlatformPolicy, RateWindow, retry_after};
use super::retry::{AttemptBudget, SentWithoutAnswer};
use super::stats::HttpStats;
use crate::error::{Error, ErrorKind, Result};

/// Governor's clock, driven by our [`Clock`] so paused tokio time and [`super::RecordingClock`]
/// both work. (Governor's own `until_ready` sleeps on its quanta clock with `futures-timer`,
/// which ignores tokio's paused time: a paused test would wait in real time, so we do not
/// use it: we ask `check()` and sleep on our clock.)
#[derive(Debug, Clone)]
struct GateClock {
    clock: Arc<dyn Clock>,
    origin: Instant,
}

impl GovernorClock for GateClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.clock.now().saturating_duration_since(self.origin))
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, GateClock, NoOpMiddleware<Nanos>>;

/// A rate gate shared by every client of one account.
///
/// Two mechanisms, both shared by all clones (they live behind one `Arc`):
/// - a token bucket ([`governor`], GCRA) that spaces requests to a [`Quota`];
/// - the platform's budget: the `remaining` / reset of the last [`PlatformPolicy::rate_state`],
///   counted down locally by every request sent (so concurrent tasks cannot all spend the last
///   unit; out-of-order answers within one window keep the lowest count). When it reaches the
///   reserve, requests wait for the reported reset;
/// - a "paused until" instant: a 429, or a 503 with `Retry-After`, closes the gate for every
///   request until the hint;
/// - in rolling mode ([`RateGate::rolling`]), a log of the requests of the last window, for
///   platforms that count requests in a sliding window (HubSpot's ten seconds).
///
/// # Behavior
/// - Every attempt (retries included) passes the gate before it reaches the transport.
/// - Waits use the gate's [`Clock`] (tokio time by default).
/// - A wait longer than `max_wait` (default 15 minutes), or longer than what is left of the
///   request's retry budget, fails at once with `RateLimited` and `retry_after` set, instead
///   of holding the task.
/// - The gate is never closed for longer than `max_wait`: a `Retry-After` or reset of three
///   years (or `18446744073709551615` seconds) pauses it for `max_wait` at most, so later
///   requests reach the platform again after that. The request that got such a hint fails
///   with a permanent `RateLimited` error carrying the hint (see [`super::HttpClient::send`]).
/// - Arithmetic on hints saturates; no header value can make it panic or wrap.
#[derive(Clone)]
pub struct RateGate {
    inner: Arc<GateInner>,
}

struct GateInner {
    quota: Option<Quota>,
    limiter: Option<Limiter>,
    gov_clock: GateClock,
    clock: Arc<dyn Clock>,
    paused_until: Mutex<Option<Instant>>,
    reserve: u64,
    reset_margin: Duration,
    max_wait: Duration,
    in_flight: AtomicUsize,
    /// What the platform last said is left in its current window, counted down locally by
    /// every request we send, so concurrent tasks cannot all spend the last unit.
    budget: Mutex<Option<Budget>>,
    /// Rolling mode: its configuration (kept to rebuild the gate in `with_*`) and its log.
    rolling: Option<RollingConf>,
    window: Mutex<Option<Window>>,
}

/// How a rolling gate is configured.
#[derive(Debug, Clone, Copy)]
struct RollingConf {
    limit: u64,
    interval: Duration,
    /// At most `.0` requests per `.1`, whatever the platform reports.
    cap: Option<(u64, Duration)>,
}

/// The requests of the last rolling window.
///
/// A request counts from when it is admitted until `interval` after its answer arrived: the
/// platform counts it when it arrives there, which is after we sent it and before we read its
/// answer, so it leaves our log no earlier than it leaves the platform's window.
#[derive(Debug)]
struct Window {
    limit: u64,
    interval: Duration,
    /// Admitted requests whose answer has not arrived yet.
    pending: u64,
    /// When the answers of the other requests of the window arrived (and, for requests of
    /// other clients the platform reported, when we learnt of them), oldest first.
    done: VecDeque<Instant>,
    /// When our requests that left the log during the last [`EXPIRED_GRACE`] left it.
    expired: VecDeque<Instant>,
}

/// How long a request that left the log is still taken for one of ours when an answer's
/// `remaining` is read. The platform counts a request from its arrival and our log from its
/// answer, on two clocks a round trip apart: near the trailing edge of the window the
/// platform may still count a request the log has just forgotten. Without this slack every
/// such request was taken for another client's and held a slot for a whole interval (HubSpot
/// in real time used 93-95 % of its limit instead of all of it).
const EXPIRED_GRACE: Duration = Duration::from_secs(1);

/// The largest rolling limit a gate keeps a log for (whatever a header says).
const MAX_WINDOW_LIMIT: u64 = 100_000;
/// The shortest rolling interval a gate accepts from a header.
const MIN_WINDOW_INTERVAL: Duration = Duration::from_millis(1);
/// How long a request waits before looking again when every slot of the window is taken by
/// requests still in flight (their answers free the slots).
const WINDOW_POLL: Duration = Duration::from_millis(5);

impl Window {
    fn new(conf: &RollingConf) -> Window {
        let mut w = Window {
            limit: 1,
            interval: conf.interval,
            pending: 0,
            done: VecDeque::new(),
            expired: VecDeque::new(),
        };
        w.set(conf, conf.limit, conf.interval);
        w
    }

    /// Sets the limit and interval (bounded, and capped by the configured cap).
    fn set(&mut self, conf: &RollingConf, limit: u64, interval: Duration) {
        let interval = interval.clamp(MIN_WINDOW_INTERVAL, MAX_RETRY_HINT);
        let mut limit = limit.clamp(1, MAX_WINDOW_LIMIT);
        if let Some((n, per)) = conf.cap {
            limit = limit.min(scale_cap(n, per, interval));
        }
        self.limit = limit;
        self.interval = interval;
    }

    /// Forgets answers older than the interval (remembering for [`EXPIRED_GRACE`] when).
    fn prune(&mut self, now: Instant) {
        while let Some(&front) = self.done.front() {
            match front.checked_add(self.interval) {
                Some(end) if end > now => break,
                end => {
                    self.done.pop_front();
                    if self.expired.len() >= MAX_WINDOW_LIMIT as usize {
                        self.expired.pop_front();
                    }
                    self.expired.push_back(end.unwrap_or(now).min(now));
                }
            }
        }
        while let Some(&left) = self.expired.front() {
            match left.checked_add(EXPIRED_GRACE) {
                Some(until) if until > now => break,
                _ => {
                    self.expired.pop_front();
                }
            }
        }
    }

    fn used(&self) -> u64 {
        self.pending
            .saturating_add(u64::try_from(self.done.len()).unwrap_or(u64::MAX))
    }

    /// Admits one request now, or says how long to wait for a free slot.
    fn admit(&mut self, now: Instant, hold: bool) -> Option<Duration> {
        self.prune(now);
        if self.used() < self.limit {
            if hold {
                self.pending = self.pending.saturating_add(1);
            } else {
                self.push(now);
            }
            return None;
        }
        Some(match self.done.front() {
            Some(&front) => front
                .checked_add(self.interval)
                .map_or(self.interval, |end| end.saturating_duration_since(now))
                .max(Duration::from_millis(1)),
            // Every slot is held by a request in flight: its answer frees one.
            None => WINDOW_POLL,
        })
    }

    /// Undoes an `admit` (another check of the gate said wait).
    fn release(&mut self, hold: bool) {
        if hold {
            self.pending = self.pending.saturating_sub(1);
        } else {
            self.done.pop_back();
        }
    }

    fn push(&mut self, at: Instant) {
        if self.done.len() >= MAX_WINDOW_LIMIT as usize {
            self.done.pop_front();
        }
        self.done.push_back(at);
    }

    /// The answer of a held request arrived at `now`.
    fn complete(&mut self, now: Instant) {
        self.pending = self.pending.saturating_sub(1);
        self.push(now);
    }

    /// Learns from an answer: the limit and interval, and requests of other clients (the
    /// platform counts more than this log holds).
    fn learn(&mut self, conf: &RollingConf, w: &RateWindow, now: Instant) {
        self.set(conf, w.limit, w.interval);
        self.prune(now);
        if let Some(remaining) = w.remaining {
            let counted = w.limit.min(MAX_WINDOW_LIMIT).saturating_sub(remaining);
            let ours = self
                .used()
                .saturating_add(u64::try_from(self.expired.len()).unwrap_or(u64::MAX));
            let missing = counted.saturating_sub(ours).min(self.limit);
            for _ in 0..missing {
                self.push(now);
            }
        }
    }
}

/// `n` requests per `per` as a number of requests per `interval` (at least 1).
fn scale_cap(n: u64, per: Duration, interval: Duration) -> u64 {
    let per = per.as_nanos().max(1);
    let scaled = u128::from(n).saturating_mul(interval.as_nanos()) / per;
    u64::try_from(scaled).unwrap_or(u64::MAX).max(1)
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    remaining: u64,
    reset_at: Instant,
}

impl RateGate {
    /// A gate allowing `requests` per `per`, with bursts of up to `burst` requests.
    ///
    /// # Errors
    /// `Config` if `requests` or `burst` is zero or `per` is zero.
    pub fn new(requests: u32, per: Duration, burst: u32) -> Result<RateGate> {
        let n = NonZeroU32::new(requests)
            .ok_or_else(|| Error::config("rate gate: requests must be at least 1"))?;
        let b = NonZeroU32::new(burst)
            .ok_or_else(|| Error::config("rate gate: burst must be at least 1"))?;
        if per.is_zero() {
            return Err(Error::config("rate gate: period must not be zero"));
        }
        let quota = Quota::with_period(per / n.get())
            .ok_or_else(|| Error::config("rate gate: period too short for that many requests"))?
            .allow_burst(b);
        Ok(RateGate::from_quota(quota))
    }

    /// `n` requests per minute, all of them allowed as a burst.
    ///
    /// # Errors
    /// `Config` if `n` is zero.
    pub fn per_minute(n: u32) -> Result<RateGate> {
        RateGate::new(n, Duration::from_secs(60), n)
    }

    /// `n` requests per second, all of them allowed as a burst.
    ///
    /// # Errors
    /// `Config` if `n` is zero.
    pub fn per_second(n: u32) -> Result<RateGate> {
        RateGate::new(n, Duration::from_secs(1), n)
    }

    /// A gate from a governor [`Quota`].
    pub fn from_quota(quota: Quota) -> RateGate {
        RateGate::build(Setup {
            quota: Some(quota),
            ..Setup::default()
        })
    }

    /// A gate with no local quota: it only follows the platform's headers and 429s.
    pub fn unlimited() -> RateGate {
        RateGate::build(Setup::default())
    }

    /// A gate for a platform that counts requests in a rolling window: at most `limit`
    /// requests in any span of `interval` (HubSpot: 100 to 250 per ten seconds, by plan).
    ///
    /// # Behavior
    /// - The gate keeps a log of the window's requests: a request counts from when it is
    ///   admitted until `interval` after its answer arrived (the platform counts it on
    ///   arrival, in between), so the log never frees a slot before the platform does, and
    ///   a request waits exactly until the oldest one leaves the window — not a whole
    ///   interval from the moment the budget ran out.
    /// - `limit` and `interval` are where it starts: every answer whose
    ///   [`PlatformPolicy::rate_window`] reports the window sets them (bounded: at most
    ///   100,000 requests, an interval between 1 ms and a day), capped by
    ///   [`with_window_cap`](Self::with_window_cap).
    /// - When an answer says fewer requests are left than the log allows (other clients
    ///   share the limit), the difference is logged as requests made now.
    /// - Everything else (429 pauses, `max_wait`, the platform budget of
    ///   [`PlatformPolicy::rate_state`]) works as for the other gates.
    ///
    /// # Errors
    /// `Config` if `limit` is zero or `interval` is zero.
    pub fn rolling(limit: u32, interval: Duration) -> Result<RateGate> {
        if limit == 0 {
            return Err(Error::config("rate gate: requests must be at least 1"));
        }
        if interval.is_zero() {
            return Err(Error::config("rate gate: period must not be zero"));
        }
        Ok(RateGate::build(Setup {
            rolling: Some(RollingConf {
                limit: u64::from(limit),
                interval,
                cap: None,
            }),
            ..Setup::default()
        }))
    }

    /// In rolling mode, uses at most `requests` per `per` whatever the platform reports (a
    /// connection's setting: an app's limit shared by several processes). Scaled to the
    /// window's interval when the platform reports another. No effect on other gates. Call
    /// before cloning.
    pub fn with_window_cap(self, requests: u32, per: Duration) -> RateGate {
        let mut setup = self.setup();
        if let Some(conf) = setup.rolling.as_mut() {
            conf.cap = Some((u64::from(requests.max(1)), per.max(MIN_WINDOW_INTERVAL)));
        }
        RateGate::build(setup)
    }

    /// In rolling mode, the window's current limit and interval (as learnt so far).
    pub fn window(&self) -> Option<(u64, Duration)> {
        self.lock_window().as_ref().map(|w| (w.limit, w.interval))
    }

    /// Uses `clock` for waiting (tests). Call before cloning: it starts a fresh budget.
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> RateGate {
        RateGate::build(Setup {
            clock,
            ..self.setup()
        })
    }

    /// Pauses when the platform reports `remaining <= reserve` (default 0; the number of
    /// other requests in flight is used when larger). Call before cloning.
    pub fn with_reserve(self, reserve: u64) -> RateGate {
        RateGate::build(Setup {
            reserve,
            ..self.setup()
        })
    }

    /// Adds `margin` to every reset the platform reports (for platforms that round the reset
    /// down). Default zero. Call before cloning.
    pub fn with_reset_margin(self, margin: Duration) -> RateGate {
        RateGate::build(Setup {
            reset_margin: margin,
            ..self.setup()
        })
    }

    /// The longest a request waits at the gate before failing with `RateLimited`. Call
    /// before cloning.
    pub fn with_max_wait(self, max_wait: Duration) -> RateGate {
        RateGate::build(Setup {
            max_wait,
            ..self.setup()
        })
    }

    fn setup(&self) -> Setup {
        let i = &self.inner;
        Setup {
            quota: i.quota,
            clock: i.clock.clone(),
            reserve: i.reserve,
            reset_margin: i.reset_margin,
            max_wait: i.max_wait,
            rolling: i.rolling,
        }
    }

    fn build(setup: Setup) -> RateGate {
        let Setup {
            quota,
            clock,
            reserve,
            reset_margin,
            max_wait,
            rolling,
        } = setup;
        let gov_clock = GateClock {
            origin: clock.now(),
            clock: clock.clone(),
        };
        let limiter = quota.map(|q| RateLimiter::direct_with_clock(q, gov_clock.clone()));
        RateGate {
            inner: Arc::new(GateInner {
                quota,
                limiter,
                gov_clock,
                clock,
                paused_until: Mutex::new(None),
                reserve,
                reset_margin,
                max_wait,
                in_flight: AtomicUsize::new(0),
                budget: Mutex::new(None),
                window: Mutex::new(rolling.as_ref().map(Window::new)),
                rolling,
            }),
        }
    }

    fn lock_window(&self) -> std::sync::MutexGuard<'_, Option<Window>> {
        self.inner.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the gate keeps a rolling window.
    fn is_rolling(&self) -> bool {
        self.inner.rolling.is_some()
    }

    /// Admits one request to the rolling window (if any), or says how long to wait.
    fn admit_window(&self, now: Instant, hold: bool) -> Option<Duration> {
        self.lock_window().as_mut()?.admit(now, hold)
    }

    fn release_window(&self, hold: bool) {
        if let Some(w) = self.lock_window().as_mut() {
            w.release(hold);
        }
    }

    /// The answer of a request admitted with `hold` arrived (or the request ended without one).
    fn complete_window(&self) {
        let now = self.inner.clock.now();
        if let Some(w) = self.lock_window().as_mut() {
            w.complete(now);
        }
    }

    /// The instant until which the gate is closed, if it is.
    pub fn paused_until(&self) -> Option<Instant> {
        let until = *self.lock_paused();
        until.filter(|u| *u > self.inner.clock.now())
    }

    /// The longest a request waits at the gate, and the longest the gate is ever closed.
    pub fn max_wait(&self) -> Duration {
        self.inner.max_wait
    }

    /// Closes the gate for `duration` from now, but never for longer than `max_wait`
    /// (extends, never shortens, a pause).
    pub fn pause_for(&self, duration: Duration) {
        let until = self.after(self.inner.clock.now(), duration);
        let mut p = self.lock_paused();
        if p.is_none_or(|cur| cur < until) {
            *p = Some(until);
        }
    }

    /// `now + duration`, with `duration` capped at `max_wait` (and the sum saturating).
    fn after(&self, now: Instant, duration: Duration) -> Instant {
        let d = duration.min(self.inner.max_wait);
        now.checked_add(d)
            .or_else(|| now.checked_add(MAX_RETRY_HINT.min(d)))
            .unwrap_or(now)
    }

    fn lock_paused(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.inner
            .paused_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until a request may be sent, and returns how long it waited.
    ///
    /// # Errors
    /// `RateLimited` (temporary, with `retry_after`) if the wait would exceed `max_wait`.
    pub async fn acquire(&self) -> Result<Duration> {
        self.acquire_within(self.inner.max_wait, false).await
    }

    /// As [`acquire`](Self::acquire), waiting at most `limit` (itself capped at `max_wait`).
    /// With `hold`, a rolling window counts the request as in flight until
    /// [`complete_window`](Self::complete_window); without, as answered now.
    pub(crate) async fn acquire_within(&self, limit: Duration, hold: bool) -> Result<Duration> {
        let i = &self.inner;
        let limit = limit.min(i.max_wait);
        let start = i.clock.now();
        let too_long = |what: &'static str, wait: Duration| {
            Error::new(ErrorKind::RateLimited, what)
                .temporary()
                .with_retry_after(wait)
                .with_context(
                    "max_wait_ms",
                    u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
                )
        };
        loop {
            let now = i.clock.now();
            let waited = now.saturating_duration_since(start);
            let paused = *self.lock_paused();
            if let Some(until) = paused
                && until > now
            {
                let wait = until.saturating_duration_since(now);
                if waited.saturating_add(wait) > limit {
                    return Err(too_long(
                        "rate gate closed for longer than the allowed wait",
                        wait,
                    ));
                }
                i.clock.sleep(wait).await;
                continue;
            }
            if let Some(wait) = self.admit_window(now, hold) {
                if waited.saturating_add(wait) > limit {
                    return Err(too_long(
                        "rolling rate window full for longer than the allowed wait",
                        wait,
                    ));
                }
                i.clock.sleep(wait).await;
                continue;
            }
            if let Some(wait) = self.take_budget(now) {
                self.release_window(hold);
                if waited.saturating_add(wait) > limit {
                    return Err(too_long(
                        "platform rate budget exhausted for longer than the allowed wait",
                        wait,
                    ));
                }
                i.clock.sleep(wait).await;
                continue;
            }
            let Some(limiter) = &i.limiter else {
                return Ok(waited);
            };
            match limiter.check() {
                Ok(()) => return Ok(waited),
                Err(not_until) => {
                    self.release_window(hold);
                    let wait = not_until.wait_time_from(i.gov_clock.now());
                    if waited.saturating_add(wait) > limit {
                        return Err(too_long(
                            "rate gate quota would need a longer wait than allowed",
                            wait,
                        ));
                    }
                    // A zero wait would spin; governor's resolution is nanoseconds.
                    i.clock.sleep(wait.max(Duration::from_millis(1))).await;
                }
            }
        }
    }

    /// Feeds a response's status and headers to the gate.
    fn observe(&self, status: StatusCode, headers: &http::HeaderMap, policy: &dyn PlatformPolicy) {
        let i = &self.inner;
        let code = status.as_u16();
        if code == 429 || code == 503 {
            let hint = retry_after(headers, SystemTime::now())
                .or_else(|| policy.retry_hint(status, headers));
            if let Some(h) = hint {
                self.pause_for(h);
            }
        }
        if let Some(conf) = &i.rolling
            && let Some(w) = policy.rate_window(headers)
        {
            let now = i.clock.now();
            if let Some(window) = self.lock_window().as_mut() {
                window.learn(conf, &w, now);
            }
        }
        if let Some(state) = policy.rate_state(headers) {
            let now = i.clock.now();
            // A reset beyond `max_wait` is waited for `max_wait` at most: then the next
            // answer tells again.
            let reset_at = self.after(now, state.reset_after);
            let mut b = self.lock_budget();
            match b.as_mut() {
                // The same window (answers arrive out of order): the lowest count is the truth.
                Some(bud)
                    if bud
                        .reset_at
                        .checked_add(SAME_WINDOW)
                        .is_none_or(|end| reset_at <= end) =>
                {
                    bud.remaining = bud.remaining.min(state.remaining);
                }
                // A new window (or the first answer): start from what the platform says.
                _ => {
                    *b = Some(Budget {
                        remaining: state.remaining,
                        reset_at,
                    })
                }
            }
            drop(b);
            if state.remaining <= i.reserve {
                self.pause_for(state.reset_after.saturating_add(i.reset_margin));
            }
        }
    }

    /// Spends one unit of the platform budget, or says how long to wait for its reset.
    fn take_budget(&self, now: Instant) -> Option<Duration> {
        let i = &self.inner;
        let mut b = self.lock_budget();
        match b.as_mut() {
            Some(bud) if now < bud.reset_at => {
                if bud.remaining <= i.reserve {
                    Some(
                        bud.reset_at
                            .saturating_duration_since(now)
                            .saturating_add(i.reset_margin),
                    )
                } else {
                    bud.remaining = bud.remaining.saturating_sub(1);
                    None
                }
            }
            Some(_) => {
                // The window reset: unknown until the next answer says.
                *b = None;
                None
            }
            None => None,
        }
    }

    fn lock_budget(&self) -> std::sync::MutexGuard<'_, Option<Budget>> {
        self.inner.budget.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The default [`RateGate::with_max_wait`]: 15 minutes. Clients without a gate use it as
/// their maximum wait too.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// Two resets closer than this belong to the same window (reset headers have 1 s resolution).
const SAME_WINDOW: Duration = Duration::from_millis(500);

/// Everything a gate is built from (the `with_*` methods rebuild it).
struct Setup {
    quota: Option<Quota>,
    clock: Arc<dyn Clock>,
    reserve: u64,
    reset_margin: Duration,
    max_wait: Duration,
    rolling: Option<RollingConf>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            quota: None,
            clock: Arc::new(TokioClock),
            reserve: 0,
            reset_margin: Duration::ZERO,
            max_wait: DEFAULT_MAX_WAIT,
            rolling: None,
        }
    }
}

impl fmt::Debug for RateGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("RateGate")
            .field("quota", &i.quota)
            .field("window", &self.window())
            .field("reserve", &i.reserve)
            .field("reset_margin", &i.reset_margin)
            .field("max_wait", &i.max_wait)
            .field("paused_until", &self.paused_until())
            .field("in_flight", &i.in_flight.load(Ordering::Relaxed))
            .finish()
    }
}

/// Decrements the in-flight count even if the request future is dropped; in rolling mode,
/// also ends the request's slot (its answer arrived, or it ended without one: counted as
/// answered then, to be safe).
struct InFlight<'a> {
    gate: &'a RateGate,
    slot: bool,
}

impl InFlight<'_> {
    /// Ends the rolling slot now (before the answer is observed).
    fn answered(&mut self) {
        if std::mem::take(&mut self.slot) {
            self.gate.complete_window();
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.answered();
        self.gate.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The innermost middleware: waits on the gate (if any), counts the attempt, sends it with
/// the headers timeout, and feeds the response to the gate and the stats.
pub(crate) struct GateMiddleware {
    pub(crate) gate: Option<RateGate>,
    pub(crate) policy: Arc<dyn PlatformPolicy>,
    pub(crate) stats: HttpStats,
    /// The longest time from handing the request to the transport to its response headers.
    pub(crate) headers_timeout: Duration,
}

#[async_trait::async_trait]
impl Middleware for GateMiddleware {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let mut guard = match &self.gate {
            Some(gate) => {
                let limit = extensions
                    .get::<AttemptBudget>()
                    .map_or(gate.inner.max_wait, |b| b.0);
                let waited = gate
                    .acquire_within(limit, true)
                    .await
                    .map_err(reqwest_middleware::Error::middleware)?;
                self.stats.record_gate_wait(waited);
                gate.inner.in_flight.fetch_add(1, Ordering::Relaxed);
                Some(InFlight {
                    gate,
                    slot: gate.is_rolling(),
                })
            }
            None => None,
        };
        self.stats.record_sent();
        // `next.run` resolves when the response head has arrived (the body is read later,
        // under the client's whole-request timeout), so this bounds connect + send + wait
        // for headers. It runs on tokio's timer like reqwest's own timeouts.
        let result =
            match tokio::time::timeout(self.headers_timeout, next.run(req, extensions)).await {
                Ok(result) => result,
                Err(_) => Err(reqwest_middleware::Error::middleware(
                    Error::new(
                        ErrorKind::Network,
                        "timed out waiting for the response headers",
                    )
                    .temporary()
                    .with_context(
                        "headers_timeout_ms",
                        u64::try_from(self.headers_timeout.as_millis()).unwrap_or(u64::MAX),
                    )
                    .set_source(SentWithoutAnswer("no response headers in time")),
                )),
            };
        if let Some(g) = guard.as_mut() {
            g.answered();
        }
        match &result {
            Ok(resp) => {
                self.stats.record_status(resp.status().as_u16());
                if let Some(gate) = &self.gate {
                    gate.observe(resp.status(), resp.headers(), self.policy.as_ref());
                }
            }
            Err(_) => self.stats.record_transport_error(),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::DefaultPolicy;
    use crate::http::clock::RecordingClock;
    use http::{HeaderMap, HeaderValue};

    #[tokio::test(start_paused = true)]
    async fn quota_spaces_requests_under_paused_tokio_time() {
        let gate = RateGate::new(10, Duration::from_secs(1), 1).unwrap();
        let t0 = Instant::now();
        for _ in 0..21 {
            gate.acquire().await.unwrap();
        }
        let elapsed = t0.elapsed();
        assert!(
            elapsed >= Duration::from_secs(2) && elapsed < Duration::from_millis(2100),
            "{elapsed:?}"
        );
    }

    #[tokio::test]
    async fn clones_share_one_budget() {
        let clock = Arc::new(RecordingClock::new());
        let a = RateGate::per_minute(2).unwrap().with_clock(clock.clone());
        let b = a.clone();
        a.acquire().await.unwrap();
        b.acquire().await.unwrap();
        assert!(clock.sleeps().is_empty());
        let waited = b.acquire().await.unwrap();
        assert!(waited >= Duration::from_secs(29), "{waited:?}");
    }

    #[tokio::test]
    async fn headers_close_the_gate_until_reset() {
        let clock = Arc::new(RecordingClock::new());
        let gate = RateGate::unlimited().with_clock(clock.clone());
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("5"));
        h.insert("x-ratelimit-reset", HeaderValue::from_static("3"));
        gate.observe(StatusCode::OK, &h, &DefaultPolicy);
        assert!(gate.paused_until().is_none());
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        gate.observe(StatusCode::OK, &h, &DefaultPolicy);
        assert!(gate.paused_until().is_some());
        let waited = gate.acquire().await.unwrap();
        assert_eq!(waited, Duration::from_secs(3));
        assert!(gate.paused_until().is_none());
    }

    #[tokio::test]
    async fn too_long_a_wait_fails_with_retry_after() {
        let clock = Arc::new(RecordingClock::new());
        let gate = RateGate::unlimited()
            .with_clock(clock.clone())
            .with_max_wait(Duration::from_secs(10));
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("8"));
        gate.observe(StatusCode::TOO_MANY_REQUESTS, &h, &DefaultPolicy);
        // Less than the pause left of the retry budget: fail at once, no wait.
        let e = gate
            .acquire_within(Duration::from_secs(5), false)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert!(e.is_temporary());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(8)));
        assert!(clock.sleeps().is_empty());
        // A budget above max_wait is still capped by max_wait.
        gate.pause_for(Duration::from_secs(10));
        let e = gate.acquire_within(Duration::MAX, false).await;
        assert!(e.is_ok());
        assert_eq!(clock.sleeps(), vec![Duration::from_secs(10)]);
    }

    /// `Retry-After` values from a hostile server: never a panic, never a pause past
    /// `max_wait`, and later requests get through after at most `max_wait`.
    #[tokio::test]
    async fn huge_hints_never_close_the_gate_beyond_max_wait() {
        for v in [
            "18446744073709551615",
            "99999999",
            "1e300",
            "9223372036854775807",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            for status in [
                StatusCode::TOO_MANY_REQUESTS,
                StatusCode::SERVICE_UNAVAILABLE,
            ] {
                let clock = Arc::new(RecordingClock::new());
                let gate = RateGate::unlimited()
                    .with_clock(clock.clone())
                    .with_max_wait(Duration::from_secs(60));
                let mut h = HeaderMap::new();
                h.insert("retry-after", HeaderValue::from_str(v).unwrap());
                let t0 = clock.now();
                gate.observe(status, &h, &DefaultPolicy);
                let until = gate.paused_until().expect("paused");
                assert!(until - t0 <= Duration::from_secs(60), "{v}: {until:?}");
                let waited = gate.acquire().await.unwrap();
                assert_eq!(waited, Duration::from_secs(60), "{v}");
                assert!(gate.paused_until().is_none(), "{v}");
            }
        }
    }

    #[tokio::test]
    async fn huge_resets_never_close_the_gate_beyond_max_wait() {
        for reset in [
            "1e300",
            "18446744073709551615",
            "99999999999999",
            "9999999999",
        ] {
            let clock = Arc::new(RecordingClock::new());
            let gate = RateGate::unlimited()
                .with_clock(clock.clone())
                .with_reset_margin(Duration::MAX)
                .with_max_wait(Duration::from_secs(30));
            let mut h = HeaderMap::new();
            h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
            h.insert("x-ratelimit-reset", HeaderValue::from_str(reset).unwrap());
            gate.observe(StatusCode::OK, &h, &DefaultPolicy);
            let waited = gate.acquire().await.unwrap();
            assert!(waited <= Duration::from_secs(30), "{reset}: {waited:?}");
        }
    }

    #[tokio::test]
    async fn pause_for_saturates() {
        let clock = Arc::new(RecordingClock::new());
        let gate = RateGate::unlimited()
            .with_clock(clock.clone())
            .with_max_wait(Duration::MAX);
        gate.pause_for(Duration::MAX);
        assert!(gate.paused_until().is_some());
        assert_eq!(gate.max_wait(), Duration::MAX);
    }

    /// A fixed-window server: `limit` requests per `window`, reset in whole seconds (ceil).
    struct FixedWindow {
        limit: u64,
        window: f64,
        current: i64,
        used: u64,
    }

    impl FixedWindow {
        fn handle(&mut self, t: f64) -> (StatusCode, HeaderMap) {
            let idx = (t / self.window).floor() as i64;
            if idx != self.current {
                self.current = idx;
                self.used = 0;
            }
            let reset = ((idx + 1) as f64 * self.window - t).ceil() as u64;
            let mut h = HeaderMap::new();
            h.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
            h.insert("x-ratelimit-reset", HeaderValue::from(reset));
            if self.used >= self.limit {
                h.insert("x-ratelimit-remaining", HeaderValue::from(0u64));
                h.insert("retry-after", HeaderValue::from(reset));
                return (StatusCode::TOO_MANY_REQUESTS, h);
            }
            self.used += 1;
            h.insert(
                "x-ratelimit-remaining",
                HeaderValue::from(self.limit - self.used),
            );
            (StatusCode::OK, h)
        }
    }

    async fn run_against_fixed_window(gate: RateGate, clock: &RecordingClock) -> (u64, u64) {
        let mut sim = FixedWindow {
            limit: 100,
            window: 10.0,
            current: 0,
            used: 0,
        };
        let t0 = clock.now();
        let (mut ok, mut late_429) = (0, 0);
        loop {
            gate.acquire().await.unwrap();
            let t = (clock.now() - t0).as_secs_f64();
            if t >= 120.0 {
                break;
            }
            clock.advance(Duration::from_millis(20)); // network latency
            let (status, headers) = sim.handle(t);
            if status == StatusCode::OK {
                ok += 1;
            } else if t >= 10.0 {
                late_429 += 1;
            }
            gate.observe(status, &headers, &DefaultPolicy);
        }
        (ok, late_429)
    }

    #[tokio::test]
    async fn long_sync_uses_the_window_without_late_429s() {
        // Local quota equal to the platform's, and header-only.
        for with_quota in [true, false] {
            let clock = Arc::new(RecordingClock::new());
            let gate = if with_quota {
                RateGate::new(100, Duration::from_secs(10), 100).unwrap()
            } else {
                RateGate::unlimited()
            }
            .with_clock(clock.clone());
            let (ok, late_429) = run_against_fixed_window(gate, &clock).await;
            eprintln!("quota={with_quota}: {ok} of 1200 requests in 120 s, {late_429} late 429s");
            assert_eq!(late_429, 0, "quota={with_quota}");
            assert!(ok >= 1080, "quota={with_quota}: only {ok} of 1200 allowed");
        }
    }

    /// A policy reading a rolling window from `x-window-max`, `x-window-remaining` and
    /// `x-window-interval-ms` (HubSpot's scheme under neutral names).
    #[derive(Debug)]
    struct WindowPolicy;

    impl PlatformPolicy for WindowPolicy {
        fn rate_state(&self, _: &http::HeaderMap) -> Option<crate::http::RateState> {
            None
        }
        fn rate_window(&self, headers: &http::HeaderMap) -> Option<RateWindow> {
            let num = |n: &str| headers.get(n)?.to_str().ok()?.parse::<u64>().ok();
            let w = RateWindow::new(
                num("x-window-max")?,
                Duration::from_millis(num("x-window-interval-ms")?),
            );
            Some(match num("x-window-remaining") {
                Some(r) => w.with_remaining(r),
                None => w,
            })
        }
        fn retry_hint(&self, status: StatusCode, _: &http::HeaderMap) -> Option<Duration> {
            (status == StatusCode::TOO_MANY_REQUESTS).then_some(Duration::from_secs(1))
        }
    }

    /// A platform counting requests in a rolling window, on arrival; refused requests do not
    /// count. `foreign` are requests of another client, at their arrival times.
    struct RollingServer {
        limit: u64,
        interval: Duration,
        arrivals: VecDeque<Instant>,
    }

    impl RollingServer {
        fn handle(&mut self, now: Instant) -> (StatusCode, HeaderMap) {
            while self
                .arrivals
                .front()
                .is_some_and(|t| *t + self.interval <= now)
            {
                self.arrivals.pop_front();
            }
            let ok = (self.arrivals.len() as u64) < self.limit;
            if ok {
                self.arrivals.push_back(now);
            }
            let mut h = HeaderMap::new();
            h.insert("x-window-max", HeaderValue::from(self.limit));
            h.insert(
                "x-window-interval-ms",
                HeaderValue::from(self.interval.as_millis() as u64),
            );
            h.insert(
                "x-window-remaining",
                HeaderValue::from(self.limit - self.arrivals.len() as u64),
            );
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::TOO_MANY_REQUESTS
            };
            (status, h)
        }
    }

    /// Sends requests one after the other for `secs` (virtual time, `latency` each way)
    /// through `gate`; returns (answered 200, answered 429).
    async fn run_rolling(
        gate: &RateGate,
        clock: &RecordingClock,
        server: &mut RollingServer,
        secs: u64,
        latency: Duration,
    ) -> (u64, u64) {
        let t0 = clock.now();
        let (mut ok, mut refused) = (0, 0);
        loop {
            gate.acquire_within(DEFAULT_MAX_WAIT, true).await.unwrap();
            if clock.now() - t0 >= Duration::from_secs(secs) {
                gate.complete_window();
                break;
            }
            clock.advance(latency);
            let (status, headers) = server.handle(clock.now());
            clock.advance(latency);
            gate.complete_window();
            gate.observe(status, &headers, &WindowPolicy);
            if status == StatusCode::OK {
                ok += 1;
            } else {
                refused += 1;
            }
        }
        (ok, refused)
    }

    #[tokio::test]
    async fn rolling_window_uses_the_whole_limit_without_429s() {
        for limit in [100u64, 190] {
            let clock = Arc::new(RecordingClock::new());
            // Starts from the lowest tier and learns the account's limit from the answers.
            let gate = RateGate::rolling(100, Duration::from_secs(10))
                .unwrap()
                .with_clock(clock.clone());
            let mut server = RollingServer {
                limit,
                interval: Duration::from_secs(10),
                arrivals: VecDeque::new(),
            };
            let secs = 120;
            let (ok, refused) =
                run_rolling(&gate, &clock, &mut server, secs, Duration::from_millis(15)).await;
            let allowed = limit * secs / 10;
            eprintln!(
                "rolling {limit}/10s: {ok} requests in {secs} s = {:.2}/s of {:.1}/s allowed ({:.1} %), {refused} 429s",
                ok as f64 / secs as f64,
                limit as f64 / 10.0,
                100.0 * ok as f64 / allowed as f64
            );
            assert_eq!(refused, 0, "limit {limit}");
            assert!(ok * 100 >= allowed * 95, "limit {limit}: {ok} of {allowed}");
            assert!(ok <= allowed, "limit {limit}: {ok} of {allowed}");
            assert_eq!(gate.window(), Some((limit, Duration::from_secs(10))));
        }
    }

    #[test]
    fn a_request_the_platform_still_counts_at_the_window_edge_is_ours_not_another_clients() {
        let conf = RollingConf {
            limit: 3,
            interval: Duration::from_secs(10),
            cap: None,
        };
        let t0 = Instant::now();
        let ten = Duration::from_secs(10);
        // Three of our requests answered at t0: the log holds them until t0 + 10 s.
        let mut w = Window::new(&conf);
        for _ in 0..3 {
            assert_eq!(w.admit(t0, true), None);
            w.complete(t0);
        }
        // An answer read just after they left the log, from a platform whose clock is a
        // round trip behind: it still counts all three (remaining 0).
        let edge = t0 + ten + Duration::from_millis(3);
        w.learn(&conf, &RateWindow::new(3, ten).with_remaining(0), edge);
        assert_eq!(
            w.admit(edge, true),
            None,
            "our own requests, not three others'"
        );
        // Requests of another client reported later than the grace are still counted.
        let mut w = Window::new(&conf);
        for _ in 0..3 {
            assert_eq!(w.admit(t0, true), None);
            w.complete(t0);
        }
        let later = t0 + ten + EXPIRED_GRACE + Duration::from_millis(1);
        w.learn(&conf, &RateWindow::new(3, ten).with_remaining(0), later);
        assert_eq!(
            w.admit(later, true),
            Some(ten),
            "three other requests hold the window"
        );
    }

    #[tokio::test]
    async fn a_remaining_zero_waits_for_the_oldest_request_not_a_whole_interval() {
        let clock = Arc::new(RecordingClock::new());
        let gate = RateGate::rolling(10, Duration::from_secs(10))
            .unwrap()
            .with_clock(clock.clone());
        let mut server = RollingServer {
            limit: 10,
            interval: Duration::from_secs(10),
            arrivals: VecDeque::new(),
        };
        // Ten requests a second apart: the tenth leaves nothing in the window.
        for _ in 0..10 {
            gate.acquire_within(DEFAULT_MAX_WAIT, true).await.unwrap();
            let (status, h) = server.handle(clock.now());
            gate.complete_window();
            gate.observe(status, &h, &WindowPolicy);
            assert_eq!(status, StatusCode::OK);
            clock.advance(Duration::from_secs(1));
        }
        // The first left the window 10 s after it was answered: at t = 10 s, now.
        let waited = gate.acquire_within(DEFAULT_MAX_WAIT, true).await.unwrap();
        assert_eq!(waited, Duration::ZERO);
        gate.complete_window();
        // The second leaves at t = 11 s: a one-second wait, not ten.
        let waited = gate.acquire_within(DEFAULT_MAX_WAIT, true).await.unwrap();
        assert_eq!(waited, Duration::from_secs(1));
    }

    #[tokio::test]
    async fn other_clients_requests_reported_by_the_platform_are_counted() {
        let clock = Arc::new(RecordingClock::new());
        let gate = RateGate::rolling(100, Duration::from_secs(10))
            .unwrap()
            .with_clock(clock.clone());
        let mut server = RollingServer {
            limit: 100,
            interval: Duration::from_secs(10),
            arrivals: VecDeque::new(),
        };
        // Another process sharing the app used 60 just before we start.
        for _ in 0..60 {
            server.handle(clock.now());
        }
        clock.advance(Duration::from_millis(100));
        let (ok, refused) =
            run_rolling(&gate, &clock, &mut server, 60, Duration::from_millis(10)).await;
        assert_eq!(refused, 0);
        assert!(ok >= 500, "{ok}");
    }

    #[tokio::test]
    async fn a_window_cap_holds_below_the_platform_limit_and_scales_with_the_interval() {
        let clock = Arc::new(RecordingClock::new());
        let gate = RateGate::rolling(100, Duration::from_secs(10))
            .unwrap()
            .with_window_cap(50, Duration::from_secs(10))
            .with_clock(clock.clone());
        assert_eq!(gate.window(), Some((50, Duration::from_secs(10))));
        let mut server = RollingServer {
            limit: 190,
            interval: Duration::from_secs(10),
            arrivals: VecDeque::new(),
        };
        let (ok, refused) =
            run_rolling(&gate, &clock, &mut server, 60, Duration::from_millis(10)).await;
        assert_eq!(refused, 0);
        assert!((285..=300).contains(&ok), "{ok}");
        assert_eq!(gate.window(), Some((50, Duration::from_secs(10))));
        // A platform reporting a one-second window: 50 per 10 s is 5 per second.
        let mut h = HeaderMap::new();
        h.insert("x-window-max", HeaderValue::from(1000u64));
        h.insert("x-window-interval-ms", HeaderValue::from(1000u64));
        gate.observe(StatusCode::OK, &h, &WindowPolicy);
        assert_eq!(gate.window(), Some((5, Duration::from_secs(1))));
    }

    #[tokio::test]
    async fn hostile_window_headers_stay_bounded() {
        let clock = Arc::new(RecordingClock::new());
        let gate = RateGate::rolling(100, Duration::from_secs(10))
            .unwrap()
            .with_clock(clock.clone())
            .with_max_wait(Duration::from_secs(60));
        for (max, interval, remaining) in [
            ("0", "0", "0"),
            ("18446744073709551615", "18446744073709551615", "0"),
            ("1", "1", "18446744073709551615"),
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-window-max", HeaderValue::from_str(max).unwrap());
            h.insert(
                "x-window-interval-ms",
                HeaderValue::from_str(interval).unwrap(),
            );
            h.insert(
                "x-window-remaining",
                HeaderValue::from_str(remaining).unwrap(),
            );
            gate.observe(StatusCode::OK, &h, &WindowPolicy);
            let (limit, every) = gate.window().unwrap();
            assert!((1..=MAX_WINDOW_LIMIT).contains(&limit), "{max}");
            assert!(
                every >= MIN_WINDOW_INTERVAL && every <= MAX_RETRY_HINT,
                "{interval}"
            );
            // Never a wait beyond max_wait: an error instead.
            match gate.acquire().await {
                Ok(waited) => assert!(waited <= Duration::from_secs(60)),
                Err(e) => assert_eq!(e.kind(), ErrorKind::RateLimited),
            }
        }
        assert_eq!(
            RateGate::rolling(0, Duration::from_secs(1))
                .unwrap_err()
                .kind(),
            ErrorKind::Config
        );
        assert_eq!(
            RateGate::rolling(1, Duration::ZERO).unwrap_err().kind(),
            ErrorKind::Config
        );
    }

    #[test]
    fn bad_quotas_are_config_errors() {
        assert_eq!(
            RateGate::per_minute(0).unwrap_err().kind(),
            ErrorKind::Config
        );
        assert_eq!(
            RateGate::new(1, Duration::ZERO, 1).unwrap_err().kind(),
            ErrorKind::Config
        );
    }
}
