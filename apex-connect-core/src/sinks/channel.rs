//! `ChannelSink`: batches handed to a bounded tokio channel, with backpressure.

use std::fmt;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::model::{ConnectionId, Entity, Record, StreamId};
use crate::sink::{Ack, Batch, Sink};

/// A batch as received from a [`ChannelSink`]: owned records, and (in acknowledged mode) the
/// acknowledgement the sink waits for.
#[derive(Debug)]
#[non_exhaustive]
pub struct OwnedBatch {
    /// The connection the records came from.
    pub connection: ConnectionId,
    /// Their stream.
    pub stream: StreamId,
    /// The records, in order.
    pub records: Vec<Record>,
    /// Their entities (aligned with `records`) when the sink was made
    /// [`with_entities`](ChannelSink::with_entities); empty otherwise.
    pub entities: Vec<Option<Entity>>,
    ack: Option<oneshot::Sender<Result<Ack>>>,
}

impl OwnedBatch {
    /// Acknowledges the batch (in acknowledged mode the engine commits the cursor only after
    /// this). Without acknowledged mode this does nothing.
    pub fn ack(&mut self, ack: Ack) {
        if let Some(tx) = self.ack.take() {
            let _ = tx.send(Ok(ack));
        }
    }

    /// Refuses the batch: the sync run fails with `error` and the cursor stays where it was.
    pub fn fail(&mut self, error: Error) {
        if let Some(tx) = self.ack.take() {
            let _ = tx.send(Err(error));
        }
    }

    /// Whether the sender waits for [`OwnedBatch::ack`].
    pub fn needs_ack(&self) -> bool {
        self.ack.is_some()
    }
}

/// A sink that sends each batch, as an [`OwnedBatch`], into a bounded channel.
///
/// # Behavior
/// - `write` waits while the channel is full (backpressure: the sync reads no faster than the
///   receiver consumes).
/// - Created with [`ChannelSink::new`], `write` acknowledges once the batch is in the channel:
///   the receiver owns it from then on (it is lost if the process dies before the receiver
///   persisted it).
/// - Created with [`ChannelSink::acknowledged`], `write` waits until the receiver calls
///   [`OwnedBatch::ack`] (or `fail`); dropping the batch without either fails the write. Use
///   this when the receiver persists batches and the cursor must follow that.
/// - When the receiver is gone, `write` fails with `Storage`.
pub struct ChannelSink {
    tx: mpsc::Sender<OwnedBatch>,
    acknowledged: bool,
    entities: bool,
}

impl fmt::Debug for ChannelSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSink")
            .field("capacity", &self.tx.max_capacity())
            .field("acknowledged", &self.acknowledged)
            .field("entities", &self.entities)
            .finish()
    }
}

impl ChannelSink {
    /// A sink over a channel of `capacity` batches (at least 1), acknowledging on enqueue.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<OwnedBatch>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            ChannelSink {
                tx,
                acknowledged: false,
                entities: false,
            },
            rx,
        )
    }

    /// A sink whose writes wait for the receiver's [`OwnedBatch::ack`].
    pub fn acknowledged(capacity: usize) -> (Self, mpsc::Receiver<OwnedBatch>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            ChannelSink {
                tx,
                acknowledged: true,
                entities: false,
            },
            rx,
        )
    }

    /// Asks for entities: each [`OwnedBatch`] then carries the records' mapped entities
    /// (records that cannot be mapped are quarantined before they reach the channel).
    pub fn with_entities(mut self) -> Self {
        self.entities = true;
        self
    }
}

fn gone() -> Error {
    Error::storage("the channel sink's receiver is gone").permanent()
}

#[async_trait]
impl Sink for ChannelSink {
    async fn write(&self, batch: Batch<'_>) -> Result<Ack> {
        let n = batch.records.len() as u64;
        let (ack_tx, ack_rx) = if self.acknowledged {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        let owned = OwnedBatch {
            connection: batch.connection.clone(),
            stream: batch.stream.clone(),
            records: batch.records.to_vec(),
            entities: batch.entities.to_vec(),
            ack: ack_tx,
        };
        self.tx.send(owned).await.map_err(|_| gone())?;
        match ack_rx {
            None => Ok(Ack::new(n, 0)),
            Some(rx) => rx.await.map_err(|_| {
                Error::storage(
                    "the channel sink's receiver dropped a batch without acknowledging it",
                )
            })?,
        }
    }
    fn wants_entities(&self) -> bool {
        self.entities
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backpressure_and_acks() {
        let c = ConnectionId::from("c");
        let s = StreamId::from("s");
        let recs = vec![Record::upsert(s.clone(), "a", serde_json::json!({}))];
        let b = Batch::new(&c, &s, &recs);
        let (sink, mut rx) = ChannelSink::new(1);
        assert_eq!(sink.write(b).await.unwrap(), Ack::new(1, 0));
        // channel full: the second write waits
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(50), sink.write(b)).await;
        assert!(blocked.is_err());
        let got = rx.recv().await.unwrap();
        assert_eq!(got.records.len(), 1);
        assert!(!got.needs_ack());

        let (sink, mut rx) = ChannelSink::acknowledged(4);
        let recv = tokio::spawn(async move {
            let mut first = rx.recv().await.unwrap();
            first.ack(Ack::new(1, 0));
            let second = rx.recv().await.unwrap();
            drop(second);
        });
        assert_eq!(sink.write(b).await.unwrap(), Ack::new(1, 0));
        assert!(sink.write(b).await.is_err());
        recv.await.unwrap();
        assert!(sink.write(b).await.is_err(), "receiver gone");
    }
}
