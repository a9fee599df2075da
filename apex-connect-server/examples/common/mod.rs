//! Shared by the webhook load examples: signed request generation and percentiles.

use std::time::SystemTime;

use apex_connect_core::webhook::WebhookRequest;
use apex_connect_core::{Connector, Op, StreamId};
use apex_connect_testkit::MemoryConnector;
use http::{HeaderMap, HeaderValue, Method, Uri};

/// The `p` quantile (0..=1) of sorted samples; NaN when there are none.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Signed requests `prefix0..prefixN`, prepared before the clock starts.
pub fn requests(c: &MemoryConnector, prefix: &str, n: usize) -> Vec<(HeaderMap, Vec<u8>)> {
    let v = c
        .webhooks()
        .expect("memory connector verifies webhooks")
        .verifier();
    let (m, u) = (Method::POST, Uri::from_static("/"));
    (0..n)
        .map(|i| {
            let body = MemoryConnector::webhook_body(
                &StreamId::from("items"),
                &format!("{prefix}{i}"),
                Op::Delete,
            );
            let mut h = HeaderMap::new();
            h.insert(
                "webhook-id",
                HeaderValue::from_str(&format!("{prefix}{i}")).expect("ascii"),
            );
            let mut signed = v
                .sign(&WebhookRequest::new(&m, &u, &h, &body), SystemTime::now())
                .expect("signs");
            signed.insert("content-type", HeaderValue::from_static("application/json"));
            (signed, body)
        })
        .collect()
}

/// Waits for the request tasks: the sorted times to a 2xx (ms), and how many failed.
pub async fn latencies(handles: Vec<tokio::task::JoinHandle<(bool, f64)>>) -> (Vec<f64>, usize) {
    let mut lat = Vec::with_capacity(handles.len());
    let mut failed = 0;
    for h in handles {
        match h.await {
            Ok((true, ms)) => lat.push(ms),
            _ => failed += 1,
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    (lat, failed)
}
