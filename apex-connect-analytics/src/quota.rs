//! Limits that one core [`RateGate`] cannot hold alone: several request rates at once (Mixpanel:
//! 60 queries an hour **and** 3 a second) plus a cap on concurrent requests (Mixpanel: 100
//! concurrent exports; GA4: 10 concurrent requests per property).
//!
//! Each rate is a core [`RateGate`] (governor's GCRA behind it, on tokio time), built by
//! [`window_gate`] so that it never allows more than `n` requests in **any** window of the
//! given length (a sliding window, as the platforms count). Concurrency is a tokio
//! [`Semaphore`]; a [`QuotaPermit`] holds one slot for as long as the request runs — for a
//! streamed export that is until its last line is read, not just until the headers arrived.
//!
//! One rate gate goes into the connection's HTTP stack (so that every attempt, retries
//! included, pays it, and a 429 closes it for every request); the others are paid once per
//! logical request by [`QuotaGate::admit`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use apex_connect_core::{Error, ErrorKind, RateGate, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A rate gate that allows at most `n` requests in any window of length `per` (sliding): bursts
/// of a tenth of them, and nine tenths of the rate sustained.
///
/// GCRA with burst `b` and emission interval `p` admits at most `b + floor(T / p)` requests in
/// any window of length `T`; with `b = max(1, n / 10)` and `p = per / (n - b)` that is `n`. (A
/// larger burst would leave less of the window for the sustained rate: a burst of all `n`
/// then one per `per / n` would allow almost `2n` in the first window.)
///
/// # Errors
/// `Config` when `n` is zero or `per` is zero.
pub fn window_gate(n: u32, per: Duration) -> Result<RateGate> {
    if n == 0 {
        return Err(Error::config(
            "a request quota must allow at least one request",
        ));
    }
    if per.is_zero() {
        return Err(Error::config("a request quota's window must not be zero"));
    }
    let burst = (n / 10).max(1);
    let rest = n - burst;
    if rest == 0 {
        // n == 1: one request per window.
        return RateGate::new(1, per, 1);
    }
    RateGate::new(rest, per, burst)
}

/// Rate gates and a concurrency cap, held together; clones share them.
#[derive(Clone)]
pub struct QuotaGate {
    rates: Vec<(&'static str, RateGate)>,
    slots: Arc<Semaphore>,
    max_concurrent: u32,
    max_wait: Duration,
}

impl fmt::Debug for QuotaGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaGate")
            .field("rates", &self.rates)
            .field("max_concurrent", &self.max_concurrent)
            .field("in_use", &self.in_use())
            .field("max_wait", &self.max_wait)
            .finish()
    }
}

/// One admitted request's concurrency slot; dropping it frees the slot.
#[derive(Debug)]
pub struct QuotaPermit {
    _slot: OwnedSemaphorePermit,
}

impl QuotaGate {
    /// A gate with `max_concurrent` slots and no rate yet; waits at most `max_wait` for a slot.
    ///
    /// # Errors
    /// `Config` when `max_concurrent` is zero.
    pub fn new(max_concurrent: u32, max_wait: Duration) -> Result<Self> {
        if max_concurrent == 0 {
            return Err(Error::config("max concurrent requests must be at least 1"));
        }
        let n = usize::try_from(max_concurrent)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        Ok(QuotaGate {
            rates: Vec::new(),
            slots: Arc::new(Semaphore::new(n)),
            max_concurrent,
            max_wait,
        })
    }

    /// Adds a rate every admitted request pays.
    pub fn with_rate(mut self, name: &'static str, gate: RateGate) -> Self {
        self.rates.push((name, gate));
        self
    }

    /// The rates, by name.
    pub fn rates(&self) -> &[(&'static str, RateGate)] {
        &self.rates
    }

    /// Slots in use now.
    pub fn in_use(&self) -> u32 {
        let free = u32::try_from(self.slots.available_permits()).unwrap_or(u32::MAX);
        self.max_concurrent.saturating_sub(free)
    }

    /// Waits for a concurrency slot, then for every rate, and returns the slot.
    ///
    /// # Errors
    /// `RateLimited` (temporary, with `retry_after`) when no slot frees up within the maximum
    /// wait, or a rate would need a longer wait (see [`RateGate::acquire`]).
    pub async fn admit(&self) -> Result<QuotaPermit> {
        let slot =
            match tokio::time::timeout(self.max_wait, self.slots.clone().acquire_owned()).await {
                Ok(Ok(slot)) => slot,
                Ok(Err(_closed)) => {
                    return Err(Error::new(ErrorKind::Unexpected, "request slots closed"));
                }
                Err(_) => {
                    return Err(Error::new(
                    ErrorKind::RateLimited,
                    "every concurrent request slot stayed busy for longer than the allowed wait",
                )
                .temporary()
                .with_retry_after(Duration::from_secs(1))
                .with_context("max_concurrent", self.max_concurrent));
                }
            };
        for (name, gate) in &self.rates {
            gate.acquire()
                .await
                .map_err(|e| e.with_context("quota", name))?;
        }
        Ok(QuotaPermit { _slot: slot })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// The largest number of `stamps` inside any window `[t, t + len)`.
    fn max_in_window(stamps: &[Instant], len: Duration) -> usize {
        let mut best = 0;
        for (i, t) in stamps.iter().enumerate() {
            let n = stamps[i..].iter().take_while(|s| **s < *t + len).count();
            best = best.max(n);
        }
        best
    }

    /// Mixpanel's export limits, held together: 60 an hour, 3 a second, 100 concurrent.
    #[tokio::test(start_paused = true)]
    async fn hourly_per_second_and_concurrent_limits_hold_together() {
        let hourly = window_gate(60, Duration::from_secs(3600)).unwrap();
        let gate = QuotaGate::new(100, Duration::from_secs(3600))
            .unwrap()
            .with_rate(
                "per_second",
                window_gate(3, Duration::from_secs(1)).unwrap(),
            );
        let mut stamps = Vec::new();
        for _ in 0..150 {
            // The hourly gate is paid in the HTTP stack; here it is paid by hand.
            let permit = gate.admit().await.unwrap();
            hourly.acquire().await.unwrap();
            stamps.push(Instant::now());
            drop(permit);
        }
        assert!(max_in_window(&stamps, Duration::from_secs(1)) <= 3);
        assert!(max_in_window(&stamps, Duration::from_secs(3600)) <= 60);
        // Not slower than needed: 150 requests in about two hours and a half.
        let took = *stamps.last().unwrap() - stamps[0];
        assert!(took <= Duration::from_secs(3 * 3600), "{took:?}");
        // Bursts: the first 3 go in the first second.
        assert!(stamps[2] - stamps[0] <= Duration::from_secs(1));

        // Concurrency: 100 slots, the 101st waits until one is released.
        let slots = QuotaGate::new(100, Duration::from_secs(5)).unwrap();
        let mut permits = Vec::new();
        for _ in 0..100 {
            permits.push(slots.admit().await.unwrap());
        }
        assert_eq!(slots.in_use(), 100);
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.admit().await.map(|_| Instant::now()) }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        let released_at = Instant::now();
        permits.pop();
        let admitted = waiting.await.unwrap().unwrap();
        assert!(admitted >= released_at);
        // Nobody releases: a clear RateLimited after the wait, not a hang.
        let e = slots.admit().await;
        assert!(e.is_ok(), "one slot was free again");
        let _again = e.unwrap();
        let e = slots.admit().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert!(e.retry_after().is_some());
    }

    #[test]
    fn bad_limits_are_config_errors() {
        assert_eq!(
            window_gate(0, Duration::from_secs(1)).unwrap_err().kind(),
            ErrorKind::Config
        );
        assert_eq!(
            window_gate(5, Duration::ZERO).unwrap_err().kind(),
            ErrorKind::Config
        );
        assert_eq!(
            QuotaGate::new(0, Duration::from_secs(1))
                .unwrap_err()
                .kind(),
            ErrorKind::Config
        );
        assert!(window_gate(1, Duration::from_secs(1)).is_ok());
    }
}
