//! `SqliteSink`: records upserted into the `records` table of the state database.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::SqlitePool;

use crate::error::{Error, ErrorKind, Result};
use bytes::Bytes;

use crate::model::{ConnectionId, Entity, RawJson, Record, StreamId};
use crate::sink::{Ack, Batch, Sink};
use crate::store::{SqliteStore, WriteGate};
use crate::webhook::unix_ms;

/// Rows per INSERT statement: 9 parameters each, well under SQLite's 32,766 limit.
const ROWS_PER_STATEMENT: usize = 100;

/// A sink into the `records` table (created by the store's migrations):
/// `records(connection, stream, id, op, version, updated_at, raw, entity, synced_at)`,
/// primary key (connection, stream, id).
///
/// # Behavior
/// - One transaction per batch: a batch is applied whole or not at all.
/// - An incoming record replaces the stored one when its version is newer; when the versions
///   are equal or either is missing, when its content (op, raw, entity, updated_at) differs. An
///   exact replay and an older version change nothing and are counted as `unchanged`; the
///   counts are exact (taken from the rows SQLite changed).
/// - Deletes are kept as tombstones (`op = 'delete'`, `raw = null`), so an older upsert
///   replayed after a delete cannot resurrect the record.
/// - `raw` holds the bytes exactly as received (no re-serialization). `entity` holds the
///   normalized entity as JSON: by default the sink [wants entities](Sink::wants_entities),
///   so records that cannot be mapped are quarantined before they get here;
///   [`SqliteSink::raw_only`] keeps raw records only (no mapping runs, `entity` is NULL).
#[derive(Clone)]
pub struct SqliteSink {
    pool: SqlitePool,
    full_sql: Arc<str>,
    entities: bool,
    gate: Option<WriteGate>,
}

impl fmt::Debug for SqliteSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteSink").finish_non_exhaustive()
    }
}

fn upsert_sql(rows: usize) -> String {
    let mut sql = String::with_capacity(200 + rows * 40);
    sql.push_str(
        "INSERT INTO records (connection, stream, id, op, version, updated_at, raw, entity, synced_at) VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?,?,?,?)");
    }
    sql.push_str(
        " ON CONFLICT (connection, stream, id) DO UPDATE SET \
           op = excluded.op, version = excluded.version, updated_at = excluded.updated_at, \
           raw = excluded.raw, entity = excluded.entity, synced_at = excluded.synced_at \
         WHERE excluded.version > records.version \
            OR ((excluded.version = records.version OR excluded.version IS NULL OR records.version IS NULL) \
                AND (excluded.op IS NOT records.op OR excluded.raw IS NOT records.raw \
                     OR excluded.entity IS NOT records.entity \
                     OR excluded.updated_at IS NOT records.updated_at))",
    );
    sql
}

impl SqliteSink {
    /// A sink writing through `pool` (whose database has the store's migrations applied).
    /// When a [`SqliteStore`] of this process writes to the same database, build the sink with
    /// [`for_store`](Self::for_store) (or give it the store's gate,
    /// [`with_write_gate`](Self::with_write_gate)), so its transactions queue with the store's.
    pub fn new(pool: SqlitePool) -> Self {
        SqliteSink {
            pool,
            full_sql: Arc::from(upsert_sql(ROWS_PER_STATEMENT)),
            entities: true,
            gate: None,
        }
    }

    /// Takes a turn at `gate` around each batch's transaction (see [`WriteGate`]).
    pub fn with_write_gate(mut self, gate: WriteGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Keeps raw records only: asks for no entities, so no mapping runs before writes.
    pub fn raw_only(mut self) -> Self {
        self.entities = false;
        self
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
            "SELECT entity FROM records WHERE connection = ?1 AND stream = ?2 AND id = ?3",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| Error::storage("cannot read an entity").set_source(e))?;
        row.and_then(|(e,)| e)
            .map(|e| serde_json::from_str::<Entity>(&e))
            .transpose()
            .map_err(|e| Error::storage("stored entity is not valid JSON").set_source(e))
    }

    /// A sink into the same database as `store`, sharing its [`WriteGate`].
    pub fn for_store(store: &SqliteStore) -> Self {
        Self::new(store.pool().clone()).with_write_gate(store.write_gate().clone())
    }

    /// The pool written through.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Every record held for (connection, stream), tombstones included, ordered by id.
    /// Loads them all into memory: meant for tests, exports and small streams.
    ///
    /// # Errors
    /// `Storage` on database errors or a row that does not decode.
    pub async fn records(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
    ) -> Result<Vec<Record>> {
        let rows = sqlx::query(
            "SELECT id, op, version, updated_at, raw, entity FROM records \
             WHERE connection = ?1 AND stream = ?2 ORDER BY id",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::storage("cannot read records").set_source(e))?;
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
}

#[async_trait]
impl Sink for SqliteSink {
    async fn write(&self, batch: Batch<'_>) -> Result<Ack> {
        if batch.records.is_empty() {
            return Ok(Ack::default());
        }
        // Encode the entities before taking the write lock; raw bytes go in as received.
        let mut encoded = Vec::with_capacity(batch.records.len());
        for (i, r) in batch.records.iter().enumerate() {
            let entity = batch
                .entity(i)
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| bad_record(&r.id, e))?;
            encoded.push(entity);
        }
        let synced_at = unix_ms(std::time::SystemTime::now());
        let err = |what: &'static str| {
            move |e: sqlx::Error| {
                Error::storage(what)
                    .with_context("stream", batch.stream)
                    .set_source(e)
            }
        };
        let _turn = match &self.gate {
            Some(gate) => Some(gate.turn().await),
            None => None,
        };
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(err("cannot begin a sink transaction"))?;
        let mut applied = 0u64;
        for (records, enc) in batch
            .records
            .chunks(ROWS_PER_STATEMENT)
            .zip(encoded.chunks(ROWS_PER_STATEMENT))
        {
            let sql: Arc<str> = if records.len() == ROWS_PER_STATEMENT {
                self.full_sql.clone()
            } else {
                Arc::from(upsert_sql(records.len()))
            };
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (r, entity) in records.iter().zip(enc) {
                q = q
                    .bind(batch.connection.as_str())
                    .bind(batch.stream.as_str())
                    .bind(r.id.as_str())
                    .bind(r.op.as_str())
                    .bind(r.version)
                    .bind(r.updated_at)
                    .bind(r.raw.as_str())
                    .bind(entity.as_deref())
                    .bind(synced_at);
            }
            let done = q
                .execute(&mut *tx)
                .await
                .map_err(err("cannot write records"))?;
            applied += done.rows_affected();
        }
        tx.commit()
            .await
            .map_err(err("cannot commit a sink transaction"))?;
        let total = batch.records.len() as u64;
        Ok(Ack::new(applied, total.saturating_sub(applied)))
    }
    fn wants_entities(&self) -> bool {
        self.entities
    }
}

fn bad_record(id: &str, e: serde_json::Error) -> Error {
    Error::new(ErrorKind::InvalidInput, "record cannot be stored as JSON")
        .with_context("id", id)
        .set_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EncryptionKey;
    use serde_json::json;

    #[tokio::test]
    async fn upsert_counts_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.db"), EncryptionKey::generate())
            .await
            .unwrap();
        let sink = SqliteSink::for_store(&store);
        let c = ConnectionId::from("c");
        let s = StreamId::from("s");
        let v1: Vec<Record> = (0..250)
            .map(|i| Record::upsert(s.clone(), format!("r{i}"), json!({"i": i})).with_version(1))
            .collect();
        fn b<'a>(c: &'a ConnectionId, s: &'a StreamId, r: &'a [Record]) -> Batch<'a> {
            Batch::new(c, s, r)
        }
        assert_eq!(sink.write(b(&c, &s, &v1)).await.unwrap(), Ack::new(250, 0));
        assert_eq!(sink.write(b(&c, &s, &v1)).await.unwrap(), Ack::new(0, 250));
        let mixed = vec![
            Record::upsert(s.clone(), "r0", json!({"i": "new"})).with_version(2),
            Record::upsert(s.clone(), "r1", json!({"i": "old"})).with_version(0),
            Record::upsert(s.clone(), "r2", json!({"i": "same-version-new-content"}))
                .with_version(1),
            Record::delete(s.clone(), "r3").with_version(5),
            Record::upsert(s.clone(), "r4", json!({"i": "four"})),
            Record::upsert(s.clone(), "fresh", json!({})),
        ];
        assert_eq!(sink.write(b(&c, &s, &mixed)).await.unwrap(), Ack::new(5, 1));
        assert_eq!(sink.write(b(&c, &s, &mixed)).await.unwrap(), Ack::new(0, 6));
        let older = vec![Record::upsert(s.clone(), "r3", json!({"back": true})).with_version(4)];
        assert_eq!(sink.write(b(&c, &s, &older)).await.unwrap(), Ack::new(0, 1));
        let (n, raw0): (i64, String) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM records), (SELECT raw FROM records WHERE id = 'r0')",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(n, 251);
        assert_eq!(raw0, r#"{"i":"new"}"#);
    }
}
