//! `PgSink`: records upserted into the `records` table of a PostgreSQL state database.

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::Row;
use sqlx::postgres::PgPool;

use crate::error::{Error, ErrorKind, Result};
use crate::model::{ConnectionId, Entity, RawJson, Record, StreamId};
use crate::sink::{Ack, Batch, Sink};
use crate::store::PgStore;
use crate::store::postgres::{pg_err, pg_text};
use crate::webhook::unix_ms;

/// Rows per statement: arrays of this many elements per parameter.
const ROWS_PER_STATEMENT: usize = 5_000;

/// The condition under which an incoming row replaces the stored one (as in `SqliteSink`).
const REPLACES: &str = "WHERE excluded.version > records.version \
    OR ((excluded.version = records.version OR excluded.version IS NULL OR records.version IS NULL) \
        AND (excluded.op IS DISTINCT FROM records.op \
             OR excluded.raw IS DISTINCT FROM records.raw \
             OR excluded.raw_text IS DISTINCT FROM records.raw_text \
             OR excluded.entity IS DISTINCT FROM records.entity \
             OR excluded.entity_text IS DISTINCT FROM records.entity_text \
             OR excluded.updated_at IS DISTINCT FROM records.updated_at))";

const SET: &str = "ON CONFLICT (connection, stream, id) DO UPDATE SET \
    op = excluded.op, version = excluded.version, updated_at = excluded.updated_at, \
    raw = excluded.raw, raw_text = excluded.raw_text, \
    entity = excluded.entity, entity_text = excluded.entity_text, \
    synced_at = excluded.synced_at ";

/// The fast statement: JSON text cast to JSONB by the server.
static FAST_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO records (connection, stream, id, op, version, updated_at, raw, raw_text, \
             entity, entity_text, synced_at) \
         SELECT $1, $2, t.id, t.op, t.version, t.updated_at, t.raw::jsonb, NULL, \
             t.entity::jsonb, NULL, $3 \
         FROM UNNEST($4::text[], $5::text[], $6::int8[], $7::int8[], $8::text[], $9::text[]) \
             AS t(id, op, version, updated_at, raw, entity) \
         {SET}{REPLACES}"
    )
});

/// The slow statement, for batches the fast one refused: JSON that JSONB cannot hold goes to
/// the `_text` columns, exactly as received.
static SAFE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO records (connection, stream, id, op, version, updated_at, raw, raw_text, \
             entity, entity_text, synced_at) \
         SELECT $1, $2, t.id, t.op, t.version, t.updated_at, j.raw, \
             CASE WHEN j.raw IS NULL THEN t.raw END, j.entity, \
             CASE WHEN j.entity IS NULL THEN t.entity END, $3 \
         FROM UNNEST($4::text[], $5::text[], $6::int8[], $7::int8[], $8::text[], $9::text[]) \
             AS t(id, op, version, updated_at, raw, entity) \
         CROSS JOIN LATERAL (SELECT apex_connect_try_jsonb(t.raw) AS raw, \
             apex_connect_try_jsonb(t.entity) AS entity) AS j \
         {SET}{REPLACES}"
    )
});

/// A sink into the `records` table of a PostgreSQL state database (created by
/// [`PgStore`]'s migrations):
/// `records(connection, stream, id, op, version, updated_at, raw jsonb, raw_text, entity jsonb,
/// entity_text, synced_at)`, primary key (connection, stream, id).
///
/// # Behavior
/// - One transaction per batch: a batch is applied whole or not at all. Rows go in as
///   arrays (`UNNEST`), up to 5,000 per statement, in id order (two writers of the same
///   records cannot deadlock).
/// - An incoming record replaces the stored one when its version is newer; when the versions
///   are equal or either is missing, when its content (op, raw, entity, updated_at) differs.
///   An exact replay and an older version change nothing and are counted as `unchanged`; the
///   counts are exact (the rows PostgreSQL changed). A record that appears twice in one batch
///   is applied in order, as if written one after the other.
/// - Deletes are kept as tombstones (`op = 'delete'`, `raw = null`), so an older upsert
///   replayed after a delete cannot resurrect the record.
/// - `raw` and `entity` are `jsonb` (queryable; JSONB keeps no whitespace or key order, and
///   of duplicate keys the last). JSON that JSONB refuses (a `\u0000` escape, a number
///   beyond `numeric`'s range) is kept as exact text in `raw_text` / `entity_text` with the
///   `jsonb` column NULL: such a batch is retried on a slower path, nothing is dropped.
/// - By default the sink [wants entities](Sink::wants_entities), so records that cannot be
///   mapped are quarantined before they get here; [`PgSink::raw_only`] stores raw records only.
///
/// # Errors
/// `InvalidInput` for a record whose id (or the batch's connection or stream) contains a NUL
/// character, which PostgreSQL text cannot hold; `Storage` (temporary) on database errors.
#[derive(Clone)]
pub struct PgSink {
    pool: PgPool,
    entities: bool,
}

impl fmt::Debug for PgSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSink")
            .field("entities", &self.entities)
            .finish_non_exhaustive()
    }
}

/// One record ready to bind.
struct PendingRow<'a> {
    id: &'a str,
    op: &'static str,
    version: Option<i64>,
    updated_at: Option<i64>,
    raw: &'a str,
    entity: Option<String>,
}

impl PgSink {
    /// A sink writing through `pool` (whose database has the store's migrations applied).
    pub fn new(pool: PgPool) -> Self {
        PgSink {
            pool,
            entities: true,
        }
    }

    /// A sink into the same database as `store`.
    pub fn for_store(store: &PgStore) -> Self {
        Self::new(store.pool().clone())
    }

    /// Keeps raw records only: asks for no entities, so no mapping runs before writes.
    pub fn raw_only(mut self) -> Self {
        self.entities = false;
        self
    }

    /// The pool written through.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The entity stored for (connection, stream, id), if any.
    ///
    /// # Errors
    /// `Storage` on database errors or a stored entity that does not decode.
    pub async fn entity(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        id: &str,
    ) -> Result<Option<Entity>> {
        let row: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT COALESCE(entity::text, entity_text) FROM records \
             WHERE connection = $1 AND stream = $2 AND id = $3",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_err("cannot read an entity"))?;
        row.and_then(|(e,)| e)
            .map(|e| serde_json::from_str::<Entity>(&e))
            .transpose()
            .map_err(|e| Error::storage("stored entity is not valid JSON").set_source(e))
    }

    /// Every record held for (connection, stream), tombstones included, ordered by id (byte
    /// order). `raw` comes back as JSONB prints it (or exactly as received, for the JSON
    /// kept in `raw_text`). Loads them all into memory: meant for tests, exports and small
    /// streams.
    ///
    /// # Errors
    /// `Storage` on database errors or a row that does not decode.
    pub async fn records(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
    ) -> Result<Vec<Record>> {
        let rows = sqlx::query(
            "SELECT id, op, version, updated_at, COALESCE(raw::text, raw_text, 'null') AS raw \
             FROM records WHERE connection = $1 AND stream = $2 ORDER BY id COLLATE \"C\"",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err("cannot read records"))?;
        rows.iter()
            .map(|row| {
                let decode =
                    |e: sqlx::Error| Error::storage("cannot decode a record row").set_source(e);
                let id: String = row.try_get("id").map_err(decode)?;
                let op: String = row.try_get("op").map_err(decode)?;
                let raw: String = row.try_get("raw").map_err(decode)?;
                let mut rec = match op.as_str() {
                    "delete" => Record::delete(stream.clone(), id.clone()),
                    _ => Record::upsert(stream.clone(), id.clone(), RawJson::null()),
                };
                rec.raw = RawJson::parse(Bytes::from(raw)).map_err(|e| {
                    Error::storage("stored record is not valid JSON")
                        .with_context("id", &id)
                        .set_source(e)
                })?;
                rec.version = row.try_get("version").map_err(decode)?;
                rec.updated_at = row.try_get("updated_at").map_err(decode)?;
                Ok(rec)
            })
            .collect()
    }

    /// Writes `rounds` (each a set of rows with distinct ids, applied in order) in one
    /// transaction with `sql`; returns the rows changed.
    async fn apply(
        &self,
        sql: &str,
        batch: &Batch<'_>,
        rounds: &[Vec<&PendingRow<'_>>],
        synced_at: i64,
    ) -> std::result::Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut applied = 0u64;
        for round in rounds {
            for chunk in round.chunks(ROWS_PER_STATEMENT) {
                let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(batch.connection.as_str())
                    .bind(batch.stream.as_str())
                    .bind(synced_at)
                    .bind(chunk.iter().map(|r| r.id).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|r| r.op).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|r| r.version).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|r| r.updated_at).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|r| r.raw).collect::<Vec<_>>())
                    .bind(
                        chunk
                            .iter()
                            .map(|r| r.entity.as_deref())
                            .collect::<Vec<_>>(),
                    )
                    .execute(&mut *tx)
                    .await?;
                applied += done.rows_affected();
            }
        }
        tx.commit().await?;
        Ok(applied)
    }
}

#[async_trait]
impl Sink for PgSink {
    async fn write(&self, batch: Batch<'_>) -> Result<Ack> {
        if batch.records.is_empty() {
            return Ok(Ack::default());
        }
        pg_text("connection", batch.connection.as_str())?;
        pg_text("stream", batch.stream.as_str())?;
        let mut rows = Vec::with_capacity(batch.records.len());
        for (i, r) in batch.records.iter().enumerate() {
            pg_text("record id", &r.id).map_err(|e| e.with_context("id", r.id.escape_debug()))?;
            let entity = batch
                .entity(i)
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| bad_record(&r.id, e))?;
            rows.push(PendingRow {
                id: &r.id,
                op: r.op.as_str(),
                version: r.version,
                updated_at: r.updated_at,
                raw: r.raw.as_str(),
                entity,
            });
        }
        // A record seen for the n-th time in this batch goes into round n: rounds run in
        // order, and within a round ids are distinct and sorted.
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
        let mut rounds: Vec<Vec<&PendingRow<'_>>> = Vec::new();
        for row in &rows {
            let n = seen.entry(row.id).or_insert(0);
            if rounds.len() <= *n {
                rounds.push(Vec::new());
            }
            rounds[*n].push(row);
            *n += 1;
        }
        for round in &mut rounds {
            round.sort_unstable_by(|a, b| a.id.cmp(b.id));
        }
        let synced_at = unix_ms(std::time::SystemTime::now());
        let applied = match self.apply(&FAST_SQL, &batch, &rounds, synced_at).await {
            Ok(n) => n,
            Err(e) if is_data_error(&e) => {
                tracing::debug!(error = %e, stream = %batch.stream,
                    "JSONB refused part of a batch; writing it on the slow path");
                self.apply(&SAFE_SQL, &batch, &rounds, synced_at)
                    .await
                    .map_err(|e| {
                        pg_err("cannot write records")(e).with_context("stream", batch.stream)
                    })?
            }
            Err(e) => {
                return Err(pg_err("cannot write records")(e).with_context("stream", batch.stream));
            }
        };
        let total = batch.records.len() as u64;
        Ok(Ack::new(applied, total.saturating_sub(applied)))
    }

    fn wants_entities(&self) -> bool {
        self.entities
    }
}

/// SQLSTATE class 22: the server refused a value (here: JSON that JSONB cannot hold).
fn is_data_error(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c.starts_with("22"))
}

fn bad_record(id: &str, e: serde_json::Error) -> Error {
    Error::new(ErrorKind::InvalidInput, "record cannot be stored as JSON")
        .with_context("id", id)
        .set_source(e)
}
