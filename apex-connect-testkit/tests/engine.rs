//! The sync engine under interruption: a sink that fails on its k-th write (before or after
//! applying), cancellation at every step, a store whose k-th cursor commit fails; each time a
//! fresh run resumes and the sink must hold exactly the connector's records, each applied once.
//! The persistent pairs run on SQLite and on PostgreSQL (see `apex_connect_testkit::pg`).

use apex_connect_testkit::pg;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use apex_connect_core::engine::CancellationToken;
use apex_connect_core::store::{
    AppendOutcome, ClaimedEvent, Connection, ConnectionStatus, ConnectionStore, CursorStore,
    DailyRunStats, DeadLetter, EncryptionKey, EventId, FailAction, InboxCounts, InboxEvent,
    InboxStore, LogLevel, MemoryStore, PgStore, RejectId, RejectStore, RunId, RunKind, RunLogLine,
    RunOutcome, RunStatus, RunStore, ScheduleEntry, ScheduleOutcome, ScheduleRow, ScheduleStore,
    SqliteStore, StateStore, StoredReject, SyncRun,
};
use apex_connect_core::{
    Ack, Batch, ConnectionId, Connector, ConnectorInfo, CursorToken, Error, ErrorKind, MemorySink,
    NullSink, Page, PgSink, Result, Sink, SqliteSink, StreamId, SyncEngine, SyncOptions, TokenSet,
    TokenStore, Versioned, async_trait,
};
use apex_connect_testkit::MemoryConnector;
use serde_json::json;

const PAGE: usize = 5;

fn conn() -> ConnectionId {
    ConnectionId::from("acme")
}

fn stream() -> StreamId {
    StreamId::from("contacts")
}

/// 37 live records after some updates and deletes: 8 pages of 5.
fn connector() -> MemoryConnector {
    let c = MemoryConnector::new([stream()], PAGE, b"whsec");
    let s = stream();
    for i in 0..40 {
        c.put(
            &s,
            &format!("c{i:03}"),
            json!({"name": format!("contact {i}")}),
        );
    }
    for i in [3, 17, 29] {
        c.put(&s, &format!("c{i:03}"), json!({"name": "renamed"}));
    }
    for i in [5, 11, 33] {
        c.remove(&s, &format!("c{i:03}"));
    }
    c
}

/// What can go wrong inside the sink.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SinkFault {
    /// The k-th write fails before applying anything.
    FailBefore,
    /// The k-th write applies the batch, then fails (crash before the ack).
    FailAfter,
    /// The k-th write cancels the run before applying.
    CancelBefore,
    /// The k-th write applies, then cancels the run before returning the ack.
    CancelAfter,
}

#[derive(Debug)]
struct FaultySink {
    inner: Arc<MemorySink>,
    fault: SinkFault,
    at: usize,
    writes: AtomicUsize,
    cancel: CancellationToken,
}

#[async_trait]
impl Sink for FaultySink {
    async fn write(&self, batch: Batch<'_>) -> Result<Ack> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if n != self.at {
            return self.inner.write(batch).await;
        }
        match self.fault {
            SinkFault::FailBefore => Err(Error::storage("disk full (injected)")),
            SinkFault::FailAfter => {
                self.inner.write(batch).await?;
                Err(Error::storage("crashed before ack (injected)"))
            }
            SinkFault::CancelBefore => {
                self.cancel.cancel();
                tokio::task::yield_now().await;
                self.inner.write(batch).await
            }
            SinkFault::CancelAfter => {
                let ack = self.inner.write(batch).await?;
                self.cancel.cancel();
                Ok(ack)
            }
        }
    }
}

/// A connector that cancels the run when its k-th read starts, or fails it.
#[derive(Debug)]
struct FaultyConnector {
    inner: MemoryConnector,
    at: usize,
    reads: AtomicUsize,
    cancel: Option<CancellationToken>,
    /// Waited for before the first read: two runs sharing it both start from the same cursor.
    start: Option<Arc<tokio::sync::Barrier>>,
}

#[async_trait]
impl Connector for FaultyConnector {
    fn info(&self) -> &ConnectorInfo {
        self.inner.info()
    }
    async fn check(&self) -> Result<()> {
        Ok(())
    }
    async fn read(&self, stream: &StreamId, cursor: Option<&CursorToken>) -> Result<Page> {
        let n = self.reads.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(start) = self.start.as_ref().filter(|_| n == 1) {
            start.wait().await;
        }
        if n == self.at {
            match &self.cancel {
                Some(token) => {
                    token.cancel();
                    tokio::task::yield_now().await;
                }
                None => return Err(Error::new(ErrorKind::Upstream, "502 (injected)")),
            }
        }
        // let concurrent runs interleave
        tokio::task::yield_now().await;
        self.inner.read(stream, cursor).await
    }
}

/// A store whose k-th cursor commit fails, before or after committing.
#[derive(Debug)]
struct FaultyStore {
    inner: Arc<MemoryStore>,
    at: usize,
    committed_then_fail: bool,
    saves: AtomicUsize,
}

#[async_trait]
impl RejectStore for FaultyStore {
    async fn put_rejects(&self, c: &ConnectionId, r: &[apex_connect_core::Reject]) -> Result<()> {
        self.inner.put_rejects(c, r).await
    }
    async fn list_rejects(
        &self,
        c: Option<&ConnectionId>,
        s: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<StoredReject>> {
        self.inner.list_rejects(c, s, limit).await
    }
    async fn count_rejects(&self, c: Option<&ConnectionId>) -> Result<u64> {
        self.inner.count_rejects(c).await
    }
    async fn delete_reject(&self, id: RejectId) -> Result<()> {
        self.inner.delete_reject(id).await
    }
    async fn reject_failed(&self, id: RejectId, error: &str) -> Result<()> {
        self.inner.reject_failed(id, error).await
    }
}

#[async_trait]
impl TokenStore for FaultyStore {
    async fn load(&self, c: &ConnectionId) -> Result<Option<Versioned<TokenSet>>> {
        TokenStore::load(&*self.inner, c).await
    }
    async fn save(&self, c: &ConnectionId, t: &TokenSet, e: Option<u64>) -> Result<u64> {
        self.inner.save(c, t, e).await
    }
    async fn delete(&self, c: &ConnectionId) -> Result<()> {
        TokenStore::delete(&*self.inner, c).await
    }
}

#[async_trait]
impl ConnectionStore for FaultyStore {
    async fn upsert_connection(&self, c: &Connection) -> Result<Connection> {
        self.inner.upsert_connection(c).await
    }
    async fn get_connection(&self, id: &ConnectionId) -> Result<Option<Connection>> {
        self.inner.get_connection(id).await
    }
    async fn list_connections(&self) -> Result<Vec<Connection>> {
        self.inner.list_connections().await
    }
    async fn set_connection_status(
        &self,
        id: &ConnectionId,
        s: ConnectionStatus,
        d: Option<&str>,
    ) -> Result<()> {
        self.inner.set_connection_status(id, s, d).await
    }
    async fn delete_connection(&self, id: &ConnectionId) -> Result<()> {
        self.inner.delete_connection(id).await
    }
}

#[async_trait]
impl CursorStore for FaultyStore {
    async fn load_cursor(
        &self,
        c: &ConnectionId,
        s: &StreamId,
    ) -> Result<Option<Versioned<CursorToken>>> {
        self.inner.load_cursor(c, s).await
    }
    async fn save_cursor(
        &self,
        c: &ConnectionId,
        s: &StreamId,
        cursor: &CursorToken,
        expected: Option<u64>,
    ) -> Result<u64> {
        let n = self.saves.fetch_add(1, Ordering::SeqCst) + 1;
        if n != self.at {
            return self.inner.save_cursor(c, s, cursor, expected).await;
        }
        if self.committed_then_fail {
            self.inner.save_cursor(c, s, cursor, expected).await?;
        }
        Err(Error::storage("database is locked (injected)"))
    }
    async fn reset_cursor(&self, c: &ConnectionId, s: &StreamId) -> Result<()> {
        self.inner.reset_cursor(c, s).await
    }
}

#[async_trait]
impl RunStore for FaultyStore {
    async fn start_run(&self, c: &ConnectionId, s: &StreamId, k: RunKind) -> Result<RunId> {
        self.inner.start_run(c, s, k).await
    }
    async fn finish_run(&self, run: RunId, o: &RunOutcome) -> Result<()> {
        self.inner.finish_run(run, o).await
    }
    async fn list_runs(&self, c: Option<&ConnectionId>, limit: usize) -> Result<Vec<SyncRun>> {
        self.inner.list_runs(c, limit).await
    }
    async fn last_run(&self, c: &ConnectionId, s: &StreamId) -> Result<Option<SyncRun>> {
        self.inner.last_run(c, s).await
    }
    async fn purge_runs(&self, before: i64, limit: usize) -> Result<u64> {
        self.inner.purge_runs(before, limit).await
    }
    async fn get_run(&self, run: RunId) -> Result<Option<SyncRun>> {
        self.inner.get_run(run).await
    }
    async fn run_stats(&self, c: Option<&ConnectionId>, since: i64) -> Result<Vec<DailyRunStats>> {
        self.inner.run_stats(c, since).await
    }
    async fn append_run_logs(&self, run: RunId, lines: &[RunLogLine]) -> Result<()> {
        self.inner.append_run_logs(run, lines).await
    }
    async fn run_logs(
        &self,
        run: RunId,
        min: Option<LogLevel>,
        limit: usize,
    ) -> Result<Vec<RunLogLine>> {
        self.inner.run_logs(run, min, limit).await
    }
}

#[async_trait]
impl InboxStore for FaultyStore {
    async fn inbox_append(&self, e: &InboxEvent) -> Result<AppendOutcome> {
        self.inner.inbox_append(e).await
    }
    async fn inbox_claim(&self, w: &str, l: Duration, n: usize) -> Result<Vec<ClaimedEvent>> {
        self.inner.inbox_claim(w, l, n).await
    }
    async fn inbox_complete(&self, id: EventId, w: &str) -> Result<()> {
        self.inner.inbox_complete(id, w).await
    }
    async fn inbox_fail(&self, id: EventId, w: &str, e: &str, a: FailAction) -> Result<()> {
        self.inner.inbox_fail(id, w, e, a).await
    }
    async fn inbox_renew(&self, ids: &[EventId], w: &str, l: Duration) -> Result<Vec<EventId>> {
        self.inner.inbox_renew(ids, w, l).await
    }
    async fn inbox_release(&self, ids: &[EventId], w: &str) -> Result<Vec<EventId>> {
        self.inner.inbox_release(ids, w).await
    }
    async fn purge_inbox_done(&self, before: i64, limit: usize) -> Result<u64> {
        self.inner.purge_inbox_done(before, limit).await
    }
    async fn inbox_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        self.inner.inbox_dead_letters(limit).await
    }
    async fn inbox_requeue(&self, id: EventId) -> Result<()> {
        self.inner.inbox_requeue(id).await
    }
    async fn inbox_counts(&self) -> Result<InboxCounts> {
        self.inner.inbox_counts().await
    }
    async fn inbox_backlog(&self) -> Result<Vec<apex_connect_core::store::ConnectionBacklog>> {
        self.inner.inbox_backlog().await
    }
}

#[async_trait]
impl ScheduleStore for FaultyStore {
    async fn upsert_schedule(&self, e: &ScheduleEntry, now: i64) -> Result<()> {
        self.inner.upsert_schedule(e, now).await
    }
    async fn claim_schedules(
        &self,
        owner: &str,
        lease: Duration,
        now: i64,
        limit: usize,
    ) -> Result<Vec<ScheduleRow>> {
        self.inner.claim_schedules(owner, lease, now, limit).await
    }
    async fn renew_schedule(
        &self,
        c: &ConnectionId,
        s: &StreamId,
        owner: &str,
        until: i64,
        now: i64,
    ) -> Result<bool> {
        self.inner.renew_schedule(c, s, owner, until, now).await
    }
    async fn finish_schedule(
        &self,
        c: &ConnectionId,
        s: &StreamId,
        owner: &str,
        o: &ScheduleOutcome,
        now: i64,
    ) -> Result<bool> {
        self.inner.finish_schedule(c, s, owner, o, now).await
    }
    async fn make_schedule_due(&self, c: &ConnectionId, s: &StreamId, now: i64) -> Result<()> {
        self.inner.make_schedule_due(c, s, now).await
    }
    async fn list_schedules(&self) -> Result<Vec<ScheduleRow>> {
        self.inner.list_schedules().await
    }
}

/// The sink holds exactly the connector's live records, and every (record, version) it holds
/// was applied exactly once.
fn assert_exact(source: &MemoryConnector, sink: &MemorySink) {
    let want = source.snapshot(&stream());
    let got = sink.live(&conn(), &stream());
    assert_eq!(got, want, "sink differs from the connector's records");
    assert!(
        sink.duplicate_applies().is_empty(),
        "duplicate upserts: {:?}",
        sink.duplicate_applies()
    );
}

async fn resume(
    engine: &SyncEngine,
    source: &MemoryConnector,
    sink: &MemorySink,
    read_ahead: bool,
) -> u64 {
    let report = engine
        .run(
            source,
            &conn(),
            &stream(),
            sink,
            SyncOptions::new().read_ahead(read_ahead),
        )
        .await
        .expect("resumed run succeeds");
    report.applied
}

/// Number of sink writes of a clean full sync (non-empty pages).
const PAGES: usize = 8;

#[tokio::test]
async fn sink_faults_at_every_write_lose_and_duplicate_nothing() {
    for read_ahead in [true, false] {
        for fault in [
            SinkFault::FailBefore,
            SinkFault::FailAfter,
            SinkFault::CancelBefore,
            SinkFault::CancelAfter,
        ] {
            for k in 1..=PAGES + 1 {
                let source = connector();
                let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
                let engine = SyncEngine::new(store.clone());
                let mem = Arc::new(MemorySink::new());
                let cancel = CancellationToken::new();
                let sink = FaultySink {
                    inner: mem.clone(),
                    fault,
                    at: k,
                    writes: AtomicUsize::new(0),
                    cancel: cancel.clone(),
                };
                let first = engine
                    .run(
                        &source,
                        &conn(),
                        &stream(),
                        &sink,
                        SyncOptions::new().cancel(cancel).read_ahead(read_ahead),
                    )
                    .await;
                let ctx = format!("{fault:?} at write {k}, read_ahead {read_ahead}");
                let last = store.last_run(&conn(), &stream()).await.unwrap().unwrap();
                // cancelled during the last write: that write is finished and committed, and
                // nothing is left to cancel, so the run succeeds
                let cancel_at_last =
                    k == PAGES && matches!(fault, SinkFault::CancelBefore | SinkFault::CancelAfter);
                if k > PAGES || cancel_at_last {
                    let report = first.unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    assert_eq!(report.applied, 40, "{ctx}: 37 live + 3 tombstones");
                    assert_eq!(last.status, RunStatus::Succeeded, "{ctx}");
                } else {
                    let err = first.expect_err(&ctx);
                    let (kind, status) = match fault {
                        SinkFault::FailBefore | SinkFault::FailAfter => {
                            (ErrorKind::Storage, RunStatus::Failed)
                        }
                        _ => (ErrorKind::Cancelled, RunStatus::Cancelled),
                    };
                    assert_eq!(err.kind(), kind, "{ctx}: {err}");
                    assert_eq!(last.status, status, "{ctx}");
                    assert!(last.error.is_some(), "{ctx}");
                }
                let applied_after = resume(&engine, &source, &mem, read_ahead).await;
                assert_exact(&source, &mem);
                assert_eq!(mem.total_applies(), 40, "{ctx}: 37 live + 3 tombstones");
                if k > PAGES || cancel_at_last {
                    assert_eq!(applied_after, 0, "{ctx}: nothing left");
                }
            }
        }
    }
}

#[tokio::test]
async fn cursor_commit_failures_at_every_page_lose_and_duplicate_nothing() {
    for committed_then_fail in [false, true] {
        for k in 1..=PAGES + 1 {
            let source = connector();
            let inner = Arc::new(MemoryStore::new());
            let faulty = Arc::new(FaultyStore {
                inner: inner.clone(),
                at: k,
                committed_then_fail,
                saves: AtomicUsize::new(0),
            });
            let sink = MemorySink::new();
            let ctx = format!("commit {k} fails (committed first: {committed_then_fail})");
            let first = SyncEngine::new(faulty)
                .run(&source, &conn(), &stream(), &sink, SyncOptions::new())
                .await;
            if k > PAGES {
                first.unwrap_or_else(|e| panic!("{ctx}: {e}"));
            } else {
                assert_eq!(first.expect_err(&ctx).kind(), ErrorKind::Storage, "{ctx}");
            }
            let engine = SyncEngine::new(inner.clone());
            resume(&engine, &source, &sink, true).await;
            assert_exact(&source, &sink);
            assert_eq!(sink.total_applies(), 40, "{ctx}");
        }
    }
}

#[tokio::test]
async fn connector_faults_and_cancellation_at_every_read() {
    for (cancel_it, read_ahead) in [(true, true), (true, false), (false, true), (false, false)] {
        // reads of a clean sync: 8 pages (the last has has_more == false)
        for k in 1..=PAGES {
            let source = connector();
            let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
            let engine = SyncEngine::new(store.clone());
            let sink = MemorySink::new();
            let token = CancellationToken::new();
            let faulty = FaultyConnector {
                inner: source.clone(),
                at: k,
                reads: AtomicUsize::new(0),
                cancel: cancel_it.then(|| token.clone()),
                start: None,
            };
            let ctx = format!("read {k}, cancel {cancel_it}, read_ahead {read_ahead}");
            let err = engine
                .run(
                    &faulty,
                    &conn(),
                    &stream(),
                    &sink,
                    SyncOptions::new().cancel(token).read_ahead(read_ahead),
                )
                .await
                .expect_err(&ctx);
            let want = if cancel_it {
                ErrorKind::Cancelled
            } else {
                ErrorKind::Upstream
            };
            assert_eq!(err.kind(), want, "{ctx}: {err}");
            let run = store.last_run(&conn(), &stream()).await.unwrap().unwrap();
            assert_eq!(
                run.status,
                if cancel_it {
                    RunStatus::Cancelled
                } else {
                    RunStatus::Failed
                },
                "{ctx}"
            );
            // every page written before read k failed is committed (with read-ahead, also the
            // one written while read k was cancelled)
            let committed = store.load_cursor(&conn(), &stream()).await.unwrap();
            assert_eq!(committed.is_some(), k > 1, "{ctx}");
            resume(&engine, &source, &sink, true).await;
            assert_exact(&source, &sink);
            assert_eq!(sink.total_applies(), 40, "{ctx}");
        }
    }
}

#[tokio::test]
async fn cancelled_before_start_reads_nothing() {
    let source = connector();
    let engine = SyncEngine::new(Arc::new(MemoryStore::new()));
    let sink = MemorySink::new();
    let token = CancellationToken::new();
    token.cancel();
    let err = engine
        .run(
            &source,
            &conn(),
            &stream(),
            &sink,
            SyncOptions::new().cancel(token),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert!(sink.is_empty());
    assert_eq!(source.reads(), 0);
}

#[tokio::test]
async fn incremental_picks_up_exactly_the_changes() {
    incremental_picks_up_exactly_the_changes_on(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn incremental_picks_up_exactly_the_changes_on_postgres() {
    let Some((db, store)) = pg_store().await else {
        return;
    };
    incremental_picks_up_exactly_the_changes_on(Arc::new(store.clone())).await;
    store.close().await;
    db.drop_db().await;
}

async fn incremental_picks_up_exactly_the_changes_on(store: Arc<dyn StateStore>) {
    let source = connector();
    let engine = SyncEngine::new(store.clone());
    let sink = MemorySink::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let report = engine
        .run(
            &source,
            &conn(),
            &stream(),
            &sink,
            SyncOptions::new().progress(move |p| {
                seen.fetch_add(1, Ordering::SeqCst);
                assert_eq!(p.stream.as_str(), "contacts");
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        (report.records_read, report.applied, report.unchanged),
        (40, 40, 0)
    );
    assert_eq!(report.pages, 8);
    assert_eq!(calls.load(Ordering::SeqCst), 8, "progress after each page");
    assert!(report.cursor.is_some());
    assert_exact(&source, &sink);

    // nothing changed: an incremental run reads nothing new
    let idle = engine
        .run(&source, &conn(), &stream(), &sink, SyncOptions::new())
        .await
        .unwrap();
    assert_eq!((idle.records_read, idle.applied), (0, 0));
    assert_eq!(idle.cursor, report.cursor);

    // change 3, add 2, delete 1
    let s = stream();
    for id in ["c001", "c020", "c039"] {
        source.put(&s, id, json!({"name": "changed"}));
    }
    source.put(&s, "new-1", json!({"name": "new"}));
    source.put(&s, "new-2", json!({"name": "new"}));
    source.remove(&s, "c007");
    let inc = engine
        .run(&source, &conn(), &stream(), &sink, SyncOptions::new())
        .await
        .unwrap();
    assert_eq!(
        (inc.records_read, inc.applied, inc.unchanged),
        (6, 6, 0),
        "{inc:?}"
    );
    assert_exact(&source, &sink);
    assert_eq!(sink.apply_count(&conn(), &s, "c001"), 2);
    assert_eq!(sink.apply_count(&conn(), &s, "c002"), 1);
    let run = store.last_run(&conn(), &s).await.unwrap().unwrap();
    assert_eq!(run.kind, RunKind::Incremental);
    assert_eq!((run.records_read, run.records_applied), (6, 6));

    // a full run re-reads everything; the sink already holds it all
    let full = engine
        .run(
            &source,
            &conn(),
            &stream(),
            &sink,
            SyncOptions::new().full(true),
        )
        .await
        .unwrap();
    assert_eq!(full.applied, 0);
    assert_eq!(full.unchanged, full.records_read);
    assert_eq!(
        store.last_run(&conn(), &s).await.unwrap().unwrap().kind,
        RunKind::Full
    );
    assert_exact(&source, &sink);
}

#[tokio::test]
async fn max_pages_stops_and_the_next_run_continues() {
    let source = connector();
    let engine = SyncEngine::new(Arc::new(MemoryStore::new()));
    let sink = MemorySink::new();
    let mut total = 0;
    let mut runs = 0;
    loop {
        let r = engine
            .run(
                &source,
                &conn(),
                &stream(),
                &sink,
                SyncOptions::new().max_pages(3),
            )
            .await
            .unwrap();
        assert!(r.pages <= 3);
        total += r.records_read;
        runs += 1;
        if r.pages < 3 || total >= 40 {
            break;
        }
    }
    assert_eq!(total, 40);
    assert_eq!(runs, 3);
    assert_exact(&source, &sink);
}

#[tokio::test]
async fn two_concurrent_runs_one_conflicts_data_exact() {
    for read_ahead in [true, false] {
        two_concurrent_runs_one_conflicts_data_exact_on(Arc::new(MemoryStore::new()), read_ahead)
            .await;
    }
}

/// Two engines on two stores (two nodes) sharing one database: one run wins each commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_runs_on_two_postgres_stores_one_conflicts_data_exact() {
    for read_ahead in [true, false] {
        let Some((db, store)) = pg_store().await else {
            return;
        };
        let other = PgStore::connect(&db.url, EncryptionKey::generate())
            .await
            .unwrap();
        two_concurrent_runs_one_conflicts_data_exact_on2(
            Arc::new(store.clone()),
            Arc::new(other.clone()),
            read_ahead,
        )
        .await;
        store.close().await;
        other.close().await;
        db.drop_db().await;
    }
}

async fn two_concurrent_runs_one_conflicts_data_exact_on(
    store: Arc<dyn StateStore>,
    read_ahead: bool,
) {
    two_concurrent_runs_one_conflicts_data_exact_on2(store.clone(), store, read_ahead).await;
}

async fn two_concurrent_runs_one_conflicts_data_exact_on2(
    store: Arc<dyn StateStore>,
    second: Arc<dyn StateStore>,
    read_ahead: bool,
) {
    {
        let source = connector();
        let engine = SyncEngine::new(store.clone());
        let sink = MemorySink::new();
        // Both runs load the (empty) cursor before either reads: they race for every commit
        // whatever the stores' latency (two PostgreSQL pools used to let one run finish first).
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let a = FaultyConnector {
            inner: source.clone(),
            at: 0,
            reads: AtomicUsize::new(0),
            cancel: None,
            start: Some(start.clone()),
        };
        let b = FaultyConnector {
            inner: source.clone(),
            at: 0,
            reads: AtomicUsize::new(0),
            cancel: None,
            start: Some(start),
        };
        let opts = SyncOptions::new().read_ahead(read_ahead);
        let (c, s) = (conn(), stream());
        let engine_b = SyncEngine::new(second);
        let (ra, rb) = tokio::join!(
            engine.run(&a, &c, &s, &sink, opts.clone()),
            engine_b.run(&b, &c, &s, &sink, opts.clone()),
        );
        let conflicts = [&ra, &rb]
            .iter()
            .filter(|r| matches!(r, Err(e) if e.kind() == ErrorKind::Conflict))
            .count();
        let ok = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!((conflicts, ok), (1, 1), "{ra:?} {rb:?}");
        // both wrote the first page; the loser's write was an idempotent replay
        assert_exact(&source, &sink);
        let runs = store.list_runs(Some(&conn()), 10).await.unwrap();
        assert_eq!(
            runs.iter()
                .filter(|r| r.status == RunStatus::Failed)
                .count(),
            1
        );
        assert!(
            runs.iter()
                .any(|r| r.error.as_deref().is_some_and(|e| e.contains("version")))
        );
    }
}

#[derive(Debug)]
struct StuckConnector(MemoryConnector);

#[async_trait]
impl Connector for StuckConnector {
    fn info(&self) -> &ConnectorInfo {
        self.0.info()
    }
    async fn check(&self) -> Result<()> {
        Ok(())
    }
    async fn read(&self, _: &StreamId, cursor: Option<&CursorToken>) -> Result<Page> {
        Ok(Page::new(Vec::new(), cursor.cloned(), true))
    }
}

#[tokio::test]
async fn more_pages_without_progress_is_an_error_not_a_loop() {
    let engine = SyncEngine::new(Arc::new(MemoryStore::new()));
    let err = engine
        .run(
            &StuckConnector(connector()),
            &conn(),
            &stream(),
            &NullSink::new(),
            SyncOptions::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidResponse);
}

/// A persistent sink of either backend, with what the tests read back.
#[derive(Debug, Clone)]
enum Persistent {
    Sqlite(SqliteSink),
    Postgres(PgSink),
}

impl Persistent {
    async fn records(&self) -> Vec<apex_connect_core::Record> {
        match self {
            Persistent::Sqlite(s) => s.records(&conn(), &stream()).await.unwrap(),
            Persistent::Postgres(s) => s.records(&conn(), &stream()).await.unwrap(),
        }
    }
}

#[async_trait]
impl Sink for Persistent {
    async fn write(&self, batch: Batch<'_>) -> Result<Ack> {
        match self {
            Persistent::Sqlite(s) => s.write(batch).await,
            Persistent::Postgres(s) => s.write(batch).await,
        }
    }
    fn wants_entities(&self) -> bool {
        match self {
            Persistent::Sqlite(s) => s.wants_entities(),
            Persistent::Postgres(s) => s.wants_entities(),
        }
    }
}

async fn sqlite_pair(dir: &tempfile::TempDir) -> (Arc<dyn StateStore>, Persistent) {
    let store = SqliteStore::open(dir.path().join("state.db"), EncryptionKey::generate())
        .await
        .unwrap();
    let sink = Persistent::Sqlite(SqliteSink::for_store(&store));
    (Arc::new(store), sink)
}

/// A `PgStore` on a fresh database, or `None` when the PostgreSQL tests are skipped.
async fn pg_store() -> Option<(pg::TestDb, PgStore)> {
    let db = pg::fresh().await?;
    let store = PgStore::connect(&db.url, EncryptionKey::generate())
        .await
        .unwrap();
    Some((db, store))
}

/// The same interruption on the persistent pairs: SqliteStore + SqliteSink in one file.
#[tokio::test]
async fn sqlite_store_and_sink_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sink) = sqlite_pair(&dir).await;
    store_and_sink_resume_exactly(store, sink).await;
}

/// ... and PgStore + PgSink in one database.
#[tokio::test]
async fn postgres_store_and_sink_resume_exactly() {
    let Some((db, store)) = pg_store().await else {
        return;
    };
    let sink = Persistent::Postgres(PgSink::for_store(&store));
    store_and_sink_resume_exactly(Arc::new(store.clone()), sink).await;
    store.close().await;
    db.drop_db().await;
}

async fn store_and_sink_resume_exactly(store: Arc<dyn StateStore>, inner: Persistent) {
    #[derive(Debug)]
    struct CrashAfterApply {
        inner: Persistent,
        at: usize,
        writes: AtomicUsize,
    }
    #[async_trait]
    impl Sink for CrashAfterApply {
        async fn write(&self, batch: Batch<'_>) -> Result<Ack> {
            let ack = self.inner.write(batch).await?;
            if self.writes.fetch_add(1, Ordering::SeqCst) + 1 == self.at {
                return Err(Error::storage("crash before ack (injected)"));
            }
            Ok(ack)
        }
    }

    let sink = CrashAfterApply {
        inner: inner.clone(),
        at: 4,
        writes: AtomicUsize::new(0),
    };
    let source = connector();
    let engine = SyncEngine::new(store.clone());
    let err = engine
        .run(&source, &conn(), &stream(), &sink, SyncOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Storage);
    let r = engine
        .run(&source, &conn(), &stream(), &sink, SyncOptions::new())
        .await
        .unwrap();
    // the page applied before the crash is replayed as unchanged
    assert_eq!(r.unchanged, PAGE as u64);
    assert_eq!(r.applied, 40 - 3 * PAGE as u64 - PAGE as u64);
    let held = inner.records().await;
    assert_eq!(held.len(), 40, "37 live + 3 tombstones");
    let live: std::collections::BTreeMap<String, (i64, serde_json::Value)> = held
        .into_iter()
        .filter(|r| r.op == apex_connect_core::Op::Upsert)
        .map(|r| (r.id, (r.version.unwrap_or(0), r.raw.to_value().unwrap())))
        .collect();
    assert_eq!(live, source.snapshot(&stream()));
    let runs = store.list_runs(Some(&conn()), 10).await.unwrap();
    assert_eq!(runs[0].status, RunStatus::Succeeded);
    assert_eq!(runs[1].status, RunStatus::Failed);
}

/// Maps like `MemoryConnector`, or (after the "fix") maps every record.
#[derive(Debug)]
struct Fixable {
    inner: MemoryConnector,
    fixed: std::sync::atomic::AtomicBool,
    extra_rejects: Vec<apex_connect_core::Reject>,
}

#[async_trait]
impl Connector for Fixable {
    fn info(&self) -> &ConnectorInfo {
        self.inner.info()
    }
    async fn check(&self) -> Result<()> {
        Ok(())
    }
    async fn read(&self, stream: &StreamId, cursor: Option<&CursorToken>) -> Result<Page> {
        let page = self.inner.read(stream, cursor).await?;
        if cursor.is_none() && !self.extra_rejects.is_empty() {
            return Ok(page.with_rejects(self.extra_rejects.clone()));
        }
        Ok(page)
    }
    fn map_entity(
        &self,
        r: &apex_connect_core::Record,
    ) -> Result<Option<apex_connect_core::Entity>> {
        if self.fixed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        self.inner.map_entity(r)
    }
    fn parse_record(
        &self,
        stream: &StreamId,
        raw: &apex_connect_core::RawJson,
        _parent: Option<&str>,
    ) -> Result<apex_connect_core::Record> {
        if !self.fixed.load(Ordering::SeqCst) {
            return Err(Error::invalid_response("still broken"));
        }
        let id = raw.to_value()?["key"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok(apex_connect_core::Record::upsert(stream.clone(), id, raw.clone()).with_version(1))
    }
}

#[tokio::test]
async fn unmappable_and_unreadable_records_are_quarantined_not_fatal_and_redriven() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sink) = sqlite_pair(&dir).await;
    quarantine_and_redrive(store, sink).await;
}

#[tokio::test]
async fn unmappable_and_unreadable_records_are_quarantined_and_redriven_on_postgres() {
    let Some((db, store)) = pg_store().await else {
        return;
    };
    let sink = Persistent::Postgres(PgSink::for_store(&store));
    quarantine_and_redrive(Arc::new(store.clone()), sink).await;
    store.close().await;
    db.drop_db().await;
}

async fn quarantine_and_redrive(store: Arc<dyn StateStore>, sink: Persistent) {
    assert!(sink.wants_entities());
    let c = connector();
    // Two records whose `name` is not a string: the memory mapping refuses them.
    c.put(&stream(), "bad1", json!({"name": 5}));
    c.put(&stream(), "bad2", json!({"name": [["x"]]}));
    let raw_reject = apex_connect_core::Reject::unparsed(
        stream(),
        None,
        bytes::Bytes::from_static(br#"{"key": "k9", "size": -39484462}"#),
        &Error::invalid_response("no id"),
    );
    let fixable = Fixable {
        inner: c.clone(),
        fixed: false.into(),
        extra_rejects: vec![raw_reject],
    };
    let engine = SyncEngine::new(store.clone());
    let report = engine
        .run(&fixable, &conn(), &stream(), &sink, SyncOptions::new())
        .await
        .unwrap();
    assert_eq!(report.rejected, 3, "{report:?}");
    assert_eq!(report.records_read, 42 + 1);
    let rejects = store.list_rejects(Some(&conn()), None, 10).await.unwrap();
    assert_eq!(rejects.len(), 3);
    let stages: Vec<_> = rejects
        .iter()
        .map(|r| (r.reject.id.clone(), r.reject.stage))
        .collect();
    assert!(stages.contains(&(Some("bad1".into()), apex_connect_core::RejectStage::Map)));
    assert!(stages.contains(&(None, apex_connect_core::RejectStage::Parse)));
    assert!(rejects.iter().all(|r| !r.reject.error.is_empty()));
    // The page went on and the cursor moved past them: the sink holds the 37 good records.
    let held = sink.records().await;
    assert_eq!(
        held.iter()
            .filter(|r| r.op == apex_connect_core::Op::Upsert)
            .count(),
        37
    );
    assert!(!held.iter().any(|r| r.id.starts_with("bad")));
    let runs = store.list_runs(Some(&conn()), 1).await.unwrap();
    assert_eq!(runs[0].records_rejected, 3);
    assert_eq!(runs[0].status, RunStatus::Succeeded);
    // A second sync quarantines the same objects again without duplicating their rows.
    engine
        .run(
            &fixable,
            &conn(),
            &stream(),
            &sink,
            SyncOptions::new().full(true),
        )
        .await
        .unwrap();
    let again = store.list_rejects(Some(&conn()), None, 10).await.unwrap();
    assert_eq!(again.len(), 3);
    assert!(again.iter().all(|r| r.attempts == 2));

    // Re-drive before the fix: all fail again and stay.
    let r = engine
        .redrive(&fixable, &conn(), None, &sink, 100)
        .await
        .unwrap();
    assert_eq!((r.tried, r.written, r.failed), (3, 0, 3));
    // After the fix: all written, none left.
    fixable.fixed.store(true, Ordering::SeqCst);
    let r = engine
        .redrive(&fixable, &conn(), None, &sink, 100)
        .await
        .unwrap();
    assert_eq!((r.tried, r.written, r.failed), (3, 3, 0));
    assert_eq!(store.count_rejects(Some(&conn())).await.unwrap(), 0);
    let held = sink.records().await;
    for id in ["bad1", "bad2", "k9"] {
        assert!(
            held.iter().any(|r| r.id == id),
            "{id} re-driven into the sink"
        );
    }
}

/// Pages whose cursors go A -> B -> A.
#[derive(Debug)]
struct Cycling(ConnectorInfo);

#[async_trait]
impl Connector for Cycling {
    fn info(&self) -> &ConnectorInfo {
        &self.0
    }
    async fn check(&self) -> Result<()> {
        Ok(())
    }
    async fn read(&self, stream: &StreamId, cursor: Option<&CursorToken>) -> Result<Page> {
        let next = match cursor.map(CursorToken::as_str) {
            None | Some("B") => "A",
            _ => "B",
        };
        let rec = apex_connect_core::Record::upsert(stream.clone(), next, json!({}));
        Ok(Page::new(
            vec![rec],
            Some(CursorToken::from_string(next.to_string())),
            true,
        ))
    }
}

#[tokio::test]
async fn a_pagination_cycle_stops_the_run_instead_of_looping() {
    let store = Arc::new(MemoryStore::new());
    let engine = SyncEngine::new(store.clone() as Arc<dyn StateStore>);
    let c = Cycling(ConnectorInfo::new(
        "cycling",
        "1",
        apex_connect_core::Capabilities::new(vec![apex_connect_core::StreamInfo::new(
            stream(),
            false,
        )]),
    ));
    let sink = MemorySink::new();
    let err = engine
        .run(&c, &conn(), &stream(), &sink, SyncOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidResponse);
    assert!(err.to_string().contains("cycle"), "{err}");
    // What was read before the cycle is committed.
    assert_eq!(sink.len(), 2);
}

/// What a persistent sink does with a batch, the same on both backends: exact counts,
/// highest version kept, a record repeated in one batch applied in order, JSON that
/// PostgreSQL's JSONB refuses kept exactly.
async fn sink_semantics(sink: &Persistent) {
    use apex_connect_core::{RawJson, Record};
    let (c, s) = (conn(), stream());
    let write = |records: Vec<Record>| {
        let sink = sink.clone();
        let (c, s) = (c.clone(), s.clone());
        async move { sink.write(Batch::new(&c, &s, &records)).await.unwrap() }
    };
    let v1: Vec<Record> = (0..250)
        .map(|i| Record::upsert(s.clone(), format!("r{i:03}"), json!({"i": i})).with_version(1))
        .collect();
    assert_eq!(write(v1.clone()).await, Ack::new(250, 0));
    assert_eq!(
        write(v1).await,
        Ack::new(0, 250),
        "a replay changes nothing"
    );
    let mixed = vec![
        Record::upsert(s.clone(), "r000", json!({"i": "new"})).with_version(2),
        Record::upsert(s.clone(), "r001", json!({"i": "old"})).with_version(0),
        Record::upsert(s.clone(), "r002", json!({"i": "same-version-new-content"})).with_version(1),
        Record::delete(s.clone(), "r003").with_version(5),
        Record::upsert(s.clone(), "r004", json!({"i": "four"})),
        Record::upsert(s.clone(), "fresh", json!({})),
    ];
    assert_eq!(write(mixed.clone()).await, Ack::new(5, 1));
    assert_eq!(write(mixed).await, Ack::new(0, 6));
    let older = vec![Record::upsert(s.clone(), "r003", json!({"back": true})).with_version(4)];
    assert_eq!(write(older).await, Ack::new(0, 1), "no resurrection");

    // one id several times in a batch: applied in order, as if written one by one
    let dup = vec![
        Record::upsert(s.clone(), "d1", json!({"a": 1})).with_version(1),
        Record::upsert(s.clone(), "d1", json!({"a": 2})).with_version(2),
        Record::upsert(s.clone(), "d1", json!({"a": 3})).with_version(1),
        Record::upsert(s.clone(), "d2", json!({"b": 1})),
        Record::upsert(s.clone(), "d2", json!({"b": 1})),
    ];
    assert_eq!(write(dup).await, Ack::new(3, 2));

    // JSON that JSONB cannot hold, next to ordinary records in one batch
    let odd_raw = [
        ("nul", &br#"{"s":"a\u0000b"}"#[..]),
        ("big", &br#"{"n":1e999999}"#[..]),
        ("ok", &br#"{"k":1}"#[..]),
    ];
    let odd: Vec<Record> = odd_raw
        .iter()
        .map(|(id, raw)| {
            Record::upsert(
                s.clone(),
                *id,
                RawJson::parse(bytes::Bytes::from_static(raw)).unwrap(),
            )
            .with_version(1)
        })
        .collect();
    assert_eq!(write(odd.clone()).await, Ack::new(3, 0));
    assert_eq!(write(odd).await, Ack::new(0, 3));

    let held = sink.records().await;
    assert_eq!(held.len(), 250 + 1 + 2 + 3);
    let get = |id: &str| held.iter().find(|r| r.id == id).unwrap();
    assert_eq!(get("r000").raw.to_value().unwrap(), json!({"i": "new"}));
    assert_eq!(get("r003").op, apex_connect_core::Op::Delete);
    assert_eq!(
        (get("d1").version, get("d1").raw.to_value().unwrap()),
        (Some(2), json!({"a": 2}))
    );
    assert_eq!(get("nul").raw.to_value().unwrap(), json!({"s": "a\u{0}b"}));
    assert_eq!(
        get("big").raw.bytes().as_ref(),
        br#"{"n":1e999999}"#,
        "kept exactly"
    );
}

#[tokio::test]
async fn sqlite_sink_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, sink) = sqlite_pair(&dir).await;
    sink_semantics(&sink).await;
}

#[tokio::test]
async fn postgres_sink_semantics_jsonb_and_nul_ids() {
    let Some((db, store)) = pg_store().await else {
        return;
    };
    let pg = PgSink::for_store(&store);
    sink_semantics(&Persistent::Postgres(pg.clone())).await;
    // ordinary JSON is JSONB; what JSONB refuses is kept as text
    let rows: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT id, raw IS NOT NULL, raw_text IS NOT NULL FROM records \
         WHERE id IN ('nul', 'big', 'ok', 'r010') ORDER BY id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            ("big".into(), false, true),
            ("nul".into(), false, true),
            ("ok".into(), true, false),
            ("r010".into(), true, false),
        ]
    );
    let (kind,): (String,) =
        sqlx::query_as("SELECT jsonb_typeof(raw -> 'i') FROM records WHERE id = 'r010'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(kind, "number", "raw is queryable JSONB");

    // entities: JSONB, or text when JSONB refuses them
    use apex_connect_core::{Entity, EntityKind, Record, SourceRef};
    let (c, s) = (conn(), stream());
    let records = vec![
        Record::upsert(s.clone(), "p1", json!({"name": "Ada"})).with_version(1),
        Record::upsert(s.clone(), "p2", json!({"name": "N\u{0}L"})).with_version(1),
    ];
    let entities = vec![
        Some(
            Entity::new(
                EntityKind::Person,
                SourceRef::new("memory", "contact", "p1"),
            )
            .with_name("Ada"),
        ),
        Some(
            Entity::new(
                EntityKind::Person,
                SourceRef::new("memory", "contact", "p2"),
            )
            .with_name("N\u{0}L"),
        ),
    ];
    let ack = pg
        .write(Batch::new(&c, &s, &records).with_entities(&entities))
        .await
        .unwrap();
    assert_eq!(ack, Ack::new(2, 0));
    for (id, e) in [("p1", &entities[0]), ("p2", &entities[1])] {
        assert_eq!(pg.entity(&c, &s, id).await.unwrap().as_ref(), e.as_ref());
    }

    // PostgreSQL text cannot hold a NUL in an id: a typed error, nothing of the batch applied
    let bad = vec![
        Record::upsert(s.clone(), "fine", json!({})),
        Record::upsert(s.clone(), "bad\u{0}id", json!({})),
    ];
    let e = pg.write(Batch::new(&c, &s, &bad)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        pg.records(&c, &s)
            .await
            .unwrap()
            .iter()
            .all(|r| r.id != "fine")
    );
    store.close().await;
    db.drop_db().await;
}

/// The ledger sinks (`SqliteSink`'s and `PgSink`'s twins that count applications): the same
/// answers on both backends.
#[derive(Clone)]
enum Ledger {
    Sqlite(apex_connect_core::sinks::LedgerSink),
    Postgres(apex_connect_core::sinks::PgLedgerSink),
}

impl Ledger {
    fn sink(&self) -> Arc<dyn Sink> {
        match self {
            Ledger::Sqlite(s) => Arc::new(s.clone()),
            Ledger::Postgres(s) => Arc::new(s.clone()),
        }
    }

    async fn entries(&self) -> Vec<(String, String, Option<i64>, i64)> {
        let (c, s) = (conn(), stream());
        let e = match self {
            Ledger::Sqlite(l) => l.entries(&c, &s).await.unwrap(),
            Ledger::Postgres(l) => l.entries(&c, &s).await.unwrap(),
        };
        e.into_iter()
            .map(|e| {
                assert!(e.first_applied_at <= e.last_applied_at);
                (e.id, e.op, e.version, e.applies)
            })
            .collect()
    }
}

async fn ledger_semantics(ledger: &Ledger) {
    use apex_connect_core::{RawJson, Record};
    let (c, s) = (conn(), stream());
    let sink = ledger.sink();
    assert!(!sink.wants_entities());
    let write = |records: Vec<Record>| {
        let sink = sink.clone();
        let (c, s) = (c.clone(), s.clone());
        async move { sink.write(Batch::new(&c, &s, &records)).await.unwrap() }
    };
    assert_eq!(write(Vec::new()).await, Ack::new(0, 0));
    let v1 = vec![
        Record::upsert(s.clone(), "a", json!({"n": 1})).with_version(1),
        Record::delete(s.clone(), "b").with_version(1),
        Record::upsert(s.clone(), "c", json!({"n": 1})),
    ];
    assert_eq!(write(v1.clone()).await, Ack::new(3, 0));
    assert_eq!(write(v1).await, Ack::new(0, 3), "a replay is not counted");
    let later = vec![
        Record::upsert(s.clone(), "a", json!({"n": 0})).with_version(0),
        Record::upsert(s.clone(), "b", json!({"back": 1})).with_version(1),
        Record::upsert(s.clone(), "c", json!({"n": 2})),
    ];
    // older version: no; same version, other op: yes; no version, other content: yes
    assert_eq!(write(later).await, Ack::new(2, 1));
    // whitespace is content: raw is compared as received
    let spaced = vec![Record::upsert(
        s.clone(),
        "c",
        RawJson::parse(bytes::Bytes::from_static(br#"{"n": 2}"#)).unwrap(),
    )];
    assert_eq!(write(spaced).await, Ack::new(1, 0));
    // one id several times in a batch: applied in order
    let dup = vec![
        Record::upsert(s.clone(), "d", json!({"v": 1})).with_version(1),
        Record::upsert(s.clone(), "d", json!({"v": 2})).with_version(2),
        Record::upsert(s.clone(), "d", json!({"v": 1})).with_version(1),
        Record::upsert(s.clone(), "d", json!({"v": 2})).with_version(2),
    ];
    assert_eq!(write(dup).await, Ack::new(2, 2));
    assert_eq!(
        ledger.entries().await,
        [
            ("a".into(), "upsert".into(), Some(1), 1),
            ("b".into(), "upsert".into(), Some(1), 2),
            ("c".into(), "upsert".into(), None, 3),
            ("d".into(), "upsert".into(), Some(2), 2),
        ]
    );
}

#[tokio::test]
async fn sqlite_ledger_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("state.db"), EncryptionKey::generate())
        .await
        .unwrap();
    ledger_semantics(&Ledger::Sqlite(
        apex_connect_core::sinks::LedgerSink::for_store(&store),
    ))
    .await;
}

#[tokio::test]
async fn postgres_ledger_semantics_saturation_and_nul_ids() {
    use apex_connect_core::Record;
    let Some((db, store)) = pg_store().await else {
        return;
    };
    let ledger = apex_connect_core::sinks::PgLedgerSink::for_store(&store);
    ledger_semantics(&Ledger::Postgres(ledger.clone())).await;
    let (c, s) = (conn(), stream());

    // `applies` saturates rather than failing at the top of BIGINT
    sqlx::query("UPDATE sink_ledger SET applies = $1 WHERE id = 'a'")
        .bind(i64::MAX)
        .execute(store.pool())
        .await
        .unwrap();
    let v9 = [Record::upsert(s.clone(), "a", json!({"n": 9})).with_version(9)];
    assert_eq!(
        ledger.write(Batch::new(&c, &s, &v9)).await.unwrap(),
        Ack::new(1, 0)
    );
    let a = ledger.entries(&c, &s).await.unwrap();
    assert_eq!((a[0].id.as_str(), a[0].applies), ("a", i64::MAX));

    // a NUL in an id: a typed error, nothing of the batch applied
    let bad = [
        Record::upsert(s.clone(), "fine", json!({})),
        Record::upsert(s.clone(), "bad\u{0}id", json!({})),
    ];
    let e = ledger.write(Batch::new(&c, &s, &bad)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(
        ledger
            .entries(&c, &s)
            .await
            .unwrap()
            .iter()
            .all(|e| e.id != "fine")
    );
    store.close().await;
    db.drop_db().await;
}
