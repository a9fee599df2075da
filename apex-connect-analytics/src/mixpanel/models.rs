//! Mixpanel's record shapes: the strict envelopes the sync reads, the lenient views entities
//! are mapped from, record ids, and the streams' JSON Schemas.
//!
//! Envelopes (strict; a record whose envelope cannot be read is quarantined):
//! - exported event line: `event` (string), `properties.time` (number: seconds, or
//!   milliseconds with `time_in_ms`); `properties.distinct_id` and `properties.$insert_id` are
//!   read leniently (they only feed the deduplication key);
//! - profile / cohort member: `$distinct_id` (string or number, not empty);
//! - cohort: `id`; funnel: `funnel_id`; funnel result: `funnel_id` and `date` of the wrapper.

use std::borrow::Cow;

use apex_connect_core::lenient::{Lenient, LenientF64, LenientI64, LenientStr};
use apex_connect_core::{
    Entity, EntityKind, Error, Identity, RawJson, Record, Result, SourceRef, StreamId,
};
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::NAME;
use crate::days::local_ms_to_utc_ms;

/// The stream names.
pub mod streams {
    /// Raw events (Raw Event Export, JSONL), incremental by day windows.
    pub const EVENTS: &str = "events";
    /// User profiles (Engage), full refresh.
    pub const PROFILES: &str = "profiles";
    /// Cohorts (`cohorts/list`), full refresh.
    pub const COHORTS: &str = "cohorts";
    /// Cohort members (Engage with `filter_by_cohort`), full refresh.
    pub const COHORT_MEMBERS: &str = "cohort_members";
    /// Saved funnels (`funnels/list`), full refresh.
    pub const FUNNELS: &str = "funnels";
    /// Per-day step metrics of each funnel (`funnels`), incremental by day windows.
    pub const FUNNEL_RESULTS: &str = "funnel_results";
    /// Every stream.
    pub const ALL: &[&str] = &[
        EVENTS,
        PROFILES,
        COHORTS,
        COHORT_MEMBERS,
        FUNNELS,
        FUNNEL_RESULTS,
    ];
}

/// How event times and ids are read (from the connection's settings).
#[derive(Debug, Clone, Copy)]
pub struct EventTime {
    /// The project's time zone when `time` is stored in local time (pre-2023 projects).
    pub local_tz: Option<Tz>,
}

impl EventTime {
    /// `time` as the export wrote it, in milliseconds (seconds are told apart by magnitude:
    /// every Mixpanel time in seconds is below 10^11), converted to UTC.
    ///
    /// # Errors
    /// `InvalidResponse` when the value is not finite or out of range.
    pub fn to_utc_ms(&self, raw_ms: i64) -> Result<i64> {
        match self.local_tz {
            None => Ok(raw_ms),
            Some(tz) => local_ms_to_utc_ms(tz, raw_ms).ok_or_else(|| {
                Error::invalid_response("event time is outside the calendar")
                    .with_context("time_ms", raw_ms)
            }),
        }
    }
}

/// Reads a JSON number as milliseconds (see [`EventTime::to_utc_ms`]).
fn time_ms(n: &serde_json::Number) -> Option<i64> {
    let f = if let Some(i) = n.as_i64() {
        if i.unsigned_abs() < 100_000_000_000 {
            return i.checked_mul(1000);
        }
        return Some(i);
    } else {
        n.as_f64()?
    };
    if !f.is_finite() {
        return None;
    }
    let ms = if f.abs() < 1e11 { f * 1000.0 } else { f };
    apex_connect_core::lenient::f64_to_i64(ms.trunc())
}

#[derive(Deserialize)]
struct LineEnvelope<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    properties: PropsEnvelope<'a>,
}

#[derive(Deserialize)]
struct PropsEnvelope<'a> {
    time: serde_json::Number,
    #[serde(borrow, default)]
    distinct_id: LenientStr<'a>,
    #[serde(borrow, default, rename = "$insert_id")]
    insert_id: LenientStr<'a>,
}

/// The envelope of one exported event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHead {
    /// The record id: 32 hex digits of SHA-256 over Mixpanel's deduplication key (see
    /// [`event_key`]).
    pub id: String,
    /// The first 16 bytes of that hash (what a run's deduplication set holds).
    pub key: u128,
    /// The event's time in UTC, Unix milliseconds.
    pub time_utc_ms: i64,
}

/// The deduplication key of an event, as Mixpanel defines it: (`event`, `distinct_id`,
/// `time`, `$insert_id`), hashed with SHA-256 (each part length-prefixed). `time` is taken as
/// exported (milliseconds, before any time-zone conversion), so the key does not depend on the
/// time-zone setting. An event without `$insert_id` is keyed by a hash of its whole line
/// instead, so only byte-identical lines collapse.
pub fn event_key(
    event: &str,
    distinct_id: &str,
    time_ms: i64,
    insert_id: Option<&str>,
    line: &[u8],
) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut part = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    part(event.as_bytes());
    part(distinct_id.as_bytes());
    part(&time_ms.to_be_bytes());
    match insert_id {
        Some(i) => {
            part(b"insert_id");
            part(i.as_bytes());
        }
        None => {
            part(b"line");
            part(&Sha256::digest(line));
        }
    }
    h.finalize().into()
}

/// Reads the envelope of an exported line.
///
/// # Errors
/// `InvalidResponse` when the line is not JSON, `event` is not a string, `properties` not an
/// object, or `properties.time` not a number in range.
pub fn read_event(line: &[u8], time: &EventTime) -> Result<EventHead> {
    let env: LineEnvelope<'_> = serde_json::from_slice(line).map_err(|e| {
        Error::invalid_response("exported line is not an event (event, properties.time)")
            .set_source(e)
    })?;
    let raw_ms = time_ms(&env.properties.time).ok_or_else(|| {
        Error::invalid_response("event time is not a number in range")
            .with_context("time", env.properties.time.to_string())
    })?;
    let utc = time.to_utc_ms(raw_ms)?;
    if DateTime::<Utc>::from_timestamp_millis(utc).is_none() {
        return Err(Error::invalid_response(
            "event time is outside the calendar",
        ));
    }
    let digest = event_key(
        &env.event,
        env.properties.distinct_id.as_deref().unwrap_or(""),
        raw_ms,
        env.properties.insert_id.as_deref(),
        line,
    );
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    Ok(EventHead {
        id: hex::encode(first),
        key: u128::from_be_bytes(first),
        time_utc_ms: utc,
    })
}

/// A record of the events stream from one exported line (`line` kept as received).
///
/// # Errors
/// As [`read_event`].
pub fn event_record(line: Bytes, time: &EventTime) -> Result<(Record, u128)> {
    let head = read_event(&line, time)?;
    let raw = RawJson::parse(line)?;
    let record = Record::upsert(StreamId::from_static(streams::EVENTS), head.id, raw)
        .with_modified(head.time_utc_ms);
    Ok((record, head.key))
}

/// A string or a number as text (ids Mixpanel sends either way).
#[derive(Deserialize)]
#[serde(untagged)]
enum IdValue<'a> {
    Str(#[serde(borrow)] Cow<'a, str>),
    Int(i64),
    UInt(u64),
}

impl IdValue<'_> {
    fn text(&self) -> Option<String> {
        match self {
            IdValue::Str(s) if !s.trim().is_empty() => Some(s.to_string()),
            IdValue::Str(_) => None,
            IdValue::Int(i) => Some(i.to_string()),
            IdValue::UInt(u) => Some(u.to_string()),
        }
    }
}

#[derive(Deserialize)]
struct ProfileEnvelope<'a> {
    #[serde(borrow, rename = "$distinct_id")]
    distinct_id: IdValue<'a>,
}

/// The `$distinct_id` of an Engage result.
///
/// # Errors
/// `InvalidResponse` when it is missing, empty, or neither a string nor an integer.
pub fn profile_id(raw: &[u8]) -> Result<String> {
    let env: ProfileEnvelope<'_> = serde_json::from_slice(raw).map_err(|e| {
        Error::invalid_response("profile without a readable $distinct_id").set_source(e)
    })?;
    env.distinct_id
        .text()
        .ok_or_else(|| Error::invalid_response("profile with an empty $distinct_id"))
}

/// The record id of a cohort member: `<cohort id>:<distinct_id>`.
pub fn member_id(cohort: &str, distinct_id: &str) -> String {
    format!("{cohort}:{distinct_id}")
}

#[derive(Deserialize)]
struct CohortEnvelope<'a> {
    #[serde(borrow)]
    id: IdValue<'a>,
}

/// The `id` of a cohort.
///
/// # Errors
/// `InvalidResponse` when missing or empty.
pub fn cohort_id(raw: &[u8]) -> Result<String> {
    let env: CohortEnvelope<'_> = serde_json::from_slice(raw)
        .map_err(|e| Error::invalid_response("cohort without a readable id").set_source(e))?;
    env.id
        .text()
        .ok_or_else(|| Error::invalid_response("cohort with an empty id"))
}

#[derive(Deserialize)]
struct FunnelEnvelope<'a> {
    #[serde(borrow)]
    funnel_id: IdValue<'a>,
}

/// The `funnel_id` of a funnel (list item or result wrapper).
///
/// # Errors
/// `InvalidResponse` when missing or empty.
pub fn funnel_id(raw: &[u8]) -> Result<String> {
    let env: FunnelEnvelope<'_> = serde_json::from_slice(raw).map_err(|e| {
        Error::invalid_response("funnel without a readable funnel_id").set_source(e)
    })?;
    env.funnel_id
        .text()
        .ok_or_else(|| Error::invalid_response("funnel with an empty funnel_id"))
}

#[derive(Deserialize)]
struct FunnelResultEnvelope<'a> {
    #[serde(borrow)]
    funnel_id: IdValue<'a>,
    date: NaiveDate,
}

/// The record id of one funnel's results on one day: `<funnel_id>:<YYYY-MM-DD>`.
pub fn funnel_result_id(funnel: &str, date: NaiveDate) -> String {
    format!("{funnel}:{date}")
}

/// The id of a funnel result wrapper (`{"funnel_id", "date", "result"}`, see
/// [`funnel_result_raw`]).
///
/// # Errors
/// `InvalidResponse` when `funnel_id` or `date` cannot be read.
pub fn funnel_result_record_id(raw: &[u8]) -> Result<String> {
    let env: FunnelResultEnvelope<'_> = serde_json::from_slice(raw).map_err(|e| {
        Error::invalid_response("funnel result without funnel_id and date").set_source(e)
    })?;
    let f = env
        .funnel_id
        .text()
        .ok_or_else(|| Error::invalid_response("funnel result with an empty funnel_id"))?;
    Ok(funnel_result_id(&f, env.date))
}

/// The raw JSON of one funnel's results on one day. Mixpanel answers a date-keyed object
/// whose values do not repeat the funnel or the date, so the record wraps the day's object,
/// kept byte for byte under `result`: `{"funnel_id":7509,"date":"2024-01-02","result":{...}}`.
pub fn funnel_result_raw(funnel: &str, date: NaiveDate, result: &[u8]) -> Result<RawJson> {
    let id_json = match funnel.parse::<u64>() {
        Ok(n) => n.to_string(),
        Err(_) => serde_json::to_string(funnel).unwrap_or_else(|_| "null".into()),
    };
    let mut out = Vec::with_capacity(result.len() + 64);
    out.extend_from_slice(b"{\"funnel_id\":");
    out.extend_from_slice(id_json.as_bytes());
    out.extend_from_slice(b",\"date\":\"");
    out.extend_from_slice(date.to_string().as_bytes());
    out.extend_from_slice(b"\",\"result\":");
    out.extend_from_slice(result);
    out.push(b'}');
    RawJson::parse(Bytes::from(out))
}

fn rfc3339(ms: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn source(object_type: &'static str, id: impl Into<String>) -> SourceRef {
    SourceRef::new(NAME, object_type, id)
}

#[derive(Deserialize)]
struct EventView<'a> {
    #[serde(borrow, default)]
    event: LenientStr<'a>,
    #[serde(default)]
    properties: Lenient<Map<String, Value>>,
}

/// The Event entity of an events record: name, UTC time, `distinct_id`, the properties
/// (`custom_fields`), and a relation `performed_by` to the person.
///
/// # Errors
/// `InvalidResponse` when the record's JSON is not an object.
pub fn event_entity(record: &Record) -> Result<Entity> {
    let v: EventView<'_> = record.raw.deserialize()?;
    let mut props = v.properties.0.unwrap_or_default();
    let mut e = Entity::new(EntityKind::Event, source("event", record.id.clone()));
    if let Some(name) = v.event.non_empty() {
        e = e.with_name(name);
    }
    let distinct = props.remove("distinct_id").and_then(|d| match d {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    if let Some(ms) = record.updated_at {
        e = e
            .with_attr("time", json!(rfc3339(ms)))
            .with_attr("time_ms", json!(ms));
    }
    props.remove("time");
    if let Some(Value::String(i)) = props.remove("$insert_id") {
        e = e.with_attr("insert_id", json!(i));
    }
    if let Some(d) = &distinct {
        e = e
            .with_attr("distinct_id", json!(d))
            .with_relation("performed_by", source("person", d.clone()));
    }
    e.custom_fields = props;
    Ok(e)
}

#[derive(Deserialize)]
struct ProfileView {
    #[serde(default, rename = "$properties")]
    properties: Lenient<Map<String, Value>>,
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Keys of `$properties` mapped to attributes (the rest stay under their names in
/// `custom_fields`).
const PROFILE_ATTRS: &[(&str, &str)] = &[
    ("$created", "created"),
    ("$last_seen", "last_seen"),
    ("$city", "city"),
    ("$region", "region"),
    ("$country_code", "country_code"),
    ("$timezone", "timezone"),
];

/// The Person entity of a profile (or cohort member) with `distinct_id`: name from `$name` or
/// `$first_name` + `$last_name`, identities from `$email` and `$phone`, so analytics users meet
/// the CRM's and Front's people.
///
/// # Errors
/// `InvalidResponse` when the record's JSON is not an object.
pub fn person_entity(record: &Record, distinct_id: &str) -> Result<Entity> {
    let v: ProfileView = record.raw.deserialize()?;
    let mut props = v.properties.0.unwrap_or_default();
    let mut e = Entity::new(EntityKind::Person, source("person", distinct_id))
        .with_attr("distinct_id", json!(distinct_id));
    let name = text(props.get("$name")).or_else(|| {
        let first = text(props.get("$first_name"));
        let last = text(props.get("$last_name"));
        match (first, last) {
            (Some(f), Some(l)) => Some(format!("{f} {l}")),
            (Some(f), None) => Some(f),
            (None, Some(l)) => Some(l),
            (None, None) => None,
        }
    });
    if let Some(n) = name {
        e = e.with_name(n);
    }
    if let Some(email) = text(props.get("$email")).filter(|s| s.contains('@')) {
        e = e.with_identity(Identity::email(&email));
    }
    if let Some(phone) = text(props.get("$phone")).filter(|s| s.chars().any(|c| c.is_ascii_digit()))
    {
        e = e.with_identity(Identity::phone(&phone));
    }
    for (key, attr) in PROFILE_ATTRS {
        if let Some(v) = props.remove(*key) {
            e = e.with_attr(*attr, v);
        }
    }
    e.custom_fields = props;
    Ok(e)
}

#[derive(Deserialize)]
struct CohortView<'a> {
    #[serde(borrow, default)]
    name: LenientStr<'a>,
    #[serde(borrow, default)]
    description: LenientStr<'a>,
    #[serde(default)]
    count: LenientI64,
    #[serde(borrow, default)]
    created: LenientStr<'a>,
    #[serde(default)]
    is_visible: Lenient<Value>,
}

/// The Cohort entity (`EntityKind::Other("cohort")`).
///
/// # Errors
/// `InvalidResponse` when the record's JSON is not an object.
pub fn cohort_entity(record: &Record) -> Result<Entity> {
    let v: CohortView<'_> = record.raw.deserialize()?;
    let mut e = Entity::new(
        EntityKind::Other("cohort".into()),
        source("cohort", record.id.clone()),
    )
    .with_attr("description", json!(v.description.non_empty()))
    .with_attr("count", json!(v.count.0))
    .with_attr("created", json!(v.created.non_empty()));
    if let Some(vis) = v.is_visible.0 {
        let b = match vis {
            Value::Bool(b) => Some(b),
            Value::Number(n) => n.as_i64().map(|i| i != 0),
            _ => None,
        };
        e = e.with_attr("is_visible", json!(b));
    }
    if let Some(n) = v.name.non_empty() {
        e = e.with_name(n);
    }
    Ok(e)
}

#[derive(Deserialize)]
struct FunnelView<'a> {
    #[serde(borrow, default)]
    name: LenientStr<'a>,
}

/// The Funnel entity (`EntityKind::Other("funnel")`).
///
/// # Errors
/// `InvalidResponse` when the record's JSON is not an object.
pub fn funnel_entity(record: &Record) -> Result<Entity> {
    let v: FunnelView<'_> = record.raw.deserialize()?;
    let mut e = Entity::new(
        EntityKind::Other("funnel".into()),
        source("funnel", record.id.clone()),
    );
    if let Some(n) = v.name.non_empty() {
        e = e.with_name(n);
    }
    Ok(e)
}

#[derive(Deserialize)]
struct StepView<'a> {
    #[serde(borrow, default)]
    goal: LenientStr<'a>,
    #[serde(borrow, default)]
    event: LenientStr<'a>,
    #[serde(default)]
    count: LenientI64,
    #[serde(default)]
    step_conv_ratio: LenientF64,
    #[serde(default)]
    overall_conv_ratio: LenientF64,
    #[serde(default)]
    avg_time: LenientF64,
}

#[derive(Deserialize)]
struct AnalysisView {
    #[serde(default)]
    completion: LenientI64,
    #[serde(default)]
    starting_amount: LenientI64,
}

#[derive(Deserialize)]
struct ResultView<'a> {
    #[serde(borrow, default)]
    steps: apex_connect_core::lenient::LenientVec<Lenient<StepView<'a>>>,
    #[serde(default)]
    analysis: Lenient<AnalysisView>,
}

#[derive(Deserialize)]
struct FunnelResultView<'a> {
    #[serde(borrow, default)]
    result: Lenient<ResultView<'a>>,
    #[serde(borrow, default)]
    date: LenientStr<'a>,
}

/// The funnel step metrics of one funnel on one day (`EntityKind::Other("funnel_step_metrics")`):
/// `steps` (`[{step, goal, event, count, step_conv_ratio, overall_conv_ratio, avg_time}]`),
/// `completion`, `starting_amount`, and a relation `of_funnel`.
///
/// # Errors
/// `InvalidResponse` when the record's JSON is not an object.
pub fn funnel_result_entity(record: &Record) -> Result<Entity> {
    let v: FunnelResultView<'_> = record.raw.deserialize()?;
    let funnel = record
        .id
        .split_once(':')
        .map(|(f, _)| f.to_string())
        .unwrap_or_default();
    let mut e = Entity::new(
        EntityKind::Other("funnel_step_metrics".into()),
        source("funnel_result", record.id.clone()),
    )
    .with_attr("date", json!(v.date.non_empty()))
    .with_relation("of_funnel", source("funnel", funnel));
    if let Some(r) = v.result.0 {
        let steps: Vec<Value> = r
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.0.as_ref().map(|s| (i, s)))
            .map(|(i, s)| {
                json!({
                    "step": i + 1,
                    "goal": s.goal.non_empty(),
                    "event": s.event.non_empty(),
                    "count": s.count.0,
                    "step_conv_ratio": s.step_conv_ratio.0,
                    "overall_conv_ratio": s.overall_conv_ratio.0,
                    "avg_time": s.avg_time.0,
                })
            })
            .collect();
        e = e.with_attr("steps", Value::Array(steps));
        if let Some(a) = r.analysis.0 {
            e = e
                .with_attr("completion", json!(a.completion.0))
                .with_attr("starting_amount", json!(a.starting_amount.0));
        }
    }
    Ok(e)
}

/// Any JSON type: fields Mixpanel types loosely.
fn any() -> Value {
    json!({})
}

fn nullable(t: &str) -> Value {
    json!({"type": [t, "null"]})
}

/// The JSON Schema (draft 7) `properties` of a stream's raw records.
pub fn schema_properties(stream: &str) -> Map<String, Value> {
    let v = match stream {
        streams::EVENTS => json!({
            "event": {"type": "string"},
            "properties": {
                "type": "object",
                "required": ["time"],
                "properties": {
                    "time": {"type": "number"},
                    "distinct_id": {"type": ["string", "number", "null"]},
                    "$insert_id": {"type": ["string", "null"]},
                    "mp_processing_time_ms": {"type": ["number", "null"]},
                },
                "additionalProperties": true,
            },
        }),
        streams::PROFILES | streams::COHORT_MEMBERS => json!({
            "$distinct_id": {"type": ["string", "integer"]},
            "$properties": {
                "type": ["object", "null"],
                "properties": {
                    "$email": any(),
                    "$phone": any(),
                    "$name": any(),
                    "$first_name": any(),
                    "$last_name": any(),
                    "$created": any(),
                    "$last_seen": any(),
                },
                "additionalProperties": true,
            },
        }),
        streams::COHORTS => json!({
            "id": {"type": ["integer", "string"]},
            "name": nullable("string"),
            "description": nullable("string"),
            "count": {"type": ["integer", "null"]},
            "created": nullable("string"),
            "is_visible": {"type": ["integer", "boolean", "null"]},
            "project_id": {"type": ["integer", "null"]},
        }),
        streams::FUNNELS => json!({
            "funnel_id": {"type": ["integer", "string"]},
            "name": nullable("string"),
        }),
        streams::FUNNEL_RESULTS => json!({
            "funnel_id": {"type": ["integer", "string"]},
            "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
            "result": {
                "type": ["object", "null"],
                "properties": {
                    "steps": {"type": ["array", "null"]},
                    "analysis": {"type": ["object", "null"]},
                },
            },
        }),
        _ => json!({}),
    };
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The fields every record of `stream` has (JSON Schema `required`).
pub fn schema_required(stream: &str) -> &'static [&'static str] {
    match stream {
        streams::EVENTS => &["event", "properties"],
        streams::PROFILES | streams::COHORT_MEMBERS => &["$distinct_id"],
        streams::COHORTS => &["id"],
        streams::FUNNELS => &["funnel_id"],
        streams::FUNNEL_RESULTS => &["funnel_id", "date"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &[u8] = br#"{"event":"Signed up","properties":{"time":1602611311,"$insert_id":"ab12","mp_processing_time_ms":1602625711874,"distinct_id":"u1","plan":"pro"}}"#;

    #[test]
    fn events_read_and_key_like_mixpanel() {
        let utc = EventTime { local_tz: None };
        let (r, key) = event_record(Bytes::from_static(LINE), &utc).unwrap();
        assert_eq!(r.version, Some(1_602_611_311_000));
        assert_eq!(r.id.len(), 32);
        assert_eq!(u128::from_str_radix(&r.id, 16).unwrap(), key);
        assert_eq!(r.raw.as_bytes(), LINE);
        // The same event in milliseconds (time_in_ms) has the same id.
        let ms = br#"{"event":"Signed up","properties":{"time":1602611311000,"$insert_id":"ab12","distinct_id":"u1"}}"#;
        assert_eq!(read_event(ms, &utc).unwrap().id, r.id);
        // Another insert id, distinct id or name: another event.
        for other in [
            br#"{"event":"Signed up","properties":{"time":1602611311,"$insert_id":"ab13","distinct_id":"u1"}}"#.as_slice(),
            br#"{"event":"Signed up","properties":{"time":1602611311,"$insert_id":"ab12","distinct_id":"u2"}}"#,
            br#"{"event":"Logged in","properties":{"time":1602611311,"$insert_id":"ab12","distinct_id":"u1"}}"#,
        ] {
            assert_ne!(read_event(other, &utc).unwrap().id, r.id);
        }
        // Legacy project time zone: stored local time converted to UTC; same id.
        let ny = EventTime {
            local_tz: Some("America/New_York".parse().unwrap()),
        };
        let head = read_event(LINE, &ny).unwrap();
        assert_eq!(head.id, r.id);
        assert_eq!(head.time_utc_ms, 1_602_611_311_000 + 4 * 3_600_000);
        // Envelope failures.
        for bad in [
            b"terminated early".as_slice(),
            br#"{"event":1,"properties":{"time":1}}"#,
            br#"{"event":"x","properties":{"time":"1602611311"}}"#,
            br#"{"event":"x","properties":[]}"#,
            br#"{"event":"x"}"#,
            br#"{"event":"x","properties":{"time":1e300}}"#,
            br#"{"event":"x","properties":{"time":1}} trailing"#,
        ] {
            assert!(
                read_event(bad, &utc).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn entities_are_lenient() {
        let utc = EventTime { local_tz: None };
        let (r, _) = event_record(Bytes::from_static(LINE), &utc).unwrap();
        let e = event_entity(&r).unwrap();
        assert_eq!(e.name.as_deref(), Some("Signed up"));
        assert_eq!(e.attributes["time"], json!("2020-10-13T17:48:31.000Z"));
        assert_eq!(e.attributes["distinct_id"], json!("u1"));
        assert_eq!(e.custom_fields["plan"], json!("pro"));
        assert_eq!(e.relations[0].target.id, "u1");

        let p = Record::upsert(
            StreamId::from_static(streams::PROFILES),
            "u1",
            json!({"$distinct_id": "u1", "$properties": {"$email": " Ann@X.com ", "$phone": "+1 555 0100", "$first_name": "Ann", "$last_name": "Lee", "$created": "2024-01-01T00:00:00", "plan": "pro"}}),
        );
        let e = person_entity(&p, "u1").unwrap();
        assert_eq!(e.name.as_deref(), Some("Ann Lee"));
        assert!(e.identities.contains(&Identity::Email("ann@x.com".into())));
        assert!(e.identities.contains(&Identity::Phone("+15550100".into())));
        assert_eq!(e.attributes["created"], json!("2024-01-01T00:00:00"));
        let hostile = Record::upsert(
            StreamId::from_static(streams::PROFILES),
            "u1",
            json!({"$distinct_id": "u1", "$properties": [[1]]}),
        );
        assert!(person_entity(&hostile, "u1").unwrap().identities.is_empty());

        let raw = funnel_result_raw(
            "7",
            "2024-01-02".parse().unwrap(),
            br#"{"steps":[{"count":10,"goal":"A","step_conv_ratio":1},{"count":"x"}],"analysis":{"completion":4}}"#,
        )
        .unwrap();
        assert_eq!(
            funnel_result_record_id(raw.as_bytes()).unwrap(),
            "7:2024-01-02"
        );
        let r = Record::upsert(
            StreamId::from_static(streams::FUNNEL_RESULTS),
            "7:2024-01-02",
            raw,
        );
        let e = funnel_result_entity(&r).unwrap();
        assert_eq!(e.attributes["steps"][0]["count"], json!(10));
        assert_eq!(e.attributes["steps"][1]["count"], Value::Null);
        assert_eq!(e.attributes["completion"], json!(4));
    }

    #[test]
    fn ids_of_lists() {
        assert_eq!(profile_id(br#"{"$distinct_id": 12}"#).unwrap(), "12");
        assert!(profile_id(br#"{"$distinct_id": ""}"#).is_err());
        assert!(profile_id(br#"{"$distinct_id": null}"#).is_err());
        assert_eq!(cohort_id(br#"{"id": 1000, "name": "x"}"#).unwrap(), "1000");
        assert_eq!(funnel_id(br#"{"funnel_id": "77"}"#).unwrap(), "77");
        assert!(funnel_id(br#"{"funnel_id": [1]}"#).is_err());
    }
}
