//! Throughput of a GA4 report against the simulator.
//!
//! ```sh
//! cargo run --release -p apex-connect-analytics --features sim --example ga4_bench
//! ```
//!
//! A report of 100,000 rows (100 days of 1,000 rows, one day window for the whole range)
//! read through `SyncEngine` into the null sink, with the default page of 10,000 rows and with
//! pages of 100,000 rows: rows/s, requests, peak RSS. Authentication is a static token (the
//! JWT grant is measured by the tests, not here). The simulator runs in this process.

use std::sync::Arc;
use std::time::Instant;

use apex_connect_analytics::ga4::sim::{Ga4Sim, Ga4SimConfig};
use apex_connect_analytics::ga4::{Ga4Config, Ga4Connector, streams};
use apex_connect_core::{
    ConnectionId, MemoryStore, NullSink, StateStore, StaticToken, StreamId, SyncEngine, SyncOptions,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let sim = Ga4Sim::start(Ga4SimConfig {
        days: 100,
        rows_per_day: 1_000,
        tokens_per_hour: 1_000_000,
        tokens_per_day: 10_000_000,
        ..Default::default()
    })
    .await?;
    let c = sim.config();
    let stream = StreamId::from_static(streams::PAGES);
    println!("GA4 report `pages`: 100 days x 1,000 rows = 100,000 rows, one window");
    for page_size in [10_000u32, 100_000] {
        let config: Ga4Config = serde_json::from_value(serde_json::json!({
            "property_id": c.property_id,
            "start_date": c.first_day().to_string(),
            "end_date": c.today.to_string(),
            "window_days": 100,
            "page_size": page_size,
            "streams": ["pages"],
        }))?;
        let connector = Ga4Connector::builder(config)
            .credentials(Arc::new(StaticToken::bearer(sim.issue_access_token())))
            .base_url(sim.base_url())
            .build()?;
        let before = sim.report_requests();
        let engine = SyncEngine::new(Arc::new(MemoryStore::new()) as Arc<dyn StateStore>);
        let sink = NullSink::new();
        let t0 = Instant::now();
        let report = engine
            .run(
                &connector,
                &ConnectionId::new(format!("ga4-{page_size}")),
                &stream,
                &sink,
                SyncOptions::new(),
            )
            .await?;
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "  pages of {page_size:>7}: {:>7} rows {:>6.2}s {:>9.0} rows/s  {:>3} requests  peak RSS {:.1} MB",
            report.records_read,
            secs,
            report.records_read as f64 / secs.max(1e-9),
            sim.report_requests() - before,
            peak_rss_mb().unwrap_or(0.0),
        );
        if report.records_read != 100_000 {
            return Err(format!("read {} rows, expected 100000", report.records_read).into());
        }
    }
    Ok(())
}
