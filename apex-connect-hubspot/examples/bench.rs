//! Benchmark against the simulator: a full sync of 100,000 contacts + companies + deals,
//! then an incremental sync of 20,000 changes through the search API (5 requests/s).
//!
//! `cargo run --release -p apex-connect-hubspot --features sim --example bench [N] [CHANGES]`

use std::time::Instant;

use apex_connect_core::{Connector, CursorToken, StreamId, read_pages};
use apex_connect_hubspot::{HubSpotConnector, HubSpotSim, HubSpotSimConfig, streams};
use futures::StreamExt;

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn sync(
    c: &HubSpotConnector,
    stream: &str,
    from: Option<CursorToken>,
) -> apex_connect_core::Result<(u64, Option<CursorToken>)> {
    let stream = StreamId::from(stream.to_string());
    let mut pages = read_pages(c as &dyn Connector, &stream, from);
    let (mut n, mut last) = (0u64, None);
    while let Some(page) = pages.next().await {
        let page = page?;
        n += page.records.len() as u64;
        last = page.next;
    }
    Ok((n, last))
}

#[tokio::main]
async fn main() -> apex_connect_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let changes: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let sim = HubSpotSim::start(
        HubSpotSimConfig::default()
            .size(n, n, n)
            .engagements(0)
            .owners(10)
            .rate_limits(None, Some(5)),
    )
    .await?;
    let hs = HubSpotConnector::builder()
        .base_url(sim.base_url())
        .private_app_token(sim.private_app_token())
        .page_size(100)
        .requests_per_10s(1_000_000)
        .build()?;
    println!("HubSpot simulator: {n} contacts + {n} companies + {n} deals (generated on the fly)");
    let t0 = Instant::now();
    let mut total = 0;
    let mut contacts_cursor = None;
    for s in [streams::CONTACTS, streams::COMPANIES, streams::DEALS] {
        let ts = Instant::now();
        let req0 = hs.api().requests_sent();
        let (count, cursor) = sync(&hs, s, None).await?;
        println!(
            "  full sync {s:<9} {count:>7} records  {:>5} requests  {:>6.2} s  {:>8.0} records/s",
            hs.api().requests_sent() - req0,
            ts.elapsed().as_secs_f64(),
            count as f64 / ts.elapsed().as_secs_f64()
        );
        total += count;
        if s == streams::CONTACTS {
            contacts_cursor = cursor;
        }
    }
    let el = t0.elapsed().as_secs_f64();
    println!(
        "full sync total: {total} records, {} requests, {el:.2} s, {:.0} records/s, peak RSS (VmHWM) {} KiB",
        hs.api().requests_sent(),
        total as f64 / el,
        vm_hwm_kib().map_or("?".into(), |k| k.to_string())
    );

    let ids: Vec<String> = (0..changes)
        .map(|i| sim.id(streams::CONTACTS, i * (n / changes.max(1)).max(1) % n))
        .collect::<Result<_, _>>()?;
    sim.touch_many(streams::CONTACTS, &ids, 4)?;
    let req0 = hs.api().requests_sent();
    let search0 = hs.api().search_http().stats().snapshot().requests_sent;
    let ts = Instant::now();
    let (count, _) = sync(&hs, streams::CONTACTS, contacts_cursor).await?;
    let el = ts.elapsed().as_secs_f64();
    let searches = hs.api().search_http().stats().snapshot().requests_sent - search0;
    println!(
        "incremental: {count} changed contacts in {el:.2} s, {} requests ({searches} search at <= 5/s: floor {:.1} s, {} batch reads), \
         {} search 429s, peak RSS {} KiB",
        hs.api().requests_sent() - req0,
        (searches.saturating_sub(1)) as f64 / 5.0,
        hs.api().requests_sent() - req0 - searches,
        sim.search_limiter().stats().rejected,
        vm_hwm_kib().map_or("?".into(), |k| k.to_string())
    );
    Ok(())
}
