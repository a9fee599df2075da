//! The shared conformance suite against `FrontSim`, plus end-to-end syncs (full and
//! incremental) checked against the simulator's data set.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use apex_connect_core::oauth::{OAuthClient, TokenManager};
use apex_connect_core::webhook::{WebhookRequest, unix_ms};
use apex_connect_core::{
    ConnectionId, Connector, ConnectorExt, CursorToken, MemoryTokenStore, Op, Record, StreamId,
    SyncCursor, TokenStore, VerifiedWebhook, WebhookError, WebhookVerifier, WriteAction, WriteOp,
};
use apex_connect_frontapp::{FrontConnector, FrontSim, FrontSimConfig, FrontSimHandle, streams};
use apex_connect_testkit::conformance::{ConformanceFixture, SignedWebhook};
use apex_connect_testkit::hostile;
use apex_connect_testkit::sim::FaultKind;
use futures::StreamExt;
use http::{HeaderMap, Method, Uri};
use secrecy::SecretString;
use serde_json::Value;

/// A record's raw JSON as a value (tests only).
fn v(r: &Record) -> Value {
    r.raw.to_value().expect("raw is JSON")
}

/// The fields each stream's envelope reads: kept valid in hostile variants.
fn keep(stream: &str) -> &'static [&'static str] {
    match stream {
        streams::CONVERSATIONS | streams::CONTACTS | streams::TAGS => &["id", "updated_at"],
        streams::MESSAGES => &["id", "created_at"],
        streams::COMMENTS => &["id", "posted_at"],
        streams::EVENTS => &["id", "emitted_at"],
        _ => &["id"],
    }
}

/// Front's documented example objects of `stream` (from its OpenAPI spec's examples).
fn spec_examples(stream: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/spec_examples.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("spec examples");
    let all: Value = serde_json::from_str(&text).expect("spec examples are JSON");
    all["examples"][stream]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

struct Fixture {
    sim: FrontSimHandle,
    store: Arc<dyn TokenStore>,
}

fn small() -> FrontSimConfig {
    let mut c = FrontSimConfig::default().size(12, 3).contacts(9).tags(4);
    c.max_page_size = 100;
    c
}

impl Fixture {
    async fn start(config: FrontSimConfig) -> Fixture {
        let sim = FrontSim::start(config).await.expect("simulator starts");
        let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
        let tokens = sim.oauth().issue_token_set(None);
        let conn = ConnectionId::from("acme-front");
        store.save(&conn, &tokens, None).await.expect("token saved");
        Fixture { sim, store }
    }

    /// A connector on OAuth (refreshable), small pages so that every stream has several.
    fn connector_with(&self, page_size: u32) -> FrontConnector {
        let client = OAuthClient::new(
            self.sim.oauth_config("http://127.0.0.1/callback"),
            reqwest::Client::new(),
        )
        .expect("oauth client");
        let manager = TokenManager::builder(
            ConnectionId::from("acme-front"),
            self.store.clone(),
            Arc::new(client),
        )
        .build();
        FrontConnector::builder()
            .base_url(self.sim.base_url())
            .oauth(manager)
            .page_size(page_size)
            .webhook_secret(self.sim.webhook_secret())
            .build()
            .expect("connector builds")
    }
}

#[apex_connect_core::async_trait]
impl ConformanceFixture for Fixture {
    async fn connector(&self) -> Arc<dyn Connector> {
        Arc::new(self.connector_with(5))
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
        Some(self.sim.stats().rate_limited)
    }

    async fn inject_unauthorized_once(&self) -> Option<()> {
        self.sim.oauth().expire_access_tokens();
        Some(())
    }

    async fn token_refreshes(&self) -> Option<u64> {
        Some(self.sim.oauth().stats().refresh_token)
    }

    async fn signed_webhook(&self, now: SystemTime) -> Option<SignedWebhook> {
        let id = self
            .sim
            .touch_conversation(&self.sim.conversation_id(1))
            .ok()?;
        let body = self.sim.webhook_body(&id).ok()?;
        let (m, u) = (
            Method::POST,
            Uri::from_static("/webhooks/frontapp/acme-front"),
        );
        let headers = self
            .sim
            .webhook_verifier()
            .sign(&WebhookRequest::new(&m, &u, &HeaderMap::new(), &body), now)
            .ok()?;
        Some((m, u, headers, body))
    }

    async fn secrets(&self) -> Option<Vec<String>> {
        let c = self.sim.config();
        let mut s = vec![
            c.api_token.clone(),
            c.oauth_client_secret.clone(),
            c.webhook_secret.clone(),
        ];
        s.extend(self.sim.oauth().latest_refresh_token());
        Some(s)
    }

    /// Hostile variants of Front's documented example objects (the spec's examples), added
    /// to the simulator as they are (see `FrontSimHandle::add_raw`).
    async fn inject_hostile(&self, stream: &StreamId, seed: u64) -> Option<Vec<String>> {
        let variants: Vec<Value> = spec_examples(stream.as_str())
            .iter()
            .flat_map(|e| hostile::variants(e, keep(stream.as_str()), seed, 12))
            .collect();
        self.sim.add_raw(stream.as_str(), variants).ok()
    }

    async fn write_ops(&self, stream: &StreamId) -> Option<Vec<WriteOp>> {
        match stream.as_str() {
            streams::CONVERSATIONS => Some(vec![
                WriteOp::new(
                    WriteAction::Custom("tag".into()),
                    Some(self.sim.conversation_id(0)),
                    serde_json::json!({"tag_ids": [self.sim.tag_id(1)]}),
                ),
                WriteOp::new(
                    WriteAction::Custom("comment".into()),
                    Some(self.sim.conversation_id(0)),
                    serde_json::json!({"body": "Escalating to Michael"}),
                ),
            ]),
            streams::CONTACTS => Some(vec![WriteOp::new(
                WriteAction::Update,
                Some(self.sim.contact_id(0)),
                serde_json::json!({"custom_fields": {"Tier": "platinum"}}),
            )]),
            _ => None,
        }
    }
}

async fn fixture() -> Fixture {
    Fixture::start(small()).await
}

apex_connect_testkit::conformance!(fixture);

async fn read_all(
    c: &FrontConnector,
    stream: &str,
    from: Option<CursorToken>,
) -> (Vec<apex_connect_core::Record>, Option<CursorToken>) {
    let stream = StreamId::from(stream.to_string());
    let mut pages = c.read_all(&stream, from);
    let mut records = Vec::new();
    let mut last = None;
    while let Some(page) = pages.next().await {
        let page = page.expect("page reads");
        records.extend(page.records);
        last = page.next;
    }
    (records, last)
}

fn versions(records: &[apex_connect_core::Record]) -> BTreeMap<String, Option<i64>> {
    let mut out = BTreeMap::new();
    for r in records {
        if r.op == Op::Upsert {
            out.insert(r.id.clone(), r.version);
        }
    }
    out
}

#[tokio::test]
async fn full_sync_with_api_token_equals_data_set() {
    let sim = FrontSim::start(
        FrontSimConfig::default()
            .size(130, 4)
            .contacts(120)
            .tags(12),
    )
    .await
    .unwrap();
    let front = FrontConnector::builder()
        .base_url(sim.base_url())
        .api_token(sim.api_token())
        .build()
        .unwrap();
    front.check().await.unwrap();
    for s in streams::ALL {
        let (records, _) = read_all(&front, s, None).await;
        let got = versions(&records);
        assert_eq!(got, sim.expected(s), "stream {s}");
        assert!(
            records
                .iter()
                .all(|r| front.map_entity(r).unwrap().is_some()),
            "stream {s} maps entities"
        );
    }
    // Each message names its conversation.
    let (messages, _) = read_all(&front, streams::MESSAGES, None).await;
    let m = &messages[0];
    let rel = &front.map_entity(m).unwrap().unwrap().relations;
    assert!(rel.iter().any(|r| r.kind == "in_conversation"), "{rel:?}");
    assert!(sim.stats().requests > 0);
}

#[tokio::test]
async fn incremental_sync_picks_up_mutations_through_events() {
    let sim = FrontSim::start(small()).await.unwrap();
    let front = FrontConnector::builder()
        .base_url(sim.base_url())
        .api_token(sim.api_token())
        .page_size(4)
        .build()
        .unwrap();
    let mut cursors = BTreeMap::new();
    for s in [
        streams::CONVERSATIONS,
        streams::MESSAGES,
        streams::COMMENTS,
        streams::CONTACTS,
        streams::TAGS,
        streams::EVENTS,
    ] {
        let (_, cursor) = read_all(&front, s, None).await;
        cursors.insert(s, cursor);
    }

    let c3 = sim.conversation_id(3);
    let c7 = sim.conversation_id(7);
    let msg = sim.add_message(&c3, "Where is my paper?", true).unwrap();
    sim.tag(&c7, &sim.tag_id(2)).unwrap();
    let com = sim.add_comment(&c7, "@jim can you call them?").unwrap();
    let crd = sim.contact_id(4);
    let mut fields = serde_json::Map::new();
    fields.insert("Tier".into(), serde_json::json!("platinum"));
    sim.update_contact(&crd, fields).unwrap();

    let (convs, _) = read_all(
        &front,
        streams::CONVERSATIONS,
        cursors[streams::CONVERSATIONS].clone(),
    )
    .await;
    let ids: Vec<&str> = convs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![c3.as_str(), c7.as_str()],
        "changed conversations, each once"
    );
    let want = sim.expected(streams::CONVERSATIONS);
    for r in &convs {
        assert_eq!(r.version, want[&r.id], "{}", r.id);
    }

    let (msgs, _) = read_all(
        &front,
        streams::MESSAGES,
        cursors[streams::MESSAGES].clone(),
    )
    .await;
    assert_eq!(
        msgs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec![msg.as_str()]
    );
    assert_eq!(v(&msgs[0])["text"], "Where is my paper?");

    let (coms, _) = read_all(
        &front,
        streams::COMMENTS,
        cursors[streams::COMMENTS].clone(),
    )
    .await;
    assert_eq!(
        coms.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec![com.as_str()]
    );

    let (contacts, _) = read_all(
        &front,
        streams::CONTACTS,
        cursors[streams::CONTACTS].clone(),
    )
    .await;
    assert_eq!(
        contacts.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec![crd.as_str()]
    );
    assert_eq!(v(&contacts[0])["custom_fields"]["Tier"], "platinum");

    let (tags, _) = read_all(&front, streams::TAGS, cursors[streams::TAGS].clone()).await;
    assert!(tags.is_empty(), "no tag object changed: {tags:?}");

    let (events, _) = read_all(&front, streams::EVENTS, cursors[streams::EVENTS].clone()).await;
    let kinds: Vec<String> = events
        .iter()
        .filter_map(|r| v(r)["type"].as_str().map(str::to_string))
        .collect();
    // The walk re-reads the 60 s lookback before the previous walk's newest event (here the
    // last generated one) but skips the events the previous walk read: only the new ones.
    assert_eq!(kinds, ["inbound", "tag", "comment", "contact_updated"]);
    let events_cursor = events_cursor(&front, &cursors).await;
    // Read again with nothing new: the lookback window (now holding the four new events) is
    // re-read and yields no duplicates.
    let (again, after_again) = read_all(&front, streams::EVENTS, Some(events_cursor.clone())).await;
    assert!(
        again.is_empty(),
        "a re-read yields no duplicates: {again:?}"
    );
    // The dedupe is what removed them: the same cursor without its memory re-reads them.
    let mut forgetful =
        apex_connect_frontapp::cursor::EventsCursor::from_token(&events_cursor).unwrap();
    assert_eq!(forgetful.0.seen.len(), 4, "{:?}", forgetful.0.seen);
    forgetful.0.seen.clear();
    let (reread, _) = read_all(&front, streams::EVENTS, Some(forgetful.to_token())).await;
    assert_eq!(reread.len(), 4);
    assert!(after_again.is_some());

    // The conversations stream dedupes its events as well: nothing changed, nothing fetched.
    let (_, conv_cursor) = read_all(
        &front,
        streams::CONVERSATIONS,
        cursors[streams::CONVERSATIONS].clone(),
    )
    .await;
    let (convs_again, _) = read_all(&front, streams::CONVERSATIONS, conv_cursor).await;
    assert!(convs_again.is_empty(), "{convs_again:?}");
}

/// The events cursor after reading everything from the stored one.
async fn events_cursor(
    front: &FrontConnector,
    cursors: &BTreeMap<&str, Option<CursorToken>>,
) -> CursorToken {
    read_all(front, streams::EVENTS, cursors[streams::EVENTS].clone())
        .await
        .1
        .expect("events cursor")
}

#[tokio::test]
async fn webhooks_verify_parse_and_handshake() {
    let sim = FrontSim::start(small()).await.unwrap();
    let front = FrontConnector::builder()
        .base_url(sim.base_url())
        .api_token(sim.api_token())
        .webhook_secret(sim.webhook_secret())
        .build()
        .unwrap();
    let hooks = front.webhooks().expect("a webhook secret is set");
    let verifier = hooks.verifier();
    let c2 = sim.conversation_id(2);
    let mid = sim.add_message(&c2, "Need 500 reams", true).unwrap();
    let evt = sim.latest_event_id().unwrap();
    let body = sim.webhook_body(&evt).unwrap();
    let now = SystemTime::now();
    let (m, u) = (Method::POST, Uri::from_static("/webhooks/frontapp/acme"));
    let headers = verifier
        .sign(&WebhookRequest::new(&m, &u, &HeaderMap::new(), &body), now)
        .unwrap();
    let verified = verifier
        .verify(&WebhookRequest::new(&m, &u, &headers, &body), now)
        .unwrap();
    assert_eq!(verified.event_id.as_deref(), Some(evt.as_str()));
    // One inbox event, keyed by the event id, with the body as received.
    let body = bytes::Bytes::from(body);
    let events = hooks.events(&verified, &body).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].id.as_str(), &events[0].body),
        (evt.as_str(), &body)
    );
    let mut unverified = verified.clone();
    unverified.event_id = None;
    assert_eq!(hooks.events(&unverified, &body).unwrap()[0].id, evt);
    // A correctly signed body that is not a JSON object is refused here (400, nothing
    // stored), not accepted and dead-lettered later.
    for junk in [&b"not json"[..], b"[1,2]", b"42"] {
        let h = verifier
            .sign(&WebhookRequest::new(&m, &u, &HeaderMap::new(), junk), now)
            .unwrap();
        let signed = verifier
            .verify(&WebhookRequest::new(&m, &u, &h, junk), now)
            .unwrap();
        let e = hooks
            .events(&signed, &bytes::Bytes::copy_from_slice(junk))
            .unwrap_err();
        assert!(matches!(e, WebhookError::Malformed(_)), "{e:?}");
    }
    let changes = hooks
        .parse(&VerifiedWebhook::new(verified, headers, body, now))
        .await
        .unwrap();
    let got: Vec<(&str, &str, &str)> = changes
        .iter()
        .map(|c| (c.stream.as_str(), c.id.as_str(), c.event_type.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("messages", mid.as_str(), "inbound_received"),
            ("conversations", c2.as_str(), "inbound_received")
        ]
    );
    // The event carried a message preview: the full message (with its text) was fetched.
    let msg = changes[0].record.as_ref().unwrap();
    assert_eq!(v(msg)["text"], "Need 500 reams");
    assert_eq!(msg.parent.as_deref(), Some(c2.as_str()));
    assert!(changes[0].occurred_at.unwrap() <= unix_ms(SystemTime::now()));

    // Handshake: the verifier answers Front's challenge.
    let mut h = verifier
        .sign(
            &WebhookRequest::new(
                &m,
                &u,
                &HeaderMap::new(),
                br#"{"type":"sync","authorization":{"id":"cmp_acme"}}"#,
            ),
            now,
        )
        .unwrap();
    h.insert("x-front-challenge", "abc".parse().unwrap());
    let ok = verifier
        .verify(
            &WebhookRequest::new(
                &m,
                &u,
                &h,
                br#"{"type":"sync","authorization":{"id":"cmp_acme"}}"#,
            ),
            now,
        )
        .unwrap();
    assert_eq!(&ok.reply.unwrap().body[..], br#"{"challenge":"abc"}"#);
    let sync = VerifiedWebhook::new(
        Default::default(),
        HeaderMap::new(),
        br#"{"type":"sync","authorization":{"id":"cmp_acme"}}"#
            .to_vec()
            .into(),
        now,
    );
    assert!(hooks.parse(&sync).await.unwrap().is_empty());
}

#[tokio::test]
async fn contact_update_webhook_end_to_end() {
    let sim = FrontSim::start(small()).await.unwrap();
    let front = FrontConnector::builder()
        .base_url(sim.base_url())
        .api_token(sim.api_token())
        .webhook_secret(sim.webhook_secret())
        .build()
        .unwrap();
    let crd = sim.contact_id(3);
    let mut fields = serde_json::Map::new();
    fields.insert("Tier".into(), serde_json::json!("platinum"));
    sim.update_contact(&crd, fields).unwrap();
    let evt = sim.latest_event_id().unwrap();
    let event = sim.event(&evt).unwrap();
    assert_eq!(event["type"], apex_connect_frontapp::sim::CONTACT_UPDATED);
    assert_eq!(event["target"]["_meta"]["type"], "contact");
    assert!(event["conversation"].is_null());

    // Delivered as Front delivers it (signed, over HTTP) to a receiver that verifies and
    // parses it.
    let received = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/webhooks/frontapp/acme",
        listener.local_addr().unwrap()
    );
    let (front2, got) = (front.clone(), received.clone());
    let app = axum::Router::new().route(
        "/webhooks/frontapp/acme",
        axum::routing::post(
            move |method: Method, uri: Uri, headers: HeaderMap, body: axum::body::Bytes| {
                let (front, got) = (front2.clone(), got.clone());
                async move {
                    let now = SystemTime::now();
                    let hooks = front.webhooks().unwrap();
                    let Ok(verified) = hooks
                        .verifier()
                        .verify(&WebhookRequest::new(&method, &uri, &headers, &body), now)
                    else {
                        return http::StatusCode::UNAUTHORIZED;
                    };
                    let changes = hooks
                        .parse(&VerifiedWebhook::new(verified, headers, body, now))
                        .await
                        .unwrap();
                    got.lock().await.extend(changes);
                    http::StatusCode::OK
                }
            },
        ),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let delivery = sim.send_webhook(&url, &evt).await.unwrap();
    assert_eq!(delivery.status, 200);
    server.abort();

    let changes = received.lock().await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    let c = &changes[0];
    assert_eq!(
        (c.stream.as_str(), c.id.as_str(), c.event_type.as_str()),
        ("contacts", crd.as_str(), "contact_updated")
    );
    let rec = c.record.as_ref().expect("the contact was fetched");
    assert_eq!(v(rec)["custom_fields"]["Tier"], "platinum");
    assert_eq!(rec.version, sim.expected(streams::CONTACTS)[&crd]);

    // Front's write-back path (PATCH /contacts/{id}) emits the same event.
    let op = WriteOp::new(
        WriteAction::Update,
        Some(sim.contact_id(5)),
        serde_json::json!({"name": "Jan Levinson"}),
    );
    let report = front
        .write(&StreamId::from(streams::CONTACTS), vec![op])
        .await
        .unwrap();
    assert!(report.results[0].outcome.is_ok());
    let evt = sim.latest_event_id().unwrap();
    assert_eq!(
        sim.event(&evt).unwrap()["target"]["data"]["name"],
        "Jan Levinson"
    );
}

#[tokio::test]
async fn write_back_against_simulator() {
    let sim = FrontSim::start(small()).await.unwrap();
    let front = FrontConnector::builder()
        .base_url(sim.base_url())
        .api_token(sim.api_token())
        .build()
        .unwrap();
    let c0 = sim.conversation_id(0);
    let report = front
        .write(
            &StreamId::from("conversations"),
            vec![
                WriteOp::new(
                    WriteAction::Custom("tag".into()),
                    Some(c0.clone()),
                    serde_json::json!({"tag_ids": [sim.tag_id(3)]}),
                ),
                WriteOp::new(
                    WriteAction::Custom("untag".into()),
                    Some(c0.clone()),
                    serde_json::json!({"tag_ids": [sim.tag_id(3)]}),
                ),
                WriteOp::new(
                    WriteAction::Custom("comment".into()),
                    Some(c0.clone()),
                    serde_json::json!({"body": "hi"}),
                ),
                WriteOp::new(
                    WriteAction::Custom("tag".into()),
                    Some(c0.clone()),
                    serde_json::json!({"tag_ids": ["tag_zzzz"]}),
                ),
                WriteOp::new(
                    WriteAction::Custom("tag".into()),
                    Some("cnv_zzzzzz".into()),
                    serde_json::json!({"tag_ids": [sim.tag_id(1)]}),
                ),
                WriteOp::new(
                    WriteAction::Custom("tag".into()),
                    Some(c0.clone()),
                    serde_json::json!({}),
                ),
                WriteOp::new(WriteAction::Delete, Some(c0.clone()), serde_json::json!({})),
            ],
        )
        .await
        .unwrap();
    assert_eq!(report.results.len(), 7);
    assert!(report.results[0].outcome.is_ok());
    assert!(report.results[1].outcome.is_ok());
    assert!(
        report.results[2]
            .outcome
            .as_ref()
            .unwrap()
            .starts_with("com_")
    );
    let kind = |i: usize| report.results[i].outcome.as_ref().unwrap_err().kind();
    assert_eq!(kind(3), apex_connect_core::ErrorKind::NotFound);
    assert_eq!(kind(4), apex_connect_core::ErrorKind::NotFound);
    assert_eq!(kind(5), apex_connect_core::ErrorKind::InvalidInput);
    assert_eq!(kind(6), apex_connect_core::ErrorKind::Unsupported);

    let crd = sim.contact_id(2);
    let report = front
        .write(
            &StreamId::from("contacts"),
            vec![
                WriteOp::new(
                    WriteAction::Update,
                    Some(crd.clone()),
                    serde_json::json!({"custom_fields": {"Tier": "gold+"}}),
                ),
                WriteOp::new(
                    WriteAction::Update,
                    Some(crd.clone()),
                    serde_json::json!({"custom_fields": 5}),
                ),
                WriteOp::new(
                    WriteAction::Update,
                    Some(crd.clone()),
                    serde_json::json!({"custom_fields": {"x": 1}}),
                )
                .if_unmodified_since(1),
            ],
        )
        .await
        .unwrap();
    assert!(report.results[0].outcome.is_ok());
    assert_eq!(
        report.results[1].outcome.as_ref().unwrap_err().kind(),
        apex_connect_core::ErrorKind::InvalidInput
    );
    assert_eq!(
        report.results[2].outcome.as_ref().unwrap_err().kind(),
        apex_connect_core::ErrorKind::Conflict
    );
    let (contacts, _) = read_all(&front, streams::CONTACTS, None).await;
    let c = contacts.iter().find(|r| r.id == crd).unwrap();
    assert_eq!(v(c)["custom_fields"]["Tier"], "gold+");
}

#[tokio::test]
async fn bad_token_is_unauthenticated_and_secret_free() {
    let sim = FrontSim::start(small()).await.unwrap();
    let front = FrontConnector::builder()
        .base_url(sim.base_url())
        .api_token(SecretString::from("wrong-token-123"))
        .build()
        .unwrap();
    let e = front.check().await.unwrap_err();
    assert_eq!(e.kind(), apex_connect_core::ErrorKind::Unauthenticated);
    let text = format!("{e} {e:?} {front:?}");
    assert!(!text.contains("wrong-token-123"), "{text}");
}

#[tokio::test]
async fn million_message_account_is_generated_on_the_fly() {
    // 10,000 conversations x 100 messages: nothing is materialised, reads anywhere are cheap.
    let sim = FrontSim::start(
        FrontSimConfig::default()
            .size(10_000, 100)
            .contacts(100_000),
    )
    .await
    .unwrap();
    assert_eq!(sim.count(streams::MESSAGES), 1_000_000);
    assert_eq!(sim.count(streams::EVENTS), 1_000_000);
    let front = FrontConnector::builder()
        .base_url(sim.base_url())
        .api_token(sim.api_token())
        .build()
        .unwrap();
    let s = StreamId::from(streams::MESSAGES);
    let page = front.read(&s, None).await.unwrap();
    assert!(page.has_more);
    // The first batch: the 8 newest conversations' messages, fetched concurrently and
    // emitted in walk order (newest conversation first, each newest message first).
    assert_eq!(
        page.records.len(),
        800,
        "8 conversations' 100 messages each"
    );
    let want: Vec<String> = (0..8u64)
        .flat_map(|c| (0..100u64).map(move |j| (9_999 - c) * 100 + 99 - j))
        .map(|i| format!("msg_{}", b36(i)))
        .collect();
    let got: Vec<&str> = page.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(got, want);
    assert_eq!(
        page.records[0].id, "msg_lflr",
        "newest first: message 999,999 (base 36)"
    );
    // The events feed from a recent point: a binary search, not a scan of a million events.
    let c = sim.conversation_id(9_999);
    sim.add_message(&c, "late", false).unwrap();
    let last_generated = sim.event("evt_lflr").unwrap()["emitted_at"]
        .as_f64()
        .unwrap();
    let ec = apex_connect_frontapp::cursor::EventsCursor(
        apex_connect_frontapp::cursor::EventsPosition::after(Some(
            apex_connect_frontapp::models::secs_to_ms(last_generated),
        )),
    )
    .to_token();
    let (events, _) = read_all(&front, streams::EVENTS, Some(ec)).await;
    assert!(
        events.len() <= 3,
        "lookback re-reads at most a minute of events: {}",
        events.len()
    );
    assert_eq!(v(events.last().unwrap())["type"], "outbound");
}

#[tokio::test]
async fn oauth_connect_then_sync_within_the_rate_limit() {
    let sim = FrontSim::start(small().rate_limit(25, Duration::from_secs(1)))
        .await
        .unwrap();
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    let manager = sim
        .oauth_connect(store.clone(), ConnectionId::from("acme"))
        .await
        .unwrap();
    assert!(
        store
            .load(&ConnectionId::from("acme"))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(sim.oauth().stats().authorization_code, 1);
    let front = FrontConnector::builder()
        .base_url(sim.base_url())
        .oauth(manager)
        .page_size(3)
        .build()
        .unwrap();
    let (messages, _) = read_all(&front, streams::MESSAGES, None).await;
    assert_eq!(versions(&messages), sim.expected(streams::MESSAGES));
    let windows = sim.limiter().stats();
    let late_429s: u64 = windows
        .rejected_by_window
        .iter()
        .filter(|(w, _)| **w > 0)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        late_429s, 0,
        "the gate follows x-ratelimit-* headers: {windows:?}"
    );
}

#[tokio::test]
async fn realistic_account_full_sync_figures() {
    let sim = FrontSim::start(FrontSimConfig::realistic()).await.unwrap();
    let front = FrontConnector::builder()
        .base_url(sim.base_url())
        .api_token(sim.api_token())
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let mut total = 0usize;
    for s in [
        streams::CONVERSATIONS,
        streams::MESSAGES,
        streams::CONTACTS,
        streams::TAGS,
    ] {
        let (records, _) = read_all(&front, s, None).await;
        assert_eq!(versions(&records), sim.expected(s), "stream {s}");
        total += records.len();
    }
    let secs = started.elapsed().as_secs_f64();
    let http = front.http_stats();
    println!(
        "realistic account: {total} records in {secs:.2}s ({:.0} records/s), {} requests",
        total as f64 / secs,
        http.requests_sent
    );
    assert_eq!(total as u64, 1_000 + 5_000 + 800 + 40);
}

#[tokio::test]
async fn rule_webhook_previews_are_completed_through_the_api() {
    let sim = FrontSim::start(small()).await.unwrap();
    let front = FrontConnector::builder()
        .base_url(sim.base_url())
        .api_token(sim.api_token())
        .rule_webhook_secret(SecretString::from("rule-api-secret"))
        .build()
        .unwrap();
    let hooks = front.webhooks().expect("a rule webhook secret is set");
    let verifier = hooks.verifier();
    let c5 = sim.conversation_id(5);
    let body = serde_json::to_vec(&serde_json::json!({
        "_links": {"self": format!("{}/events/evt_preview", sim.base_url())},
        "id": "evt_preview", "type": "archive", "emitted_at": 1_703_102_616.5,
        "conversation": {"_links": {"self": format!("{}/conversations/{c5}", sim.base_url())}, "id": c5},
    }))
    .unwrap();
    let now = SystemTime::now();
    let (m, u) = (Method::POST, Uri::from_static("/webhooks/frontapp/rule"));
    let headers = verifier
        .sign(&WebhookRequest::new(&m, &u, &HeaderMap::new(), &body), now)
        .unwrap();
    let verified = verifier
        .verify(&WebhookRequest::new(&m, &u, &headers, &body), now)
        .unwrap();
    assert_eq!(verified.event_id.as_deref(), Some("evt_preview"));
    let changes = hooks
        .parse(&VerifiedWebhook::new(verified, headers, body.into(), now))
        .await
        .unwrap();
    assert_eq!(changes.len(), 1);
    let c = &changes[0];
    assert_eq!(
        (c.stream.as_str(), c.id.as_str(), c.event_type.as_str()),
        ("conversations", c5.as_str(), "archive")
    );
    assert_eq!(c.occurred_at, Some(1_703_102_616_500));
    let rec = c
        .record
        .as_ref()
        .expect("the preview was completed with GET /conversations/{id}");
    assert!(v(rec)["subject"].is_string());
    assert_eq!(rec.version, sim.expected(streams::CONVERSATIONS)[&c5]);

    // Not an event at all: InvalidInput.
    let junk = VerifiedWebhook::new(
        Default::default(),
        HeaderMap::new(),
        b"[1,2]".to_vec().into(),
        now,
    );
    assert_eq!(
        hooks.parse(&junk).await.unwrap_err().kind(),
        apex_connect_core::ErrorKind::InvalidInput
    );
}

/// Lower-case base 36, as the simulator's ids.
fn b36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

/// The nested walk with concurrency, conversations longer than one page of messages and a
/// request budget that ends inside them: records come out in walk order, each once, and
/// resuming from every page boundary (fresh connector) yields exactly the rest.
#[tokio::test]
async fn concurrent_nested_walk_keeps_order_and_exact_cursors() {
    let sim = FrontSim::start(FrontSimConfig::default().size(12, 7).contacts(5))
        .await
        .unwrap();
    let build = || {
        let mut cfg = apex_connect_frontapp::FrontConfig::default();
        cfg.page_size = 3;
        cfg.nested_requests_per_read = 4;
        cfg.nested_concurrency = 3;
        FrontConnector::builder()
            .config(cfg)
            .base_url(sim.base_url())
            .api_token(sim.api_token())
            .build()
            .unwrap()
    };
    // Conversations newest first (11 .. 0), each one's messages newest first.
    let want: Vec<String> = (0..12u64)
        .rev()
        .flat_map(|c| (0..7u64).rev().map(move |j| c * 7 + j))
        .map(|i| format!("msg_{}", b36(i)))
        .collect();

    let front = build();
    let stream = StreamId::from(streams::MESSAGES);
    let mut pages = Vec::new();
    let mut cursor: Option<CursorToken> = None;
    loop {
        let page = front.read(&stream, cursor.as_ref()).await.unwrap();
        let more = page.has_more;
        cursor = page.next.clone();
        pages.push(page);
        if !more {
            break;
        }
    }
    let ids = |ps: &[apex_connect_core::Page]| -> Vec<String> {
        ps.iter()
            .flat_map(|p| p.records.iter().map(|r| r.id.clone()))
            .collect()
    };
    assert_eq!(ids(&pages), want, "walk order, each message once");
    assert!(
        pages.len() > 5,
        "the budget split the walk: {} pages",
        pages.len()
    );

    for i in 0..pages.len() - 1 {
        let fresh = build();
        let mut got = ids(&pages[..=i]);
        let mut c = pages[i].next.clone();
        loop {
            let page = fresh.read(&stream, c.as_ref()).await.unwrap();
            got.extend(page.records.iter().map(|r| r.id.clone()));
            if !page.has_more {
                break;
            }
            c = page.next;
        }
        assert_eq!(got, want, "resumed after page {i}");
    }
}

/// Under a rate limit, concurrent nested reads stay within the budget: no 429 after the
/// first window, and every message arrives.
#[tokio::test]
async fn concurrent_nested_walk_respects_the_rate_limit() {
    let sim = FrontSim::start(
        FrontSimConfig::default()
            .size(60, 2)
            .rate_limit(20, Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let front = FrontConnector::builder()
        .base_url(sim.base_url())
        .api_token(sim.api_token())
        .nested_concurrency(16)
        .build()
        .unwrap();
    let (messages, _) = read_all(&front, streams::MESSAGES, None).await;
    assert_eq!(versions(&messages), sim.expected(streams::MESSAGES));
    let stats = sim.limiter().stats();
    let first = stats.allowed_by_window.keys().next().copied().unwrap_or(0);
    let late: u64 = stats
        .rejected_by_window
        .iter()
        .filter(|(w, _)| **w > first)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(late, 0, "{stats:?}");
    assert!(stats.allowed_by_window.len() >= 3, "{stats:?}");
}

/// Issue 11: the messages stream reads each conversations page once (the page's ids are kept
/// in the cursor), however many reads the walk takes, also when it is resumed by a fresh
/// connector from a stored cursor.
#[tokio::test]
async fn nested_walks_read_each_conversations_page_once() {
    let sim = FrontSim::start(FrontSimConfig::default().size(250, 3).contacts(5))
        .await
        .unwrap();
    let build = || {
        FrontConnector::builder()
            .base_url(sim.base_url())
            .api_token(sim.api_token())
            .build()
            .unwrap()
    };
    let s = StreamId::from(streams::MESSAGES);
    let front = build();
    let mut cursor: Option<CursorToken> = None;
    let mut got = Vec::new();
    let mut reads = 0;
    loop {
        // A fresh connector every other read: nothing is cached between reads.
        let f = if reads % 2 == 0 {
            front.clone()
        } else {
            build()
        };
        let page = f.read(&s, cursor.as_ref()).await.unwrap();
        reads += 1;
        got.extend(page.records.iter().map(|r| r.id.clone()));
        cursor = page.next;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(got.len(), 750);
    let unique: std::collections::BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 750, "each message once");
    assert!(reads > 8, "{reads} reads");
    assert_eq!(
        sim.stats().by_path.get("GET /conversations").copied(),
        Some(3),
        "250 conversations are 3 pages of 100, each read once"
    );
}

/// A messages cursor written by the previous version (an index into the conversations page,
/// read again on every resume) still resumes: at the conversation it names.
#[tokio::test]
async fn version_1_messages_cursors_resume_at_their_conversation() {
    use base64::Engine as _;
    let sim = FrontSim::start(FrontSimConfig::default().size(12, 2).contacts(5))
        .await
        .unwrap();
    let front = FrontConnector::builder()
        .base_url(sim.base_url())
        .api_token(sim.api_token())
        .page_size(4)
        .build()
        .unwrap();
    let (all, _) = read_all(&front, streams::MESSAGES, None).await;
    let all: Vec<String> = all.into_iter().map(|r| r.id).collect();
    // The list is newest first: position 5 of the first page of 4 is on the second page;
    // use the first page, index 2: the third newest conversation (number 9).
    let v1 = serde_json::json!({"phase": "backfill", "conversations_page": null, "index": 2,
        "conversation_id": sim.conversation_id(9), "children_next": null, "started_at_ms": 0});
    let payload =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v1).unwrap());
    let token = CursorToken::from_string(format!("frontapp.messages.v1.{payload}"));
    let (rest, _) = read_all(&front, streams::MESSAGES, Some(token)).await;
    let rest: Vec<String> = rest.into_iter().map(|r| r.id).collect();
    assert_eq!(
        rest,
        all[4..],
        "conversations 11 and 10 (2 messages each) are skipped"
    );
}
