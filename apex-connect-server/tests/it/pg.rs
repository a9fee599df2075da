//! Several nodes on one PostgreSQL database (feature `postgres`; `APEX_TEST_POSTGRES_URL`,
//! skipped without it outside CI): webhooks appended on one node are processed by the others,
//! woken by `LISTEN/NOTIFY` long before their poll; 50 scheduled connections across three
//! nodes run once per tick, never twice at once; a node that dies mid-sync leaves its lease,
//! and another node resumes the stream from the committed cursor once it ends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use apex_connect_core::engine::CancellationToken;
use apex_connect_core::store::prelude::*;
use apex_connect_core::store::{EncryptionKey, PgStore};
use apex_connect_core::{
    ConnectionId, Connector, ConnectorInfo, CursorToken, MemorySink, Op, Page, Result, StreamId,
    async_trait,
};
use apex_connect_server::{
    ConnectionHandle, InboxAppender, JobSpec, Scheduler, SchedulerConfig, ServerState,
    WorkerConfig, Workers,
};
use apex_connect_testkit::{MemoryConnector, pg};

use crate::common::*;

fn key() -> EncryptionKey {
    EncryptionKey::from_bytes([9; 32])
}

async fn node(url: &str, clock: Option<&ManualClock>) -> PgStore {
    let store = PgStore::connect(url, key()).await.unwrap();
    match clock {
        Some(c) => store.with_clock(c.clock()),
        None => store,
    }
}

/// Node A only receives (its workers do not run); nodes B and C only process, polling once a
/// minute: what they process within seconds they were woken for by A's appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_webhooks_on_one_node_are_processed_by_the_others_woken_by_notify() {
    let Some(db) = pg::fresh().await else { return };
    let connector = memory();
    let receiver = node(&db.url, None).await;
    let a_store: Arc<dyn StateStore> = Arc::new(receiver.clone());
    let a = ServerState::builder(a_store.clone())
        .appender(InboxAppender::group_commit(a_store, 64))
        .connection(ConnectionHandle::new("acme", Arc::new(connector.clone())))
        .build();
    let base = serve(a).await;

    let sink = Arc::new(MemorySink::new());
    let shutdown = CancellationToken::new();
    let mut processors = Vec::new();
    for name in ["b", "c"] {
        let store = node(&db.url, None).await;
        let state = ServerState::builder(Arc::new(store.clone()))
            .connection(ConnectionHandle::new("acme", Arc::new(connector.clone())))
            .build();
        let mut config = WorkerConfig::default();
        config.poll = Duration::from_secs(60);
        config.concurrency = 2;
        let workers = Workers::new(state.clone(), sink.clone(), config).with_name(name);
        let wakeups = store.subscribe_inbox().await.unwrap();
        let (w, s) = (workers.clone(), shutdown.clone());
        tokio::spawn(async move { w.wake_on(wakeups, s).await });
        let (w, s) = (workers.clone(), shutdown.clone());
        processors.push(tokio::spawn(async move { w.run(s).await }));
        // Let the first (empty) claims pass: from here on they wait on their minute-long poll.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    const N: usize = 200;
    let client = reqwest::Client::new();
    let url = format!("{base}/webhooks/memory/acme");
    let started = Instant::now();
    for i in 0..N {
        let (h, body) = signed(
            &connector,
            &format!("msg_{i}"),
            &format!("item_{i}"),
            Op::Delete,
            SystemTime::now(),
        );
        let r = client
            .post(&url)
            .headers(h)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    let (conn, stream) = (ConnectionId::from("acme"), StreamId::from("items"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done = (0..N)
            .filter(|i| sink.apply_count(&conn, &stream, &format!("item_{i}")) > 0)
            .count();
        if done == N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done}/{N} processed: the other nodes were not woken (their poll is a minute)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    for i in 0..N {
        assert_eq!(
            sink.apply_count(&conn, &stream, &format!("item_{i}")),
            1,
            "item_{i} applied exactly once"
        );
    }
    eprintln!("{N} webhooks received on A, processed on B and C in {elapsed:?}");
    shutdown.cancel();
    for p in processors {
        p.await.unwrap();
    }
    receiver.close().await;
    db.drop_db().await;
}

/// Items in pages of 2; counts reads in flight per connection (never two at once) and, when
/// `hang_after` is set, never returns the page after that many pages (a node dying mid-sync).
#[derive(Debug)]
struct Counted {
    name: String,
    inner: MemoryConnector,
    in_flight: Arc<Mutex<BTreeMap<String, usize>>>,
    max_in_flight: Arc<AtomicUsize>,
    pages: AtomicUsize,
    hang_after: Option<usize>,
}

#[async_trait]
impl Connector for Counted {
    fn info(&self) -> &ConnectorInfo {
        self.inner.info()
    }
    async fn check(&self) -> Result<()> {
        Ok(())
    }
    async fn read(&self, s: &StreamId, c: Option<&CursorToken>) -> Result<Page> {
        if self
            .hang_after
            .is_some_and(|n| self.pages.load(Ordering::SeqCst) >= n)
        {
            std::future::pending::<()>().await;
        }
        let key = self.name.clone();
        let now = {
            let mut m = self.in_flight.lock().unwrap();
            let n = m.entry(key.clone()).or_default();
            *n += 1;
            *n
        };
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::task::yield_now().await;
        *self.in_flight.lock().unwrap().get_mut(&key).unwrap() -= 1;
        self.pages.fetch_add(1, Ordering::SeqCst);
        self.inner.read(s, c).await
    }
}

struct Node {
    scheduler: Scheduler,
    store: PgStore,
}

async fn scheduling_node(
    url: &str,
    clock: &ManualClock,
    owner: &str,
    connections: &[(String, Arc<Counted>)],
    sink: Arc<MemorySink>,
    every: Duration,
) -> Node {
    let store = node(url, Some(clock)).await;
    let mut builder = ServerState::builder(Arc::new(store.clone())).clock(clock.clock());
    let mut jobs = Vec::new();
    for (id, connector) in connections {
        builder = builder.connection(ConnectionHandle::new(id.clone(), connector.clone()));
        jobs.push(JobSpec::every(id.clone(), "items", every, Duration::ZERO));
    }
    let mut config = SchedulerConfig::default();
    config.lease = Duration::from_secs(30);
    // At most 20 jobs per claim: the three nodes share the 50 of a tick.
    config.max_concurrent = 20;
    let scheduler = Scheduler::new(builder.build(), jobs, sink, config)
        .await
        .unwrap()
        .with_owner(owner);
    Node { scheduler, store }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_fifty_schedules_across_three_nodes_run_once_per_tick() {
    let Some(db) = pg::fresh().await else { return };
    let clock = ManualClock::new();
    let in_flight = Arc::new(Mutex::new(BTreeMap::new()));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    // Each node has its own connector objects (its own process), sharing the counters.
    let connections = || -> Vec<(String, Arc<Counted>)> {
        (0..50)
            .map(|i| {
                let c = Counted {
                    name: format!("conn-{i:02}"),
                    inner: MemoryConnector::new(["items"], 2, SECRET).with_generated("items", 4, 4),
                    in_flight: in_flight.clone(),
                    max_in_flight: max_in_flight.clone(),
                    pages: AtomicUsize::new(0),
                    hang_after: None,
                };
                (format!("conn-{i:02}"), Arc::new(c))
            })
            .collect()
    };
    let sink = Arc::new(MemorySink::new());
    let every = Duration::from_secs(5);
    let mut nodes = Vec::new();
    for owner in ["n1", "n2", "n3"] {
        nodes.push(
            scheduling_node(&db.url, &clock, owner, &connections(), sink.clone(), every).await,
        );
    }
    const TICKS: usize = 12; // a minute of 5-second ticks
    let mut per_node = [0usize; 3];
    for tick in 0..TICKS {
        let (r1, r2, r3) = tokio::join!(
            nodes[0].scheduler.run_due(),
            nodes[1].scheduler.run_due(),
            nodes[2].scheduler.run_due()
        );
        let runs = [r1.unwrap(), r2.unwrap(), r3.unwrap()];
        let mut seen = std::collections::BTreeSet::new();
        for (i, r) in runs.iter().enumerate() {
            per_node[i] += r.len();
            for run in r {
                assert_eq!(run.status, "succeeded", "{run:?}");
                assert!(
                    seen.insert(run.connection.clone()),
                    "{} ran twice in tick {tick}",
                    run.connection
                );
            }
        }
        assert_eq!(seen.len(), 50, "every connection once in tick {tick}");
        clock.advance(every);
    }
    assert_eq!(
        max_in_flight.load(Ordering::SeqCst),
        1,
        "never two reads of one connection at once"
    );
    let store = &nodes[0].store;
    let rows = store.list_schedules().await.unwrap();
    assert_eq!(rows.len(), 50);
    assert!(
        rows.iter()
            .all(|r| r.runs == TICKS as u64 && r.failures == 0),
        "{rows:?}"
    );
    assert!(
        per_node.iter().all(|n| *n > 0),
        "every node took part: {per_node:?}"
    );
    eprintln!("runs per node over {TICKS} ticks: {per_node:?}");
    for n in nodes {
        n.store.close().await;
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_node_dying_mid_sync_is_taken_over_from_the_committed_cursor() {
    let Some(db) = pg::fresh().await else { return };
    let clock = ManualClock::new();
    let counters = (
        Arc::new(Mutex::new(BTreeMap::new())),
        Arc::new(AtomicUsize::new(0)),
    );
    let connector = |hang_after| {
        Arc::new(Counted {
            name: "acme".into(),
            // 20 items, 2 per page: 10 pages.
            inner: MemoryConnector::new(["items"], 2, SECRET).with_generated("items", 20, 20),
            in_flight: counters.0.clone(),
            max_in_flight: counters.1.clone(),
            pages: AtomicUsize::new(0),
            hang_after,
        })
    };
    let sink = Arc::new(MemorySink::new());
    let every = Duration::from_secs(3600);
    let dying = connector(Some(4));
    let a = scheduling_node(
        &db.url,
        &clock,
        "a",
        &[("acme".to_string(), dying.clone())],
        sink.clone(),
        every,
    )
    .await;
    let survivor = connector(None);
    let b = scheduling_node(
        &db.url,
        &clock,
        "b",
        &[("acme".to_string(), survivor.clone())],
        sink.clone(),
        every,
    )
    .await;
    // A takes the job and hangs after 4 pages; it "dies" (its task is dropped): no finish,
    // its lease stays.
    let a_run = tokio::spawn(async move { a.scheduler.run_due().await });
    let deadline = Instant::now() + Duration::from_secs(20);
    while dying.pages.load(Ordering::SeqCst) < 4 {
        assert!(Instant::now() < deadline, "A did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    a_run.abort();
    let committed = sink.len();
    assert!(
        committed >= 6,
        "A's first pages were committed: {committed}"
    );
    assert!(
        b.scheduler.run_due().await.unwrap().is_empty(),
        "A's lease holds"
    );
    clock.advance(Duration::from_secs(31));
    let runs = b.scheduler.run_due().await.unwrap();
    assert_eq!(runs.len(), 1, "B takes over after the lease");
    assert_eq!(runs[0].status, "succeeded");
    assert_eq!(sink.len(), 20, "no record lost");
    assert!(
        survivor.pages.load(Ordering::SeqCst) <= 10 - 3,
        "B resumed from the committed cursor ({} pages read)",
        survivor.pages.load(Ordering::SeqCst)
    );
    b.store.close().await;
    db.drop_db().await;
}

/// `[identity]` without a path on a PostgreSQL store: every node resolves into one graph in the
/// state database; what one node resolves, another finds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_the_entity_graph_lives_in_the_shared_state_database() {
    use apex_connect_core::{Batch, Entity, EntityKind, Identity, Record, Sink, SourceRef};
    use apex_connect_identity::EntityGraphSink;
    use apex_connect_server::app::identity_graph;
    use apex_connect_server::config::IdentitySettings;

    let Some(db) = pg::fresh().await else { return };
    let settings = IdentitySettings::default();
    let a_store = apex_connect_core::store::open(&db.url, key())
        .await
        .unwrap();
    let b_store = apex_connect_core::store::open(&db.url, key())
        .await
        .unwrap();
    let (a, b) = tokio::join!(
        identity_graph(&settings, &a_store),
        identity_graph(&settings, &b_store)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let ann = |platform: &'static str, id: &str, email: &str| {
        Entity::new(EntityKind::Person, SourceRef::new(platform, "contact", id))
            .with_name("Ann Lee")
            .with_identity(Identity::Email(email.into()))
    };
    let write = |graph: apex_connect_identity::EntityGraph, conn: &'static str, e: Entity| async move {
        let (c, s) = (ConnectionId::from(conn), StreamId::from("contacts"));
        let id = e.source.id.clone();
        let records = [Record::upsert(
            s.clone(),
            id.as_str(),
            serde_json::json!({ "id": id }),
        )];
        let entities = [Some(e)];
        EntityGraphSink::for_graph(graph)
            .write(Batch::new(&c, &s, &records).with_entities(&entities))
            .await
            .unwrap();
    };
    tokio::join!(
        write(
            a.clone(),
            "acme-hubspot",
            ann("hubspot", "h1", "ann@acme.com")
        ),
        write(
            b.clone(),
            "acme-front",
            ann("frontapp", "f1", "  ANN@acme.com ")
        )
    );
    for graph in [&a, &b] {
        let found = graph.find(&Identity::email("ann@acme.com")).await.unwrap();
        assert_eq!(
            found.len(),
            1,
            "one canonical Ann seen from both nodes: {found:?}"
        );
        let entity = graph.canonical(found[0].id).await.unwrap().unwrap();
        assert_eq!(entity.sources.len(), 2, "{entity:?}");
    }
    a_store.close().await;
    b_store.close().await;
    db.drop_db().await;
}
