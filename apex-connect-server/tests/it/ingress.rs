use std::sync::Arc;
use std::time::Duration;

use apex_connect_core::Op;
use apex_connect_server::metrics::Outcome;
use apex_connect_server::{ConnectionHandle, InboxAppender, ServerState};

use crate::common::*;

async fn setup(group_commit: bool) -> (tempfile::TempDir, ManualClock, ServerState, String) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = sqlite(dir.path(), &clock).await;
    let mut b = ServerState::builder(dyn_store(&store))
        .clock(clock.clock())
        .body_limit(4096)
        .connection(ConnectionHandle::new("acme", Arc::new(memory())));
    if group_commit {
        b = b.appender(InboxAppender::group_commit(store.pool().clone(), 64));
    }
    let state = b.build();
    let base = serve(state.clone()).await;
    (dir, clock, state, base)
}

async fn post(base: &str, path: &str, headers: http::HeaderMap, body: Vec<u8>) -> u16 {
    reqwest::Client::new()
        .post(format!("{base}{path}"))
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn every_outcome_has_its_status_and_counter() {
    for group_commit in [false, true] {
        let (_dir, clock, state, base) = setup(group_commit).await;
        let c = memory();
        let path = "/webhooks/memory/acme";

        let (h, b) = signed(&c, "msg_1", "a", Op::Delete, clock.now());
        assert_eq!(post(&base, path, h.clone(), b.clone()).await, 200);
        // Redelivery: 200 and dropped.
        assert_eq!(post(&base, path, h, b).await, 200);
        // Wrong secret.
        let other = apex_connect_testkit::MemoryConnector::new(["items"], 10, b"wrong");
        let (h, b) = signed(&other, "msg_2", "b", Op::Delete, clock.now());
        assert_eq!(post(&base, path, h, b).await, 401);
        // Missing signature.
        assert_eq!(
            post(&base, path, http::HeaderMap::new(), b"{}".to_vec()).await,
            401
        );
        // Signed ten minutes ago: outside the 5-minute tolerance at the injected clock.
        let (h, b) = signed(
            &c,
            "msg_3",
            "c",
            Op::Delete,
            clock.now() - Duration::from_secs(600),
        );
        assert_eq!(post(&base, path, h, b).await, 401);
        // Unknown connection, and a known connection under another platform.
        let (h, b) = signed(&c, "msg_4", "d", Op::Delete, clock.now());
        assert_eq!(
            post(&base, "/webhooks/memory/nope", h.clone(), b.clone()).await,
            404
        );
        assert_eq!(post(&base, "/webhooks/frontapp/acme", h, b).await, 404);
        // Over the 4 KiB limit.
        let (h, _) = signed(&c, "msg_5", "e", Op::Delete, clock.now());
        assert_eq!(post(&base, path, h, vec![b' '; 5000]).await, 413);

        let m = state.metrics();
        assert_eq!(m.webhook_count(Outcome::Accepted), 1);
        assert_eq!(m.webhook_count(Outcome::Duplicate), 1);
        assert_eq!(m.webhook_count(Outcome::BadSignature), 2);
        assert_eq!(m.webhook_count(Outcome::Expired), 1);
        assert_eq!(m.webhook_count(Outcome::UnknownConnection), 2);
        assert_eq!(m.webhook_count(Outcome::TooLarge), 1);
        let counts = state.store().inbox_counts().await.unwrap();
        assert_eq!(counts.pending, 1, "only the accepted event is stored");

        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains("apex_connect_webhooks_total{outcome=\"bad_signature\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("apex_connect_inbox_events{state=\"pending\"} 1"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn concurrent_appends_group_commit_and_deduplicate() {
    let (_dir, clock, state, base) = setup(true).await;
    let c = memory();
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..300 {
        // 200 distinct ids, 100 redeliveries
        let (h, b) = signed(
            &c,
            &format!("msg_{}", i % 200),
            &format!("i{}", i % 200),
            Op::Delete,
            clock.now(),
        );
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            client
                .post(format!("{base}/webhooks/memory/acme"))
                .headers(h)
                .body(b)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let m = state.metrics();
    assert_eq!(
        m.webhook_count(Outcome::Accepted) + m.webhook_count(Outcome::Duplicate),
        300
    );
    assert_eq!(m.webhook_count(Outcome::Accepted), 200);
    assert_eq!(state.store().inbox_counts().await.unwrap().pending, 200);
}

#[cfg(feature = "frontapp")]
#[tokio::test]
async fn front_challenge_is_answered_and_events_keyed_by_payload_id() {
    use apex_connect_core::webhook::{WebhookRequest, WebhookVerifier};
    use apex_connect_server::config::ServerConfig;
    use apex_connect_server::{ConnectorRegistry, FactoryContext, Secrets};

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
    let connector = ConnectorRegistry::builtin()
        .build(FactoryContext::new(
            &config.connections[0],
            &secrets,
            &dyn_s,
        ))
        .unwrap();
    let state = ServerState::builder(dyn_s.clone())
        .clock(clock.clock())
        .connection(ConnectionHandle::new("acme-front", connector))
        .build();
    let base = serve(state.clone()).await;
    let signer = apex_connect_frontapp::FrontAppWebhookVerifier::new(["front-secret"]);
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

#[cfg(feature = "hubspot")]
#[tokio::test]
async fn hubspot_deliveries_are_split_per_event_and_malformed_bodies_refused() {
    use apex_connect_core::webhook::{WebhookRequest, WebhookSecrets, WebhookVerifier};
    use apex_connect_hubspot::{HubSpotWebhookVerifier, SignatureVersion};
    use apex_connect_server::config::ServerConfig;
    use apex_connect_server::{ConnectorRegistry, FactoryContext, Secrets};

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
    let connector = ConnectorRegistry::builtin()
        .build(FactoryContext::new(
            &config.connections[0],
            &secrets,
            &dyn_s,
        ))
        .unwrap();
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
