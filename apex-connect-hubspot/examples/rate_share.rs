//! How much of HubSpot's rate limit the connector uses, in real time: the simulator enforces
//! HubSpot's rolling ten-second window and sends its headers; one connector reads four
//! streams page after page at once (as a host syncing several streams does; they share the
//! connector's gate, which learns the limit from `X-HubSpot-RateLimit-Max`) for a while, and
//! the example prints requests/s achieved against requests/s allowed, and the 429s.
//!
//! On a busy machine a single sequential reader is bound by its own round trips rather than
//! by the limit; the virtual-clock test (`tests/sim/rate_window.rs`) measures the gate alone.
//!
//! `cargo run --release -p apex-connect-hubspot --features sim --example rate_share [SECONDS] [LIMIT...]`
//! (default 60 s, limits 100 and 190 per 10 s).

use std::time::{Duration, Instant};

use apex_connect_core::{Connector, StreamId};
use apex_connect_hubspot::{HubSpotConnector, HubSpotSim, HubSpotSimConfig};

#[tokio::main]
async fn main() -> apex_connect_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let mut limits: Vec<u32> = args.filter_map(|a| a.parse().ok()).collect();
    if limits.is_empty() {
        limits = vec![100, 190];
    }
    for limit in limits {
        let sim = HubSpotSim::start(
            HubSpotSimConfig::default()
                .size(1_000_000, 1_000_000, 1_000_000)
                .engagements(1_000_000)
                .rate_limits(Some(limit), None),
        )
        .await?;
        let hs = HubSpotConnector::builder()
            .base_url(sim.base_url())
            .private_app_token(sim.private_app_token())
            .page_size(10)
            .build()?;
        let t0 = Instant::now();
        let readers = ["contacts", "companies", "deals", "notes"].map(|s| {
            let hs = &hs;
            async move {
                let stream = StreamId::from_static(s);
                let mut cursor = None;
                let mut busy = Duration::ZERO;
                while t0.elapsed() < Duration::from_secs(secs) {
                    let t = Instant::now();
                    let page = hs.read(&stream, cursor.as_ref()).await?;
                    busy += t.elapsed();
                    cursor = page.next;
                }
                Ok::<_, apex_connect_core::Error>(busy)
            }
        });
        let mut busy = Duration::ZERO;
        for r in futures::future::join_all(readers).await {
            busy += r?;
        }
        let el = t0.elapsed().as_secs_f64();
        let snap = hs.api().http().stats().snapshot();
        // Time in reads less time waiting at the gate: round trips (and client work).
        let round_trip =
            busy.saturating_sub(snap.gate_wait).as_secs_f64() / snap.requests_sent.max(1) as f64;
        let stats = sim.limiter().stats();
        let ok = stats.requests - stats.rejected;
        println!(
            "  requests allowed per ten-second window: {:?}",
            stats.allowed_by_window
        );
        let allowed = f64::from(limit) / 10.0;
        println!(
            "limit {limit}/10s: {ok} requests in {el:.1} s = {:.2}/s of {allowed:.1}/s allowed ({:.1} %), {} 429s; \
             limit learnt {:?}; mean round trip {:.0} ms (a request holds its slot until 10 s after its answer: \
             at most 10 s / (10 s + round trip) of the limit)",
            ok as f64 / el,
            100.0 * ok as f64 / el / allowed,
            stats.rejected,
            hs.api().http().rate_gate().and_then(|g| g.window()),
            round_trip * 1000.0,
        );
    }
    Ok(())
}
