//! Front's JSON shapes (lenient typed views) and their mapping to core [`Record`]s and
//! [`Entity`]s.
//!
//! Records keep the object exactly as Front returned it in [`Record::raw`]; the typed views
//! here read only what the mapping needs, and every field is optional so a new or missing
//! field never fails a sync.

use apex_connect_core::{Entity, EntityKind, Error, Identity, Record, Result, SourceRef, StreamId};
use serde::Deserialize;
use std::borrow::Cow;

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
}

/// A list answer: `{"_pagination": {"next": ...}, "_links": {...}, "_results": [...]}`.
/// `_pagination` is absent on some endpoints (`/teammates`, `/inboxes`, comments).
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct ListResponse {
    /// The pagination block, when the endpoint pages.
    #[serde(rename = "_pagination", default)]
    pub pagination: Option<Pagination>,
    /// The objects of this page, untouched.
    #[serde(rename = "_results", default)]
    pub results: Vec<Value>,
    /// Only on search answers: the total number of matches.
    #[serde(rename = "_total", default)]
    pub total: Option<u64>,
}

impl ListResponse {
    /// The `next` link, when there is one (`null` or absent: the end).
    pub fn next(&self) -> Option<&str> {
        self.pagination
            .as_ref()
            .and_then(|p| p.next.as_deref())
            .filter(|s| !s.is_empty())
    }
}

/// A list answer read for its ids only (the conversations pages of the nested walks): the
/// objects are skipped by the parser instead of being built as `Value`s.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct IdList {
    /// The pagination block.
    #[serde(rename = "_pagination", default)]
    pub(crate) pagination: Option<Pagination>,
    /// The objects' ids (`None` for an object without a string id).
    #[serde(rename = "_results", default)]
    pub(crate) results: Vec<IdOnly>,
}

impl IdList {
    /// The `next` link, when there is one.
    pub(crate) fn next(&self) -> Option<&str> {
        self.pagination
            .as_ref()
            .and_then(|p| p.next.as_deref())
            .filter(|s| !s.is_empty())
    }

    /// The id of object `i`.
    pub(crate) fn id(&self, i: usize) -> Option<&str> {
        self.results.get(i)?.id.as_deref()
    }
}

/// An object of which only the id is read.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct IdOnly {
    /// `id`, when it is a string.
    #[serde(default, deserialize_with = "lenient_string")]
    pub(crate) id: Option<String>,
}

/// A string, or `None` for any other JSON value (skipped without being built).
fn lenient_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    Ok(LenientStr::deserialize(d)?.0.map(|s| s.into_owned()))
}

/// A string borrowed where the input allows it, or `None` for any other JSON value, which is
/// skipped (so a field of an unexpected type never fails a sync).
#[derive(Debug, Clone, Default)]
pub(crate) struct LenientStr<'a>(pub(crate) Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for LenientStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = LenientStr<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Owned(v))))
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_i64<E>(self, _: i64) -> std::result::Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_u64<E>(self, _: u64) -> std::result::Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_none<E>(self) -> std::result::Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<Self::Value, D::Error> {
                d.deserialize_any(V(std::marker::PhantomData))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LenientStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LenientStr(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The `_pagination` block.
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct Pagination {
    /// The URL of the next page, exactly as to be requested; `null` at the end.
    #[serde(default)]
    pub next: Option<String>,
}

/// `_links` of an object: `self` and `related` URLs.
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct Links {
    /// The object's own URL.
    #[serde(rename = "self", default)]
    pub self_url: Option<String>,
    /// Related URLs by name (`conversation`, `contact`, ...).
    #[serde(default)]
    pub related: Option<Map<String, Value>>,
}

impl Links {
    /// The id at the end of the related link `name` (`.../contacts/crd_1` -> `crd_1`).
    pub fn related_id(&self, name: &str) -> Option<String> {
        let url = self.related.as_ref()?.get(name)?.as_str()?;
        id_from_url(url)
    }
}

/// The last path segment of a Front URL, without query string.
pub fn id_from_url(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?;
    let id = path.trim_end_matches('/').rsplit('/').next()?;
    (!id.is_empty() && !id.contains(':')).then(|| id.to_string())
}

/// A teammate (assignee, author).
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct Teammate {
    /// `tea_...`.
    #[serde(default)]
    pub id: String,
    /// Email.
    #[serde(default)]
    pub email: Option<String>,
    /// Username.
    #[serde(default)]
    pub username: Option<String>,
    /// First name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// Whether the teammate is an admin.
    #[serde(default)]
    pub is_admin: Option<bool>,
    /// Custom fields.
    #[serde(default)]
    pub custom_fields: Option<Map<String, Value>>,
}

impl Teammate {
    /// "First Last", or the username / email when the names are missing.
    pub fn display_name(&self) -> Option<String> {
        let full = [self.first_name.as_deref(), self.last_name.as_deref()]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if !full.is_empty() {
            return Some(full);
        }
        self.username.clone().or_else(|| self.email.clone())
    }
}

/// A tag as embedded in a conversation, or listed by `/tags`.
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct Tag {
    /// `tag_...`.
    #[serde(default)]
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Highlight colour.
    #[serde(default)]
    pub highlight: Option<String>,
    /// Whether the tag is private.
    #[serde(default)]
    pub is_private: Option<bool>,
    /// Created, Unix seconds (fractional).
    #[serde(default)]
    pub created_at: Option<f64>,
    /// Updated, Unix seconds (fractional).
    #[serde(default)]
    pub updated_at: Option<f64>,
}

/// An inbox.
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct Inbox {
    /// `inb_...`.
    #[serde(default)]
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Whether private.
    #[serde(default)]
    pub is_private: Option<bool>,
}

/// `source` / `target` of an event: `{ "_meta": { "type": ... }, "data": ... }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct EventPart {
    /// `_meta`.
    #[serde(rename = "_meta", default)]
    pub meta: Option<EventMeta>,
    /// The object (teammate, message, comment, tag, ...), or an array for some types.
    #[serde(default)]
    pub data: Option<Value>,
}

impl EventPart {
    /// `_meta.type`.
    pub fn kind(&self) -> Option<&str> {
        self.meta.as_ref().and_then(|m| m.kind.as_deref())
    }

    /// `data.id`, when data is an object with an id.
    pub fn data_id(&self) -> Option<&str> {
        self.data.as_ref()?.get("id")?.as_str()
    }
}

/// `_meta` of an event part.
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct EventMeta {
    /// The part's type.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

/// An event of the `/events` feed (also the `payload` of an application webhook).
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct Event {
    /// `evt_...`.
    #[serde(default)]
    pub id: String,
    /// `inbound`, `outbound`, `tag`, `comment`, ...
    #[serde(rename = "type", default)]
    pub kind: String,
    /// When, Unix seconds.
    #[serde(default)]
    pub emitted_at: Option<f64>,
    /// Who or what caused it.
    #[serde(default)]
    pub source: Option<EventPart>,
    /// What it acted on.
    #[serde(default)]
    pub target: Option<EventPart>,
    /// The conversation, as a full object (or a preview with `id` and `_links`).
    #[serde(default)]
    pub conversation: Option<Value>,
}

impl Event {
    /// The conversation's id.
    pub fn conversation_id(&self) -> Option<&str> {
        self.conversation.as_ref()?.get("id")?.as_str()
    }

    /// The target's `_meta.type`.
    pub fn target_kind(&self) -> Option<&str> {
        self.target.as_ref()?.kind()
    }

    /// The target object's id.
    pub fn target_id(&self) -> Option<&str> {
        self.target.as_ref()?.data_id()
    }
}

/// Front timestamp (fractional Unix seconds) to Unix milliseconds.
pub fn secs_to_ms(secs: f64) -> i64 {
    (secs * 1000.0).round() as i64
}

/// Unix milliseconds to Front's query format (seconds with up to 3 decimals).
pub fn ms_to_secs_param(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let abs = ms.unsigned_abs();
    format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
}

fn parse<T: serde::de::DeserializeOwned + Default>(raw: &Value, what: &'static str) -> Result<T> {
    T::deserialize(raw).map_err(|e| {
        Error::invalid_response("Front object does not have the expected shape")
            .with_context("connector", NAME)
            .with_context("object", what)
            .set_source(e)
    })
}

fn source(object_type: &'static str, id: &str) -> SourceRef {
    SourceRef::new(NAME, object_type, id)
}

fn missing_id(what: &'static str) -> Error {
    Error::invalid_response("Front object has no id")
        .with_context("connector", NAME)
        .with_context("object", what)
}

fn with_times(mut rec: Record, version_secs: Option<f64>) -> Record {
    if let Some(s) = version_secs {
        let ms = secs_to_ms(s);
        rec = rec.with_version(ms).with_updated_at(ms);
    }
    rec
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

// ----- borrowed views for the mapping
//
// The record functions below read what the entity needs through these views, deserialized
// from the record's `raw` `Value` without copying: strings are borrowed from `raw`, fields
// not named are skipped, and only what ends up in the entity is allocated. (The public owned
// types above are for hosts; they copy every field they read.)

type Str<'a> = Option<Cow<'a, str>>;

fn opt_cow(s: &Str<'_>) -> Value {
    s.as_deref()
        .map_or(Value::Null, |s| Value::String(s.to_string()))
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
}

impl TeammateView<'_> {
    /// As [`Teammate::display_name`].
    fn display_name(&self) -> Option<String> {
        let mut full = String::new();
        for part in [self.first_name.as_deref(), self.last_name.as_deref()]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
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
            .as_deref()
            .or(self.email.as_deref())
            .map(str::to_string)
    }

    fn source_ref(&self) -> Option<SourceRef> {
        self.id
            .as_deref()
            .filter(|id| !id.is_empty())
            .map(|id| source("teammate", id))
    }
}

/// `_links` with the related links the mapping reads (any other is skipped).
#[derive(Default, Deserialize)]
struct LinksView<'a> {
    #[serde(borrow, default)]
    related: Option<RelatedView<'a>>,
}

#[derive(Default, Deserialize)]
struct RelatedView<'a> {
    #[serde(borrow, default)]
    contact: LenientStr<'a>,
    #[serde(borrow, default)]
    conversation: LenientStr<'a>,
}

impl LinksView<'_> {
    fn contact_id(&self) -> Option<String> {
        id_from_url(self.related.as_ref()?.contact.0.as_deref()?)
    }

    fn conversation_id(&self) -> Option<String> {
        id_from_url(self.related.as_ref()?.conversation.0.as_deref()?)
    }
}

#[derive(Default, Deserialize)]
struct RecipientView<'a> {
    #[serde(rename = "_links", borrow, default)]
    links: Option<LinksView<'a>>,
    #[serde(borrow, default)]
    name: Str<'a>,
    #[serde(borrow, default)]
    handle: Str<'a>,
    #[serde(borrow, default)]
    role: Str<'a>,
}

impl RecipientView<'_> {
    fn contact_id(&self) -> Option<String> {
        self.links.as_ref()?.contact_id()
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
    #[serde(default)]
    size: Option<u64>,
}

#[derive(Default, Deserialize)]
struct TagView<'a> {
    #[serde(borrow, default)]
    id: Str<'a>,
    #[serde(borrow, default)]
    name: Str<'a>,
}

#[derive(Default, Deserialize)]
struct ConversationView<'a> {
    #[serde(borrow, default)]
    id: Str<'a>,
    #[serde(borrow, default)]
    subject: Str<'a>,
    #[serde(borrow, default)]
    status: Str<'a>,
    #[serde(borrow, default)]
    assignee: Option<TeammateView<'a>>,
    #[serde(borrow, default)]
    recipient: Option<RecipientView<'a>>,
    #[serde(borrow, default)]
    tags: Vec<TagView<'a>>,
    #[serde(default)]
    created_at: Option<f64>,
    #[serde(default)]
    updated_at: Option<f64>,
}

#[derive(Default, Deserialize)]
struct MessageView<'a> {
    #[serde(rename = "_links", borrow, default)]
    links: Option<LinksView<'a>>,
    #[serde(borrow, default)]
    id: Str<'a>,
    #[serde(rename = "type", borrow, default)]
    kind: Str<'a>,
    #[serde(default)]
    is_inbound: Option<bool>,
    #[serde(default)]
    created_at: Option<f64>,
    #[serde(borrow, default)]
    subject: Str<'a>,
    #[serde(borrow, default)]
    blurb: Str<'a>,
    #[serde(borrow, default)]
    author: Option<TeammateView<'a>>,
    #[serde(borrow, default)]
    recipients: Vec<RecipientView<'a>>,
    #[serde(borrow, default)]
    text: Str<'a>,
    #[serde(borrow, default)]
    attachments: Vec<AttachmentView<'a>>,
}

#[derive(Default, Deserialize)]
struct CommentView<'a> {
    #[serde(rename = "_links", borrow, default)]
    links: Option<LinksView<'a>>,
    #[serde(borrow, default)]
    id: Str<'a>,
    #[serde(borrow, default)]
    author: Option<TeammateView<'a>>,
    #[serde(borrow, default)]
    body: Str<'a>,
    #[serde(default)]
    posted_at: Option<f64>,
    #[serde(borrow, default)]
    attachments: Vec<AttachmentView<'a>>,
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
    id: Str<'a>,
    #[serde(borrow, default)]
    name: Str<'a>,
    #[serde(borrow, default)]
    description: Str<'a>,
    #[serde(borrow, default)]
    links: Vec<LenientStr<'a>>,
    #[serde(borrow, default)]
    handles: Vec<HandleView<'a>>,
    #[serde(default)]
    is_private: Option<bool>,
    #[serde(default)]
    updated_at: Option<f64>,
    #[serde(default)]
    created_at: Option<f64>,
}

fn view<'a, T: Deserialize<'a>>(raw: &'a Value, what: &'static str) -> Result<T> {
    T::deserialize(raw).map_err(|e| {
        Error::invalid_response("Front object does not have the expected shape")
            .with_context("connector", NAME)
            .with_context("object", what)
            .set_source(e)
    })
}

/// The object's non-empty id, or `InvalidResponse`.
fn id_of(id: &Str<'_>, what: &'static str) -> Result<String> {
    match id.as_deref() {
        Some(id) if !id.is_empty() => Ok(id.to_string()),
        _ => Err(missing_id(what)),
    }
}

fn attachments_view_json(a: &[AttachmentView<'_>]) -> Value {
    Value::Array(
        a.iter()
            .map(|a| {
                let mut m = Map::new();
                m.insert("content_type".into(), opt_cow(&a.content_type));
                m.insert("filename".into(), opt_cow(&a.filename));
                m.insert("id".into(), opt_cow(&a.id));
                m.insert("size".into(), a.size.map_or(Value::Null, Value::from));
                Value::Object(m)
            })
            .collect(),
    )
}

/// A custom-fields object of `raw`, copied.
fn custom_fields_of(raw: &Value) -> Map<String, Value> {
    raw.get("custom_fields")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// Maps a conversation: version from `updated_at` (or `created_at`), relations to the
/// recipient contact (`recipient`), the tags (`tagged`) and the assignee (`assignee`).
///
/// # Errors
/// `InvalidResponse` when the object has no id or the wrong shape.
pub fn conversation_record(raw: Value) -> Result<Record> {
    let (id, version, e) = {
        let c: ConversationView<'_> = view(&raw, "conversation")?;
        let id = id_of(&c.id, "conversation")?;
        let mut e = Entity::new(EntityKind::Conversation, source("conversation", &id))
            .with_attr("status", opt_cow(&c.status))
            .with_attr("created_at", opt_ms(c.created_at));
        if let Some(s) = &c.subject {
            e = e.with_name(s.as_ref());
        }
        if let Some(a) = &c.assignee {
            e = e.with_attr(
                "assignee",
                a.display_name().map_or(Value::Null, Value::String),
            );
            if let Some(r) = a.source_ref() {
                e = e.with_relation("assignee", r);
            }
        }
        if let Some(r) = &c.recipient {
            e = e.with_attr("recipient", opt_cow(&r.handle));
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
        for t in &c.tags {
            if let Some(tid) = t.id.as_deref().filter(|t| !t.is_empty()) {
                e = e.with_relation("tagged", source("tag", tid));
            }
        }
        e.custom_fields = custom_fields_of(&raw);
        (id, c.updated_at.or(c.created_at), e)
    };
    let rec = Record::upsert(StreamId::from_static(streams::CONVERSATIONS), id, raw);
    Ok(with_times(rec, version).with_entity(e))
}

/// Maps a message: version from `created_at` (messages do not change), relation to its
/// conversation (`in_conversation`; from `_links.related.conversation`, or `conversation_id`
/// when the link is missing), the author (`author`) and recipients' contacts (`participant`).
///
/// # Errors
/// `InvalidResponse` when the object has no id or the wrong shape.
pub fn message_record(raw: Value, conversation_id: Option<&str>) -> Result<Record> {
    let (id, version, e) = {
        let m: MessageView<'_> = view(&raw, "message")?;
        let id = id_of(&m.id, "message")?;
        let conv = m
            .links
            .as_ref()
            .and_then(LinksView::conversation_id)
            .or_else(|| conversation_id.map(str::to_string));
        let mut e = Entity::new(EntityKind::Message, source("message", &id))
            .with_attr("type", opt_cow(&m.kind))
            .with_attr("is_inbound", m.is_inbound.map_or(Value::Null, Value::Bool))
            .with_attr("text", opt_cow(&m.text))
            .with_attr("blurb", opt_cow(&m.blurb))
            .with_attr("created_at", opt_ms(m.created_at))
            .with_attr("attachments", attachments_view_json(&m.attachments));
        if let Some(s) = &m.subject {
            e = e.with_name(s.as_ref());
        }
        if let Some(c) = &conv {
            e = e.with_relation("in_conversation", source("conversation", c));
        }
        if let Some(a) = &m.author {
            e = e.with_attr(
                "author",
                a.display_name().map_or(Value::Null, Value::String),
            );
            if let Some(r) = a.source_ref() {
                e = e.with_relation("author", r);
            }
        }
        let recipients: Vec<Value> = m
            .recipients
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("handle".into(), opt_cow(&r.handle));
                o.insert("name".into(), opt_cow(&r.name));
                o.insert("role".into(), opt_cow(&r.role));
                Value::Object(o)
            })
            .collect();
        e = e.with_attr("recipients", Value::Array(recipients));
        for r in &m.recipients {
            if let Some(cid) = r.contact_id() {
                let kind = if r.role.as_deref() == Some("from") {
                    "from"
                } else {
                    "participant"
                };
                e = e.with_relation(kind, source("contact", &cid));
            }
        }
        (id, m.created_at, e)
    };
    let rec = Record::upsert(StreamId::from_static(streams::MESSAGES), id, raw);
    Ok(with_times(rec, version).with_entity(e))
}

/// Maps a comment: version from `posted_at`, relation to its conversation.
///
/// # Errors
/// `InvalidResponse` when the object has no id or the wrong shape.
pub fn comment_record(raw: Value, conversation_id: Option<&str>) -> Result<Record> {
    let (id, version, e) = {
        let c: CommentView<'_> = view(&raw, "comment")?;
        let id = id_of(&c.id, "comment")?;
        let conv = c
            .links
            .as_ref()
            .and_then(LinksView::conversation_id)
            .or_else(|| conversation_id.map(str::to_string));
        let mut e = Entity::new(EntityKind::Comment, source("comment", &id))
            .with_attr("text", opt_cow(&c.body))
            .with_attr("posted_at", opt_ms(c.posted_at))
            .with_attr("attachments", attachments_view_json(&c.attachments));
        if let Some(cid) = &conv {
            e = e.with_relation("in_conversation", source("conversation", cid));
        }
        if let Some(a) = &c.author {
            e = e.with_attr(
                "author",
                a.display_name().map_or(Value::Null, Value::String),
            );
            if let Some(r) = a.source_ref() {
                e = e.with_relation("author", r);
            }
        }
        (id, c.posted_at, e)
    };
    let rec = Record::upsert(StreamId::from_static(streams::COMMENTS), id, raw);
    Ok(with_times(rec, version).with_entity(e))
}

/// Maps a contact to a Person: emails and phones from its handles as identities (other
/// handles as `Identity::Handle`), domains from its links, custom fields preserved.
///
/// # Errors
/// `InvalidResponse` when the object has no id or the wrong shape.
pub fn contact_record(raw: Value) -> Result<Record> {
    let (id, version, e) = {
        let c: ContactView<'_> = view(&raw, "contact")?;
        let id = id_of(&c.id, "contact")?;
        let mut e = Entity::new(EntityKind::Person, source("contact", &id))
            .with_attr("description", opt_cow(&c.description))
            .with_attr("is_private", c.is_private.map_or(Value::Null, Value::Bool));
        if let Some(n) = &c.name {
            e = e.with_name(n.as_ref());
        }
        for h in &c.handles {
            let (src, handle) = (h.source.as_deref().unwrap_or(""), h.handle.as_deref());
            if let Some(ident) = handle.and_then(|handle| handle_identity(src, handle)) {
                e = e.with_identity(ident);
            }
        }
        for l in c.links.iter().filter_map(|l| l.0.as_deref()) {
            if l.contains('.') {
                e = e.with_identity(Identity::domain(l));
            }
        }
        e.custom_fields = custom_fields_of(&raw);
        (id, c.updated_at.or(c.created_at), e)
    };
    let rec = Record::upsert(StreamId::from_static(streams::CONTACTS), id, raw);
    Ok(with_times(rec, version).with_entity(e))
}

/// Maps a tag: version from `updated_at`.
///
/// # Errors
/// `InvalidResponse` when the object has no id or the wrong shape.
pub fn tag_record(raw: Value) -> Result<Record> {
    let t: Tag = parse(&raw, "tag")?;
    if t.id.is_empty() {
        return Err(missing_id("tag"));
    }
    let mut e = Entity::new(EntityKind::Tag, source("tag", &t.id))
        .with_attr("description", opt_str(&t.description))
        .with_attr("highlight", opt_str(&t.highlight))
        .with_attr("is_private", t.is_private.map_or(Value::Null, Value::Bool));
    if let Some(n) = &t.name {
        e = e.with_name(n.clone());
    }
    let rec = Record::upsert(StreamId::from_static(streams::TAGS), &t.id, raw);
    Ok(with_times(rec, t.updated_at.or(t.created_at)).with_entity(e))
}

/// Maps a teammate to a Person with their email as identity (no version: Front gives none).
///
/// # Errors
/// `InvalidResponse` when the object has no id or the wrong shape.
pub fn teammate_record(raw: Value) -> Result<Record> {
    let t: Teammate = parse(&raw, "teammate")?;
    if t.id.is_empty() {
        return Err(missing_id("teammate"));
    }
    let mut e = Entity::new(EntityKind::Person, source("teammate", &t.id))
        .with_attr("username", opt_str(&t.username))
        .with_attr("is_admin", t.is_admin.map_or(Value::Null, Value::Bool))
        .with_attr("teammate", Value::Bool(true));
    if let Some(n) = t.display_name() {
        e = e.with_name(n);
    }
    if let Some(m) = &t.email {
        e = e.with_identity(Identity::email(m));
    }
    e.custom_fields = t.custom_fields.clone().unwrap_or_default();
    Ok(Record::upsert(StreamId::from_static(streams::TEAMMATES), &t.id, raw).with_entity(e))
}

/// Maps an inbox (entity kind `Other("inbox")`, no version).
///
/// # Errors
/// `InvalidResponse` when the object has no id or the wrong shape.
pub fn inbox_record(raw: Value) -> Result<Record> {
    let i: Inbox = parse(&raw, "inbox")?;
    if i.id.is_empty() {
        return Err(missing_id("inbox"));
    }
    let mut e = Entity::new(EntityKind::Other("inbox".into()), source("inbox", &i.id))
        .with_attr("is_private", i.is_private.map_or(Value::Null, Value::Bool));
    if let Some(n) = &i.name {
        e = e.with_name(n.clone());
    }
    Ok(Record::upsert(StreamId::from_static(streams::INBOXES), &i.id, raw).with_entity(e))
}

/// Maps an event of the company feed: version from `emitted_at`, relation to its conversation
/// and target.
///
/// # Errors
/// `InvalidResponse` when the object has no id or the wrong shape.
pub fn event_record(raw: Value) -> Result<Record> {
    let ev: Event = parse(&raw, "event")?;
    if ev.id.is_empty() {
        return Err(missing_id("event"));
    }
    let mut e = Entity::new(EntityKind::Event, source("event", &ev.id))
        .with_name(ev.kind.clone())
        .with_attr("type", Value::String(ev.kind.clone()))
        .with_attr("emitted_at", opt_ms(ev.emitted_at))
        .with_attr(
            "source_type",
            opt_str(
                &ev.source
                    .as_ref()
                    .and_then(|s| s.kind().map(str::to_string)),
            ),
        )
        .with_attr(
            "target_type",
            opt_str(&ev.target_kind().map(str::to_string)),
        );
    if let Some(c) = ev.conversation_id() {
        e = e.with_relation("in_conversation", source("conversation", c));
    }
    if let (Some(kind), Some(id)) = (ev.target_kind(), ev.target_id()) {
        let object_type: &'static str = match kind {
            "message" => "message",
            "comment" => "comment",
            "tag" => "tag",
            "teammate" => "teammate",
            "inboxes" => "inbox",
            _ => "object",
        };
        e = e.with_relation("target", source(object_type, id));
    }
    let rec = Record::upsert(StreamId::from_static(streams::EVENTS), &ev.id, raw);
    Ok(with_times(rec, ev.emitted_at).with_entity(e))
}

/// Maps an object of `stream`; `parent` is the conversation id for messages and comments.
///
/// # Errors
/// `NotFound` for an unknown stream; see the per-stream functions.
pub fn map_record(stream: &str, raw: Value, parent: Option<&str>) -> Result<Record> {
    match stream {
        streams::CONVERSATIONS => conversation_record(raw),
        streams::MESSAGES => message_record(raw, parent),
        streams::COMMENTS => comment_record(raw, parent),
        streams::CONTACTS => contact_record(raw),
        streams::TAGS => tag_record(raw),
        streams::TEAMMATES => teammate_record(raw),
        streams::INBOXES => inbox_record(raw),
        streams::EVENTS => event_record(raw),
        other => Err(Error::new(
            apex_connect_core::ErrorKind::NotFound,
            "unknown Front stream",
        )
        .with_context("stream", other.to_string())),
    }
}

fn opt_str(s: &Option<String>) -> Value {
    s.clone().map_or(Value::Null, Value::String)
}

fn opt_ms(s: Option<f64>) -> Value {
    s.map_or(Value::Null, |s| Value::from(secs_to_ms(s)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use apex_connect_core::Relation;
    use serde_json::json;

    #[test]
    fn timestamps() {
        assert_eq!(secs_to_ms(1701292649.333), 1_701_292_649_333);
        assert_eq!(secs_to_ms(1701292639.0), 1_701_292_639_000);
        assert_eq!(ms_to_secs_param(1_701_292_649_033), "1701292649.033");
        assert_eq!(
            id_from_url("https://x.api.frontapp.com/contacts/crd_2?a=b").as_deref(),
            Some("crd_2")
        );
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
        let r = conversation_record(raw.clone()).unwrap();
        assert_eq!(r.version, Some(1_701_292_649_333));
        assert_eq!(r.raw, raw);
        let e = r.entity.unwrap();
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
        assert!(conversation_record(json!({"subject": "no id"})).is_err());
        assert!(conversation_record(json!({"id": 5})).is_err());
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
        let r = message_record(raw, None).unwrap();
        assert_eq!(r.version, Some(1_701_292_639_000));
        let e = r.entity.unwrap();
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
        let r = message_record(json!({"id": "msg_2"}), Some("cnv_3")).unwrap();
        assert_eq!(r.entity.unwrap().relations[0].target.id, "cnv_3");
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
        let r = message_record(raw.clone(), Some("cnv_9")).unwrap();
        assert_eq!(r.raw, raw, "raw is kept as it came");
        let e = r.entity.unwrap();
        assert_eq!(e.attributes["author"], json!("Ann"));
        let targets: Vec<_> = e.relations.iter().map(|r| r.target.id.as_str()).collect();
        assert_eq!(targets, ["cnv_9", "tea_1"]);
        assert_eq!(
            e.attributes["recipients"][1],
            json!({"handle": "b@x.com", "name": null, "role": null})
        );
        let err = message_record(json!({"id": 5}), None).unwrap_err();
        assert_eq!(err.kind(), apex_connect_core::ErrorKind::InvalidResponse);
        let contact = contact_record(json!({"id": "crd_1", "links": [1, "https://acme.com"],
            "handles": [{"handle": "ann@acme.com"}, {"source": "phone"}]}))
        .unwrap();
        assert_eq!(contact.entity.unwrap().identities.len(), 2);
    }

    #[test]
    fn contact_maps_identities() {
        let raw = json!({"id": "crd_1", "name": "Dwight",
            "handles": [{"handle": "Dwight@Schrute.com", "source": "email"},
                        {"handle": "+1 555 0100", "source": "phone"},
                        {"handle": "@dwight", "source": "twitter"}],
            "links": ["https://www.schrutefarms.com"],
            "custom_fields": {"Beets": true}});
        let r = contact_record(raw).unwrap();
        assert_eq!(r.version, None);
        let e = r.entity.unwrap();
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
    fn comment_tag_event_map() {
        let c = comment_record(
            json!({"id": "com_1", "body": "note", "posted_at": 10.5}),
            Some("cnv_1"),
        )
        .unwrap();
        assert_eq!(c.version, Some(10_500));
        assert_eq!(c.entity.unwrap().relations[0].target.id, "cnv_1");
        let t = tag_record(json!({"id": "tag_1", "name": "VIP", "updated_at": 2.0})).unwrap();
        assert_eq!(t.version, Some(2000));
        let ev = event_record(json!({"id": "evt_1", "type": "tag", "emitted_at": 3,
            "target": {"_meta": {"type": "tag"}, "data": {"id": "tag_1"}},
            "conversation": {"id": "cnv_1"}}))
        .unwrap();
        assert_eq!(ev.version, Some(3000));
        assert_eq!(ev.entity.unwrap().relations.len(), 2);
        assert!(map_record("nope", json!({}), None).is_err());
    }
}
