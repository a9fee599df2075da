//! `FrontConnector`: the streams, incremental sync through `/events`, webhooks and write-back.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use apex_connect_core::http::{
    Credentials, HttpClient, HttpStatsSnapshot, RateGate, RetryConfig, StaticToken, path_segment,
};
use apex_connect_core::oauth::TokenManager;
use apex_connect_core::webhook::{Verified, WebhookSecrets, unix_ms};
use apex_connect_core::{
    Capabilities, Change, Connector, ConnectorInfo, CursorToken, Error, ErrorKind, Op, Page,
    Record, Result, StreamId, StreamInfo, SyncCursor, VerifiedWebhook, WebhookError, WebhookEvent,
    WebhookVerifier, WriteAction, WriteOp, WriteReport, WriteResult, async_trait,
};
use bytes::Bytes;
use http::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::NAME;
use crate::api::{FrontApi, FrontPolicy};
use crate::config::FrontConfig;
use crate::cursor::{
    CommentsCursor, ContactsCursor, ConversationsCursor, EventsCursor, EventsPosition,
    InboxesCursor, ListPosition, MessagesCursor, NestedPosition, RefreshPosition, TagsCursor,
    TeammatesCursor,
};
use crate::models::{self, Event, IdList, ListResponse, ms_to_secs_param, secs_to_ms, streams};
use crate::webhook::{FrontAppWebhookVerifier, FrontRuleWebhookVerifier, delivery_events};

/// The Core API version the connector speaks.
pub const API_VERSION: &str = "core-api-2024";

/// Event types that name a message (`target._meta.type == "message"`).
const MESSAGE_EVENT_TYPES: [&str; 4] = ["inbound", "outbound", "out_reply", "forward"];
/// Event types that name a comment.
const COMMENT_EVENT_TYPES: [&str; 2] = ["comment", "mention"];

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// How long a nested walk reuses the conversations page its previous read fetched (the next
/// read of the same walk usually continues on the same page). A page this old may have moved;
/// the walk finds its conversation again by id, and changes made since the walk started are
/// read by the incremental phase anyway.
const NESTED_PAGE_TTL: Duration = Duration::from_secs(60);

/// The conversations page last used by a nested walk, keyed by (page link, walk start).
struct CachedPage {
    key: (Option<String>, i64),
    fetched: Instant,
    page: Arc<IdList>,
}

/// A connector for one Front company (one API token or OAuth grant).
///
/// Build it with [`FrontConnector::builder`]. Cheap to clone.
///
/// # Streams
/// | stream | backfill | incremental |
/// |---|---|---|
/// | `conversations` | `GET /conversations` | `/events` (every type), then `GET /conversations/{id}` |
/// | `messages` | conversations, then `GET /conversations/{id}/messages` | `/events` `inbound`/`outbound`/`out_reply`/`forward`, then `GET /messages/{id}` |
/// | `comments` | conversations, then `GET /conversations/{id}/comments` | `/events` `comment`/`mention`, then `GET /comments/{id}` |
/// | `contacts` | `GET /contacts` | `GET /contacts?q[updated_after]=..` |
/// | `tags` | `GET /tags` | full list, only tags updated since the last walk emitted |
/// | `teammates`, `inboxes` | full list | full list each sync |
/// | `events` | `GET /events` (ascending) | `/events?q[after]=..` |
///
/// Incremental walks start from when the backfill started (or the previous walk's newest
/// event) minus the lookback (default 60 s), so changes made during a long backfill are
/// read. Contacts use `q[updated_after]` rather than events because Front's events are about
/// conversations.
#[derive(Clone)]
pub struct FrontConnector {
    inner: Arc<Inner>,
}

struct Inner {
    info: ConnectorInfo,
    config: FrontConfig,
    api: FrontApi,
    verifier: Option<Arc<dyn WebhookVerifier>>,
    clock: Clock,
    /// Per nested stream (`messages`, `comments`): the conversations page of the last read.
    nested_pages: Mutex<HashMap<&'static str, CachedPage>>,
}

impl fmt::Debug for FrontConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontConnector")
            .field("config", &self.inner.config)
            .field("http", self.inner.api.http())
            .field("webhooks", &self.inner.verifier)
            .finish()
    }
}

/// Builds a [`FrontConnector`]; see [`FrontConnector::builder`].
pub struct FrontConnectorBuilder {
    config: FrontConfig,
    credentials: Option<Arc<dyn Credentials>>,
    rate_gate: Option<RateGate>,
    retry: Option<RetryConfig>,
    app_secrets: Vec<SecretString>,
    rule_secrets: Vec<SecretString>,
    clock: Option<Clock>,
    refreshable: bool,
}

impl fmt::Debug for FrontConnectorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontConnectorBuilder")
            .field("config", &self.config)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "[redacted]"),
            )
            .field("rate_gate", &self.rate_gate)
            .field("app_secrets", &self.app_secrets.len())
            .field("rule_secrets", &self.rule_secrets.len())
            .finish()
    }
}

impl FrontConnectorBuilder {
    /// Starts from this configuration (its `api_token`, if any, is used unless credentials
    /// are given).
    pub fn config(mut self, config: FrontConfig) -> Self {
        self.config = config;
        self
    }

    /// Authenticates with an API token (`Authorization: Bearer <token>`).
    pub fn api_token(mut self, token: SecretString) -> Self {
        self.credentials = Some(Arc::new(StaticToken::bearer(token.expose_secret())));
        self.refreshable = false;
        self
    }

    /// Authenticates with OAuth tokens managed (and refreshed) by `manager`; the connector
    /// then claims `Capabilities::oauth_refresh`.
    pub fn oauth(mut self, manager: TokenManager) -> Self {
        self.refreshable = true;
        self.credentials = Some(Arc::new(manager));
        self
    }

    /// Authenticates with any [`Credentials`].
    pub fn credentials(mut self, credentials: Arc<dyn Credentials>) -> Self {
        self.credentials = Some(credentials);
        self.refreshable = false;
        self
    }

    /// Declares that the [`Credentials`] given refresh after a 401 (as a [`TokenManager`]
    /// does), so the connector claims `Capabilities::oauth_refresh`.
    pub fn refreshable_credentials(mut self, refreshable: bool) -> Self {
        self.refreshable = refreshable;
        self
    }

    /// The API base URL (default `https://api2.frontapp.com`; a simulator's URL in tests).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.config.base_url = url.into();
        self
    }

    /// A rate gate, shared with other clients of the same company if cloned (default: a gate
    /// with no local quota that follows Front's `x-ratelimit-*` headers and 429s).
    pub fn rate_gate(mut self, gate: RateGate) -> Self {
        self.rate_gate = Some(gate);
        self
    }

    /// The retry policy of the HTTP stack.
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = Some(retry);
        self
    }

    /// `limit` on list endpoints (1..=100).
    pub fn page_size(mut self, n: u32) -> Self {
        self.config.page_size = n;
        self
    }

    /// How many conversations' messages (or comments) a nested read fetches at once (1..=64,
    /// default 8); see [`FrontConfig::nested_concurrency`].
    pub fn nested_concurrency(mut self, n: u32) -> Self {
        self.config.nested_concurrency = n;
        self
    }

    /// The incremental lookback, in seconds.
    pub fn lookback_secs(mut self, secs: u64) -> Self {
        self.config.lookback_secs = secs;
        self
    }

    /// Offers only these streams.
    pub fn streams<I, S>(mut self, streams: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.streams = streams.into_iter().map(Into::into).collect();
        self
    }

    /// Allows `next` links on these hosts too (exact or `*.suffix`; loopback for tests).
    pub fn extra_api_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config
            .extra_api_hosts
            .extend(hosts.into_iter().map(Into::into));
        self
    }

    /// The app secret that signs application webhooks (call again to add older secrets
    /// during a rotation; the first signs).
    pub fn webhook_secret(mut self, secret: SecretString) -> Self {
        self.app_secrets.push(secret);
        self
    }

    /// The API secret that signs legacy rule webhooks (used when no app secret is set).
    pub fn rule_webhook_secret(mut self, secret: SecretString) -> Self {
        self.rule_secrets.push(secret);
        self
    }

    /// The wall clock used for cursor timestamps (tests).
    pub fn clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Builds the connector.
    ///
    /// # Errors
    /// `Config` when no credentials were given, or the configuration or base URL is invalid.
    pub fn build(self) -> Result<FrontConnector> {
        self.config.validate()?;
        let credentials = match (self.credentials, &self.config.api_token) {
            (Some(c), _) => c,
            (None, Some(token)) => {
                Arc::new(StaticToken::bearer(token.expose_secret())) as Arc<dyn Credentials>
            }
            (None, None) => {
                return Err(Error::config(
                    "Front connector needs an API token or OAuth credentials",
                )
                .with_context("connector", NAME));
            }
        };
        let mut http = HttpClient::builder(self.config.base_url.clone())
            .credentials(credentials)
            .policy(Arc::new(FrontPolicy))
            .rate_gate(self.rate_gate.unwrap_or_else(RateGate::unlimited))
            .extra_api_hosts(self.config.extra_api_hosts.clone())
            .user_agent(concat!("apex-connect-frontapp/", env!("CARGO_PKG_VERSION")));
        if let Some(r) = self.retry {
            http = http.retry(r);
        }
        let http = http
            .build()
            .map_err(|e| e.with_context("connector", NAME))?;
        let verifier: Option<Arc<dyn WebhookVerifier>> = if !self.app_secrets.is_empty() {
            Some(Arc::new(FrontAppWebhookVerifier::from_secrets(
                WebhookSecrets::new(
                    self.app_secrets
                        .iter()
                        .map(|s| s.expose_secret().as_bytes().to_vec()),
                ),
            )))
        } else if !self.rule_secrets.is_empty() {
            Some(Arc::new(FrontRuleWebhookVerifier::new(
                self.rule_secrets
                    .iter()
                    .map(|s| s.expose_secret().as_bytes().to_vec()),
            )))
        } else {
            None
        };
        let stream_infos = self
            .config
            .streams
            .iter()
            .map(|s| {
                let incremental = !matches!(s.as_str(), streams::TEAMMATES | streams::INBOXES);
                StreamInfo::new(StreamId::from(s.clone()), incremental)
            })
            .collect();
        let mut caps = Capabilities::new(stream_infos).with_write_back();
        if verifier.is_some() {
            caps = caps.with_webhooks();
        }
        if self.refreshable {
            caps = caps.with_oauth_refresh();
        }
        Ok(FrontConnector {
            inner: Arc::new(Inner {
                info: ConnectorInfo::new(NAME, API_VERSION, caps),
                config: self.config,
                api: FrontApi::new(http),
                verifier,
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemTime::now)),
                nested_pages: Mutex::new(HashMap::new()),
            }),
        })
    }
}

fn stream_err(stream: &StreamId) -> Error {
    Error::new(ErrorKind::NotFound, "unknown Front stream")
        .with_context("connector", NAME)
        .with_context("stream", stream)
}

fn loop_err(what: &'static str) -> Error {
    Error::invalid_response("Front returned a next link equal to the current one")
        .with_context("connector", NAME)
        .with_context("list", what)
}

impl FrontConnector {
    /// Starts building a connector.
    ///
    /// # Examples
    /// ```
    /// use apex_connect_frontapp::FrontConnector;
    /// use secrecy::SecretString;
    ///
    /// let front = FrontConnector::builder()
    ///     .api_token(SecretString::from("front-api-token"))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(apex_connect_core::Connector::info(&front).name, "frontapp");
    /// ```
    pub fn builder() -> FrontConnectorBuilder {
        FrontConnectorBuilder {
            config: FrontConfig::default(),
            credentials: None,
            rate_gate: None,
            retry: None,
            app_secrets: Vec::new(),
            rule_secrets: Vec::new(),
            clock: None,
            refreshable: false,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &FrontConfig {
        &self.inner.config
    }

    /// The typed API calls (for host code that needs more than the streams).
    pub fn api(&self) -> &FrontApi {
        &self.inner.api
    }

    /// Counters of the HTTP stack (requests, 429s, retries, time waited on the gate).
    pub fn http_stats(&self) -> HttpStatsSnapshot {
        self.inner.api.http().stats().snapshot()
    }

    fn now_ms(&self) -> i64 {
        unix_ms((self.inner.clock)())
    }

    fn lookback_ms(&self) -> i64 {
        (self.inner.config.lookback_secs as i64).saturating_mul(1000)
    }

    fn limit(&self) -> (&'static str, String) {
        ("limit", self.inner.config.page_size.to_string())
    }

    fn map_all(
        &self,
        stream: &str,
        results: Vec<Value>,
        parent: Option<&str>,
    ) -> Result<Vec<Record>> {
        results
            .into_iter()
            .map(|raw| models::map_record(stream, raw, parent))
            .collect()
    }

    // ----- plain lists

    async fn list_page(
        &self,
        path: &str,
        query: &[(&str, String)],
        next: Option<&str>,
        what: &'static str,
    ) -> Result<ListResponse> {
        let resp = self.inner.api.list(path, query, next).await?;
        if let (Some(cur), Some(n)) = (next, resp.next())
            && cur == n
        {
            return Err(loop_err(what));
        }
        Ok(resp)
    }

    /// [`list_page`](Self::list_page) reading only the objects' ids.
    async fn id_page(
        &self,
        path: &str,
        query: &[(&str, String)],
        next: Option<&str>,
        what: &'static str,
    ) -> Result<IdList> {
        let resp: IdList = self.inner.api.list_as(path, query, next).await?;
        if let (Some(cur), Some(n)) = (next, resp.next())
            && cur == n
        {
            return Err(loop_err(what));
        }
        Ok(resp)
    }

    /// One page of a list endpoint's backfill: the cursor after it continues the backfill
    /// (`more`), or, after the last page (a null `next`), starts the incremental phase from
    /// when the backfill began (`caught_up`), so changes made during a long backfill are read.
    async fn backfill_page<C: SyncCursor>(
        &self,
        path: &str,
        stream: &'static str,
        pos: ListPosition,
        more: impl FnOnce(ListPosition) -> C,
        caught_up: impl FnOnce(i64) -> C,
    ) -> Result<Page> {
        let resp = self
            .list_page(path, &[self.limit()], pos.next.as_deref(), stream)
            .await?;
        let next_link = resp.next().map(str::to_string);
        let records = self.map_all(stream, resp.results, None)?;
        Ok(match next_link {
            Some(n) => Page::new(
                records,
                Some(
                    more(ListPosition {
                        next: Some(n),
                        started_at_ms: pos.started_at_ms,
                    })
                    .to_token(),
                ),
                true,
            ),
            None => Page::new(
                records,
                Some(caught_up(pos.started_at_ms).to_token()),
                false,
            ),
        })
    }

    async fn read_conversations(&self, cursor: Option<&CursorToken>) -> Result<Page> {
        let cur = match cursor {
            Some(t) => ConversationsCursor::from_token(t)?,
            None => ConversationsCursor::Backfill(ListPosition {
                next: None,
                started_at_ms: self.now_ms(),
            }),
        };
        match cur {
            ConversationsCursor::Backfill(pos) => {
                self.backfill_page(
                    "/conversations",
                    streams::CONVERSATIONS,
                    pos,
                    ConversationsCursor::Backfill,
                    |started| ConversationsCursor::Events(EventsPosition::after(Some(started))),
                )
                .await
            }
            ConversationsCursor::Events(pos) => {
                let (events, next, has_more) = self.events_step(&pos, &[]).await?;
                let mut seen = HashSet::new();
                let mut records = Vec::new();
                for ev in &events {
                    let Some(id) = ev.conversation_id() else {
                        continue;
                    };
                    if !seen.insert(id.to_string()) {
                        continue;
                    }
                    records.push(self.fetch_conversation(id).await?);
                }
                Ok(Page::new(
                    records,
                    Some(ConversationsCursor::Events(next).to_token()),
                    has_more,
                ))
            }
        }
    }

    async fn fetch_conversation(&self, id: &str) -> Result<Record> {
        match self
            .inner
            .api
            .get_opt(&format!("/conversations/{}", path_segment(id)?))
            .await?
        {
            Some(raw) => models::conversation_record(raw),
            None => Ok(Record::delete(
                StreamId::from_static(streams::CONVERSATIONS),
                id,
            )),
        }
    }

    async fn fetch_message(&self, id: &str, conversation: Option<&str>) -> Result<Record> {
        match self
            .inner
            .api
            .get_opt(&format!("/messages/{}", path_segment(id)?))
            .await?
        {
            Some(raw) => models::message_record(raw, conversation),
            None => Ok(Record::delete(StreamId::from_static(streams::MESSAGES), id)),
        }
    }

    async fn fetch_comment(&self, id: &str, conversation: Option<&str>) -> Result<Record> {
        match self
            .inner
            .api
            .get_opt(&format!("/comments/{}", path_segment(id)?))
            .await?
        {
            Some(raw) => models::comment_record(raw, conversation),
            None => Ok(Record::delete(StreamId::from_static(streams::COMMENTS), id)),
        }
    }

    async fn fetch_contact(&self, id: &str) -> Result<Record> {
        match self
            .inner
            .api
            .get_opt(&format!("/contacts/{}", path_segment(id)?))
            .await?
        {
            Some(raw) => models::contact_record(raw),
            None => Ok(Record::delete(StreamId::from_static(streams::CONTACTS), id)),
        }
    }

    /// One page of `/events` (ascending) from `pos`, filtered by `types` (empty: all).
    async fn events_step(
        &self,
        pos: &EventsPosition,
        types: &[&str],
    ) -> Result<(Vec<Event>, EventsPosition, bool)> {
        let mut query: Vec<(&str, String)> = vec![
            ("limit", self.inner.config.events_page_size.to_string()),
            ("sort_by", "created_at".into()),
            ("sort_order", "asc".into()),
        ];
        if let Some(after) = pos.after_ms {
            query.push((
                "q[after]",
                ms_to_secs_param(after.saturating_sub(self.lookback_ms()).max(0)),
            ));
        }
        for t in types {
            query.push(("q[types]", (*t).to_string()));
        }
        let resp = self
            .list_page("/events", &query, pos.next.as_deref(), "events")
            .await?;
        let next_link = resp.next().map(str::to_string);
        let mut high = pos.high_water_ms;
        let mut events = Vec::with_capacity(resp.results.len());
        let mut fresh = Vec::with_capacity(resp.results.len());
        for raw in resp.results {
            let ev: Event = serde_json::from_value(raw).map_err(|e| {
                Error::invalid_response("Front event does not have the expected shape")
                    .with_context("connector", NAME)
                    .set_source(e)
            })?;
            // Read by an earlier walk (the lookback window is read again): skip it.
            if !ev.id.is_empty() && pos.has_seen(&ev.id) {
                continue;
            }
            if let Some(t) = ev.emitted_at {
                let ms = secs_to_ms(t);
                high = Some(high.map_or(ms, |h| h.max(ms)));
                if !ev.id.is_empty() {
                    fresh.push((ev.id.clone(), ms));
                }
            }
            events.push(ev);
        }
        let (next, more) = self.advance_events(pos, next_link, high, fresh);
        Ok((events, next, more))
    }

    /// The position after one `/events` page: `next_link` continues the walk; none ends it
    /// (the next walk reads after the high-water mark, minus the lookback). `fresh` are the
    /// events just read, remembered so the next walk's re-read of the lookback skips them.
    fn advance_events(
        &self,
        pos: &EventsPosition,
        next_link: Option<String>,
        high: Option<i64>,
        fresh: Vec<(String, i64)>,
    ) -> (EventsPosition, bool) {
        let more = next_link.is_some();
        let mut next = EventsPosition {
            after_ms: if more {
                pos.after_ms
            } else {
                high.or(pos.after_ms)
            },
            next: next_link,
            high_water_ms: high,
            seen: pos.seen.clone(),
        };
        next.remember(fresh, self.lookback_ms());
        (next, more)
    }

    async fn read_events(&self, cursor: Option<&CursorToken>) -> Result<Page> {
        let pos = match cursor {
            Some(t) => EventsCursor::from_token(t)?.0,
            None => EventsPosition::after(self.inner.config.events_since_ms),
        };
        let mut query: Vec<(&str, String)> = vec![
            ("limit", self.inner.config.events_page_size.to_string()),
            ("sort_by", "created_at".into()),
            ("sort_order", "asc".into()),
        ];
        // The first walk from `events_since_ms` takes it as is; later walks re-read the lookback.
        if let Some(after) = pos.after_ms {
            let from = if cursor.is_some() {
                after.saturating_sub(self.lookback_ms())
            } else {
                after
            };
            query.push(("q[after]", ms_to_secs_param(from.max(0))));
        }
        let resp = self
            .list_page("/events", &query, pos.next.as_deref(), "events")
            .await?;
        let next_link = resp.next().map(str::to_string);
        let mut records = self.map_all(streams::EVENTS, resp.results, None)?;
        // Events read by an earlier walk (the lookback window is read again) are skipped.
        records.retain(|r| !pos.has_seen(&r.id));
        let mut high = pos.high_water_ms;
        let mut fresh = Vec::with_capacity(records.len());
        for r in &records {
            if let Some(v) = r.version {
                high = Some(high.map_or(v, |h| h.max(v)));
                fresh.push((r.id.clone(), v));
            }
        }
        let (next, has_more) = self.advance_events(&pos, next_link, high, fresh);
        Ok(Page::new(
            records,
            Some(EventsCursor(next).to_token()),
            has_more,
        ))
    }

    async fn read_contacts(&self, cursor: Option<&CursorToken>) -> Result<Page> {
        let cur = match cursor {
            Some(t) => ContactsCursor::from_token(t)?,
            None => ContactsCursor::Backfill(ListPosition {
                next: None,
                started_at_ms: self.now_ms(),
            }),
        };
        match cur {
            ContactsCursor::Backfill(pos) => {
                self.backfill_page(
                    "/contacts",
                    streams::CONTACTS,
                    pos,
                    ContactsCursor::Backfill,
                    |started| ContactsCursor::Updated {
                        after_ms: started,
                        next: None,
                        started_at_ms: started,
                    },
                )
                .await
            }
            ContactsCursor::Updated {
                after_ms,
                next,
                started_at_ms,
            } => {
                let walk_start = if next.is_none() {
                    self.now_ms()
                } else {
                    started_at_ms
                };
                let query = [
                    self.limit(),
                    (
                        "q[updated_after]",
                        ms_to_secs_param(after_ms.saturating_sub(self.lookback_ms()).max(0)),
                    ),
                    ("sort_by", "updated_at".to_string()),
                    ("sort_order", "asc".to_string()),
                ];
                let resp = self
                    .list_page("/contacts", &query, next.as_deref(), "contacts")
                    .await?;
                let next_link = resp.next().map(str::to_string);
                let records = self.map_all(streams::CONTACTS, resp.results, None)?;
                let (cur, more) = match next_link {
                    Some(n) => (
                        ContactsCursor::Updated {
                            after_ms,
                            next: Some(n),
                            started_at_ms: walk_start,
                        },
                        true,
                    ),
                    None => (
                        ContactsCursor::Updated {
                            after_ms: walk_start,
                            next: None,
                            started_at_ms: walk_start,
                        },
                        false,
                    ),
                };
                Ok(Page::new(records, Some(cur.to_token()), more))
            }
        }
    }

    async fn read_tags(&self, cursor: Option<&CursorToken>) -> Result<Page> {
        let mut cur = match cursor {
            Some(t) => TagsCursor::from_token(t)?,
            None => TagsCursor {
                since_ms: None,
                next: None,
                started_at_ms: self.now_ms(),
            },
        };
        if cur.next.is_none() {
            cur.started_at_ms = self.now_ms();
        }
        let resp = self
            .list_page("/tags", &[self.limit()], cur.next.as_deref(), "tags")
            .await?;
        let next_link = resp.next().map(str::to_string);
        let mut records = self.map_all(streams::TAGS, resp.results, None)?;
        if let Some(since) = cur.since_ms {
            let from = since.saturating_sub(self.lookback_ms());
            records.retain(|r| r.version.is_none_or(|v| v > from));
        }
        let (next, more) = match next_link {
            Some(n) => (
                TagsCursor {
                    since_ms: cur.since_ms,
                    next: Some(n),
                    started_at_ms: cur.started_at_ms,
                },
                true,
            ),
            None => (
                TagsCursor {
                    since_ms: Some(cur.started_at_ms),
                    next: None,
                    started_at_ms: cur.started_at_ms,
                },
                false,
            ),
        };
        Ok(Page::new(records, Some(next.to_token()), more))
    }

    async fn read_refresh(
        &self,
        stream: &'static str,
        pos: RefreshPosition,
    ) -> Result<(Vec<Record>, RefreshPosition, bool)> {
        let path = if stream == streams::TEAMMATES {
            "/teammates"
        } else {
            "/inboxes"
        };
        let resp = self
            .list_page(path, &[], pos.next.as_deref(), stream)
            .await?;
        let next_link = resp.next().map(str::to_string);
        let records = self.map_all(stream, resp.results, None)?;
        Ok(match next_link {
            Some(n) => (
                records,
                RefreshPosition {
                    next: Some(n),
                    completed_at_ms: pos.completed_at_ms,
                },
                true,
            ),
            None => (
                records,
                RefreshPosition {
                    next: None,
                    completed_at_ms: Some(self.now_ms()),
                },
                false,
            ),
        })
    }

    /// The conversations page at `pos.conversations_page` of the walk that started at
    /// `pos.started_at_ms`: from the per-stream cache when the previous read of the same walk
    /// fetched it less than [`NESTED_PAGE_TTL`] ago, else from Front. The flag says whether a
    /// request was made.
    async fn conversations_page(
        &self,
        stream: &'static str,
        pos: &NestedPosition,
    ) -> Result<(Arc<IdList>, bool)> {
        let key = (pos.conversations_page.clone(), pos.started_at_ms);
        {
            let cache = self.nested_cache();
            if let Some(c) = cache.get(stream)
                && c.key == key
                && c.fetched.elapsed() < NESTED_PAGE_TTL
            {
                return Ok((c.page.clone(), false));
            }
        }
        let p = Arc::new(
            self.id_page(
                "/conversations",
                &[self.limit()],
                pos.conversations_page.as_deref(),
                "conversations",
            )
            .await?,
        );
        self.nested_cache().insert(
            stream,
            CachedPage {
                key,
                fetched: Instant::now(),
                page: p.clone(),
            },
        );
        Ok((p, true))
    }

    fn nested_cache(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, CachedPage>> {
        self.inner
            .nested_pages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// One page of a conversation's children (`child` is `messages` or `comments`); `None`
    /// when the conversation is gone (404).
    async fn child_page(
        &self,
        child: &'static str,
        conversation_id: &str,
        next: Option<&str>,
    ) -> Result<Option<ListResponse>> {
        let path = format!("/conversations/{}/{child}", path_segment(conversation_id)?);
        let query: Vec<(&str, String)> = if child == "messages" {
            vec![self.limit()]
        } else {
            Vec::new()
        };
        match self.list_page(&path, &query, next, child).await {
            Ok(r) => Ok(Some(r)),
            // Deleted between the list and now: nothing to read.
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One page of a conversation's children, mapped to records, with the next link; `None`
    /// when the conversation is gone.
    async fn child_records(
        &self,
        stream: &'static str,
        child: &'static str,
        conversation_id: &str,
        next: Option<&str>,
    ) -> Result<Option<(Vec<Record>, Option<String>)>> {
        let Some(resp) = self.child_page(child, conversation_id, next).await? else {
            return Ok(None);
        };
        let next = resp.next().map(str::to_string);
        let records = self.map_all(stream, resp.results, Some(conversation_id))?;
        Ok(Some((records, next)))
    }

    /// The nested walk: conversations page by page, each conversation's children page by
    /// page, the first pages of `nested_concurrency` conversations at a time.
    ///
    /// Records come out in walk order whatever the concurrency: a batch's answers are
    /// consumed in list order, and a conversation with more than one page of children is
    /// followed to its end before the next conversation's records. The returned position
    /// names exactly what comes next (a conversation and its children's next link); answers
    /// fetched beyond it (when the request budget ends inside a long conversation) are
    /// dropped and read again by the next call.
    async fn nested_step(
        &self,
        stream: &'static str,
        mut pos: NestedPosition,
    ) -> Result<(Vec<Record>, Option<NestedPosition>)> {
        let child = if stream == streams::MESSAGES {
            "messages"
        } else {
            "comments"
        };
        let max_requests = self.inner.config.nested_requests_per_read.max(1) as usize;
        let page_size = self.inner.config.page_size as usize;
        let concurrency = self.inner.config.nested_concurrency.max(1) as usize;
        let mut records = Vec::new();
        let mut requests = 0usize;
        let mut page: Option<Arc<IdList>> = None;
        let id_at = |p: &IdList, i: usize| -> Option<String> { p.id(i).map(str::to_string) };
        while requests < max_requests && records.len() < page_size {
            let Some(p) = page.clone() else {
                let (p, fetched) = self.conversations_page(stream, &pos).await?;
                if fetched {
                    requests += 1;
                }
                // The list may have moved since the cursor was written: find the conversation
                // again by id, or (if it left this page) restart the page; duplicates are
                // harmless, losses are not.
                if let Some(want) = &pos.conversation_id
                    && id_at(&p, pos.index).as_deref() != Some(want.as_str())
                {
                    match (0..p.results.len()).find(|i| id_at(&p, *i).as_ref() == Some(want)) {
                        Some(i) => pos.index = i,
                        None => {
                            pos.index = 0;
                            pos.children_next = None;
                        }
                    }
                }
                page = Some(p);
                continue;
            };
            if pos.index >= p.results.len() {
                match p.next() {
                    Some(n) => {
                        if pos.conversations_page.as_deref() == Some(n) {
                            return Err(loop_err("conversations"));
                        }
                        pos = NestedPosition {
                            conversations_page: Some(n.to_string()),
                            index: 0,
                            conversation_id: None,
                            children_next: None,
                            started_at_ms: pos.started_at_ms,
                        };
                        page = None;
                        continue;
                    }
                    None => return Ok((records, None)),
                }
            }
            // The batch: the conversation at `index` (resuming at `children_next`) and the
            // ones after it on this page, within the request budget.
            let n = concurrency
                .min(max_requests - requests)
                .min(p.results.len() - pos.index);
            let mut ids = Vec::with_capacity(n);
            for i in pos.index..pos.index + n {
                let Some(cid) = id_at(&p, i) else {
                    return Err(Error::invalid_response("Front conversation has no id")
                        .with_context("connector", NAME));
                };
                ids.push(cid);
            }
            let first_next = pos.children_next.take();
            let answers = futures::future::join_all(ids.iter().enumerate().map(|(i, cid)| {
                let next = if i == 0 { first_next.as_deref() } else { None };
                self.child_records(stream, child, cid, next)
            }))
            .await;
            requests += n;
            for (i, (cid, answer)) in ids.iter().zip(answers).enumerate() {
                let mut answer = answer?;
                // Follow this conversation to its end before the next one's records.
                while let Some((recs, next)) = answer.take() {
                    records.extend(recs);
                    let Some(next) = next else { break };
                    if requests >= max_requests {
                        pos.index += i;
                        pos.conversation_id = Some(cid.clone());
                        pos.children_next = Some(next);
                        return Ok((records, Some(pos)));
                    }
                    answer = self.child_records(stream, child, cid, Some(&next)).await?;
                    requests += 1;
                }
            }
            pos.index += n;
            pos.children_next = None;
            pos.conversation_id = id_at(&p, pos.index);
        }
        Ok((records, Some(pos)))
    }

    async fn events_children(
        &self,
        stream: &'static str,
        pos: &EventsPosition,
    ) -> Result<(Vec<Record>, EventsPosition, bool)> {
        let (types, target): (&[&str], &str) = if stream == streams::MESSAGES {
            (&MESSAGE_EVENT_TYPES, "message")
        } else {
            (&COMMENT_EVENT_TYPES, "comment")
        };
        let (events, next, more) = self.events_step(pos, types).await?;
        let mut seen = HashSet::new();
        let mut records = Vec::new();
        for ev in &events {
            if ev.target_kind() != Some(target) {
                continue;
            }
            let Some(id) = ev.target_id() else { continue };
            if !seen.insert(id.to_string()) {
                continue;
            }
            let rec = if stream == streams::MESSAGES {
                self.fetch_message(id, ev.conversation_id()).await?
            } else {
                self.fetch_comment(id, ev.conversation_id()).await?
            };
            records.push(rec);
        }
        Ok((records, next, more))
    }

    async fn read_nested(
        &self,
        stream: &'static str,
        cursor: Option<&CursorToken>,
    ) -> Result<Page> {
        enum Phase {
            Backfill(NestedPosition),
            Events(EventsPosition),
        }
        let fresh = || NestedPosition {
            conversations_page: None,
            index: 0,
            conversation_id: None,
            children_next: None,
            started_at_ms: self.now_ms(),
        };
        let phase = if stream == streams::MESSAGES {
            match cursor.map(MessagesCursor::from_token).transpose()? {
                None => Phase::Backfill(fresh()),
                Some(MessagesCursor::Backfill(p)) => Phase::Backfill(p),
                Some(MessagesCursor::Events(p)) => Phase::Events(p),
            }
        } else {
            match cursor.map(CommentsCursor::from_token).transpose()? {
                None => Phase::Backfill(fresh()),
                Some(CommentsCursor::Backfill(p)) => Phase::Backfill(p),
                Some(CommentsCursor::Events(p)) => Phase::Events(p),
            }
        };
        let token = |backfill: Option<NestedPosition>,
                     events: Option<EventsPosition>|
         -> Option<CursorToken> {
            if stream == streams::MESSAGES {
                match (backfill, events) {
                    (Some(b), _) => Some(MessagesCursor::Backfill(b).to_token()),
                    (None, Some(e)) => Some(MessagesCursor::Events(e).to_token()),
                    (None, None) => None,
                }
            } else {
                match (backfill, events) {
                    (Some(b), _) => Some(CommentsCursor::Backfill(b).to_token()),
                    (None, Some(e)) => Some(CommentsCursor::Events(e).to_token()),
                    (None, None) => None,
                }
            }
        };
        match phase {
            Phase::Backfill(pos) => {
                let started = pos.started_at_ms;
                let (records, next) = self.nested_step(stream, pos).await?;
                Ok(match next {
                    Some(p) => Page::new(records, token(Some(p), None), true),
                    None => Page::new(
                        records,
                        token(None, Some(EventsPosition::after(Some(started)))),
                        false,
                    ),
                })
            }
            Phase::Events(pos) => {
                let (records, next, more) = self.events_children(stream, &pos).await?;
                Ok(Page::new(records, token(None, Some(next)), more))
            }
        }
    }

    // ----- webhooks

    async fn changes_for_event(&self, kind: &str, ev: &Event) -> Result<Vec<Change>> {
        let at = ev.emitted_at.map(secs_to_ms);
        let stamp = |c: Change| match at {
            Some(ms) => c.at(ms),
            None => c,
        };
        let mut out = Vec::new();
        let conv_id = ev.conversation_id().map(str::to_string);
        let class = classify_event(kind, ev);
        if class.message
            && let Some(mid) = ev
                .target_id()
                .filter(|_| ev.target_kind() == Some("message"))
        {
            let full = ev
                .target
                .as_ref()
                .and_then(|t| t.data.clone())
                .filter(|d| d.get("text").is_some() || d.get("body").is_some());
            let rec = match full {
                Some(raw) => models::message_record(raw, conv_id.as_deref())?,
                None => self.fetch_message(mid, conv_id.as_deref()).await?,
            };
            out.push(stamp(change_from(streams::MESSAGES, mid, kind, rec)));
        }
        if class.comment
            && let Some(cid) = ev
                .target_id()
                .filter(|_| ev.target_kind() == Some("comment"))
        {
            let full = ev
                .target
                .as_ref()
                .and_then(|t| t.data.clone())
                .filter(|d| d.get("body").is_some());
            let rec = match full {
                Some(raw) => models::comment_record(raw, conv_id.as_deref())?,
                None => self.fetch_comment(cid, conv_id.as_deref()).await?,
            };
            out.push(stamp(change_from(streams::COMMENTS, cid, kind, rec)));
        }
        if class.contact {
            let contact_id = ev
                .target_id()
                .filter(|id| id.starts_with("crd_"))
                .map(str::to_string)
                .or_else(|| {
                    ev.source
                        .as_ref()
                        .and_then(|s| s.data_id())
                        .filter(|id| id.starts_with("crd_"))
                        .map(str::to_string)
                });
            if let Some(id) = contact_id {
                let rec = self.fetch_contact(&id).await?;
                out.push(stamp(change_from(streams::CONTACTS, &id, kind, rec)));
            }
        }
        if class.conversation
            && let Some(id) = &conv_id
        {
            // A full conversation object (it has a status) is used as is; a preview is fetched.
            let full = ev
                .conversation
                .clone()
                .filter(|c| c.get("status").is_some() && c.get("subject").is_some());
            let rec = match full {
                Some(raw) if !class.conversation_deleted => models::conversation_record(raw)?,
                _ if class.conversation_deleted => {
                    Record::delete(StreamId::from_static(streams::CONVERSATIONS), id)
                }
                _ => self.fetch_conversation(id).await?,
            };
            out.push(stamp(change_from(streams::CONVERSATIONS, id, kind, rec)));
        }
        Ok(out)
    }

    // ----- write-back

    async fn write_one(&self, stream: &str, op: &WriteOp) -> Result<String> {
        let id = op.id.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| {
            Error::invalid_input("Front write needs the object id").with_context("key", &op.key)
        })?;
        match (stream, &op.action) {
            (streams::CONVERSATIONS, WriteAction::Custom(a)) if a == "tag" || a == "untag" => {
                let tag_ids = op
                    .fields
                    .get("tag_ids")
                    .and_then(Value::as_array)
                    .filter(|a| !a.is_empty() && a.iter().all(Value::is_string))
                    .ok_or_else(|| {
                        Error::invalid_input("`tag_ids` must be a non-empty array of tag ids")
                    })?;
                let method = if a == "tag" {
                    Method::POST
                } else {
                    Method::DELETE
                };
                self.inner
                    .api
                    .send(
                        method,
                        &format!("/conversations/{}/tags", path_segment(id)?),
                        &json!({ "tag_ids": tag_ids }),
                    )
                    .await?;
                Ok(id.to_string())
            }
            (streams::CONVERSATIONS, WriteAction::Custom(a)) if a == "comment" => {
                let body = op
                    .fields
                    .get("body")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| Error::invalid_input("`body` must be a non-empty string"))?;
                let mut payload = json!({ "body": body });
                if let Some(author) = op.fields.get("author_id").and_then(Value::as_str) {
                    payload["author_id"] = json!(author);
                }
                let created = self
                    .inner
                    .api
                    .send(
                        Method::POST,
                        &format!("/conversations/{}/comments", path_segment(id)?),
                        &payload,
                    )
                    .await?;
                Ok(created
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or(id)
                    .to_string())
            }
            (streams::CONTACTS, WriteAction::Update) => {
                if !op.fields.is_object() {
                    return Err(Error::invalid_input(
                        "contact update fields must be a JSON object",
                    ));
                }
                if let (Some(since), false) = (op.if_unmodified_since, op.force) {
                    let current = self.fetch_contact(id).await?;
                    if current.op == Op::Delete {
                        return Err(Error::new(ErrorKind::NotFound, "Front contact not found")
                            .with_context("id", id));
                    }
                    if let Some(v) = current.version
                        && v > since
                    {
                        return Err(
                            Error::new(ErrorKind::Conflict, "Front contact changed since")
                                .with_context("id", id)
                                .with_context("version", v),
                        );
                    }
                }
                self.inner
                    .api
                    .send(
                        Method::PATCH,
                        &format!("/contacts/{}", path_segment(id)?),
                        &op.fields,
                    )
                    .await?;
                Ok(id.to_string())
            }
            _ => Err(Error::unsupported(
                "Front write-back supports conversations tag/untag/comment and contacts update",
            )
            .with_context("stream", stream.to_string())),
        }
    }
}

fn change_from(stream: &'static str, id: &str, kind: &str, rec: Record) -> Change {
    let op = rec.op;
    let c = Change::new(StreamId::from_static(stream), id, op, kind);
    if op == Op::Upsert {
        c.with_record(rec)
    } else {
        c
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct EventClass {
    conversation: bool,
    conversation_deleted: bool,
    message: bool,
    comment: bool,
    contact: bool,
}

/// Which streams an event touches, by its type: the `/events` names (`inbound`, `archive`,
/// `tag`, ...) and the application-webhook names (`inbound_received`, `conversation_archived`,
/// `tag_added`, ...).
fn classify_event(kind: &str, ev: &Event) -> EventClass {
    let k = kind.to_ascii_lowercase();
    let mut c = EventClass::default();
    let message_kinds = [
        "inbound",
        "outbound",
        "out_reply",
        "forward",
        "inbound_received",
        "outbound_sent",
        "outbound_reply",
        "message_received",
        "message_sent",
        "sending_error",
        "message_bounce_error",
    ];
    let comment_kinds = [
        "comment",
        "mention",
        "new_comment_added",
        "comment_added",
        "comment_created",
        "teammate_mentioned",
    ];
    if message_kinds.contains(&k.as_str()) || ev.target_kind() == Some("message") {
        c.message = true;
        c.conversation = true;
    }
    if comment_kinds.contains(&k.as_str()) || ev.target_kind() == Some("comment") {
        c.comment = true;
    }
    if k.starts_with("contact") {
        c.contact = true;
    }
    if k == "conversation_deleted" || k == "conversation_permanently_deleted" {
        c.conversation = true;
        c.conversation_deleted = true;
    }
    // Everything else about a conversation (archive, reopen, assign, unassign, tag, untag,
    // move, trash, restore, conversations_merged, link_*, custom_field_updated,
    // conversation_archived, assignee_changed, tag_added, tag_removed, ...).
    if !c.message && !c.comment && !c.contact && ev.conversation_id().is_some() {
        c.conversation = true;
    }
    c
}

#[async_trait]
impl Connector for FrontConnector {
    fn info(&self) -> &ConnectorInfo {
        &self.inner.info
    }

    async fn check(&self) -> Result<()> {
        self.inner.api.get("/me").await.map(|_| ())
    }

    async fn read(&self, stream: &StreamId, cursor: Option<&CursorToken>) -> Result<Page> {
        if self.inner.info.stream(stream).is_none() {
            return Err(stream_err(stream));
        }
        let page = match stream.as_str() {
            streams::CONVERSATIONS => self.read_conversations(cursor).await,
            streams::MESSAGES => self.read_nested(streams::MESSAGES, cursor).await,
            streams::COMMENTS => self.read_nested(streams::COMMENTS, cursor).await,
            streams::CONTACTS => self.read_contacts(cursor).await,
            streams::TAGS => self.read_tags(cursor).await,
            streams::EVENTS => self.read_events(cursor).await,
            streams::TEAMMATES => {
                let pos = match cursor {
                    Some(t) => TeammatesCursor::from_token(t)?.0,
                    None => RefreshPosition {
                        next: None,
                        completed_at_ms: None,
                    },
                };
                let (records, next, more) = self.read_refresh(streams::TEAMMATES, pos).await?;
                Ok(Page::new(
                    records,
                    Some(TeammatesCursor(next).to_token()),
                    more,
                ))
            }
            streams::INBOXES => {
                let pos = match cursor {
                    Some(t) => InboxesCursor::from_token(t)?.0,
                    None => RefreshPosition {
                        next: None,
                        completed_at_ms: None,
                    },
                };
                let (records, next, more) = self.read_refresh(streams::INBOXES, pos).await?;
                Ok(Page::new(
                    records,
                    Some(InboxesCursor(next).to_token()),
                    more,
                ))
            }
            _ => Err(stream_err(stream)),
        };
        page.map_err(|e| {
            if e.context_value("stream").is_some() {
                e
            } else {
                e.with_context("stream", stream)
            }
        })
    }

    async fn write(&self, stream: &StreamId, ops: Vec<WriteOp>) -> Result<WriteReport> {
        if !matches!(stream.as_str(), streams::CONVERSATIONS | streams::CONTACTS) {
            return Err(
                Error::unsupported("Front write-back covers conversations and contacts")
                    .with_context("stream", stream),
            );
        }
        let mut report = WriteReport::default();
        for op in ops {
            let result = match self.write_one(stream.as_str(), &op).await {
                Ok(id) => WriteResult::ok(op.key.clone(), id),
                // Whole-call failures stop the batch: the next op would fail the same way.
                Err(e) if matches!(e.kind(), ErrorKind::Unauthenticated | ErrorKind::Network) => {
                    return Err(e);
                }
                Err(e) => WriteResult::err(op.key.clone(), e),
            };
            report.results.push(result);
        }
        Ok(report)
    }

    fn webhook_verifier(&self) -> Option<Arc<dyn WebhookVerifier>> {
        self.inner.verifier.clone()
    }

    /// One event per delivery (Front sends one event per webhook), keyed by the verifier's
    /// event id, else the body's `payload.id` or `id`, else the body hash. A body that is not
    /// a JSON object is `Malformed` (see [`delivery_events`]).
    fn webhook_events(
        &self,
        verified: &Verified,
        body: &Bytes,
    ) -> std::result::Result<Vec<WebhookEvent>, WebhookError> {
        delivery_events(verified, body)
    }

    async fn parse_webhook(&self, webhook: &VerifiedWebhook) -> Result<Vec<Change>> {
        let body: Value = serde_json::from_slice(&webhook.body).map_err(|e| {
            Error::invalid_input("Front webhook body is not JSON")
                .with_context("connector", NAME)
                .set_source(e)
        })?;
        let (kind, payload) = match body.get("payload") {
            // Application webhook: {type, authorization: {id}, payload: <Event>}.
            Some(p) => {
                let kind = body
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                (kind, p.clone())
            }
            None => {
                // The validation request carries no event.
                if body.get("type").and_then(Value::as_str) == Some("sync") {
                    return Ok(Vec::new());
                }
                // Rule webhook: the event itself (full or preview).
                let kind = body
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                (kind, body)
            }
        };
        if kind == "sync" {
            return Ok(Vec::new());
        }
        let ev: Event = serde_json::from_value(payload).map_err(|e| {
            Error::invalid_input("Front webhook payload is not an event")
                .with_context("connector", NAME)
                .set_source(e)
        })?;
        if ev.id.is_empty() && ev.conversation_id().is_none() {
            return Err(Error::invalid_input(
                "Front webhook has neither an event id nor a conversation",
            )
            .with_context("connector", NAME));
        }
        let kind = if kind.is_empty() {
            ev.kind.clone()
        } else {
            kind
        };
        self.changes_for_event(&kind, &ev).await
    }
}

/// Front's authorize URL.
pub const OAUTH_AUTHORIZE_URL: &str = "https://app.frontapp.com/oauth/authorize";
/// Front's token URL (code exchange and refresh).
pub const OAUTH_TOKEN_URL: &str = "https://app.frontapp.com/oauth/token";

/// The OAuth configuration of a Front app: authorize at `app.frontapp.com/oauth/authorize`
/// (no scope parameter: Front grants "shared resources"), token and refresh at
/// `app.frontapp.com/oauth/token` with HTTP Basic client authentication. Feed it to
/// [`apex_connect_core::oauth::OAuthClient`], and the client to a
/// [`TokenManager`], then give that to [`FrontConnectorBuilder::oauth`].
pub fn oauth_config(
    client_id: impl Into<String>,
    client_secret: &SecretString,
    redirect_url: impl Into<String>,
) -> apex_connect_core::oauth::OAuthConfig {
    apex_connect_core::oauth::OAuthConfig::new(client_id, OAUTH_TOKEN_URL)
        .with_client_secret(client_secret.expose_secret())
        .with_auth_url(OAUTH_AUTHORIZE_URL)
        .with_redirect_url(redirect_url)
        .with_client_auth(apex_connect_core::oauth::ClientAuth::Basic)
}
