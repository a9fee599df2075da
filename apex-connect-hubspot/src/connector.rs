//! [`HubSpotConnector`]: the [`Connector`] for one HubSpot account.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use apex_connect_core::http::{Clock, Credentials, RateGate, RetryConfig, StaticToken};
use apex_connect_core::oauth::{ClientAuth, OAuthConfig, TokenManager};
use apex_connect_core::webhook::{Verified, WebhookRequest, WebhookSecrets, unix_ms};
use apex_connect_core::{
    Capabilities, Change, Connector, ConnectorInfo, CursorToken, Entity, Error, ErrorKind, Op,
    Page, RawJson, Record, Reject, Result, StreamId, StreamSchema, SyncCursor, VerifiedWebhook,
    WebhookError, WebhookEvent, WebhookVerifier, Webhooks, WriteAction, WriteOp, WriteReport,
    WriteResult, async_trait,
};
use bytes::Bytes;
use http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::NAME;
use crate::api::{ApiOptions, BATCH_LIMIT, HubSpotApi};
use crate::config::{HubSpotConfig, OAUTH_AUTHORIZE_URL, OAUTH_TOKEN_URL};
use crate::cursor::{HubSpotCursor, Position, SearchPosition};
use crate::error::HubSpotApiError;
use crate::models::{
    OBJECT_TYPES, ObjectId, ObjectType, PropertyDef, association_entity, association_pairs,
    association_record, association_schema, object_entity, object_record_raw, object_records,
    object_schema, object_type, object_type_by_any_name, object_type_by_type_id, owner_entity,
    owner_record, owner_schema, parse_page, parse_time_ms, property_defs, property_of,
    property_record, property_schema, reject_of, search_hit, stream_infos, streams,
};
use crate::webhook::{
    HubSpotEvent, HubSpotWebhookVerifier, dedupe_and_order, delivery_events, parse_events,
};

/// The CRM API version spoken.
pub const API_VERSION: &str = "crm-v3";

/// How long discovered property definitions are reused before being fetched again.
const PROPERTY_CACHE_TTL: Duration = Duration::from_secs(600);

/// The most property definitions read for one object type (HubSpot allows far fewer).
const MAX_PROPERTY_DEFS: usize = 10_000;

/// The OAuth settings of a HubSpot public app: HubSpot's authorize and token URLs, client
/// id and secret sent in the form body. Give it to an [`apex_connect_core::OAuthClient`],
/// then to a [`TokenManager`], then to [`HubSpotConnectorBuilder::oauth`].
pub fn oauth_config(
    client_id: impl Into<String>,
    client_secret: impl Into<String>,
    redirect_url: impl Into<String>,
) -> OAuthConfig {
    OAuthConfig::new(client_id, OAUTH_TOKEN_URL)
        .with_client_secret(client_secret)
        .with_auth_url(OAUTH_AUTHORIZE_URL)
        .with_redirect_url(redirect_url)
        .with_client_auth(ClientAuth::RequestBody)
}

/// A connector for one HubSpot account.
///
/// # Behavior
/// - Object streams (`contacts`, `companies`, `deals`, `notes`, `emails`, `calls`,
///   `meetings`, `tasks`): a read from no cursor lists every object through
///   `GET /crm/v3/objects/{type}` with every property discovered from
///   `/crm/v3/properties/{type}`; the last page's cursor switches to the search API, which
///   returns the objects modified since the list began (minus the lookback).
/// - Records carry each object exactly as HubSpot sent it (a slice of the page body); only
///   the envelope is read (`id`, `updatedAt` or the modified property, `archived`). An
///   object whose envelope cannot be read is a reject of its page, which goes on.
/// - The search phase sorts ascending on the modified date and filters on the keyset
///   `(modified, id) > (modified_after_ms, last_id)`: every page is a fresh query, so the
///   10,000-result cap of a search is never reached and an object modified during the sync
///   cannot shift offsets. Objects sharing a timestamp past a page are read by id.
///   Pages of ids are then read in full with `batch/read`.
/// - `owners`, `associations`, `properties` are re-read in full by each sync.
/// - Deletions are not read by sync (the search API does not return archived objects): they
///   come through webhooks (`*.deletion`).
/// - Entities are mapped on demand ([`Connector::map_entity`]), leniently: a property of an
///   unexpected type never fails a record; custom properties are kept in `custom_fields`.
/// - Requests (but search) pass a rolling ten-second gate that learns the account's limit
///   from `X-HubSpot-RateLimit-Max` (see [`crate::api::window_gate`]).
#[derive(Debug)]
pub struct HubSpotConnector {
    info: ConnectorInfo,
    config: HubSpotConfig,
    api: HubSpotApi,
    verifier: Option<Arc<HubSpotWebhookVerifier>>,
    properties: Mutex<PropertyCache>,
}

/// The property definitions of one object type, as discovered for the account.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PropertySet {
    /// Every definition (custom properties included).
    pub defs: Vec<PropertyDef>,
    /// Every property name to request, sorted: the definitions' names, the modified-date
    /// property and `hs_object_id`.
    pub names: Vec<String>,
    /// `names` joined with commas (the `properties=` query parameter).
    pub csv: String,
}

/// Discovered properties per object type, with when they were fetched.
type PropertyCache = HashMap<&'static str, (Instant, Arc<PropertySet>)>;

/// Builds a [`HubSpotConnector`]; see [`HubSpotConnector::builder`].
#[derive(Default)]
pub struct HubSpotConnectorBuilder {
    config: HubSpotConfig,
    credentials: Option<Arc<dyn Credentials>>,
    oauth: bool,
    retry: Option<RetryConfig>,
    gate: Option<RateGate>,
    search_gate: Option<RateGate>,
    clock: Option<Arc<dyn Clock>>,
    streams: Option<Vec<String>>,
}

impl fmt::Debug for HubSpotConnectorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSpotConnectorBuilder")
            .field("config", &self.config)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "[redacted]"),
            )
            .field("oauth", &self.oauth)
            .field("streams", &self.streams)
            .finish_non_exhaustive()
    }
}

impl HubSpotConnectorBuilder {
    /// Starts from `config` (replacing what was set so far).
    pub fn config(mut self, config: HubSpotConfig) -> Self {
        self.config = config;
        self
    }

    /// Authenticates with a private app's access token (static bearer).
    pub fn private_app_token(mut self, token: impl Into<SecretString>) -> Self {
        self.config.private_app_token = Some(token.into());
        self
    }

    /// Authenticates with these credentials (e.g. a [`TokenManager`]).
    pub fn credentials(mut self, credentials: Arc<dyn Credentials>) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Authenticates with refreshable OAuth tokens (and claims `oauth_refresh`).
    pub fn oauth(self, manager: TokenManager) -> Self {
        self.token_manager(Arc::new(manager))
    }

    /// As [`oauth`](Self::oauth), with a manager shared with others (the one
    /// [`apex_connect_core::platform::resolve_auth`] built).
    pub fn token_manager(mut self, manager: Arc<TokenManager>) -> Self {
        self.credentials = Some(manager);
        self.oauth = true;
        self
    }

    /// The API base URL (default `https://api.hubapi.com`).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.config.base_url = url.into();
        self
    }

    /// The app's client secret, to verify webhooks (enables webhooks).
    pub fn client_secret(mut self, secret: impl Into<SecretString>) -> Self {
        self.config.client_secret = Some(secret.into());
        self
    }

    /// An earlier client secret still accepted on webhooks during a rotation.
    pub fn previous_client_secret(mut self, secret: impl Into<SecretString>) -> Self {
        self.config.previous_client_secrets.push(secret.into());
        self
    }

    /// The webhook target URL exactly as configured in HubSpot (signed by v2 and v3).
    pub fn webhook_target_url(mut self, url: impl Into<String>) -> Self {
        self.config.webhook_target_url = Some(url.into());
        self
    }

    /// This app's id: webhook events caused by our own writes are dropped.
    pub fn app_id(mut self, app_id: u64) -> Self {
        self.config.app_id = Some(app_id);
        self
    }

    /// List page size (1 to 100).
    pub fn page_size(mut self, n: u32) -> Self {
        self.config.page_size = n;
        self
    }

    /// Search page size (1 to 200).
    pub fn search_page_size(mut self, n: u32) -> Self {
        self.config.search_page_size = n;
        self
    }

    /// The overlap re-read by each incremental sync (default 5 minutes).
    pub fn lookback(mut self, lookback: Duration) -> Self {
        self.config.lookback_secs = lookback.as_secs();
        self
    }

    /// The property mapping.
    pub fn property_mapping(mut self, mapping: crate::models::PropertyMapping) -> Self {
        self.config.property_mapping = mapping;
        self
    }

    /// The most requests per ten seconds (everything but search), whatever HubSpot reports.
    /// Without it, the limit is learnt from `X-HubSpot-RateLimit-Max`.
    pub fn requests_per_10s(mut self, n: u32) -> Self {
        self.config.requests_per_10s = Some(n);
        self
    }

    /// The retry configuration of the HTTP stack.
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = Some(retry);
        self
    }

    /// A rate gate shared with other connectors of the same account (everything but
    /// search); make it with [`crate::api::window_gate`] (a rolling window learning the
    /// account's limit), cloned for each connector.
    pub fn rate_gate(mut self, gate: RateGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// A search rate gate shared with other connectors of the same token.
    pub fn search_rate_gate(mut self, gate: RateGate) -> Self {
        self.search_gate = Some(gate);
        self
    }

    /// The clock the HTTP stack and the gates built here wait on (tests: a virtual clock
    /// shared with a simulator).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Offers only these streams (default: all of [`streams::ALL`]).
    pub fn streams<I, S>(mut self, streams: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.streams = Some(streams.into_iter().map(Into::into).collect());
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    /// `Config` when no credentials are given, a page size is out of range, a stream is
    /// unknown, or the base URL or rates are invalid.
    pub fn build(self) -> Result<HubSpotConnector> {
        let c = self.config;
        let credentials: Arc<dyn Credentials> = match (self.credentials, &c.private_app_token) {
            (Some(cr), _) => cr,
            (None, Some(t)) => {
                if t.expose_secret().trim().is_empty() {
                    return Err(Error::config("the private app token is empty"));
                }
                Arc::new(StaticToken::bearer(t.expose_secret()))
            }
            (None, None) => {
                return Err(Error::config(
                    "HubSpot needs credentials: a private app token or OAuth credentials",
                ));
            }
        };
        c.validate()?;
        let options = ApiOptions {
            requests_per_10s: c.requests_per_10s,
            search_requests_per_second: c.search_requests_per_second,
            retry: self.retry.unwrap_or_default(),
            gate: self.gate,
            search_gate: self.search_gate,
            clock: self.clock,
        };
        let api = HubSpotApi::new(&c.base_url, credentials, options)?;
        let verifier = c.client_secret.as_ref().map(|current| {
            let secrets = WebhookSecrets::new(
                std::iter::once(current)
                    .chain(c.previous_client_secrets.iter())
                    .map(|s| s.expose_secret().as_bytes().to_vec()),
            );
            let mut v =
                HubSpotWebhookVerifier::new(secrets).with_versions(c.webhook_versions.clone());
            if let Some(u) = &c.webhook_target_url {
                v = v.with_target_url(u.clone());
            }
            Arc::new(v)
        });
        let mut infos = stream_infos();
        if let Some(wanted) = &self.streams {
            for w in wanted {
                if !streams::ALL.contains(&w.as_str()) {
                    return Err(Error::config("HubSpot has no such stream")
                        .with_context("stream", w)
                        .with_context("known", streams::ALL.join(",")));
                }
            }
            infos.retain(|i| wanted.iter().any(|w| w == i.id.as_str()));
        }
        let mut caps = Capabilities::new(infos).with_write_back();
        if self.oauth {
            caps = caps.with_oauth_refresh();
        }
        Ok(HubSpotConnector {
            info: ConnectorInfo::new(NAME, API_VERSION, caps),
            config: c,
            api,
            verifier,
            properties: Mutex::new(HashMap::new()),
        })
    }
}

fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// A property value as HubSpot wants it in writes: a string (`""` clears).
fn property_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn copy_error(e: &Error) -> Error {
    let mut c = Error::new(e.kind(), e.message().to_string());
    c = if e.is_temporary() {
        c.temporary()
    } else {
        c.permanent()
    };
    for (k, v) in e.context() {
        c = c.with_context(k, v);
    }
    if let Some(r) = e.retry_after() {
        c = c.with_retry_after(r);
    }
    c
}

/// What the connector read of an object before writing it (conflict detection).
struct Current {
    id: String,
    modified: Option<i64>,
    unique: Option<String>,
}

/// The part of a list answer's object the slow path (properties read by `batch/read`) keeps.
#[derive(Deserialize)]
struct ListItem<'a> {
    #[serde(borrow)]
    id: ObjectId<'a>,
    #[serde(borrow, default)]
    associations: Option<&'a RawValue>,
}

/// `object` with `"associations": <associations>` put first (both valid JSON; `object` an
/// object).
fn with_associations(object: &RawJson, associations: &RawValue) -> Result<RawJson> {
    let text = object.as_str().trim_start();
    let Some(rest) = text.strip_prefix('{') else {
        return Err(Error::invalid_response("a batch read result is not an object").permanent());
    };
    let rest = rest.trim_start();
    let sep = if rest.starts_with('}') { "" } else { "," };
    RawJson::parse(Bytes::from(format!(
        "{{\"associations\":{}{sep}{rest}",
        associations.get()
    )))
}

/// The verifier a connector without a client secret would have (never reached: its
/// [`Connector::webhooks`] is `None`).
#[derive(Debug)]
struct NoSecret;

impl WebhookVerifier for NoSecret {
    fn verify(
        &self,
        _: &WebhookRequest<'_>,
        _: SystemTime,
    ) -> std::result::Result<Verified, WebhookError> {
        Err(WebhookError::NoSecret)
    }

    fn sign(
        &self,
        _: &WebhookRequest<'_>,
        _: SystemTime,
    ) -> std::result::Result<HeaderMap, WebhookError> {
        Err(WebhookError::NoSecret)
    }
}

/// The changes one webhook plans, each with the object type whose object must be read.
type Plan = Vec<(Option<&'static ObjectType>, Change)>;

impl HubSpotConnector {
    /// Starts building a connector.
    pub fn builder() -> HubSpotConnectorBuilder {
        HubSpotConnectorBuilder::default()
    }

    /// The configuration in use.
    pub fn config(&self) -> &HubSpotConfig {
        &self.config
    }

    /// The API client (request counters, rate gates).
    pub fn api(&self) -> &HubSpotApi {
        &self.api
    }

    /// The webhook verifier, typed.
    pub fn hubspot_verifier(&self) -> Option<&Arc<HubSpotWebhookVerifier>> {
        self.verifier.as_ref()
    }

    fn lookback_ms(&self) -> i64 {
        i64::try_from(self.config.lookback_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 4)
    }

    fn no_such_stream(stream: &StreamId) -> Error {
        Error::new(ErrorKind::NotFound, "HubSpot has no such stream")
            .with_context("connector", NAME)
            .with_context("stream", stream)
    }

    /// The property definitions of `object` (discovered, cached for 10 minutes); its names
    /// include the modified-date property and `hs_object_id`.
    ///
    /// # Errors
    /// The HTTP stack's kinds; `InvalidResponse` for an answer that is not a collection.
    pub async fn properties(&self, object: &ObjectType) -> Result<Arc<PropertySet>> {
        if let Ok(cache) = self.properties.lock()
            && let Some((at, set)) = cache.get(object.stream)
            && at.elapsed() < PROPERTY_CACHE_TTL
        {
            return Ok(set.clone());
        }
        let body = self.api.properties(object.stream).await?;
        let page = parse_page(&body, MAX_PROPERTY_DEFS)?;
        let defs = property_defs(&page.results);
        let mut names: Vec<String> = defs.iter().map(|d| d.name.clone()).collect();
        names.push(object.modified_property.to_string());
        names.push("hs_object_id".into());
        names.sort();
        names.dedup();
        let csv = names.join(",");
        let set = Arc::new(PropertySet { defs, names, csv });
        if let Ok(mut cache) = self.properties.lock() {
            cache.insert(object.stream, (Instant::now(), set.clone()));
        }
        Ok(set)
    }

    /// Every property name of `object` (see [`properties`](Self::properties)).
    ///
    /// # Errors
    /// As [`properties`](Self::properties).
    pub async fn property_names(&self, object: &ObjectType) -> Result<Vec<String>> {
        Ok(self.properties(object).await?.names.clone())
    }

    async fn read_list(
        &self,
        stream: &StreamId,
        ot: &'static ObjectType,
        after: Option<String>,
        started_ms: i64,
    ) -> Result<Page> {
        let props = self.properties(ot).await?;
        let inline = props.csv.len() <= self.config.max_properties_query_len;
        let body = self
            .api
            .list_objects(
                ot.stream,
                self.config.page_size,
                after.as_deref(),
                Some(if inline {
                    props.csv.as_str()
                } else {
                    "hs_object_id"
                }),
                ot.associations,
            )
            .await?;
        let page = parse_page(&body, self.config.page_size as usize)?;
        let next = page.next_after.as_deref().map(str::to_string);
        let (records, rejects) = if inline {
            object_records(ot, &body, &page.results)
        } else {
            self.read_full(ot, &body, &page.results, &props.names)
                .await?
        };
        let page = match next {
            Some(n) => {
                if after.as_deref() == Some(n.as_str()) {
                    return Err(
                        Error::invalid_response("list paging repeated its `after` token")
                            .permanent()
                            .with_context("stream", stream),
                    );
                }
                let c = HubSpotCursor::new(
                    stream,
                    Position::List {
                        after: Some(n),
                        started_ms,
                    },
                );
                Page::new(records, Some(c.to_token()), true)
            }
            None => {
                let pos = SearchPosition {
                    modified_after_ms: started_ms.saturating_sub(self.lookback_ms()),
                    last_id: 0,
                    tie: false,
                    recent: Vec::new(),
                };
                let c = HubSpotCursor::new(stream, Position::Search(pos));
                Page::new(records, Some(c.to_token()), false)
            }
        };
        Ok(page.with_rejects(rejects))
    }

    /// The slow path of a list page whose property names do not fit a URL: the page listed
    /// ids (and associations); the objects are read with `batch/read` and given the
    /// associations of the list, in the list's order.
    async fn read_full(
        &self,
        ot: &'static ObjectType,
        body: &Bytes,
        results: &[&RawValue],
        names: &[String],
    ) -> Result<(Vec<Record>, Vec<Reject>)> {
        let mut ids = Vec::with_capacity(results.len());
        let mut assocs: HashMap<String, &RawValue> = HashMap::new();
        let mut rejects = Vec::new();
        for item in results {
            match serde_json::from_str::<ListItem<'_>>(item.get()) {
                Ok(li) => {
                    let id = li.id.0.into_owned();
                    if let Some(a) = li.associations {
                        assocs.insert(id.clone(), a);
                    }
                    ids.push(id);
                }
                Err(e) => {
                    let err = Error::invalid_response("the object's id cannot be read")
                        .permanent()
                        .with_context("stream", ot.stream)
                        .set_source(e);
                    rejects.push(reject_of(
                        ot.stream,
                        &RawJson::from_raw_in(body, item),
                        &err,
                    ));
                }
            }
        }
        let (mut by_id, unread) = self.batch_records(ot, &ids, names).await?;
        rejects.extend(unread);
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(mut r) = by_id.remove(&id) else {
                continue;
            };
            if let Some(a) = assocs.get(&id) {
                r.raw = with_associations(&r.raw, a)?;
            }
            records.push(r);
        }
        Ok((records, rejects))
    }

    /// Reads objects `ids` of `ot` with `batch/read` (100 per call): their records by id,
    /// and the objects whose envelope cannot be read. Objects not found are left out.
    async fn batch_records(
        &self,
        ot: &'static ObjectType,
        ids: &[String],
        names: &[String],
    ) -> Result<(HashMap<String, Record>, Vec<Reject>)> {
        let mut by_id = HashMap::with_capacity(ids.len());
        let mut rejects = Vec::new();
        for chunk in ids.chunks(BATCH_LIMIT) {
            let body = self.api.batch_read(ot.stream, chunk, names, None).await?;
            let page = parse_page(&body, chunk.len())?;
            let (records, unread) = object_records(ot, &body, &page.results);
            rejects.extend(unread);
            for r in records {
                by_id.insert(r.id.clone(), r);
            }
        }
        Ok((by_id, rejects))
    }

    /// The current modified time (and unique property `id_property`, if given) of objects
    /// `ids` of `ot`, read leniently.
    async fn read_current(
        &self,
        ot: &'static ObjectType,
        ids: &[String],
        properties: &[String],
        id_property: Option<&str>,
    ) -> Result<Vec<Current>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH_LIMIT) {
            let body = self
                .api
                .batch_read(ot.stream, chunk, properties, id_property)
                .await?;
            let page = parse_page(&body, chunk.len())?;
            for item in &page.results {
                let raw = RawJson::from_raw_in(&body, item);
                let Ok(r) = object_record_raw(ot, raw) else {
                    continue;
                };
                out.push(Current {
                    unique: id_property.and_then(|p| property_of(r.raw.as_bytes(), p)),
                    modified: r.version,
                    id: r.id,
                });
            }
        }
        Ok(out)
    }

    fn search_body(&self, ot: &ObjectType, pos: &SearchPosition) -> Value {
        let prop = ot.modified_property;
        let t = pos.modified_after_ms.to_string();
        let last = pos.last_id.to_string();
        let (groups, sort) = if pos.tie {
            (
                json!([{ "filters": [
                    { "propertyName": prop, "operator": "EQ", "value": t },
                    { "propertyName": "hs_object_id", "operator": "GT", "value": last }
                ]}]),
                "hs_object_id",
            )
        } else if pos.last_id == 0 {
            (
                json!([{ "filters": [{ "propertyName": prop, "operator": "GTE", "value": t }] }]),
                prop,
            )
        } else {
            (
                json!([
                    { "filters": [
                        { "propertyName": prop, "operator": "EQ", "value": t },
                        { "propertyName": "hs_object_id", "operator": "GT", "value": last }
                    ]},
                    { "filters": [{ "propertyName": prop, "operator": "GT", "value": t }] }
                ]),
                prop,
            )
        };
        json!({
            "filterGroups": groups,
            "sorts": [{ "propertyName": sort, "direction": "ASCENDING" }],
            "properties": [prop, "hs_object_id"],
            "limit": self.config.search_page_size,
        })
    }

    async fn read_search(
        &self,
        stream: &StreamId,
        ot: &'static ObjectType,
        pos: SearchPosition,
    ) -> Result<Page> {
        let limit = self.config.search_page_size as usize;
        let body = self.search_body(ot, &pos);
        let answer = self.api.search(ot.stream, &body).await?;
        let page = parse_page(&answer, limit)?;
        let raw_count = page.results.len();
        let mut hits: Vec<(i64, u64)> = Vec::with_capacity(raw_count);
        let mut rejects = Vec::new();
        for item in &page.results {
            let (ts, id) = match search_hit(ot, item) {
                Ok(hit) => hit,
                Err(e) => {
                    rejects.push(reject_of(
                        ot.stream,
                        &RawJson::from_raw_in(&answer, item),
                        &e,
                    ));
                    continue;
                }
            };
            // Defensive: never take anything at or before the keyset.
            let after_keyset = if pos.tie {
                ts == pos.modified_after_ms && id > pos.last_id
            } else {
                (ts, id) > (pos.modified_after_ms, pos.last_id)
                    || (pos.last_id == 0 && ts >= pos.modified_after_ms)
            };
            if after_keyset {
                hits.push((ts, id));
            }
        }
        hits.sort_unstable();
        hits.dedup();
        let full = raw_count >= limit;
        let mut recent = pos.recent.clone();
        let (emit, next, has_more): (Vec<(i64, u64)>, SearchPosition, bool) = if pos.tie {
            let last = hits
                .iter()
                .map(|h| h.1)
                .max()
                .unwrap_or(pos.last_id)
                .max(pos.last_id);
            let next = SearchPosition {
                modified_after_ms: pos.modified_after_ms,
                last_id: last,
                tie: full,
                recent: Vec::new(),
            };
            (hits, next, true)
        } else if !full {
            let (t_done, last) = match hits.last() {
                Some(&(t, _)) => {
                    let last = hits
                        .iter()
                        .filter(|h| h.0 == t)
                        .map(|h| h.1)
                        .max()
                        .unwrap_or(0);
                    (
                        t,
                        if t == pos.modified_after_ms {
                            last.max(pos.last_id)
                        } else {
                            last
                        },
                    )
                }
                None => (pos.modified_after_ms, pos.last_id),
            };
            let _ = last;
            // Caught up: the next sync starts `lookback` before the newest change read.
            let lookback_from = t_done
                .saturating_sub(self.lookback_ms())
                .max(pos.modified_after_ms.min(t_done));
            let start = if pos.last_id == 0 && hits.is_empty() {
                pos.modified_after_ms
            } else {
                lookback_from
            };
            let next = SearchPosition {
                modified_after_ms: start,
                last_id: 0,
                tie: false,
                recent: Vec::new(),
            };
            (hits, next, false)
        } else {
            let t_last = hits.last().map(|h| h.0).unwrap_or(pos.modified_after_ms);
            let t_first = hits.first().map(|h| h.0).unwrap_or(pos.modified_after_ms);
            if t_first == t_last {
                // One timestamp fills the page: read that group by id.
                let last = if t_last == pos.modified_after_ms {
                    pos.last_id
                } else {
                    0
                };
                let next = SearchPosition {
                    modified_after_ms: t_last,
                    last_id: last,
                    tie: true,
                    recent: Vec::new(),
                };
                (Vec::new(), next, true)
            } else {
                let emit: Vec<(i64, u64)> = hits.into_iter().filter(|h| h.0 < t_last).collect();
                let t2 = emit.last().map(|h| h.0).unwrap_or(pos.modified_after_ms);
                let mut last2 = emit
                    .iter()
                    .filter(|h| h.0 == t2)
                    .map(|h| h.1)
                    .max()
                    .unwrap_or(0);
                if t2 == pos.modified_after_ms {
                    last2 = last2.max(pos.last_id);
                }
                let next = SearchPosition {
                    modified_after_ms: t2,
                    last_id: last2,
                    tie: false,
                    recent: Vec::new(),
                };
                (emit, next, true)
            }
        };
        let mut records = Vec::with_capacity(emit.len());
        if !emit.is_empty() {
            let props = self.properties(ot).await?;
            let ids: Vec<String> = emit.iter().map(|h| h.1.to_string()).collect();
            let (mut by_id, unread) = self.batch_records(ot, &ids, &props.names).await?;
            rejects.extend(unread);
            let seen: HashSet<(&str, i64)> = recent.iter().map(|(i, v)| (i.as_str(), *v)).collect();
            for id in ids {
                // An object archived between the search and the read is left out: its
                // deletion arrives by webhook.
                let Some(r) = by_id.remove(&id) else { continue };
                if let Some(v) = r.version
                    && seen.contains(&(r.id.as_str(), v))
                {
                    continue;
                }
                records.push(r);
            }
            drop(seen);
            recent.extend(
                records
                    .iter()
                    .filter_map(|r| r.version.map(|v| (r.id.clone(), v))),
            );
        }
        // Remember what was read within the lookback of the next keyset, newest first.
        let keep_from =
            next.modified_after_ms
                .saturating_sub(if has_more { self.lookback_ms() } else { 0 });
        recent.retain(|(_, v)| *v >= keep_from);
        recent.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        recent.dedup();
        recent.truncate(self.config.dedupe_capacity);
        let next = SearchPosition { recent, ..next };
        let cursor = HubSpotCursor::new(stream, Position::Search(next));
        Ok(Page::new(records, Some(cursor.to_token()), has_more).with_rejects(rejects))
    }

    async fn read_owners(&self, stream: &StreamId, after: Option<String>) -> Result<Page> {
        let body = self
            .api
            .owners(self.config.page_size, after.as_deref())
            .await?;
        let page = parse_page(&body, self.config.page_size as usize)?;
        let mut records = Vec::with_capacity(page.results.len());
        let mut rejects = Vec::new();
        for item in &page.results {
            let raw = RawJson::from_raw_in(&body, item);
            match owner_record(raw.clone()) {
                Ok(r) => records.push(r),
                Err(e) => rejects.push(reject_of(streams::OWNERS, &raw, &e)),
            }
        }
        let next = page.next_after.as_deref().map(str::to_string);
        let (pos, more) = match next {
            Some(n) if Some(&n) != after.as_ref() => (
                Position::Parts {
                    part: 0,
                    after: Some(n),
                },
                true,
            ),
            Some(_) => {
                return Err(
                    Error::invalid_response("owners paging repeated its `after` token").permanent(),
                );
            }
            None => (
                Position::Parts {
                    part: 0,
                    after: None,
                },
                false,
            ),
        };
        Ok(Page::new(
            records,
            Some(HubSpotCursor::new(stream, pos).to_token()),
            more,
        )
        .with_rejects(rejects))
    }

    async fn read_properties(&self, stream: &StreamId, part: usize) -> Result<Page> {
        let ot = OBJECT_TYPES.get(part).ok_or_else(|| {
            Error::invalid_input("cursor names an unknown part").with_context("stream", stream)
        })?;
        let body = self.api.properties(ot.stream).await?;
        let page = parse_page(&body, MAX_PROPERTY_DEFS)?;
        let mut records = Vec::with_capacity(page.results.len());
        let mut rejects = Vec::new();
        for item in &page.results {
            match property_record(ot.stream, item) {
                Ok(r) => records.push(r),
                Err(e) => rejects.push(
                    reject_of(streams::PROPERTIES, &RawJson::from_raw_in(&body, item), &e)
                        .with_parent(Some(ot.stream.to_string())),
                ),
            }
        }
        let more = part + 1 < OBJECT_TYPES.len();
        let pos = Position::Parts {
            part: if more { part + 1 } else { 0 },
            after: None,
        };
        Ok(Page::new(
            records,
            Some(HubSpotCursor::new(stream, pos).to_token()),
            more,
        )
        .with_rejects(rejects))
    }

    async fn read_associations(
        &self,
        stream: &StreamId,
        part: usize,
        after: Option<String>,
    ) -> Result<Page> {
        let pairs = association_pairs();
        let &(from, to) = pairs.get(part).ok_or_else(|| {
            Error::invalid_input("cursor names an unknown part").with_context("stream", stream)
        })?;
        let (Some(from_t), Some(to_t)) = (object_type(from), object_type(to)) else {
            return Err(Error::new(
                ErrorKind::Unexpected,
                "association pair of unknown types",
            ));
        };
        let body = self
            .api
            .list_objects(
                from,
                self.config.page_size,
                after.as_deref(),
                Some("hs_object_id"),
                &[],
            )
            .await?;
        let page = parse_page(&body, self.config.page_size as usize)?;
        let next = page.next_after.as_deref().map(str::to_string);
        let ids: Vec<String> = page
            .results
            .iter()
            .filter_map(|item| {
                serde_json::from_str::<ListItem<'_>>(item.get())
                    .ok()
                    .map(|li| li.id.0.into_owned())
            })
            .collect();
        let mut records = Vec::new();
        if !ids.is_empty() {
            for (from_id, tos) in self.api.associations(from, to, &ids).await? {
                for (to_id, types) in tos {
                    records.push(association_record(from_t, &from_id, to_t, &to_id, types));
                }
            }
        }
        let (pos, more) = match next {
            Some(n) if Some(&n) != after.as_ref() => (
                Position::Parts {
                    part,
                    after: Some(n),
                },
                true,
            ),
            Some(_) => {
                return Err(
                    Error::invalid_response("list paging repeated its `after` token").permanent(),
                );
            }
            None if part + 1 < pairs.len() => (
                Position::Parts {
                    part: part + 1,
                    after: None,
                },
                true,
            ),
            None => (
                Position::Parts {
                    part: 0,
                    after: None,
                },
                false,
            ),
        };
        Ok(Page::new(
            records,
            Some(HubSpotCursor::new(stream, pos).to_token()),
            more,
        ))
    }

    async fn write_ops(&self, ot: &'static ObjectType, ops: Vec<WriteOp>) -> Result<WriteReport> {
        let n = ops.len();
        let mut results: Vec<Option<Result<String>>> = (0..n).map(|_| None).collect();
        // 1. Conflict detection: read the current modified date of guarded operations.
        let guarded: Vec<usize> = (0..n)
            .filter(|&i| {
                let o = &ops[i];
                o.if_unmodified_since.is_some()
                    && !o.force
                    && o.id.is_some()
                    && matches!(
                        o.action,
                        WriteAction::Update | WriteAction::Delete | WriteAction::Upsert
                    )
            })
            .collect();
        for by_unique in [false, true] {
            let idx: Vec<usize> = guarded
                .iter()
                .copied()
                .filter(|&i| (ops[i].action == WriteAction::Upsert) == by_unique)
                .collect();
            if idx.is_empty() {
                continue;
            }
            // Upserts are grouped by their unique property.
            let mut groups: HashMap<Option<String>, Vec<usize>> = HashMap::new();
            for i in idx {
                let prop = if by_unique {
                    self.id_property(ot, &ops[i])
                } else {
                    None
                };
                groups.entry(prop).or_default().push(i);
            }
            for (prop, idx) in groups {
                let ids: Vec<String> = idx.iter().filter_map(|&i| ops[i].id.clone()).collect();
                let mut props = vec![ot.modified_property.to_string()];
                if let Some(p) = &prop {
                    props.push(p.clone());
                }
                let current = match self.read_current(ot, &ids, &props, prop.as_deref()).await {
                    Ok(c) => c,
                    Err(e) => {
                        for &i in &idx {
                            results[i] = Some(Err(copy_error(&e)));
                        }
                        continue;
                    }
                };
                for &i in &idx {
                    let key = ops[i].id.as_deref().unwrap_or_default();
                    let found = current.iter().find(|o| match &prop {
                        Some(_) => o
                            .unique
                            .as_deref()
                            .is_some_and(|v| v.eq_ignore_ascii_case(key)),
                        None => o.id == key,
                    });
                    let since = ops[i].if_unmodified_since.unwrap_or(i64::MAX);
                    if let Some(o) = found
                        && let Some(m) = o.modified
                        && m > since
                    {
                        results[i] = Some(Err(Error::new(
                            ErrorKind::Conflict,
                            "the object changed after the version this write is based on",
                        )
                        .permanent()
                        .with_context("id", &o.id)
                        .with_context("modified_ms", m)
                        .with_context("if_unmodified_since", since)));
                    }
                }
            }
        }
        // 2. Build batch inputs per action.
        let mut batches: HashMap<&'static str, Vec<(usize, Value)>> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            let trace = i.to_string();
            let input = match op.action {
                WriteAction::Delete => match &op.id {
                    Some(id) => Ok(("archive", json!({ "id": id }))),
                    None => Err(Error::invalid_input("delete needs an id")),
                },
                WriteAction::Create => self
                    .write_properties(op)
                    .map(|p| ("create", json!({ "properties": p, "objectWriteTraceId": trace }))),
                WriteAction::Update => match &op.id {
                    Some(id) => self
                        .write_properties(op)
                        .map(|p| ("update", json!({ "id": id, "properties": p, "objectWriteTraceId": trace }))),
                    None => Err(Error::invalid_input("update needs an id")),
                },
                WriteAction::Upsert => match (&op.id, self.id_property(ot, op)) {
                    (Some(id), Some(prop)) => self.write_properties(op).map(|p| {
                        ("upsert", json!({ "id": id, "idProperty": prop, "properties": p, "objectWriteTraceId": trace }))
                    }),
                    (None, _) => Err(Error::invalid_input("upsert needs the unique value as id")),
                    (_, None) => Err(Error::invalid_input(
                        "upsert needs an `idProperty` (this object type has no default unique property)",
                    )),
                },
                _ => Err(Error::unsupported("HubSpot write-back supports create, update, upsert and delete")),
            };
            match input {
                Ok((action, v)) => batches.entry(action).or_default().push((i, v)),
                Err(e) => results[i] = Some(Err(e.with_context("stream", ot.stream))),
            }
        }
        // 3. Send in chunks of 100 and map the answers back.
        for action in ["create", "update", "upsert", "archive"] {
            let Some(items) = batches.remove(action) else {
                continue;
            };
            for chunk in items.chunks(BATCH_LIMIT) {
                let inputs: Vec<Value> = chunk.iter().map(|(_, v)| v.clone()).collect();
                match self.api.batch_write(ot.stream, action, inputs).await {
                    Err(e) => {
                        for (i, _) in chunk {
                            results[*i] = Some(Err(copy_error(&e)));
                        }
                    }
                    Ok(body) => self.map_batch_answer(ot, action, chunk, &ops, &body, &mut results),
                }
            }
        }
        let mut report = WriteReport::default();
        for (i, (op, r)) in ops.into_iter().zip(results).enumerate() {
            let outcome = r.unwrap_or_else(|| {
                Err(Error::new(
                    ErrorKind::Unexpected,
                    "operation not reported by the batch answer",
                )
                .with_context("index", i))
            });
            report.results.push(match outcome {
                Ok(id) => WriteResult::ok(op.key, id),
                Err(e) => WriteResult::err(op.key, e),
            });
        }
        Ok(report)
    }

    fn id_property(&self, ot: &ObjectType, op: &WriteOp) -> Option<String> {
        op.fields
            .get("idProperty")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| ot.default_id_property.map(str::to_string))
    }

    fn write_properties(&self, op: &WriteOp) -> Result<serde_json::Map<String, Value>> {
        let src = match op.fields.get("properties") {
            Some(Value::Object(p)) => p,
            Some(_) => return Err(Error::invalid_input("`properties` must be an object")),
            None => match &op.fields {
                Value::Object(m) => m,
                _ => {
                    return Err(Error::invalid_input(
                        "fields must be an object of properties",
                    ));
                }
            },
        };
        Ok(src
            .iter()
            .filter(|(k, _)| k.as_str() != "idProperty")
            .map(|(k, v)| (k.clone(), Value::String(property_string(v))))
            .collect())
    }

    fn map_batch_answer(
        &self,
        ot: &ObjectType,
        action: &str,
        chunk: &[(usize, Value)],
        ops: &[WriteOp],
        body: &Value,
        results: &mut [Option<Result<String>>],
    ) {
        if action == "archive" {
            for (i, _) in chunk {
                results[*i] = Some(Ok(ops[*i].id.clone().unwrap_or_default()));
            }
            return;
        }
        let in_chunk = |i: usize| chunk.iter().any(|(j, _)| *j == i);
        let empty = Vec::new();
        let answers = body
            .get("results")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        for r in answers {
            let Some(id) = crate::api::id_of(r.get("id")) else {
                continue;
            };
            let by_trace = r
                .get("objectWriteTraceId")
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<usize>().ok())
                .filter(|&i| in_chunk(i));
            let target = by_trace.or_else(|| {
                chunk.iter().map(|(i, _)| *i).find(|&i| {
                    results[i].is_none()
                        && match action {
                            "update" => ops[i].id.as_deref() == Some(id.as_str()),
                            "upsert" => {
                                let prop = self.id_property(ot, &ops[i]).unwrap_or_default();
                                r.get("properties")
                                    .and_then(|p| p.get(&prop))
                                    .and_then(Value::as_str)
                                    .zip(ops[i].id.as_deref())
                                    .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b))
                            }
                            _ => false,
                        }
                })
            });
            if let Some(i) = target {
                results[i] = Some(Ok(id));
            }
        }
        let errors = body
            .get("errors")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        for err in errors {
            let Some(api) = HubSpotApiError::from_value(0, err) else {
                continue;
            };
            let targets: Vec<usize> = chunk
                .iter()
                .map(|(i, _)| *i)
                .filter(|&i| results[i].is_none())
                .filter(|&i| {
                    api.trace_ids
                        .iter()
                        .any(|t| t.parse::<usize>().ok() == Some(i))
                        || ops[i]
                            .id
                            .as_ref()
                            .is_some_and(|id| api.ids.iter().any(|x| x.eq_ignore_ascii_case(id)))
                })
                .collect();
            for i in targets {
                results[i] = Some(Err(api
                    .clone()
                    .into_error()
                    .with_context("stream", ot.stream)));
            }
        }
        // Creates without trace ids in the answer: by position, when the counts agree.
        if action == "create" && errors.is_empty() && answers.len() == chunk.len() {
            for ((i, _), r) in chunk.iter().zip(answers) {
                if results[*i].is_none()
                    && let Some(id) = crate::api::id_of(r.get("id"))
                {
                    results[*i] = Some(Ok(id));
                }
            }
        }
    }

    fn changes_for(&self, e: &HubSpotEvent) -> Vec<(Option<&'static ObjectType>, Change)> {
        let (ty, action) = e.split_type();
        let ot = if ty == "object" {
            e.object_type_id.as_deref().and_then(object_type_by_type_id)
        } else {
            object_type_by_any_name(ty)
        };
        let Some(ot) = ot else { return Vec::new() };
        let stream = StreamId::from_static(ot.stream);
        let at = |c: Change| match e.occurred_at {
            Some(t) => c.at(t),
            None => c,
        };
        let mut out = Vec::new();
        match action {
            "creation" | "propertyChange" | "restore" => {
                if let Some(id) = &e.object_id {
                    out.push((
                        Some(ot),
                        at(Change::new(
                            stream,
                            id.clone(),
                            Op::Upsert,
                            e.event_type.clone(),
                        )),
                    ));
                }
            }
            "deletion" | "privacyDeletion" => {
                if let Some(id) = &e.object_id {
                    out.push((
                        None,
                        at(Change::new(
                            stream,
                            id.clone(),
                            Op::Delete,
                            e.event_type.clone(),
                        )),
                    ));
                }
            }
            "merge" => {
                let survivor = e
                    .new_object_id
                    .clone()
                    .or_else(|| e.primary_object_id.clone())
                    .or_else(|| e.object_id.clone());
                for gone in &e.merged_object_ids {
                    if Some(gone) != survivor.as_ref() {
                        out.push((
                            None,
                            at(Change::new(
                                stream.clone(),
                                gone.clone(),
                                Op::Delete,
                                e.event_type.clone(),
                            )),
                        ));
                    }
                }
                if let Some(id) = survivor {
                    out.push((
                        Some(ot),
                        at(Change::new(stream, id, Op::Upsert, e.event_type.clone())),
                    ));
                }
            }
            "associationChange" => {
                let (Some(from), Some(to)) = (&e.from_object_id, &e.to_object_id) else {
                    return out;
                };
                let to_t = e
                    .association_type
                    .as_deref()
                    .and_then(|a| a.split_once("_TO_"))
                    .and_then(|(_, t)| object_type_by_any_name(t));
                let Some(to_t) = to_t else { return out };
                let removed = e.association_removed.unwrap_or(false);
                let rec = association_record(ot, from, to_t, to, Value::Null);
                let mut c = Change::new(
                    StreamId::from_static(streams::ASSOCIATIONS),
                    rec.id.clone(),
                    if removed { Op::Delete } else { Op::Upsert },
                    e.event_type.clone(),
                );
                if !removed {
                    c = c.with_record(rec);
                }
                out.push((None, at(c)));
            }
            _ => {}
        }
        out
    }
}

impl HubSpotConnector {
    /// The changes one stored webhook asks for (events deduplicated by `eventId`, ordered by
    /// `occurredAt`, echoes of our own writes dropped), each with the type of the object to
    /// read when the event is thin.
    fn plan(&self, webhook: &VerifiedWebhook) -> Result<Plan> {
        let events = dedupe_and_order(parse_events(&webhook.body)?);
        let mut planned = Vec::new();
        for e in &events {
            if e.is_echo_of(self.config.app_id) {
                tracing::debug!(event_type = %e.event_type, "dropping the echo of our own write");
                continue;
            }
            planned.extend(self.changes_for(e));
        }
        Ok(planned)
    }

    /// See [`Webhooks::parse_batch`]: the events of every webhook are planned, the objects
    /// they name are read together (per object type, 100 per `batch/read`), and each
    /// webhook gets its own result.
    async fn parse_many(&self, webhooks: &[VerifiedWebhook]) -> Vec<Result<Vec<Change>>> {
        let plans: Vec<Result<Plan>> = webhooks.iter().map(|w| self.plan(w)).collect();
        // The objects to read, per type, each once, in the order first named.
        let mut wanted: Vec<(&'static ObjectType, Vec<String>)> = Vec::new();
        let mut seen: HashSet<(&'static str, &str)> = HashSet::new();
        for plan in plans.iter().flatten() {
            for (ot, c) in plan {
                let Some(ot) = ot else { continue };
                if !seen.insert((ot.stream, c.id.as_str())) {
                    continue;
                }
                match wanted.iter_mut().find(|(t, _)| t.stream == ot.stream) {
                    Some((_, ids)) => ids.push(c.id.clone()),
                    None => wanted.push((ot, vec![c.id.clone()])),
                }
            }
        }
        let mut fetched: HashMap<(&'static str, String), Record> = HashMap::new();
        let mut failed: HashMap<(&'static str, String), Error> = HashMap::new();
        for (ot, ids) in wanted {
            let names = match self.properties(ot).await {
                Ok(p) => p.names.clone(),
                Err(e) => {
                    for id in ids {
                        failed.insert((ot.stream, id), copy_error(&e));
                    }
                    continue;
                }
            };
            for chunk in ids.chunks(BATCH_LIMIT) {
                match self.batch_records(ot, chunk, &names).await {
                    Ok((records, unread)) => {
                        if !unread.is_empty() {
                            tracing::warn!(
                                stream = ot.stream,
                                unread = unread.len(),
                                "webhook objects whose envelope cannot be read are left unresolved"
                            );
                        }
                        for (id, r) in records {
                            fetched.insert((ot.stream, id), r);
                        }
                    }
                    Err(e) => {
                        for id in chunk {
                            failed.insert((ot.stream, id.clone()), copy_error(&e));
                        }
                    }
                }
            }
        }
        plans
            .into_iter()
            .map(|plan| {
                let plan = plan?;
                let mut out = Vec::with_capacity(plan.len());
                for (ot, c) in plan {
                    let Some(ot) = ot else {
                        out.push(c);
                        continue;
                    };
                    let key = (ot.stream, c.id.clone());
                    if let Some(e) = failed.get(&key) {
                        return Err(copy_error(e).with_context("stream", ot.stream));
                    }
                    out.push(match fetched.get(&key) {
                        Some(r) => c.with_record(r.clone()),
                        // Not found (deleted since) or unreadable: the worker reads it again.
                        None => c,
                    });
                }
                Ok(out)
            })
            .collect()
    }

    fn map_record(&self, record: &Record) -> Result<Option<Entity>> {
        if record.op == Op::Delete {
            return Ok(None);
        }
        if let Some(ot) = object_type(record.stream.as_str()) {
            return object_entity(ot, &record.id, &record.raw, &self.config.property_mapping)
                .map(Some);
        }
        match record.stream.as_str() {
            streams::OWNERS => owner_entity(&record.id, &record.raw).map(Some),
            streams::ASSOCIATIONS => association_entity(&record.raw),
            _ => Ok(None),
        }
    }
}

/// What the `properties` and `associations` streams' records need to be read again.
#[derive(Deserialize)]
struct StoredView<'a> {
    #[serde(borrow, default, rename = "objectType")]
    object_type: Option<ObjectId<'a>>,
    #[serde(borrow, default)]
    name: Option<ObjectId<'a>>,
    #[serde(borrow, default, rename = "updatedAt")]
    updated_at: apex_connect_core::lenient::LenientStr<'a>,
    #[serde(borrow, default, rename = "fromObjectType")]
    from_type: Option<ObjectId<'a>>,
    #[serde(borrow, default, rename = "fromObjectId")]
    from_id: Option<ObjectId<'a>>,
    #[serde(borrow, default, rename = "toObjectType")]
    to_type: Option<ObjectId<'a>>,
    #[serde(borrow, default, rename = "toObjectId")]
    to_id: Option<ObjectId<'a>>,
}

fn unreadable(stream: &StreamId, what: &'static str) -> Error {
    Error::invalid_response(what)
        .permanent()
        .with_context("stream", stream)
}

#[async_trait]
impl Connector for HubSpotConnector {
    fn info(&self) -> &ConnectorInfo {
        &self.info
    }

    async fn check(&self) -> Result<()> {
        self.api.probe().await
    }

    async fn read(&self, stream: &StreamId, cursor: Option<&CursorToken>) -> Result<Page> {
        if self.info.stream(stream).is_none() {
            return Err(Self::no_such_stream(stream));
        }
        let position = match cursor {
            Some(t) => Some(HubSpotCursor::decode_for(stream, t)?.position),
            None => None,
        };
        let wrong = || {
            Error::invalid_input("cursor does not fit this stream").with_context("stream", stream)
        };
        if let Some(ot) = object_type(stream.as_str()) {
            return match position {
                None => self.read_list(stream, ot, None, now_ms()).await,
                Some(Position::List { after, started_ms }) => {
                    self.read_list(stream, ot, after, started_ms).await
                }
                Some(Position::Search(p)) => self.read_search(stream, ot, p).await,
                Some(_) => Err(wrong()),
            };
        }
        let (part, after) = match position {
            None => (0, None),
            Some(Position::Parts { part, after }) => (part, after),
            Some(_) => return Err(wrong()),
        };
        match stream.as_str() {
            streams::OWNERS => self.read_owners(stream, after).await,
            streams::PROPERTIES => self.read_properties(stream, part).await,
            streams::ASSOCIATIONS => self.read_associations(stream, part, after).await,
            _ => Err(Self::no_such_stream(stream)),
        }
    }

    async fn write(&self, stream: &StreamId, ops: Vec<WriteOp>) -> Result<WriteReport> {
        if self.info.stream(stream).is_none() {
            return Err(Self::no_such_stream(stream));
        }
        let Some(ot) = object_type(stream.as_str()) else {
            return Err(Error::unsupported("this HubSpot stream is read-only")
                .with_context("stream", stream));
        };
        self.write_ops(ot, ops).await
    }

    /// Objects map to Person (contacts, owners), Organization (companies), Deal and
    /// Activity (engagements) entities; associations to a relation between both ends;
    /// property definitions to none. Lenient: see [`object_entity`].
    fn map_entity(&self, record: &Record) -> Result<Option<Entity>> {
        self.map_record(record)
    }

    fn parse_record(
        &self,
        stream: &StreamId,
        raw: &RawJson,
        parent: Option<&str>,
    ) -> Result<Record> {
        if self.info.stream(stream).is_none() {
            return Err(Self::no_such_stream(stream));
        }
        if let Some(ot) = object_type(stream.as_str()) {
            return object_record_raw(ot, raw.clone());
        }
        match stream.as_str() {
            streams::OWNERS => owner_record(raw.clone()),
            streams::PROPERTIES => {
                let v: StoredView<'_> = serde_json::from_slice(raw.as_bytes())
                    .map_err(|_| unreadable(stream, "a property definition is not an object"))?;
                let object = v
                    .object_type
                    .map(|o| o.0.into_owned())
                    .or_else(|| parent.map(str::to_string))
                    .ok_or_else(|| {
                        unreadable(stream, "a property definition without its object type")
                    })?;
                let name = v
                    .name
                    .ok_or_else(|| unreadable(stream, "a property definition without a name"))?;
                let mut r =
                    Record::upsert(stream.clone(), format!("{object}.{}", name.0), raw.clone())
                        .with_parent(object);
                if let Some(m) = v.updated_at.as_deref().and_then(parse_time_ms) {
                    r = r.with_modified(m);
                }
                Ok(r)
            }
            streams::ASSOCIATIONS => {
                let v: StoredView<'_> = serde_json::from_slice(raw.as_bytes())
                    .map_err(|_| unreadable(stream, "an association is not an object"))?;
                match (v.from_type, v.from_id, v.to_type, v.to_id) {
                    (Some(ft), Some(fi), Some(tt), Some(ti)) => Ok(Record::upsert(
                        stream.clone(),
                        format!("{}:{}-{}:{}", ft.0, fi.0, tt.0, ti.0),
                        raw.clone(),
                    )),
                    _ => Err(unreadable(stream, "an association without both ends")),
                }
            }
            _ => Err(Self::no_such_stream(stream)),
        }
    }

    /// Object streams: the v3 object with every property defined for the account (custom
    /// ones listed in `custom_fields`), values strings or `null` as HubSpot sends them.
    async fn discover(&self, stream: &StreamId) -> Result<StreamSchema> {
        let info = self
            .info
            .stream(stream)
            .ok_or_else(|| Self::no_such_stream(stream))?;
        if let Some(ot) = object_type(stream.as_str()) {
            let props = self.properties(ot).await?;
            return Ok(object_schema(ot, info, &props.defs));
        }
        match stream.as_str() {
            streams::OWNERS => Ok(owner_schema(info)),
            streams::ASSOCIATIONS => Ok(association_schema(info)),
            streams::PROPERTIES => Ok(property_schema(info)),
            _ => Err(Self::no_such_stream(stream)),
        }
    }

    fn webhooks(&self) -> Option<&dyn Webhooks> {
        self.verifier.is_some().then_some(self as &dyn Webhooks)
    }
}

#[async_trait]
impl Webhooks for HubSpotConnector {
    fn verifier(&self) -> &dyn WebhookVerifier {
        match &self.verifier {
            Some(v) => v.as_ref(),
            None => &NoSecret,
        }
    }

    /// One event per element of the delivery's array, keyed by its `eventId`, with the
    /// one-element array as body ([`delivery_events`]). A body that is not an array of
    /// HubSpot events (or one event) is `Malformed`.
    fn events(
        &self,
        verified: &Verified,
        body: &Bytes,
    ) -> std::result::Result<Vec<WebhookEvent>, WebhookError> {
        parse_events(body).map_err(|_| {
            WebhookError::Malformed("the body is not an array of HubSpot events".into())
        })?;
        delivery_events(verified, body)
    }

    async fn parse(&self, webhook: &VerifiedWebhook) -> Result<Vec<Change>> {
        self.parse_many(std::slice::from_ref(webhook))
            .await
            .pop()
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    /// Reads the thin objects of every webhook together: one `batch/read` per object type
    /// and 100 objects (1,000 contact events cost 10 calls, not 1,000). One result per
    /// webhook: an unreadable body, or a failed read of one of its objects, fails that
    /// webhook only; an object not found leaves its change without a record.
    async fn parse_batch(&self, webhooks: &[VerifiedWebhook]) -> Vec<Result<Vec<Change>>> {
        self.parse_many(webhooks).await
    }
}
