//! `LedgerSink`: records in the `sink_ledger` table, with a count of applications per record.

use std::fmt;

use async_trait::async_trait;
use sqlx::sqlite::SqlitePool;

use crate::error::{Error, Result};
use crate::model::{ConnectionId, StreamId};
use crate::sink::{Ack, Batch, Sink};
use crate::sinks::LedgerEntry;
use crate::store::{SqliteStore, WriteGate};
use crate::webhook::unix_ms;

/// A SQLite sink that counts, per (connection, stream, record id), how many times it actually
/// applied a change (`applies`), and when first and last. Open it with
/// `store::open(..).sink(SinkKind::Ledger)` or [`LedgerSink::for_store`].
///
/// # Behavior
/// - A record is applied when it is new, when its version is higher than the stored one, or
///   (when either has no version) when its op or content differs: the same rule as
///   [`crate::SqliteSink`]. A replay, or an older version, changes nothing and does not count.
/// - `raw` holds the bytes as received; no entities are kept (it does not ask for them).
/// - One transaction per batch.
///
/// So `applies = 1` for a record written by one event, however many times the event was
/// redelivered or reprocessed after a crash: that is what "exactly once at the sink" means.
#[derive(Clone)]
pub struct LedgerSink {
    pool: SqlitePool,
    gate: WriteGate,
}

impl fmt::Debug for LedgerSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LedgerSink")
    }
}

impl LedgerSink {
    /// A ledger in the database of `store` (its migrations create the table), sharing the
    /// store's [`WriteGate`].
    pub fn for_store(store: &SqliteStore) -> Self {
        LedgerSink {
            pool: store.pool().clone(),
            gate: store.write_gate().clone(),
        }
    }

    /// Every entry of (connection, stream), by id.
    ///
    /// # Errors
    /// `Storage` on database errors.
    pub async fn entries(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
    ) -> Result<Vec<LedgerEntry>> {
        type Row = (String, String, Option<i64>, i64, i64, i64);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, op, version, applies, first_applied_at, last_applied_at FROM sink_ledger \
             WHERE connection = ?1 AND stream = ?2 ORDER BY id",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::storage("cannot read the ledger").set_source(e))?;
        Ok(rows
            .into_iter()
            .map(
                |(id, op, version, applies, first_applied_at, last_applied_at)| LedgerEntry {
                    id,
                    op,
                    version,
                    applies,
                    first_applied_at,
                    last_applied_at,
                },
            )
            .collect())
    }
}

#[async_trait]
impl Sink for LedgerSink {
    async fn write(&self, batch: Batch<'_>) -> Result<Ack> {
        let err = |what: &'static str| move |e: sqlx::Error| Error::storage(what).set_source(e);
        let now = unix_ms(std::time::SystemTime::now());
        let _turn = self.gate.turn().await;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(err("cannot begin a ledger transaction"))?;
        let mut applied = 0u64;
        for r in batch.records {
            let done = sqlx::query(
                "INSERT INTO sink_ledger (connection, stream, id, op, version, raw, applies, \
                     first_applied_at, last_applied_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?7) \
                 ON CONFLICT (connection, stream, id) DO UPDATE SET op = excluded.op, \
                     version = excluded.version, raw = excluded.raw, \
                     applies = MIN(sink_ledger.applies, 9223372036854775806) + 1, last_applied_at = excluded.last_applied_at \
                 WHERE excluded.version > sink_ledger.version \
                    OR ((excluded.version = sink_ledger.version OR excluded.version IS NULL \
                         OR sink_ledger.version IS NULL) \
                        AND (excluded.op IS NOT sink_ledger.op OR excluded.raw IS NOT sink_ledger.raw))",
            )
            .bind(batch.connection.as_str())
            .bind(batch.stream.as_str())
            .bind(&r.id)
            .bind(r.op.as_str())
            .bind(r.version)
            .bind(r.raw.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(err("cannot write the ledger"))?;
            applied += done.rows_affected();
        }
        tx.commit().await.map_err(err("cannot commit the ledger"))?;
        let total = batch.records.len() as u64;
        Ok(Ack::new(applied, total.saturating_sub(applied)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Record;
    use crate::store::EncryptionKey;
    use serde_json::json;

    #[tokio::test]
    async fn counts_each_application_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.db"), EncryptionKey::generate())
            .await
            .unwrap();
        let sink = LedgerSink::for_store(&store);
        let (c, s) = (ConnectionId::from("c"), StreamId::from("s"));
        let v1 = vec![
            Record::upsert(s.clone(), "a", json!({"n": 1})).with_version(1),
            Record::delete(s.clone(), "b").with_version(1),
        ];
        assert_eq!(
            sink.write(Batch::new(&c, &s, &v1)).await.unwrap(),
            Ack::new(2, 0)
        );
        // A replay and an older version change nothing.
        assert_eq!(
            sink.write(Batch::new(&c, &s, &v1)).await.unwrap(),
            Ack::new(0, 2)
        );
        let old = vec![Record::upsert(s.clone(), "a", json!({"n": 0})).with_version(0)];
        assert_eq!(
            sink.write(Batch::new(&c, &s, &old)).await.unwrap(),
            Ack::new(0, 1)
        );
        let v2 = vec![Record::upsert(s.clone(), "a", json!({"n": 2})).with_version(2)];
        sink.write(Batch::new(&c, &s, &v2)).await.unwrap();
        let e = sink.entries(&c, &s).await.unwrap();
        assert_eq!(
            e.iter()
                .map(|e| (e.id.as_str(), e.op.as_str(), e.version, e.applies))
                .collect::<Vec<_>>(),
            [("a", "upsert", Some(2), 2), ("b", "delete", Some(1), 1)]
        );
    }
}
