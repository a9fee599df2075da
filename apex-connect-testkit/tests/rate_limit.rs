//! The core HTTP stack against the toolkit's fixed-window limiter: a 2,000-request sync through
//! one shared `HttpClient` stays under the platform's limit (no 429 after the first window)
//! while using at least 90% of the allowed rate.
//!
//! Real time on a real socket: about 10 s. Run with `--nocapture` to see the figures.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use apex_connect_core::http::{HttpClient, RateGate, RetryConfig};
use apex_connect_testkit::sim::paging::{self, page_token};
use apex_connect_testkit::sim::{FixedWindowLimiter, RateLimitHeaders, SimServer, SimStats};
use axum::Router;
use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;

/// Requests allowed per window.
const LIMIT: u32 = 200;
/// The window.
const WINDOW: Duration = Duration::from_secs(1);
/// Requests (pages) in the whole sync.
const REQUESTS: usize = 2_000;

/// `GET /streams/{n}/records?pages=&page_token=`: `pages` pages of 3 records each.
async fn records(Path(n): Path<u32>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let pages: usize = q.get("pages").and_then(|p| p.parse().ok()).unwrap_or(1);
    match paging::paginate(pages * 3, 3, q.get("page_token").map(String::as_str)) {
        Ok(page) => {
            let results: Vec<_> = page
                .range
                .map(|i| serde_json::json!({"id": format!("s{n}_{i}"), "n": i}))
                .collect();
            paging::json(
                StatusCode::OK,
                &serde_json::json!({"results": results, "next": page.next}),
            )
        }
        Err(bad) => bad.into_response(),
    }
}

/// One sequential sync of 2,000 pages: the acceptance test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_of_2000_requests_stays_under_the_limit_and_uses_90_percent_of_it() {
    sync_through_the_limiter(1).await;
}

/// The same 2,000 requests as 4 streams read concurrently through one shared client.
///
/// The gate counts the platform's budget down locally per request sent, so concurrent tasks
/// cannot overspend the last units of a window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sync_of_2000_requests_stays_under_the_limit() {
    sync_through_the_limiter(4).await;
}

async fn sync_through_the_limiter(streams: usize) {
    let pages_per_stream = REQUESTS / streams;
    let limiter = FixedWindowLimiter::new(LIMIT, WINDOW).with_headers(RateLimitHeaders::front());
    let stats = SimStats::new();
    let app = Router::new()
        .route("/streams/{n}/records", get(records))
        .layer(limiter.layer())
        .layer(stats.layer());
    let sim = SimServer::start(app).await.unwrap();

    // The gate has no local quota: it learns the budget from x-ratelimit-* alone.
    let http = HttpClient::builder(sim.base_url())
        .rate_gate(RateGate::unlimited())
        .retry(RetryConfig::default())
        .build()
        .unwrap();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..streams {
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let mut token: Option<String> = None;
            let mut seen = 0usize;
            loop {
                let mut query = vec![("pages", pages_per_stream.to_string())];
                if let Some(t) = &token {
                    query.push(("page_token", t.clone()));
                }
                let page: serde_json::Value = http
                    .get_json(&format!("/streams/{n}/records"), &query)
                    .await
                    .expect("page");
                seen += page["results"].as_array().map_or(0, Vec::len);
                match page["next"].as_str() {
                    Some(next) => {
                        // The token is the simulator's own: it must decode.
                        assert!(page_token::decode::<u64>(next).is_ok());
                        token = Some(next.to_string());
                    }
                    None => return seen,
                }
            }
        }));
    }
    let mut records = 0;
    for t in tasks {
        records += t.await.unwrap();
    }
    let elapsed = started.elapsed();

    let requests = stats.route("GET /streams/{n}/records");
    let ls = limiter.stats();
    let allowed_rate = f64::from(LIMIT) / WINDOW.as_secs_f64();
    let achieved = (ls.requests - ls.rejected) as f64 / elapsed.as_secs_f64();
    let utilisation = achieved / allowed_rate;
    // The first window is partial (windows are wall-clock aligned) and the last one is cut
    // short by the end of the sync: judge the windows in between on their own too.
    let windows: Vec<(u64, u64)> = ls.allowed_by_window.iter().map(|(w, n)| (*w, *n)).collect();
    let full = &windows[1.min(windows.len())..windows.len().saturating_sub(1)];
    let full_utilisation = if full.is_empty() {
        1.0
    } else {
        full.iter().map(|(_, n)| *n as f64).sum::<f64>() / (full.len() as f64 * f64::from(LIMIT))
    };
    println!(
        "rate_limit: requests per full window (limit {LIMIT}): {:?} = {:.1}% of the limit",
        full.iter().map(|(_, n)| n).collect::<Vec<_>>(),
        full_utilisation * 100.0
    );
    println!(
        "rate_limit ({streams} task(s)): {} requests ({} records) in {:.2}s over windows {:?}: {:.1} req/s of {:.0} allowed = {:.1}%; 429s by window: {:?}",
        ls.requests,
        records,
        elapsed.as_secs_f64(),
        ls.allowed_by_window.keys().collect::<Vec<_>>(),
        achieved,
        allowed_rate,
        utilisation * 100.0,
        ls.rejected_by_window,
    );
    println!("rate_limit: client stats: {}", http.stats().snapshot());

    assert_eq!(records, streams * pages_per_stream * 3, "every record read");
    assert_eq!(requests, ls.requests, "the limiter saw every request");
    assert_eq!(
        ls.requests - ls.rejected,
        (streams * pages_per_stream) as u64,
        "each page answered once"
    );
    let first = ls.allowed_by_window.keys().next().copied().unwrap_or(0);
    let late: u64 = ls
        .rejected_by_window
        .iter()
        .filter(|(w, _)| **w > first)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        late, 0,
        "429s after the first window: {:?}",
        ls.rejected_by_window
    );
    assert!(
        utilisation >= 0.9,
        "used only {:.1}% of the allowed rate",
        utilisation * 100.0
    );
    assert!(
        full_utilisation >= 0.9,
        "full windows used only {:.1}% of the limit",
        full_utilisation * 100.0
    );
    sim.shutdown().await;
}
