//! `apex_connect._native`: the Python bindings of apex-connect (PyO3, abi3).
//!
//! Every call goes to the Rust crates: the platform descriptors build the connectors, core's
//! `SyncEngine` syncs into the store's sink, core's `TokenManager` hands out access tokens,
//! and webhooks go through the server's own receiver (`apex_connect::server::webhook_router`,
//! called in process). Nothing is implemented a second time here: this crate converts values
//! and errors, and turns Rust futures into asyncio awaitables (`pyo3-async-runtimes`, on its
//! tokio runtime).

// Python-facing functions take their keyword arguments as parameters.
#![allow(clippy::too_many_arguments)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use apex_connect::engine::{SyncOptions, SyncReport};
use apex_connect::oauth::{CallbackParams, PkceVerifier, StateToken};
use apex_connect::platform::{
    BuildContext, ConnectionAuth, Platform, SecretKind, Secrets, Settings, oauth_config,
};
use apex_connect::server::config::ConnectionConfig;
use apex_connect::server::{
    ConnectionHandle, InboxAppender, JobSpec, Scheduler, SchedulerConfig, ServerState,
    WorkerConfig, Workers,
};
use apex_connect::store::{Connection, EncryptionKey, OpenedStore, SinkKind};
use apex_connect::webhook::{WebhookError, WebhookRequest};
use apex_connect::{
    ChannelSink, ConnectionId, Connector, ErrorKind, OAuthClient, Record, StreamId, TokenManager,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyStopAsyncIteration, PyStopIteration};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use secrecy::ExposeSecret;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------
// Exceptions: one per `apex_connect::ErrorKind`, under `ApexError`.
// ---------------------------------------------------------------------------------------

create_exception!(
    _native,
    ApexError,
    PyException,
    "Base of every apex-connect error; `kind`, `message`, `context`, `temporary` and `retry_after` mirror the Rust error."
);
create_exception!(
    _native,
    UnauthenticatedError,
    ApexError,
    "ErrorKind::Unauthenticated: the connection needs re-authorization."
);
create_exception!(
    _native,
    PermissionDeniedError,
    ApexError,
    "ErrorKind::PermissionDenied: a scope or permission is missing."
);
create_exception!(_native, NotFoundError, ApexError, "ErrorKind::NotFound.");
create_exception!(
    _native,
    RateLimitedError,
    ApexError,
    "ErrorKind::RateLimited; see `retry_after`."
);
create_exception!(
    _native,
    InvalidInputError,
    ApexError,
    "ErrorKind::InvalidInput."
);
create_exception!(_native, ConflictError, ApexError, "ErrorKind::Conflict.");
create_exception!(
    _native,
    UnsupportedError,
    ApexError,
    "ErrorKind::Unsupported."
);
create_exception!(
    _native,
    ConfigError,
    ApexError,
    "ErrorKind::Config: incomplete or inconsistent configuration."
);
create_exception!(
    _native,
    UpstreamError,
    ApexError,
    "ErrorKind::Upstream: the platform answered an error of its own."
);
create_exception!(
    _native,
    InvalidResponseError,
    ApexError,
    "ErrorKind::InvalidResponse."
);
create_exception!(_native, NetworkError, ApexError, "ErrorKind::Network.");
create_exception!(
    _native,
    StorageError,
    ApexError,
    "ErrorKind::Storage: the state store failed."
);
create_exception!(
    _native,
    OperationCancelledError,
    ApexError,
    "ErrorKind::Cancelled."
);
create_exception!(
    _native,
    UnexpectedError,
    ApexError,
    "ErrorKind::Unexpected."
);
create_exception!(
    _native,
    WebhookVerificationError,
    ApexError,
    "A webhook refused by the platform's verifier; `status` is the HTTP answer (401 or 400), `reason` a short code."
);
create_exception!(
    _native,
    BadSignatureError,
    WebhookVerificationError,
    "Missing or wrong signature (401)."
);
create_exception!(
    _native,
    WebhookExpiredError,
    WebhookVerificationError,
    "Signed timestamp outside the tolerance (401)."
);
create_exception!(
    _native,
    MalformedWebhookError,
    WebhookVerificationError,
    "Signed but unusable request (400)."
);

/// A Rust error as the typed Python exception of its kind, with the same message
/// (`Display` of the Rust error) and its fields as attributes.
fn py_err(e: apex_connect::Error) -> PyErr {
    let text = e.to_string();
    let err = match e.kind() {
        ErrorKind::Unauthenticated => UnauthenticatedError::new_err(text),
        ErrorKind::PermissionDenied => PermissionDeniedError::new_err(text),
        ErrorKind::NotFound => NotFoundError::new_err(text),
        ErrorKind::RateLimited => RateLimitedError::new_err(text),
        ErrorKind::InvalidInput => InvalidInputError::new_err(text),
        ErrorKind::Conflict => ConflictError::new_err(text),
        ErrorKind::Unsupported => UnsupportedError::new_err(text),
        ErrorKind::Config => ConfigError::new_err(text),
        ErrorKind::Upstream => UpstreamError::new_err(text),
        ErrorKind::InvalidResponse => InvalidResponseError::new_err(text),
        ErrorKind::Network => NetworkError::new_err(text),
        ErrorKind::Storage => StorageError::new_err(text),
        ErrorKind::Cancelled => OperationCancelledError::new_err(text),
        _ => UnexpectedError::new_err(text),
    };
    Python::attach(|py| {
        let v = err.value(py);
        let context = PyDict::new(py);
        for (k, val) in e.context() {
            let _ = context.set_item(*k, val);
        }
        let _ = v.setattr("kind", e.kind().as_str());
        let _ = v.setattr("message", e.message());
        let _ = v.setattr("context", context);
        let _ = v.setattr("temporary", e.is_temporary());
        let _ = v.setattr("retry_after", e.retry_after().map(|d| d.as_secs_f64()));
    });
    err
}

/// A Python-side error of `kind` with the same attributes as the Rust errors'.
fn err_of(kind: ErrorKind, msg: String) -> PyErr {
    py_err(apex_connect::Error::new(kind, msg))
}

fn invalid_input(msg: impl Into<String>) -> PyErr {
    err_of(ErrorKind::InvalidInput, msg.into())
}

fn config_err(msg: impl Into<String>) -> PyErr {
    err_of(ErrorKind::Config, msg.into())
}

fn unexpected(msg: impl Into<String>) -> PyErr {
    err_of(ErrorKind::Unexpected, msg.into())
}

fn webhook_err(e: &WebhookError) -> PyErr {
    let text = e.to_string();
    let (err, status, reason) = match e {
        WebhookError::OutsideTolerance { .. } => {
            (WebhookExpiredError::new_err(text), 401u16, "expired")
        }
        WebhookError::Malformed(_) => (MalformedWebhookError::new_err(text), 400, "malformed"),
        WebhookError::MissingHeader(_) => (BadSignatureError::new_err(text), 401, "missing_header"),
        WebhookError::NoSecret => (BadSignatureError::new_err(text), 401, "no_secret"),
        _ => (BadSignatureError::new_err(text), 401, "bad_signature"),
    };
    Python::attach(|py| {
        let v = err.value(py);
        let _ = v.setattr("kind", "webhook");
        let _ = v.setattr("message", e.to_string());
        let _ = v.setattr("context", PyDict::new(py));
        let _ = v.setattr("temporary", false);
        let _ = v.setattr("retry_after", py.None());
        let _ = v.setattr("status", status);
        let _ = v.setattr("reason", reason);
    });
    err
}

type PyRes<T> = PyResult<T>;

fn rt<T>(r: apex_connect::Result<T>) -> PyRes<T> {
    r.map_err(py_err)
}

fn json_of(py: Python<'_>, obj: Option<&Bound<'_, PyAny>>) -> PyRes<serde_json::Value> {
    let Some(obj) = obj else {
        return Ok(serde_json::Value::Null);
    };
    if obj.is_none() {
        return Ok(serde_json::Value::Null);
    }
    let json = py.import("json")?;
    let text: String = json.call_method1("dumps", (obj,))?.extract()?;
    serde_json::from_str(&text).map_err(|e| invalid_input(e.to_string()))
}

fn header_map(headers: &BTreeMap<String, String>) -> PyRes<http::HeaderMap> {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| invalid_input(format!("not a header name: {k:?}")))?;
        let value = http::HeaderValue::from_str(v)
            .map_err(|_| invalid_input(format!("not a header value for {k}")))?;
        map.append(name, value);
    }
    Ok(map)
}

// ---------------------------------------------------------------------------------------
// Store and connections.
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
struct Conn {
    id: ConnectionId,
    platform: Arc<dyn Platform>,
    settings: Settings,
    secrets: Secrets,
    connector: Arc<dyn Connector>,
    tokens: Option<Arc<TokenManager>>,
}

struct StoreInner {
    opened: OpenedStore,
    location: String,
    connections: Mutex<BTreeMap<String, Conn>>,
    router: Mutex<Option<axum::Router>>,
    state: Mutex<Option<ServerState>>,
}

impl StoreInner {
    fn conn(&self, id: &str) -> PyRes<Conn> {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| {
                py_err(
                    apex_connect::Error::new(
                        ErrorKind::NotFound,
                        "no connection of this id is configured",
                    )
                    .with_context("connection", id),
                )
            })
    }

    /// The receiver's state over the configured connections (rebuilt after `configure`).
    fn server_state(&self) -> ServerState {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = guard.as_ref() {
            return s.clone();
        }
        // Group commit, as the server runs it: one writer task appends every queued request's
        // events in one transaction (SQLite has one writer). It is spawned on the runtime.
        let _runtime = pyo3_async_runtimes::tokio::get_runtime().enter();
        let store = self.opened.store().clone();
        let mut b =
            ServerState::builder(store.clone()).appender(InboxAppender::group_commit(store, 512));
        for c in self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            b = b.connection(ConnectionHandle::new(c.id.clone(), c.connector.clone()));
        }
        let state = b.build();
        *guard = Some(state.clone());
        state
    }

    fn router(&self) -> axum::Router {
        let mut guard = self.router.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = guard.as_ref() {
            return r.clone();
        }
        let r = apex_connect::server::webhook_router(self.server_state());
        *guard = Some(r.clone());
        r
    }
}

/// A state store (SQLite file or PostgreSQL database) with the connections configured on it.
///
/// Open it with `await Store.open(location, key=...)`; use it as an async context manager to
/// close it at the end.
#[pyclass(frozen, module = "apex_connect")]
struct Store {
    inner: Arc<StoreInner>,
}

/// The result of one sync run (`SyncEngine::run`).
#[pyclass(frozen, get_all, module = "apex_connect")]
#[derive(Clone)]
struct SyncResult {
    run_id: String,
    records_read: u64,
    applied: u64,
    unchanged: u64,
    rejected: u64,
    pages: u64,
    elapsed: f64,
    has_cursor: bool,
}

#[pymethods]
impl SyncResult {
    fn __repr__(&self) -> String {
        format!(
            "SyncResult(records_read={}, applied={}, unchanged={}, rejected={}, pages={}, elapsed={:.3})",
            self.records_read,
            self.applied,
            self.unchanged,
            self.rejected,
            self.pages,
            self.elapsed
        )
    }
}

impl From<SyncReport> for SyncResult {
    fn from(r: SyncReport) -> Self {
        SyncResult {
            run_id: r.run_id.to_string(),
            records_read: r.records_read,
            applied: r.applied,
            unchanged: r.unchanged,
            rejected: r.rejected,
            pages: r.pages,
            elapsed: r.elapsed.as_secs_f64(),
            has_cursor: r.cursor.is_some(),
        }
    }
}

/// An authorization-code request in progress: send the user to `url`, keep the object (its
/// state and PKCE verifier are secret: no `repr` shows them) for `Store.exchange_code`.
#[pyclass(frozen, module = "apex_connect")]
struct AuthorizationRequest {
    connection: String,
    redirect_uri: String,
    #[pyo3(get)]
    url: String,
    state: StateToken,
    verifier: PkceVerifier,
}

#[pymethods]
impl AuthorizationRequest {
    /// The `state` to compare with the callback's (secret: keep it server side).
    #[getter]
    fn state(&self) -> String {
        self.state.expose_secret().to_string()
    }

    fn __repr__(&self) -> String {
        format!(
            "AuthorizationRequest(connection={:?}, url={:?}, state=<redacted>, verifier=<redacted>)",
            self.connection,
            apex_connect::error::redact_url(&self.url)
        )
    }
}

/// The receiver's answer to one webhook request.
#[pyclass(frozen, get_all, module = "apex_connect")]
struct WebhookResponse {
    status: u16,
    content_type: String,
    body: Py<PyBytes>,
}

#[pymethods]
impl WebhookResponse {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "WebhookResponse(status={}, body={:?})",
            self.status,
            String::from_utf8_lossy(self.body.as_bytes(py))
        )
    }
}

/// Counts of the durable inbox.
#[pyclass(frozen, get_all, module = "apex_connect")]
struct InboxCounts {
    pending: u64,
    in_flight: u64,
    done: u64,
    dead: u64,
}

#[pymethods]
impl InboxCounts {
    fn __repr__(&self) -> String {
        format!(
            "InboxCounts(pending={}, in_flight={}, done={}, dead={})",
            self.pending, self.in_flight, self.done, self.dead
        )
    }
}

fn storage_key(key: Option<&str>) -> PyRes<EncryptionKey> {
    match key {
        Some(k) => rt(EncryptionKey::from_base64(k)),
        None => Ok(EncryptionKey::generate()),
    }
}

#[pymethods]
impl Store {
    /// Opens (creating and migrating when needed) the store at `location`: a SQLite file path,
    /// a `sqlite:` URL, `memory:`, or a `postgres://user@host/db` URL (password from
    /// `PGPASSWORD` / `~/.pgpass`). OAuth tokens are encrypted with `key` (base64 of 32
    /// bytes); without a key one is generated for this process only.
    #[staticmethod]
    #[pyo3(signature = (location, key=None))]
    fn open<'py>(
        py: Python<'py>,
        location: String,
        key: Option<String>,
    ) -> PyRes<Bound<'py, PyAny>> {
        let key = storage_key(key.as_deref())?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let opened = rt(apex_connect::store::open(&location, key).await)?;
            Ok(Store {
                inner: Arc::new(StoreInner {
                    opened,
                    location: apex_connect::error::redact_url(&location),
                    connections: Mutex::new(BTreeMap::new()),
                    router: Mutex::new(None),
                    state: Mutex::new(None),
                }),
            })
        })
    }

    /// The platforms compiled into this build.
    #[staticmethod]
    fn platforms() -> Vec<&'static str> {
        apex_connect::platforms().names().collect()
    }

    /// Configures connection `id` of `platform` (see `Store.platforms()`): the platform checks
    /// `settings` (a misspelt setting is a `ConfigError`), core resolves its authentication
    /// (a static credential from `secrets`, or OAuth tokens from this store when `client_id`
    /// is set), and the platform builds its connector. The connection is saved in the store.
    #[pyo3(signature = (id, platform, *, settings=None, secrets=None, base_url=None, streams=None))]
    fn configure<'py>(
        &self,
        py: Python<'py>,
        id: String,
        platform: String,
        settings: Option<&Bound<'py, PyAny>>,
        secrets: Option<BTreeMap<String, String>>,
        base_url: Option<String>,
        streams: Option<Vec<String>>,
    ) -> PyRes<Bound<'py, PyAny>> {
        let settings = json_of(py, settings)?;
        let settings = if settings.is_null() {
            serde_json::json!({})
        } else {
            settings
        };
        let config: ConnectionConfig = serde_json::from_value(serde_json::json!({
            "id": id,
            "platform": platform,
            "base_url": base_url,
            "streams": streams.unwrap_or_default(),
            "settings": settings,
        }))
        .map_err(|e| config_err(format!("invalid connection configuration: {e}")))?;
        let secrets = Secrets::from_values(secrets.unwrap_or_default());
        let inner = self.inner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let conn = rt(build_connection(&inner.opened, &config, secrets).await)?;
            rt(inner
                .opened
                .store()
                .upsert_connection(&Connection::new(
                    conn.id.clone(),
                    conn.platform.name(),
                    serde_json::Value::Object(conn.settings.as_map().clone()),
                ))
                .await)?;
            inner
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(config.id.clone(), conn);
            *inner.state.lock().unwrap_or_else(|p| p.into_inner()) = None;
            *inner.router.lock().unwrap_or_else(|p| p.into_inner()) = None;
            Ok(())
        })
    }

    /// The ids of the configured connections.
    fn connections(&self) -> Vec<String> {
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// The streams connection `connection` can sync.
    fn streams(&self, connection: &str) -> PyRes<Vec<String>> {
        let c = self.inner.conn(connection)?;
        Ok(c.connector
            .info()
            .capabilities
            .streams
            .iter()
            .map(|s| s.id.to_string())
            .collect())
    }

    /// Checks the connection's credentials against the platform (one cheap request).
    fn check<'py>(&self, py: Python<'py>, connection: &str) -> PyRes<Bound<'py, PyAny>> {
        let c = self.inner.conn(connection)?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move { rt(c.connector.check().await) })
    }

    /// Starts the OAuth authorization-code flow: the authorize URL with a random `state` and
    /// a PKCE S256 challenge (from the platform's OAuth defaults and the connection's
    /// settings: `client_id`, scopes, `auth_url`).
    fn authorize_url(&self, connection: &str, redirect_uri: String) -> PyRes<AuthorizationRequest> {
        let c = self.inner.conn(connection)?;
        let client = oauth_client(&c, &redirect_uri)?;
        let req = rt(client.authorize_url())?;
        Ok(AuthorizationRequest {
            connection: connection.to_string(),
            redirect_uri,
            url: req.url.to_string(),
            state: req.state,
            verifier: req.pkce_verifier,
        })
    }

    /// Finishes the flow: checks `state` against the request's (constant time), exchanges
    /// `code` with the PKCE verifier, and stores the tokens (encrypted) for the connection.
    fn exchange_code<'py>(
        &self,
        py: Python<'py>,
        request: PyRef<'py, AuthorizationRequest>,
        code: String,
        state: String,
    ) -> PyRes<Bound<'py, PyAny>> {
        let c = self.inner.conn(&request.connection)?;
        let client = oauth_client(&c, &request.redirect_uri)?;
        let expected = request.state.clone();
        let verifier = request.verifier.clone();
        let manager = c.tokens.clone().ok_or_else(|| {
            config_err(format!(
                "connection {} does not authenticate with OAuth (set `client_id`)",
                request.connection
            ))
        })?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let tokens = rt(client
                .exchange_code(&CallbackParams::new(code, state), &expected, &verifier)
                .await)?;
            rt(manager.replace(tokens).await)
        })
    }

    /// A valid access token for the connection (core's single-flight, rotation-safe
    /// `TokenManager`: refreshed when near expiry, one refresh for all concurrent callers).
    fn access_token<'py>(&self, py: Python<'py>, connection: &str) -> PyRes<Bound<'py, PyAny>> {
        let c = self.inner.conn(connection)?;
        let manager = c.tokens.clone().ok_or_else(|| {
            config_err(format!(
                "connection {connection} does not authenticate with OAuth (set `client_id`)"
            ))
        })?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let token = rt(manager.access_token().await)?;
            Ok(token.expose_secret().to_string())
        })
    }

    /// Syncs one stream of a connection into the store's records table (`SyncEngine::run`),
    /// from its durable cursor (`full=True`: from the start). Returns the `SyncResult`.
    /// `sink="null"` reads and commits the cursor but writes the records nowhere (core's
    /// `NullSink`: the Rust-only cost of a sync, the baseline of the iterator benchmark).
    /// `sink=graph` (an `EntityGraph`) resolves the records' entities into that graph
    /// (`EntityGraphSink`, what `[identity]` adds to `apex-connect serve`) instead.
    #[pyo3(signature = (connection, stream, *, full=false, sink=SinkArg::Name("records".to_string())))]
    fn sync<'py>(
        &self,
        py: Python<'py>,
        connection: &str,
        stream: String,
        full: bool,
        sink: SinkArg,
    ) -> PyRes<Bound<'py, PyAny>> {
        let c = self.inner.conn(connection)?;
        let inner = self.inner.clone();
        let sink: Option<Arc<dyn apex_connect::Sink>> = match sink {
            SinkArg::Graph(g) => Some(Arc::new(apex_connect_identity::EntityGraphSink::for_graph(
                g.get().graph.clone(),
            ))),
            SinkArg::Name(name) => match name.as_str() {
                "records" => None,
                "null" => Some(Arc::new(apex_connect::NullSink::new())),
                other => {
                    return Err(invalid_input(format!(
                        "unknown sink {other:?}: \"records\", \"null\" or an EntityGraph"
                    )));
                }
            },
        };
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let engine = apex_connect::SyncEngine::new(inner.opened.store().clone());
            let sink = sink.unwrap_or_else(|| inner.opened.sink(SinkKind::Records));
            let report = rt(engine
                .run(
                    c.connector.as_ref(),
                    &c.id,
                    &StreamId::new(stream),
                    sink.as_ref(),
                    SyncOptions::new().full(full),
                )
                .await)?;
            Ok(SyncResult::from(report))
        })
    }

    /// The records of one stream as an async iterator, read from the durable cursor: the
    /// sync runs into a bounded channel of `buffer` pages, so it reads no faster than the loop
    /// consumes, and a page's cursor is committed once the loop has taken all its records.
    /// With `entities=True` each record also carries its normalized entity (the connector's
    /// mapping, as the entity sinks store it); a record that cannot be mapped is quarantined
    /// (the store's rejects) instead of being yielded.
    #[pyo3(signature = (connection, stream, *, full=false, buffer=2, entities=false))]
    fn records(
        &self,
        connection: &str,
        stream: String,
        full: bool,
        buffer: usize,
        entities: bool,
    ) -> PyRes<RecordStream> {
        let c = self.inner.conn(connection)?;
        let inner = self.inner.clone();
        let (sink, rx) = ChannelSink::acknowledged(buffer.max(1));
        let sink = if entities { sink.with_entities() } else { sink };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let runtime = pyo3_async_runtimes::tokio::get_runtime();
        runtime.spawn(async move {
            let engine = apex_connect::SyncEngine::new(inner.opened.store().clone());
            let r = engine
                .run(
                    c.connector.as_ref(),
                    &c.id,
                    &StreamId::new(stream),
                    &sink,
                    SyncOptions::new().full(full),
                )
                .await;
            drop(sink);
            let _ = done_tx.send(r);
        });
        Ok(RecordStream {
            state: Arc::new(tokio::sync::Mutex::new(StreamState {
                rx,
                current: None,
                pos: 0,
                done: Some(done_rx),
                report: None,
            })),
            report: Arc::new(Mutex::new(None)),
        })
    }

    /// Takes one webhook request through the server's receiver
    /// (`POST /webhooks/{platform}/{connection}`): verification on the raw body, durable
    /// append to the inbox (deduplicated by event id), the answer. `url` is the URL the
    /// platform called (its path must be `/webhooks/{platform}/{connection}`).
    #[pyo3(signature = (method, url, headers, body))]
    fn receive_webhook<'py>(
        &self,
        py: Python<'py>,
        method: String,
        url: String,
        headers: BTreeMap<String, String>,
        body: Vec<u8>,
    ) -> PyRes<Bound<'py, PyAny>> {
        let router = self.inner.router();
        let headers = header_map(&headers)?;
        let mut req = http::Request::builder()
            .method(method.as_str())
            .uri(url.as_str())
            .body(axum::body::Body::from(body))
            .map_err(|e| invalid_input(format!("invalid request: {e}")))?;
        *req.headers_mut() = headers;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let resp = router
                .oneshot(req)
                .await
                .map_err(|e| unexpected(format!("{e}")))?;
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_string();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .map_err(|e| unexpected(format!("{e}")))?;
            Python::attach(|py| {
                Ok(WebhookResponse {
                    status,
                    content_type,
                    body: PyBytes::new(py, &bytes).unbind(),
                })
            })
        })
    }

    /// Verifies a webhook for a configured connection with its platform's verifier (no
    /// storage); raises a `WebhookVerificationError` subclass when refused.
    #[pyo3(signature = (connection, headers, body, url, *, method="POST".to_string()))]
    fn verify(
        &self,
        connection: &str,
        headers: BTreeMap<String, String>,
        body: Vec<u8>,
        url: String,
        method: String,
    ) -> PyRes<Verified> {
        let c = self.inner.conn(connection)?;
        verify_with(c.connector.as_ref(), &headers, &body, &url, &method)
    }

    /// Counts of the durable inbox.
    fn inbox_counts<'py>(&self, py: Python<'py>) -> PyRes<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let c = rt(inner.opened.store().inbox_counts().await)?;
            Ok(InboxCounts {
                pending: c.pending,
                in_flight: c.in_flight,
                done: c.done,
                dead: c.dead,
            })
        })
    }

    /// Runs the server's inbox workers once (`Workers::run_once`): claims the pending webhook
    /// events, fetches what they name and writes it to the records table. Returns how many
    /// events were processed.
    #[pyo3(signature = (worker="python".to_string()))]
    fn process_inbox<'py>(&self, py: Python<'py>, worker: String) -> PyRes<Bound<'py, PyAny>> {
        let state = self.inner.server_state();
        let sink = self.inner.opened.sink(SinkKind::Records);
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let workers = Workers::new(state, sink, WorkerConfig::default());
            rt(workers.run_once(&worker).await)
        })
    }

    /// Starts the server's scheduler and inbox workers on the tokio runtime, in this
    /// process (what a separate `apex-connect serve` would run): `schedules` are
    /// `(connection, stream, every_seconds)` incremental syncs (no jitter) or
    /// `(connection, stream, "cron expression")` (the due times are stored, so a restart
    /// keeps them), `workers` claims the webhook events the
    /// router appended and writes what they name to the records table. Returns a
    /// `Background` handle: `await handle.stop()` (or `async with`) ends both.
    #[pyo3(signature = (*, schedules=Vec::new(), workers=true))]
    fn start_background<'py>(
        &self,
        py: Python<'py>,
        schedules: Vec<(String, String, Bound<'py, PyAny>)>,
        workers: bool,
    ) -> PyRes<Bound<'py, PyAny>> {
        let state = self.inner.server_state();
        let sink = self.inner.opened.sink(SinkKind::Records);
        let mut jobs = Vec::new();
        for (connection, stream, cadence) in schedules {
            self.inner.conn(&connection)?;
            if let Ok(expr) = cadence.extract::<String>() {
                jobs.push(rt(JobSpec::cron(connection, stream, &expr))?);
                continue;
            }
            let every: f64 = cadence.extract().map_err(|_| {
                invalid_input("a schedule's cadence is seconds or a cron expression")
            })?;
            if !(every.is_finite() && every > 0.0) {
                return Err(invalid_input("every_seconds must be a positive number"));
            }
            jobs.push(JobSpec::every(
                connection,
                stream,
                Duration::from_secs_f64(every),
                Duration::ZERO,
            ));
        }
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let cancel = CancellationToken::new();
            let mut tasks = Vec::new();
            if !jobs.is_empty() {
                let mut config = SchedulerConfig::default();
                config.poll = Duration::from_millis(200);
                let scheduler =
                    rt(Scheduler::new(state.clone(), jobs, sink.clone(), config).await)?;
                let c = cancel.clone();
                tasks.push(tokio::spawn(async move { scheduler.run(c).await }));
            }
            if workers {
                let w = Workers::new(state, sink, WorkerConfig::default());
                let c = cancel.clone();
                tasks.push(tokio::spawn(async move { w.run(c).await }));
            }
            Ok(Background {
                cancel,
                tasks: Arc::new(tokio::sync::Mutex::new(tasks)),
            })
        })
    }

    /// Closes the database (SQLite checkpoints its log).
    fn close<'py>(&self, py: Python<'py>) -> PyRes<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            inner.opened.close().await;
            Ok(())
        })
    }

    fn __aenter__<'py>(slf: Bound<'py, Self>) -> PyRes<Bound<'py, PyAny>> {
        awaitable_of(slf.into_any())
    }

    #[pyo3(signature = (*_args))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _args: &Bound<'py, pyo3::types::PyTuple>,
    ) -> PyRes<Bound<'py, PyAny>> {
        self.close(py)
    }

    fn __repr__(&self) -> String {
        format!(
            "Store(location={:?}, connections={:?})",
            self.inner.location,
            self.connections()
        )
    }
}

/// `Store.sync`'s `sink`: a name, or an entity graph.
#[derive(FromPyObject)]
enum SinkArg {
    Graph(Py<EntityGraph>),
    Name(String),
}

/// An awaitable that resolves to `obj` (what `async with` binds for `__aenter__`).
fn awaitable_of(obj: Bound<'_, PyAny>) -> PyRes<Bound<'_, PyAny>> {
    let py = obj.py();
    let obj = obj.unbind();
    pyo3_async_runtimes::tokio::future_into_py(py, async move { Ok(obj) })
}

/// The scheduler and workers started by `Store.start_background`.
#[pyclass(frozen, module = "apex_connect")]
struct Background {
    cancel: CancellationToken,
    tasks: Arc<tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

#[pymethods]
impl Background {
    /// Stops the scheduler and the workers, waiting for the runs in progress to end.
    fn stop<'py>(&self, py: Python<'py>) -> PyRes<Bound<'py, PyAny>> {
        self.cancel.cancel();
        let tasks = self.tasks.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let mut tasks = tasks.lock().await;
            for t in tasks.drain(..) {
                let _ = t.await;
            }
            Ok(())
        })
    }

    /// Whether `stop` was called.
    #[getter]
    fn stopped(&self) -> bool {
        self.cancel.is_cancelled()
    }

    fn __aenter__<'py>(slf: Bound<'py, Self>) -> PyRes<Bound<'py, PyAny>> {
        awaitable_of(slf.into_any())
    }

    #[pyo3(signature = (*_args))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _args: &Bound<'py, pyo3::types::PyTuple>,
    ) -> PyRes<Bound<'py, PyAny>> {
        self.stop(py)
    }

    fn __repr__(&self) -> String {
        format!("Background(stopped={})", self.cancel.is_cancelled())
    }
}

fn oauth_client(c: &Conn, redirect_uri: &str) -> PyRes<OAuthClient> {
    let config =
        rt(oauth_config(c.platform.as_ref(), &c.settings, &c.secrets))?.ok_or_else(|| {
            config_err(format!(
                "connection {} has no OAuth configuration (set `client_id`)",
                c.id
            ))
        })?;
    rt(OAuthClient::with_default_http(
        config.with_redirect_url(redirect_uri),
    ))
}

/// A connection built as `apex-connect serve` builds it (`build_parts`: the token manager kept,
/// so that `access_token` and `exchange_code` reach it).
async fn build_connection(
    opened: &OpenedStore,
    config: &ConnectionConfig,
    secrets: Secrets,
) -> apex_connect::Result<Conn> {
    let platforms = apex_connect::platforms();
    let (platform, settings) = apex_connect::server::connections::check(&platforms, config)?;
    let platform = platform.clone();
    let built = apex_connect::server::connections::build_parts(
        &platforms,
        config,
        &secrets,
        opened.store(),
    )
    .await?;
    Ok(Conn {
        id: ConnectionId::from(config.id.clone()),
        platform,
        settings,
        secrets,
        connector: built.connector,
        tokens: built.tokens,
    })
}

// ---------------------------------------------------------------------------------------
// The entity graph (identity resolution): queries, and a sink for `Store.sync`.
// ---------------------------------------------------------------------------------------

/// The graph's database, kept to close it (the graph holds it as a `dyn GraphStore`).
#[derive(Clone)]
enum GraphDb {
    Sqlite(apex_connect_identity::SqliteGraphStore),
    #[cfg(feature = "postgres")]
    Postgres(apex_connect_identity::PgGraphStore),
}

impl GraphDb {
    async fn close(&self) {
        match self {
            GraphDb::Sqlite(s) => s.close().await,
            #[cfg(feature = "postgres")]
            GraphDb::Postgres(s) => s.close().await,
        }
    }
}

/// Opens the graph at `location`, read as `Store.open` reads store locations: `memory:`, a
/// `sqlite:` URL (its file created when missing unless it says `mode=`), a `postgres://` URL,
/// or else a SQLite file path.
async fn open_graph(
    location: &str,
) -> apex_connect::Result<(apex_connect_identity::EntityGraph, GraphDb)> {
    use apex_connect::store::StoreLocation;
    use apex_connect_identity::{EntityGraph as Graph, SqliteGraphStore};

    let db = match StoreLocation::parse(location)? {
        StoreLocation::Memory => {
            GraphDb::Sqlite(SqliteGraphStore::connect("sqlite::memory:").await?)
        }
        StoreLocation::Sqlite(target) if target.to_ascii_lowercase().starts_with("sqlite:") => {
            let url = if target.contains(":memory:") || target.contains("mode=") {
                target
            } else if target.contains('?') {
                format!("{target}&mode=rwc")
            } else {
                format!("{target}?mode=rwc")
            };
            GraphDb::Sqlite(SqliteGraphStore::connect(&url).await?)
        }
        StoreLocation::Sqlite(path) => GraphDb::Sqlite(SqliteGraphStore::open(path).await?),
        #[cfg(feature = "postgres")]
        StoreLocation::Postgres(url) => {
            GraphDb::Postgres(apex_connect_identity::PgGraphStore::connect(&url).await?)
        }
        #[cfg(not(feature = "postgres"))]
        StoreLocation::Postgres(_) => {
            return Err(apex_connect::Error::config(
                "PostgreSQL entity graphs need the `postgres` feature of apex-connect-py",
            ));
        }
        _ => {
            return Err(apex_connect::Error::config(
                "unsupported entity graph location",
            ));
        }
    };
    let store: Arc<dyn apex_connect_identity::GraphStore> = match &db {
        GraphDb::Sqlite(s) => Arc::new(s.clone()),
        #[cfg(feature = "postgres")]
        GraphDb::Postgres(s) => Arc::new(s.clone()),
    };
    Ok((Graph::new(store), db))
}

/// A serializable Rust value as plain Python objects (dicts, lists, str, int, float, bool,
/// None), through its JSON.
fn py_of<T: serde::Serialize>(py: Python<'_>, value: &T) -> PyRes<Py<PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| unexpected(e.to_string()))?;
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

/// The entity graph of identity resolution (`apex_connect_identity::EntityGraph`): the
/// canonical entities resolved from every platform's records, queried as plain dicts.
///
/// Open it with `await EntityGraph.open(location)`; use it as an async context manager to
/// close it at the end.
#[pyclass(frozen, module = "apex_connect")]
struct EntityGraph {
    graph: apex_connect_identity::EntityGraph,
    db: GraphDb,
    location: String,
}

#[pymethods]
impl EntityGraph {
    /// Opens (creating and migrating when needed) the graph at `location`: a SQLite file path
    /// (it may be the state database), a `sqlite:` URL, `memory:`, or a
    /// `postgres://user@host/db` URL (password from `PGPASSWORD` / `~/.pgpass`).
    #[staticmethod]
    fn open(py: Python<'_>, location: String) -> PyRes<Bound<'_, PyAny>> {
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let (graph, db) = rt(open_graph(&location).await)?;
            Ok(EntityGraph {
                graph,
                db,
                location: apex_connect::error::redact_url(&location),
            })
        })
    }

    /// The canonical entity `id` as a dict (`CanonicalEntity`: `id`, `requested`, `kind`,
    /// `name`, `fields` with provenance, `sources`, `identities`, `relations`, ...), following
    /// merges; `None` for an unknown id or a dissolved entity.
    fn entity<'py>(&self, py: Python<'py>, id: i64) -> PyRes<Bound<'py, PyAny>> {
        let graph = self.graph.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let entity = rt(graph
                .canonical(apex_connect_identity::CanonicalId(id))
                .await)?;
            Python::attach(|py| match entity {
                Some(e) => py_of(py, &e),
                None => Ok(py.None()),
            })
        })
    }

    /// The canonical entities holding one identity (exactly one of `email`, `phone`, `domain`,
    /// `handle=(source, value)`), normalized as ingest normalizes it: a list of dicts
    /// (`EntitySummary`: `id`, `kind`, `name`, `matched`).
    #[pyo3(signature = (*, email=None, phone=None, domain=None, handle=None))]
    fn find<'py>(
        &self,
        py: Python<'py>,
        email: Option<String>,
        phone: Option<String>,
        domain: Option<String>,
        handle: Option<(String, String)>,
    ) -> PyRes<Bound<'py, PyAny>> {
        let given = [
            email.is_some(),
            phone.is_some(),
            domain.is_some(),
            handle.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(invalid_input(
                "find takes exactly one of email=, phone=, domain=, handle=(source, value)",
            ));
        }
        let identity = match (email, phone, domain, handle) {
            (Some(v), ..) => apex_connect::Identity::email(&v),
            (_, Some(v), ..) => apex_connect::Identity::phone(&v),
            (_, _, Some(v), _) => apex_connect::Identity::domain(&v),
            (.., Some((source, value))) => apex_connect::Identity::Handle { source, value },
            _ => unreachable!("exactly one is set"),
        };
        let graph = self.graph.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let found = rt(graph.find(&identity).await)?;
            Python::attach(|py| py_of(py, &found))
        })
    }

    /// The most recent joins and merges, newest first (at most `limit`): a list of dicts
    /// (`MergeEvent`: `id`, `at`, `kind`, `cluster`, `other`, `current`, `trigger`, `keys`,
    /// `detail`).
    #[pyo3(signature = (limit=50))]
    fn merges<'py>(&self, py: Python<'py>, limit: u32) -> PyRes<Bound<'py, PyAny>> {
        let graph = self.graph.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let events = rt(graph.recent_merges(limit).await)?;
            Python::attach(|py| py_of(py, &events))
        })
    }

    /// Closes the database.
    fn close<'py>(&self, py: Python<'py>) -> PyRes<Bound<'py, PyAny>> {
        let db = self.db.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            db.close().await;
            Ok(())
        })
    }

    fn __aenter__<'py>(slf: Bound<'py, Self>) -> PyRes<Bound<'py, PyAny>> {
        awaitable_of(slf.into_any())
    }

    #[pyo3(signature = (*_args))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _args: &Bound<'py, pyo3::types::PyTuple>,
    ) -> PyRes<Bound<'py, PyAny>> {
        self.close(py)
    }

    fn __repr__(&self) -> String {
        format!("EntityGraph(location={:?})", self.location)
    }
}

// ---------------------------------------------------------------------------------------
// Records as an async iterator.
// ---------------------------------------------------------------------------------------

struct StreamState {
    rx: mpsc::Receiver<apex_connect::sinks::OwnedBatch>,
    current: Option<apex_connect::sinks::OwnedBatch>,
    pos: usize,
    done: Option<tokio::sync::oneshot::Receiver<apex_connect::Result<SyncReport>>>,
    report: Option<SyncResult>,
}

impl StreamState {
    /// The next record, acknowledging each page once all its records were taken; `None` at
    /// the end (after the run's result was read).
    async fn next(&mut self) -> apex_connect::Result<Option<SyncRecord>> {
        loop {
            if let Some(r) = self.ready() {
                return Ok(Some(r));
            }
            if let Some(batch) = &mut self.current {
                let n = batch.records.len() as u64;
                batch.ack(apex_connect::Ack::new(n, 0));
                self.current = None;
            }
            match self.rx.recv().await {
                Some(batch) => {
                    self.current = Some(batch);
                    self.pos = 0;
                }
                None => {
                    if let Some(done) = self.done.take() {
                        let report = done.await.map_err(|_| {
                            apex_connect::Error::new(ErrorKind::Cancelled, "the sync task ended")
                        })??;
                        self.report = Some(report.into());
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// The next record without waiting, when the current page has one.
    fn ready(&mut self) -> Option<SyncRecord> {
        let batch = self.current.as_ref()?;
        let r = batch.records.get(self.pos)?;
        let entity = batch.entities.get(self.pos).and_then(Option::as_ref);
        self.pos += 1;
        Some(SyncRecord::new(r, entity))
    }
}

/// One record of a stream.
#[pyclass(frozen, get_all, module = "apex_connect")]
struct SyncRecord {
    stream: String,
    id: String,
    op: String,
    version: Option<i64>,
    updated_at: Option<i64>,
    parent: Option<String>,
    /// The object exactly as the platform returned it (JSON text).
    raw: String,
    /// The normalized entity as JSON text, when the stream was read with `entities=True`
    /// (`None` otherwise, and for deletes).
    entity_json: Option<String>,
}

#[pymethods]
impl SyncRecord {
    /// The raw JSON parsed (`json.loads(self.raw)`).
    fn json<'py>(&self, py: Python<'py>) -> PyRes<Bound<'py, PyAny>> {
        py.import("json")?.call_method1("loads", (&self.raw,))
    }

    /// The normalized entity parsed (`json.loads(self.entity_json)`), or `None`.
    fn entity<'py>(&self, py: Python<'py>) -> PyRes<Option<Bound<'py, PyAny>>> {
        self.entity_json
            .as_ref()
            .map(|e| py.import("json")?.call_method1("loads", (e,)))
            .transpose()
    }

    fn __repr__(&self) -> String {
        format!(
            "SyncRecord(stream={:?}, id={:?}, op={:?}, version={:?})",
            self.stream, self.id, self.op, self.version
        )
    }
}

impl SyncRecord {
    fn new(r: &Record, entity: Option<&apex_connect::Entity>) -> Self {
        SyncRecord {
            stream: r.stream.to_string(),
            id: r.id.clone(),
            op: format!("{:?}", r.op).to_lowercase(),
            version: r.version,
            updated_at: r.updated_at,
            parent: r.parent.clone(),
            raw: r.raw.as_str().to_string(),
            entity_json: entity.and_then(|e| serde_json::to_string(e).ok()),
        }
    }
}

/// An async iterator of `SyncRecord`s (`async for record in store.records(...)`); `report`
/// holds the run's `SyncResult` once the iteration ended.
#[pyclass(frozen, module = "apex_connect")]
struct RecordStream {
    state: Arc<tokio::sync::Mutex<StreamState>>,
    report: Arc<Mutex<Option<SyncResult>>>,
}

/// An awaitable that is already done (the next record was at hand): no asyncio future, no
/// task.
#[pyclass(module = "apex_connect")]
struct Ready {
    value: Option<Py<PyAny>>,
}

#[pymethods]
impl Ready {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }
    fn __next__(&mut self, py: Python<'_>) -> PyRes<Py<PyAny>> {
        let v = self.value.take().unwrap_or_else(|| py.None());
        Err(PyStopIteration::new_err((v,)))
    }
}

#[pymethods]
impl RecordStream {
    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyRes<Bound<'py, PyAny>> {
        if let Ok(mut s) = self.state.try_lock()
            && let Some(r) = s.ready()
        {
            let obj = Bound::new(py, r)?.into_any().unbind();
            return Ok(Bound::new(py, Ready { value: Some(obj) })?.into_any());
        }
        let state = self.state.clone();
        let report = self.report.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let mut s = state.lock().await;
            match rt(s.next().await)? {
                Some(r) => Ok(r),
                None => {
                    *report.lock().unwrap_or_else(|p| p.into_inner()) = s.report.clone();
                    Err(PyStopAsyncIteration::new_err(()))
                }
            }
        })
    }

    /// The run's result, once the iteration ended (else `None`).
    #[getter]
    fn report(&self) -> Option<SyncResult> {
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

// ---------------------------------------------------------------------------------------
// Low-level verification.
// ---------------------------------------------------------------------------------------

/// What a successful verification learned.
#[pyclass(frozen, get_all, module = "apex_connect")]
struct Verified {
    event_id: Option<String>,
    timestamp_ms: Option<i64>,
    secret_index: usize,
    /// The answer to send instead of a plain 200 (a handshake such as Front's challenge).
    reply_status: Option<u16>,
    reply_body: Option<Py<PyBytes>>,
}

#[pymethods]
impl Verified {
    fn __repr__(&self) -> String {
        format!(
            "Verified(event_id={:?}, timestamp_ms={:?}, secret_index={}, reply_status={:?})",
            self.event_id, self.timestamp_ms, self.secret_index, self.reply_status
        )
    }
}

fn verify_with(
    connector: &dyn Connector,
    headers: &BTreeMap<String, String>,
    body: &[u8],
    url: &str,
    method: &str,
) -> PyRes<Verified> {
    let hooks = connector.webhooks().ok_or_else(|| {
        config_err("this connection has no webhooks (no webhook secret configured)")
    })?;
    let headers = header_map(headers)?;
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| invalid_input("not an HTTP method"))?;
    let uri: http::Uri = url.parse().map_err(|_| invalid_input("not a URL"))?;
    let request = WebhookRequest::new(&method, &uri, &headers, body);
    let v = hooks
        .verifier()
        .verify(&request, SystemTime::now())
        .map_err(|e| webhook_err(&e))?;
    Python::attach(|py| {
        Ok(Verified {
            event_id: v.event_id,
            timestamp_ms: v.timestamp_ms,
            secret_index: v.secret_index,
            reply_status: v.reply.as_ref().map(|r| r.status),
            reply_body: v.reply.map(|r| PyBytes::new(py, &r.body).unbind()),
        })
    })
}

/// Verifies a webhook of `platform` with the platform's Rust verifier, on the raw `body`
/// exactly as received. `secrets` are the connection's (Front: `webhook_secret`; HubSpot:
/// `client_secret`). Raises `BadSignatureError` / `WebhookExpiredError` (HTTP 401) or
/// `MalformedWebhookError` (400); returns `Verified` otherwise.
#[pyfunction]
#[pyo3(signature = (platform, headers, body, url, *, secrets, settings=None, method="POST".to_string()))]
fn verify(
    py: Python<'_>,
    platform: &str,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    url: String,
    secrets: BTreeMap<String, String>,
    settings: Option<&Bound<'_, PyAny>>,
    method: String,
) -> PyRes<Verified> {
    let platforms = apex_connect::platforms();
    let p = rt(platforms.get(platform))?;
    let settings = rt(Settings::from_value(json_of(py, settings)?))?;
    let mut values = secrets;
    // Verification needs no API credential: a placeholder lets the platform build its
    // connector (it makes no request).
    for s in p.secrets() {
        if s.kind == SecretKind::Credential {
            values
                .entry(s.name.to_string())
                .or_insert_with(|| "unused-for-verification".to_string());
        }
    }
    let secrets = Secrets::from_values(values);
    let id = ConnectionId::from("verify");
    let ctx = BuildContext::new(&id, &settings, &secrets, ConnectionAuth::Secrets);
    let connector = rt(p.build(&ctx))?;
    verify_with(connector.as_ref(), &headers, &body, &url, &method)
}

/// The compiled-in platforms' descriptors: name, description, secrets (name, kind, purpose).
#[pyfunction]
fn platforms<'py>(py: Python<'py>) -> PyRes<Vec<Bound<'py, PyDict>>> {
    let mut out = Vec::new();
    for p in apex_connect::platforms().iter() {
        let d = PyDict::new(py);
        d.set_item("name", p.name())?;
        d.set_item("description", p.description())?;
        let secrets: Vec<(String, String, String)> = p
            .secrets()
            .iter()
            .map(|s| {
                (
                    s.name.to_string(),
                    format!("{:?}", s.kind).to_lowercase(),
                    s.purpose.to_string(),
                )
            })
            .collect();
        d.set_item("secrets", secrets)?;
        out.push(d);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Testing helper: the Front simulator.
// ---------------------------------------------------------------------------------------

use apex_connect::frontapp::sim::{FrontSim, FrontSimConfig, FrontSimHandle};

/// The Front simulator (`apex_connect_frontapp::sim`) on 127.0.0.1, for tests: Front's API,
/// its OAuth server and its signed webhooks. Start it with `await FrontSimulator.start(...)`.
#[pyclass(frozen, module = "apex_connect.testing")]
struct FrontSimulator {
    sim: FrontSimHandle,
}

#[pymethods]
impl FrontSimulator {
    /// Starts a simulator with `conversations` conversations of `messages_per_conversation`
    /// messages, `contacts` contacts and `tags` tags (seeded: the same data every time).
    #[staticmethod]
    #[pyo3(signature = (*, conversations=100, messages_per_conversation=5, contacts=50, tags=10, seed=42))]
    fn start<'py>(
        py: Python<'py>,
        conversations: u64,
        messages_per_conversation: u64,
        contacts: u64,
        tags: u64,
        seed: u64,
    ) -> PyRes<Bound<'py, PyAny>> {
        let config = FrontSimConfig::default()
            .seed(seed)
            .size(conversations, messages_per_conversation)
            .contacts(contacts)
            .tags(tags);
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let sim = rt(FrontSim::start(config).await)?;
            Ok(FrontSimulator { sim })
        })
    }

    /// The API base URL (`http://127.0.0.1:<port>`).
    #[getter]
    fn base_url(&self) -> String {
        self.sim.base_url().to_string()
    }
    #[getter]
    fn authorize_url(&self) -> String {
        self.sim.authorize_url()
    }
    #[getter]
    fn token_url(&self) -> String {
        self.sim.token_url()
    }
    #[getter]
    fn oauth_client_id(&self) -> String {
        self.sim.oauth_client_id().to_string()
    }
    /// The OAuth client secret (a secret: not in `repr`).
    fn oauth_client_secret(&self) -> String {
        self.sim.oauth_client_secret().expose_secret().to_string()
    }
    /// The API token the simulator accepts (a secret: not in `repr`).
    fn api_token(&self) -> String {
        self.sim.api_token().expose_secret().to_string()
    }
    /// The app secret signing its application webhooks (a secret: not in `repr`).
    fn webhook_secret(&self) -> String {
        self.sim.webhook_secret().expose_secret().to_string()
    }

    /// Plays the admin who clicks "Authorize": returns `(code, state)` of the redirect back.
    fn consent<'py>(&self, py: Python<'py>, authorize_url: String) -> PyRes<Bound<'py, PyAny>> {
        let sim = self.sim.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let cb = rt(sim.consent(&authorize_url).await)?;
            Ok((cb.code.expose_secret().to_string(), cb.state))
        })
    }

    /// How many objects stream `stream` holds.
    fn count(&self, stream: &str) -> u64 {
        self.sim.count(stream)
    }
    fn conversation_id(&self, n: u64) -> String {
        self.sim.conversation_id(n)
    }
    /// Adds a message to a conversation (an event too); returns the message id.
    #[pyo3(signature = (conversation_id, text, inbound=true))]
    fn add_message(&self, conversation_id: &str, text: &str, inbound: bool) -> PyRes<String> {
        rt(self.sim.add_message(conversation_id, text, inbound))
    }
    /// Touches a conversation (new `updated_at`); returns its id.
    fn touch_conversation(&self, id: &str) -> PyRes<String> {
        rt(self.sim.touch_conversation(id))
    }
    /// The id of the latest event.
    fn latest_event_id(&self) -> Option<String> {
        self.sim.latest_event_id()
    }
    /// The application-webhook body Front sends for event `event_id`.
    fn webhook_body<'py>(&self, py: Python<'py>, event_id: &str) -> PyRes<Bound<'py, PyBytes>> {
        let b = rt(self.sim.webhook_body(event_id))?;
        Ok(PyBytes::new(py, &b))
    }
    /// The headers Front would send with `body` (`x-front-signature`,
    /// `x-front-request-timestamp`), signed now with the app secret.
    #[pyo3(signature = (body, url="http://localhost/".to_string()))]
    fn sign_webhook(&self, body: Vec<u8>, url: String) -> PyRes<HashMap<String, String>> {
        use apex_connect::WebhookVerifier;
        let uri: http::Uri = url.parse().map_err(|_| invalid_input("not a URL"))?;
        let headers = http::HeaderMap::new();
        let req = WebhookRequest::new(&http::Method::POST, &uri, &headers, &body);
        let signed = self
            .sim
            .webhook_verifier()
            .sign(&req, SystemTime::now())
            .map_err(|e| webhook_err(&e))?;
        Ok(signed
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect())
    }
    /// Stops the server.
    fn shutdown<'py>(&self, py: Python<'py>) -> PyRes<Bound<'py, PyAny>> {
        let sim = self.sim.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            sim.shutdown().await;
            Ok(())
        })
    }
    fn __repr__(&self) -> String {
        format!("FrontSimulator(base_url={:?})", self.sim.base_url())
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Store>()?;
    m.add_class::<SyncResult>()?;
    m.add_class::<SyncRecord>()?;
    m.add_class::<RecordStream>()?;
    m.add_class::<AuthorizationRequest>()?;
    m.add_class::<WebhookResponse>()?;
    m.add_class::<InboxCounts>()?;
    m.add_class::<Verified>()?;
    m.add_class::<Background>()?;
    m.add_class::<EntityGraph>()?;
    m.add_class::<FrontSimulator>()?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(platforms, m)?)?;
    m.add("ApexError", py.get_type::<ApexError>())?;
    m.add(
        "UnauthenticatedError",
        py.get_type::<UnauthenticatedError>(),
    )?;
    m.add(
        "PermissionDeniedError",
        py.get_type::<PermissionDeniedError>(),
    )?;
    m.add("NotFoundError", py.get_type::<NotFoundError>())?;
    m.add("RateLimitedError", py.get_type::<RateLimitedError>())?;
    m.add("InvalidInputError", py.get_type::<InvalidInputError>())?;
    m.add("ConflictError", py.get_type::<ConflictError>())?;
    m.add("UnsupportedError", py.get_type::<UnsupportedError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("UpstreamError", py.get_type::<UpstreamError>())?;
    m.add(
        "InvalidResponseError",
        py.get_type::<InvalidResponseError>(),
    )?;
    m.add("NetworkError", py.get_type::<NetworkError>())?;
    m.add("StorageError", py.get_type::<StorageError>())?;
    m.add(
        "OperationCancelledError",
        py.get_type::<OperationCancelledError>(),
    )?;
    m.add("UnexpectedError", py.get_type::<UnexpectedError>())?;
    m.add(
        "WebhookVerificationError",
        py.get_type::<WebhookVerificationError>(),
    )?;
    m.add("BadSignatureError", py.get_type::<BadSignatureError>())?;
    m.add("WebhookExpiredError", py.get_type::<WebhookExpiredError>())?;
    m.add(
        "MalformedWebhookError",
        py.get_type::<MalformedWebhookError>(),
    )?;
    Ok(())
}
