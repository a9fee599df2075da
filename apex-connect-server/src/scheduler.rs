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
//! - **Independent jobs**: each claimed job runs on its own task, at most `max_concurrent` at
//!   once (a semaphore); the loop claims only as many due jobs as there are free permits and
//!   keeps polling while jobs run, so a due job never waits for an unrelated long one (a
//!   multi-hour backfill holds one permit, not the scheduler).
//! - **Connection status**: a `Disabled` connection's jobs are skipped and a `NeedsReauth`
//!   connection's jobs are paused: neither runs nor counts a failure; the job is recorded as
//!   cancelled with the reason and due again at its regular next time, when the status is
//!   checked again (reconnecting makes it run at that time).
//! - **Panics**: a panic inside a run is caught and recorded as a failed run (retried with
//!   backoff), logged at `error` level and counted ([`Scheduler::panics`]); the scheduler
//!   keeps going.
//! - **Retention**: the loop also purges old done inbox events and sync runs every
//!   [`Retention::every`] (see [`crate::retention`]), on its own task.

use std::collections::BTreeMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use apex_connect_core::engine::CancellationToken;
use apex_connect_core::store::{
    ConnectionStatus, RunStatus, ScheduleEntry, ScheduleOutcome, ScheduleRow,
};
use apex_connect_core::{
    ConnectionId, Error, ErrorKind, Result, Sink, StreamId, SyncEngine, SyncOptions,
};
use chrono::{TimeZone, Utc};
use futures::FutureExt;
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::retention::Retention;
use crate::state::ServerState;
use crate::worker::panic_message;

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

    /// A job from a cadence as an operator writes it: `every 15m`, `every 15m jitter 30s`
    /// (humantime durations, at least one second) or `cron <expression>` (5 fields, minute
    /// first, or 6-7 fields, seconds first, UTC). The stored form this gives
    /// ([`JobSpec::spec`]) reads back with this function too.
    ///
    /// # Errors
    /// `Config` for anything else, with what was expected.
    pub fn parse(
        connection: impl Into<ConnectionId>,
        stream: impl Into<StreamId>,
        text: &str,
    ) -> Result<Self> {
        let text = text.trim();
        if text.len() > 200 {
            return Err(Error::config("a schedule is at most 200 characters"));
        }
        if let Some(expr) = text.strip_prefix("cron ") {
            return Self::cron(connection, stream, expr.trim());
        }
        let bad = || {
            Error::config(
                "a schedule is `every <duration> [jitter <duration>]` or `cron <expression>`",
            )
            .with_context("schedule", text)
        };
        let rest = text.strip_prefix("every ").ok_or_else(bad)?;
        let (every, jitter) = match rest.split_once(" jitter ") {
            Some((e, j)) => (e.trim(), Some(j.trim())),
            None => (rest.trim(), None),
        };
        let duration = |s: &str| humantime::parse_duration(s).map_err(|_| bad());
        let every = duration(every)?;
        if every < Duration::from_secs(1) {
            return Err(Error::config("a schedule runs at most once a second")
                .with_context("schedule", text));
        }
        let jitter = jitter.map(duration).transpose()?.unwrap_or_default();
        Ok(Self::every(connection, stream, every, jitter))
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
    /// Jobs run at once by this process (each on its own task; default 4).
    pub max_concurrent: usize,
    /// What [`Scheduler::run`] purges, and how often (default: [`Retention::default`]).
    pub retention: Retention,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            lease: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(1800),
            max_concurrent: 4,
            retention: Retention::default(),
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
    permits: Arc<Semaphore>,
    panics: Arc<AtomicU64>,
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
    /// `succeeded`, `failed` or `cancelled`; `skipped` (the connection is disabled) or
    /// `paused` (it needs re-authorization) when it did not run (stored as cancelled, with
    /// the reason).
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
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            panics: Arc::new(AtomicU64::new(0)),
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

    /// How many panics the scheduler caught so far (in runs, recorded as failures, or in
    /// their tasks); shared by clones.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Runs due jobs until `shutdown`, each on its own task (at most `max_concurrent` at
    /// once), and the retention purge every `retention.every`; runs in progress are cancelled
    /// at shutdown (the engine commits what the sink acknowledged) and their leases released,
    /// due again at once.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut running: JoinSet<JobRun> = JoinSet::new();
        let maintenance = {
            let me = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { me.maintain(stop).await })
        };
        while !shutdown.is_cancelled() {
            if let Err(e) = self.spawn_due(&mut running, &shutdown).await {
                tracing::warn!(error = %e, "scheduler error");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.config.poll) => {}
                Some(ended) = running.join_next() => self.reaped(ended),
            }
            while let Some(ended) = running.try_join_next() {
                self.reaped(ended);
            }
        }
        // The runs' tokens are children of `shutdown`: they stop and release their leases.
        while let Some(ended) = running.join_next().await {
            self.reaped(ended);
        }
        if let Err(e) = maintenance.await {
            self.task_failed("retention", e);
        }
    }

    /// Purges by the retention settings every `retention.every`, until `stop`.
    async fn maintain(&self, stop: CancellationToken) {
        let retention = &self.config.retention;
        if retention.inbox.is_none() && retention.runs.is_none() {
            return;
        }
        let every = retention.every.max(Duration::from_secs(1));
        loop {
            if let Err(e) = crate::retention::purge(&self.state, retention, &stop).await {
                tracing::warn!(error = %e, "retention purge failed; retrying at the next period");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    fn reaped(&self, ended: std::result::Result<JobRun, tokio::task::JoinError>) {
        if let Err(e) = ended {
            self.task_failed("scheduled run", e);
        }
    }

    fn task_failed(&self, what: &str, e: tokio::task::JoinError) {
        if e.is_panic() {
            self.panics.fetch_add(1, Ordering::Relaxed);
            let msg = panic_message(&*e.into_panic());
            tracing::error!(task = what, panic = %msg, "scheduler task panicked");
        } else {
            tracing::warn!(task = what, "scheduler task was cancelled");
        }
    }

    /// Claims as many due jobs as there are free permits and spawns each on its own task.
    async fn spawn_due(
        &self,
        running: &mut JoinSet<JobRun>,
        shutdown: &CancellationToken,
    ) -> Result<usize> {
        let free = self.permits.available_permits();
        if free == 0 {
            return Ok(0);
        }
        let now = self.state.clock().now_ms();
        let rows = self
            .state
            .store()
            .claim_schedules(&self.owner, self.config.lease, now, free)
            .await?;
        let n = rows.len();
        for row in rows {
            // Permits are only taken here, after counting them: this does not wait (and if
            // another clone took one meanwhile, the job waits for a permit under its lease).
            let permit = self.permits.clone().acquire_owned().await;
            let me = self.clone();
            let cancel = shutdown.child_token();
            running.spawn(async move {
                let _permit = permit;
                me.run_job(row, cancel).await
            });
        }
        Ok(n)
    }

    /// Claims the jobs due now (as many as there are free permits), runs them to the end
    /// (concurrently, each on its own task) and returns how they ended.
    ///
    /// # Errors
    /// `Storage` when the claim fails.
    pub async fn run_due(&self) -> Result<Vec<JobRun>> {
        let mut running = JoinSet::new();
        self.spawn_due(&mut running, &CancellationToken::new())
            .await?;
        let mut out = Vec::new();
        while let Some(ended) = running.join_next().await {
            match ended {
                Ok(run) => out.push(run),
                Err(e) => self.task_failed("scheduled run", e),
            }
        }
        out.sort_by(|a, b| (&a.connection, &a.stream).cmp(&(&b.connection, &b.stream)));
        Ok(out)
    }

    /// Why a job must not run now: its connection is disabled or needs re-authorization.
    async fn held_back(&self, connection: &ConnectionId) -> Option<(&'static str, String)> {
        match self.state.store().get_connection(connection).await {
            Ok(Some(c)) => match c.status {
                ConnectionStatus::Disabled => Some((
                    "skipped",
                    format!(
                        "skipped: the connection is disabled{}",
                        c.status_detail
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default()
                    ),
                )),
                ConnectionStatus::NeedsReauth => Some((
                    "paused",
                    format!(
                        "paused: the connection needs re-authorization{}",
                        c.status_detail
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default()
                    ),
                )),
                ConnectionStatus::Active | ConnectionStatus::Failing => None,
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%connection, error = %e, "cannot read the connection status; running the job");
                None
            }
        }
    }

    async fn run_job(&self, row: ScheduleRow, cancel: CancellationToken) -> JobRun {
        let key = (row.connection.clone(), row.stream.clone());
        // The stored cadence wins: an operator may have changed it (the dashboard) since the
        // configuration was read. A configured job whose stored text does not parse keeps its own.
        let job = self.jobs.get(&key).map(|configured| {
            if row.spec == configured.spec {
                return configured.clone();
            }
            JobSpec::parse(row.connection.clone(), row.stream.clone(), &row.spec)
                .map(|j| j.full(configured.full))
                .unwrap_or_else(|_| configured.clone())
        });
        let job = job.as_ref();
        if let Some((label, reason)) = self.held_back(&key.0).await {
            let now = self.state.clock().now_ms();
            let next = job.map(|j| j.cadence.next(now)).unwrap_or(i64::MAX / 2);
            let outcome = ScheduleOutcome::new(RunStatus::Cancelled, next).with_error(&reason);
            tracing::info!(connection = %row.connection, stream = %row.stream, %reason, "scheduled run not started");
            self.record(&row, &outcome, now).await;
            return JobRun {
                connection: row.connection.to_string(),
                stream: row.stream.to_string(),
                status: label,
                next_due_at: next,
            };
        }
        let handle = self.state.connection(&key.0);
        let result: Result<()> = match (job, handle) {
            (Some(job), Some(handle)) => {
                let engine = SyncEngine::new(self.state.store().clone());
                let metrics = self.state.metrics().clone();
                let last_page = std::sync::Mutex::new(std::time::Instant::now());
                let options = SyncOptions::new()
                    .full(job.full)
                    .cancel(cancel.clone())
                    .progress(move |_: &apex_connect_core::Progress| {
                        // Called once per committed page: the time since the last one.
                        let now = std::time::Instant::now();
                        let mut last = last_page.lock().unwrap_or_else(|p| p.into_inner());
                        metrics.sync_page(now.saturating_duration_since(*last));
                        *last = now;
                    });
                let sync = AssertUnwindSafe(engine.run(
                    handle.connector.as_ref(),
                    &key.0,
                    &key.1,
                    self.sink.as_ref(),
                    options,
                ))
                .catch_unwind();
                let heartbeat = self.heartbeat(&row, &cancel);
                tokio::pin!(sync);
                let ended = tokio::select! {
                    r = &mut sync => r,
                    lost = heartbeat => {
                        // Cancelled: let the engine commit what the sink acknowledged.
                        sync.await.map(|_| Err(lost))
                    }
                };
                match ended {
                    Ok(r) => r.map(|_| ()),
                    Err(payload) => {
                        let msg = panic_message(&*payload);
                        self.panics.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(connection = %row.connection, stream = %row.stream, panic = %msg, "scheduled run panicked");
                        Err(Error::new(ErrorKind::Unexpected, "the sync run panicked")
                            .with_context("panic", msg))
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
        self.record(&row, &outcome, now).await;
        JobRun {
            connection: row.connection.to_string(),
            stream: row.stream.to_string(),
            status: outcome.status.as_str(),
            next_due_at: outcome.next_due_at,
        }
    }

    /// Records the end of a run (or a run not started) and releases the lease.
    async fn record(&self, row: &ScheduleRow, outcome: &ScheduleOutcome, now: i64) {
        match self
            .state
            .store()
            .finish_schedule(&row.connection, &row.stream, &self.owner, outcome, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(connection = %row.connection, stream = %row.stream, "schedule lease was lost during the run")
            }
            Err(e) => tracing::warn!(error = %e, "cannot record the end of a scheduled run"),
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
