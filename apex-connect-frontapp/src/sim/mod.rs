//! `FrontSim`: a Front Core API simulator on loopback (feature `sim`), built on the testkit's
//! simulator toolkit.
//!
//! - Front's JSON shapes: `_pagination.next` links (absolute, on the simulator's
//!   `http://127.0.0.1:<port>`), `_links`, `_results`, `_error` bodies.
//! - Deterministic data generated on the fly from the seed and an index, so an account of a
//!   million messages needs no memory; mutations live in a small overlay and append to the
//!   `/events` feed.
//! - Front's rate-limit headers and 429s ([`FixedWindowLimiter`] with
//!   `x-ratelimit-limit/remaining/reset`), injectable [`Faults`], bearer-token checks (401
//!   with `_error`), OAuth at `/oauth/authorize` and `/oauth/token` (Basic client auth,
//!   `expires_at`), and application webhooks signed as Front signs them.
//!
//! # Examples
//! ```no_run
//! # async fn demo() -> apex_connect_core::Result<()> {
//! use apex_connect_frontapp::{FrontConnector, FrontSim, FrontSimConfig};
//!
//! let sim = FrontSim::start(FrontSimConfig::default()).await?;
//! let front = FrontConnector::builder()
//!     .base_url(sim.base_url())
//!     .api_token(sim.api_token())
//!     .build()?;
//! # let _ = front; Ok(()) }
//! ```

mod data;
mod render;
mod routes;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use apex_connect_core::oauth::{CallbackParams, OAuthClient, TokenManager};
use apex_connect_core::{ConnectionId, Error, ErrorKind, Result, TokenStore, WebhookVerifier};
use apex_connect_testkit::oauth_server::{ExpiryStyle, OAuthServer, OAuthServerConfig};
use apex_connect_testkit::sim::{
    Faults, FixedWindowLimiter, RateLimitHeaders, SimHandle, SimServer, SimStats, WebhookDelivery,
    WebhookSender,
};
use http::{HeaderName, HeaderValue};
use secrecy::SecretString;
use serde_json::{Map, Value, json};

use crate::webhook::{CHALLENGE_HEADER, FrontAppWebhookVerifier};
use data::{
    Data, NewComment, NewEvent, NewMessage, OVERLAY_BASE, Overlay, RAW_BASE, Shape, b36, parse_id,
};

/// The simulator's settings. `Default` is a small account (100 conversations of 5 messages);
/// [`FrontSimConfig::realistic`] is a busier one.
#[derive(Clone)]
#[non_exhaustive]
pub struct FrontSimConfig {
    /// Seed of the generated data.
    pub seed: u64,
    /// Number of conversations.
    pub conversations: u64,
    /// Messages per conversation (the feed has one `inbound`/`outbound` event per message).
    pub messages_per_conversation: u64,
    /// Comments per conversation.
    pub comments_per_conversation: u64,
    /// Number of contacts.
    pub contacts: u64,
    /// Number of tags.
    pub tags: u64,
    /// Number of teammates.
    pub teammates: u64,
    /// Number of inboxes.
    pub inboxes: u64,
    /// `(requests, window)`: Front's per-company limit, with its headers and 429s.
    pub rate_limit: Option<(u32, Duration)>,
    /// Fault injection (API routes only); `None`: a disabled set, still reachable through
    /// [`FrontSimHandle::faults`].
    pub faults: Option<Faults>,
    /// Largest `limit` accepted on list endpoints (Front: 100).
    pub max_page_size: usize,
    /// The company slug (ids, emails).
    pub company: String,
    /// The API token the simulator accepts.
    pub api_token: String,
    /// OAuth client id.
    pub oauth_client_id: String,
    /// OAuth client secret.
    pub oauth_client_secret: String,
    /// Access-token lifetime of OAuth grants.
    pub oauth_access_ttl: Duration,
    /// The app secret signing application webhooks.
    pub webhook_secret: String,
    /// The loopback port to listen on (`None`: a free one).
    pub port: Option<u16>,
}

impl Default for FrontSimConfig {
    fn default() -> Self {
        FrontSimConfig {
            seed: 42,
            conversations: 100,
            messages_per_conversation: 5,
            comments_per_conversation: 1,
            contacts: 50,
            tags: 10,
            teammates: 5,
            inboxes: 3,
            rate_limit: None,
            faults: None,
            max_page_size: 100,
            company: "acme".into(),
            api_token: "front-sim-api-token".into(),
            oauth_client_id: "front-sim-client".into(),
            oauth_client_secret: "front-sim-client-secret".into(),
            oauth_access_ttl: Duration::from_secs(3600),
            webhook_secret: "front-sim-app-secret".into(),
            port: None,
        }
    }
}

impl FrontSimConfig {
    /// A realistic day of a busy company: 1,000 conversations, 5,000 messages, 800
    /// contacts, 40 tags, 25 teammates, 8 inboxes.
    pub fn realistic() -> Self {
        FrontSimConfig {
            conversations: 1_000,
            messages_per_conversation: 5,
            contacts: 800,
            tags: 40,
            teammates: 25,
            inboxes: 8,
            ..Default::default()
        }
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the size: conversations and messages per conversation.
    pub fn size(mut self, conversations: u64, messages_per_conversation: u64) -> Self {
        self.conversations = conversations;
        self.messages_per_conversation = messages_per_conversation;
        self
    }

    /// Sets the number of contacts.
    pub fn contacts(mut self, n: u64) -> Self {
        self.contacts = n;
        self
    }

    /// Sets the number of tags.
    pub fn tags(mut self, n: u64) -> Self {
        self.tags = n;
        self
    }

    /// Limits to `requests` per `window`.
    pub fn rate_limit(mut self, requests: u32, window: Duration) -> Self {
        self.rate_limit = Some((requests, window));
        self
    }

    /// Uses these faults.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Listens on `127.0.0.1:port` instead of a free port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
}

impl fmt::Debug for FrontSimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontSimConfig")
            .field("seed", &self.seed)
            .field("conversations", &self.conversations)
            .field("messages_per_conversation", &self.messages_per_conversation)
            .field("comments_per_conversation", &self.comments_per_conversation)
            .field("contacts", &self.contacts)
            .field("tags", &self.tags)
            .field("rate_limit", &self.rate_limit)
            .field("company", &self.company)
            .field("api_token", &"[redacted]")
            .field("oauth_client_id", &self.oauth_client_id)
            .field("oauth_client_secret", &"[redacted]")
            .field("webhook_secret", &"[redacted]")
            .finish_non_exhaustive()
    }
}

pub(crate) struct SimState {
    pub(crate) data: OnceLock<Data>,
    shape: Shape,
    /// Read by every API request (concurrently), written by mutations.
    pub(crate) overlay: RwLock<Overlay>,
    pub(crate) api_token: String,
    pub(crate) oauth: OAuthServer,
    pub(crate) max_page_size: usize,
    pub(crate) unauthorized: AtomicU64,
}

impl SimState {
    pub(crate) fn data(&self) -> &Data {
        self.data
            .get_or_init(|| Data::new(self.shape.clone(), String::new()))
    }

    pub(crate) fn overlay(&self) -> RwLockReadGuard<'_, Overlay> {
        self.overlay.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn overlay_mut(&self) -> RwLockWriteGuard<'_, Overlay> {
        self.overlay.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts simulators.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrontSim;

impl FrontSim {
    /// Starts a simulator on `127.0.0.1:<free port>` in the current tokio runtime.
    ///
    /// # Errors
    /// `Config` when no loopback port can be bound or the sizes are inconsistent.
    pub async fn start(config: FrontSimConfig) -> Result<FrontSimHandle> {
        if config.max_page_size == 0 {
            return Err(Error::config("FrontSim max_page_size must be at least 1"));
        }
        let oauth = OAuthServer::new(
            OAuthServerConfig::new(
                config.oauth_client_id.clone(),
                config.oauth_client_secret.clone(),
            )
            .with_access_ttl(Some(config.oauth_access_ttl))
            .with_expiry_style(ExpiryStyle::ExpiresAtSeconds)
            .with_rotation(true),
        );
        let state = Arc::new(SimState {
            data: OnceLock::new(),
            shape: Shape {
                seed: config.seed,
                conversations: config.conversations,
                messages_per_conversation: config.messages_per_conversation,
                comments_per_conversation: config.comments_per_conversation,
                contacts: config.contacts,
                tags: config.tags,
                teammates: config.teammates.max(1),
                inboxes: config.inboxes.max(1),
                company: config.company.clone(),
            },
            overlay: RwLock::new(Overlay::default()),
            api_token: config.api_token.clone(),
            oauth: oauth.clone(),
            max_page_size: config.max_page_size,
            unauthorized: AtomicU64::new(0),
        });
        let is_api = |uri: &http::Uri| !uri.path().starts_with("/oauth/");
        // Faults given in the config are used as they are (the caller keeps control through
        // its clone; add a filter before passing them to spare `/oauth`); the default set
        // starts empty and covers API routes only.
        let faults = match config.faults.clone() {
            Some(f) => f,
            None => Faults::new(config.seed).with_filter(move |_, uri| is_api(uri)),
        };
        let (requests, window) = config
            .rate_limit
            .unwrap_or((u32::MAX, Duration::from_secs(60)));
        let limiter = FixedWindowLimiter::new(requests, window)
            .with_headers(RateLimitHeaders::front())
            .with_filter(move |_, uri| is_api(uri))
            .with_body(|| {
                routes::front_error(
                    http::StatusCode::TOO_MANY_REQUESTS,
                    "Too many requests",
                    "Rate limit exceeded, retry after the time in Retry-After",
                )
            });
        let stats = SimStats::new();
        let app = routes::router(state.clone())
            .nest_service("/oauth", oauth.router())
            .layer(limiter.layer())
            .layer(faults.layer())
            .layer(stats.layer());
        let server = SimServer::start_on(app, config.port.unwrap_or(0)).await?;
        let base = server.base_url().to_string();
        let _ = state.data.set(Data::new(state.shape.clone(), base.clone()));
        Ok(FrontSimHandle {
            inner: Arc::new(HandleInner {
                server: Mutex::new(Some(server)),
                base_url: base,
                state,
                stats,
                limiter,
                faults,
                config,
            }),
        })
    }
}

struct HandleInner {
    server: Mutex<Option<SimHandle>>,
    base_url: String,
    state: Arc<SimState>,
    stats: SimStats,
    limiter: FixedWindowLimiter,
    faults: Faults,
    config: FrontSimConfig,
}

/// A running simulator. Cheap to clone; the server stops when the last clone is dropped (or
/// at [`FrontSimHandle::shutdown`]).
#[derive(Clone)]
pub struct FrontSimHandle {
    inner: Arc<HandleInner>,
}

impl fmt::Debug for FrontSimHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontSimHandle")
            .field("base_url", &self.inner.base_url)
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Request counters of a simulator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FrontSimStats {
    /// Requests received (all routes).
    pub requests: u64,
    /// `429` answers sent (rate limit and injected).
    pub rate_limited: u64,
    /// Requests per `METHOD /path`.
    pub by_path: BTreeMap<String, u64>,
}

/// The type of the events the simulator appends when a contact changes (through
/// [`FrontSimHandle::update_contact`] or `PATCH /contacts/{id}`).
pub const CONTACT_UPDATED: &str = "contact_updated";

/// The application-webhook name of an `/events` type (`inbound` -> `inbound_received`).
pub fn app_webhook_type(event_type: &str) -> &str {
    match event_type {
        "inbound" => "inbound_received",
        "outbound" | "out_reply" => "outbound_sent",
        "archive" => "conversation_archived",
        "reopen" => "conversation_reopened",
        "assign" | "unassign" => "assignee_changed",
        "tag" => "tag_added",
        "untag" => "tag_removed",
        "comment" => "new_comment_added",
        other => other,
    }
}

fn bad_id(what: &'static str, id: &str) -> Error {
    Error::new(ErrorKind::NotFound, "no such object in the simulator")
        .with_context("object", what)
        .with_context("id", id)
}

impl FrontSimHandle {
    /// The API base URL (`http://127.0.0.1:<port>`).
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The API token the simulator accepts.
    pub fn api_token(&self) -> SecretString {
        SecretString::from(self.inner.config.api_token.clone())
    }

    /// The OAuth client id.
    pub fn oauth_client_id(&self) -> &str {
        &self.inner.config.oauth_client_id
    }

    /// The OAuth client secret.
    pub fn oauth_client_secret(&self) -> SecretString {
        SecretString::from(self.inner.config.oauth_client_secret.clone())
    }

    /// `<base>/oauth/authorize`.
    pub fn authorize_url(&self) -> String {
        format!("{}/oauth/authorize", self.inner.base_url)
    }

    /// `<base>/oauth/token`.
    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.inner.base_url)
    }

    /// The OAuth configuration of the simulator's app (as [`crate::connector::oauth_config`]
    /// but with the simulator's `/oauth/authorize` and `/oauth/token`).
    pub fn oauth_config(
        &self,
        redirect_url: impl Into<String>,
    ) -> apex_connect_core::oauth::OAuthConfig {
        apex_connect_core::oauth::OAuthConfig::new(self.oauth_client_id(), self.token_url())
            .with_client_secret(self.inner.config.oauth_client_secret.clone())
            .with_auth_url(self.authorize_url())
            .with_redirect_url(redirect_url)
            .with_client_auth(apex_connect_core::oauth::ClientAuth::Basic)
    }

    /// Plays the admin who clicks "Authorize" on the authorize page: requests `authorize_url`
    /// (as built by [`OAuthClient::authorize_url`]) without following the redirect, and
    /// returns the `code` and `state` of the redirect back.
    ///
    /// # Errors
    /// `Network` when the simulator cannot be reached; `InvalidInput` when the server refused
    /// (unknown client, bad redirect URI) or answered an `error`.
    pub async fn consent(&self, authorize_url: &str) -> Result<CallbackParams> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::config("HTTP client").set_source(e))?;
        let resp = client.get(authorize_url).send().await.map_err(|e| {
            Error::new(ErrorKind::Network, "authorize request failed").set_source(e.without_url())
        })?;
        let location = resp
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| url::Url::parse(l).ok())
            .ok_or_else(|| {
                Error::invalid_input("the authorize endpoint refused the request")
                    .with_context("status", resp.status().as_u16())
            })?;
        let q: BTreeMap<String, String> = location
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        match (q.get("code"), q.get("state")) {
            (Some(code), Some(state)) => Ok(CallbackParams::new(code.clone(), state.clone())),
            _ => Err(
                Error::invalid_input("the authorize endpoint answered an error")
                    .with_context("error", q.get("error").cloned().unwrap_or_default()),
            ),
        }
    }

    /// The whole OAuth connection against the simulator, as a host runs it against Front:
    /// authorize URL (state + PKCE), consent ([`FrontSimHandle::consent`]), code exchange
    /// (HTTP Basic client auth, Front-style `expires_at`), tokens saved in `store` under
    /// `connection`. Returns the [`TokenManager`] to give to
    /// [`FrontConnectorBuilder::oauth`](crate::FrontConnectorBuilder::oauth).
    ///
    /// # Errors
    /// As [`FrontSimHandle::consent`] and [`OAuthClient::exchange_code`]; `Storage` from the store.
    pub async fn oauth_connect(
        &self,
        store: Arc<dyn TokenStore>,
        connection: ConnectionId,
    ) -> Result<TokenManager> {
        let client = OAuthClient::with_default_http(
            self.oauth_config(format!("{}/callback", self.base_url())),
        )?;
        let request = client.authorize_url()?;
        let callback = self.consent(request.url.as_str()).await?;
        let tokens = client
            .exchange_code(&callback, &request.state, &request.pkce_verifier)
            .await?;
        let manager = TokenManager::builder(connection, store, Arc::new(client)).build();
        manager.replace(tokens).await?;
        Ok(manager)
    }

    /// The OAuth server (to issue grants directly, expire or revoke tokens, read counters).
    pub fn oauth(&self) -> &OAuthServer {
        &self.inner.state.oauth
    }

    /// The fault injector (API routes only).
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// The rate limiter.
    pub fn limiter(&self) -> &FixedWindowLimiter {
        &self.inner.limiter
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &FrontSimConfig {
        &self.inner.config
    }

    /// Request counters.
    pub fn stats(&self) -> FrontSimStats {
        FrontSimStats {
            requests: self.inner.stats.requests(),
            rate_limited: self.inner.stats.status(429),
            by_path: self.inner.stats.by_path(),
        }
    }

    /// Answers the next `n` API requests with `401` (whatever the token).
    pub fn fail_auth(&self, n: u64) {
        self.inner.state.unauthorized.fetch_add(n, Ordering::SeqCst);
    }

    /// The data set of `stream` as a full sync must see it: object id -> version (Unix ms of
    /// the object's timestamp; `None` for teammates and inboxes). Materialises the stream:
    /// for tests on small data sets.
    pub fn expected(&self, stream: &str) -> BTreeMap<String, Option<i64>> {
        let overlay = self.inner.state.overlay();
        self.inner.state.data().expected(stream, &overlay)
    }

    /// How many objects `stream` holds (without materialising it).
    pub fn count(&self, stream: &str) -> u64 {
        let s = &self.inner.state.shape;
        let overlay = self.inner.state.overlay();
        let raw = overlay.raw(stream).len() as u64;
        raw + match stream {
            "conversations" => s.conversations,
            "messages" => s.messages() + overlay.messages.len() as u64,
            "comments" => {
                s.conversations * s.comments_per_conversation + overlay.comments.len() as u64
            }
            "contacts" => s.contacts,
            "tags" => s.tags,
            "teammates" => s.teammates,
            "inboxes" => s.inboxes,
            "events" => s.messages() + overlay.events.len() as u64,
            _ => 0,
        }
    }

    /// The id of conversation number `n` (0-based).
    pub fn conversation_id(&self, n: u64) -> String {
        Data::conversation_id(n)
    }

    /// The id of contact number `n`.
    pub fn contact_id(&self, n: u64) -> String {
        Data::contact_id(n)
    }

    /// The id of tag number `n`.
    pub fn tag_id(&self, n: u64) -> String {
        Data::tag_id(n)
    }

    fn conversation_index(&self, id: &str) -> Result<u64> {
        parse_id(id, "cnv")
            .filter(|c| *c < self.inner.state.shape.conversations)
            .ok_or_else(|| bad_id("conversation", id))
    }

    /// Marks a conversation updated now and appends a `reopen` event.
    ///
    /// # Errors
    /// `NotFound` for an unknown id.
    pub fn touch_conversation(&self, id: &str) -> Result<String> {
        let c = self.conversation_index(id)?;
        Ok(self
            .inner
            .state
            .mutate_conversation(c, |_, _| {}, "reopen", None, Some("assigned")))
    }

    /// Archives a conversation (`archive` event).
    ///
    /// # Errors
    /// `NotFound` for an unknown id.
    pub fn archive_conversation(&self, id: &str) -> Result<String> {
        let c = self.conversation_index(id)?;
        Ok(self
            .inner
            .state
            .mutate_conversation(c, |_, _| {}, "archive", None, Some("archived")))
    }

    /// Adds a message to a conversation (`inbound` or `outbound` event). Returns the message id.
    ///
    /// # Errors
    /// `NotFound` for an unknown id.
    pub fn add_message(&self, conversation_id: &str, text: &str, inbound: bool) -> Result<String> {
        let c = self.conversation_index(conversation_id)?;
        Ok(self.inner.state.add_message(c, text, inbound))
    }

    /// Adds a comment to a conversation (`comment` event). Returns the comment id.
    ///
    /// # Errors
    /// `NotFound` for an unknown id.
    pub fn add_comment(&self, conversation_id: &str, body: &str) -> Result<String> {
        let c = self.conversation_index(conversation_id)?;
        Ok(self.inner.state.add_comment(c, body, 0))
    }

    /// Tags a conversation (`tag` event). Returns the event id.
    ///
    /// # Errors
    /// `NotFound` for an unknown conversation or tag.
    pub fn tag(&self, conversation_id: &str, tag_id: &str) -> Result<String> {
        let c = self.conversation_index(conversation_id)?;
        let t = self
            .inner
            .state
            .tag_index(tag_id)
            .ok_or_else(|| bad_id("tag", tag_id))?;
        Ok(self.inner.state.set_tags(c, &[t], true))
    }

    /// Removes a tag from a conversation (`untag` event). Returns the event id.
    ///
    /// # Errors
    /// `NotFound` for an unknown conversation or tag.
    pub fn untag(&self, conversation_id: &str, tag_id: &str) -> Result<String> {
        let c = self.conversation_index(conversation_id)?;
        let t = self
            .inner
            .state
            .tag_index(tag_id)
            .ok_or_else(|| bad_id("tag", tag_id))?;
        Ok(self.inner.state.set_tags(c, &[t], false))
    }

    /// Updates a contact's custom fields: its `updated_at` becomes now (the `contacts` stream
    /// reads it incrementally through `q[updated_after]`), and a `contact_updated` event
    /// (target: the contact, no conversation) is appended to the feed, so
    /// [`FrontSimHandle::latest_event_id`] then names it and
    /// [`FrontSimHandle::send_webhook`] delivers it as an application webhook.
    ///
    /// # Errors
    /// `NotFound` for an unknown id.
    pub fn update_contact(
        &self,
        contact_id: &str,
        custom_fields: Map<String, Value>,
    ) -> Result<()> {
        let k = self
            .inner
            .state
            .contact_index(contact_id)
            .ok_or_else(|| bad_id("contact", contact_id))?;
        self.inner.state.update_contact(k, custom_fields, None);
        Ok(())
    }

    /// Adds objects to `stream` exactly as given (JSON objects; anything else is skipped),
    /// for tests of what a real account may hold that the generator never makes (hostile
    /// variants of Front's documented shapes). The simulator sets only what it needs to
    /// serve them: each gets a fresh `id`; events also a fresh `emitted_at` (the feed stays
    /// in time order) and contacts a fresh `updated_at` (their list is in `updated_at`
    /// order). Messages and comments go into conversation 0 (`conversation_id(0)`);
    /// conversations, contacts, tags, teammates and inboxes come after the generated ones in
    /// their lists, events at the end of the feed. Returns the ids given, in order.
    ///
    /// # Errors
    /// `NotFound` for a stream the simulator does not serve.
    pub fn add_raw(&self, stream: &str, objects: Vec<Value>) -> Result<Vec<String>> {
        let stream = crate::streams::by_name(stream).ok_or_else(|| bad_id("stream", stream))?;
        Ok(self.inner.state.add_raw(stream, objects))
    }

    /// The id of the newest event of the feed.
    pub fn latest_event_id(&self) -> Option<String> {
        let n = self.count("events");
        n.checked_sub(1).map(Data::event_id)
    }

    /// The event `id` as `/events` returns it.
    pub fn event(&self, id: &str) -> Option<Value> {
        let p = parse_id(id, "evt")?;
        let overlay = self.inner.state.overlay();
        self.inner.state.data().event(p, &overlay)
    }

    /// The verifier matching the simulator's app secret (what a receiver configures).
    pub fn webhook_verifier(&self) -> FrontAppWebhookVerifier {
        FrontAppWebhookVerifier::new([self.inner.config.webhook_secret.as_bytes()])
    }

    /// The app secret signing application webhooks.
    pub fn webhook_secret(&self) -> SecretString {
        SecretString::from(self.inner.config.webhook_secret.clone())
    }

    /// The application-webhook body for event `id`:
    /// `{"type": <app name>, "authorization": {"id": "cmp_..."}, "payload": <event>}`.
    ///
    /// # Errors
    /// `NotFound` for an unknown event.
    pub fn webhook_body(&self, event_id: &str) -> Result<Vec<u8>> {
        let ev = self
            .event(event_id)
            .ok_or_else(|| bad_id("event", event_id))?;
        let kind = ev
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let body = json!({
            "type": app_webhook_type(&kind),
            "authorization": {"id": self.company_id()},
            "payload": ev,
        });
        serde_json::to_vec(&body)
            .map_err(|e| Error::new(ErrorKind::Unexpected, "webhook body").set_source(e))
    }

    fn company_id(&self) -> String {
        format!("cmp_{}", self.inner.config.company)
    }

    fn sender(&self) -> WebhookSender {
        let v: Arc<dyn WebhookVerifier> = Arc::new(self.webhook_verifier());
        WebhookSender::new(v)
            .with_retries(3)
            .with_backoff(Duration::from_millis(50))
    }

    /// Delivers event `event_id` to `url` as an application webhook, signed as Front signs
    /// (retrying non-2xx answers 3 times, as Front does).
    ///
    /// # Errors
    /// `NotFound` for an unknown event; `Network` when the receiver cannot be reached.
    pub async fn send_webhook(&self, url: &str, event_id: &str) -> Result<WebhookDelivery> {
        let body = self.webhook_body(event_id)?;
        self.sender().send(url, body).await
    }

    /// Sends the validation request Front sends when a webhook is saved: body
    /// `{"type":"sync","authorization":{"id":..}}` with `x-front-challenge: <challenge>`; the
    /// receiver must answer `200 {"challenge": <challenge>}`.
    ///
    /// # Errors
    /// `InvalidInput` for a challenge that is not a header value; `Network` otherwise.
    pub async fn send_sync_challenge(&self, url: &str, challenge: &str) -> Result<WebhookDelivery> {
        let value = HeaderValue::from_str(challenge)
            .map_err(|_| Error::invalid_input("challenge is not a valid header value"))?;
        let body = serde_json::to_vec(
            &json!({"type": "sync", "authorization": {"id": self.company_id()}}),
        )
        .map_err(|e| Error::new(ErrorKind::Unexpected, "webhook body").set_source(e))?;
        self.sender()
            .with_header(HeaderName::from_static(CHALLENGE_HEADER), value)
            .send(url, body)
            .await
    }

    /// Stops the server (also happens when the last handle is dropped).
    pub async fn shutdown(&self) {
        let server = self
            .inner
            .server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(s) = server {
            s.shutdown().await;
        }
    }
}

impl SimState {
    pub(crate) fn add_raw(&self, stream: &'static str, objects: Vec<Value>) -> Vec<String> {
        let data = self.data();
        let mut o = self.overlay_mut();
        let mut ids = Vec::with_capacity(objects.len());
        for mut v in objects {
            let Some(m) = v.as_object_mut() else {
                continue;
            };
            if stream == crate::streams::EVENTS {
                let t = o.tick();
                let id = Data::event_id(data.events_len(&o));
                m.insert("id".into(), json!(id));
                m.insert("emitted_at".into(), json!(t));
                let kind = m
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
                    .to_string();
                o.events.push(NewEvent {
                    kind,
                    emitted_at: t,
                    conversation: None,
                    target: None,
                    raw: Some(v),
                });
                ids.push(id);
                continue;
            }
            let prefix = match stream {
                "conversations" => "cnv",
                "messages" => "msg",
                "comments" => "com",
                "contacts" => "crd",
                "tags" => "tag",
                "teammates" => "tea",
                _ => "inb",
            };
            let n = o.raw(stream).len() as u64;
            let id = format!("{prefix}_{}", b36(RAW_BASE + n));
            m.insert("id".into(), json!(id));
            if stream == crate::streams::CONTACTS {
                let t = o.tick();
                m.insert("updated_at".into(), json!(t));
            }
            o.raw.entry(stream).or_default().push(v);
            ids.push(id);
        }
        ids
    }

    /// An object of `stream` added as it is, by id.
    pub(crate) fn raw_object(&self, stream: &str, prefix: &str, id: &str) -> Option<Value> {
        let i = parse_id(id, prefix)?.checked_sub(RAW_BASE)?;
        self.overlay().raw(stream).get(i as usize).cloned()
    }

    pub(crate) fn tag_index(&self, id: &str) -> Option<u64> {
        parse_id(id, "tag").filter(|t| *t < self.shape.tags)
    }

    pub(crate) fn contact_index(&self, id: &str) -> Option<u64> {
        parse_id(id, "crd").filter(|k| *k < self.shape.contacts)
    }

    pub(crate) fn conversation_index(&self, id: &str) -> Option<u64> {
        parse_id(id, "cnv").filter(|c| *c < self.shape.conversations)
    }

    /// Applies `f` to a conversation's change record, bumps its `updated_at`, optionally
    /// sets its status, and appends an event. Returns the event id.
    pub(crate) fn mutate_conversation(
        &self,
        c: u64,
        f: impl FnOnce(&mut data::ConversationChange, &Data),
        event: &str,
        target: Option<(String, Value)>,
        status: Option<&str>,
    ) -> String {
        let data = self.data();
        let mut o = self.overlay_mut();
        let t = o.tick();
        let ch = o.conversations.entry(c).or_default();
        ch.updated_at = t;
        if let Some(s) = status {
            ch.status = Some(s.to_string());
        }
        f(ch, data);
        o.events.push(NewEvent {
            kind: event.to_string(),
            emitted_at: t,
            conversation: Some(c),
            target,
            raw: None,
        });
        Data::event_id(data.events_len(&o) - 1)
    }

    pub(crate) fn add_message(&self, c: u64, text: &str, inbound: bool) -> String {
        let data = self.data();
        let mut o = self.overlay_mut();
        let t = o.tick();
        let n = o.messages.len() as u64;
        o.messages.push(NewMessage {
            conversation: c,
            created_at: t,
            text: text.to_string(),
            inbound,
        });
        let ch = o.conversations.entry(c).or_default();
        ch.updated_at = t;
        ch.messages.push(n);
        let mut preview = data.message(OVERLAY_BASE + n, &o).unwrap_or(Value::Null);
        if let Some(obj) = preview.as_object_mut() {
            obj.remove("body");
            obj.remove("text");
        }
        o.events.push(NewEvent {
            kind: if inbound { "inbound" } else { "outbound" }.into(),
            emitted_at: t,
            conversation: Some(c),
            target: Some(("message".into(), preview)),
            raw: None,
        });
        Data::message_id(OVERLAY_BASE + n)
    }

    pub(crate) fn add_comment(&self, c: u64, body: &str, author: u64) -> String {
        let data = self.data();
        let mut o = self.overlay_mut();
        let t = o.tick();
        let n = o.comments.len() as u64;
        o.comments.push(NewComment {
            conversation: c,
            posted_at: t,
            body: body.to_string(),
            author,
        });
        let ch = o.conversations.entry(c).or_default();
        ch.updated_at = t;
        ch.comments.push(n);
        let comment = data.comment(OVERLAY_BASE + n, &o).unwrap_or(Value::Null);
        o.events.push(NewEvent {
            kind: "comment".into(),
            emitted_at: t,
            conversation: Some(c),
            target: Some(("comment".into(), comment)),
            raw: None,
        });
        Data::comment_id(OVERLAY_BASE + n)
    }

    /// Adds (`add`) or removes tags; one `tag`/`untag` event per tag. Returns the last event id.
    pub(crate) fn set_tags(&self, c: u64, tags: &[u64], add: bool) -> String {
        let data = self.data();
        let mut last = String::new();
        for t in tags {
            let tag = data.tag(*t);
            last = self.mutate_conversation(
                c,
                |ch, d| {
                    let mut set = ch.tags.clone().unwrap_or_else(|| d.generated_tags(c));
                    if add {
                        set.insert(*t);
                    } else {
                        set.remove(t);
                    }
                    ch.tags = Some(set);
                },
                if add { "tag" } else { "untag" },
                Some(("tag".into(), tag)),
                None,
            );
        }
        last
    }

    /// Updates a contact and appends a `contact_updated` event (target: the contact, no
    /// conversation). Returns the event id.
    pub(crate) fn update_contact(
        &self,
        k: u64,
        fields: Map<String, Value>,
        name: Option<String>,
    ) -> String {
        let data = self.data();
        let mut o = self.overlay_mut();
        let t = o.tick();
        let ch = o.contacts.entry(k).or_default();
        ch.updated_at = t;
        for (key, v) in fields {
            ch.custom_fields.insert(key, v);
        }
        if name.is_some() {
            ch.name = name;
        }
        let contact = data.contact(k, &o);
        o.events.push(NewEvent {
            kind: CONTACT_UPDATED.into(),
            emitted_at: t,
            conversation: None,
            target: Some(("contact".into(), contact)),
            raw: None,
        });
        Data::event_id(data.events_len(&o) - 1)
    }
}
