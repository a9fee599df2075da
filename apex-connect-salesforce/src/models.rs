//! Salesforce's shapes: describe results, the per-object read plan (fields, replication key),
//! SOQL, record envelopes, JSON Schemas and the entity mapping.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use apex_connect_core::lenient::LenientStr;
use apex_connect_core::{
    Entity, EntityKind, Error, ErrorKind, Identity, Op, RawJson, Record, Result, SourceRef,
    StreamId, StreamInfo, StreamSchema,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::NAME;

/// The replication fields tried, in order (`SystemModstamp` changes for system updates too;
/// objects without it fall back).
pub const REPLICATION_KEYS: &[&str] = &["SystemModstamp", "LastModifiedDate", "CreatedDate"];

/// Most fields read from one describe answer.
const MAX_FIELDS: usize = 5_000;

/// Objects Bulk API 2.0 cannot query: they are always read through REST.
pub const BULK_UNSUPPORTED: &[&str] = &[
    "AcceptedEventRelation",
    "AttachedContentNote",
    "Attachment",
    "CaseStatus",
    "ContractStatus",
    "DeclinedEventRelation",
    "FieldSecurityClassification",
    "KnowledgeArticleVersion",
    "OrderStatus",
    "PartnerRole",
    "RecentlyViewed",
    "SolutionStatus",
    "TaskPriority",
    "TaskStatus",
    "UndecidedEventRelation",
];

/// The streams for `objects`: keyed by `Id`, incremental on `SystemModstamp` (the actual
/// field comes from describe), with deletes when `deletes` is on.
pub fn streams(objects: &[String], deletes: bool) -> Vec<StreamInfo> {
    objects
        .iter()
        .map(|o| {
            let s = StreamInfo::new(StreamId::new(o.clone()), true)
                .with_key(["Id"])
                .with_replication_key("SystemModstamp");
            if deletes { s.with_deletes() } else { s }
        })
        .collect()
}

/// How a field's values are typed (from describe's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Text of any kind (id, string, picklist, reference, date, datetime, ...).
    Text,
    /// `boolean`.
    Bool,
    /// `int`, `long`.
    Int,
    /// `double`, `currency`, `percent`.
    Number,
    /// `address`, `location`: compound, read through their component fields.
    Compound,
    /// `base64`: binary, never read in bulk.
    Binary,
    /// `anyType` and anything unknown.
    Any,
}

impl FieldKind {
    /// The kind of a describe `type`.
    pub fn of(sf_type: &str) -> FieldKind {
        match sf_type {
            "boolean" => FieldKind::Bool,
            "int" | "long" => FieldKind::Int,
            "double" | "currency" | "percent" => FieldKind::Number,
            "address" | "location" => FieldKind::Compound,
            "base64" => FieldKind::Binary,
            "anyType" | "complexvalue" => FieldKind::Any,
            _ => FieldKind::Text,
        }
    }

    fn schema(self) -> Value {
        match self {
            FieldKind::Bool => json!({"type": ["boolean", "null"]}),
            FieldKind::Int => json!({"type": ["integer", "null"]}),
            FieldKind::Number => json!({"type": ["number", "null"]}),
            FieldKind::Compound => json!({"type": ["object", "null"]}),
            FieldKind::Text | FieldKind::Binary => json!({"type": ["string", "null"]}),
            FieldKind::Any => json!({}),
        }
    }
}

/// One field of a describe answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FieldDescribe {
    /// API name.
    pub name: String,
    /// Salesforce type (`string`, `reference`, `address`, ...).
    pub sf_type: String,
    /// Whether it is a custom field (`__c`).
    pub custom: bool,
    /// Whether it can be used in a `WHERE` clause.
    pub filterable: bool,
    /// The compound field this one is a component of (`BillingAddress`).
    pub compound_field_name: Option<String>,
    /// Objects a reference field points to (several for polymorphic `WhoId`/`WhatId`).
    pub reference_to: Vec<String>,
    /// The relationship name (`Account`, `Invoice__r`).
    pub relationship_name: Option<String>,
    /// Whether the relationship is master-detail (cascade delete).
    pub master_detail: bool,
}

impl FieldDescribe {
    /// The field's kind.
    pub fn kind(&self) -> FieldKind {
        FieldKind::of(&self.sf_type)
    }
}

/// An object's describe answer (the parts the connector uses).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectDescribe {
    /// API name.
    pub name: String,
    /// The 3-character id prefix of its records.
    pub key_prefix: Option<String>,
    /// Whether it can be queried.
    pub queryable: bool,
    /// Whether it is a custom object.
    pub custom: bool,
    /// Its fields, in describe order.
    pub fields: Vec<FieldDescribe>,
}

fn s_of(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

fn b_of(v: &Value, k: &str, default: bool) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(default)
}

impl ObjectDescribe {
    /// Parses a describe body leniently: fields without a string `name` are skipped, flags
    /// of the wrong type take their defaults.
    ///
    /// # Errors
    /// `InvalidResponse` when the body is not a JSON object with a `name`.
    pub fn parse(body: &[u8]) -> Result<ObjectDescribe> {
        let v: Value = serde_json::from_slice(body).map_err(|e| Error::from_json(e, "describe"))?;
        let name = s_of(&v, "name")
            .ok_or_else(|| Error::invalid_response("describe answer has no object name"))?;
        let mut fields = Vec::new();
        if let Some(list) = v.get("fields").and_then(Value::as_array) {
            for f in list.iter().take(MAX_FIELDS) {
                let Some(fname) = s_of(f, "name") else {
                    continue;
                };
                if !crate::config::is_api_name(&fname) {
                    continue;
                }
                let reference_to = f
                    .get("referenceTo")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .take(50)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                fields.push(FieldDescribe {
                    custom: b_of(f, "custom", fname.ends_with("__c")),
                    sf_type: s_of(f, "type").unwrap_or_else(|| "anyType".into()),
                    filterable: b_of(f, "filterable", true),
                    compound_field_name: s_of(f, "compoundFieldName"),
                    reference_to,
                    relationship_name: s_of(f, "relationshipName"),
                    master_detail: b_of(f, "cascadeDelete", false),
                    name: fname,
                });
            }
        }
        Ok(ObjectDescribe {
            key_prefix: s_of(&v, "keyPrefix"),
            queryable: b_of(&v, "queryable", true),
            custom: b_of(&v, "custom", name.ends_with("__c")),
            name,
            fields,
        })
    }

    /// The field named `name` (case-insensitive, as Salesforce treats API names).
    pub fn field(&self, name: &str) -> Option<&FieldDescribe> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

/// How one object is read: chosen from its describe answer and the settings.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ObjectPlan {
    /// The object.
    pub object: String,
    /// The replication field (`SystemModstamp`, else `LastModifiedDate`, else `CreatedDate`).
    pub replication_key: String,
    /// The fields selected: `Id` and the replication field first.
    pub fields: Vec<String>,
    /// Kind per selected field.
    pub kinds: HashMap<String, FieldKind>,
    /// Whether the object has `IsDeleted` (deletes through `queryAll`).
    pub has_is_deleted: bool,
    /// Whether Bulk API 2.0 may query it.
    pub bulk_ok: bool,
    /// Fields not read, with why (not readable, compound, binary).
    pub skipped: Vec<(String, &'static str)>,
    /// The describe answer.
    pub describe: ObjectDescribe,
}

impl ObjectPlan {
    /// The plan for `describe`, restricted to `only` when the settings name fields.
    ///
    /// # Errors
    /// `Unsupported` when the object is not queryable or has no usable replication field.
    pub fn new(describe: ObjectDescribe, only: Option<&[String]>) -> Result<ObjectPlan> {
        if !describe.queryable {
            return Err(
                Error::new(ErrorKind::Unsupported, "the object is not queryable")
                    .with_context("object", &describe.name),
            );
        }
        let replication_key = REPLICATION_KEYS
            .iter()
            .find(|k| describe.field(k).is_some_and(|f| f.filterable))
            .map(|k| k.to_string())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    "the object has no filterable SystemModstamp, LastModifiedDate or CreatedDate",
                )
                .with_context("object", &describe.name)
            })?;
        if describe.field("Id").is_none() {
            return Err(
                Error::new(ErrorKind::Unsupported, "the object has no Id field")
                    .with_context("object", &describe.name),
            );
        }
        let mut fields = vec!["Id".to_string(), replication_key.clone()];
        let mut kinds = HashMap::new();
        let mut skipped = Vec::new();
        let wanted = |name: &str| match only {
            None => true,
            Some(list) => list.iter().any(|f| f.eq_ignore_ascii_case(name)),
        };
        for f in &describe.fields {
            kinds.insert(f.name.clone(), f.kind());
            if fields.iter().any(|x| x.eq_ignore_ascii_case(&f.name)) {
                continue;
            }
            match f.kind() {
                FieldKind::Compound => {
                    skipped.push((
                        f.name.clone(),
                        "compound: read through its component fields",
                    ));
                    continue;
                }
                FieldKind::Binary => {
                    skipped.push((f.name.clone(), "base64: binary content is not synced"));
                    continue;
                }
                _ => {}
            }
            if wanted(&f.name) || f.name == "IsDeleted" {
                fields.push(f.name.clone());
            }
        }
        if let Some(list) = only {
            for name in list {
                if describe.field(name).is_none() {
                    tracing::warn!(
                        object = %describe.name,
                        field = %name,
                        "field named in the settings is not readable for this user (or does not exist): skipped"
                    );
                    skipped.push((
                        name.clone(),
                        "not readable for this user, or does not exist",
                    ));
                }
            }
        }
        Ok(ObjectPlan {
            object: describe.name.clone(),
            has_is_deleted: describe.field("IsDeleted").is_some(),
            bulk_ok: !BULK_UNSUPPORTED.contains(&describe.name.as_str()),
            replication_key,
            fields,
            kinds,
            skipped,
            describe,
        })
    }

    /// The kind of selected field `name`.
    pub fn kind(&self, name: &str) -> FieldKind {
        self.kinds.get(name).copied().unwrap_or(FieldKind::Any)
    }

    /// The JSON Schema of the object's records (as REST and Bulk reads deliver them).
    pub fn schema(&self, info: &StreamInfo) -> StreamSchema {
        let mut props = Map::new();
        props.insert(
            "attributes".into(),
            json!({"type": "object", "properties": {"type": {"type": "string"}, "url": {"type": ["string", "null"]}}}),
        );
        for name in &self.fields {
            let mut s = self.kind(name).schema();
            if name == "Id" || name == &self.replication_key {
                s = json!({"type": "string"});
            }
            if let (Some(f), Some(obj)) = (self.describe.field(name), s.as_object_mut()) {
                obj.insert(
                    "description".into(),
                    json!(format!("Salesforce {}", f.sf_type)),
                );
                if !f.reference_to.is_empty() {
                    obj.insert("x-reference-to".into(), json!(f.reference_to));
                }
            }
            props.insert(name.clone(), s);
        }
        let mut schema = StreamSchema::new(info, props);
        schema.replication_key = Some(self.replication_key.clone());
        if !self.skipped.is_empty()
            && let Some(obj) = schema.schema.as_object_mut()
        {
            let notes: Vec<String> = self
                .skipped
                .iter()
                .map(|(f, why)| format!("{f}: {why}"))
                .collect();
            obj.insert(
                "$comment".into(),
                json!(format!("fields not read: {}", notes.join("; "))),
            );
        }
        let custom: Vec<String> = self
            .fields
            .iter()
            .filter(|f| self.describe.field(f).is_some_and(|d| d.custom))
            .cloned()
            .collect();
        schema.with_custom_fields(custom)
    }
}

/// Quotes `s` as a SOQL string literal (backslash escapes for `'`, `\`, newlines).
pub fn soql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A SOQL datetime literal for Unix milliseconds `ms`, floored to the second
/// (`2024-05-01T10:00:00Z`); out-of-range values are clamped.
pub fn soql_datetime(ms: i64) -> String {
    let secs = ms.div_euclid(1000).clamp(0, 253_402_300_799);
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "2000-01-01T00:00:00Z".into())
}

/// Salesforce's JSON datetime format for Unix milliseconds (`2024-05-01T10:00:00.000+0000`).
pub fn sf_datetime(ms: i64) -> String {
    let ms = ms.clamp(0, 253_402_300_799_999);
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string())
        .unwrap_or_default()
}

/// Parses a Salesforce datetime (`2024-05-01T10:00:00.000+0000`, or RFC 3339 with `Z` as
/// Bulk CSV has it) as Unix milliseconds.
pub fn parse_datetime(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.len() > 40 {
        return None;
    }
    chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(s))
        .ok()
        .map(|d| d.timestamp_millis())
}

/// The `WHERE` clause of a walk's query over `rk`: at or after `lo_ms` (or strictly after the
/// keyset mark `after` when given), at or before `hi_ms`, plus `extra` conditions.
pub fn soql_where(
    rk: &str,
    lo_ms: i64,
    after: Option<&crate::cursor::Mark>,
    hi_ms: i64,
    extra: Option<&str>,
) -> String {
    let mut w = String::new();
    match after {
        Some(m) => {
            let t = soql_datetime(m.ms);
            let _ = write!(
                w,
                "{rk} >= {t} AND ({rk} > {t} OR Id > {})",
                soql_string(&m.id)
            );
        }
        None => {
            let _ = write!(w, "{rk} >= {}", soql_datetime(lo_ms));
        }
    }
    let _ = write!(w, " AND {rk} <= {}", soql_datetime(hi_ms));
    if let Some(x) = extra {
        let _ = write!(w, " AND {x}");
    }
    w
}

/// `SELECT fields FROM object WHERE where ORDER BY rk ASC, Id ASC`.
pub fn soql_select(
    fields: &[String],
    object: &str,
    where_: &str,
    rk: &str,
    ordered: bool,
) -> String {
    let mut q = format!("SELECT {} FROM {object} WHERE {where_}", fields.join(", "));
    if ordered {
        let _ = write!(q, " ORDER BY {rk} ASC, Id ASC");
    }
    q
}

/// The envelope of a record: its `Id` and replication stamp, read strictly; everything else is
/// left to the lenient mapping.
#[derive(Deserialize)]
struct EnvelopeView<'a> {
    #[serde(rename = "Id", borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "SystemModstamp", borrow, default)]
    system_modstamp: LenientStr<'a>,
    #[serde(rename = "LastModifiedDate", borrow, default)]
    last_modified: LenientStr<'a>,
    #[serde(rename = "CreatedDate", borrow, default)]
    created: LenientStr<'a>,
}

/// The `Id` and replication stamp (ms) of a record's JSON.
///
/// # Errors
/// `InvalidResponse` when the JSON is not an object with a string `Id`, or its `rk` field is
/// not a datetime.
pub fn envelope(raw: &[u8], rk: &str) -> Result<(String, i64)> {
    let v: EnvelopeView<'_> = serde_json::from_slice(raw)
        .map_err(|e| Error::invalid_response("record has no string Id").set_source(e))?;
    if v.id.is_empty() || v.id.len() > 64 {
        return Err(Error::invalid_response("record Id is empty or too long"));
    }
    let stamp = match rk {
        "LastModifiedDate" => &v.last_modified,
        "CreatedDate" => &v.created,
        _ => &v.system_modstamp,
    };
    let ms = stamp.as_deref().and_then(parse_datetime).ok_or_else(|| {
        Error::invalid_response("record's replication field is not a datetime")
            .with_context("field", rk)
            .with_context("id", &v.id)
    })?;
    Ok((v.id.into_owned(), ms))
}

/// A record of `stream` from its JSON (see [`envelope`]): an upsert versioned by its stamp.
///
/// # Errors
/// As [`envelope`].
pub fn record(stream: &StreamId, raw: RawJson, rk: &str) -> Result<Record> {
    let (id, ms) = envelope(raw.as_bytes(), rk)?;
    Ok(Record::upsert(stream.clone(), id, raw).with_modified(ms))
}

/// Well-known key prefixes of standard objects (the first three characters of an id).
const KEY_PREFIXES: &[(&str, &str)] = &[
    ("001", "Account"),
    ("003", "Contact"),
    ("005", "User"),
    ("006", "Opportunity"),
    ("00Q", "Lead"),
    ("00T", "Task"),
    ("00U", "Event"),
    ("00G", "Group"),
    ("500", "Case"),
    ("701", "Campaign"),
    ("800", "Contract"),
    ("801", "Order"),
    ("02i", "Asset"),
];

/// The object type of an id from its key prefix (`003...` is a Contact); `prefixes` adds the
/// prefixes learnt from describe (custom objects).
pub fn object_of_id(id: &str, prefixes: &HashMap<String, String>) -> Option<String> {
    let p = id.get(..3)?;
    KEY_PREFIXES
        .iter()
        .find(|(k, _)| *k == p)
        .map(|(_, o)| o.to_string())
        .or_else(|| prefixes.get(p).cloned())
}

/// Whether `s` looks like a Salesforce id (15 or 18 alphanumerics).
pub fn looks_like_id(s: &str) -> bool {
    (s.len() == 15 || s.len() == 18) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn text(v: &Map<String, Value>, k: &str) -> Option<String> {
    match v.get(k)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn number(v: &Map<String, Value>, k: &str) -> Option<Value> {
    match v.get(k)? {
        Value::Number(n) if n.as_f64().is_some_and(f64::is_finite) => {
            Some(Value::Number(n.clone()))
        }
        Value::String(s) => {
            let f: f64 = s.trim().parse().ok()?;
            serde_json::Number::from_f64(f).map(Value::Number)
        }
        _ => None,
    }
}

fn boolean(v: &Map<String, Value>, k: &str) -> Option<bool> {
    match v.get(k)? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// What the mapping knows beyond the record: describe answers (reference targets, custom
/// object prefixes).
#[derive(Debug, Default, Clone)]
pub struct MapContext {
    /// Reference fields per object: field -> target objects.
    pub references: HashMap<String, BTreeMap<String, Vec<String>>>,
    /// Key prefix -> object, learnt from describe.
    pub prefixes: HashMap<String, String>,
}

impl MapContext {
    /// Learns from a describe answer.
    pub fn learn(&mut self, d: &ObjectDescribe) {
        if let Some(p) = &d.key_prefix {
            self.prefixes.insert(p.clone(), d.name.clone());
        }
        let refs: BTreeMap<String, Vec<String>> = d
            .fields
            .iter()
            .filter(|f| f.sf_type == "reference" && !f.reference_to.is_empty())
            .map(|f| (f.name.clone(), f.reference_to.clone()))
            .collect();
        self.references.insert(d.name.clone(), refs);
    }
}

fn address(v: &Map<String, Value>, prefix: &str) -> Option<Value> {
    let mut a = Map::new();
    for (part, key) in [
        ("Street", "street"),
        ("City", "city"),
        ("State", "state"),
        ("PostalCode", "postal_code"),
        ("Country", "country"),
    ] {
        if let Some(t) = text(v, &format!("{prefix}{part}")) {
            a.insert(key.into(), Value::String(t));
        }
    }
    (!a.is_empty()).then_some(Value::Object(a))
}

/// The normalized entity of a record of `object` (lenient: a field of an unexpected type is
/// left out).
///
/// # Errors
/// `InvalidResponse` when the record's JSON is not an object.
pub fn map_entity(object: &str, record: &Record, ctx: &MapContext) -> Result<Option<Entity>> {
    if record.op == Op::Delete {
        return Ok(None);
    }
    let v: Map<String, Value> = record.raw.deserialize().map_err(|e| {
        Error::invalid_response("a Salesforce record is not a JSON object").set_source(e)
    })?;
    let kind = match object {
        "Account" => EntityKind::Organization,
        "Contact" | "Lead" | "User" => EntityKind::Person,
        "Opportunity" => EntityKind::Deal,
        "Task" | "Event" => EntityKind::Activity,
        "OpportunityHistory" => EntityKind::Event,
        other => EntityKind::Other(other.to_string()),
    };
    let mut e = Entity::new(
        kind,
        SourceRef::new(NAME, object.to_string(), record.id.clone()),
    );
    let name = text(&v, "Name")
        .or_else(|| {
            let first = text(&v, "FirstName");
            let last = text(&v, "LastName");
            match (first, last) {
                (Some(f), Some(l)) => Some(format!("{f} {l}")),
                (f, l) => f.or(l),
            }
        })
        .or_else(|| text(&v, "Subject"))
        .or_else(|| text(&v, "StageName").map(|s| format!("Stage: {s}")));
    if let Some(n) = name {
        e = e.with_name(n);
    }
    // Identities.
    for k in ["Email", "PersonEmail"] {
        if let Some(m) = text(&v, k).filter(|m| m.contains('@')) {
            e = e.with_identity(Identity::email(&m));
        }
    }
    for k in ["Phone", "MobilePhone"] {
        if let Some(p) = text(&v, k).filter(|p| p.chars().any(|c| c.is_ascii_digit())) {
            e = e.with_identity(Identity::phone(&p));
        }
    }
    if let Some(w) = text(&v, "Website").filter(|w| w.contains('.')) {
        e = e.with_identity(Identity::domain(&w));
    }
    // Attributes.
    let text_attrs: &[(&str, &str)] = &[
        ("Industry", "industry"),
        ("Type", "type"),
        ("Title", "title"),
        ("Company", "company"),
        ("Status", "status"),
        ("LeadSource", "lead_source"),
        ("StageName", "stage"),
        ("CloseDate", "close_date"),
        ("ForecastCategoryName", "forecast_category"),
        ("Priority", "priority"),
        ("ActivityDate", "activity_date"),
        ("ActivityDateTime", "activity_datetime"),
        ("StartDateTime", "start"),
        ("EndDateTime", "end"),
        ("Location", "location"),
        ("TaskSubtype", "task_subtype"),
        ("Description", "description"),
        ("Username", "username"),
        ("CreatedDate", "created_at"),
        ("LastModifiedDate", "updated_at"),
    ];
    for (k, attr) in text_attrs {
        if let Some(t) = text(&v, k) {
            e = e.with_attr(*attr, Value::String(t));
        }
    }
    for (k, attr) in [
        ("Amount", "amount"),
        ("Probability", "probability"),
        ("AnnualRevenue", "annual_revenue"),
        ("NumberOfEmployees", "employees"),
        ("ExpectedRevenue", "expected_revenue"),
        ("DurationInMinutes", "duration_minutes"),
    ] {
        if let Some(n) = number(&v, k) {
            e = e.with_attr(attr, n);
        }
    }
    for (k, attr) in [
        ("IsClosed", "closed"),
        ("IsWon", "won"),
        ("IsActive", "active"),
        ("IsConverted", "converted"),
    ] {
        if let Some(b) = boolean(&v, k) {
            e = e.with_attr(attr, Value::Bool(b));
        }
    }
    for (prefix, attr) in [
        ("Billing", "billing_address"),
        ("Shipping", "shipping_address"),
        ("Mailing", "mailing_address"),
        ("", "address"),
    ] {
        if let Some(a) = address(&v, prefix) {
            e = e.with_attr(attr, a);
        }
    }
    // Custom fields, preserved under their own names.
    for (k, val) in &v {
        if k.ends_with("__c") && !val.is_null() {
            e.custom_fields.insert(k.clone(), val.clone());
        }
    }
    // Relations: known standard ones, then every reference field describe told us about.
    let standard: &[(&str, &str, Option<&str>)] = &[
        ("AccountId", "works_at", Some("Account")),
        ("ParentId", "subsidiary_of", Some("Account")),
        ("OwnerId", "owned_by", None),
        ("ReportsToId", "reports_to", Some("Contact")),
        ("OpportunityId", "history_of", Some("Opportunity")),
        ("ManagerId", "reports_to", Some("User")),
        ("WhoId", "who", None),
        ("WhatId", "what", None),
        ("ConvertedAccountId", "converted_to", Some("Account")),
        ("ConvertedContactId", "converted_to", Some("Contact")),
        (
            "ConvertedOpportunityId",
            "converted_to",
            Some("Opportunity"),
        ),
    ];
    let refs = ctx.references.get(object);
    let mut done: Vec<&str> = Vec::new();
    for (field, rel, target) in standard {
        let Some(id) = text(&v, field).filter(|s| looks_like_id(s)) else {
            continue;
        };
        // Contact.AccountId means "works at"; on an Opportunity or a custom object it is
        // the deal's (or record's) account.
        let rel = match (*field, object) {
            ("AccountId", "Contact") => "works_at",
            ("AccountId", "Opportunity") => "deal_with",
            ("AccountId", _) => "account",
            ("ParentId", "Account") => "subsidiary_of",
            ("ParentId", _) => "parent",
            _ => rel,
        };
        let target = target
            .map(str::to_string)
            .or_else(|| object_of_id(&id, &ctx.prefixes))
            .or_else(|| {
                refs.and_then(|r| r.get(*field))
                    .and_then(|t| t.first().cloned())
            })
            .unwrap_or_else(|| "unknown".into());
        e = e.with_relation(rel, SourceRef::new(NAME, target, id));
        done.push(field);
    }
    if let Some(refs) = refs {
        for (field, targets) in refs {
            if done.contains(&field.as_str())
                || matches!(field.as_str(), "CreatedById" | "LastModifiedById")
            {
                continue;
            }
            let Some(id) = text(&v, field).filter(|s| looks_like_id(s)) else {
                continue;
            };
            let target = if targets.len() == 1 {
                targets[0].clone()
            } else {
                object_of_id(&id, &ctx.prefixes)
                    .or_else(|| targets.first().cloned())
                    .unwrap_or_else(|| "unknown".into())
            };
            let rel = field
                .strip_suffix("__c")
                .or_else(|| field.strip_suffix("Id"))
                .unwrap_or(field)
                .to_ascii_lowercase();
            e = e.with_relation(rel, SourceRef::new(NAME, target, id));
        }
    }
    Ok(Some(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe() -> ObjectDescribe {
        ObjectDescribe::parse(
            br#"{"name":"Account","keyPrefix":"001","queryable":true,"custom":false,"fields":[
            {"name":"Id","type":"id","filterable":true},
            {"name":"IsDeleted","type":"boolean"},
            {"name":"Name","type":"string"},
            {"name":"BillingAddress","type":"address"},
            {"name":"BillingCity","type":"string","compoundFieldName":"BillingAddress"},
            {"name":"Logo","type":"base64"},
            {"name":"ParentId","type":"reference","referenceTo":["Account"],"relationshipName":"Parent"},
            {"name":"Tier__c","type":"picklist","custom":true},
            {"name":"SystemModstamp","type":"datetime","filterable":true},
            {"name":"bad name","type":"string"},
            {"type":"string"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn plan_from_describe() {
        let p = ObjectPlan::new(describe(), None).unwrap();
        assert_eq!(p.replication_key, "SystemModstamp");
        assert_eq!(
            &p.fields[..2],
            &["Id".to_string(), "SystemModstamp".to_string()]
        );
        assert!(p.fields.contains(&"BillingCity".to_string()));
        assert!(!p.fields.contains(&"BillingAddress".to_string()));
        assert!(!p.fields.contains(&"Logo".to_string()));
        assert!(p.has_is_deleted);
        let schema = p.schema(&streams(&["Account".into()], true)[0]);
        assert_eq!(schema.custom_fields, vec!["Tier__c".to_string()]);
        let only = vec!["Name".to_string(), "Secret__c".to_string()];
        let p = ObjectPlan::new(describe(), Some(&only)).unwrap();
        assert_eq!(p.fields, vec!["Id", "SystemModstamp", "IsDeleted", "Name"]);
        assert!(p.skipped.iter().any(|(f, _)| f == "Secret__c"));
    }

    #[test]
    fn soql_literals() {
        assert_eq!(soql_string("O'Brien\\"), "'O\\'Brien\\\\'");
        assert_eq!(soql_datetime(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(soql_datetime(i64::MIN), "1970-01-01T00:00:00Z");
        assert_eq!(
            parse_datetime("2023-11-14T22:13:20.000+0000"),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            parse_datetime("2023-11-14T22:13:20.000Z"),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_datetime("yesterday"), None);
        assert_eq!(
            parse_datetime(&sf_datetime(1_700_000_000_123)),
            Some(1_700_000_000_123)
        );
        let m = crate::cursor::Mark::new(1_700_000_000_000, "001x");
        let w = soql_where(
            "SystemModstamp",
            0,
            Some(&m),
            1_700_000_100_000,
            Some("IsDeleted = TRUE"),
        );
        assert_eq!(
            w,
            "SystemModstamp >= 2023-11-14T22:13:20Z AND (SystemModstamp > 2023-11-14T22:13:20Z OR Id > '001x') AND SystemModstamp <= 2023-11-14T22:15:00Z AND IsDeleted = TRUE"
        );
    }

    #[test]
    fn envelope_is_strict_and_mapping_lenient() {
        let raw = br#"{"attributes":{"type":"Contact"},"Id":"003000000000001AAA","SystemModstamp":"2024-01-01T00:00:00.000+0000","Email":7,"AccountId":"001000000000001AAA","WhoId":[1]}"#;
        let (id, ms) = envelope(raw, "SystemModstamp").unwrap();
        assert_eq!(id, "003000000000001AAA");
        assert_eq!(ms, 1_704_067_200_000);
        assert!(envelope(br#"{"Id":1}"#, "SystemModstamp").is_err());
        assert!(envelope(br#"{"Id":"x","SystemModstamp":5}"#, "SystemModstamp").is_err());
        let r = record(
            &StreamId::from("Contact"),
            RawJson::parse(bytes::Bytes::from_static(raw)).unwrap(),
            "SystemModstamp",
        )
        .unwrap();
        let e = map_entity("Contact", &r, &MapContext::default())
            .unwrap()
            .unwrap();
        assert_eq!(e.kind, EntityKind::Person);
        assert!(
            e.relations
                .iter()
                .any(|r| r.kind == "works_at" && r.target.object_type == "Account")
        );
    }

    #[test]
    fn polymorphic_references() {
        let raw = json!({"Id":"00T000000000001AAA","SystemModstamp":"2024-01-01T00:00:00.000+0000",
            "WhoId":"00Q000000000001AAA","WhatId":"006000000000001AAA","Subject":"Call"});
        let r = record(
            &StreamId::from("Task"),
            RawJson::from(raw),
            "SystemModstamp",
        )
        .unwrap();
        let e = map_entity("Task", &r, &MapContext::default())
            .unwrap()
            .unwrap();
        let who = e.relations.iter().find(|r| r.kind == "who").unwrap();
        assert_eq!(who.target.object_type, "Lead");
        let what = e.relations.iter().find(|r| r.kind == "what").unwrap();
        assert_eq!(what.target.object_type, "Opportunity");
        assert_eq!(e.name.as_deref(), Some("Call"));
    }
}
