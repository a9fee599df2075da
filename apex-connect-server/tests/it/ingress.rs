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
        b = b.appender(InboxAppender::group_commit(dyn_store(&store), 64));
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

        let admin = serve_admin(state.clone()).await;
        let r = reqwest::get(format!("{admin}/metrics")).await.unwrap();
        assert_eq!(
            r.headers()["content-type"],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let text = r.text().await.unwrap();
        // Every answer, refusals included, is timed from the request's arrival.
        assert!(
            text.contains("apex_connect_webhook_ack_seconds_count 8\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
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
