//! `SalesforceSim`: a Salesforce simulator on loopback (feature `sim`), built on the
//! testkit's toolkit.
//!
//! - Two listeners, as in production: the **login host** (`/services/oauth2/authorize` and
//!   `/token`: authorization code + PKCE, refresh with rotation, client credentials, JWT
//!   bearer; answers without `expires_in`, with `instance_url`, `id`, `issued_at` in
//!   milliseconds and the HMAC `signature`) and the **instance** named by `instance_url`
//!   (`/services/data/...`).
//! - Records generated on the fly from their index (a million Accounts cost nothing until
//!   read), in `(SystemModstamp, Id)` order; changes, creates, deletes and injected records in
//!   a small overlay.
//! - REST `query`/`queryAll` with `nextRecordsUrl` locators, `describe` with custom fields,
//!   compound addresses and references, `getDeleted`, Bulk API 2.0 query jobs (CSV results
//!   streamed by `Sforce-Locator`, gzip on request), sObject Collections (create, update,
//!   upsert by external id, delete, retrieve) with per-record errors, `If-Unmodified-Since`,
//!   `Sforce-Limit-Info` on every answer, `INVALID_SESSION_ID`, `REQUEST_LIMIT_EXCEEDED`,
//!   `QUERY_TIMEOUT` for wide date windows, and Outbound Messages sent to a URL.

mod data;
mod routes;
pub(crate) mod soql;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use apex_connect_core::platform::{AuthInputs, resolve_auth};
use apex_connect_core::store::Clock;
use apex_connect_core::{
    BuildContext, ConnectionId, Connector, Error, ErrorKind, Result, Secrets, Settings, TokenStore,
};
use apex_connect_testkit::oauth_server::{ExpiryStyle, OAuthServer, OAuthServerConfig};
use apex_connect_testkit::sim::{Faults, SimHandle, SimServer, SimStats, WebhookDelivery};
use serde_json::{Map, Value, json};

use crate::models::sf_datetime;
use data::{Gen, ORec, ObjectSpec, Overlay, gen_id, parse_gen_id};

/// The simulator's settings.
#[derive(Clone)]
#[non_exhaustive]
pub struct SalesforceSimConfig {
    /// Seed of the generated data.
    pub seed: u64,
    /// Records per object (default: a small org of a few dozen each).
    pub counts: HashMap<String, u64>,
    /// Generated records sharing one `SystemModstamp` second.
    pub per_second: u64,
    /// Connected app consumer key.
    pub client_id: String,
    /// Connected app consumer secret.
    pub client_secret: String,
    /// The org id (18 characters).
    pub organization_id: String,
    /// Whether refreshes rotate the refresh token.
    pub rotate_refresh_tokens: bool,
    /// The daily API allocation (`Sforce-Limit-Info` max).
    pub api_max: u64,
    /// Queries whose `SystemModstamp` window is wider than this (or unbounded) fail with
    /// `QUERY_TIMEOUT`.
    pub query_timeout_above: Option<Duration>,
    /// Status polls a Bulk job answers `InProgress` before `JobComplete`.
    pub bulk_polls: u32,
    /// Whether Bulk results are gzip-compressed when the client asks.
    pub gzip: bool,
    /// API versions the org supports.
    pub versions: Vec<String>,
    /// A static session id the instance accepts besides OAuth tokens.
    pub static_token: String,
    /// Fault injection on the instance's API routes.
    pub faults: Option<Faults>,
    /// Whether token answers carry a wrong `signature` (to test verification).
    pub bad_signature: bool,
    /// The org's wall clock (change stamps); [`SalesforceSim::connector`] gives its connectors
    /// the same clock. Default: the system clock.
    pub clock: Clock,
}

impl Default for SalesforceSimConfig {
    fn default() -> Self {
        SalesforceSimConfig {
            seed: 7,
            counts: HashMap::new(),
            per_second: 3,
            client_id: "sf-sim-consumer-key".into(),
            client_secret: "sf-sim-consumer-secret".into(),
            organization_id: "00D000000000001AAA".into(),
            rotate_refresh_tokens: true,
            api_max: 1_000_000,
            query_timeout_above: None,
            bulk_polls: 1,
            gzip: true,
            versions: vec!["62.0".into(), "63.0".into(), "64.0".into()],
            static_token: "sf-sim-session-id".into(),
            faults: None,
            bad_signature: false,
            clock: Clock::system(),
        }
    }
}

impl fmt::Debug for SalesforceSimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SalesforceSimConfig")
            .field("seed", &self.seed)
            .field("counts", &self.counts)
            .field("per_second", &self.per_second)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("organization_id", &self.organization_id)
            .field("api_max", &self.api_max)
            .finish_non_exhaustive()
    }
}

impl SalesforceSimConfig {
    /// Sets the number of records of `object`.
    pub fn count(mut self, object: &str, n: u64) -> Self {
        self.counts.insert(object.to_string(), n);
        self
    }

    /// Sets how many generated records share one `SystemModstamp` second.
    pub fn per_second(mut self, n: u64) -> Self {
        self.per_second = n.max(1);
        self
    }

    /// Makes queries over windows wider than `d` time out.
    pub fn query_timeout_above(mut self, d: Duration) -> Self {
        self.query_timeout_above = Some(d);
        self
    }

    /// Uses these faults.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Uses this wall clock for change stamps (and for the connectors
    /// [`SalesforceSim::connector`] builds), so tests decide when a second ends.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
}

pub(crate) struct QState {
    pub(crate) obj: usize,
    pub(crate) q: soql::Query,
    pub(crate) all: bool,
    pub(crate) snapshot: Arc<Vec<(i64, String)>>,
}

pub(crate) struct Job {
    pub(crate) q: QState,
    pub(crate) polls_left: u32,
    pub(crate) total: u64,
}

pub(crate) struct SimState {
    pub(crate) config: SalesforceSimConfig,
    pub(crate) specs: Vec<ObjectSpec>,
    pub(crate) generator: Gen,
    pub(crate) overlay: RwLock<Vec<Overlay>>,
    pub(crate) deleted_log: Mutex<Vec<(usize, String, i64)>>,
    pub(crate) oauth: OAuthServer,
    pub(crate) queries: Mutex<HashMap<String, Arc<QState>>>,
    pub(crate) jobs: Mutex<HashMap<String, Job>>,
    pub(crate) next_id: AtomicU64,
    pub(crate) api_used: AtomicU64,
    pub(crate) api_max: AtomicU64,
    pub(crate) unauthorized_once: AtomicBool,
    pub(crate) login_url: RwLock<String>,
    pub(crate) clock_ms: AtomicU64,
}

impl SimState {
    pub(crate) fn spec(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    /// A change time: now, floored to the second (as Salesforce stamps), never before the
    /// generated data nor before the last change.
    pub(crate) fn now_ms(&self) -> i64 {
        let now = self.config.clock.now_ms().div_euclid(1000) * 1000;
        let last = i64::try_from(self.clock_ms.load(Ordering::SeqCst)).unwrap_or(0);
        let t = now.max(last);
        self.clock_ms
            .store(u64::try_from(t).unwrap_or(0), Ordering::SeqCst);
        t
    }

    pub(crate) fn api_user(&self) -> String {
        gen_id("005", 0)
    }

    /// The full current fields of a record (generated, or overlaid), when it exists.
    pub(crate) fn current(&self, obj: usize, id: &str) -> Option<(Map<String, Value>, bool)> {
        let spec = &self.specs[obj];
        let ov = self.overlay.read().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = ov[obj].recs.get(id) {
            return Some((r.fields.clone(), r.deleted));
        }
        let i = parse_gen_id(spec.prefix, id)?;
        if i >= spec.count || ov[obj].shadowed.contains(&i) {
            return None;
        }
        drop(ov);
        Some((self.materialize(obj, i), false))
    }

    pub(crate) fn materialize(&self, obj: usize, i: u64) -> Map<String, Value> {
        let spec = &self.specs[obj];
        spec.fields
            .iter()
            .filter(|f| f.sf_type != "address")
            .map(|f| (f.name.clone(), self.generator.value(spec, i, &f.name)))
            .collect()
    }

    /// Writes a record's new state (stamped now).
    pub(crate) fn store(
        &self,
        obj: usize,
        id: String,
        mut fields: Map<String, Value>,
        deleted: bool,
    ) -> i64 {
        let stamp = self.now_ms();
        let ts = Value::String(sf_datetime(stamp));
        fields.insert("SystemModstamp".into(), ts.clone());
        if self.specs[obj].field("LastModifiedDate").is_some() {
            fields.insert("LastModifiedDate".into(), ts);
            fields.insert("LastModifiedById".into(), Value::String(self.api_user()));
        }
        if self.specs[obj].field("IsDeleted").is_some() {
            fields.insert("IsDeleted".into(), Value::Bool(deleted));
        }
        let prefix = self.specs[obj].prefix;
        self.overlay.write().unwrap_or_else(|p| p.into_inner())[obj].put(
            prefix,
            id,
            ORec {
                stamp,
                deleted,
                fields,
                raw: None,
            },
        );
        stamp
    }

    pub(crate) fn new_id(&self, obj: usize) -> String {
        let n = self.next_id.fetch_add(1, Ordering::SeqCst);
        gen_id(self.specs[obj].prefix, 900_000_000_000 + n)
    }
}

/// A running simulator: the login host and the instance. Dropping it stops both.
pub struct SalesforceSim {
    login: SimHandle,
    instance: SimHandle,
    state: Arc<SimState>,
    stats: SimStats,
    faults: Faults,
}

impl fmt::Debug for SalesforceSim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SalesforceSim")
            .field("login_url", &self.login.base_url())
            .field("instance_url", &self.instance.base_url())
            .finish_non_exhaustive()
    }
}

impl SalesforceSim {
    /// Starts the simulator (instance first, so the token answers can name it).
    ///
    /// # Errors
    /// `Config` when no loopback port can be bound.
    pub async fn start(config: SalesforceSimConfig) -> Result<SalesforceSim> {
        let specs = data::specs(&config.counts);
        let counts: HashMap<String, u64> =
            specs.iter().map(|s| (s.name.clone(), s.count)).collect();
        let generator = Gen {
            seed: config.seed,
            per_second: config.per_second,
            counts,
        };
        let faults = config
            .faults
            .clone()
            .unwrap_or_else(|| Faults::new(config.seed));
        let stats = SimStats::new();
        let cell: Arc<std::sync::OnceLock<Arc<SimState>>> = Arc::new(std::sync::OnceLock::new());
        let instance_router = routes::instance_router(cell.clone())
            .layer(faults.layer())
            .layer(stats.layer());
        let instance = SimServer::start(instance_router).await?;
        let oauth = OAuthServer::new(
            OAuthServerConfig::new(config.client_id.clone(), config.client_secret.clone())
                .with_expiry_style(ExpiryStyle::None)
                .with_access_ttl(None)
                .with_rotation(config.rotate_refresh_tokens)
                .with_instance_url(instance.base_url())
                .with_jwt_public_key(
                    include_bytes!("../../tests/fixtures/jwt_test_key.pub.pem").to_vec(),
                ),
        );
        let state = Arc::new(SimState {
            overlay: RwLock::new(specs.iter().map(|_| Overlay::default()).collect()),
            specs,
            generator,
            deleted_log: Mutex::new(Vec::new()),
            oauth: oauth.clone(),
            queries: Mutex::new(HashMap::new()),
            jobs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            api_used: AtomicU64::new(0),
            api_max: AtomicU64::new(config.api_max),
            unauthorized_once: AtomicBool::new(false),
            login_url: RwLock::new(String::new()),
            clock_ms: AtomicU64::new(0),
            config,
        });
        let _ = cell.set(state.clone());
        let login = SimServer::start(routes::login_router(state.clone(), oauth)).await?;
        *state.login_url.write().unwrap_or_else(|p| p.into_inner()) = login.base_url().to_string();
        Ok(SalesforceSim {
            login,
            instance,
            state,
            stats,
            faults,
        })
    }

    /// The login host (`http://127.0.0.1:<port>`): the `login_host` setting.
    pub fn login_url(&self) -> &str {
        self.login.base_url()
    }

    /// The instance (`instance_url` of the token answers).
    pub fn instance_url(&self) -> &str {
        self.instance.base_url()
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/services/oauth2/token", self.login_url())
    }

    /// The OAuth server (counters, revocation, token expiry).
    pub fn oauth(&self) -> &OAuthServer {
        &self.state.oauth
    }

    /// Request counters of the instance.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// The instance's faults.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The configuration.
    pub fn config(&self) -> &SalesforceSimConfig {
        &self.state.config
    }

    /// API calls counted so far (what `Sforce-Limit-Info` reports as used).
    pub fn api_calls(&self) -> u64 {
        self.state.api_used.load(Ordering::SeqCst)
    }

    /// Sets the reported usage (to test the daily share stop and `REQUEST_LIMIT_EXCEEDED`).
    pub fn set_api_usage(&self, used: u64, max: u64) {
        self.state.api_used.store(used, Ordering::SeqCst);
        self.state.api_max.store(max, Ordering::SeqCst);
    }

    /// The next API request is refused with `401 INVALID_SESSION_ID`.
    pub fn unauthorized_once(&self) {
        self.state.unauthorized_once.store(true, Ordering::SeqCst);
    }

    /// Forgets every query locator (the next `nextRecordsUrl` gets `INVALID_QUERY_LOCATOR`).
    pub fn expire_query_locators(&self) {
        self.state
            .queries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Settings for a connection to this simulator (OAuth with `client_id`; the
    /// `organization_id` for Outbound Messages).
    pub fn settings(&self) -> Settings {
        let mut s = Settings::default();
        s.insert("client_id", json!(self.config().client_id));
        s.insert("login_host", json!(self.login_url()));
        s.insert("organization_id", json!(self.config().organization_id));
        s
    }

    /// Secrets for a connection: the client secret and `outbound_secret`.
    pub fn secrets(&self, outbound_secret: &str) -> Secrets {
        Secrets::from_values([
            ("client_secret", self.config().client_secret.clone()),
            ("outbound_secret", outbound_secret.to_string()),
        ])
    }

    /// A connector as a host builds it: tokens of a consented grant stored in `store` (as
    /// after `apex-connect connect`), auth resolved by core, built by [`crate::PLATFORM`],
    /// with `extra` settings merged in.
    ///
    /// # Errors
    /// Core's and the descriptor's configuration errors.
    pub async fn connector(
        &self,
        connection: &ConnectionId,
        store: Arc<dyn TokenStore>,
        extra: Value,
    ) -> Result<Arc<dyn Connector>> {
        if store.load(connection).await?.is_none() {
            store
                .save(
                    connection,
                    &self.oauth().issue_token_set(Some("api refresh_token")),
                    None,
                )
                .await?;
        }
        let mut settings = self.settings();
        if let Value::Object(m) = extra {
            for (k, v) in m {
                settings.insert(k, v);
            }
        }
        let secrets = self.secrets("sim-outbound-secret");
        let auth = resolve_auth(
            &crate::PLATFORM,
            &settings,
            AuthInputs::new(connection, &secrets, store).tokens_stored(true),
        )?;
        let b =
            crate::descriptor::builder(&BuildContext::new(connection, &settings, &secrets, auth))?;
        Ok(Arc::new(b.clock(self.state.config.clock.clone()).build()?))
    }

    /// The live records of `object`: id -> `SystemModstamp` (ms), what a full sync must
    /// produce (its versions).
    pub fn expected(&self, object: &str) -> BTreeMap<String, Option<i64>> {
        let st = &self.state;
        let Some(o) = st.spec(object) else {
            return BTreeMap::new();
        };
        let spec = &st.specs[o];
        let ov = st.overlay.read().unwrap_or_else(|p| p.into_inner());
        let mut out = BTreeMap::new();
        for i in 0..spec.count {
            if !ov[o].shadowed.contains(&i) {
                out.insert(gen_id(spec.prefix, i), Some(st.generator.stamp(i)));
            }
        }
        for (id, r) in &ov[o].recs {
            if !r.deleted {
                out.insert(id.clone(), Some(r.stamp));
            }
        }
        out
    }

    fn obj(&self, object: &str) -> Result<usize> {
        self.state.spec(object).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, "the simulator has no such object")
                .with_context("object", object)
        })
    }

    /// The current fields of record `id` of `object` (`None`: no such record, or deleted).
    pub fn record(&self, object: &str, id: &str) -> Option<Value> {
        let o = self.state.spec(object)?;
        self.state
            .current(o, id)
            .filter(|(_, deleted)| !deleted)
            .map(|(m, _)| Value::Object(m))
    }

    /// Changes `fields` of record `id` (stamped now). Returns the new stamp.
    ///
    /// # Errors
    /// `NotFound` for an unknown object or record.
    pub fn update(&self, object: &str, id: &str, fields: Value) -> Result<i64> {
        let o = self.obj(object)?;
        let (mut cur, deleted) =
            self.state
                .current(o, id)
                .filter(|(_, d)| !d)
                .ok_or_else(|| {
                    Error::new(ErrorKind::NotFound, "no such record").with_context("id", id)
                })?;
        let _ = deleted;
        if let Value::Object(m) = fields {
            cur.extend(m);
        }
        Ok(self.state.store(o, id.to_string(), cur, false))
    }

    /// Touches the generated records `range` of `object` (a new stamp, a new `Name` suffix).
    ///
    /// # Errors
    /// `NotFound` for an unknown object.
    pub fn touch_range(&self, object: &str, range: std::ops::Range<u64>) -> Result<Vec<String>> {
        let o = self.obj(object)?;
        let spec = &self.state.specs[o];
        let mut ids = Vec::new();
        for i in range.filter(|i| *i < spec.count) {
            let id = gen_id(spec.prefix, i);
            let (mut cur, deleted) = match self.state.current(o, &id) {
                Some(c) => c,
                None => continue,
            };
            if deleted {
                continue;
            }
            if cur.contains_key("Name")
                && spec.name != "Contact"
                && spec.name != "Lead"
                && spec.name != "User"
            {
                cur.insert(
                    "Name".into(),
                    json!(format!(
                        "{} (edited)",
                        cur.get("Name").and_then(Value::as_str).unwrap_or("")
                    )),
                );
            }
            self.state.store(o, id.clone(), cur, false);
            ids.push(id);
        }
        Ok(ids)
    }

    /// Deletes record `id` (to the recycle bin: `queryAll` still sees it, with `IsDeleted`).
    ///
    /// # Errors
    /// `NotFound` for an unknown object or record.
    pub fn delete(&self, object: &str, id: &str) -> Result<()> {
        let o = self.obj(object)?;
        let (cur, _) = self.state.current(o, id).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, "no such record").with_context("id", id)
        })?;
        let stamp = self.state.store(o, id.to_string(), cur, true);
        self.state
            .deleted_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((o, id.to_string(), stamp));
        Ok(())
    }

    /// Empties the recycle bin of `object`: deleted records vanish from `queryAll` (only
    /// `getDeleted` still reports them).
    ///
    /// # Errors
    /// `NotFound` for an unknown object.
    pub fn purge_recycle_bin(&self, object: &str) -> Result<()> {
        let o = self.obj(object)?;
        let mut ov = self
            .state
            .overlay
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let gone: Vec<String> = ov[o]
            .recs
            .iter()
            .filter(|(_, r)| r.deleted)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            ov[o].remove(&id);
        }
        Ok(())
    }

    /// Adds `n` records of `object` that all share one `SystemModstamp` second (now).
    ///
    /// # Errors
    /// `NotFound` for an unknown object.
    pub fn add_same_second(&self, object: &str, n: u64) -> Result<Vec<String>> {
        let o = self.obj(object)?;
        let stamp = self.state.now_ms();
        let mut ids = Vec::new();
        let mut ov = self
            .state
            .overlay
            .write()
            .unwrap_or_else(|p| p.into_inner());
        for k in 0..n {
            let id = self.state.new_id(o);
            let mut fields = self.state.materialize(o, k);
            fields.insert("Id".into(), json!(id));
            fields.insert("SystemModstamp".into(), json!(sf_datetime(stamp)));
            if fields.contains_key("LastModifiedDate") {
                fields.insert("LastModifiedDate".into(), json!(sf_datetime(stamp)));
            }
            ov[o].put(
                self.state.specs[o].prefix,
                id.clone(),
                ORec {
                    stamp,
                    deleted: false,
                    fields,
                    raw: None,
                },
            );
            ids.push(id);
        }
        Ok(ids)
    }

    /// Creates a record of `object` with `fields` (a JSON object of field API names), as an
    /// sObject Collections create does: every other field of the object's describe is
    /// `null`, and `Id`, `CreatedDate`, `CreatedById` and the change stamps are set (now).
    /// For seeding chosen data (ground truth); no required-field or type checks. Returns
    /// the new id.
    ///
    /// # Errors
    /// `NotFound` for an unknown object.
    pub fn insert(&self, object: &str, fields: Value) -> Result<String> {
        let o = self.obj(object)?;
        let st = &self.state;
        let id = st.new_id(o);
        let mut all: Map<String, Value> = st.specs[o]
            .fields
            .iter()
            .filter(|f| f.sf_type != "address")
            .map(|f| (f.name.clone(), Value::Null))
            .collect();
        if let Value::Object(m) = fields {
            all.extend(m);
        }
        all.insert("Id".into(), json!(id));
        all.insert("CreatedDate".into(), json!(sf_datetime(st.now_ms())));
        all.insert("CreatedById".into(), json!(st.api_user()));
        st.store(o, id.clone(), all, false);
        Ok(id)
    }

    /// Adds hostile variants ([`apex_connect_testkit::hostile`]) of a documented record of
    /// `object`: valid `Id` and `SystemModstamp`, everything else absent, `null`, of the wrong
    /// type, or unknown. Returns their ids.
    ///
    /// # Errors
    /// `NotFound` for an unknown object.
    pub fn inject_hostile(&self, object: &str, seed: u64, n: usize) -> Result<Vec<String>> {
        let o = self.obj(object)?;
        let example = self.state.materialize(o, 1);
        let mut example = Value::Object(example);
        example["attributes"] =
            json!({"type": object, "url": format!("/services/data/v64.0/sobjects/{object}/x")});
        let stamp = self.state.now_ms();
        let mut ids = Vec::new();
        for (k, mut v) in
            apex_connect_testkit::hostile::variants(&example, &["Id", "SystemModstamp"], seed, n)
                .into_iter()
                .enumerate()
        {
            let id = self.state.new_id(o);
            v["Id"] = json!(id);
            // Distinct past seconds: visible to a walk that starts in this second.
            let s = stamp - 1000 * (i64::try_from(k).unwrap_or(0) + 1);
            v["SystemModstamp"] = json!(sf_datetime(s));
            let raw = serde_json::to_string(&v).unwrap_or_else(|_| "{}".into());
            let fields = match v {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            self.state
                .overlay
                .write()
                .unwrap_or_else(|p| p.into_inner())[o]
                .put(
                    self.state.specs[o].prefix,
                    id.clone(),
                    ORec {
                        stamp: s,
                        deleted: false,
                        fields,
                        raw: Some(raw),
                    },
                );
            ids.push(id);
        }
        Ok(ids)
    }

    /// Sends an Outbound Message for records `ids` of `object` (with their current `Name`) to
    /// `url`, as Salesforce does (SOAP, `text/xml`), retrying twice on a non-2xx answer.
    /// Returns the receiver's last answer.
    ///
    /// # Errors
    /// `NotFound` for an unknown object; `Network` when nothing answers.
    pub async fn send_outbound(
        &self,
        url: &str,
        object: &str,
        ids: &[String],
    ) -> Result<WebhookDelivery> {
        let body = self.outbound_body(object, ids)?;
        let v = crate::webhook::OutboundMessages::new(
            secrecy::SecretString::from("x".to_string()),
            self.config().organization_id.clone(),
        );
        apex_connect_testkit::sim::WebhookSender::new(Arc::new(v))
            .with_header(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/xml; charset=utf-8"),
            )
            .send(url, body)
            .await
    }

    /// The SOAP body of an Outbound Message for `ids` of `object`.
    ///
    /// # Errors
    /// `NotFound` for an unknown object.
    pub fn outbound_body(&self, object: &str, ids: &[String]) -> Result<String> {
        let o = self.obj(object)?;
        let records: Vec<crate::webhook::NotificationSpec> =
            ids.iter()
                .enumerate()
                .map(|(k, id)| {
                    let name = self.state.current(o, id).and_then(|(m, _)| {
                        m.get("Name").and_then(Value::as_str).map(str::to_string)
                    });
                    (
                        format!(
                            "04l{:012}AAA",
                            (k as u64)
                                + 1
                                + (id.len() as u64) * 1000
                                + id.bytes().map(u64::from).sum::<u64>()
                        ),
                        object.to_string(),
                        id.clone(),
                        vec![("Name".to_string(), name)],
                    )
                })
                .collect();
        Ok(crate::webhook::outbound_envelope(
            &self.config().organization_id,
            "04k000000000001AAA",
            &records,
        ))
    }
}
