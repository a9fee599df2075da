//! Sync engine throughput and memory: `cargo bench -p apex-connect-testkit --bench engine`.
//!
//! A generated `MemoryConnector` stream (records of about 200 bytes of JSON, pages of 1,000)
//! is synced into a `SqliteSink` on a temporary file (1,000,000 records, peak RSS sampled at
//! each quarter) and into a `NullSink`. The SQLite run goes first so that the peak RSS
//! (VmHWM) it reports is its own. `APEX_BENCH_SINK=raw` stores raw records only (no entity
//! mapped or stored: what the benchmark measured before issue 8). `APEX_BENCH_ONLY=null` runs the `NullSink` part alone (to
//! profile the engine without SQLite: `perf record` on the bench binary).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use apex_connect_core::store::{EncryptionKey, MemoryStore, SqliteStore};
use apex_connect_core::{ConnectionId, NullSink, SqliteSink, StreamId, SyncEngine, SyncOptions};
use apex_connect_testkit::MemoryConnector;

const PAGE_SIZE: usize = 1_000;
const PAYLOAD_BYTES: usize = 200;
const SQLITE_RECORDS: u64 = 1_000_000;
const NULL_RECORDS: u64 = 2_000_000;

/// A `VmHWM` / `VmRSS` line of /proc/self/status, in MB (0 where /proc is not available).
fn proc_status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run());
}

async fn run() {
    let connection = ConnectionId::from("bench");
    let stream = StreamId::from("events");
    if std::env::var("APEX_BENCH_ONLY").as_deref() == Ok("null") {
        let (records, secs) = null_run(&connection, &stream).await;
        println!(
            "NullSink (MemoryStore): {records} records in {secs:.2} s, {:.0} records/s",
            records as f64 / secs
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let baseline = proc_status_mb("VmHWM:");

    // ---- SqliteSink, 1,000,000 records, RSS at each quarter ----
    let store = SqliteStore::open(dir.path().join("bench.db"), EncryptionKey::generate())
        .await
        .expect("open sqlite");
    // `APEX_BENCH_SINK=raw`: raw records only (no entity mapped or stored), the workload of
    // the benchmark before entities were mapped on demand.
    let raw_only = std::env::var("APEX_BENCH_SINK").as_deref() == Ok("raw");
    let sink = if raw_only {
        SqliteSink::for_store(&store).raw_only()
    } else {
        SqliteSink::for_store(&store)
    };
    let engine = SyncEngine::new(Arc::new(store.clone()));
    let source = MemoryConnector::new([stream.clone()], PAGE_SIZE, b"bench").with_generated(
        stream.clone(),
        SQLITE_RECORDS,
        PAYLOAD_BYTES,
    );
    let samples: Arc<Mutex<Vec<(u64, f64, f64)>>> = Arc::default();
    let marks = [250_000u64, 500_000, 750_000, 1_000_000];
    let recorder = samples.clone();
    let started = Instant::now();
    let report = engine
        .run(
            &source,
            &connection,
            &stream,
            &sink,
            SyncOptions::new().progress(move |p| {
                if marks.contains(&p.records_read)
                    && let Ok(mut s) = recorder.lock()
                {
                    s.push((
                        p.records_read,
                        proc_status_mb("VmHWM:"),
                        proc_status_mb("VmRSS:"),
                    ));
                }
            }),
        )
        .await
        .expect("sqlite sync");
    let sqlite_secs = started.elapsed().as_secs_f64();
    assert_eq!(report.applied, SQLITE_RECORDS);
    let db_mb = std::fs::metadata(dir.path().join("bench.db"))
        .map(|m| m.len() as f64 / 1_048_576.0)
        .unwrap_or(0.0);
    store.close().await;

    // ---- NullSink ----
    let (_, null_secs) = null_run(&connection, &stream).await;

    println!();
    println!("apex-connect sync engine (pages of {PAGE_SIZE}, ~{PAYLOAD_BYTES} B records)");
    println!("{:-<64}", "");
    println!(
        "{:<28} {:>12} {:>10} {:>10}",
        "sink", "records", "seconds", "records/s"
    );
    println!(
        "{:<28} {:>12} {:>10.2} {:>10.0}",
        "NullSink (MemoryStore)",
        NULL_RECORDS,
        null_secs,
        NULL_RECORDS as f64 / null_secs
    );
    println!(
        "{:<28} {:>12} {:>10.2} {:>10.0}",
        if raw_only {
            "SqliteSink raw_only"
        } else {
            "SqliteSink (SqliteStore)"
        },
        SQLITE_RECORDS,
        sqlite_secs,
        SQLITE_RECORDS as f64 / sqlite_secs
    );
    println!();
    println!(
        "peak RSS during the SqliteSink run (before it: {baseline:.1} MB; db file {db_mb:.0} MB)"
    );
    println!("{:-<64}", "");
    println!(
        "{:>12} {:>14} {:>14}",
        "records", "VmHWM (MB)", "VmRSS (MB)"
    );
    if let Ok(s) = samples.lock() {
        for (n, hwm, rss) in s.iter() {
            println!("{n:>12} {hwm:>14.1} {rss:>14.1}");
        }
    }
}

/// Syncs `NULL_RECORDS` generated records into a `NullSink`: (records, seconds).
async fn null_run(connection: &ConnectionId, stream: &StreamId) -> (u64, f64) {
    let null = NullSink::new();
    let engine = SyncEngine::new(Arc::new(MemoryStore::new()));
    let source = MemoryConnector::new([stream.clone()], PAGE_SIZE, b"bench").with_generated(
        stream.clone(),
        NULL_RECORDS,
        PAYLOAD_BYTES,
    );
    let started = Instant::now();
    let report = engine
        .run(&source, connection, stream, &null, SyncOptions::new())
        .await
        .expect("null sync");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(report.records_read, NULL_RECORDS);
    (report.records_read, secs)
}
