//! No secret appears in the `Debug` or `Display` of any config, token set, error, or log line.
//!
//! Every credential below is a recognisable marker; the test collects the `Debug` of each
//! configuration and client type, the `Display` and `Debug` of errors produced with those
//! credentials in play, and every log line (TRACE level) of an OAuth-connected sync, then
//! searches all of it for the markers.

use std::io::Write;
use std::sync::{Arc, Mutex};

use apex_connect::engine::{SyncEngine, SyncOptions};
use apex_connect::frontapp::FrontConnector;
use apex_connect::frontapp::sim::{FrontSim, FrontSimConfig};
use apex_connect::http::StaticToken;
use apex_connect::hubspot::HubSpotConnector;
use apex_connect::oauth::{OAuthClient, OAuthConfig};
use apex_connect::sinks::SqliteSink;
use apex_connect::store::{EncryptionKey, SqliteStore, StateStore};
use apex_connect::webhook::{StandardWebhooksVerifier, WebhookSecrets};
use apex_connect::{ConnectionId, Connector, StreamId, TokenSet, TokenStore};
use secrecy::{ExposeSecret, SecretString};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_clean(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{what} shows a secret ({} chars): {text}",
            s.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_debug_display_errors_or_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut secrets: Vec<String> = vec![
        "marker-front-api-token-1f4a".into(),
        "marker-hubspot-token-9c2e".into(),
        "marker-client-secret-77ab".into(),
        "marker-webhook-secret-5d10".into(),
        "marker-refresh-token-aa31".into(),
        "marker-access-token-c0de".into(),
    ];
    let mut shown: Vec<(String, String)> = Vec::new();

    // Configurations and clients built with the markers.
    let front = FrontConnector::builder()
        .api_token(SecretString::from(secrets[0].clone()))
        .webhook_secret(SecretString::from(secrets[3].clone()))
        .build()
        .unwrap();
    shown.push(("FrontConnector".into(), format!("{front:?}")));
    shown.push(("FrontConfig".into(), format!("{:?}", front.config())));
    let hubspot = HubSpotConnector::builder()
        .private_app_token(SecretString::from(secrets[1].clone()))
        .client_secret(SecretString::from(secrets[2].clone()))
        .build()
        .unwrap();
    shown.push(("HubSpotConnector".into(), format!("{hubspot:?}")));
    shown.push(("HubSpotConfig".into(), format!("{:?}", hubspot.config())));
    let oauth = OAuthConfig::new("client-id", "https://example.invalid/token")
        .with_client_secret(secrets[2].clone())
        .with_auth_url("https://example.invalid/authorize")
        .with_redirect_url("http://127.0.0.1/callback");
    shown.push(("OAuthConfig".into(), format!("{oauth:?}")));
    let client = OAuthClient::new(oauth, reqwest::Client::new()).unwrap();
    shown.push(("OAuthClient".into(), format!("{client:?}")));
    let auth = client.authorize_url().unwrap();
    secrets.push(auth.pkce_verifier.expose_secret().to_string());
    shown.push(("AuthorizeRequest".into(), format!("{auth:?}")));
    let tokens = TokenSet::bearer(secrets[5].clone()).with_refresh_token(secrets[4].clone());
    shown.push(("TokenSet".into(), format!("{tokens:?}")));
    shown.push((
        "StaticToken".into(),
        format!("{:?}", StaticToken::bearer(secrets[0].clone())),
    ));
    shown.push((
        "WebhookSecrets".into(),
        format!("{:?}", WebhookSecrets::single(secrets[3].as_bytes())),
    ));
    shown.push((
        "StandardWebhooksVerifier".into(),
        format!(
            "{:?}",
            StandardWebhooksVerifier::new(WebhookSecrets::single(secrets[3].as_bytes()))
        ),
    ));
    let key = EncryptionKey::generate();
    secrets.push(key.to_base64().expose_secret().to_string());
    shown.push(("EncryptionKey".into(), format!("{key:?}")));

    // An OAuth-connected sync against the simulator, with every log line captured.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(dir.path().join("s.db"), key)
            .await
            .unwrap(),
    );
    let sim = FrontSim::start(FrontSimConfig::default().size(30, 2).contacts(10))
        .await
        .unwrap();
    secrets.push(sim.api_token().expose_secret().to_string());
    secrets.push(sim.oauth_client_secret().expose_secret().to_string());
    secrets.push(sim.webhook_secret().expose_secret().to_string());
    let connection = ConnectionId::from("acme");
    let manager = sim
        .oauth_connect(store.clone() as Arc<dyn TokenStore>, connection.clone())
        .await
        .unwrap();
    shown.push(("TokenManager".into(), format!("{manager:?}")));
    let stored = TokenStore::load(store.as_ref(), &connection)
        .await
        .unwrap()
        .unwrap();
    secrets.push(stored.value.access_token.expose_secret().to_string());
    if let Some(r) = &stored.value.refresh_token {
        secrets.push(r.expose_secret().to_string());
    }
    let connector = FrontConnector::builder()
        .oauth(manager)
        .base_url(sim.base_url())
        .build()
        .unwrap();
    shown.push(("FrontConnector (OAuth)".into(), format!("{connector:?}")));
    let engine = SyncEngine::new(store.clone() as Arc<dyn StateStore>);
    let sink = SqliteSink::for_store(&store);
    for stream in ["conversations", "messages", "contacts"] {
        let report = engine
            .run(
                &connector,
                &connection,
                &StreamId::from(stream),
                &sink,
                SyncOptions::new(),
            )
            .await
            .unwrap();
        shown.push((format!("SyncReport {stream}"), format!("{report:?}")));
    }

    // Errors with credentials in play: a revoked grant, a wrong API token.
    sim.oauth().revoke_all();
    sim.oauth().expire_access_tokens();
    let err = connector.check().await.unwrap_err();
    shown.push(("revoked-grant error".into(), format!("{err} / {err:?}")));
    let wrong = FrontConnector::builder()
        .api_token(SecretString::from("marker-wrong-token-0b0b".to_string()))
        .base_url(sim.base_url())
        .build()
        .unwrap();
    secrets.push("marker-wrong-token-0b0b".into());
    let err = wrong.check().await.unwrap_err();
    shown.push(("wrong-token error".into(), format!("{err} / {err:?}")));

    drop(_guard);
    let log = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.lines().count() > 10,
        "the sync should have logged: {log}"
    );
    for (what, text) in &shown {
        assert_clean(what, text, &secrets);
    }
    assert_clean("log output", &log, &secrets);
}
