//! [`SalesforceConnector`]: streams of sObjects read through REST queries or Bulk API 2.0,
//! deletes, write-back through sObject Collections, and Outbound Messages.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use apex_connect_core::http::{HttpClient, LinkGuard, RetryConfig, StaticToken, path_segment};
use apex_connect_core::store::Clock;
use apex_connect_core::{
    Capabilities, Connector, ConnectorInfo, CursorToken, Entity, Error, ErrorKind, Page, RawJson,
    Record, Reject, Result, StreamId, StreamSchema, SyncCursor, TokenManager, Webhooks,
    WriteAction, WriteOp, WriteReport, WriteResult, async_trait,
};
use bytes::Bytes;
use http::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::NAME;
use crate::api::{
    ApiUsage, QueryPage, SalesforceApi, SalesforceAuth, SalesforcePolicy, identity_ids,
};
use crate::config::{DeleteMode, SalesforceConfig, SalesforceSettings};
use crate::cursor::{BulkState, Mark, SalesforceCursor, Walk, WalkKind};
use crate::error::{SalesforceApiError, SalesforceErrorItem, error_code, kind_for};
use crate::models::{self, MapContext, ObjectDescribe, ObjectPlan};
use crate::webhook::OutboundMessages;

/// Records per sObject Collections call.
pub const COLLECTION_SIZE: usize = 200;
/// Ids per retrieve call (`POST /composite/sobjects/{object}`).
pub const RETRIEVE_SIZE: usize = 2000;
/// How many times one read halves a query window after `QUERY_TIMEOUT`.
const MAX_HALVINGS: u32 = 8;
/// Conditional updates up to this many per call go one by one with `If-Unmodified-Since`;
/// more are checked by comparing `LastModifiedDate` first.
const MAX_ROW_PRECONDITIONS: usize = 10;
/// Most writes remembered for echo suppression.
const MAX_ECHOES: usize = 100_000;

/// Builds a [`SalesforceConnector`].
#[derive(Default)]
pub struct SalesforceConnectorBuilder {
    settings: SalesforceSettings,
    auth: Option<AuthChoice>,
    client_secret: Option<SecretString>,
    outbound_secret: Option<SecretString>,
    base_url: Option<String>,
    streams: Vec<String>,
    retry: Option<RetryConfig>,
    clock: Option<Clock>,
}

enum AuthChoice {
    OAuth(Arc<TokenManager>),
    Token(SecretString),
}

impl fmt::Debug for SalesforceConnectorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SalesforceConnectorBuilder")
            .field("settings", &self.settings)
            .field("base_url", &self.base_url)
            .field("streams", &self.streams)
            .finish_non_exhaustive()
    }
}

impl SalesforceConnectorBuilder {
    /// The connection's settings.
    pub fn settings(mut self, settings: SalesforceSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Authenticates with OAuth tokens from `manager` (the instance comes from the token).
    pub fn token_manager(mut self, manager: Arc<TokenManager>) -> Self {
        self.auth = Some(AuthChoice::OAuth(manager));
        self
    }

    /// Authenticates with a static access token; the instance is the `instance_url` setting
    /// or the base URL.
    pub fn access_token(mut self, token: impl Into<String>) -> Self {
        self.auth = Some(AuthChoice::Token(SecretString::from(token.into())));
        self
    }

    /// The OAuth client secret: token answers' signatures are verified with it.
    pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(SecretString::from(secret.into()));
        self
    }

    /// The secret in the Outbound Message endpoint URL; enables push (with the
    /// `organization_id` setting).
    pub fn outbound_secret(mut self, secret: impl Into<String>) -> Self {
        self.outbound_secret = Some(SecretString::from(secret.into()));
        self
    }

    /// The HTTP client's base URL (with a static token: the instance).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Syncs only these streams (empty: all configured objects).
    pub fn streams(mut self, streams: &[String]) -> Self {
        self.streams = streams.to_vec();
        self
    }

    /// The wall clock the connector reads "now" from (default: the system clock): a walk's
    /// upper bound and whether its last second had ended. Tests share one clock with the
    /// simulator.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The HTTP retry configuration.
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Validates and builds (no I/O).
    ///
    /// # Errors
    /// `Config` for bad settings, no authentication, a static token without an instance, or
    /// an outbound secret without `organization_id`.
    pub fn build(self) -> Result<SalesforceConnector> {
        let mut config = self.settings.resolve()?;
        if !self.streams.is_empty() {
            let unknown: Vec<&String> = self
                .streams
                .iter()
                .filter(|s| !config.objects.iter().any(|o| o == *s))
                .collect();
            if !unknown.is_empty() {
                return Err(Error::config("a stream to sync is not a configured object")
                    .with_context(
                        "streams",
                        unknown
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                    ));
            }
            config.objects.retain(|o| self.streams.contains(o));
        }
        let usage = Arc::new(ApiUsage::new());
        let base = match (&self.base_url, &config.instance_url) {
            (Some(b), _) => b.clone(),
            (None, Some(i)) => i.origin().ascii_serialization(),
            (None, None) => config.login_url.origin().ascii_serialization(),
        };
        let mut http = HttpClient::builder(base.clone())
            .policy(Arc::new(SalesforcePolicy::new(usage.clone())))
            .retry(self.retry.unwrap_or_default())
            .user_agent(concat!(
                "apex-connect-salesforce/",
                env!("CARGO_PKG_VERSION")
            ));
        let auth = match self.auth {
            Some(AuthChoice::OAuth(m)) => {
                http = http.credentials(m.clone());
                SalesforceAuth::OAuth(m)
            }
            Some(AuthChoice::Token(t)) => {
                let instance = config
                    .instance_url
                    .clone()
                    .or_else(|| url::Url::parse(&base).ok())
                    .ok_or_else(|| {
                        Error::config("a static access token needs the instance_url setting")
                    })?;
                http = http.credentials(Arc::new(StaticToken::bearer(t.expose_secret())));
                SalesforceAuth::Static {
                    token: t,
                    instance_url: instance,
                }
            }
            None => {
                return Err(Error::config(
                    "the connector needs OAuth tokens or an access token",
                ));
            }
        };
        let http = http.build()?;
        let oauth = matches!(auth, SalesforceAuth::OAuth(_));
        let webhooks = match (self.outbound_secret, &config.organization_id) {
            (Some(secret), Some(org)) => Some(OutboundMessages::new(secret, org.clone())),
            (Some(_), None) => {
                return Err(Error::config(
                    "Outbound Messages need the organization_id setting (messages of other orgs are refused)",
                ));
            }
            (None, _) => None,
        };
        let config = Arc::new(config);
        let streams = models::streams(&config.objects, config.deletes != DeleteMode::None);
        let mut caps = Capabilities::new(streams).with_write_back();
        if oauth {
            caps = caps.with_oauth_refresh();
        }
        let api = SalesforceApi::new(http, auth, config.clone(), usage, self.client_secret);
        Ok(SalesforceConnector {
            info: ConnectorInfo::new(NAME, config.api_version.clone(), caps),
            api: Arc::new(api),
            echo_window: config.echo_window,
            config,
            plans: tokio::sync::RwLock::new(HashMap::new()),
            map_ctx: RwLock::new(MapContext::default()),
            webhooks,
            echoes: Mutex::new(Echoes::default()),
            user_id: RwLock::new(None),
            clock: self.clock.unwrap_or_else(Clock::system),
        })
    }
}

/// Our own recent writes, for echo suppression.
#[derive(Default)]
struct Echoes {
    at: HashMap<(String, String), i64>,
    order: VecDeque<(String, String)>,
}

/// A Salesforce org, as one connector: one stream per sObject.
pub struct SalesforceConnector {
    info: ConnectorInfo,
    api: Arc<SalesforceApi>,
    config: Arc<SalesforceConfig>,
    plans: tokio::sync::RwLock<HashMap<String, Arc<ObjectPlan>>>,
    map_ctx: RwLock<MapContext>,
    pub(crate) webhooks: Option<OutboundMessages>,
    echoes: Mutex<Echoes>,
    echo_window: Duration,
    user_id: RwLock<Option<String>>,
    clock: Clock,
}

impl fmt::Debug for SalesforceConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SalesforceConnector")
            .field("api", &self.api)
            .field("objects", &self.config.objects)
            .field("webhooks", &self.webhooks)
            .finish_non_exhaustive()
    }
}

/// What one read of a walk produced.
struct Step {
    records: Vec<Record>,
    rejects: Vec<Reject>,
    has_more: bool,
}

/// The keyset mark the next query continues after: the last record read (or the one the walk
/// must skip to), unless a finished window already moved the lower bound past it.
fn keyset(w: &Walk) -> Option<&Mark> {
    w.last
        .as_ref()
        .or(w.skip_to.as_ref())
        .filter(|m| floor_sec(m.ms) >= w.lo_ms)
}

/// After a window smaller than the walk (a `QUERY_TIMEOUT` halved it) is read: the next one
/// is twice as wide, up to the walk's upper bound.
fn next_window(walk: &mut Walk) {
    match walk.window_ms {
        Some(span) => {
            let grow = span.saturating_mul(2);
            walk.window_hi_ms = floor_sec(walk.window_hi_ms.saturating_add(grow)).min(walk.hi_ms);
            walk.window_ms = (walk.window_hi_ms < walk.hi_ms).then_some(grow);
        }
        None => walk.window_hi_ms = walk.hi_ms,
    }
}

fn floor_sec(ms: i64) -> i64 {
    ms.div_euclid(1000).saturating_mul(1000)
}

/// A copy of `e` (errors are not `Clone`) for each operation of a failed call.
fn copy_err(e: &Error) -> Error {
    let mut c = Error::new(e.kind(), e.message().to_string());
    c = if e.is_temporary() {
        c.temporary()
    } else {
        c.permanent()
    };
    for (k, v) in e.context() {
        c = c.with_context(k, v);
    }
    c
}

impl SalesforceConnector {
    /// A builder.
    pub fn builder() -> SalesforceConnectorBuilder {
        SalesforceConnectorBuilder::default()
    }

    /// The API calls (for hosts that need more than streams).
    pub fn api(&self) -> &SalesforceApi {
        &self.api
    }

    /// The resolved configuration.
    pub fn config(&self) -> &SalesforceConfig {
        &self.config
    }

    /// The org's daily API usage `(used, max)` as last reported.
    pub fn api_usage(&self) -> Option<(u64, u64)> {
        self.api.usage().get()
    }

    fn object_for(&self, stream: &StreamId) -> Result<&str> {
        self.config
            .objects
            .iter()
            .find(|o| o.as_str() == stream.as_str())
            .map(String::as_str)
            .ok_or_else(|| {
                Error::new(ErrorKind::NotFound, "unknown stream").with_context("stream", stream)
            })
    }

    /// The read plan of `object` (describe, cached).
    ///
    /// # Errors
    /// Describe's errors; `Unsupported` for an object that cannot be synced.
    pub async fn plan(&self, object: &str) -> Result<Arc<ObjectPlan>> {
        if let Some(p) = self.plans.read().await.get(object) {
            return Ok(p.clone());
        }
        let body = self.api.describe(object).await?;
        let d = ObjectDescribe::parse(&body)?;
        let plan = Arc::new(ObjectPlan::new(
            d,
            self.config.fields.get(object).map(Vec::as_slice),
        )?);
        for (f, why) in &plan.skipped {
            tracing::debug!(object, field = %f, reason = why, "field not read");
        }
        self.map_ctx
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .learn(&plan.describe);
        self.plans
            .write()
            .await
            .insert(object.to_string(), plan.clone());
        Ok(plan)
    }

    fn check_budget(&self) -> Result<()> {
        if self.api.usage().reached(self.config.daily_api_share) {
            let (used, max) = self.api.usage().get().unwrap_or((0, 0));
            return Err(Error::new(
                ErrorKind::RateLimited,
                "sync stopped before using more of the org's daily API allocation than allowed \
                 (daily_api_share); it resumes from its cursor",
            )
            .permanent()
            .with_retry_after(crate::error::REQUEST_LIMIT_BACKOFF)
            .with_context("connector", NAME)
            .with_context("api_used", used)
            .with_context("api_max", max)
            .with_context("daily_api_share", self.config.daily_api_share));
        }
        Ok(())
    }

    fn new_walk(&self, c: &SalesforceCursor, full: bool) -> Walk {
        let hi = floor_sec(self.clock.now_ms());
        let lookback = i64::try_from(self.config.lookback.as_millis()).unwrap_or(i64::MAX);
        let (lo, skip_to) = match (&c.mark, full) {
            // Salesforce stamps at second precision: a change made later in the second of the
            // mark, to a record with a lower `Id`, gets the mark's stamp and would sort before
            // it. Continue after the mark only when its second had ended before the walk that
            // read it started; else re-read that whole second (upserts are idempotent).
            (Some(m), false) if lookback == 0 && !c.mark_open => (floor_sec(m.ms), Some(m.clone())),
            (Some(m), false) if lookback == 0 => (floor_sec(m.ms), None),
            (Some(m), false) => (floor_sec(m.ms.saturating_sub(lookback)), None),
            _ => (floor_sec(self.config.start_ms), None),
        };
        let hi = hi.max(lo);
        Walk {
            kind: WalkKind::Upserts,
            full,
            lo_ms: lo,
            hi_ms: hi,
            window_hi_ms: hi,
            skip_to,
            last: None,
            next_url: None,
            bulk: None,
            rest_only: false,
            query_all_done: false,
            window_ms: None,
        }
    }

    /// Runs a query starting a (window of a) walk, halving the window on `QUERY_TIMEOUT`.
    async fn start_query(
        &self,
        walk: &mut Walk,
        build: impl Fn(&Walk) -> String,
        all: bool,
    ) -> Result<QueryPage> {
        let mut halvings = 0;
        loop {
            let soql = build(walk);
            match self.api.query(&soql, all).await {
                Ok(p) => return Ok(p),
                Err(e) if error_code(&e) == Some("QUERY_TIMEOUT") && halvings < MAX_HALVINGS => {
                    let lower = walk
                        .last
                        .as_ref()
                        .map_or(walk.lo_ms, |m| floor_sec(m.ms).max(walk.lo_ms));
                    let span = walk.window_hi_ms.saturating_sub(lower);
                    if span < 2_000 {
                        return Err(e);
                    }
                    walk.window_hi_ms = floor_sec(lower.saturating_add(span / 2));
                    walk.window_ms = Some(walk.window_hi_ms.saturating_sub(lower).max(1000));
                    halvings += 1;
                    tracing::info!(
                        window_ms = span / 2,
                        "QUERY_TIMEOUT: halving the query's date window"
                    );
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Splits the plan's fields into the set a query URL can carry and the rest (read by id).
    fn split_fields(&self, plan: &ObjectPlan, where_: &str) -> (Vec<String>, Vec<String>) {
        let fits = |n: usize| {
            let q = models::soql_select(
                &plan.fields[..n],
                &plan.object,
                where_,
                &plan.replication_key,
                true,
            );
            self.api.query_url_len(&q) <= self.config.max_query_url
        };
        if fits(plan.fields.len()) {
            return (plan.fields.clone(), Vec::new());
        }
        let (mut lo, mut hi) = (2usize, plan.fields.len());
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fits(mid) { lo = mid } else { hi = mid - 1 }
        }
        let head = plan.fields[..lo.max(2)].to_vec();
        let mut tail = vec!["Id".to_string()];
        tail.extend(plan.fields[lo.max(2)..].iter().cloned());
        (head, tail)
    }

    /// Joins the `tail` fields of the page's records, read by id, into each record.
    async fn join_tail(
        &self,
        plan: &ObjectPlan,
        page: QueryPage,
        tail: &[String],
    ) -> Result<Vec<RawJson>> {
        if tail.len() <= 1 || page.records.is_empty() {
            return Ok(page.records);
        }
        let ids: Vec<Option<String>> = page
            .records
            .iter()
            .map(|r| {
                models::envelope(r.as_bytes(), &plan.replication_key)
                    .ok()
                    .map(|e| e.0)
            })
            .collect();
        let known: Vec<String> = ids.iter().flatten().cloned().collect();
        let mut extra: HashMap<String, RawJson> = HashMap::new();
        for chunk in known.chunks(RETRIEVE_SIZE) {
            let (_, got) = self.api.retrieve(&plan.object, chunk, tail).await?;
            for (id, r) in chunk.iter().zip(got) {
                if let Some(r) = r {
                    extra.insert(id.clone(), r);
                }
            }
        }
        let mut buf: Vec<u8> =
            Vec::with_capacity(page.records.iter().map(RawJson::len).sum::<usize>() * 2 + 2);
        buf.push(b'[');
        for (i, (r, id)) in page.records.iter().zip(&ids).enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            let more = id.as_ref().and_then(|id| extra.get(id));
            match (more, r.as_str().trim_end().strip_suffix('}')) {
                (Some(more), Some(head)) => {
                    let fields: Map<String, Value> = more.deserialize().unwrap_or_default();
                    buf.extend_from_slice(head.as_bytes());
                    let empty = head.trim_end().ends_with('{');
                    let mut first = empty;
                    for (k, v) in fields {
                        if k == "attributes" || k == "Id" {
                            continue;
                        }
                        if !first {
                            buf.push(b',');
                        }
                        first = false;
                        let _ = serde_json::to_writer(&mut buf, &k);
                        buf.push(b':');
                        let _ = serde_json::to_writer(&mut buf, &v);
                    }
                    buf.push(b'}');
                }
                _ => buf.extend_from_slice(r.as_bytes()),
            }
        }
        buf.push(b']');
        let body = Bytes::from(buf);
        let items: Vec<&RawValue> = serde_json::from_slice(&body)
            .map_err(|e| Error::invalid_response("joined records are not JSON").set_source(e))?;
        Ok(items
            .iter()
            .map(|r| RawJson::from_raw_in(&body, r))
            .collect())
    }

    /// Turns raw records into upserts (or deletes), skipping what the walk already read.
    #[allow(clippy::too_many_arguments)]
    fn take_records(
        &self,
        stream: &StreamId,
        plan: &ObjectPlan,
        walk: &mut Walk,
        raws: Vec<RawJson>,
        delete: bool,
        out: &mut Step,
        ordered: bool,
    ) {
        let after = walk.last.clone().or_else(|| walk.skip_to.clone());
        for raw in raws {
            match models::envelope(raw.as_bytes(), &plan.replication_key) {
                Ok((id, ms)) => {
                    if let Some(m) = &after
                        && (ms < m.ms || (ms == m.ms && id == m.id))
                    {
                        continue;
                    }
                    let mark = Mark::new(ms, id.clone());
                    if ordered || walk.last.as_ref().is_none_or(|l| &mark > l) {
                        walk.last = Some(mark);
                    }
                    out.records.push(if delete {
                        Record::delete(stream.clone(), id).with_modified(ms)
                    } else {
                        Record::upsert(stream.clone(), id, raw).with_modified(ms)
                    });
                }
                Err(e) => out.rejects.push(Reject::unparsed(
                    stream.clone(),
                    apex_connect_core::lenient::field_string(raw.as_bytes(), "Id"),
                    raw.bytes().clone(),
                    &e,
                )),
            }
        }
    }

    /// One step of an upserts walk.
    async fn step_upserts(
        &self,
        stream: &StreamId,
        plan: &ObjectPlan,
        walk: &mut Walk,
    ) -> Result<(Step, bool)> {
        let mut step = Step {
            records: Vec::new(),
            rejects: Vec::new(),
            has_more: true,
        };
        if let Some(bulk) = walk.bulk.clone() {
            return self
                .step_bulk(stream, plan, walk, bulk)
                .await
                .map(|s| (s, false));
        }
        let mut guard = LinkGuard::new();
        let mut empty_windows = 0u32;
        loop {
            let rk = plan.replication_key.clone();
            let where_ =
                |w: &Walk| models::soql_where(&rk, w.lo_ms, keyset(w), w.window_hi_ms, None);
            let (head, tail) = self.split_fields(plan, &where_(walk));
            let page = match walk.next_url.clone() {
                Some(next) => {
                    guard.check_link(&next)?;
                    match self.api.query_more(&next).await {
                        Ok(p) => p,
                        Err(e)
                            if e.kind() == ErrorKind::NotFound
                                || error_code(&e) == Some("INVALID_QUERY_LOCATOR") =>
                        {
                            tracing::info!("query locator expired: continuing by keyset");
                            walk.next_url = None;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                None => {
                    let fresh = walk.last.is_none();
                    let head2 = head.clone();
                    let obj = plan.object.clone();
                    let page = self
                        .start_query(
                            walk,
                            |w| models::soql_select(&head2, &obj, &where_(w), &rk, true),
                            false,
                        )
                        .await?;
                    if fresh
                        && !walk.rest_only
                        && plan.bulk_ok
                        && page.total_size.unwrap_or(0) > self.config.bulk_threshold
                    {
                        let soql = models::soql_select(
                            &plan.fields,
                            &plan.object,
                            &models::soql_where(
                                &rk,
                                walk.lo_ms,
                                walk.skip_to.as_ref(),
                                walk.hi_ms,
                                None,
                            ),
                            &rk,
                            false,
                        );
                        let job = self.api.bulk_create(&soql).await?;
                        tracing::info!(object = %plan.object, total = page.total_size, job = %job, "large walk: reading through Bulk API 2.0");
                        walk.window_hi_ms = walk.hi_ms;
                        walk.bulk = Some(BulkState {
                            job_id: job,
                            locator: None,
                        });
                        return Ok((step, false));
                    }
                    page
                }
            };
            let next = page.next.clone();
            let raws = self.join_tail(plan, page, &tail).await?;
            let before = step.records.len() + step.rejects.len();
            self.take_records(stream, plan, walk, raws, false, &mut step, true);
            walk.next_url = next;
            let got = step.records.len() + step.rejects.len() - before;
            if walk.next_url.is_none() {
                if walk.window_hi_ms < walk.hi_ms {
                    // Everything up to the window's end is read: the next window starts after it.
                    walk.lo_ms = walk.window_hi_ms.saturating_add(1000);
                    next_window(walk);
                    // An empty window moves the walk on; after many, hand back an empty
                    // page (the cursor holds the progress) rather than query on and on.
                    empty_windows += 1;
                    if got == 0 && empty_windows < 32 {
                        continue;
                    }
                    return Ok((step, false));
                }
                return Ok((step, true));
            }
            if got > 0 {
                return Ok((step, false));
            }
            guard.record_page(0)?;
        }
    }

    async fn step_bulk(
        &self,
        stream: &StreamId,
        plan: &ObjectPlan,
        walk: &mut Walk,
        bulk: BulkState,
    ) -> Result<Step> {
        let mut step = Step {
            records: Vec::new(),
            rejects: Vec::new(),
            has_more: true,
        };
        let restart = |walk: &mut Walk, why: &Error| {
            tracing::warn!(error = %why, "bulk job unusable: reading the walk through REST");
            walk.bulk = None;
            walk.last = None;
            walk.next_url = None;
            walk.rest_only = true;
        };
        if bulk.locator.is_none() {
            match self
                .api
                .bulk_wait(&bulk.job_id, self.config.bulk_poll_timeout)
                .await
            {
                Ok(_) => {}
                Err(e)
                    if e.kind() == ErrorKind::NotFound
                        || (e.kind() == ErrorKind::Upstream && !e.is_temporary()) =>
                {
                    restart(walk, &e);
                    return Ok(step);
                }
                Err(e) => return Err(e),
            }
        }
        let page = match self
            .api
            .bulk_results(
                &bulk.job_id,
                bulk.locator.as_deref(),
                self.config.bulk_page_records,
                plan,
                stream,
            )
            .await
        {
            Ok(p) => p,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                restart(walk, &e);
                return Ok(step);
            }
            Err(e) => return Err(e),
        };
        let after = walk.skip_to.clone();
        for (raw, mark) in page.records {
            if let Some(m) = &after
                && (mark.ms < m.ms || (mark.ms == m.ms && mark.id == m.id))
            {
                continue;
            }
            if walk.last.as_ref().is_none_or(|l| &mark > l) {
                walk.last = Some(mark.clone());
            }
            step.records
                .push(Record::upsert(stream.clone(), mark.id, raw).with_modified(mark.ms));
        }
        step.rejects = page.rejects;
        match page.next_locator {
            Some(l) => {
                if bulk.locator.as_deref() == Some(l.as_str()) {
                    return Err(Error::invalid_response(
                        "Sforce-Locator repeats the current locator",
                    )
                    .permanent());
                }
                walk.bulk = Some(BulkState {
                    job_id: bulk.job_id,
                    locator: Some(l),
                });
            }
            None => {
                self.api.bulk_delete(&bulk.job_id).await;
                walk.bulk = None;
                step.has_more = false;
            }
        }
        Ok(step)
    }

    fn uses_query_all(&self, plan: &ObjectPlan) -> bool {
        matches!(self.config.deletes, DeleteMode::QueryAll | DeleteMode::Both)
            && plan.has_is_deleted
    }

    fn uses_get_deleted(&self, plan: &ObjectPlan) -> bool {
        match self.config.deletes {
            DeleteMode::GetDeleted | DeleteMode::Both => true,
            DeleteMode::QueryAll => !plan.has_is_deleted,
            DeleteMode::None => false,
        }
    }

    /// One step of a deletes walk; `true` when the walk is done.
    async fn step_deletes(
        &self,
        stream: &StreamId,
        plan: &ObjectPlan,
        walk: &mut Walk,
    ) -> Result<(Step, bool)> {
        let mut step = Step {
            records: Vec::new(),
            rejects: Vec::new(),
            has_more: true,
        };
        if !walk.query_all_done && self.uses_query_all(plan) {
            let rk = plan.replication_key.clone();
            let fields = vec!["Id".to_string(), rk.clone()];
            let page = match walk.next_url.clone() {
                Some(next) => match self.api.query_more(&next).await {
                    Ok(p) => p,
                    Err(e)
                        if e.kind() == ErrorKind::NotFound
                            || error_code(&e) == Some("INVALID_QUERY_LOCATOR") =>
                    {
                        walk.next_url = None;
                        return Ok((step, false));
                    }
                    Err(e) => return Err(e),
                },
                None => {
                    let obj = plan.object.clone();
                    self.start_query(
                        walk,
                        |w| {
                            let where_ = models::soql_where(
                                &rk,
                                w.lo_ms,
                                keyset(w),
                                w.window_hi_ms,
                                Some("IsDeleted = TRUE"),
                            );
                            models::soql_select(&fields, &obj, &where_, &rk, true)
                        },
                        true,
                    )
                    .await?
                }
            };
            walk.next_url = page.next.clone();
            self.take_records(stream, plan, walk, page.records, true, &mut step, true);
            if walk.next_url.is_none() {
                if walk.window_hi_ms < walk.hi_ms {
                    // Everything up to the window's end is read: the next window starts after it.
                    walk.lo_ms = walk.window_hi_ms.saturating_add(1000);
                    next_window(walk);
                    return Ok((step, false));
                }
                walk.query_all_done = true;
                if !self.uses_get_deleted(plan) {
                    return Ok((step, true));
                }
            }
            return Ok((step, false));
        }
        if self.uses_get_deleted(plan) {
            let now = floor_sec(self.clock.now_ms());
            let oldest = now.saturating_sub(29 * 24 * 3600 * 1000);
            let end = walk.hi_ms;
            let start = walk.lo_ms.max(oldest).min(end.saturating_sub(60_000));
            let (ids, _) = self.api.get_deleted(&plan.object, start, end).await?;
            for (id, ms) in ids {
                step.records
                    .push(Record::delete(stream.clone(), id).with_modified(ms));
            }
        }
        Ok((step, true))
    }

    fn lookback_ms(&self) -> i64 {
        i64::try_from(self.config.lookback.as_millis()).unwrap_or(i64::MAX)
    }

    /// The walk that reads deletes after an upserts walk that ended at `hi`.
    fn deletes_walk(&self, c: &SalesforceCursor, hi: i64) -> Walk {
        let from = c.deletes_from_ms.unwrap_or(hi);
        let lo = floor_sec(from.saturating_sub(self.lookback_ms())).min(hi);
        Walk {
            kind: WalkKind::Deletes,
            full: false,
            lo_ms: lo,
            hi_ms: hi,
            window_hi_ms: hi,
            skip_to: None,
            last: None,
            next_url: None,
            bulk: None,
            rest_only: false,
            query_all_done: false,
            window_ms: None,
        }
    }

    // ----- write-back -----

    fn remember_writes(&self, object: &str, ids: impl IntoIterator<Item = String>) {
        let now = self.clock.now_ms();
        let mut e = self.echoes.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            let key = (object.to_string(), id);
            if e.at.insert(key.clone(), now).is_none() {
                e.order.push_back(key);
            }
            while e.order.len() > MAX_ECHOES {
                if let Some(old) = e.order.pop_front() {
                    e.at.remove(&old);
                }
            }
        }
    }

    /// Whether a record of `object` read back (its `LastModifiedDate` and
    /// `LastModifiedById`) is the echo of a write this connector made within the echo window:
    /// we wrote it, nobody else modified it since (the modification time is within seconds of
    /// our write, and the modifier is our user when the token says who we are).
    pub fn is_echo(
        &self,
        object: &str,
        id: &str,
        last_modified_ms: Option<i64>,
        last_modified_by: Option<&str>,
    ) -> bool {
        let now = self.clock.now_ms();
        let window = i64::try_from(self.echo_window.as_millis()).unwrap_or(i64::MAX);
        let written = {
            let e = self.echoes.lock().unwrap_or_else(|p| p.into_inner());
            e.at.get(&(object.to_string(), id.to_string())).copied()
        };
        let Some(written) = written else { return false };
        if now.saturating_sub(written) > window {
            return false;
        }
        let close = last_modified_ms.is_some_and(|m| m.abs_diff(written) <= 5_000);
        let user_ok = match (
            self.user_id
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .as_deref(),
            last_modified_by,
        ) {
            (Some(me), Some(by)) => me.get(..15) == by.get(..15),
            _ => true,
        };
        close && user_ok
    }

    async fn learn_user(&self) {
        if self
            .user_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return;
        }
        if let Some((_, user)) = self
            .api
            .identity_url()
            .await
            .as_deref()
            .and_then(identity_ids)
        {
            *self.user_id.write().unwrap_or_else(|p| p.into_inner()) = Some(user);
        }
    }

    fn call_options(&self) -> String {
        format!("client={}", self.config.call_options_client)
    }

    /// Runs one collections call; per-record results in request order.
    async fn collection_call(
        &self,
        method: Method,
        url: &str,
        body: Option<Value>,
        n: usize,
    ) -> Result<Vec<Result<String>>> {
        let mut rb = self
            .api
            .request(method, url)?
            .header("sforce-call-options", self.call_options());
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let (_, bytes) = self.api.send_bytes(rb).await?;
        let items: Vec<Value> = serde_json::from_slice(&bytes)
            .map_err(|e| Error::from_json(e, "collection results"))?;
        if items.len() != n {
            return Err(Error::invalid_response(
                "sObject Collections answered another number of results",
            )
            .with_context("sent", n)
            .with_context("got", items.len()));
        }
        Ok(items
            .iter()
            .map(|it| {
                let ok = it.get("success").and_then(Value::as_bool).unwrap_or(false);
                let id = it.get("id").and_then(Value::as_str).map(str::to_string);
                if ok {
                    return Ok(id.unwrap_or_default());
                }
                let errors = it
                    .get("errors")
                    .map(SalesforceErrorItem::parse_list)
                    .unwrap_or_default();
                let code = errors
                    .first()
                    .map(|e| e.error_code.clone())
                    .unwrap_or_default();
                let msg = errors
                    .first()
                    .map(|e| e.message.clone())
                    .unwrap_or_else(|| "the record was not written".into());
                let (kind, temporary) = kind_for(&code, 0);
                let mut err =
                    Error::new(kind, format!("Salesforce: {code} {msg}").trim().to_string())
                        .with_context("error_code", &code);
                err = if temporary {
                    err.temporary()
                } else {
                    err.permanent()
                };
                Err(err.set_source(SalesforceApiError { status: 0, errors }))
            })
            .collect())
    }

    async fn write_chunked(
        &self,
        object: &str,
        action: &WriteAction,
        ops: Vec<(usize, &WriteOp)>,
        results: &mut [Option<Result<String>>],
    ) -> Result<()> {
        let ext = self.config.external_ids.get(object).cloned();
        for chunk in ops.chunks(COLLECTION_SIZE) {
            let mut sent: Vec<usize> = Vec::new();
            let mut records = Vec::new();
            let mut ids = Vec::new();
            for (i, op) in chunk {
                let fields = match &op.fields {
                    Value::Object(m) => m.clone(),
                    Value::Null => Map::new(),
                    _ => {
                        results[*i] = Some(Err(Error::invalid_input(
                            "write fields must be a JSON object",
                        )));
                        continue;
                    }
                };
                let mut rec = Map::new();
                rec.insert("attributes".into(), json!({"type": object}));
                for (k, v) in fields {
                    if k != "attributes" && !k.eq_ignore_ascii_case("id") {
                        rec.insert(k, v);
                    }
                }
                match action {
                    WriteAction::Update | WriteAction::Delete => {
                        let Some(id) = op.id.as_deref().filter(|id| models::looks_like_id(id))
                        else {
                            results[*i] = Some(Err(Error::invalid_input(
                                "update and delete need the record's Id",
                            )));
                            continue;
                        };
                        rec.insert("id".into(), json!(id));
                        ids.push(id.to_string());
                    }
                    WriteAction::Upsert => {
                        let Some(field) = &ext else {
                            results[*i] = Some(Err(Error::invalid_input("upsert needs an external id field for the object (setting external_ids)")
                                .with_context("object", object)));
                            continue;
                        };
                        if rec.get(field).is_none_or(Value::is_null) {
                            results[*i] = Some(Err(Error::invalid_input(
                                "upsert fields lack the external id value",
                            )
                            .with_context("field", field)));
                            continue;
                        }
                    }
                    _ => {}
                }
                sent.push(*i);
                records.push(Value::Object(rec));
            }
            if sent.is_empty() {
                continue;
            }
            let base = self.api.data_url("/composite/sobjects").await?;
            let outcome = match action {
                WriteAction::Create => {
                    self.collection_call(
                        Method::POST,
                        &base,
                        Some(json!({"allOrNone": false, "records": records})),
                        sent.len(),
                    )
                    .await
                }
                WriteAction::Update => {
                    self.collection_call(
                        Method::PATCH,
                        &base,
                        Some(json!({"allOrNone": false, "records": records})),
                        sent.len(),
                    )
                    .await
                }
                WriteAction::Upsert => {
                    let field = ext.clone().unwrap_or_default();
                    let url = format!("{base}/{}/{}", path_segment(object)?, path_segment(&field)?);
                    self.collection_call(
                        Method::PATCH,
                        &url,
                        Some(json!({"allOrNone": false, "records": records})),
                        sent.len(),
                    )
                    .await
                }
                WriteAction::Delete => {
                    let url = format!("{base}?ids={}&allOrNone=false", ids.join(","));
                    self.collection_call(Method::DELETE, &url, None, sent.len())
                        .await
                }
                _ => Ok(Vec::new()),
            };
            match outcome {
                Ok(per) => {
                    let mut written = Vec::new();
                    for (i, r) in sent.iter().zip(per) {
                        if let Ok(id) = &r {
                            written.push(id.clone());
                        }
                        results[*i] = Some(r);
                    }
                    self.remember_writes(object, written);
                }
                Err(e) if e.kind() == ErrorKind::Unauthenticated => return Err(e),
                Err(e) => {
                    for i in sent {
                        results[i] = Some(Err(copy_err(&e)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Updates one record with `If-Unmodified-Since` (a 412 is a conflict).
    async fn update_if_unmodified(
        &self,
        object: &str,
        op: &WriteOp,
        since_ms: i64,
    ) -> Result<String> {
        let id = op
            .id
            .as_deref()
            .filter(|id| models::looks_like_id(id))
            .ok_or_else(|| Error::invalid_input("update needs the record's Id"))?;
        let url = self
            .api
            .data_url(&format!(
                "/sobjects/{}/{}",
                path_segment(object)?,
                path_segment(id)?
            ))
            .await?;
        let mut fields = match &op.fields {
            Value::Object(m) => m.clone(),
            _ => return Err(Error::invalid_input("write fields must be a JSON object")),
        };
        fields.retain(|k, _| k != "attributes" && !k.eq_ignore_ascii_case("id"));
        let since = chrono::DateTime::from_timestamp_millis(since_ms)
            .map(|d| d.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
            .ok_or_else(|| Error::invalid_input("if_unmodified_since is out of range"))?;
        let rb = self
            .api
            .request(Method::PATCH, &url)?
            .header("if-unmodified-since", since)
            .header("sforce-call-options", self.call_options())
            .json(&Value::Object(fields));
        match self.api.send(rb).await {
            Ok(_) => {
                self.remember_writes(object, [id.to_string()]);
                Ok(id.to_string())
            }
            Err(e) if e.kind() == ErrorKind::Conflict => Err(Error::new(
                ErrorKind::Conflict,
                "the record changed since if_unmodified_since (412): not overwritten",
            )
            .permanent()
            .with_context("id", id)
            .set_source(e)),
            Err(e) => Err(e),
        }
    }

    /// The ids among `ops` whose `LastModifiedDate` is after their `if_unmodified_since`
    /// (conflicts), or that no longer exist.
    async fn find_conflicts(
        &self,
        object: &str,
        ops: &[(usize, &WriteOp)],
    ) -> Result<HashMap<usize, Error>> {
        let mut out = HashMap::new();
        let ids: Vec<String> = ops
            .iter()
            .filter_map(|(_, o)| o.id.clone())
            .filter(|id| models::looks_like_id(id))
            .collect();
        let mut modified: HashMap<String, Option<i64>> = HashMap::new();
        let fields = vec!["Id".to_string(), "LastModifiedDate".to_string()];
        for chunk in ids.chunks(RETRIEVE_SIZE) {
            let (_, got) = self.api.retrieve(object, chunk, &fields).await?;
            for (id, r) in chunk.iter().zip(got) {
                let lm = r.and_then(|r| {
                    let v: Map<String, Value> = r.deserialize().ok()?;
                    v.get("LastModifiedDate")
                        .and_then(Value::as_str)
                        .and_then(models::parse_datetime)
                });
                modified.insert(id.clone(), lm);
            }
        }
        for (i, op) in ops {
            let (Some(id), Some(since)) = (&op.id, op.if_unmodified_since) else {
                continue;
            };
            match modified.get(id) {
                Some(Some(lm)) if *lm > since => {
                    out.insert(
                        *i,
                        Error::new(
                            ErrorKind::Conflict,
                            "the record changed since if_unmodified_since: not overwritten",
                        )
                        .permanent()
                        .with_context("id", id)
                        .with_context("last_modified_ms", lm),
                    );
                }
                Some(None) | None => {
                    out.insert(
                        *i,
                        Error::new(ErrorKind::NotFound, "the record no longer exists")
                            .permanent()
                            .with_context("id", id),
                    );
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Connector for SalesforceConnector {
    fn info(&self) -> &ConnectorInfo {
        &self.info
    }

    async fn check(&self) -> Result<()> {
        self.api.check_version().await?;
        let url = self.api.data_url("/").await?;
        self.api
            .send_bytes(self.api.request(Method::GET, &url)?)
            .await?;
        Ok(())
    }

    async fn read(&self, stream: &StreamId, cursor: Option<&CursorToken>) -> Result<Page> {
        let object = self.object_for(stream)?.to_string();
        let mut c = match cursor {
            None => SalesforceCursor::new(object.clone()),
            Some(t) => SalesforceCursor::for_stream(t, stream)?,
        };
        self.check_budget()?;
        self.api.check_version().await?;
        let plan = self.plan(&object).await?;
        let full = cursor.is_none();
        let mut walk = match c.walk.take() {
            Some(w) => w,
            None => self.new_walk(&c, full),
        };
        let (step, done) = match walk.kind {
            WalkKind::Upserts => self.step_upserts(stream, &plan, &mut walk).await?,
            WalkKind::Deletes => self.step_deletes(stream, &plan, &mut walk).await?,
        };
        let bulk_done = walk.kind == WalkKind::Upserts && !step.has_more;
        let mut has_more = true;
        if done || bulk_done {
            match walk.kind {
                WalkKind::Upserts => {
                    if let Some(last) = walk.last.clone()
                        && c.mark.as_ref().is_none_or(|m| &last > m)
                    {
                        c.mark = Some(last);
                    }
                    // The walk read its last second (`hi_ms`) while that second was running.
                    c.mark_open = c.mark.as_ref().is_some_and(|m| m.ms >= walk.hi_ms);
                    if walk.full || self.config.deletes == DeleteMode::None {
                        c.deletes_from_ms =
                            Some(c.deletes_from_ms.unwrap_or(i64::MIN).max(walk.hi_ms));
                        c.walk = None;
                        has_more = false;
                    } else {
                        c.walk = Some(self.deletes_walk(&c, walk.hi_ms));
                    }
                }
                WalkKind::Deletes => {
                    c.deletes_from_ms = Some(walk.hi_ms);
                    c.walk = None;
                    has_more = false;
                }
            }
        } else {
            c.walk = Some(walk);
        }
        Ok(Page::new(step.records, Some(c.to_token()), has_more).with_rejects(step.rejects))
    }

    async fn write(&self, stream: &StreamId, ops: Vec<WriteOp>) -> Result<WriteReport> {
        let object = self.object_for(stream)?.to_string();
        self.learn_user().await;
        let mut results: Vec<Option<Result<String>>> = (0..ops.len()).map(|_| None).collect();
        // Optimistic concurrency first.
        let conditional: Vec<(usize, &WriteOp)> = ops
            .iter()
            .enumerate()
            .filter(|(_, o)| o.if_unmodified_since.is_some() && !o.force)
            .collect();
        let row_updates = conditional.len() <= MAX_ROW_PRECONDITIONS
            && conditional
                .iter()
                .all(|(_, o)| o.action == WriteAction::Update);
        if row_updates {
            for (i, op) in &conditional {
                let since = op.if_unmodified_since.unwrap_or_default();
                results[*i] = Some(self.update_if_unmodified(&object, op, since).await);
            }
        } else if !conditional.is_empty() {
            for (i, e) in self.find_conflicts(&object, &conditional).await? {
                results[i] = Some(Err(e));
            }
        }
        for action in [
            WriteAction::Create,
            WriteAction::Update,
            WriteAction::Upsert,
            WriteAction::Delete,
        ] {
            let batch: Vec<(usize, &WriteOp)> = ops
                .iter()
                .enumerate()
                .filter(|(i, o)| o.action == action && results[*i].is_none())
                .collect();
            if !batch.is_empty() {
                self.write_chunked(&object, &action, batch, &mut results)
                    .await?;
            }
        }
        let mut report = WriteReport::default();
        report.results = ops
            .iter()
            .zip(results)
            .map(|(op, r)| match r {
                Some(Ok(id)) => WriteResult::ok(op.key.clone(), id),
                Some(Err(e)) => WriteResult::err(op.key.clone(), e),
                None => WriteResult::err(
                    op.key.clone(),
                    Error::unsupported("Salesforce has no such write action")
                        .with_context("action", format!("{:?}", op.action)),
                ),
            })
            .collect();
        Ok(report)
    }

    fn map_entity(&self, record: &Record) -> Result<Option<Entity>> {
        let ctx = self.map_ctx.read().unwrap_or_else(|p| p.into_inner());
        models::map_entity(record.stream.as_str(), record, &ctx)
    }

    fn parse_record(
        &self,
        stream: &StreamId,
        raw: &RawJson,
        parent: Option<&str>,
    ) -> Result<Record> {
        let _ = parent;
        let object = self.object_for(stream)?;
        let rk = self
            .plans
            .try_read()
            .ok()
            .and_then(|p| p.get(object).map(|p| p.replication_key.clone()))
            .unwrap_or_else(|| "SystemModstamp".into());
        models::record(stream, raw.clone(), &rk)
    }

    async fn discover(&self, stream: &StreamId) -> Result<StreamSchema> {
        let object = self.object_for(stream)?.to_string();
        let plan = self.plan(&object).await?;
        let info = self.info.stream(stream).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, "unknown stream").with_context("stream", stream)
        })?;
        Ok(plan.schema(info))
    }

    fn webhooks(&self) -> Option<&dyn Webhooks> {
        self.webhooks.as_ref().map(|_| self as &dyn Webhooks)
    }
}

impl SalesforceConnector {
    /// Reads records of `object` by id (for re-reading notified records): one query per few
    /// hundred ids. Returns the records found (a missing id is gone or not visible).
    ///
    /// # Errors
    /// The query's errors.
    pub async fn read_by_ids(&self, object: &str, ids: &[String]) -> Result<Vec<Record>> {
        let plan = self.plan(object).await?;
        let stream = StreamId::new(object.to_string());
        let mut out = Vec::new();
        for chunk in ids.chunks(200) {
            let list: Vec<String> = chunk.iter().map(|i| models::soql_string(i)).collect();
            let where_ = format!("Id IN ({})", list.join(", "));
            let (head, tail) = self.split_fields(&plan, &where_);
            let soql =
                models::soql_select(&head, &plan.object, &where_, &plan.replication_key, false);
            let mut page = self.api.query(&soql, false).await?;
            let mut guard = LinkGuard::new();
            loop {
                let next = page.next.clone();
                let raws = self.join_tail(&plan, page, &tail).await?;
                for raw in raws {
                    if let Ok(r) = models::record(&stream, raw, &plan.replication_key) {
                        out.push(r);
                    }
                }
                let Some(next) = next else { break };
                guard.check_link(&next)?;
                page = self.api.query_more(&next).await?;
            }
        }
        Ok(out)
    }
}
