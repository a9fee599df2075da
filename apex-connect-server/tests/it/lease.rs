//! Worker leases held through long work, lost leases left alone, panics noticed; paused time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use apex_connect_core::store::{Clock, InboxEvent, MemoryStore, StateStore};
use apex_connect_core::webhook::{VerifiedWebhook, WebhookVerifier};
use apex_connect_core::{
    Change, ConnectionId, Connector, ConnectorInfo, CursorToken, MemorySink, Op, Page, Result,
    StreamId, Webhooks, async_trait,
};
use apex_connect_server::{ConnectionHandle, ServerState, WorkerConfig, Workers};
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// A store clock that follows tokio's (paused) time, plus an offset the test can jump.
#[derive(Clone)]
pub struct TokioClock {
    start: tokio::time::Instant,
    offset_ms: Arc<AtomicI64>,
}

impl TokioClock {
    pub fn new() -> Self {
        TokioClock {
            start: tokio::time::Instant::now(),
            offset_ms: Arc::new(AtomicI64::new(1_700_000_000_000)),
        }
    }
    pub fn clock(&self) -> Clock {
        let me = self.clone();
        Clock::from_fn(move || UNIX_EPOCH + Duration::from_millis(me.now_ms() as u64))
    }
    pub fn now_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst) + self.start.elapsed().as_millis() as i64
    }
    /// Moves the store's clock (not tokio's) forward.
    pub fn jump(&self, d: Duration) {
        self.offset_ms
            .fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
}

/// The memory connector, waiting `delay` in `parse_batch` (a rate gate), or panicking.
#[derive(Debug)]
struct Slow {
    inner: apex_connect_testkit::MemoryConnector,
    delay: Duration,
    panics: AtomicBool,
}

impl Slow {
    fn new(delay: Duration, panics: bool) -> Arc<Self> {
        Arc::new(Slow {
            inner: memory(),
            delay,
            panics: AtomicBool::new(panics),
        })
    }
}

#[async_trait]
impl Connector for Slow {
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
impl Webhooks for Slow {
    fn verifier(&self) -> &dyn WebhookVerifier {
        self.inner.verifier()
    }
    async fn parse(&self, w: &VerifiedWebhook) -> Result<Vec<Change>> {
        Webhooks::parse(&self.inner, w).await
    }
    async fn parse_batch(&self, ws: &[VerifiedWebhook]) -> Vec<Result<Vec<Change>>> {
        tokio::time::sleep(self.delay).await;
        if self.panics.load(Ordering::SeqCst) {
            panic!("connector bug: index out of range");
        }
        self.inner.parse_batch(ws).await
    }
}

async fn append(store: &Arc<dyn StateStore>, clock: &TokioClock, connection: &str, msg: &str) {
    let now = UNIX_EPOCH + Duration::from_millis(clock.now_ms() as u64);
    let (h, b) = signed(&memory(), msg, &format!("item-{msg}"), Op::Delete, now);
    let mut v = apex_connect_core::webhook::Verified::default();
    v.event_id = Some(msg.to_string());
    v.timestamp_ms = Some(clock.now_ms());
    let ev = InboxEvent::new("memory", connection.to_string(), msg, clock.now_ms(), b)
        .with_headers(apex_connect_server::inbox::headers_json(&h, &v));
    store.inbox_append(&ev).await.unwrap();
}

fn config() -> WorkerConfig {
    let mut c = WorkerConfig::default();
    c.lease = Duration::from_secs(30);
    c.max_attempts = 3;
    c.backoff = Duration::from_secs(1);
    c.max_backoff = Duration::from_secs(4);
    c.poll = Duration::from_millis(100);
    c
}

fn setup(connections: Vec<(&'static str, Arc<Slow>)>) -> (ServerState, TokioClock) {
    let clock = TokioClock::new();
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new().with_clock(clock.clock()));
    let mut b = ServerState::builder(store).clock(clock.clock());
    for (id, c) in connections {
        b = b.connection(ConnectionHandle::new(id, c));
    }
    (b.build(), clock)
}

/// A parse that waits 100 s (more than three 30 s leases) keeps its lease: no other worker
/// takes the event, and it is applied once.
#[tokio::test(start_paused = true)]
async fn a_lease_is_renewed_while_a_slow_parse_runs() {
    let (state, clock) = setup(vec![("acme", Slow::new(Duration::from_secs(100), false))]);
    append(state.store(), &clock, "acme", "m1").await;
    let sink = Arc::new(MemorySink::new());
    let a = Workers::new(state.clone(), sink.clone(), config());
    let running = tokio::spawn({
        let a = a.clone();
        async move { a.run_once("worker-a").await.unwrap() }
    });
    for _ in 0..9 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let stolen = state
            .store()
            .inbox_claim("worker-b", Duration::from_secs(30), 10)
            .await
            .unwrap();
        assert!(
            stolen.is_empty(),
            "renewed lease: nobody else gets the event"
        );
    }
    assert_eq!(running.await.unwrap(), 1);
    let c = state.store().inbox_counts().await.unwrap();
    assert_eq!((c.pending, c.in_flight, c.done, c.dead), (0, 0, 1, 0));
    let (conn, items) = (ConnectionId::from("acme"), StreamId::from("items"));
    assert_eq!(sink.apply_count(&conn, &items, "item-m1"), 1);
}

/// When the lease is lost anyway (the store's clock jumps past it, as after a long database
/// outage) and another worker takes the event, the first worker neither writes nor completes
/// it; the new holder completes it, with no attempt burned.
#[tokio::test(start_paused = true)]
async fn a_lost_lease_is_neither_applied_nor_completed() {
    let (state, clock) = setup(vec![("acme", Slow::new(Duration::from_secs(25), false))]);
    append(state.store(), &clock, "acme", "m1").await;
    let sink = Arc::new(MemorySink::new());
    let a = Workers::new(state.clone(), sink.clone(), config());
    let running = tokio::spawn({
        let a = a.clone();
        async move { a.run_once("worker-a").await.unwrap() }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    clock.jump(Duration::from_secs(31));
    let b = state
        .store()
        .inbox_claim("worker-b", Duration::from_secs(120), 10)
        .await
        .unwrap();
    assert_eq!(b.len(), 1, "A's lease expired: B takes the event");
    assert_eq!(
        b[0].attempts, 1,
        "the expired claim did not burn an attempt"
    );
    assert_eq!(running.await.unwrap(), 1);
    assert_eq!(
        sink.len(),
        0,
        "A found its lease lost at renewal: nothing written"
    );
    // B still holds it (A did not complete or fail it) and completes it.
    state
        .store()
        .inbox_complete(b[0].id, "worker-b")
        .await
        .unwrap();
    assert_eq!(state.store().inbox_counts().await.unwrap().done, 1);
}

/// A connector whose parse panics: the worker notices (logged, counted), retries the event
/// with backoff and dead-letters it after the last attempt, while the workers keep
/// processing other connections' events.
#[tokio::test(start_paused = true)]
async fn a_panicking_parse_is_noticed_and_the_workers_keep_going() {
    let (state, clock) = setup(vec![
        ("boom", Slow::new(Duration::ZERO, true)),
        ("acme", Slow::new(Duration::ZERO, false)),
    ]);
    append(state.store(), &clock, "boom", "b1").await;
    let sink = Arc::new(MemorySink::new());
    let workers = Workers::new(state.clone(), sink.clone(), config());

    // One batch: the panic is caught and every event of the batch fails (temporarily).
    assert_eq!(workers.run_once("w").await.unwrap(), 1);
    assert_eq!(workers.panics(), 1);
    let c = state.store().inbox_counts().await.unwrap();
    assert_eq!((c.pending, c.done, c.dead), (1, 0, 0), "retried later");

    // The running workers: the bad event is dead-lettered after its attempts; good events
    // appended meanwhile are processed.
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let w = workers.clone();
        let s = shutdown.clone();
        async move { w.run(s).await }
    });
    for i in 0..5 {
        append(state.store(), &clock, "acme", &format!("a{i}")).await;
        state.wake().notify_waiters();
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let c = state.store().inbox_counts().await.unwrap();
    assert_eq!((c.pending, c.in_flight, c.done, c.dead), (0, 0, 5, 1));
    let dead = state.store().inbox_dead_letters(10).await.unwrap();
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("panicked"),
        "{:?}",
        dead[0].last_error
    );
    assert_eq!(workers.panics(), 3, "shared by clones");
    assert_eq!(sink.len(), 5);
    shutdown.cancel();
    run.await.unwrap();
}

/// A worker loop that panics outside a batch (here in the claim itself: the store's clock
/// panics once, as a store bug would) is noticed (logged, counted) and restarted after a
/// second; the event it could not claim is processed by the restarted loop.
#[tokio::test(start_paused = true)]
async fn a_worker_loop_that_panics_outside_a_batch_is_restarted() {
    let clock = TokioClock::new();
    let armed = Arc::new(AtomicBool::new(false));
    let store_clock = {
        let (inner, armed) = (clock.clock(), armed.clone());
        Clock::from_fn(move || {
            if armed.swap(false, Ordering::SeqCst) {
                panic!("store bug: the clock went away");
            }
            inner.now()
        })
    };
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new().with_clock(store_clock));
    let state = ServerState::builder(store)
        .clock(clock.clock())
        .connection(ConnectionHandle::new(
            "acme",
            Slow::new(Duration::ZERO, false),
        ))
        .build();
    append(state.store(), &clock, "acme", "m1").await;
    let sink = Arc::new(MemorySink::new());
    let mut c = config();
    c.concurrency = 1;
    let workers = Workers::new(state.clone(), sink.clone(), c);
    armed.store(true, Ordering::SeqCst);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let (w, s) = (workers.clone(), shutdown.clone());
        async move { w.run(s).await }
    });
    for _ in 0..50 {
        if sink.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(workers.panics(), 1, "the panicked loop was noticed");
    assert_eq!(sink.len(), 1, "and restarted: the event was processed");
    assert_eq!(state.store().inbox_counts().await.unwrap().done, 1);
    shutdown.cancel();
    run.await.unwrap();
}
