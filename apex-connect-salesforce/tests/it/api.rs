//! Salesforce's documented shapes against wiremock: query pages on the instance host, error
//! arrays, `Sforce-Limit-Info`, 401 `INVALID_SESSION_ID` -> one refresh, token signatures.

use std::sync::Arc;

use apex_connect_core::platform::{AuthInputs, resolve_auth};
use apex_connect_core::{
    BuildContext, ConnectionId, Connector, ConnectorExt, EntityKind, ErrorKind, Identity,
    MemoryTokenStore, Platform, Secrets, Settings, StreamId, TokenIdentity, TokenSet, TokenStore,
};
use apex_connect_salesforce::api::signature_matches;
use apex_connect_salesforce::{PLATFORM, SalesforceConnector, SalesforceSettings};
use futures::StreamExt;
use serde_json::json;
use wiremock::matchers::{header, method, path, query_param_contains};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::fixture;

fn settings(server: &MockServer, extra: serde_json::Value) -> SalesforceSettings {
    let mut v =
        json!({"objects": ["Account"], "instance_url": server.uri(), "login_host": server.uri()});
    if let serde_json::Value::Object(m) = extra {
        for (k, x) in m {
            v[k] = x;
        }
    }
    serde_json::from_value(v).unwrap()
}

async fn mount_basics(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path("/services/data/"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(fixture("versions.json"), "application/json"),
        )
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/services/data/v64.0/sobjects/Account/describe/"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(fixture("describe_account.json"), "application/json"),
        )
        .mount(server)
        .await;
}

async fn mount_pages(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path("/services/data/v64.0/query/"))
        .and(query_param_contains("q", "FROM Account"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("sforce-limit-info", "api-usage=10018/100000")
                .set_body_raw(fixture("query_page1.json"), "application/json"),
        )
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/services/data/v64.0/query/01gD0000002HU6KIAW-2"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("sforce-limit-info", "api-usage=10019/100000")
                .set_body_raw(fixture("query_page2.json"), "application/json"),
        )
        .mount(server)
        .await;
}

#[tokio::test]
async fn documented_query_pages_are_read_on_the_instance_host() {
    let server = MockServer::start().await;
    mount_basics(&server).await;
    mount_pages(&server).await;
    let c = SalesforceConnector::builder()
        .settings(settings(&server, json!({})))
        .access_token("00Dx0000000BV7z!static")
        .build()
        .unwrap();
    let stream = StreamId::from("Account");
    let pages: Vec<_> = c.read_all(&stream, None).collect().await;
    let records: Vec<_> = pages.into_iter().flat_map(|p| p.unwrap().records).collect();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].id, "001D000000IqhSLIAZ");
    assert_eq!(records[2].version, Some(1_714_557_601_000));
    // A slice of the page body, byte for byte.
    assert!(
        records[0]
            .raw
            .as_str()
            .contains("\"Express Logistics and Transport\"")
    );
    assert_eq!(c.api_usage(), Some((10_019, 100_000)));
    // The SOQL: describe's fields, compound address left to its components, keyset order.
    let reqs = server.received_requests().await.unwrap();
    let q = reqs
        .iter()
        .find(|r| r.url.path() == "/services/data/v64.0/query/")
        .map(|r| {
            r.url
                .query_pairs()
                .find(|(k, _)| k == "q")
                .unwrap()
                .1
                .into_owned()
        })
        .unwrap();
    assert!(
        q.starts_with("SELECT Id, SystemModstamp, IsDeleted, Name"),
        "{q}"
    );
    assert!(
        q.contains("BillingCity") && !q.contains("BillingAddress"),
        "{q}"
    );
    assert!(q.ends_with("ORDER BY SystemModstamp ASC, Id ASC"), "{q}");
    // Lenient mapping of the documented record.
    let e = c.map_entity(&records[0]).unwrap().unwrap();
    assert_eq!(e.kind, EntityKind::Organization);
    assert!(
        e.identities
            .contains(&Identity::Domain("expresslandt.net".into()))
    );
    assert_eq!(e.custom_fields["Tier__c"], "Gold");
    assert_eq!(e.attributes["employees"], 12300);
    let e = c.map_entity(&records[1]).unwrap().unwrap();
    assert!(e.custom_fields.is_empty());
}

#[tokio::test]
async fn a_link_off_the_instance_is_never_followed() {
    let server = MockServer::start().await;
    mount_basics(&server).await;
    let page = fixture("query_page1.json").replace(
        "/services/data/v64.0/query/01gD0000002HU6KIAW-2",
        "https://evil.example.com/services/data/v64.0/query/01g-2",
    );
    Mock::given(method("GET"))
        .and(path("/services/data/v64.0/query/"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(page, "application/json"))
        .mount(&server)
        .await;
    let c = SalesforceConnector::builder()
        .settings(settings(&server, json!({})))
        .access_token("t0ken")
        .build()
        .unwrap();
    let stream = StreamId::from("Account");
    let first = c.read(&stream, None).await.unwrap();
    let e = c.read(&stream, first.next.as_ref()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
}

#[tokio::test]
async fn request_limit_exceeded_is_typed_and_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/services/data/"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(fixture("versions.json"), "application/json"),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/services/data/v64.0/sobjects/Account/describe/"))
        .respond_with(
            ResponseTemplate::new(403)
                .insert_header("sforce-limit-info", "api-usage=100001/100000")
                .set_body_raw(fixture("error_request_limit.json"), "application/json"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let c = SalesforceConnector::builder()
        .settings(settings(&server, json!({})))
        .access_token("t0ken")
        .build()
        .unwrap();
    let e = c.read(&StreamId::from("Account"), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert!(!e.is_temporary());
    assert!(e.retry_after().unwrap().as_secs() >= 3600);
    assert_eq!(
        apex_connect_salesforce::error::error_code(&e),
        Some("REQUEST_LIMIT_EXCEEDED")
    );
    assert_eq!(
        apex_connect_salesforce::error::api_error(&e).map(|a| a.status),
        Some(403)
    );
    assert_eq!(c.api_usage(), Some((100_001, 100_000)));
}

#[tokio::test]
async fn an_api_version_the_org_lacks_is_a_clear_error() {
    let server = MockServer::start().await;
    mount_basics(&server).await;
    let c = SalesforceConnector::builder()
        .settings(settings(&server, json!({"api_version": "99.0"})))
        .access_token("t0ken")
        .build()
        .unwrap();
    let e = c.read(&StreamId::from("Account"), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert_eq!(e.context_value("supported_newest"), Some("64.0,63.0"));
}

#[test]
fn the_documented_signature_vector_verifies() {
    // Computed independently (Python hmac) for the fixture's id and issued_at.
    let t: serde_json::Value = serde_json::from_str(&fixture("token_answer.json")).unwrap();
    let (id, iat, sig) = (
        t["id"].as_str().unwrap(),
        t["issued_at"].as_str().unwrap(),
        t["signature"].as_str().unwrap(),
    );
    assert!(signature_matches(id, iat, sig, "test-consumer-secret"));
    assert!(!signature_matches(
        id,
        "1278448384423",
        sig,
        "test-consumer-secret"
    ));
    assert!(!signature_matches(id, iat, sig, "another-secret"));
}

async fn oauth_connector(server: &MockServer, store: Arc<MemoryTokenStore>) -> Arc<dyn Connector> {
    let conn = ConnectionId::from("acme");
    let mut settings = Settings::default();
    settings.insert("client_id", json!("consumer-key"));
    settings.insert("login_host", json!(server.uri()));
    settings.insert("objects", json!(["Account"]));
    let secrets = Secrets::from_values([("client_secret", "test-consumer-secret")]);
    let auth = resolve_auth(
        &PLATFORM,
        &settings,
        AuthInputs::new(&conn, &secrets, store).tokens_stored(true),
    )
    .unwrap();
    PLATFORM
        .build(&BuildContext::new(&conn, &settings, &secrets, auth))
        .unwrap()
}

#[tokio::test]
async fn invalid_session_refreshes_once_and_retries() {
    let server = MockServer::start().await;
    mount_basics(&server).await;
    let answer = fixture("token_answer.json").replace("INSTANCE", &server.uri());
    let fresh = "00Dx0000000BV7z!AR8AQAxo9UfVkh8AlV0Gomt9Czx9LjHnSSpwBMmbRcgKFmxOtvxjTrKW19ye6PE3Ds1eQz3z8jr3W7_VbWmEu4Q8TVGSTHxs";
    Mock::given(method("POST"))
        .and(path("/services/oauth2/token"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(answer, "application/json"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/services/data/v64.0/query/"))
        .and(header("authorization", "Bearer expired-session"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_raw(fixture("error_invalid_session.json"), "application/json"),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/services/data/v64.0/query/"))
        .and(header("authorization", format!("Bearer {fresh}").as_str()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(fixture("query_page2.json"), "application/json"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let store = Arc::new(MemoryTokenStore::new());
    let conn = ConnectionId::from("acme");
    store
        .save(
            &conn,
            &TokenSet::bearer("expired-session")
                .with_refresh_token("rt-1")
                .with_instance_url(server.uri()),
            None,
        )
        .await
        .unwrap();
    let c = oauth_connector(&server, store.clone()).await;
    let page = c.read(&StreamId::from("Account"), None).await.unwrap();
    assert_eq!(page.records.len(), 1);
    // The refreshed set is stored, with the identity the answer vouched for (signature
    // verified with the client secret before the instance was used).
    let stored = store.load(&conn).await.unwrap().unwrap().value;
    assert_eq!(stored.identity.unwrap().issued_at, "1278448384422");
}

#[tokio::test]
async fn a_token_whose_signature_does_not_match_is_refused() {
    let server = MockServer::start().await;
    mount_basics(&server).await;
    let store = Arc::new(MemoryTokenStore::new());
    let conn = ConnectionId::from("acme");
    let mut t = TokenSet::bearer("session").with_instance_url(server.uri());
    t.identity = Some(TokenIdentity::new(
        "https://login.salesforce.com/id/00Dx0000000BV7z/005x00000012Q9X",
        "1278448384422",
        Some("YpWBD4HiGjjttpeM7PII+Yl+ay0owq4XPTmU42gn+No=".into()),
    ));
    store.save(&conn, &t, None).await.unwrap();
    let c = oauth_connector(&server, store).await;
    let e = c.read(&StreamId::from("Account"), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    assert!(e.to_string().contains("signature"), "{e}");
    assert!(
        server.received_requests().await.unwrap().is_empty(),
        "nothing may reach an unverified instance"
    );
}
