//! HubSpot's objects and the streams built on them: object types, pages read as slices of the
//! response body with a strict, borrowed envelope, time parsing, stream schemas, and the
//! lenient mapping of records to normalized [`Entity`]s (driven by [`PropertyMapping`]).
//!
//! # Records: a strict envelope, raw bytes
//!
//! A page body is parsed once into borrowed slices ([`parse_page`]): one
//! [`RawValue`] per result, never a tree. Each record's
//! [`RawJson`] is that slice of the body (no copy); only its envelope is read, strictly and
//! borrowed: the `id` (a string or an integer), and the modification time (`updatedAt`, or
//! the type's modified property when `updatedAt` is missing or unreadable). An object whose
//! envelope cannot be read goes to [`Page::rejects`](apex_connect_core::Page::rejects) with
//! its bytes; the page goes on. Everything else is read where something consumes entities,
//! leniently ([`object_entity`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use apex_connect_core::http::check_page_len;
use apex_connect_core::lenient::{Lenient, LenientBool, LenientStr, LenientVec};
use apex_connect_core::{
    Entity, EntityKind, Error, Identity, Op, RawJson, Record, Reject, Result, SourceRef, StreamId,
    StreamInfo, StreamSchema,
};
use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::NAME;

/// Stream names.
pub mod streams {
    /// CRM contacts.
    pub const CONTACTS: &str = "contacts";
    /// CRM companies.
    pub const COMPANIES: &str = "companies";
    /// CRM deals (with pipeline and stage).
    pub const DEALS: &str = "deals";
    /// Note engagements.
    pub const NOTES: &str = "notes";
    /// Email engagements.
    pub const EMAILS: &str = "emails";
    /// Call engagements.
    pub const CALLS: &str = "calls";
    /// Meeting engagements.
    pub const MEETINGS: &str = "meetings";
    /// Task engagements.
    pub const TASKS: &str = "tasks";
    /// CRM owners (users who own records).
    pub const OWNERS: &str = "owners";
    /// Associations between objects (contact-company, deal-contact/company, engagement-object).
    pub const ASSOCIATIONS: &str = "associations";
    /// Property definitions of every object type (custom properties included).
    pub const PROPERTIES: &str = "properties";

    /// Every stream, objects first.
    pub const ALL: [&str; 11] = [
        CONTACTS,
        COMPANIES,
        DEALS,
        NOTES,
        EMAILS,
        CALLS,
        MEETINGS,
        TASKS,
        OWNERS,
        ASSOCIATIONS,
        PROPERTIES,
    ];
}

/// What kind of entity an object type maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ObjectKind {
    /// A contact.
    Person,
    /// A company.
    Organization,
    /// A deal.
    Deal,
    /// An engagement (note, email, call, meeting, task).
    Activity,
}

/// A CRM object type the connector syncs through `/crm/v3/objects/{api_name}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectType {
    /// The stream name (also the API's plural object name).
    pub stream: &'static str,
    /// The singular name used in webhook event types and source references (`contact`).
    pub singular: &'static str,
    /// The property holding the last-modified time (`lastmodifieddate` for contacts).
    pub modified_property: &'static str,
    /// The entity kind it maps to.
    pub kind: ObjectKind,
    /// Object types whose associations are read with a full sync (`associations=` on the
    /// list endpoint) and by the `associations` stream.
    pub associations: &'static [&'static str],
    /// The `unique` property used by `Upsert` when the operation names none.
    pub default_id_property: Option<&'static str>,
}

const ENGAGEMENT_ASSOC: &[&str] = &["contacts", "companies", "deals"];

/// Every object type, in stream order.
pub const OBJECT_TYPES: [ObjectType; 8] = [
    ObjectType {
        stream: streams::CONTACTS,
        singular: "contact",
        modified_property: "lastmodifieddate",
        kind: ObjectKind::Person,
        associations: &["companies"],
        default_id_property: Some("email"),
    },
    ObjectType {
        stream: streams::COMPANIES,
        singular: "company",
        modified_property: "hs_lastmodifieddate",
        kind: ObjectKind::Organization,
        associations: &[],
        default_id_property: Some("domain"),
    },
    ObjectType {
        stream: streams::DEALS,
        singular: "deal",
        modified_property: "hs_lastmodifieddate",
        kind: ObjectKind::Deal,
        associations: &["contacts", "companies"],
        default_id_property: None,
    },
    ObjectType {
        stream: streams::NOTES,
        singular: "note",
        modified_property: "hs_lastmodifieddate",
        kind: ObjectKind::Activity,
        associations: ENGAGEMENT_ASSOC,
        default_id_property: None,
    },
    ObjectType {
        stream: streams::EMAILS,
        singular: "email",
        modified_property: "hs_lastmodifieddate",
        kind: ObjectKind::Activity,
        associations: ENGAGEMENT_ASSOC,
        default_id_property: None,
    },
    ObjectType {
        stream: streams::CALLS,
        singular: "call",
        modified_property: "hs_lastmodifieddate",
        kind: ObjectKind::Activity,
        associations: ENGAGEMENT_ASSOC,
        default_id_property: None,
    },
    ObjectType {
        stream: streams::MEETINGS,
        singular: "meeting",
        modified_property: "hs_lastmodifieddate",
        kind: ObjectKind::Activity,
        associations: ENGAGEMENT_ASSOC,
        default_id_property: None,
    },
    ObjectType {
        stream: streams::TASKS,
        singular: "task",
        modified_property: "hs_lastmodifieddate",
        kind: ObjectKind::Activity,
        associations: ENGAGEMENT_ASSOC,
        default_id_property: None,
    },
];

/// The object type of stream `name` (`contacts`), if it is an object stream.
pub fn object_type(name: &str) -> Option<&'static ObjectType> {
    OBJECT_TYPES.iter().find(|o| o.stream == name)
}

/// The object type whose singular or plural name is `name` (`contact`, `CONTACT`, `contacts`).
pub fn object_type_by_any_name(name: &str) -> Option<&'static ObjectType> {
    let lower = name.to_ascii_lowercase();
    OBJECT_TYPES
        .iter()
        .find(|o| o.singular == lower || o.stream == lower)
}

/// The association pairs the `associations` stream reads, in order.
pub fn association_pairs() -> Vec<(&'static str, &'static str)> {
    OBJECT_TYPES
        .iter()
        .flat_map(|o| o.associations.iter().map(move |to| (o.stream, *to)))
        .collect()
}

/// The object type of a generic `object.*` webhook event's `objectTypeId` (`0-1` contacts...).
pub fn object_type_by_type_id(id: &str) -> Option<&'static ObjectType> {
    let name = match id {
        "0-1" => streams::CONTACTS,
        "0-2" => streams::COMPANIES,
        "0-3" => streams::DEALS,
        "0-46" => streams::NOTES,
        "0-49" => streams::EMAILS,
        "0-48" => streams::CALLS,
        "0-47" => streams::MEETINGS,
        "0-27" => streams::TASKS,
        _ => return None,
    };
    object_type(name)
}

/// One page of a v3 collection answer (list, search, batch read, owners, property
/// definitions), borrowed from its body: each result as the slice of JSON it is, and the
/// paging token.
#[derive(Debug)]
#[non_exhaustive]
pub struct RawPage<'a> {
    /// The results, each exactly as in the body.
    pub results: Vec<&'a RawValue>,
    /// `paging.next.after`, when more pages follow.
    pub next_after: Option<Cow<'a, str>>,
}

/// Parses a collection answer from `body`: `results` (each kept as a slice), `paging.next.after`;
/// every other key is skipped unread.
///
/// # Behavior
/// - At most `limit + `[`page_len_slack`](apex_connect_core::http::page_len_slack)`(limit)`
///   results are kept; a page holding more (a server ignoring `limit`) is an error, and the
///   extra results are never held in memory.
/// - A missing `results` is an empty page; `paging` absent, `null` or without `next` is the
///   last page.
///
/// # Errors
/// `InvalidResponse` (permanent) when the body is not JSON, `results` is not an array,
/// `paging.next` has no readable `after`, or the page is far larger than `limit`.
pub fn parse_page(body: &[u8], limit: usize) -> Result<RawPage<'_>> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = PageSeed {
        cap: limit.saturating_add(apex_connect_core::http::page_len_slack(limit)),
    }
    .deserialize(&mut de)
    .and_then(|p| de.end().map(|()| p))
    .map_err(|e| {
        Error::invalid_response("HubSpot answered with a page that is not its collection shape")
            .permanent()
            .set_source(e)
    })?;
    check_page_len(parsed.count, limit)?;
    let next_after = match parsed.paging.and_then(|p| p.next) {
        None => None,
        Some(next) => match next.after.0 {
            Some(after) if !after.is_empty() => Some(after),
            Some(_) => None,
            None => {
                return Err(Error::invalid_response(
                    "HubSpot's paging.next has no readable `after` token",
                )
                .permanent());
            }
        },
    };
    Ok(RawPage {
        results: parsed.results,
        next_after,
    })
}

struct Parsed<'a> {
    results: Vec<&'a RawValue>,
    count: usize,
    paging: Option<Paging<'a>>,
}

#[derive(Deserialize)]
struct Paging<'a> {
    #[serde(borrow, default)]
    next: Option<NextPage<'a>>,
}

#[derive(Deserialize)]
struct NextPage<'a> {
    #[serde(borrow, default)]
    after: LenientStr<'a>,
}

/// Reads a collection answer keeping at most `cap` results.
struct PageSeed {
    cap: usize,
}

impl<'de> DeserializeSeed<'de> for PageSeed {
    type Value = Parsed<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Parsed<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for PageSeed {
    type Value = Parsed<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a HubSpot collection object")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Parsed<'de>, A::Error> {
        let mut out = Parsed {
            results: Vec::new(),
            count: 0,
            paging: None,
        };
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "results" => {
                    let (results, count) = map.next_value_seed(ResultsSeed { cap: self.cap })?;
                    out.results = results;
                    out.count = count;
                }
                "paging" => out.paging = map.next_value::<Option<Paging<'de>>>()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// Reads an array of results as slices, keeping at most `cap` and counting them all.
struct ResultsSeed {
    cap: usize,
}

impl<'de> DeserializeSeed<'de> for ResultsSeed {
    type Value = (Vec<&'de RawValue>, usize);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ResultsSeed {
    type Value = (Vec<&'de RawValue>, usize);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of results")
    }

    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut results = Vec::with_capacity(self.cap.min(256));
        let mut count = 0usize;
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            count = count.saturating_add(1);
            if results.len() < self.cap {
                results.push(item);
            }
        }
        Ok((results, count))
    }
}

/// An object id as HubSpot sends it: a string, or an integer (webhooks, some v4 answers).
/// Strict: anything else (or an empty string) does not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectId<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for ObjectId<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ObjectId<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-empty string or an integer id")
            }
            fn visit_borrowed_str<E: de::Error>(
                self,
                v: &'de str,
            ) -> std::result::Result<Self::Value, E> {
                non_empty(Cow::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                non_empty(Cow::Owned(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Self::Value, E> {
                non_empty(Cow::Owned(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Self::Value, E> {
                Ok(ObjectId(Cow::Owned(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Self::Value, E> {
                Ok(ObjectId(Cow::Owned(v.to_string())))
            }
        }
        fn non_empty<'a, E: de::Error>(s: Cow<'a, str>) -> std::result::Result<ObjectId<'a>, E> {
            if s.trim().is_empty() {
                Err(E::custom("the id is empty"))
            } else {
                Ok(ObjectId(s))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// The envelope of a v3 object or owner: its id (strict), `updatedAt` and `archived`
/// (lenient; the caller decides what must be there).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: ObjectId<'a>,
    #[serde(borrow, default, rename = "updatedAt")]
    updated_at: LenientStr<'a>,
    #[serde(default)]
    archived: LenientBool,
}

/// The `properties` of an object, read leniently (values of any type, or absent).
#[derive(Deserialize)]
struct PropertiesOnly<'a> {
    #[serde(borrow, default)]
    properties: LenientMap<'a, LenientStr<'a>>,
}

/// The value of property `name` of the object `raw`, when it is a scalar.
pub fn property_of(raw: &[u8], name: &str) -> Option<String> {
    let p: PropertiesOnly<'_> = serde_json::from_slice(raw).ok()?;
    p.properties
        .0
        .into_iter()
        .find(|(k, _)| k.as_deref() == Some(name))
        .and_then(|(_, v)| v.to_owned_string())
}

/// Refuses JSON that is not an object (serde reads a struct from an array too).
fn ensure_object(raw: &[u8], stream: &str) -> Result<()> {
    if raw.first() == Some(&b'{') {
        Ok(())
    } else {
        Err(Error::invalid_response("the object is not a JSON object")
            .permanent()
            .with_context("stream", stream))
    }
}

fn envelope_error(stream: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::invalid_response("the object's envelope (id, updatedAt) cannot be read")
        .permanent()
        .with_context("stream", stream)
        .set_source(e)
}

/// The record of an object of `object_type` whose JSON is `item`, a slice of `body` (the
/// record's raw JSON is that slice, not a copy).
///
/// # Errors
/// `InvalidResponse` when the envelope cannot be read: no `id` (a non-empty string or an
/// integer), or neither `updatedAt` nor the modified property holds a time.
pub fn object_record(object_type: &ObjectType, body: &Bytes, item: &RawValue) -> Result<Record> {
    let raw = RawJson::from_raw_in(body, item);
    object_record_raw(object_type, raw)
}

/// As [`object_record`], from an object's raw JSON.
///
/// # Errors
/// As [`object_record`].
pub fn object_record_raw(object_type: &ObjectType, raw: RawJson) -> Result<Record> {
    ensure_object(raw.as_bytes(), object_type.stream)?;
    let env: Envelope<'_> = serde_json::from_slice(raw.as_bytes())
        .map_err(|e| envelope_error(object_type.stream, e))?;
    let modified = env
        .updated_at
        .as_deref()
        .and_then(parse_time_ms)
        .or_else(|| {
            property_of(raw.as_bytes(), object_type.modified_property)
                .as_deref()
                .and_then(parse_time_ms)
        })
        .ok_or_else(|| {
            Error::invalid_response("the object has no readable modification time")
                .permanent()
                .with_context("stream", object_type.stream)
                .with_context("id", env.id.0.as_ref())
        })?;
    let id = env.id.0.into_owned();
    let mut r = Record::upsert(
        StreamId::from_static(object_type.stream),
        id,
        RawJson::null(),
    )
    .with_modified(modified);
    if env.archived.0 == Some(true) {
        r.op = Op::Delete;
    }
    r.raw = raw;
    Ok(r)
}

/// The quarantine entry of an object of `stream` whose envelope could not be read.
pub fn reject_of(stream: &str, raw: &RawJson, error: &Error) -> Reject {
    Reject::unparsed(
        StreamId::new(stream.to_string()),
        apex_connect_core::lenient::field_string(raw.as_bytes(), "id"),
        raw.bytes().clone(),
        error,
    )
}

/// The records of `results` (slices of `body`), the objects whose envelope cannot be read
/// set apart as rejects.
pub fn object_records(
    object_type: &ObjectType,
    body: &Bytes,
    results: &[&RawValue],
) -> (Vec<Record>, Vec<Reject>) {
    let mut records = Vec::with_capacity(results.len());
    let mut rejects = Vec::new();
    for item in results {
        match object_record(object_type, body, item) {
            Ok(r) => records.push(r),
            Err(e) => rejects.push(reject_of(
                object_type.stream,
                &RawJson::from_raw_in(body, item),
                &e,
            )),
        }
    }
    (records, rejects)
}

/// The record of an owner (`/crm/v3/owners`): id strict, version `updatedAt` when readable.
///
/// # Errors
/// `InvalidResponse` when the owner has no readable `id`.
pub fn owner_record(raw: RawJson) -> Result<Record> {
    ensure_object(raw.as_bytes(), streams::OWNERS)?;
    let env: Envelope<'_> =
        serde_json::from_slice(raw.as_bytes()).map_err(|e| envelope_error(streams::OWNERS, e))?;
    let modified = env.updated_at.as_deref().and_then(parse_time_ms);
    let id = env.id.0.into_owned();
    let mut r = Record::upsert(StreamId::from_static(streams::OWNERS), id, RawJson::null());
    if let Some(m) = modified {
        r = r.with_modified(m);
    }
    r.raw = raw;
    Ok(r)
}

#[derive(Deserialize)]
struct PropertyEnvelope<'a> {
    #[serde(borrow)]
    name: ObjectId<'a>,
    #[serde(borrow, default, rename = "updatedAt")]
    updated_at: LenientStr<'a>,
}

/// A property definition (`/crm/v3/properties/{object}`) of `object` as a record of the
/// `properties` stream, keyed `<object>.<name>`. Its raw JSON is the definition as received
/// with `"objectType": "<object>"` put first (the stream's key is `objectType` + `name`);
/// its parent is the object type.
///
/// # Errors
/// `InvalidResponse` when the definition is not an object with a `name`.
pub fn property_record(object: &str, definition: &RawValue) -> Result<Record> {
    let env: PropertyEnvelope<'_> = serde_json::from_str(definition.get())
        .map_err(|e| envelope_error(streams::PROPERTIES, e))?;
    let text = definition.get().trim_start();
    let Some(rest) = text.strip_prefix('{') else {
        return Err(Error::invalid_response("a property definition is not an object").permanent());
    };
    let object_json = serde_json::to_string(object).unwrap_or_else(|_| "\"\"".into());
    let rest = rest.trim_start();
    let joined = if rest.starts_with('}') {
        format!("{{\"objectType\":{object_json}{rest}")
    } else {
        format!("{{\"objectType\":{object_json},{rest}")
    };
    let raw = RawJson::parse(Bytes::from(joined))?;
    let mut r = Record::upsert(
        StreamId::from_static(streams::PROPERTIES),
        format!("{object}.{}", env.name.0),
        raw,
    )
    .with_parent(object);
    if let Some(m) = env.updated_at.as_deref().and_then(parse_time_ms) {
        r = r.with_modified(m);
    }
    Ok(r)
}

/// An association as a record of the `associations` stream, keyed
/// `<from>:<fromId>-<to>:<toId>`.
pub fn association_record(
    from: &ObjectType,
    from_id: &str,
    to: &ObjectType,
    to_id: &str,
    types: Value,
) -> Record {
    let id = format!("{}:{from_id}-{}:{to_id}", from.stream, to.stream);
    let raw = json!({
        "fromObjectType": from.stream,
        "fromObjectId": from_id,
        "toObjectType": to.stream,
        "toObjectId": to_id,
        "associationTypes": types,
    });
    Record::upsert(StreamId::from_static(streams::ASSOCIATIONS), id, raw)
}

#[derive(Deserialize)]
struct SearchView<'a> {
    #[serde(borrow)]
    id: ObjectId<'a>,
    #[serde(borrow, default, rename = "updatedAt")]
    updated_at: LenientStr<'a>,
    #[serde(borrow, default)]
    properties: LenientMap<'a, LenientStr<'a>>,
}

/// The keyset of a search result of `object_type`: its modified time (the modified
/// property the search sorts on, else `updatedAt`) and its numeric id.
///
/// # Errors
/// `InvalidResponse` when the id is not numeric or no time reads.
pub fn search_hit(object_type: &ObjectType, item: &RawValue) -> Result<(i64, u64)> {
    ensure_object(item.get().as_bytes(), object_type.stream)?;
    let v: SearchView<'_> =
        serde_json::from_str(item.get()).map_err(|e| envelope_error(object_type.stream, e))?;
    let id: u64 = v.id.0.trim().parse().map_err(|_| {
        Error::invalid_response("search result id is not numeric")
            .permanent()
            .with_context("stream", object_type.stream)
    })?;
    let ts = v
        .properties
        .get(object_type.modified_property)
        .and_then(LenientStr::as_deref)
        .and_then(parse_time_ms)
        .or_else(|| v.updated_at.as_deref().and_then(parse_time_ms))
        .ok_or_else(|| {
            Error::invalid_response("search result without a modified date")
                .permanent()
                .with_context("stream", object_type.stream)
                .with_context("id", id)
        })?;
    Ok((ts, id))
}

/// Parses HubSpot times: epoch milliseconds (`"1642672800000"`) or ISO 8601 / RFC 3339
/// (`"2024-09-13T20:23:03.333Z"`, an offset, or a date alone), to Unix milliseconds.
pub fn parse_time_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    if b.len() == 10 {
        return Some(days * 86_400_000);
    }
    if !(b[10] == b'T' || b[10] == b't' || b[10] == b' ') || b.len() < 19 {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || sec > 60 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        if frac.is_empty() {
            return None;
        }
        let mut digits: String = frac.chars().take(3).collect();
        while digits.len() < 3 {
            digits.push('0');
        }
        millis = digits.parse().ok()?;
    }
    let offset_ms = match &s[i..] {
        "Z" | "z" | "" => 0,
        rest => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let rest = &rest[1..];
            let (oh, om) = match rest.len() {
                5 if rest.as_bytes()[2] == b':' => (
                    rest[..2].parse::<i64>().ok()?,
                    rest[3..].parse::<i64>().ok()?,
                ),
                4 => (
                    rest[..2].parse::<i64>().ok()?,
                    rest[2..].parse::<i64>().ok()?,
                ),
                2 => (rest.parse::<i64>().ok()?, 0),
                _ => return None,
            };
            sign * (oh * 3600 + om * 60) * 1000
        }
    };
    Some(days * 86_400_000 + (h * 3600 + mi * 60 + sec) * 1000 + millis - offset_ms)
}

/// Formats Unix milliseconds as HubSpot does: `2024-09-13T20:23:03.333Z`.
pub fn format_time_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, rem) = (rem / 3_600_000, rem % 3_600_000);
    let (mi, rem) = (rem / 60_000, rem % 60_000);
    let (s, milli) = (rem / 1000, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

// Howard Hinnant's civil calendar algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Which HubSpot property feeds which entity attribute, per object stream.
///
/// Mapped properties become [`Entity::attributes`] under the attribute name; every other
/// property with a value is preserved under [`Entity::custom_fields`] with its HubSpot name,
/// so custom properties are never lost. [`PropertyMapping::default`] maps HubSpot's standard
/// properties; host configuration adds or overrides entries (`set`), e.g. a custom
/// `apex_tier` property to the `tier` attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct PropertyMapping {
    /// Stream -> (HubSpot property -> attribute name).
    pub streams: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for PropertyMapping {
    fn default() -> Self {
        let mut m = PropertyMapping {
            streams: BTreeMap::new(),
        };
        let defaults: &[(&str, &[(&str, &str)])] = &[
            (
                streams::CONTACTS,
                &[
                    ("firstname", "first_name"),
                    ("lastname", "last_name"),
                    ("email", "email"),
                    ("phone", "phone"),
                    ("mobilephone", "mobile_phone"),
                    ("jobtitle", "title"),
                    ("company", "company_name"),
                    ("lifecyclestage", "lifecycle_stage"),
                    ("hubspot_owner_id", "owner_id"),
                    ("createdate", "created_at"),
                ],
            ),
            (
                streams::COMPANIES,
                &[
                    ("name", "name"),
                    ("domain", "domain"),
                    ("industry", "industry"),
                    ("phone", "phone"),
                    ("city", "city"),
                    ("country", "country"),
                    ("hubspot_owner_id", "owner_id"),
                    ("createdate", "created_at"),
                ],
            ),
            (
                streams::DEALS,
                &[
                    ("dealname", "name"),
                    ("amount", "amount"),
                    ("dealstage", "stage"),
                    ("pipeline", "pipeline"),
                    ("closedate", "close_date"),
                    ("hubspot_owner_id", "owner_id"),
                    ("createdate", "created_at"),
                ],
            ),
            (
                streams::NOTES,
                &[
                    ("hs_note_body", "text"),
                    ("hs_timestamp", "occurred_at"),
                    ("hubspot_owner_id", "owner_id"),
                ],
            ),
            (
                streams::EMAILS,
                &[
                    ("hs_email_subject", "subject"),
                    ("hs_email_text", "text"),
                    ("hs_email_direction", "direction"),
                    ("hs_timestamp", "occurred_at"),
                    ("hubspot_owner_id", "owner_id"),
                ],
            ),
            (
                streams::CALLS,
                &[
                    ("hs_call_title", "subject"),
                    ("hs_call_body", "text"),
                    ("hs_call_duration", "duration_ms"),
                    ("hs_call_direction", "direction"),
                    ("hs_timestamp", "occurred_at"),
                    ("hubspot_owner_id", "owner_id"),
                ],
            ),
            (
                streams::MEETINGS,
                &[
                    ("hs_meeting_title", "subject"),
                    ("hs_meeting_body", "text"),
                    ("hs_meeting_start_time", "starts_at"),
                    ("hs_meeting_end_time", "ends_at"),
                    ("hs_timestamp", "occurred_at"),
                    ("hubspot_owner_id", "owner_id"),
                ],
            ),
            (
                streams::TASKS,
                &[
                    ("hs_task_subject", "subject"),
                    ("hs_task_body", "text"),
                    ("hs_task_status", "status"),
                    ("hs_task_priority", "priority"),
                    ("hs_timestamp", "due_at"),
                    ("hubspot_owner_id", "owner_id"),
                ],
            ),
        ];
        for (stream, pairs) in defaults {
            for (p, a) in pairs.iter() {
                m = m.set(stream, p, a);
            }
        }
        m
    }
}

impl PropertyMapping {
    /// An empty mapping: every property goes to `custom_fields`.
    pub fn empty() -> Self {
        PropertyMapping {
            streams: BTreeMap::new(),
        }
    }

    /// Maps `property` of `stream` to `attribute` (replacing an earlier mapping).
    pub fn set(mut self, stream: &str, property: &str, attribute: &str) -> Self {
        self.streams
            .entry(stream.to_string())
            .or_default()
            .insert(property.to_string(), attribute.to_string());
        self
    }

    /// The attribute `property` of `stream` maps to, if any.
    pub fn attribute(&self, stream: &str, property: &str) -> Option<&str> {
        self.streams
            .get(stream)
            .and_then(|m| m.get(property))
            .map(String::as_str)
    }
}

/// A JSON object read leniently as a list of `(key, value)`: keys borrowed where they can
/// be, each value read as `V` (which must itself never fail: a lenient type); anything that
/// is not an object reads as empty.
#[derive(Debug, Clone, PartialEq)]
pub struct LenientMap<'a, V>(pub Vec<(LenientStr<'a>, V)>);

impl<V> Default for LenientMap<'_, V> {
    fn default() -> Self {
        LenientMap(Vec::new())
    }
}

impl<'de: 'a, 'a, V: Deserialize<'de>> Deserialize<'de> for LenientMap<'a, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Vis<'a, V>(PhantomData<(&'a (), V)>);
        impl<'de: 'a, 'a, V: Deserialize<'de>> Visitor<'de> for Vis<'a, V> {
            type Value = LenientMap<'a, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<LenientStr<'a>, V>()? {
                    if out.len() < apex_connect_core::lenient::MAX_LENIENT_ELEMENTS {
                        out.push((k, v));
                    }
                }
                Ok(LenientMap(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LenientMap(Vec::new()))
            }
            fn visit_some<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_none<E>(self) -> std::result::Result<Self::Value, E> {
                Ok(LenientMap(Vec::new()))
            }
            fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
                Ok(LenientMap(Vec::new()))
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<Self::Value, E> {
                Ok(LenientMap(Vec::new()))
            }
            fn visit_i64<E>(self, _: i64) -> std::result::Result<Self::Value, E> {
                Ok(LenientMap(Vec::new()))
            }
            fn visit_u64<E>(self, _: u64) -> std::result::Result<Self::Value, E> {
                Ok(LenientMap(Vec::new()))
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<Self::Value, E> {
                Ok(LenientMap(Vec::new()))
            }
            fn visit_str<E>(self, _: &str) -> std::result::Result<Self::Value, E> {
                Ok(LenientMap(Vec::new()))
            }
        }
        d.deserialize_any(Vis(PhantomData))
    }
}

impl<'a, V> LenientMap<'a, V> {
    /// The value of the first entry named `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.0
            .iter()
            .find(|(k, _)| k.as_deref() == Some(key))
            .map(|(_, v)| v)
    }
}

/// What mapping reads of an object, leniently and borrowed.
#[derive(Deserialize)]
struct ObjectView<'a> {
    #[serde(borrow, default)]
    properties: LenientMap<'a, LenientStr<'a>>,
    #[serde(borrow, default)]
    associations: LenientMap<'a, LenientObject<AssociationList<'a>>>,
}

/// Like [`Lenient`], for a struct that must come as a JSON object (serde would also read it
/// from an array): anything else, or an object of the wrong shape, reads as absent.
#[derive(Debug, Clone, PartialEq)]
pub struct LenientObject<T>(pub Option<T>);

impl<T> Default for LenientObject<T> {
    fn default() -> Self {
        LenientObject(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for LenientObject<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let Lenient(raw) = Lenient::<&'de RawValue>::deserialize(d)?;
        Ok(LenientObject(raw.and_then(|raw| {
            if raw.get().starts_with('{') {
                serde_json::from_str(raw.get()).ok()
            } else {
                None
            }
        })))
    }
}

#[derive(Deserialize)]
struct AssociationList<'a> {
    #[serde(borrow, default)]
    results: LenientVec<LenientObject<AssociationRef<'a>>>,
}

#[derive(Deserialize)]
struct AssociationRef<'a> {
    #[serde(borrow, default)]
    id: LenientStr<'a>,
}

impl<'a> ObjectView<'a> {
    /// A property's value, when set and not empty (later duplicates ignored).
    fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .get(name)
            .and_then(LenientStr::as_deref)
            .filter(|s| !s.is_empty())
    }
}

/// Properties that are bookkeeping, not content: kept out of `custom_fields`.
const SYSTEM_PROPERTIES: [&str; 4] = [
    "hs_object_id",
    "lastmodifieddate",
    "hs_lastmodifieddate",
    "hs_createdate",
];

fn attr_value(attribute: &str, value: &str) -> Value {
    match attribute {
        "amount" | "duration_ms" => value
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(value.to_string())),
        _ => Value::String(value.to_string()),
    }
}

/// Maps the object `raw` (id `id`) of `object_type` to an entity, leniently: a property of
/// any type reads as its text or not at all, associations of an unexpected shape are
/// skipped. Mapped properties become attributes; every other property with a value (custom
/// properties included) is kept under `custom_fields`.
///
/// # Errors
/// `InvalidResponse` only when `raw` is not a JSON object at all.
pub fn object_entity(
    object_type: &ObjectType,
    id: &str,
    raw: &RawJson,
    mapping: &PropertyMapping,
) -> Result<Entity> {
    ensure_object(raw.as_bytes(), object_type.stream)?;
    let obj: ObjectView<'_> = raw.deserialize()?;
    let kind = match object_type.kind {
        ObjectKind::Person => EntityKind::Person,
        ObjectKind::Organization => EntityKind::Organization,
        ObjectKind::Deal => EntityKind::Deal,
        ObjectKind::Activity => EntityKind::Activity,
    };
    let mut e = Entity::new(
        kind,
        SourceRef::new(NAME, object_type.singular, id.to_string()),
    );
    for (name, value) in &obj.properties.0 {
        let (Some(name), Some(value)) = (name.as_deref(), value.as_deref()) else {
            continue;
        };
        if value.is_empty() || e.custom_fields.contains_key(name) {
            continue;
        }
        if let Some(attr) = mapping.attribute(object_type.stream, name) {
            if !e.attributes.contains_key(attr) {
                e.attributes
                    .insert(attr.to_string(), attr_value(attr, value));
            }
        } else if !SYSTEM_PROPERTIES.contains(&name) {
            e.custom_fields
                .insert(name.to_string(), Value::String(value.to_string()));
        }
    }
    if matches!(object_type.kind, ObjectKind::Activity) {
        e.attributes.insert(
            "activity_type".into(),
            Value::String(object_type.singular.to_string()),
        );
    }
    let name = match object_type.kind {
        ObjectKind::Person => {
            let full = [obj.property("firstname"), obj.property("lastname")]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            Some(full)
                .filter(|s| !s.trim().is_empty())
                .or_else(|| obj.property("email").map(str::to_string))
        }
        ObjectKind::Organization => obj.property("name").map(str::to_string),
        ObjectKind::Deal => obj.property("dealname").map(str::to_string),
        ObjectKind::Activity => [
            "hs_email_subject",
            "hs_call_title",
            "hs_meeting_title",
            "hs_task_subject",
        ]
        .iter()
        .find_map(|p| obj.property(p))
        .map(str::to_string),
    };
    if let Some(n) = name {
        e = e.with_name(n);
    }
    match object_type.kind {
        ObjectKind::Person => {
            if let Some(v) = obj.property("email") {
                e = e.with_identity(Identity::email(v));
            }
            if let Some(v) = obj.property("hs_additional_emails") {
                for part in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                    e = e.with_identity(Identity::email(part));
                }
            }
            for p in ["phone", "mobilephone"] {
                if let Some(v) = obj.property(p) {
                    e = e.with_identity(Identity::phone(v));
                }
            }
        }
        ObjectKind::Organization => {
            if let Some(v) = obj.property("domain") {
                e = e.with_identity(Identity::domain(v));
            }
            if let Some(v) = obj.property("hs_additional_domains") {
                for part in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                    e = e.with_identity(Identity::domain(part));
                }
            }
        }
        _ => {}
    }
    if let Some(owner) = obj.property("hubspot_owner_id") {
        e = e.with_relation("owned_by", SourceRef::new(NAME, "owner", owner.to_string()));
    }
    for (to_type, list) in &obj.associations.0 {
        let (Some(to_type), Some(list)) = (to_type.as_deref(), list.0.as_ref()) else {
            continue;
        };
        let Some(to) = object_type_by_any_name(to_type) else {
            continue;
        };
        let kind = relation_kind(object_type, to);
        let mut seen: Vec<&str> = Vec::new();
        for r in list.results.iter() {
            let Some(id) = r.0.as_ref().and_then(|r| r.id.non_empty()) else {
                continue;
            };
            if !seen.contains(&id) {
                e = e.with_relation(kind, SourceRef::new(NAME, to.singular, id.to_string()));
                seen.push(id);
            }
        }
    }
    Ok(e)
}

/// The relation kind from an object of `from` to one of `to`.
pub fn relation_kind(from: &ObjectType, to: &ObjectType) -> &'static str {
    match (from.kind, to.kind) {
        (ObjectKind::Person, ObjectKind::Organization) => "works_at",
        (ObjectKind::Organization, ObjectKind::Person) => "employs",
        (ObjectKind::Deal, ObjectKind::Person) => "deal_contact",
        (ObjectKind::Deal, ObjectKind::Organization) => "deal_company",
        (ObjectKind::Activity, _) => "about",
        (_, ObjectKind::Activity) => "has_activity",
        (ObjectKind::Person | ObjectKind::Organization, ObjectKind::Deal) => "has_deal",
        _ => "associated",
    }
}

#[derive(Deserialize)]
struct OwnerView<'a> {
    #[serde(borrow, default)]
    email: LenientStr<'a>,
    #[serde(borrow, default, rename = "firstName")]
    first_name: LenientStr<'a>,
    #[serde(borrow, default, rename = "lastName")]
    last_name: LenientStr<'a>,
}

/// Maps an owner to a Person entity (name, email), leniently.
///
/// # Errors
/// `InvalidResponse` only when `raw` is not a JSON object.
pub fn owner_entity(id: &str, raw: &RawJson) -> Result<Entity> {
    ensure_object(raw.as_bytes(), streams::OWNERS)?;
    let o: OwnerView<'_> = raw.deserialize()?;
    let mut e = Entity::new(
        EntityKind::Person,
        SourceRef::new(NAME, "owner", id.to_string()),
    );
    let name = [o.first_name.non_empty(), o.last_name.non_empty()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    if !name.is_empty() {
        e = e.with_name(name);
    }
    if let Some(em) = o.email.non_empty() {
        e = e.with_identity(Identity::email(em));
    }
    Ok(e.with_attr("role", Value::String("owner".into())))
}

#[derive(Deserialize)]
struct AssociationView<'a> {
    #[serde(borrow, default, rename = "fromObjectType")]
    from_type: LenientStr<'a>,
    #[serde(borrow, default, rename = "fromObjectId")]
    from_id: LenientStr<'a>,
    #[serde(borrow, default, rename = "toObjectType")]
    to_type: LenientStr<'a>,
    #[serde(borrow, default, rename = "toObjectId")]
    to_id: LenientStr<'a>,
}

/// Maps an association record to an entity whose relation names both ends; `None` when an
/// end is unknown.
///
/// # Errors
/// `InvalidResponse` only when `raw` is not a JSON object.
pub fn association_entity(raw: &RawJson) -> Result<Option<Entity>> {
    ensure_object(raw.as_bytes(), streams::ASSOCIATIONS)?;
    let a: AssociationView<'_> = raw.deserialize()?;
    let from = a.from_type.as_deref().and_then(object_type_by_any_name);
    let to = a.to_type.as_deref().and_then(object_type_by_any_name);
    let (Some(from), Some(to), Some(from_id), Some(to_id)) =
        (from, to, a.from_id.non_empty(), a.to_id.non_empty())
    else {
        return Ok(None);
    };
    Ok(Some(
        Entity::new(
            EntityKind::Other("association".into()),
            SourceRef::new(NAME, from.singular, from_id.to_string()),
        )
        .with_relation(
            relation_kind(from, to),
            SourceRef::new(NAME, to.singular, to_id.to_string()),
        ),
    ))
}

/// A property definition of an object type, as discovery reads it
/// (`/crm/v3/properties/{object}`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PropertyDef {
    /// The property's internal name (`email`, `apex_tier`).
    pub name: String,
    /// Its label, if any.
    pub label: Option<String>,
    /// Its HubSpot type (`string`, `number`, `datetime`, `enumeration`, `bool`...), if any.
    pub kind: Option<String>,
    /// Whether HubSpot defines it; `false` for the account's custom properties.
    pub hubspot_defined: bool,
}

#[derive(Deserialize)]
struct PropertyDefView<'a> {
    #[serde(borrow, default)]
    name: LenientStr<'a>,
    #[serde(borrow, default)]
    label: LenientStr<'a>,
    #[serde(borrow, default, rename = "type")]
    kind: LenientStr<'a>,
    #[serde(default, rename = "hubspotDefined")]
    hubspot_defined: LenientBool,
}

/// The definitions in `results` (a page of `/crm/v3/properties/{object}`), leniently: an
/// entry without a name is skipped.
pub fn property_defs(results: &[&RawValue]) -> Vec<PropertyDef> {
    results
        .iter()
        .filter_map(|item| {
            let v: PropertyDefView<'_> = serde_json::from_str(item.get()).ok()?;
            let name = v.name.non_empty()?.to_string();
            Some(PropertyDef {
                name,
                label: v.label.non_empty().map(str::to_string),
                kind: v.kind.non_empty().map(str::to_string),
                hubspot_defined: v.hubspot_defined.0 == Some(true),
            })
        })
        .collect()
}

fn nullable(t: &str) -> Value {
    json!({ "type": [t, "null"] })
}

fn date_time(nullable: bool) -> Value {
    if nullable {
        json!({ "type": ["string", "null"], "format": "date-time" })
    } else {
        json!({ "type": "string", "format": "date-time" })
    }
}

fn schema_with(
    info: &StreamInfo,
    properties: Map<String, Value>,
    required: &[&str],
) -> StreamSchema {
    let mut s = StreamSchema::new(info, properties);
    if let Some(obj) = s.schema.as_object_mut() {
        obj.insert(
            "$schema".into(),
            json!("http://json-schema.org/draft-07/schema#"),
        );
        obj.insert("required".into(), json!(required));
    }
    s
}

/// The JSON Schema (draft 7) of an object stream's records: the v3 object
/// (`SimplePublicObjectWithAssociations`) with one entry under `properties` per definition
/// in `defs`, and the properties every read asks for (`hs_object_id`, the modified-date
/// property); every value a string or `null`, as HubSpot sends them; other properties
/// allowed. Custom properties (`hubspotDefined` not true) are listed in `custom_fields`.
pub fn object_schema(
    object_type: &ObjectType,
    info: &StreamInfo,
    defs: &[PropertyDef],
) -> StreamSchema {
    let mut props = Map::new();
    for always in ["hs_object_id", object_type.modified_property] {
        props.insert(always.to_string(), nullable("string"));
    }
    for d in defs {
        let mut p = nullable("string");
        if let (Some(obj), Some(label)) = (p.as_object_mut(), &d.label) {
            obj.insert("description".into(), json!(label));
        }
        if let (Some(obj), Some(kind)) = (p.as_object_mut(), &d.kind) {
            obj.insert("x-hubspot-type".into(), json!(kind));
        }
        props.insert(d.name.clone(), p);
    }
    let mut fields = Map::new();
    fields.insert("id".into(), json!({ "type": "string" }));
    fields.insert(
        "properties".into(),
        json!({ "type": "object", "properties": props, "additionalProperties": true }),
    );
    fields.insert("createdAt".into(), date_time(true));
    fields.insert("updatedAt".into(), date_time(true));
    fields.insert("archived".into(), nullable("boolean"));
    fields.insert("archivedAt".into(), date_time(true));
    fields.insert("propertiesWithHistory".into(), nullable("object"));
    fields.insert(
        "associations".into(),
        json!({
            "type": ["object", "null"],
            "additionalProperties": {
                "type": ["object", "null"],
                "properties": {
                    "results": {
                        "type": ["array", "null"],
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": { "type": ["string", "integer"] },
                                "type": { "type": ["string", "null"] }
                            }
                        }
                    }
                }
            }
        }),
    );
    fields.insert("objectWriteTraceId".into(), nullable("string"));
    let custom = defs
        .iter()
        .filter(|d| !d.hubspot_defined)
        .map(|d| d.name.clone())
        .collect();
    schema_with(info, fields, &["id"]).with_custom_fields(custom)
}

/// The JSON Schema of the `owners` stream (`/crm/v3/owners` results).
pub fn owner_schema(info: &StreamInfo) -> StreamSchema {
    let mut f = Map::new();
    f.insert("id".into(), json!({ "type": "string" }));
    for k in ["email", "firstName", "lastName", "type"] {
        f.insert(k.into(), nullable("string"));
    }
    for k in ["userId", "userIdIncludingInactive"] {
        f.insert(k.into(), nullable("integer"));
    }
    f.insert("createdAt".into(), date_time(true));
    f.insert("updatedAt".into(), date_time(true));
    f.insert("archived".into(), nullable("boolean"));
    f.insert("teams".into(), nullable("array"));
    schema_with(info, f, &["id"])
}

/// The JSON Schema of the `associations` stream's records (built by the connector from v4
/// answers: both ends and the association types).
pub fn association_schema(info: &StreamInfo) -> StreamSchema {
    let mut f = Map::new();
    for k in [
        "fromObjectType",
        "fromObjectId",
        "toObjectType",
        "toObjectId",
    ] {
        f.insert(k.into(), json!({ "type": "string" }));
    }
    f.insert(
        "associationTypes".into(),
        json!({
            "type": ["array", "null"],
            "items": {
                "type": "object",
                "properties": {
                    "category": { "type": ["string", "null"] },
                    "typeId": { "type": ["integer", "null"] },
                    "label": { "type": ["string", "null"] }
                }
            }
        }),
    );
    schema_with(
        info,
        f,
        &[
            "fromObjectType",
            "fromObjectId",
            "toObjectType",
            "toObjectId",
        ],
    )
}

/// The JSON Schema of the `properties` stream (property definitions, with `objectType`).
pub fn property_schema(info: &StreamInfo) -> StreamSchema {
    let mut f = Map::new();
    f.insert("objectType".into(), json!({ "type": "string" }));
    f.insert("name".into(), json!({ "type": "string" }));
    for k in ["label", "type", "fieldType", "groupName", "description"] {
        f.insert(k.into(), nullable("string"));
    }
    for k in [
        "hubspotDefined",
        "calculated",
        "hidden",
        "archived",
        "hasUniqueValue",
        "formField",
        "externalOptions",
    ] {
        f.insert(k.into(), nullable("boolean"));
    }
    f.insert("displayOrder".into(), nullable("integer"));
    f.insert("createdAt".into(), date_time(true));
    f.insert("updatedAt".into(), date_time(true));
    f.insert("archivedAt".into(), date_time(true));
    f.insert("options".into(), nullable("array"));
    f.insert("modificationMetadata".into(), nullable("object"));
    schema_with(info, f, &["objectType", "name"])
}

/// The [`StreamInfo`] of every stream: object streams incremental (key `id`, replication
/// key `updatedAt`), the others re-read in full.
pub fn stream_infos() -> Vec<StreamInfo> {
    let mut v: Vec<StreamInfo> = OBJECT_TYPES
        .iter()
        .map(|o| {
            StreamInfo::new(StreamId::from_static(o.stream), true)
                .with_key(["id"])
                .with_replication_key("updatedAt")
        })
        .collect();
    v.push(StreamInfo::new(StreamId::from_static(streams::OWNERS), false).with_key(["id"]));
    v.push(
        StreamInfo::new(StreamId::from_static(streams::ASSOCIATIONS), false).with_key([
            "fromObjectType",
            "fromObjectId",
            "toObjectType",
            "toObjectId",
        ]),
    );
    v.push(
        StreamInfo::new(StreamId::from_static(streams::PROPERTIES), false)
            .with_key(["objectType", "name"]),
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn times_parse_and_format() {
        assert_eq!(parse_time_ms("1642672800000"), Some(1_642_672_800_000));
        let ms = parse_time_ms("2024-09-13T20:23:03.333Z").unwrap();
        assert_eq!(format_time_ms(ms), "2024-09-13T20:23:03.333Z");
        assert_eq!(
            parse_time_ms("2020-01-09T20:11:27Z"),
            Some(1_578_600_687_000)
        );
        assert_eq!(
            parse_time_ms("2020-01-09T21:11:27.5+01:00"),
            Some(1_578_600_687_500)
        );
        assert_eq!(parse_time_ms("1970-01-01"), Some(0));
        for bad in [
            "",
            "yesterday",
            "2020-13-01T00:00:00Z",
            "2020-01-01T00:00:00X",
            "99999999999999999999999",
            "2020-01-01T00:00:00+9",
            "2020-01-01T00:00:00.Z",
        ] {
            assert_eq!(parse_time_ms(bad), None, "{bad}");
        }
        for ms in [0, 1, 951_782_400_000, 4_102_444_800_123] {
            assert_eq!(parse_time_ms(&format_time_ms(ms)), Some(ms));
        }
        // The extremes format without a panic.
        let _ = format_time_ms(i64::MAX);
        let _ = format_time_ms(i64::MIN);
    }

    fn contact() -> Value {
        json!({
            "id": "51",
            "properties": {"firstname": "Ann", "lastname": "Lee", "email": "Ann@Acme.com",
                "phone": "+1 (555) 010-2000", "apex_tier": "gold", "hs_object_id": "51",
                "lastmodifieddate": "2024-01-01T00:00:00.000Z", "jobtitle": null},
            "createdAt": "2023-01-01T00:00:00Z", "updatedAt": "2024-01-01T00:00:00.000Z",
            "archived": false,
            "associations": {"companies": {"results": [{"id": "7", "type": "contact_to_company"},
                {"id": "7", "type": "contact_to_company_unlabeled"}]}}
        })
    }

    fn record_of(ot: &ObjectType, v: &Value) -> Result<Record> {
        object_record_raw(ot, RawJson::from(v))
    }

    #[test]
    fn contact_maps_identities_mapping_and_custom_fields() {
        let ot = object_type("contacts").unwrap();
        let r = record_of(ot, &contact()).unwrap();
        assert_eq!(r.id, "51");
        assert_eq!(r.version, parse_time_ms("2024-01-01T00:00:00Z"));
        let mapping = PropertyMapping::default().set("contacts", "apex_tier", "tier");
        let e = object_entity(ot, &r.id, &r.raw, &mapping).unwrap();
        assert_eq!(e.name.as_deref(), Some("Ann Lee"));
        assert_eq!(e.attributes["tier"], "gold");
        assert!(e.identities.contains(&Identity::email("ann@acme.com")));
        assert!(e.identities.contains(&Identity::phone("+15550102000")));
        assert_eq!(e.relations.len(), 1);
        assert_eq!(e.relations[0].kind, "works_at");
        assert!(e.custom_fields.is_empty());
        // Without the mapping entry, the custom property is preserved under custom_fields.
        let e = object_entity(ot, &r.id, &r.raw, &PropertyMapping::default()).unwrap();
        assert_eq!(e.custom_fields["apex_tier"], "gold");
    }

    #[test]
    fn deal_maps_amount_stage_pipeline() {
        let v = json!({
            "id": "9", "properties": {"dealname": "Paper", "amount": "1500.5", "dealstage": "closedwon",
            "pipeline": "default", "closedate": "2024-02-01T00:00:00Z"},
            "updatedAt": "2024-01-01T00:00:00Z"
        });
        let ot = object_type("deals").unwrap();
        let r = record_of(ot, &v).unwrap();
        let e = object_entity(ot, &r.id, &r.raw, &PropertyMapping::default()).unwrap();
        assert_eq!(e.kind, EntityKind::Deal);
        assert_eq!(e.attributes["amount"], 1500.5);
        assert_eq!(e.attributes["stage"], "closedwon");
        assert_eq!(e.attributes["pipeline"], "default");
        assert_eq!(e.attributes["close_date"], "2024-02-01T00:00:00Z");
    }

    #[test]
    fn odd_values_map_leniently() {
        let v = json!({
            "id": 51,
            "properties": {"firstname": 7, "lastname": ["x"], "email": {"a": 1}, "amount": "1e999",
                "apex_tier": true, "phone": null, "hs_additional_emails": "a@x.com; ;b@y.com"},
            "updatedAt": "2024-01-01T00:00:00Z",
            "associations": {"companies": [[{"id": 1}]], "deals": {"results": [{"id": 9}, {"id": null}, 3]},
                "unknown_type": {"results": [{"id": "1"}]}},
            "_links": {"self": {"href": 1}}
        });
        let ot = object_type("contacts").unwrap();
        let r = record_of(ot, &v).unwrap();
        assert_eq!(r.id, "51", "an integer id reads");
        let e = object_entity(ot, &r.id, &r.raw, &PropertyMapping::default()).unwrap();
        assert_eq!(e.name.as_deref(), Some("7"));
        assert_eq!(e.custom_fields["apex_tier"], "true");
        assert!(e.identities.contains(&Identity::email("b@y.com")));
        assert_eq!(e.relations.len(), 1, "{:?}", e.relations);
        assert_eq!(e.relations[0].target.id, "9");
        // Not an object at all: the only mapping error.
        let arr = RawJson::from(json!([1]));
        assert!(object_entity(ot, "1", &arr, &PropertyMapping::default()).is_err());
    }

    #[test]
    fn envelopes_are_strict_and_fall_back_to_the_modified_property() {
        let ot = object_type("companies").unwrap();
        let r = record_of(
            ot,
            &json!({"id": "3", "updatedAt": "soon", "properties": {"hs_lastmodifieddate": "1700000000000"}}),
        )
        .unwrap();
        assert_eq!(r.version, Some(1_700_000_000_000));
        for bad in [
            json!({"updatedAt": "2024-01-01T00:00:00Z"}),
            json!({"id": "", "updatedAt": "2024-01-01T00:00:00Z"}),
            json!({"id": {"x": 1}, "updatedAt": "2024-01-01T00:00:00Z"}),
            json!({"id": "3"}),
            json!({"id": "3", "updatedAt": 12.5, "properties": [1]}),
            json!([1, 2]),
        ] {
            let e = record_of(ot, &bad).unwrap_err();
            assert_eq!(
                e.kind(),
                apex_connect_core::ErrorKind::InvalidResponse,
                "{bad}"
            );
        }
        let r = record_of(
            ot,
            &json!({"id": "4", "updatedAt": "2024-01-01T00:00:00Z", "archived": true}),
        )
        .unwrap();
        assert_eq!(r.op, Op::Delete);
    }

    #[test]
    fn pages_slice_the_body_and_set_bad_objects_apart() {
        let body = Bytes::from(
            serde_json::to_vec(&json!({
                "results": [contact(), {"id": "52"}, {"id": "53", "updatedAt": "2024-01-02T00:00:00Z"}],
                "paging": {"next": {"after": "NTI1Cg%3D%3D", "link": "?after=NTI1Cg%3D%3D"}},
                "total": 3, "extra": [[1]]
            }))
            .unwrap(),
        );
        let page = parse_page(&body, 100).unwrap();
        assert_eq!(page.next_after.as_deref(), Some("NTI1Cg%3D%3D"));
        let ot = object_type("contacts").unwrap();
        let (records, rejects) = object_records(ot, &body, &page.results);
        assert_eq!(records.len(), 2);
        assert_eq!(rejects.len(), 1);
        assert_eq!(rejects[0].id.as_deref(), Some("52"));
        assert_eq!(&rejects[0].raw[..], br#"{"id":"52"}"#);
        // The record's bytes are the page's, not a copy.
        let raw = records[0].raw.bytes();
        let start = raw.as_ptr() as usize - body.as_ptr() as usize;
        assert_eq!(&body[start..start + raw.len()], &raw[..]);
        assert_eq!(records[0].raw.to_value().unwrap(), contact());
        // Last page, empty page.
        assert!(
            parse_page(br#"{"results": []}"#, 10)
                .unwrap()
                .next_after
                .is_none()
        );
        assert!(parse_page(b"{}", 10).unwrap().results.is_empty());
        assert!(
            parse_page(br#"{"results": [], "paging": null}"#, 10)
                .unwrap()
                .next_after
                .is_none()
        );
        // Bad shapes.
        for bad in [
            &br#"{"results": {"a": 1}}"#[..],
            br#"{"results": [], "paging": {"next": {"after": {"x": 1}}}}"#,
            br#"{"results": [1,"#,
            b"[]",
        ] {
            assert!(
                parse_page(bad, 10).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_page_far_larger_than_asked_is_refused_without_holding_it() {
        let items: Vec<Value> = (0..2_000).map(|i| json!({"id": i})).collect();
        let body = serde_json::to_vec(&json!({ "results": items })).unwrap();
        let e = parse_page(&body, 100).unwrap_err();
        assert_eq!(e.kind(), apex_connect_core::ErrorKind::InvalidResponse);
        assert!(parse_page(&body, 2_000).is_ok());
    }

    #[test]
    fn property_definitions_become_records_with_their_object_type() {
        let body: &[u8] = br#"{"results": [{"name": "apex_tier", "label": "Tier", "type": "enumeration", "updatedAt": "2024-01-04T10:00:00.000Z"},
            { }, {"name": "email", "hubspotDefined": true}]}"#;
        let page = parse_page(body, 100).unwrap();
        let r = property_record("contacts", page.results[0]).unwrap();
        assert_eq!(r.id, "contacts.apex_tier");
        assert_eq!(r.parent.as_deref(), Some("contacts"));
        let v = r.raw.to_value().unwrap();
        assert_eq!(v["objectType"], "contacts");
        assert_eq!(v["label"], "Tier");
        assert!(property_record("contacts", page.results[1]).is_err());
        let defs = property_defs(&page.results);
        assert_eq!(defs.len(), 2);
        assert!(!defs[0].hubspot_defined && defs[1].hubspot_defined);
    }

    /// HubSpot's documented object (the search doc's example company) and a contact.
    fn documented() -> Vec<(&'static str, Value)> {
        vec![
            (
                "companies",
                json!({ "id": "2810868468",
                    "properties": { "annualrevenue": "1000000000", "createdate": "2020-01-09T20:11:27.309Z",
                        "hs_lastmodifieddate": "2024-09-13T20:23:03.333Z", "hs_object_id": "2810868468", "name": "Google",
                        "domain": "google.com", "hubspot_owner_id": "101" },
                    "createdAt": "2020-01-09T20:11:27.309Z", "updatedAt": "2024-09-13T20:23:03.333Z", "archived": false,
                    "archivedAt": null, "propertiesWithHistory": {"name": [{"value": "Google", "timestamp": "2020-01-09T20:11:27.309Z"}]},
                    "associations": {"contacts": {"results": [{"id": "512", "type": "company_to_contact"}],
                        "paging": {"next": {"after": "1", "link": "?after=1"}}}},
                    "objectWriteTraceId": "t-1" }),
            ),
            ("contacts", contact()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Hostile variants of the documented shapes (every field absent, null, of another
        /// type; unknown keys at every level; envelope kept) never fail a page: each object
        /// reads as a record that maps, or is set apart as a reject with its bytes.
        #[test]
        fn hostile_objects_never_fail_a_page(seed in any::<u64>(), n in 1usize..40) {
            for (stream, example) in documented() {
                let ot = object_type(stream).unwrap();
                let variants = apex_connect_testkit::hostile::variants(&example, &["id", "updatedAt"], seed, n);
                let body = Bytes::from(serde_json::to_vec(&json!({
                    "results": variants,
                    "paging": {"next": {"after": "x"}},
                    "_links": [[{"self": null}]],
                })).unwrap());
                let page = parse_page(&body, 100).unwrap();
                prop_assert_eq!(page.results.len(), n);
                let (records, rejects) = object_records(ot, &body, &page.results);
                prop_assert_eq!(records.len() + rejects.len(), n);
                prop_assert!(rejects.is_empty(), "{:?}", rejects.first());
                for r in &records {
                    prop_assert_eq!(r.id.as_str(), example["id"].as_str().unwrap());
                    let e = object_entity(ot, &r.id, &r.raw, &PropertyMapping::default());
                    prop_assert!(e.is_ok(), "{:?}: {}", e.err(), r.raw);
                }
            }
        }

        /// Without the envelope kept, an object may be set apart, never lost and never an
        /// error of the page.
        #[test]
        fn objects_with_hostile_envelopes_are_rejects_not_page_failures(seed in any::<u64>()) {
            for (stream, example) in documented() {
                let ot = object_type(stream).unwrap();
                let variants = apex_connect_testkit::hostile::variants(&example, &[], seed, 20);
                let body = Bytes::from(serde_json::to_vec(&json!({ "results": variants })).unwrap());
                let page = parse_page(&body, 100).unwrap();
                let (records, rejects) = object_records(ot, &body, &page.results);
                prop_assert_eq!(records.len() + rejects.len(), 20);
                for r in &rejects {
                    prop_assert!(!r.raw.is_empty());
                }
            }
        }
    }
}
