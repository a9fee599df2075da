//! Identity resolution in the service (`[identity]`): records written by `sync` and by the
//! webhook workers also go to the entity graph (a `FanoutSink` after the `[sink]`), and the
//! admin API answers `/admin/entities` and `/admin/merges` from it.
//!
//! The platform is this file's `people`: the testkit's `MemoryConnector` holding the people of
//! the connection's settings, mapped to person entities with their email (the memory
//! platform's own entities carry no identity).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use apex_connect_core::engine::CancellationToken;
use apex_connect_core::platform::{BuildContext, Platform, Platforms, SecretSpec, Settings};
use apex_connect_core::store::EncryptionKey;
use apex_connect_core::webhook::WebhookRequest;
use apex_connect_core::{
    Connector, ConnectorInfo, CursorToken, Entity, EntityKind, Identity, Op, Page, Record, Result,
    SourceRef, StreamId, Webhooks, async_trait,
};
use apex_connect_server::cli::Runner;
use apex_connect_server::{App, Environment, ServerConfig};
use apex_connect_testkit::MemoryConnector;
use http::{HeaderMap, HeaderValue, Method, Uri};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::platform::cli;

const NAME: &str = "people";
const STREAM: &str = "contacts";
const SECRET: &[u8] = b"people-webhook-secret";

/// The `people` connector: a `MemoryConnector` whose records are people.
#[derive(Debug)]
struct PeopleConnector {
    info: ConnectorInfo,
    inner: MemoryConnector,
}

#[async_trait]
impl Connector for PeopleConnector {
    fn info(&self) -> &ConnectorInfo {
        &self.info
    }
    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }
    async fn read(&self, stream: &StreamId, cursor: Option<&CursorToken>) -> Result<Page> {
        self.inner.read(stream, cursor).await
    }
    fn map_entity(&self, record: &Record) -> Result<Option<Entity>> {
        if record.op == Op::Delete {
            return Ok(None);
        }
        let v = record.raw.to_value()?;
        let mut e = Entity::new(
            EntityKind::Person,
            SourceRef::new(NAME, "contact", record.id.clone()),
        );
        if let Some(name) = v["name"].as_str() {
            e = e.with_name(name);
        }
        if let Some(email) = v["email"].as_str() {
            // As the platform has it: the graph normalizes (case, spaces).
            e = e.with_identity(Identity::Email(email.to_string()));
        }
        Ok(Some(e))
    }
    fn webhooks(&self) -> Option<&dyn Webhooks> {
        self.inner.webhooks()
    }
}

/// The `people` platform: `[connection.settings] people = { <id> = { name, email } }`.
#[derive(Debug)]
struct PeoplePlatform;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeopleSettings {
    #[serde(default)]
    people: std::collections::BTreeMap<String, Value>,
}

impl Platform for PeoplePlatform {
    fn name(&self) -> &'static str {
        NAME
    }
    fn description(&self) -> &'static str {
        "people with emails, in memory (identity tests)"
    }
    fn secrets(&self) -> &'static [SecretSpec] {
        &[]
    }
    fn check_settings(&self, settings: &Settings) -> Result<()> {
        settings.parse::<PeopleSettings>().map(|_| ())
    }
    fn build(&self, ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>> {
        let settings: PeopleSettings = ctx.settings.parse()?;
        let inner = MemoryConnector::new([STREAM], 100, SECRET);
        for (id, person) in settings.people {
            inner.put(&StreamId::from(STREAM), &id, person);
        }
        let info = ConnectorInfo::new(NAME, "1", inner.info().capabilities.clone());
        Ok(Arc::new(PeopleConnector { info, inner }))
    }
}

fn platforms() -> Platforms {
    Platforms::new().with(Arc::new(PeoplePlatform))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A configuration with three `people` connections: Ann Lee in `crm-a` and `crm-b` (the same
/// email in different case), and in `desk` (synced by webhook only); Bob in `crm-a`.
fn config_text(dir: &Path, identity: &str) -> String {
    format!(
        r#"
database = "{db}"
listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin}"
[workers]
poll = "20ms"
{identity}

[[connection]]
id = "crm-a"
platform = "people"
streams = ["contacts"]
[connection.settings.people]
a1 = {{ name = "Ann Lee", email = "Ann.Lee@Acme.com" }}
a2 = {{ name = "Bob Stone", email = "bob@acme.com" }}

[[connection]]
id = "crm-b"
platform = "people"
streams = ["contacts"]
[connection.settings.people]
b7 = {{ name = "Ann Lee", email = " ann.lee@ACME.COM" }}

[[connection]]
id = "desk"
platform = "people"
streams = ["contacts"]
[connection.settings.people]
d3 = {{ name = "Ann", email = "ANN.LEE@acme.com" }}
"#,
        db = dir.join("state.db").display(),
        listen = free_port(),
        admin = free_port(),
    )
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_sync_resolves_one_customer_and_the_admin_api_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("apex-connect.toml");
    std::fs::write(
        &config,
        config_text(
            dir.path(),
            "[identity]\n[identity.policy]\nphone_guard = true\n",
        ),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();

    // `sync` through the command line: both CRMs.
    let runner = Runner::new(platforms()).with_env(Environment::from_map::<_, &str, &str>([]));
    for connection in ["crm-a", "crm-b"] {
        let mut out = Vec::new();
        runner
            .run(cli(&["sync", connection, "--config", config_arg]), &mut out)
            .await
            .unwrap();
    }

    // The service's admin API over the same files.
    let app = App::open_with(
        ServerConfig::load(&config).unwrap(),
        &platforms(),
        EncryptionKey::from_bytes([3; 32]),
        &Environment::from_map::<_, &str, &str>([]),
    )
    .await
    .unwrap();
    assert!(app.identity().is_some());
    let base = crate::common::serve_router(
        app.admin_router().unwrap(),
        apex_connect_server::listener::HttpLimits::default(),
    )
    .await;
    let client = reqwest::Client::new();

    // One canonical entity holds both sources, found by the email in any case.
    let (status, found) = get_json(
        &client,
        &format!("{base}/admin/entities?email=ANN.lee%40acme.com"),
    )
    .await;
    assert_eq!(status, 200, "{found}");
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["kind"], "person");
    assert_eq!(found[0]["name"], "Ann Lee");
    let mut matched: Vec<&str> = found[0]["matched"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["connection"].as_str().unwrap())
        .collect();
    matched.sort();
    assert_eq!(matched, ["crm-a", "crm-b"]);
    let ann = found[0]["id"].as_i64().unwrap();

    // The canonical entity, with both sources.
    let (status, entity) = get_json(&client, &format!("{base}/admin/entities/{ann}")).await;
    assert_eq!(status, 200, "{entity}");
    assert_eq!(entity["id"], ann);
    let sources: Vec<(&str, &str)> = entity["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let src = &s["provenance"]["source"];
            (
                src["connection"].as_str().unwrap(),
                src["id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(sources.len(), 2, "{sources:?}");
    assert!(sources.contains(&("crm-a", "a1")) && sources.contains(&("crm-b", "b7")));
    assert!(
        entity["identities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i.to_string().contains("ann.lee@acme.com")),
        "{entity}"
    );

    // The dashboard's entity pages show the same (signed in from loopback: no token here).
    {
        let http = crate::dashboard::no_redirects();
        let (cookie, _) = crate::dashboard::sign_in_as(&http, &base, "").await;
        let get = |path: String| {
            let r = http
                .get(format!("{base}{path}"))
                .header("cookie", &cookie)
                .send();
            async move {
                let r = r.await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
        };
        let (status, page) = get("/ui/entities?kind=email&q=ANN.lee%40acme.com".into()).await;
        assert_eq!(status, 200, "{page}");
        assert!(page.contains(&format!("data-entity=\"{ann}\"")), "{page}");
        assert!(page.contains("id=\"merges\""), "{page}");
        let (status, page) = get(format!("/ui/entities/{ann}")).await;
        assert_eq!(status, 200, "{page}");
        assert!(
            page.contains("Ann Lee") && page.contains("crm-a") && page.contains("crm-b"),
            "{page}"
        );
        assert!(page.contains("ann.lee@acme.com"), "{page}");
        let (status, _) = get("/ui/entities/999999".into()).await;
        assert_eq!(status, 404);
    }

    // The merge is listed, with the email that did it.
    let (status, merges) = get_json(&client, &format!("{base}/admin/merges?limit=5000")).await;
    assert_eq!(status, 200, "{merges}");
    let merges = merges.as_array().unwrap();
    assert_eq!(merges.len(), 1, "{merges:?}");
    assert_eq!(merges[0]["cluster"], ann);
    assert_eq!(merges[0]["kind"], "join");
    assert_eq!(merges[0]["trigger"]["connection"], "crm-b");
    assert!(merges[0]["keys"].to_string().contains("ann.lee@acme.com"));

    // Bob is his own entity; nobody holds an unknown email; bad queries are 400s.
    let (_, bob) = get_json(
        &client,
        &format!("{base}/admin/entities?email=bob@acme.com"),
    )
    .await;
    assert_eq!(bob.as_array().unwrap().len(), 1);
    assert_ne!(bob[0]["id"], ann);
    let (status, none) = get_json(&client, &format!("{base}/admin/entities?email=x@y.com")).await;
    assert_eq!((status, none), (200, json!([])));
    for bad in [
        "/admin/entities",
        "/admin/entities?email=a@b.com&phone=1",
        "/admin/entities?handle=nosource",
    ] {
        let (status, body) = get_json(&client, &format!("{base}{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = get_json(&client, &format!("{base}/admin/entities/999999")).await;
    assert_eq!(status, 404);

    // A user split: crm-b's Ann is not crm-a's; then undone.
    let r = client
        .post(format!("{base}/admin/entities/{ann}/split"))
        .json(&json!({
            "sources": [{"connection": "crm-b", "platform": "people",
                         "object_type": "contact", "id": "b7"}],
            "note": "two Anns"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let outcome: Value = r.json().await.unwrap();
    assert_eq!(
        outcome["clusters"].as_object().unwrap().len(),
        2,
        "{outcome}"
    );
    let (_, found) = get_json(
        &client,
        &format!("{base}/admin/entities?email=ann.lee@acme.com"),
    )
    .await;
    assert_eq!(found.as_array().unwrap().len(), 2, "{found}");
    let r = client
        .post(format!(
            "{base}/admin/splits/{}/unsplit",
            outcome["split"].as_i64().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"unsplit": true}));
    let (_, found) = get_json(
        &client,
        &format!("{base}/admin/entities?email=ann.lee@acme.com"),
    )
    .await;
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    // A split naming a source that is not the entity's: 400.
    let r = client
        .post(format!("{base}/admin/entities/{ann}/split"))
        .json(
            &json!({"sources": [{"connection": "x", "platform": "people",
                                   "object_type": "contact", "id": "nope"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    app.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_serve_resolves_webhook_records_too() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), "[identity]\n");
    let config = ServerConfig::parse(&text).unwrap();
    let (listen, admin) = (config.listen, config.admin_listen);
    let env = Environment::from_map::<_, &str, &str>([]);
    let key = EncryptionKey::from_bytes([4; 32]);
    // Sync crm-a, then serve and let a webhook bring desk's Ann.
    let app = App::open_with(config.clone(), &platforms(), key.clone(), &env)
        .await
        .unwrap();
    let connector = app
        .state
        .connection(&"crm-a".into())
        .unwrap()
        .connector
        .clone();
    apex_connect_core::engine::SyncEngine::new(app.store.store().clone())
        .run(
            connector.as_ref(),
            &"crm-a".into(),
            &StreamId::from(STREAM),
            app.sink.as_ref(),
            Default::default(),
        )
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(app.serve(shutdown.clone()));

    let client = reqwest::Client::new();
    let body = MemoryConnector::webhook_body(&StreamId::from(STREAM), "d3", Op::Upsert);
    let signer = MemoryConnector::new([STREAM], 10, SECRET);
    let mut h = HeaderMap::new();
    h.insert("webhook-id", HeaderValue::from_static("msg-1"));
    let (m, u) = (Method::POST, Uri::from_static("/"));
    let headers = signer
        .webhooks()
        .unwrap()
        .verifier()
        .sign(&WebhookRequest::new(&m, &u, &h, &body), SystemTime::now())
        .unwrap();
    let url = format!("http://{listen}/webhooks/people/desk");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client
            .post(&url)
            .headers(headers.clone())
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
        {
            Ok(r) => {
                assert!(r.status().is_success(), "{}", r.status());
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    // The worker writes it to the records and to the graph: desk's Ann joins crm-a's.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, found) = get_json(
            &client,
            &format!("http://{admin}/admin/entities?email=ann.lee@acme.com"),
        )
        .await;
        assert_eq!(status, 200, "{found}");
        let found = found.as_array().unwrap().clone();
        if found.len() == 1 && found[0]["matched"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "desk's Ann never joined: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn identity_off_answers_404_and_needs_a_path_off_sqlite() {
    // Without `[identity]`: the endpoints say it is off.
    let dir = tempfile::tempdir().unwrap();
    let app = App::open_with(
        ServerConfig::parse(&config_text(dir.path(), "")).unwrap(),
        &platforms(),
        EncryptionKey::from_bytes([5; 32]),
        &Environment::from_map::<_, &str, &str>([]),
    )
    .await
    .unwrap();
    assert!(app.identity().is_none());
    let base = crate::common::serve_router(
        app.admin_router().unwrap(),
        apex_connect_server::listener::HttpLimits::default(),
    )
    .await;
    let client = reqwest::Client::new();
    for path in [
        "/admin/entities?email=a@b.com",
        "/admin/entities/1",
        "/admin/merges",
    ] {
        let (status, body) = get_json(&client, &format!("{base}{path}")).await;
        assert_eq!(status, 404, "{path}");
        assert!(
            body.to_string().contains("identity resolution is off"),
            "{body}"
        );
    }
    app.close().await;

    // A memory store has no database to share: `identity.path` is required...
    let memory = "store = \"memory:\"\n[identity]\n";
    let e = ServerConfig::parse(memory).unwrap_err();
    assert_eq!(e.kind(), apex_connect_core::ErrorKind::Config);
    assert!(e.to_string().contains("identity.path"), "{e}");
    // ... and refused by the command line too.
    let config = dir.path().join("memory.toml");
    std::fs::write(&config, memory).unwrap();
    let runner = Runner::new(platforms()).with_env(Environment::from_map::<_, &str, &str>([]));
    let e = runner
        .run(
            cli(&["status", "--config", config.to_str().unwrap()]),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("identity.path"), "{e}");
    // With a path, a memory store resolves into that file.
    let graph = dir.path().join("graph.db");
    let app = App::open_with(
        ServerConfig::parse(&format!(
            "store = \"memory:\"\n[identity]\npath = \"{}\"\n",
            graph.display()
        ))
        .unwrap(),
        &platforms(),
        EncryptionKey::from_bytes([5; 32]),
        &Environment::from_map::<_, &str, &str>([]),
    )
    .await
    .unwrap();
    assert!(app.identity().is_some());
    assert!(app.sink.wants_entities());
    app.close().await;
    assert!(graph.exists());
}
