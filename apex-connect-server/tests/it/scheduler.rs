use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use apex_connect_core::{
    ConnectionId, Connector, ConnectorInfo, CursorToken, Error, MemorySink, Page, Result, StreamId,
    async_trait,
};
use apex_connect_server::{ConnectionHandle, JobSpec, Scheduler, SchedulerConfig, ServerState};
use apex_connect_testkit::MemoryConnector;

use crate::common::*;

/// Counts concurrent reads, sleeps a little per page, fails while `failing`.
#[derive(Debug)]
struct Slow {
    inner: MemoryConnector,
    running: AtomicUsize,
    max_running: AtomicUsize,
    failing: AtomicBool,
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
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(
                Error::new(apex_connect_core::ErrorKind::Upstream, "platform down").temporary(),
            );
        }
        self.inner.read(s, c).await
    }
}

struct Proc {
    state: ServerState,
    scheduler: Scheduler,
}

/// One "process": its own store handle on the shared file, its own scheduler.
async fn process(
    dir: &std::path::Path,
    clock: &ManualClock,
    connector: Arc<Slow>,
    sink: Arc<MemorySink>,
    owner: &str,
) -> Proc {
    let store = sqlite(dir, clock).await;
    let state = ServerState::builder(dyn_store(&store))
        .clock(clock.clock())
        .connection(ConnectionHandle::new("acme", connector))
        .build();
    let job = JobSpec::every("acme", "items", Duration::from_secs(3600), Duration::ZERO);
    let mut config = SchedulerConfig::default();
    config.lease = Duration::from_secs(60);
    config.backoff = Duration::from_secs(30);
    let scheduler = Scheduler::new(state.clone(), vec![job], sink, config)
        .await
        .unwrap()
        .with_owner(owner);
    Proc { state, scheduler }
}

#[tokio::test]
async fn a_scheduled_job_survives_restarts_and_never_runs_twice_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let connector = Arc::new(Slow {
        inner: MemoryConnector::new(["items"], 10, SECRET).with_generated("items", 50, 50),
        running: AtomicUsize::new(0),
        max_running: AtomicUsize::new(0),
        failing: AtomicBool::new(false),
    });
    let sink = Arc::new(MemorySink::new());
    let a = process(dir.path(), &clock, connector.clone(), sink.clone(), "a").await;
    let b = process(dir.path(), &clock, connector.clone(), sink.clone(), "b").await;

    // Both processes see the job due and try at once: one runs it, the other finds it leased.
    let (ra, rb) = tokio::join!(a.scheduler.run_due(), b.scheduler.run_due());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(
        ra.len() + rb.len(),
        1,
        "exactly one process ran the job: {ra:?} {rb:?}"
    );
    assert_eq!(
        connector.max_running.load(Ordering::SeqCst),
        1,
        "never two runs at once"
    );
    let run = ra.into_iter().chain(rb).next().unwrap();
    assert_eq!(run.status, "succeeded");
    assert_eq!(sink.len(), 50);
    let t0 = clock.clock().now_ms();
    assert_eq!(run.next_due_at, t0 + 3_600_000);

    // Restart: a new process keeps the stored due time; nothing runs before it.
    drop((a, b));
    let c = process(dir.path(), &clock, connector.clone(), sink.clone(), "c").await;
    assert!(
        c.scheduler.run_due().await.unwrap().is_empty(),
        "not due yet after restart"
    );
    clock.advance(Duration::from_secs(3601));
    let runs = c.scheduler.run_due().await.unwrap();
    assert_eq!(runs.len(), 1);
    let last = c
        .state
        .store()
        .last_run(&ConnectionId::from("acme"), &StreamId::from("items"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        last.records_read, 0,
        "incremental: continued from the stored cursor"
    );

    // A process crashes holding the lease mid-run: nobody runs the job until the lease ends.
    clock.advance(Duration::from_secs(3601));
    let schedules = c.state.store().clone();
    let held = schedules
        .claim_schedules(
            "crashed",
            Duration::from_secs(60),
            clock.clock().now_ms(),
            10,
        )
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    assert!(
        c.scheduler.run_due().await.unwrap().is_empty(),
        "leased by the crashed process"
    );
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        c.scheduler.run_due().await.unwrap().len(),
        1,
        "taken over after the lease"
    );

    // A failing run is retried after the backoff, well before the regular interval.
    clock.advance(Duration::from_secs(3601));
    connector.failing.store(true, Ordering::SeqCst);
    let failed = c.scheduler.run_due().await.unwrap();
    assert_eq!(failed[0].status, "failed");
    let now = clock.clock().now_ms();
    assert_eq!(failed[0].next_due_at, now + 30_000);
    connector.failing.store(false, Ordering::SeqCst);
    clock.advance(Duration::from_secs(31));
    assert_eq!(c.scheduler.run_due().await.unwrap()[0].status, "succeeded");
    let rows = schedules.list_schedules().await.unwrap();
    assert_eq!(rows[0].failures, 0);
    assert_eq!(connector.max_running.load(Ordering::SeqCst), 1);
}

/// An operator changes a job's cadence in the store (the dashboard's schedule form): the
/// scheduler runs it on the stored cadence, not the configured one; a restart with the
/// configuration registers the configured cadence again.
#[tokio::test]
async fn a_cadence_changed_in_the_store_is_the_one_that_runs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let connector = Arc::new(Slow {
        inner: MemoryConnector::new(["items"], 10, SECRET).with_generated("items", 5, 5),
        running: AtomicUsize::new(0),
        max_running: AtomicUsize::new(0),
        failing: AtomicBool::new(false),
    });
    let sink = Arc::new(MemorySink::new());
    let p = process(dir.path(), &clock, connector.clone(), sink.clone(), "a").await;
    let store = p.state.store().clone();
    let now = clock.clock().now_ms();
    let changed = JobSpec::parse("acme", "items", "every 5m").unwrap();
    assert_eq!(changed.spec, "every 300000ms jitter 0ms");
    store
        .upsert_schedule(&changed.entry(now), now)
        .await
        .unwrap();
    let run = p.scheduler.run_due().await.unwrap();
    assert_eq!(
        run[0].next_due_at,
        now + 300_000,
        "the stored 5 minutes, not the configured hour"
    );
    // A cron expression too.
    let cron = JobSpec::parse("acme", "items", "cron 0 0 * * *").unwrap();
    assert_eq!(cron.spec, "cron 0 0 * * *");
    for bad in ["every banana", "every 10ms", "hourly", "cron nope", ""] {
        let e = JobSpec::parse("acme", "items", bad).unwrap_err();
        assert_eq!(e.kind(), apex_connect_core::ErrorKind::Config, "{bad}");
    }
    // Restart with the configuration: its hour is registered again.
    drop(p);
    let p = process(dir.path(), &clock, connector, sink, "b").await;
    let rows = p.state.store().list_schedules().await.unwrap();
    assert_eq!(rows[0].spec, "every 3600000ms jitter 0ms");
}

#[test]
fn cron_and_interval_cadences() {
    let job = JobSpec::cron("c", "s", "*/5 * * * *").unwrap();
    // 2023-11-14 22:13:20 UTC -> next multiple of 5 minutes: 22:15:00
    let t = 1_700_000_000_000;
    assert_eq!(job.cadence.next(t), 1_700_000_100_000);
    let every = JobSpec::every("c", "s", Duration::from_secs(60), Duration::from_secs(10));
    for _ in 0..20 {
        let n = every.cadence.next(t);
        assert!((t + 60_000..=t + 70_000).contains(&n));
    }
    assert!(JobSpec::cron("c", "s", "61 * * * *").is_err());
}
