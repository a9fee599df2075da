//! `PgStore`: the [`StateStore`](super::StateStore) on PostgreSQL, for several processes
//! sharing one database.
//!
//! The database is the coordinator: every compare-and-swap is one conditional statement,
//! inbox claims lock what they take with `FOR UPDATE SKIP LOCKED` under a lease, new inbox
//! events are announced with `NOTIFY` ([`InboxWakeups`]), and the versioned migrations in
//! `migrations/postgres/` run at open under sqlx's advisory lock.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, PgRow};

use super::{
    AppendOutcome, ClaimedEvent, Clock, Connection, ConnectionBacklog, ConnectionStatus,
    ConnectionStore, CursorStore, DAY_MS, DailyRunStats, DeadLetter, EncryptionKey, EventId,
    FailAction, InboxCounts, InboxEvent, InboxStore, LEVEL_RANK, LogLevel, RejectId, RejectStore,
    RunId, RunKind, RunLogLine, RunOutcome, RunStatus, RunStore, ScheduleEntry, ScheduleOutcome,
    ScheduleRow, ScheduleStore, StoredReject, SyncRun, cursor_conflict, lease_lost, lease_ms,
    level_rank, not_found, run_finished, validate_outcome, validate_schedule_outcome,
};
use crate::cursor::CursorToken;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{ConnectionId, Op, Reject, RejectStage, StreamId};
use crate::token::{TokenSet, TokenStore, Versioned, conflict};

mod notify;
mod options;

pub use notify::{INBOX_CHANNEL, InboxWakeups};
pub use options::{DEFAULT_MAX_CONNECTIONS, PASSWORD_ENV, PgStoreOptions};

/// The versioned migrations in `migrations/postgres/`, shared by the store and the sink.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Events per statement in [`InboxStore::append_many`] / [`append_inbox_rows`].
const APPEND_ROWS_PER_STATEMENT: usize = 1_000;

/// A [`StateStore`](super::StateStore) in a PostgreSQL database (feature `postgres`).
///
/// Several `PgStore`s, in one process or in many, may share a database: each token or cursor
/// compare-and-swap is won by one of them, each inbox event is claimed by one of them at a
/// time (a lease that runs out hands it to another), and the migrations run once however many
/// open at the same moment. Token sets are encrypted with the [`EncryptionKey`], as in
/// `SqliteStore`: every node needs the same key. Timestamps come from the store's [`Clock`]
/// (the system clock by default), so the nodes' clocks must agree (NTP) to well within the
/// shortest lease.
///
/// `Debug` shows the database as `postgres://user@host:port/database`, never the password.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    key: EncryptionKey,
    clock: Clock,
    options: Arc<PgStoreOptions>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.options.target())
            .field("pool_size", &self.pool.size())
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Maps a PostgreSQL error the way the state store does: data the database refuses (SQLSTATE
/// class 22, e.g. a character it cannot store) is the caller's `InvalidInput`; anything else a
/// temporary `Storage` error. For crates keeping tables of their own beside the state store
/// (the entity graph), so their errors read the same.
pub fn pg_err(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| {
        let data_error = e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c.starts_with("22"));
        if data_error {
            Error::new(ErrorKind::InvalidInput, what).set_source(e)
        } else {
            Error::storage(what).set_source(e)
        }
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// `s`, if PostgreSQL can store it as `text` (no NUL character); a key or id with one is
/// refused: changing it would make it another key.
pub(crate) fn pg_text<'a>(field: &'static str, s: &'a str) -> Result<&'a str> {
    if s.contains('\0') {
        return Err(
            Error::invalid_input("PostgreSQL text cannot hold a NUL character")
                .with_context("field", field),
        );
    }
    Ok(s)
}

/// Descriptive text (errors, details) made storable: NUL characters become U+FFFD.
fn lossy(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

impl PgStore {
    /// Connects to the database at a `postgres://user@host:port/database` URL (the password
    /// from `PGPASSWORD` or `~/.pgpass`, never in the URL) and runs the migrations.
    ///
    /// # Errors
    /// `Config` for a malformed URL, one carrying a password, or a database whose encoding is
    /// not UTF-8; `Storage` when it cannot be reached or migrated.
    pub async fn connect(url: &str, key: EncryptionKey) -> Result<Self> {
        Self::connect_with(PgStoreOptions::from_url(url)?, key).await
    }

    /// Connects with `options` and runs the migrations (under sqlx's advisory lock: when
    /// several processes open a fresh database at once, one migrates and the others wait,
    /// then find the work done).
    ///
    /// # Errors
    /// As [`PgStore::connect`].
    pub async fn connect_with(options: PgStoreOptions, key: EncryptionKey) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .idle_timeout(Some(Duration::from_secs(600)))
            .max_lifetime(Some(Duration::from_secs(1800)))
            .connect_with(options.connect.clone())
            .await
            .map_err(|e| {
                Error::storage("cannot connect to the PostgreSQL database")
                    .with_context("database", options.target())
                    .set_source(e)
            })?;
        let (encoding,): (String,) = sqlx::query_as("SHOW server_encoding")
            .fetch_one(&pool)
            .await
            .map_err(pg_err("cannot read the database encoding"))?;
        if !encoding.eq_ignore_ascii_case("UTF8") {
            return Err(
                Error::config("the PostgreSQL database must use UTF8 encoding")
                    .with_context("database", options.target())
                    .with_context("encoding", encoding),
            );
        }
        MIGRATOR.run(&pool).await.map_err(|e| {
            Error::storage("cannot migrate the PostgreSQL database")
                .with_context("database", options.target())
                .set_source(e)
        })?;
        Ok(PgStore {
            pool,
            key,
            clock: Clock::system(),
            options: Arc::new(options),
        })
    }

    /// Uses `clock` for timestamps, leases and retry times.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The connection pool (for the PostgreSQL sink and the server's own queries).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The database as `postgres://user@host:port/database` (no password).
    pub fn target(&self) -> &str {
        self.options.target()
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Listens for new inbox events on [`INBOX_CHANNEL`], on a connection of its own (not one
    /// of the pool's). Returns once listening: every append committed afterwards, by any
    /// process, wakes the returned [`InboxWakeups`].
    ///
    /// # Errors
    /// `Storage` when the listening connection cannot be opened.
    pub async fn subscribe_inbox(&self) -> Result<InboxWakeups> {
        notify::subscribe(self.options.connect.clone()).await
    }

    async fn token_version(&self, connection: &ConnectionId) -> Result<Option<u64>> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT version FROM tokens WHERE connection = $1 AND ciphertext IS NOT NULL",
        )
        .bind(connection.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_err("cannot read tokens"))?;
        Ok(row.map(|(v,)| to_u64(v)))
    }

    async fn cursor_version(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
    ) -> Result<Option<u64>> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT version FROM cursors WHERE connection = $1 AND stream = $2 AND token IS NOT NULL",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_err("cannot read cursor"))?;
        Ok(row.map(|(v,)| to_u64(v)))
    }
}

/// Appends webhook deliveries to the inbox on `conn` (inside the caller's transaction, if
/// any; one statement per 1,000 events), due at `due_at_ms`: one outcome per event, in order.
/// Used by [`InboxStore::append_many`] and by receivers that group appends of several
/// requests into one transaction. Rows are inserted in key order, so two concurrent batches
/// holding the same events cannot deadlock.
///
/// # Errors
/// `InvalidInput` for an event with a NUL character in its platform, connection or event id,
/// or headers that cannot be serialized; `Storage` on database errors.
pub async fn append_inbox_rows(
    conn: &mut PgConnection,
    events: &[InboxEvent],
    due_at_ms: i64,
) -> Result<Vec<AppendOutcome>> {
    let mut headers = Vec::with_capacity(events.len());
    for e in events {
        pg_text("platform", &e.platform)?;
        pg_text("connection", e.connection.as_str())?;
        pg_text("event_id", &e.event_id)?;
        headers.push(serde_json::to_string(&e.headers_json).map_err(|err| {
            Error::invalid_input("webhook headers cannot be serialized").set_source(err)
        })?);
    }
    // Key order (stable: the first of two equal keys stays first and is the one stored).
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&events[a], &events[b]);
        (
            x.platform.as_str(),
            x.connection.as_str(),
            x.event_id.as_str(),
        )
            .cmp(&(
                y.platform.as_str(),
                y.connection.as_str(),
                y.event_id.as_str(),
            ))
    });
    let mut inserted: HashMap<(&str, &str, &str), i64> = HashMap::with_capacity(events.len());
    let mut returned: Vec<(i64, String, String, String)> = Vec::new();
    for chunk in order.chunks(APPEND_ROWS_PER_STATEMENT) {
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "INSERT INTO inbox (platform, connection, event_id, received_at, headers, body, \
                 status, attempts, next_attempt_at) \
             SELECT p, c, e, r, h, b, 'pending', 0, $7 \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::bytea[]) \
                 WITH ORDINALITY AS t(p, c, e, r, h, b, n) \
             ORDER BY n \
             ON CONFLICT (platform, connection, event_id) DO NOTHING \
             RETURNING id, platform, connection, event_id",
        )
        .bind(
            chunk
                .iter()
                .map(|&i| events[i].platform.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|&i| events[i].connection.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|&i| events[i].event_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|&i| events[i].received_at)
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|&i| headers[i].as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|&i| events[i].body.as_ref())
                .collect::<Vec<&[u8]>>(),
        )
        .bind(due_at_ms)
        .fetch_all(&mut *conn)
        .await
        .map_err(pg_err("cannot append to the inbox"))?;
        returned.extend(rows);
    }
    for (id, p, c, e) in &returned {
        inserted.insert((p.as_str(), c.as_str(), e.as_str()), *id);
    }
    // The first occurrence of an inserted key gets its id; later ones are duplicates.
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let key = (
            e.platform.as_str(),
            e.connection.as_str(),
            e.event_id.as_str(),
        );
        out.push(match inserted.remove(&key) {
            Some(id) => AppendOutcome::Inserted(EventId(id)),
            None => AppendOutcome::Duplicate,
        });
    }
    Ok(out)
}

fn connection_from_row(r: &PgRow) -> Result<Connection> {
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
    let (id, platform, config, status, status_detail, created_at, updated_at) =
        get().map_err(pg_err("cannot decode a connection row"))?;
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

const CONNECTION_COLUMNS: &str =
    "id, platform, config::text AS config, status, status_detail, created_at, updated_at";

fn run_from_row(r: &PgRow) -> Result<SyncRun> {
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
        get().map_err(pg_err("cannot decode a run row"))?;
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

const RUN_COLUMNS: &str = "id, connection, stream, kind, status, started_at, finished_at, \
     records_read, records_applied, records_unchanged, pages, records_rejected, error";

fn event_from_row(r: &PgRow) -> std::result::Result<(i64, InboxEvent, u32), sqlx::Error> {
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

#[async_trait]
impl TokenStore for PgStore {
    async fn load(&self, connection: &ConnectionId) -> Result<Option<Versioned<TokenSet>>> {
        let row: Option<(Vec<u8>, i64)> = sqlx::query_as(
            "SELECT ciphertext, version FROM tokens WHERE connection = $1 AND ciphertext IS NOT NULL",
        )
        .bind(connection.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_err("cannot read tokens"))?;
        let Some((sealed, version)) = row else {
            return Ok(None);
        };
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
        pg_text("connection", connection.as_str())?;
        let sealed = self.key.seal(connection, tokens)?;
        let now = self.clock.now_ms();
        // Under READ COMMITTED a concurrent writer of the same row makes this statement wait
        // and then re-check its condition against the committed row: one of them wins.
        let row: Option<(i64,)> = match expected {
            None => {
                sqlx::query_as(
                    "INSERT INTO tokens (connection, ciphertext, version, updated_at) \
                     VALUES ($1, $2, 1, $3) \
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
                sqlx::query_as(
                    "UPDATE tokens SET ciphertext = $2, version = version + 1, updated_at = $3 \
                     WHERE connection = $1 AND version = $4 AND ciphertext IS NOT NULL \
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
        .map_err(pg_err("cannot save tokens"))?;
        match row {
            Some((v,)) => Ok(to_u64(v)),
            None => Err(conflict(
                connection,
                expected,
                self.token_version(connection).await?,
            )),
        }
    }

    async fn delete(&self, connection: &ConnectionId) -> Result<()> {
        sqlx::query(
            "UPDATE tokens SET ciphertext = NULL, version = version + 1, updated_at = $2 \
             WHERE connection = $1 AND ciphertext IS NOT NULL",
        )
        .bind(connection.as_str())
        .bind(self.clock.now_ms())
        .execute(&self.pool)
        .await
        .map_err(pg_err("cannot delete tokens"))?;
        Ok(())
    }
}

#[async_trait]
impl ConnectionStore for PgStore {
    async fn upsert_connection(&self, connection: &Connection) -> Result<Connection> {
        pg_text("connection", connection.id.as_str())?;
        pg_text("platform", &connection.platform)?;
        let now = self.clock.now_ms();
        let config = serde_json::to_string(&connection.config).map_err(|e| {
            Error::invalid_input("connection config cannot be serialized").set_source(e)
        })?;
        let detail = connection.status_detail.as_deref().map(lossy);
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO connections (id, platform, config, status, status_detail, created_at, updated_at) \
             VALUES ($1, $2, $3::jsonb, $4, $5, $6, $6) \
             ON CONFLICT (id) DO UPDATE SET platform = excluded.platform, config = excluded.config, \
                 status = excluded.status, status_detail = excluded.status_detail, \
                 updated_at = excluded.updated_at \
             RETURNING {CONNECTION_COLUMNS}"
        )))
        .bind(connection.id.as_str())
        .bind(&connection.platform)
        .bind(config)
        .bind(connection.status.as_str())
        .bind(detail.as_deref())
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(pg_err("cannot save connection"))?;
        connection_from_row(&row)
    }

    async fn get_connection(&self, id: &ConnectionId) -> Result<Option<Connection>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CONNECTION_COLUMNS} FROM connections WHERE id = $1"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_err("cannot read connection"))?;
        row.as_ref().map(connection_from_row).transpose()
    }

    async fn list_connections(&self) -> Result<Vec<Connection>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CONNECTION_COLUMNS} FROM connections ORDER BY id COLLATE \"C\""
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err("cannot list connections"))?;
        rows.iter().map(connection_from_row).collect()
    }

    async fn set_connection_status(
        &self,
        id: &ConnectionId,
        status: ConnectionStatus,
        detail: Option<&str>,
    ) -> Result<()> {
        let detail = detail.map(lossy);
        let done = sqlx::query(
            "UPDATE connections SET status = $2, status_detail = $3, updated_at = $4 WHERE id = $1",
        )
        .bind(id.as_str())
        .bind(status.as_str())
        .bind(detail.as_deref())
        .bind(self.clock.now_ms())
        .execute(&self.pool)
        .await
        .map_err(pg_err("cannot update connection"))?;
        if done.rows_affected() == 0 {
            return Err(not_found("no such connection", id));
        }
        Ok(())
    }

    async fn delete_connection(&self, id: &ConnectionId) -> Result<()> {
        let now = self.clock.now_ms();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(pg_err("cannot delete connection"))?;
        let done = sqlx::query("DELETE FROM connections WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(pg_err("cannot delete connection"))?;
        if done.rows_affected() == 0 {
            return Err(not_found("no such connection", id));
        }
        sqlx::query(
            "UPDATE tokens SET ciphertext = NULL, version = version + 1, updated_at = $2 \
             WHERE connection = $1 AND ciphertext IS NOT NULL",
        )
        .bind(id.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(pg_err("cannot delete connection"))?;
        sqlx::query(
            "UPDATE cursors SET token = NULL, version = version + 1, updated_at = $2 \
             WHERE connection = $1 AND token IS NOT NULL",
        )
        .bind(id.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(pg_err("cannot delete connection"))?;
        tx.commit()
            .await
            .map_err(pg_err("cannot delete connection"))
    }
}

#[async_trait]
impl CursorStore for PgStore {
    async fn load_cursor(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
    ) -> Result<Option<Versioned<CursorToken>>> {
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT token, version FROM cursors \
             WHERE connection = $1 AND stream = $2 AND token IS NOT NULL",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_err("cannot read cursor"))?;
        Ok(row.map(|(token, version)| Versioned {
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
        pg_text("connection", connection.as_str())?;
        pg_text("stream", stream.as_str())?;
        pg_text("cursor", cursor.as_str())?;
        let now = self.clock.now_ms();
        let row: Option<(i64,)> = match expected {
            None => {
                sqlx::query_as(
                    "INSERT INTO cursors (connection, stream, token, version, updated_at) \
                     VALUES ($1, $2, $3, 1, $4) \
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
                sqlx::query_as(
                    "UPDATE cursors SET token = $3, version = version + 1, updated_at = $4 \
                     WHERE connection = $1 AND stream = $2 AND version = $5 AND token IS NOT NULL \
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
        .map_err(pg_err("cannot save cursor"))?;
        match row {
            Some((v,)) => Ok(to_u64(v)),
            None => Err(cursor_conflict(
                connection,
                stream,
                expected,
                self.cursor_version(connection, stream).await?,
            )),
        }
    }

    async fn reset_cursor(&self, connection: &ConnectionId, stream: &StreamId) -> Result<()> {
        sqlx::query(
            "UPDATE cursors SET token = NULL, version = version + 1, updated_at = $3 \
             WHERE connection = $1 AND stream = $2 AND token IS NOT NULL",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .bind(self.clock.now_ms())
        .execute(&self.pool)
        .await
        .map_err(pg_err("cannot reset cursor"))?;
        Ok(())
    }
}

#[async_trait]
impl RunStore for PgStore {
    async fn start_run(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        kind: RunKind,
    ) -> Result<RunId> {
        pg_text("connection", connection.as_str())?;
        pg_text("stream", stream.as_str())?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO sync_runs (connection, stream, kind, status, started_at) \
             VALUES ($1, $2, $3, 'running', $4) RETURNING id",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .bind(kind.as_str())
        .bind(self.clock.now_ms())
        .fetch_one(&self.pool)
        .await
        .map_err(pg_err("cannot record run start"))?;
        Ok(RunId(id))
    }

    async fn finish_run(&self, run: RunId, outcome: &RunOutcome) -> Result<()> {
        validate_outcome(outcome)?;
        let error = outcome.error.as_deref().map(lossy);
        let done = sqlx::query(
            "UPDATE sync_runs SET status = $2, finished_at = $3, records_read = $4, \
                 records_applied = $5, records_unchanged = $6, pages = $7, error = $8, \
                 records_rejected = $9 \
             WHERE id = $1 AND status = 'running'",
        )
        .bind(run.0)
        .bind(outcome.status.as_str())
        .bind(self.clock.now_ms())
        .bind(to_i64(outcome.records_read))
        .bind(to_i64(outcome.records_applied))
        .bind(to_i64(outcome.records_unchanged))
        .bind(to_i64(outcome.pages))
        .bind(error.as_deref())
        .bind(to_i64(outcome.records_rejected))
        .execute(&self.pool)
        .await
        .map_err(pg_err("cannot record run end"))?;
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
        let rows = match connection {
            Some(c) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM sync_runs WHERE connection = $1 ORDER BY id DESC LIMIT $2"
                )))
                .bind(c.as_str())
                .bind(limit_i64(limit))
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM sync_runs ORDER BY id DESC LIMIT $1"
                )))
                .bind(limit_i64(limit))
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(pg_err("cannot list runs"))?;
        rows.iter().map(run_from_row).collect()
    }

    async fn last_run(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
    ) -> Result<Option<SyncRun>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM sync_runs WHERE connection = $1 AND stream = $2 \
             ORDER BY id DESC LIMIT 1"
        )))
        .bind(connection.as_str())
        .bind(stream.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_err("cannot read last run"))?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn purge_runs(&self, before: i64, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        // A run with a newer one of the same (connection, stream) is never the latest. One
        // statement: the runs and their log lines go together.
        let (done,): (i64,) = sqlx::query_as(
            "WITH gone AS ( \
                 DELETE FROM sync_runs WHERE id IN ( \
                     SELECT r.id FROM sync_runs r \
                     WHERE r.status <> 'running' AND r.finished_at < $1 \
                       AND EXISTS (SELECT 1 FROM sync_runs n \
                                   WHERE n.connection = r.connection AND n.stream = r.stream \
                                     AND n.id > r.id) \
                     ORDER BY r.id LIMIT $2) \
                 RETURNING id), \
             logs AS (DELETE FROM run_logs WHERE run IN (SELECT id FROM gone)) \
             SELECT COUNT(*) FROM gone",
        )
        .bind(before)
        .bind(limit_i64(limit))
        .fetch_one(&self.pool)
        .await
        .map_err(pg_err("cannot purge sync runs"))?;
        Ok(to_u64(done))
    }

    async fn get_run(&self, run: RunId) -> Result<Option<SyncRun>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM sync_runs WHERE id = $1"
        )))
        .bind(run.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_err("cannot read run"))?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn run_stats(
        &self,
        connection: Option<&ConnectionId>,
        since: i64,
    ) -> Result<Vec<DailyRunStats>> {
        // Per connection, one range of sync_runs_by_start (connection, started_at). Byte
        // order of connections (COLLATE "C"), as the other stores.
        let filter = match connection {
            Some(c) => {
                pg_text("connection", c.as_str())?;
                "AND connection = $3"
            }
            None => "",
        };
        let query = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT connection, started_at / $2 AS day, COUNT(*), \
                     COUNT(*) FILTER (WHERE status = 'failed'), \
                     SUM(records_read)::BIGINT, SUM(records_applied)::BIGINT, \
                     SUM(records_rejected)::BIGINT \
                 FROM sync_runs WHERE started_at >= $1 {filter} \
                 GROUP BY connection, day ORDER BY connection COLLATE \"C\", day"
        )))
        .bind(since)
        .bind(DAY_MS);
        let query = match connection {
            Some(c) => query.bind(c.as_str()),
            None => query,
        };
        let rows: Vec<(String, i64, i64, i64, i64, i64, i64)> =
            query
                .fetch_all(&self.pool)
                .await
                .map_err(pg_err("cannot read run statistics"))?;
        Ok(rows
            .into_iter()
            .map(
                |(connection, day, runs, failed, read, applied, rejected)| DailyRunStats {
                    connection: ConnectionId::from(connection),
                    day: day * DAY_MS,
                    runs: to_u64(runs),
                    failed: to_u64(failed),
                    records_read: to_u64(read),
                    records_applied: to_u64(applied),
                    records_rejected: to_u64(rejected),
                },
            )
            .collect())
    }

    async fn append_run_logs(&self, run: RunId, lines: &[RunLogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut at = Vec::with_capacity(lines.len());
        let mut level = Vec::with_capacity(lines.len());
        let mut target = Vec::with_capacity(lines.len());
        let mut message = Vec::with_capacity(lines.len());
        for l in lines {
            at.push(l.at);
            level.push(l.level.as_str());
            target.push(lossy(&l.target).into_owned());
            message.push(lossy(&l.message).into_owned());
        }
        // One statement: numbered on from the run's last line, in the order given.
        sqlx::query(
            "INSERT INTO run_logs (run, seq, at, level, target, message) \
             SELECT $1, base.last + t.ord, t.at, t.level, t.target, t.message \
             FROM (SELECT COALESCE(MAX(seq), 0) AS last FROM run_logs WHERE run = $1) base, \
                  unnest($2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[]) \
                      WITH ORDINALITY AS t(at, level, target, message, ord)",
        )
        .bind(run.0)
        .bind(&at)
        .bind(&level)
        .bind(&target)
        .bind(&message)
        .execute(&self.pool)
        .await
        .map_err(pg_err("cannot append run logs"))?;
        Ok(())
    }

    async fn run_logs(
        &self,
        run: RunId,
        min_level: Option<LogLevel>,
        limit: usize,
    ) -> Result<Vec<RunLogLine>> {
        let rows: Vec<(i64, String, String, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT at, level, target, message FROM run_logs \
                 WHERE run = $1 AND {LEVEL_RANK} >= $2 ORDER BY seq LIMIT $3"
            )))
            .bind(run.0)
            .bind(level_rank(min_level))
            .bind(limit_i64(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(pg_err("cannot read run logs"))?;
        rows.into_iter()
            .map(|(at, level, target, message)| {
                Ok(RunLogLine::new(at, level.parse()?, target, message))
            })
            .collect()
    }
}

#[async_trait]
impl InboxStore for PgStore {
    async fn inbox_append(&self, event: &InboxEvent) -> Result<AppendOutcome> {
        pg_text("platform", &event.platform)?;
        pg_text("connection", event.connection.as_str())?;
        pg_text("event_id", &event.event_id)?;
        let headers = serde_json::to_string(&event.headers_json).map_err(|e| {
            Error::invalid_input("webhook headers cannot be serialized").set_source(e)
        })?;
        let row: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO inbox (platform, connection, event_id, received_at, headers, body, \
                 status, attempts, next_attempt_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7) \
             ON CONFLICT (platform, connection, event_id) DO NOTHING \
             RETURNING id",
        )
        .bind(&event.platform)
        .bind(event.connection.as_str())
        .bind(&event.event_id)
        .bind(event.received_at)
        .bind(headers)
        .bind(event.body.as_ref())
        .bind(self.clock.now_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_err("cannot append to the inbox"))?;
        Ok(match row {
            Some((id,)) => AppendOutcome::Inserted(EventId(id)),
            None => AppendOutcome::Duplicate,
        })
    }

    /// One transaction (one statement per 1,000 events), rows inserted in key order so two
    /// concurrent batches holding the same events cannot deadlock. `InvalidInput` for an
    /// event with a NUL character in its platform, connection or event id (nothing appended).
    async fn append_many(&self, events: &[InboxEvent]) -> Result<Vec<AppendOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(pg_err("cannot append to the inbox"))?;
        let out = append_inbox_rows(&mut tx, events, self.clock.now_ms()).await?;
        tx.commit()
            .await
            .map_err(pg_err("cannot append to the inbox"))?;
        Ok(out)
    }

    async fn inbox_claim(
        &self,
        worker: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedEvent>> {
        let worker = pg_text("worker", worker)?;
        let now = self.clock.now_ms();
        let until = now.saturating_add(lease_ms(lease));
        // The selection locks the rows it takes and skips rows other claimers hold, so
        // concurrent claimers never wait for each other; a row another claimer updated and
        // committed meanwhile is re-checked against the condition (its lease is then in the
        // future) and left out. Each event goes to exactly one claimer per lease.
        let rows = sqlx::query(
            "WITH due AS ( \
                 SELECT id FROM inbox \
                 WHERE status = 'pending' AND next_attempt_at <= $3 \
                   AND (lease_until IS NULL OR lease_until <= $3) \
                 ORDER BY received_at, id \
                 LIMIT $4 \
                 FOR UPDATE SKIP LOCKED) \
             UPDATE inbox SET lease_owner = $1, lease_until = $2 \
             FROM due WHERE inbox.id = due.id \
             RETURNING inbox.id, platform, connection, event_id, received_at, headers, body, \
                 attempts, lease_until, last_error",
        )
        .bind(worker)
        .bind(until)
        .bind(now)
        .bind(limit_i64(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err("cannot claim inbox events"))?;
        let mut out = rows
            .iter()
            .map(|r| {
                let (id, event, attempts) = event_from_row(r)?;
                Ok(ClaimedEvent {
                    id: EventId(id),
                    event,
                    // Failed attempts so far (claims count none), plus this one.
                    attempts: attempts.saturating_add(1),
                    lease_until: r.try_get("lease_until")?,
                    last_error: r.try_get("last_error")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
            .map_err(pg_err("cannot decode inbox events"))?;
        // RETURNING has no defined order.
        out.sort_by_key(|c| (c.event.received_at, c.id));
        Ok(out)
    }

    async fn inbox_complete(&self, id: EventId, worker: &str) -> Result<()> {
        let now = self.clock.now_ms();
        let done = sqlx::query(
            "UPDATE inbox SET status = 'done', lease_owner = NULL, lease_until = NULL, \
                 finished_at = $3 \
             WHERE id = $1 AND status = 'pending' AND lease_owner = $2 AND lease_until > $3",
        )
        .bind(id.0)
        .bind(lossy(worker).as_ref())
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(pg_err("cannot complete inbox event"))?;
        if done.rows_affected() == 0 {
            return Err(lease_lost(id, worker));
        }
        Ok(())
    }

    async fn inbox_complete_many(&self, ids: &[EventId], worker: &str) -> Result<Vec<EventId>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.clock.now_ms();
        let rows: Vec<(i64,)> = sqlx::query_as(
            "UPDATE inbox SET status = 'done', lease_owner = NULL, lease_until = NULL, \
                 finished_at = $3 \
             WHERE id = ANY($1) AND status = 'pending' AND lease_owner = $2 AND lease_until > $3 \
             RETURNING id",
        )
        .bind(ids.iter().map(|i| i.0).collect::<Vec<i64>>())
        .bind(lossy(worker).as_ref())
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err("cannot complete inbox events"))?;
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
        let now = self.clock.now_ms();
        let (status, next, finished) = match action {
            FailAction::RetryAt(at) => ("pending", Some(at), None),
            FailAction::DeadLetter => ("dead", None, Some(now)),
        };
        let done = sqlx::query(
            "UPDATE inbox SET status = $4, lease_owner = NULL, lease_until = NULL, \
                 attempts = LEAST(attempts, 9223372036854775806) + 1, last_error = $5, next_attempt_at = COALESCE($6, next_attempt_at), \
                 finished_at = $7 \
             WHERE id = $1 AND status = 'pending' AND lease_owner = $2 AND lease_until > $3",
        )
        .bind(id.0)
        .bind(lossy(worker).as_ref())
        .bind(now)
        .bind(status)
        .bind(lossy(error).as_ref())
        .bind(next)
        .bind(finished)
        .execute(&self.pool)
        .await
        .map_err(pg_err("cannot record inbox failure"))?;
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
        let now = self.clock.now_ms();
        let until = now.saturating_add(lease_ms(lease));
        let rows: Vec<(i64,)> = sqlx::query_as(
            "UPDATE inbox SET lease_until = $4 \
             WHERE id = ANY($1) AND status = 'pending' AND lease_owner = $2 AND lease_until > $3 \
             RETURNING id",
        )
        .bind(ids.iter().map(|i| i.0).collect::<Vec<i64>>())
        .bind(lossy(worker).as_ref())
        .bind(now)
        .bind(until)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err("cannot renew inbox leases"))?;
        let mut held: Vec<EventId> = rows.into_iter().map(|(id,)| EventId(id)).collect();
        held.sort_unstable();
        Ok(held)
    }

    async fn inbox_release(&self, ids: &[EventId], worker: &str) -> Result<Vec<EventId>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.clock.now_ms();
        let rows: Vec<(i64,)> = sqlx::query_as(
            "UPDATE inbox SET lease_owner = NULL, lease_until = NULL, next_attempt_at = $3 \
             WHERE id = ANY($1) AND status = 'pending' AND lease_owner = $2 AND lease_until > $3 \
             RETURNING id",
        )
        .bind(ids.iter().map(|i| i.0).collect::<Vec<i64>>())
        .bind(lossy(worker).as_ref())
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err("cannot release inbox events"))?;
        let mut released: Vec<EventId> = rows.into_iter().map(|(id,)| EventId(id)).collect();
        released.sort_unstable();
        Ok(released)
    }

    async fn purge_inbox_done(&self, before: i64, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let done = sqlx::query(
            "DELETE FROM inbox WHERE id IN ( \
                 SELECT id FROM inbox WHERE status = 'done' AND finished_at < $1 \
                 ORDER BY id LIMIT $2)",
        )
        .bind(before)
        .bind(limit_i64(limit))
        .execute(&self.pool)
        .await
        .map_err(pg_err("cannot purge done inbox events"))?;
        Ok(done.rows_affected())
    }

    async fn inbox_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(
            "SELECT id, platform, connection, event_id, received_at, headers, body, attempts, \
                 last_error, finished_at \
             FROM inbox WHERE status = 'dead' ORDER BY id LIMIT $1",
        )
        .bind(limit_i64(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err("cannot list dead letters"))?;
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
            .map_err(pg_err("cannot decode dead letters"))
    }

    async fn inbox_requeue(&self, id: EventId) -> Result<()> {
        // The event becomes due at once: wake the workers (the insert trigger does not fire).
        let done = sqlx::query(
            "WITH requeued AS ( \
                 UPDATE inbox SET status = 'pending', attempts = 0, next_attempt_at = $2, \
                     finished_at = NULL \
                 WHERE id = $1 AND status = 'dead' RETURNING id) \
             SELECT pg_notify($3, '') FROM requeued",
        )
        .bind(id.0)
        .bind(self.clock.now_ms())
        .bind(INBOX_CHANNEL)
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_err("cannot requeue inbox event"))?;
        if done.is_none() {
            return Err(not_found("no dead-lettered inbox event with this id", id));
        }
        Ok(())
    }

    async fn inbox_counts(&self) -> Result<InboxCounts> {
        let (pending, in_flight, done, dead): (i64, i64, i64, i64) = sqlx::query_as(
            // One count per state, so the backlog's (pending, dead) come from their partial
            // indexes instead of a scan of the whole history.
            "SELECT \
               (SELECT COUNT(*) FROM inbox WHERE status = 'pending' AND (lease_until IS NULL OR lease_until <= $1)), \
               (SELECT COUNT(*) FROM inbox WHERE status = 'pending' AND lease_until > $1), \
               (SELECT COUNT(*) FROM inbox WHERE status = 'done'), \
               (SELECT COUNT(*) FROM inbox WHERE status = 'dead')",
        )
        .bind(self.clock.now_ms())
        .fetch_one(&self.pool)
        .await
        .map_err(pg_err("cannot count inbox events"))?;
        Ok(InboxCounts {
            pending: to_u64(pending),
            in_flight: to_u64(in_flight),
            done: to_u64(done),
            dead: to_u64(dead),
        })
    }

    async fn inbox_backlog(&self) -> Result<Vec<ConnectionBacklog>> {
        // The backlog's rows only (the status index), never the processed history.
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT connection, \
               SUM(CASE WHEN status = 'pending' AND (lease_until IS NULL OR lease_until <= $1) THEN 1 ELSE 0 END), \
               SUM(CASE WHEN status = 'pending' AND lease_until > $1 THEN 1 ELSE 0 END), \
               SUM(CASE WHEN status = 'dead' THEN 1 ELSE 0 END) \
             FROM inbox WHERE status IN ('pending', 'dead') \
             GROUP BY connection ORDER BY connection COLLATE \"C\"",
        )
        .bind(self.clock.now_ms())
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err("cannot count the inbox backlog"))?;
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

fn reject_from_row(r: &PgRow) -> Result<StoredReject> {
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
    ) = get().map_err(pg_err("cannot decode a reject row"))?;
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
impl RejectStore for PgStore {
    async fn put_rejects(&self, connection: &ConnectionId, rejects: &[Reject]) -> Result<()> {
        if rejects.is_empty() {
            return Ok(());
        }
        pg_text("connection", connection.as_str())?;
        for r in rejects {
            pg_text("stream", r.stream.as_str())?;
        }
        let now = self.clock.now_ms();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(pg_err("cannot store rejects"))?;
        // One statement per reject: two rejects of one object in a batch update the same row
        // twice, which one multi-row upsert cannot do. Rejects are few.
        for r in rejects {
            // Rejected objects come from hostile input: a NUL in their id or parent is made
            // storable (the raw bytes, which re-drives read, are kept exactly).
            let key = super::reject_key(r);
            sqlx::query(
                "INSERT INTO rejects (connection, stream, key, stage, record_id, parent, op, \
                     version, updated_at, raw, error, attempts, first_seen_at, last_seen_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1, $12, $12) \
                 ON CONFLICT (connection, stream, key) DO UPDATE SET \
                     stage = excluded.stage, record_id = excluded.record_id, \
                     parent = excluded.parent, op = excluded.op, \
                     version = excluded.version, updated_at = excluded.updated_at, \
                     raw = excluded.raw, error = excluded.error, \
                     attempts = LEAST(rejects.attempts, 9223372036854775806) + 1, last_seen_at = excluded.last_seen_at",
            )
            .bind(connection.as_str())
            .bind(r.stream.as_str())
            .bind(lossy(&key).as_ref())
            .bind(r.stage.as_str())
            .bind(r.id.as_deref().map(lossy).as_deref())
            .bind(r.parent.as_deref().map(lossy).as_deref())
            .bind(r.op.as_str())
            .bind(r.version)
            .bind(r.updated_at)
            .bind(&r.raw[..])
            .bind(lossy(&r.error).as_ref())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(pg_err("cannot store rejects"))?;
        }
        tx.commit().await.map_err(pg_err("cannot store rejects"))?;
        Ok(())
    }

    async fn list_rejects(
        &self,
        connection: Option<&ConnectionId>,
        stream: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<StoredReject>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REJECT_COLUMNS} FROM rejects \
             WHERE ($1::text IS NULL OR connection = $1) AND ($2::text IS NULL OR stream = $2) \
             ORDER BY id LIMIT $3"
        )))
        .bind(connection.map(ConnectionId::as_str))
        .bind(stream.map(StreamId::as_str))
        .bind(limit_i64(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err("cannot list rejects"))?;
        rows.iter().map(reject_from_row).collect()
    }

    async fn count_rejects(&self, connection: Option<&ConnectionId>) -> Result<u64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM rejects WHERE ($1::text IS NULL OR connection = $1)",
        )
        .bind(connection.map(ConnectionId::as_str))
        .fetch_one(&self.pool)
        .await
        .map_err(pg_err("cannot count rejects"))?;
        Ok(to_u64(n))
    }

    async fn delete_reject(&self, id: RejectId) -> Result<()> {
        let done = sqlx::query("DELETE FROM rejects WHERE id = $1")
            .bind(id.0)
            .execute(&self.pool)
            .await
            .map_err(pg_err("cannot delete a reject"))?;
        if done.rows_affected() == 0 {
            return Err(not_found("reject", id));
        }
        Ok(())
    }

    async fn reject_failed(&self, id: RejectId, error: &str) -> Result<()> {
        let done = sqlx::query(
            "UPDATE rejects SET error = $2, attempts = LEAST(attempts, 9223372036854775806) + 1, \
             last_seen_at = $3 WHERE id = $1",
        )
        .bind(id.0)
        .bind(lossy(error).as_ref())
        .bind(self.clock.now_ms())
        .execute(&self.pool)
        .await
        .map_err(pg_err("cannot update a reject"))?;
        if done.rows_affected() == 0 {
            return Err(not_found("reject", id));
        }
        Ok(())
    }
}

const SCHEDULE_COLUMNS: &str = "connection, stream, spec, full_sync, next_due_at, lease_owner, \
     lease_until, failures, runs, last_started_at, last_finished_at, last_status, last_error";

fn schedule_from_row(r: &PgRow) -> Result<ScheduleRow> {
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
        get().map_err(pg_err("cannot decode a schedule row"))?;
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

/// Whether (connection, stream) could be stored at all: PostgreSQL text holds no NUL, so a
/// key with one names no job (lookups find nothing, as they would on SQLite).
fn storable_key(connection: &ConnectionId, stream: &StreamId) -> bool {
    !connection.as_str().contains('\0') && !stream.as_str().contains('\0')
}

/// The jobs as on SQLite (same statements, PostgreSQL syntax); claims lock the rows they take
/// with `FOR UPDATE SKIP LOCKED`. Counters saturate at `i64::MAX`. A connection, stream,
/// spec or owner with a NUL character is refused by `upsert_schedule` and `claim_schedules`
/// (`InvalidInput`); the other methods find no job for it.
#[async_trait]
impl ScheduleStore for PgStore {
    async fn upsert_schedule(&self, entry: &ScheduleEntry, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO schedules (connection, stream, spec, full_sync, next_due_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (connection, stream) DO UPDATE SET spec = excluded.spec, \
                 full_sync = excluded.full_sync, next_due_at = excluded.next_due_at, \
                 updated_at = excluded.updated_at \
             WHERE schedules.spec IS DISTINCT FROM excluded.spec \
                OR schedules.full_sync IS DISTINCT FROM excluded.full_sync",
        )
        .bind(pg_text("connection", entry.connection.as_str())?)
        .bind(pg_text("stream", entry.stream.as_str())?)
        .bind(pg_text("spec", &entry.spec)?)
        .bind(entry.full)
        .bind(entry.first_due_at)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(pg_err("cannot save a schedule"))?;
        Ok(())
    }

    async fn claim_schedules(
        &self,
        owner: &str,
        lease: Duration,
        now: i64,
        limit: usize,
    ) -> Result<Vec<ScheduleRow>> {
        let owner = pg_text("owner", owner)?;
        let until = now.saturating_add(lease_ms(lease));
        // As the inbox claim: the selection locks what it takes and skips rows another
        // claimer holds; a row claimed and committed meanwhile is re-checked and left out.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH due AS ( \
                 SELECT connection, stream FROM schedules \
                 WHERE next_due_at <= $3 AND (lease_until IS NULL OR lease_until <= $3) \
                 ORDER BY next_due_at, connection COLLATE \"C\", stream COLLATE \"C\" \
                 LIMIT $4 \
                 FOR UPDATE SKIP LOCKED) \
             UPDATE schedules SET lease_owner = $1, lease_until = $2, last_started_at = $3 \
             FROM due \
             WHERE schedules.connection = due.connection AND schedules.stream = due.stream \
               AND (schedules.lease_until IS NULL OR schedules.lease_until <= $3) \
             RETURNING {}",
            SCHEDULE_COLUMNS
                .split(", ")
                .map(|c| format!("schedules.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        )))
        .bind(owner)
        .bind(until)
        .bind(now)
        .bind(limit_i64(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err("cannot claim schedules"))?;
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
        if !storable_key(connection, stream) || owner.contains('\0') {
            return Ok(false);
        }
        let done = sqlx::query(
            "UPDATE schedules SET lease_until = $4 \
             WHERE connection = $1 AND stream = $2 AND lease_owner = $3 AND lease_until > $5",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .bind(owner)
        .bind(until)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(pg_err("cannot renew a schedule lease"))?;
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
        if !storable_key(connection, stream) || owner.contains('\0') {
            return Ok(false);
        }
        let done = sqlx::query(
            "UPDATE schedules SET lease_owner = NULL, lease_until = NULL, next_due_at = $4, \
                 last_finished_at = $5, last_status = $6, last_error = $7, \
                 runs = CASE WHEN $6 = 'cancelled' THEN runs \
                             ELSE LEAST(runs, 9223372036854775806) + 1 END, \
                 failures = CASE WHEN $6 = 'failed' THEN LEAST(failures, 9223372036854775806) + 1 \
                                 WHEN $6 = 'succeeded' THEN 0 ELSE failures END, \
                 updated_at = $5 \
             WHERE connection = $1 AND stream = $2 AND lease_owner = $3",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .bind(owner)
        .bind(outcome.next_due_at)
        .bind(now)
        .bind(outcome.status.as_str())
        .bind(outcome.error.as_deref().map(lossy))
        .execute(&self.pool)
        .await
        .map_err(pg_err("cannot record a scheduled run"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn make_schedule_due(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        now: i64,
    ) -> Result<()> {
        if !storable_key(connection, stream) {
            return Ok(());
        }
        sqlx::query(
            "UPDATE schedules SET next_due_at = LEAST(next_due_at, $3) \
             WHERE connection = $1 AND stream = $2",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(pg_err("cannot update a schedule"))?;
        Ok(())
    }

    async fn list_schedules(&self) -> Result<Vec<ScheduleRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules \
             ORDER BY connection COLLATE \"C\", stream COLLATE \"C\""
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err("cannot list schedules"))?;
        rows.iter().map(schedule_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters() {
        assert_eq!(
            pg_text("event_id", "a\0b").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(pg_text("event_id", "ab").unwrap(), "ab");
        assert_eq!(lossy("a\0b"), "a\u{FFFD}b");
        assert!(matches!(lossy("ab"), Cow::Borrowed("ab")));
    }
}
