//! The Mixpanel simulator (feature `sim`): an axum server on loopback answering the Raw Event
//! Export and the Query API endpoints the connector calls, with Mixpanel's shapes.
//!
//! - `GET /api/2.0/export`: JSONL streamed as it is generated (millions of events without
//!   materialising them), `from_date`/`to_date` whole days inclusive in the project's time zone
//!   (legacy projects write `time` in local time), `time_in_ms`, `event` filter, gzip when
//!   asked (`Accept-Encoding: gzip`). A share of events is written twice (same
//!   `$insert_id`); another share arrives days late (visible only once the simulator's
//!   "today" has passed their arrival day). [`MixpanelSimHandle::terminate_next_export_after`]
//!   cuts the next export with Mixpanel's `terminated early` line.
//! - `POST /api/query/engage`: profiles paged by `session_id` + `page`, cohort members with
//!   `filter_by_cohort`.
//! - `GET /api/query/cohorts/list`, `GET /api/query/funnels/list`, `GET /api/query/funnels`.
//! - HTTP Basic for a service account (`project_id` required) or a project secret; 429s with
//!   Mixpanel's body (injected, or from an optional hourly query limit).

mod data;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use apex_connect_core::Result;
use apex_connect_testkit::hostile;
use apex_connect_testkit::sim::{
    FaultKind, Faults, FixedWindowLimiter, RateLimitHeaders, SimHandle, SimServer, SimStats,
    paging::query_params,
};
use async_compression::Level;
use async_compression::tokio::bufread::GzipEncoder;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::NaiveDate;
use chrono_tz::Tz;
use serde_json::{Value, json};
use tokio_util::io::{ReaderStream, StreamReader};

use self::data::{EventGen, cohort_id, funnel_id, in_cohort, mix3, profile};
use super::models::{self, EventTime, streams};
use crate::days;

/// The simulator's settings (build with struct update syntax from `Default`).
#[derive(Debug, Clone)]
pub struct MixpanelSimConfig {
    /// Seed of every generated value.
    pub seed: u64,
    /// The simulator's "today" (in the project's time zone); days after it have no events.
    pub today: NaiveDate,
    /// Days of history ending today (the first day with events is `today - days + 1`).
    pub days: u32,
    /// Events generated per day (before duplicates).
    pub events_per_day: u64,
    /// Users (profiles).
    pub users: u64,
    /// Cohorts.
    pub cohorts: u64,
    /// Saved funnels.
    pub funnels: u64,
    /// Events in a thousand written twice by the export.
    pub duplicate_per_mille: u64,
    /// Events in a thousand that arrive 1 to 4 days after their day.
    pub late_per_mille: u64,
    /// A legacy (pre-2023) project's time zone: dates and stored `time` are local to it.
    pub project_timezone: Option<Tz>,
    /// The project id (required with the service account).
    pub project_id: u64,
    /// The service account (`username`, `secret`).
    pub service_account: (String, String),
    /// The legacy project API secret.
    pub api_secret: String,
    /// The largest Engage page.
    pub engage_max_page_size: u32,
    /// Serve gzip when asked.
    pub gzip: bool,
    /// Query API requests allowed per hour (`None`: no limit): past it, 429 with Mixpanel's body.
    pub queries_per_hour: Option<u32>,
}

impl Default for MixpanelSimConfig {
    fn default() -> Self {
        MixpanelSimConfig {
            seed: 42,
            today: NaiveDate::from_ymd_opt(2024, 3, 20).unwrap_or_default(),
            days: 10,
            events_per_day: 200,
            users: 120,
            cohorts: 3,
            funnels: 2,
            duplicate_per_mille: 20,
            late_per_mille: 30,
            project_timezone: None,
            project_id: 4_242,
            service_account: (
                "sim.mp-service-account".to_string(),
                "sim-service-account-secret".to_string(),
            ),
            api_secret: "sim-project-api-secret".to_string(),
            engage_max_page_size: 1_000,
            gzip: true,
            queries_per_hour: None,
        }
    }
}

impl MixpanelSimConfig {
    /// The first day with events.
    pub fn first_day(&self) -> NaiveDate {
        days::sub_days(self.today, u64::from(self.days.max(1)) - 1)
    }
}

struct Session {
    cohort: Option<u64>,
}

struct SimState {
    config: MixpanelSimConfig,
    events: EventGen,
    today: Mutex<NaiveDate>,
    extra_lines: Mutex<BTreeMap<NaiveDate, Vec<String>>>,
    extra_profiles: Mutex<Vec<Value>>,
    extra_members: Mutex<Vec<Value>>,
    extra_cohorts: Mutex<Vec<Value>>,
    extra_funnels: Mutex<Vec<Value>>,
    funnel_overrides: Mutex<BTreeMap<(u64, NaiveDate), Value>>,
    terminate_after: Mutex<Option<u64>>,
    sessions: Mutex<HashMap<String, Session>>,
    next_session: AtomicU64,
    exports: AtomicU64,
    gzip_exports: AtomicU64,
    faults: Faults,
    stats: SimStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts Mixpanel simulators.
#[derive(Debug, Clone, Copy, Default)]
pub struct MixpanelSim;

impl MixpanelSim {
    /// Serves a simulator with `config` on `127.0.0.1`.
    ///
    /// # Errors
    /// `Config` when no loopback port can be bound.
    pub async fn start(config: MixpanelSimConfig) -> Result<MixpanelSimHandle> {
        let events = EventGen {
            seed: config.seed,
            first_day: config.first_day(),
            per_day: config.events_per_day,
            users: config.users,
            duplicate_per_mille: config.duplicate_per_mille,
            late_per_mille: config.late_per_mille,
            local_tz: config.project_timezone,
        };
        let faults = Faults::new(config.seed).with_error_body(|status| {
            let msg = if status == StatusCode::TOO_MANY_REQUESTS {
                "Query rate limit exceeded for project. 1/5 queries running concurrently and 61/60 queries running in the last hour"
            } else {
                "Internal server error"
            };
            (status, axum::Json(json!({"error": msg, "status": "error"}))).into_response()
        });
        let state = Arc::new(SimState {
            today: Mutex::new(config.today),
            events,
            extra_lines: Mutex::new(BTreeMap::new()),
            extra_profiles: Mutex::new(Vec::new()),
            extra_members: Mutex::new(Vec::new()),
            extra_cohorts: Mutex::new(Vec::new()),
            extra_funnels: Mutex::new(Vec::new()),
            funnel_overrides: Mutex::new(BTreeMap::new()),
            terminate_after: Mutex::new(None),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            exports: AtomicU64::new(0),
            gzip_exports: AtomicU64::new(0),
            faults: faults.clone(),
            stats: SimStats::new(),
            config,
        });
        let mut app = Router::new()
            .route("/api/2.0/export", get(export))
            .route("/api/query/engage", post(engage))
            .route("/api/query/cohorts/list", get(cohorts_list))
            .route("/api/query/funnels/list", get(funnels_list))
            .route("/api/query/funnels", get(funnels))
            .with_state(state.clone());
        if let Some(n) = state.config.queries_per_hour {
            let limiter = FixedWindowLimiter::new(n, Duration::from_secs(3600))
                .with_headers(RateLimitHeaders::none())
                .with_filter(|_, uri| uri.path().starts_with("/api/query"))
                .with_body(move || {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        axum::Json(json!({
                            "error": format!("Query rate limit exceeded for project: 0/5 queries running concurrently and {}/{} queries running in the last hour", n + 1, n),
                            "status": "error",
                        })),
                    )
                        .into_response()
                });
            app = app.layer(limiter.layer());
        }
        let app = app.layer(faults.layer()).layer(state.stats.layer());
        let server = SimServer::start(app).await?;
        Ok(MixpanelSimHandle { server, state })
    }
}

/// A running Mixpanel simulator; dropping it stops the server.
pub struct MixpanelSimHandle {
    server: SimHandle,
    state: Arc<SimState>,
}

impl std::fmt::Debug for MixpanelSimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MixpanelSimHandle")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl MixpanelSimHandle {
    /// `http://127.0.0.1:<port>`: the base URL of both hosts.
    pub fn base_url(&self) -> &str {
        self.server.base_url()
    }

    /// The settings.
    pub fn config(&self) -> &MixpanelSimConfig {
        &self.state.config
    }

    /// The simulator's today.
    pub fn today(&self) -> NaiveDate {
        *lock(&self.state.today)
    }

    /// Moves today (late events become visible; new days get events).
    pub fn set_today(&self, today: NaiveDate) {
        *lock(&self.state.today) = today;
    }

    /// Ends the next export after `lines` lines with `terminated early`.
    pub fn terminate_next_export_after(&self, lines: u64) {
        *lock(&self.state.terminate_after) = Some(lines);
    }

    /// Adds raw lines to the export of `day` (after its generated events).
    pub fn add_event_lines(&self, day: NaiveDate, lines: impl IntoIterator<Item = String>) {
        lock(&self.state.extra_lines)
            .entry(day)
            .or_default()
            .extend(lines);
    }

    /// Answers the next API request with 429 and `Retry-After: secs`.
    pub fn inject_rate_limit(&self, secs: u64) {
        self.state
            .faults
            .push_scheduled(FaultKind::too_many_requests(secs));
    }

    /// 429s sent so far (injected or from the hourly limit).
    pub fn rate_limited_seen(&self) -> u64 {
        self.state.stats.status(429)
    }

    /// Export requests answered so far.
    pub fn export_requests(&self) -> u64 {
        self.state.exports.load(Ordering::SeqCst)
    }

    /// Export requests answered with a gzip body.
    pub fn gzip_exports(&self) -> u64 {
        self.state.gzip_exports.load(Ordering::SeqCst)
    }

    /// Request counters.
    pub fn stats(&self) -> &SimStats {
        &self.state.stats
    }

    /// The fault injector (5xx, resets, slow answers).
    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }

    fn visible_days(&self, start: NaiveDate, last: NaiveDate) -> impl Iterator<Item = NaiveDate> {
        let first = start.max(self.state.events.first_day);
        let end = last.min(self.today());
        first.iter_days().take_while(move |d| *d <= end)
    }

    /// Every distinct event an export of `start..=last` yields now: record id -> UTC ms.
    pub fn expected_events(
        &self,
        start: NaiveDate,
        last: NaiveDate,
    ) -> BTreeMap<String, Option<i64>> {
        let time = EventTime {
            local_tz: self.state.config.project_timezone,
        };
        let today = self.today();
        let mut out = BTreeMap::new();
        let mut line = Vec::with_capacity(512);
        let extras = lock(&self.state.extra_lines).clone();
        for day in self.visible_days(start, last) {
            for i in 0..self.state.events.per_day {
                let e = self.state.events.event(day, i);
                if e.arrives > today {
                    continue;
                }
                line.clear();
                self.state.events.write_line(&e, true, &mut line);
                if let Ok(h) = models::read_event(line.trim_ascii_end(), &time) {
                    out.insert(h.id, Some(h.time_utc_ms));
                }
            }
            for l in extras.get(&day).into_iter().flatten() {
                if let Ok(h) = models::read_event(l.as_bytes(), &time) {
                    out.insert(h.id, Some(h.time_utc_ms));
                }
            }
        }
        out
    }

    /// Lines an export of `start..=last` writes now (duplicates and extra lines included).
    pub fn exported_lines(&self, start: NaiveDate, last: NaiveDate) -> u64 {
        let today = self.today();
        let extras = lock(&self.state.extra_lines).clone();
        let mut n = 0u64;
        for day in self.visible_days(start, last) {
            for i in 0..self.state.events.per_day {
                let e = self.state.events.event(day, i);
                if e.arrives <= today {
                    n += if e.duplicated { 2 } else { 1 };
                }
            }
            n += extras.get(&day).map_or(0, |v| v.len() as u64);
        }
        n
    }

    /// The ids `stream` holds for a sync of `start..=last` (versions for events).
    pub fn expected(
        &self,
        stream: &str,
        start: NaiveDate,
        last: NaiveDate,
    ) -> BTreeMap<String, Option<i64>> {
        let ids =
            |items: Vec<Value>, f: fn(&[u8]) -> Result<String>| -> BTreeMap<String, Option<i64>> {
                items
                    .iter()
                    .filter_map(|v| f(v.to_string().as_bytes()).ok())
                    .map(|id| (id, None))
                    .collect()
            };
        match stream {
            streams::EVENTS => self.expected_events(start, last),
            streams::PROFILES => ids(self.state.profiles(None), models::profile_id),
            streams::COHORTS => ids(self.state.cohorts(), models::cohort_id),
            streams::COHORT_MEMBERS => {
                let mut out = BTreeMap::new();
                for c in self.state.cohorts() {
                    let Ok(cid) = models::cohort_id(c.to_string().as_bytes()) else {
                        continue;
                    };
                    let Ok(n) = cid.parse::<u64>() else {
                        continue;
                    };
                    for m in self.state.profiles(Some(n)) {
                        if let Ok(d) = models::profile_id(m.to_string().as_bytes()) {
                            out.insert(models::member_id(&cid, &d), None);
                        }
                    }
                }
                out
            }
            streams::FUNNELS => ids(self.state.funnels(), models::funnel_id),
            streams::FUNNEL_RESULTS => {
                let mut out = BTreeMap::new();
                for f in self.state.funnels() {
                    let Ok(fid) = models::funnel_id(f.to_string().as_bytes()) else {
                        continue;
                    };
                    for day in self.visible_days(start, last) {
                        out.insert(models::funnel_result_id(&fid, day), None);
                    }
                }
                out
            }
            _ => BTreeMap::new(),
        }
    }

    /// Adds hostile variants of Mixpanel's documented shapes to `stream` (seeded) and returns
    /// their record ids. Envelopes stay valid: every variant must sync or be quarantined.
    pub fn inject_hostile(&self, stream: &str, seed: u64) -> Vec<String> {
        const N: usize = 12;
        let s = &self.state;
        let today = self.today();
        let mut ids = Vec::new();
        match stream {
            streams::EVENTS => {
                let mut example = data::example_event();
                let t = days::day_start_utc_ms(Tz::UTC, today).unwrap_or(0) / 1000 + 3600;
                example["properties"]["time"] = json!(t);
                let props = example["properties"].clone();
                let time = EventTime {
                    local_tz: s.config.project_timezone,
                };
                let mut lines = Vec::new();
                for (i, mut p) in
                    hostile::variants(&props, &["time", "$insert_id", "distinct_id"], seed, N)
                        .into_iter()
                        .enumerate()
                {
                    p["$insert_id"] = json!(format!("hostile-{seed}-{i}"));
                    let mut ev = json!({"event": "Signed up", "properties": p});
                    if i % 3 == 0 {
                        ev["_unknown"] = json!([[1], {"x": null}]);
                    }
                    let line = ev.to_string();
                    if let Ok(h) = models::read_event(line.as_bytes(), &time) {
                        ids.push(h.id);
                    }
                    lines.push(line);
                }
                self.add_event_lines(today, lines);
            }
            streams::PROFILES | streams::COHORT_MEMBERS => {
                let example = profile(s.config.seed, 0);
                let mut added = Vec::new();
                for (i, mut v) in hostile::variants(&example, &["$distinct_id"], seed, N)
                    .into_iter()
                    .enumerate()
                {
                    let d = format!("hostile_{seed}_{i}");
                    v["$distinct_id"] = json!(d);
                    ids.push(if stream == streams::PROFILES {
                        d
                    } else {
                        models::member_id(&cohort_id(0).to_string(), &d)
                    });
                    added.push(v);
                }
                if stream == streams::PROFILES {
                    lock(&s.extra_profiles).extend(added);
                } else {
                    lock(&s.extra_members).extend(added);
                }
            }
            streams::COHORTS => {
                let example = self
                    .state
                    .cohorts()
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| json!({"id": 1}));
                for (i, mut v) in hostile::variants(&example, &["id"], seed, N)
                    .into_iter()
                    .enumerate()
                {
                    let id = 900_000 + seed % 1000 * 100 + i as u64;
                    v["id"] = json!(id);
                    ids.push(id.to_string());
                    lock(&s.extra_cohorts).push(v);
                }
            }
            streams::FUNNELS => {
                let example = json!({"funnel_id": 1, "name": "Signup funnel"});
                for (i, mut v) in hostile::variants(&example, &["funnel_id"], seed, N)
                    .into_iter()
                    .enumerate()
                {
                    let id = 950_000 + seed % 1000 * 100 + i as u64;
                    v["funnel_id"] = json!(id);
                    ids.push(id.to_string());
                    lock(&s.extra_funnels).push(v);
                }
            }
            streams::FUNNEL_RESULTS => {
                if s.config.funnels == 0 {
                    return ids;
                }
                let f = funnel_id(0);
                let example = data::funnel_day(s.config.seed, f, today);
                let days: Vec<NaiveDate> = self.visible_days(s.events.first_day, today).collect();
                for (day, v) in days.iter().zip(hostile::variants(&example, &[], seed, N)) {
                    lock(&s.funnel_overrides).insert((f, *day), v);
                    ids.push(models::funnel_result_id(&f.to_string(), *day));
                }
            }
            _ => {}
        }
        ids
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": message, "status": "error"})),
    )
        .into_response()
}

/// Checks HTTP Basic: the service account (with the right `project_id`) or the project secret.
fn authorize(
    state: &SimState,
    headers: &HeaderMap,
    params: &BTreeMap<String, String>,
) -> Option<Response> {
    let unauthorized = || {
        Some(error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized, invalid project secret or service account credentials",
        ))
    };
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return unauthorized();
    };
    let Some(b64) = value.strip_prefix("Basic ") else {
        return unauthorized();
    };
    let Some(pair) = STANDARD
        .decode(b64.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return unauthorized();
    };
    let (user, secret) = pair.split_once(':').unwrap_or((pair.as_str(), ""));
    let (sa_user, sa_secret) = &state.config.service_account;
    if user == sa_user && secret == sa_secret {
        let pid = state.config.project_id.to_string();
        return match params.get("project_id") {
            Some(p) if *p == pid => None,
            Some(_) => Some(error(
                StatusCode::FORBIDDEN,
                "service account has no access to this project",
            )),
            None => Some(error(
                StatusCode::BAD_REQUEST,
                "project_id is required with a service account",
            )),
        };
    }
    if user == state.config.api_secret && secret.is_empty() {
        return None;
    }
    unauthorized()
}

fn parse_date(params: &BTreeMap<String, String>, name: &str) -> Option<NaiveDate> {
    params.get(name).and_then(|d| d.parse::<NaiveDate>().ok())
}

fn bad_dates() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "from_date and to_date must be dates (yyyy-mm-dd)",
    )
}

/// The export body generator: fills chunks of about 256 KB, day by day.
struct ExportBody {
    events: EventGen,
    day: NaiveDate,
    to: NaiveDate,
    i: u64,
    today: NaiveDate,
    extras: BTreeMap<NaiveDate, Vec<String>>,
    in_ms: bool,
    filter: Option<Vec<String>>,
    emitted: u64,
    terminate_after: Option<u64>,
    done: bool,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl ExportBody {
    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        self.buf.clear();
        while self.buf.len() < CHUNK && !self.done {
            if self.day > self.to {
                self.done = true;
                break;
            }
            if self.day >= self.events.first_day && self.i < self.events.per_day {
                let e = self.events.event(self.day, self.i);
                self.i += 1;
                if e.arrives > self.today {
                    continue;
                }
                let start = self.buf.len();
                self.events.write_line(&e, self.in_ms, &mut self.buf);
                if let Some(names) = &self.filter {
                    let line = &self.buf[start..];
                    let keep = names
                        .iter()
                        .any(|n| line.starts_with(format!("{{\"event\":\"{n}\"").as_bytes()));
                    if !keep {
                        self.buf.truncate(start);
                        continue;
                    }
                }
                self.emitted += 1;
                if e.duplicated {
                    let line = self.buf[start..].to_vec();
                    self.buf.extend_from_slice(&line);
                    self.emitted += 1;
                }
            } else {
                if let Some(lines) = self.extras.remove(&self.day) {
                    for l in lines {
                        self.buf.extend_from_slice(l.as_bytes());
                        self.buf.push(b'\n');
                        self.emitted += 1;
                    }
                }
                self.day = days::add_days(self.day, 1);
                self.i = 0;
                if self.day == NaiveDate::MAX {
                    self.done = true;
                }
            }
            if self.terminate_after.is_some_and(|n| self.emitted >= n) {
                self.buf.extend_from_slice(b"terminated early\n");
                self.done = true;
            }
        }
        if self.buf.is_empty() {
            None
        } else {
            Some(Bytes::copy_from_slice(&self.buf))
        }
    }
}

async fn export(State(state): State<Arc<SimState>>, headers: HeaderMap, uri: Uri) -> Response {
    let params = query_params(&uri);
    if let Some(r) = authorize(&state, &headers, &params) {
        return r;
    }
    let (Some(from), Some(to)) = (
        parse_date(&params, "from_date"),
        parse_date(&params, "to_date"),
    ) else {
        return bad_dates();
    };
    let today = *lock(&state.today);
    if to > today {
        return error(
            StatusCode::BAD_REQUEST,
            "to_date cannot be later than today",
        );
    }
    if from > to {
        return error(
            StatusCode::BAD_REQUEST,
            "from_date cannot be later than to_date",
        );
    }
    let filter = match params.get("event") {
        None => None,
        Some(e) => match serde_json::from_str::<Vec<String>>(e) {
            Ok(v) => Some(v),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "event must be a JSON array of names",
                );
            }
        },
    };
    state.exports.fetch_add(1, Ordering::SeqCst);
    let extras: BTreeMap<NaiveDate, Vec<String>> = lock(&state.extra_lines)
        .range(from..=to)
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    let body = ExportBody {
        events: state.events.clone(),
        day: from,
        to,
        i: 0,
        today,
        extras,
        in_ms: params.get("time_in_ms").is_some_and(|v| v == "true"),
        filter,
        emitted: 0,
        terminate_after: lock(&state.terminate_after).take(),
        done: false,
        buf: Vec::with_capacity(CHUNK + 4096),
    };
    let stream = futures::stream::unfold(body, |mut b| async move {
        b.next_chunk().map(|c| (Ok::<Bytes, io::Error>(c), b))
    });
    let gzip = state.config.gzip
        && headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut resp = if gzip {
        state.gzip_exports.fetch_add(1, Ordering::SeqCst);
        let enc = GzipEncoder::with_quality(StreamReader::new(stream), Level::Fastest);
        let mut r = Response::new(Body::from_stream(ReaderStream::with_capacity(
            enc,
            64 * 1024,
        )));
        r.headers_mut().insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static("gzip"),
        );
        r
    } else {
        Response::new(Body::from_stream(stream))
    };
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn engage(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let mut params = query_params(&uri);
    if let Some(r) = authorize(&state, &headers, &params) {
        return r;
    }
    for (k, v) in url::form_urlencoded::parse(&body) {
        params.insert(k.into_owned(), v.into_owned());
    }
    let page_size = params
        .get("page_size")
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or(1_000)
        .clamp(1, state.config.engage_max_page_size.max(1));
    let cohort = match params.get("filter_by_cohort") {
        None => None,
        Some(f) => {
            let id = serde_json::from_str::<Value>(f)
                .ok()
                .and_then(|v| v.get("id").and_then(Value::as_u64));
            match id {
                Some(id) if state.has_cohort(id) => Some(id),
                _ => return error(StatusCode::BAD_REQUEST, "filter_by_cohort names no cohort"),
            }
        }
    };
    let (session, page) = match params.get("session_id") {
        Some(s) => {
            let sessions = lock(&state.sessions);
            match sessions.get(s) {
                Some(sess) if sess.cohort == cohort => {}
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "session_id is invalid or has expired",
                    );
                }
            }
            let page = params
                .get("page")
                .and_then(|p| p.parse::<u64>().ok())
                .unwrap_or(0);
            (s.clone(), page)
        }
        None => {
            if params.get("page").is_some_and(|p| p != "0") {
                return error(
                    StatusCode::BAD_REQUEST,
                    "page needs the session_id of page 0",
                );
            }
            let id = format!(
                "{}-SIM{:08x}",
                state.next_session.fetch_add(1, Ordering::SeqCst),
                mix3(state.config.seed, 5, 5) as u32
            );
            lock(&state.sessions).insert(id.clone(), Session { cohort });
            (id, 0)
        }
    };
    let all = state.profiles(cohort);
    let start = usize::try_from(page.saturating_mul(u64::from(page_size))).unwrap_or(usize::MAX);
    let results: Vec<&Value> = all.iter().skip(start).take(page_size as usize).collect();
    axum::Json(json!({
        "page": page,
        "page_size": page_size,
        "session_id": session,
        "status": "ok",
        "total": all.len(),
        "results": results,
    }))
    .into_response()
}

async fn cohorts_list(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let params = query_params(&uri);
    if let Some(r) = authorize(&state, &headers, &params) {
        return r;
    }
    axum::Json(Value::Array(state.cohorts())).into_response()
}

async fn funnels_list(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let params = query_params(&uri);
    if let Some(r) = authorize(&state, &headers, &params) {
        return r;
    }
    axum::Json(Value::Array(state.funnels())).into_response()
}

async fn funnels(State(state): State<Arc<SimState>>, headers: HeaderMap, uri: Uri) -> Response {
    let params = query_params(&uri);
    if let Some(r) = authorize(&state, &headers, &params) {
        return r;
    }
    let Some(fid) = params.get("funnel_id").and_then(|f| f.parse::<u64>().ok()) else {
        return error(StatusCode::BAD_REQUEST, "funnel_id is required");
    };
    if !state
        .funnels()
        .iter()
        .any(|f| f.get("funnel_id").and_then(Value::as_u64) == Some(fid))
    {
        return error(StatusCode::BAD_REQUEST, "unknown funnel_id");
    }
    let (Some(from), Some(to)) = (
        parse_date(&params, "from_date"),
        parse_date(&params, "to_date"),
    ) else {
        return bad_dates();
    };
    let today = *lock(&state.today);
    if to > today || from > to {
        return error(
            StatusCode::BAD_REQUEST,
            "to_date cannot be later than today",
        );
    }
    let overrides = lock(&state.funnel_overrides).clone();
    let mut data = serde_json::Map::new();
    let mut dates = Vec::new();
    let first = from.max(state.events.first_day);
    for day in first.iter_days().take_while(|d| *d <= to) {
        let v = overrides
            .get(&(fid, day))
            .cloned()
            .unwrap_or_else(|| data::funnel_day(state.config.seed, fid, day));
        dates.push(day.to_string());
        data.insert(day.to_string(), v);
    }
    data.insert("$overall".into(), json!({"steps": [], "analysis": {}}));
    axum::Json(json!({"meta": {"dates": dates}, "data": data})).into_response()
}

impl SimState {
    /// Profiles, or the members of the cohort with id `cohort`.
    fn profiles(&self, cohort: Option<u64>) -> Vec<Value> {
        let seed = self.config.seed;
        let generated = match cohort {
            None => Some(None),
            Some(id) => id
                .checked_sub(cohort_id(0))
                .filter(|c| *c < self.config.cohorts)
                .map(Some),
        };
        let mut out: Vec<Value> = match generated {
            Some(filter) => (0..self.config.users)
                .filter(|k| filter.is_none_or(|c| in_cohort(seed, c, *k)))
                .map(|k| profile(seed, k))
                .collect(),
            None => Vec::new(),
        };
        match cohort {
            None => out.extend(lock(&self.extra_profiles).iter().cloned()),
            Some(id) if id == cohort_id(0) => out.extend(lock(&self.extra_members).iter().cloned()),
            Some(_) => {}
        }
        out
    }

    fn cohorts(&self) -> Vec<Value> {
        let seed = self.config.seed;
        let mut out: Vec<Value> = (0..self.config.cohorts)
            .map(|c| {
                let count = (0..self.config.users)
                    .filter(|k| in_cohort(seed, c, *k))
                    .count();
                json!({
                    "count": count,
                    "is_visible": 1,
                    "description": format!("Users of segment {c}"),
                    "created": "2023-03-19 23:49:51",
                    "project_id": self.config.project_id,
                    "id": cohort_id(c),
                    "name": format!("Cohort {c}"),
                })
            })
            .collect();
        out.extend(lock(&self.extra_cohorts).iter().cloned());
        out
    }

    fn has_cohort(&self, id: u64) -> bool {
        self.cohorts()
            .iter()
            .any(|c| c.get("id").and_then(Value::as_u64) == Some(id))
    }

    fn funnels(&self) -> Vec<Value> {
        let mut out: Vec<Value> = (0..self.config.funnels)
            .map(|f| json!({"funnel_id": funnel_id(f), "name": format!("Signup funnel {f}")}))
            .collect();
        out.extend(lock(&self.extra_funnels).iter().cloned());
        out
    }
}
