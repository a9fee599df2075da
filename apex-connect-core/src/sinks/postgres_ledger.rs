//! `PgLedgerSink`: records in the `sink_ledger` table of a PostgreSQL state database, with a
//! count of applications per record.

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use sqlx::postgres::PgPool;

use crate::error::Result;
use crate::model::{ConnectionId, StreamId};
use crate::sink::{Ack, Batch, Sink};
use crate::sinks::LedgerEntry;
use crate::store::PgStore;
use crate::store::postgres::{pg_err, pg_text};
use crate::webhook::unix_ms;

/// Rows per statement: arrays of this many elements per parameter.
const ROWS_PER_STATEMENT: usize = 5_000;

/// One statement for a set of rows with distinct ids; the condition is `LedgerSink`'s.
const UPSERT_SQL: &str = "INSERT INTO sink_ledger (connection, stream, id, op, version, raw, \
         applies, first_applied_at, last_applied_at) \
     SELECT $1, $2, t.id, t.op, t.version, t.raw, 1, $3, $3 \
     FROM UNNEST($4::text[], $5::text[], $6::int8[], $7::text[]) AS t(id, op, version, raw) \
     ON CONFLICT (connection, stream, id) DO UPDATE SET op = excluded.op, \
         version = excluded.version, raw = excluded.raw, \
         applies = LEAST(sink_ledger.applies, 9223372036854775806) + 1, \
         last_applied_at = excluded.last_applied_at \
     WHERE excluded.version > sink_ledger.version \
        OR ((excluded.version = sink_ledger.version OR excluded.version IS NULL \
             OR sink_ledger.version IS NULL) \
            AND (excluded.op IS DISTINCT FROM sink_ledger.op \
                 OR excluded.raw IS DISTINCT FROM sink_ledger.raw))";

/// The PostgreSQL twin of `LedgerSink`: counts, per (connection, stream, record id), how many
/// times it actually applied a change (`applies`), and when first and last. Open it with
/// `store::open(..).sink(SinkKind::Ledger)` or [`PgLedgerSink::for_store`].
///
/// # Behavior
/// The same as `LedgerSink` on SQLite:
/// - A record is applied when it is new, when its version is higher than the stored one, or
///   (when either has no version, or they are equal) when its op or content differs. A
///   replay, or an older version, changes nothing and does not count.
/// - `raw` holds the JSON text exactly as received (a `text` column, compared byte for byte);
///   no entities are kept (it does not ask for them).
/// - One transaction per batch; a record that appears twice in a batch is applied in order,
///   as if written one after the other. Rows go in as arrays (`UNNEST`), up to 5,000 per
///   statement, in id order (two writers of the same records cannot deadlock).
/// - `applies` saturates at `i64::MAX`.
///
/// # Errors
/// `InvalidInput` for a NUL character in a record id, its JSON text, or the batch's
/// connection or stream (PostgreSQL text cannot hold one; nothing of the batch is written);
/// `Storage` (temporary) on database errors.
#[derive(Clone)]
pub struct PgLedgerSink {
    pool: PgPool,
}

impl fmt::Debug for PgLedgerSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PgLedgerSink")
    }
}

/// One record ready to bind.
struct PendingRow<'a> {
    id: &'a str,
    op: &'static str,
    version: Option<i64>,
    raw: &'a str,
}

impl PgLedgerSink {
    /// A ledger writing through `pool` (whose database has the store's migrations applied).
    pub fn new(pool: PgPool) -> Self {
        PgLedgerSink { pool }
    }

    /// A ledger in the database of `store` (its migrations create the table).
    pub fn for_store(store: &PgStore) -> Self {
        Self::new(store.pool().clone())
    }

    /// Every entry of (connection, stream), by id (byte order).
    ///
    /// # Errors
    /// `Storage` on database errors.
    pub async fn entries(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
    ) -> Result<Vec<LedgerEntry>> {
        if connection.as_str().contains('\0') || stream.as_str().contains('\0') {
            return Ok(Vec::new());
        }
        type Row = (String, String, Option<i64>, i64, i64, i64);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, op, version, applies, first_applied_at, last_applied_at FROM sink_ledger \
             WHERE connection = $1 AND stream = $2 ORDER BY id COLLATE \"C\"",
        )
        .bind(connection.as_str())
        .bind(stream.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(pg_err("cannot read the ledger"))?;
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
impl Sink for PgLedgerSink {
    async fn write(&self, batch: Batch<'_>) -> Result<Ack> {
        if batch.records.is_empty() {
            return Ok(Ack::default());
        }
        pg_text("connection", batch.connection.as_str())?;
        pg_text("stream", batch.stream.as_str())?;
        let mut rows = Vec::with_capacity(batch.records.len());
        for r in batch.records {
            pg_text("record id", &r.id).map_err(|e| e.with_context("id", r.id.escape_debug()))?;
            let raw = pg_text("record JSON", r.raw.as_str())
                .map_err(|e| e.with_context("id", r.id.escape_debug()))?;
            rows.push(PendingRow {
                id: &r.id,
                op: r.op.as_str(),
                version: r.version,
                raw,
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
            if let Some(round) = rounds.get_mut(*n) {
                round.push(row);
            }
            *n = n.saturating_add(1);
        }
        for round in &mut rounds {
            round.sort_unstable_by(|a, b| a.id.cmp(b.id));
        }
        let now = unix_ms(std::time::SystemTime::now());
        let err = |e: sqlx::Error| {
            pg_err("cannot write the ledger")(e).with_context("stream", batch.stream)
        };
        let mut tx = self.pool.begin().await.map_err(err)?;
        let mut applied = 0u64;
        for round in &rounds {
            for chunk in round.chunks(ROWS_PER_STATEMENT) {
                let done = sqlx::query(UPSERT_SQL)
                    .bind(batch.connection.as_str())
                    .bind(batch.stream.as_str())
                    .bind(now)
                    .bind(chunk.iter().map(|r| r.id).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|r| r.op).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|r| r.version).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|r| r.raw).collect::<Vec<_>>())
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
                applied = applied.saturating_add(done.rows_affected());
            }
        }
        tx.commit().await.map_err(err)?;
        let total = u64::try_from(batch.records.len()).unwrap_or(u64::MAX);
        Ok(Ack::new(applied, total.saturating_sub(applied)))
    }
}
