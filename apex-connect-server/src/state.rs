//! The shared state of the server: connections, store, inbox appender, counters, clock.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use apex_connect_core::store::{Clock, InboxCounts, StateStore};
use apex_connect_core::{ConnectionId, Connector, StreamId, Webhooks};
use tokio::sync::Notify;

use crate::inbox::InboxAppender;
use crate::metrics::Metrics;

/// One connection the server serves.
#[derive(Clone)]
#[non_exhaustive]
pub struct ConnectionHandle {
    /// Its id.
    pub id: ConnectionId,
    /// Its platform (`connector.info().name`).
    pub platform: String,
    /// The connector.
    pub connector: Arc<dyn Connector>,
    /// The streams synced (default: all of the connector's).
    pub streams: Vec<StreamId>,
}

impl fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("id", &self.id)
            .field("platform", &self.platform)
            .field("webhooks", &self.connector.webhooks().is_some())
            .field("streams", &self.streams)
            .finish()
    }
}

impl ConnectionHandle {
    /// A handle for `connector` under `id`, with every stream of the connector.
    pub fn new(id: impl Into<ConnectionId>, connector: Arc<dyn Connector>) -> Self {
        let info = connector.info();
        ConnectionHandle {
            id: id.into(),
            platform: info.name.to_string(),
            streams: info
                .capabilities
                .streams
                .iter()
                .map(|s| s.id.clone())
                .collect(),
            connector,
        }
    }

    /// The connector's webhook handler, when the connection takes webhooks.
    pub fn webhooks(&self) -> Option<&dyn Webhooks> {
        self.connector.webhooks()
    }

    /// Restricts the synced streams.
    pub fn with_streams(mut self, streams: Vec<StreamId>) -> Self {
        if !streams.is_empty() {
            self.streams = streams;
        }
        self
    }
}

/// How stale [`ServerState::inbox_counts`] may be.
pub const INBOX_COUNTS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(2);

/// Everything the router, the workers and the scheduler share. Cheap to clone.
#[derive(Clone)]
pub struct ServerState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) connections: BTreeMap<ConnectionId, ConnectionHandle>,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) appender: InboxAppender,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) clock: Clock,
    pub(crate) body_limit: usize,
    pub(crate) wake: Arc<Notify>,
    /// The latest inbox counts and when they were read (see [`ServerState::inbox_counts`]).
    pub(crate) inbox_counts: tokio::sync::Mutex<Option<(std::time::Instant, InboxCounts)>>,
}

impl fmt::Debug for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerState")
            .field(
                "connections",
                &self.inner.connections.keys().collect::<Vec<_>>(),
            )
            .field("store", &self.inner.store)
            .field("appender", &self.inner.appender)
            .field("body_limit", &self.inner.body_limit)
            .finish()
    }
}

impl ServerState {
    /// A builder over `store` (appending straight through it unless
    /// [`ServerStateBuilder::appender`] sets group commit).
    pub fn builder(store: Arc<dyn StateStore>) -> ServerStateBuilder {
        ServerStateBuilder {
            connections: BTreeMap::new(),
            appender: None,
            metrics: None,
            clock: Clock::system(),
            body_limit: 1024 * 1024,
            store,
        }
    }

    /// The connection `id`.
    pub fn connection(&self, id: &ConnectionId) -> Option<&ConnectionHandle> {
        self.inner.connections.get(id)
    }

    /// Every connection, by id.
    pub fn connections(&self) -> impl Iterator<Item = &ConnectionHandle> {
        self.inner.connections.values()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.inner.store
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The clock (webhook timestamps, backoff).
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Notified when events are appended (workers wait on it between polls).
    pub fn wake(&self) -> &Arc<Notify> {
        &self.inner.wake
    }

    /// The inbox's counts per state, read at most once per [`INBOX_COUNTS_MAX_AGE`] (the
    /// pages, the admin API and `/metrics` share one reading). Counting is a scan of the
    /// state's index: tens of milliseconds at a million kept events, too much for every
    /// request of a page that refreshes itself every two seconds. Concurrent callers wait for
    /// one reading instead of each counting.
    ///
    /// # Errors
    /// `Storage`.
    pub async fn inbox_counts(&self) -> apex_connect_core::Result<InboxCounts> {
        let mut cached = self.inner.inbox_counts.lock().await;
        if let Some((at, counts)) = *cached
            && at.elapsed() < INBOX_COUNTS_MAX_AGE
        {
            return Ok(counts);
        }
        let counts = self.inner.store.inbox_counts().await?;
        *cached = Some((std::time::Instant::now(), counts));
        self.inner.metrics.set_inbox(counts);
        Ok(counts)
    }

    /// Drops the shared inbox reading, so the next [`ServerState::inbox_counts`] counts again:
    /// after an operator's requeue, the pages show its effect at once.
    pub(crate) async fn forget_inbox_counts(&self) {
        *self.inner.inbox_counts.lock().await = None;
    }
}

/// Builds a [`ServerState`].
#[must_use]
pub struct ServerStateBuilder {
    connections: BTreeMap<ConnectionId, ConnectionHandle>,
    store: Arc<dyn StateStore>,
    appender: Option<InboxAppender>,
    metrics: Option<Arc<Metrics>>,
    clock: Clock,
    body_limit: usize,
}

impl fmt::Debug for ServerStateBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerStateBuilder")
            .field("connections", &self.connections.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ServerStateBuilder {
    /// Adds a connection.
    pub fn connection(mut self, handle: ConnectionHandle) -> Self {
        self.connections.insert(handle.id.clone(), handle);
        self
    }

    /// Sets how events are appended (e.g. [`InboxAppender::group_commit`]; default: one
    /// [`append_many`](apex_connect_core::InboxStore::append_many) per request, straight
    /// through the store).
    pub fn appender(mut self, appender: InboxAppender) -> Self {
        self.appender = Some(appender);
        self
    }

    /// Shares counters with others.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The clock for webhook verification and retry times (default: system).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The largest accepted webhook body, in bytes (default 1 MiB).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The state.
    pub fn build(self) -> ServerState {
        let appender = self
            .appender
            .unwrap_or_else(|| InboxAppender::direct(self.store.clone()));
        ServerState {
            inner: Arc::new(Inner {
                connections: self.connections,
                store: self.store,
                appender,
                metrics: {
                    let m = self.metrics.unwrap_or_default();
                    Metrics::observe_rate_gates(&m);
                    m
                },
                clock: self.clock,
                body_limit: self.body_limit,
                wake: Arc::new(Notify::new()),
                inbox_counts: tokio::sync::Mutex::new(None),
            }),
        }
    }
}
