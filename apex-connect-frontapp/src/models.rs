//! Front's JSON shapes: the strict envelope of each stream's records, and the lenient mapping
//! of records to core [`Entity`]s.
//!
//! A [`Record`] keeps the object exactly as Front sent it ([`Record::raw`], a slice of the
//! page body). Only its envelope is read strictly ([`parse_record`]): the `id` (a non-empty
//! string) and the stream's timestamp (a number of Unix seconds, when present), which give the
//! record's id and version. An object whose envelope cannot be read is quarantined by
//! [`read_items`] (a [`Reject`]) and its page goes on.
//!
//! Everything else is read by [`map_entity`], leniently: through borrowed views of the raw
//! bytes made of [`apex_connect_core::lenient`] types, so a field of an unexpected type (an
//! attachment `size` of `-39484462`, an object where an array was documented, unknown keys)
//! reads as absent or as what it is, and never fails the record.

use std::marker::PhantomData;

use apex_connect_core::lenient::{
    Lenient, LenientBool, LenientF64, LenientI64, LenientStr, LenientVec, MAX_LENIENT_ELEMENTS,
    f64_to_i64,
};
use apex_connect_core::{
    Entity, EntityKind, Error, ErrorKind, Identity, Op, RawJson, Record, Reject, Result, SourceRef,
    StreamId,
};
use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::NAME;

/// Stream names of the connector.
pub mod streams {
    /// Conversations (`GET /conversations`; incremental through `/events`).
    pub const CONVERSATIONS: &str = "conversations";
    /// Messages of every conversation (`GET /conversations/{id}/messages`; incremental
    /// through `/events`).
    pub const MESSAGES: &str = "messages";
    /// Contacts with their handles (`GET /contacts`; incremental through `q[updated_after]`).
    pub const CONTACTS: &str = "contacts";
    /// Tags (`GET /tags`).
    pub const TAGS: &str = "tags";
    /// Comments of every conversation (`GET /conversations/{id}/comments`; incremental
    /// through `/events`).
    pub const COMMENTS: &str = "comments";
    /// Teammates (`GET /teammates`, full refresh).
    pub const TEAMMATES: &str = "teammates";
    /// Inboxes (`GET /inboxes`, full refresh).
    pub const INBOXES: &str = "inboxes";
    /// The company events feed (`GET /events`).
    pub const EVENTS: &str = "events";
    /// Every stream, in a sensible sync order.
    pub const ALL: [&str; 8] = [
        TAGS,
        TEAMMATES,
        INBOXES,
        CONTACTS,
        CONVERSATIONS,
        MESSAGES,
        COMMENTS,
        EVENTS,
    ];

    /// The stream named `name`, as the connector's `'static` constant.
    pub fn by_name(name: &str) -> Option<&'static str> {
        ALL.iter().copied().find(|s| *s == name)
    }
}

/// The timestamp field of a stream's records that gives their version and `updated_at`
/// (Unix seconds, fractional), and the field read instead when it is absent:
///
/// | stream | field | fallback |
/// |---|---|---|
/// | `conversations`, `contacts`, `tags` | `updated_at` | `created_at` |
/// | `messages` | `created_at` | |
/// | `comments` | `posted_at` | |
/// | `events` | `emitted_at` | |
/// | `teammates`, `inboxes` | (none: no version) | |
pub fn version_fields(stream: &str) -> (Option<&'static str>, Option<&'static str>) {
    match stream {
        streams::CONVERSATIONS | streams::CONTACTS | streams::TAGS => {
            (Some("updated_at"), Some("created_at"))
        }
        streams::MESSAGES => (Some("created_at"), None),
        streams::COMMENTS => (Some("posted_at"), None),
        streams::EVENTS => (Some("emitted_at"), None),
        _ => (None, None),
    }
}

/// Front timestamp (fractional Unix seconds) to Unix milliseconds, saturating (`NaN` is 0).
/// See [`secs_to_ms_checked`] for values from the network.
pub fn secs_to_ms(secs: f64) -> i64 {
    if secs.is_nan() {
        return 0;
    }
    secs_to_ms_checked(secs).unwrap_or(if secs < 0.0 { i64::MIN } else { i64::MAX })
}

/// Front timestamp (fractional Unix seconds) to Unix milliseconds, rounded; `None` when not
/// finite or out of the `i64` range.
pub fn secs_to_ms_checked(secs: f64) -> Option<i64> {
    f64_to_i64((secs * 1000.0).round())
}

/// Unix milliseconds to Front's query format (seconds with up to 3 decimals).
pub fn ms_to_secs_param(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let abs = ms.unsigned_abs();
    format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
}

/// The last path segment of a Front URL, without query string.
pub fn id_from_url(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?;
    let id = path.trim_end_matches('/').rsplit('/').next()?;
    (!id.is_empty() && !id.contains(':')).then(|| id.to_string())
}

fn unknown_stream(stream: &str) -> Error {
    Error::new(ErrorKind::NotFound, "unknown Front stream")
        .with_context("connector", NAME)
        .with_context("stream", stream.to_string())
}

// ----- the envelope

/// The fields of an object the sync needs; every other field is skipped unread.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(borrow, default)]
    created_at: Option<&'a RawValue>,
    #[serde(borrow, default)]
    updated_at: Option<&'a RawValue>,
    #[serde(borrow, default)]
    posted_at: Option<&'a RawValue>,
    #[serde(borrow, default)]
    emitted_at: Option<&'a RawValue>,
}

impl<'a> Envelope<'a> {
    fn field(&self, name: &str) -> Option<&'a RawValue> {
        match name {
            "created_at" => self.created_at,
            "updated_at" => self.updated_at,
            "posted_at" => self.posted_at,
            "emitted_at" => self.emitted_at,
            _ => None,
        }
    }
}

fn envelope_err(stream: &'static str, message: &'static str) -> Error {
    Error::invalid_response(message)
        .with_context("connector", NAME)
        .with_context("stream", stream)
        .permanent()
}

/// Reads the envelope of an object of `stream`: its id and version (Unix ms).
fn read_envelope(stream: &'static str, raw: &RawJson) -> Result<(String, Option<i64>)> {
    if raw.as_bytes().first() != Some(&b'{') {
        return Err(envelope_err(stream, "Front object is not a JSON object"));
    }
    let mut env: Envelope<'_> = serde_json::from_slice(raw.as_bytes()).map_err(|e| {
        envelope_err(stream, "Front object has an unreadable id or timestamp").set_source(e)
    })?;
    let id = match env.id.take() {
        Some(id) if !id.is_empty() => id,
        _ => return Err(envelope_err(stream, "Front object has no id")),
    };
    let (primary, fallback) = version_fields(stream);
    let version = match primary.and_then(|f| env.field(f).map(|r| (f, r))) {
        Some((field, r)) => {
            let secs: f64 = serde_json::from_str(r.get()).map_err(|e| {
                envelope_err(stream, "Front object's timestamp is not a number")
                    .with_context("field", field)
                    .set_source(e)
            })?;
            Some(secs_to_ms_checked(secs).ok_or_else(|| {
                envelope_err(stream, "Front object's timestamp is out of range")
                    .with_context("field", field)
            })?)
        }
        // The fallback is read leniently: it is only a better guess than no version.
        None => fallback
            .and_then(|f| env.field(f))
            .and_then(|r| serde_json::from_str::<LenientF64>(r.get()).ok())
            .and_then(|l| l.0)
            .and_then(secs_to_ms_checked),
    };
    Ok((id, version))
}

/// Reads a record of `stream` from an object as Front sends it in that stream's pages; only
/// the envelope is read (see the module docs). `parent` is the conversation a message or
/// comment was read under ([`Record::parent`]).
///
/// # Errors
/// `NotFound` for an unknown stream; `InvalidResponse` (permanent) when the object is not a
/// JSON object, has no string `id`, or its timestamp (when present) is not a number of
/// seconds within range.
pub fn parse_record(stream: &str, raw: RawJson, parent: Option<&str>) -> Result<Record> {
    let name = streams::by_name(stream).ok_or_else(|| unknown_stream(stream))?;
    let (id, version) = read_envelope(name, &raw)?;
    let mut rec = Record::upsert(StreamId::from_static(name), id, raw);
    if let Some(ms) = version {
        rec = rec.with_modified(ms);
    }
    if let Some(p) = parent {
        rec = rec.with_parent(p);
    }
    Ok(rec)
}

/// Reads the objects of one page of `stream`: a record for each object whose envelope
/// reads, a [`Reject`] (with the object's bytes, its `id` if any and the error) for each other
/// one, in page order.
///
/// # Errors
/// `NotFound` for an unknown stream.
pub fn read_items(
    stream: &str,
    items: Vec<RawJson>,
    parent: Option<&str>,
) -> Result<(Vec<Record>, Vec<Reject>)> {
    let name = streams::by_name(stream).ok_or_else(|| unknown_stream(stream))?;
    Ok(read_items_of(name, items, parent))
}

pub(crate) fn read_items_of(
    stream: &'static str,
    items: Vec<RawJson>,
    parent: Option<&str>,
) -> (Vec<Record>, Vec<Reject>) {
    let mut records = Vec::with_capacity(items.len());
    let mut rejects = Vec::new();
    for raw in items {
        match read_envelope(stream, &raw) {
            Ok((id, version)) => {
                let mut rec = Record::upsert(StreamId::from_static(stream), id, raw);
                if let Some(ms) = version {
                    rec = rec.with_modified(ms);
                }
                if let Some(p) = parent {
                    rec = rec.with_parent(p);
                }
                records.push(rec);
            }
            Err(e) => {
                let id = apex_connect_core::lenient::field_string(raw.as_bytes(), "id");
                rejects.push(
                    Reject::unparsed(StreamId::from_static(stream), id, raw.bytes().clone(), &e)
                        .with_parent(parent.map(str::to_string)),
                );
            }
        }
    }
    (records, rejects)
}

// ----- lenient views for the mapping
//
// Deserialized from the record's raw bytes without copying: strings are borrowed, fields not
// named are skipped, and every field is a lenient type, so a value of an unexpected type reads
// as absent (or, for strings, numbers and booleans as their text) instead of failing.

type Str<'a> = LenientStr<'a>;

/// An object read as `T` in one pass, or absent when the value is not an object.
///
/// Core's [`Lenient<T>`] takes any `T`, so it captures the value's raw text and parses it
/// again (a second scan, a third for a lenient object inside a lenient object, ...). The
/// views here are made of lenient fields only, so they cannot fail on a field's value and
/// can be read straight from the map: one pass over nested objects however deep. (A
/// duplicate key still fails the object, and with it the mapping: the record is
/// quarantined.)
pub(crate) struct Obj<T>(pub(crate) Option<T>);

impl<T> Default for Obj<T> {
    fn default() -> Self {
        Obj(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<Obj<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(|t| Obj(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Obj<T>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Obj(None))
            }
            fn visit_some<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<Obj<T>, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_none<E: de::Error>(self) -> std::result::Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<Obj<T>, E> {
                Ok(Obj(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<Obj<T>, E> {
                Ok(Obj(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// An array of objects read as `T` in one pass (elements that are not objects skipped, at
/// most [`MAX_LENIENT_ELEMENTS`] kept); anything else reads as empty.
pub(crate) struct Objs<T>(Vec<T>);

impl<T> Default for Objs<T> {
    fn default() -> Self {
        Objs(Vec::new())
    }
}

impl<T> Objs<T> {
    fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Objs<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Objs<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Objs<T>, A::Error> {
                let mut out = Vec::new();
                while let Some(Obj(item)) = seq.next_element::<Obj<T>>()? {
                    if let Some(item) = item
                        && out.len() < MAX_LENIENT_ELEMENTS
                    {
                        out.push(item);
                    }
                }
                Ok(Objs(out))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Objs<T>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Objs(Vec::new()))
            }
            fn visit_some<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<Objs<T>, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_none<E: de::Error>(self) -> std::result::Result<Objs<T>, E> {
                Ok(Objs(Vec::new()))
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<Objs<T>, E> {
                Ok(Objs(Vec::new()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<Objs<T>, E> {
                Ok(Objs(Vec::new()))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<Objs<T>, E> {
                Ok(Objs(Vec::new()))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<Objs<T>, E> {
                Ok(Objs(Vec::new()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<Objs<T>, E> {
                Ok(Objs(Vec::new()))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<Objs<T>, E> {
                Ok(Objs(Vec::new()))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// An object of which only the `id` is read (leniently).
#[derive(Default, Deserialize)]
pub(crate) struct ObjRef<'a> {
    #[serde(borrow, default)]
    pub(crate) id: Str<'a>,
}

#[derive(Default, Deserialize)]
struct TeammateView<'a> {
    #[serde(borrow, default)]
    id: Str<'a>,
    #[serde(borrow, default)]
    email: Str<'a>,
    #[serde(borrow, default)]
    username: Str<'a>,
    #[serde(borrow, default)]
    first_name: Str<'a>,
    #[serde(borrow, default)]
    last_name: Str<'a>,
    #[serde(default)]
    is_admin: LenientBool,
    #[serde(default)]
    custom_fields: Obj<Map<String, Value>>,
}

impl TeammateView<'_> {
    /// "First Last", or the username / email when the names are missing.
    fn display_name(&self) -> Option<String> {
        let mut full = String::new();
        for part in [self.first_name.non_empty(), self.last_name.non_empty()]
            .into_iter()
            .flatten()
        {
            if !full.is_empty() {
                full.push(' ');
            }
            full.push_str(part);
        }
        if !full.is_empty() {
            return Some(full);
        }
        self.username
            .non_empty()
            .or(self.email.non_empty())
            .map(str::to_string)
    }

    fn source_ref(&self) -> Option<SourceRef> {
        self.id.non_empty().map(|id| source("teammate", id))
    }
}

/// `_links` with the related links the mapping reads (any other is skipped).
#[derive(Default, Deserialize)]
struct LinksView<'a> {
    #[serde(borrow, default)]
    related: Obj<RelatedView<'a>>,
}

#[derive(Default, Deserialize)]
struct RelatedView<'a> {
    #[serde(borrow, default)]
    contact: Lenient<&'a str>,
    #[serde(borrow, default)]
    conversation: Lenient<&'a str>,
}

impl LinksView<'_> {
    fn contact_id(&self) -> Option<String> {
        id_from_url(self.related.0.as_ref()?.contact.0?)
    }

    fn conversation_id(&self) -> Option<String> {
        id_from_url(self.related.0.as_ref()?.conversation.0?)
    }
}

#[derive(Default, Deserialize)]
struct RecipientView<'a> {
    #[serde(rename = "_links", borrow, default)]
    links: Obj<LinksView<'a>>,
    #[serde(borrow, default)]
    name: Str<'a>,
    #[serde(borrow, default)]
    handle: Str<'a>,
    #[serde(borrow, default)]
    role: Str<'a>,
}

impl RecipientView<'_> {
    fn contact_id(&self) -> Option<String> {
        self.links.0.as_ref()?.contact_id()
    }
}

#[derive(Default, Deserialize)]
struct AttachmentView<'a> {
    #[serde(borrow, default)]
    id: Str<'a>,
    #[serde(borrow, default)]
    filename: Str<'a>,
    #[serde(borrow, default)]
    content_type: Str<'a>,
    /// Front documents a non-negative integer; whatever number comes is kept as it is.
    #[serde(default)]
    size: LenientI64,
}

#[derive(Default, Deserialize)]
struct TagView<'a> {
    #[serde(borrow, default)]
    id: Str<'a>,
    #[serde(borrow, default)]
    name: Str<'a>,
    #[serde(borrow, default)]
    description: Str<'a>,
    #[serde(borrow, default)]
    highlight: Str<'a>,
    #[serde(default)]
    is_private: LenientBool,
}

#[derive(Default, Deserialize)]
struct ConversationView<'a> {
    #[serde(borrow, default)]
    subject: Str<'a>,
    #[serde(borrow, default)]
    status: Str<'a>,
    #[serde(borrow, default)]
    assignee: Obj<TeammateView<'a>>,
    #[serde(borrow, default)]
    recipient: Obj<RecipientView<'a>>,
    #[serde(borrow, default)]
    tags: Objs<TagView<'a>>,
    #[serde(default)]
    custom_fields: Obj<Map<String, Value>>,
    #[serde(default)]
    created_at: LenientF64,
}

#[derive(Default, Deserialize)]
struct MessageView<'a> {
    #[serde(rename = "_links", borrow, default)]
    links: Obj<LinksView<'a>>,
    #[serde(rename = "type", borrow, default)]
    kind: Str<'a>,
    #[serde(default)]
    is_inbound: LenientBool,
    #[serde(default)]
    created_at: LenientF64,
    #[serde(borrow, default)]
    subject: Str<'a>,
    #[serde(borrow, default)]
    blurb: Str<'a>,
    #[serde(borrow, default)]
    author: Obj<TeammateView<'a>>,
    #[serde(borrow, default)]
    recipients: Objs<RecipientView<'a>>,
    #[serde(borrow, default)]
    text: Str<'a>,
    #[serde(borrow, default)]
    attachments: Objs<AttachmentView<'a>>,
}

#[derive(Default, Deserialize)]
struct CommentView<'a> {
    #[serde(rename = "_links", borrow, default)]
    links: Obj<LinksView<'a>>,
    #[serde(borrow, default)]
    author: Obj<TeammateView<'a>>,
    #[serde(borrow, default)]
    body: Str<'a>,
    #[serde(default)]
    posted_at: LenientF64,
    #[serde(borrow, default)]
    attachments: Objs<AttachmentView<'a>>,
}

#[derive(Default, Deserialize)]
struct HandleView<'a> {
    #[serde(borrow, default)]
    handle: Str<'a>,
    #[serde(borrow, default)]
    source: Str<'a>,
}

#[derive(Default, Deserialize)]
struct ContactView<'a> {
    #[serde(borrow, default)]
    name: Str<'a>,
    #[serde(borrow, default)]
    description: Str<'a>,
    /// Strings only: a number is not a link.
    #[serde(default)]
    links: LenientVec<String>,
    #[serde(borrow, default)]
    handles: Objs<HandleView<'a>>,
    #[serde(default)]
    is_private: LenientBool,
    #[serde(default)]
    custom_fields: Obj<Map<String, Value>>,
}

#[derive(Default, Deserialize)]
struct InboxView<'a> {
    #[serde(borrow, default)]
    name: Str<'a>,
    #[serde(default)]
    is_private: LenientBool,
}

/// `_meta` of an event part.
#[derive(Default, Deserialize)]
pub(crate) struct MetaView<'a> {
    #[serde(rename = "type", borrow, default)]
    pub(crate) kind: Str<'a>,
}

/// `source` / `target` of an event: `{ "_meta": { "type": ... }, "data": ... }`; `data` kept
/// raw (an object, or an array for some types).
#[derive(Default, Deserialize)]
pub(crate) struct PartView<'a> {
    #[serde(rename = "_meta", borrow, default)]
    pub(crate) meta: Obj<MetaView<'a>>,
    #[serde(borrow, default)]
    pub(crate) data: Option<&'a RawValue>,
}

impl PartView<'_> {
    pub(crate) fn kind(&self) -> Option<&str> {
        self.meta.0.as_ref()?.kind.as_deref()
    }

    /// `data.id`, when data is an object with an id.
    pub(crate) fn data_id(&self) -> Option<String> {
        let data = self.data?;
        if !data.get().starts_with('{') {
            return None;
        }
        let r: ObjRef<'_> = serde_json::from_str(data.get()).ok()?;
        r.id.non_empty().map(str::to_string)
    }
}

/// An event of the `/events` feed (also the `payload` of an application webhook), read
/// leniently; `conversation` and the parts' `data` are kept raw.
#[derive(Default, Deserialize)]
pub(crate) struct EventView<'a> {
    #[serde(borrow, default)]
    pub(crate) id: Str<'a>,
    #[serde(rename = "type", borrow, default)]
    pub(crate) kind: Str<'a>,
    #[serde(default)]
    pub(crate) emitted_at: LenientF64,
    #[serde(borrow, default)]
    pub(crate) source: Obj<PartView<'a>>,
    #[serde(borrow, default)]
    pub(crate) target: Obj<PartView<'a>>,
    #[serde(borrow, default)]
    pub(crate) conversation: Option<&'a RawValue>,
}

impl EventView<'_> {
    /// Reads an event from its JSON; `None` when it is not a JSON object at all.
    pub(crate) fn parse(raw: &str) -> Option<EventView<'_>> {
        if !raw.trim_start().starts_with('{') {
            return None;
        }
        serde_json::from_str(raw).ok()
    }

    /// The conversation's id.
    pub(crate) fn conversation_id(&self) -> Option<String> {
        let c = self.conversation?;
        if !c.get().starts_with('{') {
            return None;
        }
        let r: ObjRef<'_> = serde_json::from_str(c.get()).ok()?;
        r.id.non_empty().map(str::to_string)
    }

    /// The target's `_meta.type`.
    pub(crate) fn target_kind(&self) -> Option<&str> {
        self.target.0.as_ref()?.kind()
    }

    /// The target object's id.
    pub(crate) fn target_id(&self) -> Option<String> {
        self.target.0.as_ref()?.data_id()
    }

    /// The source's `_meta.type`.
    pub(crate) fn source_kind(&self) -> Option<&str> {
        self.source.0.as_ref()?.kind()
    }

    /// The source object's id.
    pub(crate) fn source_id(&self) -> Option<String> {
        self.source.0.as_ref()?.data_id()
    }

    /// `emitted_at` in Unix ms.
    pub(crate) fn emitted_ms(&self) -> Option<i64> {
        self.emitted_at.0.and_then(secs_to_ms_checked)
    }
}

fn source(object_type: &'static str, id: &str) -> SourceRef {
    SourceRef::new(NAME, object_type, id)
}

fn opt_str(s: &Str<'_>) -> Value {
    s.as_deref()
        .map_or(Value::Null, |s| Value::String(s.to_string()))
}

fn opt_bool(b: LenientBool) -> Value {
    b.0.map_or(Value::Null, Value::Bool)
}

fn opt_ms(s: LenientF64) -> Value {
    s.0.and_then(secs_to_ms_checked)
        .map_or(Value::Null, Value::from)
}

fn handle_identity(source: &str, handle: &str) -> Option<Identity> {
    let h = handle.trim();
    if h.is_empty() {
        return None;
    }
    Some(match source {
        "email" => Identity::email(h),
        "phone" => Identity::phone(h),
        _ if source.is_empty() && h.contains('@') => Identity::email(h),
        _ => Identity::Handle {
            source: source.to_string(),
            value: h.to_string(),
        },
    })
}

fn attachments_json(a: &Objs<AttachmentView<'_>>) -> Value {
    Value::Array(
        a.iter()
            .map(|a| {
                let mut m = Map::new();
                m.insert("content_type".into(), opt_str(&a.content_type));
                m.insert("filename".into(), opt_str(&a.filename));
                m.insert("id".into(), opt_str(&a.id));
                m.insert("size".into(), a.size.0.map_or(Value::Null, Value::from));
                Value::Object(m)
            })
            .collect(),
    )
}

fn with_author(mut e: Entity, author: &Obj<TeammateView<'_>>) -> Entity {
    if let Some(a) = &author.0 {
        e = e.with_attr(
            "author",
            a.display_name().map_or(Value::Null, Value::String),
        );
        if let Some(r) = a.source_ref() {
            e = e.with_relation("author", r);
        }
    }
    e
}

fn view<'a, T: Deserialize<'a>>(record: &'a Record) -> Result<T> {
    record.raw.deserialize().map_err(|e| {
        e.with_context("connector", NAME)
            .with_context("stream", &record.stream)
            .with_context("id", &record.id)
    })
}

/// A conversation: name from `subject`; `status`, `created_at`, `assignee`, `recipient`,
/// `tags` (names) as attributes; relations to the recipient's contact (`recipient`), the tags
/// (`tagged`) and the assignee (`assignee`); custom fields kept.
fn conversation_entity(record: &Record) -> Result<Entity> {
    let c: ConversationView<'_> = view(record)?;
    let mut e = Entity::new(EntityKind::Conversation, source("conversation", &record.id))
        .with_attr("status", opt_str(&c.status))
        .with_attr("created_at", opt_ms(c.created_at));
    if let Some(s) = c.subject.as_deref() {
        e = e.with_name(s);
    }
    if let Some(a) = &c.assignee.0 {
        e = e.with_attr(
            "assignee",
            a.display_name().map_or(Value::Null, Value::String),
        );
        if let Some(r) = a.source_ref() {
            e = e.with_relation("assignee", r);
        }
    }
    if let Some(r) = &c.recipient.0 {
        e = e.with_attr("recipient", opt_str(&r.handle));
        if let Some(id) = r.contact_id() {
            e = e.with_relation("recipient", source("contact", &id));
        }
    }
    let tag_names: Vec<Value> = c
        .tags
        .iter()
        .filter_map(|t| t.name.as_deref().map(|n| Value::String(n.to_string())))
        .collect();
    e = e.with_attr("tags", Value::Array(tag_names));
    for t in c.tags.iter() {
        if let Some(tid) = t.id.non_empty() {
            e = e.with_relation("tagged", source("tag", tid));
        }
    }
    e.custom_fields = c.custom_fields.0.unwrap_or_default();
    Ok(e)
}

/// A message: name from `subject`; type, direction, text, blurb, created_at, attachment
/// metadata, author and recipients as attributes; relations to its conversation
/// (`in_conversation`: `_links.related.conversation`, else [`Record::parent`]), the author
/// (`author`) and the recipients' contacts (`from` / `participant`).
fn message_entity(record: &Record) -> Result<Entity> {
    let m: MessageView<'_> = view(record)?;
    let conv = m
        .links
        .0
        .as_ref()
        .and_then(LinksView::conversation_id)
        .or_else(|| record.parent.clone());
    let mut e = Entity::new(EntityKind::Message, source("message", &record.id))
        .with_attr("type", opt_str(&m.kind))
        .with_attr("is_inbound", opt_bool(m.is_inbound))
        .with_attr("text", opt_str(&m.text))
        .with_attr("blurb", opt_str(&m.blurb))
        .with_attr("created_at", opt_ms(m.created_at))
        .with_attr("attachments", attachments_json(&m.attachments));
    if let Some(s) = m.subject.as_deref() {
        e = e.with_name(s);
    }
    if let Some(c) = &conv {
        e = e.with_relation("in_conversation", source("conversation", c));
    }
    e = with_author(e, &m.author);
    let recipients: Vec<Value> = m
        .recipients
        .iter()
        .map(|r| {
            let mut o = Map::new();
            o.insert("handle".into(), opt_str(&r.handle));
            o.insert("name".into(), opt_str(&r.name));
            o.insert("role".into(), opt_str(&r.role));
            Value::Object(o)
        })
        .collect();
    e = e.with_attr("recipients", Value::Array(recipients));
    for r in m.recipients.iter() {
        if let Some(cid) = r.contact_id() {
            let kind = if r.role.as_deref() == Some("from") {
                "from"
            } else {
                "participant"
            };
            e = e.with_relation(kind, source("contact", &cid));
        }
    }
    Ok(e)
}

/// A comment: `text`, `posted_at`, attachments, author; relation to its conversation.
fn comment_entity(record: &Record) -> Result<Entity> {
    let c: CommentView<'_> = view(record)?;
    let conv = c
        .links
        .0
        .as_ref()
        .and_then(LinksView::conversation_id)
        .or_else(|| record.parent.clone());
    let mut e = Entity::new(EntityKind::Comment, source("comment", &record.id))
        .with_attr("text", opt_str(&c.body))
        .with_attr("posted_at", opt_ms(c.posted_at))
        .with_attr("attachments", attachments_json(&c.attachments));
    if let Some(cid) = &conv {
        e = e.with_relation("in_conversation", source("conversation", cid));
    }
    Ok(with_author(e, &c.author))
}

/// A contact as a Person: emails and phones from its handles as identities (other handles as
/// `Identity::Handle`), domains from its links, custom fields kept.
fn contact_entity(record: &Record) -> Result<Entity> {
    let c: ContactView<'_> = view(record)?;
    let mut e = Entity::new(EntityKind::Person, source("contact", &record.id))
        .with_attr("description", opt_str(&c.description))
        .with_attr("is_private", opt_bool(c.is_private));
    if let Some(n) = c.name.as_deref() {
        e = e.with_name(n);
    }
    for h in c.handles.iter() {
        let src = h.source.as_deref().unwrap_or("");
        if let Some(ident) = h.handle.as_deref().and_then(|h| handle_identity(src, h)) {
            e = e.with_identity(ident);
        }
    }
    for l in c.links.iter() {
        if l.contains('.') {
            e = e.with_identity(Identity::domain(l));
        }
    }
    e.custom_fields = c.custom_fields.0.unwrap_or_default();
    Ok(e)
}

fn tag_entity(record: &Record) -> Result<Entity> {
    let t: TagView<'_> = view(record)?;
    let mut e = Entity::new(EntityKind::Tag, source("tag", &record.id))
        .with_attr("description", opt_str(&t.description))
        .with_attr("highlight", opt_str(&t.highlight))
        .with_attr("is_private", opt_bool(t.is_private));
    if let Some(n) = t.name.as_deref() {
        e = e.with_name(n);
    }
    Ok(e)
}

fn teammate_entity(record: &Record) -> Result<Entity> {
    let t: TeammateView<'_> = view(record)?;
    let mut e = Entity::new(EntityKind::Person, source("teammate", &record.id))
        .with_attr("username", opt_str(&t.username))
        .with_attr("is_admin", opt_bool(t.is_admin))
        .with_attr("teammate", Value::Bool(true));
    if let Some(n) = t.display_name() {
        e = e.with_name(n);
    }
    if let Some(m) = t.email.non_empty() {
        e = e.with_identity(Identity::email(m));
    }
    e.custom_fields = t.custom_fields.0.unwrap_or_default();
    Ok(e)
}

fn inbox_entity(record: &Record) -> Result<Entity> {
    let i: InboxView<'_> = view(record)?;
    let mut e = Entity::new(
        EntityKind::Other("inbox".into()),
        source("inbox", &record.id),
    )
    .with_attr("is_private", opt_bool(i.is_private));
    if let Some(n) = i.name.as_deref() {
        e = e.with_name(n);
    }
    Ok(e)
}

fn event_entity(record: &Record) -> Result<Entity> {
    let ev: EventView<'_> = view(record)?;
    let kind = ev.kind.as_deref().unwrap_or_default();
    let mut e = Entity::new(EntityKind::Event, source("event", &record.id))
        .with_name(kind)
        .with_attr("type", Value::String(kind.to_string()))
        .with_attr("emitted_at", opt_ms(ev.emitted_at))
        .with_attr(
            "source_type",
            ev.source_kind()
                .map_or(Value::Null, |s| Value::String(s.to_string())),
        )
        .with_attr(
            "target_type",
            ev.target_kind()
                .map_or(Value::Null, |s| Value::String(s.to_string())),
        );
    if let Some(c) = ev.conversation_id() {
        e = e.with_relation("in_conversation", source("conversation", &c));
    }
    if let (Some(kind), Some(id)) = (ev.target_kind(), ev.target_id()) {
        let object_type: &'static str = match kind {
            "message" => "message",
            "comment" => "comment",
            "tag" => "tag",
            "teammate" => "teammate",
            "inboxes" => "inbox",
            "contact" => "contact",
            _ => "object",
        };
        e = e.with_relation("target", source(object_type, &id));
    }
    Ok(e)
}

/// The normalized view of a Front record (`None` for a delete), read leniently from its raw
/// JSON: conversations, messages, comments, events and tags as their kinds; contacts and
/// teammates as persons; inboxes as `Other("inbox")`. What each carries is documented in the
/// crate README.
///
/// # Errors
/// `NotFound` for a record of an unknown stream; `InvalidResponse` only when the raw JSON is
/// not readable as an object at all (the engine then quarantines the record).
pub fn map_entity(record: &Record) -> Result<Option<Entity>> {
    if record.op == Op::Delete {
        return Ok(None);
    }
    let e = match record.stream.as_str() {
        streams::CONVERSATIONS => conversation_entity(record)?,
        streams::MESSAGES => message_entity(record)?,
        streams::COMMENTS => comment_entity(record)?,
        streams::CONTACTS => contact_entity(record)?,
        streams::TAGS => tag_entity(record)?,
        streams::TEAMMATES => teammate_entity(record)?,
        streams::INBOXES => inbox_entity(record)?,
        streams::EVENTS => event_entity(record)?,
        other => return Err(unknown_stream(other)),
    };
    Ok(Some(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use apex_connect_core::{RejectStage, Relation};
    use serde_json::json;

    fn rec(stream: &str, v: Value) -> Record {
        parse_record(stream, RawJson::from(v), None).unwrap()
    }

    fn entity(stream: &str, v: Value) -> Entity {
        map_entity(&rec(stream, v)).unwrap().unwrap()
    }

    #[test]
    fn timestamps() {
        assert_eq!(secs_to_ms(1701292649.333), 1_701_292_649_333);
        assert_eq!(secs_to_ms(1701292639.0), 1_701_292_639_000);
        assert_eq!(secs_to_ms(f64::NAN), 0);
        assert_eq!(secs_to_ms(1e300), i64::MAX);
        assert_eq!(secs_to_ms(-1e300), i64::MIN);
        assert_eq!(secs_to_ms_checked(1e300), None);
        assert_eq!(secs_to_ms_checked(f64::INFINITY), None);
        assert_eq!(secs_to_ms_checked(-1.5), Some(-1_500));
        assert_eq!(ms_to_secs_param(1_701_292_649_033), "1701292649.033");
        assert_eq!(ms_to_secs_param(-1_500), "-1.500");
        assert_eq!(ms_to_secs_param(i64::MIN), "-9223372036854775.808");
        assert_eq!(
            id_from_url("https://x.api.frontapp.com/contacts/crd_2?a=b").as_deref(),
            Some("crd_2")
        );
    }

    #[test]
    fn envelope_is_strict_only_about_id_and_timestamp() {
        let r = rec(
            streams::CONVERSATIONS,
            json!({"id": "cnv_1", "updated_at": 1.5, "created_at": "junk", "subject": 7}),
        );
        assert_eq!((r.id.as_str(), r.version), ("cnv_1", Some(1_500)));
        assert_eq!(r.updated_at, Some(1_500));
        // No primary timestamp: the fallback, read leniently.
        let r = rec(
            streams::CONTACTS,
            json!({"id": "crd_1", "created_at": "2.25"}),
        );
        assert_eq!(r.version, Some(2_250));
        let r = rec(streams::CONTACTS, json!({"id": "crd_1", "created_at": [1]}));
        assert_eq!(r.version, None);
        let r = rec(
            streams::TEAMMATES,
            json!({"id": "tea_1", "updated_at": "x"}),
        );
        assert_eq!(r.version, None, "teammates have no version");
        let r = parse_record(
            streams::MESSAGES,
            RawJson::from(json!({"id": "msg_1", "created_at": null})),
            Some("cnv_9"),
        )
        .unwrap();
        assert_eq!((r.version, r.parent.as_deref()), (None, Some("cnv_9")));

        for bad in [
            json!({"subject": "no id"}),
            json!({"id": 5}),
            json!({"id": ""}),
            json!({"id": {"a": 1}}),
            json!({"id": "cnv_1", "updated_at": "yesterday"}),
            json!({"id": "cnv_1", "updated_at": 1e300}),
            json!({"id": "cnv_1", "updated_at": [1]}),
            json!(["cnv_1"]),
            json!("cnv_1"),
        ] {
            let e =
                parse_record(streams::CONVERSATIONS, RawJson::from(bad.clone()), None).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{bad}");
        }
        let e = parse_record("deals", RawJson::from(json!({"id": "x"})), None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn unreadable_envelopes_become_rejects_and_the_page_goes_on() {
        let items: Vec<RawJson> = [
            json!({"id": "msg_1", "created_at": 1}),
            json!({"id": 12, "created_at": 2}),
            json!({"id": "msg_3", "created_at": "soon"}),
            json!({"id": "msg_4", "created_at": 4}),
        ]
        .into_iter()
        .map(RawJson::from)
        .collect();
        let (records, rejects) = read_items(streams::MESSAGES, items, Some("cnv_1")).unwrap();
        let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["msg_1", "msg_4"]);
        assert_eq!(rejects.len(), 2);
        assert_eq!(rejects[0].id.as_deref(), Some("12"));
        assert_eq!(rejects[1].id.as_deref(), Some("msg_3"));
        assert!(
            rejects
                .iter()
                .all(|r| r.stage == RejectStage::Parse && r.parent.as_deref() == Some("cnv_1"))
        );
        assert!(
            rejects[1].error.contains("not a number"),
            "{}",
            rejects[1].error
        );
        let kept: Value = serde_json::from_slice(&rejects[1].raw).unwrap();
        assert_eq!(kept, json!({"id": "msg_3", "created_at": "soon"}));
    }

    #[test]
    fn conversation_maps_relations_and_version() {
        let raw = json!({
            "id": "cnv_1", "subject": "Hi", "status": "assigned",
            "assignee": {"id": "tea_1", "first_name": "Michael", "last_name": "Scott"},
            "recipient": {"_links": {"related": {"contact": "https://c.api.frontapp.com/contacts/crd_9"}},
                          "handle": "p@x.com", "role": "from"},
            "tags": [{"id": "tag_1", "name": "VIP"}],
            "custom_fields": {"Tier": "gold"},
            "created_at": 1701292600.0, "updated_at": 1701292649.333
        });
        let r = rec(streams::CONVERSATIONS, raw.clone());
        assert_eq!(r.version, Some(1_701_292_649_333));
        assert_eq!(r.raw, raw);
        let e = map_entity(&r).unwrap().unwrap();
        assert_eq!(e.name.as_deref(), Some("Hi"));
        assert!(e.relations.contains(&Relation::new(
            "recipient",
            SourceRef::new(NAME, "contact", "crd_9")
        )));
        assert!(e.relations.contains(&Relation::new(
            "tagged",
            SourceRef::new(NAME, "tag", "tag_1")
        )));
        assert_eq!(e.custom_fields.get("Tier"), Some(&json!("gold")));
        assert_eq!(e.attributes["assignee"], json!("Michael Scott"));
        // Every field of the wrong type: still maps.
        let e = entity(
            streams::CONVERSATIONS,
            json!({"id": "cnv_2", "subject": ["x"], "assignee": [[1]], "recipient": 5,
                   "tags": {"id": "tag_1"}, "custom_fields": [], "created_at": "x"}),
        );
        assert_eq!(e.name, None);
        assert_eq!(e.attributes["tags"], json!([]));
        assert!(e.relations.is_empty());
    }

    #[test]
    fn message_maps_conversation_and_attachments() {
        let raw = json!({
            "_links": {"related": {"conversation": "https://c.api.frontapp.com/conversations/cnv_7"}},
            "id": "msg_1", "type": "email", "is_inbound": true, "created_at": 1701292639,
            "text": "hello", "recipients": [{"handle": "a@x.com", "role": "from",
              "_links": {"related": {"contact": "https://c.api.frontapp.com/contacts/crd_1"}}}],
            "attachments": [{"id": "fil_1", "filename": "a.png", "content_type": "image/png", "size": 5}]
        });
        let r = rec(streams::MESSAGES, raw);
        assert_eq!(r.version, Some(1_701_292_639_000));
        let e = map_entity(&r).unwrap().unwrap();
        assert!(e.relations.contains(&Relation::new(
            "in_conversation",
            SourceRef::new(NAME, "conversation", "cnv_7")
        )));
        assert!(e.relations.contains(&Relation::new(
            "from",
            SourceRef::new(NAME, "contact", "crd_1")
        )));
        assert_eq!(e.attributes["attachments"][0]["filename"], json!("a.png"));
        assert_eq!(e.attributes["text"], json!("hello"));
        let r = parse_record(
            streams::MESSAGES,
            RawJson::from(json!({"id": "msg_2"})),
            Some("cnv_3"),
        )
        .unwrap();
        assert_eq!(
            map_entity(&r).unwrap().unwrap().relations[0].target.id,
            "cnv_3"
        );
    }

    /// Issue 8: an attachment with a negative size (the spec types it as a plain number) maps;
    /// it used to fail whole `messages` and `comments` pages with `expected u64`.
    /// Nested objects are read in one pass; a duplicate key (not valid JSON for Front, and
    /// ambiguous) fails the mapping of that record only: it is quarantined.
    #[test]
    fn duplicate_keys_fail_the_mapping_not_the_page() {
        let raw = RawJson::parse(bytes::Bytes::from_static(
            br#"{"id": "cnv_1", "updated_at": 1, "assignee": {"id": "tea_1", "id": "tea_2"}}"#,
        ))
        .unwrap();
        let r = parse_record(streams::CONVERSATIONS, raw, None).unwrap();
        let e = map_entity(&r).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse);
        assert_eq!(e.context_value("id"), Some("cnv_1"));
        let raw = RawJson::parse(bytes::Bytes::from_static(br#"{"id": "a", "id": "b"}"#)).unwrap();
        assert!(parse_record(streams::CONVERSATIONS, raw, None).is_err());
    }

    #[test]
    fn negative_attachment_size_maps() {
        let att = json!([{"id": "fil_1", "filename": "a.png", "content_type": "image/png",
                          "size": -39484462}]);
        let e = entity(
            streams::MESSAGES,
            json!({"id": "msg_1", "created_at": 1, "attachments": att}),
        );
        assert_eq!(e.attributes["attachments"][0]["size"], json!(-39484462));
        let e = entity(
            streams::COMMENTS,
            json!({"id": "com_1", "posted_at": 1, "attachments": att}),
        );
        assert_eq!(e.attributes["attachments"][0]["filename"], json!("a.png"));
    }

    #[test]
    fn related_links_of_another_type_are_skipped() {
        // Links that are not strings (null, objects, numbers) name nothing and fail nothing.
        let raw = json!({
            "_links": {"related": {"conversation": {"href": "x"}, "message_seen": 3}},
            "id": "msg_3", "author": {"id": "tea_1", "first_name": "Ann", "last_name": ""},
            "recipients": [{"handle": "a@x.com", "role": "to", "_links": {"related": {"contact": 7}}},
                           {"handle": "b@x.com", "_links": {"related": {"contact": null}}}],
        });
        let r = parse_record(streams::MESSAGES, RawJson::from(raw.clone()), Some("cnv_9")).unwrap();
        assert_eq!(r.raw, raw, "raw is kept as it came");
        let e = map_entity(&r).unwrap().unwrap();
        assert_eq!(e.attributes["author"], json!("Ann"));
        let targets: Vec<_> = e.relations.iter().map(|r| r.target.id.as_str()).collect();
        assert_eq!(targets, ["cnv_9", "tea_1"]);
        assert_eq!(
            e.attributes["recipients"][1],
            json!({"handle": "b@x.com", "name": null, "role": null})
        );
        let err =
            parse_record(streams::MESSAGES, RawJson::from(json!({"id": 5})), None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidResponse);
        let contact = entity(
            streams::CONTACTS,
            json!({"id": "crd_1", "links": [1, 1.5, "https://acme.com"],
            "handles": [{"handle": "ann@acme.com"}, {"source": "phone"}]}),
        );
        assert_eq!(contact.identities.len(), 2);
    }

    #[test]
    fn contact_maps_identities() {
        let raw = json!({"id": "crd_1", "name": "Dwight",
            "handles": [{"handle": "Dwight@Schrute.com", "source": "email"},
                        {"handle": "+1 555 0100", "source": "phone"},
                        {"handle": "@dwight", "source": "twitter"}],
            "links": ["https://www.schrutefarms.com"],
            "custom_fields": {"Beets": true}});
        let r = rec(streams::CONTACTS, raw);
        assert_eq!(r.version, None);
        let e = map_entity(&r).unwrap().unwrap();
        assert!(
            e.identities
                .contains(&Identity::Email("dwight@schrute.com".into()))
        );
        assert!(e.identities.contains(&Identity::Phone("+15550100".into())));
        assert!(
            e.identities
                .contains(&Identity::Domain("schrutefarms.com".into()))
        );
        assert!(
            e.identities
                .iter()
                .any(|i| matches!(i, Identity::Handle { source, .. } if source == "twitter"))
        );
        assert_eq!(e.custom_fields["Beets"], json!(true));
    }

    #[test]
    fn comment_tag_event_teammate_inbox_map() {
        let c = parse_record(
            streams::COMMENTS,
            RawJson::from(json!({"id": "com_1", "body": "note", "posted_at": 10.5})),
            Some("cnv_1"),
        )
        .unwrap();
        assert_eq!(c.version, Some(10_500));
        assert_eq!(
            map_entity(&c).unwrap().unwrap().relations[0].target.id,
            "cnv_1"
        );
        let t = rec(
            streams::TAGS,
            json!({"id": "tag_1", "name": "VIP", "updated_at": 2.0}),
        );
        assert_eq!(t.version, Some(2000));
        assert_eq!(
            map_entity(&t).unwrap().unwrap().name.as_deref(),
            Some("VIP")
        );
        let ev = rec(
            streams::EVENTS,
            json!({"id": "evt_1", "type": "tag", "emitted_at": 3,
            "target": {"_meta": {"type": "tag"}, "data": {"id": "tag_1"}},
            "conversation": {"id": "cnv_1"}}),
        );
        assert_eq!(ev.version, Some(3000));
        let e = map_entity(&ev).unwrap().unwrap();
        assert_eq!(e.relations.len(), 2);
        assert_eq!(e.attributes["target_type"], json!("tag"));
        let tm = entity(
            streams::TEAMMATES,
            json!({"id": "tea_1", "email": "M@X.com", "username": "m", "is_admin": "true"}),
        );
        assert_eq!(tm.name.as_deref(), Some("m"));
        assert_eq!(tm.identities, vec![Identity::Email("m@x.com".into())]);
        assert_eq!(tm.attributes["is_admin"], json!(true));
        let inbox = entity(streams::INBOXES, json!({"id": "inb_1", "name": "Support"}));
        assert_eq!(inbox.kind, EntityKind::Other("inbox".into()));
        let deleted = Record::delete(StreamId::from_static(streams::MESSAGES), "msg_1");
        assert!(map_entity(&deleted).unwrap().is_none());
        let foreign = Record::upsert(StreamId::from("deals"), "d", json!({}));
        assert!(map_entity(&foreign).is_err());
    }
}
