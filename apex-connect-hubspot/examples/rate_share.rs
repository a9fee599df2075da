//! How much of HubSpot's rate limit the connector uses, in real time: the simulator enforces
//! HubSpot's rolling ten-second window and sends its headers; the connector reads contacts
//! page after page (learning the limit from `X-HubSpot-RateLimit-Max`) for a while, and the
//! example prints requests/s achieved against requests/s allowed, and the 429s.
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
                .size(1_000_000, 1, 1)
                .engagements(0)
                .rate_limits(Some(limit), None),
        )
        .await?;
        let hs = HubSpotConnector::builder()
            .base_url(sim.base_url())
            .private_app_token(sim.private_app_token())
            .page_size(10)
            .build()?;
        let stream = StreamId::from_static("contacts");
        let t0 = Instant::now();
        let mut cursor = None;
        while t0.elapsed() < Duration::from_secs(secs) {
            let page = hs.read(&stream, cursor.as_ref()).await?;
            cursor = page.next;
        }
        let el = t0.elapsed().as_secs_f64();
        let stats = sim.limiter().stats();
        let ok = stats.requests - stats.rejected;
        let allowed = f64::from(limit) / 10.0;
        println!(
            "limit {limit}/10s: {ok} requests in {el:.1} s = {:.2}/s of {allowed:.1}/s allowed ({:.1} %), {} 429s; limit learnt {:?}",
            ok as f64 / el,
            100.0 * ok as f64 / el / allowed,
            stats.rejected,
            hs.api().http().rate_gate().and_then(|g| g.window()),
        );
    }
    Ok(())
}
