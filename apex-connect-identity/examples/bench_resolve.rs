//! Benchmark: resolve ~1,000,000 incoming entities into a SQLite entity graph.
//!
//! ```text
//! cargo run --release -p apex-connect-identity --example bench_resolve -- [ENTITIES] [DB_PATH]
//! ```
//!
//! Entities come from the seeded ground-truth generator (people, companies, deals and
//! conversations across Front, HubSpot and Salesforce), generated shard by shard (about 10,400
//! entities each) and written through the `EntityGraphSink` in batches of 200, as a sync would.
//! Prints entities/s (resolution only; generation is timed apart), peak RSS (`VmHWM`), the
//! graph's counts and the database size. Not part of the test suite.

use std::time::{Duration, Instant};

use apex_connect_core::Sink;
use apex_connect_identity::groundtruth::{self, GroundTruthConfig};
use apex_connect_identity::{EntityGraph, EntityGraphSink};

/// User and system CPU seconds of this process (`/proc/self/stat`, in USER_HZ = 100 ticks).
fn cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? / 100.0, ticks(12)? / 100.0))
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> apex_connect_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let target: usize = args
        .next()
        .and_then(|a| a.replace('_', "").parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile_dir();
    let path = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.join("bench-graph.db"));
    let _ = std::fs::remove_file(&path);
    let graph = EntityGraph::open_sqlite(&path).await?;
    let sink = EntityGraphSink::new(graph, groundtruth::policy());
    let config = GroundTruthConfig::default();

    let (mut entities, mut batches, mut shard) = (0usize, 0usize, 0u64);
    let (mut resolving, mut generating) = (Duration::ZERO, Duration::ZERO);
    let (mut joins, mut merges) = (0u64, 0u64);
    let started = Instant::now();
    let mut cpu_resolving = 0.0f64;
    while entities < target {
        let t = Instant::now();
        let data = groundtruth::generate_shard(&config, shard);
        generating += t.elapsed();
        let t = Instant::now();
        let cpu0 = cpu_seconds().map_or(0.0, |(u, s)| u + s);
        for b in &data.batches {
            let n = b.records.len().min(target - entities);
            if n == 0 {
                break;
            }
            let batch = apex_connect_core::Batch::new(&b.connection, &b.stream, &b.records[..n])
                .with_entities(&b.entities[..n]);
            // What `Sink::write` does, keeping the report's counts.
            let r = sink.graph().apply(batch).await?;
            joins += r.joins;
            merges += r.merges;
            entities += n;
            batches += 1;
        }
        resolving += t.elapsed();
        cpu_resolving += cpu_seconds().map_or(0.0, |(u, s)| u + s) - cpu0;
        shard += 1;
        if shard % 10 == 0 {
            eprintln!(
                "{entities:>9} entities  {:>8.0} entities/s  peak RSS {} MiB",
                entities as f64 / resolving.as_secs_f64(),
                peak_rss_kib().unwrap_or(0) / 1024
            );
        }
    }
    let graph = sink.graph();
    assert!(sink.wants_entities());
    let stats = graph.stats().await?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(path.with_extension("db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    println!("entities resolved   {entities} in {batches} batches ({shard} shards)");
    println!(
        "resolution          {:.1} s, {:.0} entities/s",
        resolving.as_secs_f64(),
        entities as f64 / resolving.as_secs_f64()
    );
    println!(
        "resolution CPU      {:.1} s user+sys, {:.0} entities per CPU second",
        cpu_resolving,
        entities as f64 / cpu_resolving.max(0.001)
    );
    println!(
        "generation          {:.1} s (not included above)",
        generating.as_secs_f64()
    );
    println!(
        "wall                {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "peak RSS (VmHWM)    {} MiB",
        peak_rss_kib().unwrap_or(0) / 1024
    );
    println!(
        "graph               {} sources, {} canonical, {} keys, {} relations, {} events ({joins} joins, {merges} merges)",
        stats.sources, stats.canonical, stats.keys, stats.relations, stats.events
    );
    println!("database            {} MiB", size / (1024 * 1024));
    Ok(())
}

fn tempfile_dir() -> std::path::PathBuf {
    std::env::temp_dir()
}
