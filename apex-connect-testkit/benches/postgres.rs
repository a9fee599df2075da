//! PostgreSQL backend throughput: `cargo bench -p apex-connect-testkit --bench postgres`.
//!
//! Needs a server: `APEX_TEST_POSTGRES_URL` (a role that may create databases; the password in
//! `PGPASSWORD`), e.g. from `eval "$(.ci/postgres start)"`. Each part runs in a fresh database.
//!
//! 1. Sync engine into `PgSink` (entities mapped, as by default, and raw only) and, for
//!    comparison on the same machine, into `SqliteSink`: records/s.
//! 2. Inbox appends: one at a time (1 and 16 concurrent callers) and `append_many`.
//! 3. Inbox claims: 1 and 3 concurrent claimers (each its own `PgStore`, as three nodes),
//!    each claim followed by a complete of every event claimed.
//!
//! Sizes scale with `APEX_BENCH_SCALE` (default 1.0).

use apex_connect_testkit::pg;

use std::sync::Arc;
use std::time::{Duration, Instant};

use apex_connect_core::store::prelude::*;
use apex_connect_core::store::{EncryptionKey, InboxEvent, MemoryStore, PgStore, SqliteStore};
use apex_connect_core::{
    ConnectionId, NullSink, PgSink, Sink, SqliteSink, StreamId, SyncEngine, SyncOptions,
};
use apex_connect_testkit::MemoryConnector;

const PAGE_SIZE: usize = 1_000;
const PAYLOAD_BYTES: usize = 200;

fn scaled(n: u64) -> u64 {
    let scale: f64 = std::env::var("APEX_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64) * scale).max(1_000.0) as u64
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run());
}

fn line(what: &str, n: u64, secs: f64, unit: &str) {
    println!(
        "{what:<52} {n:>10} {secs:>8.2} s {:>10.0} {unit}/s",
        n as f64 / secs
    );
}

async fn run() {
    if pg::base_url().is_none() {
        return;
    }
    let key = EncryptionKey::generate();
    println!();
    println!("apex-connect on PostgreSQL (pages of {PAGE_SIZE}, ~{PAYLOAD_BYTES} B records)");
    println!("{:-<90}", "");

    // ---- 1. engine into sinks ----
    let records = scaled(1_000_000);
    for (label, raw_only) in [
        ("engine -> PgSink (entities mapped)", false),
        ("engine -> PgSink::raw_only", true),
    ] {
        let db = pg::fresh().await.expect("database");
        let store = PgStore::connect(&db.url, key.clone()).await.unwrap();
        let sink = PgSink::for_store(&store);
        let sink = if raw_only { sink.raw_only() } else { sink };
        let secs = sync(Arc::new(store.clone()), &sink, records).await;
        line(label, records, secs, "records");
        store.close().await;
        db.drop_db().await;
    }
    {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("bench.db"), key.clone())
            .await
            .unwrap();
        let sink = SqliteSink::for_store(&store);
        let secs = sync(Arc::new(store.clone()), &sink, records).await;
        line(
            "engine -> SqliteSink (entities mapped)",
            records,
            secs,
            "records",
        );
        store.close().await;
    }
    {
        let n = records * 2;
        let secs = sync(Arc::new(MemoryStore::new()), &NullSink::new(), n).await;
        line(
            "engine -> NullSink (MemoryStore), the ceiling",
            n,
            secs,
            "records",
        );
    }

    // ---- 2. inbox appends ----
    let db = pg::fresh().await.expect("database");
    let store = PgStore::connect_with(
        apex_connect_core::store::PgStoreOptions::from_url(&db.url)
            .unwrap()
            .max_connections(16),
        key.clone(),
    )
    .await
    .unwrap();
    let c = ConnectionId::from("bench");
    let body = vec![b'x'; 1_000];
    let ev = |i: u64| {
        InboxEvent::new("bench", c.clone(), format!("e{i}"), i as i64, body.clone())
            .with_headers(serde_json::json!({"webhook-id": format!("e{i}")}))
    };
    let n = scaled(5_000);
    let started = Instant::now();
    for i in 0..n {
        store.inbox_append(&ev(i)).await.unwrap();
    }
    line(
        "inbox_append, 1 caller (1 KB bodies)",
        n,
        started.elapsed().as_secs_f64(),
        "events",
    );
    let n16 = scaled(20_000);
    let started = Instant::now();
    let tasks: Vec<_> = (0..16u64)
        .map(|t| {
            let store = store.clone();
            let events: Vec<_> = (0..n16 / 16).map(|i| ev(1_000_000 + t * n16 + i)).collect();
            tokio::spawn(async move {
                for e in &events {
                    store.inbox_append(e).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    line(
        "inbox_append, 16 concurrent callers",
        n16 / 16 * 16,
        started.elapsed().as_secs_f64(),
        "events",
    );
    for batch in [100u64, 1_000] {
        let total = scaled(100_000);
        let events: Vec<_> = (0..total).map(|i| ev(10_000_000 * batch + i)).collect();
        let started = Instant::now();
        for chunk in events.chunks(batch as usize) {
            store.append_many(chunk).await.unwrap();
        }
        line(
            &format!("append_many, batches of {batch}"),
            total,
            started.elapsed().as_secs_f64(),
            "events",
        );
    }
    let pending = store.inbox_counts().await.unwrap().pending;
    store.close().await;
    db.drop_db().await;

    // ---- 3. claims: 1 and 3 claimers (three stores = three nodes) ----
    for (claimers, limit) in [(1usize, 10usize), (3, 10), (3, 100)] {
        let db = pg::fresh().await.expect("database");
        let seed = PgStore::connect(&db.url, key.clone()).await.unwrap();
        let total = scaled(60_000);
        let events: Vec<_> = (0..total).map(ev).collect();
        for chunk in events.chunks(1_000) {
            seed.append_many(chunk).await.unwrap();
        }
        let mut nodes = Vec::new();
        for _ in 0..claimers {
            nodes.push(PgStore::connect(&db.url, key.clone()).await.unwrap());
        }
        let started = Instant::now();
        let tasks: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let node = node.clone();
                tokio::spawn(async move {
                    let worker = format!("node{i}");
                    let mut done = 0u64;
                    loop {
                        let got = node
                            .inbox_claim(&worker, Duration::from_secs(300), limit)
                            .await
                            .unwrap();
                        if got.is_empty() {
                            break done;
                        }
                        for e in got {
                            node.inbox_complete(e.id, &worker).await.unwrap();
                            done += 1;
                        }
                    }
                })
            })
            .collect();
        let mut done = 0;
        for t in tasks {
            done += t.await.unwrap();
        }
        assert_eq!(done, total, "every event claimed once");
        line(
            &format!("claim ({limit}/call) + complete, {claimers} claimer(s)"),
            total,
            started.elapsed().as_secs_f64(),
            "events",
        );
        for s in nodes.iter().chain([&seed]) {
            s.close().await;
        }
        db.drop_db().await;
    }
    println!("{:-<90}", "");
    println!("(inbox rows after the append runs: {pending})");
}

async fn sync(
    store: Arc<dyn apex_connect_core::store::StateStore>,
    sink: &dyn Sink,
    records: u64,
) -> f64 {
    let connection = ConnectionId::from("bench");
    let stream = StreamId::from("events");
    let source = MemoryConnector::new([stream.clone()], PAGE_SIZE, b"bench").with_generated(
        stream.clone(),
        records,
        PAYLOAD_BYTES,
    );
    let engine = SyncEngine::new(store);
    let started = Instant::now();
    let report = engine
        .run(&source, &connection, &stream, sink, SyncOptions::new())
        .await
        .expect("sync");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(report.records_read, records);
    secs
}
