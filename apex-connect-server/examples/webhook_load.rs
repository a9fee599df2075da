//! Load generator for the webhook ingress: accepted webhooks per second (verify + durable
//! append with group commit) on loopback, p50/p99 time to the 2xx at a fixed offered load, and
//! webhook-to-sink latency (inbox `received_at` -> ledger `first_applied_at`).
//!
//! `cargo run --release -p apex-connect-server --example webhook_load [-- RATE SECONDS]`
//!
//! The inbox appends go through `InboxStore::append_many` (group commit); the webhook-to-sink
//! figure is read with SQL from the database (a measurement, not part of the service).
//!
//! Server, workers and load generator share this process (and the machine's cores), so the
//! figures are a floor for a server on its own host.

#[path = "common/mod.rs"]
mod common;
use common::{latencies, pct, requests};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apex_connect_core::SqliteStore;
use apex_connect_core::engine::CancellationToken;
use apex_connect_core::sinks::LedgerSink;
use apex_connect_core::store::EncryptionKey;
use apex_connect_core::store::prelude::*;
use apex_connect_server::{
    ConnectionHandle, InboxAppender, ServerState, WorkerConfig, Workers, webhook_router,
};
use apex_connect_testkit::MemoryConnector;
use futures::StreamExt;

#[tokio::main]
async fn main() -> apex_connect_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rate: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5000);
    let seconds: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4);
    let dir = std::env::temp_dir().join(format!("apex-webhook-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| apex_connect_core::Error::storage("tempdir").set_source(e))?;
    let store = SqliteStore::open(dir.join("state.db"), EncryptionKey::generate()).await?;
    let connector = MemoryConnector::new(["items"], 100, b"load-secret");
    let dyn_store = Arc::new(store.clone()) as Arc<dyn StateStore>;
    let state = ServerState::builder(dyn_store.clone())
        .appender(InboxAppender::group_commit(dyn_store, 512))
        .connection(ConnectionHandle::new("acme", Arc::new(connector.clone())))
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| apex_connect_core::Error::config("bind").set_source(e))?;
    let url = format!(
        "http://{}/webhooks/memory/acme",
        listener
            .local_addr()
            .map_err(|e| apex_connect_core::Error::config("addr").set_source(e))?
    );
    let server_state = state.clone();
    tokio::spawn(async move {
        axum::serve(listener, webhook_router(server_state))
            .await
            .ok()
    });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .map_err(|e| apex_connect_core::Error::config("client").set_source(e))?;

    // 1. Saturation: as fast as 128 concurrent senders go (workers off, to measure ingress).
    let n = 20_000;
    let reqs = requests(&connector, "sat-", n);
    let started = Instant::now();
    let ok = futures::stream::iter(reqs)
        .map(|(h, b)| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                client
                    .post(url)
                    .headers(h)
                    .body(b)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        })
        .buffer_unordered(128)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "saturation: {ok}/{n} accepted in {secs:.2}s = {:.0} webhooks/s (verify + durable append, 128 concurrent)",
        ok as f64 / secs
    );

    // Drain the backlog with workers before measuring end-to-end latency.
    let shutdown = CancellationToken::new();
    let sink = Arc::new(LedgerSink::for_store(&store));
    let mut wc = WorkerConfig::default();
    wc.concurrency = 2;
    wc.batch = 256;
    wc.poll = Duration::from_millis(20);
    let workers = Workers::new(state.clone(), sink, wc);
    let w_shutdown = shutdown.clone();
    let worker_task = tokio::spawn(async move { workers.run(w_shutdown).await });
    loop {
        let c = store.inbox_counts().await?;
        if c.pending == 0 && c.in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 2. Fixed offered load (open loop): `rate` webhooks/s for `seconds`, workers running.
    let total = (rate * seconds) as usize;
    let reqs = requests(&connector, "load-", total);
    let per_ms = rate as f64 / 1000.0;
    let started = Instant::now();
    let mut handles = Vec::with_capacity(total);
    let mut sent = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut reqs = reqs.into_iter();
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * 1000.0) * per_ms).ceil() as usize;
        while sent < due.min(total) {
            let Some((h, b)) = reqs.next() else { break };
            let (client, url) = (client.clone(), url.clone());
            handles.push(tokio::spawn(async move {
                let t = Instant::now();
                let ok = client
                    .post(url)
                    .headers(h)
                    .body(b)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                (ok, t.elapsed().as_secs_f64() * 1000.0)
            }));
            sent += 1;
        }
    }
    let (lat, failed) = latencies(handles).await;
    let offered_secs = started.elapsed().as_secs_f64();
    println!(
        "fixed load: {total} at {rate}/s offered over {offered_secs:.2}s, {failed} failed; time to 2xx p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );

    // 3. Webhook-to-sink: inbox received_at -> ledger first_applied_at, for the fixed-load events.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = store.inbox_counts().await?;
        if (c.pending == 0 && c.in_flight == 0) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT l.first_applied_at - i.received_at FROM inbox i JOIN sink_ledger l \
         ON l.connection = i.connection AND l.stream = 'items' AND l.id = json_extract(CAST(i.body AS TEXT), '$.id') \
         WHERE i.event_id LIKE 'load-%'",
    )
    .fetch_all(store.pool())
    .await
    .map_err(|e| apex_connect_core::Error::storage("query").set_source(e))?;
    let mut e2e: Vec<f64> = rows.into_iter().map(|(ms,)| ms as f64).collect();
    e2e.sort_by(|a, b| a.total_cmp(b));
    println!(
        "webhook-to-sink: {} events, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        e2e.len(),
        pct(&e2e, 0.5),
        pct(&e2e, 0.99),
        e2e.last().copied().unwrap_or(f64::NAN)
    );
    shutdown.cancel();
    let _ = worker_task.await;
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
