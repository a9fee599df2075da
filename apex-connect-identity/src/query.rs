//! What queries return: plain, serde-serializable views of the graph (for the Rust API, the
//! admin API and the Python bindings alike).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use apex_connect_core::Result;

use crate::extract::SourceKey;
use crate::key::{IdentityKey, KeyRole};
use crate::policy::Policy;
use crate::resolve::resolve_alias;
use crate::store::{ClusterId, EventRow, GraphTx, NodeRow};

/// Most source entities a [`CanonicalEntity`] lists (and resolves fields from).
pub const MAX_SOURCES_IN_VIEW: u32 = 1000;
/// Most relations a [`CanonicalEntity`] lists, per direction.
pub const MAX_RELATIONS_IN_VIEW: u32 = 5000;

/// A canonical entity's stable id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CanonicalId(pub i64);

impl fmt::Display for CanonicalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The source entity.
    pub source: SourceKey,
    /// The stream it was read from.
    pub stream: String,
    /// The record id on that stream.
    pub record_id: String,
    /// The record's version, when the platform has one.
    pub version: Option<i64>,
    /// The record's modification time (Unix ms), when known.
    pub updated_at: Option<i64>,
    /// When the graph received it (Unix ms).
    pub synced_at: i64,
}

/// One source's value of a field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldValue {
    /// The value.
    pub value: Value,
    /// Its source.
    pub provenance: Provenance,
}

/// A field of a canonical entity: the value the policy chose, and every source's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedField {
    /// The canonical value.
    pub value: Value,
    /// Where it came from.
    pub provenance: Provenance,
    /// Whether the sources disagree.
    pub conflict: bool,
    /// Every source's value, in the order the policy ranks them (the first is the canonical).
    pub candidates: Vec<FieldValue>,
}

/// A source entity of a canonical entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceEntity {
    /// Where it lives.
    pub provenance: Provenance,
    /// Its name there.
    pub name: Option<String>,
}

/// Who asserts an identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityEvidence {
    /// The source entity.
    pub source: SourceKey,
    /// The value as it had it.
    pub raw: String,
}

/// An identity of a canonical entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityView {
    /// The normalized key.
    pub key: IdentityKey,
    /// What it does (the strongest role any source gives it).
    pub role: KeyRole,
    /// The sources asserting it.
    pub asserted_by: Vec<IdentityEvidence>,
}

/// Which way a relation points, seen from the canonical entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// This entity's source asserts it (a contact's `works_at` its company).
    Outgoing,
    /// Another entity's source asserts it about this one (the company, seen from the contact).
    Incoming,
}

/// One source-level relation behind a [`RelationView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationEvidence {
    /// The source asserting the relation.
    pub from: SourceKey,
    /// Its target.
    pub to: SourceKey,
}

/// A relation of a canonical entity to another, resolved through canonical ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationView {
    /// The relation kind as the asserting source names it (`works_at`, `recipient`,
    /// `deal_company`, ...; `email_domain` for the inferred person-organization link).
    pub kind: String,
    /// Which way it points.
    pub direction: Direction,
    /// The canonical entity at the other end (`None` while that source entity has not been
    /// synced).
    pub other: Option<CanonicalId>,
    /// Its kind, when known.
    pub other_kind: Option<String>,
    /// Whether the relation is inferred (a person's email domain) rather than asserted.
    pub inferred: bool,
    /// The source-level relations behind it (at most 20 listed).
    pub via: Vec<RelationEvidence>,
    /// How many source-level relations there are.
    pub count: usize,
}

/// A canonical entity: the one customer (or company, deal...) behind records on every platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanonicalEntity {
    /// Its id.
    pub id: CanonicalId,
    /// The id asked for: differs from `id` when that entity was merged into this one.
    pub requested: CanonicalId,
    /// Its kind (`person`, `organization`, ...).
    pub kind: String,
    /// When it was created (Unix ms).
    pub created_at: i64,
    /// The canonical name, when a source has one.
    pub name: Option<String>,
    /// Every field (`name`, `attributes.<name>`, `custom_fields.<name>`) with its canonical
    /// value and each source's value.
    pub fields: BTreeMap<String, ResolvedField>,
    /// Its source entities.
    pub sources: Vec<SourceEntity>,
    /// Its identities.
    pub identities: Vec<IdentityView>,
    /// Its relations, both directions.
    pub relations: Vec<RelationView>,
    /// Whether sources or relations were cut at [`MAX_SOURCES_IN_VIEW`] /
    /// [`MAX_RELATIONS_IN_VIEW`].
    pub truncated: bool,
}

impl CanonicalEntity {
    /// The canonical value of a field, if any source has it.
    pub fn field(&self, path: &str) -> Option<&Value> {
        self.fields.get(path).map(|f| &f.value)
    }

    /// The canonical entities related through `kind` in `direction`.
    pub fn related(&self, kind: &str, direction: Direction) -> Vec<CanonicalId> {
        let mut out: Vec<CanonicalId> = self
            .relations
            .iter()
            .filter(|r| r.kind == kind && r.direction == direction)
            .filter_map(|r| r.other)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every canonical entity related in any way.
    pub fn neighbors(&self) -> Vec<CanonicalId> {
        let mut out: Vec<CanonicalId> = self.relations.iter().filter_map(|r| r.other).collect();
        out.sort();
        out.dedup();
        out
    }
}

/// A short view of a canonical entity (what `find` returns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitySummary {
    /// Its id.
    pub id: CanonicalId,
    /// Its kind.
    pub kind: String,
    /// Its canonical name.
    pub name: Option<String>,
    /// The sources that hold the identity looked up.
    pub matched: Vec<SourceKey>,
}

/// What an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A source entity joined an existing canonical entity.
    Join,
    /// Two canonical entities became one (`other` into `cluster`).
    Merge,
    /// A canonical entity was split (`other` is the new one): evidence was removed or a user
    /// split it.
    Split,
    /// A user split was undone.
    Unsplit,
    /// A canonical entity lost its last source entity.
    Dissolve,
}

impl EventKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "join" => EventKind::Join,
            "merge" => EventKind::Merge,
            "split" => EventKind::Split,
            "unsplit" => EventKind::Unsplit,
            "dissolve" => EventKind::Dissolve,
            _ => return None,
        })
    }
}

/// A recorded merge, join or split, with its explanation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeEvent {
    /// Its id (grows with time).
    pub id: i64,
    /// When (Unix ms).
    pub at: i64,
    /// What happened.
    pub kind: EventKind,
    /// The canonical entity it happened to (the survivor of a merge).
    pub cluster: CanonicalId,
    /// The other one (absorbed by a merge, created by a split).
    pub other: Option<CanonicalId>,
    /// Where `cluster` lives now (it may have been merged since).
    pub current: Option<CanonicalId>,
    /// The source entity whose arrival, change or removal caused it.
    pub trigger: Option<SourceKey>,
    /// The identities that joined them (for a split: the identities removed).
    pub keys: Vec<IdentityKey>,
    /// Details (`reason` of a split, `split` id of an unsplit).
    pub detail: Option<Value>,
}

/// A user split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// Its id (pass it to `unsplit`).
    pub id: i64,
    /// The canonical entity it split.
    pub cluster: CanonicalId,
    /// When (Unix ms).
    pub created_at: i64,
    /// The user's note.
    pub note: Option<String>,
    /// Whether it still holds.
    pub active: bool,
}

/// What a split did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitOutcome {
    /// The split's id (for `unsplit`).
    pub split: i64,
    /// The canonical entities the sources are in now, each with its sources.
    pub clusters: BTreeMap<CanonicalId, Vec<SourceKey>>,
}

pub(crate) fn provenance(n: &NodeRow) -> Provenance {
    Provenance {
        source: SourceKey::new(&n.connection, &n.platform, &n.object_type, &n.source_id),
        stream: n.stream.clone(),
        record_id: n.record_id.clone(),
        version: n.version,
        updated_at: n.updated_at,
        synced_at: n.synced_at,
    }
}

/// The canonical value of each field under `policy`: source priority, then the newest
/// `updated_at`, then the newest `synced_at`, then the oldest source entity.
pub(crate) fn resolve_fields(
    policy: &Policy,
    members: &[NodeRow],
) -> BTreeMap<String, ResolvedField> {
    let mut by_field: BTreeMap<String, Vec<(usize, Value)>> = BTreeMap::new();
    for (i, n) in members.iter().enumerate() {
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&n.fields) else {
            continue;
        };
        for (section, v) in fields {
            match (section.as_str(), v) {
                ("name", v @ Value::String(_)) => {
                    by_field.entry("name".into()).or_default().push((i, v));
                }
                ("attributes" | "custom_fields", Value::Object(m)) => {
                    for (k, v) in m {
                        if v.is_null() {
                            continue;
                        }
                        by_field
                            .entry(format!("{section}.{k}"))
                            .or_default()
                            .push((i, v));
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = BTreeMap::new();
    for (field, mut values) in by_field {
        values.sort_by_key(|(i, _)| {
            let n = &members[*i];
            (
                policy.rank(&field, &n.platform, &n.connection),
                Reverse(n.updated_at.unwrap_or(i64::MIN)),
                Reverse(n.synced_at),
                n.id,
            )
        });
        let conflict = values.iter().any(|(_, v)| *v != values[0].1);
        let candidates: Vec<FieldValue> = values
            .into_iter()
            .map(|(i, value)| FieldValue {
                value,
                provenance: provenance(&members[i]),
            })
            .collect();
        let first = candidates[0].clone();
        out.insert(
            field,
            ResolvedField {
                value: first.value,
                provenance: first.provenance,
                conflict,
                candidates,
            },
        );
    }
    out
}

const VIA_LISTED: usize = 20;

/// One source-level relation before grouping: kind, direction, the other end's cluster and
/// kind, whether inferred, and the evidence.
type RelationRowView = (
    String,
    Direction,
    Option<ClusterId>,
    Option<String>,
    bool,
    RelationEvidence,
);

fn group_relations(rows: Vec<RelationRowView>) -> Vec<RelationView> {
    let mut grouped: BTreeMap<(Direction, String, Option<ClusterId>, String), RelationView> =
        BTreeMap::new();
    for (kind, direction, other, other_kind, inferred, via) in rows {
        // Unresolved targets stay apart per target.
        let target = if other.is_none() {
            match direction {
                Direction::Outgoing => via.to.to_stored(),
                Direction::Incoming => via.from.to_stored(),
            }
        } else {
            String::new()
        };
        let e = grouped
            .entry((direction, kind.clone(), other, target))
            .or_insert_with(|| RelationView {
                kind,
                direction,
                other: other.map(CanonicalId),
                other_kind: other_kind.clone(),
                inferred,
                via: Vec::new(),
                count: 0,
            });
        e.count += 1;
        if e.via.len() < VIA_LISTED && !e.via.contains(&via) {
            e.via.push(via);
        }
        if e.other_kind.is_none() {
            e.other_kind = other_kind;
        }
    }
    grouped.into_values().collect()
}

fn src_key(s: &str) -> SourceKey {
    SourceKey::from_stored(s).unwrap_or_else(|| SourceKey::new("", "", "", s))
}

/// Loads a canonical entity.
pub(crate) async fn canonical(
    tx: &mut dyn GraphTx,
    policy: &Policy,
    requested: ClusterId,
) -> Result<Option<CanonicalEntity>> {
    let Some(id) = resolve_alias(tx, requested).await? else {
        return Ok(None);
    };
    let Some(cluster) = tx.cluster(id).await? else {
        return Ok(None);
    };
    if cluster.retired_at.is_some() {
        // Dissolved: no source entity left.
        return Ok(None);
    }
    let members = tx.member_rows(id, MAX_SOURCES_IN_VIEW + 1).await?;
    let mut truncated = members.len() > MAX_SOURCES_IN_VIEW as usize;
    let members: Vec<NodeRow> = members
        .into_iter()
        .take(MAX_SOURCES_IN_VIEW as usize)
        .collect();
    let fields = resolve_fields(policy, &members);
    let name = fields
        .get("name")
        .and_then(|f| f.value.as_str())
        .map(str::to_string);
    let by_id: HashMap<i64, &NodeRow> = members.iter().map(|n| (n.id, n)).collect();

    // Identities.
    let ids: Vec<i64> = members.iter().map(|n| n.id).collect();
    let keys = tx.node_keys(&ids).await?;
    let mut identities: BTreeMap<String, IdentityView> = BTreeMap::new();
    let mut link_keys = Vec::new();
    let mut domain_keys = Vec::new();
    for k in &keys {
        let Some(n) = by_id.get(&k.node) else {
            continue;
        };
        if k.role == KeyRole::Link {
            link_keys.push(k.key.clone());
        } else if k.role == KeyRole::Merge && k.key.starts_with("domain:") {
            domain_keys.push(k.key.clone());
        }
        let Ok(key) = IdentityKey::from_stored(&k.key) else {
            continue;
        };
        let source = SourceKey::new(&n.connection, &n.platform, &n.object_type, &n.source_id);
        let e = identities
            .entry(k.key.clone())
            .or_insert_with(|| IdentityView {
                key,
                role: k.role,
                asserted_by: Vec::new(),
            });
        if rank_role(k.role) > rank_role(e.role) {
            e.role = k.role;
        }
        e.asserted_by.push(IdentityEvidence {
            source,
            raw: k.raw.clone(),
        });
    }
    link_keys.sort();
    link_keys.dedup();
    domain_keys.sort();
    domain_keys.dedup();

    // Relations, asserted.
    let srcs: Vec<String> = members.iter().map(|n| n.src.clone()).collect();
    let out_rows = tx.relations_from(&srcs, MAX_RELATIONS_IN_VIEW).await?;
    let in_rows = tx.relations_to(&srcs, MAX_RELATIONS_IN_VIEW).await?;
    truncated |= out_rows.len() >= MAX_RELATIONS_IN_VIEW as usize
        || in_rows.len() >= MAX_RELATIONS_IN_VIEW as usize;
    let mut rows = Vec::new();
    for r in out_rows {
        rows.push((
            r.kind,
            Direction::Outgoing,
            r.other_cluster,
            r.other_kind,
            false,
            RelationEvidence {
                from: src_key(&r.from_src),
                to: src_key(&r.to_src),
            },
        ));
    }
    for r in in_rows {
        rows.push((
            r.kind,
            Direction::Incoming,
            r.other_cluster,
            r.other_kind,
            false,
            RelationEvidence {
                from: src_key(&r.from_src),
                to: src_key(&r.to_src),
            },
        ));
    }

    // Relations, inferred: a person's work-email domain names an organization's domain.
    let member_src_of_key = |key: &str| -> Option<String> {
        keys.iter()
            .find(|k| k.key == key && by_id.contains_key(&k.node))
            .and_then(|k| by_id.get(&k.node))
            .map(|n| n.src.clone())
    };
    if !link_keys.is_empty() {
        let orgs = tx
            .holders(
                &link_keys,
                &[KeyRole::Merge],
                Some("organization"),
                Some(MAX_RELATIONS_IN_VIEW),
            )
            .await?;
        truncated |= orgs.len() >= MAX_RELATIONS_IN_VIEW as usize;
        let org_ids: Vec<i64> = orgs.iter().map(|h| h.node).collect();
        let org_srcs: HashMap<i64, String> = tx
            .nodes_by_id(&org_ids)
            .await?
            .into_iter()
            .map(|s| (s.id, s.src))
            .collect();
        for h in orgs {
            let from = member_src_of_key(&h.key).unwrap_or_default();
            rows.push((
                "email_domain".to_string(),
                Direction::Outgoing,
                h.cluster,
                Some(h.kind),
                true,
                RelationEvidence {
                    from: src_key(&from),
                    to: src_key(org_srcs.get(&h.node).map_or("", String::as_str)),
                },
            ));
        }
    }
    if cluster.kind == "organization" && !domain_keys.is_empty() {
        let people = tx
            .holders(
                &domain_keys,
                &[KeyRole::Link],
                Some("person"),
                Some(MAX_RELATIONS_IN_VIEW),
            )
            .await?;
        truncated |= people.len() >= MAX_RELATIONS_IN_VIEW as usize;
        let people_ids: Vec<i64> = people.iter().map(|h| h.node).collect();
        let srcs: HashMap<i64, String> = tx
            .nodes_by_id(&people_ids)
            .await?
            .into_iter()
            .map(|s| (s.id, s.src))
            .collect();
        for h in people {
            let to = member_src_of_key(&h.key).unwrap_or_default();
            rows.push((
                "email_domain".to_string(),
                Direction::Incoming,
                h.cluster,
                Some(h.kind),
                true,
                RelationEvidence {
                    from: src_key(srcs.get(&h.node).map_or("", String::as_str)),
                    to: src_key(&to),
                },
            ));
        }
    }

    Ok(Some(CanonicalEntity {
        id: CanonicalId(id),
        requested: CanonicalId(requested),
        kind: cluster.kind,
        created_at: cluster.created_at,
        name,
        fields,
        sources: members
            .iter()
            .map(|n| SourceEntity {
                provenance: provenance(n),
                name: serde_json::from_str::<Value>(&n.fields)
                    .ok()
                    .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_string)),
            })
            .collect(),
        identities: identities.into_values().collect(),
        relations: group_relations(rows),
        truncated,
    }))
}

fn rank_role(r: KeyRole) -> u8 {
    match r {
        KeyRole::Merge => 2,
        KeyRole::Weak => 1,
        KeyRole::Link => 0,
    }
}

/// The canonical name of a cluster (for summaries): resolved from at most 50 members.
pub(crate) async fn summary_name(
    tx: &mut dyn GraphTx,
    policy: &Policy,
    id: ClusterId,
) -> Result<Option<String>> {
    let members = tx.member_rows(id, 50).await?;
    Ok(resolve_fields(policy, &members)
        .remove("name")
        .and_then(|f| f.value.as_str().map(str::to_string)))
}

/// Turns stored events into views.
pub(crate) async fn events_view(
    tx: &mut dyn GraphTx,
    rows: Vec<EventRow>,
) -> Result<Vec<MergeEvent>> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let Some(kind) = EventKind::parse(&r.event.kind) else {
            continue;
        };
        let keys: Vec<String> = serde_json::from_str(&r.event.keys).unwrap_or_default();
        let current = resolve_alias(tx, r.event.cluster).await?;
        let current = match current {
            Some(c) => tx
                .cluster(c)
                .await?
                .filter(|row| row.retired_at.is_none())
                .map(|row| CanonicalId(row.id)),
            None => None,
        };
        out.push(MergeEvent {
            id: r.id,
            at: r.event.at,
            kind,
            cluster: CanonicalId(r.event.cluster),
            other: r.event.other.map(CanonicalId),
            current,
            trigger: r.node_src.as_deref().and_then(SourceKey::from_stored),
            keys: keys
                .iter()
                .filter_map(|k| IdentityKey::from_stored(k).ok())
                .collect(),
            detail: r
                .event
                .detail
                .as_deref()
                .and_then(|d| serde_json::from_str(d).ok()),
        });
    }
    Ok(out)
}
