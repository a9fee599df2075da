//! `discover`: each stream's JSON Schema accepts Front's documented examples, lists the
//! account's custom fields from `GET /<type>/custom_fields`, and leaves them open when the
//! token may not read them.

use apex_connect_core::{Connector, ErrorKind, StreamId};
use apex_connect_frontapp::streams;
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::{TOKEN, catch_all, connector};

fn spec_examples() -> Value {
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/spec_examples.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `listOfCustomFields` as the spec documents it.
fn custom_fields(fields: &[(&str, &str)]) -> Value {
    let results: Vec<Value> = fields
        .iter()
        .enumerate()
        .map(|(i, (name, kind))| {
            json!({
                "_links": {"self": format!("https://yourCompany.api.frontapp.com/custom_fields/fld_{i}")},
                "id": format!("fld_{i}"), "name": name, "description": "", "type": kind,
                "values": [{"value": "Enterprise", "label": "Customer plan"}]
            })
        })
        .collect();
    json!({"_links": {"self": "https://yourCompany.api.frontapp.com/custom_fields"}, "_results": results})
}

#[tokio::test]
async fn schemas_accept_the_documented_examples_and_list_custom_fields() {
    let server = MockServer::start().await;
    catch_all(&server).await;
    Mock::given(method("GET"))
        .and(path("/contacts/custom_fields"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(custom_fields(&[
            ("Customer plan", "enum"),
            ("isVIP", "boolean"),
            ("renewal_date", "datetime"),
            ("sla_time", "number"),
        ])))
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/conversations/custom_fields"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(custom_fields(&[("Priority", "enum")])),
        )
        .mount(&server)
        .await;
    for p in ["/teammates/custom_fields", "/inboxes/custom_fields"] {
        Mock::given(method("GET"))
            .and(path(p))
            .respond_with(ResponseTemplate::new(200).set_body_json(custom_fields(&[])))
            .mount(&server)
            .await;
    }
    let front = connector(&server);
    let examples = spec_examples();
    for stream in streams::ALL {
        let schema = front
            .discover(&StreamId::from(stream))
            .await
            .unwrap_or_else(|e| panic!("{stream}: {e}"));
        assert_eq!(schema.key, ["id"]);
        assert_eq!(
            schema.incremental,
            !matches!(stream, "teammates" | "inboxes")
        );
        let validator = jsonschema::validator_for(&schema.schema).unwrap();
        for example in examples["examples"][stream].as_array().unwrap() {
            if let Some(err) = validator.iter_errors(example).next() {
                panic!(
                    "{stream}: documented example refused at {}: {err}",
                    err.instance_path()
                );
            }
        }
        let no_id = json!({"subject": "x"});
        assert!(!validator.is_valid(&no_id), "{stream}: the id is required");
    }
    let contacts = front
        .discover(&StreamId::from(streams::CONTACTS))
        .await
        .unwrap();
    assert_eq!(
        contacts.custom_fields,
        ["Customer plan", "isVIP", "renewal_date", "sla_time"]
    );
    assert_eq!(contacts.replication_key.as_deref(), Some("updated_at"));
    let cf = &contacts.schema["properties"]["custom_fields"]["properties"];
    assert_eq!(cf["isVIP"], json!({"type": ["boolean", "null"]}));
    assert_eq!(cf["sla_time"], json!({"type": ["number", "null"]}));
    let v = jsonschema::validator_for(&contacts.schema).unwrap();
    let mut c = examples["examples"]["contacts"][0].clone();
    c["custom_fields"] = json!({"isVIP": "yes"});
    assert!(
        !v.is_valid(&c),
        "a custom field of the wrong type is refused"
    );
    c["custom_fields"] = json!({"isVIP": true, "unknown": [1]});
    assert!(v.is_valid(&c), "custom fields not listed are allowed");
    let messages = front
        .discover(&StreamId::from(streams::MESSAGES))
        .await
        .unwrap();
    assert!(messages.custom_fields.is_empty());
    assert_eq!(messages.replication_key.as_deref(), Some("created_at"));
}

#[tokio::test]
async fn without_the_custom_fields_scope_they_stay_open() {
    let server = MockServer::start().await;
    catch_all(&server).await;
    Mock::given(method("GET"))
        .and(path("/contacts/custom_fields"))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!(
            {"_error": {"status": 403, "title": "Forbidden", "message": "Missing scope custom_fields:read"}}
        )))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/conversations/custom_fields"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!(
            {"_error": {"status": 401, "title": "Unauthenticated"}}
        )))
        .mount(&server)
        .await;
    let front = connector(&server);
    let s = front
        .discover(&StreamId::from(streams::CONTACTS))
        .await
        .unwrap();
    assert!(s.custom_fields.is_empty());
    assert_eq!(
        s.schema["properties"]["custom_fields"],
        json!({"type": ["object", "null"]})
    );
    // Other failures are the caller's to see.
    let e = front
        .discover(&StreamId::from(streams::CONVERSATIONS))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    let e = front.discover(&StreamId::from("deals")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}
