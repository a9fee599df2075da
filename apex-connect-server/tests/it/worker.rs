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
    let admin = serve_admin(state.clone()).await;
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
    let status: serde_json::Value = reqwest::get(format!("{admin}/admin/status"))
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
    let url = format!("{admin}/admin/dead-letters/{}/retry", dead[0].id);
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
    // Four claimed batches (three failed attempts and the retry), each timed; the first
    // scrape reads the inbox gauges from the store.
    let text = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("apex_connect_worker_batch_seconds_count 4\n"),
        "{text}"
    );
    assert!(
        text.contains("apex_connect_inbox_events{state=\"done\"} 1\n")
            && text.contains("apex_connect_inbox_events{state=\"dead\"} 0\n"),
        "{text}"
    );
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
        .connection(ConnectionHandle::new(
            "acme",
            Arc::new(Timed(info, verifier)),
        ))
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

async fn append_for(
    state: &ServerState,
    clock: &ManualClock,
    connection: &str,
    msg: &str,
    item: &str,
    op: Op,
) {
    let c = memory();
    let (h, b) = signed(&c, msg, item, op, clock.now());
    let mut v = apex_connect_core::webhook::Verified::default();
    v.event_id = Some(msg.to_string());
    v.timestamp_ms = Some(clock.clock().now_ms());
    let ev = InboxEvent::new(
        "memory",
        connection.to_string(),
        msg,
        clock.clock().now_ms(),
        b,
    )
    .with_headers(apex_connect_server::inbox::headers_json(&h, &v));
    state.store().inbox_append(&ev).await.unwrap();
}

/// The memory connector, counting the sizes of its `parse_batch` calls.
#[derive(Debug)]
struct Batching {
    inner: apex_connect_testkit::MemoryConnector,
    calls: std::sync::Mutex<Vec<usize>>,
}

#[async_trait]
impl Connector for Batching {
    fn info(&self) -> &ConnectorInfo {
        self.inner.info()
    }
    async fn check(&self) -> Result<()> {
        Ok(())
    }
    async fn read(&self, s: &StreamId, c: Option<&CursorToken>) -> Result<Page> {
        self.inner.read(s, c).await
    }
    fn webhooks(&self) -> Option<&dyn Webhooks> {
        Some(self)
    }
}

#[async_trait]
impl Webhooks for Batching {
    fn verifier(&self) -> &dyn WebhookVerifier {
        self.inner.verifier()
    }
    async fn parse(&self, w: &VerifiedWebhook) -> Result<Vec<Change>> {
        Webhooks::parse(&self.inner, w).await
    }
    async fn parse_batch(&self, ws: &[VerifiedWebhook]) -> Vec<Result<Vec<Change>>> {
        self.calls.lock().unwrap().push(ws.len());
        self.inner.parse_batch(ws).await
    }
}

#[tokio::test]
async fn claimed_events_are_parsed_in_one_batch_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = sqlite(dir.path(), &clock).await;
    let batching = || {
        Arc::new(Batching {
            inner: memory(),
            calls: Default::default(),
        })
    };
    let (a, b) = (batching(), batching());
    let state = ServerState::builder(dyn_store(&store))
        .clock(clock.clock())
        .connection(ConnectionHandle::new("acme", a.clone()))
        .connection(ConnectionHandle::new("beta", b.clone()))
        .build();
    for i in 0..5 {
        append_for(
            &state,
            &clock,
            "acme",
            &format!("a{i}"),
            &format!("x{i}"),
            Op::Delete,
        )
        .await;
    }
    for i in 0..3 {
        append_for(
            &state,
            &clock,
            "beta",
            &format!("b{i}"),
            &format!("y{i}"),
            Op::Delete,
        )
        .await;
    }
    let sink = Arc::new(MemorySink::new());
    let w = Workers::new(state.clone(), sink.clone(), config());
    assert_eq!(w.run_once("w").await.unwrap(), 8);
    assert_eq!(*a.calls.lock().unwrap(), [5]);
    assert_eq!(*b.calls.lock().unwrap(), [3]);
    assert_eq!(state.store().inbox_counts().await.unwrap().done, 8);
    assert_eq!(sink.len(), 8);
}

#[tokio::test]
async fn a_record_that_does_not_map_is_quarantined_and_its_event_completes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = sqlite(dir.path(), &clock).await;
    let connector = memory();
    let items = StreamId::from("items");
    connector.put(
        &items,
        "good",
        serde_json::json!({"id": "good", "name": "fine"}),
    );
    // `name` must be a string for the memory connector's entity mapping.
    connector.put(&items, "bad", serde_json::json!({"id": "bad", "name": 5}));
    let state = ServerState::builder(dyn_store(&store))
        .clock(clock.clock())
        .connection(ConnectionHandle::new("acme", Arc::new(connector)))
        .build();
    let admin = serve_admin(state.clone()).await;
    append_for(&state, &clock, "acme", "m1", "good", Op::Upsert).await;
    append_for(&state, &clock, "acme", "m2", "bad", Op::Upsert).await;
    let sink = Arc::new(MemorySink::with_entities());
    let w = Workers::new(state.clone(), sink.clone(), config());
    assert_eq!(w.run_once("w").await.unwrap(), 2);

    let c = state.store().inbox_counts().await.unwrap();
    assert_eq!(
        (c.done, c.dead, c.pending),
        (2, 0, 0),
        "never dead-lettered"
    );
    let conn = ConnectionId::from("acme");
    assert_eq!(sink.apply_count(&conn, &items, "good"), 1);
    assert_eq!(sink.apply_count(&conn, &items, "bad"), 0);
    assert!(sink.entity(&conn, &items, "good").is_some());
    let rejects = state
        .store()
        .list_rejects(Some(&conn), None, 10)
        .await
        .unwrap();
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0].reject.id.as_deref(), Some("bad"));
    assert_eq!(rejects[0].reject.stage, apex_connect_core::RejectStage::Map);
    assert_eq!(
        rejects[0].reject.raw.as_ref(),
        br#"{"id":"bad","name":5}"#,
        "kept as received"
    );
    assert_eq!(state.metrics().snapshot().records_rejected, 1);

    // The admin API shows it: per connection in the status, listed under /admin/rejects.
    let status: serde_json::Value = reqwest::get(format!("{admin}/admin/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["connections"][0]["rejects"], 1, "{status}");
    assert_eq!(status["rejects"], 1);
    let listed: serde_json::Value = reqwest::get(format!("{admin}/admin/rejects?connection=acme"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["record_id"], "bad", "{listed}");
    assert_eq!(listed[0]["stage"], "map");
    assert!(listed[0].get("raw").is_none(), "no bytes in the listing");
    let none: serde_json::Value = reqwest::get(format!("{admin}/admin/rejects?connection=other"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(none, serde_json::json!([]));

    // A sink that wants no entities maps nothing and quarantines nothing.
    append_for(&state, &clock, "acme", "m3", "bad", Op::Upsert).await;
    let raw_sink = Arc::new(MemorySink::new());
    let w = Workers::new(state.clone(), raw_sink.clone(), config());
    assert_eq!(w.run_once("w").await.unwrap(), 1);
    assert_eq!(raw_sink.apply_count(&conn, &items, "bad"), 1);
    assert_eq!(state.store().count_rejects(None).await.unwrap(), 1);
}
