//! [`HubSpotConnector`]: the [`Connector`] for one HubSpot account.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use apex_connect_core::http::{Credentials, RateGate, RetryConfig, StaticToken};
use apex_connect_core::oauth::{ClientAuth, OAuthConfig, TokenManager};
use apex_connect_core::webhook::{Verified, WebhookSecrets, unix_ms};
use apex_connect_core::{
    Capabilities, Change, Connector, ConnectorInfo, CursorToken, Error, ErrorKind, Op, Page,
    Record, Result, StreamId, StreamInfo, SyncCursor, VerifiedWebhook, WebhookError, WebhookEvent,
    WebhookVerifier, WriteAction, WriteOp, WriteReport, WriteResult, async_trait,
};
use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::NAME;
use crate::api::{ApiOptions, BATCH_LIMIT, HubSpotApi};
use crate::config::{HubSpotConfig, OAUTH_AUTHORIZE_URL, OAUTH_TOKEN_URL};
use crate::cursor::{HubSpotCursor, Position, SearchPosition};
use crate::error::HubSpotApiError;
use crate::models::{
    HubSpotObject, OBJECT_TYPES, ObjectType, association_pairs, association_record, object_record,
    object_type, object_type_by_any_name, owner_record, property_record, streams,
};
use crate::webhook::{
    HubSpotEvent, HubSpotWebhookVerifier, dedupe_and_order, delivery_events, parse_events,
};

/// The CRM API version spoken.
pub const API_VERSION: &str = "crm-v3";

/// How long discovered property names are reused before being fetched again.
const PROPERTY_CACHE_TTL: Duration = Duration::from_secs(600);

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
/// - The search phase sorts ascending on the modified date and filters on the keyset
///   `(modified, id) > (modified_after_ms, last_id)`: every page is a fresh query, so the
///   10,000-result cap of a search is never reached and an object modified during the sync
///   cannot shift offsets. Objects sharing a timestamp past a page are read by id.
///   Pages of ids are then read in full with `batch/read`.
/// - `owners`, `associations`, `properties` are re-read in full by each sync.
/// - Deletions are not read by sync (the search API does not return archived objects): they
///   come through webhooks (`*.deletion`).
#[derive(Debug)]
pub struct HubSpotConnector {
    info: ConnectorInfo,
    config: HubSpotConfig,
    api: HubSpotApi,
    verifier: Option<Arc<HubSpotWebhookVerifier>>,
    properties: Mutex<PropertyCache>,
}

/// Discovered property names per object type, with when they were fetched.
type PropertyCache = HashMap<&'static str, (Instant, Arc<Vec<String>>)>;

/// Builds a [`HubSpotConnector`]; see [`HubSpotConnector::builder`].
#[derive(Default)]
pub struct HubSpotConnectorBuilder {
    config: HubSpotConfig,
    credentials: Option<Arc<dyn Credentials>>,
    oauth: bool,
    retry: Option<RetryConfig>,
    gate: Option<RateGate>,
    search_gate: Option<RateGate>,
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
    pub fn oauth(mut self, manager: TokenManager) -> Self {
        self.credentials = Some(Arc::new(manager));
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

    /// Requests per ten seconds (everything but search).
    pub fn requests_per_10s(mut self, n: u32) -> Self {
        self.config.requests_per_10s = n;
        self
    }

    /// The retry configuration of the HTTP stack.
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = Some(retry);
        self
    }

    /// A rate gate shared with other connectors of the same account (everything but search).
    pub fn rate_gate(mut self, gate: RateGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// A search rate gate shared with other connectors of the same token.
    pub fn search_rate_gate(mut self, gate: RateGate) -> Self {
        self.search_gate = Some(gate);
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    /// `Config` when no credentials are given, a page size is out of range, or the base URL
    /// or rates are invalid.
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
        if !(1..=100).contains(&c.page_size) {
            return Err(Error::config("page_size must be between 1 and 100"));
        }
        if !(1..=200).contains(&c.search_page_size) {
            return Err(Error::config("search_page_size must be between 1 and 200"));
        }
        let options = ApiOptions {
            requests_per_10s: c.requests_per_10s,
            search_requests_per_second: c.search_requests_per_second,
            retry: self.retry.unwrap_or_default(),
            gate: self.gate,
            search_gate: self.search_gate,
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
        let mut stream_infos: Vec<StreamInfo> = OBJECT_TYPES
            .iter()
            .map(|o| StreamInfo::new(StreamId::from_static(o.stream), true))
            .collect();
        for s in [streams::OWNERS, streams::ASSOCIATIONS, streams::PROPERTIES] {
            stream_infos.push(StreamInfo::new(StreamId::from_static(s), false));
        }
        let mut caps = Capabilities::new(stream_infos).with_write_back();
        if verifier.is_some() {
            caps = caps.with_webhooks();
        }
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

    /// Every property name of `object` (discovered, cached for 10 minutes), including the
    /// modified-date property and `hs_object_id`.
    ///
    /// # Errors
    /// The HTTP stack's kinds.
    pub async fn property_names(&self, object: &ObjectType) -> Result<Arc<Vec<String>>> {
        if let Ok(cache) = self.properties.lock()
            && let Some((at, names)) = cache.get(object.stream)
            && at.elapsed() < PROPERTY_CACHE_TTL
        {
            return Ok(names.clone());
        }
        let defs = self.api.properties(object.stream).await?;
        let mut names: Vec<String> = defs
            .iter()
            .filter_map(|d| d.get("name").and_then(Value::as_str).map(str::to_string))
            .collect();
        names.push(object.modified_property.to_string());
        names.push("hs_object_id".into());
        names.sort();
        names.dedup();
        let names = Arc::new(names);
        if let Ok(mut cache) = self.properties.lock() {
            cache.insert(object.stream, (Instant::now(), names.clone()));
        }
        Ok(names)
    }

    async fn read_list(
        &self,
        stream: &StreamId,
        ot: &'static ObjectType,
        after: Option<String>,
        started_ms: i64,
    ) -> Result<Page> {
        let props = self.property_names(ot).await?;
        let csv = props.join(",");
        let inline = csv.len() <= self.config.max_properties_query_len;
        let page = self
            .api
            .list_objects(
                ot.stream,
                self.config.page_size,
                after.as_deref(),
                Some(if inline { csv.as_str() } else { "hs_object_id" }),
                ot.associations,
            )
            .await?;
        let next = page.next_after().map(str::to_string);
        let objects: Vec<HubSpotObject> = if inline {
            page.results
        } else {
            let ids: Vec<String> = page.results.iter().map(|o| o.id.clone()).collect();
            let mut assocs: HashMap<String, _> = page
                .results
                .into_iter()
                .map(|o| (o.id, o.associations))
                .collect();
            let mut full = self.api.batch_read(ot.stream, &ids, &props).await?;
            for o in &mut full {
                if let Some(a) = assocs.remove(&o.id) {
                    o.associations = a;
                }
            }
            let pos: HashMap<&String, usize> =
                ids.iter().enumerate().map(|(i, id)| (id, i)).collect();
            full.sort_by_key(|o| pos.get(&o.id).copied().unwrap_or(usize::MAX));
            full
        };
        let records: Vec<Record> = objects
            .into_iter()
            .map(|o| object_record(ot, o, &self.config.property_mapping))
            .collect();
        match next {
            Some(n) => {
                if after.as_deref() == Some(n.as_str()) {
                    return Err(
                        Error::invalid_response("list paging repeated its `after` token")
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
                Ok(Page::new(records, Some(c.to_token()), true))
            }
            None => {
                let pos = SearchPosition {
                    modified_after_ms: started_ms - self.lookback_ms(),
                    last_id: 0,
                    tie: false,
                    recent: Vec::new(),
                };
                let c = HubSpotCursor::new(stream, Position::Search(pos));
                Ok(Page::new(records, Some(c.to_token()), false))
            }
        }
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
        let page = self.api.search(ot.stream, &body).await?;
        let raw_count = page.results.len();
        let mut hits: Vec<(i64, u64)> = Vec::with_capacity(raw_count);
        for o in &page.results {
            let ts = o
                .property(ot.modified_property)
                .and_then(crate::models::parse_time_ms)
                .or_else(|| o.modified_ms(ot.modified_property))
                .ok_or_else(|| {
                    Error::invalid_response("search result without a modified date")
                        .with_context("stream", stream)
                })?;
            let id: u64 = o.id.parse().map_err(|_| {
                Error::invalid_response("search result id is not numeric")
                    .with_context("stream", stream)
            })?;
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
            let props = self.property_names(ot).await?;
            let ids: Vec<String> = emit.iter().map(|h| h.1.to_string()).collect();
            let objects = self.api.batch_read(ot.stream, &ids, &props).await?;
            let mut by_id: HashMap<String, HubSpotObject> =
                objects.into_iter().map(|o| (o.id.clone(), o)).collect();
            let seen: HashSet<(String, i64)> = recent.iter().cloned().collect();
            for id in ids {
                // An object archived between the search and the read is left out: its
                // deletion arrives by webhook.
                let Some(o) = by_id.remove(&id) else { continue };
                let r = object_record(ot, o, &self.config.property_mapping);
                if let Some(v) = r.version {
                    if seen.contains(&(r.id.clone(), v)) {
                        continue;
                    }
                    recent.push((r.id.clone(), v));
                }
                records.push(r);
            }
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
        Ok(Page::new(records, Some(cursor.to_token()), has_more))
    }

    async fn read_owners(&self, stream: &StreamId, after: Option<String>) -> Result<Page> {
        let page = self
            .api
            .owners(self.config.page_size, after.as_deref())
            .await?;
        let next = page.next_after().map(str::to_string);
        let records: Vec<Record> = page.results.into_iter().map(owner_record).collect();
        let (pos, more) = match next {
            Some(n) if Some(&n) != after.as_ref() => (
                Position::Parts {
                    part: 0,
                    after: Some(n),
                },
                true,
            ),
            Some(_) => {
                return Err(Error::invalid_response(
                    "owners paging repeated its `after` token",
                ));
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
        ))
    }

    async fn read_properties(&self, stream: &StreamId, part: usize) -> Result<Page> {
        let ot = OBJECT_TYPES.get(part).ok_or_else(|| {
            Error::invalid_input("cursor names an unknown part").with_context("stream", stream)
        })?;
        let defs = self.api.properties(ot.stream).await?;
        let records: Vec<Record> = defs
            .into_iter()
            .filter_map(|d| property_record(ot.stream, d))
            .collect();
        let more = part + 1 < OBJECT_TYPES.len();
        let pos = Position::Parts {
            part: if more { part + 1 } else { 0 },
            after: None,
        };
        Ok(Page::new(
            records,
            Some(HubSpotCursor::new(stream, pos).to_token()),
            more,
        ))
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
        let page = self
            .api
            .list_objects(
                from,
                self.config.page_size,
                after.as_deref(),
                Some("hs_object_id"),
                &[],
            )
            .await?;
        let next = page.next_after().map(str::to_string);
        let ids: Vec<String> = page.results.into_iter().map(|o| o.id).collect();
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
                return Err(Error::invalid_response(
                    "list paging repeated its `after` token",
                ));
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

    /// Reads `ids` of `ot` in full (for webhooks).
    async fn fetch(
        &self,
        ot: &'static ObjectType,
        ids: Vec<String>,
    ) -> Result<HashMap<String, Record>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let props = self.property_names(ot).await?;
        let objects = self.api.batch_read(ot.stream, &ids, &props).await?;
        Ok(objects
            .into_iter()
            .map(|o| {
                let r = object_record(ot, o, &self.config.property_mapping);
                (r.id.clone(), r)
            })
            .collect())
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
        for (by_unique, group) in [(false, true), (true, false)] {
            let idx: Vec<usize> = guarded
                .iter()
                .copied()
                .filter(|&i| (ops[i].action == WriteAction::Upsert) == by_unique)
                .collect();
            let _ = group;
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
                let current = match self
                    .api
                    .batch_read_by(ot.stream, &ids, &props, prop.as_deref())
                    .await
                {
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
                        Some(p) => o.property(p).is_some_and(|v| v.eq_ignore_ascii_case(key)),
                        None => o.id == key,
                    });
                    let since = ops[i].if_unmodified_since.unwrap_or(i64::MAX);
                    if let Some(o) = found
                        && let Some(m) = o.modified_ms(ot.modified_property)
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

/// The object type of a generic `object.*` event's `objectTypeId`.
fn object_type_by_type_id(id: &str) -> Option<&'static ObjectType> {
    let name = match id {
        "0-1" => "contacts",
        "0-2" => "companies",
        "0-3" => "deals",
        "0-46" => "notes",
        "0-49" => "emails",
        "0-48" => "calls",
        "0-47" => "meetings",
        "0-27" => "tasks",
        _ => return None,
    };
    object_type(name)
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
            return Err(
                Error::new(ErrorKind::NotFound, "HubSpot has no such stream")
                    .with_context("connector", NAME)
                    .with_context("stream", stream),
            );
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
            _ => Err(
                Error::new(ErrorKind::NotFound, "HubSpot has no such stream")
                    .with_context("stream", stream),
            ),
        }
    }

    async fn write(&self, stream: &StreamId, ops: Vec<WriteOp>) -> Result<WriteReport> {
        if self.info.stream(stream).is_none() {
            return Err(
                Error::new(ErrorKind::NotFound, "HubSpot has no such stream")
                    .with_context("stream", stream),
            );
        }
        let Some(ot) = object_type(stream.as_str()) else {
            return Err(Error::unsupported("this HubSpot stream is read-only")
                .with_context("stream", stream));
        };
        self.write_ops(ot, ops).await
    }

    fn webhook_verifier(&self) -> Option<Arc<dyn WebhookVerifier>> {
        self.verifier.clone().map(|v| v as Arc<dyn WebhookVerifier>)
    }

    /// One event per element of the delivery's array, keyed by its `eventId`, with the
    /// one-element array as body ([`delivery_events`]).
    fn webhook_events(
        &self,
        verified: &Verified,
        body: &Bytes,
    ) -> std::result::Result<Vec<WebhookEvent>, WebhookError> {
        delivery_events(verified, body)
    }

    async fn parse_webhook(&self, webhook: &VerifiedWebhook) -> Result<Vec<Change>> {
        let events = dedupe_and_order(parse_events(&webhook.body)?);
        let mut planned: Vec<(Option<&'static ObjectType>, Change)> = Vec::new();
        for e in &events {
            if e.is_echo_of(self.config.app_id) {
                tracing::debug!(event_type = %e.event_type, "dropping the echo of our own write");
                continue;
            }
            planned.extend(self.changes_for(e));
        }
        // Batch-read the thin objects, one call per type (and per 100).
        let mut wanted: HashMap<&'static str, (&'static ObjectType, Vec<String>)> = HashMap::new();
        for (ot, c) in &planned {
            if let Some(ot) = ot {
                let entry = wanted.entry(ot.stream).or_insert_with(|| (ot, Vec::new()));
                if !entry.1.contains(&c.id) {
                    entry.1.push(c.id.clone());
                }
            }
        }
        let mut fetched: HashMap<(&'static str, String), Record> = HashMap::new();
        for (stream, (ot, ids)) in wanted {
            for (id, r) in self.fetch(ot, ids).await? {
                fetched.insert((stream, id), r);
            }
        }
        Ok(planned
            .into_iter()
            .map(
                |(ot, c)| match ot.and_then(|ot| fetched.get(&(ot.stream, c.id.clone()))) {
                    Some(r) => c.with_record(r.clone()),
                    None => c,
                },
            )
            .collect())
    }
}
