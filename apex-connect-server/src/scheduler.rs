//! The scheduler: sync jobs per (connection, stream) on an interval (with jitter) or a cron
//! expression, persisted through the store's
//! [`ScheduleStore`](apex_connect_core::ScheduleStore), run by at most one process at a time.
//!
//! # Guarantees
//! - **Persisted**: each job's `next_due_at` is stored; a restarted process continues from it
//!   (a job that was due while nothing ran runs once, not once per missed tick).
//! - **One run at a time** per (connection, stream), across processes sharing the database:
//!   a run starts only after the store's claim took the job's lease (compare-and-swap; on
//!   SQLite a single `UPDATE ... WHERE lease_until <= now`). The lease is renewed while the run goes on; a crashed process's lease
//!   expires and another takes the job. The sync engine's cursor compare-and-swap is a second
//!   line: two runs could never both commit a cursor.
//! - **Retries**: a failed run is retried after a backoff that doubles per consecutive failure
//!   (never later than the regular next time); a success resets it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use apex_connect_core::engine::CancellationToken;
use apex_connect_core::store::{RunStatus, ScheduleEntry, ScheduleOutcome, ScheduleRow};
use apex_connect_core::{
    ConnectionId, Error, ErrorKind, Result, Sink, StreamId, SyncEngine, SyncOptions,
};
use chrono::{TimeZone, Utc};
use rand::Rng;

use crate::state::ServerState;

/// When a job runs.
#[derive(Debug, Clone)]
pub enum Cadence {
    /// Every `every`, plus a random delay up to `jitter`.
    Every {
        /// The interval.
        every: Duration,
        /// The largest random delay added.
        jitter: Duration,
    },
    /// At the times of a cron expression (UTC).
    Cron(Box<cron::Schedule>),
}

/// Parses a cron expression: 5 fields (minute first, as crontab) or 6-7 fields (seconds first).
///
/// # Errors
/// `Config` for an invalid expression.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule> {
    let fields = expr.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {expr}")
    } else {
        expr.to_string()
    };
    cron::Schedule::from_str(&full).map_err(|e| {
        Error::config("invalid cron expression")
            .with_context("cron", expr)
            .set_source(e)
    })
}

impl Cadence {
    /// The first due time of a new job: now (plus jitter) for an interval, the next cron time.
    pub fn first(&self, now_ms: i64) -> i64 {
        match self {
            Cadence::Every { jitter, .. } => now_ms.saturating_add(jitter_ms(*jitter)),
            Cadence::Cron(_) => self.next(now_ms),
        }
    }

    /// The next due time after a run that ended at `now_ms`.
    pub fn next(&self, now_ms: i64) -> i64 {
        match self {
            Cadence::Every { every, jitter } => now_ms
                .saturating_add(i64::try_from(every.as_millis()).unwrap_or(i64::MAX / 4))
                .saturating_add(jitter_ms(*jitter)),
            Cadence::Cron(s) => Utc
                .timestamp_millis_opt(now_ms)
                .single()
                .and_then(|t| s.after(&t).next())
                .map(|t| t.timestamp_millis())
                .unwrap_or(i64::MAX / 2),
        }
    }
}

fn jitter_ms(jitter: Duration) -> i64 {
    let max = i64::try_from(jitter.as_millis()).unwrap_or(0);
    if max == 0 {
        0
    } else {
        rand::rng().random_range(0..=max)
    }
}

/// One scheduled sync.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobSpec {
    /// The connection.
    pub connection: ConnectionId,
    /// The stream.
    pub stream: StreamId,
    /// When it runs.
    pub cadence: Cadence,
    /// The cadence as text (stored; a change of text reschedules the job).
    pub spec: String,
    /// Full resync instead of incremental.
    pub full: bool,
}

impl JobSpec {
    /// A job on an interval with jitter.
    pub fn every(
        connection: impl Into<ConnectionId>,
        stream: impl Into<StreamId>,
        every: Duration,
        jitter: Duration,
    ) -> Self {
        JobSpec {
            connection: connection.into(),
            stream: stream.into(),
            spec: format!(
                "every {}ms jitter {}ms",
                every.as_millis(),
                jitter.as_millis()
            ),
            cadence: Cadence::Every { every, jitter },
            full: false,
        }
    }

    /// A job on a cron expression.
    ///
    /// # Errors
    /// `Config` for an invalid expression.
    pub fn cron(
        connection: impl Into<ConnectionId>,
        stream: impl Into<StreamId>,
        expr: &str,
    ) -> Result<Self> {
        Ok(JobSpec {
            connection: connection.into(),
            stream: stream.into(),
            spec: format!("cron {expr}"),
            cadence: Cadence::Cron(Box::new(parse_cron(expr)?)),
            full: false,
        })
    }

    /// Makes it a full resync.
    pub fn full(mut self, full: bool) -> Self {
        self.full = full;
        self
    }

    /// The job as the store registers it, first due after `now_ms`.
    pub fn entry(&self, now_ms: i64) -> ScheduleEntry {
        ScheduleEntry::new(
            self.connection.clone(),
            self.stream.clone(),
            self.spec.clone(),
            self.cadence.first(now_ms),
        )
        .full(self.full)
    }
}

/// How the scheduler runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SchedulerConfig {
    /// Lease of a running job (renewed every third of it).
    pub lease: Duration,
    /// How often to look for due jobs.
    pub poll: Duration,
    /// First retry delay after a failed run (doubled per consecutive failure).
    pub backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Jobs run at once by this process.
    pub max_concurrent: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            lease: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(1800),
            max_concurrent: 4,
        }
    }
}

/// Runs the due jobs of a set of [`JobSpec`]s.
#[derive(Clone)]
pub struct Scheduler {
    state: ServerState,
    jobs: Arc<BTreeMap<(ConnectionId, StreamId), JobSpec>>,
    sink: Arc<dyn Sink>,
    config: SchedulerConfig,
    owner: String,
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("jobs", &self.jobs.len())
            .field("owner", &self.owner)
            .field("config", &self.config)
            .finish()
    }
}

/// How one scheduled run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobRun {
    /// The connection.
    pub connection: String,
    /// The stream.
    pub stream: String,
    /// `succeeded`, `failed` or `cancelled`.
    pub status: &'static str,
    /// The next due time stored.
    pub next_due_at: i64,
}

impl Scheduler {
    /// A scheduler for `jobs`, registering them in the state's store (keeping stored due
    /// times).
    ///
    /// # Errors
    /// `Storage`.
    pub async fn new(
        state: ServerState,
        jobs: Vec<JobSpec>,
        sink: Arc<dyn Sink>,
        config: SchedulerConfig,
    ) -> Result<Self> {
        let now = state.clock().now_ms();
        let mut map = BTreeMap::new();
        for job in jobs {
            state.store().upsert_schedule(&job.entry(now), now).await?;
            map.insert((job.connection.clone(), job.stream.clone()), job);
        }
        Ok(Scheduler {
            state,
            jobs: Arc::new(map),
            sink,
            config,
            owner: format!(
                "sched-{}-{}",
                std::process::id(),
                rand::rng().random::<u32>()
            ),
        })
    }

    /// Sets the lease owner name (default: pid plus a random suffix).
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// Runs due jobs until `shutdown`; runs in progress are cancelled at shutdown (the engine
    /// commits what the sink acknowledged) and their leases released, due again at once.
    pub async fn run(&self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(e) = self.run_due_until(&shutdown).await {
                tracing::warn!(error = %e, "scheduler error");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.config.poll) => {}
            }
        }
    }

    /// Claims the jobs due now and runs them to the end (concurrently).
    ///
    /// # Errors
    /// `Storage` when the claim fails.
    pub async fn run_due(&self) -> Result<Vec<JobRun>> {
        self.run_due_until(&CancellationToken::new()).await
    }

    async fn run_due_until(&self, shutdown: &CancellationToken) -> Result<Vec<JobRun>> {
        let now = self.state.clock().now_ms();
        let rows = self
            .state
            .store()
            .claim_schedules(
                &self.owner,
                self.config.lease,
                now,
                self.config.max_concurrent.max(1),
            )
            .await?;
        let runs = rows
            .into_iter()
            .map(|row| self.run_job(row, shutdown.child_token()));
        Ok(futures::future::join_all(runs).await)
    }

    async fn run_job(&self, row: ScheduleRow, cancel: CancellationToken) -> JobRun {
        let key = (row.connection.clone(), row.stream.clone());
        let job = self.jobs.get(&key);
        let handle = self.state.connection(&key.0);
        let result: Result<()> = match (job, handle) {
            (Some(job), Some(handle)) => {
                let engine = SyncEngine::new(self.state.store().clone());
                let options = SyncOptions::new().full(job.full).cancel(cancel.clone());
                let sync = engine.run(
                    handle.connector.as_ref(),
                    &key.0,
                    &key.1,
                    self.sink.as_ref(),
                    options,
                );
                let heartbeat = self.heartbeat(&row, &cancel);
                tokio::pin!(sync);
                tokio::select! {
                    r = &mut sync => r.map(|_| ()),
                    lost = heartbeat => {
                        // Cancelled: let the engine commit what the sink acknowledged.
                        let _ = sync.await;
                        Err(lost)
                    }
                }
            }
            _ => Err(Error::config(
                "the scheduled connection or stream is no longer configured",
            )),
        };
        let now = self.state.clock().now_ms();
        let regular = job.map(|j| j.cadence.next(now)).unwrap_or(i64::MAX / 2);
        let outcome = match &result {
            Ok(()) => ScheduleOutcome::new(RunStatus::Succeeded, regular),
            Err(e) if e.kind() == ErrorKind::Cancelled => {
                ScheduleOutcome::new(RunStatus::Cancelled, now).with_error(e.to_string())
            }
            Err(e) => {
                let failures = u32::try_from(row.failures)
                    .unwrap_or(u32::MAX)
                    .saturating_add(1);
                let exp = failures.saturating_sub(1).min(20);
                let delay = self
                    .config
                    .backoff
                    .saturating_mul(1u32 << exp)
                    .min(self.config.max_backoff);
                let retry =
                    now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 4));
                ScheduleOutcome::new(RunStatus::Failed, retry.min(regular))
                    .with_error(e.to_string())
            }
        };
        self.state
            .metrics()
            .sync_run(outcome.status == RunStatus::Succeeded);
        match self
            .state
            .store()
            .finish_schedule(&row.connection, &row.stream, &self.owner, &outcome, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(connection = %row.connection, stream = %row.stream, "schedule lease was lost during the run")
            }
            Err(e) => tracing::warn!(error = %e, "cannot record the end of a scheduled run"),
        }
        JobRun {
            connection: row.connection.to_string(),
            stream: row.stream.to_string(),
            status: outcome.status.as_str(),
            next_due_at: outcome.next_due_at,
        }
    }

    /// Renews the lease every third of it; returns (an error) only when the lease was lost,
    /// after cancelling the run.
    async fn heartbeat(&self, row: &ScheduleRow, cancel: &CancellationToken) -> Error {
        let every = (self.config.lease / 3).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(every).await;
            let now = self.state.clock().now_ms();
            let until = now.saturating_add(
                i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX / 4),
            );
            match self
                .state
                .store()
                .renew_schedule(&row.connection, &row.stream, &self.owner, until, now)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    cancel.cancel();
                    return Error::new(ErrorKind::Conflict, "the schedule lease was lost");
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew a schedule lease"),
            }
        }
    }
}
