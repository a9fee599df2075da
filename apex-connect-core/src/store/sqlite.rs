//! `SqliteStore`: the embedded default [`StateStore`], one SQLite file in WAL mode.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use super::{
    AppendOutcome, ClaimedEvent, Clock, Connection, ConnectionBacklog, ConnectionStatus,
    ConnectionStore, CursorStore, DAY_MS, DailyRunStats, DeadLetter, EncryptionKey, EventId,
    FailAction, InboxCounts, InboxEvent, InboxStore, LEVEL_RANK, LogLevel, RejectId, RejectStore,
    RunId, RunKind, RunLogLine, RunOutcome, RunStatus, RunStore, ScheduleEntry, ScheduleOutcome,
    ScheduleRow, ScheduleStore, StoredReject, SyncRun, cursor_conflict, lease_lost, lease_ms,
    level_rank, not_found, run_finished, validate_outcome, validate_schedule_outcome,
};
use crate::cursor::CursorToken;
use crate::error::{Error, Result};
use crate::model::{ConnectionId, Op, Reject, RejectStage, StreamId};
use crate::token::{TokenSet, TokenStore, Versioned, conflict};

/// The versioned migrations in `migrations/sqlite/`, shared by the store and the SQLite sink.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a connection waits for another writer before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pool size: SQLite has one writer at a time; a few connections let reads overlap it (WAL).
const POOL_SIZE: u32 = 4;

/// A [`StateStore`](super::StateStore) in one SQLite file: WAL journal, `synchronous=NORMAL`, a busy timeout,
/// foreign keys on, a small pool, and the versioned migrations run at open (idempotent:
/// reopening an existing file is fine). Token sets are encrypted with the [`EncryptionKey`].
///
/// Several `SqliteStore`s (in one or several processes) may share a file: every
/// compare-and-swap and inbox claim is a single statement, so each is won by one of them.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    key: EncryptionKey,
    clock: Clock,
    gate: WriteGate,
}

/// Serializes one process's write transactions on a SQLite database, first come, first
/// served.
///
/// SQLite has one writer at a time. A connection that finds the database locked sleeps in
/// SQLite's busy handler (1, 2, 5, 10, ... ms) and retries, so under load a short write (a
/// webhook's inbox append) can wait many milliseconds behind a write that ended long before.
/// Every write of a [`SqliteStore`] (its trait methods, and the sinks and stores that share
/// its pool: [`SqliteSink::for_store`](crate::sinks::SqliteSink::for_store),
/// [`LedgerSink::for_store`](crate::sinks::LedgerSink::for_store), anything given
/// [`SqliteStore::write_gate`]) takes a turn at this async lock instead: a writer waits at
/// most for the transactions queued before it and is woken the moment the last one ends.
/// Clones share the gate. Other processes on the same file still meet through SQLite's own
/// locking (the busy timeout).
#[derive(Clone, Default)]
pub struct WriteGate(std::sync::Arc<tokio::sync::Mutex<()>>);

impl fmt::Debug for WriteGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WriteGate")
    }
}

/// A turn at a [`WriteGate`]: the holder may write; the turn ends when it is dropped.
#[must_use = "the turn ends when this is dropped"]
pub struct WriteTurn(#[allow(dead_code)] tokio::sync::OwnedMutexGuard<()>);

impl fmt::Debug for WriteTurn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WriteTurn")
    }
}

impl WriteGate {
    /// A new gate (a store makes its own: share that one, [`SqliteStore::write_gate`]).
    pub fn new() -> Self {
        WriteGate::default()
    }

    /// Waits for this writer's turn (after every turn asked for before it).
    pub async fn turn(&self) -> WriteTurn {
        WriteTurn(self.0.clone().lock_owned().await)
    }

    /// Whether a turn is held now (for tests and diagnostics).
    pub fn is_held(&self) -> bool {
        self.0.try_lock().is_err()
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("pool_size", &self.pool.size())
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

pub(crate) fn db_err(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| Error::storage(what).set_source(e)
}

/// Inbox ids as a JSON array, for `json_each` (PostgreSQL: `id = ANY($1)`).
fn id_list(ids: &[EventId]) -> Result<String> {
    serde_json::to_string(&ids.iter().map(|i| i.0).collect::<Vec<_>>())
        .map_err(|e| Error::storage("cannot encode inbox ids").set_source(e))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and runs the migrations.
    ///
    /// # Errors
    /// `Storage` when the file cannot be opened or migrated.
    pub async fn open(path: impl AsRef<Path>, key: EncryptionKey) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        Self::with_options(options, false, key).await
    }

    /// Opens the database at a `sqlite:` URL (e.g. `sqlite://state.db?mode=rwc`, or
    /// `sqlite::memory:` for a private in-memory database) and runs the migrations.
    ///
    /// # Errors
    /// `Config` for a malformed URL; `Storage` when it cannot be opened or migrated.
    pub async fn connect(url: &str, key: EncryptionKey) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::config("not a valid sqlite: URL").set_source(e))?;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        Self::with_options(options, in_memory, key).await
    }

    pub(super) async fn with_options(
        options: SqliteConnectOptions,
        in_memory: bool,
        key: EncryptionKey,
    ) -> Result<Self> {
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // An in-memory database lives in one connection: a pool of one keeps it whole.
        let size = if in_memory { 1 } else { POOL_SIZE };
        let pool = SqlitePoolOptions::new()
            .max_connections(size)
            .min_connections(if in_memory { 1 } else { 0 })
            .idle_timeout(if in_memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if in_memory {
                None
            } else {
                Some(Duration::from_secs(3600))
            })
            .connect_with(options)
            .await
            .map_err(db_err("cannot open the SQLite database"))?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| Error::storage("cannot migrate the SQLite database").set_source(e))?;
        Ok(SqliteStore {
            pool,
            key,
            clock: Clock::system(),
            gate: WriteGate::new(),
        })
    }

    /// Uses `clock` for timestamps, leases and retry times.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The connection pool (for the SQLite sink, the server's admin queries). Whoever writes
    /// through it takes a turn at [`write_gate`](Self::write_gate) around each transaction.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The gate every write of this store (and of its clones) takes; give it to other writers
    /// of the same database in this process (the sinks built with `for_store` take it).
    pub fn write_gate(&self) -> &WriteGate {
        &self.gate
    }

    /// Closes the pool, waiting for connections to finish (checkpointing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn token_version(&self, connection: &ConnectionId) -> Result<Option<u64>> {
        let row = sqlx::query(
            "SELECT version FROM tokens WHERE connection = ?1 AND ciphertext IS NOT NULL",
        )
        .bind(connection.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("cannot read tokens"))?;
        row.map(|r| r.try_get::<i64, _>(0).map(to_u64))
            .transpose()
            .map_err(db_err("cannot read tokens"))
    }

    async fn cursor_version(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
    ) -> Result<Option<u64>> {
        let row = sqlx::query(
            "SELECT version FROM cursors WHERE connection = ?1 AND stream = ?2 AND token IS NOT NULL",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("cannot read cursor"))?;
        row.map(|r| r.try_get::<i64, _>(0).map(to_u64))
            .transpose()
            .map_err(db_err("cannot read cursor"))
    }
}

fn connection_from_row(r: &SqliteRow) -> Result<Connection> {
    let e = db_err("cannot decode a connection row");
    let get = || -> std::result::Result<_, sqlx::Error> {
        Ok((
            r.try_get::<String, _>("id")?,
            r.try_get::<String, _>("platform")?,
            r.try_get::<String, _>("config")?,
            r.try_get::<String, _>("status")?,
            r.try_get::<Option<String>, _>("status_detail")?,
            r.try_get::<i64, _>("created_at")?,
            r.try_get::<i64, _>("updated_at")?,
        ))
    };
    let (id, platform, config, status, status_detail, created_at, updated_at) = get().map_err(e)?;
    Ok(Connection {
        id: ConnectionId::from(id),
        platform,
        config: serde_json::from_str(&config)
            .map_err(|e| Error::storage("stored connection config is not JSON").set_source(e))?,
        status: ConnectionStatus::parse(&status)?,
        status_detail,
        created_at,
        updated_at,
    })
}

fn run_from_row(r: &SqliteRow) -> Result<SyncRun> {
    let get = || -> std::result::Result<_, sqlx::Error> {
        Ok((
            r.try_get::<i64, _>("id")?,
            r.try_get::<String, _>("connection")?,
            r.try_get::<String, _>("stream")?,
            r.try_get::<String, _>("kind")?,
            r.try_get::<String, _>("status")?,
            r.try_get::<i64, _>("started_at")?,
            r.try_get::<Option<i64>, _>("finished_at")?,
            [
                r.try_get::<i64, _>("records_read")?,
                r.try_get::<i64, _>("records_applied")?,
                r.try_get::<i64, _>("records_unchanged")?,
                r.try_get::<i64, _>("pages")?,
                r.try_get::<i64, _>("records_rejected")?,
            ],
            r.try_get::<Option<String>, _>("error")?,
        ))
    };
    let (id, connection, stream, kind, status, started_at, finished_at, counts, error) =
        get().map_err(db_err("cannot decode a run row"))?;
    Ok(SyncRun {
        id: RunId(id),
        connection: ConnectionId::from(connection),
        stream: StreamId::from(stream),
        kind: RunKind::parse(&kind)?,
        status: RunStatus::parse(&status)?,
        started_at,
        finished_at,
        records_read: to_u64(counts[0]),
        records_applied: to_u64(counts[1]),
        records_unchanged: to_u64(counts[2]),
        pages: to_u64(counts[3]),
        records_rejected: to_u64(counts[4]),
        error,
    })
}

fn event_from_row(r: &SqliteRow) -> std::result::Result<(i64, InboxEvent, u32), sqlx::Error> {
    let headers: String = r.try_get("headers")?;
    let body: Vec<u8> = r.try_get("body")?;
    Ok((
        r.try_get("id")?,
        InboxEvent {
            platform: r.try_get("platform")?,
            connection: ConnectionId::from(r.try_get::<String, _>("connection")?),
            event_id: r.try_get("event_id")?,
            received_at: r.try_get("received_at")?,
            headers_json: serde_json::from_str(&headers)
                .unwrap_or(serde_json::Value::Object(Default::default())),
            body: body.into(),
        },
        u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
    ))
}

const RUN_COLUMNS: &str = "id, connection, stream, kind, status, started_at, finished_at, \
     records_read, records_applied, records_unchanged, pages, records_rejected, error";

#[async_trait]
impl TokenStore for SqliteStore {
    async fn load(&self, connection: &ConnectionId) -> Result<Option<Versioned<TokenSet>>> {
        let row = sqlx::query(
            "SELECT ciphertext, version FROM tokens WHERE connection = ?1 AND ciphertext IS NOT NULL",
        )
        .bind(connection.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("cannot read tokens"))?;
        let Some(row) = row else { return Ok(None) };
        let sealed: Vec<u8> = row.try_get(0).map_err(db_err("cannot read tokens"))?;
        let version: i64 = row.try_get(1).map_err(db_err("cannot read tokens"))?;
        Ok(Some(Versioned {
            value: self.key.open(connection, &sealed)?,
            version: to_u64(version),
        }))
    }

    async fn save(
        &self,
        connection: &ConnectionId,
        tokens: &TokenSet,
        expected: Option<u64>,
    ) -> Result<u64> {
        let sealed = self.key.seal(connection, tokens)?;
        let _turn = self.gate.turn().await;
        let now = self.clock.now_ms();
        let row = match expected {
            None => {
                sqlx::query(
                    "INSERT INTO tokens (connection, ciphertext, version, updated_at) \
                     VALUES (?1, ?2, 1, ?3) \
                     ON CONFLICT (connection) DO UPDATE SET ciphertext = excluded.ciphertext, \
                         version = tokens.version + 1, updated_at = excluded.updated_at \
                     WHERE tokens.ciphertext IS NULL \
                     RETURNING version",
                )
                .bind(connection.as_str())
                .bind(sealed)
                .bind(now)
                .fetch_optional(&self.pool)
                .await
            }
            Some(v) => {
                sqlx::query(
                    "UPDATE tokens SET ciphertext = ?2, version = version + 1, updated_at = ?3 \
                     WHERE connection = ?1 AND version = ?4 AND ciphertext IS NOT NULL \
                     RETURNING version",
                )
                .bind(connection.as_str())
                .bind(sealed)
                .bind(now)
                .bind(to_i64(v))
                .fetch_optional(&self.pool)
                .await
            }
        }
        .map_err(db_err("cannot save tokens"))?;
        match row {
            Some(r) => Ok(to_u64(
                r.try_get::<i64, _>(0)
                    .map_err(db_err("cannot save tokens"))?,
            )),
            None => Err(conflict(
                connection,
                expected,
                self.token_version(connection).await?,
            )),
        }
    }

    async fn delete(&self, connection: &ConnectionId) -> Result<()> {
        let _turn = self.gate.turn().await;
        sqlx::query(
            "UPDATE tokens SET ciphertext = NULL, version = version + 1, updated_at = ?2 \
             WHERE connection = ?1 AND ciphertext IS NOT NULL",
        )
        .bind(connection.as_str())
        .bind(self.clock.now_ms())
        .execute(&self.pool)
        .await
        .map_err(db_err("cannot delete tokens"))?;
        Ok(())
    }
}

#[async_trait]
impl ConnectionStore for SqliteStore {
    async fn upsert_connection(&self, connection: &Connection) -> Result<Connection> {
        let now = self.clock.now_ms();
        let config = serde_json::to_string(&connection.config).map_err(|e| {
            Error::invalid_input("connection config cannot be serialized").set_source(e)
        })?;
        let _turn = self.gate.turn().await;
        let row = sqlx::query(
            "INSERT INTO connections (id, platform, config, status, status_detail, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) \
             ON CONFLICT (id) DO UPDATE SET platform = excluded.platform, config = excluded.config, \
                 status = excluded.status, status_detail = excluded.status_detail, \
                 updated_at = excluded.updated_at \
             RETURNING *",
        )
        .bind(connection.id.as_str())
        .bind(&connection.platform)
        .bind(config)
        .bind(connection.status.as_str())
        .bind(connection.status_detail.as_deref())
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err("cannot save connection"))?;
        connection_from_row(&row)
    }

    async fn get_connection(&self, id: &ConnectionId) -> Result<Option<Connection>> {
        let row = sqlx::query("SELECT * FROM connections WHERE id = ?1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err("cannot read connection"))?;
        row.as_ref().map(connection_from_row).transpose()
    }

    async fn list_connections(&self) -> Result<Vec<Connection>> {
        let rows = sqlx::query("SELECT * FROM connections ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("cannot list connections"))?;
        rows.iter().map(connection_from_row).collect()
    }

    async fn set_connection_status(
        &self,
        id: &ConnectionId,
        status: ConnectionStatus,
        detail: Option<&str>,
    ) -> Result<()> {
        let _turn = self.gate.turn().await;
        let done = sqlx::query(
            "UPDATE connections SET status = ?2, status_detail = ?3, updated_at = ?4 WHERE id = ?1",
        )
        .bind(id.as_str())
        .bind(status.as_str())
        .bind(detail)
        .bind(self.clock.now_ms())
        .execute(&self.pool)
        .await
        .map_err(db_err("cannot update connection"))?;
        if done.rows_affected() == 0 {
            return Err(not_found("no such connection", id));
        }
        Ok(())
    }

    async fn delete_connection(&self, id: &ConnectionId) -> Result<()> {
        let _turn = self.gate.turn().await;
        let now = self.clock.now_ms();
        let err = db_err("cannot delete connection");
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db_err("cannot delete connection"))?;
        let done = sqlx::query("DELETE FROM connections WHERE id = ?1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err("cannot delete connection"))?;
        if done.rows_affected() == 0 {
            return Err(not_found("no such connection", id));
        }
        sqlx::query(
            "UPDATE tokens SET ciphertext = NULL, version = version + 1, updated_at = ?2 \
             WHERE connection = ?1 AND ciphertext IS NOT NULL",
        )
        .bind(id.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err("cannot delete connection"))?;
        sqlx::query(
            "UPDATE cursors SET token = NULL, version = version + 1, updated_at = ?2 \
             WHERE connection = ?1 AND token IS NOT NULL",
        )
        .bind(id.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err("cannot delete connection"))?;
        tx.commit().await.map_err(err)
    }
}

#[async_trait]
impl CursorStore for SqliteStore {
    async fn load_cursor(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
    ) -> Result<Option<Versioned<CursorToken>>> {
        let row = sqlx::query(
            "SELECT token, version FROM cursors \
             WHERE connection = ?1 AND stream = ?2 AND token IS NOT NULL",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("cannot read cursor"))?;
        let Some(row) = row else { return Ok(None) };
        let token: String = row.try_get(0).map_err(db_err("cannot read cursor"))?;
        let version: i64 = row.try_get(1).map_err(db_err("cannot read cursor"))?;
        Ok(Some(Versioned {
            value: CursorToken::from_string(token),
            version: to_u64(version),
        }))
    }

    async fn save_cursor(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        cursor: &CursorToken,
        expected: Option<u64>,
    ) -> Result<u64> {
        let _turn = self.gate.turn().await;
        let now = self.clock.now_ms();
        let row = match expected {
            None => {
                sqlx::query(
                    "INSERT INTO cursors (connection, stream, token, version, updated_at) \
                     VALUES (?1, ?2, ?3, 1, ?4) \
                     ON CONFLICT (connection, stream) DO UPDATE SET token = excluded.token, \
                         version = cursors.version + 1, updated_at = excluded.updated_at \
                     WHERE cursors.token IS NULL \
                     RETURNING version",
                )
                .bind(connection.as_str())
                .bind(stream.as_str())
                .bind(cursor.as_str())
                .bind(now)
                .fetch_optional(&self.pool)
                .await
            }
            Some(v) => {
                sqlx::query(
                    "UPDATE cursors SET token = ?3, version = version + 1, updated_at = ?4 \
                     WHERE connection = ?1 AND stream = ?2 AND version = ?5 AND token IS NOT NULL \
                     RETURNING version",
                )
                .bind(connection.as_str())
                .bind(stream.as_str())
                .bind(cursor.as_str())
                .bind(now)
                .bind(to_i64(v))
                .fetch_optional(&self.pool)
                .await
            }
        }
        .map_err(db_err("cannot save cursor"))?;
        match row {
            Some(r) => Ok(to_u64(
                r.try_get::<i64, _>(0)
                    .map_err(db_err("cannot save cursor"))?,
            )),
            None => Err(cursor_conflict(
                connection,
                stream,
                expected,
                self.cursor_version(connection, stream).await?,
            )),
        }
    }

    async fn reset_cursor(&self, connection: &ConnectionId, stream: &StreamId) -> Result<()> {
        let _turn = self.gate.turn().await;
        sqlx::query(
            "UPDATE cursors SET token = NULL, version = version + 1, updated_at = ?3 \
             WHERE connection = ?1 AND stream = ?2 AND token IS NOT NULL",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .bind(self.clock.now_ms())
        .execute(&self.pool)
        .await
        .map_err(db_err("cannot reset cursor"))?;
        Ok(())
    }
}

#[async_trait]
impl RunStore for SqliteStore {
    async fn start_run(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        kind: RunKind,
    ) -> Result<RunId> {
        let _turn = self.gate.turn().await;
        let row = sqlx::query(
            "INSERT INTO sync_runs (connection, stream, kind, status, started_at) \
             VALUES (?1, ?2, ?3, 'running', ?4) RETURNING id",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .bind(kind.as_str())
        .bind(self.clock.now_ms())
        .fetch_one(&self.pool)
        .await
        .map_err(db_err("cannot record run start"))?;
        Ok(RunId(
            row.try_get(0).map_err(db_err("cannot record run start"))?,
        ))
    }

    async fn finish_run(&self, run: RunId, outcome: &RunOutcome) -> Result<()> {
        validate_outcome(outcome)?;
        let _turn = self.gate.turn().await;
        let done = sqlx::query(
            "UPDATE sync_runs SET status = ?2, finished_at = ?3, records_read = ?4, \
                 records_applied = ?5, records_unchanged = ?6, pages = ?7, error = ?8, \
                 records_rejected = ?9 \
             WHERE id = ?1 AND status = 'running'",
        )
        .bind(run.0)
        .bind(outcome.status.as_str())
        .bind(self.clock.now_ms())
        .bind(to_i64(outcome.records_read))
        .bind(to_i64(outcome.records_applied))
        .bind(to_i64(outcome.records_unchanged))
        .bind(to_i64(outcome.pages))
        .bind(outcome.error.as_deref())
        .bind(to_i64(outcome.records_rejected))
        .execute(&self.pool)
        .await
        .map_err(db_err("cannot record run end"))?;
        if done.rows_affected() == 0 {
            return Err(run_finished(run));
        }
        Ok(())
    }

    async fn list_runs(
        &self,
        connection: Option<&ConnectionId>,
        limit: usize,
    ) -> Result<Vec<SyncRun>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match connection {
            Some(c) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM sync_runs WHERE connection = ?1 ORDER BY id DESC LIMIT ?2"
                )))
                .bind(c.as_str())
                .bind(limit)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM sync_runs ORDER BY id DESC LIMIT ?1"
                )))
                .bind(limit)
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(db_err("cannot list runs"))?;
        rows.iter().map(run_from_row).collect()
    }

    async fn last_run(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
    ) -> Result<Option<SyncRun>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM sync_runs WHERE connection = ?1 AND stream = ?2 \
             ORDER BY id DESC LIMIT 1"
        )))
        .bind(connection.as_str())
        .bind(stream.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("cannot read last run"))?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn purge_runs(&self, before: i64, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let _turn = self.gate.turn().await;
        let err = || db_err("cannot purge sync runs");
        let mut conn = self.pool.acquire().await.map_err(err())?;
        // The write lock from the start: no other writer between the two deletes, so both
        // select the same runs.
        let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE")
            .await
            .map_err(err())?;
        // A run with a newer one of the same (connection, stream) is never the latest.
        const DOOMED: &str = "SELECT r.id FROM sync_runs r \
             WHERE r.status <> 'running' AND r.finished_at < ?1 \
               AND EXISTS (SELECT 1 FROM sync_runs n \
                           WHERE n.connection = r.connection AND n.stream = r.stream \
                             AND n.id > r.id) \
             ORDER BY r.id LIMIT ?2";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM run_logs WHERE run IN ({DOOMED})"
        )))
        .bind(before)
        .bind(limit)
        .execute(&mut *tx)
        .await
        .map_err(err())?;
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM sync_runs WHERE id IN ({DOOMED})"
        )))
        .bind(before)
        .bind(limit)
        .execute(&mut *tx)
        .await
        .map_err(err())?;
        tx.commit().await.map_err(err())?;
        Ok(done.rows_affected())
    }

    async fn get_run(&self, run: RunId) -> Result<Option<SyncRun>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM sync_runs WHERE id = ?1"
        )))
        .bind(run.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err("cannot read run"))?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn run_stats(
        &self,
        connection: Option<&ConnectionId>,
        since: i64,
    ) -> Result<Vec<DailyRunStats>> {
        // Per connection, one range of sync_runs_by_start (connection, started_at), read in
        // the order of the GROUP BY.
        let filter = if connection.is_some() {
            "AND connection = ?3"
        } else {
            ""
        };
        let query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT connection, started_at / ?2 AS day, COUNT(*) AS runs, \
                 SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed, \
                 SUM(records_read) AS records_read, SUM(records_applied) AS records_applied, \
                 SUM(records_rejected) AS records_rejected \
             FROM sync_runs WHERE started_at >= ?1 {filter} \
             GROUP BY connection, day ORDER BY connection, day"
        )))
        .bind(since)
        .bind(DAY_MS);
        let query = match connection {
            Some(c) => query.bind(c.as_str()),
            None => query,
        };
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(db_err("cannot read run statistics"))?;
        rows.iter()
            .map(|r| {
                let get = || -> std::result::Result<_, sqlx::Error> {
                    Ok(DailyRunStats {
                        connection: ConnectionId::from(r.try_get::<String, _>("connection")?),
                        day: r.try_get::<i64, _>("day")? * DAY_MS,
                        runs: to_u64(r.try_get("runs")?),
                        failed: to_u64(r.try_get("failed")?),
                        records_read: to_u64(r.try_get("records_read")?),
                        records_applied: to_u64(r.try_get("records_applied")?),
                        records_rejected: to_u64(r.try_get("records_rejected")?),
                    })
                };
                get().map_err(db_err("cannot decode run statistics"))
            })
            .collect()
    }

    async fn append_run_logs(&self, run: RunId, lines: &[RunLogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let _turn = self.gate.turn().await;
        let err = || db_err("cannot append run logs");
        let mut conn = self.pool.acquire().await.map_err(err())?;
        let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE")
            .await
            .map_err(err())?;
        let (base,): (i64,) =
            sqlx::query_as("SELECT COALESCE(MAX(seq), 0) FROM run_logs WHERE run = ?1")
                .bind(run.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(err())?;
        for (seq, line) in (base + 1..).zip(lines) {
            sqlx::query(
                "INSERT INTO run_logs (run, seq, at, level, target, message) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(run.0)
            .bind(seq)
            .bind(line.at)
            .bind(line.level.as_str())
            .bind(&line.target)
            .bind(&line.message)
            .execute(&mut *tx)
            .await
            .map_err(err())?;
        }
        tx.commit().await.map_err(err())?;
        Ok(())
    }

    async fn run_logs(
        &self,
        run: RunId,
        min_level: Option<LogLevel>,
        limit: usize,
    ) -> Result<Vec<RunLogLine>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT at, level, target, message FROM run_logs \
             WHERE run = ?1 AND {LEVEL_RANK} >= ?2 ORDER BY seq LIMIT ?3"
        )))
        .bind(run.0)
        .bind(level_rank(min_level))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("cannot read run logs"))?;
        rows.iter()
            .map(|r| {
                let get = || -> std::result::Result<_, sqlx::Error> {
                    Ok((
                        r.try_get::<i64, _>("at")?,
                        r.try_get::<String, _>("level")?,
                        r.try_get::<String, _>("target")?,
                        r.try_get::<String, _>("message")?,
                    ))
                };
                let (at, level, target, message) =
                    get().map_err(db_err("cannot decode a run log line"))?;
                Ok(RunLogLine::new(at, level.parse()?, target, message))
            })
            .collect()
    }
}

#[async_trait]
impl InboxStore for SqliteStore {
    async fn inbox_append(&self, event: &InboxEvent) -> Result<AppendOutcome> {
        let headers = serde_json::to_string(&event.headers_json).map_err(|e| {
            Error::invalid_input("webhook headers cannot be serialized").set_source(e)
        })?;
        let _turn = self.gate.turn().await;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db_err("cannot append to the inbox"))?;
        append_inbox_row(&mut conn, event, &headers, self.clock.now_ms()).await
    }

    async fn append_many(&self, events: &[InboxEvent]) -> Result<Vec<AppendOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let headers = events
            .iter()
            .map(|e| serde_json::to_string(&e.headers_json))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| {
                Error::invalid_input("webhook headers cannot be serialized").set_source(e)
            })?;
        let _turn = self.gate.turn().await;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(db_err("cannot append to the inbox"))?;
        // Take the write lock at once: a deferred transaction that upgrades later can fail
        // with SQLITE_BUSY without waiting.
        let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE")
            .await
            .map_err(db_err("cannot begin an inbox transaction"))?;
        let now = self.clock.now_ms();
        let mut out = Vec::with_capacity(events.len());
        for (event, headers) in events.iter().zip(&headers) {
            out.push(append_inbox_row(&mut tx, event, headers, now).await?);
        }
        tx.commit()
            .await
            .map_err(db_err("cannot commit the inbox transaction"))?;
        Ok(out)
    }

    async fn inbox_claim(
        &self,
        worker: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedEvent>> {
        let _turn = self.gate.turn().await;
        let now = self.clock.now_ms();
        let until = now.saturating_add(lease_ms(lease));
        // One statement: the selection and the lease are atomic (on PostgreSQL add
        // `FOR UPDATE SKIP LOCKED` to the sub-select).
        let rows = sqlx::query(
            "UPDATE inbox SET lease_owner = ?1, lease_until = ?2 \
             WHERE id IN ( \
                 SELECT id FROM inbox \
                 WHERE status = 'pending' AND next_attempt_at <= ?3 \
                   AND (lease_until IS NULL OR lease_until <= ?3) \
                 ORDER BY received_at, id LIMIT ?4) \
             RETURNING id, platform, connection, event_id, received_at, headers, body, \
                 attempts, lease_until, last_error",
        )
        .bind(worker)
        .bind(until)
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("cannot claim inbox events"))?;
        let mut out = rows
            .iter()
            .map(|r| {
                let (id, event, attempts) = event_from_row(r)?;
                Ok(ClaimedEvent {
                    id: EventId(id),
                    event,
                    // Failed attempts so far, plus this one.
                    attempts: attempts.saturating_add(1),
                    lease_until: r.try_get("lease_until")?,
                    last_error: r.try_get("last_error")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
            .map_err(db_err("cannot decode inbox events"))?;
        // RETURNING has no defined order.
        out.sort_by_key(|c| (c.event.received_at, c.id));
        Ok(out)
    }

    async fn inbox_complete(&self, id: EventId, worker: &str) -> Result<()> {
        let _turn = self.gate.turn().await;
        let now = self.clock.now_ms();
        let done = sqlx::query(
            "UPDATE inbox SET status = 'done', lease_owner = NULL, lease_until = NULL, \
                 finished_at = ?3 \
             WHERE id = ?1 AND status = 'pending' AND lease_owner = ?2 AND lease_until > ?3",
        )
        .bind(id.0)
        .bind(worker)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db_err("cannot complete inbox event"))?;
        if done.rows_affected() == 0 {
            return Err(lease_lost(id, worker));
        }
        Ok(())
    }

    async fn inbox_complete_many(&self, ids: &[EventId], worker: &str) -> Result<Vec<EventId>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let _turn = self.gate.turn().await;
        let now = self.clock.now_ms();
        let list = id_list(ids)?;
        // One statement for the batch (PostgreSQL: `id = ANY($1)`).
        let rows: Vec<(i64,)> = sqlx::query_as(
            "UPDATE inbox SET status = 'done', lease_owner = NULL, lease_until = NULL, \
                 finished_at = ?3 \
             WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'pending' \
               AND lease_owner = ?2 AND lease_until > ?3 \
             RETURNING id",
        )
        .bind(list)
        .bind(worker)
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("cannot complete inbox events"))?;
        let mut done: Vec<EventId> = rows.into_iter().map(|(id,)| EventId(id)).collect();
        done.sort_unstable();
        Ok(done)
    }

    async fn inbox_fail(
        &self,
        id: EventId,
        worker: &str,
        error: &str,
        action: FailAction,
    ) -> Result<()> {
        let _turn = self.gate.turn().await;
        let now = self.clock.now_ms();
        let (status, next, finished) = match action {
            FailAction::RetryAt(at) => ("pending", Some(at), None),
            FailAction::DeadLetter => ("dead", None, Some(now)),
        };
        let done = sqlx::query(
            "UPDATE inbox SET status = ?4, lease_owner = NULL, lease_until = NULL, \
                 attempts = attempts + 1, last_error = ?5, next_attempt_at = COALESCE(?6, next_attempt_at), finished_at = ?7 \
             WHERE id = ?1 AND status = 'pending' AND lease_owner = ?2 AND lease_until > ?3",
        )
        .bind(id.0)
        .bind(worker)
        .bind(now)
        .bind(status)
        .bind(error)
        .bind(next)
        .bind(finished)
        .execute(&self.pool)
        .await
        .map_err(db_err("cannot record inbox failure"))?;
        if done.rows_affected() == 0 {
            return Err(lease_lost(id, worker));
        }
        Ok(())
    }

    async fn inbox_renew(
        &self,
        ids: &[EventId],
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<EventId>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let _turn = self.gate.turn().await;
        let now = self.clock.now_ms();
        let until = now.saturating_add(lease_ms(lease));
        let list = id_list(ids)?;
        let rows: Vec<(i64,)> = sqlx::query_as(
            "UPDATE inbox SET lease_until = ?4 \
             WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'pending' \
               AND lease_owner = ?2 AND lease_until > ?3 \
             RETURNING id",
        )
        .bind(list)
        .bind(worker)
        .bind(now)
        .bind(until)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("cannot renew inbox leases"))?;
        let mut held: Vec<EventId> = rows.into_iter().map(|(id,)| EventId(id)).collect();
        held.sort_unstable();
        Ok(held)
    }

    async fn inbox_release(&self, ids: &[EventId], worker: &str) -> Result<Vec<EventId>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let _turn = self.gate.turn().await;
        let now = self.clock.now_ms();
        let list = id_list(ids)?;
        let rows: Vec<(i64,)> = sqlx::query_as(
            "UPDATE inbox SET lease_owner = NULL, lease_until = NULL, next_attempt_at = ?3 \
             WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'pending' \
               AND lease_owner = ?2 AND lease_until > ?3 \
             RETURNING id",
        )
        .bind(list)
        .bind(worker)
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("cannot release inbox events"))?;
        let mut released: Vec<EventId> = rows.into_iter().map(|(id,)| EventId(id)).collect();
        released.sort_unstable();
        Ok(released)
    }

    async fn purge_inbox_done(&self, before: i64, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let _turn = self.gate.turn().await;
        let done = sqlx::query(
            "DELETE FROM inbox WHERE id IN ( \
                 SELECT id FROM inbox WHERE status = 'done' AND finished_at < ?1 \
                 ORDER BY id LIMIT ?2)",
        )
        .bind(before)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(db_err("cannot purge done inbox events"))?;
        Ok(done.rows_affected())
    }

    async fn inbox_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(
            "SELECT id, platform, connection, event_id, received_at, headers, body, attempts, \
                 last_error, finished_at \
             FROM inbox WHERE status = 'dead' ORDER BY id LIMIT ?1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("cannot list dead letters"))?;
        rows.iter()
            .map(|r| {
                let (id, event, attempts) = event_from_row(r)?;
                Ok(DeadLetter {
                    id: EventId(id),
                    event,
                    attempts,
                    last_error: r.try_get("last_error")?,
                    failed_at: r.try_get::<Option<i64>, _>("finished_at")?.unwrap_or(0),
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
            .map_err(db_err("cannot decode dead letters"))
    }

    async fn inbox_requeue(&self, id: EventId) -> Result<()> {
        let _turn = self.gate.turn().await;
        let done = sqlx::query(
            "UPDATE inbox SET status = 'pending', attempts = 0, next_attempt_at = ?2, \
                 finished_at = NULL \
             WHERE id = ?1 AND status = 'dead'",
        )
        .bind(id.0)
        .bind(self.clock.now_ms())
        .execute(&self.pool)
        .await
        .map_err(db_err("cannot requeue inbox event"))?;
        if done.rows_affected() == 0 {
            return Err(not_found("no dead-lettered inbox event with this id", id));
        }
        Ok(())
    }

    async fn inbox_counts(&self) -> Result<InboxCounts> {
        let row = sqlx::query(
            // One count per state, each a range of the `inbox_due` index (status first): the
            // backlog's counts cost the backlog, not a scan of the whole history.
            "SELECT \
               (SELECT COUNT(*) FROM inbox WHERE status = 'pending' AND (lease_until IS NULL OR lease_until <= ?1)), \
               (SELECT COUNT(*) FROM inbox WHERE status = 'pending' AND lease_until > ?1), \
               (SELECT COUNT(*) FROM inbox WHERE status = 'done'), \
               (SELECT COUNT(*) FROM inbox WHERE status = 'dead')",
        )
        .bind(self.clock.now_ms())
        .fetch_one(&self.pool)
        .await
        .map_err(db_err("cannot count inbox events"))?;
        let get = |i: usize| -> Result<u64> {
            Ok(to_u64(
                row.try_get::<i64, _>(i)
                    .map_err(db_err("cannot count inbox events"))?,
            ))
        };
        Ok(InboxCounts {
            pending: get(0)?,
            in_flight: get(1)?,
            done: get(2)?,
            dead: get(3)?,
        })
    }

    async fn inbox_backlog(&self) -> Result<Vec<ConnectionBacklog>> {
        // The backlog's rows only (the status index), never the processed history.
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT connection, \
               SUM(CASE WHEN status = 'pending' AND (lease_until IS NULL OR lease_until <= ?1) THEN 1 ELSE 0 END), \
               SUM(CASE WHEN status = 'pending' AND lease_until > ?1 THEN 1 ELSE 0 END), \
               SUM(CASE WHEN status = 'dead' THEN 1 ELSE 0 END) \
             FROM inbox WHERE status IN ('pending', 'dead') \
             GROUP BY connection ORDER BY connection",
        )
        .bind(self.clock.now_ms())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("cannot count the inbox backlog"))?;
        Ok(rows
            .into_iter()
            .map(|(connection, pending, in_flight, dead)| ConnectionBacklog {
                connection: ConnectionId::from(connection),
                pending: to_u64(pending),
                in_flight: to_u64(in_flight),
                dead: to_u64(dead),
            })
            .collect())
    }
}

/// Appends one webhook event to the inbox on `conn` (inside the caller's transaction, if any),
/// due at `due_at_ms`: `Duplicate` when (platform, connection, event id) is already there.
/// `headers_json` is the event's headers as JSON text. Used by [`SqliteStore`] and by
/// receivers that group several appends into one transaction.
///
/// # Errors
/// `Storage` on database errors.
pub async fn append_inbox_row(
    conn: &mut sqlx::SqliteConnection,
    event: &InboxEvent,
    headers_json: &str,
    due_at_ms: i64,
) -> Result<AppendOutcome> {
    let row: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO inbox (platform, connection, event_id, received_at, headers, body, \
             status, attempts, next_attempt_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7) \
         ON CONFLICT (platform, connection, event_id) DO NOTHING \
         RETURNING id",
    )
    .bind(&event.platform)
    .bind(event.connection.as_str())
    .bind(&event.event_id)
    .bind(event.received_at)
    .bind(headers_json)
    .bind(event.body.as_ref())
    .bind(due_at_ms)
    .fetch_optional(conn)
    .await
    .map_err(db_err("cannot append to the inbox"))?;
    Ok(match row {
        Some((id,)) => AppendOutcome::Inserted(EventId(id)),
        None => AppendOutcome::Duplicate,
    })
}

fn reject_from_row(r: &SqliteRow) -> Result<StoredReject> {
    let get = || -> std::result::Result<_, sqlx::Error> {
        Ok((
            r.try_get::<i64, _>("id")?,
            r.try_get::<String, _>("connection")?,
            r.try_get::<String, _>("stream")?,
            r.try_get::<String, _>("stage")?,
            r.try_get::<Option<String>, _>("record_id")?,
            r.try_get::<Option<String>, _>("parent")?,
            r.try_get::<String, _>("op")?,
            (
                r.try_get::<Option<i64>, _>("version")?,
                r.try_get::<Option<i64>, _>("updated_at")?,
            ),
            r.try_get::<Vec<u8>, _>("raw")?,
            r.try_get::<String, _>("error")?,
            [
                r.try_get::<i64, _>("attempts")?,
                r.try_get::<i64, _>("first_seen_at")?,
                r.try_get::<i64, _>("last_seen_at")?,
            ],
        ))
    };
    let (
        id,
        connection,
        stream,
        stage,
        record_id,
        parent,
        op,
        (version, updated_at),
        raw,
        error,
        n,
    ) = get().map_err(db_err("cannot decode a reject row"))?;
    let reject = Reject {
        stream: StreamId::from(stream),
        stage: RejectStage::parse(&stage)?,
        id: record_id,
        parent,
        op: if op == "delete" {
            Op::Delete
        } else {
            Op::Upsert
        },
        version,
        updated_at,
        raw: raw.into(),
        error,
    };
    Ok(StoredReject {
        id: RejectId(id),
        connection: ConnectionId::from(connection),
        reject,
        attempts: u32::try_from(n[0]).unwrap_or(u32::MAX),
        first_seen_at: n[1],
        last_seen_at: n[2],
    })
}

const REJECT_COLUMNS: &str = "id, connection, stream, stage, record_id, parent, op, version, \
     updated_at, raw, error, attempts, first_seen_at, last_seen_at";

#[async_trait]
impl RejectStore for SqliteStore {
    async fn put_rejects(&self, connection: &ConnectionId, rejects: &[Reject]) -> Result<()> {
        if rejects.is_empty() {
            return Ok(());
        }
        let _turn = self.gate.turn().await;
        let now = self.clock.now_ms();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db_err("cannot store rejects"))?;
        for r in rejects {
            sqlx::query(
                "INSERT INTO rejects (connection, stream, key, stage, record_id, parent, op, \
                     version, updated_at, raw, error, attempts, first_seen_at, last_seen_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 1, ?12, ?12) \
                 ON CONFLICT (connection, stream, key) DO UPDATE SET \
                     stage = excluded.stage, parent = excluded.parent, op = excluded.op, \
                     version = excluded.version, updated_at = excluded.updated_at, \
                     raw = excluded.raw, error = excluded.error, \
                     attempts = rejects.attempts + 1, last_seen_at = excluded.last_seen_at",
            )
            .bind(connection.as_str())
            .bind(r.stream.as_str())
            .bind(super::reject_key(r))
            .bind(r.stage.as_str())
            .bind(r.id.as_deref())
            .bind(r.parent.as_deref())
            .bind(r.op.as_str())
            .bind(r.version)
            .bind(r.updated_at)
            .bind(&r.raw[..])
            .bind(r.error.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err("cannot store rejects"))?;
        }
        tx.commit().await.map_err(db_err("cannot store rejects"))?;
        Ok(())
    }

    async fn list_rejects(
        &self,
        connection: Option<&ConnectionId>,
        stream: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<StoredReject>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REJECT_COLUMNS} FROM rejects \
             WHERE (?1 IS NULL OR connection = ?1) AND (?2 IS NULL OR stream = ?2) \
             ORDER BY id LIMIT ?3"
        )))
        .bind(connection.map(ConnectionId::as_str))
        .bind(stream.map(StreamId::as_str))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("cannot list rejects"))?;
        rows.iter().map(reject_from_row).collect()
    }

    async fn count_rejects(&self, connection: Option<&ConnectionId>) -> Result<u64> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM rejects WHERE (?1 IS NULL OR connection = ?1)")
                .bind(connection.map(ConnectionId::as_str))
                .fetch_one(&self.pool)
                .await
                .map_err(db_err("cannot count rejects"))?;
        Ok(to_u64(n))
    }

    async fn delete_reject(&self, id: RejectId) -> Result<()> {
        let _turn = self.gate.turn().await;
        let done = sqlx::query("DELETE FROM rejects WHERE id = ?1")
            .bind(id.0)
            .execute(&self.pool)
            .await
            .map_err(db_err("cannot delete a reject"))?;
        if done.rows_affected() == 0 {
            return Err(not_found("reject", id));
        }
        Ok(())
    }

    async fn reject_failed(&self, id: RejectId, error: &str) -> Result<()> {
        let _turn = self.gate.turn().await;
        let done = sqlx::query(
            "UPDATE rejects SET error = ?2, attempts = attempts + 1, last_seen_at = ?3 WHERE id = ?1",
        )
        .bind(id.0)
        .bind(error)
        .bind(self.clock.now_ms())
        .execute(&self.pool)
        .await
        .map_err(db_err("cannot update a reject"))?;
        if done.rows_affected() == 0 {
            return Err(not_found("reject", id));
        }
        Ok(())
    }
}

const SCHEDULE_COLUMNS: &str = "connection, stream, spec, full_sync, next_due_at, lease_owner, \
     lease_until, failures, runs, last_started_at, last_finished_at, last_status, last_error";

fn schedule_from_row(r: &SqliteRow) -> Result<ScheduleRow> {
    let get = || -> std::result::Result<_, sqlx::Error> {
        Ok((
            r.try_get::<String, _>("connection")?,
            r.try_get::<String, _>("stream")?,
            r.try_get::<String, _>("spec")?,
            r.try_get::<bool, _>("full_sync")?,
            [
                r.try_get::<i64, _>("next_due_at")?,
                r.try_get::<i64, _>("failures")?,
                r.try_get::<i64, _>("runs")?,
            ],
            r.try_get::<Option<String>, _>("lease_owner")?,
            [
                r.try_get::<Option<i64>, _>("lease_until")?,
                r.try_get::<Option<i64>, _>("last_started_at")?,
                r.try_get::<Option<i64>, _>("last_finished_at")?,
            ],
            r.try_get::<Option<String>, _>("last_status")?,
            r.try_get::<Option<String>, _>("last_error")?,
        ))
    };
    let (connection, stream, spec, full, n, lease_owner, t, last_status, last_error) =
        get().map_err(db_err("cannot decode a schedule row"))?;
    Ok(ScheduleRow {
        connection: ConnectionId::from(connection),
        stream: StreamId::from(stream),
        spec,
        full,
        next_due_at: n[0],
        lease_owner,
        lease_until: t[0],
        failures: to_u64(n[1]),
        runs: to_u64(n[2]),
        last_started_at: t[1],
        last_finished_at: t[2],
        last_status: last_status.as_deref().map(RunStatus::parse).transpose()?,
        last_error,
    })
}

#[async_trait]
impl ScheduleStore for SqliteStore {
    async fn upsert_schedule(&self, entry: &ScheduleEntry, now: i64) -> Result<()> {
        let _turn = self.gate.turn().await;
        sqlx::query(
            "INSERT INTO schedules (connection, stream, spec, full_sync, next_due_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (connection, stream) DO UPDATE SET spec = excluded.spec, \
                 full_sync = excluded.full_sync, next_due_at = excluded.next_due_at, \
                 updated_at = excluded.updated_at \
             WHERE schedules.spec IS NOT excluded.spec \
                OR schedules.full_sync IS NOT excluded.full_sync",
        )
        .bind(entry.connection.as_str())
        .bind(entry.stream.as_str())
        .bind(&entry.spec)
        .bind(entry.full)
        .bind(entry.first_due_at)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db_err("cannot save a schedule"))?;
        Ok(())
    }

    async fn claim_schedules(
        &self,
        owner: &str,
        lease: Duration,
        now: i64,
        limit: usize,
    ) -> Result<Vec<ScheduleRow>> {
        let _turn = self.gate.turn().await;
        let until = now.saturating_add(lease_ms(lease));
        // One statement: the selection and the lease are atomic (on PostgreSQL add
        // `FOR UPDATE SKIP LOCKED` to the sub-select).
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE schedules SET lease_owner = ?1, lease_until = ?2, last_started_at = ?3 \
             WHERE (connection, stream) IN ( \
                 SELECT connection, stream FROM schedules \
                 WHERE next_due_at <= ?3 AND (lease_until IS NULL OR lease_until <= ?3) \
                 ORDER BY next_due_at LIMIT ?4) \
               AND (lease_until IS NULL OR lease_until <= ?3) \
             RETURNING {SCHEDULE_COLUMNS}"
        )))
        .bind(owner)
        .bind(until)
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("cannot claim schedules"))?;
        let mut out = rows
            .iter()
            .map(schedule_from_row)
            .collect::<Result<Vec<_>>>()?;
        // RETURNING has no defined order.
        out.sort_by(|a, b| {
            (a.next_due_at, &a.connection, &a.stream).cmp(&(
                b.next_due_at,
                &b.connection,
                &b.stream,
            ))
        });
        Ok(out)
    }

    async fn renew_schedule(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        owner: &str,
        until: i64,
        now: i64,
    ) -> Result<bool> {
        let _turn = self.gate.turn().await;
        let done = sqlx::query(
            "UPDATE schedules SET lease_until = ?4 \
             WHERE connection = ?1 AND stream = ?2 AND lease_owner = ?3 AND lease_until > ?5",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .bind(owner)
        .bind(until)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db_err("cannot renew a schedule lease"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish_schedule(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        owner: &str,
        outcome: &ScheduleOutcome,
        now: i64,
    ) -> Result<bool> {
        validate_schedule_outcome(outcome)?;
        let _turn = self.gate.turn().await;
        let done = sqlx::query(
            "UPDATE schedules SET lease_owner = NULL, lease_until = NULL, next_due_at = ?4, \
                 last_finished_at = ?5, last_status = ?6, last_error = ?7, \
                 runs = runs + (CASE WHEN ?6 = 'cancelled' THEN 0 ELSE 1 END), \
                 failures = CASE WHEN ?6 = 'failed' THEN failures + 1 \
                                 WHEN ?6 = 'succeeded' THEN 0 ELSE failures END, \
                 updated_at = ?5 \
             WHERE connection = ?1 AND stream = ?2 AND lease_owner = ?3",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .bind(owner)
        .bind(outcome.next_due_at)
        .bind(now)
        .bind(outcome.status.as_str())
        .bind(outcome.error.as_deref())
        .execute(&self.pool)
        .await
        .map_err(db_err("cannot record a scheduled run"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn make_schedule_due(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        now: i64,
    ) -> Result<()> {
        let _turn = self.gate.turn().await;
        sqlx::query(
            "UPDATE schedules SET next_due_at = MIN(next_due_at, ?3) \
             WHERE connection = ?1 AND stream = ?2",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db_err("cannot update a schedule"))?;
        Ok(())
    }

    async fn list_schedules(&self) -> Result<Vec<ScheduleRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY connection, stream"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err("cannot list schedules"))?;
        rows.iter().map(schedule_from_row).collect()
    }
}
