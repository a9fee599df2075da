//! HubSpot's objects, the streams built on them, time parsing, and the mapping of records to
//! normalized [`Entity`]s (driven by [`PropertyMapping`]).

use std::collections::BTreeMap;

use apex_connect_core::{Entity, EntityKind, Identity, Record, SourceRef, StreamId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// A CRM object as the v3 API returns it (`SimplePublicObjectWithAssociations`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct HubSpotObject {
    /// The object id (numeric, as a string).
    pub id: String,
    /// Property values, all strings (or null).
    #[serde(default)]
    pub properties: BTreeMap<String, Option<String>>,
    /// Creation time, ISO 8601.
    #[serde(default)]
    pub created_at: Option<String>,
    /// Last update time, ISO 8601.
    #[serde(default)]
    pub updated_at: Option<String>,
    /// Whether the object is archived (deleted).
    #[serde(default)]
    pub archived: bool,
    /// Associations, when asked for: object type -> `{results: [{id, type}]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub associations: Option<BTreeMap<String, Value>>,
}

impl HubSpotObject {
    /// A property's value, when set and not empty.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .get(name)
            .and_then(|v| v.as_deref())
            .filter(|s| !s.is_empty())
    }

    /// The last-modified time in Unix milliseconds: `updatedAt`, else the type's modified
    /// property.
    pub fn modified_ms(&self, modified_property: &str) -> Option<i64> {
        self.updated_at
            .as_deref()
            .and_then(parse_time_ms)
            .or_else(|| self.property(modified_property).and_then(parse_time_ms))
    }
}

/// One page of a v3 list or search answer.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct CollectionPage<T> {
    /// The results.
    #[serde(default = "Vec::new")]
    pub results: Vec<T>,
    /// Present only when more pages follow.
    #[serde(default)]
    pub paging: Option<Paging>,
    /// Search answers: the number of matches.
    #[serde(default)]
    pub total: Option<u64>,
}

impl<T> CollectionPage<T> {
    /// The `paging.next.after` token, if any.
    pub fn next_after(&self) -> Option<&str> {
        self.paging
            .as_ref()
            .and_then(|p| p.next.as_ref())
            .map(|n| n.after.as_str())
            .filter(|s| !s.is_empty())
    }
}

/// `paging` of a collection answer.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct Paging {
    /// The next page, if any.
    #[serde(default)]
    pub next: Option<NextPage>,
}

/// `paging.next`.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct NextPage {
    /// The cursor to send as `after`.
    pub after: String,
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
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(value.to_string())),
        _ => Value::String(value.to_string()),
    }
}

/// Maps a CRM object of `object_type` to an entity.
pub fn object_entity(
    object_type: &ObjectType,
    obj: &HubSpotObject,
    mapping: &PropertyMapping,
) -> Entity {
    let kind = match object_type.kind {
        ObjectKind::Person => EntityKind::Person,
        ObjectKind::Organization => EntityKind::Organization,
        ObjectKind::Deal => EntityKind::Deal,
        ObjectKind::Activity => EntityKind::Activity,
    };
    let mut e = Entity::new(
        kind,
        SourceRef::new(NAME, object_type.singular, obj.id.clone()),
    );
    for (name, value) in &obj.properties {
        let Some(value) = value.as_deref().filter(|v| !v.is_empty()) else {
            continue;
        };
        if let Some(attr) = mapping.attribute(object_type.stream, name) {
            e.attributes
                .insert(attr.to_string(), attr_value(attr, value));
        } else if !SYSTEM_PROPERTIES.contains(&name.as_str()) {
            e.custom_fields
                .insert(name.clone(), Value::String(value.to_string()));
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
                .filter(|s| !s.is_empty())
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
    if let Some(assocs) = &obj.associations {
        for (to_type, v) in assocs {
            let Some(to) = object_type_by_any_name(to_type) else {
                continue;
            };
            let kind = relation_kind(object_type, to);
            let results = v.get("results").and_then(Value::as_array);
            let mut seen = Vec::new();
            for r in results.into_iter().flatten() {
                let id = match r.get("id") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => continue,
                };
                if !seen.contains(&id) {
                    e = e.with_relation(kind, SourceRef::new(NAME, to.singular, id.clone()));
                    seen.push(id);
                }
            }
        }
    }
    e
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

/// A record of an object stream: version and `updated_at` are the last-modified time.
pub fn object_record(
    object_type: &ObjectType,
    obj: HubSpotObject,
    mapping: &PropertyMapping,
) -> Record {
    let modified = obj.modified_ms(object_type.modified_property);
    let entity = object_entity(object_type, &obj, mapping);
    let id = obj.id.clone();
    let raw = serde_json::to_value(&obj).unwrap_or(Value::Null);
    let mut r = Record::upsert(StreamId::new(object_type.stream), id, raw).with_entity(entity);
    r.version = modified;
    r.updated_at = modified;
    r
}

/// A CRM owner (`/crm/v3/owners`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Owner {
    /// The owner id.
    pub id: String,
    /// Email address.
    #[serde(default)]
    pub email: Option<String>,
    /// First name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// The HubSpot user id.
    #[serde(default)]
    pub user_id: Option<i64>,
    /// Creation time.
    #[serde(default)]
    pub created_at: Option<String>,
    /// Last update time.
    #[serde(default)]
    pub updated_at: Option<String>,
    /// Whether the owner is deactivated.
    #[serde(default)]
    pub archived: bool,
    /// Anything else the API returned (teams...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An owner as a Person record.
pub fn owner_record(owner: Owner) -> Record {
    let modified = owner.updated_at.as_deref().and_then(parse_time_ms);
    let mut e = Entity::new(
        EntityKind::Person,
        SourceRef::new(NAME, "owner", owner.id.clone()),
    );
    let name = [owner.first_name.as_deref(), owner.last_name.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    if !name.is_empty() {
        e = e.with_name(name);
    }
    if let Some(em) = owner.email.as_deref().filter(|s| !s.is_empty()) {
        e = e.with_identity(Identity::email(em));
    }
    e = e.with_attr("role", Value::String("owner".into()));
    let id = owner.id.clone();
    let raw = serde_json::to_value(&owner).unwrap_or(Value::Null);
    let mut r = Record::upsert(StreamId::from_static(streams::OWNERS), id, raw).with_entity(e);
    r.version = modified;
    r.updated_at = modified;
    r
}

/// A property definition (`/crm/v3/properties/{object}`) as a record of the `properties`
/// stream, keyed `<object>.<name>`.
pub fn property_record(object: &str, definition: Value) -> Option<Record> {
    let name = definition.get("name")?.as_str()?.to_string();
    let modified = definition
        .get("updatedAt")
        .and_then(Value::as_str)
        .and_then(parse_time_ms);
    let mut raw = definition;
    if let Value::Object(m) = &mut raw {
        m.insert("objectType".into(), Value::String(object.to_string()));
    }
    let mut r = Record::upsert(
        StreamId::from_static(streams::PROPERTIES),
        format!("{object}.{name}"),
        raw,
    );
    r.version = modified;
    r.updated_at = modified;
    Some(r)
}

/// An association as a record of the `associations` stream, keyed
/// `<from>:<fromId>-<to>:<toId>`, with an entity whose relation names both ends.
pub fn association_record(
    from: &ObjectType,
    from_id: &str,
    to: &ObjectType,
    to_id: &str,
    types: Value,
) -> Record {
    let id = format!("{}:{from_id}-{}:{to_id}", from.stream, to.stream);
    let raw = serde_json::json!({
        "fromObjectType": from.stream,
        "fromObjectId": from_id,
        "toObjectType": to.stream,
        "toObjectId": to_id,
        "associationTypes": types,
    });
    let e = Entity::new(
        EntityKind::Other("association".into()),
        SourceRef::new(NAME, from.singular, from_id.to_string()),
    )
    .with_relation(
        relation_kind(from, to),
        SourceRef::new(NAME, to.singular, to_id.to_string()),
    );
    Record::upsert(StreamId::from_static(streams::ASSOCIATIONS), id, raw).with_entity(e)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ] {
            assert_eq!(parse_time_ms(bad), None, "{bad}");
        }
        for ms in [0, 1, 951_782_400_000, 4_102_444_800_123] {
            assert_eq!(parse_time_ms(&format_time_ms(ms)), Some(ms));
        }
    }

    #[test]
    fn contact_maps_identities_mapping_and_custom_fields() {
        let obj: HubSpotObject = serde_json::from_value(serde_json::json!({
            "id": "51",
            "properties": {"firstname": "Ann", "lastname": "Lee", "email": "Ann@Acme.com",
                "phone": "+1 (555) 010-2000", "apex_tier": "gold", "hs_object_id": "51",
                "lastmodifieddate": "2024-01-01T00:00:00.000Z", "jobtitle": null},
            "createdAt": "2023-01-01T00:00:00Z", "updatedAt": "2024-01-01T00:00:00.000Z",
            "archived": false,
            "associations": {"companies": {"results": [{"id": "7", "type": "contact_to_company"},
                {"id": "7", "type": "contact_to_company_unlabeled"}]}}
        }))
        .unwrap();
        let ot = object_type("contacts").unwrap();
        let mapping = PropertyMapping::default().set("contacts", "apex_tier", "tier");
        let r = object_record(ot, obj.clone(), &mapping);
        assert_eq!(r.version, parse_time_ms("2024-01-01T00:00:00Z"));
        let e = r.entity.unwrap();
        assert_eq!(e.name.as_deref(), Some("Ann Lee"));
        assert_eq!(e.attributes["tier"], "gold");
        assert!(e.identities.contains(&Identity::email("ann@acme.com")));
        assert!(e.identities.contains(&Identity::phone("+15550102000")));
        assert_eq!(e.relations.len(), 1);
        assert_eq!(e.relations[0].kind, "works_at");
        assert!(e.custom_fields.is_empty());
        // Without the mapping entry, the custom property is preserved under custom_fields.
        let e = object_entity(ot, &obj, &PropertyMapping::default());
        assert_eq!(e.custom_fields["apex_tier"], "gold");
    }

    #[test]
    fn deal_maps_amount_stage_pipeline() {
        let obj: HubSpotObject = serde_json::from_value(serde_json::json!({
            "id": "9", "properties": {"dealname": "Paper", "amount": "1500.5", "dealstage": "closedwon",
            "pipeline": "default", "closedate": "2024-02-01T00:00:00Z"},
            "updatedAt": "2024-01-01T00:00:00Z"
        }))
        .unwrap();
        let e = object_entity(
            object_type("deals").unwrap(),
            &obj,
            &PropertyMapping::default(),
        );
        assert_eq!(e.kind, EntityKind::Deal);
        assert_eq!(e.attributes["amount"], 1500.5);
        assert_eq!(e.attributes["stage"], "closedwon");
        assert_eq!(e.attributes["pipeline"], "default");
        assert_eq!(e.attributes["close_date"], "2024-02-01T00:00:00Z");
    }
}
