//! API tests against wiremock with fixtures shaped like HubSpot's documented answers, and the
//! webhook signature cases (HubSpot's published examples plus our own).

use std::time::Duration;

use apex_connect_core::{
    Connector, ConnectorExt, CursorToken, ErrorKind, StreamId, WriteAction, WriteOp,
};
use apex_connect_hubspot::{HubSpotApiError, HubSpotConnector};
use wiremock::matchers::{
    any, body_partial_json, header, method, path, query_param, query_param_is_missing,
};
use wiremock::{Mock, MockServer, ResponseTemplate};

mod records;
mod webhooks;

const TOKEN: &str = "pat-na1-test-0000";

fn fixture(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    serde_json::from_str(&text).unwrap()
}

async fn server() -> MockServer {
    let server = MockServer::start().await;
    // Anything not matched by a test's mocks is answered with a status no API uses, naming
    // the request, so a failing test says what it did not expect.
    Mock::given(any())
        .respond_with(|req: &wiremock::Request| {
            ResponseTemplate::new(599)
                .set_body_string(format!("unmatched request: {} {}", req.method, req.url))
        })
        .with_priority(u8::MAX)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/crm/v3/properties/contacts"))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("properties_contacts.json")))
        .mount(&server)
        .await;
    server
}

fn connector(server: &MockServer) -> HubSpotConnector {
    HubSpotConnector::builder()
        .base_url(server.uri())
        .private_app_token(TOKEN.to_string())
        .build()
        .unwrap()
}

#[tokio::test]
async fn list_pages_with_discovered_properties_then_hands_over_to_search() {
    let server = server().await;
    let props = "apex_tier,email,firstname,hs_object_id,lastmodifieddate,lastname";
    Mock::given(method("GET"))
        .and(path("/crm/v3/objects/contacts"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(query_param("properties", props))
        .and(query_param("associations", "companies"))
        .and(query_param_is_missing("after"))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("contacts_page1.json")))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/crm/v3/objects/contacts"))
        .and(query_param("after", "NTI1Cg%3D%3D"))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("contacts_page2.json")))
        .mount(&server)
        .await;
    let hs = connector(&server);
    let s = StreamId::from("contacts");
    let p1 = hs.read(&s, None).await.unwrap();
    assert!(p1.has_more);
    assert_eq!(p1.records.len(), 1);
    let e = hs.map_entity(&p1.records[0]).unwrap().unwrap();
    assert_eq!(
        e.custom_fields["apex_tier"], "gold",
        "custom property discovered and kept"
    );
    let p2 = hs.read(&s, p1.next.as_ref()).await.unwrap();
    assert!(!p2.has_more, "paging absent on the last page");
    assert_eq!(p2.records[0].id, "525");

    // The last page's cursor reads changes through the search API, ascending, then the full
    // objects through batch/read.
    Mock::given(method("POST"))
        .and(path("/crm/v3/objects/contacts/search"))
        .and(body_partial_json(serde_json::json!({
            "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
            "properties": ["lastmodifieddate", "hs_object_id"],
            "limit": 200,
            "filterGroups": [{"filters": [{"propertyName": "lastmodifieddate", "operator": "GTE", "value": "1725926400000"}]}]
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("contacts_search.json")))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/crm/v3/objects/contacts/batch/read"))
        .and(body_partial_json(
            serde_json::json!({"inputs": [{"id": "525"}, {"id": "600"}]}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("contacts_batch_read.json")))
        .expect(1)
        .mount(&server)
        .await;
    // The handover cursor starts the search phase where the listing began, minus the
    // 5-minute lookback.
    let handover =
        apex_connect_hubspot::HubSpotCursor::decode_for(&s, p2.next.as_ref().unwrap()).unwrap();
    let apex_connect_hubspot::cursor::Position::Search(pos) = handover.position else {
        panic!("the last list page hands over to search: {handover:?}")
    };
    let now = apex_connect_core::webhook::unix_ms(std::time::SystemTime::now());
    assert!(
        (now - 300_000 - 60_000..=now - 300_000).contains(&pos.modified_after_ms),
        "{pos:?}"
    );
    // Read changes since 2024-09-10 (the fixtures' time).
    let since = apex_connect_hubspot::HubSpotCursor::new(
        &s,
        apex_connect_hubspot::cursor::Position::Search(
            serde_json::from_value(
                serde_json::json!({"modified_after_ms": 1_725_926_400_000i64, "last_id": 0}),
            )
            .unwrap(),
        ),
    );
    let p3 = hs
        .read(&s, Some(&apex_connect_core::SyncCursor::to_token(&since)))
        .await
        .unwrap();
    let ids: Vec<&str> = p3.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["525", "600"], "in (modified, id) order");
    assert_eq!(p3.records[1].version, Some(1_726_304_400_000));
    assert!(!p3.has_more);
    // A cursor of another stream is refused.
    let e = hs
        .read(&StreamId::from("deals"), p3.next.as_ref())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let e = hs
        .read(&s, Some(&CursorToken::from_string("hubspot.v1.!!")))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn batch_update_207_maps_to_per_record_results() {
    let server = server().await;
    Mock::given(method("POST"))
        .and(path("/crm/v3/objects/contacts/batch/update"))
        .and(body_partial_json(serde_json::json!({"inputs": [
            {"id": "512", "properties": {"apex_tier": "platinum"}, "objectWriteTraceId": "0"},
            {"id": "999", "properties": {"apex_tier": "gold", "lastname": ""}, "objectWriteTraceId": "1"}
        ]})))
        .respond_with(ResponseTemplate::new(207).set_body_json(fixture("batch_update_207.json")))
        .expect(1)
        .mount(&server)
        .await;
    let hs = connector(&server);
    let report = hs
        .write(
            &StreamId::from("contacts"),
            vec![
                WriteOp::new(
                    WriteAction::Update,
                    Some("512".into()),
                    serde_json::json!({"apex_tier": "platinum"}),
                ),
                WriteOp::new(
                    WriteAction::Update,
                    Some("999".into()),
                    serde_json::json!({"apex_tier": "gold", "lastname": null}),
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!(report.results[0].outcome.as_deref().unwrap(), "512");
    let e = report.results[1].outcome.as_ref().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let api = e.downcast_source::<HubSpotApiError>().unwrap();
    assert_eq!(api.category, "OBJECT_NOT_FOUND");
    assert_eq!(report.succeeded(), 1);
}

#[tokio::test]
async fn daily_limit_is_rate_limited_with_the_wait_until_the_reset() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/crm/v3/objects/contacts"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("x-hubspot-ratelimit-daily", "250000")
                .insert_header("x-hubspot-ratelimit-daily-remaining", "0")
                .set_body_json(fixture("error_429_daily.json")),
        )
        .expect(1)
        .mount(&server)
        .await;
    let hs = connector(&server);
    let e = hs.check().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert_eq!(e.context_value("policy"), Some("DAILY"));
    assert_eq!(
        e.context_value("correlation_id"),
        Some("c033cdaa-2c40-4a64-ae48-b4cec88dad24")
    );
    assert!(e.retry_after().unwrap() > Duration::from_secs(1));
}

#[tokio::test]
async fn search_secondly_429_is_retried_after_a_second() {
    let server = server().await;
    Mock::given(method("POST"))
        .and(path("/crm/v3/objects/contacts/search"))
        .respond_with(ResponseTemplate::new(429).set_body_json(fixture("error_429_secondly.json")))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/crm/v3/objects/contacts/search"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"total": 0, "results": []})),
        )
        .mount(&server)
        .await;
    let hs = connector(&server);
    let cursor = apex_connect_hubspot::HubSpotCursor::new(
        &StreamId::from("contacts"),
        apex_connect_hubspot::cursor::Position::Search(
            serde_json::from_value(serde_json::json!({
                "modified_after_ms": 1_700_000_000_000i64, "last_id": 0
            }))
            .unwrap(),
        ),
    );
    let started = std::time::Instant::now();
    let page = hs
        .read(
            &StreamId::from("contacts"),
            Some(&apex_connect_core::SyncCursor::to_token(&cursor)),
        )
        .await
        .unwrap();
    assert!(page.records.is_empty() && !page.has_more);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unauthorized_is_unauthenticated_and_shows_no_token() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(401).set_body_json(fixture("error_401.json")))
        .mount(&server)
        .await;
    let hs = connector(&server);
    let e = hs.check().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    let text = format!("{e} {e:?} {hs:?}");
    assert!(!text.contains(TOKEN), "{text}");
}

#[test]
fn builder_validates() {
    let e = HubSpotConnector::builder().build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let e = HubSpotConnector::builder()
        .private_app_token("t".to_string())
        .page_size(101)
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let e = HubSpotConnector::builder()
        .private_app_token("t".to_string())
        .base_url("http://api.example.com")
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let hs = HubSpotConnector::builder()
        .private_app_token("t".to_string())
        .build()
        .unwrap();
    assert_eq!(hs.info().name, apex_connect_hubspot::NAME);
    assert_eq!(hs.config().base_url, "https://api.hubapi.com");
    assert!(!hs.takes_webhooks(), "no client secret, no webhooks");
}
