//! Records, pages, normalized entities, and the identifiers that name them.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::cursor::CursorToken;
use crate::error::{Error, Result};

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Cow<'static, str>);

        impl $name {
            /// Wraps a string.
            pub fn new(s: impl Into<Cow<'static, str>>) -> Self {
                $name(s.into())
            }
            /// A `const` id from a static string.
            pub const fn from_static(s: &'static str) -> Self {
                $name(Cow::Borrowed(s))
            }
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&'static str> for $name {
            fn from(s: &'static str) -> Self {
                $name(Cow::Borrowed(s))
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(Cow::Owned(s))
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// The name of a stream of one connector, e.g. `"conversations"`.
    StreamId
);
string_id!(
    /// The host's name for one connection (one account of one platform), e.g. `"acme-front"`.
    ConnectionId
);

/// What a record says about its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// The object exists with this content (create or update).
    Upsert,
    /// The object was deleted (or archived away) at the source.
    Delete,
}

impl Op {
    /// `"upsert"` or `"delete"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Delete => "delete",
        }
    }
}

/// One JSON value exactly as the platform sent it: a slice of the response body (no copy, no
/// re-serialization), or bytes serialized once from a [`serde_json::Value`].
///
/// Holds valid JSON (UTF-8) by construction: every constructor validates or serializes.
/// `Clone` is cheap (reference-counted [`Bytes`]). Serializes as the embedded JSON value itself.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RawJson(Bytes);

impl RawJson {
    /// JSON `null`.
    pub const fn null() -> Self {
        RawJson(Bytes::from_static(b"null"))
    }

    /// The value `raw`, sliced out of `body` (the buffer `raw` was parsed from) without copying.
    /// When `raw` does not lie inside `body` its text is copied instead.
    pub fn from_raw_in(body: &Bytes, raw: &RawValue) -> Self {
        RawJson(subslice(body, raw.get().as_bytes()))
    }

    /// Validates `bytes` as one JSON value (surrounding whitespace trimmed, without copying).
    ///
    /// # Errors
    /// `InvalidResponse` when `bytes` is not exactly one JSON value.
    pub fn parse(bytes: Bytes) -> Result<Self> {
        let raw: &RawValue = serde_json::from_slice(&bytes).map_err(|e| {
            Error::invalid_response("not a JSON value")
                .with_context("bytes", bytes.len())
                .set_source(e)
        })?;
        Ok(RawJson(subslice(&bytes, raw.get().as_bytes())))
    }

    /// Serializes `value` once.
    pub fn from_value(value: &serde_json::Value) -> Self {
        // Serializing a `Value` cannot fail (its map keys are strings); keep `null` if it did.
        serde_json::to_vec(value)
            .map(|v| RawJson(Bytes::from(v)))
            .unwrap_or_default()
    }

    /// Serializes any `Serialize` value.
    ///
    /// # Errors
    /// `InvalidInput` when `value` cannot be represented as JSON (e.g. a map with non-string keys).
    pub fn to_raw<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        serde_json::to_vec(value)
            .map(|v| RawJson(Bytes::from(v)))
            .map_err(|e| Error::invalid_input("value cannot be serialized as JSON").set_source(e))
    }

    /// The JSON text's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The JSON text (always valid UTF-8).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("null")
    }

    /// The underlying buffer (cheap to clone).
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Whether the value is JSON `null`.
    pub fn is_null(&self) -> bool {
        &self.0[..] == b"null"
    }

    /// Length of the JSON text in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the JSON text is empty (never, for a valid value; kept for clippy's sake).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Deserializes the value, borrowing strings from it where `T` allows.
    ///
    /// # Errors
    /// `InvalidResponse` when the JSON does not have `T`'s shape.
    pub fn deserialize<'a, T: Deserialize<'a>>(&'a self) -> Result<T> {
        serde_json::from_slice(&self.0).map_err(|e| {
            Error::invalid_response("JSON does not have the expected shape").set_source(e)
        })
    }

    /// The value as a [`serde_json::Value`] tree (allocates: for tests and cold paths).
    ///
    /// # Errors
    /// Never for a valid value; `InvalidResponse` otherwise.
    pub fn to_value(&self) -> Result<serde_json::Value> {
        self.deserialize()
    }
}

/// `b` as a slice of `body` when it lies inside it (no copy), else a copy.
fn subslice(body: &Bytes, b: &[u8]) -> Bytes {
    let start = (b.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    match start.checked_add(b.len()) {
        Some(end) if (b.as_ptr() as usize) >= (body.as_ptr() as usize) && end <= body.len() => {
            body.slice(start..end)
        }
        _ => Bytes::copy_from_slice(b),
    }
}

impl Default for RawJson {
    fn default() -> Self {
        RawJson::null()
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 512;
        let s = self.as_str();
        if s.len() <= SHOWN {
            write!(f, "RawJson({s})")
        } else {
            let mut cut = SHOWN;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            write!(f, "RawJson({}... {} bytes)", &s[..cut], s.len())
        }
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<serde_json::Value> for RawJson {
    fn from(value: serde_json::Value) -> Self {
        RawJson::from_value(&value)
    }
}

impl From<&serde_json::Value> for RawJson {
    fn from(value: &serde_json::Value) -> Self {
        RawJson::from_value(value)
    }
}

impl From<Box<RawValue>> for RawJson {
    fn from(raw: Box<RawValue>) -> Self {
        let text: Box<str> = raw.into();
        RawJson(Bytes::from(String::from(text)))
    }
}

impl PartialEq<serde_json::Value> for RawJson {
    fn eq(&self, other: &serde_json::Value) -> bool {
        self.to_value().is_ok_and(|v| &v == other)
    }
}

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_slice(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(RawJson::from)
    }
}

/// One object read from a platform: a strict envelope (id, op, version, times) and the
/// object's JSON exactly as received.
///
/// The connection is not repeated in every record: sinks receive it with the batch
/// ([`crate::Batch`]), since one read always belongs to one connection. The normalized
/// [`Entity`] is not part of the record: it is mapped by [`crate::Connector::map_entity`] only
/// where something consumes entities (see [`crate::Sink::wants_entities`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Record {
    /// The stream the record belongs to.
    pub stream: StreamId,
    /// The platform's id of the object (unique within the stream).
    pub id: String,
    /// Upsert or delete.
    pub op: Op,
    /// A version that grows with each change of the object, when the platform has one
    /// (often the modification time in milliseconds). Sinks keep the highest.
    pub version: Option<i64>,
    /// When the object was last modified, in Unix milliseconds, when known.
    pub updated_at: Option<i64>,
    /// The object exactly as the platform returned it (`null` for a delete).
    pub raw: RawJson,
    /// The id of the object this one was read under, when the platform does not repeat it in
    /// the object (a Front message's conversation). Mapping reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl Record {
    /// An upsert of `id` in `stream` with the platform's raw JSON.
    pub fn upsert(stream: StreamId, id: impl Into<String>, raw: impl Into<RawJson>) -> Self {
        Record {
            stream,
            id: id.into(),
            op: Op::Upsert,
            version: None,
            updated_at: None,
            raw: raw.into(),
            parent: None,
        }
    }

    /// A delete of `id` in `stream`.
    pub fn delete(stream: StreamId, id: impl Into<String>) -> Self {
        Record {
            stream,
            id: id.into(),
            op: Op::Delete,
            version: None,
            updated_at: None,
            raw: RawJson::null(),
            parent: None,
        }
    }

    /// Sets the version.
    pub fn with_version(mut self, version: i64) -> Self {
        self.version = Some(version);
        self
    }

    /// Sets the modification time (Unix milliseconds).
    pub fn with_updated_at(mut self, updated_at_ms: i64) -> Self {
        self.updated_at = Some(updated_at_ms);
        self
    }

    /// Sets the version and the modification time to the same Unix milliseconds.
    pub fn with_modified(self, ms: i64) -> Self {
        self.with_version(ms).with_updated_at(ms)
    }

    /// Sets the parent object's id.
    pub fn with_parent(mut self, parent: impl Into<String>) -> Self {
        self.parent = Some(parent.into());
        self
    }
}

/// At which step a record was quarantined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectStage {
    /// Its envelope (id, cursor timestamp) could not be read: no [`Record`] was made.
    Parse,
    /// The record was read but could not be mapped to an entity.
    Map,
}

impl RejectStage {
    /// `parse` or `map`.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectStage::Parse => "parse",
            RejectStage::Map => "map",
        }
    }

    /// Parses a stored name.
    ///
    /// # Errors
    /// `Storage` for an unknown name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "parse" => Ok(RejectStage::Parse),
            "map" => Ok(RejectStage::Map),
            other => Err(Error::storage("stored value is not one this version knows")
                .with_context("field", "reject stage")
                .with_context("value", other)),
        }
    }
}

/// A record that could not be read or mapped: quarantined with its raw bytes and the error,
/// never dropped and never fatal to its page. Stored by the engine in the state store's
/// rejects (see [`crate::store::RejectStore`]) before the page's cursor is committed, and
/// re-driven after a fix.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Reject {
    /// The stream it was read from.
    pub stream: StreamId,
    /// Where it failed.
    pub stage: RejectStage,
    /// The object's id, when it could be read.
    pub id: Option<String>,
    /// The parent object's id (see [`Record::parent`]).
    pub parent: Option<String>,
    /// Upsert or delete, when known.
    pub op: Op,
    /// The version, when known.
    pub version: Option<i64>,
    /// The modification time, when known.
    pub updated_at: Option<i64>,
    /// The bytes as received (not necessarily valid JSON: a malformed line is kept as is).
    pub raw: Bytes,
    /// Why it was rejected (the error's text).
    pub error: String,
}

impl Reject {
    /// A record of `stream` whose envelope could not be read.
    pub fn unparsed(
        stream: StreamId,
        id: Option<String>,
        raw: impl Into<Bytes>,
        error: &Error,
    ) -> Self {
        Reject {
            stream,
            stage: RejectStage::Parse,
            id,
            parent: None,
            op: Op::Upsert,
            version: None,
            updated_at: None,
            raw: raw.into(),
            error: error.to_string(),
        }
    }

    /// A read record that could not be mapped.
    pub fn unmapped(record: &Record, error: &Error) -> Self {
        Reject {
            stream: record.stream.clone(),
            stage: RejectStage::Map,
            id: Some(record.id.clone()),
            parent: record.parent.clone(),
            op: record.op,
            version: record.version,
            updated_at: record.updated_at,
            raw: record.raw.bytes().clone(),
            error: error.to_string(),
        }
    }

    /// Sets the parent object's id.
    pub fn with_parent(mut self, parent: Option<String>) -> Self {
        self.parent = parent;
        self
    }

    /// The record again, for a reject of the `Map` stage (its envelope was read).
    ///
    /// # Errors
    /// `InvalidInput` for a `Parse` reject (the connector must parse it again, see
    /// [`crate::Connector::parse_record`]) or bytes that are not JSON.
    pub fn to_record(&self) -> Result<Record> {
        let id = match (self.stage, &self.id) {
            (RejectStage::Map, Some(id)) => id.clone(),
            _ => {
                return Err(Error::invalid_input(
                    "a reject of the parse stage must be parsed again by its connector",
                ));
            }
        };
        let raw = RawJson::parse(self.raw.clone())
            .map_err(|e| Error::invalid_input("rejected bytes are not JSON").set_source(e))?;
        Ok(Record {
            stream: self.stream.clone(),
            id,
            op: self.op,
            version: self.version,
            updated_at: self.updated_at,
            raw,
            parent: self.parent.clone(),
        })
    }
}

/// One page of a stream, as returned by [`crate::Connector::read`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Page {
    /// The records of this page, in the order they should be applied.
    pub records: Vec<Record>,
    /// Objects of this page that could not be read (quarantined by the engine; the page goes on).
    pub rejects: Vec<Reject>,
    /// The cursor to store once every record of this page is safely written. Reading again
    /// from it continues after this page. `None` only when the stream has no cursor at all.
    pub next: Option<CursorToken>,
    /// Whether more pages are available right now. `false` means the stream is caught up;
    /// reading again from `next` later returns what changed since.
    pub has_more: bool,
}

impl Page {
    /// A page with `records`, the cursor after them, and whether more follow.
    pub fn new(records: Vec<Record>, next: Option<CursorToken>, has_more: bool) -> Self {
        Page {
            records,
            rejects: Vec::new(),
            next,
            has_more,
        }
    }

    /// Adds the page's rejects.
    pub fn with_rejects(mut self, rejects: Vec<Reject>) -> Self {
        self.rejects = rejects;
        self
    }
}

/// What kind of thing an [`Entity`] is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EntityKind {
    /// A human: a contact, lead, teammate, owner.
    Person,
    /// A company or account.
    Organization,
    /// A thread of messages.
    Conversation,
    /// One message.
    Message,
    /// A sales opportunity.
    Deal,
    /// A note, call, meeting, task, email engagement.
    Activity,
    /// An analytics or audit event.
    Event,
    /// A label.
    Tag,
    /// An internal comment on a conversation or object.
    Comment,
    /// Anything else, named by the connector.
    Other(String),
}

/// Where an entity came from: enough to find the object again on its platform.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourceRef {
    /// Platform name (`"frontapp"`, `"hubspot"`, ...).
    pub platform: Cow<'static, str>,
    /// The platform's object type (`"conversation"`, `"contact"`, ...).
    pub object_type: Cow<'static, str>,
    /// The platform's id.
    pub id: String,
}

impl SourceRef {
    /// A reference to `id` of `object_type` on `platform`.
    pub fn new(
        platform: impl Into<Cow<'static, str>>,
        object_type: impl Into<Cow<'static, str>>,
        id: impl Into<String>,
    ) -> Self {
        SourceRef {
            platform: platform.into(),
            object_type: object_type.into(),
            id: id.into(),
        }
    }
}

/// A key that identifies a real-world party across platforms; duplicate detection keys on these.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Identity {
    /// An email address, lower-cased.
    Email(String),
    /// A phone number, as digits with a leading `+` when known.
    Phone(String),
    /// An internet domain, lower-cased, without `www.`.
    Domain(String),
    /// Any other handle (`twitter`, `slack`, ...) with its value.
    Handle {
        /// The handle's source (`"twitter"`, `"intercom"`, ...).
        source: String,
        /// The handle itself.
        value: String,
    },
}

impl Identity {
    /// An email identity, normalized (trimmed, lower-cased).
    pub fn email(s: &str) -> Self {
        Identity::Email(s.trim().to_ascii_lowercase())
    }

    /// A phone identity, normalized to `+` and digits.
    pub fn phone(s: &str) -> Self {
        let plus = s.trim_start().starts_with('+');
        let digits: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
        Identity::Phone(if plus { format!("+{digits}") } else { digits })
    }

    /// A domain identity, normalized (lower-cased, without scheme, `www.` or path).
    pub fn domain(s: &str) -> Self {
        let s = s.trim().to_ascii_lowercase();
        let s = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .unwrap_or(&s);
        let s = s.strip_prefix("www.").unwrap_or(s);
        let s = s.split('/').next().unwrap_or(s);
        Identity::Domain(s.to_string())
    }
}

/// A link from one entity to another object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Relation {
    /// What the link means, from the entity's side: `"in_conversation"`, `"works_at"`,
    /// `"tagged"`, `"participant"`, `"author"`.
    pub kind: Cow<'static, str>,
    /// The object linked to.
    pub target: SourceRef,
}

impl Relation {
    /// A relation of `kind` to `target`.
    pub fn new(kind: impl Into<Cow<'static, str>>, target: SourceRef) -> Self {
        Relation {
            kind: kind.into(),
            target,
        }
    }
}

/// The normalized view of a record that the host's memory stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Entity {
    /// What the entity is.
    pub kind: EntityKind,
    /// Where it came from.
    pub source: SourceRef,
    /// A display name or subject.
    pub name: Option<String>,
    /// Mapped attributes (`text`, `amount`, `stage`, ...).
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The platform's custom fields / properties, preserved under their own names.
    pub custom_fields: serde_json::Map<String, serde_json::Value>,
    /// Emails, phones, domains.
    pub identities: Vec<Identity>,
    /// Links to other objects.
    pub relations: Vec<Relation>,
}

impl Entity {
    /// An entity of `kind` from `source` with nothing else yet.
    pub fn new(kind: EntityKind, source: SourceRef) -> Self {
        Entity {
            kind,
            source,
            name: None,
            attributes: serde_json::Map::new(),
            custom_fields: serde_json::Map::new(),
            identities: Vec::new(),
            relations: Vec::new(),
        }
    }

    /// Sets the name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Adds an attribute (skipped when the value is JSON `null`).
    pub fn with_attr(mut self, key: impl Into<String>, value: serde_json::Value) -> Self {
        if !value.is_null() {
            self.attributes.insert(key.into(), value);
        }
        self
    }

    /// Adds an identity.
    pub fn with_identity(mut self, identity: Identity) -> Self {
        if !self.identities.contains(&identity) {
            self.identities.push(identity);
        }
        self
    }

    /// Adds a relation.
    pub fn with_relation(mut self, kind: impl Into<Cow<'static, str>>, target: SourceRef) -> Self {
        self.relations.push(Relation::new(kind, target));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_normalize() {
        assert_eq!(
            Identity::email(" Ann@X.COM "),
            Identity::Email("ann@x.com".into())
        );
        assert_eq!(
            Identity::phone("+1 (555) 010-2000"),
            Identity::Phone("+15550102000".into())
        );
        assert_eq!(
            Identity::domain("https://www.Acme.com/about"),
            Identity::Domain("acme.com".into())
        );
    }

    #[test]
    fn entity_serde_roundtrip() {
        let e = Entity::new(
            EntityKind::Person,
            SourceRef::new("frontapp", "contact", "crd_1"),
        )
        .with_name("Ann")
        .with_identity(Identity::email("ann@x.com"))
        .with_relation("works_at", SourceRef::new("frontapp", "account", "acc_1"));
        let json = serde_json::to_string(&e).unwrap();
        let back: Entity = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }
}
