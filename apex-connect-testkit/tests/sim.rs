//! The simulator toolkit, observed from a real HTTP client on loopback.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apex_connect_core::WebhookVerifier;
use apex_connect_core::webhook::{StandardWebhooksVerifier, WebhookRequest, WebhookSecrets};
use apex_connect_testkit::sim::paging::{self, page_token};
use apex_connect_testkit::sim::{
    FaultKind, Faults, FixedWindowLimiter, RateLimitHeaders, ResetFormat, SimServer, SimStats,
    WebhookSender,
};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::BTreeMap;
use std::sync::Mutex;

const TOTAL: usize = 23;

/// `GET /items?limit=&page_token=`: 23 items, paged with opaque tokens, Front-like shape.
async fn items(Query(q): Query<BTreeMap<String, String>>) -> Response {
    let limit = match paging::limit_param(&q, "limit", 10, 100) {
        Ok(l) => l,
        Err(bad) => return bad.into_response(),
    };
    match paging::paginate(TOTAL, limit, q.get("page_token").map(String::as_str)) {
        Ok(page) => {
            let results: Vec<_> = page
                .range
                .map(|i| serde_json::json!({"id": format!("itm_{i}")}))
                .collect();
            paging::json(
                StatusCode::OK,
                &serde_json::json!({"_pagination": {"next": page.next}, "_results": results}),
            )
        }
        Err(bad) => bad.into_response(),
    }
}

fn app() -> Router {
    Router::new()
        .route("/items", get(items))
        .route("/big", get(|| async { "x".repeat(10_000) }))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

#[tokio::test]
async fn status_faults_follow_the_schedule_and_are_counted() {
    let faults = Faults::new(7).at(3, FaultKind::UNAVAILABLE);
    let stats = SimStats::new();
    let sim = SimServer::start(app().layer(faults.layer()).layer(stats.layer()))
        .await
        .unwrap();
    let url = format!("{}/items", sim.base_url());
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(c.get(&url).send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 503, 200]);

    faults.push_scheduled(FaultKind::INTERNAL);
    faults.push_scheduled(FaultKind::BAD_GATEWAY);
    let a = c.get(&url).send().await.unwrap();
    assert_eq!(a.status(), 500);
    let body: serde_json::Value = a.json().await.unwrap();
    assert_eq!(body["error"]["status"], 500);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 502);

    faults.set_enabled(false);
    faults.push_scheduled(FaultKind::INTERNAL);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    faults.set_enabled(true);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 500);

    let counts = faults.counts();
    assert_eq!(counts.requests, 8);
    assert_eq!(counts.injected, 4);
    assert_eq!(counts.kind("status"), 4);
    assert_eq!(counts.by_status.get(&500), Some(&2));
    assert_eq!(faults.injected()[0].request, 3);
    assert_eq!(faults.injected()[0].path, "/items");
    assert_eq!(stats.requests(), 8);
    assert_eq!(stats.route("GET /items"), 8);
    assert_eq!(stats.path("GET /items"), 8);
    assert_eq!(stats.status(500), 2);
    assert_eq!(stats.status(200), 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn too_many_requests_carries_retry_after() {
    let faults = Faults::new(1);
    let sim = SimServer::start(app().layer(faults.layer())).await.unwrap();
    faults.push_scheduled(FaultKind::TooManyRequests {
        retry_after: Duration::from_millis(1500),
    });
    let resp = client()
        .get(format!("{}/items", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");
    assert_eq!(faults.counts().kind("too_many_requests"), 1);
}

#[tokio::test]
async fn connection_reset_gives_a_request_error_without_response() {
    let faults = Faults::new(1);
    let sim = SimServer::start(app().layer(faults.layer())).await.unwrap();
    faults.push_scheduled(FaultKind::ConnectionReset);
    let c = client();
    let err = c
        .get(format!("{}/items", sim.base_url()))
        .send()
        .await
        .expect_err("a reset must not produce a response");
    assert!(!err.is_timeout(), "{err:?}");
    assert!(err.status().is_none(), "{err:?}");
    // The next request works again (on a new connection).
    let ok = c
        .get(format!("{}/items", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(faults.counts().kind("connection_reset"), 1);
}

#[tokio::test]
async fn slow_answer_trips_a_client_timeout() {
    let faults = Faults::new(1);
    let sim = SimServer::start(app().layer(faults.layer())).await.unwrap();
    faults.push_scheduled(FaultKind::Slow(Duration::from_millis(800)));
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = c
        .get(format!("{}/items", sim.base_url()))
        .send()
        .await
        .expect_err("slower than the timeout");
    assert!(err.is_timeout(), "{err:?}");
    // A slow answer within the timeout arrives intact.
    faults.push_scheduled(FaultKind::Slow(Duration::from_millis(50)));
    let started = std::time::Instant::now();
    let resp = client()
        .get(format!("{}/items", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn truncated_body_fails_the_body_read() {
    let faults = Faults::new(1);
    let sim = SimServer::start(app().layer(faults.layer())).await.unwrap();
    faults.push_scheduled(FaultKind::TruncatedBody);
    let resp = client()
        .get(format!("{}/big", sim.base_url()))
        .send()
        .await
        .expect("the head arrives");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some(10_000));
    let err = resp.bytes().await.expect_err("the body must fail");
    assert!(err.is_body() || err.is_decode(), "{err:?}");
    assert_eq!(faults.counts().kind("truncated_body"), 1);
}

#[tokio::test]
async fn random_faults_are_seeded_and_filtered() {
    async fn run(seed: u64) -> (Vec<u16>, u64) {
        let faults = Faults::new(seed)
            .with_probability(FaultKind::UNAVAILABLE, 0.3)
            .with_probability(FaultKind::too_many_requests(1), 0.2)
            .with_filter(|_, uri| uri.path() == "/items");
        let sim = SimServer::start(app().layer(faults.layer())).await.unwrap();
        let c = client();
        let mut out = Vec::new();
        for _ in 0..40 {
            out.push(
                c.get(format!("{}/items", sim.base_url()))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16(),
            );
        }
        // Filtered out: never faulted, not counted.
        for _ in 0..5 {
            let r = c
                .get(format!("{}/big", sim.base_url()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        assert_eq!(faults.counts().requests, 40);
        (out, faults.counts().injected)
    }
    let (a, injected) = run(99).await;
    let (b, _) = run(99).await;
    assert_eq!(a, b, "same seed, same faults");
    assert!(
        injected > 5 && injected < 35,
        "about half of 40: {injected}"
    );
    assert!(
        a.contains(&503) && a.contains(&429) && a.contains(&200),
        "{a:?}"
    );
}

#[tokio::test]
async fn limiter_sends_front_headers_and_429_at_n_plus_one() {
    // Window 0 starts now: six quick requests cannot straddle a window edge.
    let limiter = FixedWindowLimiter::new(5, Duration::from_secs(60)).with_epoch_alignment(false);
    let sim = SimServer::start(app().layer(limiter.layer()))
        .await
        .unwrap();
    let c = client();
    let url = format!("{}/items", sim.base_url());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for i in 1..=5u32 {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit"], "5");
        assert_eq!(
            r.headers()["x-ratelimit-remaining"],
            (5 - i).to_string().as_str()
        );
        let reset: u64 = r.headers()["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            reset >= now && reset <= now + 61,
            "reset {reset} vs now {now}"
        );
    }
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["status"], 429);
    let stats = limiter.stats();
    assert_eq!(stats.requests, 6);
    assert_eq!(stats.rejected, 1);
    assert_eq!(stats.rejected_by_window.get(&0), Some(&1));
}

#[tokio::test]
async fn limiter_windows_reset_keys_are_separate_and_hubspot_headers() {
    let limiter = FixedWindowLimiter::new(2, Duration::from_millis(400))
        .with_headers(RateLimitHeaders::hubspot())
        .keyed_by_header(http::header::AUTHORIZATION)
        .with_body(|| {
            (
                StatusCode::TOO_MANY_REQUESTS,
                "{\"status\":\"error\",\"category\":\"RATE_LIMITS\"}",
            )
                .into_response()
        });
    let sim = SimServer::start(app().layer(limiter.layer()))
        .await
        .unwrap();
    let c = client();
    let url = format!("{}/items", sim.base_url());
    let get = |tok: &'static str| c.get(&url).header("authorization", tok).send();
    // Stay clear of a window edge: start just after a window begins.
    let w = limiter.current_window();
    while limiter.current_window() == w {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(get("a").await.unwrap().status(), 200);
    let r = get("a").await.unwrap();
    assert_eq!(r.headers()["x-hubspot-ratelimit-max"], "2");
    assert_eq!(r.headers()["x-hubspot-ratelimit-remaining"], "0");
    assert_eq!(
        r.headers()["x-hubspot-ratelimit-interval-milliseconds"],
        "400"
    );
    let r = get("a").await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.text().await.unwrap(),
        "{\"status\":\"error\",\"category\":\"RATE_LIMITS\"}"
    );
    // Another account has its own budget.
    assert_eq!(get("b").await.unwrap().status(), 200);
    // The next window starts afresh.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(get("a").await.unwrap().status(), 200);
    assert_eq!(limiter.stats().rejected, 1);
}

#[tokio::test]
async fn limiter_reset_formats() {
    for (format, lo, hi) in [
        (ResetFormat::SecondsRemaining, 1u64, 10u64),
        (ResetFormat::MillisRemaining, 0, 10_000),
        (ResetFormat::WindowMillis, 10_000, 10_000),
    ] {
        let limiter = FixedWindowLimiter::new(3, Duration::from_secs(10)).with_headers(
            RateLimitHeaders::new(
                None,
                None,
                Some(http::HeaderName::from_static("x-reset")),
                format,
            ),
        );
        let sim = SimServer::start(app().layer(limiter.layer()))
            .await
            .unwrap();
        let r = client()
            .get(format!("{}/items", sim.base_url()))
            .send()
            .await
            .unwrap();
        assert!(r.headers().get("x-ratelimit-limit").is_none());
        let v: u64 = r.headers()["x-reset"].to_str().unwrap().parse().unwrap();
        assert!((lo..=hi).contains(&v), "{format:?}: {v}");
    }
}

#[tokio::test]
async fn paged_endpoint_round_trips_tokens_and_refuses_forged_ones() {
    let sim = SimServer::start(app()).await.unwrap();
    let c = client();
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut req = c
            .get(format!("{}/items", sim.base_url()))
            .query(&[("limit", "5")]);
        if let Some(t) = &token {
            req = req.query(&[("page_token", t)]);
        }
        let body: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
        pages += 1;
        for r in body["_results"].as_array().unwrap() {
            ids.push(r["id"].as_str().unwrap().to_string());
        }
        match body["_pagination"]["next"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    let want: Vec<String> = (0..TOTAL).map(|i| format!("itm_{i}")).collect();
    assert_eq!(ids, want);

    // A forged token (an offset without the checksum, or an edited payload) is a 400.
    let real = page_token::encode(&10u64);
    let (_, sum) = real.split_once('.').unwrap();
    let edited = format!(
        "{}.{sum}",
        page_token::encode(&3u64).split_once('.').unwrap().0
    );
    for forged in ["MTA", "bm9wZQ.AAAA", edited.as_str(), ""] {
        let r = c
            .get(format!("{}/items", sim.base_url()))
            .query(&[("page_token", forged)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{forged:?}");
    }
    let r = c
        .get(format!("{}/items?limit=zero", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[test]
fn page_tokens_and_keysets() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Keyset {
        updated_at: i64,
        id: String,
    }
    let k = Keyset {
        updated_at: 5,
        id: "a".into(),
    };
    let t = page_token::encode(&k);
    assert_eq!(page_token::decode::<Keyset>(&t).unwrap(), k);
    assert!(page_token::decode::<u64>(&t).is_err());

    let items: Vec<(i64, &str)> = vec![(1, "a"), (2, "b"), (2, "c"), (3, "d"), (4, "e")];
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let (page, next) =
            paging::paginate_keyset(&items, 2, token.as_deref(), |it| (it.0, it.1.to_string()))
                .unwrap();
        seen.extend(page.iter().map(|it| it.1));
        match next {
            Some(n) => token = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    assert!(paging::paginate(10, 5, Some(&page_token::encode(&11u64))).is_err());
    let q = paging::query_params(&Uri::from_static("/x?a=1&b=hello%20world"));
    assert_eq!(q.get("b").map(String::as_str), Some("hello world"));
}

#[derive(Clone)]
struct Receiver {
    verifier: Arc<dyn WebhookVerifier>,
    answers: Arc<Mutex<Vec<u16>>>,
    verified: Arc<Mutex<u32>>,
}

async fn receive(
    State(rx): State<Receiver>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ok = rx
        .verifier
        .verify(
            &WebhookRequest::new(&method, &uri, &headers, &body),
            SystemTime::now(),
        )
        .is_ok();
    if ok {
        *rx.verified.lock().unwrap() += 1;
    }
    let next = rx.answers.lock().unwrap().pop();
    match next {
        Some(code) => StatusCode::from_u16(code).unwrap().into_response(),
        None if ok => (StatusCode::OK, "accepted").into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

#[tokio::test]
async fn webhook_sender_signatures_verify_and_retries_happen() {
    let secret = b"whsec-test-secret-0123456789";
    let verifier: Arc<dyn WebhookVerifier> = Arc::new(StandardWebhooksVerifier::new(
        WebhookSecrets::single(secret),
    ));
    let rx = Receiver {
        verifier: verifier.clone(),
        answers: Arc::new(Mutex::new(vec![503, 500])),
        verified: Arc::new(Mutex::new(0)),
    };
    let router = Router::new()
        .route("/hooks", post(receive))
        .with_state(rx.clone());
    let sim = SimServer::start(router).await.unwrap();
    let url = format!("{}/hooks", sim.base_url());
    let sender = WebhookSender::new(verifier.clone())
        .with_retries(3)
        .with_backoff(Duration::from_millis(10))
        .with_header(
            http::HeaderName::from_static("x-event-type"),
            http::HeaderValue::from_static("contact.created"),
        );
    let d = sender.send(&url, r#"{"id":"evt_1"}"#).await.unwrap();
    assert_eq!(d.status, 200);
    assert_eq!(d.attempts, 3, "two failures, then success");
    assert_eq!(&d.body[..], b"accepted");
    assert_eq!(
        *rx.verified.lock().unwrap(),
        3,
        "every attempt was validly signed"
    );

    // A sender with another secret is refused, and gives up after its retries.
    let wrong = WebhookSender::new(Arc::new(StandardWebhooksVerifier::new(
        WebhookSecrets::single(b"another-secret"),
    )))
    .with_retries(1)
    .with_backoff(Duration::from_millis(1));
    let d = wrong.send(&url, "{}").await.unwrap();
    assert_eq!((d.status.as_u16(), d.attempts), (401, 2));

    // A stale clock gives signatures the receiver refuses.
    let stale = WebhookSender::new(verifier)
        .with_retries(0)
        .with_clock(|| SystemTime::now() - Duration::from_secs(3600));
    assert_eq!(stale.send(&url, "{}").await.unwrap().status, 401);
    assert_eq!(*rx.verified.lock().unwrap(), 3);
}
