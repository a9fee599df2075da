//! Using every request HubSpot allows (issue 11), against the simulator enforcing HubSpot's
//! rolling ten-second window and sending its headers, on a virtual clock shared by the
//! simulator and the connector (so two virtual minutes take a few real seconds, and the
//! figures do not depend on the machine's speed).

use std::sync::Arc;
use std::time::Duration;

use apex_connect_core::http::{Clock, RecordingClock};
use apex_connect_core::{Connector, StreamId};
use apex_connect_hubspot::{HubSpotConnector, HubSpotSim, HubSpotSimConfig};

/// Virtual seconds each run lasts.
const SECS: u64 = 120;

struct Share {
    ok: u64,
    refused: u64,
    secs: f64,
    learnt: Option<(u64, Duration)>,
}

/// Reads contacts page after page for [`SECS`] virtual seconds against a simulator allowing
/// `limit` requests in any ten seconds (30 ms of latency each way... on the return path),
/// the connector given `setting` as its `requests_per_10s`.
async fn run(limit: u32, setting: Option<u32>) -> Share {
    let clock = Arc::new(RecordingClock::new());
    let sim = HubSpotSim::start(
        HubSpotSimConfig::default()
            .size(100_000, 1, 1)
            .engagements(0)
            .rate_limits(Some(limit), None)
            .clock(clock.clone())
            .latency(Duration::from_millis(30)),
    )
    .await
    .unwrap();
    let mut b = HubSpotConnector::builder()
        .base_url(sim.base_url())
        .private_app_token(sim.private_app_token())
        .page_size(5)
        .clock(clock.clone());
    if let Some(n) = setting {
        b = b.requests_per_10s(n);
    }
    let hs = b.build().unwrap();
    let stream = StreamId::from_static("contacts");
    let t0 = clock.now();
    let mut cursor = None;
    while clock.now() - t0 < Duration::from_secs(SECS) {
        let page = hs.read(&stream, cursor.as_ref()).await.unwrap();
        assert!(page.has_more);
        cursor = page.next;
    }
    let stats = sim.limiter().stats();
    Share {
        ok: stats.requests - stats.rejected,
        refused: stats.rejected,
        secs: (clock.now() - t0).as_secs_f64(),
        learnt: hs.api().http().rate_gate().and_then(|g| g.window()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connector_uses_the_whole_rolling_window_without_429s() {
    for limit in [100u32, 190] {
        let s = run(limit, None).await;
        let allowed_per_s = f64::from(limit) / 10.0;
        let share = s.ok as f64 / s.secs / allowed_per_s;
        eprintln!(
            "limit {limit}/10s: {} requests in {:.1} virtual s = {:.2}/s of {allowed_per_s:.1}/s allowed ({:.1} %), {} 429s",
            s.ok,
            s.secs,
            s.ok as f64 / s.secs,
            100.0 * share,
            s.refused
        );
        assert_eq!(s.refused, 0, "limit {limit}: avoidable 429s");
        assert!(
            share >= 0.95,
            "limit {limit}: {:.1} % of the allowed rate",
            100.0 * share
        );
        // Never more than the window allows (each window's burst, then one slot per answer).
        let windows = (s.secs / 10.0).ceil() as u64;
        assert!(s.ok <= u64::from(limit) * windows, "{}", s.ok);
        assert_eq!(
            s.learnt,
            Some((u64::from(limit), Duration::from_secs(10))),
            "the limit was learnt from X-HubSpot-RateLimit-Max"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setting_caps_the_rate_below_the_platforms_limit() {
    let s = run(190, Some(60)).await;
    assert_eq!(s.refused, 0);
    let per_s = s.ok as f64 / s.secs;
    assert!(
        (5.7..=6.0).contains(&per_s),
        "{per_s:.2}/s for a cap of 6/s"
    );
    assert_eq!(s.learnt, Some((60, Duration::from_secs(10))));
}
