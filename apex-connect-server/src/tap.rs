//! `apex-connect tap`: any connector as a Singer tap.
//!
//! - [`discover`] builds a catalog from [`Connector::discover`]: each stream's JSON Schema,
//!   `key_properties`, and `metadata` with `inclusion` (`automatic` for the key and the
//!   replication key, `available` otherwise), `selected`, `table-key-properties`,
//!   `valid-replication-keys` and `forced-replication-method` (`INCREMENTAL` or `FULL_TABLE`).
//! - [`plan_all`] emits every stream with every field; [`plan_from_catalog`] only the streams
//!   and fields a catalog selects (Singer's `--catalog`, and the legacy `--properties`).
//! - [`run_tap`] writes `SCHEMA` (with `key_properties` and `bookmark_properties`), `RECORD`
//!   and `STATE` messages. When every field of a stream is selected, a `RECORD` line embeds the
//!   record's raw JSON bytes as the platform sent them, without parsing them again; only field
//!   selection (and deletes, which carry `"_sdc_deleted": true`) parse a record.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;

use apex_connect_core::{
    Connector, CursorToken, Error, Op, RawJson, Record, Result, StreamId, StreamInfo, read_pages,
};
use futures::StreamExt;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

/// The property a deleted record carries (`true`), as Singer targets expect.
pub const DELETED_PROPERTY: &str = "_sdc_deleted";

/// One stream a tap run emits: its schema, keys, and the fields it keeps.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TapStream {
    /// The stream.
    pub stream: StreamId,
    /// The JSON Schema sent in its `SCHEMA` message (restricted to the kept fields).
    pub schema: Value,
    /// Its primary key fields.
    pub key_properties: Vec<String>,
    /// The field its bookmark follows (the replication key), when incremental.
    pub bookmark_properties: Vec<String>,
    /// The top-level fields each record keeps; `None`: all of them (raw bytes pass through).
    pub fields: Option<BTreeSet<String>>,
}

/// Whether the stream reports deletes, its key and replication key.
fn info_of<'a>(connector: &'a dyn Connector, stream: &StreamId) -> Result<&'a StreamInfo> {
    connector.info().stream(stream).ok_or_else(|| {
        Error::config("the connector has no such stream")
            .with_context("stream", stream)
            .with_context(
                "streams",
                connector
                    .info()
                    .capabilities
                    .streams
                    .iter()
                    .map(|s| s.id.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )
    })
}

/// The streams to read: `streams`, or every stream of the connector when empty.
fn stream_ids(connector: &dyn Connector, streams: &[StreamId]) -> Result<Vec<StreamId>> {
    if streams.is_empty() {
        return Ok(connector
            .info()
            .capabilities
            .streams
            .iter()
            .map(|s| s.id.clone())
            .collect());
    }
    for s in streams {
        info_of(connector, s)?;
    }
    Ok(streams.to_vec())
}

/// Adds `_sdc_deleted` to a schema's properties for a stream that reports deletes.
fn with_deleted_property(mut schema: Value, deletes: bool) -> Value {
    if deletes && let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props
            .entry(DELETED_PROPERTY)
            .or_insert_with(|| json!({"type": ["boolean", "null"]}));
    }
    schema
}

/// The Singer catalog of `streams` (all of the connector's when empty), from
/// [`Connector::discover`].
///
/// # Errors
/// `Config` for a stream the connector lacks; the connector's errors (a describe call).
pub async fn discover(connector: &dyn Connector, streams: &[StreamId]) -> Result<Value> {
    let mut entries = Vec::new();
    for id in stream_ids(connector, streams)? {
        let info = info_of(connector, &id)?;
        let schema = connector.discover(&id).await?;
        let schema_json = with_deleted_property(schema.schema.clone(), info.deletes);
        let method = if schema.incremental {
            "INCREMENTAL"
        } else {
            "FULL_TABLE"
        };
        let automatic: BTreeSet<&str> = schema
            .key
            .iter()
            .map(String::as_str)
            .chain(schema.replication_key.as_deref())
            .chain(info.deletes.then_some(DELETED_PROPERTY))
            .collect();
        let mut stream_meta = json!({
            "inclusion": "available",
            "selected": true,
            "table-key-properties": schema.key,
            "forced-replication-method": method,
        });
        if let Some(rk) = &schema.replication_key {
            stream_meta["valid-replication-keys"] = json!([rk]);
        }
        let mut metadata = vec![json!({"breadcrumb": [], "metadata": stream_meta})];
        if let Some(props) = schema_json.get("properties").and_then(Value::as_object) {
            for name in props.keys() {
                let meta = if automatic.contains(name.as_str()) {
                    json!({"inclusion": "automatic"})
                } else {
                    json!({"inclusion": "available", "selected": true})
                };
                metadata.push(json!({"breadcrumb": ["properties", name], "metadata": meta}));
            }
        }
        let mut entry = json!({
            "tap_stream_id": id,
            "stream": id,
            "schema": schema_json,
            "key_properties": schema.key,
            "replication_method": method,
            "metadata": metadata,
        });
        if let Some(rk) = &schema.replication_key {
            entry["replication_key"] = json!(rk);
        }
        entries.push(entry);
    }
    Ok(json!({ "streams": entries }))
}

/// Every field of `streams` (all of the connector's when empty), schemas from
/// [`Connector::discover`].
///
/// # Errors
/// As [`discover`].
pub async fn plan_all(connector: &dyn Connector, streams: &[StreamId]) -> Result<Vec<TapStream>> {
    let mut out = Vec::new();
    for id in stream_ids(connector, streams)? {
        let info = info_of(connector, &id)?;
        let schema = connector.discover(&id).await?;
        out.push(TapStream {
            stream: id,
            schema: with_deleted_property(schema.schema, info.deletes),
            key_properties: schema.key,
            bookmark_properties: schema.replication_key.into_iter().collect(),
            fields: None,
        });
    }
    Ok(out)
}

/// A catalog entry's metadata at `breadcrumb`.
fn metadata_at<'a>(entry: &'a Value, breadcrumb: &[&str]) -> Option<&'a Map<String, Value>> {
    entry
        .get("metadata")?
        .as_array()?
        .iter()
        .find(|m| {
            m.get("breadcrumb")
                .and_then(Value::as_array)
                .is_some_and(|b| {
                    b.len() == breadcrumb.len()
                        && b.iter()
                            .zip(breadcrumb)
                            .all(|(x, y)| x.as_str() == Some(*y))
                })
        })?
        .get("metadata")?
        .as_object()
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v?.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// The streams and fields a Singer catalog selects (`--catalog`, or the legacy
/// `--properties`), in catalog order.
///
/// # Behavior
/// - A stream is emitted when its stream metadata (breadcrumb `[]`) says `"selected": true`,
///   or, in a legacy properties file, its schema does.
/// - A field is kept when its metadata says `"inclusion": "automatic"` (and always for the
///   stream's key, its replication key and `_sdc_deleted`); never when `"unsupported"`; else
///   per its `selected` (or the legacy `selected` in its schema), else its
///   `selected-by-default`; a catalog that gives no field metadata at all for a stream keeps
///   every field.
/// - The `SCHEMA` sent is the catalog's schema restricted to the kept fields.
///
/// # Errors
/// `Config` for a catalog that is not a Singer catalog or names a stream the connector lacks.
pub fn plan_from_catalog(connector: &dyn Connector, catalog: &Value) -> Result<Vec<TapStream>> {
    let entries = catalog
        .get("streams")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::config("the catalog has no `streams` array"))?;
    let mut out = Vec::new();
    for entry in entries {
        let name = entry
            .get("tap_stream_id")
            .or_else(|| entry.get("stream"))
            .and_then(Value::as_str)
            .ok_or_else(|| Error::config("a catalog stream has no `tap_stream_id`"))?;
        let id = StreamId::from(name.to_string());
        let info = info_of(connector, &id)?;
        let stream_meta = metadata_at(entry, &[]);
        let schema = entry.get("schema").cloned().unwrap_or_else(|| json!({}));
        let selected = stream_meta
            .and_then(|m| m.get("selected"))
            .and_then(Value::as_bool)
            .or_else(|| schema.get("selected").and_then(Value::as_bool))
            .unwrap_or(false);
        if !selected {
            continue;
        }
        let key_properties = strings(entry.get("key_properties"))
            .or_else(|| strings(stream_meta.and_then(|m| m.get("table-key-properties"))))
            .unwrap_or_else(|| info.key.iter().map(|k| k.to_string()).collect());
        let replication_key = entry
            .get("replication_key")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                stream_meta
                    .and_then(|m| m.get("replication-key"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .or_else(|| info.replication_key.as_ref().map(|k| k.to_string()))
            .filter(|_| info.incremental);
        let mut always: BTreeSet<String> = key_properties.iter().cloned().collect();
        always.extend(info.key.iter().map(|k| k.to_string()));
        always.extend(replication_key.iter().cloned());
        if info.deletes {
            always.insert(DELETED_PROPERTY.to_string());
        }
        let has_field_metadata =
            entry
                .get("metadata")
                .and_then(Value::as_array)
                .is_some_and(|ms| {
                    ms.iter().any(|m| {
                        m.get("breadcrumb")
                            .and_then(Value::as_array)
                            .is_some_and(|b| {
                                b.first().and_then(Value::as_str) == Some("properties")
                            })
                    })
                });
        let props: Vec<(String, Value)> = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let mut kept = BTreeSet::new();
        let mut all = true;
        for (field, field_schema) in &props {
            let meta = metadata_at(entry, &["properties", field]);
            let inclusion = meta
                .and_then(|m| m.get("inclusion"))
                .and_then(Value::as_str);
            let keep = if always.contains(field) || inclusion == Some("automatic") {
                true
            } else if inclusion == Some("unsupported") {
                false
            } else if let Some(sel) = meta
                .and_then(|m| m.get("selected"))
                .and_then(Value::as_bool)
                .or_else(|| field_schema.get("selected").and_then(Value::as_bool))
            {
                sel
            } else if let Some(default) = meta
                .and_then(|m| m.get("selected-by-default"))
                .and_then(Value::as_bool)
            {
                default
            } else {
                !has_field_metadata
            };
            if keep {
                kept.insert(field.clone());
            } else {
                all = false;
            }
        }
        let (schema, fields) = if all {
            (schema, None)
        } else {
            kept.extend(always.iter().cloned());
            (restrict_schema(schema, &kept), Some(kept))
        };
        out.push(TapStream {
            stream: id,
            schema: with_deleted_property(schema, info.deletes),
            key_properties,
            bookmark_properties: replication_key.into_iter().collect(),
            fields,
        });
    }
    Ok(out)
}

/// `schema` with only the `kept` properties (and `required` entries).
fn restrict_schema(mut schema: Value, kept: &BTreeSet<String>) -> Value {
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props.retain(|k, _| kept.contains(k));
    }
    if let Some(req) = schema.get_mut("required").and_then(Value::as_array_mut) {
        req.retain(|r| r.as_str().is_some_and(|r| kept.contains(r)));
    }
    schema
}

/// The Singer state: `{"bookmarks": {"<stream>": {"cursor": "<opaque token>"}}}`.
fn bookmark(state: &Value, stream: &StreamId) -> Option<CursorToken> {
    state
        .get("bookmarks")?
        .get(stream.as_str())?
        .get("cursor")?
        .as_str()
        .map(|s| CursorToken::from_string(s.to_string()))
}

fn io(e: std::io::Error) -> Error {
    Error::storage("cannot write a Singer message").set_source(e)
}

fn line(out: &mut impl Write, msg: &Value) -> Result<()> {
    serde_json::to_writer(&mut *out, msg)
        .map_err(|e| Error::storage("cannot write a Singer message").set_source(e))?;
    out.write_all(b"\n").map_err(io)
}

/// A map key borrowed from the input when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The top-level members of a JSON object, values as raw slices.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Members<'de>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Whether the raw JSON is an object (its first non-blank byte is `{`).
fn is_object(raw: &RawJson) -> bool {
    raw.as_bytes()
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

/// Writes the `record` value of `r` for `stream`.
fn write_record(out: &mut impl Write, r: &Record, stream: &TapStream) -> Result<()> {
    // Hot path: every field selected, an upsert of an object: the bytes as received.
    if r.op == Op::Upsert && stream.fields.is_none() && is_object(&r.raw) {
        return out.write_all(r.raw.as_bytes()).map_err(io);
    }
    let keep = |k: &str| stream.fields.as_ref().is_none_or(|f| f.contains(k));
    if r.op == Op::Upsert
        && is_object(&r.raw)
        && let Ok(Members(members)) = r.raw.deserialize::<Members<'_>>()
    {
        // Field selection: only the kept members, each value's bytes as received.
        out.write_all(b"{").map_err(io)?;
        let mut first = true;
        for (k, v) in members.iter().filter(|(k, _)| keep(k)) {
            if !first {
                out.write_all(b",").map_err(io)?;
            }
            first = false;
            serde_json::to_writer(&mut *out, k.as_ref())
                .map_err(|e| Error::storage("cannot write a Singer message").set_source(e))?;
            out.write_all(b":").map_err(io)?;
            out.write_all(v.get().as_bytes()).map_err(io)?;
        }
        return out.write_all(b"}").map_err(io);
    }
    // Deletes and values that are not objects: an object built from the envelope.
    let mut record = match r.raw.to_value() {
        Ok(Value::Object(m)) => m,
        Ok(Value::Null) | Err(_) => Map::new(),
        Ok(other) => {
            let mut m = Map::new();
            m.insert("value".into(), other);
            m
        }
    };
    if let [key] = stream.key_properties.as_slice()
        && !record.contains_key(key)
    {
        record.insert(key.clone(), Value::String(r.id.clone()));
    }
    if r.op == Op::Delete {
        record.insert(DELETED_PROPERTY.into(), Value::Bool(true));
    }
    if stream.fields.is_some() {
        record.retain(|k, _| keep(k) || k == DELETED_PROPERTY);
    }
    serde_json::to_writer(&mut *out, &record)
        .map_err(|e| Error::storage("cannot write a Singer message").set_source(e))
}

/// Emits `streams` of `connector` as Singer messages on `out`: for each stream a `SCHEMA`
/// (the stream's schema, `key_properties`, `bookmark_properties`) before its `RECORD`s, a
/// `STATE` after each page, and a final `STATE`. Reading starts from the bookmarks of `state`
/// (a previous run's last `STATE` value), so a run resumes where the last one stopped.
/// Deletes are records with `"_sdc_deleted": true`. Returns the final state.
///
/// # Errors
/// The connector's errors (the state written so far stays valid); `Storage` when `out` fails.
pub async fn run_tap(
    connector: &dyn Connector,
    streams: &[TapStream],
    state: Option<Value>,
    out: &mut impl Write,
) -> Result<Value> {
    // Block-buffered whatever `out` is (standard output is line-buffered: one write(2) per
    // message); flushed after each page and at the end.
    let out = &mut std::io::BufWriter::with_capacity(1 << 16, out);
    let mut state = state.unwrap_or_else(|| json!({"bookmarks": {}}));
    if !state.get("bookmarks").is_some_and(Value::is_object) {
        state = json!({"bookmarks": {}});
    }
    for stream in streams {
        let mut schema_msg = json!({
            "type": "SCHEMA",
            "stream": stream.stream,
            "schema": stream.schema,
            "key_properties": stream.key_properties,
        });
        if !stream.bookmark_properties.is_empty() {
            schema_msg["bookmark_properties"] = json!(stream.bookmark_properties);
        }
        line(out, &schema_msg)?;
        let prefix = {
            let mut p = br#"{"type":"RECORD","stream":"#.to_vec();
            serde_json::to_writer(&mut p, stream.stream.as_str())
                .map_err(|e| Error::storage("cannot write a Singer message").set_source(e))?;
            p.extend_from_slice(br#","record":"#);
            p
        };
        let start = bookmark(&state, &stream.stream);
        let mut pages = read_pages(connector, &stream.stream, start);
        while let Some(page) = pages.next().await {
            let page = page?;
            let suffix = format!(
                ",\"time_extracted\":\"{}\"}}\n",
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            );
            for r in &page.records {
                out.write_all(&prefix).map_err(io)?;
                write_record(out, r, stream)?;
                out.write_all(suffix.as_bytes()).map_err(io)?;
            }
            if !page.rejects.is_empty() {
                // A tap has no quarantine: say so on stderr (the log), keep going.
                tracing::warn!(stream = %stream.stream, rejected = page.rejects.len(),
                    first_error = %page.rejects[0].error, "records whose envelope cannot be read were skipped");
            }
            if let Some(next) = &page.next
                && let Some(b) = state.get_mut("bookmarks").and_then(Value::as_object_mut)
            {
                b.insert(stream.stream.to_string(), json!({"cursor": next.as_str()}));
                line(out, &json!({"type": "STATE", "value": state}))?;
            }
            out.flush().map_err(io)?;
        }
    }
    line(out, &json!({"type": "STATE", "value": state}))?;
    out.flush().map_err(io)?;
    Ok(state)
}
