//! `MemoryConnector`: a complete connector over in-memory data, to test the engine, sinks,
//! stores and the conformance suite itself without any HTTP.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use apex_connect_core::webhook::{StandardWebhooksVerifier, WebhookSecrets};
use apex_connect_core::{
    Capabilities, Change, Connector, ConnectorInfo, CursorToken, Entity, EntityKind, Error,
    ErrorKind, Op, Page, RawJson, Record, Result, SourceRef, StreamId, StreamInfo, SyncCursor,
    VerifiedWebhook, WebhookVerifier, Webhooks, WriteAction, WriteOp, WriteReport, WriteResult,
    async_trait,
};
use serde::{Deserialize, Serialize};

/// The name of the memory connector.
pub const NAME: &str = "memory";

/// Keyset cursor of the memory connector: the last (version, id) returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryCursor {
    /// Version of the last record returned.
    pub version: i64,
    /// Id of the last record returned (tie-break).
    pub id: String,
}

impl SyncCursor for MemoryCursor {
    const KIND: &'static str = "memory";
    const VERSION: u32 = 1;
}

enum Data {
    /// Records ordered by (version, id).
    Stored(Vec<Record>),
    /// `count` records computed on the fly: record `i` has id `r{i:010}`, version `i + 1`.
    Generated { count: u64, payload_bytes: usize },
}

/// A connector whose streams live in memory. Reads are keyset-paged on (version, id), so
/// changing a record (which raises its version) makes it appear again in incremental reads,
/// exactly like a platform's "modified since" search.
#[derive(Clone)]
pub struct MemoryConnector {
    info: ConnectorInfo,
    streams: Arc<RwLock<BTreeMap<StreamId, Data>>>,
    page_size: usize,
    clock: Arc<AtomicU64>,
    verifier: Arc<StandardWebhooksVerifier>,
    reads: Arc<AtomicU64>,
}

impl fmt::Debug for MemoryConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryConnector")
            .field("streams", &self.info.capabilities.streams.len())
            .field("page_size", &self.page_size)
            .field("verifier", &self.verifier)
            .finish()
    }
}

impl MemoryConnector {
    /// A connector with the given stream names, each empty, pages of `page_size` records, and a
    /// Standard Webhooks verifier keyed with `webhook_secret`.
    pub fn new<I, S>(streams: I, page_size: usize, webhook_secret: &[u8]) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<StreamId>,
    {
        let ids: Vec<StreamId> = streams.into_iter().map(Into::into).collect();
        let caps = Capabilities::new(
            ids.iter()
                .map(|s| {
                    StreamInfo::new(s.clone(), true)
                        .with_deletes()
                        .with_replication_key("version")
                })
                .collect(),
        )
        .with_write_back();
        let map = ids
            .into_iter()
            .map(|s| (s, Data::Stored(Vec::new())))
            .collect();
        MemoryConnector {
            info: ConnectorInfo::new(NAME, "1", caps),
            streams: Arc::new(RwLock::new(map)),
            page_size: page_size.max(1),
            clock: Arc::new(AtomicU64::new(0)),
            verifier: Arc::new(StandardWebhooksVerifier::new(WebhookSecrets::single(
                webhook_secret,
            ))),
            reads: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Makes `stream` a generated stream of `count` records of about `payload_bytes` of JSON
    /// each (at most about 4 KiB), computed on the fly (memory stays flat however large `count`
    /// is).
    pub fn with_generated(
        self,
        stream: impl Into<StreamId>,
        count: u64,
        payload_bytes: usize,
    ) -> Self {
        self.streams.write().expect("poisoned").insert(
            stream.into(),
            Data::Generated {
                count,
                payload_bytes,
            },
        );
        self
    }

    /// How many pages were read so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Inserts or changes a record in `stream`, giving it the next version. Returns the version.
    pub fn put(&self, stream: &StreamId, id: &str, raw: serde_json::Value) -> i64 {
        self.apply(stream, id, Op::Upsert, raw)
    }

    /// Marks a record deleted (a tombstone with the next version). Returns the version.
    pub fn remove(&self, stream: &StreamId, id: &str) -> i64 {
        self.apply(stream, id, Op::Delete, serde_json::Value::Null)
    }

    fn apply(&self, stream: &StreamId, id: &str, op: Op, raw: serde_json::Value) -> i64 {
        let mut streams = self.streams.write().expect("poisoned");
        let data = streams
            .entry(stream.clone())
            .or_insert_with(|| Data::Stored(Vec::new()));
        let Data::Stored(records) = data else {
            panic!("cannot change a generated stream");
        };
        let version = self.clock.fetch_add(1, Ordering::SeqCst) as i64 + 1;
        records.retain(|r| r.id != id);
        let mut rec = match op {
            Op::Upsert => Record::upsert(stream.clone(), id, raw),
            Op::Delete => Record::delete(stream.clone(), id),
        };
        rec = rec.with_version(version).with_updated_at(version);
        records.push(rec);
        // versions only grow, so the vector stays sorted by (version, id)
        version
    }

    /// The current contents of `stream`: live records by id (tombstones excluded), with their version.
    pub fn snapshot(&self, stream: &StreamId) -> BTreeMap<String, (i64, serde_json::Value)> {
        let streams = self.streams.read().expect("poisoned");
        match streams.get(stream) {
            Some(Data::Stored(records)) => records
                .iter()
                .filter(|r| r.op == Op::Upsert)
                .map(|r| (r.id.clone(), (r.version.unwrap_or(0), raw_value(&r.raw))))
                .collect(),
            Some(Data::Generated {
                count,
                payload_bytes,
            }) => (0..*count)
                .map(|i| {
                    let r = generated(stream, i, *payload_bytes);
                    (r.id.clone(), (r.version.unwrap_or(0), raw_value(&r.raw)))
                })
                .collect(),
            None => BTreeMap::new(),
        }
    }

    /// A signed webhook body announcing a change of `id` in `stream` (for tests): the JSON
    /// `{"stream","id","op"}`; sign it with the connector's [`Webhooks::verifier`].
    pub fn webhook_body(stream: &StreamId, id: &str, op: Op) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"stream": stream, "id": id, "op": op}))
            .unwrap_or_default()
    }
}

fn raw_value(raw: &RawJson) -> serde_json::Value {
    raw.to_value().unwrap_or(serde_json::Value::Null)
}

fn generated(stream: &StreamId, i: u64, payload_bytes: usize) -> Record {
    /// The generated record's JSON, serialized straight to bytes (as a connector slices them
    /// out of a page): building a `serde_json::Value` first cost more than the engine's own
    /// work per record and showed up as an engine regression in the benchmark.
    #[derive(Serialize)]
    struct Generated<'a> {
        id: &'a str,
        n: u64,
        pad: &'a str,
    }
    const PADDING: &str = match std::str::from_utf8(&[b'x'; 4096]) {
        Ok(s) => s,
        Err(_) => "",
    };
    let id = format!("r{i:010}");
    let pad = &PADDING[..payload_bytes.saturating_sub(60).min(PADDING.len())];
    let raw = RawJson::to_raw(&Generated { id: &id, n: i, pad }).unwrap_or_default();
    Record::upsert(stream.clone(), id, raw)
        .with_version(i as i64 + 1)
        .with_updated_at(i as i64 + 1)
}

#[async_trait]
impl Connector for MemoryConnector {
    fn info(&self) -> &ConnectorInfo {
        &self.info
    }

    async fn check(&self) -> Result<()> {
        Ok(())
    }

    async fn read(&self, stream: &StreamId, cursor: Option<&CursorToken>) -> Result<Page> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let after = cursor.map(MemoryCursor::from_token).transpose()?;
        let streams = self.streams.read().expect("poisoned");
        let data = streams.get(stream).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, "unknown stream").with_context("stream", stream)
        })?;
        let (records, has_more) = match data {
            Data::Stored(all) => {
                let start = match &after {
                    None => 0,
                    Some(c) => all.partition_point(|r| {
                        (r.version.unwrap_or(0), r.id.as_str()) <= (c.version, c.id.as_str())
                    }),
                };
                let end = (start + self.page_size).min(all.len());
                (all[start..end].to_vec(), end < all.len())
            }
            Data::Generated {
                count,
                payload_bytes,
            } => {
                let start = after.as_ref().map_or(0, |c| c.version.max(0) as u64);
                let end = (start + self.page_size as u64).min(*count);
                let recs = (start..end)
                    .map(|i| generated(stream, i, *payload_bytes))
                    .collect();
                (recs, end < *count)
            }
        };
        let next = match records.last() {
            Some(r) => Some(
                MemoryCursor {
                    version: r.version.unwrap_or(0),
                    id: r.id.clone(),
                }
                .to_token(),
            ),
            None => Some(
                after
                    .unwrap_or(MemoryCursor {
                        version: 0,
                        id: String::new(),
                    })
                    .to_token(),
            ),
        };
        Ok(Page::new(records, next, has_more))
    }

    async fn write(&self, stream: &StreamId, ops: Vec<WriteOp>) -> Result<WriteReport> {
        let mut report = WriteReport::default();
        for op in ops {
            let current = self.snapshot(stream);
            let result = match (&op.action, &op.id) {
                (WriteAction::Create, _) => {
                    let id = format!("new{}", self.clock.load(Ordering::SeqCst) + 1);
                    self.put(stream, &id, op.fields.clone());
                    WriteResult::ok(op.key.clone(), id)
                }
                (WriteAction::Update | WriteAction::Upsert, Some(id)) => {
                    match (current.get(id), op.if_unmodified_since) {
                        (None, _) if op.action == WriteAction::Update => WriteResult::err(
                            op.key.clone(),
                            Error::new(ErrorKind::NotFound, "no such record")
                                .with_context("id", id),
                        ),
                        (Some((version, _)), Some(since)) if *version > since && !op.force => {
                            WriteResult::err(
                                op.key.clone(),
                                Error::new(ErrorKind::Conflict, "record changed since")
                                    .with_context("id", id)
                                    .with_context("version", version),
                            )
                        }
                        _ => {
                            self.put(stream, id, op.fields.clone());
                            WriteResult::ok(op.key.clone(), id.clone())
                        }
                    }
                }
                (WriteAction::Delete, Some(id)) => {
                    self.remove(stream, id);
                    WriteResult::ok(op.key.clone(), id.clone())
                }
                _ => WriteResult::err(
                    op.key.clone(),
                    Error::new(
                        ErrorKind::InvalidInput,
                        "operation needs an id or is unsupported",
                    ),
                ),
            };
            report.results.push(result);
        }
        Ok(report)
    }

    /// Records map to an entity of kind `Other(<stream>)` named by the record's `name` field;
    /// a record whose `name` is present but not a string cannot be mapped (so tests can
    /// provoke quarantine).
    fn map_entity(&self, record: &Record) -> Result<Option<Entity>> {
        if record.op == Op::Delete {
            return Ok(None);
        }
        let value = record.raw.to_value()?;
        let mut e = Entity::new(
            EntityKind::Other(record.stream.to_string()),
            SourceRef::new(NAME, record.stream.to_string(), record.id.clone()),
        );
        match value.get("name") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(n)) => e = e.with_name(n.clone()),
            Some(_) => {
                return Err(
                    Error::invalid_response("memory record `name` is not a string")
                        .with_context("id", &record.id),
                );
            }
        }
        Ok(Some(e))
    }

    fn webhooks(&self) -> Option<&dyn Webhooks> {
        Some(self)
    }
}

#[async_trait]
impl Webhooks for MemoryConnector {
    fn verifier(&self) -> &dyn WebhookVerifier {
        self.verifier.as_ref()
    }

    async fn parse(&self, webhook: &VerifiedWebhook) -> Result<Vec<Change>> {
        #[derive(Deserialize)]
        struct Body {
            stream: StreamId,
            id: String,
            op: Op,
        }
        let body: Body = serde_json::from_slice(&webhook.body).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                "webhook body is not a memory event",
            )
            .set_source(e)
        })?;
        let current = self.snapshot(&body.stream);
        let mut change = Change::new(
            body.stream.clone(),
            body.id.clone(),
            body.op,
            body.op.as_str(),
        );
        if let Some(ts) = webhook.verified.timestamp_ms {
            change = change.at(ts);
        }
        // "thin" event: fetch the object as it is now
        match current.get(&body.id) {
            Some((version, raw)) if body.op == Op::Upsert => {
                change = change.with_record(
                    Record::upsert(body.stream, body.id, raw.clone()).with_version(*version),
                );
            }
            _ => {}
        }
        Ok(vec![change])
    }
}
