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
use crate::model::{Op, Page, Record, StreamId};
use crate::webhook::{Verified, VerifiedWebhook, WebhookError, WebhookVerifier};

/// What a connector can do. The conformance suite runs only the behaviours claimed here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The streams the connector reads.
    pub streams: Vec<StreamInfo>,
    /// Whether [`Connector::write`] is implemented for at least one stream.
    pub write_back: bool,
    /// Whether the connector verifies and parses webhooks.
    pub webhooks: bool,
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

    /// Claims webhooks.
    pub fn with_webhooks(mut self) -> Self {
        self.webhooks = true;
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
}

impl StreamInfo {
    /// A stream keyed by `id`.
    pub fn new(id: impl Into<StreamId>, incremental: bool) -> Self {
        StreamInfo {
            id: id.into(),
            incremental,
            deletes: false,
            key: vec![Cow::Borrowed("id")],
        }
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
/// (on `id`) and later hands to [`Connector::parse_webhook`] (as `body`).
///
/// Made by [`Connector::webhook_events`]; most deliveries are one event with the whole body.
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
    /// else [`body_hash`] of the body. What [`Connector::webhook_events`] does by default.
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
/// - A page with `has_more == true` always carries a `next` different from the cursor it was
///   read with (no loops).
/// - An unknown stream is `ErrorKind::NotFound`; a cursor of another stream, connector or
///   version is `ErrorKind::InvalidInput`.
/// - [`webhook_events`](Connector::webhook_events) gives each event of a delivery an id that
///   is the same on every redelivery of that event (hosts deduplicate on it); it may split a
///   delivery of several events into one [`WebhookEvent`] each, and every event's body is
///   still accepted by [`parse_webhook`](Connector::parse_webhook) on its own.
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

    /// The verifier for this connection's webhooks, if the platform pushes any.
    fn webhook_verifier(&self) -> Option<Arc<dyn WebhookVerifier>> {
        None
    }

    /// The events of a verified delivery (`body` as received), as a host stores them: one
    /// id per event, stable across redeliveries, and the body to hand to
    /// [`parse_webhook`](Connector::parse_webhook) later. A delivery carrying several events
    /// may be split, each part's body keeping the platform's shape.
    ///
    /// Default: one event, keyed by the verifier's [`Verified::event_id`] when the scheme has
    /// one, else by [`body_hash`] of the body ([`WebhookEvent::whole_delivery`]).
    ///
    /// # Errors
    /// `Malformed` for a body that is not the platform's event shape, when the connector looks
    /// inside it (the default does not).
    fn webhook_events(
        &self,
        verified: &Verified,
        body: &Bytes,
    ) -> std::result::Result<Vec<WebhookEvent>, WebhookError> {
        Ok(vec![WebhookEvent::whole_delivery(verified, body)])
    }

    /// Turns a verified webhook delivery into changes, fetching full objects for thin events.
    ///
    /// # Errors
    /// `InvalidInput` for a body that is not the platform's event shape; `Unsupported` by default.
    async fn parse_webhook(&self, webhook: &VerifiedWebhook) -> Result<Vec<Change>> {
        let _ = webhook;
        Err(Error::new(
            ErrorKind::Unsupported,
            "this connector takes no webhooks",
        ))
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
    fn webhook_verifier(&self) -> Option<Arc<dyn WebhookVerifier>> {
        (**self).webhook_verifier()
    }
    fn webhook_events(
        &self,
        verified: &Verified,
        body: &Bytes,
    ) -> std::result::Result<Vec<WebhookEvent>, WebhookError> {
        (**self).webhook_events(verified, body)
    }
    async fn parse_webhook(&self, webhook: &VerifiedWebhook) -> Result<Vec<Change>> {
        (**self).parse_webhook(webhook).await
    }
}

/// Conveniences over any [`Connector`] (blanket-implemented, so wrappers cannot lose them).
pub trait ConnectorExt: Connector {
    /// Every record of `stream` after `cursor`, page by page, as a stream of
    /// `(record, cursor_after_its_page)`; ends when a page says `has_more == false`.
    ///
    /// Holds one page in memory at a time. A page that claims more but repeats the cursor it
    /// was read from ends the stream with `InvalidResponse` instead of looping.
    fn read_all<'a>(
        &'a self,
        stream: &'a StreamId,
        cursor: Option<CursorToken>,
    ) -> BoxStream<'a, Result<Page>>
    where
        Self: Sized,
    {
        read_pages(self, stream, cursor)
    }
}

impl<T: Connector + ?Sized> ConnectorExt for T {}

/// The pages of `stream` from `cursor` until the connector says it is caught up.
/// Works on `&dyn Connector` too.
pub fn read_pages<'a, C: Connector + ?Sized>(
    connector: &'a C,
    stream: &'a StreamId,
    cursor: Option<CursorToken>,
) -> BoxStream<'a, Result<Page>> {
    stream::unfold(Some(cursor), move |state| async move {
        let cursor = state?;
        match connector.read(stream, cursor.as_ref()).await {
            Err(e) => Some((Err(e), None)),
            Ok(page) => {
                let next_state = if page.has_more {
                    if page.next.is_none() || page.next == cursor {
                        let err = Error::new(
                            ErrorKind::InvalidResponse,
                            "connector reported more pages without advancing its cursor",
                        )
                        .with_context("stream", stream);
                        return Some((Err(err), None));
                    }
                    Some(page.next.clone())
                } else {
                    None
                };
                Some((Ok(page), next_state))
            }
        }
    })
    .boxed()
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

    #[test]
    fn default_webhook_events_use_the_verifier_id_else_the_body_hash() {
        let c: Arc<dyn Connector> = Arc::new(Bare(ConnectorInfo::new(
            "bare",
            "1",
            Capabilities::default(),
        )));
        let body = Bytes::from_static(b"abc");
        let events = c.webhook_events(&Verified::default(), &body).unwrap();
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
        // Through the `Arc` forwarding impl too.
        let events = Arc::clone(&c).webhook_events(&verified, &body).unwrap();
        assert_eq!(events, vec![WebhookEvent::new("msg_1", body)]);
    }
}
