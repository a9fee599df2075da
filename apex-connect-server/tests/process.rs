//! Tests that run the `apex-connect` binary as a child process.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use apex_connect_core::webhook::WebhookRequest;
use apex_connect_core::{Connector, Op, StreamId};
use apex_connect_testkit::MemoryConnector;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Uri};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_apex-connect");
const SECRET_VAR: &str = "APEX_TEST_WEBHOOK_SECRET";
const SECRET: &str = "process-test-secret";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("apex-connect.toml");
    std::fs::write(
        &path,
        format!(
            r#"
database = "{db}"
listen = "127.0.0.1:{port}"

[sink]
kind = "ledger"

[workers]
concurrency = 2
batch = 128
lease = "5s"
poll = "50ms"

[[connection]]
id = "acme"
platform = "memory"
streams = ["items"]
env = {{ webhook_secret = "{SECRET_VAR}" }}
"#,
            db = dir.join("state.db").display()
        ),
    )
    .unwrap();
    path
}

fn start(config: &Path, dir: &Path) -> Child {
    Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .env(SECRET_VAR, SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("serve-{}.log", rand_suffix()))).unwrap())
        .spawn()
        .unwrap()
}

fn rand_suffix() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn status(client: &reqwest::Client, base: &str) -> Option<Value> {
    let r = client
        .get(format!("{base}/admin/status"))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if status(client, base).await.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("apex-connect serve did not come up");
}

async fn wait_drained(client: &reqwest::Client, base: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = status(client, base).await {
            let inbox = &s["inbox"];
            if inbox["pending"] == 0 && inbox["in_flight"] == 0 {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "inbox did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Clone)]
struct Delivery {
    msg_id: String,
    item: String,
    good: bool,
}

fn signed(
    delivery: &Delivery,
    good: &MemoryConnector,
    bad: &MemoryConnector,
) -> (HeaderMap, Vec<u8>) {
    let body = MemoryConnector::webhook_body(&StreamId::from("items"), &delivery.item, Op::Delete);
    let signer = if delivery.good { good } else { bad };
    let mut req_headers = HeaderMap::new();
    req_headers.insert(
        "webhook-id",
        HeaderValue::from_str(&delivery.msg_id).unwrap(),
    );
    let (m, u) = (Method::POST, Uri::from_static("/"));
    let mut headers = signer
        .webhook_verifier()
        .unwrap()
        .sign(
            &WebhookRequest::new(&m, &u, &req_headers, &body),
            SystemTime::now(),
        )
        .unwrap();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    (headers, body)
}

/// 5,000 signed webhooks (4,000 events, 500 redeliveries, 500 bad signatures), concurrently;
/// SIGKILL mid-way; restart; the platform redelivers what got no 2xx. Every event that got a
/// 2xx is applied exactly once at the sink, and no badly signed one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();

    let good = MemoryConnector::new(["items"], 10, SECRET.as_bytes());
    let bad = MemoryConnector::new(["items"], 10, b"not-the-secret");
    let mut deliveries: Vec<Delivery> = (0..4000)
        .map(|i| Delivery {
            msg_id: format!("msg_{i}"),
            item: format!("item-{i}"),
            good: true,
        })
        .collect();
    deliveries.extend((0..500).map(|i| Delivery {
        msg_id: format!("msg_{}", i * 7),
        item: format!("item-{}", i * 7),
        good: true,
    }));
    deliveries.extend((0..500).map(|i| Delivery {
        msg_id: format!("bad_{i}"),
        item: format!("bad-item-{i}"),
        good: false,
    }));
    // Deterministic shuffle.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..deliveries.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        deliveries.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    assert_eq!(deliveries.len(), 5000);

    let child = Arc::new(Mutex::new(start(&config, dir.path())));
    wait_ready(&client, &base).await;

    // Phase 1: send everything concurrently; kill -9 after 2,000 answers.
    let answered = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (answered, child) = (answered.clone(), child.clone());
        std::thread::spawn(move || {
            while answered.load(Ordering::Relaxed) < 2000 {
                std::thread::sleep(Duration::from_millis(1));
            }
            child.lock().unwrap().kill().unwrap(); // SIGKILL
            child.lock().unwrap().wait().unwrap();
        })
    };
    let send = |d: Delivery| {
        let (client, base, answered) = (client.clone(), base.clone(), answered.clone());
        let (headers, body) = signed(&d, &good, &bad);
        async move {
            let r = client
                .post(format!("{base}/webhooks/memory/acme"))
                .headers(headers)
                .body(body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            answered.fetch_add(1, Ordering::Relaxed);
            (d, r.map(|r| r.status().as_u16()).ok())
        }
    };
    let phase1: Vec<(Delivery, Option<u16>)> = futures::stream::iter(deliveries.clone())
        .map(send)
        .buffer_unordered(64)
        .collect()
        .await;
    killer.join().unwrap();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut statuses: BTreeMap<Option<u16>, usize> = BTreeMap::new();
    let mut unacked_good = Vec::new();
    for (d, s) in &phase1 {
        *statuses.entry(*s).or_default() += 1;
        match s {
            Some(200) => {
                assert!(d.good, "a badly signed webhook got a 2xx");
                acked.insert(d.item.clone());
            }
            Some(401) => assert!(!d.good, "a good webhook was refused"),
            Some(other) => panic!("unexpected status {other}"),
            None if d.good => unacked_good.push(d.clone()),
            None => {}
        }
    }
    eprintln!("phase 1 statuses: {statuses:?}");
    assert!(
        statuses.get(&None).copied().unwrap_or(0) > 0,
        "the kill came after every answer"
    );
    assert!(acked.len() > 500, "too few answered before the kill");

    // Phase 2: restart; the platform redelivers whatever got no 2xx.
    *child.lock().unwrap() = start(&config, dir.path());
    wait_ready(&client, &base).await;
    let phase2: Vec<(Delivery, Option<u16>)> = futures::stream::iter(unacked_good.clone())
        .map(send)
        .buffer_unordered(64)
        .collect()
        .await;
    for (d, s) in &phase2 {
        assert_eq!(*s, Some(200), "redelivery of {} failed", d.msg_id);
        acked.insert(d.item.clone());
    }
    let s = wait_drained(&client, &base).await;
    assert_eq!(s["inbox"]["dead"], 0, "{s}");

    // Graceful stop (SIGTERM), then read the sink.
    let pid = child.lock().unwrap().id();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let exit = child.lock().unwrap().wait().unwrap();
    assert!(
        exit.success(),
        "serve did not exit cleanly on SIGTERM: {exit:?}"
    );

    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("state.db").display()
    ))
    .await
    .unwrap();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT id, applies FROM sink_ledger WHERE connection = 'acme' AND stream = 'items'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let applied: BTreeMap<String, i64> = rows.into_iter().collect();
    for item in &acked {
        assert_eq!(
            applied.get(item),
            Some(&1),
            "{item} got a 2xx but was applied {:?} times",
            applied.get(item)
        );
    }
    for (item, n) in &applied {
        assert!(
            !item.starts_with("bad-"),
            "badly signed {item} reached the sink"
        );
        assert_eq!(*n, 1, "{item} applied {n} times");
    }
    // Every valid event was eventually acknowledged (redelivered), so the sink holds all 4,000.
    assert_eq!(acked.len(), 4000);
    assert_eq!(applied.len(), 4000);
}

fn tap(dir: &Path, state: Option<&Path>) -> Vec<Value> {
    let config = dir.join("tap.json");
    std::fs::write(
        &config,
        r#"{"streams": ["items", "users"], "settings": {"page_size": 10, "generated": {"items": 25, "users": 3}}}"#,
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["tap", "memory", "--config"]).arg(&config);
    if let Some(s) = state {
        cmd.arg("--state").arg(s);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// Checks the Singer rules and returns the record ids per stream.
fn check_singer(messages: &[Value]) -> BTreeMap<String, Vec<String>> {
    let mut schemas: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut records: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in messages {
        let stream = m["stream"].as_str().map(str::to_string);
        match m["type"].as_str() {
            Some("SCHEMA") => {
                let keys: Vec<String> =
                    serde_json::from_value(m["key_properties"].clone()).expect("key_properties");
                assert!(!keys.is_empty());
                assert_eq!(m["schema"]["type"], "object");
                schemas.insert(stream.unwrap(), keys);
            }
            Some("RECORD") => {
                let stream = stream.unwrap();
                let keys = schemas
                    .get(&stream)
                    .unwrap_or_else(|| panic!("RECORD of {stream} before its SCHEMA"));
                for k in keys {
                    assert!(
                        m["record"].get(k).is_some(),
                        "record lacks key property {k}"
                    );
                }
                records
                    .entry(stream)
                    .or_default()
                    .push(m["record"]["id"].as_str().unwrap().to_string());
            }
            Some("STATE") => assert!(m["value"]["bookmarks"].is_object()),
            other => panic!("unknown message type {other:?}"),
        }
    }
    assert_eq!(
        messages.last().unwrap()["type"],
        "STATE",
        "STATE comes last"
    );
    records
}

#[test]
fn tap_emits_valid_singer_and_resumes_from_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let first = tap(dir.path(), None);
    let records = check_singer(&first);
    assert_eq!(records["items"].len(), 25);
    assert_eq!(records["users"].len(), 3);

    // Stop after the first page of items: resume from the STATE emitted there.
    let after_page = first
        .iter()
        .find(|m| m["type"] == "STATE" && m["value"]["bookmarks"].get("items").is_some())
        .unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(&state, after_page["value"].to_string()).unwrap();
    let resumed = check_singer(&tap(dir.path(), Some(&state)));
    assert_eq!(
        resumed["items"],
        records["items"][10..].to_vec(),
        "continues after the first page"
    );
    assert_eq!(resumed["users"].len(), 3, "users had no bookmark yet");

    // From the final STATE: nothing new.
    std::fs::write(&state, first.last().unwrap()["value"].to_string()).unwrap();
    let again = check_singer(&tap(dir.path(), Some(&state)));
    assert!(again.values().all(|ids| ids.is_empty()), "{again:?}");
}

#[test]
fn sync_then_status_show_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "database = \"{}\"\n[[connection]]\nid = \"demo\"\nplatform = \"memory\"\nstreams = [\"items\"]\n\
             [connection.settings]\ngenerated = {{ items = 30 }}\npage_size = 7\n\
             [[connection.schedule]]\nevery = \"1h\"\n",
            dir.path().join("s.db").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["sync", "demo", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["status", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = &s["connections"][0]["last_runs"][0];
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["records_read"], 30);
    assert_eq!(s["schedules"][0]["stream"], "items");
    let text = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("demo (memory) active"));

    // A secret in the file is refused before anything runs.
    std::fs::write(
        &config,
        "[[connection]]\nid = \"x\"\nplatform = \"memory\"\napi_token = \"oops\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("secrets are not allowed") && !err.contains("oops"),
        "{err}"
    );
}

// ---- OAuth: `apex-connect connect <platform>` against a simulator, then `sync` ----

const OAUTH_SECRET_VAR: &str = "APEX_TEST_OAUTH_CLIENT_SECRET";

/// A config with one OAuth connection to simulator `sim` (Front's or HubSpot's), a key, and
/// what the browser step of `connect` checks.
struct OAuthSetup<S> {
    sim: S,
    dir: tempfile::TempDir,
    config: PathBuf,
    key: String,
    platform: &'static str,
    connection: &'static str,
    client_id: String,
    client_secret: String,
    authorize_url: String,
}

impl OAuthSetup<apex_connect_frontapp::FrontSimHandle> {
    /// `acme-front` against the Front simulator.
    async fn start() -> Self {
        use secrecy::ExposeSecret;
        let sim = apex_connect_frontapp::FrontSim::start(
            apex_connect_frontapp::FrontSimConfig::default(),
        )
        .await
        .unwrap();
        let (base, client_id, auth_url, token_url) = (
            sim.base_url().to_string(),
            sim.oauth_client_id().to_string(),
            sim.authorize_url(),
            sim.token_url(),
        );
        let client_secret = sim.oauth_client_secret().expose_secret().to_string();
        OAuthSetup::write(
            sim,
            "frontapp",
            "acme-front",
            r#"streams = ["conversations"]"#,
            &base,
            client_id,
            client_secret,
            auth_url,
            token_url,
        )
    }
}

impl OAuthSetup<apex_connect_hubspot::HubSpotSim> {
    /// `acme-hs` against the HubSpot simulator (authorize and token under `/oauth/v1`).
    async fn start_hubspot() -> Self {
        let sim = apex_connect_hubspot::HubSpotSim::start(
            apex_connect_hubspot::HubSpotSimConfig::default(),
        )
        .await
        .unwrap();
        let base = sim.base_url().to_string();
        let (client_id, client_secret) = (
            sim.config().client_id.clone(),
            sim.config().client_secret.clone(),
        );
        OAuthSetup::write(
            sim,
            "hubspot",
            "acme-hs",
            "",
            &base,
            client_id,
            client_secret,
            format!("{base}/oauth/v1/authorize"),
            format!("{base}/oauth/v1/token"),
        )
    }
}

impl<S> OAuthSetup<S> {
    #[allow(clippy::too_many_arguments)]
    fn write(
        sim: S,
        platform: &'static str,
        connection: &'static str,
        extra: &str,
        base: &str,
        client_id: String,
        client_secret: String,
        authorize_url: String,
        token_url: String,
    ) -> Self {
        use secrecy::ExposeSecret;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("apex-connect.toml");
        std::fs::write(
            &config,
            format!(
                r#"
database = "{db}"

[[connection]]
id = "{connection}"
platform = "{platform}"
base_url = "{base}"
{extra}
env = {{ client_secret = "{OAUTH_SECRET_VAR}" }}

[connection.settings]
client_id = "{client_id}"
auth_url = "{authorize_url}"
token_url = "{token_url}"
"#,
                db = dir.path().join("state.db").display(),
            ),
        )
        .unwrap();
        let key = apex_connect_core::store::EncryptionKey::generate()
            .to_base64()
            .expose_secret()
            .to_string();
        OAuthSetup {
            sim,
            dir,
            config,
            key,
            platform,
            connection,
            client_id,
            client_secret,
            authorize_url,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .arg("--config")
            .arg(&self.config)
            .env("APEX_CONNECT_KEY", &self.key)
            .env(OAUTH_SECRET_VAR, &self.client_secret)
            .env("RUST_LOG", "warn");
        c
    }

    /// Runs a command to completion off the runtime (the simulator serves on it meanwhile).
    async fn run(&self, args: &[&str]) -> std::process::Output {
        let mut c = self.command(args);
        tokio::task::spawn_blocking(move || c.output().unwrap())
            .await
            .unwrap()
    }

    async fn status(&self) -> Value {
        let out = self.run(&["status", "--json"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `apex-connect connect <platform>`: reads the authorize URL it prints, plays the browser
    /// (GET it, follow the simulator's 302 to the local callback), waits for exit 0.
    async fn connect(&self) {
        use std::io::BufRead;
        let port = free_port();
        let mut child = self
            .command(&["connect", self.platform, "--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut rest = Vec::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let line = line.unwrap();
                let trimmed = line.trim();
                if trimmed.starts_with("http://") && tx.is_some() {
                    let _ = tx.take().unwrap().send(trimmed.to_string());
                } else {
                    rest.push(line);
                }
            }
            rest
        });
        let url = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("connect printed no authorize URL in time")
            .expect("connect exited without printing an authorize URL");
        let authorize = url::Url::parse(&url).unwrap();
        assert!(url.starts_with(&self.authorize_url), "{url}");
        let q: BTreeMap<String, String> = authorize.query_pairs().into_owned().collect();
        assert_eq!(q["client_id"], self.client_id);
        assert_eq!(
            q["redirect_uri"],
            format!("http://127.0.0.1:{port}/callback")
        );
        assert_eq!(q["code_challenge_method"], "S256");
        assert!(q.contains_key("state"));
        // The browser: the simulator consents and redirects to the local callback.
        let page = reqwest::Client::new().get(&url).send().await.unwrap();
        assert!(page.status().is_success(), "{}", page.status());
        assert_eq!(page.url().port(), Some(port));
        assert!(page.text().await.unwrap().contains("Authorized"));
        let status = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(s) = child.try_wait().unwrap() {
                    let mut err = String::new();
                    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err)
                        .unwrap();
                    return (s, err);
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("connect did not exit after the callback");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await
        .unwrap();
        assert!(status.0.success(), "connect failed: {}", status.1);
        let rest = reader.join().unwrap();
        let stored = format!("Tokens stored (encrypted) for {}", self.connection);
        assert!(rest.iter().any(|l| l.contains(&stored)), "{rest:?}");
    }

    fn database_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for name in ["state.db", "state.db-wal"] {
            if let Ok(b) = std::fs::read(self.dir.path().join(name)) {
                all.extend(b);
            }
        }
        all
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_frontapp_then_sync_with_oauth_tokens() {
    let t = OAuthSetup::start().await;
    t.connect().await;
    let oauth = t.sim.oauth().stats();
    assert_eq!(oauth.authorization_code, 1, "{oauth:?}");

    // The store holds the tokens encrypted: readable with the key, not in the file.
    let refresh = t.sim.oauth().latest_refresh_token().unwrap();
    assert!(
        !contains(&t.database_bytes(), &refresh),
        "refresh token in plaintext"
    );
    {
        use apex_connect_core::TokenStore;
        use secrecy::ExposeSecret;
        let store = apex_connect_core::SqliteStore::open(
            t.dir.path().join("state.db"),
            apex_connect_core::store::EncryptionKey::from_base64(&t.key).unwrap(),
        )
        .await
        .unwrap();
        let stored = store
            .load(&apex_connect_core::ConnectionId::from("acme-front"))
            .await
            .unwrap()
            .expect("tokens stored");
        assert_eq!(
            stored.value.refresh_token.as_ref().unwrap().expose_secret(),
            refresh
        );
        assert!(
            t.sim
                .oauth()
                .validate_access_token(stored.value.access_token.expose_secret())
        );
        assert!(!contains(
            &t.database_bytes(),
            stored.value.access_token.expose_secret()
        ));
        store.close().await;
    }

    // `sync` authenticates with the stored OAuth tokens (no static token is configured).
    let out = t
        .run(&["sync", "acme-front", "--stream", "conversations"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = t.status().await;
    let conn = &s["connections"][0];
    assert_eq!(conn["status"], "active");
    let run = &conn["last_runs"][0];
    assert_eq!(run["status"], "succeeded");
    let expected = t.sim.count("conversations");
    assert!(expected > 0);
    assert_eq!(run["records_read"], expected);
    assert_eq!(run["records_applied"], expected);

    // An expired access token is refreshed once, and the rotated set saved for the next run.
    t.sim.oauth().expire_access_tokens();
    let out = t
        .run(&["sync", "acme-front", "--stream", "conversations", "--full"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let oauth = t.sim.oauth().stats();
    assert_eq!(oauth.authorization_code, 1, "{oauth:?}");
    assert_eq!(oauth.refresh_token, 1, "{oauth:?}");
    assert_eq!(oauth.reuse_detected, 0, "{oauth:?}");
    let out = t
        .run(&["sync", "acme-front", "--stream", "conversations", "--full"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let oauth = t.sim.oauth().stats();
    assert_eq!(
        (oauth.authorization_code, oauth.refresh_token),
        (1, 1),
        "{oauth:?}"
    );
    let latest = t.sim.oauth().latest_refresh_token().unwrap();
    assert!(!contains(&t.database_bytes(), &latest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_hubspot_then_sync_with_oauth_tokens() {
    let t = OAuthSetup::start_hubspot().await;
    t.connect().await;
    let oauth = t.sim.oauth().stats();
    assert_eq!(oauth.authorization_code, 1, "{oauth:?}");
    let refresh = t.sim.oauth().latest_refresh_token().unwrap();
    assert!(
        !contains(&t.database_bytes(), &refresh),
        "refresh token in plaintext"
    );

    // `sync` authenticates with the stored OAuth tokens: no private app token is configured.
    let sync = async |full: bool| {
        let mut args = vec!["sync", "acme-hs", "--stream", "contacts"];
        if full {
            args.push("--full");
        }
        let out = t.run(&args).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sync(false).await;
    let s = t.status().await;
    let conn = &s["connections"][0];
    assert_eq!(conn["id"], "acme-hs", "{s}");
    assert_eq!(conn["status"], "active", "{s}");
    let run = &conn["last_runs"][0];
    assert_eq!(run["status"], "succeeded", "{s}");
    let expected = t.sim.expected("contacts").len();
    assert!(expected > 0);
    assert_eq!(run["records_read"], expected, "{s}");
    assert_eq!(run["records_applied"], expected, "{s}");

    // An expired access token is refreshed once (client credentials in the form body, as
    // HubSpot wants), and the new set is used by the next run without another refresh.
    t.sim.oauth().expire_access_tokens();
    sync(true).await;
    let oauth = t.sim.oauth().stats();
    assert_eq!(
        (
            oauth.authorization_code,
            oauth.refresh_token,
            oauth.reuse_detected
        ),
        (1, 1, 0),
        "{oauth:?}"
    );
    sync(true).await;
    let oauth = t.sim.oauth().stats();
    assert_eq!(
        (oauth.authorization_code, oauth.refresh_token),
        (1, 1),
        "{oauth:?}"
    );
    let latest = t.sim.oauth().latest_refresh_token().unwrap();
    assert!(!contains(&t.database_bytes(), &latest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_grant_fails_the_sync_and_marks_needs_reauth() {
    let t = OAuthSetup::start().await;
    t.connect().await;
    t.sim.oauth().revoke_all();
    t.sim.oauth().expire_access_tokens();

    let out = t
        .run(&["sync", "acme-front", "--stream", "conversations"])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("re-authorization"), "{err}");
    assert!(
        err.contains("apex-connect connect frontapp --connection acme-front"),
        "{err}"
    );
    let refresh = t.sim.oauth().latest_refresh_token().unwrap();
    assert!(!err.contains(&refresh), "{err}");

    let s = t.status().await;
    let conn = &s["connections"][0];
    assert_eq!(conn["status"], "needs_reauth", "{s}");
    assert!(
        conn["detail"]
            .as_str()
            .is_some_and(|d| d.contains("apex-connect connect frontapp")),
        "{s}"
    );

    // Connecting again revives it.
    t.connect().await;
    assert_eq!(t.status().await["connections"][0]["status"], "active");
    let out = t
        .run(&["sync", "acme-front", "--stream", "conversations"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(t.sim.oauth().stats().authorization_code, 2);
}
