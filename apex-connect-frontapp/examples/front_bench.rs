//! Throughput, memory and rate-limit figures of the Front connector against its simulator.
//!
//! ```sh
//! cargo run --release -p apex-connect-frontapp --features sim --example front_bench
//! cargo run --release -p apex-connect-frontapp --features sim --example front_bench -- quick
//! ```
//!
//! 1. Full sync of a realistic account (3,000 conversations x 5 messages, 2,000 contacts, 40
//!    tags) with no rate limit, through `SyncEngine` into `SqliteSink` (a temporary SQLite
//!    file, WAL): records/s and requests/s per stream and overall.
//! 2. The same for a 1,000,000-message account (10,000 conversations x 100 messages), with the
//!    peak RSS (`VmHWM` of `/proc/self/status`) at 25/50/75/100 % of the messages stream.
//!    The simulator runs in this process too, so its memory is part of the figure.
//! 3. A sync under a simulator rate limit of 300 requests per 3 s window: the share of the
//!    allowed rate used, and the 429s per window.
//!
//! `quick` shrinks the accounts (for a smoke run); `realistic`, `million` or `limited` run only
//! those sections. Figures are printed; the only check is that every stream of the realistic
//! account synced as many records as the simulator holds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apex_connect_core::engine::{SyncEngine, SyncOptions};
use apex_connect_core::store::prelude::*;
use apex_connect_core::store::{Connection, EncryptionKey, SqliteStore, StateStore};
use apex_connect_core::{ConnectionId, NullSink, Sink, SqliteSink, StreamId};
use apex_connect_frontapp::{
    FrontConfig, FrontConnector, FrontSim, FrontSimConfig, FrontSimHandle,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The streams of a full sync, in the quickstart's order.
const STREAMS: [&str; 7] = [
    "tags",
    "teammates",
    "inboxes",
    "contacts",
    "conversations",
    "messages",
    "comments",
];

/// One line of figures.
struct Line {
    stream: String,
    records: u64,
    requests: u64,
    secs: f64,
}

impl Line {
    fn print(&self) {
        println!(
            "  {:<14} {:>9} records {:>6} requests {:>7.2}s {:>9.0} records/s {:>7.0} requests/s",
            self.stream,
            self.records,
            self.requests,
            self.secs,
            self.records as f64 / self.secs.max(1e-9),
            self.requests as f64 / self.secs.max(1e-9),
        );
    }
}

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

struct Bench {
    store: Arc<SqliteStore>,
    sink: SqliteSink,
    engine: SyncEngine,
    connection: ConnectionId,
    _dir: tempfile::TempDir,
}

impl Bench {
    async fn new(name: &str) -> Result<Bench, BoxError> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(format!("{name}.db"));
        let store = Arc::new(SqliteStore::open(&path, EncryptionKey::generate()).await?);
        let connection = ConnectionId::from(name.to_string());
        store
            .upsert_connection(&Connection::new(
                connection.clone(),
                apex_connect_frontapp::NAME,
                serde_json::json!({}),
            ))
            .await?;
        Ok(Bench {
            sink: SqliteSink::for_store(&store),
            engine: SyncEngine::new(store.clone() as Arc<dyn StateStore>),
            store,
            connection,
            _dir: dir,
        })
    }

    async fn sync(
        &self,
        front: &FrontConnector,
        stream: &str,
        options: SyncOptions,
    ) -> Result<Line, BoxError> {
        self.sync_into(front, stream, options, &self.sink).await
    }

    async fn sync_into(
        &self,
        front: &FrontConnector,
        stream: &str,
        options: SyncOptions,
        sink: &dyn Sink,
    ) -> Result<Line, BoxError> {
        let before = front.http_stats().requests_sent;
        let started = Instant::now();
        let report = self
            .engine
            .run(
                front,
                &self.connection,
                &StreamId::new(stream.to_string()),
                sink,
                options,
            )
            .await?;
        Ok(Line {
            stream: stream.to_string(),
            records: report.records_read,
            requests: front.http_stats().requests_sent - before,
            secs: started.elapsed().as_secs_f64(),
        })
    }
}

/// The connector under test; `FRONT_BENCH_CONCURRENCY` and `FRONT_BENCH_REQUESTS` override
/// `nested_concurrency` and `nested_requests_per_read` (for trying other settings).
fn connector(sim: &FrontSimHandle) -> Result<FrontConnector, BoxError> {
    let mut config = FrontConfig::default();
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
    if let Some(n) = env("FRONT_BENCH_CONCURRENCY") {
        config.nested_concurrency = n;
    }
    if let Some(n) = env("FRONT_BENCH_REQUESTS") {
        config.nested_requests_per_read = n;
    }
    Ok(FrontConnector::builder()
        .config(config)
        .base_url(sim.base_url())
        .api_token(sim.api_token())
        .build()?)
}

fn overall(lines: &[Line]) -> Line {
    Line {
        stream: "overall".into(),
        records: lines.iter().map(|l| l.records).sum(),
        requests: lines.iter().map(|l| l.requests).sum(),
        secs: lines.iter().map(|l| l.secs).sum(),
    }
}

async fn full_sync(title: &str, config: FrontSimConfig) -> Result<(), BoxError> {
    let sim = FrontSim::start(config).await?;
    let front = connector(&sim)?;
    let bench = Bench::new("realistic").await?;
    println!(
        "\n== {title}: full sync into SQLite, no rate limit (nested_concurrency {})",
        front.config().nested_concurrency
    );
    let mut lines = Vec::new();
    for stream in STREAMS {
        let line = bench.sync(&front, stream, SyncOptions::new()).await?;
        if line.records != sim.count(stream) {
            return Err(format!(
                "{stream}: {} records synced, the simulator holds {}",
                line.records,
                sim.count(stream)
            )
            .into());
        }
        line.print();
        lines.push(line);
    }
    overall(&lines).print();
    bench.store.close().await;
    Ok(())
}

async fn million(conversations: u64, per_conversation: u64) -> Result<(), BoxError> {
    let sim = FrontSim::start(
        FrontSimConfig::default()
            .size(conversations, per_conversation)
            .contacts(10_000)
            .tags(40),
    )
    .await?;
    let front = connector(&sim)?;
    let bench = Bench::new("million").await?;
    let total = sim.count("messages");
    println!(
        "\n== {total} messages ({conversations} conversations x {per_conversation}): full sync into SQLite, no rate limit"
    );
    if let Some((hwm, rss)) = memory_mb() {
        println!("  before the sync: VmHWM {hwm:.1} MB, VmRSS {rss:.1} MB");
    }
    let mut lines = Vec::new();
    for stream in ["tags", "contacts", "conversations"] {
        let line = bench.sync(&front, stream, SyncOptions::new()).await?;
        line.print();
        lines.push(line);
    }
    if let Some((hwm, rss)) = memory_mb() {
        println!("  before messages: VmHWM {hwm:.1} MB, VmRSS {rss:.1} MB");
    }
    // Peak RSS at each quarter of the messages stream.
    let marks = Arc::new(Mutex::new(Vec::<String>::new()));
    let next_quarter = Arc::new(Mutex::new(1u64));
    let (m, q) = (marks.clone(), next_quarter.clone());
    let options = SyncOptions::new().progress(move |p| {
        let mut q = q.lock().unwrap_or_else(|e| e.into_inner());
        while *q <= 4 && p.records_read * 4 >= total * *q {
            if let Some((hwm, rss)) = memory_mb() {
                m.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
                    "  {:>3}% ({:>7} messages): VmHWM {hwm:.1} MB, VmRSS {rss:.1} MB",
                    *q * 25,
                    p.records_read
                ));
            }
            *q += 1;
        }
    });
    let line = bench.sync(&front, "messages", options).await?;
    line.print();
    lines.push(line);
    overall(&lines).print();
    println!("  peak memory during the messages stream (simulator included, same process):");
    for mark in marks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        println!("{mark}");
    }
    // The same walk into a sink that keeps nothing: what the connector and the simulator
    // alone reach on this machine (the rest of the difference is SQLite).
    let pages = (total / 4 / 800).max(1);
    let mut line = bench
        .sync_into(
            &front,
            "messages",
            SyncOptions::new().full(true).max_pages(pages),
            &NullSink::new(),
        )
        .await?;
    line.stream = "messages*".into();
    println!(
        "  * the first {} messages again, into NullSink (no database):",
        line.records
    );
    line.print();
    bench.store.close().await;
    Ok(())
}

async fn rate_limited(conversations: u64) -> Result<(), BoxError> {
    let (limit, window) = (300u32, Duration::from_secs(3));
    let sim = FrontSim::start(
        FrontSimConfig::realistic()
            .size(conversations, 5)
            .rate_limit(limit, window),
    )
    .await?;
    let front = connector(&sim)?;
    let bench = Bench::new("limited").await?;
    println!(
        "\n== Rate limit {limit} requests per {}s window: messages stream ({} conversations)",
        window.as_secs(),
        conversations
    );
    let line = bench.sync(&front, "messages", SyncOptions::new()).await?;
    line.print();
    let stats = sim.limiter().stats();
    let windows: Vec<u64> = stats.allowed_by_window.keys().copied().collect();
    for w in &windows {
        println!(
            "  window {w:>3}: {:>4} allowed, {:>3} refused (429)",
            stats.allowed_by_window[w],
            stats.rejected_by_window.get(w).copied().unwrap_or(0)
        );
    }
    // Full windows only: the first one started before the sync, the last ended with it.
    let full: Vec<u64> = if windows.len() > 2 {
        windows[1..windows.len() - 1].to_vec()
    } else {
        Vec::new()
    };
    if !full.is_empty() {
        let used: u64 = full.iter().map(|w| stats.allowed_by_window[w]).sum();
        println!(
            "  achieved share of the allowed rate over {} full windows: {:.1} % ({used} of {})",
            full.len(),
            100.0 * used as f64 / (full.len() as f64 * limit as f64),
            full.len() as u64 * limit as u64
        );
    }
    let first = windows.first().copied().unwrap_or(0);
    let late: u64 = stats
        .rejected_by_window
        .iter()
        .filter(|(w, _)| **w > first)
        .map(|(_, n)| n)
        .sum();
    let http = front.http_stats();
    println!(
        "  429s: {} in all, {late} after the first window; time waited on the rate gate, summed over concurrent requests: {:.1}s",
        stats.rejected,
        http.gate_wait.as_secs_f64()
    );
    bench.store.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let quick = std::env::args().any(|a| a == "quick");
    let started = Instant::now();
    println!(
        "front_bench: release build {}, {} CPUs; the simulator runs in this process",
        !cfg!(debug_assertions),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // Optional section names (`realistic`, `million`, `limited`) run only those.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| matches!(a.as_str(), "realistic" | "million" | "limited"))
        .collect();
    let run = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    if run("realistic") {
        let (convs, contacts) = if quick { (300, 200) } else { (3_000, 2_000) };
        full_sync(
            "Realistic account",
            FrontSimConfig::realistic()
                .size(convs, 5)
                .contacts(contacts)
                .tags(40),
        )
        .await?;
    }
    if run("million") {
        if quick {
            million(1_000, 10).await?;
        } else {
            million(10_000, 100).await?;
        }
    }
    if run("limited") {
        rate_limited(if quick { 150 } else { 2_700 }).await?;
    }
    println!("\ntotal time: {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
