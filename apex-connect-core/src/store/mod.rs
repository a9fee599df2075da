//! Durable state: connections, encrypted tokens, cursors, sync runs (with their log lines
//! and daily statistics), the webhook inbox,
//! quarantined records and the scheduler's jobs.
//!
//! [`StateStore`] is every focused store trait in one ([`TokenStore`], [`ConnectionStore`],
//! [`CursorStore`], [`RunStore`], [`InboxStore`], [`RejectStore`], [`ScheduleStore`]): the one
//! handle the engine, the webhook workers, the scheduler and the server use. Two
//! implementations ship: [`MemoryStore`] (tests, single-process hosts) and `SqliteStore`
//! (feature `sqlite`, the embedded default). Hosts open one from a configured location with
//! [`open`], which also gives the record sinks that write into the same database, so nothing
//! above the store names a backend. The schema (`migrations/sqlite/`) is written so that PostgreSQL can follow
//! with the same tables: timestamps are Unix milliseconds, compare-and-swap is an
//! `UPDATE ... SET version = version + 1 WHERE ... AND version = ?`, and inbox claims are one
//! `UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING ...` statement, so several processes
//! sharing one database each claim an event, or win a cursor commit, exactly once.
//!
//! # Leases, attempts and retention
//! - Inbox claims hold a lease that the worker renews while it works
//!   ([`InboxStore::inbox_renew`]); completions, failures, renewals and releases succeed only
//!   for the holder of an unexpired lease.
//! - An attempt is counted when it fails ([`InboxStore::inbox_fail`]), never by the claim: a
//!   released ([`InboxStore::inbox_release`]) or expired claim burns no attempt.
//! - Retention is bounded deletes the host calls periodically:
//!   [`InboxStore::purge_inbox_done`] (done events only; dead letters are kept until handled)
//!   and [`RunStore::purge_runs`] (finished runs, never the latest of a stream), each at most
//!   `limit` rows per call so a writer sharing the database never waits long.
//!
//! # Versions
//! Versions start at 1 and grow by one with every successful save. Deleting tokens or
//! resetting a cursor keeps the version counter (the row stays as a tombstone), so a process
//! that loaded a version before the delete can never win a compare-and-swap after it; the
//! next save with `expected = None` returns the tombstone's version plus one.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::cursor::CursorToken;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{ConnectionId, Reject, StreamId};
use crate::token::{TokenStore, Versioned};
use crate::webhook::unix_ms;

mod crypto;
mod memory;
mod open;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use crypto::{ENCRYPTION_KEY_ENV, EncryptionKey};
pub use open::{OpenedStore, SinkKind, StoreLocation, open};

/// The store traits, to bring their methods into scope: `use apex_connect_core::store::prelude::*;`.
pub mod prelude {
    pub use super::{
        ConnectionStore as _, CursorStore as _, InboxStore as _, RejectStore as _, RunStore as _,
        ScheduleStore as _, StateStore,
    };
    pub use crate::token::TokenStore as _;
}
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{InboxWakeups, PgStore, PgStoreOptions, pg_err};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStore, WriteGate, WriteTurn, append_inbox_row};

/// A source of the current time, injectable for tests (lease expiry, retry times).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock(Arc::new(SystemTime::now))
    }

    /// A clock that calls `f`.
    pub fn from_fn(f: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Clock(Arc::new(f))
    }

    /// The current time.
    pub fn now(&self) -> SystemTime {
        (self.0)()
    }

    /// The current time in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        unix_ms(self.now())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// The state of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    /// Working.
    Active,
    /// The credentials were revoked or expired beyond refresh: a user must reconnect.
    NeedsReauth,
    /// Switched off by an operator.
    Disabled,
    /// Syncs fail repeatedly for another reason (see `status_detail`).
    Failing,
}

impl ConnectionStatus {
    /// The stored name: `active`, `needs_reauth`, `disabled`, `failing`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionStatus::Active => "active",
            ConnectionStatus::NeedsReauth => "needs_reauth",
            ConnectionStatus::Disabled => "disabled",
            ConnectionStatus::Failing => "failing",
        }
    }

    /// Parses a stored name.
    ///
    /// # Errors
    /// `Storage` for an unknown name (a newer schema, or a corrupted row).
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "active" => ConnectionStatus::Active,
            "needs_reauth" => ConnectionStatus::NeedsReauth,
            "disabled" => ConnectionStatus::Disabled,
            "failing" => ConnectionStatus::Failing,
            other => return Err(unknown_value("connection status", other)),
        })
    }
}

/// One connection: an account of one platform, as the host configured it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Connection {
    /// The host's id for the connection.
    pub id: ConnectionId,
    /// The platform name (`"frontapp"`, `"hubspot"`, ...).
    pub platform: String,
    /// The connector's configuration as JSON. Never put secrets here: tokens go to the
    /// [`TokenStore`] side of the store, encrypted.
    pub config: serde_json::Value,
    /// Its status.
    pub status: ConnectionStatus,
    /// Why it has that status (the last error, "revoked by user", ...).
    pub status_detail: Option<String>,
    /// When it was first stored, Unix milliseconds (set by the store on first upsert).
    pub created_at: i64,
    /// When it was last changed, Unix milliseconds (set by the store).
    pub updated_at: i64,
}

impl Connection {
    /// An active connection of `platform` with `config`; timestamps are set by the store.
    pub fn new(
        id: impl Into<ConnectionId>,
        platform: impl Into<String>,
        config: serde_json::Value,
    ) -> Self {
        Connection {
            id: id.into(),
            platform: platform.into(),
            config,
            status: ConnectionStatus::Active,
            status_detail: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    /// Sets the status and its detail.
    pub fn with_status(mut self, status: ConnectionStatus, detail: Option<String>) -> Self {
        self.status = status;
        self.status_detail = detail;
        self
    }
}

/// The id of a sync run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub i64);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Whether a run read from the beginning or from the stored cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// Read from the beginning, ignoring the stored cursor.
    Full,
    /// Read from the stored cursor (from the beginning when there is none).
    Incremental,
}

impl RunKind {
    /// `full` or `incremental`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Full => "full",
            RunKind::Incremental => "incremental",
        }
    }

    /// Parses a stored name.
    ///
    /// # Errors
    /// `Storage` for an unknown name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(RunKind::Full),
            "incremental" => Ok(RunKind::Incremental),
            other => Err(unknown_value("run kind", other)),
        }
    }
}

/// The state of a sync run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Started and not finished (or its process died; see `started_at`).
    Running,
    /// Caught up (or stopped at `max_pages`) without error.
    Succeeded,
    /// Stopped by an error.
    Failed,
    /// Stopped by cancellation.
    Cancelled,
}

impl RunStatus {
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    ///
    /// # Errors
    /// `Storage` for an unknown name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "running" => Ok(RunStatus::Running),
            "succeeded" => Ok(RunStatus::Succeeded),
            "failed" => Ok(RunStatus::Failed),
            "cancelled" => Ok(RunStatus::Cancelled),
            other => Err(unknown_value("run status", other)),
        }
    }
}

/// How a run ended, recorded by [`RunStore::finish_run`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunOutcome {
    /// `Succeeded`, `Failed` or `Cancelled` (`Running` is refused).
    pub status: RunStatus,
    /// Records read from the connector.
    pub records_read: u64,
    /// Records the sink inserted or updated.
    pub records_applied: u64,
    /// Records the sink already held (replays).
    pub records_unchanged: u64,
    /// Records quarantined (see [`RejectStore`]).
    pub records_rejected: u64,
    /// Pages read.
    pub pages: u64,
    /// The error text when the run failed or was cancelled.
    pub error: Option<String>,
}

impl RunOutcome {
    /// An outcome with `status` and zero counts.
    pub fn new(status: RunStatus) -> Self {
        RunOutcome {
            status,
            records_read: 0,
            records_applied: 0,
            records_unchanged: 0,
            records_rejected: 0,
            pages: 0,
            error: None,
        }
    }

    /// Sets the number of quarantined records.
    pub fn with_rejected(mut self, rejected: u64) -> Self {
        self.records_rejected = rejected;
        self
    }

    /// Sets the counts.
    pub fn with_counts(mut self, read: u64, applied: u64, unchanged: u64, pages: u64) -> Self {
        self.records_read = read;
        self.records_applied = applied;
        self.records_unchanged = unchanged;
        self.pages = pages;
        self
    }

    /// Sets the error text.
    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }
}

/// A recorded sync run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncRun {
    /// Its id (grows with each run).
    pub id: RunId,
    /// The connection synced.
    pub connection: ConnectionId,
    /// The stream synced.
    pub stream: StreamId,
    /// Full or incremental.
    pub kind: RunKind,
    /// Its state.
    pub status: RunStatus,
    /// When it started, Unix milliseconds.
    pub started_at: i64,
    /// When it finished, Unix milliseconds.
    pub finished_at: Option<i64>,
    /// Records read.
    pub records_read: u64,
    /// Records applied by the sink.
    pub records_applied: u64,
    /// Records the sink already held.
    pub records_unchanged: u64,
    /// Records quarantined.
    pub records_rejected: u64,
    /// Pages read.
    pub pages: u64,
    /// The error text of a failed or cancelled run.
    pub error: Option<String>,
}

/// One UTC day of one connection's runs, as [`RunStore::run_stats`] sums them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DailyRunStats {
    /// The connection.
    pub connection: ConnectionId,
    /// The start of the UTC day, Unix milliseconds (`started_at / 86_400_000 * 86_400_000`).
    pub day: i64,
    /// Runs started that day (running, finished and cancelled ones).
    pub runs: u64,
    /// Those that failed (status `failed`; cancelled runs are not counted).
    pub failed: u64,
    /// Records read by those runs.
    pub records_read: u64,
    /// Records applied by the sink in those runs.
    pub records_applied: u64,
    /// Records quarantined by those runs.
    pub records_rejected: u64,
}

/// Milliseconds in a day: [`DailyRunStats::day`] is a multiple of it.
pub const DAY_MS: i64 = 86_400_000;

/// The severity of a [`RunLogLine`]. Ordered by severity: `Trace < Debug < Info < Warn < Error`,
/// so `level >= LogLevel::Warn` is "warn or error".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Very verbose diagnostics.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that did not stop the run.
    Warn,
    /// A failure.
    Error,
}

impl LogLevel {
    /// Every level, least severe first.
    pub const ALL: [LogLevel; 5] = [
        LogLevel::Trace,
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Warn,
        LogLevel::Error,
    ];

    /// The stored name: `error`, `warn`, `info`, `debug` or `trace`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LogLevel {
    type Err = Error;

    /// Parses a name, case-insensitively (`warning` is `warn` too).
    ///
    /// # Errors
    /// `Storage` for an unknown name (a newer schema, or a corrupted row).
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return Err(unknown_value("log level", s)),
        })
    }
}

impl From<tracing::Level> for LogLevel {
    fn from(level: tracing::Level) -> Self {
        match level {
            tracing::Level::ERROR => LogLevel::Error,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::INFO => LogLevel::Info,
            tracing::Level::DEBUG => LogLevel::Debug,
            _ => LogLevel::Trace,
        }
    }
}

/// One log line of a sync run (see [`RunStore::append_run_logs`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RunLogLine {
    /// When it was logged, Unix milliseconds.
    pub at: i64,
    /// Its severity.
    pub level: LogLevel,
    /// Where it was logged (the `tracing` target: a module path such as
    /// `apex_connect_core::engine`).
    pub target: String,
    /// The text: the message, then the event's other fields as `key=value`.
    pub message: String,
}

impl RunLogLine {
    /// A line logged at `at` (Unix milliseconds).
    pub fn new(
        at: i64,
        level: LogLevel,
        target: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        RunLogLine {
            at,
            level,
            target: target.into(),
            message: message.into(),
        }
    }
}

/// The id of an event in the webhook inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub i64);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A verified webhook delivery, as appended to the inbox.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct InboxEvent {
    /// The platform that sent it.
    pub platform: String,
    /// The connection it is for.
    pub connection: ConnectionId,
    /// The platform's event (or delivery) id; the inbox is unique on
    /// (platform, connection, event_id), so a redelivery is dropped.
    pub event_id: String,
    /// When it was received, Unix milliseconds.
    pub received_at: i64,
    /// The request headers worth keeping, as a JSON object (no `Authorization`).
    pub headers_json: serde_json::Value,
    /// The raw body.
    pub body: bytes::Bytes,
}

impl InboxEvent {
    /// An event with empty headers.
    pub fn new(
        platform: impl Into<String>,
        connection: impl Into<ConnectionId>,
        event_id: impl Into<String>,
        received_at: i64,
        body: impl Into<bytes::Bytes>,
    ) -> Self {
        InboxEvent {
            platform: platform.into(),
            connection: connection.into(),
            event_id: event_id.into(),
            received_at,
            headers_json: serde_json::Value::Object(Default::default()),
            body: body.into(),
        }
    }

    /// Sets the headers (a JSON object).
    pub fn with_headers(mut self, headers: serde_json::Value) -> Self {
        self.headers_json = headers;
        self
    }
}

/// What [`InboxStore::inbox_append`] (and each event of [`InboxStore::append_many`]) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored as a new pending event.
    Inserted(EventId),
    /// An event with the same (platform, connection, event_id) was already stored; nothing changed.
    Duplicate,
}

/// An inbox event handed to a worker by [`InboxStore::inbox_claim`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClaimedEvent {
    /// The inbox id (pass it to `inbox_complete` / `inbox_fail`).
    pub id: EventId,
    /// The event.
    pub event: InboxEvent,
    /// Attempts so far, including this one (failed attempts recorded by
    /// [`InboxStore::inbox_fail`] plus one; released or expired claims are not counted).
    pub attempts: u32,
    /// Until when the lease holds, Unix milliseconds; after it another worker may claim the event.
    pub lease_until: i64,
    /// The error of the previous attempt.
    pub last_error: Option<String>,
}

/// A dead-lettered inbox event.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The inbox id (pass it to `inbox_requeue`).
    pub id: EventId,
    /// The event.
    pub event: InboxEvent,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// When it was dead-lettered, Unix milliseconds.
    pub failed_at: i64,
}

/// What to do with an event whose processing failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailAction {
    /// Make it claimable again at this time (Unix milliseconds).
    RetryAt(i64),
    /// Give up: move it to the dead letters.
    DeadLetter,
}

/// How many inbox events are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InboxCounts {
    /// Waiting to be claimed (now or at their retry time).
    pub pending: u64,
    /// Claimed under a lease that has not expired.
    pub in_flight: u64,
    /// Processed.
    pub done: u64,
    /// Dead-lettered.
    pub dead: u64,
}

/// Connections: the accounts the host configured.
///
/// # Behavior
/// - `upsert_connection` inserts or replaces (keeping `created_at`), and returns the stored
///   row; `get_connection` of an unknown id is `Ok(None)`; `set_connection_status` and
///   `delete_connection` of an unknown id are `NotFound`. Deleting a connection deletes its
///   tokens and cursors; runs and inbox events stay as history.
///
/// # Errors
/// `Storage` (temporary) for I/O and database failures.
#[async_trait]
pub trait ConnectionStore: Send + Sync + fmt::Debug {
    /// Inserts or replaces a connection; returns it as stored (with timestamps).
    async fn upsert_connection(&self, connection: &Connection) -> Result<Connection>;

    /// The connection `id`.
    async fn get_connection(&self, id: &ConnectionId) -> Result<Option<Connection>>;

    /// Every connection, ordered by id.
    async fn list_connections(&self) -> Result<Vec<Connection>>;

    /// Sets a connection's status and detail.
    async fn set_connection_status(
        &self,
        id: &ConnectionId,
        status: ConnectionStatus,
        detail: Option<&str>,
    ) -> Result<()>;

    /// Deletes a connection with its tokens and cursors.
    async fn delete_connection(&self, id: &ConnectionId) -> Result<()>;
}

/// Sync cursors per (connection, stream), with compare-and-swap.
///
/// # Behavior
/// - `load_cursor` is `Ok(None)` until saved; `save_cursor(expected)` succeeds only if the
///   stored version is `expected` (`None`: nothing stored) and returns the new version;
///   otherwise `Conflict` and nothing changes. `reset_cursor` makes the next sync start over.
///
/// # Errors
/// `Storage` (temporary) for I/O and database failures.
#[async_trait]
pub trait CursorStore: Send + Sync + fmt::Debug {
    /// The stored cursor of (connection, stream) with its version.
    async fn load_cursor(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
    ) -> Result<Option<Versioned<CursorToken>>>;

    /// Stores `cursor` if the stored version is `expected`; returns the new version.
    async fn save_cursor(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        cursor: &CursorToken,
        expected: Option<u64>,
    ) -> Result<u64>;

    /// Forgets the cursor, so the next sync reads from the beginning.
    async fn reset_cursor(&self, connection: &ConnectionId, stream: &StreamId) -> Result<()>;
}

/// The history of sync runs, with their log lines.
///
/// # Behavior
/// - `start_run` records a `Running` run; `finish_run` records the outcome once (finishing
///   twice, or an unknown run, is `Conflict`); `list_runs` is newest first; `get_run` of an
///   unknown id is `Ok(None)`.
/// - `run_stats` sums the runs started at or after `since` per connection and UTC day (the
///   day of `started_at`: `started_at / 86_400_000`), optionally of one connection, ordered
///   by (connection, day); a day without runs has no entry. `failed` counts the runs with
///   status `failed` (not cancelled ones); running runs count in `runs` with the counts
///   recorded so far (zero). One `GROUP BY` statement on the SQL stores, served by an index
///   on `sync_runs (connection, started_at)`.
/// - `append_run_logs` appends lines to a run's log after those already stored, in the order
///   given (the stores number them on: a per-run sequence); `run_logs` returns up to `limit`
///   of them in that order, only those at `min_level` or more severe when it is given
///   (`Some(LogLevel::Warn)`: warn and error). The run is not checked: lines of an unknown
///   run are stored and returned all the same. Appends to one run are expected from one
///   writer at a time (the engine, at the end of the run).
/// - `purge_runs` (retention) deletes up to `limit` finished runs that finished before
///   `before`, oldest first, with their log lines, and returns how many runs it deleted.
///   Running runs are never purged, nor the latest run of each (connection, stream), so
///   `last_run` keeps an answer. Call it repeatedly (until it returns less than `limit`)
///   rather than with a large limit: each call is one short write.
///
/// # Errors
/// `Storage` (temporary) for I/O and database failures.
#[async_trait]
pub trait RunStore: Send + Sync + fmt::Debug {
    /// Records the start of a run.
    async fn start_run(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        kind: RunKind,
    ) -> Result<RunId>;

    /// Records how a run ended.
    async fn finish_run(&self, run: RunId, outcome: &RunOutcome) -> Result<()>;

    /// The most recent runs, newest first, optionally of one connection.
    async fn list_runs(
        &self,
        connection: Option<&ConnectionId>,
        limit: usize,
    ) -> Result<Vec<SyncRun>>;

    /// The latest run of (connection, stream).
    async fn last_run(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
    ) -> Result<Option<SyncRun>>;

    /// The run `run`, or `None` if the store does not know it (never started, or purged).
    async fn get_run(&self, run: RunId) -> Result<Option<SyncRun>>;

    /// Per connection and UTC day, the runs started at or after `since` (Unix milliseconds),
    /// of one connection or all, ordered by (connection, day).
    async fn run_stats(
        &self,
        connection: Option<&ConnectionId>,
        since: i64,
    ) -> Result<Vec<DailyRunStats>>;

    /// Appends `lines` to the log of `run`, after the lines already stored, in order.
    async fn append_run_logs(&self, run: RunId, lines: &[RunLogLine]) -> Result<()>;

    /// Up to `limit` log lines of `run` in the order they were appended; with `min_level`,
    /// only the lines at that level or more severe.
    async fn run_logs(
        &self,
        run: RunId,
        min_level: Option<LogLevel>,
        limit: usize,
    ) -> Result<Vec<RunLogLine>>;

    /// Retention: deletes up to `limit` finished runs whose `finished_at` is before `before`
    /// (Unix milliseconds), oldest first, with their log lines, keeping the latest run of each
    /// (connection, stream) and every running run; returns how many runs were deleted (one
    /// transaction on the built-in stores).
    async fn purge_runs(&self, before: i64, limit: usize) -> Result<u64>;
}

/// The durable webhook inbox.
///
/// # Behavior
/// - `inbox_append` is unique on (platform, connection, event_id); `inbox_claim` hands out due
///   pending events and events whose lease expired, oldest first, each to one worker, setting
///   its lease atomically; `inbox_complete` and `inbox_fail` succeed only for the worker
///   holding an unexpired lease (`Conflict` otherwise: the lease expired and the event may be
///   with another worker); `inbox_requeue` makes a dead letter pending again with a fresh
///   attempt count (`NotFound` if it is not dead).
/// - **Attempts** are counted by `inbox_fail` (a processing attempt that ended in an error),
///   not by the claim: a claim that is released (`inbox_release`, e.g. at shutdown) or whose
///   lease expired (a crashed or stalled worker) does not burn an attempt.
///   [`ClaimedEvent::attempts`] is the stored count plus one (the attempt being made), so a
///   worker dead-letters when it reaches its maximum.
/// - **Leases** are renewed with `inbox_renew` while an event is being worked on (every third
///   of the lease, say): it extends only the leases the worker still holds unexpired and
///   returns their ids; an id missing from the answer is lost (another worker may have it),
///   and the worker must neither apply nor complete it.
/// - **Retention**: `purge_inbox_done` deletes done events (bodies included) finished before
///   a time, a bounded number per call; pending, in-flight and dead-lettered events are never
///   purged (a dead letter is kept until it is handled: requeued and done).
///
/// # Errors
/// `Storage` (temporary) for I/O and database failures.
#[async_trait]
pub trait InboxStore: Send + Sync + fmt::Debug {
    /// Appends a verified webhook delivery, due at once, unless it is a duplicate.
    async fn inbox_append(&self, event: &InboxEvent) -> Result<AppendOutcome>;

    /// Appends several deliveries (group commit): one outcome per event, in order; an event
    /// repeating an earlier one of the same call is a `Duplicate`.
    ///
    /// # Behavior
    /// - The built-in stores append them in **one transaction**: when this returns `Ok` every
    ///   event is durable, and on `Err` none of them is stored, so a receiver that answers each
    ///   request after this call never acknowledges an event it could lose, and throughput is
    ///   the commit rate times the batch size.
    /// - The default implementation calls [`inbox_append`](InboxStore::inbox_append) once per
    ///   event (not atomic: after an `Err` some events may be stored; a redelivery of those is
    ///   a `Duplicate`, so nothing is lost or doubled either way).
    async fn append_many(&self, events: &[InboxEvent]) -> Result<Vec<AppendOutcome>> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            out.push(self.inbox_append(e).await?);
        }
        Ok(out)
    }

    /// Claims up to `limit` events for `worker` under a lease of `lease`.
    async fn inbox_claim(
        &self,
        worker: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedEvent>>;

    /// Marks a claimed event done.
    async fn inbox_complete(&self, id: EventId, worker: &str) -> Result<()>;

    /// Marks several claimed events done (one statement on the built-in stores) and returns
    /// the ids it completed: those still leased to `worker`; the others' leases were lost
    /// (an event whose lease expired may be with another worker) and are left as they are.
    ///
    /// The default implementation calls [`inbox_complete`](InboxStore::inbox_complete) per id.
    async fn inbox_complete_many(&self, ids: &[EventId], worker: &str) -> Result<Vec<EventId>> {
        let mut done = Vec::with_capacity(ids.len());
        for id in ids {
            match self.inbox_complete(*id, worker).await {
                Ok(()) => done.push(*id),
                Err(e) if e.kind() == ErrorKind::Conflict => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Records a failed attempt (counting it): retry at a time, or dead-letter.
    async fn inbox_fail(
        &self,
        id: EventId,
        worker: &str,
        error: &str,
        action: FailAction,
    ) -> Result<()>;

    /// Extends to now + `lease` the leases that `worker` still holds unexpired among `ids`
    /// (one statement on the built-in stores) and returns those ids, ascending; the others'
    /// leases were lost (expired, finished, or taken by another worker) and are left as they
    /// are.
    async fn inbox_renew(
        &self,
        ids: &[EventId],
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<EventId>>;

    /// Gives back claims without processing them (shutdown): the events `worker` still holds
    /// among `ids` become pending again, due now, **without** counting an attempt; returns
    /// the ids released, ascending.
    async fn inbox_release(&self, ids: &[EventId], worker: &str) -> Result<Vec<EventId>>;

    /// Retention: deletes up to `limit` done events (with their bodies) that finished before
    /// `before` (Unix milliseconds), oldest first, and returns how many were deleted. Never
    /// touches pending, in-flight or dead-lettered events. Each call is one short write;
    /// call it repeatedly until it returns less than `limit`.
    async fn purge_inbox_done(&self, before: i64, limit: usize) -> Result<u64>;

    /// Dead-lettered events, oldest first.
    async fn inbox_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>>;

    /// Makes a dead-lettered event pending again, due now.
    async fn inbox_requeue(&self, id: EventId) -> Result<()>;

    /// Counts of events per state.
    async fn inbox_counts(&self) -> Result<InboxCounts>;

    /// The backlog per connection (pending, in flight, dead-lettered; processed events are not
    /// counted, so it costs the backlog, not the history), ordered by connection; connections
    /// with no backlog are absent.
    async fn inbox_backlog(&self) -> Result<Vec<ConnectionBacklog>>;
}

/// One connection's inbox backlog ([`InboxStore::inbox_backlog`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ConnectionBacklog {
    /// The connection.
    pub connection: ConnectionId,
    /// Waiting to be claimed (now or at their retry time).
    pub pending: u64,
    /// Claimed under a lease that has not expired.
    pub in_flight: u64,
    /// Dead-lettered.
    pub dead: u64,
}

/// The id of a stored reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RejectId(pub i64);

impl fmt::Display for RejectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A quarantined record as stored.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StoredReject {
    /// Its id in the store.
    pub id: RejectId,
    /// The connection it was read from.
    pub connection: ConnectionId,
    /// The reject (stream, stage, id, raw bytes, error).
    pub reject: Reject,
    /// How many times it was stored again (the same object rejected by later syncs) or failed
    /// a re-drive.
    pub attempts: u32,
    /// When it was first quarantined, Unix milliseconds.
    pub first_seen_at: i64,
    /// When it was last quarantined or re-driven, Unix milliseconds.
    pub last_seen_at: i64,
}

/// The key a reject is stored under within (connection, stream): the object's id when it has
/// one, else a hash of its bytes. The same object rejected again replaces its row.
pub fn reject_key(reject: &Reject) -> String {
    match &reject.id {
        Some(id) => format!("id:{id}"),
        None => crate::connector::body_hash(&reject.raw),
    }
}

/// Quarantined records: kept with connection, stream, id, raw bytes and the error, never
/// dropped, re-drivable after a fix.
///
/// # Behavior
/// - `put_rejects` stores each reject under (connection, stream, [`reject_key`]): a reject of
///   an object already quarantined replaces the row (bytes, error) and counts an attempt.
/// - `list_rejects` is oldest first, optionally for one connection and stream.
/// - `delete_reject` of an unknown id is `NotFound`; `reject_failed` records a failed re-drive
///   (error text, attempt counted).
///
/// # Errors
/// `Storage` (temporary) for I/O and database failures.
#[async_trait]
pub trait RejectStore: Send + Sync + fmt::Debug {
    /// Quarantines `rejects` read from `connection`.
    async fn put_rejects(&self, connection: &ConnectionId, rejects: &[Reject]) -> Result<()>;

    /// Stored rejects, oldest first.
    async fn list_rejects(
        &self,
        connection: Option<&ConnectionId>,
        stream: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<StoredReject>>;

    /// How many rejects are stored (for one connection, or all).
    async fn count_rejects(&self, connection: Option<&ConnectionId>) -> Result<u64>;

    /// Removes a reject (re-driven successfully).
    async fn delete_reject(&self, id: RejectId) -> Result<()>;

    /// Records a failed re-drive of a reject.
    async fn reject_failed(&self, id: RejectId, error: &str) -> Result<()>;
}

/// A scheduled sync as a scheduler registers it with [`ScheduleStore::upsert_schedule`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduleEntry {
    /// The connection.
    pub connection: ConnectionId,
    /// The stream.
    pub stream: StreamId,
    /// The cadence as text (`"every 900000ms jitter 0ms"`, `"cron 0 */5 * * * *"`): a change
    /// of text reschedules the job.
    pub spec: String,
    /// Full resyncs instead of incremental.
    pub full: bool,
    /// When a new job is first due, Unix milliseconds.
    pub first_due_at: i64,
}

impl ScheduleEntry {
    /// An incremental job of (connection, stream) with cadence text `spec`, first due at
    /// `first_due_at`.
    pub fn new(
        connection: impl Into<ConnectionId>,
        stream: impl Into<StreamId>,
        spec: impl Into<String>,
        first_due_at: i64,
    ) -> Self {
        ScheduleEntry {
            connection: connection.into(),
            stream: stream.into(),
            spec: spec.into(),
            full: false,
            first_due_at,
        }
    }

    /// Makes it a full resync.
    pub fn full(mut self, full: bool) -> Self {
        self.full = full;
        self
    }
}

/// A scheduled job as stored (and shown by `status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ScheduleRow {
    /// The connection.
    pub connection: ConnectionId,
    /// The stream.
    pub stream: StreamId,
    /// The cadence text.
    pub spec: String,
    /// Full resyncs instead of incremental.
    pub full: bool,
    /// Next due time, Unix milliseconds.
    pub next_due_at: i64,
    /// The process running it now (if its lease holds).
    pub lease_owner: Option<String>,
    /// Until when the lease holds.
    pub lease_until: Option<i64>,
    /// Consecutive failed runs.
    pub failures: u64,
    /// Runs finished (cancelled ones not counted).
    pub runs: u64,
    /// Last start, Unix milliseconds.
    pub last_started_at: Option<i64>,
    /// Last end.
    pub last_finished_at: Option<i64>,
    /// How the last run ended: `succeeded`, `failed` or `cancelled`.
    pub last_status: Option<RunStatus>,
    /// The last error.
    pub last_error: Option<String>,
}

/// How a scheduled run ended, recorded by [`ScheduleStore::finish_schedule`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduleOutcome {
    /// `Succeeded`, `Failed` or `Cancelled` (`Running` is refused).
    pub status: RunStatus,
    /// The error text of a failed or cancelled run.
    pub error: Option<String>,
    /// When the job is due next, Unix milliseconds.
    pub next_due_at: i64,
}

impl ScheduleOutcome {
    /// A run that ended with `status`, due again at `next_due_at`.
    pub fn new(status: RunStatus, next_due_at: i64) -> Self {
        ScheduleOutcome {
            status,
            error: None,
            next_due_at,
        }
    }

    /// Sets the error text.
    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }
}

/// The scheduler's jobs: one row per scheduled (connection, stream) with its next due time
/// and a lease, so a restarted process continues where it was and at most one process runs a
/// job at a time.
///
/// Times are given by the caller (the scheduler's clock computes the next due times too), in
/// Unix milliseconds.
///
/// # Behavior
/// - `upsert_schedule` registers a job due at `first_due_at`; an existing job keeps its
///   `next_due_at` (a restart) unless its `spec` or `full` changed.
/// - `claim_schedules` takes, in one atomic step, the lease (until `now + lease`) of up to
///   `limit` jobs that are due (`next_due_at <= now`) and not leased (`lease_until` empty or
///   `<= now`), earliest due first, and sets `last_started_at`: two processes claiming at
///   once never both get a job (compare-and-swap).
/// - `renew_schedule` extends the lease only while `owner` holds it unexpired; `false`
///   otherwise (the lease was lost: stop the run).
/// - `finish_schedule` records the outcome and releases the lease only while `owner` holds it
///   (`false` otherwise): `runs` grows except for a cancelled run, `failures` grows on failure
///   and is reset by a success.
/// - `make_schedule_due` brings a job's `next_due_at` forward to `now` (never later); no-op
///   without a job.
/// - `list_schedules` is ordered by (connection, stream).
///
/// # Errors
/// `Storage` (temporary) for I/O and database failures; `InvalidInput` for a `Running` outcome.
#[async_trait]
pub trait ScheduleStore: Send + Sync + fmt::Debug {
    /// Registers a job (see the behaviour above).
    async fn upsert_schedule(&self, entry: &ScheduleEntry, now: i64) -> Result<()>;

    /// Takes the lease of up to `limit` due jobs for `owner`.
    async fn claim_schedules(
        &self,
        owner: &str,
        lease: Duration,
        now: i64,
        limit: usize,
    ) -> Result<Vec<ScheduleRow>>;

    /// Extends a held lease to `until`; `false` when `owner` no longer holds it.
    async fn renew_schedule(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        owner: &str,
        until: i64,
        now: i64,
    ) -> Result<bool>;

    /// Records the end of a run and releases the lease; `false` when the lease was lost.
    async fn finish_schedule(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        owner: &str,
        outcome: &ScheduleOutcome,
        now: i64,
    ) -> Result<bool>;

    /// Makes a job due now (an unresolved thin webhook asks for a re-read).
    async fn make_schedule_due(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        now: i64,
    ) -> Result<()>;

    /// Every job, by (connection, stream).
    async fn list_schedules(&self) -> Result<Vec<ScheduleRow>>;
}

/// The durable state of apex-connect: every focused store trait in one, for hosts and
/// engines that want one handle (`Arc<dyn StateStore>`). Implemented automatically for any
/// type implementing them all; code that needs only one part takes that trait
/// (`Arc<dyn CursorStore>` and so on; a `dyn StateStore` upcasts to each).
///
/// Two implementations ship: [`MemoryStore`] (tests, single-process hosts) and
/// `SqliteStore` (feature `sqlite`, the embedded default). Tokens are encrypted at rest in
/// persistent stores.
pub trait StateStore:
    TokenStore
    + ConnectionStore
    + CursorStore
    + RunStore
    + InboxStore
    + RejectStore
    + ScheduleStore
    + Send
    + Sync
    + fmt::Debug
{
}

impl<T> StateStore for T where
    T: TokenStore
        + ConnectionStore
        + CursorStore
        + RunStore
        + InboxStore
        + RejectStore
        + ScheduleStore
        + Send
        + Sync
        + fmt::Debug
        + ?Sized
{
}

fn unknown_value(what: &'static str, value: &str) -> Error {
    Error::new(
        ErrorKind::Storage,
        "stored value is not one this version knows",
    )
    .with_context("field", what)
    .with_context("value", value)
}

fn cursor_conflict(
    connection: &ConnectionId,
    stream: &StreamId,
    expected: Option<u64>,
    actual: Option<u64>,
) -> Error {
    crate::token::conflict(connection, expected, actual).with_context("stream", stream)
}

fn lease_lost(id: EventId, worker: &str) -> Error {
    Error::new(
        ErrorKind::Conflict,
        "inbox event is not leased to this worker (lease expired or event finished)",
    )
    .with_context("event", id)
    .with_context("worker", worker)
}

fn run_finished(run: RunId) -> Error {
    Error::new(ErrorKind::Conflict, "run is unknown or already finished").with_context("run", run)
}

fn not_found(what: &'static str, id: impl fmt::Display) -> Error {
    Error::new(ErrorKind::NotFound, what).with_context("id", id)
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2)
}

fn validate_schedule_outcome(outcome: &ScheduleOutcome) -> Result<()> {
    if outcome.status == RunStatus::Running {
        return Err(Error::invalid_input(
            "a scheduled run cannot finish with status running",
        ));
    }
    Ok(())
}

fn validate_outcome(outcome: &RunOutcome) -> Result<()> {
    if outcome.status == RunStatus::Running {
        return Err(Error::invalid_input(
            "a run cannot finish with status running",
        ));
    }
    Ok(())
}

/// The rank of a stored level name in SQL (0 for trace, 4 for error; an unknown name ranks
/// high so a `min_level` query shows it and decoding reports it), compared with
/// [`level_rank`]. The same text on SQLite and PostgreSQL.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const LEVEL_RANK: &str = "(CASE level WHEN 'trace' THEN 0 WHEN 'debug' THEN 1 \
     WHEN 'info' THEN 2 WHEN 'warn' THEN 3 WHEN 'error' THEN 4 ELSE 5 END)";

/// The rank [`LEVEL_RANK`] gives `level` (`None`: every line).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn level_rank(level: Option<LogLevel>) -> i64 {
    level.map_or(0, |l| l as i64)
}
