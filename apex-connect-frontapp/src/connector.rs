//! `FrontConnector`: the streams, incremental sync through `/events`, webhooks and write-back.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use apex_connect_core::http::{
    Credentials, HttpClient, HttpStatsSnapshot, LinkGuard, RateGate, RetryConfig, StaticToken,
    path_segment,
};
use apex_connect_core::oauth::TokenManager;
use apex_connect_core::webhook::{Verified, WebhookRequest, WebhookSecrets, unix_ms};
use apex_connect_core::{
    Capabilities, Change, Connector, ConnectorInfo, CursorToken, Entity, Error, ErrorKind, Op,
    Page, RawJson, Record, Reject, Result, StreamId, StreamInfo, StreamSchema, SyncCursor,
    VerifiedWebhook, WebhookError, WebhookEvent, WebhookVerifier, Webhooks, WriteAction, WriteOp,
    WriteReport, WriteResult, async_trait,
};
use bytes::Bytes;
use http::{HeaderMap, Method};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::NAME;
use crate::api::{FrontApi, FrontPolicy, MAX_UNPAGED_RESULTS, RawList};
use crate::config::FrontConfig;
use crate::cursor::{
    CommentsCursor, ContactsCursor, ConversationsCursor, EventsCursor, EventsPosition,
    InboxesCursor, ListPosition, MessagesCursor, NestedPosition, RefreshPosition, TagsCursor,
    TeammatesCursor,
};
use crate::models::{self, EventView, ms_to_secs_param, read_items_of, streams};
use crate::schema;
use crate::webhook::{FrontAppWebhookVerifier, FrontRuleWebhookVerifier, delivery_events};

/// The Core API version the connector speaks.
pub const API_VERSION: &str = "core-api-2024";

/// Event types that name a message (`target._meta.type == "message"`).
const MESSAGE_EVENT_TYPES: [&str; 4] = ["inbound", "outbound", "out_reply", "forward"];
/// Event types that name a comment.
const COMMENT_EVENT_TYPES: [&str; 2] = ["comment", "mention"];

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// A connector for one Front company (one API token or OAuth grant).
///
/// Build it with [`FrontConnector::builder`], or from a connection's settings and secrets with
/// [`crate::PLATFORM`]. Cheap to clone.
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
///
/// Records carry Front's JSON as received (slices of the page body); only their envelope is
/// read ([`models::parse_record`]); objects whose envelope cannot be read are returned in
/// [`Page::rejects`]. Entities are mapped on demand and leniently ([`Connector::map_entity`]).
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

    /// Authenticates with OAuth tokens managed (and refreshed) by `manager` (owned or shared);
    /// the connector then claims `Capabilities::oauth_refresh`.
    pub fn oauth(mut self, manager: impl Into<Arc<TokenManager>>) -> Self {
        let manager: Arc<TokenManager> = manager.into();
        self.refreshable = true;
        self.credentials = Some(manager);
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
            .filter_map(|s| streams::by_name(s))
            .map(stream_info)
            .collect();
        let mut caps = Capabilities::new(stream_infos).with_write_back();
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
            }),
        })
    }
}

/// What the connector declares about a stream: incremental (all but teammates and inboxes),
/// key `id`, the replication key (the record's version field, see
/// [`models::version_fields`]), and deletes for the streams whose incremental phase reports
/// them (conversations, messages, comments: an object named by an event that is gone).
fn stream_info(s: &'static str) -> StreamInfo {
    let incremental = !matches!(s, streams::TEAMMATES | streams::INBOXES);
    let mut info = StreamInfo::new(StreamId::from_static(s), incremental).with_key(["id"]);
    if incremental && let (Some(field), _) = models::version_fields(s) {
        info = info.with_replication_key(field);
    }
    if matches!(
        s,
        streams::CONVERSATIONS | streams::MESSAGES | streams::COMMENTS
    ) {
        info = info.with_deletes();
    }
    info
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
        .permanent()
}

/// Where a nested read stopped: what it read, and where the next read continues (`None`:
/// the backfill is complete).
type NestedStep = (Vec<Record>, Vec<Reject>, Option<NestedPosition>);

/// The end of a read that failed after it had fetched something: what was fetched is
/// returned with the position of the request that failed (the next read makes it again, and
/// a lasting failure surfaces there); a failure before anything was fetched is the read's.
fn partial(
    records: Vec<Record>,
    rejects: Vec<Reject>,
    pos: NestedPosition,
    error: Error,
) -> Result<NestedStep> {
    if records.is_empty() && rejects.is_empty() {
        return Err(error);
    }
    tracing::warn!(connector = NAME, error = %error,
        "nested read stopped early; the records fetched are returned and the next read retries");
    Ok((records, rejects, Some(pos)))
}

/// A record fetched by id: the record (a delete when Front answered 404), or the object
/// quarantined when its envelope cannot be read.
type Fetched = std::result::Result<Record, Reject>;

/// The verifier of a connector without webhook secrets (never returned by
/// [`Connector::webhooks`], which is `None` then): it refuses everything.
#[derive(Debug)]
struct NoVerifier;

impl WebhookVerifier for NoVerifier {
    fn verify(
        &self,
        _request: &WebhookRequest<'_>,
        _now: SystemTime,
    ) -> std::result::Result<Verified, WebhookError> {
        Err(WebhookError::NoSecret)
    }

    fn sign(
        &self,
        _request: &WebhookRequest<'_>,
        _now: SystemTime,
    ) -> std::result::Result<HeaderMap, WebhookError> {
        Err(WebhookError::NoSecret)
    }
}

/// Which of `text`/`body` (messages, comments) or `status`/`subject` (conversations) an
/// object embedded in an event carries: a full object, or a preview to complete with a `GET`.
#[derive(Default, Deserialize)]
struct Probe {
    #[serde(default)]
    text: Option<IgnoredAny>,
    #[serde(default)]
    body: Option<IgnoredAny>,
    #[serde(default)]
    status: Option<IgnoredAny>,
    #[serde(default)]
    subject: Option<IgnoredAny>,
}

impl Probe {
    fn of(raw: &RawValue) -> Probe {
        if !raw.get().starts_with('{') {
            return Probe::default();
        }
        serde_json::from_str(raw.get()).unwrap_or_default()
    }
}

/// The parts of a webhook body: the application envelope `{type, authorization, payload}`,
/// or (rule webhooks) the event itself.
#[derive(Deserialize)]
struct Delivery<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: apex_connect_core::lenient::LenientStr<'a>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// What the incremental phases need of an event: owned, so the page can be dropped.
struct EventRef {
    conversation: Option<String>,
    target_kind: Option<String>,
    target_id: Option<String>,
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
        i64::try_from(self.inner.config.lookback_secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000)
    }

    fn page_size(&self) -> usize {
        self.inner.config.page_size as usize
    }

    fn limit(&self) -> (&'static str, String) {
        ("limit", self.inner.config.page_size.to_string())
    }

    // ----- plain lists

    /// One list page (asking for `limit` results), refusing a `next` link equal to the one
    /// just followed.
    async fn list_page(
        &self,
        path: &str,
        query: &[(&str, String)],
        next: Option<&str>,
        limit: usize,
        what: &'static str,
    ) -> Result<RawList> {
        let resp = self.inner.api.list(path, query, next, limit).await?;
        if let (Some(cur), Some(n)) = (next, resp.next.as_deref())
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
            .list_page(
                path,
                &[self.limit()],
                pos.next.as_deref(),
                self.page_size(),
                stream,
            )
            .await?;
        let (records, rejects) = read_items_of(stream, resp.items, None);
        Ok(match resp.next {
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
        }
        .with_rejects(rejects))
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
                let mut rejects = Vec::new();
                for ev in &events {
                    let Some(id) = ev.conversation.as_deref() else {
                        continue;
                    };
                    if !seen.insert(id) {
                        continue;
                    }
                    match self
                        .fetch(streams::CONVERSATIONS, "/conversations", id, None)
                        .await?
                    {
                        Ok(r) => records.push(r),
                        Err(r) => rejects.push(r),
                    }
                }
                Ok(Page::new(
                    records,
                    Some(ConversationsCursor::Events(next).to_token()),
                    has_more,
                )
                .with_rejects(rejects))
            }
        }
    }

    /// `GET {prefix}/{id}` as a record of `stream`: a delete when Front answers 404, a
    /// reject when the object's envelope cannot be read.
    async fn fetch(
        &self,
        stream: &'static str,
        prefix: &str,
        id: &str,
        parent: Option<&str>,
    ) -> Result<Fetched> {
        let path = format!("{prefix}/{}", path_segment(id)?);
        let Some(raw) = self.inner.api.get_raw_opt(&path).await? else {
            let mut rec = Record::delete(StreamId::from_static(stream), id);
            if let Some(p) = parent {
                rec = rec.with_parent(p);
            }
            return Ok(Ok(rec));
        };
        Ok(
            models::parse_record(stream, raw.clone(), parent).map_err(|e| {
                Reject::unparsed(
                    StreamId::from_static(stream),
                    Some(id.to_string()),
                    raw.bytes().clone(),
                    &e,
                )
                .with_parent(parent.map(str::to_string))
            }),
        )
    }

    /// One page of `/events` (ascending) from `pos`, filtered by `types` (empty: all).
    async fn events_step(
        &self,
        pos: &EventsPosition,
        types: &[&str],
    ) -> Result<(Vec<EventRef>, EventsPosition, bool)> {
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
            .list_page(
                "/events",
                &query,
                pos.next.as_deref(),
                self.inner.config.events_page_size as usize,
                "events",
            )
            .await?;
        let mut high = pos.high_water_ms;
        let mut events = Vec::with_capacity(resp.items.len());
        let mut fresh = Vec::with_capacity(resp.items.len());
        for raw in &resp.items {
            let Some(ev) = EventView::parse(raw.as_str()) else {
                tracing::warn!(
                    connector = NAME,
                    "skipping an /events item that is not an event object"
                );
                continue;
            };
            let id = ev.id.non_empty();
            // Read by an earlier walk (the lookback window is read again): skip it.
            if id.is_some_and(|id| pos.has_seen(id)) {
                continue;
            }
            if let Some(ms) = ev.emitted_ms() {
                high = Some(high.map_or(ms, |h| h.max(ms)));
                if let Some(id) = id {
                    fresh.push((id.to_string(), ms));
                }
            }
            events.push(EventRef {
                conversation: ev.conversation_id(),
                target_kind: ev.target_kind().map(str::to_string),
                target_id: ev.target_id(),
            });
        }
        let (next, more) = self.advance_events(pos, resp.next, high, fresh);
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
            .list_page(
                "/events",
                &query,
                pos.next.as_deref(),
                self.inner.config.events_page_size as usize,
                "events",
            )
            .await?;
        let (mut records, rejects) = read_items_of(streams::EVENTS, resp.items, None);
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
        let (next, has_more) = self.advance_events(&pos, resp.next, high, fresh);
        Ok(Page::new(records, Some(EventsCursor(next).to_token()), has_more).with_rejects(rejects))
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
                    .list_page(
                        "/contacts",
                        &query,
                        next.as_deref(),
                        self.page_size(),
                        "contacts",
                    )
                    .await?;
                let (records, rejects) = read_items_of(streams::CONTACTS, resp.items, None);
                let (cur, more) = match resp.next {
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
                Ok(Page::new(records, Some(cur.to_token()), more).with_rejects(rejects))
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
            .list_page(
                "/tags",
                &[self.limit()],
                cur.next.as_deref(),
                self.page_size(),
                "tags",
            )
            .await?;
        let (mut records, rejects) = read_items_of(streams::TAGS, resp.items, None);
        if let Some(since) = cur.since_ms {
            let from = since.saturating_sub(self.lookback_ms());
            records.retain(|r| r.version.is_none_or(|v| v > from));
        }
        let (next, more) = match resp.next {
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
        Ok(Page::new(records, Some(next.to_token()), more).with_rejects(rejects))
    }

    async fn read_refresh(
        &self,
        stream: &'static str,
        pos: RefreshPosition,
    ) -> Result<(Vec<Record>, Vec<Reject>, RefreshPosition, bool)> {
        let path = if stream == streams::TEAMMATES {
            "/teammates"
        } else {
            "/inboxes"
        };
        let resp = self
            .list_page(path, &[], pos.next.as_deref(), MAX_UNPAGED_RESULTS, stream)
            .await?;
        let (records, rejects) = read_items_of(stream, resp.items, None);
        Ok(match resp.next {
            Some(n) => (
                records,
                rejects,
                RefreshPosition {
                    next: Some(n),
                    completed_at_ms: pos.completed_at_ms,
                },
                true,
            ),
            None => (
                records,
                rejects,
                RefreshPosition {
                    next: None,
                    completed_at_ms: Some(self.now_ms()),
                },
                false,
            ),
        })
    }

    /// One page of a conversation's children (`child` is `messages` or `comments`); `None`
    /// when the conversation is gone (404).
    async fn child_list(
        &self,
        child: &'static str,
        conversation_id: &str,
        next: Option<&str>,
    ) -> Result<Option<RawList>> {
        let path = format!("/conversations/{}/{child}", path_segment(conversation_id)?);
        // Front pages messages by `limit`; comments are not paged (a `next` is still followed).
        let (query, limit) = if child == "messages" {
            (vec![self.limit()], self.page_size())
        } else {
            (Vec::new(), MAX_UNPAGED_RESULTS)
        };
        match self.list_page(&path, &query, next, limit, child).await {
            Ok(r) => Ok(Some(r)),
            // Deleted between the list and now: nothing to read.
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One read of the nested walk: the conversations page when the cursor does not hold its
    /// ids yet, then each pending conversation's children, the first pages of
    /// `nested_concurrency` conversations at a time, within `nested_requests_per_read`
    /// requests and about `page_size` records.
    ///
    /// - Records come out in walk order whatever the concurrency: a batch's answers are
    ///   consumed in list order, and a conversation with more than one page of children is
    ///   followed to its end before the next conversation's records (the answers of the batch
    ///   after it are dropped and fetched again later).
    /// - Each conversations page is read once: its ids go into the cursor.
    /// - One read follows `next` links at one level only: a read that followed a
    ///   conversations `next` link stops before a children `next` link (the next read goes on
    ///   from there), and a read never fetches a second conversations page.
    /// - Every link followed goes through one [`LinkGuard`] per read (a repeated link, or a
    ///   run of pages bringing no new record, is an error).
    /// - A failure after records were fetched returns them with the position of the failed
    ///   request; the next read makes it again (a lasting failure surfaces there).
    async fn nested_step(
        &self,
        stream: &'static str,
        mut pos: NestedPosition,
    ) -> Result<NestedStep> {
        let child = if stream == streams::MESSAGES {
            "messages"
        } else {
            "comments"
        };
        let max_requests = self.inner.config.nested_requests_per_read.max(1) as usize;
        let page_size = self.page_size();
        let concurrency = self.inner.config.nested_concurrency.max(1) as usize;
        let mut records: Vec<Record> = Vec::new();
        let mut rejects: Vec<Reject> = Vec::new();
        let mut requests = 0usize;
        let mut guard = LinkGuard::new();
        // Ids of the records brought by children pages reached through links in this read.
        let mut linked_ids: HashSet<String> = HashSet::new();
        let mut followed_page_link = false;

        if pos.pending.is_none() {
            if let Some(link) = pos.conversations_page.as_deref() {
                guard.check_link(link)?;
                followed_page_link = true;
            }
            let page = self
                .inner
                .api
                .list_ids(
                    "/conversations",
                    &[self.limit()],
                    pos.conversations_page.as_deref(),
                    page_size,
                )
                .await?;
            requests += 1;
            if let (Some(cur), Some(n)) = (&pos.conversations_page, &page.next)
                && cur == n
            {
                return Err(loop_err("conversations"));
            }
            if page.skipped > 0 {
                tracing::warn!(
                    connector = NAME,
                    stream,
                    skipped = page.skipped,
                    "conversations without a string id: their children cannot be listed"
                );
            }
            let mut ids: VecDeque<String> = page.ids.into();
            match pos.resume_at.take() {
                Some(at) => match ids.iter().position(|i| *i == at) {
                    Some(i) => {
                        ids.drain(..i);
                    }
                    None => pos.children_next = None,
                },
                None => pos.children_next = None,
            }
            pos.pending = Some(ids);
            pos.next_page = page.next;
        }

        loop {
            if requests >= max_requests || records.len() + rejects.len() >= page_size {
                return Ok((records, rejects, Some(pos)));
            }
            let Some(first) = pos.pending.as_ref().and_then(|p| p.front()).cloned() else {
                // This conversations page is done: the next read starts the next one.
                let next = pos
                    .next_page
                    .take()
                    .map(|link| NestedPosition::at_page(Some(link), pos.started_at_ms));
                return Ok((records, rejects, next));
            };
            if let Some(link) = pos.children_next.clone() {
                if followed_page_link {
                    return Ok((records, rejects, Some(pos)));
                }
                if let Err(e) = guard.check_link(&link) {
                    return partial(records, rejects, pos, e);
                }
                requests += 1;
                match self.child_list(child, &first, Some(&link)).await {
                    Err(e) => return partial(records, rejects, pos, e),
                    Ok(None) => {
                        pos.children_next = None;
                        if let Some(p) = pos.pending.as_mut() {
                            p.pop_front();
                        }
                    }
                    Ok(Some(list)) => {
                        let (recs, rejs) = read_items_of(stream, list.items, Some(&first));
                        let new = recs
                            .iter()
                            .filter(|r| linked_ids.insert(r.id.clone()))
                            .count()
                            + rejs.len();
                        records.extend(recs);
                        rejects.extend(rejs);
                        pos.children_next = list.next;
                        if pos.children_next.is_none()
                            && let Some(p) = pos.pending.as_mut()
                        {
                            p.pop_front();
                        }
                        if let Err(e) = guard.record_page(new) {
                            return partial(records, rejects, pos, e);
                        }
                    }
                }
                continue;
            }
            // A batch: the first pages of the next pending conversations, concurrently.
            let ids: Vec<String> = pos
                .pending
                .iter()
                .flatten()
                .take(concurrency.min(max_requests - requests))
                .cloned()
                .collect();
            let answers =
                futures::future::join_all(ids.iter().map(|cid| self.child_list(child, cid, None)))
                    .await;
            requests += ids.len();
            for (cid, answer) in ids.iter().zip(answers) {
                match answer {
                    // `cid` is the first pending conversation: the next read starts with it.
                    Err(e) => return partial(records, rejects, pos, e),
                    Ok(None) => {
                        if let Some(p) = pos.pending.as_mut() {
                            p.pop_front();
                        }
                    }
                    Ok(Some(list)) => {
                        let (recs, rejs) = read_items_of(stream, list.items, Some(cid));
                        records.extend(recs);
                        rejects.extend(rejs);
                        match list.next {
                            // The rest of this conversation comes next; the batch's later
                            // answers are dropped (read again after it).
                            Some(next) => {
                                pos.children_next = Some(next);
                                break;
                            }
                            None => {
                                if let Some(p) = pos.pending.as_mut() {
                                    p.pop_front();
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    async fn events_children(
        &self,
        stream: &'static str,
        pos: &EventsPosition,
    ) -> Result<(Vec<Record>, Vec<Reject>, EventsPosition, bool)> {
        let (types, target, prefix): (&[&str], &str, &str) = if stream == streams::MESSAGES {
            (&MESSAGE_EVENT_TYPES, "message", "/messages")
        } else {
            (&COMMENT_EVENT_TYPES, "comment", "/comments")
        };
        let (events, next, more) = self.events_step(pos, types).await?;
        let mut seen = HashSet::new();
        let mut records = Vec::new();
        let mut rejects = Vec::new();
        for ev in &events {
            if ev.target_kind.as_deref() != Some(target) {
                continue;
            }
            let Some(id) = ev.target_id.as_deref() else {
                continue;
            };
            if !seen.insert(id) {
                continue;
            }
            match self
                .fetch(stream, prefix, id, ev.conversation.as_deref())
                .await?
            {
                Ok(r) => records.push(r),
                Err(r) => rejects.push(r),
            }
        }
        Ok((records, rejects, next, more))
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
        let phase = if stream == streams::MESSAGES {
            match cursor.map(MessagesCursor::from_token).transpose()? {
                None => Phase::Backfill(NestedPosition::start(self.now_ms())),
                Some(MessagesCursor::Backfill(p)) => Phase::Backfill(p),
                Some(MessagesCursor::Events(p)) => Phase::Events(p),
            }
        } else {
            match cursor.map(CommentsCursor::from_token).transpose()? {
                None => Phase::Backfill(NestedPosition::start(self.now_ms())),
                Some(CommentsCursor::Backfill(p)) => Phase::Backfill(p),
                Some(CommentsCursor::Events(p)) => Phase::Events(p),
            }
        };
        let backfill_token = |p: NestedPosition| -> CursorToken {
            if stream == streams::MESSAGES {
                MessagesCursor::Backfill(p).to_token()
            } else {
                CommentsCursor::Backfill(p).to_token()
            }
        };
        let events_token = |p: EventsPosition| -> CursorToken {
            if stream == streams::MESSAGES {
                MessagesCursor::Events(p).to_token()
            } else {
                CommentsCursor::Events(p).to_token()
            }
        };
        match phase {
            Phase::Backfill(pos) => {
                let started = pos.started_at_ms;
                let (records, rejects, next) = self.nested_step(stream, pos).await?;
                Ok(match next {
                    Some(p) => Page::new(records, Some(backfill_token(p)), true),
                    None => Page::new(
                        records,
                        Some(events_token(EventsPosition::after(Some(started)))),
                        false,
                    ),
                }
                .with_rejects(rejects))
            }
            Phase::Events(pos) => {
                let (records, rejects, next, more) = self.events_children(stream, &pos).await?;
                Ok(Page::new(records, Some(events_token(next)), more).with_rejects(rejects))
            }
        }
    }

    // ----- webhooks

    /// Turns a webhook body (application envelope or rule webhook event) into changes.
    async fn parse_webhook_body(&self, body: &Bytes) -> Result<Vec<Change>> {
        let not_event =
            |what: &'static str| Error::invalid_input(what).with_context("connector", NAME);
        let text = std::str::from_utf8(body)
            .map_err(|e| not_event("Front webhook body is not UTF-8").set_source(e))?;
        if !text.trim_start().starts_with('{') {
            return Err(not_event("Front webhook body is not a JSON object"));
        }
        let delivery: Delivery<'_> = serde_json::from_str(text)
            .map_err(|e| not_event("Front webhook body is not JSON").set_source(e))?;
        let mut kind = delivery.kind.as_deref().unwrap_or_default().to_string();
        if kind == "sync" {
            // The validation request carries no event.
            return Ok(Vec::new());
        }
        // Application webhook: the event is `payload`; rule webhook: the body itself.
        let event_text = delivery.payload.map_or(text, RawValue::get);
        let ev = EventView::parse(event_text)
            .ok_or_else(|| not_event("Front webhook payload is not an event"))?;
        if ev.id.non_empty().is_none() && ev.conversation_id().is_none() {
            return Err(not_event(
                "Front webhook has neither an event id nor a conversation",
            ));
        }
        if kind.is_empty() {
            kind = ev.kind.as_deref().unwrap_or_default().to_string();
        }
        self.changes_for_event(body, &kind, &ev).await
    }

    /// An object embedded in an event (a slice of the webhook body) as a record of `stream`
    /// when `full` says it is complete, else the object fetched by id. `None` when neither
    /// gives a readable record (the change stays thin: the worker reads the object again).
    #[allow(clippy::too_many_arguments)]
    async fn embedded_or_fetched(
        &self,
        body: &Bytes,
        embedded: Option<&RawValue>,
        full: impl Fn(&Probe) -> bool,
        stream: &'static str,
        prefix: &str,
        id: &str,
        parent: Option<&str>,
    ) -> Result<Option<Record>> {
        if let Some(raw) = embedded.filter(|r| full(&Probe::of(r)))
            && let Ok(rec) = models::parse_record(stream, RawJson::from_raw_in(body, raw), parent)
        {
            return Ok(Some(rec));
        }
        Ok(self.fetch(stream, prefix, id, parent).await?.ok())
    }

    async fn changes_for_event(
        &self,
        body: &Bytes,
        kind: &str,
        ev: &EventView<'_>,
    ) -> Result<Vec<Change>> {
        let at = ev.emitted_ms();
        let stamp = |c: Change| match at {
            Some(ms) => c.at(ms),
            None => c,
        };
        let mut out = Vec::new();
        let conv_id = ev.conversation_id();
        let class = classify_event(kind, ev);
        let target_data = ev.target.0.as_ref().and_then(|t| t.data);
        if class.message
            && ev.target_kind() == Some("message")
            && let Some(mid) = ev.target_id()
        {
            let rec = self
                .embedded_or_fetched(
                    body,
                    target_data,
                    |p| p.text.is_some() || p.body.is_some(),
                    streams::MESSAGES,
                    "/messages",
                    &mid,
                    conv_id.as_deref(),
                )
                .await?;
            out.push(stamp(change_from(streams::MESSAGES, &mid, kind, rec)));
        }
        if class.comment
            && ev.target_kind() == Some("comment")
            && let Some(cid) = ev.target_id()
        {
            let rec = self
                .embedded_or_fetched(
                    body,
                    target_data,
                    |p| p.body.is_some(),
                    streams::COMMENTS,
                    "/comments",
                    &cid,
                    conv_id.as_deref(),
                )
                .await?;
            out.push(stamp(change_from(streams::COMMENTS, &cid, kind, rec)));
        }
        if class.contact {
            let contact_id = ev
                .target_id()
                .filter(|id| id.starts_with("crd_"))
                .or_else(|| ev.source_id().filter(|id| id.starts_with("crd_")));
            if let Some(id) = contact_id {
                let rec = self
                    .fetch(streams::CONTACTS, "/contacts", &id, None)
                    .await?
                    .ok();
                out.push(stamp(change_from(streams::CONTACTS, &id, kind, rec)));
            }
        }
        if class.conversation
            && let Some(id) = &conv_id
        {
            let rec = if class.conversation_deleted {
                Some(Record::delete(
                    StreamId::from_static(streams::CONVERSATIONS),
                    id,
                ))
            } else {
                // A full conversation object (it has a status and a subject) is used as is;
                // a preview is fetched.
                self.embedded_or_fetched(
                    body,
                    ev.conversation,
                    |p| p.status.is_some() && p.subject.is_some(),
                    streams::CONVERSATIONS,
                    "/conversations",
                    id,
                    None,
                )
                .await?
            };
            out.push(stamp(change_from(streams::CONVERSATIONS, id, kind, rec)));
        }
        Ok(out)
    }

    /// The account's custom fields of the object type at `path` (`/contacts/custom_fields`,
    /// ...). Without the `custom_fields:read` scope (403) or the endpoint (404) there are
    /// none to describe.
    async fn custom_fields(&self, path: &str) -> Result<Vec<schema::CustomField>> {
        match self
            .list_page(path, &[], None, MAX_UNPAGED_RESULTS, "custom_fields")
            .await
        {
            Ok(list) => Ok(list
                .items
                .iter()
                .filter_map(|raw| schema::CustomField::parse(raw.as_str()))
                .collect()),
            Err(e) if matches!(e.kind(), ErrorKind::PermissionDenied | ErrorKind::NotFound) => {
                tracing::warn!(connector = NAME, path, error = %e,
                    "custom fields cannot be listed; the schema leaves them open");
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
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
                    let current = self
                        .fetch(streams::CONTACTS, "/contacts", id, None)
                        .await?
                        .map_err(|reject| {
                            Error::invalid_response(
                                "Front contact cannot be read: its version is unknown",
                            )
                            .with_context("id", id)
                            .with_context("problem", reject.error)
                        })?;
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

/// A change of `id` in `stream`: with the record when there is one (an upsert), as a delete,
/// or thin (`rec` is `None`: an upsert the worker completes by reading the object).
fn change_from(stream: &'static str, id: &str, kind: &str, rec: Option<Record>) -> Change {
    let Some(rec) = rec else {
        return Change::new(StreamId::from_static(stream), id, Op::Upsert, kind);
    };
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
fn classify_event(kind: &str, ev: &EventView<'_>) -> EventClass {
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
                let (records, rejects, next, more) =
                    self.read_refresh(streams::TEAMMATES, pos).await?;
                Ok(
                    Page::new(records, Some(TeammatesCursor(next).to_token()), more)
                        .with_rejects(rejects),
                )
            }
            streams::INBOXES => {
                let pos = match cursor {
                    Some(t) => InboxesCursor::from_token(t)?.0,
                    None => RefreshPosition {
                        next: None,
                        completed_at_ms: None,
                    },
                };
                let (records, rejects, next, more) =
                    self.read_refresh(streams::INBOXES, pos).await?;
                Ok(
                    Page::new(records, Some(InboxesCursor(next).to_token()), more)
                        .with_rejects(rejects),
                )
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

    /// See [`models::map_entity`]: lenient, never an error for a field of an unexpected type.
    fn map_entity(&self, record: &Record) -> Result<Option<Entity>> {
        models::map_entity(record)
    }

    /// See [`models::parse_record`].
    fn parse_record(
        &self,
        stream: &StreamId,
        raw: &RawJson,
        parent: Option<&str>,
    ) -> Result<Record> {
        if self.inner.info.stream(stream).is_none() {
            return Err(stream_err(stream));
        }
        models::parse_record(stream.as_str(), raw.clone(), parent)
    }

    /// The stream's JSON Schema (see [`schema`]); for contacts, conversations, teammates and
    /// inboxes it lists the account's custom fields (`GET /<type>/custom_fields`, scope
    /// `custom_fields:read`; without it the custom fields stay an open object).
    async fn discover(&self, stream: &StreamId) -> Result<StreamSchema> {
        let info = self
            .inner
            .info
            .stream(stream)
            .ok_or_else(|| stream_err(stream))?;
        let custom = match schema::custom_fields_path(stream.as_str()) {
            Some(path) => self.custom_fields(path).await?,
            None => Vec::new(),
        };
        schema::stream_schema(info, &custom)
    }

    fn webhooks(&self) -> Option<&dyn Webhooks> {
        self.inner
            .verifier
            .is_some()
            .then_some(self as &dyn Webhooks)
    }
}

#[async_trait]
impl Webhooks for FrontConnector {
    /// The application-webhook verifier when an app secret is configured, else the rule
    /// webhook verifier (a connector with neither has no [`Connector::webhooks`]).
    fn verifier(&self) -> &dyn WebhookVerifier {
        match &self.inner.verifier {
            Some(v) => v.as_ref(),
            None => &NoVerifier,
        }
    }

    /// One event per delivery (Front sends one event per webhook), keyed by the verifier's
    /// event id, else the body's `payload.id` or `id`, else the body hash. A body that is not
    /// a JSON object is `Malformed` (see [`delivery_events`]).
    fn events(
        &self,
        verified: &Verified,
        body: &Bytes,
    ) -> std::result::Result<Vec<WebhookEvent>, WebhookError> {
        delivery_events(verified, body)
    }

    /// The application envelope `{type, authorization, payload}` and rule webhook events
    /// (full or preview), with both naming schemes: messages -> `messages` +
    /// `conversations`, conversation changes -> `conversations`, comments -> `comments`,
    /// contact events -> `contacts`. Objects embedded in full are read from the body (slices
    /// of it); previews are completed with a `GET`.
    async fn parse(&self, webhook: &VerifiedWebhook) -> Result<Vec<Change>> {
        self.parse_webhook_body(&webhook.body).await
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
