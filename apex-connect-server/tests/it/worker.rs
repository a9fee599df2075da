use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use apex_connect_core::store::InboxEvent;
use apex_connect_core::webhook::{StandardWebhooksVerifier, VerifiedWebhook, WebhookSecrets};
use apex_connect_core::{
    Ack, Batch, Capabilities, Change, ConnectionId, Connector, ConnectorInfo, CursorToken, Error,
    ErrorKind, MemorySink, Op, Page, Record, Result, Sink, StreamId, StreamInfo, WebhookVerifier,
    Webhooks, async_trait,
};
use apex_connect_server::{ConnectionHandle, ServerState, WorkerConfig, Workers};

use crate::common::*;

fn config() -> WorkerConfig {
    let mut c = WorkerConfig::default();
    c.lease = Duration::from_secs(30);
    c.max_attempts = 3;
    c.backoff = Duration::from_secs(1);
    c.max_backoff = Duration::from_secs(10);
    c
}

async fn append(state: &ServerState, clock: &ManualClock, msg: &str, item: &str) {
    let c = memory();
    let (h, b) = signed(&c, msg, item, Op::Delete, clock.now());
    let mut v = apex_connect_core::webhook::Verified::default();
    v.event_id = Some(msg.to_string());
    v.timestamp_ms = Some(clock.clock().now_ms());
    let ev = InboxEvent::new("memory", "acme", msg, clock.clock().now_ms(), b)
        .with_headers(apex_connect_server::inbox::headers_json(&h, &v));
    state.store().inbox_append(&ev).await.unwrap();
}

#[tokio::test]
async fn a_dead_workers_event_is_taken_over_after_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = sqlite(dir.path(), &clock).await;
    let state = ServerState::builder(dyn_store(&store))
        .clock(clock.clock())
        .connection(ConnectionHandle::new("acme", Arc::new(memory())))
        .build();
    append(&state, &clock, "msg_1", "x").await;

    // Worker A claims the event and dies holding the lease.
    let claimed = state
        .store()
        .inbox_claim("worker-a", Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);

    let sink = Arc::new(MemorySink::new());
    let b = Workers::new(state.clone(), sink.clone(), config());
    assert_eq!(
        b.run_once("worker-b").await.unwrap(),
        0,
        "leased to A: not claimable"
    );
    clock.advance(Duration::from_secs(29));
    assert_eq!(b.run_once("worker-b").await.unwrap(), 0);
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        b.run_once("worker-b").await.unwrap(),
        1,
        "lease over: B takes it"
    );
    let c = state.store().inbox_counts().await.unwrap();
    assert_eq!((c.pending, c.in_flight, c.done), (0, 0, 1));
    let conn = ConnectionId::from("acme");
    let items = StreamId::from("items");
    assert_eq!(sink.apply_count(&conn, &items, "x"), 1);
    // A comes back: its lease is gone, it cannot complete the event.
    let e = state
        .store()
        .inbox_complete(claimed[0].id, "worker-a")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
}

/// A sink that fails while `broken` is set.
#[derive(Debug, Default)]
struct FlakySink {
    broken: AtomicBool,
    inner: MemorySink,
}

#[async_trait]
impl Sink for FlakySink {
    async fn write(&self, batch: Batch<'_>) -> Result<Ack> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(Error::storage("disk on fire").temporary());
        }
        self.inner.apply(batch)
    }
}

#[tokio::test]
async fn failures_back_off_then_dead_letter_and_admin_requeues() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = sqlite(dir.path(), &clock).await;
    let state = ServerState::builder(dyn_store(&store))
        .clock(clock.clock())
        .connection(ConnectionHandle::new("acme", Arc::new(memory())))
        .build();
    let base = serve(state.clone()).await;
    append(&state, &clock, "msg_1", "x").await;
    let sink = Arc::new(FlakySink::default());
    sink.broken.store(true, Ordering::SeqCst);
    let w = Workers::new(state.clone(), sink.clone(), config());

    for attempt in 1..=3u32 {
        assert_eq!(w.run_once("w").await.unwrap(), 1, "attempt {attempt}");
        // Not due again before its backoff (at least half of 1s * 2^(n-1)).
        assert_eq!(w.run_once("w").await.unwrap(), 0);
        clock.advance(Duration::from_secs(60));
    }
    let dead = state.store().inbox_dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("sink write failed")
    );
    let status: serde_json::Value = reqwest::get(format!("{base}/admin/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["inbox"]["dead"], 1);
    assert_eq!(status["dead_letters"][0]["event_id"], "msg_1");

    // Fix the sink, requeue through the admin API, and it goes through.
    sink.broken.store(false, Ordering::SeqCst);
    let client = reqwest::Client::new();
    let url = format!("{base}/admin/dead-letters/{}/retry", dead[0].id);
    assert_eq!(
        client.post(&url).send().await.unwrap().status().as_u16(),
        204
    );
    assert_eq!(
        client.post(&url).send().await.unwrap().status().as_u16(),
        404,
        "no longer dead"
    );
    assert_eq!(w.run_once("w").await.unwrap(), 1);
    let c = state.store().inbox_counts().await.unwrap();
    assert_eq!((c.done, c.dead), (1, 0));
    assert_eq!(
        sink.inner
            .apply_count(&ConnectionId::from("acme"), &StreamId::from("items"), "x"),
        1
    );
}

/// A connector whose webhook bodies are `{"id", "v", "at"}`: full objects, timed by `at`.
#[derive(Debug)]
struct Timed(ConnectorInfo, StandardWebhooksVerifier);

#[async_trait]
impl Connector for Timed {
    fn info(&self) -> &ConnectorInfo {
        &self.0
    }
    async fn check(&self) -> Result<()> {
        Ok(())
    }
    async fn read(&self, _: &StreamId, _: Option<&CursorToken>) -> Result<Page> {
        Ok(Page::new(vec![], None, false))
    }
    fn webhooks(&self) -> Option<&dyn Webhooks> {
        Some(self)
    }
}

#[async_trait]
impl Webhooks for Timed {
    fn verifier(&self) -> &dyn WebhookVerifier {
        &self.1
    }
    async fn parse(&self, w: &VerifiedWebhook) -> Result<Vec<Change>> {
        let v: serde_json::Value =
            serde_json::from_slice(&w.body).map_err(|e| Error::from_json(e, "body"))?;
        let id = v["id"].as_str().unwrap_or_default().to_string();
        let at = v["at"].as_i64().unwrap_or_default();
        let s = StreamId::from("items");
        Ok(vec![
            Change::new(s.clone(), id.clone(), Op::Upsert, "changed")
                .at(at)
                .with_record(Record::upsert(s, id, serde_json::json!({"v": v["v"]}))),
        ])
    }
}

/// Records what it is given, in order.
#[derive(Debug, Default)]
struct Recorder(
    std::sync::Mutex<Vec<(String, serde_json::Value)>>,
    MemorySink,
);

#[async_trait]
impl Sink for Recorder {
    async fn write(&self, batch: Batch<'_>) -> Result<Ack> {
        for r in batch.records {
            self.0
                .lock()
                .unwrap()
                .push((r.id.clone(), r.raw.to_value().unwrap()["v"].clone()));
        }
        self.1.apply(batch)
    }
}

#[tokio::test]
async fn an_older_change_never_overwrites_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = sqlite(dir.path(), &clock).await;
    let info = ConnectorInfo::new(
        "timed",
        "1",
        Capabilities::new(vec![StreamInfo::new("items", true)]),
    );
    let verifier = StandardWebhooksVerifier::new(WebhookSecrets::single(SECRET));
    let state = ServerState::builder(dyn_store(&store))
        .clock(clock.clock())
        .connection(ConnectionHandle::new("acme", Arc::new(Timed(info, verifier))))
        .build();
    let sink = Arc::new(Recorder::default());
    let w = Workers::new(state.clone(), sink.clone(), config());
    let add = |msg: &'static str, v: i64, at: i64| {
        let store = state.store().clone();
        let now = clock.clock().now_ms();
        async move {
            let body = serde_json::json!({"id": "o1", "v": v, "at": at}).to_string();
            store
                .inbox_append(&InboxEvent::new(
                    "timed",
                    "acme",
                    msg,
                    now,
                    body.into_bytes(),
                ))
                .await
                .unwrap();
        }
    };
    // Received newest first, in one claim batch.
    add("e3", 3, 3000).await;
    add("e1", 1, 1000).await;
    add("e2", 2, 2000).await;
    assert_eq!(w.run_once("w").await.unwrap(), 3);
    let order: Vec<i64> = sink
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, v)| v.as_i64().unwrap())
        .collect();
    assert_eq!(
        order,
        vec![1, 2, 3],
        "applied in the events' own time order"
    );
    // A late, older event in a later batch is skipped by the version check.
    add("e0", 0, 500).await;
    assert_eq!(w.run_once("w").await.unwrap(), 1);
    let live = sink
        .1
        .live(&ConnectionId::from("acme"), &StreamId::from("items"));
    assert_eq!(live["o1"], (3000, serde_json::json!({"v": 3})));
}

#[tokio::test]
async fn a_body_the_connector_cannot_read_is_dead_lettered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = sqlite(dir.path(), &clock).await;
    let state = ServerState::builder(dyn_store(&store))
        .clock(clock.clock())
        .connection(ConnectionHandle::new("acme", Arc::new(memory())))
        .build();
    state
        .store()
        .inbox_append(&InboxEvent::new(
            "memory",
            "acme",
            "junk",
            clock.clock().now_ms(),
            b"not json".to_vec(),
        ))
        .await
        .unwrap();
    let w = Workers::new(state.clone(), Arc::new(MemorySink::new()), config());
    assert_eq!(w.run_once("w").await.unwrap(), 1);
    let c = state.store().inbox_counts().await.unwrap();
    assert_eq!(c.dead, 1, "InvalidInput is permanent: no retries");
}
