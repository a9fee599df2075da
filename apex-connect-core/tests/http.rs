//! Integration tests of the HTTP stack against wiremock (and a raw TCP listener) on loopback.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use apex_connect_core::http::{
    Credentials, DefaultPolicy, HttpClient, HttpClientBuilder, Idempotent, PlatformPolicy,
    RateGate, RecordingClock, RetryConfig, StaticToken,
};
use apex_connect_core::{Error, ErrorKind, Result};
use async_trait::async_trait;
use futures::StreamExt;
use http::{HeaderValue, Method};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "tok-SUPERSECRET-123";

/// Retries with tiny, jitter-free backoff so recorded sleeps are exact.
fn fast_retry(max_attempts: u32) -> RetryConfig {
    RetryConfig {
        max_attempts,
        max_elapsed: Duration::from_secs(60),
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        factor: 2.0,
        jitter: false,
    }
}

/// Every client of this binary is built after the capturing subscriber is installed as the
/// global default, so no tracing callsite caches "no interest" before it exists (a scoped
/// `set_default` races with callsites registered by tests running on other threads).
fn client(base: impl Into<String>) -> HttpClientBuilder {
    traces();
    HttpClient::builder(base)
}

/// Everything traced by this test binary.
fn traces() -> &'static capture::Capture {
    static CAPTURE: OnceLock<capture::Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let c = capture::Capture::default();
        tracing::subscriber::set_global_default(c.clone())
            .expect("no other global subscriber in this test binary");
        c
    })
}

fn builder(server: &MockServer, clock: &Arc<RecordingClock>) -> HttpClientBuilder {
    client(server.uri())
        .credentials(Arc::new(StaticToken::bearer(TOKEN)))
        .clock(clock.clone())
        .retry(fast_retry(5))
        .timeout(Duration::from_secs(5))
}

async fn hits(server: &MockServer) -> usize {
    server.received_requests().await.map_or(0, |r| r.len())
}

#[tokio::test]
async fn retry_after_seconds_is_honoured() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/x"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "3"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/x"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock).build().unwrap();
    let v: Value = http.get_json("/x", &[]).await.unwrap();
    assert_eq!(v, json!({"ok": true}));
    assert_eq!(clock.sleeps(), vec![Duration::from_secs(3)]);
    let s = http.stats().snapshot();
    assert_eq!((s.requests_sent, s.rate_limited, s.retries), (2, 1, 1));
}

#[tokio::test]
async fn retry_after_http_date_is_honoured() {
    let server = MockServer::start().await;
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(5));
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", date.as_str()))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock).build().unwrap();
    let _: Vec<Value> = http.get_json("/x", &[]).await.unwrap();
    let sleeps = clock.sleeps();
    assert_eq!(sleeps.len(), 1);
    // HTTP dates have whole seconds: between 4 and 5 s from now.
    assert!(
        sleeps[0] >= Duration::from_millis(3500) && sleeps[0] <= Duration::from_secs(5),
        "{sleeps:?}"
    );
}

#[tokio::test]
async fn client_errors_are_sent_exactly_once() {
    for (status, kind) in [
        (400, ErrorKind::InvalidInput),
        (403, ErrorKind::PermissionDenied),
        (404, ErrorKind::NotFound),
        (422, ErrorKind::InvalidInput),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(status).set_body_json(json!({"message": "nope"})))
            .expect(1)
            .mount(&server)
            .await;
        let clock = Arc::new(RecordingClock::new());
        let http = builder(&server, &clock).build().unwrap();
        let e = http.get_json::<Value>("/thing", &[]).await.unwrap_err();
        assert_eq!(e.kind(), kind, "{status}");
        assert!(!e.is_temporary());
        assert_eq!(e.context_value("status"), Some(status.to_string().as_str()));
        assert_eq!(e.context_value("method"), Some("GET"));
        assert!(e.message().contains("nope"), "{e}");
        assert_eq!(hits(&server).await, 1, "{status}");
        assert!(clock.sleeps().is_empty());
    }
}

#[tokio::test]
async fn server_errors_then_success() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"n": 1})))
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock).build().unwrap();
    let v: Value = http.get_json("/x", &[]).await.unwrap();
    assert_eq!(v["n"], 1);
    assert_eq!(hits(&server).await, 3);
    // Exponential backoff without jitter: 10 ms, then 20 ms.
    assert_eq!(
        clock.sleeps(),
        vec![Duration::from_millis(10), Duration::from_millis(20)]
    );
    let s = http.stats().snapshot();
    assert_eq!((s.server_error, s.success, s.retries), (2, 1, 2));
}

#[tokio::test]
async fn total_time_bound_stops_retrying() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", "1"))
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock)
        .retry(RetryConfig {
            max_attempts: 100,
            max_elapsed: Duration::from_secs(3),
            ..fast_retry(100)
        })
        .build()
        .unwrap();
    let e = http.get_json::<Value>("/x", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Upstream);
    assert!(e.is_temporary());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    assert!(
        clock.total_slept() <= Duration::from_secs(3),
        "{:?}",
        clock.sleeps()
    );
    assert_eq!(clock.sleeps(), vec![Duration::from_secs(1); 3]);
    assert_eq!(hits(&server).await, 4);
}

#[tokio::test]
async fn rate_limit_hint_beyond_budget_stops_at_once() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "600"))
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock).build().unwrap();
    let e = http.get_json::<Value>("/x", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(600)));
    assert!(e.is_temporary());
    assert!(clock.sleeps().is_empty());
    assert_eq!(hits(&server).await, 1);
}

#[tokio::test]
async fn timeouts_are_retried_only_when_idempotent() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(400)))
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock)
        .retry(fast_retry(3))
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();

    let e = http.get_json::<Value>("/get", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Network);
    assert!(e.is_temporary());
    assert_eq!(hits(&server).await, 3);

    server.reset().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(400)))
        .mount(&server)
        .await;
    let e = http
        .request_json::<Value>(Method::POST, "/post", Some(&json!({"a": 1})))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Network);
    assert_eq!(e.context_value("method"), Some("POST"));
    assert_eq!(hits(&server).await, 1);

    server.reset().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(400)))
        .mount(&server)
        .await;
    let rb = http
        .request(Method::POST, "/post")
        .unwrap()
        .header("idempotency-key", "k1")
        .with_extension(Idempotent)
        .json(&json!({"a": 1}));
    let e = http.send_json::<Value>(rb).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Network);
    assert_eq!(hits(&server).await, 3);
}

#[tokio::test]
async fn connect_errors_are_retried() {
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let clock = Arc::new(RecordingClock::new());
    let http = client(format!("http://127.0.0.1:{port}"))
        .clock(clock.clone())
        .retry(fast_retry(3))
        .build()
        .unwrap();
    let e = http.get_bytes("/x", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Network);
    assert!(e.is_temporary());
    assert_eq!(clock.sleeps().len(), 2);
    assert_eq!(http.stats().snapshot().transport_errors, 3);
}

/// Credentials that count calls: "old" until a refresh, then "new".
#[derive(Debug, Default)]
struct CountingCredentials {
    authorizations: AtomicUsize,
    refreshes: AtomicUsize,
}

#[async_trait]
impl Credentials for CountingCredentials {
    async fn authorization(&self) -> Result<HeaderValue> {
        self.authorizations.fetch_add(1, Ordering::SeqCst);
        let v = if self.refreshes.load(Ordering::SeqCst) == 0 {
            "Bearer old"
        } else {
            "Bearer new"
        };
        let mut v = HeaderValue::from_static(v);
        v.set_sensitive(true);
        Ok(v)
    }

    async fn refresh_after_unauthorized(&self, rejected: &HeaderValue) -> Result<bool> {
        assert_eq!(rejected, "Bearer old");
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }
}

#[tokio::test]
async fn unauthorized_refreshes_once_and_retries_once() {
    let server = MockServer::start().await;
    Mock::given(header("authorization", "Bearer new"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"me": 1})))
        .mount(&server)
        .await;
    Mock::given(header("authorization", "Bearer old"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    let creds = Arc::new(CountingCredentials::default());
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock)
        .credentials(creds.clone())
        .build()
        .unwrap();
    let v: Value = http.get_json("/me", &[]).await.unwrap();
    assert_eq!(v["me"], 1);
    assert_eq!(creds.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(creds.authorizations.load(Ordering::SeqCst), 2);
    assert_eq!(hits(&server).await, 2);
    assert_eq!(http.stats().snapshot().auth_refreshes, 1);
}

#[tokio::test]
async fn second_unauthorized_is_unauthenticated() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"message": "token revoked"})))
        .mount(&server)
        .await;
    let creds = Arc::new(CountingCredentials::default());
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock)
        .credentials(creds.clone())
        .build()
        .unwrap();
    let e = http.get_json::<Value>("/me", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    assert!(!e.is_temporary());
    assert_eq!(creds.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(hits(&server).await, 2);
    assert!(
        clock.sleeps().is_empty(),
        "a 401 is not retried by the retry layer"
    );
}

/// Credentials whose grant is gone.
#[derive(Debug)]
struct RevokedCredentials;

#[async_trait]
impl Credentials for RevokedCredentials {
    async fn authorization(&self) -> Result<HeaderValue> {
        Err(Error::new(ErrorKind::Unauthenticated, "invalid_grant: re-authorize").permanent())
    }

    async fn refresh_after_unauthorized(&self, _: &HeaderValue) -> Result<bool> {
        Ok(false)
    }
}

#[tokio::test]
async fn credential_errors_are_returned_as_they_are() {
    let server = MockServer::start().await;
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock)
        .credentials(Arc::new(RevokedCredentials))
        .build()
        .unwrap();
    let e = http.get_json::<Value>("/me", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    assert!(e.message().contains("invalid_grant"));
    assert!(e.context_value("url").is_some());
    assert_eq!(hits(&server).await, 0);
    assert!(clock.sleeps().is_empty());
}

#[derive(Debug)]
struct FrontLike;

impl PlatformPolicy for FrontLike {
    fn api_hosts(&self) -> Vec<String> {
        vec!["*.api.frontapp.com".into()]
    }
}

#[tokio::test]
async fn follow_url_host_policy() {
    let http = client("https://api2.frontapp.com")
        .policy(Arc::new(FrontLike))
        .build()
        .unwrap();
    let ok = http
        .follow_url("https://acme.api.frontapp.com/conversations?page_token=abc")
        .unwrap();
    assert_eq!(ok.host_str(), Some("acme.api.frontapp.com"));
    assert!(
        http.follow_url("https://api2.frontapp.com/x?page=2")
            .is_ok()
    );
    assert_eq!(
        http.follow_url("/x?page=2").unwrap().as_str(),
        "https://api2.frontapp.com/x?page=2"
    );

    let e = http
        .follow_url("https://evil.example.com/steal?token=SECRETQ")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    assert!(!e.is_temporary());
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("evil.example.com"), "{shown}");
    assert!(!shown.contains("SECRETQ"), "{shown}");

    let e = http
        .follow_url("http://acme.api.frontapp.com/x")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    assert!(
        http.follow_url("https://api.frontapp.com.evil.io/")
            .is_err()
    );

    // Hosts added at run time apply to every clone.
    let clone = http.clone();
    assert!(clone.follow_url("https://acme.my.salesforce.com/").is_err());
    http.add_api_host("acme.my.salesforce.com").unwrap();
    assert!(clone.follow_url("https://acme.my.salesforce.com/").is_ok());
    assert_eq!(
        http.add_api_host("*.com").unwrap_err().kind(),
        ErrorKind::Config
    );
}

#[tokio::test]
async fn full_urls_in_helpers_go_through_the_host_policy() {
    let server = MockServer::start().await;
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock).build().unwrap();
    let e = http
        .get_json::<Value>("https://elsewhere.example.com/x", &[])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    assert_eq!(hits(&server).await, 0);
    let e = http.get_json::<Value>("relative/x", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn redirects_never_leave_the_allowed_hosts() {
    let server = MockServer::start().await;
    let other = format!("http://localhost:{}/landing", server.address().port());
    Mock::given(path("/away"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", other.as_str()))
        .mount(&server)
        .await;
    Mock::given(path("/here"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/landing"))
        .mount(&server)
        .await;
    Mock::given(path("/landing"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"landed": true})))
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock).build().unwrap();
    let v: Value = http.get_json("/here", &[]).await.unwrap();
    assert_eq!(v["landed"], true);
    let e = http.get_json::<Value>("/away", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    assert!(!e.is_temporary());
    assert!(e.to_string().contains("localhost"), "{e}");
    assert!(clock.sleeps().is_empty());
}

#[tokio::test]
async fn a_429_on_one_clone_pauses_the_others() {
    let server = MockServer::start().await;
    Mock::given(path("/a"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "2"))
        .mount(&server)
        .await;
    Mock::given(path("/b"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let gate = RateGate::per_second(1000)
        .unwrap()
        .with_clock(clock.clone());
    let a = builder(&server, &clock)
        .rate_gate(gate.clone())
        .retry(RetryConfig::none())
        .build()
        .unwrap();
    // Another clone of the same client, and another client of the same account.
    let a2 = a.clone();
    let b = builder(&server, &clock).rate_gate(gate).build().unwrap();

    let e = a.get_json::<Value>("/a", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
    assert!(clock.sleeps().is_empty());

    let _: Value = a2.get_json("/b", &[]).await.unwrap();
    assert_eq!(clock.sleeps(), vec![Duration::from_secs(2)]);
    let _: Value = b.get_json("/b", &[]).await.unwrap();
    assert_eq!(
        clock.sleeps(),
        vec![Duration::from_secs(2)],
        "the pause is over"
    );
    assert_eq!(a.stats().snapshot().gate_wait, Duration::from_secs(2));
}

#[tokio::test]
async fn proactive_gate_waits_for_the_reset() {
    let server = MockServer::start().await;
    Mock::given(path("/x"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-ratelimit-limit", "100")
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header("x-ratelimit-reset", "2")
                .set_body_json(json!({})),
        )
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let gate = RateGate::unlimited().with_clock(clock.clone());
    let http = builder(&server, &clock).rate_gate(gate).build().unwrap();
    let _: Value = http.get_json("/x", &[]).await.unwrap();
    assert!(clock.sleeps().is_empty());
    let _: Value = http.get_json("/x", &[]).await.unwrap();
    assert_eq!(clock.sleeps(), vec![Duration::from_secs(2)]);
    let s = http.stats().snapshot();
    assert_eq!(s.rate_limited, 0);
    assert_eq!(s.gate_wait, Duration::from_secs(2));
}

#[tokio::test]
async fn malformed_json_is_a_permanent_invalid_response() {
    let server = MockServer::start().await;
    Mock::given(path("/bad"))
        .respond_with(ResponseTemplate::new(200).set_body_raw("{\"a\": nope}", "application/json"))
        .mount(&server)
        .await;
    Mock::given(path("/cut"))
        .respond_with(ResponseTemplate::new(200).set_body_raw("{\"a\": [1, 2", "application/json"))
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock).build().unwrap();
    let e = http.get_json::<Value>("/bad", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    assert!(!e.is_temporary());
    assert_eq!(e.context_value("status"), Some("200"));
    let e = http.get_json::<Value>("/cut", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    assert!(e.is_temporary());
}

/// A raw HTTP server that promises more body than it sends, then closes.
async fn truncating_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let body = b"{\"records\": [1, 2,";
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len() + 100
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn truncated_body_is_a_temporary_invalid_response() {
    let base = truncating_server().await;
    let clock = Arc::new(RecordingClock::new());
    let http = client(base)
        .clock(clock.clone())
        .retry(fast_retry(3))
        .build()
        .unwrap();
    let e = http.get_json::<Value>("/x", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
    assert!(e.is_temporary());
    let e = http.get_bytes("/x", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
    assert!(e.is_temporary());
    let mut lines = http.get_lines("/x", &[]).await.unwrap();
    let first = lines.next().await.unwrap().unwrap_err();
    assert_eq!(first.kind(), ErrorKind::InvalidResponse);
    assert!(first.is_temporary());
    assert!(lines.next().await.is_none());
}

#[tokio::test]
async fn bodies_over_the_cap_are_refused() {
    let server = MockServer::start().await;
    Mock::given(path("/big"))
        .respond_with(ResponseTemplate::new(200).set_body_string("x".repeat(2000)))
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock)
        .max_body_bytes(1000)
        .build()
        .unwrap();
    let e = http.get_bytes("/big", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    assert!(!e.is_temporary());
    let mut lines = http.get_lines("/big", &[]).await.unwrap();
    let e = lines.next().await.unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
}

#[tokio::test]
async fn get_lines_streams_json_lines() {
    let server = MockServer::start().await;
    Mock::given(path("/export"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            "{\"id\":1}\r\n\n{\"id\":2}\n{\"id\":3}",
            "application/x-ndjson",
        ))
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock).build().unwrap();
    let lines: Vec<String> = http
        .get_lines("/export", &[("from", "2024-01-01".to_string())])
        .await
        .unwrap()
        .map(|l| l.unwrap())
        .collect()
        .await;
    assert_eq!(lines, vec!["{\"id\":1}", "{\"id\":2}", "{\"id\":3}"]);
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs[0].url.query(), Some("from=2024-01-01"));
}

#[tokio::test]
async fn base_path_is_kept_and_query_appended() {
    let server = MockServer::start().await;
    Mock::given(path("/crm/v3/objects/contacts"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"results": []})))
        .expect(1)
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let http = client(format!("{}/crm/v3/", server.uri()))
        .credentials(Arc::new(StaticToken::bearer(TOKEN)))
        .clock(clock)
        .build()
        .unwrap();
    let v: Value = http
        .get_json(
            "/objects/contacts",
            &[("limit", "100".into()), ("after", "a b".into())],
        )
        .await
        .unwrap();
    assert_eq!(v, json!({"results": []}));
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs[0].url.query(), Some("limit=100&after=a+b"));
}

#[tokio::test]
async fn request_json_sends_the_body_and_accepts_no_content() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path("/obj/1"))
        .and(wiremock::matchers::body_json(json!({"name": "x"})))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock).build().unwrap();
    http.request_json::<()>(Method::PATCH, "/obj/1", Some(&json!({"name": "x"})))
        .await
        .unwrap();
}

#[test]
fn builder_validates_its_input() {
    for bad in [
        "not a url",
        "http://api.example.com",
        "ftp://127.0.0.1",
        "https://u:p@api.example.com",
        "https://api.example.com/?key=1",
    ] {
        let e = client(bad).build().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{bad}");
        assert!(!e.to_string().contains("key=1"));
    }
    let e = client("https://api.example.com")
        .extra_api_hosts(["*.com"])
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let e = client("https://api.example.com")
        .retry(RetryConfig {
            max_attempts: 0,
            ..RetryConfig::default()
        })
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let e = client("https://api.example.com")
        .user_agent("bad\nagent")
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(client("http://localhost:8080").build().is_ok());
    assert!(client("http://[::1]:8080").build().is_ok());
}

/// A minimal tracing subscriber that writes span fields and events into a buffer.
mod capture {
    use std::fmt::{self, Write as _};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    #[derive(Clone, Default)]
    pub(crate) struct Capture {
        pub(crate) out: Arc<Mutex<String>>,
        next: Arc<AtomicU64>,
    }

    struct Writer<'a>(&'a mut String);

    impl Visit for Writer<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            let _ = write!(self.0, " {}={:?}", field.name(), value);
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &Attributes<'_>) -> Id {
            let mut out = self.out.lock().unwrap();
            let _ = write!(out, "\nspan {}", span.metadata().name());
            span.record(&mut Writer(&mut out));
            Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
        }
        fn record(&self, _: &Id, values: &Record<'_>) {
            let mut out = self.out.lock().unwrap();
            out.push_str("\nrecord");
            values.record(&mut Writer(&mut out));
        }
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut out = self.out.lock().unwrap();
            out.push_str("\nevent");
            event.record(&mut Writer(&mut out));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}

#[tokio::test]
async fn no_secret_in_debug_errors_or_traces() {
    let server = MockServer::start().await;
    Mock::given(path("/fail"))
        .respond_with(
            ResponseTemplate::new(403)
                .insert_header("x-echo", TOKEN)
                .set_body_json(json!({"message": "forbidden"})),
        )
        .mount(&server)
        .await;
    Mock::given(path("/ok"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path("/ok"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .mount(&server)
        .await;
    let capture = traces();

    let clock = Arc::new(RecordingClock::new());
    let b = builder(&server, &clock).policy(Arc::new(DefaultPolicy));
    let builder_debug = format!("{b:?}");
    let http = b.build().unwrap();
    let client_debug = format!("{http:?}");
    let secret_query = [("api_key", format!("q-{TOKEN}"))];
    let _: Value = http.get_json("/ok", &secret_query).await.unwrap();
    let e = http
        .get_json::<Value>("/fail", &secret_query)
        .await
        .unwrap_err();
    let error_shown = format!("{e} {e:?}");
    let truncated = client(truncating_server().await)
        .credentials(Arc::new(StaticToken::bearer(TOKEN)))
        .clock(clock.clone())
        .build()
        .unwrap();
    let e2 = truncated
        .get_json::<Value>("/x", &secret_query)
        .await
        .unwrap_err();
    let error2_shown = format!("{e2} {e2:?}");
    let traces = capture.out.lock().unwrap().clone();

    assert!(traces.contains("http.attempt"), "{traces}");
    assert!(traces.contains("http.request"), "{traces}");
    assert!(traces.contains("attempt=2"), "{traces}");
    assert!(traces.contains("path=\"/ok\""), "{traces}");
    assert!(traces.contains("status=500"), "{traces}");
    for (what, text) in [
        ("builder Debug", &builder_debug),
        ("client Debug", &client_debug),
        ("error", &error_shown),
        ("body error", &error2_shown),
        ("traces", &traces),
    ] {
        assert!(
            !text.contains("SUPERSECRET"),
            "{what} leaks the token: {text}"
        );
        assert!(!text.contains("api_key"), "{what} leaks the query: {text}");
    }
    assert!(error_shown.contains("forbidden"));
}
