//! Records as HubSpot sent them: quarantine of unreadable envelopes, pages far larger than
//! asked, the slow path for long property lists, schemas from property definitions,
//! re-reading a record from its raw JSON.

use apex_connect_core::{Connector, ErrorKind, StreamId};
use apex_connect_hubspot::HubSpotConnector;
use serde_json::json;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, ResponseTemplate};

use super::{TOKEN, connector, fixture, server};

#[tokio::test]
async fn unreadable_envelopes_are_rejects_and_the_page_goes_on() {
    let server = server().await;
    Mock::given(method("GET"))
        .and(path("/crm/v3/objects/contacts"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"results": [
            {"id": "1", "properties": {"email": 7, "firstname": ["x"]}, "updatedAt": "2024-09-13T20:23:03.333Z",
             "associations": {"companies": "none"}, "_links": {"self": [[1]]}},
            {"properties": {"email": "no-id@x.com"}, "updatedAt": "2024-09-13T20:23:03.333Z"},
            {"id": "3", "updatedAt": "not a time"},
            {"id": "4", "properties": {"lastmodifieddate": "1726259000000"}},
            [1, 2]
        ]})))
        .mount(&server)
        .await;
    let hs = connector(&server);
    let page = hs.read(&StreamId::from("contacts"), None).await.unwrap();
    let ids: Vec<&str> = page.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["1", "4"]);
    assert_eq!(page.records[1].version, Some(1_726_259_000_000));
    assert_eq!(page.rejects.len(), 3);
    assert_eq!(page.rejects[0].id, None);
    assert_eq!(page.rejects[1].id.as_deref(), Some("3"));
    assert_eq!(&page.rejects[2].raw[..], b"[1,2]");
    // Odd values map leniently: a number as its text, an array as nothing.
    let e = hs.map_entity(&page.records[0]).unwrap().unwrap();
    assert_eq!(e.name.as_deref(), Some("7"));
    assert!(e.relations.is_empty());
    assert!(!page.has_more);
}

#[tokio::test]
async fn a_page_far_larger_than_asked_is_an_error() {
    let server = server().await;
    let results: Vec<serde_json::Value> = (0..1_000)
        .map(|i| json!({"id": i.to_string(), "updatedAt": "2024-09-13T20:23:03.333Z"}))
        .collect();
    Mock::given(method("GET"))
        .and(path("/crm/v3/objects/contacts"))
        .and(query_param("limit", "100"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "results": results })))
        .mount(&server)
        .await;
    let hs = connector(&server);
    let e = hs
        .read(&StreamId::from("contacts"), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    assert_eq!(e.context_value("results"), Some("1000"));
}

#[tokio::test]
async fn long_property_lists_read_objects_by_batch_and_keep_list_associations() {
    let server = server().await;
    Mock::given(method("GET"))
        .and(path("/crm/v3/objects/contacts"))
        .and(query_param("properties", "hs_object_id"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"results": [
            {"id": "525", "properties": {"hs_object_id": "525"}, "updatedAt": "2024-09-14T08:00:00.000Z",
             "associations": {"companies": {"results": [{"id": "77", "type": "contact_to_company"}]}}},
            {"id": "600", "properties": {"hs_object_id": "600"}, "updatedAt": "2024-09-14T09:00:00.000Z"},
            {"id": "601", "properties": {}, "updatedAt": "2024-09-14T09:00:00.000Z"}
        ]})))
        .mount(&server)
        .await;
    // 601 was deleted between the list and the read: left out.
    Mock::given(method("POST"))
        .and(path("/crm/v3/objects/contacts/batch/read"))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("contacts_batch_read.json")))
        .expect(1)
        .mount(&server)
        .await;
    let hs = HubSpotConnector::builder()
        .base_url(server.uri())
        .private_app_token(TOKEN.to_string())
        .config({
            let mut c = apex_connect_hubspot::HubSpotConfig::default();
            c.max_properties_query_len = 10;
            c.base_url = server.uri();
            c
        })
        .private_app_token(TOKEN.to_string())
        .build()
        .unwrap();
    let page = hs.read(&StreamId::from("contacts"), None).await.unwrap();
    let ids: Vec<&str> = page.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["525", "600"], "in the list's order");
    let first = page.records[0].raw.to_value().unwrap();
    assert_eq!(first["properties"]["email"], "ann@biglytics.net");
    assert_eq!(first["associations"]["companies"]["results"][0]["id"], "77");
    let e = hs.map_entity(&page.records[0]).unwrap().unwrap();
    assert!(
        e.relations
            .iter()
            .any(|r| r.kind == "works_at" && r.target.id == "77")
    );
}

#[tokio::test]
async fn discover_describes_custom_properties_and_records_read_back() {
    let server = server().await;
    Mock::given(method("GET"))
        .and(path("/crm/v3/objects/contacts"))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("contacts_page2.json")))
        .mount(&server)
        .await;
    let hs = connector(&server);
    let s = StreamId::from("contacts");
    let schema = hs.discover(&s).await.unwrap();
    assert_eq!(schema.custom_fields, ["apex_tier"]);
    assert_eq!(schema.key, ["id"]);
    assert_eq!(schema.replication_key.as_deref(), Some("updatedAt"));
    let props = &schema.schema["properties"]["properties"]["properties"];
    assert_eq!(props["apex_tier"]["type"], json!(["string", "null"]));
    assert_eq!(props["apex_tier"]["description"], "Customer tier");
    assert!(props.get("lastmodifieddate").is_some());
    let page = hs.read(&s, None).await.unwrap();
    let r = &page.records[0];
    let back = hs.parse_record(&s, &r.raw, None).unwrap();
    assert_eq!((back.id.as_str(), back.version), (r.id.as_str(), r.version));
    assert_eq!(back.raw, r.raw);
    let e = hs
        .parse_record(&StreamId::from("tickets"), &r.raw, None)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // Property definitions read back too, with their object type.
    let props_stream = StreamId::from("properties");
    let p = hs.read(&props_stream, None).await.unwrap();
    let def = p
        .records
        .iter()
        .find(|r| r.id == "contacts.apex_tier")
        .unwrap();
    let back = hs
        .parse_record(&props_stream, &def.raw, def.parent.as_deref())
        .unwrap();
    assert_eq!(back.id, "contacts.apex_tier");
}
