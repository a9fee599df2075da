// Integration tests of the HTTP stack against wiremock (and a raw TCP listener) on loopback.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use apex_connect_core::http::{
    Credentials, DefaultPolicy, HttpClient, HttpClientBuilder, IdempotencyExt, IdempotencyKey,
    Idempotent, MAX_RETRY_HINT, PlatformPolicy, RateGate, RecordingClock, RetryConfig, StaticToken,
    path_segment,
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
    // A third wait would end exactly at the budget, leaving no time for a fourth attempt.
    assert_eq!(clock.sleeps(), vec![Duration::from_secs(1); 2]);
    assert_eq!(hits(&server).await, 3);
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
    // A link that is not an absolute http(s) URL is never joined onto the base URL.
    for (link, shown) in [
        ("/x?page=2", "/x?…"),
        ("mollit ad anim", "mollit ad anim"),
        ("x/y?token=SECRETQ", "x/y?…"),
        ("//evil.example.com/x", "//evil.example.com/x"),
        ("", ""),
        ("javascript:alert(1)", "javascript:alert(1)"),
        ("mailto:a@b.c", "mailto:a@b.c"),
        ("ftp://api2.frontapp.com/x", "ftp://api2.frontapp.com/x"),
    ] {
        let e = http.follow_url(link).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{link:?}");
        assert!(!e.is_temporary(), "{link:?}");
        assert!(
            e.message().contains("not an absolute http(s) URL"),
            "{link:?}: {e}"
        );
        assert_eq!(e.context_value("link"), Some(shown), "{link:?}");
        assert!(!format!("{e} {e:?}").contains("SECRETQ"));
    }
    let e = http
        .follow_url("https://evil.example.com/steal?token=SECRETQ")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    assert!(!e.is_temporary());
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("evil.example.com"), "{shown}");
    assert!(!shown.contains("SECRETQ"), "{shown}");
    assert_eq!(
        e.context_value("link"),
        Some("https://evil.example.com/steal?…")
    );

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

#[tokio::test]
async fn ids_in_paths_are_one_encoded_segment() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock).build().unwrap();
    let id = "ad eu/x?y#z%+é";
    let _: Value = http
        .get_json(&format!("/contacts/{}", path_segment(id).unwrap()), &[])
        .await
        .unwrap();
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(
        reqs[0].url.path(),
        "/contacts/ad%20eu%2Fx%3Fy%23z%25%2B%C3%A9"
    );
    assert_eq!(reqs[0].url.query(), None);
}

/// A link to the API host on another port is a foreign origin: nothing (and no token)
/// reaches the second server, whichever way the link arrives.
#[tokio::test]
async fn links_to_another_port_are_foreign_and_get_no_token() {
    let api = MockServer::start().await;
    let other = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"stolen": true})))
        .mount(&other)
        .await;
    let other_port = other.address().port();
    let elsewhere = format!("http://127.0.0.1:{other_port}/conversations?page_token=2");
    let elsewhere_localhost = format!("http://localhost:{other_port}/conversations");
    Mock::given(path("/redirect"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", elsewhere.as_str()))
        .mount(&api)
        .await;
    let clock = Arc::new(RecordingClock::new());
    // `localhost` allowed as an extra host, as the Front tests do for company hosts.
    let http = builder(&api, &clock)
        .extra_api_hosts(["localhost"])
        .build()
        .unwrap();

    // The API's own origin (and `localhost` on the API's port) still pass.
    let own = format!("http://127.0.0.1:{}/x", api.address().port());
    assert!(http.follow_url(&own).is_ok());
    let own_localhost = format!("http://localhost:{}/x", api.address().port());
    assert!(http.follow_url(&own_localhost).is_ok());

    for link in [&elsewhere, &elsewhere_localhost] {
        let e = http.follow_url(link).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{link}");
        assert!(!e.is_temporary());
        assert!(e.message().contains("port"), "{e}");
        assert!(e.context_value("link").is_some());
        let e = http.get_json::<Value>(link, &[]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{link}");
    }
    // A redirect there is refused.
    let e = http.get_json::<Value>("/redirect", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    // Even the raw middleware client never attaches the token to that origin.
    let e = http
        .middleware_client()
        .get(&elsewhere)
        .send()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("refusing"), "{e}");

    assert_eq!(hits(&other).await, 0, "the other port got a request");
    assert_eq!(hits(&api).await, 1, "only the redirect reached the API");
}

/// A raw server that accepts connections, reads the request, and never answers. Counts
/// the requests it read.
async fn silent_server() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                // Hold the connection open without a byte of response.
                let _ = sock.read(&mut buf).await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test(start_paused = true)]
async fn a_server_that_never_sends_headers_hits_the_headers_timeout() {
    let (base, seen) = silent_server().await;
    let clock = Arc::new(RecordingClock::new());
    let http = client(base)
        .clock(clock.clone())
        .retry(fast_retry(3))
        .timeout(Duration::from_secs(3600))
        .connect_timeout(Duration::from_secs(3600))
        .headers_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let t0 = tokio::time::Instant::now();
    let e = http.get_json::<Value>("/x", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Network);
    assert!(e.is_temporary());
    assert!(e.message().contains("response headers"), "{e}");
    assert_eq!(e.context_value("headers_timeout_ms"), Some("30000"));
    // Idempotent: retried (virtual time: three attempts of 30 s each, not the hour).
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert!(
        t0.elapsed() < Duration::from_secs(3600),
        "{:?}",
        t0.elapsed()
    );

    // A POST may have been applied: not retried.
    let e = http
        .request_json::<Value>(Method::POST, "/create", Some(&json!({"a": 1})))
        .await
        .unwrap_err();
    assert!(e.message().contains("response headers"), "{e}");
    assert_eq!(seen.load(Ordering::SeqCst), 4);
}

/// A raw server that answers `status` after `delay` (tokio time), counting requests.
async fn slow_server(delay: Duration, status: u16) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match sock.read(&mut buf).await {
                        Ok(n) if n > 0 => {}
                        _ => return,
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    let head = format!("HTTP/1.1 {status} Oops\r\ncontent-length: 0\r\n\r\n");
                    if sock.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test(start_paused = true)]
async fn the_total_time_bound_holds_across_retries() {
    let (base, seen) = slow_server(Duration::from_secs(40), 503).await;
    let budget = Duration::from_secs(60);
    let http = client(base)
        .retry(RetryConfig {
            max_attempts: 10,
            max_elapsed: budget,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(1),
            factor: 2.0,
            jitter: false,
        })
        .timeout(Duration::from_secs(3600))
        .connect_timeout(Duration::from_secs(3600))
        .headers_timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let t0 = tokio::time::Instant::now();
    let e = http.get_json::<Value>("/x", &[]).await.unwrap_err();
    let elapsed = t0.elapsed();
    // Attempt 1 takes 40 s, the wait 1 s; attempt 2 is cut off at the budget.
    assert!(elapsed <= budget, "{elapsed:?}");
    assert_eq!(e.kind(), ErrorKind::Network);
    assert!(e.message().contains("retry time budget"), "{e}");
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_502_on_a_post_is_not_retried() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(502).set_body_json(json!({"message": "bad gateway"})))
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock).build().unwrap();
    let e = http
        .request_json::<Value>(
            Method::POST,
            "/objects/batch/create",
            Some(&json!({"a": 1})),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Upstream);
    assert_eq!(e.context_value("status"), Some("502"));
    assert_eq!(hits(&server).await, 1);
    assert!(clock.sleeps().is_empty());
    // PATCH is not idempotent either.
    let e = http
        .request_json::<Value>(Method::PATCH, "/objects/1", Some(&json!({"a": 1})))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Upstream);
    assert_eq!(hits(&server).await, 2);
}

#[tokio::test]
async fn a_429_on_a_post_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "2"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "c1"})))
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock).build().unwrap();
    let v: Value = http
        .request_json(Method::POST, "/comments", Some(&json!({"body": "hi"})))
        .await
        .unwrap();
    assert_eq!(v["id"], "c1");
    assert_eq!(hits(&server).await, 2);
    assert_eq!(clock.sleeps(), vec![Duration::from_secs(2)]);
}

#[tokio::test]
async fn a_post_with_an_idempotency_key_is_retried_with_the_same_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": "ch_1"})))
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock).build().unwrap();
    let key = IdempotencyKey::generate();
    let rb = http
        .request(Method::POST, "/charges")
        .unwrap()
        .idempotency_key(&key)
        .json(&json!({"amount": 1}));
    let v: Value = http.send_json(rb).await.unwrap();
    assert_eq!(v["id"], "ch_1");
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(
            r.headers.get("idempotency-key").map(|v| v.as_bytes()),
            Some(key.value().as_bytes())
        );
    }
    // A second write gets its own key.
    let other = IdempotencyKey::generate();
    assert_ne!(other.value(), key.value());
}

#[tokio::test]
async fn a_refused_connection_retries_a_post() {
    // Nothing was sent, so even a create may go again.
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
    let e = http
        .request_json::<Value>(Method::POST, "/create", Some(&json!({})))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Network);
    assert_eq!(http.stats().snapshot().transport_errors, 3);
    assert_eq!(clock.sleeps().len(), 2);
}

/// `Retry-After` from a hostile server: no panic, that request fails with a permanent
/// `RateLimited` naming the maximum wait, and the gate reopens after at most `max_wait`.
#[tokio::test]
async fn huge_retry_after_fails_that_request_and_reopens_the_gate() {
    for hint in ["18446744073709551615", "99999999", "1e300"] {
        let server = MockServer::start().await;
        Mock::given(path("/a"))
            .respond_with(ResponseTemplate::new(429).insert_header("retry-after", hint))
            .mount(&server)
            .await;
        Mock::given(path("/b"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": 1})))
            .mount(&server)
            .await;
        let clock = Arc::new(RecordingClock::new());
        let max_wait = Duration::from_secs(60);
        let gate = RateGate::unlimited()
            .with_clock(clock.clone())
            .with_max_wait(max_wait);
        let http = builder(&server, &clock)
            .rate_gate(gate.clone())
            .retry(RetryConfig {
                max_elapsed: Duration::from_secs(3 * 365 * 24 * 3600),
                ..fast_retry(5)
            })
            .build()
            .unwrap();
        let e = http.get_json::<Value>("/a", &[]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::RateLimited, "{hint}");
        assert!(!e.is_temporary(), "{hint}");
        assert_eq!(e.retry_after(), Some(MAX_RETRY_HINT), "{hint}");
        assert!(e.message().contains("maximum wait of 60 s"), "{e}");
        assert_eq!(e.context_value("status"), Some("429"));
        assert_eq!(hits(&server).await, 1, "{hint}: not retried");
        assert!(clock.sleeps().is_empty(), "{hint}");

        // The next request waits at most max_wait, then reaches the server.
        let v: Value = http.get_json("/b", &[]).await.unwrap();
        assert_eq!(v["ok"], 1);
        assert_eq!(clock.sleeps(), vec![max_wait], "{hint}");
        assert_eq!(hits(&server).await, 2);
    }

    // Without a gate the default maximum wait (15 minutes) applies.
    let server = MockServer::start().await;
    Mock::given(path("/a"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "99999999"))
        .mount(&server)
        .await;
    let clock = Arc::new(RecordingClock::new());
    let http = builder(&server, &clock).build().unwrap();
    let e = http.get_json::<Value>("/a", &[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert!(!e.is_temporary());
    assert!(e.message().contains("maximum wait of 900 s"), "{e}");
    assert_eq!(hits(&server).await, 1);
}

/// A raw server whose body never ends (chunked), or announces a huge length.
async fn endless_body_server(chunked: bool) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let count = written.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let head = if chunked {
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_string()
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000000000\r\n\r\n".to_string()
                };
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let data = vec![b' '; 16 * 1024];
                let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
                chunk.extend_from_slice(&data);
                chunk.extend_from_slice(b"\r\n");
                let piece = if chunked { &chunk } else { &data };
                while sock.write_all(piece).await.is_ok() {
                    count.fetch_add(piece.len(), Ordering::SeqCst);
                }
            });
        }
    });
    (format!("http://{addr}"), written)
}

#[tokio::test]
async fn endless_bodies_fail_at_the_cap_while_streaming() {
    for chunked in [true, false] {
        let (base, _written) = endless_body_server(chunked).await;
        let clock = Arc::new(RecordingClock::new());
        let http = client(base)
            .clock(clock)
            .retry(RetryConfig::none())
            .max_body_bytes(256 * 1024)
            .build()
            .unwrap();
        let e = http.get_json::<Value>("/x", &[]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse, "chunked={chunked}");
        assert!(!e.is_temporary());
        assert!(e.message().contains("exceeds the limit"), "{e}");
        let e = http.get_bytes("/x", &[]).await.unwrap_err();
        assert!(e.message().contains("exceeds the limit"), "{e}");
    }
}
