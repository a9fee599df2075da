//! Records, pages, normalized entities, and the identifiers that name them.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cursor::CursorToken;

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

/// One object read from a platform.
///
/// The connection is not repeated in every record: sinks receive it with the batch
/// ([`crate::Batch`]), since one read always belongs to one connection.
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
    /// The object exactly as the platform returned it.
    pub raw: serde_json::Value,
    /// The normalized view, when the connector maps this stream.
    pub entity: Option<Entity>,
}

impl Record {
    /// An upsert of `id` in `stream` with the platform's raw JSON.
    pub fn upsert(stream: StreamId, id: impl Into<String>, raw: serde_json::Value) -> Self {
        Record {
            stream,
            id: id.into(),
            op: Op::Upsert,
            version: None,
            updated_at: None,
            raw,
            entity: None,
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
            raw: serde_json::Value::Null,
            entity: None,
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

    /// Sets the normalized entity.
    pub fn with_entity(mut self, entity: Entity) -> Self {
        self.entity = Some(entity);
        self
    }
}

/// One page of a stream, as returned by [`crate::Connector::read`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Page {
    /// The records of this page, in the order they should be applied.
    pub records: Vec<Record>,
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
            next,
            has_more,
        }
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
