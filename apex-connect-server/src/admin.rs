//! `GET /admin/status`, `GET /admin/rejects`, `POST /admin/dead-letters/{id}/retry`,
//! `GET /metrics`, and the identity resolution endpoints ([`identity_router`]: `/admin/entities`,
//! `/admin/merges`), behind [`AdminAuth`] (a bearer token, or loopback only without one).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use apex_connect_core::store::{EventId, InboxCounts, ScheduleRow, StoredReject};
use apex_connect_core::{ConnectionId, Error, ErrorKind, Identity, Result, StreamId};
use apex_connect_identity::{CanonicalId, EntityGraph, SourceKey};
use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::metrics::MetricsSnapshot;
use crate::state::ServerState;

/// The environment variable holding the admin API's bearer token.
pub const ADMIN_TOKEN_ENV: &str = "APEX_CONNECT_ADMIN_TOKEN";

/// Who may call the admin API (and `/metrics`).
///
/// - With a token ([`AdminAuth::token`], from [`ADMIN_TOKEN_ENV`] in `serve`): every request
///   must carry `Authorization: Bearer <token>` (compared in constant time), else `401` with
///   `WWW-Authenticate: Bearer`; from any address.
/// - Without ([`AdminAuth::loopback_only`]): only requests from a loopback peer are served,
///   others get `403`. The peer is read from [`ConnectInfo<SocketAddr>`](ConnectInfo) (set by
///   [`crate::listener::serve`], or by axum's `into_make_service_with_connect_info`); a request
///   without it is refused.
///
/// `Debug` never shows the token.
#[derive(Clone, Default)]
pub struct AdminAuth {
    token: Option<Arc<SecretString>>,
}

impl fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = if self.token.is_some() {
            "set"
        } else {
            "none (loopback only)"
        };
        f.debug_struct("AdminAuth").field("token", &token).finish()
    }
}

impl AdminAuth {
    /// Requests need `Authorization: Bearer <token>`.
    pub fn token(token: SecretString) -> Self {
        AdminAuth {
            token: Some(Arc::new(token)),
        }
    }

    /// No token: loopback peers only.
    pub fn loopback_only() -> Self {
        AdminAuth { token: None }
    }

    /// The token in [`ADMIN_TOKEN_ENV`] read by `lookup`, or loopback only when it is unset.
    ///
    /// # Errors
    /// `Config` when it is set but empty or shorter than 16 characters (the value is never
    /// shown).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        match lookup(ADMIN_TOKEN_ENV) {
            None => Ok(AdminAuth::loopback_only()),
            Some(t) if t.trim().chars().count() < 16 => Err(Error::config(
                "the admin token is empty or shorter than 16 characters",
            )
            .with_context("variable", ADMIN_TOKEN_ENV)),
            Some(t) => Ok(AdminAuth::token(SecretString::from(t.trim().to_string()))),
        }
    }

    /// Whether a token is required.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `given` is the token (constant time); `false` without a token.
    pub(crate) fn token_matches(&self, given: &str) -> bool {
        self.token.as_ref().is_some_and(|t| {
            bool::from(given.trim().as_bytes().ct_eq(t.expose_secret().as_bytes()))
        })
    }

    /// Whether the request comes from a loopback peer.
    pub(crate) fn loopback(request: &Request) -> bool {
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .is_some_and(|ConnectInfo(peer)| peer.ip().to_canonical().is_loopback())
    }

    fn check(&self, request: &Request) -> std::result::Result<(), Refused> {
        match &self.token {
            Some(token) => {
                let given = request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        v.strip_prefix("Bearer ")
                            .or_else(|| v.strip_prefix("bearer "))
                    })
                    .map(str::trim)
                    .unwrap_or("");
                if bool::from(given.as_bytes().ct_eq(token.expose_secret().as_bytes())) {
                    Ok(())
                } else {
                    Err(Refused::NoToken)
                }
            }
            None => {
                if Self::loopback(request) {
                    Ok(())
                } else {
                    Err(Refused::NotLoopback)
                }
            }
        }
    }
}

/// Why [`AdminAuth`] refused a request.
enum Refused {
    NoToken,
    NotLoopback,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::NoToken => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "admin token required",
            )
                .into_response(),
            Refused::NotLoopback => (
                StatusCode::FORBIDDEN,
                "admin API without a token answers loopback only",
            )
                .into_response(),
        }
    }
}

async fn authorize(State(auth): State<AdminAuth>, request: Request, next: Next) -> Response {
    match auth.check(&request) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

/// The admin API, behind `auth` ([`AdminAuth`]). Serve it on its own private listener, never
/// beside the webhooks (it names connections, shows errors and requeues dead letters):
/// - `GET /admin/status`: [`Status`] as JSON;
/// - `GET /admin/rejects?connection=&stream=&limit=`: quarantined records ([`RejectView`],
///   without their bytes), oldest first (limit 100 by default, at most 1000);
/// - `POST /admin/dead-letters/{id}/retry`: requeues a dead letter (`204`; `404` if it is not dead);
/// - `GET /metrics`: Prometheus text (webhook outcomes, worker outcomes, inbox gauges); behind
///   the same token.
pub fn admin_router(state: ServerState, auth: AdminAuth) -> Router {
    Router::new()
        .route("/admin/status", get(status_handler))
        .route("/admin/rejects", get(rejects_handler))
        .route("/admin/dead-letters/{id}/retry", post(retry_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(state)
        .layer(middleware::from_fn_with_state(auth, authorize))
}

/// The state of the server, as `status` prints it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// Each connection with its health and latest runs.
    pub connections: Vec<ConnectionStatusView>,
    /// Inbox events per state, at most [`crate::state::INBOX_COUNTS_MAX_AGE`] old
    /// ([`ServerState::inbox_counts`]).
    pub inbox: InboxCounts,
    /// Quarantined records, all connections (each connection's count is in `connections`).
    pub rejects: u64,
    /// The oldest dead letters (up to 50).
    pub dead_letters: Vec<DeadLetterView>,
    /// Scheduled jobs.
    pub schedules: Vec<ScheduleRow>,
    /// The latest failed runs (up to 10).
    pub recent_errors: Vec<RunView>,
    /// Counters of this process.
    pub metrics: MetricsSnapshot,
}

/// One connection in [`Status`].
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ConnectionStatusView {
    /// Its id.
    pub id: String,
    /// Its platform.
    pub platform: String,
    /// `active`, `needs_reauth`, `disabled`, `failing` (`active` if not stored yet).
    pub status: String,
    /// Why.
    pub detail: Option<String>,
    /// Records of this connection in quarantine (`apex-connect rejects list`).
    pub rejects: u64,
    /// The latest run of each stream.
    pub last_runs: Vec<RunView>,
}

/// A sync run in [`Status`].
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RunView {
    /// Run id.
    pub id: i64,
    /// Connection.
    pub connection: String,
    /// Stream.
    pub stream: String,
    /// `full` or `incremental`.
    pub kind: &'static str,
    /// `running`, `succeeded`, `failed`, `cancelled`.
    pub status: &'static str,
    /// Start, Unix ms.
    pub started_at: i64,
    /// End, Unix ms.
    pub finished_at: Option<i64>,
    /// Records read.
    pub records_read: u64,
    /// Records applied.
    pub records_applied: u64,
    /// Records quarantined.
    pub records_rejected: u64,
    /// The error.
    pub error: Option<String>,
}

/// A quarantined record in `GET /admin/rejects` (without its bytes).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RejectView {
    /// Its id in the store.
    pub id: i64,
    /// The connection.
    pub connection: String,
    /// The stream.
    pub stream: String,
    /// `parse` (the envelope could not be read) or `map` (the entity could not be mapped).
    pub stage: &'static str,
    /// The object's id, when it could be read.
    pub record_id: Option<String>,
    /// Why it was quarantined.
    pub error: String,
    /// Times it was quarantined or failed a re-drive.
    pub attempts: u32,
    /// Its size in bytes.
    pub bytes: usize,
    /// When it was first quarantined, Unix ms.
    pub first_seen_at: i64,
    /// When it was last quarantined or re-driven, Unix ms.
    pub last_seen_at: i64,
}

impl RejectView {
    /// The view of a stored reject.
    pub fn new(r: &StoredReject) -> Self {
        RejectView {
            id: r.id.0,
            connection: r.connection.to_string(),
            stream: r.reject.stream.to_string(),
            stage: r.reject.stage.as_str(),
            record_id: r.reject.id.clone(),
            error: r.reject.error.clone(),
            attempts: r.attempts,
            bytes: r.reject.raw.len(),
            first_seen_at: r.first_seen_at,
            last_seen_at: r.last_seen_at,
        }
    }
}

/// A dead letter in [`Status`] (without its body).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DeadLetterView {
    /// Inbox id (for the retry endpoint).
    pub id: i64,
    /// Platform.
    pub platform: String,
    /// Connection.
    pub connection: String,
    /// The platform's event id.
    pub event_id: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// When it was dead-lettered, Unix ms.
    pub failed_at: i64,
}

pub(crate) fn run_view(r: &apex_connect_core::store::SyncRun) -> RunView {
    RunView {
        id: r.id.0,
        connection: r.connection.to_string(),
        stream: r.stream.to_string(),
        kind: r.kind.as_str(),
        status: r.status.as_str(),
        started_at: r.started_at,
        finished_at: r.finished_at,
        records_read: r.records_read,
        records_applied: r.records_applied,
        records_rejected: r.records_rejected,
        error: r.error.clone(),
    }
}

/// Collects the [`Status`].
///
/// # Errors
/// `Storage`.
pub async fn status(state: &ServerState) -> Result<Status> {
    let store = state.store();
    let stored: std::collections::BTreeMap<String, _> = store
        .list_connections()
        .await?
        .into_iter()
        .map(|c| (c.id.to_string(), c))
        .collect();
    let mut connections = Vec::new();
    for h in state.connections() {
        let mut last_runs = Vec::new();
        for s in &h.streams {
            if let Some(r) = store.last_run(&h.id, s).await? {
                last_runs.push(run_view(&r));
            }
        }
        let c = stored.get(h.id.as_str());
        connections.push(ConnectionStatusView {
            id: h.id.to_string(),
            platform: h.platform.clone(),
            status: c.map_or("active", |c| c.status.as_str()).to_string(),
            detail: c.and_then(|c| c.status_detail.clone()),
            rejects: store.count_rejects(Some(&h.id)).await?,
            last_runs,
        });
    }
    let dead_letters = store
        .inbox_dead_letters(50)
        .await?
        .into_iter()
        .map(|d| DeadLetterView {
            id: d.id.0,
            platform: d.event.platform,
            connection: d.event.connection.to_string(),
            event_id: d.event.event_id,
            attempts: d.attempts,
            last_error: d.last_error,
            failed_at: d.failed_at,
        })
        .collect();
    let recent_errors = store
        .list_runs(None, 200)
        .await?
        .iter()
        .filter(|r| r.error.is_some())
        .take(10)
        .map(run_view)
        .collect();
    let schedules = store.list_schedules().await?;
    Ok(Status {
        connections,
        inbox: state.inbox_counts().await?,
        rejects: store.count_rejects(None).await?,
        dead_letters,
        schedules,
        recent_errors,
        metrics: state.metrics().snapshot(),
    })
}

async fn status_handler(State(state): State<ServerState>) -> Response {
    match status(&state).await {
        Ok(s) => axum::Json(s).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "status failed");
            (StatusCode::SERVICE_UNAVAILABLE, "status unavailable").into_response()
        }
    }
}

/// The query of `GET /admin/rejects`.
#[derive(Debug, Deserialize)]
struct RejectsQuery {
    connection: Option<String>,
    stream: Option<String>,
    limit: Option<usize>,
}

async fn rejects_handler(
    State(state): State<ServerState>,
    Query(q): Query<RejectsQuery>,
) -> Response {
    let connection = q.connection.map(ConnectionId::from);
    let stream = q.stream.map(StreamId::from);
    let limit = q.limit.unwrap_or(100).min(1000);
    match state
        .store()
        .list_rejects(connection.as_ref(), stream.as_ref(), limit)
        .await
    {
        Ok(rows) => {
            axum::Json(rows.iter().map(RejectView::new).collect::<Vec<_>>()).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "listing rejects failed");
            (StatusCode::SERVICE_UNAVAILABLE, "rejects unavailable").into_response()
        }
    }
}

async fn retry_handler(State(state): State<ServerState>, Path(id): Path<i64>) -> Response {
    match state.store().inbox_requeue(EventId(id)).await {
        Ok(()) => {
            state.forget_inbox_counts().await;
            state.wake().notify_one();
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            (StatusCode::NOT_FOUND, "no such dead letter").into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "requeue failed");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

async fn metrics_handler(State(state): State<ServerState>) -> Response {
    let metrics = state.metrics();
    // The gauges are set by the (shared, cached) reading.
    if metrics.inbox_gauges_due()
        && let Err(e) = state.inbox_counts().await
    {
        tracing::warn!(error = %e, "cannot count inbox events for /metrics");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.prometheus(),
    )
        .into_response()
}

/// The most events `GET /admin/merges` lists.
pub const MAX_MERGES: u32 = 1000;

/// What the identity endpoints answer when `[identity]` is not configured.
const IDENTITY_OFF: &str =
    "identity resolution is off: add an `[identity]` section to the configuration";

/// The identity resolution endpoints, behind `auth` ([`AdminAuth`]), over `graph` (the entity
/// graph `[identity]` configures: [`crate::App::identity`]). Merge it into
/// [`admin_router`] (as `App::admin_router` and `App::serve` do):
/// - `GET /admin/entities/{id}`: the canonical entity
///   ([`apex_connect_identity::CanonicalEntity`]) as JSON; an id merged into another answers
///   the survivor (`requested` says which was asked); `404` when there is none;
/// - `GET /admin/entities?email=..` (or `phone=`, `domain=`, `handle=source:value`, exactly
///   one): the canonical entities holding that identity, normalized as at ingest
///   ([`apex_connect_identity::EntitySummary`]s); `400` without exactly one;
/// - `GET /admin/merges?limit=`: the latest joins and merges, newest first
///   ([`apex_connect_identity::MergeEvent`]s; limit 50 by default, at most [`MAX_MERGES`]);
/// - `POST /admin/entities/{id}/split` with `{"sources": [SourceKey...], "note": ".."}`
///   ([`apex_connect_identity::SourceKey`]: `connection`, `platform`, `object_type`, `id`):
///   a user correction, the listed sources are not the others, kept across syncs until undone
///   ([`apex_connect_identity::SplitOutcome`]; `404` for an unknown entity, `400` for sources
///   that are not its own or that name all of them);
/// - `POST /admin/splits/{split}/unsplit`: undoes a split (`{"unsplit": true}`, or `false`
///   when it was no longer active; `404` for an unknown split).
///
/// With `graph` `None` (identity resolution off) each of them answers `404` with a text
/// saying so.
pub fn identity_router(graph: Option<EntityGraph>, auth: AdminAuth) -> Router {
    let router = match graph {
        Some(graph) => Router::new()
            .route("/admin/entities", get(find_handler))
            .route("/admin/entities/{id}", get(entity_handler))
            .route("/admin/entities/{id}/split", post(split_handler))
            .route("/admin/splits/{split}/unsplit", post(unsplit_handler))
            .route("/admin/merges", get(merges_handler))
            .with_state(graph),
        None => {
            let off = || async { (StatusCode::NOT_FOUND, IDENTITY_OFF) };
            Router::new()
                .route("/admin/entities", get(off))
                .route("/admin/entities/{id}", get(off))
                .route("/admin/entities/{id}/split", post(off))
                .route("/admin/splits/{split}/unsplit", post(off))
                .route("/admin/merges", get(off))
        }
    };
    router.layer(middleware::from_fn_with_state(auth, authorize))
}

/// A graph error as a response: `404` for `NotFound`, `400` for `InvalidInput` (both with
/// their message), `503` otherwise (logged, not shown).
fn graph_error(e: Error, what: &str) -> Response {
    match e.kind() {
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, e.to_string()).into_response(),
        ErrorKind::InvalidInput => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        _ => {
            tracing::warn!(error = %e, "{what} failed");
            (StatusCode::SERVICE_UNAVAILABLE, "entity graph unavailable").into_response()
        }
    }
}

async fn entity_handler(State(graph): State<EntityGraph>, Path(id): Path<i64>) -> Response {
    match graph.canonical(CanonicalId(id)).await {
        Ok(Some(entity)) => axum::Json(entity).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such canonical entity").into_response(),
        Err(e) => graph_error(e, "reading a canonical entity"),
    }
}

/// The query of `GET /admin/entities`: one identity.
#[derive(Debug, Deserialize)]
struct FindQuery {
    email: Option<String>,
    phone: Option<String>,
    domain: Option<String>,
    handle: Option<String>,
}

impl FindQuery {
    fn identity(self) -> std::result::Result<Identity, &'static str> {
        let mut given = [
            self.email.map(Identity::Email),
            self.phone.map(Identity::Phone),
            self.domain.map(Identity::Domain),
            self.handle.map(|h| match h.split_once(':') {
                Some((source, value)) => Identity::Handle {
                    source: source.to_string(),
                    value: value.to_string(),
                },
                // No source: refused below.
                None => Identity::Handle {
                    source: String::new(),
                    value: h,
                },
            }),
        ]
        .into_iter()
        .flatten();
        let one = given
            .next()
            .ok_or("give one of `email`, `phone`, `domain`, `handle=source:value`")?;
        if given.next().is_some() {
            return Err("give only one of `email`, `phone`, `domain`, `handle`");
        }
        if let Identity::Handle { source, .. } = &one
            && source.is_empty()
        {
            return Err("`handle` is `source:value` (e.g. `twitter:annlee`)");
        }
        Ok(one)
    }
}

async fn find_handler(State(graph): State<EntityGraph>, Query(q): Query<FindQuery>) -> Response {
    let identity = match q.identity() {
        Ok(i) => i,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    match graph.find(&identity).await {
        Ok(found) => axum::Json(found).into_response(),
        Err(e) => graph_error(e, "finding canonical entities"),
    }
}

/// The query of `GET /admin/merges`.
#[derive(Debug, Deserialize)]
struct MergesQuery {
    limit: Option<u32>,
}

async fn merges_handler(
    State(graph): State<EntityGraph>,
    Query(q): Query<MergesQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(50).min(MAX_MERGES);
    match graph.recent_merges(limit).await {
        Ok(events) => axum::Json(events).into_response(),
        Err(e) => graph_error(e, "listing merges"),
    }
}

/// The body of `POST /admin/entities/{id}/split`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitBody {
    sources: Vec<SourceKey>,
    #[serde(default)]
    note: Option<String>,
}

async fn split_handler(
    State(graph): State<EntityGraph>,
    Path(id): Path<i64>,
    body: std::result::Result<axum::Json<SplitBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let axum::Json(body) = match body {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    };
    match graph
        .split(CanonicalId(id), &body.sources, body.note.as_deref())
        .await
    {
        Ok(outcome) => axum::Json(outcome).into_response(),
        Err(e) => graph_error(e, "splitting a canonical entity"),
    }
}

async fn unsplit_handler(State(graph): State<EntityGraph>, Path(split): Path<i64>) -> Response {
    match graph.unsplit(split).await {
        Ok(done) => axum::Json(serde_json::json!({ "unsplit": done })).into_response(),
        Err(e) => graph_error(e, "undoing a split"),
    }
}
