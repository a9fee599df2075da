//! OAuth client and token manager against the testkit's OAuth server, on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use apex_connect_core::http::{Credentials, RetryConfig};
use apex_connect_core::oauth::{
    CallbackParams, ClientAuth, ClientCredentialsRefresher, Clock, JwtAssertion,
    JwtBearerRefresher, OAuthClient, OAuthConfig, PkceVerifier, StateToken, TokenManager,
    TokenRefresher,
};
use apex_connect_core::store::{EncryptionKey, SqliteStore};
use apex_connect_core::{ConnectionId, ErrorKind, MemoryTokenStore, TokenSet, TokenStore};
use apex_connect_testkit::oauth_server::{ExpiryStyle, OAuthServer, OAuthServerConfig};
use apex_connect_testkit::sim::SimHandle;
use secrecy::ExposeSecret;

const CLIENT_ID: &str = "client-1";
const CLIENT_SECRET: &str = "secret-value-1";
const REDIRECT: &str = "http://127.0.0.1:9/callback";
const KEY_PEM: &[u8] = include_bytes!("fixtures/jwt_test_key.pem");
const PUB_PEM: &[u8] = include_bytes!("fixtures/jwt_test_key.pub.pem");

/// A wall clock that tests move forward by hand.
#[derive(Clone, Default)]
struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    fn clock(&self) -> Clock {
        let offset = self.0.clone();
        Arc::new(move || {
            SystemTime::now() + Duration::from_millis(offset.load(Ordering::SeqCst) as u64)
        })
    }

    fn reset(&self) {
        self.0.store(0, Ordering::SeqCst);
    }

    fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn serve(config: OAuthServerConfig) -> (OAuthServer, SimHandle) {
    let server = OAuthServer::new(config);
    let handle = server.spawn().await.unwrap();
    (server, handle)
}

fn oauth_config(handle: &SimHandle, id: &str, secret: &str) -> OAuthConfig {
    OAuthConfig::new(id, format!("{}/token", handle.base_url()))
        .with_client_secret(secret)
        .with_auth_url(format!("{}/authorize", handle.base_url()))
        .with_redirect_url(REDIRECT)
}

fn client(handle: &SimHandle, clock: &ManualClock) -> OAuthClient {
    OAuthClient::new(oauth_config(handle, CLIENT_ID, CLIENT_SECRET), http())
        .unwrap()
        .with_clock(clock.clock())
}

fn rt_of(t: &TokenSet) -> String {
    t.refresh_token
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_string()
}

fn manager(
    conn: &str,
    store: Arc<dyn TokenStore>,
    refresher: Arc<dyn TokenRefresher>,
    clock: &ManualClock,
    hook_calls: Arc<AtomicUsize>,
) -> Arc<TokenManager> {
    Arc::new(
        TokenManager::builder(ConnectionId::from(conn.to_string()), store, refresher)
            .clock(clock.clock())
            .poll_interval(Duration::from_millis(5))
            .on_reauth_needed(move |_: &ConnectionId| {
                hook_calls.fetch_add(1, Ordering::SeqCst);
            })
            .build(),
    )
}

/// Follows the simulated consent: GET the authorize URL, read code and state off the redirect.
async fn consent(url: &url::Url) -> CallbackParams {
    let resp = http().get(url.as_str()).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    let loc = url::Url::parse(&loc).unwrap();
    assert!(loc.as_str().starts_with(REDIRECT), "{loc}");
    let get = |k: &str| {
        loc.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("no {k} in {loc}"))
    };
    CallbackParams::new(get("code"), get("state"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_callers_across_an_expiry_cause_one_refresh() {
    let (server, handle) = serve(
        OAuthServerConfig::new(CLIENT_ID, CLIENT_SECRET)
            .with_rotation(true)
            .with_latency(Duration::from_millis(50)),
    )
    .await;
    let clock = ManualClock::default();
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    let conn = ConnectionId::from("c1");
    store
        .save(&conn, &server.issue_token_set(None), None)
        .await
        .unwrap();
    let hook = Arc::new(AtomicUsize::new(0));
    let m = manager(
        "c1",
        store.clone(),
        Arc::new(client(&handle, &clock)),
        &clock,
        hook.clone(),
    );

    let before = m.authorization().await.unwrap();
    assert_eq!(server.stats().token_requests, 0);
    clock.advance(Duration::from_secs(3600));

    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { m.authorization().await })
        })
        .collect();
    let mut headers = Vec::new();
    for t in tasks {
        headers.push(t.await.unwrap().unwrap());
    }
    let stats = server.stats();
    assert_eq!(stats.token_requests, 1, "{stats:?}");
    assert_eq!(stats.refresh_token, 1);
    assert!(headers.iter().all(|h| *h == headers[0]));
    assert_ne!(headers[0], before);
    assert!(server.validate_access_token(headers[0].to_str().unwrap()));
    // persisted before use, with the rotated refresh token
    let stored = store.load(&conn).await.unwrap().unwrap();
    assert_eq!(Some(rt_of(&stored.value)), server.latest_refresh_token());
    assert_eq!(hook.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_refresh_token_is_never_sent_again() {
    let (server, handle) =
        serve(OAuthServerConfig::new(CLIENT_ID, CLIENT_SECRET).with_rotation(true)).await;
    let clock = ManualClock::default();
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    let conn = ConnectionId::from("c1");
    store
        .save(&conn, &server.issue_token_set(None), None)
        .await
        .unwrap();
    let hook = Arc::new(AtomicUsize::new(0));
    let m = manager(
        "c1",
        store.clone(),
        Arc::new(client(&handle, &clock)),
        &clock,
        hook.clone(),
    );
    let mut seen = std::collections::HashSet::new();
    for round in 1..=5u64 {
        clock.advance(Duration::from_secs(3601));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let m = m.clone();
                tokio::spawn(async move { m.access_token().await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let stats = server.stats();
        assert_eq!(stats.refresh_token, round, "{stats:?}");
        assert_eq!(stats.reuse_detected, 0);
        let stored = rt_of(&store.load(&conn).await.unwrap().unwrap().value);
        assert_eq!(Some(stored.clone()), server.latest_refresh_token());
        assert!(seen.insert(stored), "refresh token did not rotate");
    }
    assert_eq!(server.stats().errors, 0);
    assert_eq!(hook.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_marks_reauth_once_with_one_request() {
    let (server, handle) = serve(OAuthServerConfig::new(CLIENT_ID, CLIENT_SECRET)).await;
    let clock = ManualClock::default();
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    let conn = ConnectionId::from("c1");
    store
        .save(&conn, &server.issue_token_set(None), None)
        .await
        .unwrap();
    let hook = Arc::new(AtomicUsize::new(0));
    let m = manager(
        "c1",
        store.clone(),
        Arc::new(client(&handle, &clock)),
        &clock,
        hook.clone(),
    );
    m.access_token().await.unwrap();

    server.revoke_all();
    clock.advance(Duration::from_secs(3600));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { m.authorization().await })
        })
        .collect();
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
        assert!(!e.is_temporary());
        assert_eq!(e.context_value("action"), Some("needs re-authorization"));
    }
    // later calls do not retry either
    assert_eq!(
        m.token().await.unwrap_err().kind(),
        ErrorKind::Unauthenticated
    );
    assert_eq!(server.stats().token_requests, 1);
    assert_eq!(hook.load(Ordering::SeqCst), 1);

    // re-authorization stores new tokens and revives the manager
    clock.reset();
    m.replace(server.issue_token_set(None)).await.unwrap();
    let h = m.authorization().await.unwrap();
    assert!(server.validate_access_token(h.to_str().unwrap()));
    assert_eq!(server.stats().token_requests, 1);
}

#[tokio::test]
async fn wrong_state_is_rejected_without_a_request() {
    let (server, handle) = serve(OAuthServerConfig::new(CLIENT_ID, CLIENT_SECRET)).await;
    let c = client(&handle, &ManualClock::default());
    let req = c.authorize_url().unwrap();
    let callback = consent(&req.url).await;
    let e = c
        .exchange_code(
            &callback,
            &StateToken::new("some-other-state"),
            &req.pkce_verifier,
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!(server.stats().token_requests, 0);
    // the right state still works with the same code
    let t = c
        .exchange_code(&callback, &req.state, &req.pkce_verifier)
        .await
        .unwrap();
    assert!(server.validate_access_token(t.access_token.expose_secret()));
}

#[tokio::test]
async fn code_exchange_with_pkce_and_a_wrong_verifier() {
    let (server, handle) = serve(
        OAuthServerConfig::new(CLIENT_ID, CLIENT_SECRET)
            .with_redirect_uri(REDIRECT)
            .with_expiry_style(ExpiryStyle::ExpiresAtMillis),
    )
    .await;
    let clock = ManualClock::default();
    let c = client(&handle, &clock);
    let req = c.authorize_url().unwrap();
    let q: std::collections::HashMap<_, _> = req.url.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(!req.url.as_str().contains(req.pkce_verifier.expose_secret()));
    let callback = consent(&req.url).await;
    let t = c
        .exchange_code(&callback, &req.state, &req.pkce_verifier)
        .await
        .unwrap();
    assert!(server.validate_access_token(t.access_token.expose_secret()));
    assert!(t.refresh_token.is_some());
    // Front-style expires_at in ms, about an hour from now
    let in_ms = t.expires_at_ms.unwrap() - apex_connect_core::webhook::unix_ms(SystemTime::now());
    assert!((3_500_000..=3_600_000).contains(&in_ms), "{in_ms}");

    let req2 = c.authorize_url().unwrap();
    let callback2 = consent(&req2.url).await;
    let wrong = PkceVerifier::new("x".repeat(64));
    let e = c
        .exchange_code(&callback2, &req2.state, &wrong)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert_eq!(e.context_value("oauth_error"), Some("invalid_grant"));
    assert_eq!(server.stats().authorization_code, 2);
}

#[tokio::test]
async fn basic_and_body_auth_with_reserved_characters() {
    let id = "id:with+plus% and space";
    let secret = "se:cr+et%25 with space";
    let (server, handle) = serve(OAuthServerConfig::new(id, secret)).await;
    for auth in [ClientAuth::Basic, ClientAuth::RequestBody] {
        let c = OAuthClient::new(
            oauth_config(&handle, id, secret).with_client_auth(auth),
            http(),
        )
        .unwrap();
        let req = c.authorize_url().unwrap();
        let callback = consent(&req.url).await;
        let t = c
            .exchange_code(&callback, &req.state, &req.pkce_verifier)
            .await
            .unwrap();
        assert!(
            server.validate_access_token(t.access_token.expose_secret()),
            "{auth:?}"
        );
        let refreshed = c.refresh(&t).await.unwrap();
        // rotation off: the answer has no refresh token, the old one is kept
        assert_eq!(rt_of(&refreshed), rt_of(&t));
        let cc = c.client_credentials(&[]).await.unwrap();
        assert!(server.validate_access_token(cc.access_token.expose_secret()));
    }
    let bad = OAuthClient::new(oauth_config(&handle, id, "not-the-secret"), http()).unwrap();
    let e = bad.client_credentials(&[]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(!e.is_temporary());
    assert!(!format!("{e} {e:?}").contains("not-the-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_grant_and_renewal() {
    let (server, handle) = serve(OAuthServerConfig::new(CLIENT_ID, CLIENT_SECRET)).await;
    let clock = ManualClock::default();
    let c = client(&handle, &clock);
    let t = c.client_credentials(&["read".to_string()]).await.unwrap();
    assert!(t.refresh_token.is_none());
    assert_eq!(t.scopes, vec!["read"]);
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    let conn = ConnectionId::from("cc");
    store.save(&conn, &t, None).await.unwrap();
    let refresher = Arc::new(ClientCredentialsRefresher::new(c, vec!["read".into()]));
    let m = manager(
        "cc",
        store,
        refresher,
        &clock,
        Arc::new(AtomicUsize::new(0)),
    );
    assert_eq!(
        m.access_token().await.unwrap().expose_secret(),
        t.access_token.expose_secret()
    );
    clock.advance(Duration::from_secs(3600));
    let h = m.authorization().await.unwrap();
    assert!(server.validate_access_token(h.to_str().unwrap()));
    assert_eq!(server.stats().client_credentials, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_grant() {
    let (server, handle) = serve(
        OAuthServerConfig::public(CLIENT_ID)
            .with_jwt_public_key(PUB_PEM)
            .with_access_ttl(None)
            .with_expiry_style(ExpiryStyle::None)
            .with_instance_url("https://na1.example.invalid"),
    )
    .await;
    let clock = ManualClock::default();
    let c = OAuthClient::new(
        OAuthConfig::new(CLIENT_ID, format!("{}/token", handle.base_url())),
        http(),
    )
    .unwrap();
    let assertion = JwtAssertion::from_rsa_pem(KEY_PEM, CLIENT_ID, "https://login.example.invalid")
        .unwrap()
        .subject("integration@example.invalid")
        .lifetime(Duration::from_secs(3600))
        .with_clock(clock.clock());
    let jwt = assertion.sign().unwrap();
    // exp is capped at three minutes
    let payload = jwt.expose_secret().split('.').nth(1).unwrap().to_string();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        180
    );
    assert_eq!(claims["sub"], "integration@example.invalid");

    let t = c.jwt_bearer(&jwt).await.unwrap();
    assert!(server.validate_access_token(t.access_token.expose_secret()));
    assert_eq!(
        t.instance_url.as_deref(),
        Some("https://na1.example.invalid")
    );
    assert_eq!(t.expires_at_ms, None);

    // a tampered signature, and another issuer, are refused
    let mut tampered = jwt.expose_secret().to_string();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let e = c.jwt_bearer(&tampered.into()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    let other = JwtAssertion::from_rsa_pem(KEY_PEM, "someone-else", "aud").unwrap();
    let e = c.jwt_bearer(&other.sign().unwrap()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);

    // the minter as a refresher: renews on 401 (no expiry given)
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    store
        .save(&ConnectionId::from("sf"), &t, None)
        .await
        .unwrap();
    let m = manager(
        "sf",
        store,
        Arc::new(JwtBearerRefresher::new(c, assertion)),
        &clock,
        Arc::new(AtomicUsize::new(0)),
    );
    let h = m.authorization().await.unwrap();
    assert!(m.refresh_after_unauthorized(&h).await.unwrap());
    let h2 = m.authorization().await.unwrap();
    assert_ne!(h, h2);
    assert!(server.validate_access_token(h2.to_str().unwrap()));
    assert_eq!(server.stats().jwt_bearer, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_expiry_is_used_until_a_401_then_refreshed_once() {
    let (server, handle) = serve(
        OAuthServerConfig::new(CLIENT_ID, CLIENT_SECRET)
            .with_access_ttl(None)
            .with_expiry_style(ExpiryStyle::None)
            .with_instance_url("https://na1.example.invalid")
            .with_latency(Duration::from_millis(30)),
    )
    .await;
    let clock = ManualClock::default();
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    let conn = ConnectionId::from("sf");
    let seeded = server.issue_token_set(None);
    assert_eq!(seeded.expires_at_ms, None);
    store.save(&conn, &seeded, None).await.unwrap();
    let m = manager(
        "sf",
        store.clone(),
        Arc::new(client(&handle, &clock)),
        &clock,
        Arc::new(AtomicUsize::new(0)),
    );
    let h = m.authorization().await.unwrap();
    for _ in 0..3 {
        clock.advance(Duration::from_secs(24 * 3600));
        assert_eq!(m.authorization().await.unwrap(), h);
    }
    assert_eq!(server.stats().token_requests, 0);

    server.expire_access_tokens();
    assert!(!server.validate_access_token(h.to_str().unwrap()));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let m = m.clone();
            let h = h.clone();
            tokio::spawn(async move { m.refresh_after_unauthorized(&h).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().unwrap());
    }
    assert_eq!(server.stats().refresh_token, 1);
    let h2 = m.authorization().await.unwrap();
    assert_ne!(h2, h);
    assert!(server.validate_access_token(h2.to_str().unwrap()));
    let stored = store.load(&conn).await.unwrap().unwrap().value;
    assert_eq!(
        stored.instance_url.as_deref(),
        Some("https://na1.example.invalid")
    );
    assert_eq!(rt_of(&stored), rt_of(&seeded));
}

#[tokio::test]
async fn no_secret_in_any_debug_output() {
    let (server, handle) = serve(OAuthServerConfig::new(CLIENT_ID, CLIENT_SECRET)).await;
    let clock = ManualClock::default();
    let config = oauth_config(&handle, CLIENT_ID, CLIENT_SECRET);
    let c = client(&handle, &clock);
    let req = c.authorize_url().unwrap();
    let callback = consent(&req.url).await;
    let tokens = c
        .exchange_code(&callback, &req.state, &req.pkce_verifier)
        .await
        .unwrap();
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    store
        .save(&ConnectionId::from("c"), &tokens, None)
        .await
        .unwrap();
    let m = manager(
        "c",
        store,
        Arc::new(c.clone()),
        &clock,
        Arc::new(AtomicUsize::new(0)),
    );
    m.access_token().await.unwrap();
    // an error after the server forgot the grant: the refresh token was sent, must not show
    server.revoke_all();
    let err = c.refresh(&tokens).await.unwrap_err();
    let state_err = c
        .exchange_code(&callback, &StateToken::new("nope"), &req.pkce_verifier)
        .await
        .unwrap_err();
    let assertion = JwtAssertion::from_rsa_pem(KEY_PEM, CLIENT_ID, "aud").unwrap();

    let outputs = [
        format!("{config:?}"),
        format!("{c:?}"),
        format!("{m:?}"),
        format!("{req:?}"),
        format!("{callback:?}"),
        format!("{tokens:?}"),
        format!("{err:?} {err}"),
        format!("{state_err:?} {state_err}"),
        format!("{assertion:?}"),
        format!("{:?}", server.config()),
    ];
    let secrets = [
        CLIENT_SECRET.to_string(),
        tokens.access_token.expose_secret().to_string(),
        rt_of(&tokens),
        callback.code.expose_secret().to_string(),
        req.state.expose_secret().to_string(),
        req.pkce_verifier.expose_secret().to_string(),
        "PRIVATE KEY".to_string(),
    ];
    for out in &outputs {
        for s in &secrets {
            assert!(!out.contains(s.as_str()), "secret leaked in: {out}");
        }
    }
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_over_one_sqlite_file_never_go_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let key = EncryptionKey::from_bytes([7u8; 32]);
    // two processes' view: two stores, two pools, one file
    let store_a: Arc<dyn TokenStore> =
        Arc::new(SqliteStore::open(&path, key.clone()).await.unwrap());
    let store_b: Arc<dyn TokenStore> =
        Arc::new(SqliteStore::open(&path, key.clone()).await.unwrap());
    let (server, handle) = serve(
        OAuthServerConfig::new(CLIENT_ID, CLIENT_SECRET)
            .with_rotation(true)
            .with_latency(Duration::from_millis(40)),
    )
    .await;
    let clock = ManualClock::default();
    let conn = ConnectionId::from("shared");
    store_a
        .save(&conn, &server.issue_token_set(None), None)
        .await
        .unwrap();
    let hook = Arc::new(AtomicUsize::new(0));
    let a = manager(
        "shared",
        store_a,
        Arc::new(client(&handle, &clock)),
        &clock,
        hook.clone(),
    );
    let b = manager(
        "shared",
        store_b,
        Arc::new(client(&handle, &clock)),
        &clock,
        hook.clone(),
    );
    a.access_token().await.unwrap();
    b.access_token().await.unwrap();

    let rounds = 6u64;
    for _ in 0..rounds {
        clock.advance(Duration::from_secs(3601));
        let mut tasks = Vec::new();
        for i in 0..40 {
            let m = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move { m.authorization().await }));
        }
        for t in tasks {
            let h = t.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
            assert!(server.validate_access_token(h.to_str().unwrap()));
        }
    }
    let stats = server.stats();
    assert_eq!(stats.reuse_detected, 0, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert_eq!(
        stats.refresh_token, rounds,
        "one refresh per expiry across both: {stats:?}"
    );
    assert_eq!(hook.load(Ordering::SeqCst), 0);
    // a third view of the file sees the newest refresh token the server issued
    let store_c = SqliteStore::open(&path, key).await.unwrap();
    let stored = store_c.load(&conn).await.unwrap().unwrap().value;
    assert_eq!(Some(rt_of(&stored)), server.latest_refresh_token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_failures_are_temporary_and_a_still_valid_token_is_kept() {
    use apex_connect_testkit::sim::{FaultKind, Faults, SimServer};
    let server = OAuthServer::new(OAuthServerConfig::new(CLIENT_ID, CLIENT_SECRET));
    let faults = Faults::new(1);
    let handle = SimServer::start(server.router().layer(faults.layer()))
        .await
        .unwrap();
    let clock = ManualClock::default();
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    let seeded = server.issue_token_set(None);
    store
        .save(&ConnectionId::from("c"), &seeded, None)
        .await
        .unwrap();
    let hook = Arc::new(AtomicUsize::new(0));
    // Retrying inside the manager is off here, so each scheduled fault surfaces (the retrying
    // is tested in `transient_token_endpoint_failures_are_retried_inside_the_manager`).
    let m = Arc::new(
        TokenManager::builder(
            ConnectionId::from("c"),
            store,
            Arc::new(client(&handle, &clock)),
        )
        .clock(clock.clock())
        .refresh_retry(RetryConfig::none())
        .on_reauth_needed({
            let hook = hook.clone();
            move |_: &ConnectionId| {
                hook.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build(),
    );

    // Within the skew but not expired: a failed refresh keeps the current token.
    clock.advance(Duration::from_secs(3600 - 30));
    faults.push_scheduled(FaultKind::UNAVAILABLE);
    let t = m.access_token().await.unwrap();
    assert_eq!(t.expose_secret(), seeded.access_token.expose_secret());

    // Expired: the failure surfaces, temporary, with the platform's hints.
    clock.advance(Duration::from_secs(60));
    faults.push_scheduled(FaultKind::too_many_requests(7));
    let e = m.token().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}");
    assert!(e.is_temporary());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    faults.push_scheduled(FaultKind::BAD_GATEWAY);
    let e = m.token().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Upstream, "{e}");
    assert!(e.is_temporary());
    faults.push_scheduled(FaultKind::ConnectionReset);
    let e = m.token().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Network, "{e}");
    assert!(e.is_temporary());

    // The grant is intact: the next attempt refreshes.
    let h = m.authorization().await.unwrap();
    assert!(server.validate_access_token(h.to_str().unwrap()));
    assert_eq!(server.stats().refresh_token, 1);
    assert_eq!(hook.load(Ordering::SeqCst), 0);
}

/// Retries with waits short enough for a loopback test (bounded all the same).
fn quick_retry() -> RetryConfig {
    RetryConfig {
        max_attempts: 4,
        max_elapsed: Duration::from_secs(10),
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        factor: 2.0,
        jitter: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_token_endpoint_failures_are_retried_inside_the_manager() {
    use apex_connect_testkit::sim::{FaultKind, Faults, SimServer};
    let server = OAuthServer::new(OAuthServerConfig::new(CLIENT_ID, CLIENT_SECRET));
    let faults = Faults::new(1);
    let handle = SimServer::start(server.router().layer(faults.layer()))
        .await
        .unwrap();
    let clock = ManualClock::default();
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    let conn = ConnectionId::from("c");
    store
        .save(&conn, &server.issue_token_set(None), None)
        .await
        .unwrap();
    let m = TokenManager::builder(conn.clone(), store, Arc::new(client(&handle, &clock)))
        .clock(clock.clock())
        .refresh_retry(quick_retry())
        .build();
    clock.advance(Duration::from_secs(3600));
    faults.push_scheduled(FaultKind::BAD_GATEWAY);
    faults.push_scheduled(FaultKind::ConnectionReset);
    faults.push_scheduled(FaultKind::UNAVAILABLE);
    // A direct caller of access_token() sees none of the three failures.
    let t = m.access_token().await.unwrap();
    assert!(server.validate_access_token(t.expose_secret()));
    assert_eq!(server.stats().refresh_token, 1);

    // Failing for longer than the attempts: the last error, temporary.
    clock.advance(Duration::from_secs(3600));
    for _ in 0..4 {
        faults.push_scheduled(FaultKind::BAD_GATEWAY);
    }
    let e = m.access_token().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Upstream, "{e}");
    assert!(e.is_temporary());
    assert_eq!(server.stats().refresh_token, 1);
    // invalid_grant is not retried: one request.
    server.revoke_all();
    let before = server.stats().token_requests;
    let e = m.access_token().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert_eq!(server.stats().token_requests, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_invalid_grant_no_dead_token_is_handed_out_and_no_request_is_spent() {
    let (server, handle) = serve(OAuthServerConfig::new(CLIENT_ID, CLIENT_SECRET)).await;
    let clock = ManualClock::default();
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    let conn = ConnectionId::from("c1");
    store
        .save(&conn, &server.issue_token_set(None), None)
        .await
        .unwrap();
    let hook = Arc::new(AtomicUsize::new(0));
    let m = manager(
        "c1",
        store.clone(),
        Arc::new(client(&handle, &clock)),
        &clock,
        hook.clone(),
    );
    // The access token is far from expiry; the API rejects it (revoked) and the refresh
    // says invalid_grant.
    let h = m.authorization().await.unwrap();
    server.revoke_all();
    let e = m.refresh_after_unauthorized(&h).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    let spent = server.stats().token_requests;
    assert_eq!(spent, 1);
    for _ in 0..5 {
        let e = m.access_token().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
        assert!(!e.is_temporary());
        assert_eq!(e.context_value("action"), Some("needs re-authorization"));
        assert!(m.authorization().await.is_err());
        assert!(m.refresh_after_unauthorized(&h).await.is_err());
        assert!(m.force_refresh().await.is_err());
    }
    assert_eq!(server.stats().token_requests, spent);
    assert_eq!(hook.load(Ordering::SeqCst), 1);

    // Re-authorized elsewhere (another process saved new tokens): used, no request.
    let v = store.load(&conn).await.unwrap().unwrap().version;
    let reauthorized = server.issue_token_set(None);
    store.save(&conn, &reauthorized, Some(v)).await.unwrap();
    let t = m.access_token().await.unwrap();
    assert_eq!(t.expose_secret(), reauthorized.access_token.expose_secret());
    assert!(server.validate_access_token(t.expose_secret()));
    assert_eq!(server.stats().token_requests, spent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_second_tokens_and_twenty_callers_cause_one_refresh() {
    let (server, handle) = serve(
        OAuthServerConfig::new(CLIENT_ID, CLIENT_SECRET)
            .with_rotation(true)
            .with_access_ttl(Some(Duration::from_secs(2)))
            .with_latency(Duration::from_millis(20)),
    )
    .await;
    let clock = ManualClock::default();
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    let conn = ConnectionId::from("c1");
    store
        .save(&conn, &server.issue_token_set(None), None)
        .await
        .unwrap();
    let m = manager(
        "c1",
        store.clone(),
        Arc::new(client(&handle, &clock)),
        &clock,
        Arc::new(AtomicUsize::new(0)),
    );
    clock.advance(Duration::from_secs(3));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { m.authorization().await })
        })
        .collect();
    let mut headers = Vec::new();
    for t in tasks {
        headers.push(t.await.unwrap().unwrap());
    }
    let stats = server.stats();
    assert_eq!(stats.refresh_token, 1, "{stats:?}");
    assert!(headers.iter().all(|h| *h == headers[0]));
    assert_eq!(stats.reuse_detected, 0);
}

/// A token store whose saves of refreshed sets (those without a refresh lease) fail with a
/// storage error while `fail` is above zero, as a full disk or a busy database would.
#[derive(Debug)]
struct FlakyStore {
    inner: MemoryTokenStore,
    fail: AtomicUsize,
}

#[async_trait::async_trait]
impl TokenStore for FlakyStore {
    async fn load(
        &self,
        c: &ConnectionId,
    ) -> apex_connect_core::Result<Option<apex_connect_core::Versioned<TokenSet>>> {
        self.inner.load(c).await
    }

    async fn save(
        &self,
        c: &ConnectionId,
        t: &TokenSet,
        expected: Option<u64>,
    ) -> apex_connect_core::Result<u64> {
        if t.refresh_lease.is_none()
            && self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(apex_connect_core::Error::storage("disk full"));
        }
        self.inner.save(c, t, expected).await
    }

    async fn delete(&self, c: &ConnectionId) -> apex_connect_core::Result<()> {
        self.inner.delete(c).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_refresh_token_survives_failed_saves() {
    let (server, handle) =
        serve(OAuthServerConfig::new(CLIENT_ID, CLIENT_SECRET).with_rotation(true)).await;
    let clock = ManualClock::default();
    let flaky = Arc::new(FlakyStore {
        inner: MemoryTokenStore::new(),
        fail: AtomicUsize::new(0),
    });
    let store: Arc<dyn TokenStore> = flaky.clone();
    let conn = ConnectionId::from("c1");
    store
        .save(&conn, &server.issue_token_set(None), None)
        .await
        .unwrap();
    let hook = Arc::new(AtomicUsize::new(0));
    let m = manager(
        "c1",
        store.clone(),
        Arc::new(client(&handle, &clock)),
        &clock,
        hook.clone(),
    );
    flaky.fail.store(3, Ordering::SeqCst);
    clock.advance(Duration::from_secs(3600));
    // The refresh rotated the refresh token; its save failed; the new access token works.
    let t = m.access_token().await.unwrap();
    assert!(server.validate_access_token(t.expose_secret()));
    assert_eq!(server.stats().refresh_token, 1);
    // Later calls retry the save until the store takes it (bounded: the waits double from
    // the 5 ms poll interval).
    for _ in 0..200 {
        if flaky.fail.load(Ordering::SeqCst) == 0
            && store
                .load(&conn)
                .await
                .unwrap()
                .is_some_and(|v| Some(rt_of(&v.value)) == server.latest_refresh_token())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        m.access_token().await.unwrap();
    }
    let stored = store.load(&conn).await.unwrap().unwrap().value;
    assert_eq!(Some(rt_of(&stored)), server.latest_refresh_token());

    // The store fails across a whole expiry: the next refresh spends the unsaved refresh
    // token, never the stored one; once the store recovers it holds the newest.
    flaky.fail.store(1000, Ordering::SeqCst);
    for _ in 0..3 {
        clock.advance(Duration::from_secs(3600));
        let t = m.access_token().await.unwrap();
        assert!(server.validate_access_token(t.expose_secret()));
    }
    flaky.fail.store(0, Ordering::SeqCst);
    for _ in 0..400 {
        let v = store.load(&conn).await.unwrap().unwrap().value;
        if Some(rt_of(&v)) == server.latest_refresh_token() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        m.access_token().await.unwrap();
    }
    let stored = store.load(&conn).await.unwrap().unwrap().value;
    assert_eq!(Some(rt_of(&stored)), server.latest_refresh_token());
    // A new manager (a restart) refreshes from the store: the grant is intact.
    clock.advance(Duration::from_secs(3600));
    let fresh = manager(
        "c1",
        store.clone(),
        Arc::new(client(&handle, &clock)),
        &clock,
        hook.clone(),
    );
    let t = fresh.access_token().await.unwrap();
    assert!(server.validate_access_token(t.expose_secret()));
    let stats = server.stats();
    assert_eq!(stats.reuse_detected, 0, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert_eq!(stats.refresh_token, 5, "{stats:?}");
    assert_eq!(hook.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_force_refresh_calls_cause_one_refresh() {
    let (server, handle) = serve(
        OAuthServerConfig::new(CLIENT_ID, CLIENT_SECRET)
            .with_rotation(true)
            .with_latency(Duration::from_millis(30)),
    )
    .await;
    let clock = ManualClock::default();
    let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
    let conn = ConnectionId::from("c1");
    let seeded = server.issue_token_set(None);
    store.save(&conn, &seeded, None).await.unwrap();
    let m = manager(
        "c1",
        store.clone(),
        Arc::new(client(&handle, &clock)),
        &clock,
        Arc::new(AtomicUsize::new(0)),
    );
    m.access_token().await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { m.force_refresh().await })
        })
        .collect();
    for t in tasks {
        let t = t.await.unwrap().unwrap();
        assert_ne!(
            t.access_token.expose_secret(),
            seeded.access_token.expose_secret()
        );
        assert!(server.validate_access_token(t.access_token.expose_secret()));
    }
    let stats = server.stats();
    assert_eq!(stats.refresh_token, 1, "{stats:?}");
    m.force_refresh().await.unwrap();
    assert_eq!(server.stats().refresh_token, 2);
    let stored = store.load(&conn).await.unwrap().unwrap().value;
    assert_eq!(Some(rt_of(&stored)), server.latest_refresh_token());
}
