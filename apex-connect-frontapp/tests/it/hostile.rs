//! Issue 8: records made from Front's documented shapes with hostile variations never fail a
//! page. The shapes are the examples of Front's OpenAPI spec (tests/fixtures/spec_examples.json,
//! one example object per stream, assembled from the spec's `example` values), varied by
//! `apex_connect_testkit::hostile`: every optional field present, absent or `null`, numbers
//! negative, fractional or huge, strings where numbers were documented, arrays of arrays
//! where objects were, unknown keys of any type at any level (`_links` included). Only the
//! envelope (id and the stream's timestamp) is kept valid.
//!
//! Every variant must come out of a page read as a record that maps, or as a quarantined
//! reject, with zero page failures; since the envelopes are kept valid, every variant is in
//! fact a record, and since mapping is lenient, every record maps.

use std::sync::OnceLock;

use apex_connect_core::{Connector, ErrorKind, StreamId};
use apex_connect_frontapp::api::parse_list;
use apex_connect_frontapp::models::read_items;
use apex_connect_frontapp::{FrontConnector, streams};
use apex_connect_testkit::hostile;
use bytes::Bytes;
use proptest::prelude::*;
use secrecy::SecretString;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::{catch_all, connector};

/// The fields each stream's envelope reads: kept valid in every variant.
fn keep(stream: &str) -> &'static [&'static str] {
    match stream {
        streams::CONVERSATIONS | streams::CONTACTS | streams::TAGS => &["id", "updated_at"],
        streams::MESSAGES => &["id", "created_at"],
        streams::COMMENTS => &["id", "posted_at"],
        streams::EVENTS => &["id", "emitted_at"],
        _ => &["id"],
    }
}

/// The documented example objects of `stream` (the spec's examples).
fn examples(stream: &str) -> Vec<Value> {
    static ALL: OnceLock<Value> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        let text = std::fs::read_to_string(format!(
            "{}/tests/fixtures/spec_examples.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("spec examples");
        serde_json::from_str(&text).expect("spec examples are JSON")
    });
    all["examples"][stream]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no example for {stream}"))
}

fn page_body(items: &[Value]) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&json!({
            "_pagination": {"next": null},
            "_links": {"self": "https://yourCompany.api.frontapp.com/x"},
            "_results": items,
        }))
        .unwrap(),
    )
}

/// A connector for mapping (it makes no request).
fn front() -> &'static FrontConnector {
    static FRONT: OnceLock<FrontConnector> = OnceLock::new();
    FRONT.get_or_init(|| {
        FrontConnector::builder()
            .api_token(SecretString::from("unused-token"))
            .build()
            .unwrap()
    })
}

/// Reads a page of `variants` as the connector does and maps every record; fails on a page
/// failure or on a variant that is neither a record that maps nor a reject.
fn check(stream: &str, variants: &[Value]) -> Result<(), TestCaseError> {
    let front = front();
    let body = page_body(variants);
    let list = parse_list(&body, 100).map_err(|e| TestCaseError::fail(format!("page: {e}")))?;
    prop_assert_eq!(list.items.len(), variants.len());
    let (records, rejects) = read_items(stream, list.items, Some("cnv_parent"))
        .map_err(|e| TestCaseError::fail(format!("page: {e}")))?;
    prop_assert_eq!(
        records.len() + rejects.len(),
        variants.len(),
        "nothing lost"
    );
    prop_assert!(
        rejects.is_empty(),
        "valid envelopes are never rejected: {:?}",
        rejects.first().map(|r| &r.error)
    );
    for (r, v) in records.iter().zip(variants) {
        prop_assert_eq!(&r.raw.to_value().unwrap(), v, "raw kept as sent");
        match front.map_entity(r) {
            Ok(Some(_)) => {}
            Ok(None) => prop_assert!(false, "an upsert maps to an entity"),
            Err(e) => prop_assert!(false, "{} {} does not map: {} ({})", stream, r.id, e, v),
        }
        prop_assert!(
            front
                .parse_record(
                    &StreamId::from(stream.to_string()),
                    &r.raw,
                    r.parent.as_deref()
                )
                .is_ok_and(|back| back.id == r.id && back.version == r.version)
        );
    }
    Ok(())
}

fn variants_of(stream: &'static str) -> BoxedStrategy<Vec<Value>> {
    let strategies: Vec<BoxedStrategy<Value>> = examples(stream)
        .into_iter()
        .map(|e| hostile::strategy(e, keep(stream)))
        .collect();
    prop::collection::vec(prop::strategy::Union::new(strategies), 1..12).boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn conversation_pages_never_fail(v in variants_of(streams::CONVERSATIONS)) {
        check(streams::CONVERSATIONS, &v)?;
    }

    #[test]
    fn message_pages_never_fail(v in variants_of(streams::MESSAGES)) {
        check(streams::MESSAGES, &v)?;
    }

    #[test]
    fn comment_pages_never_fail(v in variants_of(streams::COMMENTS)) {
        check(streams::COMMENTS, &v)?;
    }

    #[test]
    fn contact_pages_never_fail(v in variants_of(streams::CONTACTS)) {
        check(streams::CONTACTS, &v)?;
    }

    #[test]
    fn tag_pages_never_fail(v in variants_of(streams::TAGS)) {
        check(streams::TAGS, &v)?;
    }

    #[test]
    fn teammate_pages_never_fail(v in variants_of(streams::TEAMMATES)) {
        check(streams::TEAMMATES, &v)?;
    }

    #[test]
    fn inbox_pages_never_fail(v in variants_of(streams::INBOXES)) {
        check(streams::INBOXES, &v)?;
    }

    #[test]
    fn event_pages_never_fail(v in variants_of(streams::EVENTS)) {
        check(streams::EVENTS, &v)?;
    }

    /// Objects whose envelope is broken too (any field varied, `id` and timestamps
    /// included): still no page failure; each is a record or a reject, none lost.
    #[test]
    fn broken_envelopes_are_quarantined_not_fatal(seed in any::<u64>()) {
        for stream in streams::ALL {
            let variants: Vec<Value> = examples(stream)
                .iter()
                .flat_map(|e| hostile::variants(e, &[], seed, 8))
                .filter(Value::is_object)
                .collect();
            let body = page_body(&variants);
            let list = parse_list(&body, 100)
                .map_err(|e| TestCaseError::fail(format!("page: {e}")))?;
            let (records, rejects) = read_items(stream, list.items, None)
                .map_err(|e| TestCaseError::fail(format!("page: {e}")))?;
            prop_assert_eq!(records.len() + rejects.len(), variants.len());
            for r in &rejects {
                prop_assert_eq!(r.stage, apex_connect_core::RejectStage::Parse);
                prop_assert!(!r.error.is_empty());
            }
            for r in &records {
                prop_assert!(front().map_entity(r).is_ok());
            }
        }
    }
}

/// The example end to end: a message and a comment whose attachment has
/// `"size": -39484462` (the spec types it as a plain number) read and map; they used to fail
/// whole `messages` and `comments` pages with `expected u64`. And 200 hostile variants of the
/// documented message in one conversation's messages pages: zero page failures.
#[tokio::test]
async fn hostile_messages_and_comments_pages_read_and_map() {
    let server = MockServer::start().await;
    catch_all(&server).await;
    Mock::given(method("GET"))
        .and(path("/conversations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "_pagination": {"next": null},
            "_results": [{"id": "cnv_1", "updated_at": 1.0}, {"id": "cnv_2", "updated_at": 1.0}]
        })))
        .mount(&server)
        .await;
    let mut message = examples(streams::MESSAGES).remove(0);
    message["attachments"][0]["size"] = json!(-39484462);
    let mut comment = examples(streams::COMMENTS).remove(0);
    comment["attachments"] = json!([{"id": "fil_1", "filename": "x.png", "size": -39484462}]);
    let mut hostile_messages = hostile::variants(&message, keep(streams::MESSAGES), 11, 90);
    for (i, v) in hostile_messages.iter_mut().enumerate() {
        v["id"] = json!(format!("msg_h{i}"));
    }
    hostile_messages.insert(0, message.clone());
    Mock::given(method("GET"))
        .and(path("/conversations/cnv_1/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "_pagination": {"next": null}, "_results": hostile_messages
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/conversations/cnv_2/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "_pagination": {"next": null}, "_results": []
        })))
        .mount(&server)
        .await;
    for c in ["cnv_1", "cnv_2"] {
        Mock::given(method("GET"))
            .and(path(format!("/conversations/{c}/comments")))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"_results": [comment.clone()]})),
            )
            .mount(&server)
            .await;
    }
    let front = connector(&server);
    for (stream, want) in [(streams::MESSAGES, 91), (streams::COMMENTS, 2)] {
        let s = StreamId::from(stream);
        let page = front.read(&s, None).await.unwrap();
        assert!(page.rejects.is_empty(), "{:?}", page.rejects.first());
        assert_eq!(page.records.len(), want, "{stream}");
        for r in &page.records {
            let e = front.map_entity(r).unwrap().unwrap();
            if r.id == "msg_1q15qmtq" || stream == streams::COMMENTS {
                assert_eq!(e.attributes["attachments"][0]["size"], json!(-39484462));
            }
        }
    }
    let e = front
        .read(&StreamId::from("deals"), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}
