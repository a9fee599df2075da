//! Benchmark of the read path against the simulator: CPU per record of a full sync, then an
//! incremental sync of changes through the search API (5 requests/s).
//!
//! `cargo run --release -p apex-connect-hubspot --features sim --example bench [N] [CHANGES]`
//!
//! The simulator runs on its own threads (its own tokio runtime); the connector runs on the
//! main thread (a current-thread runtime), whose CPU time (`getrusage(RUSAGE_THREAD)`, user +
//! system) is what "CPU per record" divides: the cost of the connector's read path (HTTP,
//! parsing, records), not the simulator's rendering. Mapping to entities (what entity sinks
//! add) is measured separately.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use apex_connect_core::{Connector, CursorToken, Record, StreamId, read_pages};
use apex_connect_hubspot::{HubSpotConnector, HubSpotSim, HubSpotSimConfig, streams};
use futures::StreamExt;

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: `getrusage` fills the zeroed struct we own; RUSAGE_THREAD is valid on Linux.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

struct Run {
    records: u64,
    bytes: u64,
    cursor: Option<CursorToken>,
    sample: Vec<Record>,
}

async fn sync(
    c: &HubSpotConnector,
    stream: &str,
    from: Option<CursorToken>,
) -> apex_connect_core::Result<Run> {
    let stream = StreamId::from(stream.to_string());
    let mut pages = read_pages(c as &dyn Connector, &stream, from);
    let mut run = Run {
        records: 0,
        bytes: 0,
        cursor: None,
        sample: Vec::new(),
    };
    while let Some(page) = pages.next().await {
        let page = page?;
        run.records += page.records.len() as u64;
        run.bytes += page.records.iter().map(|r| r.raw.len() as u64).sum::<u64>();
        if run.sample.len() < 1_000 {
            run.sample.extend(page.records.iter().take(100).cloned());
        }
        run.cursor = page.next;
    }
    Ok(run)
}

fn main() -> apex_connect_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let changes: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);

    // The simulator on its own runtime and threads.
    let (tx, rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sim_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("simulator runtime");
        rt.block_on(async move {
            let sim = HubSpotSim::start(
                HubSpotSimConfig::default()
                    .size(n, n, n)
                    .engagements(0)
                    .owners(10)
                    .rate_limits(None, Some(5)),
            )
            .await
            .expect("simulator starts");
            tx.send(sim).ok();
            let _ = stop_rx.await;
        });
    });
    let sim = rx
        .recv()
        .map_err(|_| apex_connect_core::Error::config("no simulator"))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| apex_connect_core::Error::config("runtime").set_source(e))?;
    rt.block_on(async {
        let hs = HubSpotConnector::builder()
            .base_url(sim.base_url())
            .private_app_token(sim.private_app_token())
            .page_size(100)
            .build()?;
        println!(
            "HubSpot simulator: {n} contacts + {n} companies + {n} deals (generated on the fly, its own threads)"
        );
        let mut contacts_cursor = None;
        let mut sample = Vec::new();
        let (mut total, mut total_cpu) = (0u64, Duration::ZERO);
        let t0 = Instant::now();
        for s in [streams::CONTACTS, streams::COMPANIES, streams::DEALS] {
            let ts = Instant::now();
            let cpu0 = thread_cpu();
            let req0 = hs.api().requests_sent();
            let run = sync(&hs, s, None).await?;
            let cpu = thread_cpu() - cpu0;
            let el = ts.elapsed().as_secs_f64();
            println!(
                "  full sync {s:<9} {:>7} records ({:>4} B each)  {:>5} requests  {el:>6.2} s  {:>8.0} records/s  CPU {:>5.2} µs/record",
                run.records,
                run.bytes / run.records.max(1),
                hs.api().requests_sent() - req0,
                run.records as f64 / el,
                cpu.as_secs_f64() * 1e6 / run.records.max(1) as f64,
            );
            total += run.records;
            total_cpu += cpu;
            if s == streams::CONTACTS {
                contacts_cursor = run.cursor;
                sample = run.sample;
            }
        }
        let el = t0.elapsed().as_secs_f64();
        println!(
            "full sync total: {total} records, {} requests, {el:.2} s, {:.0} records/s, CPU {:.2} µs/record (connector thread), peak RSS (VmHWM, both) {} KiB",
            hs.api().requests_sent(),
            total as f64 / el,
            total_cpu.as_secs_f64() * 1e6 / total.max(1) as f64,
            vm_hwm_kib().map_or("?".into(), |k| k.to_string())
        );

        // Mapping, for entity sinks (the tap and raw sinks never map).
        let rounds = 100;
        let cpu0 = thread_cpu();
        let mut mapped = 0u64;
        for _ in 0..rounds {
            for r in &sample {
                if hs.map_entity(r)?.is_some() {
                    mapped += 1;
                }
            }
        }
        let cpu = thread_cpu() - cpu0;
        println!(
            "map_entity (entity sinks only): {:.2} µs/record over {mapped} mappings",
            cpu.as_secs_f64() * 1e6 / mapped.max(1) as f64
        );

        let ids: Vec<String> = (0..changes)
            .map(|i| sim.id(streams::CONTACTS, i * (n / changes.max(1)).max(1) % n))
            .collect::<Result<_, _>>()?;
        sim.touch_many(streams::CONTACTS, &ids, 4)?;
        let req0 = hs.api().requests_sent();
        let search0 = hs.api().search_http().stats().snapshot().requests_sent;
        let ts = Instant::now();
        let cpu0 = thread_cpu();
        let run = sync(&hs, streams::CONTACTS, contacts_cursor).await?;
        let cpu = thread_cpu() - cpu0;
        let el = ts.elapsed().as_secs_f64();
        let searches = hs.api().search_http().stats().snapshot().requests_sent - search0;
        println!(
            "incremental: {} changed contacts in {el:.2} s, {} requests ({searches} search at <= 5/s: floor {:.1} s, {} batch reads), \
             {} search 429s, CPU {:.2} µs/record, peak RSS {} KiB",
            run.records,
            hs.api().requests_sent() - req0,
            (searches.saturating_sub(1)) as f64 / 5.0,
            hs.api().requests_sent() - req0 - searches,
            sim.search_limiter().stats().rejected,
            cpu.as_secs_f64() * 1e6 / run.records.max(1) as f64,
            vm_hwm_kib().map_or("?".into(), |k| k.to_string())
        );
        Ok::<_, apex_connect_core::Error>(())
    })?;
    drop(sim);
    let _ = stop_tx.send(());
    let _ = sim_thread.join();
    Ok(())
}
