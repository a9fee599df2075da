//! `MemorySink`: records in a `BTreeMap`, highest version wins, applies counted per record.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::replaces;
use crate::error::{Error, Result};
use crate::model::{ConnectionId, Entity, Op, Record, StreamId};
use crate::sink::{Ack, Batch, Sink};

/// The key of a record in a [`MemorySink`]: (connection, stream, record id).
pub type SinkKey = (ConnectionId, StreamId, String);

#[derive(Default)]
struct Inner {
    records: BTreeMap<SinkKey, Record>,
    /// The entity of each record, when the sink keeps entities.
    entities: BTreeMap<SinkKey, Entity>,
    /// How many times each (record, version) was applied: more than once is a duplicate upsert.
    applies: BTreeMap<(SinkKey, Option<i64>), u64>,
}

/// A sink that keeps records in memory, by (connection, stream, id), keeping the highest
/// version (deletes kept as tombstones). It counts how many times each (record, version) was
/// applied, so tests can assert "no duplicate upserts" after crashes and replays.
/// Made with [`MemorySink::with_entities`], it also keeps each record's entity (and so asks
/// for them: [`Sink::wants_entities`]).
#[derive(Default)]
pub struct MemorySink {
    inner: Mutex<Inner>,
    entities: bool,
}

impl fmt::Debug for MemorySink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.inner.lock().map(|i| i.records.len()).unwrap_or(0);
        write!(f, "MemorySink({n} records)")
    }
}

impl MemorySink {
    /// An empty sink that keeps records only.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty sink that keeps records and their entities.
    pub fn with_entities() -> Self {
        MemorySink {
            entities: true,
            ..Self::default()
        }
    }

    /// The entity held for (connection, stream, id), when the sink keeps entities.
    pub fn entity(&self, connection: &ConnectionId, stream: &StreamId, id: &str) -> Option<Entity> {
        let inner = self.inner.lock().ok()?;
        inner
            .entities
            .get(&(connection.clone(), stream.clone(), id.to_string()))
            .cloned()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| Error::storage("memory sink lock poisoned by a panic"))
    }

    /// Applies a batch (the body of [`Sink::write`], usable synchronously).
    ///
    /// # Errors
    /// `Storage` if the lock was poisoned.
    pub fn apply(&self, batch: Batch<'_>) -> Result<Ack> {
        let mut inner = self.lock()?;
        let mut ack = Ack::default();
        for (i, r) in batch.records.iter().enumerate() {
            let key = (batch.connection.clone(), batch.stream.clone(), r.id.clone());
            let apply = inner.records.get(&key).is_none_or(|s| replaces(s, r));
            if apply {
                *inner.applies.entry((key.clone(), r.version)).or_default() += 1;
                match batch.entity(i) {
                    Some(e) if self.entities => {
                        inner.entities.insert(key.clone(), e.clone());
                    }
                    _ => {
                        inner.entities.remove(&key);
                    }
                }
                inner.records.insert(key, r.clone());
                ack.applied += 1;
            } else {
                ack.unchanged += 1;
            }
        }
        Ok(ack)
    }

    /// Every record held (tombstones included), by key.
    pub fn all(&self) -> BTreeMap<SinkKey, Record> {
        self.inner
            .lock()
            .map(|i| i.records.clone())
            .unwrap_or_default()
    }

    /// The live records (not deleted) of (connection, stream): id -> (version, raw JSON), the
    /// shape of `MemoryConnector::snapshot` in the testkit.
    pub fn live(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
    ) -> BTreeMap<String, (i64, serde_json::Value)> {
        let Ok(inner) = self.inner.lock() else {
            return BTreeMap::new();
        };
        inner
            .records
            .iter()
            .filter(|((c, s, _), r)| c == connection && s == stream && r.op == Op::Upsert)
            .map(|((_, _, id), r)| {
                let raw = r.raw.to_value().unwrap_or(serde_json::Value::Null);
                (id.clone(), (r.version.unwrap_or(0), raw))
            })
            .collect()
    }

    /// Number of records held (tombstones included).
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.records.len()).unwrap_or(0)
    }

    /// Whether the sink holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times `id` was applied, over all its versions.
    pub fn apply_count(&self, connection: &ConnectionId, stream: &StreamId, id: &str) -> u64 {
        let Ok(inner) = self.inner.lock() else {
            return 0;
        };
        inner
            .applies
            .iter()
            .filter(|(((c, s, i), _), _)| c == connection && s == stream && i == id)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Total applies over all records and versions.
    pub fn total_applies(&self) -> u64 {
        self.inner
            .lock()
            .map(|i| i.applies.values().sum())
            .unwrap_or(0)
    }

    /// The (record, version) pairs applied more than once: empty when every upsert happened
    /// exactly once.
    pub fn duplicate_applies(&self) -> Vec<(SinkKey, Option<i64>, u64)> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        inner
            .applies
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|((k, v), n)| (k.clone(), *v, *n))
            .collect()
    }
}

#[async_trait]
impl Sink for MemorySink {
    async fn write(&self, batch: Batch<'_>) -> Result<Ack> {
        self.apply(batch)
    }
    fn wants_entities(&self) -> bool {
        self.entities
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn highest_version_wins_and_replays_are_unchanged() {
        let sink = MemorySink::new();
        let c = ConnectionId::from("c");
        let s = StreamId::from("s");
        let v1 = Record::upsert(s.clone(), "a", json!({"n": 1})).with_version(1);
        let v2 = Record::upsert(s.clone(), "a", json!({"n": 2})).with_version(2);
        let batch = |r: &[Record]| -> Ack { sink.apply(Batch::new(&c, &s, r)).unwrap() };
        assert_eq!(batch(std::slice::from_ref(&v1)), Ack::new(1, 0));
        assert_eq!(batch(std::slice::from_ref(&v1)), Ack::new(0, 1));
        assert_eq!(batch(std::slice::from_ref(&v2)), Ack::new(1, 0));
        assert_eq!(batch(std::slice::from_ref(&v1)), Ack::new(0, 1));
        assert_eq!(sink.live(&c, &s)["a"], (2, json!({"n": 2})));
        assert_eq!(sink.apply_count(&c, &s, "a"), 2);
        assert!(sink.duplicate_applies().is_empty());
        let del = Record::delete(s.clone(), "a").with_version(3);
        assert_eq!(batch(&[del]), Ack::new(1, 0));
        assert!(sink.live(&c, &s).is_empty());
        assert_eq!(sink.len(), 1);
    }
}
