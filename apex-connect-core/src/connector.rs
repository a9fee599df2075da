//! The `Connector` trait: one platform account, read page by page, written back, pushed to.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use sha2::{Digest, Sha256};

use crate::cursor::CursorToken;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{Entity, Op, Page, RawJson, Record, StreamId};
use crate::webhook::{Verified, VerifiedWebhook, WebhookError, WebhookReply, WebhookVerifier};

/// What a connector can do. The conformance suite runs only the behaviours claimed here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The streams the connector reads.
    pub streams: Vec<StreamInfo>,
    /// Whether [`Connector::write`] is implemented for at least one stream.
    pub write_back: bool,
    /// Whether the connector authenticates with refreshable OAuth tokens.
    pub oauth_refresh: bool,
}

impl Capabilities {
    /// Capabilities with these streams and nothing else.
    pub fn new(streams: Vec<StreamInfo>) -> Self {
        Capabilities {
            streams,
            ..Default::default()
        }
    }

    /// Claims write-back.
    pub fn with_write_back(mut self) -> Self {
        self.write_back = true;
        self
    }

    /// Claims refreshable OAuth tokens.
    pub fn with_oauth_refresh(mut self) -> Self {
        self.oauth_refresh = true;
        self
    }
}

/// One stream a connector offers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamInfo {
    /// Its name.
    pub id: StreamId,
    /// Whether reading from a stored cursor returns only what changed since (otherwise every
    /// sync is a full read).
    pub incremental: bool,
    /// Whether deletions are reported as [`Op::Delete`] records.
    pub deletes: bool,
    /// The JSON field names that form the record's primary key (for Singer, SQL sinks).
    pub key: Vec<Cow<'static, str>>,
    /// The field of the record whose value moves the incremental cursor (`updated_at`,
    /// `lastmodifieddate`, `SystemModstamp`), when the stream is incremental.
    pub replication_key: Option<Cow<'static, str>>,
}

impl StreamInfo {
    /// A stream keyed by `id`.
    pub fn new(id: impl Into<StreamId>, incremental: bool) -> Self {
        StreamInfo {
            id: id.into(),
            incremental,
            deletes: false,
            key: vec![Cow::Borrowed("id")],
            replication_key: None,
        }
    }

    /// Sets the primary key fields.
    pub fn with_key<I, S>(mut self, key: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<Cow<'static, str>>,
    {
        self.key = key.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the replication key (the field whose value moves the incremental cursor).
    pub fn with_replication_key(mut self, field: impl Into<Cow<'static, str>>) -> Self {
        self.replication_key = Some(field.into());
        self
    }

    /// Marks the stream as reporting deletes.
    pub fn with_deletes(mut self) -> Self {
        self.deletes = true;
        self
    }
}

/// Describes a connector.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectorInfo {
    /// The platform name, e.g. `"frontapp"`; also the crate's `NAME` constant.
    pub name: Cow<'static, str>,
    /// The platform API version the connector speaks.
    pub api_version: Cow<'static, str>,
    /// What it can do.
    pub capabilities: Capabilities,
}

impl ConnectorInfo {
    /// Info for `name` speaking `api_version` with `capabilities`.
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        api_version: impl Into<Cow<'static, str>>,
        capabilities: Capabilities,
    ) -> Self {
        ConnectorInfo {
            name: name.into(),
            api_version: api_version.into(),
            capabilities,
        }
    }

    /// The stream named `id`, if the connector has it.
    pub fn stream(&self, id: &StreamId) -> Option<&StreamInfo> {
        self.capabilities.streams.iter().find(|s| &s.id == id)
    }
}

/// A change pushed by the platform (a webhook event), in terms of records.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Change {
    /// The stream the changed object belongs to.
    pub stream: StreamId,
    /// The object's id.
    pub id: String,
    /// Upsert or delete.
    pub op: Op,
    /// The platform's event type (`"tag_added"`, `"contact.propertyChange"`).
    pub event_type: String,
    /// When the change happened at the source, in Unix milliseconds, when the platform says.
    /// Workers apply changes of one object in this order.
    pub occurred_at: Option<i64>,
    /// The full object when the event carried it or the connector fetched it; `None` for a
    /// thin event the connector could not resolve (the worker then re-reads the object).
    pub record: Option<Record>,
}

impl Change {
    /// A change to `id` in `stream`.
    pub fn new(
        stream: StreamId,
        id: impl Into<String>,
        op: Op,
        event_type: impl Into<String>,
    ) -> Self {
        Change {
            stream,
            id: id.into(),
            op,
            event_type: event_type.into(),
            occurred_at: None,
            record: None,
        }
    }

    /// Sets when the change happened.
    pub fn at(mut self, occurred_at_ms: i64) -> Self {
        self.occurred_at = Some(occurred_at_ms);
        self
    }

    /// Attaches the full object.
    pub fn with_record(mut self, record: Record) -> Self {
        self.record = Some(record);
        self
    }
}

/// One event of a verified webhook delivery, as a host stores it: the unit it deduplicates
/// (on `id`) and later hands to [`Webhooks::parse`] (as `body`).
///
/// Made by [`Webhooks::events`]; most deliveries are one event with the whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebhookEvent {
    /// The event's id: the same for every redelivery of the same event.
    pub id: String,
    /// The body to store for it (the delivery's, or the part of it that is this event).
    pub body: Bytes,
}

impl WebhookEvent {
    /// An event `id` with `body`.
    pub fn new(id: impl Into<String>, body: Bytes) -> Self {
        WebhookEvent {
            id: id.into(),
            body,
        }
    }

    /// A delivery as one event: the verifier's [`Verified::event_id`] when the scheme has one,
    /// else [`body_hash`] of the body. What [`Webhooks::events`] does by default.
    pub fn whole_delivery(verified: &Verified, body: &Bytes) -> Self {
        let id = match &verified.event_id {
            Some(id) => id.clone(),
            None => body_hash(body),
        };
        WebhookEvent::new(id, body.clone())
    }
}

/// `sha256:<64 lowercase hex digits>` of `body`: the event id of last resort, stable only
/// when the platform redelivers byte-identical bodies.
pub fn body_hash(body: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(body);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    s
}

/// What a write-back operation does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteAction {
    /// Create a new object.
    Create,
    /// Update an existing object (by [`WriteOp::id`]).
    Update,
    /// Create or update, matched by the platform's unique property.
    Upsert,
    /// Delete the object.
    Delete,
    /// A platform-specific action (`"tag"`, `"untag"`, `"comment"`), documented by the connector.
    Custom(Cow<'static, str>),
}

/// One change the host wants written to the platform.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WriteOp {
    /// The host's key for this operation; results come back under it.
    pub key: String,
    /// The platform id of the object, for anything but `Create`.
    pub id: Option<String>,
    /// What to do.
    pub action: WriteAction,
    /// The fields / payload of the operation.
    pub fields: serde_json::Value,
    /// Optimistic concurrency: refuse with `Conflict` if the object changed after this time
    /// (Unix milliseconds), unless `force` is set.
    pub if_unmodified_since: Option<i64>,
    /// Write even when the object changed since `if_unmodified_since`.
    pub force: bool,
}

impl WriteOp {
    /// An operation `action` on `id` with `fields`; `key` defaults to the id.
    pub fn new(action: WriteAction, id: Option<String>, fields: serde_json::Value) -> Self {
        WriteOp {
            key: id.clone().unwrap_or_default(),
            id,
            action,
            fields,
            if_unmodified_since: None,
            force: false,
        }
    }

    /// Sets the host's key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// Refuses the write if the object changed after `ms`.
    pub fn if_unmodified_since(mut self, ms: i64) -> Self {
        self.if_unmodified_since = Some(ms);
        self
    }

    /// Writes even on conflict.
    pub fn force(mut self) -> Self {
        self.force = true;
        self
    }
}

/// The result of one [`WriteOp`].
#[derive(Debug)]
#[non_exhaustive]
pub struct WriteResult {
    /// The operation's key.
    pub key: String,
    /// The platform id of the written object, or the error (`Conflict`, `InvalidInput`, ...).
    pub outcome: Result<String>,
}

impl WriteResult {
    /// A success for `key` that wrote object `id`.
    pub fn ok(key: impl Into<String>, id: impl Into<String>) -> Self {
        WriteResult {
            key: key.into(),
            outcome: Ok(id.into()),
        }
    }

    /// A failure for `key`.
    pub fn err(key: impl Into<String>, error: Error) -> Self {
        WriteResult {
            key: key.into(),
            outcome: Err(error),
        }
    }
}

/// Per-operation results of [`Connector::write`]; partial success is normal.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct WriteReport {
    /// One result per operation, in the order given.
    pub results: Vec<WriteResult>,
}

impl WriteReport {
    /// Number of successful operations.
    pub fn succeeded(&self) -> usize {
        self.results.iter().filter(|r| r.outcome.is_ok()).count()
    }

    /// The failed operations.
    pub fn failures(&self) -> impl Iterator<Item = &WriteResult> {
        self.results.iter().filter(|r| r.outcome.is_err())
    }
}

/// A stream's schema, for catalogs (Singer `--discover`) and typed sinks.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StreamSchema {
    /// The stream.
    pub stream: StreamId,
    /// A JSON Schema (draft 7) of the stream's records as [`Record::raw`] holds them: an
    /// object schema whose `properties` name the fields the platform documents or describes
    /// (custom fields included), open to others (`additionalProperties`).
    pub schema: serde_json::Value,
    /// The primary key fields.
    pub key: Vec<String>,
    /// The field that moves the incremental cursor, when there is one.
    pub replication_key: Option<String>,
    /// Whether the stream is read incrementally (otherwise each sync is a full read).
    pub incremental: bool,
    /// The custom fields found (HubSpot custom properties, Front custom fields, Salesforce
    /// `__c` fields), by name; also inside `schema`.
    pub custom_fields: Vec<String>,
}

impl StreamSchema {
    /// The schema of `info` with `properties` (field name -> JSON Schema).
    pub fn new(info: &StreamInfo, properties: serde_json::Map<String, serde_json::Value>) -> Self {
        StreamSchema {
            stream: info.id.clone(),
            schema: serde_json::json!({
                "type": "object",
                "properties": properties,
                "additionalProperties": true,
            }),
            key: info.key.iter().map(|k| k.to_string()).collect(),
            replication_key: info.replication_key.as_ref().map(|k| k.to_string()),
            incremental: info.incremental,
            custom_fields: Vec::new(),
        }
    }

    /// The schema known from [`StreamInfo`] alone: the key fields (strings or integers) and
    /// the replication key, any other field allowed. What [`Connector::discover`] returns by
    /// default.
    pub fn from_info(info: &StreamInfo) -> Self {
        let mut properties = serde_json::Map::new();
        for k in &info.key {
            properties.insert(
                k.to_string(),
                serde_json::json!({"type": ["string", "integer"]}),
            );
        }
        if let Some(rk) = &info.replication_key {
            properties
                .entry(rk.to_string())
                .or_insert_with(|| serde_json::json!({}));
        }
        StreamSchema::new(info, properties)
    }

    /// Sets the custom field names.
    pub fn with_custom_fields(mut self, names: Vec<String>) -> Self {
        self.custom_fields = names;
        self
    }

    /// The schema's `properties` object, to add fields to.
    pub fn properties_mut(&mut self) -> Option<&mut serde_json::Map<String, serde_json::Value>> {
        self.schema.get_mut("properties")?.as_object_mut()
    }
}

/// The webhook side of a connector: verification, splitting a delivery into events, and
/// turning events into changes. A connector that takes webhooks returns it from
/// [`Connector::webhooks`]; the capability and the handler cannot disagree.
///
/// # Behavior
/// - [`events`](Webhooks::events) gives each event of a delivery an id that is the same on
///   every redelivery of that event (hosts deduplicate on it); it may split a delivery of
///   several events into one [`WebhookEvent`] each, and every event's body is still accepted
///   by [`parse`](Webhooks::parse) on its own. A signed body that is not the platform's event
///   shape is `WebhookError::Malformed` here, so the host answers 400 and stores nothing.
/// - [`parse_batch`](Webhooks::parse_batch) gives one result per webhook, in order: one bad
///   event never fails the others. Connectors whose events are thin (ids only) read the named
///   objects in as few calls as the platform allows (HubSpot: batch read, 100 per call).
#[async_trait]
pub trait Webhooks: Send + Sync {
    /// The verifier of this connection's webhook signatures.
    fn verifier(&self) -> &dyn WebhookVerifier;

    /// The events of a verified delivery (`body` as received), as a host stores them.
    ///
    /// Default: one event, keyed by the verifier's [`Verified::event_id`] when the scheme has
    /// one, else by [`body_hash`] of the body ([`WebhookEvent::whole_delivery`]).
    ///
    /// # Errors
    /// `Malformed` for a body that is not the platform's event shape.
    fn events(
        &self,
        verified: &Verified,
        body: &Bytes,
    ) -> std::result::Result<Vec<WebhookEvent>, WebhookError> {
        Ok(vec![WebhookEvent::whole_delivery(verified, body)])
    }

    /// The answer to send once the events of a verified delivery are stored, instead of the
    /// receiver's own `200` (Salesforce Outbound Messages: a SOAP `notificationsResponse`
    /// with `<Ack>true</Ack>`, without which Salesforce redelivers for 24 hours). Unlike
    /// [`Verified::reply`] (a handshake: nothing is stored), the delivery is stored first,
    /// and a redelivery already stored gets the same answer. Default: `None`.
    fn accepted_reply(&self, verified: &Verified, body: &Bytes) -> Option<WebhookReply> {
        let _ = (verified, body);
        None
    }

    /// Turns one stored event into changes, fetching full objects for thin events.
    ///
    /// # Errors
    /// `InvalidInput` for a body that is not the platform's event shape; the HTTP stack's
    /// kinds when a fetch fails.
    async fn parse(&self, webhook: &VerifiedWebhook) -> Result<Vec<Change>>;

    /// Turns several stored events (of this connection) into changes: one result per
    /// webhook, in order. Default: [`parse`](Webhooks::parse) on each, one at a time.
    async fn parse_batch(&self, webhooks: &[VerifiedWebhook]) -> Vec<Result<Vec<Change>>> {
        let mut out = Vec::with_capacity(webhooks.len());
        for w in webhooks {
            out.push(self.parse(w).await);
        }
        out
    }
}

/// One platform account, ready to read, write and take webhooks.
///
/// Dyn-compatible: hosts hold connectors as `Arc<dyn Connector>` and choose them at run time.
/// Conveniences live in [`ConnectorExt`].
///
/// # Behavior
/// - `read(stream, None)` starts a full read; `read(stream, Some(page.next))` continues after
///   `page`. Reading the same cursor twice returns the same records (or newer versions).
/// - Following the pages from `None` until `has_more == false` yields every object of the
///   stream at least once; resuming from any page's `next` loses nothing.
/// - A page with `has_more == true` always carries a `next` different from every cursor read
///   before in the same run (no loops).
/// - Only the envelope of a record is strict (its id, and the timestamp the cursor needs); an
///   object whose envelope cannot be read goes to [`Page::rejects`] with its raw bytes and the
///   page goes on. Everything else is read leniently, in [`map_entity`](Connector::map_entity).
/// - An unknown stream is `ErrorKind::NotFound`; a cursor of another stream, connector or
///   version is `ErrorKind::InvalidInput`.
/// - `Debug` output never shows a credential.
#[async_trait]
pub trait Connector: Send + Sync + fmt::Debug + 'static {
    /// The connector's name, API version and capabilities.
    fn info(&self) -> &ConnectorInfo;

    /// A cheap probe that the credentials work (e.g. `GET /me`).
    ///
    /// # Errors
    /// `Unauthenticated` or `PermissionDenied` when they do not; network kinds otherwise.
    async fn check(&self) -> Result<()>;

    /// Reads one page of `stream` after `cursor` (`None`: from the beginning).
    ///
    /// # Errors
    /// `NotFound` for an unknown stream, `InvalidInput` for a foreign cursor, the HTTP
    /// stack's kinds otherwise.
    async fn read(&self, stream: &StreamId, cursor: Option<&CursorToken>) -> Result<Page>;

    /// Writes changes back to the platform. Default: `Unsupported`.
    ///
    /// # Errors
    /// A whole-call error (auth, network); per-operation errors are in the report.
    async fn write(&self, stream: &StreamId, ops: Vec<WriteOp>) -> Result<WriteReport> {
        let _ = ops;
        Err(
            Error::new(ErrorKind::Unsupported, "this connector does not write back")
                .with_context("stream", stream),
        )
    }

    /// The normalized view of `record` (`None`: the stream has no entity mapping). Called only
    /// where entities are consumed ([`crate::Sink::wants_entities`]); lenient: optional fields
    /// of the wrong type are skipped, not errors. Default: `None`.
    ///
    /// # Errors
    /// `InvalidResponse` when the record cannot be mapped at all; the engine then quarantines
    /// it (see [`crate::Reject`]) and goes on.
    fn map_entity(&self, record: &Record) -> Result<Option<Entity>> {
        let _ = record;
        Ok(None)
    }

    /// Reads a record of `stream` from an object's JSON as the platform sends it in `stream`'s
    /// pages (`parent`: see [`Record::parent`]): used to re-drive quarantined records and for
    /// objects embedded in webhooks. Default: `Unsupported`.
    ///
    /// # Errors
    /// `InvalidResponse` when the envelope (id, timestamps) cannot be read; `NotFound` for an
    /// unknown stream.
    fn parse_record(
        &self,
        stream: &StreamId,
        raw: &RawJson,
        parent: Option<&str>,
    ) -> Result<Record> {
        let _ = (raw, parent);
        Err(
            Error::unsupported("this connector cannot re-read a record from its JSON")
                .with_context("stream", stream),
        )
    }

    /// The schema of `stream`: the fields the platform documents, and the custom fields it
    /// describes for this account (which may take an API call). Default:
    /// [`StreamSchema::from_info`].
    ///
    /// # Errors
    /// `NotFound` for an unknown stream; the HTTP stack's kinds when a describe call fails.
    async fn discover(&self, stream: &StreamId) -> Result<StreamSchema> {
        let info = self.info().stream(stream).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, "unknown stream").with_context("stream", stream)
        })?;
        Ok(StreamSchema::from_info(info))
    }

    /// The webhook handler, when the platform pushes webhooks and this connection is set up
    /// for them. Default: `None`.
    fn webhooks(&self) -> Option<&dyn Webhooks> {
        None
    }
}

#[async_trait]
impl<T: Connector + ?Sized> Connector for Arc<T> {
    fn info(&self) -> &ConnectorInfo {
        (**self).info()
    }
    async fn check(&self) -> Result<()> {
        (**self).check().await
    }
    async fn read(&self, stream: &StreamId, cursor: Option<&CursorToken>) -> Result<Page> {
        (**self).read(stream, cursor).await
    }
    async fn write(&self, stream: &StreamId, ops: Vec<WriteOp>) -> Result<WriteReport> {
        (**self).write(stream, ops).await
    }
    fn map_entity(&self, record: &Record) -> Result<Option<Entity>> {
        (**self).map_entity(record)
    }
    fn parse_record(
        &self,
        stream: &StreamId,
        raw: &RawJson,
        parent: Option<&str>,
    ) -> Result<Record> {
        (**self).parse_record(stream, raw, parent)
    }
    async fn discover(&self, stream: &StreamId) -> Result<StreamSchema> {
        (**self).discover(stream).await
    }
    fn webhooks(&self) -> Option<&dyn Webhooks> {
        (**self).webhooks()
    }
}

/// Conveniences over any [`Connector`], `dyn Connector` included (blanket-implemented, so
/// wrappers cannot lose them).
pub trait ConnectorExt: Connector {
    /// Every page of `stream` after `cursor`; ends when a page says `has_more == false`.
    /// See [`read_pages`].
    fn read_all<'a>(
        &'a self,
        stream: &'a StreamId,
        cursor: Option<CursorToken>,
    ) -> BoxStream<'a, Result<Page>> {
        read_pages(self, stream, cursor)
    }

    /// Whether the connector takes webhooks (it has a [`Webhooks`] handler).
    fn takes_webhooks(&self) -> bool {
        self.webhooks().is_some()
    }
}

impl<T: Connector + ?Sized> ConnectorExt for T {}

/// The pages of `stream` from `cursor` until the connector says it is caught up.
/// Works on `&dyn Connector` too.
///
/// Holds one page in memory at a time. A page that claims more but repeats a cursor already
/// read in this walk (A -> B -> A) ends the stream with `InvalidResponse` instead of looping;
/// so does a long run of pages that bring no record (see [`PageGuard`]).
pub fn read_pages<'a, C: Connector + ?Sized>(
    connector: &'a C,
    stream: &'a StreamId,
    cursor: Option<CursorToken>,
) -> BoxStream<'a, Result<Page>> {
    let guard = PageGuard::new(cursor.as_ref());
    stream::unfold(Some((cursor, guard)), move |state| async move {
        let (cursor, mut guard) = state?;
        match connector.read(stream, cursor.as_ref()).await {
            Err(e) => Some((Err(e), None)),
            Ok(page) => {
                if let Err(e) = guard.check(&page) {
                    return Some((Err(e.with_context("stream", stream)), None));
                }
                let next_state = page.has_more.then(|| (page.next.clone(), guard));
                Some((Ok(page), next_state))
            }
        }
    })
    .boxed()
}

/// Pages in a row that may bring no record at all before a walk is called stuck.
pub const DEFAULT_MAX_EMPTY_PAGES: u32 = 1_000;
/// Cursors remembered per walk for cycle detection (8 bytes each).
const MAX_REMEMBERED_CURSORS: usize = 4_000_000;

/// Guards one walk over a stream's pages against a connector or platform that loops: a page
/// that claims more without a `next`, a `next` already read in this walk (A -> B -> A), or a
/// long run of pages with no record. Memory: a hash of each cursor (bounded).
#[derive(Debug, Clone)]
pub struct PageGuard {
    seen: std::collections::HashSet<u64>,
    empty_run: u32,
    max_empty: u32,
}

impl PageGuard {
    /// A guard for a walk starting at `start`.
    pub fn new(start: Option<&CursorToken>) -> Self {
        let mut seen = std::collections::HashSet::new();
        if let Some(c) = start {
            seen.insert(cursor_hash(c));
        }
        PageGuard {
            seen,
            empty_run: 0,
            max_empty: DEFAULT_MAX_EMPTY_PAGES,
        }
    }

    /// Sets how many pages in a row may bring no record (at least 1).
    pub fn max_empty_pages(mut self, n: u32) -> Self {
        self.max_empty = n.max(1);
        self
    }

    /// Checks the page just read.
    ///
    /// # Errors
    /// `InvalidResponse` when the page claims more without a new cursor, repeats a cursor of
    /// this walk, or ends a run of more than the allowed pages without records.
    pub fn check(&mut self, page: &Page) -> Result<()> {
        if !page.has_more {
            return Ok(());
        }
        let Some(next) = &page.next else {
            return Err(Error::new(
                ErrorKind::InvalidResponse,
                "connector reported more pages without a cursor",
            ));
        };
        if page.records.is_empty() && page.rejects.is_empty() {
            self.empty_run = self.empty_run.saturating_add(1);
            if self.empty_run > self.max_empty {
                return Err(Error::new(
                    ErrorKind::InvalidResponse,
                    "pagination is stuck: too many pages in a row without any record",
                )
                .with_context("pages", self.empty_run));
            }
        } else {
            self.empty_run = 0;
        }
        if self.seen.len() < MAX_REMEMBERED_CURSORS && !self.seen.insert(cursor_hash(next)) {
            return Err(Error::new(
                ErrorKind::InvalidResponse,
                "pagination cycle: the connector returned a cursor already read in this run",
            ));
        }
        Ok(())
    }
}

fn cursor_hash(c: &CursorToken) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: cursors are ours (they encode the platform's links), so nobody
    // chooses them to collide, and a collision would only end a walk early with an error.
    let mut h = std::hash::DefaultHasher::new();
    c.as_str().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Bare(ConnectorInfo);

    #[async_trait]
    impl Connector for Bare {
        fn info(&self) -> &ConnectorInfo {
            &self.0
        }
        async fn check(&self) -> Result<()> {
            Ok(())
        }
        async fn read(&self, stream: &StreamId, _: Option<&CursorToken>) -> Result<Page> {
            Err(Error::new(ErrorKind::NotFound, "no streams").with_context("stream", stream))
        }
    }

    #[derive(Debug)]
    struct NoVerify;
    impl WebhookVerifier for NoVerify {
        fn verify(
            &self,
            _: &crate::webhook::WebhookRequest<'_>,
            _: std::time::SystemTime,
        ) -> std::result::Result<Verified, WebhookError> {
            Ok(Verified::default())
        }
        fn sign(
            &self,
            _: &crate::webhook::WebhookRequest<'_>,
            _: std::time::SystemTime,
        ) -> std::result::Result<http::HeaderMap, WebhookError> {
            Err(WebhookError::NoSecret)
        }
    }
    struct Hooks(NoVerify);
    #[async_trait]
    impl Webhooks for Hooks {
        fn verifier(&self) -> &dyn WebhookVerifier {
            &self.0
        }
        async fn parse(&self, _: &VerifiedWebhook) -> Result<Vec<Change>> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn default_webhook_events_use_the_verifier_id_else_the_body_hash() {
        let c: Arc<dyn Connector> = Arc::new(Bare(ConnectorInfo::new(
            "bare",
            "1",
            Capabilities::default(),
        )));
        assert!(!c.takes_webhooks());
        let hooks = Hooks(NoVerify);
        let body = Bytes::from_static(b"abc");
        let events = hooks.events(&Verified::default(), &body).unwrap();
        assert_eq!(
            events,
            vec![WebhookEvent::new(
                // SHA-256("abc"), FIPS 180-2 test vector.
                "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                body.clone(),
            )]
        );
        let verified = Verified {
            event_id: Some("msg_1".into()),
            ..Verified::default()
        };
        let events = hooks.events(&verified, &body).unwrap();
        assert_eq!(events, vec![WebhookEvent::new("msg_1", body)]);
    }

    fn page(n: usize, next: Option<&str>, more: bool) -> Page {
        let records = (0..n)
            .map(|i| Record::upsert(StreamId::from("s"), i.to_string(), serde_json::json!({})))
            .collect();
        Page::new(
            records,
            next.map(|s| CursorToken::from_string(s.to_string())),
            more,
        )
    }

    #[test]
    fn page_guard_stops_cycles_and_stuck_walks() {
        let start = CursorToken::from_string("a".to_string());
        let mut g = PageGuard::new(Some(&start));
        g.check(&page(1, Some("b"), true)).unwrap();
        // A -> B -> A
        let e = g.check(&page(1, Some("a"), true)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse);
        assert!(e.to_string().contains("cycle"), "{e}");

        let mut g = PageGuard::new(None).max_empty_pages(3);
        for i in 0..3 {
            g.check(&page(0, Some(&format!("e{i}")), true)).unwrap();
        }
        let e = g.check(&page(0, Some("e3"), true)).unwrap_err();
        assert!(e.to_string().contains("stuck"), "{e}");
        // A record resets the run; the last page may repeat anything.
        let mut g = PageGuard::new(None).max_empty_pages(1);
        g.check(&page(0, Some("x"), true)).unwrap();
        g.check(&page(2, Some("y"), true)).unwrap();
        g.check(&page(0, Some("z"), true)).unwrap();
        g.check(&page(0, Some("x"), false)).unwrap();
        // More pages without a cursor.
        let e = PageGuard::new(None)
            .check(&page(1, None, true))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    }
}
