//! `LedgerSink`: records in the `sink_ledger` table, with a count of applications per record.

use std::fmt;

use apex_connect_core::webhook::unix_ms;
use apex_connect_core::{Ack, Batch, Error, Result, Sink, async_trait};
use sqlx::sqlite::SqlitePool;

/// A SQLite sink that counts, per (connection, stream, record id), how many times it actually
/// applied a change (`applies`), and when first and last.
///
/// # Behavior
/// - A record is applied when it is new, when its version is higher than the stored one, or
///   (when either has no version) when its op or content differs: the same rule as
///   [`apex_connect_core::SqliteSink`]. A replay, or an older version, changes nothing and
///   does not count.
/// - One transaction per batch.
///
/// So `applies = 1` for a record written by one event, however many times the event was
/// redelivered or reprocessed after a crash: that is what "exactly once at the sink" means here.
#[derive(Clone)]
pub struct LedgerSink {
    pool: SqlitePool,
}

impl fmt::Debug for LedgerSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LedgerSink")
    }
}

/// One ledger row.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LedgerEntry {
    /// The record id.
    pub id: String,
    /// `upsert` or `delete`.
    pub op: String,
    /// The stored version.
    pub version: Option<i64>,
    /// How many times a change was applied.
    pub applies: i64,
    /// When it was last applied, Unix milliseconds.
    pub last_applied_at: i64,
}

impl LedgerSink {
    /// A ledger in a database migrated by [`crate::migrate`].
    pub fn new(pool: SqlitePool) -> Self {
        LedgerSink { pool }
    }

    /// Every entry of (connection, stream), by id.
    ///
    /// # Errors
    /// `Storage` on database errors.
    pub async fn entries(&self, connection: &str, stream: &str) -> Result<Vec<LedgerEntry>> {
        let rows: Vec<(String, String, Option<i64>, i64, i64)> = sqlx::query_as(
            "SELECT id, op, version, applies, last_applied_at FROM sink_ledger \
             WHERE connection = ?1 AND stream = ?2 ORDER BY id",
        )
        .bind(connection)
        .bind(stream)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::storage("cannot read the ledger").set_source(e))?;
        Ok(rows
            .into_iter()
            .map(|(id, op, version, applies, last_applied_at)| LedgerEntry {
                id,
                op,
                version,
                applies,
                last_applied_at,
            })
            .collect())
    }
}

#[async_trait]
impl Sink for LedgerSink {
    async fn write(&self, batch: Batch<'_>) -> Result<Ack> {
        let err = |what: &'static str| move |e: sqlx::Error| Error::storage(what).set_source(e);
        let now = unix_ms(std::time::SystemTime::now());
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(err("cannot begin a ledger transaction"))?;
        let mut applied = 0u64;
        for r in batch.records {
            let raw = serde_json::to_string(&r.raw).map_err(|e| {
                Error::invalid_input("record cannot be stored as JSON").set_source(e)
            })?;
            let done = sqlx::query(
                "INSERT INTO sink_ledger (connection, stream, id, op, version, raw, applies, \
                     first_applied_at, last_applied_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?7) \
                 ON CONFLICT (connection, stream, id) DO UPDATE SET op = excluded.op, \
                     version = excluded.version, raw = excluded.raw, \
                     applies = sink_ledger.applies + 1, last_applied_at = excluded.last_applied_at \
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
            .bind(raw)
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
