//! `apex-connect tap`: any connector as a Singer tap (SCHEMA, RECORD, STATE on stdout).

use std::io::Write;

use apex_connect_core::{Connector, CursorToken, Error, Op, Result, StreamId, read_pages};
use futures::StreamExt;
use serde_json::{Value, json};

/// The Singer state: `{"bookmarks": {"<stream>": {"cursor": "<opaque token>"}}}`.
fn bookmark(state: &Value, stream: &StreamId) -> Option<CursorToken> {
    state
        .get("bookmarks")?
        .get(stream.as_str())?
        .get("cursor")?
        .as_str()
        .map(|s| CursorToken::from_string(s.to_string()))
}

fn line(out: &mut impl Write, msg: &Value) -> Result<()> {
    serde_json::to_writer(&mut *out, msg)
        .map_err(|e| Error::storage("cannot write a Singer message").set_source(e))?;
    out.write_all(b"\n")
        .map_err(|e| Error::storage("cannot write a Singer message").set_source(e))
}

/// Emits every stream of `connector` (or `streams`) as Singer messages on `out`:
/// for each stream a `SCHEMA` (with `key_properties` from the stream's key) before its
/// `RECORD`s, a `STATE` after each page, and a final `STATE`. Reading starts from the
/// bookmarks of `state` (a previous run's last `STATE` value), so a run resumes where the last
/// one stopped. Deletes are emitted as records with `"_sdc_deleted": true`.
/// Returns the final state.
///
/// # Errors
/// The connector's errors (the state written so far stays valid); `Storage` when `out` fails.
pub async fn run_tap(
    connector: &dyn Connector,
    streams: &[StreamId],
    state: Option<Value>,
    out: &mut impl Write,
) -> Result<Value> {
    let mut state = state.unwrap_or_else(|| json!({"bookmarks": {}}));
    if !state.get("bookmarks").is_some_and(Value::is_object) {
        state = json!({"bookmarks": {}});
    }
    let infos: Vec<_> = connector
        .info()
        .capabilities
        .streams
        .iter()
        .filter(|s| streams.is_empty() || streams.contains(&s.id))
        .cloned()
        .collect();
    for info in infos {
        let keys: Vec<String> = info.key.iter().map(|k| k.to_string()).collect();
        let mut properties = serde_json::Map::new();
        for k in &keys {
            properties.insert(k.clone(), json!({"type": ["string", "integer"]}));
        }
        line(
            out,
            &json!({
                "type": "SCHEMA",
                "stream": info.id,
                "schema": {"type": "object", "properties": properties, "additionalProperties": true},
                "key_properties": keys,
            }),
        )?;
        let start = bookmark(&state, &info.id);
        let mut pages = read_pages(connector, &info.id, start);
        while let Some(page) = pages.next().await {
            let page = page?;
            let extracted = chrono::Utc::now().to_rfc3339();
            for r in &page.records {
                let mut record = match &r.raw {
                    Value::Object(m) => m.clone(),
                    other => {
                        let mut m = serde_json::Map::new();
                        if !other.is_null() {
                            m.insert("value".into(), other.clone());
                        }
                        m
                    }
                };
                if keys.len() == 1 && !record.contains_key(&keys[0]) {
                    record.insert(keys[0].clone(), Value::String(r.id.clone()));
                }
                if r.op == Op::Delete {
                    record.insert("_sdc_deleted".into(), Value::Bool(true));
                }
                line(
                    out,
                    &json!({
                        "type": "RECORD", "stream": info.id, "record": record, "time_extracted": extracted,
                    }),
                )?;
            }
            if let Some(next) = &page.next
                && let Some(b) = state.get_mut("bookmarks").and_then(Value::as_object_mut)
            {
                b.insert(info.id.to_string(), json!({"cursor": next.as_str()}));
                line(out, &json!({"type": "STATE", "value": state}))?;
            }
            out.flush()
                .map_err(|e| Error::storage("cannot flush stdout").set_source(e))?;
        }
    }
    line(out, &json!({"type": "STATE", "value": state}))?;
    out.flush()
        .map_err(|e| Error::storage("cannot flush stdout").set_source(e))?;
    Ok(state)
}
