//! `FanoutSink`: one batch written to several sinks in order.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::sink::{Ack, Batch, Sink};

/// A [`Sink`] that writes each batch to several sinks, one after the other: a primary sink
/// (the records table, say) and secondary ones (an entity graph, a search index).
///
/// # Behavior
/// - Each batch goes to every sink, in the order they were added, the primary first; the next
///   sink is written only after the previous one acknowledged.
/// - The batch fails as soon as one sink fails, with that sink's error, and the sinks after
///   it are not written. The caller then retries the whole batch (the engine does not commit
///   its cursor, the workers retry the events): the sinks that already took it see a replay,
///   which idempotent sinks (every built-in upserting sink) count as unchanged. Do not put a
///   sink that is not idempotent after another one.
/// - It [wants entities](Sink::wants_entities) when any of its sinks does; a sink that does
///   not is handed the batch without them. Mapping then runs for every record, whichever sink
///   asked, and records that cannot be mapped are quarantined for all of them.
/// - The acknowledgement is the primary sink's: the counts of the secondary sinks (which may
///   count the same records differently) are dropped.
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use apex_connect_core::sinks::{FanoutSink, MemorySink, NullSink};
/// use apex_connect_core::Sink;
///
/// let records = Arc::new(MemorySink::new());
/// let index = Arc::new(MemorySink::with_entities());
/// let sink = FanoutSink::new(records).with_sink(index).with_sink(Arc::new(NullSink::new()));
/// assert_eq!(sink.len(), 3);
/// assert!(sink.wants_entities());
/// ```
#[derive(Clone)]
pub struct FanoutSink {
    sinks: Vec<Arc<dyn Sink>>,
}

impl fmt::Debug for FanoutSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FanoutSink")
            .field("sinks", &self.sinks)
            .finish()
    }
}

impl FanoutSink {
    /// A fan-out whose primary sink (written first, whose acknowledgement it returns) is
    /// `primary`.
    pub fn new(primary: Arc<dyn Sink>) -> Self {
        FanoutSink {
            sinks: vec![primary],
        }
    }

    /// Adds a sink, written after the ones already added.
    pub fn with_sink(mut self, sink: Arc<dyn Sink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// The primary sink.
    pub fn primary(&self) -> &Arc<dyn Sink> {
        &self.sinks[0]
    }

    /// Every sink, the primary first.
    pub fn sinks(&self) -> &[Arc<dyn Sink>] {
        &self.sinks
    }

    /// How many sinks (at least 1).
    pub fn len(&self) -> usize {
        self.sinks.len()
    }

    /// Always `false`: a fan-out has its primary sink at least.
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }
}

#[async_trait]
impl Sink for FanoutSink {
    async fn write(&self, batch: Batch<'_>) -> Result<Ack> {
        let mut primary = None;
        for sink in &self.sinks {
            let one = if sink.wants_entities() {
                batch
            } else {
                Batch {
                    entities: &[],
                    ..batch
                }
            };
            let ack = sink.write(one).await?;
            primary.get_or_insert(ack);
        }
        Ok(primary.unwrap_or_default())
    }

    fn wants_entities(&self) -> bool {
        self.sinks.iter().any(|s| s.wants_entities())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;
    use crate::error::Error;
    use crate::model::{ConnectionId, Entity, EntityKind, Record, SourceRef, StreamId};
    use crate::sinks::MemorySink;

    /// Fails its first `fail` writes, then counts and checks what it gets.
    #[derive(Debug, Default)]
    struct Flaky {
        fail: AtomicUsize,
        writes: AtomicUsize,
        entities_seen: AtomicUsize,
        wants: bool,
    }

    #[async_trait]
    impl Sink for Flaky {
        async fn write(&self, batch: Batch<'_>) -> Result<Ack> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.entities_seen
                .fetch_add(batch.entities.len(), Ordering::SeqCst);
            if self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(Error::storage("flaky sink down"));
            }
            // Counts differently from the primary: its ack must not leak out.
            Ok(Ack::new(0, 99))
        }
        fn wants_entities(&self) -> bool {
            self.wants
        }
    }

    fn batch_parts() -> (ConnectionId, StreamId, Vec<Record>, Vec<Option<Entity>>) {
        let s = StreamId::from("s");
        let records = vec![
            Record::upsert(s.clone(), "a", json!({"n": 1})).with_version(1),
            Record::upsert(s.clone(), "b", json!({"n": 2})).with_version(1),
        ];
        let entities = records
            .iter()
            .map(|r| {
                Some(Entity::new(
                    EntityKind::Other("s".into()),
                    SourceRef::new("test", "s", r.id.clone()),
                ))
            })
            .collect();
        (ConnectionId::from("c"), s, records, entities)
    }

    #[tokio::test]
    async fn writes_every_sink_in_order_and_acks_the_primary() {
        let primary = Arc::new(MemorySink::new());
        let second = Arc::new(Flaky {
            wants: true,
            ..Flaky::default()
        });
        let sink = FanoutSink::new(primary.clone()).with_sink(second.clone());
        assert_eq!(sink.len(), 2);
        assert!(!sink.is_empty());
        // The primary does not want entities, the second does: so does the fan-out.
        assert!(!primary.wants_entities());
        assert!(sink.wants_entities());
        let (c, s, records, entities) = batch_parts();
        let ack = sink
            .write(Batch::new(&c, &s, &records).with_entities(&entities))
            .await
            .unwrap();
        assert_eq!(ack, Ack::new(2, 0), "the primary's ack");
        assert_eq!(second.writes.load(Ordering::SeqCst), 1);
        assert_eq!(second.entities_seen.load(Ordering::SeqCst), 2);
        // A replay: unchanged in the primary, written again to the second.
        let ack = sink
            .write(Batch::new(&c, &s, &records).with_entities(&entities))
            .await
            .unwrap();
        assert_eq!(ack, Ack::new(0, 2));
        assert_eq!(second.writes.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failing_second_sink_fails_the_batch_and_the_retry_completes_it() {
        let primary = Arc::new(MemorySink::new());
        let second = Arc::new(Flaky {
            fail: AtomicUsize::new(1),
            ..Flaky::default()
        });
        let third = Arc::new(Flaky::default());
        let sink = FanoutSink::new(primary.clone())
            .with_sink(second.clone())
            .with_sink(third.clone());
        assert!(!sink.wants_entities(), "nobody wants entities");
        let (c, s, records, _) = batch_parts();
        let e = sink.write(Batch::new(&c, &s, &records)).await.unwrap_err();
        assert!(e.to_string().contains("flaky sink down"), "{e}");
        // The primary took it, the second failed, the third was never written.
        assert_eq!(primary.len(), 2);
        assert_eq!(second.writes.load(Ordering::SeqCst), 1);
        assert_eq!(third.writes.load(Ordering::SeqCst), 0);
        // The retry: a replay for the primary, a success for the others.
        let ack = sink.write(Batch::new(&c, &s, &records)).await.unwrap();
        assert_eq!(ack, Ack::new(0, 2));
        assert_eq!(primary.len(), 2);
        assert_eq!(second.writes.load(Ordering::SeqCst), 2);
        assert_eq!(third.writes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failing_primary_writes_nothing_else() {
        let primary = Arc::new(Flaky {
            fail: AtomicUsize::new(1),
            ..Flaky::default()
        });
        let second = Arc::new(MemorySink::new());
        let sink = FanoutSink::new(primary.clone()).with_sink(second.clone());
        let (c, s, records, _) = batch_parts();
        assert!(sink.write(Batch::new(&c, &s, &records)).await.is_err());
        assert_eq!(second.len(), 0);
    }

    #[tokio::test]
    async fn sinks_that_do_not_want_entities_get_none() {
        let wants = Arc::new(Flaky {
            wants: true,
            ..Flaky::default()
        });
        let not = Arc::new(Flaky::default());
        let sink = FanoutSink::new(not.clone()).with_sink(wants.clone());
        let (c, s, records, entities) = batch_parts();
        let ack = sink
            .write(Batch::new(&c, &s, &records).with_entities(&entities))
            .await
            .unwrap();
        assert_eq!(
            ack,
            Ack::new(0, 99),
            "the primary's ack, whatever it counts"
        );
        assert_eq!(not.entities_seen.load(Ordering::SeqCst), 0);
        assert_eq!(wants.entities_seen.load(Ordering::SeqCst), 2);
    }
}
