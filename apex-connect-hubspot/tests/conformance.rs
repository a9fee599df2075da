//! The shared conformance suite against `HubSpotSim`, plus end-to-end flows: incremental sync
//! past the search API's 10,000-result cap, write-back with partial failure and conflict,
//! webhooks of every signature version through `parse_webhook`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use apex_connect_core::oauth::{OAuthClient, TokenManager};
use apex_connect_core::webhook::WebhookRequest;
use apex_connect_core::{
    ConnectionId, Connector, ConnectorExt, CursorToken, Entity, ErrorKind, MemoryTokenStore, Op,
    Record, StreamId, TokenStore, VerifiedWebhook, Webhooks, WriteAction, WriteOp,
};
use apex_connect_hubspot::{
    HubSpotConnector, HubSpotSim, HubSpotSimConfig, SignatureVersion, streams,
};
use apex_connect_testkit::conformance::{ConformanceFixture, SignedWebhook};
use apex_connect_testkit::sim::FaultKind;
use futures::StreamExt;
use http::{Method, Uri};

#[path = "sim/batched_webhooks.rs"]
mod batched_webhooks;
#[path = "sim/rate_window.rs"]
mod rate_window;

const HOOK_URL: &str = "https://hooks.example.com/webhooks/hubspot/acme?portal=62515";

struct Fixture {
    sim: HubSpotSim,
    store: Arc<dyn TokenStore>,
}

fn small() -> HubSpotSimConfig {
    HubSpotSimConfig::default()
        .size(23, 7, 11)
        .engagements(3)
        .owners(4)
        .rate_limits(None, None)
}

impl Fixture {
    async fn start(config: HubSpotSimConfig) -> Fixture {
        let sim = HubSpotSim::start(config).await.expect("simulator starts");
        let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
        let tokens = sim.oauth().issue_token_set(None);
        store
            .save(&ConnectionId::from("acme-hubspot"), &tokens, None)
            .await
            .expect("token saved");
        Fixture { sim, store }
    }

    fn connector(&self) -> HubSpotConnector {
        let client = OAuthClient::new(
            self.sim.oauth_config("http://127.0.0.1/callback"),
            reqwest::Client::new(),
        )
        .expect("oauth client");
        let manager = TokenManager::builder(
            ConnectionId::from("acme-hubspot"),
            self.store.clone(),
            Arc::new(client),
        )
        .build();
        HubSpotConnector::builder()
            .base_url(self.sim.base_url())
            .oauth(manager)
            .client_secret(self.sim.config().client_secret.clone())
            .app_id(self.sim.config().app_id)
            .page_size(5)
            .search_page_size(5)
            .requests_per_10s(100_000)
            .build()
            .expect("connector builds")
    }
}

#[apex_connect_core::async_trait]
impl ConformanceFixture for Fixture {
    async fn connector(&self) -> Arc<dyn Connector> {
        Arc::new(Fixture::connector(self))
    }

    async fn expected(&self, stream: &StreamId) -> BTreeMap<String, Option<i64>> {
        self.sim.expected(stream.as_str())
    }

    async fn inject_rate_limit(&self, retry_after: Duration) -> Option<()> {
        self.sim
            .faults()
            .push_scheduled(FaultKind::TooManyRequests { retry_after });
        Some(())
    }

    async fn rate_limited_seen(&self) -> Option<u64> {
        Some(self.sim.rate_limited())
    }

    async fn inject_unauthorized_once(&self) -> Option<()> {
        self.sim.oauth().expire_access_tokens();
        Some(())
    }

    async fn token_refreshes(&self) -> Option<u64> {
        Some(self.sim.oauth().stats().refresh_token)
    }

    async fn signed_webhook(&self, now: SystemTime) -> Option<SignedWebhook> {
        let ids = vec![self.sim.id(streams::CONTACTS, 1).ok()?];
        let body = self
            .sim
            .webhook_body("contact.propertyChange", &ids, "CRM_UI", None, 100);
        let uri: Uri = HOOK_URL.parse().ok()?;
        let headers = self
            .sim
            .sign_webhook(SignatureVersion::V3, &uri, &body, now)
            .ok()?;
        Some((Method::POST, uri, headers, body))
    }

    async fn secrets(&self) -> Option<Vec<String>> {
        let c = self.sim.config();
        let mut s = vec![c.private_app_token.clone(), c.client_secret.clone()];
        s.extend(self.sim.oauth().latest_refresh_token());
        Some(s)
    }

    async fn inject_hostile(&self, stream: &StreamId, seed: u64) -> Option<Vec<String>> {
        HubSpotSim::is_object_stream(stream.as_str())
            .then(|| self.sim.inject_hostile(stream.as_str(), seed, 25).ok())
            .flatten()
    }

    async fn write_ops(&self, stream: &StreamId) -> Option<Vec<WriteOp>> {
        match stream.as_str() {
            streams::CONTACTS => Some(vec![
                WriteOp::new(
                    WriteAction::Update,
                    Some(self.sim.id(streams::CONTACTS, 2).ok()?),
                    serde_json::json!({"properties": {"apex_tier": "platinum"}}),
                ),
                WriteOp::new(
                    WriteAction::Update,
                    Some("999".into()),
                    serde_json::json!({"jobtitle": "CEO"}),
                ),
            ]),
            _ => None,
        }
    }
}

async fn fixture() -> Fixture {
    Fixture::start(small()).await
}

apex_connect_testkit::conformance!(fixture);

async fn read_all(
    c: &HubSpotConnector,
    stream: &str,
    from: Option<CursorToken>,
) -> (Vec<Record>, Option<CursorToken>, usize) {
    let stream = StreamId::from(stream.to_string());
    let mut pages = c.read_all(&stream, from);
    let mut records = Vec::new();
    let mut last = None;
    let mut n = 0;
    while let Some(page) = pages.next().await {
        let page = page.expect("page reads");
        n += 1;
        records.extend(page.records);
        last = page.next;
    }
    (records, last, n)
}

/// The entity of `r` (which must map to one).
fn entity(c: &HubSpotConnector, r: &Record) -> Entity {
    c.map_entity(r)
        .expect("maps")
        .expect("the stream maps to entities")
}

fn token_connector(sim: &HubSpotSim) -> apex_connect_hubspot::HubSpotConnectorBuilder {
    HubSpotConnector::builder()
        .base_url(sim.base_url())
        .private_app_token(sim.private_app_token())
        .client_secret(sim.config().client_secret.clone())
        .app_id(sim.config().app_id)
        .requests_per_10s(100_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_maps_entities_relations_and_custom_properties() {
    let sim = HubSpotSim::start(small()).await.unwrap();
    let mapping =
        apex_connect_hubspot::PropertyMapping::default().set("contacts", "apex_tier", "tier");
    let hs = token_connector(&sim)
        .property_mapping(mapping)
        .build()
        .unwrap();
    hs.check().await.unwrap();
    for s in streams::ALL {
        let (records, _, _) = read_all(&hs, s, None).await;
        let got: BTreeMap<String, Option<i64>> =
            records.iter().map(|r| (r.id.clone(), r.version)).collect();
        assert_eq!(got, sim.expected(s), "stream {s}");
    }
    let (contacts, _, _) = read_all(&hs, streams::CONTACTS, None).await;
    let e = &entity(&hs, &contacts[0]);
    assert!(
        e.attributes.contains_key("tier"),
        "custom property mapped: {e:?}"
    );
    assert!(
        e.identities
            .iter()
            .any(|i| matches!(i, apex_connect_core::Identity::Email(_)))
    );
    assert!(
        e.relations.iter().any(|r| r.kind == "works_at"),
        "{:?}",
        e.relations
    );
    assert!(e.relations.iter().any(|r| r.kind == "owned_by"));
    let (deals, _, _) = read_all(&hs, streams::DEALS, None).await;
    let d = &entity(&hs, &deals[0]);
    for a in ["amount", "stage", "pipeline", "close_date"] {
        assert!(d.attributes.contains_key(a), "{a}: {d:?}");
    }
    assert!(d.relations.iter().any(|r| r.kind == "deal_company"));
    assert!(
        d.custom_fields.contains_key("apex_forecast"),
        "unmapped custom property kept"
    );
    let (notes, _, _) = read_all(&hs, streams::NOTES, None).await;
    assert_eq!(
        entity(&hs, &notes[0]).kind,
        apex_connect_core::EntityKind::Activity
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_sync_past_the_search_cap_returns_each_change_once() {
    let config = HubSpotSimConfig::default()
        .size(12_000, 3, 3)
        .engagements(0)
        .owners(1)
        .rate_limits(None, Some(5));
    let sim = HubSpotSim::start(config).await.unwrap();
    let hs = token_connector(&sim).page_size(100).build().unwrap();
    let (all, cursor, _) = read_all(&hs, streams::CONTACTS, None).await;
    assert_eq!(all.len(), 12_000);
    // 10,500 changes, three per millisecond, then 450 sharing one millisecond (more than a
    // search page), then 300 more.
    let ids: Vec<String> = (0..11_250)
        .map(|i| sim.id(streams::CONTACTS, i).unwrap())
        .collect();
    sim.touch_many(streams::CONTACTS, &ids[..10_500], 3)
        .unwrap();
    sim.touch_many(streams::CONTACTS, &ids[10_500..10_950], 1_000)
        .unwrap();
    sim.touch_many(streams::CONTACTS, &ids[10_950..], 2)
        .unwrap();
    let searches_before = sim.search_requests();
    let started = std::time::Instant::now();
    let (changed, cursor2, _) = read_all(&hs, streams::CONTACTS, cursor).await;
    let elapsed = started.elapsed();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for r in &changed {
        *count.entry(r.id.as_str()).or_default() += 1;
    }
    let dups: Vec<_> = count.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dups.is_empty(), "duplicates: {dups:?}");
    assert_eq!(changed.len(), 11_250, "every change exactly once");
    let want = sim.expected(streams::CONTACTS);
    for r in &changed {
        assert_eq!(r.version, want[&r.id], "{}", r.id);
    }
    // The search limit was respected: no 429 from the search limiter.
    assert_eq!(sim.search_limiter().stats().rejected, 0);
    let searches = sim.search_requests() - searches_before;
    assert!(
        elapsed >= Duration::from_millis(190 * (searches - 1)),
        "{searches} searches in {elapsed:?}"
    );
    // Reading again: the lookback re-reads the recent window, deduplicated to nothing.
    let (again, _, _) = read_all(&hs, streams::CONTACTS, cursor2).await;
    assert!(again.is_empty(), "{} records re-read", again.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_partial_failure_conflict_and_force() {
    let sim = HubSpotSim::start(small()).await.unwrap();
    let hs = token_connector(&sim).build().unwrap();
    let c1 = sim.id(streams::CONTACTS, 1).unwrap();
    let c2 = sim.id(streams::CONTACTS, 2).unwrap();
    let c3 = sim.id(streams::CONTACTS, 3).unwrap();
    let email4 = sim
        .object(streams::CONTACTS, &sim.id(streams::CONTACTS, 4).unwrap())
        .unwrap()["properties"]["email"]
        .as_str()
        .unwrap()
        .to_string();
    // c2 and c3 changed in the CRM after the host's copy (version 1).
    sim.update(streams::CONTACTS, &c2, &[("jobtitle", "CFO")])
        .unwrap();
    sim.update(streams::CONTACTS, &c3, &[("jobtitle", "CFO")])
        .unwrap();
    let ops = vec![
        WriteOp::new(
            WriteAction::Update,
            Some(c1.clone()),
            serde_json::json!({"apex_tier": "platinum"}),
        )
        .with_key("k1"),
        WriteOp::new(
            WriteAction::Update,
            Some("10999999".into()),
            serde_json::json!({"jobtitle": "x"}),
        )
        .with_key("k2"),
        WriteOp::new(
            WriteAction::Update,
            Some(c2.clone()),
            serde_json::json!({"jobtitle": "Buyer"}),
        )
        .with_key("k3")
        .if_unmodified_since(1),
        WriteOp::new(
            WriteAction::Update,
            Some(c3.clone()),
            serde_json::json!({"jobtitle": "Buyer"}),
        )
        .with_key("k4")
        .if_unmodified_since(1)
        .force(),
        WriteOp::new(
            WriteAction::Upsert,
            Some("new.person@paper.example.com".into()),
            serde_json::json!({"firstname": "Nia"}),
        )
        .with_key("k5"),
        WriteOp::new(
            WriteAction::Upsert,
            Some(email4.clone()),
            serde_json::json!({"properties": {"lastname": "Upserted"}, "idProperty": "email"}),
        )
        .with_key("k6"),
        WriteOp::new(
            WriteAction::Create,
            None,
            serde_json::json!({"email": "created@paper.example.com"}),
        )
        .with_key("k7"),
        WriteOp::new(
            WriteAction::Custom("merge".into()),
            Some(c1.clone()),
            serde_json::json!({}),
        )
        .with_key("k8"),
    ];
    let report = hs.write(&StreamId::from("contacts"), ops).await.unwrap();
    let keys: Vec<&str> = report.results.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8"]);
    let kind = |i: usize| report.results[i].outcome.as_ref().unwrap_err().kind();
    assert_eq!(report.results[0].outcome.as_deref().unwrap(), c1);
    assert_eq!(kind(1), ErrorKind::NotFound);
    assert_eq!(kind(2), ErrorKind::Conflict);
    assert_eq!(report.results[3].outcome.as_deref().unwrap(), c3);
    let new_id = report.results[4].outcome.as_ref().unwrap().clone();
    assert_eq!(
        report.results[5].outcome.as_deref().unwrap(),
        sim.id(streams::CONTACTS, 4).unwrap()
    );
    assert!(report.results[6].outcome.is_ok());
    assert_eq!(kind(7), ErrorKind::Unsupported);
    assert_eq!(
        sim.object("contacts", &c1).unwrap()["properties"]["apex_tier"],
        "platinum"
    );
    assert_eq!(
        sim.object("contacts", &c2).unwrap()["properties"]["jobtitle"],
        "CFO",
        "conflict not overwritten"
    );
    assert_eq!(
        sim.object("contacts", &c3).unwrap()["properties"]["jobtitle"],
        "Buyer",
        "forced"
    );
    assert_eq!(
        sim.object("contacts", &new_id).unwrap()["properties"]["firstname"],
        "Nia"
    );
    // An unknown property fails its whole batch (HubSpot answers 400): each op reports it.
    let report = hs
        .write(
            &StreamId::from("contacts"),
            vec![WriteOp::new(
                WriteAction::Update,
                Some(c1),
                serde_json::json!({"no_such": "x"}),
            )],
        )
        .await
        .unwrap();
    assert_eq!(
        report.results[0].outcome.as_ref().unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    // Read-only streams refuse writes.
    let e = hs
        .write(&StreamId::from("owners"), vec![])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_of_every_version_parse_dedupe_fetch_and_drop_echoes() {
    let sim = HubSpotSim::start(small()).await.unwrap();
    let hs = token_connector(&sim).build().unwrap();
    let verifier = hs.webhooks().unwrap().verifier();
    let c5 = sim.id(streams::CONTACTS, 5).unwrap();
    let c6 = sim.id(streams::CONTACTS, 6).unwrap();
    let app = sim.config().app_id.to_string();
    sim.update(streams::CONTACTS, &c5, &[("lifecyclestage", "customer")])
        .unwrap();
    // Two events for c5 (one repeated: same eventId), one echo of our own write for c6.
    let mut events: Vec<serde_json::Value> = serde_json::from_slice(&sim.webhook_body(
        "contact.propertyChange",
        &[c5.clone(), c5.clone()],
        "CRM_UI",
        None,
        1,
    ))
    .unwrap();
    events[1]["eventId"] = events[0]["eventId"].clone();
    let echo: Vec<serde_json::Value> = serde_json::from_slice(&sim.webhook_body(
        "contact.propertyChange",
        std::slice::from_ref(&c6),
        "INTEGRATION",
        Some(&app),
        50,
    ))
    .unwrap();
    let del: Vec<serde_json::Value> = serde_json::from_slice(&sim.webhook_body(
        "deal.deletion",
        &[sim.id(streams::DEALS, 0).unwrap()],
        "CRM_UI",
        None,
        60,
    ))
    .unwrap();
    events.extend(echo);
    events.extend(del);
    let body = serde_json::to_vec(&events).unwrap();
    let uri: Uri = HOOK_URL.parse().unwrap();
    let now = SystemTime::now();
    for version in [
        SignatureVersion::V1,
        SignatureVersion::V2,
        SignatureVersion::V3,
    ] {
        let headers = sim.sign_webhook(version, &uri, &body, now).unwrap();
        let verified = verifier
            .verify(
                &WebhookRequest::new(&Method::POST, &uri, &headers, &body),
                now,
            )
            .unwrap();
        let changes = hs
            .parse(&VerifiedWebhook::new(
                verified,
                headers,
                body.clone().into(),
                now,
            ))
            .await
            .unwrap();
        let got: Vec<(&str, &str, Op)> = changes
            .iter()
            .map(|c| (c.stream.as_str(), c.id.as_str(), c.op))
            .collect();
        assert_eq!(
            got,
            vec![
                ("contacts", c5.as_str(), Op::Upsert),
                (
                    "deals",
                    sim.id(streams::DEALS, 0).unwrap().as_str(),
                    Op::Delete
                )
            ],
            "{version:?}"
        );
        let r = changes[0]
            .record
            .as_ref()
            .expect("thin event resolved by batch read");
        assert_eq!(
            r.raw.to_value().unwrap()["properties"]["lifecyclestage"],
            "customer"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_splits_per_event_and_each_part_parses_on_its_own() {
    let sim = HubSpotSim::start(small()).await.unwrap();
    let hs = token_connector(&sim).build().unwrap();
    let verifier = hs.webhooks().unwrap().verifier();
    let (c1, c2) = (
        sim.id(streams::CONTACTS, 1).unwrap(),
        sim.id(streams::CONTACTS, 2).unwrap(),
    );
    let deal = sim.id(streams::DEALS, 3).unwrap();
    let mut events: Vec<serde_json::Value> = serde_json::from_slice(&sim.webhook_body(
        "contact.propertyChange",
        &[c1.clone(), c2.clone()],
        "CRM_UI",
        None,
        700,
    ))
    .unwrap();
    events.extend(
        serde_json::from_slice::<Vec<serde_json::Value>>(&sim.webhook_body(
            "deal.deletion",
            std::slice::from_ref(&deal),
            "CRM_UI",
            None,
            900,
        ))
        .unwrap(),
    );
    let body = bytes::Bytes::from(serde_json::to_vec(&events).unwrap());
    let uri: Uri = HOOK_URL.parse().unwrap();
    let now = SystemTime::now();
    let headers = sim
        .sign_webhook(SignatureVersion::V3, &uri, &body, now)
        .unwrap();
    let verified = verifier
        .verify(
            &WebhookRequest::new(&Method::POST, &uri, &headers, &body),
            now,
        )
        .unwrap();
    // Through `Arc<dyn Connector>`, as a host holds it.
    let dyn_hs: Arc<dyn Connector> = Arc::new(hs);
    let hooks = dyn_hs.webhooks().expect("webhooks configured");
    let parts = hooks.events(&verified, &body).unwrap();
    let ids: Vec<&str> = parts.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["700", "701", "900"]);
    let mut got = Vec::new();
    for part in &parts {
        let changes = hooks
            .parse(&VerifiedWebhook::new(
                verified.clone(),
                headers.clone(),
                part.body.clone(),
                now,
            ))
            .await
            .unwrap();
        assert_eq!(changes.len(), 1, "{}", String::from_utf8_lossy(&part.body));
        got.push((
            changes[0].stream.to_string(),
            changes[0].id.clone(),
            changes[0].op,
        ));
    }
    assert_eq!(
        got,
        vec![
            ("contacts".to_string(), c1, Op::Upsert),
            ("contacts".to_string(), c2, Op::Upsert),
            ("deals".to_string(), deal, Op::Delete),
        ]
    );
    // A signed body that is not JSON is refused before anything is stored.
    assert!(matches!(
        hooks.events(&verified, &bytes::Bytes::from_static(b"[{")),
        Err(apex_connect_core::WebhookError::Malformed(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_rate_limit_headers_and_429_bodies_are_honoured() {
    // The simulator allows 12 requests per 10 s; the connector's own gate allows more, so the
    // platform's headers must slow it down.
    let config = small().rate_limits(Some(12), Some(5));
    let sim = HubSpotSim::start(config).await.unwrap();
    let hs = token_connector(&sim).page_size(3).build().unwrap();
    let started = std::time::Instant::now();
    let (records, _, pages) = read_all(&hs, streams::CONTACTS, None).await;
    assert_eq!(records.len(), 23);
    assert_eq!(pages, 8);
    // 9 requests (properties + 8 pages) fit one window: no 429 and no wait.
    assert_eq!(sim.rate_limited(), 0);
    let (records, _, _) = read_all(&hs, streams::COMPANIES, None).await;
    assert_eq!(records.len(), 7);
    // The second sync needed a new window: the gate waited for it instead of hammering.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        sim.limiter().stats().rejected,
        0,
        "{:?}",
        sim.limiter().stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_search_cap_answers_400_and_search_has_no_rate_headers() {
    let sim = HubSpotSim::start(
        HubSpotSimConfig::default()
            .size(12_000, 1, 1)
            .engagements(0)
            .rate_limits(Some(190), None),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/crm/v3/objects/contacts/search", sim.base_url());
    let search = |after: &str, limit: u32| {
        http.post(&url).bearer_auth(sim.private_app_token()).json(&serde_json::json!({
            "filterGroups": [{"filters": [{"propertyName": "lastmodifieddate", "operator": "GTE", "value": "0"}]}],
            "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
            "limit": limit, "after": after
        }))
    };
    let ok = search("9900", 100).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(
        ok.headers().get("x-hubspot-ratelimit-remaining").is_none(),
        "search answers carry no rate headers"
    );
    let body: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(body["total"], 12_000);
    assert!(body.get("paging").is_none(), "no page past the cap");
    let past = search("9950", 100).send().await.unwrap();
    assert_eq!(past.status(), 400);
    let body: serde_json::Value = past.json().await.unwrap();
    assert_eq!(body["category"], "VALIDATION_ERROR");
    let list = http
        .get(format!(
            "{}/crm/v3/objects/contacts?limit=1",
            sim.base_url()
        ))
        .bearer_auth(sim.private_app_token())
        .send()
        .await
        .unwrap();
    assert_eq!(list.headers()["x-hubspot-ratelimit-max"], "190");
    assert!(
        list.headers()
            .contains_key("x-hubspot-ratelimit-interval-milliseconds")
    );
    let unauth = http
        .get(format!("{}/crm/v3/objects/contacts", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);
}
