//! Issue 10's "done when": a platform defined in this file — its own descriptor and connector,
//! its API behind the testkit's OAuth 2.0 server — plugged into the server, which names no
//! platform, and driven through the command line library: `connect` (authorization code +
//! PKCE, the browser step scripted), `sync`, `rejects list` / `rejects retry`, `tap` (discover,
//! full run, catalog selection; client credentials), and `serve` taking signed webhooks.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use apex_connect_core::engine::CancellationToken;
use apex_connect_core::oauth::ClientAuth;
use apex_connect_core::platform::{
    BuildContext, ConnectionAuth, Grant, OAuthDefaults, Platform, Platforms, SecretKind,
    SecretSpec, Settings,
};
use apex_connect_core::webhook::{
    StandardWebhooksVerifier, VerifiedWebhook, WebhookRequest, WebhookSecrets,
};
use apex_connect_core::{
    Capabilities, Change, ConnectionId, Connector, ConnectorInfo, Credentials, CursorToken, Entity,
    EntityKind, Error, HttpClient, Op, Page, RawJson, Record, Reject, Result, SourceRef, StreamId,
    StreamInfo, StreamSchema, SyncCursor, WebhookVerifier, Webhooks, async_trait,
};
use apex_connect_server::Environment;
use apex_connect_server::cli::{Cli, Runner};
use apex_connect_testkit::oauth_server::{OAuthServer, OAuthServerConfig};
use apex_connect_testkit::sim::SimServer;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

const NAME: &str = "notes";
const STREAM: &str = "notes";

// ---------------------------------------------------------------------------------------
// The platform's API: notes, listed by (updated_at, id), behind OAuth bearer tokens.
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
struct Api {
    oauth: OAuthServer,
    notes: Arc<Mutex<BTreeMap<String, Value>>>,
}

#[derive(Deserialize)]
struct ListQuery {
    after_ts: Option<i64>,
    after_id: Option<String>,
    limit: Option<usize>,
}

async fn list(State(api): State<Api>, headers: HeaderMap, Query(q): Query<ListQuery>) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !api.oauth.validate_access_token(auth) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_token"})),
        )
            .into_response();
    }
    let after = (
        q.after_ts.unwrap_or(i64::MIN),
        q.after_id.unwrap_or_default(),
    );
    let limit = q.limit.unwrap_or(100).clamp(1, 100);
    let notes = api.notes.lock().unwrap();
    let mut all: Vec<&Value> = notes.values().collect();
    all.sort_by_key(|n| (n["updated_at"].as_i64().unwrap_or(0), n["id"].to_string()));
    let rest: Vec<&Value> = all
        .into_iter()
        .filter(|n| {
            (
                n["updated_at"].as_i64().unwrap_or(0),
                n["id"].as_str().unwrap_or("").to_string(),
            ) > after
        })
        .collect();
    let page: Vec<&Value> = rest.iter().take(limit).copied().collect();
    axum::Json(json!({"results": page, "has_more": rest.len() > limit})).into_response()
}

pub(crate) fn note(id: &str, title: Value, updated_at: i64) -> Value {
    json!({"id": id, "title": title, "body": format!("body of {id}"), "updated_at": updated_at, "tags": ["t"]})
}

// ---------------------------------------------------------------------------------------
// The connector.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NotesCursor {
    ts: i64,
    id: String,
}

impl SyncCursor for NotesCursor {
    const KIND: &'static str = "notes";
    const VERSION: u32 = 1;
}

#[derive(Deserialize)]
struct ListPage<'a> {
    #[serde(borrow)]
    results: Vec<&'a RawValue>,
    has_more: bool,
}

/// The strict envelope: only what the sync needs.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    updated_at: i64,
}

#[derive(Debug)]
struct NotesConnector {
    info: ConnectorInfo,
    http: HttpClient,
    page_size: u32,
    verifier: StandardWebhooksVerifier,
    /// Whether a webhook secret is configured.
    takes_webhooks: bool,
    /// While set, a note whose `title` is not a string cannot be mapped (the "bug" a later
    /// release fixes; `rejects retry` re-drives after the fix).
    strict: Arc<AtomicBool>,
}

impl NotesConnector {
    fn envelope(&self, raw: &RawJson) -> Result<Record> {
        let e: Envelope<'_> = raw.deserialize()?;
        Ok(
            Record::upsert(StreamId::from(STREAM), e.id.into_owned(), raw.clone())
                .with_modified(e.updated_at),
        )
    }
}

#[async_trait]
impl Connector for NotesConnector {
    fn info(&self) -> &ConnectorInfo {
        &self.info
    }

    async fn check(&self) -> Result<()> {
        self.http
            .get_bytes("/api/notes", &[("limit", "1".to_string())])
            .await
            .map(|_| ())
    }

    async fn read(&self, stream: &StreamId, cursor: Option<&CursorToken>) -> Result<Page> {
        if stream.as_str() != STREAM {
            return Err(Error::new(
                apex_connect_core::ErrorKind::NotFound,
                "unknown stream",
            ));
        }
        let after = cursor.map(NotesCursor::from_token).transpose()?;
        let mut query = vec![("limit", self.page_size.to_string())];
        if let Some(c) = &after {
            query.push(("after_ts", c.ts.to_string()));
            query.push(("after_id", c.id.clone()));
        }
        let body = self.http.get_bytes("/api/notes", &query).await?;
        let page: ListPage<'_> = serde_json::from_slice(&body)
            .map_err(|e| Error::invalid_response("not a notes page").set_source(e))?;
        let mut records = Vec::new();
        let mut rejects = Vec::new();
        for item in page.results {
            let raw = RawJson::from_raw_in(&body, item);
            match self.envelope(&raw) {
                Ok(r) => records.push(r),
                Err(e) => rejects.push(Reject::unparsed(
                    stream.clone(),
                    None,
                    raw.bytes().clone(),
                    &e,
                )),
            }
        }
        let next = records
            .last()
            .map(|r| NotesCursor {
                ts: r.updated_at.unwrap_or(0),
                id: r.id.clone(),
            })
            .or(after)
            .unwrap_or(NotesCursor {
                ts: i64::MIN,
                id: String::new(),
            });
        Ok(Page::new(records, Some(next.to_token()), page.has_more).with_rejects(rejects))
    }

    fn map_entity(&self, record: &Record) -> Result<Option<Entity>> {
        if record.op == Op::Delete {
            return Ok(None);
        }
        let v = record.raw.to_value()?;
        let mut e = Entity::new(
            EntityKind::Other(NAME.into()),
            SourceRef::new(NAME, STREAM, record.id.clone()),
        );
        match &v["title"] {
            Value::String(t) => e = e.with_name(t.clone()),
            _ if self.strict.load(Ordering::SeqCst) => {
                return Err(Error::invalid_response("a note's title is not a string"));
            }
            _ => {}
        }
        Ok(Some(e))
    }

    fn parse_record(&self, _: &StreamId, raw: &RawJson, _: Option<&str>) -> Result<Record> {
        self.envelope(raw)
    }

    async fn discover(&self, stream: &StreamId) -> Result<StreamSchema> {
        let info = self
            .info
            .stream(stream)
            .ok_or_else(|| Error::new(apex_connect_core::ErrorKind::NotFound, "unknown stream"))?;
        let props = json!({
            "id": {"type": "string"},
            "title": {"type": ["string", "integer", "null"]},
            "body": {"type": ["string", "null"]},
            "updated_at": {"type": "integer"},
            "tags": {"type": ["array", "null"], "items": {"type": "string"}},
        });
        Ok(StreamSchema::new(
            info,
            props.as_object().cloned().unwrap_or_default(),
        ))
    }

    fn webhooks(&self) -> Option<&dyn Webhooks> {
        self.takes_webhooks.then_some(self as &dyn Webhooks)
    }
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow, default)]
    note: Option<&'a RawValue>,
    #[serde(default)]
    id: Option<String>,
}

#[async_trait]
impl Webhooks for NotesConnector {
    fn verifier(&self) -> &dyn WebhookVerifier {
        &self.verifier
    }

    async fn parse(&self, w: &VerifiedWebhook) -> Result<Vec<Change>> {
        let e: Event<'_> = serde_json::from_slice(&w.body)
            .map_err(|e| Error::invalid_input("not a notes event").set_source(e))?;
        let stream = StreamId::from(STREAM);
        match (e.kind.as_str(), e.note, e.id) {
            ("note.updated", Some(note), _) => {
                let raw = RawJson::from_raw_in(&w.body, note);
                let record = self.envelope(&raw)?;
                Ok(vec![
                    Change::new(stream, record.id.clone(), Op::Upsert, e.kind).with_record(record),
                ])
            }
            ("note.deleted", _, Some(id)) => Ok(vec![Change::new(stream, id, Op::Delete, e.kind)]),
            _ => Err(Error::invalid_input("unknown notes event")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The descriptor.
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct NotesPlatform {
    strict: Arc<AtomicBool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotesSettings {
    #[serde(default)]
    page_size: Option<u32>,
}

const SECRETS: &[SecretSpec] = &[
    SecretSpec::new(
        "webhook_secret",
        SecretKind::Webhook,
        "signs the notes webhooks",
    ),
    SecretSpec::new(
        "client_secret",
        SecretKind::OAuthClient,
        "the OAuth client secret",
    ),
];

impl Platform for NotesPlatform {
    fn name(&self) -> &'static str {
        NAME
    }
    fn description(&self) -> &'static str {
        "notes, a platform defined in a test"
    }
    fn secrets(&self) -> &'static [SecretSpec] {
        SECRETS
    }
    fn oauth(&self, _: &Settings) -> Result<Option<OAuthDefaults>> {
        Ok(Some(
            OAuthDefaults::new("https://notes.invalid/oauth/token")
                .auth_url("https://notes.invalid/oauth/authorize")
                .client_auth(ClientAuth::Basic)
                .grants([
                    Grant::AuthorizationCode,
                    Grant::RefreshToken,
                    Grant::ClientCredentials,
                ]),
        ))
    }
    fn check_settings(&self, settings: &Settings) -> Result<()> {
        settings.parse::<NotesSettings>().map(|_| ())
    }
    fn build(&self, ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>> {
        let settings: NotesSettings = ctx.settings()?;
        let base = ctx
            .base_url
            .ok_or_else(|| Error::config("notes needs a base_url"))?;
        let credentials: Arc<dyn Credentials> = match &ctx.auth {
            ConnectionAuth::OAuth(manager) => manager.clone(),
            _ => return Err(Error::config("notes authenticates with OAuth only")),
        };
        let http = HttpClient::builder(base).credentials(credentials).build()?;
        let secret = ctx.secrets.get("webhook_secret");
        let verifier = StandardWebhooksVerifier::new(WebhookSecrets::new(
            secret.map(|s| s.expose_secret().as_bytes().to_vec()),
        ));
        let streams = vec![
            StreamInfo::new(STREAM, true)
                .with_key(["id"])
                .with_replication_key("updated_at"),
        ];
        Ok(Arc::new(NotesConnector {
            info: ConnectorInfo::new(NAME, "1", Capabilities::new(streams)),
            http,
            page_size: settings.page_size.unwrap_or(100),
            verifier,
            takes_webhooks: secret.is_some(),
            strict: self.strict.clone(),
        }))
    }
}

// ---------------------------------------------------------------------------------------
// Driving it.
// ---------------------------------------------------------------------------------------

/// Output lines sent to the test as they are written.
struct Lines {
    tx: tokio::sync::mpsc::UnboundedSender<String>,
    buf: Vec<u8>,
}

impl Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        while let Some(i) = self.buf.iter().position(|c| *c == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            let _ = self
                .tx
                .send(String::from_utf8_lossy(&line).trim_end().to_string());
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("apex-connect").chain(args.iter().copied())).unwrap()
}

async fn run(runner: &Runner, args: &[&str]) -> Result<String> {
    let mut out = Vec::new();
    runner.run(cli(args), &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

async fn status(runner: &Runner, config: &str) -> Value {
    serde_json::from_str(
        &run(runner, &["status", "--json", "--config", config])
            .await
            .unwrap(),
    )
    .unwrap()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn database_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["state.db", "state.db-wal"] {
        if let Ok(b) = std::fs::read(dir.join(name)) {
            all.extend(b);
        }
    }
    all
}

async fn sink_ids(dir: &Path) -> BTreeSet<String> {
    let store = apex_connect_core::SqliteStore::open(
        dir.join("state.db"),
        apex_connect_core::store::EncryptionKey::generate(),
    )
    .await
    .unwrap();
    let records = apex_connect_core::SqliteSink::for_store(&store)
        .records(&ConnectionId::from("acme-notes"), &StreamId::from(STREAM))
        .await
        .unwrap();
    store.close().await;
    records
        .into_iter()
        .filter(|r| r.op == Op::Upsert)
        .map(|r| r.id)
        .collect()
}

pub(crate) fn signed_webhook(msg_id: &str, body: &Value, secret: &str) -> (HeaderMap, Vec<u8>) {
    let body = serde_json::to_vec(body).unwrap();
    let mut h = HeaderMap::new();
    h.insert("webhook-id", HeaderValue::from_str(msg_id).unwrap());
    let (m, u) = (Method::POST, Uri::from_static("/"));
    let mut headers = StandardWebhooksVerifier::new(WebhookSecrets::single(secret))
        .sign(&WebhookRequest::new(&m, &u, &h, &body), SystemTime::now())
        .unwrap();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    (headers, body)
}

/// The API, its authorization server, a configuration with one `notes` connection, and a
/// runner with the `notes` platform registered.
pub(crate) struct Setup {
    pub(crate) oauth: OAuthServer,
    api: Api,
    // Keeps the API served.
    _sim: apex_connect_testkit::sim::SimHandle,
    base: String,
    pub(crate) dir: tempfile::TempDir,
    config_path: PathBuf,
    pub(crate) listen: u16,
    pub(crate) admin_listen: u16,
    strict: Arc<AtomicBool>,
    pub(crate) runner: Runner,
}

impl Setup {
    pub(crate) fn config(&self) -> &str {
        self.config_path.to_str().unwrap()
    }
}

async fn setup() -> Setup {
    setup_with(None, "").await
}

/// [`setup`] with an admin token in the environment and `extra` TOML appended to the
/// connection (`[[connection.schedule]]` tables).
pub(crate) async fn setup_with(admin_token: Option<&str>, extra: &str) -> Setup {
    // The API with its authorization server (rotating refresh tokens, PKCE).
    let oauth = OAuthServer::new(
        OAuthServerConfig::new("notes-client", "notes-secret").with_rotation(true),
    );
    let api = Api {
        oauth: oauth.clone(),
        notes: Default::default(),
    };
    {
        let mut notes = api.notes.lock().unwrap();
        for (i, title) in [
            json!("one"),
            json!("two"),
            json!(3),
            json!("four"),
            json!("five"),
        ]
        .into_iter()
        .enumerate()
        {
            let id = format!("n{}", i + 1);
            notes.insert(id.clone(), note(&id, title, 1000 * (i as i64 + 1)));
        }
    }
    let router = axum::Router::new()
        .route("/api/notes", axum::routing::get(list))
        .with_state(api.clone())
        .nest("/oauth", oauth.router());
    let sim = SimServer::start(router).await.unwrap();
    let base = sim.base_url().to_string();

    let dir = tempfile::tempdir().unwrap();
    let port = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (listen, admin_listen) = (port(), port());
    let config_path: PathBuf = dir.path().join("apex-connect.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"
store = "{db}"
listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin_listen}"

[sink]
kind = "records"

[workers]
poll = "20ms"

[[connection]]
id = "acme-notes"
platform = "notes"
base_url = "{base}"
streams = ["notes"]
env = {{ client_secret = "NOTES_CLIENT_SECRET", webhook_secret = "NOTES_WEBHOOK_SECRET" }}

[connection.settings]
client_id = "notes-client"
auth_url = "{base}/oauth/authorize"
token_url = "{base}/oauth/token"
page_size = 2
{extra}
"#,
            db = dir.path().join("state.db").display(),
        ),
    )
    .unwrap();
    let key = apex_connect_core::store::EncryptionKey::generate()
        .to_base64()
        .expose_secret()
        .to_string();
    let mut vars = vec![
        ("APEX_CONNECT_KEY", key.as_str()),
        ("NOTES_CLIENT_SECRET", "notes-secret"),
        ("NOTES_WEBHOOK_SECRET", "whsec-notes"),
    ];
    if let Some(token) = admin_token {
        vars.push((apex_connect_server::ADMIN_TOKEN_ENV, token));
    }
    let env = Environment::from_map(vars);
    let strict = Arc::new(AtomicBool::new(true));
    let platforms = Platforms::new().with(Arc::new(NotesPlatform {
        strict: strict.clone(),
    }));
    let runner = Runner::new(platforms).with_env(env);

    Setup {
        oauth,
        api,
        _sim: sim,
        base,
        dir,
        config_path,
        listen,
        admin_listen,
        strict,
        runner,
    }
}

/// `connect notes`: authorize URL with state + PKCE, the browser step, the callback; returns
/// what the command printed.
async fn connect(t: &Setup) -> Vec<String> {
    let (runner, config, base) = (&t.runner, t.config(), t.base.as_str());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let connect = {
        let (runner, cli) = (
            runner.clone(),
            cli(&["connect", "notes", "--port", "0", "--config", config]),
        );
        tokio::spawn(async move {
            let mut out = Lines {
                tx,
                buf: Vec::new(),
            };
            runner.run(cli, &mut out).await
        })
    };
    let url = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("connect printed no authorize URL in time")
            .expect("connect ended without an authorize URL");
        if line.trim().starts_with("http") {
            break line.trim().to_string();
        }
    };
    assert!(
        url.starts_with(&format!("{base}/oauth/authorize?")),
        "{url}"
    );
    let authorize = url::Url::parse(&url).unwrap();
    let q: BTreeMap<String, String> = authorize.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], "notes-client");
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["code_challenge"].len() >= 43, "{q:?}");
    assert!(q["state"].len() >= 16, "{q:?}");
    assert!(
        q["redirect_uri"].starts_with("http://127.0.0.1:")
            && q["redirect_uri"].ends_with("/callback"),
        "{q:?}"
    );
    // The browser step: the authorization server consents and redirects to the callback.
    let page = reqwest::get(&url).await.unwrap();
    assert!(page.status().is_success(), "{}", page.status());
    assert!(page.text().await.unwrap().contains("Authorized"));
    connect.await.unwrap().unwrap();
    let mut said = Vec::new();
    while let Ok(line) = rx.try_recv() {
        said.push(line);
    }
    said
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_from_a_test_file_connects_syncs_taps_and_takes_webhooks() {
    let t = setup().await;
    let (oauth, api, base, dir, listen, strict, runner) = (
        &t.oauth,
        &t.api,
        t.base.as_str(),
        &t.dir,
        t.listen,
        &t.strict,
        &t.runner,
    );
    let config = t.config();

    // ---- `platforms`: the server lists what the host registered.
    let listed = run(runner, &["platforms"]).await.unwrap();
    assert!(listed.starts_with("notes: "), "{listed}");
    assert!(listed.contains("secret client_secret"), "{listed}");

    // ---- `connect notes`: authorize URL with state + PKCE, the browser, the callback.
    let said = connect(&t).await;
    assert!(
        said.iter()
            .any(|l| l.contains("Tokens stored (encrypted) for acme-notes.")),
        "{said:?}"
    );
    assert_eq!(oauth.stats().authorization_code, 1);
    let refresh = oauth.latest_refresh_token().unwrap();
    assert!(
        !contains(&database_bytes(dir.path()), &refresh),
        "refresh token in clear"
    );

    // ---- `sync`: with the stored tokens; the note that does not map is quarantined.
    let out = run(runner, &["sync", "acme-notes", "--config", config])
        .await
        .unwrap();
    assert!(out.contains("1 records quarantined"), "{out}");
    let s = status(runner, config).await;
    let conn = &s["connections"][0];
    assert_eq!(conn["id"], "acme-notes", "{s}");
    assert_eq!(conn["platform"], "notes", "{s}");
    assert_eq!(conn["status"], "active", "{s}");
    assert_eq!(conn["rejects"], 1, "{s}");
    let last = &conn["last_runs"][0];
    assert_eq!(last["status"], "succeeded", "{s}");
    assert_eq!(
        (
            &last["records_read"],
            &last["records_applied"],
            &last["records_rejected"]
        ),
        (&json!(5), &json!(4), &json!(1)),
        "{s}"
    );
    assert_eq!(
        sink_ids(dir.path()).await,
        BTreeSet::from(["n1", "n2", "n4", "n5"].map(String::from))
    );
    let text = run(runner, &["status", "--config", config]).await.unwrap();
    assert!(
        text.contains("acme-notes (notes) active, 1 records quarantined"),
        "{text}"
    );

    // ---- `rejects list`, then the fix and `rejects retry`.
    let listed = run(runner, &["rejects", "list", "--config", config])
        .await
        .unwrap();
    assert!(
        listed.contains("acme-notes/notes n3 (map stage"),
        "{listed}"
    );
    assert!(listed.contains("title is not a string"), "{listed}");
    let listed: Value = serde_json::from_str(
        &run(
            runner,
            &[
                "rejects", "list", "--json", "--stream", "notes", "--config", config,
            ],
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    strict.store(false, Ordering::SeqCst);
    let retried = run(
        runner,
        &[
            "rejects",
            "retry",
            "--connection",
            "acme-notes",
            "--config",
            config,
        ],
    )
    .await
    .unwrap();
    assert!(
        retried.contains("acme-notes: 1 tried, 1 written, 0 failed again"),
        "{retried}"
    );
    assert_eq!(status(runner, config).await["connections"][0]["rejects"], 0);
    assert!(sink_ids(dir.path()).await.contains("n3"));
    // Only the authorization code was spent; the access token is still good.
    assert_eq!(oauth.stats().authorization_code, 1);

    // ---- `tap notes`: client credentials (a tap keeps no tokens), discover, run, catalog.
    let tap_config = dir.path().join("tap.json");
    std::fs::write(
        &tap_config,
        json!({
            "base_url": base,
            "streams": ["notes"],
            "settings": {
                "client_id": "notes-client",
                "token_url": format!("{base}/oauth/token"),
                "auth": "client_credentials",
                "page_size": 2
            },
            "env": {"client_secret": "NOTES_CLIENT_SECRET"}
        })
        .to_string(),
    )
    .unwrap();
    let tap = tap_config.to_str().unwrap();
    let catalog: Value = serde_json::from_str(
        &run(runner, &["tap", "notes", "--config", tap, "--discover"])
            .await
            .unwrap(),
    )
    .unwrap();
    let entry = &catalog["streams"][0];
    assert_eq!(entry["tap_stream_id"], "notes");
    assert_eq!(entry["replication_key"], "updated_at");
    let meta: BTreeMap<String, Value> = entry["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["breadcrumb"].to_string(), m["metadata"].clone()))
        .collect();
    assert_eq!(meta["[]"]["valid-replication-keys"], json!(["updated_at"]));
    assert_eq!(meta["[]"]["forced-replication-method"], "INCREMENTAL");
    assert_eq!(
        meta[r#"["properties","updated_at"]"#]["inclusion"],
        "automatic"
    );
    assert_eq!(meta[r#"["properties","title"]"#]["inclusion"], "available");

    let out = run(runner, &["tap", "notes", "--config", tap])
        .await
        .unwrap();
    let records = crate::tap::check_singer(out.as_bytes());
    assert_eq!(
        oauth.stats().client_credentials,
        1,
        "the tap ran the client-credentials grant"
    );
    let notes = api.notes.lock().unwrap().clone();
    assert_eq!(records["notes"].len(), 5);
    for r in &records["notes"] {
        // All fields selected: the record is the note exactly as the API sent it.
        assert_eq!(r, &notes[r["id"].as_str().unwrap()]);
    }
    let schema: Value = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|m| m["type"] == "SCHEMA")
        .unwrap();
    assert_eq!(schema["key_properties"], json!(["id"]));
    assert_eq!(schema["bookmark_properties"], json!(["updated_at"]));

    // A catalog with the stream and two fields selected: exactly those (and the automatic
    // key and replication key).
    let mut selected = catalog.clone();
    for m in selected["streams"][0]["metadata"].as_array_mut().unwrap() {
        if m["breadcrumb"].as_array().is_some_and(|b| b.len() == 2) {
            let field = m["breadcrumb"][1].as_str().unwrap().to_string();
            if m["metadata"]["inclusion"] == "available" {
                m["metadata"]["selected"] = json!(field == "title" || field == "body");
            }
        }
    }
    let catalog_path = dir.path().join("catalog.json");
    std::fs::write(&catalog_path, selected.to_string()).unwrap();
    let out = run(
        runner,
        &[
            "tap",
            "notes",
            "--config",
            tap,
            "--catalog",
            catalog_path.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    let records = crate::tap::check_singer(out.as_bytes());
    assert_eq!(records["notes"].len(), 5);
    for r in &records["notes"] {
        let keys: BTreeSet<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["id", "updated_at", "title", "body"]),
            "{r}"
        );
    }

    // ---- `serve`: signed webhooks through the durable inbox and the workers.
    strict.store(true, Ordering::SeqCst);
    let shutdown = CancellationToken::new();
    let serve = {
        let (runner, cli) = (
            runner.clone().with_shutdown(shutdown.clone()),
            cli(&["serve", "--config", config]),
        );
        tokio::spawn(async move { runner.run(cli, &mut std::io::sink()).await })
    };
    let client = reqwest::Client::new();
    let admin = format!("http://127.0.0.1:{}/admin/status", t.admin_listen);
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(&admin).send().await.is_err() {
        assert!(Instant::now() < deadline, "serve did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hook = format!("http://127.0.0.1:{listen}/webhooks/notes/acme-notes");
    let post = |(headers, body): (HeaderMap, Vec<u8>)| {
        let request = client.post(&hook).headers(headers).body(body);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let fresh = json!({"type": "note.updated", "note": note("n6", json!("from a webhook"), 6000)});
    let unmappable = json!({"type": "note.updated", "note": note("n7", json!(7), 7000)});
    assert_eq!(
        post(signed_webhook("msg_6", &fresh, "whsec-notes")).await,
        200
    );
    assert_eq!(
        post(signed_webhook("msg_7", &unmappable, "whsec-notes")).await,
        200
    );
    assert_eq!(
        post(signed_webhook("msg_6", &fresh, "whsec-notes")).await,
        200,
        "redelivery"
    );
    assert_eq!(
        post(signed_webhook("msg_8", &fresh, "not-the-secret")).await,
        401
    );
    let s = loop {
        let s: Value = client
            .get(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if s["inbox"]["done"] == 2 {
            break s;
        }
        assert!(Instant::now() < deadline, "webhooks not processed: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        s["inbox"]["dead"], 0,
        "an unmappable record never dead-letters: {s}"
    );
    assert_eq!(s["connections"][0]["rejects"], 1, "{s}");
    assert_eq!(s["metrics"]["webhooks"]["accepted"], 2, "{s}");
    assert_eq!(s["metrics"]["webhooks"]["duplicate"], 1, "{s}");
    assert_eq!(s["metrics"]["webhooks"]["bad_signature"], 1, "{s}");
    shutdown.cancel();
    serve.await.unwrap().unwrap();
    let ids = sink_ids(dir.path()).await;
    assert!(ids.contains("n6") && !ids.contains("n7"), "{ids:?}");
}

/// A typo in a platform's settings, or an `env` naming a secret the platform does not read,
/// fails when the configuration is loaded, naming the connection; a secret in the settings
/// is refused before anything else.
#[tokio::test]
async fn settings_and_secret_names_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let platforms = Platforms::new().with(Arc::new(NotesPlatform {
        strict: Default::default(),
    }));
    let runner = &Runner::new(platforms).with_env(Environment::from_map([("X", "y")]));
    let write = |extra: &str| {
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!(
                "store = \"memory:\"\n[[connection]]\nid = \"n\"\nplatform = \"notes\"\n\
                 base_url = \"http://127.0.0.1:9\"\n{extra}"
            ),
        )
        .unwrap();
        path.to_str().unwrap().to_string()
    };
    let fails = async |extra: &str| -> String {
        let path = write(extra);
        run(runner, &["status", "--config", &path])
            .await
            .unwrap_err()
            .to_string()
    };
    let e = fails("[connection.settings]\nclient_id = \"c\"\npage_sise = 2\n").await;
    assert!(
        e.contains("invalid connection setting") && e.contains("page_sise"),
        "{e}"
    );
    assert!(e.contains("connection=n"), "{e}");
    let e = fails("env = { api_tokn = \"X\" }\n[connection.settings]\nclient_id = \"c\"\n").await;
    assert!(e.contains("no secret of this name"), "{e}");
    let e = fails("[connection.settings]\nclient_id = \"c\"\nprivate_key = \"-----BEGIN\"\n").await;
    assert!(e.contains("secrets are not allowed"), "{e}");
    assert!(!e.contains("BEGIN"), "{e}");
    let e = fails("[connection.settings]\nclient_id = \"c\"\nauth = \"password\"\n").await;
    assert!(e.contains("invalid authentication setting"), "{e}");
    let e = fails("platform_typo = 1\n").await;
    assert!(e.contains("configuration is invalid"), "{e}");
    // An unknown platform names the known ones.
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        "store = \"memory:\"\n[[connection]]\nid = \"n\"\nplatform = \"nope\"\n",
    )
    .unwrap();
    let e = run(runner, &["status", "--config", path.to_str().unwrap()])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no connector for this platform") && e.contains("notes"),
        "{e}"
    );
    // And a valid one opens.
    let ok = write("[connection.settings]\nclient_id = \"c\"\npage_size = 3\n");
    let s: Value = serde_json::from_str(
        &run(runner, &["status", "--json", "--config", &ok])
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(s["connections"][0]["platform"], "notes");
}

/// A revoked grant: `sync` fails with the re-authorization error naming the command to run,
/// the hook core's token manager calls marks the connection `needs_reauth` in the store, and
/// `connect` makes it active again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_needs_reauthorization_until_connected_again() {
    let t = setup().await;
    connect(&t).await;
    run(&t.runner, &["sync", "acme-notes", "--config", t.config()])
        .await
        .unwrap();
    t.oauth.revoke_all();
    let e = run(&t.runner, &["sync", "acme-notes", "--config", t.config()])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("re-authorization"), "{e}");
    assert!(
        e.contains("apex-connect connect notes --connection acme-notes"),
        "{e}"
    );
    let refresh = t.oauth.latest_refresh_token().unwrap();
    assert!(!e.contains(&refresh), "{e}");
    let s = status(&t.runner, t.config()).await;
    let conn = &s["connections"][0];
    assert_eq!(conn["status"], "needs_reauth", "{s}");
    assert!(
        conn["detail"]
            .as_str()
            .is_some_and(|d| d.contains("apex-connect connect notes --connection acme-notes")),
        "{s}"
    );
    // Connecting again revives it.
    connect(&t).await;
    assert_eq!(
        status(&t.runner, t.config()).await["connections"][0]["status"],
        "active"
    );
    run(&t.runner, &["sync", "acme-notes", "--config", t.config()])
        .await
        .unwrap();
    assert_eq!(t.oauth.stats().authorization_code, 2);
}
