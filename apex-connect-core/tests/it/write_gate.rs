//! Every write of a `SqliteStore`, and of the sinks that share its database, takes a turn at
//! the store's `WriteGate`: while a turn is held nothing writes, and everything queued goes
//! through once it ends. (The server's inbox writer, workers, scheduler, retention and admin
//! API all write through these methods, so none of them meets another in SQLite's busy
//! handler.)

use std::sync::Arc;
use std::time::Duration;

use apex_connect_core::sinks::LedgerSink;
use apex_connect_core::store::{
    ConnectionStore, CursorStore, EncryptionKey, InboxEvent, InboxStore, LogLevel, RejectStore,
    RunKind, RunLogLine, RunOutcome, RunStatus, RunStore, ScheduleEntry, ScheduleStore,
};
use apex_connect_core::{
    Batch, Connection, ConnectionId, CursorToken, Error, RawJson, Record, Reject, Sink, SqliteSink,
    SqliteStore, StreamId, TokenSet, TokenStore,
};
use tokio::task::JoinHandle;

type Write = JoinHandle<Result<&'static str, (&'static str, Error)>>;

/// Spawns `fut` as a named write.
fn spawn<F>(name: &'static str, fut: F) -> Write
where
    F: std::future::Future<Output = apex_connect_core::Result<()>> + Send + 'static,
{
    tokio::spawn(async move { fut.await.map(|()| name).map_err(|e| (name, e)) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_and_sink_write_waits_for_the_write_gate() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("state.db"), EncryptionKey::generate())
        .await
        .unwrap();
    let conn = ConnectionId::new("c1");
    let stream = StreamId::new("contacts");
    store
        .upsert_connection(&Connection::new(
            conn.clone(),
            "memory",
            serde_json::json!({}),
        ))
        .await
        .unwrap();
    let run = store
        .start_run(&conn, &stream, RunKind::Incremental)
        .await
        .unwrap();
    store
        .append_many(&[InboxEvent::new("memory", conn.clone(), "e0", 1, "{}")])
        .await
        .unwrap();
    let records_sink = SqliteSink::for_store(&store);
    let ledger_sink = LedgerSink::for_store(&store);

    let gate = store.write_gate().clone();
    let turn = gate.turn().await;
    assert!(gate.is_held());

    let s = Arc::new(store.clone());
    let mut writes: Vec<Write> = Vec::new();
    // Each write gets its own handles: `|store, connection, stream| body`.
    macro_rules! write {
        ($name:literal, |$st:ident, $c:ident, $t:ident| $body:expr) => {{
            let ($st, $c, $t) = (s.clone(), conn.clone(), stream.clone());
            writes.push(spawn($name, async move {
                let _ = (&$c, &$t);
                $body
            }));
        }};
    }
    write!("token save", |st, conn, stream| st
        .save(&conn, &TokenSet::bearer("secret"), None)
        .await
        .map(drop));
    write!("connection upsert", |st, conn, stream| st
        .upsert_connection(&Connection::new("c2", "memory", serde_json::json!({})))
        .await
        .map(drop));
    write!("connection status", |st, conn, stream| st
        .set_connection_status(
            &conn,
            apex_connect_core::store::ConnectionStatus::Disabled,
            None
        )
        .await);
    write!("cursor save", |st, conn, stream| st
        .save_cursor(&conn, &stream, &CursorToken::from_string("c.v1.x"), None)
        .await
        .map(drop));
    write!("run start", |st, conn, stream| st
        .start_run(&conn, &stream, RunKind::Full)
        .await
        .map(drop));
    write!("run finish", |st, conn, stream| st
        .finish_run(run, &RunOutcome::new(RunStatus::Succeeded))
        .await);
    write!("run logs", |st, conn, stream| st
        .append_run_logs(run, &[RunLogLine::new(1, LogLevel::Info, "t", "a line")])
        .await);
    write!("inbox append", |st, conn, stream| st
        .append_many(&[InboxEvent::new("memory", conn.clone(), "e1", 2, "{}")])
        .await
        .map(drop));
    write!("inbox claim", |st, conn, stream| st
        .inbox_claim("w", Duration::from_secs(30), 10)
        .await
        .map(drop));
    write!("rejects", |st, conn, stream| st
        .put_rejects(
            &conn,
            &[Reject::unparsed(
                stream.clone(),
                None,
                "{",
                &Error::invalid_input("broken")
            )]
        )
        .await);
    write!("schedule upsert", |st, conn, stream| st
        .upsert_schedule(
            &ScheduleEntry::new(conn.clone(), stream.clone(), "every 60000ms", 0),
            0
        )
        .await);
    write!("schedule claim", |st, conn, stream| st
        .claim_schedules("n", Duration::from_secs(30), 0, 10)
        .await
        .map(drop));
    write!("retention", |st, conn, stream| st
        .purge_inbox_done(i64::MAX, 10)
        .await
        .map(drop));
    let sinks: [(&'static str, Arc<dyn Sink>); 2] = [
        ("records sink", Arc::new(records_sink.clone())),
        ("ledger sink", Arc::new(ledger_sink)),
    ];
    for (name, sink) in sinks {
        let (conn, stream) = (conn.clone(), stream.clone());
        writes.push(spawn(name, async move {
            let raw = RawJson::to_raw(&serde_json::json!({"id": "r1"}))?;
            let records = [Record::upsert(stream.clone(), "r1", raw)];
            sink.write(Batch::new(&conn, &stream, &records))
                .await
                .map(drop)
        }));
    }

    // Real time: the writes run on SQLite's own threads. Without the gate each would be done
    // in well under a millisecond; a slow machine can only make this test pass, never fail.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let finished: Vec<usize> = (0..writes.len())
        .filter(|&i| writes[i].is_finished())
        .collect();
    let mut early = Vec::new();
    for i in finished.iter().rev() {
        early.push(writes.remove(*i).await.unwrap());
    }
    assert!(
        early.is_empty(),
        "these wrote while another writer held the gate: {early:?}"
    );

    drop(turn);
    for w in writes {
        let name = w.await.unwrap().unwrap_or_else(|(n, e)| panic!("{n}: {e}"));
        assert!(!name.is_empty());
    }
    assert!(!gate.is_held());
    assert_eq!(
        records_sink.records(&conn, &stream).await.unwrap().len(),
        1,
        "the queued sink write went through"
    );
}

#[tokio::test]
async fn reads_do_not_wait_for_the_write_gate() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("state.db"), EncryptionKey::generate())
        .await
        .unwrap();
    let _turn = store.write_gate().turn().await;
    let read = tokio::time::timeout(Duration::from_secs(30), store.list_connections()).await;
    assert!(matches!(read, Ok(Ok(ref c)) if c.is_empty()), "{read:?}");
    let counts = tokio::time::timeout(Duration::from_secs(30), store.inbox_counts()).await;
    assert!(counts.is_ok());
}
