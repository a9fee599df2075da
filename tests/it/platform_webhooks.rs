//! Webhook ingress with the FrontApp and HubSpot connectors built through their platform
//! descriptors (moved from the server crate, which names no platform): Front's challenge and
//! `payload.id` keys, HubSpot's per-event split and malformed bodies.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apex_connect::server::config::ServerConfig;
use apex_connect::server::metrics::Outcome;
use apex_connect::server::{ConnectionHandle, ServerState, admin_router, webhook_router};
use apex_connect::store::{Clock, EncryptionKey, StateStore};
use apex_connect::{Secrets, SqliteStore};

/// A clock the test moves by hand, starting at a fixed time.
#[derive(Clone)]
struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    fn new() -> Self {
        ManualClock(Arc::new(AtomicI64::new(1_700_000_000_000)))
    }
    fn clock(&self) -> Clock {
        let t = self.0.clone();
        Clock::from_fn(move || UNIX_EPOCH + Duration::from_millis(t.load(Ordering::SeqCst) as u64))
    }
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.load(Ordering::SeqCst) as u64)
    }
}

async fn sqlite(dir: &std::path::Path, clock: &ManualClock) -> SqliteStore {
    SqliteStore::open(dir.join("state.db"), EncryptionKey::from_bytes([7; 32]))
        .await
        .unwrap()
        .with_clock(clock.clock())
}

fn dyn_store(s: &SqliteStore) -> Arc<dyn StateStore> {
    Arc::new(s.clone())
}

async fn serve(state: ServerState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = webhook_router(state.clone()).merge(admin_router(state));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// The connector of the configuration's only connection, built through `platforms()`.
async fn build(
    config: &ServerConfig,
    secrets: &Secrets,
    store: &Arc<dyn StateStore>,
) -> Arc<dyn apex_connect::Connector> {
    apex_connect::server::connections::build_with_secrets(
        &apex_connect::platforms(),
        &config.connections[0],
        secrets,
        store,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn front_challenge_is_answered_and_events_keyed_by_payload_id() {
    use apex_connect::webhook::{WebhookRequest, WebhookVerifier};

    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = sqlite(dir.path(), &clock).await;
    let config = ServerConfig::parse(
        r#"
[[connection]]
id = "acme-front"
platform = "frontapp"
base_url = "http://127.0.0.1:9"
env = { api_token = "T", webhook_secret = "W" }
"#,
    )
    .unwrap();
    let secrets = Secrets::from_values([("api_token", "tok"), ("webhook_secret", "front-secret")]);
    let dyn_s = dyn_store(&store);
    let connector = build(&config, &secrets, &dyn_s).await;
    let state = ServerState::builder(dyn_s.clone())
        .clock(clock.clock())
        .connection(ConnectionHandle::new("acme-front", connector))
        .build();
    let base = serve(state.clone()).await;
    let signer = apex_connect::frontapp::FrontAppWebhookVerifier::new(["front-secret"]);
    let (m, u) = (http::Method::POST, http::Uri::from_static("/"));
    let sign = |body: &[u8], challenge: Option<&str>| {
        let mut h = signer
            .sign(
                &WebhookRequest::new(&m, &u, &http::HeaderMap::new(), body),
                clock.now(),
            )
            .unwrap();
        if let Some(c) = challenge {
            h.insert("x-front-challenge", http::HeaderValue::from_str(c).unwrap());
        }
        h.insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        h
    };
    let client = reqwest::Client::new();
    let url = format!("{base}/webhooks/frontapp/acme-front");

    let body = br#"{"type":"sync","authorization":{"id":"cmp_1"}}"#;
    let r = client
        .post(&url)
        .headers(sign(body, Some("abc123")))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"challenge":"abc123"}"#);
    assert_eq!(
        state.store().inbox_counts().await.unwrap().pending,
        0,
        "a handshake is not an event"
    );

    let body = br#"{"type":"tag","payload":{"id":"evt_42","type":"tag","emitted_at":1700000000}}"#;
    for _ in 0..2 {
        let r = client
            .post(&url)
            .headers(sign(body, None))
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    assert_eq!(state.metrics().webhook_count(Outcome::Accepted), 1);
    assert_eq!(state.metrics().webhook_count(Outcome::Duplicate), 1);
    let claimed = state
        .store()
        .inbox_claim("t", Duration::from_secs(5), 10)
        .await
        .unwrap();
    assert_eq!(claimed[0].event.event_id, "evt_42");
}

#[tokio::test]
async fn hubspot_deliveries_are_split_per_event_and_malformed_bodies_refused() {
    use apex_connect::hubspot::{HubSpotWebhookVerifier, SignatureVersion};
    use apex_connect::webhook::{WebhookRequest, WebhookSecrets, WebhookVerifier};

    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = sqlite(dir.path(), &clock).await;
    let config = ServerConfig::parse(
        r#"
[[connection]]
id = "acme-hs"
platform = "hubspot"
base_url = "http://127.0.0.1:9"
env = { private_app_token = "T", client_secret = "S" }
"#,
    )
    .unwrap();
    let secrets =
        Secrets::from_values([("private_app_token", "tok"), ("client_secret", "hs-secret")]);
    let dyn_s = dyn_store(&store);
    let connector = build(&config, &secrets, &dyn_s).await;
    let state = ServerState::builder(dyn_s.clone())
        .clock(clock.clock())
        .connection(ConnectionHandle::new("acme-hs", connector))
        .build();
    let base = serve(state.clone()).await;
    let signer = HubSpotWebhookVerifier::new(WebhookSecrets::single("hs-secret"))
        .signing(SignatureVersion::V1);
    let (m, u) = (http::Method::POST, http::Uri::from_static("/"));
    let client = reqwest::Client::new();
    let url = format!("{base}/webhooks/hubspot/acme-hs");
    let post = |body: &'static [u8]| {
        let mut h = signer
            .sign(
                &WebhookRequest::new(&m, &u, &http::HeaderMap::new(), body),
                clock.now(),
            )
            .unwrap();
        h.insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        let request = client.post(&url).headers(h).body(body);
        async move { request.send().await.unwrap().status().as_u16() }
    };

    // Three events: three inbox rows; a retry batched differently adds only the new one.
    let first = br#"[{"eventId":11,"subscriptionType":"contact.creation","objectId":1},{"eventId":12,"subscriptionType":"contact.creation","objectId":2},{"eventId":13,"subscriptionType":"contact.deletion","objectId":3}]"#;
    assert_eq!(post(first).await, 200);
    let retry = br#"[{"eventId":13,"subscriptionType":"contact.deletion","objectId":3},{"eventId":14,"subscriptionType":"contact.creation","objectId":4}]"#;
    assert_eq!(post(retry).await, 200);
    // Signed, but not JSON: refused, nothing stored.
    assert_eq!(post(b"[{\"eventId\":15").await, 400);
    let m = state.metrics();
    assert_eq!(m.webhook_count(Outcome::Accepted), 2);
    assert_eq!(m.webhook_count(Outcome::Malformed), 1);
    let claimed = state
        .store()
        .inbox_claim("t", Duration::from_secs(5), 10)
        .await
        .unwrap();
    let mut rows: Vec<(String, serde_json::Value)> = claimed
        .iter()
        .map(|c| {
            (
                c.event.event_id.clone(),
                serde_json::from_slice(&c.event.body).unwrap(),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids, ["11", "12", "13", "14"]);
    for (id, body) in &rows {
        // Each row is a one-element array holding its own event.
        assert_eq!(body.as_array().map(Vec::len), Some(1), "{id}: {body}");
        assert_eq!(body[0]["eventId"].to_string(), *id);
    }
}
