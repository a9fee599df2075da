//! JSON Schemas of the streams' records (for catalogs such as Singer's `--discover`, and
//! typed sinks), with the account's custom fields.
//!
//! The field tables below follow the response schemas of Front's Core API OpenAPI spec
//! (`ConversationResponse`, `MessageResponse`, `CommentResponse`, `ContactResponse`,
//! `TagResponse`, `TeammateResponse`, `InboxResponse`, `EventResponse` and the schemas they
//! reference; `frontapp/front-api-specs`, `core-api/core-api.json` at commit `f8f5386f`):
//! field names and JSON types only (the spec itself is not shipped). They are permissive,
//! because the schema must accept what Front sends, not only what it documents:
//!
//! - every field may be `null` or absent (Front sends `null` for many fields the spec does
//!   not mark nullable, such as an inbound message's `author`), and only `id` is required;
//! - every object accepts fields not listed (`additionalProperties`);
//! - integers are numbers (an attachment `size` of `-1.5` still validates), enums are
//!   strings (new values appear), and `oneOf` fields (an event's `source.data` and
//!   `target.data`) accept any value;
//! - `custom_fields` is an open object, with the account's custom fields listed when the
//!   connector could read them (`GET /contacts/custom_fields`, `/conversations/custom_fields`,
//!   `/teammates/custom_fields`, `/inboxes/custom_fields`), each typed by its Front type
//!   (`string`, `enum`, `teammate`, `inbox` as strings, `number`, `boolean`, `datetime` as a
//!   number or a string).

use apex_connect_core::lenient::LenientStr;
use apex_connect_core::{Error, Result, StreamInfo, StreamSchema};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::models::streams;

/// The JSON type of a field in the tables below.
enum T {
    Str,
    Num,
    Bool,
    /// Any JSON value (`oneOf` in the spec).
    Any,
    /// An object with any keys (custom fields, headers).
    Map,
    /// An array of one item type.
    Arr(&'static T),
    /// An object with these fields (and possibly others).
    Obj(&'static [(&'static str, T)]),
}

const TEAMMATE_RESPONSE: &[(&str, T)] = &[
    (
        "_links",
        T::Obj(&[
            ("self", T::Str),
            (
                "related",
                T::Obj(&[
                    ("inboxes", T::Str),
                    ("conversations", T::Str),
                    ("botSource", T::Str),
                ]),
            ),
        ]),
    ),
    ("id", T::Str),
    ("email", T::Str),
    ("username", T::Str),
    ("first_name", T::Str),
    ("last_name", T::Str),
    ("is_admin", T::Bool),
    ("is_available", T::Bool),
    ("is_blocked", T::Bool),
    ("type", T::Str),
    ("custom_fields", T::Map),
];

const RECIPIENT_RESPONSE: &[(&str, T)] = &[
    (
        "_links",
        T::Obj(&[("related", T::Obj(&[("contact", T::Str)]))]),
    ),
    ("name", T::Str),
    ("handle", T::Str),
    ("role", T::Str),
];

const TAG_RESPONSE: &[(&str, T)] = &[
    (
        "_links",
        T::Obj(&[
            ("self", T::Str),
            (
                "related",
                T::Obj(&[
                    ("conversations", T::Str),
                    ("owner", T::Str),
                    ("parent_tag", T::Str),
                    ("children", T::Str),
                ]),
            ),
        ]),
    ),
    ("id", T::Str),
    ("name", T::Str),
    ("description", T::Str),
    ("highlight", T::Str),
    ("is_private", T::Bool),
    ("is_visible_in_conversation_lists", T::Bool),
    ("created_at", T::Num),
    ("updated_at", T::Num),
];

const LINK_RESPONSE: &[(&str, T)] = &[
    ("_links", T::Obj(&[("self", T::Str)])),
    ("id", T::Str),
    ("name", T::Str),
    ("type", T::Str),
    ("external_url", T::Str),
    ("custom_fields", T::Map),
];

const REMINDER: &[(&str, T)] = &[
    (
        "_links",
        T::Obj(&[("related", T::Obj(&[("owner", T::Str)]))]),
    ),
    ("created_at", T::Num),
    ("scheduled_at", T::Num),
    ("updated_at", T::Num),
];

const CONVERSATION_RESPONSE: &[(&str, T)] = &[
    (
        "_links",
        T::Obj(&[
            ("self", T::Str),
            (
                "related",
                T::Obj(&[
                    ("events", T::Str),
                    ("followers", T::Str),
                    ("messages", T::Str),
                    ("comments", T::Str),
                    ("inboxes", T::Str),
                    ("last_message", T::Str),
                ]),
            ),
        ]),
    ),
    ("id", T::Str),
    ("type", T::Str),
    ("subject", T::Str),
    ("status", T::Str),
    ("status_id", T::Str),
    ("status_category", T::Str),
    ("ticket_ids", T::Arr(&T::Str)),
    ("assignee", T::Obj(TEAMMATE_RESPONSE)),
    ("recipient", T::Obj(RECIPIENT_RESPONSE)),
    ("tags", T::Arr(&T::Obj(TAG_RESPONSE))),
    ("links", T::Arr(&T::Obj(LINK_RESPONSE))),
    ("custom_fields", T::Map),
    ("created_at", T::Num),
    ("updated_at", T::Num),
    ("waiting_since", T::Num),
    ("is_private", T::Bool),
    ("scheduled_reminders", T::Arr(&T::Obj(REMINDER))),
    ("description", T::Str),
    ("due_at", T::Num),
    (
        "metadata",
        T::Obj(&[("external_conversation_ids", T::Arr(&T::Str))]),
    ),
];

const ATTACHMENT: &[(&str, T)] = &[
    ("id", T::Str),
    ("filename", T::Str),
    ("url", T::Str),
    ("content_type", T::Str),
    ("size", T::Num),
    (
        "metadata",
        T::Obj(&[("is_inline", T::Bool), ("cid", T::Str)]),
    ),
];

const SIGNATURE_RESPONSE: &[(&str, T)] = &[
    (
        "_links",
        T::Obj(&[("self", T::Str), ("related", T::Obj(&[("owner", T::Str)]))]),
    ),
    ("id", T::Str),
    ("name", T::Str),
    ("body", T::Str),
    // Typed as a string, documented with an object as its example: either is accepted.
    ("sender_info", T::Any),
    ("is_visible_for_all_teammate_channels", T::Bool),
    ("is_default", T::Bool),
    ("is_private", T::Bool),
    ("channel_ids", T::Arr(&T::Str)),
];

const MESSAGE_RESPONSE: &[(&str, T)] = &[
    (
        "_links",
        T::Obj(&[
            ("self", T::Str),
            (
                "related",
                T::Obj(&[
                    ("conversation", T::Str),
                    ("message_replied_to", T::Str),
                    ("message_seen", T::Str),
                ]),
            ),
        ]),
    ),
    ("id", T::Str),
    ("message_uid", T::Str),
    ("type", T::Str),
    ("is_inbound", T::Bool),
    ("draft_mode", T::Str),
    ("error_type", T::Str),
    ("version", T::Str),
    ("created_at", T::Num),
    ("subject", T::Str),
    ("blurb", T::Str),
    ("author", T::Obj(TEAMMATE_RESPONSE)),
    ("recipients", T::Arr(&T::Obj(RECIPIENT_RESPONSE))),
    ("body", T::Str),
    ("text", T::Str),
    ("attachments", T::Arr(&T::Obj(ATTACHMENT))),
    ("signature", T::Obj(SIGNATURE_RESPONSE)),
    (
        "metadata",
        T::Obj(&[
            ("intercom_url", T::Str),
            ("duration", T::Num),
            ("have_been_answered", T::Bool),
            ("external_id", T::Str),
            ("twitter_url", T::Str),
            ("is_retweet", T::Bool),
            ("have_been_retweeted", T::Bool),
            ("have_been_favorited", T::Bool),
            ("thread_ref", T::Str),
            ("headers", T::Map),
            ("chat_visitor_url", T::Str),
        ]),
    ),
];

const COMMENT_RESPONSE: &[(&str, T)] = &[
    (
        "_links",
        T::Obj(&[
            ("self", T::Str),
            (
                "related",
                T::Obj(&[
                    ("conversation", T::Str),
                    ("mentions", T::Str),
                    ("comment_replied_to", T::Str),
                ]),
            ),
        ]),
    ),
    ("id", T::Str),
    ("author", T::Obj(TEAMMATE_RESPONSE)),
    ("body", T::Str),
    ("posted_at", T::Num),
    ("attachments", T::Arr(&T::Obj(ATTACHMENT))),
    ("is_pinned", T::Bool),
];

const CONTACT_LIST_RESPONSES: &[(&str, T)] = &[
    (
        "_links",
        T::Obj(&[
            ("self", T::Str),
            (
                "related",
                T::Obj(&[("contacts", T::Str), ("owner", T::Str)]),
            ),
        ]),
    ),
    ("id", T::Str),
    ("name", T::Str),
    ("is_private", T::Bool),
];

const CONTACT_HANDLE: &[(&str, T)] = &[("handle", T::Str), ("source", T::Str)];

const CONTACT_RESPONSE: &[(&str, T)] = &[
    (
        "_links",
        T::Obj(&[
            ("self", T::Str),
            (
                "related",
                T::Obj(&[
                    ("notes", T::Str),
                    ("conversations", T::Str),
                    ("owner", T::Str),
                ]),
            ),
        ]),
    ),
    ("id", T::Str),
    ("name", T::Str),
    ("description", T::Str),
    ("avatar_url", T::Str),
    ("links", T::Arr(&T::Str)),
    ("groups", T::Arr(&T::Obj(CONTACT_LIST_RESPONSES))),
    ("lists", T::Arr(&T::Obj(CONTACT_LIST_RESPONSES))),
    ("handles", T::Arr(&T::Obj(CONTACT_HANDLE))),
    ("custom_fields", T::Map),
    ("is_private", T::Bool),
    // Not in `ContactResponse`, but sent by Front (and read as the contact's version).
    ("created_at", T::Num),
    ("updated_at", T::Num),
];

const INBOX_RESPONSE: &[(&str, T)] = &[
    (
        "_links",
        T::Obj(&[
            ("self", T::Str),
            (
                "related",
                T::Obj(&[
                    ("teammates", T::Str),
                    ("conversations", T::Str),
                    ("channels", T::Str),
                    ("owner", T::Str),
                ]),
            ),
        ]),
    ),
    ("id", T::Str),
    ("name", T::Str),
    ("is_private", T::Bool),
    ("is_public", T::Bool),
    ("custom_fields", T::Map),
];

const EVENT_RESPONSE: &[(&str, T)] = &[
    ("_links", T::Obj(&[("self", T::Str)])),
    ("id", T::Str),
    ("type", T::Str),
    ("emitted_at", T::Num),
    (
        "source",
        T::Obj(&[("_meta", T::Obj(&[("type", T::Any)])), ("data", T::Any)]),
    ),
    (
        "target",
        T::Obj(&[("_meta", T::Obj(&[("type", T::Any)])), ("data", T::Any)]),
    ),
    ("conversation", T::Obj(CONVERSATION_RESPONSE)),
];

/// The fields of `stream`'s records, `None` for an unknown stream.
fn fields(stream: &str) -> Option<&'static [(&'static str, T)]> {
    Some(match stream {
        streams::CONVERSATIONS => CONVERSATION_RESPONSE,
        streams::MESSAGES => MESSAGE_RESPONSE,
        streams::COMMENTS => COMMENT_RESPONSE,
        streams::CONTACTS => CONTACT_RESPONSE,
        streams::TAGS => TAG_RESPONSE,
        streams::TEAMMATES => TEAMMATE_RESPONSE,
        streams::INBOXES => INBOX_RESPONSE,
        streams::EVENTS => EVENT_RESPONSE,
        _ => return None,
    })
}

fn nullable(ty: &str) -> Value {
    json!({ "type": [ty, "null"] })
}

fn to_json(t: &T) -> Value {
    match t {
        T::Str => nullable("string"),
        T::Num => nullable("number"),
        T::Bool => nullable("boolean"),
        T::Any => json!({}),
        T::Map => nullable("object"),
        T::Arr(item) => json!({ "type": ["array", "null"], "items": to_json(item) }),
        T::Obj(fields) => json!({
            "type": ["object", "null"],
            "properties": properties(fields),
            "additionalProperties": true,
        }),
    }
}

fn properties(fields: &[(&str, T)]) -> Map<String, Value> {
    fields
        .iter()
        .map(|(name, t)| ((*name).to_string(), to_json(t)))
        .collect()
}

/// A custom field of the account, as `GET /<type>/custom_fields` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CustomField {
    /// Its name: the key under `custom_fields`.
    pub name: String,
    /// Its Front type: `string`, `boolean`, `datetime`, `number`, `teammate`, `inbox` or
    /// `enum` (others are possible; they accept any value).
    pub kind: String,
}

impl CustomField {
    /// A custom field named `name` of Front type `kind`.
    pub fn new(name: impl Into<String>, kind: impl Into<String>) -> Self {
        CustomField {
            name: name.into(),
            kind: kind.into(),
        }
    }

    /// Reads one item of a custom-fields list (`CustomFieldResponse`), leniently: `None`
    /// when it has no name.
    pub fn parse(raw: &str) -> Option<CustomField> {
        #[derive(Deserialize)]
        struct View<'a> {
            #[serde(borrow, default)]
            name: LenientStr<'a>,
            #[serde(rename = "type", borrow, default)]
            kind: LenientStr<'a>,
        }
        if !raw.trim_start().starts_with('{') {
            return None;
        }
        let v: View<'_> = serde_json::from_str(raw).ok()?;
        Some(CustomField::new(
            v.name.non_empty()?,
            v.kind.as_deref().unwrap_or_default(),
        ))
    }

    /// The JSON Schema of the field's values (always nullable).
    pub fn json_schema(&self) -> Value {
        match self.kind.as_str() {
            "string" | "enum" | "teammate" | "inbox" => nullable("string"),
            "number" => nullable("number"),
            "boolean" => nullable("boolean"),
            "datetime" => json!({ "type": ["number", "string", "null"] }),
            _ => json!({}),
        }
    }
}

/// The custom-fields endpoint of `stream`'s object type, when Front has one.
pub fn custom_fields_path(stream: &str) -> Option<&'static str> {
    match stream {
        streams::CONTACTS => Some("/contacts/custom_fields"),
        streams::CONVERSATIONS => Some("/conversations/custom_fields"),
        streams::TEAMMATES => Some("/teammates/custom_fields"),
        streams::INBOXES => Some("/inboxes/custom_fields"),
        _ => None,
    }
}

/// The JSON Schema (draft 7) of `stream`'s records without custom fields; `None` for an
/// unknown stream.
pub fn json_schema(stream: &str) -> Option<Value> {
    let info = StreamInfo::new(stream.to_string(), true);
    stream_schema(&info, &[]).ok().map(|s| s.schema)
}

/// The schema of the stream `info` describes, with `custom` fields listed under
/// `custom_fields` (and in [`StreamSchema::custom_fields`]).
///
/// # Errors
/// `NotFound` for a stream the connector does not have.
pub fn stream_schema(info: &StreamInfo, custom: &[CustomField]) -> Result<StreamSchema> {
    let fields = fields(info.id.as_str()).ok_or_else(|| {
        Error::new(
            apex_connect_core::ErrorKind::NotFound,
            "unknown Front stream",
        )
        .with_context("stream", &info.id)
    })?;
    let mut props = properties(fields);
    // The envelope: always a string id.
    props.insert("id".into(), json!({ "type": "string" }));
    if !custom.is_empty()
        && let Some(cf) = props
            .get_mut("custom_fields")
            .and_then(Value::as_object_mut)
    {
        let listed: Map<String, Value> = custom
            .iter()
            .map(|f| (f.name.clone(), f.json_schema()))
            .collect();
        cf.insert("properties".into(), Value::Object(listed));
        cf.insert("additionalProperties".into(), Value::Bool(true));
    }
    let mut schema = StreamSchema::new(info, props)
        .with_custom_fields(custom.iter().map(|f| f.name.clone()).collect());
    if let Some(o) = schema.schema.as_object_mut() {
        o.insert("required".into(), json!(["id"]));
    }
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stream_has_a_permissive_object_schema() {
        for s in streams::ALL {
            let schema = json_schema(s).unwrap();
            assert_eq!(schema["type"], "object", "{s}");
            assert_eq!(schema["required"], json!(["id"]));
            assert_eq!(schema["properties"]["id"], json!({"type": "string"}));
            assert_eq!(schema["additionalProperties"], true);
        }
        assert!(json_schema("deals").is_none());
        let m = json_schema(streams::MESSAGES).unwrap();
        assert_eq!(
            m["properties"]["attachments"]["items"]["properties"]["size"],
            json!({"type": ["number", "null"]})
        );
        assert_eq!(
            m["properties"]["author"]["properties"]["email"],
            json!({"type": ["string", "null"]})
        );
        let e = json_schema(streams::EVENTS).unwrap();
        assert_eq!(e["properties"]["target"]["properties"]["data"], json!({}));
        let c = json_schema(streams::CONTACTS).unwrap();
        assert_eq!(
            c["properties"]["updated_at"],
            json!({"type": ["number", "null"]})
        );
    }

    #[test]
    fn custom_fields_are_listed_and_typed() {
        let info = StreamInfo::new(streams::CONTACTS, true).with_replication_key("updated_at");
        let fields = [
            CustomField::parse(r#"{"id": "fld_1", "name": "Tier", "type": "enum", "values": []}"#)
                .unwrap(),
            CustomField::new("Renewal", "datetime"),
            CustomField::new("Seats", "number"),
        ];
        assert!(CustomField::parse(r#"{"id": "fld_2", "type": "string"}"#).is_none());
        assert!(CustomField::parse("[1]").is_none());
        let s = stream_schema(&info, &fields).unwrap();
        assert_eq!(s.custom_fields, ["Tier", "Renewal", "Seats"]);
        assert_eq!(s.replication_key.as_deref(), Some("updated_at"));
        let cf = &s.schema["properties"]["custom_fields"];
        assert_eq!(
            cf["properties"]["Tier"],
            json!({"type": ["string", "null"]})
        );
        assert_eq!(
            cf["properties"]["Renewal"],
            json!({"type": ["number", "string", "null"]})
        );
        assert_eq!(cf["additionalProperties"], true);
    }
}
