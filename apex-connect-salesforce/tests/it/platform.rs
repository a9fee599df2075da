//! The descriptor and every grant against the simulator: authorization code + PKCE, refresh
//! with rotation, JWT bearer, client credentials; `instance_url` on another host than the
//! login host; signature verification.

use std::sync::Arc;

use apex_connect_core::oauth::{CallbackParams, OAuthClient};
use apex_connect_core::platform::{AuthInputs, Grant, resolve_auth};
use apex_connect_core::{
    BuildContext, ConnectionId, ConnectorExt, ErrorKind, MemoryTokenStore, Platform, Secrets,
    Settings, StreamId, TokenStore,
};
use apex_connect_salesforce::{PLATFORM, SalesforceSim, SalesforceSimConfig};
use futures::StreamExt;
use serde_json::json;

fn settings(pairs: serde_json::Value) -> Settings {
    Settings::from_value(pairs).unwrap()
}

#[test]
fn oauth_defaults_follow_the_login_host() {
    let d = PLATFORM.oauth(&settings(json!({}))).unwrap().unwrap();
    assert_eq!(
        d.token_url,
        "https://login.salesforce.com/services/oauth2/token"
    );
    assert_eq!(
        d.auth_url.as_deref(),
        Some("https://login.salesforce.com/services/oauth2/authorize")
    );
    assert_eq!(
        d.jwt_audience.as_deref(),
        Some("https://login.salesforce.com")
    );
    for g in [
        Grant::AuthorizationCode,
        Grant::RefreshToken,
        Grant::JwtBearer,
        Grant::ClientCredentials,
    ] {
        assert!(d.supports(g));
    }
    let d = PLATFORM
        .oauth(&settings(json!({"login_host": "test"})))
        .unwrap()
        .unwrap();
    assert_eq!(
        d.jwt_audience.as_deref(),
        Some("https://test.salesforce.com")
    );
    let d = PLATFORM
        .oauth(&settings(json!({"login_host": "acme.my.salesforce.com"})))
        .unwrap()
        .unwrap();
    assert_eq!(
        d.token_url,
        "https://acme.my.salesforce.com/services/oauth2/token"
    );
    assert!(
        PLATFORM
            .check_settings(&settings(json!({"objets": ["Account"]})))
            .is_err()
    );
    assert!(
        PLATFORM
            .check_settings(&settings(
                json!({"objects": ["Account"], "client_id": "x", "lookback": "1m"})
            ))
            .is_ok()
    );
    assert!(
        PLATFORM
            .check_settings(&settings(json!({"lookback": "soon"})))
            .is_err()
    );
    assert_eq!(PLATFORM.name(), "salesforce");
}

async fn read_accounts(
    sim: &SalesforceSim,
    settings: &Settings,
    secrets: &Secrets,
    store: Arc<MemoryTokenStore>,
    stored: bool,
) -> apex_connect_core::Result<usize> {
    let conn = ConnectionId::from("p");
    let auth = resolve_auth(
        &PLATFORM,
        settings,
        AuthInputs::new(&conn, secrets, store).tokens_stored(stored),
    )?;
    let c = PLATFORM.build(&BuildContext::new(&conn, settings, secrets, auth))?;
    let _ = sim;
    let stream = StreamId::from("Account");
    let mut n = 0;
    let mut pages = c.read_all(&stream, None);
    while let Some(p) = pages.next().await {
        n += p?.records.len();
    }
    Ok(n)
}

#[tokio::test]
async fn jwt_bearer_and_client_credentials() {
    let sim = SalesforceSim::start(SalesforceSimConfig::default())
        .await
        .unwrap();
    let key = std::fs::read_to_string(format!(
        "{}/tests/fixtures/jwt_test_key.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let s = settings(json!({
        "auth": "jwt_bearer", "client_id": sim.config().client_id, "jwt_subject": "integration@acme.example",
        "login_host": sim.login_url(), "objects": ["Account"],
    }));
    let secrets = Secrets::from_values([("private_key", key)]);
    assert_eq!(
        read_accounts(&sim, &s, &secrets, Arc::new(MemoryTokenStore::new()), false)
            .await
            .unwrap(),
        60
    );
    assert_eq!(sim.oauth().stats().jwt_bearer, 1);
    let s = settings(json!({
        "auth": "client_credentials", "client_id": sim.config().client_id,
        "login_host": sim.login_url(), "objects": ["Account"],
    }));
    let secrets = Secrets::from_values([("client_secret", sim.config().client_secret.clone())]);
    assert_eq!(
        read_accounts(&sim, &s, &secrets, Arc::new(MemoryTokenStore::new()), false)
            .await
            .unwrap(),
        60
    );
    assert_eq!(sim.oauth().stats().client_credentials, 1);
    assert_ne!(
        sim.login_url(),
        sim.instance_url(),
        "the API is on another host than the login host"
    );
}

#[tokio::test]
async fn authorization_code_with_pkce_then_rotating_refreshes() {
    let sim = SalesforceSim::start(SalesforceSimConfig::default())
        .await
        .unwrap();
    let s = settings(
        json!({"client_id": sim.config().client_id, "login_host": sim.login_url(), "objects": ["Account"]}),
    );
    let secrets = Secrets::from_values([("client_secret", sim.config().client_secret.clone())]);
    let config = apex_connect_core::platform::oauth_config(&PLATFORM, &s, &secrets)
        .unwrap()
        .unwrap()
        .with_redirect_url("http://127.0.0.1:1/callback");
    let client = OAuthClient::new(
        config,
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    )
    .unwrap();
    let req = client.authorize_url().unwrap();
    assert!(req.url.as_str().contains("code_challenge="));
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(req.url.clone())
        .send()
        .await
        .unwrap();
    let loc = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let get = |k: &str| {
        loc.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    let tokens = client
        .exchange_code(
            &CallbackParams::new(get("code"), get("state")),
            &req.state,
            &req.pkce_verifier,
        )
        .await
        .unwrap();
    assert_eq!(tokens.instance_url.as_deref(), Some(sim.instance_url()));
    assert!(
        tokens.expires_at_ms.is_none(),
        "Salesforce sends no expires_in"
    );
    assert!(
        tokens
            .identity
            .as_ref()
            .and_then(|i| i.signature.as_ref())
            .is_some()
    );
    let store = Arc::new(MemoryTokenStore::new());
    store
        .save(&ConnectionId::from("p"), &tokens, None)
        .await
        .unwrap();
    assert_eq!(
        read_accounts(&sim, &s, &secrets, store.clone(), true)
            .await
            .unwrap(),
        60
    );
    // Expiry shows as 401 INVALID_SESSION_ID: one refresh, rotated and stored before use.
    for round in 1..=2 {
        sim.oauth().expire_access_tokens();
        assert_eq!(
            read_accounts(&sim, &s, &secrets, store.clone(), true)
                .await
                .unwrap(),
            60
        );
        assert_eq!(sim.oauth().stats().refresh_token, round);
        let stored = store
            .load(&ConnectionId::from("p"))
            .await
            .unwrap()
            .unwrap()
            .value;
        let rt = secrecy::ExposeSecret::expose_secret(stored.refresh_token.as_ref().unwrap())
            .to_string();
        assert_eq!(Some(rt), sim.oauth().latest_refresh_token());
    }
    assert_eq!(sim.oauth().stats().reuse_detected, 0);
}

#[tokio::test]
async fn a_forged_token_signature_is_refused() {
    let sim = SalesforceSim::start({
        let mut c = SalesforceSimConfig::default();
        c.bad_signature = true;
        c
    })
    .await
    .unwrap();
    let s = settings(
        json!({"auth": "client_credentials", "client_id": sim.config().client_id, "login_host": sim.login_url(), "objects": ["Account"]}),
    );
    let secrets = Secrets::from_values([("client_secret", sim.config().client_secret.clone())]);
    let e = read_accounts(&sim, &s, &secrets, Arc::new(MemoryTokenStore::new()), false)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    assert_eq!(sim.api_calls(), 0);
}
