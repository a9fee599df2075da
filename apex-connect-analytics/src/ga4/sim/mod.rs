//! The GA4 simulator (feature `sim`): an axum server on loopback answering the Data API calls
//! the connector makes, and Google's token endpoint for service accounts.
//!
//! - `POST /token`: the testkit's OAuth server (JWT-bearer grant, RS256 signature checked
//!   against the service account's public key, `iss` = its email), behind a check of what
//!   Google also requires: `aud` = this token endpoint, `scope` with `analytics.readonly`,
//!   `iat` present and `exp <= iat + 3600`.
//! - `POST /v1beta/properties/{id}:runReport`: any dimensions and metrics it knows (and
//!   `customEvent:*` / `customUser:*`), daily rows generated from a seed, `limit`/`offset`
//!   paging with `rowCount`, `cohortSpec` reports, and `propertyQuota` with token quotas per
//!   hour and day that it enforces (429 `RESOURCE_EXHAUSTED`). The numbers of the last
//!   `fresh_days` change each time [`Ga4SimHandle::reprocess`] is called, as GA4 keeps
//!   processing recent days.
//! - `POST /v1alpha/properties/{id}:runFunnelReport`, `GET /v1beta/properties/{id}/metadata`.
//! - Every Data API call needs a live access token (401 otherwise).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use apex_connect_core::Result;
use apex_connect_core::oauth::JWT_BEARER_GRANT;
use apex_connect_testkit::hostile;
use apex_connect_testkit::oauth_server::{OAuthServer, OAuthServerConfig};
use apex_connect_testkit::sim::{FaultKind, Faults, SimHandle, SimServer, SimStats};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::NaiveDate;
use serde_json::{Value, json};

use super::models::{self, id_from_parts, streams};
use crate::days::{self, WallClock};

mod data;

use self::data::{dimension_value, metric_value};

/// The RSA private key (PEM) of the simulator's service account. A test key, made for this
/// simulator: it signs nothing anywhere else.
pub const TEST_PRIVATE_KEY_PEM: &str = include_str!("test_key.pem");
/// The public half of [`TEST_PRIVATE_KEY_PEM`].
pub const TEST_PUBLIC_KEY_PEM: &str = include_str!("test_key.pub.pem");

/// The simulator's settings (build with struct update syntax from `Default`).
#[derive(Clone)]
pub struct Ga4SimConfig {
    /// Seed of every generated value.
    pub seed: u64,
    /// The property's today.
    pub today: NaiveDate,
    /// Days of history ending today.
    pub days: u32,
    /// Rows per day of a report with dimensions besides `date`.
    pub rows_per_day: u32,
    /// The property id.
    pub property_id: String,
    /// The service account's email.
    pub client_email: String,
    /// Tokens per hour (the project's share is `project_share_percent` of it).
    pub tokens_per_hour: i64,
    /// Tokens per day.
    pub tokens_per_day: i64,
    /// The project's share of the hourly tokens, in percent (GA4: 35).
    pub project_share_percent: i64,
    /// Tokens one request costs (plus one per 10,000 rows answered).
    pub tokens_per_request: i64,
    /// Days, ending today, whose numbers change on each [`Ga4SimHandle::reprocess`].
    pub fresh_days: u32,
    /// Clock of the quota windows.
    pub clock: WallClock,
}

impl std::fmt::Debug for Ga4SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ga4SimConfig")
            .field("today", &self.today)
            .field("days", &self.days)
            .field("rows_per_day", &self.rows_per_day)
            .field("property_id", &self.property_id)
            .finish_non_exhaustive()
    }
}

impl Default for Ga4SimConfig {
    fn default() -> Self {
        Ga4SimConfig {
            seed: 7,
            today: NaiveDate::from_ymd_opt(2024, 3, 20).unwrap_or_default(),
            days: 10,
            rows_per_day: 12,
            property_id: "123456789".to_string(),
            client_email: "sync@sim-project.iam.gserviceaccount.com".to_string(),
            tokens_per_hour: 40_000,
            tokens_per_day: 200_000,
            project_share_percent: 35,
            tokens_per_request: 2,
            fresh_days: 3,
            clock: days::system_clock(),
        }
    }
}

impl Ga4SimConfig {
    /// The first day with data.
    pub fn first_day(&self) -> NaiveDate {
        days::sub_days(self.today, u64::from(self.days.max(1)) - 1)
    }
}

#[derive(Debug, Default)]
struct Usage {
    hour: u64,
    hour_used: i64,
    day: Option<NaiveDate>,
    day_used: i64,
}

struct SimState {
    config: Ga4SimConfig,
    today: Mutex<NaiveDate>,
    epoch: AtomicU64,
    usage: Mutex<Usage>,
    /// Extra rows by signature (dimension names joined by `,`), for hostile variants.
    extra_rows: Mutex<BTreeMap<String, Vec<Value>>>,
    oauth: OAuthServer,
    token_url: Mutex<String>,
    rejected_assertions: AtomicU64,
    report_requests: AtomicU64,
    faults: Faults,
    stats: SimStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts GA4 simulators.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ga4Sim;

impl Ga4Sim {
    /// Serves a simulator with `config` on `127.0.0.1`.
    ///
    /// # Errors
    /// `Config` when no loopback port can be bound.
    pub async fn start(config: Ga4SimConfig) -> Result<Ga4SimHandle> {
        let oauth = OAuthServer::new(
            OAuthServerConfig::public(config.client_email.clone())
                .with_jwt_public_key(TEST_PUBLIC_KEY_PEM.as_bytes().to_vec()),
        );
        let faults = Faults::new(config.seed)
            .with_filter(|_, uri| uri.path().starts_with("/v1"))
            .with_error_body(|status| {
                google_error(status, "The service is currently unavailable.")
            });
        let state = Arc::new(SimState {
            today: Mutex::new(config.today),
            epoch: AtomicU64::new(0),
            usage: Mutex::new(Usage::default()),
            extra_rows: Mutex::new(BTreeMap::new()),
            oauth: oauth.clone(),
            token_url: Mutex::new(String::new()),
            rejected_assertions: AtomicU64::new(0),
            report_requests: AtomicU64::new(0),
            faults: faults.clone(),
            stats: SimStats::new(),
            config,
        });
        let token = oauth.router().layer(middleware::from_fn_with_state(
            state.clone(),
            check_assertion,
        ));
        let api = Router::new()
            .route("/v1beta/properties/{action}", post(run_report))
            .route("/v1beta/properties/{id}/metadata", get(metadata))
            .route("/v1alpha/properties/{action}", post(run_funnel_report))
            .layer(middleware::from_fn_with_state(state.clone(), require_token))
            .with_state(state.clone());
        let app = api
            .merge(token)
            .layer(faults.layer())
            .layer(state.stats.layer());
        let server = SimServer::start(app).await?;
        *lock(&state.token_url) = format!("{}/token", server.base_url());
        Ok(Ga4SimHandle { server, state })
    }
}

/// A running GA4 simulator; dropping it stops the server.
pub struct Ga4SimHandle {
    server: SimHandle,
    state: Arc<SimState>,
}

impl std::fmt::Debug for Ga4SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ga4SimHandle")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Ga4SimHandle {
    /// `http://127.0.0.1:<port>`: the Data API's base URL.
    pub fn base_url(&self) -> &str {
        self.server.base_url()
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        lock(&self.state.token_url).clone()
    }

    /// The settings.
    pub fn config(&self) -> &Ga4SimConfig {
        &self.state.config
    }

    /// The service account's key file, as Google hands it out (its `token_uri` is this
    /// simulator's token endpoint).
    pub fn service_account_json(&self) -> String {
        json!({
            "type": "service_account",
            "project_id": "sim-project",
            "private_key_id": "sim-key-1",
            "private_key": TEST_PRIVATE_KEY_PEM,
            "client_email": self.state.config.client_email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_url(),
        })
        .to_string()
    }

    /// The simulator's today.
    pub fn today(&self) -> NaiveDate {
        *lock(&self.state.today)
    }

    /// Moves today.
    pub fn set_today(&self, day: NaiveDate) {
        *lock(&self.state.today) = day;
    }

    /// GA4 processed more data: the numbers of the last `fresh_days` change.
    pub fn reprocess(&self) {
        self.state.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Answers the next Data API request with 429 and `Retry-After: secs`.
    pub fn inject_rate_limit(&self, secs: u64) {
        self.state
            .faults
            .push_scheduled(FaultKind::too_many_requests(secs));
    }

    /// 429s sent so far.
    pub fn rate_limited_seen(&self) -> u64 {
        self.state.stats.status(429)
    }

    /// Expires every access token: the next call is answered 401.
    pub fn expire_tokens(&self) {
        self.state.oauth.expire_access_tokens();
    }

    /// A live access token, as if a user had connected (for tests with a static token).
    pub fn issue_access_token(&self) -> String {
        let t = self
            .state
            .oauth
            .issue_token_set(Some(super::descriptor::ANALYTICS_READONLY));
        secrecy::ExposeSecret::expose_secret(&t.access_token).to_string()
    }

    /// JWT-bearer grants served.
    pub fn token_grants(&self) -> u64 {
        self.state.oauth.stats().jwt_bearer
    }

    /// Assertions refused by the Google checks (audience, scope, lifetime).
    pub fn rejected_assertions(&self) -> u64 {
        self.state.rejected_assertions.load(Ordering::SeqCst)
    }

    /// `runReport` and `runFunnelReport` requests answered (quota refusals included).
    pub fn report_requests(&self) -> u64 {
        self.state.report_requests.load(Ordering::SeqCst)
    }

    /// Request counters.
    pub fn stats(&self) -> &SimStats {
        &self.state.stats
    }

    /// Tokens used in the current hour window.
    pub fn tokens_used_this_hour(&self) -> i64 {
        let now = (self.state.config.clock)();
        let u = lock(&self.state.usage);
        if u.hour == hour_index(now) {
            u.hour_used
        } else {
            0
        }
    }

    /// Uses up the hour's tokens (as another client of the property would).
    pub fn exhaust_hourly_tokens(&self) {
        let now = (self.state.config.clock)();
        let mut u = lock(&self.state.usage);
        u.hour = hour_index(now);
        u.hour_used = self.state.config.tokens_per_hour;
    }

    fn days_in(&self, from: NaiveDate, to: NaiveDate) -> Vec<NaiveDate> {
        let first = from.max(self.state.config.first_day());
        let end = to.min(self.today());
        first.iter_days().take_while(|d| *d <= end).collect()
    }

    /// The ids a dated report with `dimensions` (`date` first) holds for `from..=to`.
    pub fn expected_report(
        &self,
        dimensions: &[String],
        from: NaiveDate,
        to: NaiveDate,
    ) -> BTreeMap<String, Option<i64>> {
        let mut out = BTreeMap::new();
        let epoch = 0;
        for day in self.days_in(from, to) {
            for k in 0..self.state.rows_per_day(dimensions) {
                let row = self.state.report_row(dimensions, &[], day, k, epoch);
                let values: Vec<&str> = row.dimensions.iter().map(String::as_str).collect();
                if let Some(id) = row_id_of_values(dimensions, &values) {
                    out.insert(id, None);
                }
            }
        }
        out
    }

    /// The ids of the `funnels` stream for `funnels` (name, step names) over `from..=to`.
    pub fn expected_funnels(
        &self,
        funnels: &[(String, Vec<String>)],
        from: NaiveDate,
        to: NaiveDate,
    ) -> BTreeMap<String, Option<i64>> {
        let mut out = BTreeMap::new();
        let extra = lock(&self.state.extra_rows)
            .get("funnelStepName")
            .cloned()
            .unwrap_or_default();
        for (name, steps) in funnels {
            for (di, day) in self.days_in(from, to).into_iter().enumerate() {
                let date = day.to_string();
                for (i, s) in steps.iter().enumerate() {
                    out.insert(
                        id_from_parts([name.as_str(), date.as_str(), &format!("{}. {s}", i + 1)]),
                        None,
                    );
                }
                if di == 0 {
                    for row in &extra {
                        if let Some(step) = row["dimensionValues"][0]["value"].as_str() {
                            out.insert(id_from_parts([name.as_str(), date.as_str(), step]), None);
                        }
                    }
                }
            }
        }
        out
    }

    /// The ids of the `cohorts` stream for `weeks` cohort names (as the connector names them)
    /// and `end_offset` weeks.
    pub fn expected_cohorts(
        &self,
        weeks: &[String],
        end_offset: u32,
    ) -> BTreeMap<String, Option<i64>> {
        let mut out = BTreeMap::new();
        for row in self.state.cohort_rows(weeks, end_offset) {
            let c = row["dimensionValues"][0]["value"].as_str().unwrap_or("");
            let n = row["dimensionValues"][1]["value"].as_str().unwrap_or("");
            out.insert(id_from_parts([c, n]), None);
        }
        out
    }

    /// Adds hostile variants of a row of a report with `dimensions` (`date` first; `cohort`
    /// and `cohortNthWeek` for cohorts; `funnelStepName` for funnels) and `metrics`, dated the
    /// first day; returns the ids they should get in `stream`.
    pub fn inject_hostile(
        &self,
        stream: &str,
        dimensions: &[String],
        metrics: &[String],
        seed: u64,
        funnel: Option<&str>,
    ) -> Vec<String> {
        const N: usize = 10;
        let first = self.state.config.first_day();
        let sig = dimensions.join(",");
        let mut ids = Vec::new();
        let mut rows = Vec::new();
        for i in 0..N {
            let unique = format!("hostile-{seed}-{i}");
            let dims: Vec<String> = dimensions
                .iter()
                .enumerate()
                .map(|(j, d)| match d.as_str() {
                    "date" => first.format("%Y%m%d").to_string(),
                    "cohortNthWeek" => "0000".to_string(),
                    _ if j == usize::from(dimensions.first().is_some_and(|d| d == "date")) => {
                        unique.clone()
                    }
                    _ => dimension_value(d, i as u64),
                })
                .collect();
            let example = json!({
                "dimensionValues": dims.iter().map(|v| json!({"value": v})).collect::<Vec<_>>(),
                "metricValues": metrics.iter().map(|_| json!({"value": "12"})).collect::<Vec<_>>(),
            });
            let v = hostile::mutate(&example, &["dimensionValues"], seed.wrapping_add(i as u64));
            let id = match stream {
                streams::FUNNELS => {
                    id_from_parts([funnel.unwrap_or(""), &first.to_string(), &unique])
                }
                streams::COHORTS => id_from_parts([unique.as_str(), "0000"]),
                _ => match report_row_id(dimensions, &example) {
                    Some(id) => id,
                    None => continue,
                },
            };
            ids.push(id);
            rows.push(v);
        }
        lock(&self.state.extra_rows)
            .entry(sig)
            .or_default()
            .extend(rows);
        ids
    }
}

/// The record id the connector gives a row of a dated report.
fn report_row_id(dimensions: &[String], row: &Value) -> Option<String> {
    let values: Vec<&str> = row["dimensionValues"]
        .as_array()?
        .iter()
        .map(|v| v["value"].as_str().unwrap_or(""))
        .collect();
    row_id_of_values(dimensions, &values)
}

/// The record id the connector gives a row of a dated report with dimension `values`.
fn row_id_of_values(dimensions: &[String], values: &[&str]) -> Option<String> {
    let di = dimensions.iter().position(|d| d == "date")?;
    let date = models::parse_ga_date(values.get(di)?).ok()?.to_string();
    let others = values
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != di)
        .map(|(_, v)| *v);
    Some(id_from_parts(std::iter::once(date.as_str()).chain(others)))
}

fn hour_index(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 3600)
}

fn pacific_day(now: SystemTime) -> NaiveDate {
    days::today_in(chrono_tz::America::Los_Angeles, now)
}

impl SimState {
    fn is_fresh(&self, day: NaiveDate) -> bool {
        let today = *lock(&self.today);
        day > days::sub_days(today, u64::from(self.config.fresh_days))
    }

    /// Rows a dated report with `dimensions` has per day (one when `date` is the only one).
    fn rows_per_day(&self, dimensions: &[String]) -> u64 {
        if dimensions.iter().any(|d| d != "date") {
            u64::from(self.config.rows_per_day)
        } else {
            1
        }
    }

    /// The numbers' epoch of `day` (days GA4 still processes change on `reprocess`).
    fn epoch_of(&self, day: NaiveDate) -> u64 {
        if self.is_fresh(day) {
            self.epoch.load(Ordering::SeqCst)
        } else {
            0
        }
    }

    /// Row `k` of a dated report on `day` (with metric values when `metrics` are given).
    fn report_row(
        &self,
        dimensions: &[String],
        metrics: &[String],
        day: NaiveDate,
        k: u64,
        epoch: u64,
    ) -> GenRow {
        let mut first_other = true;
        let dims = dimensions
            .iter()
            .map(|d| {
                if d == "date" {
                    day.format("%Y%m%d").to_string()
                } else if first_other {
                    first_other = false;
                    data::unique_value(d, k)
                } else {
                    dimension_value(d, k)
                }
            })
            .collect();
        let day_key = data::day_number(day);
        let mets = metrics
            .iter()
            .map(|m| metric_value(self.config.seed, m, day_key, k, epoch))
            .collect();
        GenRow {
            dimensions: dims,
            metrics: mets,
        }
    }

    fn cohort_rows(&self, weeks: &[String], end_offset: u32) -> Vec<Value> {
        let today = *lock(&self.today);
        let mut out = Vec::new();
        for name in weeks {
            let start = name
                .strip_prefix("week_")
                .and_then(|d| d.parse::<NaiveDate>().ok())
                .unwrap_or(today);
            for nth in 0..=end_offset {
                if days::add_days(start, 7 * u64::from(nth)) > today {
                    break;
                }
                let total = 100 + data::mix3(self.config.seed, data::day_number(start), 0) % 400;
                let active = total * 100 / (100 + 40 * u64::from(nth));
                out.push(json!({
                    "dimensionValues": [{"value": name}, {"value": format!("{nth:04}")}],
                    "metricValues": [{"value": active.to_string()}, {"value": total.to_string()}],
                }));
            }
        }
        out
    }

    /// Charges `cost` tokens at `now`, or says which quota is used up.
    fn charge(&self, cost: i64, now: SystemTime) -> std::result::Result<Value, &'static str> {
        let c = &self.config;
        let mut u = lock(&self.usage);
        let hour = hour_index(now);
        if u.hour != hour {
            u.hour = hour;
            u.hour_used = 0;
        }
        let day = pacific_day(now);
        if u.day != Some(day) {
            u.day = Some(day);
            u.day_used = 0;
        }
        let project_hour = c.tokens_per_hour.saturating_mul(c.project_share_percent) / 100;
        if u.day_used.saturating_add(cost) > c.tokens_per_day {
            return Err("Exhausted property tokens per day. Please retry tomorrow.");
        }
        if u.hour_used.saturating_add(cost) > c.tokens_per_hour {
            return Err("Exhausted property tokens per hour. Please retry in the next hour.");
        }
        if u.hour_used.saturating_add(cost) > project_hour {
            return Err(
                "Exhausted property tokens for a project per hour. Please retry in the next hour.",
            );
        }
        u.hour_used += cost;
        u.day_used += cost;
        Ok(json!({
            "tokensPerDay": {"consumed": cost, "remaining": c.tokens_per_day - u.day_used},
            "tokensPerHour": {"consumed": cost, "remaining": c.tokens_per_hour - u.hour_used},
            "concurrentRequests": {"consumed": 0, "remaining": 10},
            "serverErrorsPerProjectPerHour": {"consumed": 0, "remaining": 10},
            "potentiallyThresholdedRequestsPerHour": {"consumed": 0, "remaining": 120},
            "tokensPerProjectPerHour": {"consumed": cost, "remaining": project_hour - u.hour_used},
        }))
    }
}

fn google_error(status: StatusCode, message: &str) -> Response {
    let name = match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    (
        status,
        axum::Json(json!({"error": {"code": status.as_u16(), "message": message, "status": name}})),
    )
        .into_response()
}

async fn require_token(State(state): State<Arc<SimState>>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| state.oauth.validate_access_token(v));
    if !ok {
        return google_error(
            StatusCode::UNAUTHORIZED,
            "Request had invalid authentication credentials. Expected OAuth 2 access token.",
        );
    }
    next.run(req).await
}

/// Google's checks of a JWT-bearer assertion, before the OAuth server verifies its signature
/// and issuer.
async fn check_assertion(State(state): State<Arc<SimState>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response();
    };
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&bytes).into_owned().collect();
    if form.get("grant_type").map(String::as_str) == Some(JWT_BEARER_GRANT) {
        let claims = form
            .get("assertion")
            .and_then(|a| a.split('.').nth(1))
            .and_then(|p| {
                use base64::Engine as _;
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p.trim_end_matches('='))
                    .ok()
            })
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .unwrap_or(Value::Null);
        let token_url = lock(&state.token_url).clone();
        let now = (state.config.clock)()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let iat = claims["iat"].as_i64();
        let exp = claims["exp"].as_i64();
        let problem = if claims["aud"].as_str() != Some(token_url.as_str()) {
            Some("Invalid JWT: aud is not the token endpoint")
        } else if !claims["scope"].as_str().is_some_and(|s| {
            s.split(' ')
                .any(|x| x == super::descriptor::ANALYTICS_READONLY)
        }) {
            Some("Invalid JWT: scope does not include analytics.readonly")
        } else if iat.is_none() || exp.is_none() {
            Some("Invalid JWT: iat and exp are required")
        } else if exp.zip(iat).is_some_and(|(e, i)| e <= i || e - i > 3600) {
            Some("Invalid JWT: exp must be within an hour of iat")
        } else if iat.is_some_and(|i| i > now + 300) {
            Some("Invalid JWT: iat is in the future")
        } else {
            None
        };
        if let Some(p) = problem {
            state.rejected_assertions.fetch_add(1, Ordering::SeqCst);
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "invalid_grant", "error_description": p})),
            )
                .into_response();
        }
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

fn int_field(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        Value::Null => None,
        _ => None,
    }
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn validate(dims: &[String], metrics: &[String]) -> Option<Response> {
    for d in dims {
        if !data::known_dimension(d) {
            return Some(google_error(
                StatusCode::BAD_REQUEST,
                &format!("Field {d} is not a valid dimension."),
            ));
        }
    }
    for m in metrics {
        if !data::known_metric(m) {
            return Some(google_error(
                StatusCode::BAD_REQUEST,
                &format!("Field {m} is not a valid metric."),
            ));
        }
    }
    if dims.len() > 9 || metrics.len() > 10 || metrics.is_empty() {
        return Some(google_error(
            StatusCode::BAD_REQUEST,
            "Requests are limited to 9 dimensions and 10 metrics.",
        ));
    }
    None
}

/// The refusal for an `action` (`<property>:<method>`) that is not `method` on this property.
fn refuse_action(state: &SimState, action: &str, method: &str) -> Option<Response> {
    let Some((id, m)) = action.split_once(':') else {
        return Some(google_error(StatusCode::NOT_FOUND, "Method not found."));
    };
    if m != method {
        return Some(google_error(StatusCode::NOT_FOUND, "Method not found."));
    }
    if id != state.config.property_id {
        return Some(google_error(
            StatusCode::FORBIDDEN,
            "User does not have sufficient permissions for this property.",
        ));
    }
    None
}

async fn run_report(
    State(state): State<Arc<SimState>>,
    Path(action): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(r) = refuse_action(&state, &action, "runReport") {
        return r;
    }
    state.report_requests.fetch_add(1, Ordering::SeqCst);
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return google_error(StatusCode::BAD_REQUEST, "Invalid JSON payload received.");
    };
    let dims = names(&req["dimensions"]);
    let metrics = names(&req["metrics"]);
    if let Some(r) = validate(&dims, &metrics) {
        return r;
    }
    let offset = int_field(&req["offset"]).unwrap_or(0);
    let limit = int_field(&req["limit"]).unwrap_or(10_000);
    if limit == 0 || limit > 250_000 {
        return google_error(
            StatusCode::BAD_REQUEST,
            "limit must be positive and at most 250000.",
        );
    }
    let today = *lock(&state.today);
    let sig = dims.join(",");
    let extra = lock(&state.extra_rows)
        .get(&sig)
        .cloned()
        .unwrap_or_default();
    // The rows are made while the answer is serialized, and only those of the page asked for:
    // the whole result is never held (a report of 100,000 rows is read page by page).
    let source = if req.get("cohortSpec").is_some() {
        let spec = &req["cohortSpec"];
        let weeks: Vec<String> = spec["cohorts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let end = int_field(&spec["cohortsRange"]["endOffset"])
            .unwrap_or(0)
            .min(52) as u32;
        let mut rows = state.cohort_rows(&weeks, end);
        rows.extend(extra);
        RowSource::Values(rows)
    } else {
        let range = &req["dateRanges"][0];
        let (Some(from), Some(to)) = (
            range["startDate"]
                .as_str()
                .and_then(|d| d.parse::<NaiveDate>().ok()),
            range["endDate"]
                .as_str()
                .and_then(|d| d.parse::<NaiveDate>().ok()),
        ) else {
            return google_error(
                StatusCode::BAD_REQUEST,
                "dateRanges must have startDate and endDate.",
            );
        };
        if !dims.iter().any(|d| d == "date") {
            return google_error(
                StatusCode::BAD_REQUEST,
                "The simulator serves dated reports.",
            );
        }
        let first = from.max(state.config.first_day());
        let days: Vec<NaiveDate> = first
            .iter_days()
            .take_while(|d| *d <= to.min(today))
            .collect();
        // The hostile rows follow the generated rows of the first day with data.
        let extra = if days.first() == Some(&state.config.first_day()) {
            extra
        } else {
            Vec::new()
        };
        RowSource::Dated {
            per_day: state.rows_per_day(&dims),
            days,
            extra,
        }
    };
    let total = source.len();
    let start = offset.min(total);
    let end = start.saturating_add(limit).min(total);
    let cost = state.config.tokens_per_request + ((end - start) as i64) / 10_000;
    let quota = match state.charge(cost, (state.config.clock)()) {
        Ok(q) => q,
        Err(msg) => return google_error(StatusCode::TOO_MANY_REQUESTS, msg),
    };
    let answer = ReportAnswer {
        dimension_headers: dims.iter().map(|d| json!({"name": d})).collect(),
        kind: "analyticsData#runReport",
        metadata: json!({"currencyCode": "USD", "timeZone": "UTC"}),
        metric_headers: metrics
            .iter()
            .map(|m| json!({"name": m, "type": data::metric_type(m)}))
            .collect(),
        property_quota: (req["returnPropertyQuota"].as_bool() == Some(true)).then_some(quota),
        row_count: total,
        rows: PageRows {
            state: &state,
            source: &source,
            dims: &dims,
            metrics: &metrics,
            start,
            end,
        },
    };
    match serde_json::to_vec(&answer) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(_) => google_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error."),
    }
}

/// A generated row of a dated report: its dimension and metric values.
struct GenRow {
    dimensions: Vec<String>,
    metrics: Vec<String>,
}

#[derive(serde::Serialize)]
struct Cell<'a> {
    value: &'a str,
}

impl serde::Serialize for GenRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        fn cells(v: &[String]) -> Vec<Cell<'_>> {
            v.iter().map(|value| Cell { value }).collect()
        }
        let mut st = s.serialize_struct("Row", 2)?;
        st.serialize_field("dimensionValues", &cells(&self.dimensions))?;
        st.serialize_field("metricValues", &cells(&self.metrics))?;
        st.end()
    }
}

/// Where the rows of a `runReport` result come from.
enum RowSource {
    /// Rows held (cohort reports: a few hundred at most).
    Values(Vec<Value>),
    /// A dated report: `per_day` generated rows on each of `days`, then `extra` (hostile
    /// variants) after those of the first day.
    Dated {
        per_day: u64,
        days: Vec<NaiveDate>,
        extra: Vec<Value>,
    },
}

impl RowSource {
    /// Rows in the whole result.
    fn len(&self) -> u64 {
        match self {
            RowSource::Values(v) => v.len() as u64,
            RowSource::Dated {
                per_day,
                days,
                extra,
            } => per_day
                .saturating_mul(days.len() as u64)
                .saturating_add(extra.len() as u64),
        }
    }
}

/// Rows `start..end` of a result, made one at a time as they are serialized.
struct PageRows<'a> {
    state: &'a SimState,
    source: &'a RowSource,
    dims: &'a [String],
    metrics: &'a [String],
    start: u64,
    end: u64,
}

impl serde::Serialize for PageRows<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq as _;
        let mut seq = s.serialize_seq(usize::try_from(self.end - self.start).ok())?;
        match self.source {
            RowSource::Values(rows) => {
                let (a, b) = (self.start as usize, self.end as usize);
                for row in &rows[a..b] {
                    seq.serialize_element(row)?;
                }
            }
            RowSource::Dated {
                per_day,
                days,
                extra,
            } => {
                // Position of the first row of each day: day 0 holds `per_day + extra` rows.
                let mut base = 0u64;
                for (i, day) in days.iter().enumerate() {
                    let extra_here = if i == 0 { extra.len() as u64 } else { 0 };
                    let len = per_day + extra_here;
                    let (lo, hi) = (self.start.max(base), self.end.min(base + len));
                    if lo < hi {
                        let epoch = self.state.epoch_of(*day);
                        for p in lo - base..hi - base {
                            if p < *per_day {
                                let row =
                                    self.state
                                        .report_row(self.dims, self.metrics, *day, p, epoch);
                                seq.serialize_element(&row)?;
                            } else {
                                seq.serialize_element(&extra[(p - per_day) as usize])?;
                            }
                        }
                    }
                    base += len;
                    if base >= self.end {
                        break;
                    }
                }
            }
        }
        seq.end()
    }
}

/// A `runReport` answer (fields in the order the simulator always sent them).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ReportAnswer<'a> {
    dimension_headers: Vec<Value>,
    kind: &'static str,
    metadata: Value,
    metric_headers: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    property_quota: Option<Value>,
    row_count: u64,
    rows: PageRows<'a>,
}

async fn run_funnel_report(
    State(state): State<Arc<SimState>>,
    Path(action): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(r) = refuse_action(&state, &action, "runFunnelReport") {
        return r;
    }
    state.report_requests.fetch_add(1, Ordering::SeqCst);
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return google_error(StatusCode::BAD_REQUEST, "Invalid JSON payload received.");
    };
    let steps: Vec<String> = req["funnel"]["steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if steps.len() < 2 {
        return google_error(StatusCode::BAD_REQUEST, "A funnel needs at least 2 steps.");
    }
    let Some(day) = req["dateRanges"][0]["startDate"]
        .as_str()
        .and_then(|d| d.parse::<NaiveDate>().ok())
    else {
        return google_error(StatusCode::BAD_REQUEST, "dateRanges must have startDate.");
    };
    let quota = match state.charge(state.config.tokens_per_request, (state.config.clock)()) {
        Ok(q) => q,
        Err(msg) => return google_error(StatusCode::TOO_MANY_REQUESTS, msg),
    };
    let today = *lock(&state.today);
    let mut rows = Vec::new();
    if day >= state.config.first_day() && day <= today {
        let base = 1000 + data::mix3(state.config.seed, data::day_number(day), 9) % 5000;
        let mut users = base;
        for (i, s) in steps.iter().enumerate() {
            let next = users
                * (30 + data::mix3(state.config.seed, i as u64, data::day_number(day)) % 60)
                / 100;
            let completion = if users == 0 {
                0.0
            } else {
                next as f64 / users as f64
            };
            let last = i + 1 == steps.len();
            rows.push(json!({
                "dimensionValues": [{"value": format!("{}. {s}", i + 1)}],
                "metricValues": [
                    {"value": users.to_string()},
                    {"value": if last { "0".to_string() } else { format!("{completion:.4}") }},
                    {"value": if last { "0".to_string() } else { (users - next).to_string() }},
                    {"value": if last { "0".to_string() } else { format!("{:.4}", 1.0 - completion) }},
                ],
            }));
            users = next;
        }
        if day == state.config.first_day() {
            rows.extend(
                lock(&state.extra_rows)
                    .get("funnelStepName")
                    .cloned()
                    .unwrap_or_default(),
            );
        }
    }
    let mut answer = json!({
        "funnelTable": {
            "dimensionHeaders": [{"name": "funnelStepName"}],
            "metricHeaders": [
                {"name": "activeUsers", "type": "TYPE_INTEGER"},
                {"name": "funnelStepCompletionRate", "type": "TYPE_FLOAT"},
                {"name": "funnelStepAbandonments", "type": "TYPE_INTEGER"},
                {"name": "funnelStepAbandonmentRate", "type": "TYPE_FLOAT"},
            ],
            "rows": rows,
            "metadata": {"samplingMetadatas": []},
        },
        "funnelVisualization": {"dimensionHeaders": [], "metricHeaders": [], "rows": []},
        "kind": "analyticsData#runFunnelReport",
    });
    if req["returnPropertyQuota"].as_bool() == Some(true) {
        answer["propertyQuota"] = quota;
    }
    axum::Json(answer).into_response()
}

async fn metadata(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    _headers: HeaderMap,
) -> Response {
    if id != state.config.property_id {
        return google_error(
            StatusCode::FORBIDDEN,
            "User does not have sufficient permissions for this property.",
        );
    }
    axum::Json(json!({
        "name": format!("properties/{id}/metadata"),
        "dimensions": data::metadata_dimensions(),
        "metrics": data::metadata_metrics(),
    }))
    .into_response()
}

/// A wall clock at `base` advancing with tokio time (so paused-time tests move it).
pub fn tokio_wall_clock(base: SystemTime) -> WallClock {
    let t0 = tokio::time::Instant::now();
    Arc::new(move || {
        base.checked_add(tokio::time::Instant::now().saturating_duration_since(t0))
            .unwrap_or(base)
    })
}
