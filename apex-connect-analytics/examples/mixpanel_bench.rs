//! Throughput and memory of the Mixpanel events stream against the simulator.
//!
//! ```sh
//! cargo run --release -p apex-connect-analytics --features sim --example mixpanel_bench
//! cargo run --release -p apex-connect-analytics --features sim --example mixpanel_bench -- 200000
//! ```
//!
//! A project of 1,000,000 events (20 days of 50,000; 1 % written twice by the export, which
//! the connector drops) is exported through `SyncEngine`:
//! 1. into the null sink, plain and gzip-compressed exports;
//! 2. into SQLite (`SqliteSink` over a `SqliteStore` in a temporary file, WAL), entities
//!    mapped (the default) and raw only.
//!
//! For each: events/s and the peak RSS (`VmHWM`, reset before each run through
//! `/proc/self/clear_refs`), sampled at each quarter too. The simulator generates the export
//! in this process, on the same two cores, so its CPU time and memory are in the figures.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apex_connect_analytics::mixpanel::sim::{MixpanelSim, MixpanelSimConfig, MixpanelSimHandle};
use apex_connect_analytics::mixpanel::{MixpanelAuth, MixpanelConfig, MixpanelConnector, streams};
use apex_connect_core::store::{EncryptionKey, SqliteStore};
use apex_connect_core::{
    ConnectionId, NullSink, Sink, SqliteSink, StateStore, StreamId, SyncEngine, SyncOptions,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `VmHWM` and `VmRSS` of this process, in MB (Linux; `None` elsewhere).
fn memory_mb() -> Option<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// Resets the peak RSS (Linux 4.0+: writing 5 to `clear_refs`).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn connector(sim: &MixpanelSimHandle, gzip: bool) -> Result<MixpanelConnector, BoxError> {
    let c = sim.config();
    let config: MixpanelConfig = serde_json::from_value(serde_json::json!({
        "project_id": c.project_id,
        "service_account_username": c.service_account.0,
        "start_date": c.first_day().to_string(),
        "end_date": c.today.to_string(),
        "window_days": 7,
        "page_size": 10_000,
        "gzip": gzip,
        "queries_per_hour": 1_000_000,
        "queries_per_second": 10_000,
    }))?;
    let today = c.today;
    let noon = today
        .and_hms_opt(12, 0, 0)
        .map(|t| t.and_utc().timestamp())
        .unwrap_or(0);
    Ok(MixpanelConnector::builder(config)
        .auth(MixpanelAuth::ServiceAccount {
            username: c.service_account.0.clone(),
            secret: c.service_account.1.clone().into(),
        })
        .base_url(sim.base_url())
        .clock(Arc::new(move || {
            UNIX_EPOCH + Duration::from_secs(noon as u64)
        }))
        .build()?)
}

async fn run(
    label: &str,
    connector: &MixpanelConnector,
    store: Arc<dyn StateStore>,
    sink: &dyn Sink,
    expected: u64,
) -> Result<(), BoxError> {
    let engine = SyncEngine::new(store);
    let conn = ConnectionId::new(format!("bench-{label}"));
    let stream = StreamId::from_static(streams::EVENTS);
    let quarters = Arc::new(Mutex::new(Vec::new()));
    let q = quarters.clone();
    let next = std::sync::atomic::AtomicU64::new(1);
    let progress = move |p: &apex_connect_core::Progress| {
        use std::sync::atomic::Ordering::Relaxed;
        while next.load(Relaxed) <= 4 && p.records_read * 4 >= expected * next.load(Relaxed) {
            let next_quarter = next.load(Relaxed);
            if let (Some((hwm, rss)), Ok(mut q)) = (memory_mb(), q.lock()) {
                q.push(format!(
                    "{}%: VmHWM {hwm:.1} MB, VmRSS {rss:.1} MB",
                    next_quarter * 25
                ));
            }
            next.fetch_add(1, Relaxed);
        }
    };
    reset_peak();
    let t0 = Instant::now();
    let report = engine
        .run(
            connector,
            &conn,
            &stream,
            sink,
            SyncOptions::new().progress(progress),
        )
        .await?;
    let secs = t0.elapsed().as_secs_f64();
    let (hwm, _) = memory_mb().unwrap_or_default();
    println!(
        "  {label:<22} {:>9} events {:>7.2}s {:>9.0} events/s  pages {:>4}  peak RSS {hwm:.1} MB",
        report.records_read,
        secs,
        report.records_read as f64 / secs.max(1e-9),
        report.pages,
    );
    for q in quarters.lock().map(|q| q.clone()).unwrap_or_default() {
        println!("      {q}");
    }
    if report.records_read != expected {
        return Err(format!(
            "{label}: read {} events, expected {expected}",
            report.records_read
        )
        .into());
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let total: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let days = 20u32;
    let sim = MixpanelSim::start(MixpanelSimConfig {
        days,
        events_per_day: total / u64::from(days),
        duplicate_per_mille: 10,
        late_per_mille: 0,
        ..Default::default()
    })
    .await?;
    let c = sim.config();
    let lines = sim.exported_lines(c.first_day(), c.today);
    let expected = total / u64::from(days) * u64::from(days);
    println!(
        "Mixpanel export: {expected} events ({lines} lines with duplicates), {days} days, windows of 7 days, pages of 10,000"
    );
    if let Some((hwm, rss)) = memory_mb() {
        println!("  at start: VmHWM {hwm:.1} MB, VmRSS {rss:.1} MB");
    }
    let started = SystemTime::now();

    println!("null sink:");
    for gzip in [false, true] {
        let store: Arc<dyn StateStore> = Arc::new(apex_connect_core::MemoryStore::new());
        let sink = NullSink::new();
        let label = if gzip { "null, gzip" } else { "null, plain" };
        run(label, &connector(&sim, gzip)?, store, &sink, expected).await?;
    }

    println!("SQLite (SqliteSink over SqliteStore, temporary file):");
    for entities in [true, false] {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(
            SqliteStore::open(dir.path().join("bench.db"), EncryptionKey::generate()).await?,
        );
        let sink = if entities {
            SqliteSink::for_store(&store)
        } else {
            SqliteSink::for_store(&store).raw_only()
        };
        let label = if entities {
            "sqlite, entities"
        } else {
            "sqlite, raw only"
        };
        run(
            label,
            &connector(&sim, false)?,
            store.clone(),
            &sink,
            expected,
        )
        .await?;
        store.close().await;
    }
    println!(
        "done in {:.1}s",
        started.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0)
    );
    Ok(())
}
