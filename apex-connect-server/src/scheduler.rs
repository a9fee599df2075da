//! The scheduler: sync jobs per (connection, stream) on an interval (with jitter) or a cron
//! expression, persisted in the `schedules` table, run by at most one process at a time.
//!
//! # Guarantees
//! - **Persisted**: each job's `next_due_at` is stored; a restarted process continues from it
//!   (a job that was due while nothing ran runs once, not once per missed tick).
//! - **One run at a time** per (connection, stream), across processes sharing the database:
//!   a run starts only after a single `UPDATE ... WHERE lease_until <= now` took the job's lease
//!   (compare-and-swap). The lease is renewed while the run goes on; a crashed process's lease
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
use apex_connect_core::{
    ConnectionId, Error, ErrorKind, Result, Sink, StreamId, SyncEngine, SyncOptions,
};
use chrono::{TimeZone, Utc};
use rand::Rng;
use serde::Serialize;
use sqlx::sqlite::SqlitePool;

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
            Cadence::Every { jitter, .. } => now_ms + jitter_ms(*jitter),
            Cadence::Cron(_) => self.next(now_ms),
        }
    }

    /// The next due time after a run that ended at `now_ms`.
    pub fn next(&self, now_ms: i64) -> i64 {
        match self {
            Cadence::Every { every, jitter } => {
                now_ms
                    + i64::try_from(every.as_millis()).unwrap_or(i64::MAX / 4)
                    + jitter_ms(*jitter)
            }
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
}

/// A row of the `schedules` table, as in the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[non_exhaustive]
pub struct ScheduleRow {
    /// The connection.
    pub connection: String,
    /// The stream.
    pub stream: String,
    /// The cadence text.
    pub spec: String,
    /// Next due time, Unix milliseconds.
    pub next_due_at: i64,
    /// The process running it now (if its lease holds).
    pub lease_owner: Option<String>,
    /// Until when the lease holds.
    pub lease_until: Option<i64>,
    /// Consecutive failures.
    pub failures: i64,
    /// Runs finished.
    pub runs: i64,
    /// Last start, Unix milliseconds.
    pub last_started_at: Option<i64>,
    /// Last end.
    pub last_finished_at: Option<i64>,
    /// `succeeded`, `failed` or `cancelled`.
    pub last_status: Option<String>,
    /// The last error.
    pub last_error: Option<String>,
}

/// The `schedules` table.
#[derive(Clone)]
pub struct Schedules {
    pool: SqlitePool,
}

impl fmt::Debug for Schedules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Schedules")
    }
}

fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| Error::storage(what).set_source(e)
}

impl Schedules {
    /// The table in a database migrated by [`crate::migrate`].
    pub fn new(pool: SqlitePool) -> Self {
        Schedules { pool }
    }

    /// Registers a job: a new one is due at `cadence.first(now)`; an existing one keeps its
    /// `next_due_at` (restart) unless its cadence text changed.
    ///
    /// # Errors
    /// `Storage`.
    pub async fn upsert(&self, job: &JobSpec, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO schedules (connection, stream, spec, full_sync, next_due_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (connection, stream) DO UPDATE SET spec = excluded.spec, \
                 full_sync = excluded.full_sync, next_due_at = excluded.next_due_at, \
                 updated_at = excluded.updated_at \
             WHERE schedules.spec IS NOT excluded.spec OR schedules.full_sync IS NOT excluded.full_sync",
        )
        .bind(job.connection.as_str())
        .bind(job.stream.as_str())
        .bind(&job.spec)
        .bind(job.full)
        .bind(job.cadence.first(now))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db("cannot save a schedule"))?;
        Ok(())
    }

    /// Takes the lease of up to `limit` due jobs whose lease is free, in one statement.
    ///
    /// # Errors
    /// `Storage`.
    pub async fn claim(
        &self,
        owner: &str,
        lease: Duration,
        now: i64,
        limit: usize,
    ) -> Result<Vec<ScheduleRow>> {
        let until = now + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4);
        sqlx::query_as::<_, ScheduleRow>(
            "UPDATE schedules SET lease_owner = ?1, lease_until = ?2, last_started_at = ?3 \
             WHERE (connection, stream) IN ( \
                 SELECT connection, stream FROM schedules \
                 WHERE next_due_at <= ?3 AND (lease_until IS NULL OR lease_until <= ?3) \
                 ORDER BY next_due_at LIMIT ?4) \
               AND (lease_until IS NULL OR lease_until <= ?3) \
             RETURNING connection, stream, spec, next_due_at, lease_owner, lease_until, failures, \
                 runs, last_started_at, last_finished_at, last_status, last_error",
        )
        .bind(owner)
        .bind(until)
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db("cannot claim schedules"))
    }

    /// Extends a held lease; `false` when it is no longer held by `owner`.
    ///
    /// # Errors
    /// `Storage`.
    pub async fn renew(
        &self,
        connection: &str,
        stream: &str,
        owner: &str,
        until: i64,
        now: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE schedules SET lease_until = ?4 \
             WHERE connection = ?1 AND stream = ?2 AND lease_owner = ?3 AND lease_until > ?5",
        )
        .bind(connection)
        .bind(stream)
        .bind(owner)
        .bind(until)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db("cannot renew a schedule lease"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the end of a run and releases the lease; `false` when the lease was lost.
    ///
    /// # Errors
    /// `Storage`.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish(
        &self,
        connection: &str,
        stream: &str,
        owner: &str,
        status: &str,
        error: Option<&str>,
        next_due_at: i64,
        now: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE schedules SET lease_owner = NULL, lease_until = NULL, next_due_at = ?4, \
                 last_finished_at = ?5, last_status = ?6, last_error = ?7, \
                 runs = runs + (CASE WHEN ?6 = 'cancelled' THEN 0 ELSE 1 END), \
                 failures = CASE WHEN ?6 = 'failed' THEN failures + 1 \
                                 WHEN ?6 = 'succeeded' THEN 0 ELSE failures END, \
                 updated_at = ?5 \
             WHERE connection = ?1 AND stream = ?2 AND lease_owner = ?3",
        )
        .bind(connection)
        .bind(stream)
        .bind(owner)
        .bind(next_due_at)
        .bind(now)
        .bind(status)
        .bind(error)
        .execute(&self.pool)
        .await
        .map_err(db("cannot record a scheduled run"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Makes a job due now (an unresolved thin webhook asks for a re-read); no-op without a job.
    ///
    /// # Errors
    /// `Storage`.
    pub async fn make_due(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE schedules SET next_due_at = MIN(next_due_at, ?3) WHERE connection = ?1 AND stream = ?2",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db("cannot update a schedule"))?;
        Ok(())
    }

    /// Every job, by (connection, stream).
    ///
    /// # Errors
    /// `Storage`.
    pub async fn list(&self) -> Result<Vec<ScheduleRow>> {
        sqlx::query_as::<_, ScheduleRow>(
            "SELECT connection, stream, spec, next_due_at, lease_owner, lease_until, failures, runs, \
                 last_started_at, last_finished_at, last_status, last_error \
             FROM schedules ORDER BY connection, stream",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("cannot list schedules"))
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
    schedules: Schedules,
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
    /// A scheduler for `jobs`, registering them in `schedules` (keeping stored due times).
    ///
    /// # Errors
    /// `Storage`.
    pub async fn new(
        state: ServerState,
        schedules: Schedules,
        jobs: Vec<JobSpec>,
        sink: Arc<dyn Sink>,
        config: SchedulerConfig,
    ) -> Result<Self> {
        let now = state.clock().now_ms();
        let mut map = BTreeMap::new();
        for job in jobs {
            schedules.upsert(&job, now).await?;
            map.insert((job.connection.clone(), job.stream.clone()), job);
        }
        Ok(Scheduler {
            state,
            schedules,
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
            .schedules
            .claim(
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
        let key = (
            ConnectionId::from(row.connection.clone()),
            StreamId::from(row.stream.clone()),
        );
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
        let (status, next, error) = match &result {
            Ok(()) => (
                "succeeded",
                job.map(|j| j.cadence.next(now)).unwrap_or(i64::MAX / 2),
                None,
            ),
            Err(e) if e.kind() == ErrorKind::Cancelled => ("cancelled", now, Some(e.to_string())),
            Err(e) => {
                let regular = job.map(|j| j.cadence.next(now)).unwrap_or(i64::MAX / 2);
                let failures = u32::try_from(row.failures)
                    .unwrap_or(u32::MAX)
                    .saturating_add(1);
                let exp = failures.saturating_sub(1).min(20);
                let delay = self
                    .config
                    .backoff
                    .saturating_mul(1u32 << exp)
                    .min(self.config.max_backoff);
                let retry = now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 4);
                ("failed", retry.min(regular), Some(e.to_string()))
            }
        };
        self.state.metrics().sync_run(status == "succeeded");
        match self
            .schedules
            .finish(
                &row.connection,
                &row.stream,
                &self.owner,
                status,
                error.as_deref(),
                next,
                now,
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(connection = %row.connection, stream = %row.stream, "schedule lease was lost during the run")
            }
            Err(e) => tracing::warn!(error = %e, "cannot record the end of a scheduled run"),
        }
        JobRun {
            connection: row.connection,
            stream: row.stream,
            status,
            next_due_at: next,
        }
    }

    /// Renews the lease every third of it; returns (an error) only when the lease was lost,
    /// after cancelling the run.
    async fn heartbeat(&self, row: &ScheduleRow, cancel: &CancellationToken) -> Error {
        let every = (self.config.lease / 3).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(every).await;
            let now = self.state.clock().now_ms();
            let until = now + i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX / 4);
            match self
                .schedules
                .renew(&row.connection, &row.stream, &self.owner, until, now)
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
