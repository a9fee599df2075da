//! The scheduler's jobs on their own tasks, connection status, retention; paused time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apex_connect_core::store::{
    Connection, ConnectionStatus, FailAction, InboxEvent, MemoryStore, RunKind, RunOutcome,
    RunStatus, StateStore,
};
use apex_connect_core::{
    ConnectionId, Connector, ConnectorInfo, CursorToken, MemorySink, Page, Result, StreamId,
    async_trait,
};
use apex_connect_server::{
    ConnectionHandle, JobSpec, Retention, RetentionSettings, Scheduler, SchedulerConfig,
    ServerConfig, ServerState,
};
use apex_connect_testkit::MemoryConnector;
use tokio_util::sync::CancellationToken;

use crate::common::SECRET;
use crate::lease::TokioClock;

/// Reads wait per stream (`delays`), and are counted per stream.
#[derive(Debug)]
struct Timed {
    inner: MemoryConnector,
    delays: BTreeMap<String, Duration>,
    reads: Mutex<BTreeMap<String, usize>>,
}

impl Timed {
    fn new(delays: &[(&str, Duration)]) -> Arc<Self> {
        Arc::new(Timed {
            inner: MemoryConnector::new(delays.iter().map(|(s, _)| s.to_string()), 10, SECRET),
            delays: delays.iter().map(|(s, d)| (s.to_string(), *d)).collect(),
            reads: Mutex::default(),
        })
    }
    fn reads(&self, stream: &str) -> usize {
        self.reads.lock().unwrap().get(stream).copied().unwrap_or(0)
    }
}

#[async_trait]
impl Connector for Timed {
    fn info(&self) -> &ConnectorInfo {
        self.inner.info()
    }
    async fn check(&self) -> Result<()> {
        Ok(())
    }
    async fn read(&self, s: &StreamId, c: Option<&CursorToken>) -> Result<Page> {
        *self.reads.lock().unwrap().entry(s.to_string()).or_default() += 1;
        tokio::time::sleep(self.delays[s.as_str()]).await;
        if s.as_str() == "boom" {
            panic!("connector bug in read");
        }
        self.inner.read(s, c).await
    }
}

fn config(max_concurrent: usize) -> SchedulerConfig {
    let mut c = SchedulerConfig::default();
    c.lease = Duration::from_secs(60);
    c.poll = Duration::from_secs(1);
    c.max_concurrent = max_concurrent;
    c.retention = Retention::keep_all();
    c
}

fn state(clock: &TokioClock, connections: &[(&'static str, Arc<Timed>)]) -> ServerState {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new().with_clock(clock.clock()));
    let mut b = ServerState::builder(store).clock(clock.clock());
    for (id, c) in connections {
        b = b.connection(ConnectionHandle::new(*id, c.clone()));
    }
    b.build()
}

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

/// A three-hour backfill and a job due every minute: the short job keeps its cadence while
/// the backfill runs (its lease renewed), and shutdown cancels the backfill.
#[tokio::test(start_paused = true)]
async fn a_long_job_does_not_delay_another_due_job() {
    let clock = TokioClock::new();
    let conn = Timed::new(&[("backfill", 3 * HOUR), ("quick", Duration::from_millis(50))]);
    let state = state(&clock, &[("acme", conn.clone())]);
    let jobs = vec![
        JobSpec::every("acme", "backfill", 24 * HOUR, Duration::ZERO),
        JobSpec::every("acme", "quick", MINUTE, Duration::ZERO),
    ];
    let sink = Arc::new(MemorySink::new());
    let scheduler = Scheduler::new(state.clone(), jobs, sink, config(4))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let s = scheduler.clone();
        let stop = shutdown.clone();
        async move { s.run(stop).await }
    });
    tokio::time::sleep(10 * MINUTE + Duration::from_secs(30)).await;
    assert_eq!(
        conn.reads("backfill"),
        1,
        "the backfill is still on its first read"
    );
    let quick = conn.reads("quick");
    assert!(
        (10..=12).contains(&quick),
        "quick ran every minute: {quick}"
    );
    let rows = state.store().list_schedules().await.unwrap();
    let backfill = rows
        .iter()
        .find(|r| r.stream.as_str() == "backfill")
        .unwrap();
    assert!(backfill.lease_owner.is_some(), "still leased while it runs");
    assert_eq!(backfill.runs, 0);
    let quick_row = rows.iter().find(|r| r.stream.as_str() == "quick").unwrap();
    assert_eq!(quick_row.runs as usize, quick);
    assert_eq!(quick_row.failures, 0);

    shutdown.cancel();
    run.await.unwrap();
    let rows = state.store().list_schedules().await.unwrap();
    let backfill = rows
        .iter()
        .find(|r| r.stream.as_str() == "backfill")
        .unwrap();
    assert_eq!(backfill.last_status, Some(RunStatus::Cancelled));
    assert!(backfill.lease_owner.is_none(), "released at shutdown");
    assert_eq!(scheduler.panics(), 0);
}

/// With one permit, the second due job waits for the first; both run.
#[tokio::test(start_paused = true)]
async fn the_concurrency_limit_holds() {
    let clock = TokioClock::new();
    let conn = Timed::new(&[("a", HOUR), ("b", HOUR)]);
    let state = state(&clock, &[("acme", conn.clone())]);
    let jobs = vec![
        JobSpec::every("acme", "a", 24 * HOUR, Duration::ZERO),
        JobSpec::every("acme", "b", 24 * HOUR, Duration::ZERO),
    ];
    let scheduler = Scheduler::new(state, jobs, Arc::new(MemorySink::new()), config(1))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let s = scheduler.clone();
        let stop = shutdown.clone();
        async move { s.run(stop).await }
    });
    tokio::time::sleep(30 * MINUTE).await;
    assert_eq!(conn.reads("a") + conn.reads("b"), 1, "one permit: one run");
    tokio::time::sleep(2 * HOUR).await;
    assert_eq!((conn.reads("a"), conn.reads("b")), (1, 1));
    shutdown.cancel();
    run.await.unwrap();
}

/// A disabled connection's jobs are skipped and a connection needing re-authorization has its
/// jobs paused: no read, no failure counted, due again at the regular time (not every tick);
/// once reconnected the job runs.
#[tokio::test(start_paused = true)]
async fn disabled_connections_are_skipped_and_reauth_pauses_schedules() {
    let clock = TokioClock::new();
    let quick = Duration::from_millis(10);
    let (off, reauth, on) = (
        Timed::new(&[("items", quick)]),
        Timed::new(&[("items", quick)]),
        Timed::new(&[("items", quick)]),
    );
    let state = state(
        &clock,
        &[
            ("off", off.clone()),
            ("reauth", reauth.clone()),
            ("on", on.clone()),
        ],
    );
    let store = state.store();
    for (id, status) in [
        ("off", ConnectionStatus::Disabled),
        ("reauth", ConnectionStatus::NeedsReauth),
        ("on", ConnectionStatus::Active),
    ] {
        store
            .upsert_connection(
                &Connection::new(id, "memory", serde_json::json!({}))
                    .with_status(status, Some("by test".into())),
            )
            .await
            .unwrap();
    }
    let jobs = ["off", "reauth", "on"]
        .iter()
        .map(|c| JobSpec::every(*c, "items", HOUR, Duration::ZERO))
        .collect();
    let scheduler = Scheduler::new(state.clone(), jobs, Arc::new(MemorySink::new()), config(4))
        .await
        .unwrap();
    let t0 = clock.now_ms();
    let runs = scheduler.run_due().await.unwrap();
    let statuses: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| (r.connection.as_str(), r.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("off", "skipped"),
            ("on", "succeeded"),
            ("reauth", "paused")
        ]
    );
    assert_eq!((off.reads("items"), reauth.reads("items")), (0, 0));
    assert!(on.reads("items") >= 1);
    let rows = store.list_schedules().await.unwrap();
    for row in &rows {
        assert_eq!(row.failures, 0, "{}: never a failure", row.connection);
        assert!(row.lease_owner.is_none());
        assert!(
            row.next_due_at >= t0 + HOUR.as_millis() as i64,
            "regular cadence"
        );
    }
    let error = |c: &str| {
        rows.iter()
            .find(|r| r.connection.as_str() == c)
            .unwrap()
            .last_error
            .clone()
            .unwrap_or_default()
    };
    assert!(error("off").contains("disabled"), "{}", error("off"));
    assert!(
        error("reauth").contains("re-authorization"),
        "{}",
        error("reauth")
    );
    // Not every tick: nothing is due again before the regular time.
    assert!(scheduler.run_due().await.unwrap().is_empty());

    // Reconnected: at the next regular time the job runs.
    store
        .set_connection_status(
            &ConnectionId::from("reauth"),
            ConnectionStatus::Active,
            None,
        )
        .await
        .unwrap();
    clock.jump(HOUR + MINUTE);
    let runs = scheduler.run_due().await.unwrap();
    let reauth_run = runs.iter().find(|r| r.connection == "reauth").unwrap();
    assert_eq!(reauth_run.status, "succeeded");
    assert_eq!(reauth.reads("items"), 1);
    assert_eq!(off.reads("items"), 0, "still disabled");
}

/// The scheduler's retention task purges done inbox events and old runs in batches, keeping
/// dead letters, pending events and each stream's latest run.
#[tokio::test(start_paused = true)]
async fn retention_purges_done_events_and_old_runs_in_batches() {
    let clock = TokioClock::new();
    let state = state(&clock, &[]);
    let store = state.store().clone();
    let acme = ConnectionId::from("acme");
    for i in 0..7 {
        let ev = InboxEvent::new(
            "memory",
            "acme",
            format!("e{i}"),
            clock.now_ms(),
            &b"{}"[..],
        );
        store.inbox_append(&ev).await.unwrap();
    }
    let claimed = store
        .inbox_claim("w", Duration::from_secs(30), 6)
        .await
        .unwrap();
    for c in &claimed[..5] {
        store.inbox_complete(c.id, "w").await.unwrap();
    }
    store
        .inbox_fail(claimed[5].id, "w", "bad", FailAction::DeadLetter)
        .await
        .unwrap();
    let items = StreamId::from("items");
    for _ in 0..3 {
        let run = store.start_run(&acme, &items, RunKind::Full).await.unwrap();
        store
            .finish_run(run, &RunOutcome::new(RunStatus::Succeeded))
            .await
            .unwrap();
    }
    clock.jump(Duration::from_secs(2 * 86_400));

    let mut c = config(1);
    c.retention = Retention::default()
        .inbox(Some(Duration::from_secs(86_400)))
        .runs(Some(Duration::from_secs(86_400)))
        .batch(2);
    let scheduler = Scheduler::new(state.clone(), vec![], Arc::new(MemorySink::new()), c)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn({
        let s = scheduler.clone();
        let stop = shutdown.clone();
        async move { s.run(stop).await }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    let counts = store.inbox_counts().await.unwrap();
    assert_eq!(
        (counts.pending, counts.done, counts.dead),
        (1, 0, 1),
        "done purged; pending and dead kept"
    );
    let runs = store.list_runs(Some(&acme), 10).await.unwrap();
    assert_eq!(runs.len(), 1, "the latest run of the stream stays");
    shutdown.cancel();
    run.await.unwrap();
}

/// `[retention]` in the configuration: durations, `off`, defaults.
#[test]
fn retention_settings_parse() {
    let config = ServerConfig::parse(
        "[retention]\ninbox = \"3d\"\nruns = \"off\"\nbatch = 100\nevery = \"1m\"\n",
    )
    .unwrap();
    let r = config.retention.parse().unwrap();
    assert_eq!(r.inbox, Some(Duration::from_secs(3 * 86_400)));
    assert_eq!(r.runs, None);
    assert_eq!((r.batch, r.every), (100, MINUTE));
    let default = RetentionSettings::default().parse().unwrap();
    assert_eq!(default, Retention::default());
    assert_eq!(default.inbox, Some(Duration::from_secs(7 * 86_400)));
    assert_eq!(default.runs, Some(Duration::from_secs(30 * 86_400)));
    let zero = ServerConfig::parse("[retention]\nbatch = 0\n").unwrap();
    assert!(zero.retention.parse().is_err());
    assert!(ServerConfig::parse("[retention]\nkeep = \"1d\"\n").is_err());
}

/// A run whose connector panics is recorded as a failed run (retried with backoff), counted,
/// and the scheduler keeps running the other jobs.
#[tokio::test(start_paused = true)]
async fn a_panicking_run_is_recorded_as_a_failure() {
    let clock = TokioClock::new();
    let conn = Timed::new(&[("boom", Duration::ZERO), ("items", Duration::ZERO)]);
    let state = state(&clock, &[("acme", conn.clone())]);
    let jobs = vec![
        JobSpec::every("acme", "boom", HOUR, Duration::ZERO),
        JobSpec::every("acme", "items", HOUR, Duration::ZERO),
    ];
    let scheduler = Scheduler::new(state.clone(), jobs, Arc::new(MemorySink::new()), config(4))
        .await
        .unwrap();
    let runs = scheduler.run_due().await.unwrap();
    let statuses: Vec<(&str, &str)> = runs.iter().map(|r| (r.stream.as_str(), r.status)).collect();
    assert_eq!(statuses, [("boom", "failed"), ("items", "succeeded")]);
    assert_eq!(scheduler.panics(), 1);
    let rows = state.store().list_schedules().await.unwrap();
    let boom = rows.iter().find(|r| r.stream.as_str() == "boom").unwrap();
    assert_eq!(boom.failures, 1);
    assert!(boom.lease_owner.is_none(), "lease released");
    assert!(
        boom.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("panicked")
    );
}
