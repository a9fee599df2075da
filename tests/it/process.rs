//! Tests that run the `apex-connect` binary as a child process (the `memory` platform is in
//! it: this package's tests enable the feature through its self dev-dependency).

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use apex_connect::webhook::WebhookRequest;
use apex_connect::{Connector, Op, StreamId};
use apex_connect_testkit::MemoryConnector;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, Uri};
use serde_json::Value;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_apex-connect");
pub(crate) const SECRET_VAR: &str = "APEX_TEST_WEBHOOK_SECRET";
pub(crate) const SECRET: &str = "process-test-secret";

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &Path, port: u16, admin_port: u16) -> PathBuf {
    let db = dir.join("state.db");
    write_config_for(dir, &db.display().to_string(), port, admin_port)
}

/// `apex-connect.toml` in `dir`: the memory platform with a ledger sink on `store` (a SQLite
/// file or a `postgres://` URL), listening on `port` and `admin_port`.
pub(crate) fn write_config_for(dir: &Path, store: &str, port: u16, admin_port: u16) -> PathBuf {
    let path = dir.join("apex-connect.toml");
    std::fs::write(
        &path,
        format!(
            r#"
store = "{store}"
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"

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
"#
        ),
    )
    .unwrap();
    path
}

pub(crate) fn start(config: &Path, dir: &Path) -> Child {
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

pub(crate) async fn status(client: &reqwest::Client, base: &str) -> Option<Value> {
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

pub(crate) async fn wait_ready(client: &reqwest::Client, base: &str) {
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
pub(crate) struct Delivery {
    pub(crate) msg_id: String,
    pub(crate) item: String,
    pub(crate) good: bool,
}

pub(crate) fn signed(
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
        .webhooks()
        .unwrap()
        .verifier()
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
    let (port, admin_port) = (free_port(), free_port());
    let config = write_config(dir.path(), port, admin_port);
    let base = format!("http://127.0.0.1:{port}");
    // The admin API (status, drain checks) is on its own loopback listener.
    let admin = format!("http://127.0.0.1:{admin_port}");
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
    wait_ready(&client, &admin).await;

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
    wait_ready(&client, &admin).await;
    let phase2: Vec<(Delivery, Option<u16>)> = futures::stream::iter(unacked_good.clone())
        .map(send)
        .buffer_unordered(64)
        .collect()
        .await;
    for (d, s) in &phase2 {
        assert_eq!(*s, Some(200), "redelivery of {} failed", d.msg_id);
        acked.insert(d.item.clone());
    }
    let s = wait_drained(&client, &admin).await;
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

    let store = apex_connect::SqliteStore::open(
        dir.path().join("state.db"),
        apex_connect::store::EncryptionKey::generate(),
    )
    .await
    .unwrap();
    let rows: Vec<(String, i64)> = apex_connect::sinks::LedgerSink::for_store(&store)
        .entries(&"acme".into(), &"items".into())
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.id, e.applies))
        .collect();
    store.close().await;
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

/// Checks the Singer rules (every RECORD after its stream's SCHEMA, holding its key
/// properties and valid against the SCHEMA's JSON Schema) and returns the record ids per stream.
fn check_singer(messages: &[Value]) -> BTreeMap<String, Vec<String>> {
    let mut schemas: BTreeMap<String, (Vec<String>, jsonschema::Validator)> = BTreeMap::new();
    let mut records: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in messages {
        let stream = m["stream"].as_str().map(str::to_string);
        match m["type"].as_str() {
            Some("SCHEMA") => {
                let keys: Vec<String> =
                    serde_json::from_value(m["key_properties"].clone()).expect("key_properties");
                assert!(!keys.is_empty());
                assert_eq!(m["schema"]["type"], "object");
                let validator = jsonschema::validator_for(&m["schema"])
                    .unwrap_or_else(|e| panic!("SCHEMA is not a JSON Schema: {e}: {m}"));
                schemas.insert(stream.unwrap(), (keys, validator));
            }
            Some("RECORD") => {
                let stream = stream.unwrap();
                let (keys, validator) = schemas
                    .get(&stream)
                    .unwrap_or_else(|| panic!("RECORD of {stream} before its SCHEMA"));
                for k in keys {
                    assert!(
                        m["record"].get(k).is_some(),
                        "record lacks key property {k}"
                    );
                }
                let errors: Vec<String> = validator
                    .iter_errors(&m["record"])
                    .map(|e| e.to_string())
                    .collect();
                assert!(
                    errors.is_empty(),
                    "RECORD does not match its SCHEMA: {errors:?}: {m}"
                );
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

/// The binary holds exactly the platforms of the facade's features (`memory` here: this
/// package's tests turn it on).
#[test]
fn the_binary_lists_the_platforms_of_its_features() {
    let out = Command::new(BIN).arg("platforms").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("memory: "), "{text}");
    assert!(text.contains("  secret webhook_secret: "), "{text}");
    assert_eq!(
        text.contains("frontapp: "),
        cfg!(feature = "frontapp"),
        "{text}"
    );
    assert_eq!(
        text.contains("hubspot: "),
        cfg!(feature = "hubspot"),
        "{text}"
    );
}

/// `tap --discover` prints a catalog; fed back with `--catalog` (or `--properties`) with one
/// stream deselected, only the other is emitted, every RECORD valid against its SCHEMA.
#[test]
fn tap_discovers_a_catalog_and_runs_what_it_selects() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tap.json");
    std::fs::write(
        &config,
        r#"{"streams": ["items", "users"], "settings": {"generated": {"items": 12, "users": 3}}}"#,
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["tap", "memory", "--config"])
            .arg(&config)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let mut catalog: Value = serde_json::from_str(&run(&["--discover"])).unwrap();
    let streams = catalog["streams"].as_array_mut().unwrap();
    assert_eq!(streams.len(), 2);
    for s in streams.iter_mut() {
        let keep = s["tap_stream_id"] == "items";
        for m in s["metadata"].as_array_mut().unwrap() {
            if m["breadcrumb"] == serde_json::json!([]) {
                assert_eq!(m["metadata"]["forced-replication-method"], "INCREMENTAL");
                m["metadata"]["selected"] = Value::Bool(keep);
            }
        }
    }
    let path = dir.path().join("catalog.json");
    std::fs::write(&path, catalog.to_string()).unwrap();
    for flag in ["--catalog", "--properties"] {
        let out = run(&[flag, path.to_str().unwrap()]);
        let messages: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let records = check_singer(&messages);
        assert_eq!(records.keys().collect::<Vec<_>>(), ["items"], "{flag}");
        assert_eq!(records["items"].len(), 12, "{flag}");
    }
}
