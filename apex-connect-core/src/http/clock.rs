//! Time as the HTTP stack sees it: a [`Clock`] that can be replaced in tests.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

/// Where the retry layer and the rate gate read the time and sleep.
///
/// The default, [`TokioClock`], uses `tokio::time`, so `tokio::time::pause()` and
/// `#[tokio::test(start_paused = true)]` control it. Tests that talk to real sockets (where
/// paused time would auto-advance while a task waits on I/O) use [`RecordingClock`] instead:
/// its sleeps return at once, advance a virtual time and are recorded, so a test can assert
/// the delays the stack asked for.
///
/// # Behavior
/// - `now` never goes backwards.
/// - After `sleep(d)` returns, `now` has advanced by at least `d`.
#[async_trait]
pub trait Clock: fmt::Debug + Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;

    /// Waits for `duration`.
    async fn sleep(&self, duration: Duration);
}

/// The real clock: `tokio::time::Instant::now()` and `tokio::time::sleep`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

#[async_trait]
impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// A virtual clock for tests: `sleep` returns at once, advances the virtual time by the
/// requested duration and records it.
#[derive(Debug)]
pub struct RecordingClock {
    origin: Instant,
    state: Mutex<RecordingState>,
}

#[derive(Debug, Default)]
struct RecordingState {
    offset: Duration,
    sleeps: Vec<Duration>,
}

impl RecordingClock {
    /// A clock whose virtual time starts now.
    pub fn new() -> Self {
        RecordingClock {
            origin: Instant::now(),
            state: Mutex::new(RecordingState::default()),
        }
    }

    /// Every sleep requested so far, in order.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.lock().sleeps.clone()
    }

    /// The sum of all sleeps requested so far.
    pub fn total_slept(&self) -> Duration {
        self.lock().offset
    }

    /// Moves the virtual time forward without recording a sleep.
    pub fn advance(&self, by: Duration) {
        let mut s = self.lock();
        s.offset = s.offset.saturating_add(by);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecordingState> {
        // A panic while holding this lock cannot leave the state inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for RecordingClock {
    fn default() -> Self {
        RecordingClock::new()
    }
}

#[async_trait]
impl Clock for RecordingClock {
    fn now(&self) -> Instant {
        let offset = self.lock().offset;
        // Saturates rather than panic if a test sleeps for centuries.
        self.origin
            .checked_add(offset)
            .unwrap_or_else(|| self.origin + Duration::from_secs(100 * 365 * 24 * 3600))
    }

    async fn sleep(&self, duration: Duration) {
        {
            let mut s = self.lock();
            s.offset = s.offset.saturating_add(duration);
            s.sleeps.push(duration);
        }
        // Let other tasks run, as a real sleep would.
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn recording_clock_advances_and_records() {
        let c = RecordingClock::new();
        let t0 = c.now();
        c.sleep(Duration::from_secs(2)).await;
        c.sleep(Duration::from_millis(500)).await;
        assert_eq!(c.now() - t0, Duration::from_millis(2500));
        assert_eq!(
            c.sleeps(),
            vec![Duration::from_secs(2), Duration::from_millis(500)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let c = TokioClock;
        let t0 = c.now();
        c.sleep(Duration::from_secs(30)).await;
        assert!(c.now() - t0 >= Duration::from_secs(30));
    }
}
