//! Where records go: the `Sink` trait.

use std::fmt;

use async_trait::async_trait;

use crate::error::Result;
use crate::model::{ConnectionId, Entity, Record, StreamId};

/// A batch of records of one connection and stream, handed to [`Sink::write`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Batch<'a> {
    /// The connection the records came from.
    pub connection: &'a ConnectionId,
    /// Their stream.
    pub stream: &'a StreamId,
    /// The records, in order.
    pub records: &'a [Record],
    /// The records' entities, aligned with `records`, when the sink
    /// [wants entities](Sink::wants_entities); empty otherwise.
    pub entities: &'a [Option<Entity>],
}

impl<'a> Batch<'a> {
    /// A batch of `records` without entities.
    pub fn new(connection: &'a ConnectionId, stream: &'a StreamId, records: &'a [Record]) -> Self {
        Batch {
            connection,
            stream,
            records,
            entities: &[],
        }
    }

    /// Adds the entities (aligned with the records).
    pub fn with_entities(mut self, entities: &'a [Option<Entity>]) -> Self {
        self.entities = entities;
        self
    }

    /// The entity of the `i`-th record, when mapped.
    pub fn entity(&self, i: usize) -> Option<&'a Entity> {
        self.entities.get(i).and_then(Option::as_ref)
    }
}

/// What a sink did with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ack {
    /// Records inserted or updated.
    pub applied: u64,
    /// Records skipped because the sink already held the same or a newer version
    /// (a replay after a crash).
    pub unchanged: u64,
}

impl Ack {
    /// An ack of `applied` records and `unchanged` ones.
    pub fn new(applied: u64, unchanged: u64) -> Self {
        Ack { applied, unchanged }
    }
}

impl std::ops::AddAssign for Ack {
    fn add_assign(&mut self, rhs: Ack) {
        self.applied += rhs.applied;
        self.unchanged += rhs.unchanged;
    }
}

/// A destination for records.
///
/// # Behavior
/// - When `write` returns `Ok`, the batch is durable (as durable as the sink is): the engine
///   commits the cursor after it, so a sink that acknowledges early can lose data.
/// - Writing the same records again (a replay after a crash) leaves the sink as it was:
///   sinks upsert by (connection, stream, record id) and keep the highest version.
/// - A failed `write` may have applied part of the batch; the replay fixes it up.
#[async_trait]
pub trait Sink: Send + Sync + fmt::Debug {
    /// Writes a batch durably.
    ///
    /// # Errors
    /// `Storage` (temporary) on I/O failure; `InvalidInput` for a record the sink cannot hold.
    async fn write(&self, batch: Batch<'_>) -> Result<Ack>;

    /// Whether the sink stores normalized entities: then the engine and the webhook workers
    /// map each record ([`crate::Connector::map_entity`]) before writing, and quarantine the
    /// records that cannot be mapped. Default `false`: records go through as raw bytes and no
    /// mapping runs.
    fn wants_entities(&self) -> bool {
        false
    }
}

#[async_trait]
impl<S: Sink + ?Sized> Sink for std::sync::Arc<S> {
    async fn write(&self, batch: Batch<'_>) -> Result<Ack> {
        (**self).write(batch).await
    }
    fn wants_entities(&self) -> bool {
        (**self).wants_entities()
    }
}
