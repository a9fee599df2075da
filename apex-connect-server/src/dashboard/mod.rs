//! The admin dashboard: HTML pages for operators, served under `/ui` on the admin listener.
//!
//! - **Sign-in**: the admin token ([`crate::ADMIN_TOKEN_ENV`]) is exchanged at `/ui/login`
//!   for a session cookie (`HttpOnly`, `SameSite=Strict`); without a configured token the
//!   dashboard answers loopback peers only and signs in without one. Every state-changing
//!   request carries the session's CSRF token (form field `csrf`) and, when the browser sends
//!   one, an `Origin` equal to the request's host; `POST /ui/logout` ends the session.
//! - **Pages**: the overview (`/ui`), a connection (`/ui/connections/{id}`), a run
//!   (`/ui/runs/{id}`, its captured log lines, `?level=` filters), the inbox and its dead
//!   letters (`/ui/inbox`, a payload at `/ui/inbox/{id}` with secrets redacted), quarantined
//!   records (`/ui/rejects`).
//! - **Actions** (`POST`, each answered with `303` back to the page): enable / disable a
//!   connection, run a sync now, change a schedule, retry failed runs, retry one or all dead
//!   letters, re-drive quarantined records, connect through OAuth (the callback is
//!   `/ui/oauth/callback` on the admin listener), disconnect (tokens deleted, the connection
//!   disabled so its schedules pause).
//! - **Live**: tables refresh every two seconds through htmx fragments while the page is open.
//!
//! Everything (HTML by maud, htmx 2 vendored, CSS) is served from the binary: it works offline.

mod session;
mod views;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use apex_connect_core::engine::SyncEngine;
use apex_connect_core::oauth::{
    CallbackParams, OAuthClient, OAuthConfig, PkceVerifier, StateToken,
};
use apex_connect_core::store::{ConnectionStatus, EventId, LogLevel, RunId, RunStatus};
use apex_connect_core::{ConnectionId, ErrorKind, Result, Sink, StreamId, TokenStore};
use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use maud::Markup;
use serde::Deserialize;

use crate::admin::AdminAuth;
use crate::scheduler::JobSpec;
use crate::state::ServerState;
use session::{Session, Sessions};

/// An OAuth flow started from the browser, waiting for its callback.
struct Pending {
    connection: ConnectionId,
    client: OAuthClient,
    state: StateToken,
    verifier: PkceVerifier,
    started_at: i64,
}

/// How long a started OAuth flow waits for its callback (10 minutes).
const PENDING_TTL_MS: i64 = 10 * 60 * 1000;
/// OAuth flows waiting at once.
const MAX_PENDING: usize = 64;

struct Inner {
    state: ServerState,
    auth: AdminAuth,
    sink: Arc<dyn Sink>,
    oauth: BTreeMap<ConnectionId, OAuthConfig>,
    sessions: Sessions,
    pending: Mutex<HashMap<String, Pending>>,
}

/// The dashboard's state: the server's, who may sign in, the sink re-drives write to, the
/// OAuth settings of the connections that connect through a browser, and the entity graph.
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
    identity: Option<apex_connect_identity::EntityGraph>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("auth", &self.inner.auth)
            .field("sessions", &self.inner.sessions)
            .field("oauth", &self.inner.oauth.keys().collect::<Vec<_>>())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl Dashboard {
    /// A dashboard over `state`, signing in with `auth`'s token (loopback only without one),
    /// re-driving quarantined records into `sink`.
    pub fn new(state: ServerState, auth: AdminAuth, sink: Arc<dyn Sink>) -> Self {
        Self::with_oauth(state, auth, sink, BTreeMap::new())
    }

    /// [`Dashboard::new`] with the OAuth settings (client id, secret, URLs; the redirect is
    /// set per request) of the connections that can be connected from the browser.
    pub fn with_oauth(
        state: ServerState,
        auth: AdminAuth,
        sink: Arc<dyn Sink>,
        oauth: BTreeMap<ConnectionId, OAuthConfig>,
    ) -> Self {
        Dashboard {
            inner: Arc::new(Inner {
                state,
                auth,
                sink,
                oauth,
                sessions: Sessions::default(),
                pending: Mutex::new(HashMap::new()),
            }),
            identity: None,
        }
    }

    /// Adds the entity pages (`/ui/entities`: find a customer by any identity, a canonical
    /// entity with its sources, fields, identities, relations and history) over `graph`, the
    /// entity graph of `[identity]`.
    pub fn with_identity(mut self, graph: Option<apex_connect_identity::EntityGraph>) -> Self {
        self.identity = graph;
        self
    }

    /// The routes under `/ui`, to merge into the admin listener's router.
    pub fn router(&self) -> Router {
        let open = Router::new()
            .route("/ui/login", get(login_page).post(login))
            .route("/ui/assets/{name}", get(asset))
            .route("/ui/oauth/callback", get(oauth_callback));
        let guarded = Router::new()
            .route("/ui", get(overview))
            .route("/ui/fragments/overview", get(overview_fragment))
            .route("/ui/connections/{id}", get(connection_page))
            .route("/ui/connections/{id}/enable", post(enable))
            .route("/ui/connections/{id}/disable", post(disable))
            .route("/ui/connections/{id}/sync", post(sync_now))
            .route("/ui/connections/{id}/schedule", post(change_schedule))
            .route("/ui/connections/{id}/retry-failed", post(retry_failed))
            .route("/ui/connections/{id}/connect", post(oauth_start))
            .route("/ui/connections/{id}/disconnect", post(disconnect))
            .route("/ui/runs/{id}", get(run_page))
            .route("/ui/inbox", get(inbox_page))
            .route("/ui/inbox/{id}", get(inbox_event_page))
            .route("/ui/dead-letters/{id}/retry", post(retry_dead_letter))
            .route("/ui/dead-letters/retry-all", post(retry_all_dead_letters))
            .route("/ui/rejects", get(rejects_page))
            .route("/ui/rejects/retry", post(redrive))
            .route("/ui/entities", get(entities_page))
            .route("/ui/entities/{id}", get(entity_page))
            .route("/ui/logout", post(logout))
            .layer(middleware::from_fn_with_state(self.clone(), guard));
        open.merge(guarded).with_state(self.clone())
    }

    fn now(&self) -> i64 {
        self.inner.state.clock().now_ms()
    }
}

/// The session of a request that passed the guard.
#[derive(Clone)]
struct Authed(Session);

/// Signed in (and, without a token, from loopback); for `POST`, the CSRF token and origin.
async fn guard(State(d): State<Dashboard>, mut request: Request, next: Next) -> Response {
    if !d.inner.auth.has_token() && !AdminAuth::loopback(&request) {
        return (
            StatusCode::FORBIDDEN,
            "the dashboard without a token answers loopback only",
        )
            .into_response();
    }
    let Some(session) = d.inner.sessions.get(request.headers(), d.now()) else {
        return if request.method() == http::Method::GET {
            Redirect::to("/ui/login").into_response()
        } else {
            (StatusCode::UNAUTHORIZED, "sign in first").into_response()
        };
    };
    if request.method() != http::Method::GET {
        if !same_origin(request.headers()) {
            return (StatusCode::FORBIDDEN, "cross-origin request refused").into_response();
        }
        // The CSRF token: a header (scripts) or the form field (read here, then handed on).
        let header = request
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (parts, body) = request.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
            return (StatusCode::PAYLOAD_TOO_LARGE, "form too large").into_response();
        };
        let field = url::form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned());
        if !session::csrf_ok(&session, header.as_deref().or(field.as_deref())) {
            return (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response();
        }
        request = Request::from_parts(parts, axum::body::Body::from(bytes));
    }
    request.extensions_mut().insert(Authed(session));
    next.run(request).await
}

/// No `Origin` (older browsers, tools), or one whose host is the request's `Host`.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(origin);
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

fn page(markup: Markup) -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'",
            ),
        ],
        Html(markup.into_string()),
    )
        .into_response()
}

fn unavailable(e: &apex_connect_core::Error) -> Response {
    tracing::warn!(error = %e, "dashboard: the store failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the state store is unavailable; try again",
    )
        .into_response()
}

fn back(to: &str) -> Response {
    Redirect::to(to).into_response()
}

async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind): (&'static [u8], &str) = match name.as_str() {
        "htmx-2.0.11.min.js" => (
            include_bytes!("../../assets/htmx-2.0.11.min.js"),
            "text/javascript; charset=utf-8",
        ),
        "app.css" => (views::CSS.as_bytes(), "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

async fn login_page(State(d): State<Dashboard>) -> Response {
    page(views::login(d.inner.auth.has_token(), None))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(
    State(d): State<Dashboard>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    Form(form): Form<LoginForm>,
) -> Response {
    let loopback = peer.is_some_and(|p| p.0.0.ip().to_canonical().is_loopback());
    let has_token = d.inner.auth.has_token();
    let allowed = if has_token {
        d.inner.auth.token_matches(&form.token)
    } else {
        loopback
    };
    if !allowed {
        tracing::warn!("dashboard: a sign-in was refused");
        let mut r = page(views::login(
            has_token,
            Some("That token is not the admin token."),
        ));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    }
    let (id, _) = d.inner.sessions.open(d.now());
    let mut r = back("/ui");
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&id)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    d.inner.sessions.close(&headers);
    let mut r = back("/ui/login");
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn overview(
    State(d): State<Dashboard>,
    axum::Extension(Authed(s)): axum::Extension<Authed>,
) -> Response {
    match views::Overview::load(&d.inner.state, d.now()).await {
        Ok(o) => page(views::overview(&s, &o)),
        Err(e) => unavailable(&e),
    }
}

async fn overview_fragment(
    State(d): State<Dashboard>,
    axum::Extension(Authed(s)): axum::Extension<Authed>,
) -> Response {
    match views::Overview::load(&d.inner.state, d.now()).await {
        Ok(o) => page(views::overview_table(&s, &o)),
        Err(e) => unavailable(&e),
    }
}

fn connection_id(d: &Dashboard, id: &str) -> Option<ConnectionId> {
    let id = ConnectionId::from(id.to_string());
    d.inner.state.connection(&id).map(|_| id)
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("no such {what}")).into_response()
}

async fn connection_page(
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    axum::Extension(Authed(s)): axum::Extension<Authed>,
) -> Response {
    let Some(id) = connection_id(&d, &id) else {
        return not_found("connection");
    };
    let oauth = d.inner.oauth.contains_key(&id);
    match views::ConnectionView::load(&d.inner.state, &id, d.now()).await {
        Ok(c) => page(views::connection(&s, &c, oauth)),
        Err(e) => unavailable(&e),
    }
}

async fn set_status(
    d: &Dashboard,
    id: &str,
    status: ConnectionStatus,
    detail: Option<&str>,
) -> Response {
    let Some(id) = connection_id(d, id) else {
        return not_found("connection");
    };
    let store = d.inner.state.store();
    let result = async {
        if store.get_connection(&id).await?.is_none() {
            return Err(apex_connect_core::Error::new(
                ErrorKind::NotFound,
                "not stored",
            ));
        }
        store.set_connection_status(&id, status, detail).await
    }
    .await;
    match result {
        Ok(()) => {
            tracing::info!(connection = %id, status = status.as_str(), "dashboard: connection status changed");
            back(&format!("/ui/connections/{id}"))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => not_found("connection"),
        Err(e) => unavailable(&e),
    }
}

async fn enable(State(d): State<Dashboard>, Path(id): Path<String>) -> Response {
    set_status(&d, &id, ConnectionStatus::Active, None).await
}

async fn disable(State(d): State<Dashboard>, Path(id): Path<String>) -> Response {
    set_status(
        &d,
        &id,
        ConnectionStatus::Disabled,
        Some("disabled from the dashboard"),
    )
    .await
}

#[derive(Deserialize)]
struct StreamForm {
    #[serde(default)]
    stream: Option<String>,
}

/// Runs a sync now: a scheduled stream is made due (the scheduler starts it within its poll
/// interval, under its lease); a stream without a schedule is run on its own task.
async fn sync_now(
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    Form(f): Form<StreamForm>,
) -> Response {
    let Some(id) = connection_id(&d, &id) else {
        return not_found("connection");
    };
    let Some(handle) = d.inner.state.connection(&id).cloned() else {
        return not_found("connection");
    };
    let streams: Vec<StreamId> = match f.stream.filter(|s| !s.is_empty()) {
        Some(s) if handle.streams.iter().any(|x| x.as_str() == s) => vec![StreamId::from(s)],
        Some(_) => return not_found("stream"),
        None => handle.streams.clone(),
    };
    let store = d.inner.state.store().clone();
    let schedules = match store.list_schedules().await {
        Ok(s) => s,
        Err(e) => return unavailable(&e),
    };
    let now = d.now();
    for stream in streams {
        if schedules
            .iter()
            .any(|r| r.connection == id && r.stream == stream)
        {
            if let Err(e) = store.make_schedule_due(&id, &stream, now).await {
                return unavailable(&e);
            }
        } else {
            let (engine, sink, handle, id) = (
                SyncEngine::new(store.clone()),
                d.inner.sink.clone(),
                handle.clone(),
                id.clone(),
            );
            tokio::spawn(async move {
                let options = apex_connect_core::SyncOptions::new();
                if let Err(e) = engine
                    .run(
                        handle.connector.as_ref(),
                        &id,
                        &stream,
                        sink.as_ref(),
                        options,
                    )
                    .await
                {
                    tracing::warn!(connection = %id, %stream, error = %e, "dashboard: sync failed");
                }
            });
        }
        tracing::info!(connection = %id, "dashboard: sync requested");
    }
    back(&format!("/ui/connections/{id}"))
}

#[derive(Deserialize)]
struct ScheduleForm {
    stream: String,
    schedule: String,
    #[serde(default)]
    full: Option<String>,
}

async fn change_schedule(
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    axum::Extension(Authed(s)): axum::Extension<Authed>,
    Form(f): Form<ScheduleForm>,
) -> Response {
    let Some(id) = connection_id(&d, &id) else {
        return not_found("connection");
    };
    let known = d
        .inner
        .state
        .connection(&id)
        .is_some_and(|h| h.streams.iter().any(|x| x.as_str() == f.stream));
    if !known {
        return not_found("stream");
    }
    let job = match JobSpec::parse(id.clone(), StreamId::from(f.stream.clone()), &f.schedule) {
        Ok(job) => job.full(f.full.is_some()),
        Err(e) => {
            // Shown on the connection's page, with what was typed.
            return match views::ConnectionView::load(&d.inner.state, &id, d.now()).await {
                Ok(c) => {
                    let oauth = d.inner.oauth.contains_key(&id);
                    let mut r = page(views::connection_with_error(
                        &s,
                        &c,
                        oauth,
                        &format!("{}: {}", f.stream, e),
                    ));
                    *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
                    r
                }
                Err(e) => unavailable(&e),
            };
        }
    };
    let now = d.now();
    match d
        .inner
        .state
        .store()
        .upsert_schedule(&job.entry(now), now)
        .await
    {
        Ok(()) => {
            tracing::info!(connection = %id, stream = %f.stream, spec = %job.spec, "dashboard: schedule changed");
            back(&format!("/ui/connections/{id}"))
        }
        Err(e) => unavailable(&e),
    }
}

/// Makes every scheduled stream of the connection whose last run failed due now.
async fn retry_failed(State(d): State<Dashboard>, Path(id): Path<String>) -> Response {
    let Some(id) = connection_id(&d, &id) else {
        return not_found("connection");
    };
    let store = d.inner.state.store();
    let rows = match store.list_schedules().await {
        Ok(r) => r,
        Err(e) => return unavailable(&e),
    };
    let now = d.now();
    for r in rows
        .iter()
        .filter(|r| r.connection == id && r.last_status == Some(RunStatus::Failed))
    {
        if let Err(e) = store.make_schedule_due(&r.connection, &r.stream, now).await {
            return unavailable(&e);
        }
    }
    back(&format!("/ui/connections/{id}"))
}

/// Starts the OAuth flow: a fresh state and PKCE verifier, the callback on this listener.
async fn oauth_start(
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(id) = connection_id(&d, &id) else {
        return not_found("connection");
    };
    let Some(config) = d.inner.oauth.get(&id) else {
        return (
            StatusCode::CONFLICT,
            "this connection does not connect through OAuth",
        )
            .into_response();
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return (StatusCode::BAD_REQUEST, "no Host header").into_response();
    };
    let redirect = format!("http://{host}/ui/oauth/callback");
    let started = OAuthClient::with_default_http(config.clone().with_redirect_url(redirect))
        .and_then(|client| client.authorize_url().map(|r| (client, r)));
    let (client, request) = match started {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(connection = %id, error = %e, "dashboard: cannot start OAuth");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the OAuth settings are incomplete",
            )
                .into_response();
        }
    };
    let now = d.now();
    let key = request.state.expose_secret().to_string();
    {
        let mut pending = d.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, p| now.saturating_sub(p.started_at) < PENDING_TTL_MS);
        if pending.len() >= MAX_PENDING {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                "too many authorizations in progress",
            )
                .into_response();
        }
        pending.insert(
            key,
            Pending {
                connection: id.clone(),
                client,
                state: request.state,
                verifier: request.pkce_verifier,
                started_at: now,
            },
        );
    }
    tracing::info!(connection = %id, "dashboard: OAuth authorization started");
    back(request.url.as_str())
}

/// The platform's redirect: no session cookie arrives here (`SameSite=Strict` cookies are
/// not sent on a cross-site navigation), so the one-time `state` is what authenticates it.
async fn oauth_callback(
    State(d): State<Dashboard>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(state) = q.get("state") else {
        return (StatusCode::BAD_REQUEST, "no state").into_response();
    };
    let pending = {
        let mut pending = d.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.remove(state.as_str())
    };
    let Some(p) = pending.filter(|p| d.now().saturating_sub(p.started_at) < PENDING_TTL_MS) else {
        return page(views::callback(
            None,
            "This authorization is unknown or expired: start it again from the dashboard.",
        ));
    };
    if let Some(error) = q.get("error") {
        let error: String = error.chars().take(64).collect();
        tracing::warn!(connection = %p.connection, %error, "dashboard: OAuth authorization refused");
        return page(views::callback(
            Some(&p.connection),
            &format!("The platform refused the authorization ({error})."),
        ));
    }
    let Some(code) = q.get("code") else {
        return page(views::callback(
            Some(&p.connection),
            "The callback carried no code.",
        ));
    };
    let callback = CallbackParams::new(code.clone(), state.clone());
    let result = async {
        let tokens = p
            .client
            .exchange_code(&callback, &p.state, &p.verifier)
            .await?;
        crate::connections::store_tokens(d.inner.state.store(), &p.connection, &tokens).await
    }
    .await;
    match result {
        Ok(()) => {
            tracing::info!(connection = %p.connection, "dashboard: connected through OAuth");
            page(views::callback(
                Some(&p.connection),
                "Connected: the tokens are stored, encrypted.",
            ))
        }
        Err(e) => {
            tracing::warn!(connection = %p.connection, error = %e, "dashboard: OAuth code exchange failed");
            page(views::callback(
                Some(&p.connection),
                "The code exchange failed: see the service's log.",
            ))
        }
    }
}

/// Deletes the tokens and disables the connection (its schedules pause).
async fn disconnect(State(d): State<Dashboard>, Path(id): Path<String>) -> Response {
    let Some(id) = connection_id(&d, &id) else {
        return not_found("connection");
    };
    let store = d.inner.state.store();
    if let Err(e) = TokenStore::delete(store.as_ref(), &id).await
        && e.kind() != ErrorKind::NotFound
    {
        return unavailable(&e);
    }
    tracing::info!(connection = %id, "dashboard: disconnected (tokens deleted)");
    set_status(
        &d,
        id.as_str(),
        ConnectionStatus::Disabled,
        Some("disconnected from the dashboard: tokens deleted"),
    )
    .await
}

#[derive(Deserialize)]
struct LevelQuery {
    level: Option<String>,
}

async fn run_page(
    State(d): State<Dashboard>,
    Path(id): Path<i64>,
    Query(q): Query<LevelQuery>,
    axum::Extension(Authed(s)): axum::Extension<Authed>,
) -> Response {
    let store = d.inner.state.store();
    let level = q.level.as_deref().and_then(|l| l.parse::<LogLevel>().ok());
    let result = async {
        let Some(run) = store.get_run(RunId(id)).await? else {
            return Ok(None);
        };
        let lines = store
            .run_logs(RunId(id), level, views::MAX_LOG_LINES)
            .await?;
        Ok::<_, apex_connect_core::Error>(Some((run, lines)))
    }
    .await;
    match result {
        Ok(Some((run, lines))) => page(views::run(&s, &run, &lines, level, d.now())),
        Ok(None) => not_found("run"),
        Err(e) => unavailable(&e),
    }
}

async fn inbox_page(
    State(d): State<Dashboard>,
    axum::Extension(Authed(s)): axum::Extension<Authed>,
) -> Response {
    let store = d.inner.state.store();
    let result = async {
        Ok::<_, apex_connect_core::Error>((
            d.inner.state.inbox_counts().await?,
            store.inbox_dead_letters(views::MAX_DEAD_LETTERS).await?,
        ))
    }
    .await;
    match result {
        Ok((counts, dead)) => page(views::inbox(&s, &counts, &dead, d.now())),
        Err(e) => unavailable(&e),
    }
}

async fn inbox_event_page(
    State(d): State<Dashboard>,
    Path(id): Path<i64>,
    axum::Extension(Authed(s)): axum::Extension<Authed>,
) -> Response {
    match d.inner.state.store().inbox_dead_letters(1000).await {
        Ok(dead) => match dead.iter().find(|e| e.id == EventId(id)) {
            Some(e) => page(views::inbox_event(&s, e)),
            None => not_found("dead letter"),
        },
        Err(e) => unavailable(&e),
    }
}

async fn retry_dead_letter(State(d): State<Dashboard>, Path(id): Path<i64>) -> Response {
    match d.inner.state.store().inbox_requeue(EventId(id)).await {
        Ok(()) => {
            d.inner.state.forget_inbox_counts().await;
            d.inner.state.wake().notify_one();
            tracing::info!(event = id, "dashboard: dead letter requeued");
            back("/ui/inbox")
        }
        Err(e) if e.kind() == ErrorKind::NotFound => not_found("dead letter"),
        Err(e) => unavailable(&e),
    }
}

async fn retry_all_dead_letters(State(d): State<Dashboard>) -> Response {
    let store = d.inner.state.store();
    let mut requeued = 0u64;
    // Bounded: at most 10 rounds of 1000.
    for _ in 0..10 {
        let dead = match store.inbox_dead_letters(1000).await {
            Ok(d) => d,
            Err(e) => return unavailable(&e),
        };
        if dead.is_empty() {
            break;
        }
        for e in &dead {
            match store.inbox_requeue(e.id).await {
                Ok(()) => requeued += 1,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return unavailable(&e),
            }
        }
    }
    d.inner.state.forget_inbox_counts().await;
    d.inner.state.wake().notify_one();
    tracing::info!(requeued, "dashboard: dead letters requeued");
    back("/ui/inbox")
}

#[derive(Deserialize)]
struct RejectsQuery {
    connection: Option<String>,
}

async fn rejects_page(
    State(d): State<Dashboard>,
    Query(q): Query<RejectsQuery>,
    axum::Extension(Authed(s)): axum::Extension<Authed>,
) -> Response {
    let connection = q
        .connection
        .filter(|c| !c.is_empty())
        .map(ConnectionId::from);
    match d
        .inner
        .state
        .store()
        .list_rejects(connection.as_ref(), None, views::MAX_REJECTS)
        .await
    {
        Ok(rows) => page(views::rejects(&s, &rows, connection.as_ref(), d.now())),
        Err(e) => unavailable(&e),
    }
}

#[derive(Deserialize)]
struct RedriveForm {
    #[serde(default)]
    connection: Option<String>,
}

/// Re-drives quarantined records (of one connection, or all): read, mapped and written again.
async fn redrive(State(d): State<Dashboard>, Form(f): Form<RedriveForm>) -> Response {
    let only = f.connection.filter(|c| !c.is_empty());
    let engine = SyncEngine::new(d.inner.state.store().clone());
    let mut report = (0u64, 0u64, 0u64);
    for handle in d.inner.state.connections() {
        if only.as_deref().is_some_and(|c| c != handle.id.as_str()) {
            continue;
        }
        let r: Result<_> = engine
            .redrive(
                handle.connector.as_ref(),
                &handle.id,
                None,
                d.inner.sink.as_ref(),
                1000,
            )
            .await;
        match r {
            Ok(r) => {
                report.0 += r.tried;
                report.1 += r.written;
                report.2 += r.failed;
            }
            Err(e) => return unavailable(&e),
        }
    }
    tracing::info!(
        tried = report.0,
        written = report.1,
        failed = report.2,
        "dashboard: rejects re-driven"
    );
    back(&match only {
        Some(c) => format!(
            "/ui/rejects?connection={}",
            url::form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>()
        ),
        None => "/ui/rejects".to_string(),
    })
}

#[derive(Deserialize)]
struct EntitySearch {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    q: Option<String>,
}

/// Find by identity (`kind` = email, phone, domain or handle `source:value`) and the latest
/// merges.
async fn entities_page(
    State(d): State<Dashboard>,
    Query(q): Query<EntitySearch>,
    axum::Extension(Authed(s)): axum::Extension<Authed>,
) -> Response {
    let Some(graph) = &d.identity else {
        return identity_off(&s);
    };
    let text = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let kind = q.kind.as_deref().unwrap_or("email");
    let identity = text.map(|t| match kind {
        "phone" => Ok(apex_connect_core::Identity::Phone(t.to_string())),
        "domain" => Ok(apex_connect_core::Identity::Domain(t.to_string())),
        "handle" => match t.split_once(':') {
            Some((source, value)) => Ok(apex_connect_core::Identity::Handle {
                source: source.to_string(),
                value: value.to_string(),
            }),
            None => Err("a handle is source:value (twitter:annlee)"),
        },
        _ => Ok(apex_connect_core::Identity::Email(t.to_string())),
    });
    let result = async {
        let found = match &identity {
            Some(Ok(i)) => Some(graph.find(i).await?),
            _ => None,
        };
        Ok::<_, apex_connect_core::Error>((found, graph.recent_merges(30).await?))
    }
    .await;
    let error = match &identity {
        Some(Err(e)) => Some(*e),
        _ => None,
    };
    match result {
        Ok((found, merges)) => page(views::entities(
            &s,
            kind,
            text.unwrap_or(""),
            found.as_deref(),
            error,
            &merges,
            d.now(),
        )),
        Err(e) => unavailable(&e),
    }
}

async fn entity_page(
    State(d): State<Dashboard>,
    Path(id): Path<i64>,
    axum::Extension(Authed(s)): axum::Extension<Authed>,
) -> Response {
    let Some(graph) = &d.identity else {
        return identity_off(&s);
    };
    let id = apex_connect_identity::CanonicalId(id);
    let result = async {
        let Some(entity) = graph.canonical(id).await? else {
            return Ok(None);
        };
        let history = graph.history(entity.id, 50).await?;
        Ok::<_, apex_connect_core::Error>(Some((entity, history)))
    }
    .await;
    match result {
        Ok(Some((entity, history))) => page(views::entity(&s, &entity, &history)),
        Ok(None) => not_found("entity"),
        Err(e) => unavailable(&e),
    }
}

fn identity_off(s: &Session) -> Response {
    let mut r = page(views::identity_off(s));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}
