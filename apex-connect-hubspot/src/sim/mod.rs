//! A HubSpot simulator (feature `sim`): an axum server on loopback that answers the CRM v3/v4
//! endpoints the connector calls with HubSpot's JSON shapes.
//!
//! - Seeded data generated on the fly from each object's index (100,000 contacts cost no
//!   memory until read); mutations live in a small overlay.
//! - `after` paging on list endpoints (`paging` absent on the last page); search with
//!   `filterGroups` (OR of ANDs), one sort, `after` offsets, the 10,000-result cap (a `400`
//!   past it) and ties on the modified date returned in descending id order (HubSpot leaves
//!   that order unspecified; the simulator picks the unfriendly one).
//! - Rate limits as HubSpot enforces them: a rolling ten-second window (at most N requests
//!   in any ten seconds, not fixed windows), `X-HubSpot-RateLimit-Max`, `-Remaining` and
//!   `-Interval-Milliseconds` on every answer, and `429` bodies with `policyName`
//!   (`TEN_SECONDLY_ROLLING`; `SECONDLY` for search, whose answers carry no rate headers).
//!   Time can be a virtual [`Clock`] shared with the client ([`HubSpotSimConfig::clock`]),
//!   with a simulated network latency.
//! - Hostile objects ([`HubSpotSim::inject_hostile`]): variants of the documented object
//!   shape with odd values, nulls and unknown keys, served verbatim by the list endpoint.
//! - OAuth: the testkit's [`OAuthServer`] under `/oauth/v1` (`/oauth/v1/token`).
//! - Batch read/create/update/upsert/archive with partial failures (`207`).
//! - Webhooks signed as v1, v2 or v3.

mod data;
mod routes;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use apex_connect_core::http::Clock;
use apex_connect_core::oauth::{ClientAuth, OAuthConfig};
use apex_connect_core::webhook::{WebhookRequest, WebhookSecrets, unix_ms};
use apex_connect_core::{Error, ErrorKind, Result};
use apex_connect_testkit::oauth_server::{OAuthServer, OAuthServerConfig};
use apex_connect_testkit::sim::{
    Faults, FixedWindowLimiter, Intercept, Next, RateLimitHeaders, SimHandle, SimServer, SimStats,
    WebhookDelivery, WebhookSender,
};
use axum::extract::Request;
use axum::response::Response;
use futures::future::BoxFuture;
use http::{HeaderMap, Method, Uri};
use serde_json::{Value, json};

use crate::models::{OBJECT_TYPES, association_pairs, format_time_ms, object_type, streams};
use crate::webhook::{HubSpotWebhookVerifier, SignatureVersion};
use data::{Obj, Overlay, Seeded};

/// What the simulator holds and how it behaves.
#[derive(Clone)]
#[non_exhaustive]
pub struct HubSpotSimConfig {
    /// Seed of the generated data.
    pub seed: u64,
    /// Contacts.
    pub contacts: u64,
    /// Companies.
    pub companies: u64,
    /// Deals.
    pub deals: u64,
    /// Engagements of each type (notes, emails, calls, meetings, tasks).
    pub engagements: u64,
    /// Owners.
    pub owners: u64,
    /// The private app token the simulator accepts.
    pub private_app_token: String,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret (also the webhook signing secret).
    pub client_secret: String,
    /// The app id (the `sourceId` of changes made through the API).
    pub app_id: u64,
    /// The account (portal) id.
    pub portal_id: u64,
    /// Requests per 10 s outside search (`None`: unlimited, headers still sent).
    pub requests_per_10s: Option<u32>,
    /// Search requests per second (`None`: unlimited).
    pub search_per_second: Option<u32>,
    /// Modified time of the first seeded object (Unix ms).
    pub base_ms: i64,
    /// The clock the rate limits count on (`None`: real time). A virtual clock shared with
    /// the connector's HTTP stack makes rate tests exact and fast.
    pub clock: Option<Arc<dyn Clock>>,
    /// Time each API answer takes after the rate limiter counted its request, slept on
    /// [`clock`](Self::clock) (default zero): the network's return path.
    pub latency: Duration,
}

impl Default for HubSpotSimConfig {
    fn default() -> Self {
        HubSpotSimConfig {
            seed: 7,
            contacts: 40,
            companies: 12,
            deals: 25,
            engagements: 6,
            owners: 5,
            private_app_token: "pat-na1-11111111-2222-3333-4444-555555555555".into(),
            client_id: "sim-client-id".into(),
            client_secret: "sim-client-secret-yyyy-yyyy".into(),
            app_id: 1_160_452,
            portal_id: 62_515,
            requests_per_10s: Some(190),
            search_per_second: Some(5),
            base_ms: 1_600_000_000_000,
            clock: None,
            latency: Duration::ZERO,
        }
    }
}

impl HubSpotSimConfig {
    /// Sets the numbers of contacts, companies and deals.
    pub fn size(mut self, contacts: u64, companies: u64, deals: u64) -> Self {
        (self.contacts, self.companies, self.deals) = (contacts, companies, deals);
        self
    }

    /// Sets the number of engagements of each type.
    pub fn engagements(mut self, n: u64) -> Self {
        self.engagements = n;
        self
    }

    /// Sets the number of owners.
    pub fn owners(mut self, n: u64) -> Self {
        self.owners = n;
        self
    }

    /// Counts time on `clock` (see [`HubSpotSimConfig::clock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Delays every API answer by `latency` after its request was counted.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Sets the rate limits (`None`: unlimited).
    pub fn rate_limits(mut self, per_10s: Option<u32>, search_per_second: Option<u32>) -> Self {
        self.requests_per_10s = per_10s;
        self.search_per_second = search_per_second;
        self
    }
}

impl fmt::Debug for HubSpotSimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSpotSimConfig")
            .field("seed", &self.seed)
            .field("contacts", &self.contacts)
            .field("companies", &self.companies)
            .field("deals", &self.deals)
            .field("engagements", &self.engagements)
            .field("owners", &self.owners)
            .field("requests_per_10s", &self.requests_per_10s)
            .field("search_per_second", &self.search_per_second)
            .field("latency", &self.latency)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) config: HubSpotSimConfig,
    pub(crate) seeded: Seeded,
    pub(crate) overlay: Mutex<Overlay>,
    pub(crate) oauth: OAuthServer,
    pub(crate) correlation: AtomicU64,
    pub(crate) search_requests: AtomicU64,
}

impl Shared {
    pub(crate) fn overlay(&self) -> MutexGuard<'_, Overlay> {
        self.overlay.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn correlation_id(&self) -> String {
        let n = self.correlation.fetch_add(1, Ordering::Relaxed);
        format!("c033cdaa-2c40-4a64-ae48-{n:012x}")
    }

    /// The live object `id` of type `t`.
    pub(crate) fn get(&self, ov: &Overlay, t: usize, id: u64) -> Option<Obj> {
        match ov.objects[t].get(&id) {
            Some(o) if o.archived => None,
            Some(o) => Some(o.clone()),
            None => self
                .seeded
                .base_index(t, id)
                .map(|i| self.seeded.base(t, i)),
        }
    }

    /// A modification time after every earlier one.
    pub(crate) fn next_ts(&self, ov: &mut Overlay) -> i64 {
        let ts = unix_ms(SystemTime::now()).max(ov.clock_ms + 1);
        ov.clock_ms = ts;
        ts
    }
}

/// The network's return path: answers leave `delay` after the request was admitted.
#[derive(Clone)]
struct Latency {
    clock: Option<Arc<dyn Clock>>,
    delay: Duration,
}

impl Intercept for Latency {
    fn intercept(&self, req: Request, next: Next) -> BoxFuture<'static, Response> {
        let this = self.clone();
        Box::pin(async move {
            let resp = next.run(req).await;
            if !this.delay.is_zero() {
                match &this.clock {
                    Some(c) => c.sleep(this.delay).await,
                    None => tokio::time::sleep(this.delay).await,
                }
            }
            resp
        })
    }
}

/// Where the simulator is served.
enum Server {
    /// On a free port (the testkit's server).
    Sim(SimHandle),
    /// On a given address; the sender stops it (dropping it too).
    Own {
        base_url: String,
        _stop: tokio::sync::oneshot::Sender<()>,
    },
}

impl Server {
    fn base_url(&self) -> &str {
        match self {
            Server::Sim(h) => h.base_url(),
            Server::Own { base_url, .. } => base_url,
        }
    }
}

/// A running simulator. Dropping it stops the server.
pub struct HubSpotSim {
    server: Server,
    shared: Arc<Shared>,
    faults: Faults,
    stats: SimStats,
    limiter: FixedWindowLimiter,
    search_limiter: FixedWindowLimiter,
}

impl fmt::Debug for HubSpotSim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSpotSim")
            .field("base_url", &self.server.base_url())
            .field("config", &self.shared.config)
            .finish()
    }
}

fn type_index(stream: &str) -> Result<usize> {
    OBJECT_TYPES
        .iter()
        .position(|o| o.stream == stream)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                "the simulator has no such object stream",
            )
        })
}

fn parse_id(id: &str) -> Result<u64> {
    id.parse()
        .map_err(|_| Error::invalid_input("object ids are numeric"))
}

/// Renders an object as the API does, with `properties` (all when `None`).
pub(crate) fn render(t: usize, id: u64, o: &Obj, properties: Option<&[String]>) -> Value {
    let ot = &OBJECT_TYPES[t];
    let mut props = serde_json::Map::new();
    let value = |name: &str| -> Value {
        match name {
            "hs_object_id" => json!(id.to_string()),
            "createdate" | "hs_createdate" => json!(format_time_ms(o.created_ms)),
            n if n == ot.modified_property => json!(format_time_ms(o.updated_ms)),
            n => o.props.get(n).map_or(Value::Null, |v| json!(v)),
        }
    };
    match properties {
        Some(list) => {
            for p in list {
                props.insert(p.clone(), value(p));
            }
        }
        None => {
            for p in data::property_names(t) {
                props.insert(p.to_string(), value(p));
            }
        }
    }
    json!({
        "id": id.to_string(),
        "properties": props,
        "createdAt": format_time_ms(o.created_ms),
        "updatedAt": format_time_ms(o.updated_ms),
        "archived": false,
    })
}

impl HubSpotSim {
    /// Starts a simulator on a free loopback port.
    ///
    /// # Errors
    /// `Config` when no loopback port can be bound.
    pub async fn start(config: HubSpotSimConfig) -> Result<HubSpotSim> {
        Self::start_at(config, None).await
    }

    /// Starts a simulator listening on `addr` (a separate simulator process for benchmarks).
    ///
    /// # Errors
    /// `Config` when `addr` cannot be bound.
    pub async fn start_on(config: HubSpotSimConfig, addr: SocketAddr) -> Result<HubSpotSim> {
        Self::start_at(config, Some(addr)).await
    }

    async fn start_at(config: HubSpotSimConfig, addr: Option<SocketAddr>) -> Result<HubSpotSim> {
        let e = config.engagements;
        let seeded = Seeded {
            seed: config.seed,
            counts: [
                config.contacts,
                config.companies,
                config.deals,
                e,
                e,
                e,
                e,
                e,
            ],
            base_ms: config.base_ms,
            owners: config.owners,
        };
        let oauth = OAuthServer::new(
            OAuthServerConfig::new(config.client_id.clone(), config.client_secret.clone())
                .with_access_ttl(Some(Duration::from_secs(1800))),
        );
        let shared = Arc::new(Shared {
            overlay: Mutex::new(Overlay::new(&seeded)),
            seeded,
            oauth: oauth.clone(),
            correlation: AtomicU64::new(1),
            search_requests: AtomicU64::new(0),
            config,
        });
        let api_path = |u: &Uri| u.path().starts_with("/crm/");
        let is_search = |u: &Uri| u.path().starts_with("/crm/") && u.path().ends_with("/search");
        let c1 = shared.clone();
        let mut limiter = FixedWindowLimiter::new(shared.config.requests_per_10s.unwrap_or(u32::MAX), Duration::from_secs(10))
            // HubSpot's ten-second window rolls: at most N requests in any ten seconds.
            .with_rolling_window(true)
            .with_headers(RateLimitHeaders::hubspot())
            .with_filter(move |_, u| api_path(u) && !is_search(u))
            .with_body(move || {
                routes::hubspot_json(
                    http::StatusCode::TOO_MANY_REQUESTS,
                    json!({"status": "error", "message": "You have reached your ten_secondly_rolling limit.",
                        "errorType": "RATE_LIMIT", "correlationId": c1.correlation_id(),
                        "policyName": "TEN_SECONDLY_ROLLING", "requestId": c1.correlation_id()}),
                )
            });
        if let Some(clock) = &shared.config.clock {
            limiter = limiter.with_clock(clock.clone());
        }
        let c2 = shared.clone();
        let mut search_limiter = FixedWindowLimiter::new(
            shared.config.search_per_second.unwrap_or(u32::MAX),
            Duration::from_secs(1),
        )
        .with_headers(RateLimitHeaders::none())
        .with_filter(move |_, u| is_search(u))
        .with_body(move || {
            routes::hubspot_json(
                http::StatusCode::TOO_MANY_REQUESTS,
                json!({"status": "error", "message": "You have reached your secondly limit.",
                        "errorType": "RATE_LIMIT", "correlationId": c2.correlation_id(),
                        "policyName": "SECONDLY", "requestId": c2.correlation_id()}),
            )
        });
        if let Some(clock) = &shared.config.clock {
            search_limiter = search_limiter.with_clock(clock.clone());
        }
        let latency = Latency {
            clock: shared.config.clock.clone(),
            delay: shared.config.latency,
        };
        let c3 = shared.clone();
        let faults = Faults::new(shared.config.seed)
            .with_filter(move |_, u| api_path(u))
            .with_error_body(move |status| {
                let (category, message, policy) = if status == http::StatusCode::TOO_MANY_REQUESTS {
                    ("RATE_LIMITS", "You have reached your ten_secondly_rolling limit.", Some("TEN_SECONDLY_ROLLING"))
                } else {
                    ("INTERNAL_ERROR", "internal error", None)
                };
                let mut body = json!({"status": "error", "message": message, "correlationId": c3.correlation_id(), "category": category});
                if let Some(p) = policy {
                    body["policyName"] = json!(p);
                }
                routes::hubspot_json(status, body)
            });
        let stats = SimStats::new();
        let auth = routes::AuthCheck {
            shared: shared.clone(),
        };
        let app = routes::router(shared.clone())
            .layer(auth.layer())
            .layer(latency.layer())
            .nest("/oauth/v1", oauth.router())
            .layer(limiter.layer())
            .layer(search_limiter.layer())
            .layer(faults.layer())
            .layer(stats.layer());
        let server = match addr {
            None => Server::Sim(SimServer::start(app).await?),
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    Error::new(ErrorKind::Config, "cannot bind the simulator's address")
                        .with_context("addr", addr)
                        .set_source(e)
                })?;
                let local = listener.local_addr().map_err(|e| {
                    Error::new(ErrorKind::Config, "simulator listener has no address").set_source(e)
                })?;
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                tokio::spawn(async move {
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = rx.await;
                    });
                    if let Err(e) = serve.await {
                        tracing::warn!(error = %e, "simulator server stopped with an error");
                    }
                });
                Server::Own {
                    base_url: format!("http://{local}"),
                    _stop: tx,
                }
            }
        };
        Ok(HubSpotSim {
            server,
            shared,
            faults,
            stats,
            limiter,
            search_limiter,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> &str {
        self.server.base_url()
    }

    /// The configuration.
    pub fn config(&self) -> &HubSpotSimConfig {
        &self.shared.config
    }

    /// The private app token the simulator accepts.
    pub fn private_app_token(&self) -> String {
        self.shared.config.private_app_token.clone()
    }

    /// The OAuth server (issue token sets, expire or revoke tokens, count refreshes).
    pub fn oauth(&self) -> &OAuthServer {
        &self.shared.oauth
    }

    /// OAuth settings pointing at the simulator's token endpoint, client credentials in the
    /// form body as HubSpot wants.
    pub fn oauth_config(&self, redirect_url: &str) -> OAuthConfig {
        OAuthConfig::new(
            self.shared.config.client_id.clone(),
            format!("{}/oauth/v1/token", self.base_url()),
        )
        .with_client_secret(self.shared.config.client_secret.clone())
        .with_auth_url(format!("{}/oauth/v1/authorize", self.base_url()))
        .with_redirect_url(redirect_url)
        .with_client_auth(ClientAuth::RequestBody)
    }

    /// Fault injection (API paths only).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Request counters.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// 429s answered so far (limiters and injected faults).
    pub fn rate_limited(&self) -> u64 {
        self.stats.status(429)
    }

    /// Search requests that reached the search handler.
    pub fn search_requests(&self) -> u64 {
        self.shared.search_requests.load(Ordering::Relaxed)
    }

    /// The general limiter's counters.
    pub fn limiter(&self) -> &FixedWindowLimiter {
        &self.limiter
    }

    /// The search limiter's counters.
    pub fn search_limiter(&self) -> &FixedWindowLimiter {
        &self.search_limiter
    }

    /// The id of seeded object `index` of `stream`.
    ///
    /// # Errors
    /// `NotFound` for a stream that is not an object stream.
    pub fn id(&self, stream: &str, index: u64) -> Result<String> {
        Ok((Seeded::first_id(type_index(stream)?) + index).to_string())
    }

    /// The live data set of `stream`: id -> version, as a full sync must produce it.
    pub fn expected(&self, stream: &str) -> BTreeMap<String, Option<i64>> {
        let s = &self.shared;
        let mut out = BTreeMap::new();
        if let Ok(t) = type_index(stream) {
            let ov = s.overlay();
            for i in 0..s.seeded.counts[t] {
                let id = Seeded::first_id(t) + i;
                if !ov.objects[t].contains_key(&id) {
                    out.insert(id.to_string(), Some(s.seeded.base_ts(t, i)));
                }
            }
            for (id, o) in &ov.objects[t] {
                if !o.archived {
                    out.insert(id.to_string(), Some(o.updated_ms));
                }
            }
            for (id, v) in &ov.raw[t] {
                let version = v["updatedAt"]
                    .as_str()
                    .and_then(crate::models::parse_time_ms);
                out.insert(id.to_string(), version);
            }
            return out;
        }
        match stream {
            streams::OWNERS => {
                for i in 0..s.seeded.owners {
                    let o = s.seeded.owner(i);
                    let v = o["updatedAt"]
                        .as_str()
                        .and_then(crate::models::parse_time_ms);
                    out.insert(s.seeded.owner_id(i).to_string(), v);
                }
            }
            streams::PROPERTIES => {
                for (t, ot) in OBJECT_TYPES.iter().enumerate() {
                    for p in data::property_names(t) {
                        out.insert(
                            format!("{}.{p}", ot.stream),
                            Some(s.config.base_ms - 86_400_000),
                        );
                    }
                }
            }
            streams::ASSOCIATIONS => {
                let ov = s.overlay();
                for (from, to) in association_pairs() {
                    let (Ok(ft), Ok(tt)) = (type_index(from), type_index(to)) else {
                        continue;
                    };
                    for i in 0..s.seeded.counts[ft] {
                        let id = Seeded::first_id(ft) + i;
                        if s.get(&ov, ft, id).is_none() {
                            continue;
                        }
                        for to_id in s.seeded.associations(ft, id, tt) {
                            if s.get(&ov, tt, to_id).is_some() {
                                out.insert(format!("{from}:{id}-{to}:{to_id}"), None);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        out
    }

    /// The object as the API returns it, with every property.
    ///
    /// # Errors
    /// `NotFound` when it does not exist (or is archived).
    pub fn object(&self, stream: &str, id: &str) -> Result<Value> {
        let t = type_index(stream)?;
        let id = parse_id(id)?;
        let ov = self.shared.overlay();
        let o = self
            .shared
            .get(&ov, t, id)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "no such object"))?;
        Ok(render(t, id, &o, None))
    }

    /// Sets properties of an object (as a user in the CRM would); returns the new modified
    /// time.
    ///
    /// # Errors
    /// `NotFound` when it does not exist.
    pub fn update(&self, stream: &str, id: &str, properties: &[(&str, &str)]) -> Result<i64> {
        let t = type_index(stream)?;
        let id = parse_id(id)?;
        let mut ov = self.shared.overlay();
        let mut o = self
            .shared
            .get(&ov, t, id)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "no such object"))?;
        for (k, v) in properties {
            o.props.insert((*k).to_string(), (*v).to_string());
        }
        o.updated_ms = self.shared.next_ts(&mut ov);
        let ts = o.updated_ms;
        ov.put(t, id, o);
        Ok(ts)
    }

    /// Modifies the objects `ids` of `stream` (their custom property), `per_ms` objects
    /// sharing each millisecond (ties on the modified date).
    ///
    /// # Errors
    /// `NotFound` when one does not exist (those before it are modified).
    pub fn touch_many(&self, stream: &str, ids: &[String], per_ms: usize) -> Result<()> {
        let t = type_index(stream)?;
        let mut ov = self.shared.overlay();
        let start = self.shared.next_ts(&mut ov);
        let per = per_ms.max(1);
        for (j, id) in ids.iter().enumerate() {
            let id = parse_id(id)?;
            let mut o = self
                .shared
                .get(&ov, t, id)
                .ok_or_else(|| Error::new(ErrorKind::NotFound, "no such object"))?;
            let ts = start + (j / per) as i64;
            o.props
                .insert(data::custom_property(t).into(), format!("touched-{ts}"));
            o.updated_ms = ts;
            ov.clock_ms = ov.clock_ms.max(ts);
            ov.put(t, id, o);
        }
        Ok(())
    }

    /// Archives (deletes) an object.
    ///
    /// # Errors
    /// `NotFound` when it does not exist.
    pub fn archive(&self, stream: &str, id: &str) -> Result<()> {
        let t = type_index(stream)?;
        let id = parse_id(id)?;
        let mut ov = self.shared.overlay();
        let mut o = self
            .shared
            .get(&ov, t, id)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "no such object"))?;
        o.archived = true;
        o.updated_ms = self.shared.next_ts(&mut ov);
        ov.put(t, id, o);
        Ok(())
    }

    /// The documented shape of an object of `stream` (`SimplePublicObjectWithAssociations`,
    /// every optional field present), made from seeded object `index`.
    ///
    /// # Errors
    /// `NotFound` for a stream that is not an object stream.
    pub fn documented_object(&self, stream: &str, index: u64) -> Result<Value> {
        let t = type_index(stream)?;
        let id = Seeded::first_id(t) + index;
        let o = self
            .shared
            .seeded
            .base(t, index % self.shared.seeded.counts[t].max(1));
        let mut v = render(t, id, &o, None);
        v["archivedAt"] = Value::Null;
        let mut history = serde_json::Map::new();
        history.insert(
            OBJECT_TYPES[t].modified_property.to_string(),
            json!([{"value": format_time_ms(o.updated_ms), "timestamp": format_time_ms(o.updated_ms),
                "sourceType": "CRM_UI", "sourceId": "userId:1", "updatedByUserId": 1}]),
        );
        v["propertiesWithHistory"] = Value::Object(history);
        v["associations"] = json!({ "companies": {
            "results": [{"id": "3001", "type": "contact_to_company"}],
            "paging": {"next": {"after": "1", "link": "?after=1"}}
        }});
        v["objectWriteTraceId"] = json!("trace-1");
        Ok(v)
    }

    /// Adds objects made from [`documented_object`](Self::documented_object) with hostile
    /// variations ([`apex_connect_testkit::hostile::variants`], seeded by `seed`): properties
    /// of odd types, fields absent or `null`, unknown keys at every level; the envelope
    /// (`id`, `updatedAt`) kept valid. The list endpoint serves them verbatim (not search or
    /// batch reads). Returns their ids.
    ///
    /// # Errors
    /// `NotFound` for a stream that is not an object stream.
    pub fn inject_hostile(&self, stream: &str, seed: u64, n: usize) -> Result<Vec<String>> {
        let t = type_index(stream)?;
        let example = self.documented_object(stream, seed)?;
        let variants =
            apex_connect_testkit::hostile::variants(&example, &["id", "updatedAt"], seed, n);
        let mut ov = self.shared.overlay();
        let mut ids = Vec::with_capacity(n);
        for mut v in variants {
            let id = ov.next_id[t];
            ov.next_id[t] += 1;
            let Some(obj) = v.as_object_mut() else {
                continue;
            };
            obj.insert("id".into(), json!(id.to_string()));
            ov.raw[t].insert(id, v);
            ids.push(id.to_string());
        }
        Ok(ids)
    }

    /// Adds objects to `stream` exactly as given (JSON objects in the documented
    /// `SimplePublicObject` shape; anything else is skipped), for data sets the generator
    /// never makes: seeded ground truth with chosen properties and `associations`. Each gets
    /// a fresh `id` (after the seeded ones); `createdAt`, `updatedAt` and `archived` are set
    /// when absent. Like [`inject_hostile`](Self::inject_hostile)'s objects, the list
    /// endpoint serves them verbatim (not search or batch reads). Returns their ids, in order.
    ///
    /// # Errors
    /// `NotFound` for a stream that is not an object stream.
    pub fn add_raw(&self, stream: &str, objects: Vec<Value>) -> Result<Vec<String>> {
        let t = type_index(stream)?;
        let mut ov = self.shared.overlay();
        let mut ids = Vec::with_capacity(objects.len());
        for mut v in objects {
            let Some(obj) = v.as_object_mut() else {
                continue;
            };
            let id = ov.next_id[t];
            ov.next_id[t] += 1;
            let ts = format_time_ms(self.shared.next_ts(&mut ov));
            obj.insert("id".into(), json!(id.to_string()));
            obj.entry("createdAt").or_insert_with(|| json!(ts));
            obj.entry("updatedAt").or_insert_with(|| json!(ts));
            obj.entry("archived").or_insert(json!(false));
            ov.raw[t].insert(id, v);
            ids.push(id.to_string());
        }
        Ok(ids)
    }

    /// A verifier with the simulator's client secret, signing as `version`.
    pub fn webhook_verifier(&self, version: SignatureVersion) -> HubSpotWebhookVerifier {
        HubSpotWebhookVerifier::new(WebhookSecrets::single(
            self.shared.config.client_secret.as_bytes(),
        ))
        .signing(version)
    }

    /// A delivery body: one event per id, of `event_type` (`contact.propertyChange`...),
    /// with `changeSource` and optional `sourceId`; event ids count up from `first_event_id`.
    pub fn webhook_body(
        &self,
        event_type: &str,
        object_ids: &[String],
        change_source: &str,
        source_id: Option<&str>,
        first_event_id: u64,
    ) -> Vec<u8> {
        let now = unix_ms(SystemTime::now());
        let events: Vec<Value> = object_ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut e = json!({
                    "eventId": first_event_id + i as u64, "subscriptionId": 25, "portalId": self.shared.config.portal_id,
                    "appId": self.shared.config.app_id, "occurredAt": now + i as i64, "eventType": event_type,
                    "attemptNumber": 0, "objectId": id.parse::<u64>().map(Value::from).unwrap_or_else(|_| json!(id)),
                    "changeSource": change_source,
                });
                if event_type.ends_with("propertyChange") {
                    e["propertyName"] = json!("lifecyclestage");
                    e["propertyValue"] = json!("customer");
                }
                if let Some(s) = source_id {
                    e["sourceId"] = json!(s);
                }
                e
            })
            .collect();
        serde_json::to_vec(&events).unwrap_or_default()
    }

    /// The headers HubSpot would send with `body` to `uri` at `now`, signed as `version`.
    ///
    /// # Errors
    /// Never in practice (the simulator always has a secret).
    pub fn sign_webhook(
        &self,
        version: SignatureVersion,
        uri: &Uri,
        body: &[u8],
        now: SystemTime,
    ) -> Result<HeaderMap> {
        self.webhook_verifier(version)
            .sign_with(
                version,
                &WebhookRequest::new(&Method::POST, uri, &HeaderMap::new(), body),
                now,
            )
            .map_err(|e| Error::config("cannot sign").set_source(e))
    }

    /// POSTs `body` to `url`, signed as `version`, retrying like HubSpot (a few times).
    ///
    /// # Errors
    /// As [`WebhookSender::send`].
    pub async fn send_webhook(
        &self,
        url: &str,
        body: Vec<u8>,
        version: SignatureVersion,
    ) -> Result<WebhookDelivery> {
        WebhookSender::new(Arc::new(self.webhook_verifier(version)))
            .with_retries(2)
            .with_backoff(Duration::from_millis(50))
            .send(url, body)
            .await
    }

    /// Whether `stream` is an object stream of the simulator.
    pub fn is_object_stream(stream: &str) -> bool {
        object_type(stream).is_some()
    }
}
