//! Built-in [`Sink`] implementations: SQLite table, SQLite ledger, PostgreSQL table,
//! PostgreSQL ledger, JSONL file, channel, memory, null, and [`FanoutSink`], which writes each
//! batch to several of them.
//!
//! Every sink acknowledges a batch only once it holds it (as durably as it can), because the
//! engine commits the cursor right after the acknowledgement. The SQLite, PostgreSQL and memory sinks
//! upsert by (connection, stream, record id) and keep the highest version, so a replay after a
//! crash is counted as `unchanged` and changes nothing (effectively-once). The JSONL and channel
//! sinks pass replays on; their consumers dedupe by (connection, stream, id, version).

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::error::Result;
use crate::model::Record;
use crate::sink::{Ack, Batch, Sink};

mod channel;
mod fanout;
mod jsonl;
#[cfg(feature = "sqlite")]
mod ledger;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
mod postgres_ledger;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use channel::{ChannelSink, OwnedBatch};
pub use fanout::FanoutSink;
pub use jsonl::JsonlSink;
#[cfg(feature = "sqlite")]
pub use ledger::LedgerSink;
pub use memory::{MemorySink, SinkKey};
#[cfg(feature = "postgres")]
pub use postgres::PgSink;
#[cfg(feature = "postgres")]
pub use postgres_ledger::PgLedgerSink;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteSink;

/// One row of a ledger sink (`LedgerSink` on SQLite, `PgLedgerSink` on PostgreSQL).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
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
    /// When it was first applied, Unix milliseconds.
    pub first_applied_at: i64,
    /// When it was last applied, Unix milliseconds.
    pub last_applied_at: i64,
}

/// A sink that keeps nothing and counts what it was given (benchmarks, dry runs).
/// Every record counts as applied.
#[derive(Debug, Default)]
pub struct NullSink {
    batches: AtomicU64,
    records: AtomicU64,
}

impl NullSink {
    /// A new counting sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Batches written so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Sink for NullSink {
    async fn write(&self, batch: Batch<'_>) -> Result<Ack> {
        let n = batch.records.len() as u64;
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(n, Ordering::Relaxed);
        Ok(Ack::new(n, 0))
    }
}

/// Whether an incoming record replaces a stored one: a newer version always does; an equal
/// version, or a missing version on either side, does when the content differs (so an exact
/// replay is `unchanged`); an older version never does.
pub(crate) fn replaces(stored: &Record, incoming: &Record) -> bool {
    match (stored.version, incoming.version) {
        (Some(s), Some(i)) if i > s => true,
        (Some(s), Some(i)) if i < s => false,
        _ => {
            stored.op != incoming.op
                || stored.raw != incoming.raw
                || stored.updated_at != incoming.updated_at
        }
    }
}
