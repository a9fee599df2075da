//! Retention: done inbox events (with their bodies) and finished sync runs are purged after a
//! configured age, in small batches, so the state database does not grow forever.
//!
//! # Semantics
//! - **Inbox**: only events that are *done* (processed and completed) and finished more than
//!   `inbox` ago are deleted. Pending, in-flight and dead-lettered events are never purged: a
//!   dead letter stays until an operator handles it (requeued, then done, then purged after
//!   the retention like any done event). A redelivery of a purged event's id is stored again
//!   as a new event, so keep the inbox retention longer than the platforms' redelivery window
//!   (days; the default is 7 days).
//! - **Runs**: finished runs (succeeded, failed, cancelled) that finished more than `runs` ago
//!   are deleted, except the latest run of each (connection, stream), which `status` shows.
//! - **Batches**: each statement deletes at most `batch` rows (default 500), taking its turn
//!   at the SQLite store's write gate like every writer, and the purge yields between
//!   statements, so webhook ingress never waits for more than one short delete.
//!
//! The scheduler runs [`purge`] every `every` (see
//! [`SchedulerConfig::retention`](crate::SchedulerConfig::retention)).

use std::time::Duration;

use apex_connect_core::Result;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::parse_duration;
use crate::state::ServerState;

/// `[retention]` in the configuration file.
///
/// ```toml
/// [retention]
/// inbox = "7d"    # done inbox events; "off" keeps them forever
/// runs = "30d"    # finished sync runs; "off" keeps them forever
/// batch = 500     # rows per delete statement
/// every = "10m"   # how often the purge runs
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct RetentionSettings {
    /// Age after which done inbox events are purged (default `"7d"`; `"off"`: never).
    pub inbox: String,
    /// Age after which finished sync runs are purged (default `"30d"`; `"off"`: never).
    pub runs: String,
    /// Rows deleted per statement (default 500).
    pub batch: usize,
    /// How often the purge runs (default `"10m"`).
    pub every: String,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            inbox: "7d".into(),
            runs: "30d".into(),
            batch: 500,
            every: "10m".into(),
        }
    }
}

impl RetentionSettings {
    /// The settings as the scheduler uses them.
    ///
    /// # Errors
    /// `Config` for a bad duration or a zero batch.
    pub fn parse(&self) -> Result<Retention> {
        let age = |text: &str| -> Result<Option<Duration>> {
            match text.trim() {
                "off" | "never" | "forever" => Ok(None),
                t => parse_duration(t).map(Some),
            }
        };
        if self.batch == 0 {
            return Err(apex_connect_core::Error::config(
                "retention batch must be at least 1",
            ));
        }
        Ok(Retention {
            inbox: age(&self.inbox)?,
            runs: age(&self.runs)?,
            batch: self.batch,
            every: parse_duration(&self.every)?,
        })
    }
}

/// How long done inbox events and finished runs are kept, and how they are purged.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retention {
    /// Age after which done inbox events are purged; `None`: kept forever.
    pub inbox: Option<Duration>,
    /// Age after which finished runs are purged; `None`: kept forever.
    pub runs: Option<Duration>,
    /// Rows deleted per statement.
    pub batch: usize,
    /// How often the scheduler runs the purge.
    pub every: Duration,
}

impl Default for Retention {
    /// 7 days of done inbox events, 30 days of runs, 500 rows per statement, every 10 minutes.
    fn default() -> Self {
        Retention {
            inbox: Some(Duration::from_secs(7 * 86_400)),
            runs: Some(Duration::from_secs(30 * 86_400)),
            batch: 500,
            every: Duration::from_secs(600),
        }
    }
}

impl Retention {
    /// Keeps everything (no purge).
    pub fn keep_all() -> Self {
        Retention {
            inbox: None,
            runs: None,
            ..Retention::default()
        }
    }

    /// Sets the inbox retention.
    pub fn inbox(mut self, age: Option<Duration>) -> Self {
        self.inbox = age;
        self
    }

    /// Sets the runs retention.
    pub fn runs(mut self, age: Option<Duration>) -> Self {
        self.runs = age;
        self
    }

    /// Sets the rows deleted per statement (at least 1).
    pub fn batch(mut self, rows: usize) -> Self {
        self.batch = rows.max(1);
        self
    }
}

/// What one [`purge`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Purged {
    /// Done inbox events deleted.
    pub inbox: u64,
    /// Sync runs deleted.
    pub runs: u64,
}

fn cutoff(now_ms: i64, age: Duration) -> i64 {
    now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
}

/// Deletes what `retention` allows, `retention.batch` rows per statement (each one write
/// transaction of the store, yielding in between), until nothing older is left or `stop` is
/// cancelled.
///
/// # Errors
/// `Storage` from the store; what was deleted before stays deleted.
pub async fn purge(
    state: &ServerState,
    retention: &Retention,
    stop: &CancellationToken,
) -> Result<Purged> {
    let mut purged = Purged::default();
    let now = state.clock().now_ms();
    let batch = retention.batch.max(1);
    if let Some(age) = retention.inbox {
        let before = cutoff(now, age);
        while !stop.is_cancelled() {
            let n = state.store().purge_inbox_done(before, batch).await?;
            purged.inbox += n;
            if n < batch as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    if let Some(age) = retention.runs {
        let before = cutoff(now, age);
        while !stop.is_cancelled() {
            let n = state.store().purge_runs(before, batch).await?;
            purged.runs += n;
            if n < batch as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    if purged.inbox + purged.runs > 0 {
        tracing::info!(
            inbox = purged.inbox,
            runs = purged.runs,
            "retention purged old rows"
        );
    }
    Ok(purged)
}
