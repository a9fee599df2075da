//! The Singer tap over the memory platform: catalog, schema validation, raw bytes on the hot
//! path, deletes, field selection.

use std::collections::{BTreeMap, BTreeSet};

use apex_connect_core::{StreamId, read_pages};
use apex_connect_server::tap::{discover, plan_all, plan_from_catalog, run_tap};
use apex_connect_testkit::MemoryConnector;
use futures::StreamExt;
use serde_json::{Value, json};

/// Parses tap output and checks it: a SCHEMA before each stream's RECORDs, every RECORD
/// valid against its stream's SCHEMA and holding its key properties, STATE last. Returns the
/// records per stream.
pub fn check_singer(out: &[u8]) -> BTreeMap<String, Vec<Value>> {
    let text = std::str::from_utf8(out).unwrap();
    let mut schemas: BTreeMap<String, (Vec<String>, jsonschema::Validator)> = BTreeMap::new();
    let mut records: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut last = None;
    for l in text.lines() {
        let m: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"));
        let stream = m["stream"].as_str().map(str::to_string);
        match m["type"].as_str() {
            Some("SCHEMA") => {
                let keys: Vec<String> =
                    serde_json::from_value(m["key_properties"].clone()).unwrap();
                assert!(!keys.is_empty(), "{m}");
                let validator = jsonschema::validator_for(&m["schema"])
                    .unwrap_or_else(|e| panic!("not a JSON Schema: {e}: {m}"));
                schemas.insert(stream.clone().unwrap(), (keys, validator));
                records.entry(stream.unwrap()).or_default();
            }
            Some("RECORD") => {
                let stream = stream.unwrap();
                let (keys, validator) = schemas
                    .get(&stream)
                    .unwrap_or_else(|| panic!("RECORD of {stream} before its SCHEMA"));
                for k in keys {
                    assert!(m["record"].get(k).is_some(), "no key {k}: {m}");
                }
                let errors: Vec<String> = validator
                    .iter_errors(&m["record"])
                    .map(|e| e.to_string())
                    .collect();
                assert!(errors.is_empty(), "RECORD not valid: {errors:?}: {m}");
                assert!(m["time_extracted"].is_string(), "{m}");
                records.entry(stream).or_default().push(m["record"].clone());
            }
            Some("STATE") => assert!(m["value"]["bookmarks"].is_object(), "{m}"),
            other => panic!("unknown message {other:?}: {m}"),
        }
        last = Some(m);
    }
    assert_eq!(last.unwrap()["type"], "STATE", "STATE comes last");
    records
}

fn connector() -> MemoryConnector {
    let c = MemoryConnector::new(["items", "users"], 3, b"s").with_generated("users", 4, 80);
    let items = StreamId::from("items");
    c.put(
        &items,
        "a",
        json!({"id": "a", "name": "Ada", "email": "ada@example.com", "city": "London"}),
    );
    c.put(
        &items,
        "b",
        json!({"id": "b", "name": "Bob", "email": null, "city": "Paris", "tags": [1, [2]]}),
    );
    c.put(
        &items,
        "c",
        json!({"id": "c", "name": "Cy", "nested": {"id": "x"}}),
    );
    c.remove(&items, "b");
    c.put(
        &items,
        "d",
        json!({"id": "d", "name": "Di\u{e9}", "email": "d@example.com"}),
    );
    c
}

#[tokio::test]
async fn every_record_validates_and_the_hot_path_passes_raw_bytes() {
    let c = connector();
    let plan = plan_all(&c, &[]).await.unwrap();
    assert_eq!(plan.len(), 2);
    let mut out = Vec::new();
    let state = run_tap(&c, &plan, None, &mut out).await.unwrap();
    let records = check_singer(&out);
    assert_eq!(records["users"].len(), 4);
    let items = &records["items"];
    assert_eq!(items.len(), 4, "a, c, d and b's delete");
    let deleted: Vec<&Value> = items.iter().filter(|r| r["_sdc_deleted"] == true).collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["id"], "b");
    // The SCHEMA names the key and the bookmark (the replication key).
    let text = String::from_utf8(out.clone()).unwrap();
    let schema: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|m| m["type"] == "SCHEMA" && m["stream"] == "items")
        .unwrap();
    assert_eq!(schema["key_properties"], json!(["id"]));
    assert_eq!(schema["bookmark_properties"], json!(["version"]));
    // Every upsert's RECORD line holds the record's raw JSON bytes exactly as read.
    let items = StreamId::from("items");
    let mut pages = read_pages(&c, &items, None);
    let mut raw_seen = 0;
    while let Some(page) = pages.next().await {
        for r in page.unwrap().records {
            if r.op == apex_connect_core::Op::Upsert {
                let needle = format!("\"record\":{},", r.raw.as_str());
                assert!(
                    text.contains(&needle),
                    "raw bytes of {} not in the output",
                    r.id
                );
                raw_seen += 1;
            }
        }
    }
    assert_eq!(raw_seen, 3);
    // Resuming from the final state reads nothing new.
    let mut again = Vec::new();
    run_tap(&c, &plan, Some(state), &mut again).await.unwrap();
    assert!(check_singer(&again).values().all(Vec::is_empty));
}

#[tokio::test]
async fn discover_builds_a_singer_catalog() {
    let c = connector();
    let catalog = discover(&c, &[StreamId::from("items")]).await.unwrap();
    let streams = catalog["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 1);
    let s = &streams[0];
    assert_eq!(s["tap_stream_id"], "items");
    assert_eq!(s["key_properties"], json!(["id"]));
    assert_eq!(s["replication_key"], "version");
    assert_eq!(s["schema"]["type"], "object");
    let meta: BTreeMap<String, Value> = s["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["breadcrumb"].to_string(), m["metadata"].clone()))
        .collect();
    let top = &meta["[]"];
    assert_eq!(top["inclusion"], "available");
    assert_eq!(top["selected"], true);
    assert_eq!(top["table-key-properties"], json!(["id"]));
    assert_eq!(top["valid-replication-keys"], json!(["version"]));
    assert_eq!(top["forced-replication-method"], "INCREMENTAL");
    assert_eq!(meta[r#"["properties","id"]"#]["inclusion"], "automatic");
    assert_eq!(
        meta[r#"["properties","version"]"#]["inclusion"],
        "automatic"
    );
    // The discovered catalog, fed back as is, runs everything on the raw-bytes path.
    let plan = plan_from_catalog(&c, &catalog).unwrap();
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0].fields, None);
    assert!(
        discover(&c, &[StreamId::from("nope")]).await.is_err(),
        "unknown stream"
    );
}

#[tokio::test]
async fn a_catalog_selecting_one_stream_and_two_fields_emits_exactly_those() {
    let c = connector();
    let prop = |name: &str, selected: Option<bool>| {
        let mut meta = json!({"inclusion": "available"});
        if let Some(s) = selected {
            meta["selected"] = json!(s);
        }
        json!({"breadcrumb": ["properties", name], "metadata": meta})
    };
    let catalog = json!({"streams": [
        {
            "tap_stream_id": "items",
            "stream": "items",
            "key_properties": ["id"],
            "schema": {"type": "object", "properties": {
                "id": {"type": ["string"]},
                "name": {"type": ["string", "null"]},
                "email": {"type": ["string", "null"]},
                "city": {"type": ["string", "null"]},
                "tags": {}
            }},
            "metadata": [
                {"breadcrumb": [], "metadata": {"selected": true, "inclusion": "available"}},
                {"breadcrumb": ["properties", "id"], "metadata": {"inclusion": "automatic"}},
                prop("name", Some(true)),
                prop("email", Some(true)),
                prop("city", Some(false)),
                prop("tags", None),
            ]
        },
        {
            "tap_stream_id": "users",
            "schema": {"type": "object", "properties": {"id": {}}},
            "metadata": [{"breadcrumb": [], "metadata": {"selected": false}}]
        }
    ]});
    let plan = plan_from_catalog(&c, &catalog).unwrap();
    assert_eq!(plan.len(), 1, "users is not selected");
    let mut out = Vec::new();
    run_tap(&c, &plan, None, &mut out).await.unwrap();
    let records = check_singer(&out);
    assert_eq!(records.keys().collect::<Vec<_>>(), ["items"]);
    let upserts: Vec<&Value> = records["items"]
        .iter()
        .filter(|r| r.get("_sdc_deleted").is_none())
        .collect();
    assert_eq!(upserts.len(), 3);
    for r in &upserts {
        let keys: BTreeSet<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        let allowed = BTreeSet::from(["id", "name", "email"]);
        assert!(keys.is_subset(&allowed), "{r}");
        assert!(keys.contains("id") && keys.contains("name"), "{r}");
    }
    assert_eq!(
        upserts[0],
        &json!({"id": "a", "name": "Ada", "email": "ada@example.com"})
    );
    // The SCHEMA sent lists the kept fields only.
    let schema: Value = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|m| m["type"] == "SCHEMA")
        .unwrap();
    let props: BTreeSet<&str> = schema["schema"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        props,
        BTreeSet::from(["id", "name", "email", "_sdc_deleted"])
    );

    // The legacy properties format (`selected` in the schemas) selects the same way.
    let legacy = json!({"streams": [{
        "tap_stream_id": "items",
        "schema": {"type": "object", "selected": true, "properties": {
            "id": {"type": "string"},
            "name": {"type": "string", "selected": true},
            "city": {"type": "string", "selected": false}
        }}
    }]});
    let plan = plan_from_catalog(&c, &legacy).unwrap();
    assert_eq!(
        plan[0]
            .fields
            .as_ref()
            .unwrap()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["_sdc_deleted", "id", "name", "version"]
    );
    // A stream the connector lacks is refused.
    let bad = json!({"streams": [{"tap_stream_id": "nope", "metadata": [{"breadcrumb": [], "metadata": {"selected": true}}]}]});
    assert!(plan_from_catalog(&c, &bad).is_err());
    assert!(plan_from_catalog(&c, &json!({"nope": 1})).is_err());
}
