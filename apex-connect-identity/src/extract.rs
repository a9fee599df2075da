//! From a connector's [`Entity`] to what the graph stores: the source entity's row, its
//! normalized keys, its fields and its relations.

use std::collections::HashMap;

use apex_connect_core::{Entity, EntityKind, Identity};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::key::{IdentityKey, KeyKind, KeyRole};
use crate::normalize::{self, registrable_domain};
use crate::policy::Compiled;

/// Longest source id component (connection, platform, object type, id) the graph indexes.
pub const MAX_ID_LEN: usize = 1024;
/// Most identity keys kept per source entity.
pub const MAX_KEYS_PER_ENTITY: usize = 256;
/// Most relations kept per source entity.
pub const MAX_RELATIONS_PER_ENTITY: usize = 10_000;

/// One source entity, named the way the graph names it: the connection it was read through
/// and its [`apex_connect_core::SourceRef`] parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceKey {
    /// The connection (one account of one platform).
    pub connection: String,
    /// The platform (`hubspot`).
    pub platform: String,
    /// The platform's object type (`contact`).
    pub object_type: String,
    /// The platform's id.
    pub id: String,
}

impl SourceKey {
    /// A source key.
    pub fn new(
        connection: impl Into<String>,
        platform: impl Into<String>,
        object_type: impl Into<String>,
        id: impl Into<String>,
    ) -> Self {
        SourceKey {
            connection: connection.into(),
            platform: platform.into(),
            object_type: object_type.into(),
            id: id.into(),
        }
    }

    /// The stored form: a JSON array of the four parts (unambiguous whatever the ids hold).
    pub(crate) fn to_stored(&self) -> String {
        src_string(
            &self.connection,
            &self.platform,
            &self.object_type,
            &self.id,
        )
    }

    pub(crate) fn from_stored(s: &str) -> Option<SourceKey> {
        let [connection, platform, object_type, id]: [String; 4] = serde_json::from_str(s).ok()?;
        Some(SourceKey {
            connection,
            platform,
            object_type,
            id,
        })
    }
}

pub(crate) fn src_string(connection: &str, platform: &str, object_type: &str, id: &str) -> String {
    serde_json::to_string(&[connection, platform, object_type, id]).unwrap_or_default()
}

pub(crate) fn origin_string(connection: &str, stream: &str, record_id: &str) -> String {
    serde_json::to_string(&[connection, stream, record_id]).unwrap_or_default()
}

/// The stored name of an entity kind (`person`, `organization`, ..., `other:<name>`).
pub fn kind_name(kind: &EntityKind) -> String {
    match kind {
        EntityKind::Person => "person".into(),
        EntityKind::Organization => "organization".into(),
        EntityKind::Conversation => "conversation".into(),
        EntityKind::Message => "message".into(),
        EntityKind::Deal => "deal".into(),
        EntityKind::Activity => "activity".into(),
        EntityKind::Event => "event".into(),
        EntityKind::Tag => "tag".into(),
        EntityKind::Comment => "comment".into(),
        EntityKind::Other(o) => format!("other:{o}"),
        // `EntityKind` is non-exhaustive: name new kinds by their serde name.
        #[allow(unreachable_patterns)]
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "other".into()),
    }
}

/// Whether the entity only asserts relations of its source (a HubSpot association record's
/// entity names the `from` object as its source): it is no source entity of its own.
pub(crate) fn is_relation_only(entity: &Entity) -> bool {
    matches!(&entity.kind, EntityKind::Other(o) if o == "association")
}

/// A normalized key a source entity asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyRow {
    pub(crate) key: String,
    pub(crate) role: KeyRole,
    /// The value as the source had it (for explanations), capped.
    pub(crate) raw: String,
}

/// What the graph stores for one upserted source entity.
#[derive(Debug, Clone)]
pub(crate) struct NodeWrite {
    pub(crate) src: String,
    pub(crate) origin: String,
    pub(crate) connection: String,
    pub(crate) platform: String,
    pub(crate) object_type: String,
    pub(crate) source_id: String,
    pub(crate) stream: String,
    pub(crate) record_id: String,
    pub(crate) kind: String,
    pub(crate) version: Option<i64>,
    pub(crate) updated_at: Option<i64>,
    pub(crate) digest: String,
    pub(crate) fields: String,
    pub(crate) keys: Vec<KeyRow>,
    pub(crate) relations: Vec<(String, String)>,
}

impl NodeWrite {
    pub(crate) fn merge_keys(&self) -> impl Iterator<Item = &str> {
        self.keys
            .iter()
            .filter(|k| k.role == KeyRole::Merge)
            .map(|k| k.key.as_str())
    }
}

fn too_long(s: &str) -> bool {
    s.is_empty() || s.len() > MAX_ID_LEN
}

fn cap(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut cut = n;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s[..cut].to_string()
}

/// Collects keys, keeping the strongest role per key (merge over weak over link) and at most
/// [`MAX_KEYS_PER_ENTITY`].
#[derive(Default)]
struct Keys {
    rows: Vec<KeyRow>,
    index: HashMap<String, usize>,
}

impl Keys {
    fn add(&mut self, key: IdentityKey, role: KeyRole, raw: &str) {
        let stored = key.to_stored();
        if let Some(&i) = self.index.get(&stored) {
            let strength = |r: KeyRole| match r {
                KeyRole::Merge => 2,
                KeyRole::Weak => 1,
                KeyRole::Link => 0,
            };
            if strength(role) > strength(self.rows[i].role) {
                self.rows[i].role = role;
            }
            return;
        }
        if self.rows.len() >= MAX_KEYS_PER_ENTITY {
            return;
        }
        self.index.insert(stored.clone(), self.rows.len());
        self.rows.push(KeyRow {
            key: stored,
            role,
            raw: cap(raw, 256),
        });
    }
}

/// Looks a field up by its rule path (`custom_fields.<name>`, `attributes.<name>`), names
/// compared case-insensitively; strings and integers are ids.
fn field_value(entity: &Entity, path: &str) -> Option<String> {
    let (section, name) = path.split_once('.')?;
    let map: &Map<String, Value> = match section {
        "custom_fields" => &entity.custom_fields,
        "attributes" => &entity.attributes,
        _ => return None,
    };
    let v = map.get(name).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })?;
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// Maps an upserted entity to its stored form. `None` when the entity cannot be indexed (an
/// empty or over-long id part): the caller counts it as skipped.
pub(crate) fn node_write(
    policy: &Compiled,
    connection: &str,
    stream: &str,
    record_id: &str,
    version: Option<i64>,
    updated_at: Option<i64>,
    entity: &Entity,
) -> Option<NodeWrite> {
    let src = &entity.source;
    if too_long(connection)
        || too_long(&src.platform)
        || too_long(&src.object_type)
        || too_long(&src.id)
        || too_long(stream)
        || too_long(record_id)
    {
        return None;
    }
    let kind = kind_name(&entity.kind);
    let merge_on = &policy.policy.merge_on;
    let norm = &policy.normalizer;
    let region = policy.policy.region_for(connection);
    let role_for = |k: KeyKind| {
        if merge_on.merges(&kind, k) {
            KeyRole::Merge
        } else {
            KeyRole::Weak
        }
    };
    let person = kind == "person";
    let organization = kind == "organization";
    let mut keys = Keys::default();
    let add_email = |keys: &mut Keys, raw: &str| {
        if let Some(e) = norm.email(raw) {
            let role = if e.role && person {
                KeyRole::Weak
            } else {
                role_for(KeyKind::Email)
            };
            if person && let Some(d) = norm.email_org_domain(&e) {
                keys.add(IdentityKey::new(KeyKind::Domain, d), KeyRole::Link, raw);
            }
            keys.add(IdentityKey::new(KeyKind::Email, e.address), role, raw);
        }
    };
    let add_phone = |keys: &mut Keys, raw: &str| {
        if let Some(p) = normalize::phone(raw, region) {
            keys.add(
                IdentityKey::new(KeyKind::Phone, p),
                role_for(KeyKind::Phone),
                raw,
            );
        }
    };
    for identity in &entity.identities {
        match identity {
            Identity::Email(v) => add_email(&mut keys, v),
            Identity::Phone(v) => add_phone(&mut keys, v),
            Identity::Domain(v) => {
                let Some(d) = registrable_domain(v) else {
                    continue;
                };
                let generic = norm.is_generic(&d);
                let role = if person {
                    if generic {
                        continue;
                    }
                    KeyRole::Link
                } else if organization && generic {
                    KeyRole::Weak
                } else {
                    role_for(KeyKind::Domain)
                };
                keys.add(IdentityKey::new(KeyKind::Domain, d), role, v);
            }
            Identity::Handle { source, value } => match source.trim() {
                s if s.eq_ignore_ascii_case("email") => add_email(&mut keys, value),
                s if s.eq_ignore_ascii_case("phone") => add_phone(&mut keys, value),
                _ => {
                    if let Some((s, v)) = normalize::handle(source, value) {
                        keys.add(
                            IdentityKey::new(KeyKind::Handle, format!("{s}:{v}")),
                            role_for(KeyKind::Handle),
                            value,
                        );
                    }
                }
            },
            // `Identity` is non-exhaustive: identities of kinds this version does not know
            // join nothing.
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }
    for rule in &policy.policy.external_ids {
        if !rule.applies_to(&src.platform, &src.object_type) {
            continue;
        }
        let values: Vec<String> = match rule.field.split_once('.') {
            Some(("handle", source)) => entity
                .identities
                .iter()
                .filter_map(|i| match i {
                    Identity::Handle { source: s, value } if s.eq_ignore_ascii_case(source) => {
                        Some(value.clone())
                    }
                    _ => None,
                })
                .collect(),
            _ => field_value(entity, &rule.field).into_iter().collect(),
        };
        for raw in values {
            if let Some(id) = normalize::platform_id(&rule.target_platform, &raw) {
                keys.add(
                    IdentityKey::new(
                        KeyKind::External,
                        format!(
                            "{}/{}:{}",
                            rule.target_platform,
                            rule.target_object_type.to_ascii_lowercase(),
                            id
                        ),
                    ),
                    role_for(KeyKind::External),
                    &raw,
                );
            }
        }
    }
    if policy.is_target(&src.platform, &src.object_type)
        && let Some(id) = normalize::platform_id(&src.platform, &src.id)
    {
        keys.add(
            IdentityKey::new(
                KeyKind::External,
                format!(
                    "{}/{}:{}",
                    src.platform,
                    src.object_type.to_ascii_lowercase(),
                    id
                ),
            ),
            role_for(KeyKind::External),
            &src.id,
        );
    }
    let mut relations = Vec::new();
    for r in entity.relations.iter().take(MAX_RELATIONS_PER_ENTITY) {
        let t = &r.target;
        if too_long(&t.platform) || too_long(&t.object_type) || too_long(&t.id) {
            continue;
        }
        if r.kind.is_empty() || r.kind.len() > 128 {
            continue;
        }
        relations.push((
            r.kind.to_string(),
            src_string(connection, &t.platform, &t.object_type, &t.id),
        ));
    }
    relations.sort();
    relations.dedup();
    let mut fields = Map::new();
    if let Some(n) = &entity.name {
        fields.insert("name".into(), Value::String(n.clone()));
    }
    if !entity.attributes.is_empty() {
        fields.insert(
            "attributes".into(),
            Value::Object(entity.attributes.clone()),
        );
    }
    if !entity.custom_fields.is_empty() {
        fields.insert(
            "custom_fields".into(),
            Value::Object(entity.custom_fields.clone()),
        );
    }
    let fields = Value::Object(fields).to_string();
    let mut hasher = Sha256::new();
    hasher.update(kind.as_bytes());
    hasher.update([0]);
    hasher.update(fields.as_bytes());
    hasher.update([0]);
    for k in &keys.rows {
        hasher.update(k.key.as_bytes());
        hasher.update(k.role.as_str().as_bytes());
        hasher.update([0]);
    }
    for (kind, to) in &relations {
        hasher.update(kind.as_bytes());
        hasher.update(to.as_bytes());
        hasher.update([0]);
    }
    let digest = hex::encode(&hasher.finalize()[..16]);
    Some(NodeWrite {
        src: src_string(connection, &src.platform, &src.object_type, &src.id),
        origin: origin_string(connection, stream, record_id),
        connection: connection.to_string(),
        platform: src.platform.to_string(),
        object_type: src.object_type.to_string(),
        source_id: src.id.clone(),
        stream: stream.to_string(),
        record_id: record_id.to_string(),
        kind,
        version,
        updated_at,
        digest,
        fields,
        keys: keys.rows,
        relations,
    })
}

/// The relations a relation-only entity asserts, from its source: `(from_src, kind, to_src)`.
pub(crate) fn relation_rows(connection: &str, entity: &Entity) -> Vec<(String, String, String)> {
    let s = &entity.source;
    if too_long(&s.platform) || too_long(&s.object_type) || too_long(&s.id) {
        return Vec::new();
    }
    let from = src_string(connection, &s.platform, &s.object_type, &s.id);
    entity
        .relations
        .iter()
        .take(MAX_RELATIONS_PER_ENTITY)
        .filter(|r| {
            !r.kind.is_empty()
                && r.kind.len() <= 128
                && !too_long(&r.target.platform)
                && !too_long(&r.target.object_type)
                && !too_long(&r.target.id)
        })
        .map(|r| {
            (
                from.clone(),
                r.kind.to_string(),
                src_string(
                    connection,
                    &r.target.platform,
                    &r.target.object_type,
                    &r.target.id,
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use apex_connect_core::SourceRef;
    use std::str::FromStr;

    fn compiled() -> std::sync::Arc<Compiled> {
        Policy::default()
            .with_default_region(crate::normalize::Region::from_str("US").unwrap())
            .compile()
    }

    fn keys(w: &NodeWrite) -> Vec<(String, KeyRole)> {
        let mut k: Vec<_> = w.keys.iter().map(|k| (k.key.clone(), k.role)).collect();
        k.sort();
        k
    }

    #[test]
    fn person_keys_and_links() {
        let e = Entity::new(
            EntityKind::Person,
            SourceRef::new("hubspot", "contact", "51"),
        )
        .with_identity(Identity::Email(" Ann@Acme.com ".into()))
        .with_identity(Identity::Email("info@acme.com".into()))
        .with_identity(Identity::Email("ann.lee@gmail.com".into()))
        .with_identity(Identity::Phone("(415) 555-2671".into()))
        .with_identity(Identity::Domain("https://www.linkedin.com/in/ann".into()))
        .with_identity(Identity::Handle {
            source: "twitter".into(),
            value: "@AnnLee".into(),
        });
        let mut e = e;
        e.custom_fields.insert(
            "SalesforceContactId".into(),
            Value::String("003d000000AbCdE".into()),
        );
        let w = node_write(&compiled(), "hs", "contacts", "51", Some(1), None, &e).unwrap();
        assert_eq!(
            keys(&w),
            vec![
                ("domain:acme.com".into(), KeyRole::Link),
                ("email:ann@acme.com".into(), KeyRole::Merge),
                ("email:annlee@gmail.com".into(), KeyRole::Merge),
                ("email:info@acme.com".into(), KeyRole::Weak),
                (
                    "ext:salesforce/contact:003d000000AbCdE".into(),
                    KeyRole::Merge
                ),
                ("handle:twitter:annlee".into(), KeyRole::Merge),
                ("phone:+14155552671".into(), KeyRole::Merge),
            ]
        );
        assert_eq!(w.kind, "person");
    }

    #[test]
    fn organization_domains_merge_unless_generic() {
        let e = Entity::new(
            EntityKind::Organization,
            SourceRef::new("salesforce", "account", "001d000000AbCdE"),
        )
        .with_identity(Identity::Domain("http://shop.acme.co.uk".into()))
        .with_identity(Identity::Domain("gmail.com".into()))
        .with_identity(Identity::Phone("+1 415 555 2671".into()));
        let w = node_write(&compiled(), "sf", "Account", "x", None, None, &e).unwrap();
        assert_eq!(
            keys(&w),
            vec![
                ("domain:acme.co.uk".into(), KeyRole::Merge),
                ("domain:gmail.com".into(), KeyRole::Weak),
                (
                    "ext:salesforce/account:001d000000AbCdE".into(),
                    KeyRole::Merge
                ),
                ("phone:+14155552671".into(), KeyRole::Weak),
            ]
        );
    }

    /// The Salesforce connector names object types by their API names (`Contact`,
    /// `Account`); the external-id rules name them in lower case (`contact`). Both must meet
    /// on one key, or a HubSpot contact's `salesforcecontactid` never joins the Salesforce
    /// contact it names.
    #[test]
    fn external_ids_match_object_types_case_insensitively() {
        let p = compiled();
        let sf = Entity::new(
            EntityKind::Person,
            SourceRef::new("salesforce", "Contact", "003d000000AbCdE"),
        );
        let w = node_write(&p, "sf", "Contact", "x", None, None, &sf).unwrap();
        assert_eq!(
            keys(&w),
            vec![(
                "ext:salesforce/contact:003d000000AbCdE".into(),
                KeyRole::Merge
            )]
        );
        let rule = Policy::default().with_external_id(crate::policy::ExternalIdRule::new(
            "salesforce",
            Some("contact"),
            "custom_fields.HubSpot_Contact_ID__c",
            "hubspot",
            "Contact",
        ));
        let mut e = sf;
        e.custom_fields
            .insert("HubSpot_Contact_ID__c".into(), Value::String("51".into()));
        let w = node_write(&rule.compile(), "sf", "Contact", "x", None, None, &e).unwrap();
        assert!(
            keys(&w).contains(&("ext:hubspot/contact:51".into(), KeyRole::Merge)),
            "{:?}",
            keys(&w)
        );
    }

    #[test]
    fn digest_follows_content() {
        let p = compiled();
        let e = Entity::new(
            EntityKind::Person,
            SourceRef::new("frontapp", "contact", "c"),
        )
        .with_name("Ann");
        let a = node_write(&p, "f", "contacts", "c", Some(1), None, &e).unwrap();
        let b = node_write(&p, "f", "contacts", "c", Some(2), None, &e).unwrap();
        assert_eq!(a.digest, b.digest);
        let c = node_write(
            &p,
            "f",
            "contacts",
            "c",
            Some(1),
            None,
            &e.clone().with_name("Bo"),
        )
        .unwrap();
        assert_ne!(a.digest, c.digest);
        let long = Entity::new(
            EntityKind::Person,
            SourceRef::new("frontapp", "contact", "x".repeat(MAX_ID_LEN + 1)),
        );
        assert!(node_write(&p, "f", "contacts", "c", None, None, &long).is_none());
    }
}
