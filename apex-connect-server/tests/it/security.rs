//! Issue 9, security: the admin API lives on its own listener behind a bearer token (or
//! loopback only), and the webhook listener holds up against slow, many, large and
//! concurrent clients while valid webhooks keep being answered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apex_connect_core::engine::CancellationToken;
use apex_connect_core::platform::Platforms;
use apex_connect_core::store::EncryptionKey;
use apex_connect_core::{ErrorKind, Op};
use apex_connect_server::cli::{Cli, Runner};
use apex_connect_server::listener::HttpLimits;
use apex_connect_server::{
    ADMIN_TOKEN_ENV, AdminAuth, App, ConnectionHandle, Environment, ServerConfig, ServerState,
    admin_router, webhook_router,
};
use apex_connect_testkit::platform::MemoryPlatform;
use axum::extract::ConnectInfo;
use clap::Parser;
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

use crate::common::*;

const TOKEN: &str = "admin-token-0123456789abcdef";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn platforms() -> Platforms {
    Platforms::new().with(Arc::new(MemoryPlatform))
}

fn config(listen: &str, admin: &str) -> ServerConfig {
    ServerConfig::parse(&format!(
        r#"
store = "memory:"
listen = "{listen}"
admin_listen = "{admin}"
[[connection]]
id = "acme"
platform = "memory"
streams = ["items"]
"#
    ))
    .unwrap()
}

/// Waits until something answers HTTP at `url`.
async fn wait_up(client: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(url).send().await.is_err() {
        assert!(Instant::now() < deadline, "{url} did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_the_admin_api_off_the_webhook_listener_and_behind_its_token() {
    let (port, admin_port) = (free_port(), free_port());
    let env = Environment::from_map([(ADMIN_TOKEN_ENV, TOKEN)]);
    let app = App::open_with(
        config(
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{admin_port}"),
        ),
        &platforms(),
        EncryptionKey::from_bytes([1; 32]),
        &env,
    )
    .await
    .unwrap();
    assert!(
        !format!("{app:?}").contains(TOKEN),
        "the token is never in Debug"
    );
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(app.serve(shutdown.clone()));
    let client = reqwest::Client::new();
    let (hooks, admin) = (
        format!("http://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{admin_port}"),
    );
    wait_up(&client, &format!("{admin}/metrics")).await;
    wait_up(&client, &format!("{hooks}/")).await;

    // Nothing of the admin API on the webhook listener, token or not.
    for path in ["/admin/status", "/admin/rejects", "/metrics"] {
        let r = client
            .get(format!("{hooks}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path} on the webhook listener");
    }
    let r = client
        .post(format!("{hooks}/admin/dead-letters/1/retry"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // On the admin listener: 401 without the token or with a wrong one, 200 with it;
    // /metrics is behind the same token.
    for path in ["/admin/status", "/admin/rejects", "/metrics"] {
        let url = format!("{admin}{path}");
        let none = client.get(&url).send().await.unwrap();
        assert_eq!(none.status(), 401, "{path} without a token");
        assert_eq!(none.headers()["www-authenticate"], "Bearer");
        let wrong = client
            .get(&url)
            .bearer_auth("admin-token-0123456789abcdeX")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
        let short = client.get(&url).bearer_auth("admin").send().await.unwrap();
        assert_eq!(short.status(), 401, "{path} with a prefix of the token");
        let basic = client
            .get(&url)
            .basic_auth("admin", Some(TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(basic.status(), 401, "{path} with basic auth");
        let ok = client.get(&url).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(ok.status(), 200, "{path} with the token");
    }
    let retry = format!("{admin}/admin/dead-letters/1/retry");
    assert_eq!(client.post(&retry).send().await.unwrap().status(), 401);
    assert_eq!(
        client
            .post(&retry)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "authorized, but no such dead letter"
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), served)
        .await
        .expect("serve stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn without_a_token_the_admin_api_answers_loopback_peers_only() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = sqlite(dir.path(), &clock).await;
    let state = ServerState::builder(dyn_store(&store)).build();
    let router = admin_router(state.clone(), AdminAuth::loopback_only());
    let request = |peer: Option<SocketAddr>| {
        let mut r = http::Request::get("/admin/status")
            .body(axum::body::Body::empty())
            .unwrap();
        if let Some(peer) = peer {
            r.extensions_mut().insert(ConnectInfo(peer));
        }
        r
    };
    let status = |r: http::Response<axum::body::Body>| r.status().as_u16();
    let loopback: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let mapped: SocketAddr = "[::ffff:127.0.0.1]:50000".parse().unwrap();
    let remote: SocketAddr = "10.1.2.3:50000".parse().unwrap();
    let call = |peer| router.clone().oneshot(request(peer));
    assert_eq!(status(call(Some(loopback)).await.unwrap()), 200);
    assert_eq!(status(call(Some(mapped)).await.unwrap()), 200);
    assert_eq!(status(call(Some(remote)).await.unwrap()), 403);
    assert_eq!(
        status(call(None).await.unwrap()),
        403,
        "no peer address: refused"
    );
    // Over a real loopback socket through the listener `serve` uses.
    let admin = serve_admin(state).await;
    let r = reqwest::get(format!("{admin}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    let auth = AdminAuth::token(SecretString::from(TOKEN));
    assert!(
        !format!("{auth:?}").contains(TOKEN),
        "the token is never in Debug"
    );
    // A token, when set, is required even from loopback.
    let guarded = admin_router(
        ServerState::builder(dyn_store(&store)).build(),
        AdminAuth::token(SecretString::from(TOKEN)),
    );
    assert_eq!(
        status(guarded.oneshot(request(Some(loopback))).await.unwrap()),
        401
    );
}

#[tokio::test]
async fn serve_refuses_a_public_admin_address_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apex-connect.toml");
    let (port, admin_port) = (free_port(), free_port());
    std::fs::write(
        &path,
        format!(
            "store = \"memory:\"\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"0.0.0.0:{admin_port}\"\n"
        ),
    )
    .unwrap();
    let cli = || {
        Cli::try_parse_from(["apex-connect", "serve", "--config", path.to_str().unwrap()]).unwrap()
    };
    let runner = Runner::new(platforms()).with_env(Environment::from_map([("X", "y")]));
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        runner.run(cli(), &mut std::io::sink()),
    )
    .await
    .expect("refused at once, not served")
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains(ADMIN_TOKEN_ENV), "{e}");
    assert!(format!("{e:?}").contains("admin_listen"), "{e:?}");

    // A token that is too short is refused too (and never echoed).
    let app = App::open_with(
        config(
            &format!("127.0.0.1:{port}"),
            &format!("0.0.0.0:{admin_port}"),
        ),
        &platforms(),
        EncryptionKey::from_bytes([1; 32]),
        &Environment::from_map([(ADMIN_TOKEN_ENV, "hunter2")]),
    )
    .await
    .unwrap();
    let e = app.serve(CancellationToken::new()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(!format!("{e:?}{e}").contains("hunter2"));

    // With a token, a public admin address is accepted.
    let app = App::open_with(
        config(
            &format!("127.0.0.1:{port}"),
            &format!("0.0.0.0:{admin_port}"),
        ),
        &platforms(),
        EncryptionKey::from_bytes([1; 32]),
        &Environment::from_map([(ADMIN_TOKEN_ENV, TOKEN)]),
    )
    .await
    .unwrap();
    assert!(app.admin_auth().unwrap().has_token());
    app.store.close().await;

    // Commands other than `serve` do not care about the admin listener.
    let mut out = Vec::new();
    let status = Cli::try_parse_from([
        "apex-connect",
        "status",
        "--json",
        "--config",
        path.to_str().unwrap(),
    ])
    .unwrap();
    runner.run(status, &mut out).await.unwrap();
    assert!(String::from_utf8(out).unwrap().contains("\"inbox\""));
}

/// A webhook state on the manual clock, served through the hardened listener with `limits`.
async fn webhooks(limits: HttpLimits) -> (tempfile::TempDir, ManualClock, String) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = sqlite(dir.path(), &clock).await;
    let state = ServerState::builder(dyn_store(&store))
        .clock(clock.clock())
        .body_limit(4096)
        .connection(ConnectionHandle::new("acme", Arc::new(memory())))
        .build();
    let base = serve_router(webhook_router(state), limits).await;
    (dir, clock, base)
}

async fn post_signed(client: &reqwest::Client, base: &str, clock: &ManualClock, id: &str) -> u16 {
    let (h, b) = signed(&memory(), id, id, Op::Delete, clock.now());
    client
        .post(format!("{base}/webhooks/memory/acme"))
        .headers(h)
        .body(b)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Reads until the server closes the connection (EOF or reset) or `within` passes; returns
/// whether it was closed, and what it sent.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> (bool, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (false, got),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn limits() -> HttpLimits {
    let mut l = HttpLimits::default();
    l.header_read_timeout = Duration::from_millis(600);
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_connections_are_closed_while_webhooks_are_answered() {
    let mut l = limits();
    l.header_read_timeout = Duration::from_secs(2);
    let (_dir, clock, base) = webhooks(l).await;
    let addr = base.trim_start_matches("http://").to_string();
    let opened = Instant::now();
    // 300 connections: half send a partial request head and stall, half send nothing.
    let mut slow = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 0 {
            s.write_all(b"POST /webhooks/memory/acme HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
        }
        slow.push(s);
    }
    // A valid signed webhook is answered promptly meanwhile.
    let client = reqwest::Client::new();
    let t = Instant::now();
    assert_eq!(post_signed(&client, &base, &clock, "msg_1").await, 200);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(1), "webhook took {took:?}");
    // One more byte from a slow client does not restart its clock.
    slow[0].write_all(b"a").await.unwrap();
    // Every slow connection is closed after the header-read timeout, none long before it.
    let mut earliest = None;
    for s in &mut slow {
        let (closed, _) = closed_within(s, Duration::from_secs(5)).await;
        assert!(closed, "a slow connection was kept open");
        earliest.get_or_insert(opened.elapsed());
    }
    let earliest = earliest.unwrap();
    assert!(
        earliest >= Duration::from_millis(1900),
        "closed after {earliest:?}, before the timeout"
    );
    assert!(
        opened.elapsed() < Duration::from_secs(6),
        "{:?}",
        opened.elapsed()
    );
    // And the listener still serves.
    assert_eq!(post_signed(&client, &base, &clock, "msg_2").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_once() {
    let mut l = limits();
    l.header_read_timeout = Duration::from_secs(30);
    l.max_connections = 4;
    let (_dir, clock, base) = webhooks(l).await;
    let addr = base.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    // Let the server accept them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(&addr).await.unwrap();
    let t = Instant::now();
    let (closed, got) = closed_within(&mut extra, Duration::from_secs(2)).await;
    assert!(closed && got.is_empty(), "the fifth connection was served");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // A slot freed is a slot usable.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = reqwest::Client::new();
    assert_eq!(post_signed(&client, &base, &clock, "msg_1").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_concurrency_limit_requests_get_503_with_retry_after() {
    let mut l = limits();
    l.max_concurrent_requests = 1;
    l.retry_after = Duration::from_secs(2);
    let (_dir, clock, base) = webhooks(l).await;
    let addr = base.trim_start_matches("http://").to_string();
    // One request in flight: its head is read, its body is still coming.
    let mut inflight = TcpStream::connect(&addr).await.unwrap();
    inflight
        .write_all(
            b"POST /webhooks/memory/acme HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{\"a\":",
        )
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let shed = loop {
        let (h, b) = signed(&memory(), "msg_1", "a", Op::Delete, clock.now());
        let r = client
            .post(format!("{base}/webhooks/memory/acme"))
            .headers(h)
            .body(b)
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            break r;
        }
        assert!(Instant::now() < deadline, "never shed: {}", r.status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(shed.headers()["retry-after"], "2");
    assert_eq!(shed.text().await.unwrap(), r#"{"status":"overloaded"}"#);
    // The request in flight finishes (a body that is not signed: 401); then there is room.
    inflight.write_all(b"123456789012345").await.unwrap();
    let mut head = [0u8; 12];
    inflight.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 401");
    assert_eq!(post_signed(&client, &base, &clock, "msg_2").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_not_finished_in_time_gets_503_with_retry_after() {
    let mut l = limits();
    l.request_timeout = Duration::from_millis(300);
    let (_dir, _clock, base) = webhooks(l).await;
    let addr = base.trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let t = Instant::now();
    s.write_all(b"POST /webhooks/memory/acme HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{")
        .await
        .unwrap();
    let (_, got) = closed_within(&mut s, Duration::from_secs(3)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(text.contains(r#"{"status":"timeout"}"#), "{text}");
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn oversized_headers_get_431_and_oversized_bodies_413() {
    let mut l = limits();
    l.max_header_bytes = 4096;
    l.max_headers = 20;
    let (_dir, clock, base) = webhooks(l).await;
    let client = reqwest::Client::new();
    let url = format!("{base}/webhooks/memory/acme");
    let (h, b) = signed(&memory(), "msg_1", "a", Op::Delete, clock.now());
    let big = client
        .post(&url)
        .headers(h.clone())
        .header("x-padding", "p".repeat(8 * 1024))
        .body(b.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 431);
    let mut many = client.post(&url).headers(h.clone());
    for i in 0..30 {
        many = many.header(format!("x-h{i}"), "v");
    }
    assert_eq!(many.body(b.clone()).send().await.unwrap().status(), 431);
    // The body limit (4 KiB here, 1 MiB by default).
    let (h2, _) = signed(&memory(), "msg_2", "b", Op::Delete, clock.now());
    let r = client
        .post(&url)
        .headers(h2)
        .body(vec![b' '; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Within the limits: accepted.
    assert_eq!(post_signed(&client, &base, &clock, "msg_3").await, 200);
}
