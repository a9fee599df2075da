//! Throughput and memory of the Salesforce connector against its simulator (same process):
//!
//! - a Bulk API 2.0 backfill of 1,000,000 Accounts (CSV streamed, gzip),
//! - a REST backfill of 100,000 Accounts (`nextRecordsUrl` pages of 2,000),
//! - an incremental sync of 10,000 changes.
//!
//! ```text
//! cargo run --release -p apex-connect-salesforce --features sim --example salesforce_bench
//! BULK_RECORDS=200000 REST_RECORDS=20000 cargo run --release ... (smaller)
//! ```
//!
//! Peak RSS is the process's (connector, engine and simulator together), read from
//! `/proc/self/status` (`VmHWM`) on Linux.

use std::sync::Arc;
use std::time::Instant;

use apex_connect_core::{
    ConnectionId, MemoryStore, MemoryTokenStore, NullSink, StateStore, StreamId, SyncEngine,
    SyncOptions,
};
use apex_connect_salesforce::{SalesforceSim, SalesforceSimConfig};
use serde_json::json;

fn status_kb(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn backfill(
    label: &str,
    n: u64,
    extra: serde_json::Value,
) -> Result<(), Box<dyn std::error::Error>> {
    let sim = SalesforceSim::start(
        SalesforceSimConfig::default()
            .count("Account", n)
            .per_second(100),
    )
    .await?;
    let conn = ConnectionId::from("bench");
    let mut settings = json!({"objects": ["Account"]});
    if let serde_json::Value::Object(m) = extra {
        for (k, v) in m {
            settings[k] = v;
        }
    }
    let connector = sim
        .connector(&conn, Arc::new(MemoryTokenStore::new()), settings)
        .await?;
    let engine = SyncEngine::new(Arc::new(MemoryStore::new()) as Arc<dyn StateStore>);
    let sink = NullSink::new();
    let rss_before = status_kb("VmRSS:").unwrap_or(0);
    let t = Instant::now();
    let r = engine
        .run(
            connector.as_ref(),
            &conn,
            &StreamId::from("Account"),
            &sink,
            SyncOptions::new(),
        )
        .await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{label:<28} {:>9} records  {:>8.0} records/s  {:>6.2} s  {:>5} requests  {:>5} pages  RSS before {:>4} MB, peak {:>4} MB",
        r.records_read,
        r.records_read as f64 / secs,
        secs,
        sim.stats().requests(),
        r.pages,
        rss_before / 1024,
        status_kb("VmHWM:").unwrap_or(0) / 1024,
    );
    assert_eq!(r.records_read, n, "every record once");
    if label.starts_with("REST") {
        let changes = env_u64("CHANGES", 10_000);
        sim.touch_range("Account", 0..changes)?;
        let before = sim.stats().requests();
        let t = Instant::now();
        let r = engine
            .run(
                connector.as_ref(),
                &conn,
                &StreamId::from("Account"),
                &sink,
                SyncOptions::new(),
            )
            .await?;
        println!(
            "{:<28} {:>9} records  {:>8.0} records/s  {:>6.2} s  {:>5} requests  {:>5} pages",
            format!("incremental, {changes} changes"),
            r.records_read,
            r.records_read as f64 / t.elapsed().as_secs_f64(),
            t.elapsed().as_secs_f64(),
            sim.stats().requests() - before,
            r.pages,
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bulk = env_u64("BULK_RECORDS", 1_000_000);
    let rest = env_u64("REST_RECORDS", 100_000);
    backfill(
        "Bulk API 2.0 backfill",
        bulk,
        json!({"bulk_threshold": 50_000, "bulk_page_records": 10_000}),
    )
    .await?;
    backfill(
        "REST backfill",
        rest,
        json!({"bulk_threshold": 100_000_000, "lookback": "0s"}),
    )
    .await?;
    Ok(())
}
