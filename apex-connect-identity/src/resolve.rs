//! Incremental resolution: union-find over clusters with persisted merges, negative
//! constraints from user splits, and re-splitting when evidence goes away.
//!
//! The write path of a batch (see [`apply`]):
//! 1. the source entities' rows, keys and relations are written;
//! 2. clusters that lost evidence (a deleted member, a member that dropped a merge key) are
//!    recomputed from their remaining members and split when they fell apart;
//! 3. new members, and members that gained keys, are linked: each joins the cluster it
//!    shares a merge key with (the oldest, when several) and clusters it bridges are merged,
//!    unless a user split or the phone guard forbids it.
//!
//! Linking is greedy in the order source entities first arrived (node ids grow with arrival),
//! and a recomputation replays the same order, so that both give the same clusters.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use apex_connect_core::{Batch, Error, Op, Result};
use serde::{Deserialize, Serialize};

use crate::extract::{self, NodeWrite, origin_string};
use crate::key::KeyRole;
use crate::policy::Compiled;
use crate::store::{ClusterId, EventInsert, GraphTx, KeyInsert, NodeId, NodeState, NodeUpsert};

/// Most cannot-link pairs one user split may record (each split stores a pair per selected
/// and remaining member).
pub(crate) const MAX_SPLIT_PAIRS: usize = 1_000_000;
/// How many `merged_into` hops an id is followed through.
pub(crate) const MAX_ALIAS_HOPS: usize = 64;

/// What one batch did to the graph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ApplyReport {
    /// Records whose source entity (or relations) were written or deleted.
    pub applied: u64,
    /// Records that changed nothing: replays, older versions, deletes of unknown records,
    /// records without an entity.
    pub unchanged: u64,
    /// Entities that cannot be indexed (an empty or over-long id): not in the graph.
    pub skipped: u64,
    /// Source entities that joined an existing canonical entity.
    pub joins: u64,
    /// Canonical entities merged into another.
    pub merges: u64,
    /// Canonical entities created by a split (evidence removed, or a user split).
    pub splits: u64,
    /// Canonical entities that lost their last source entity.
    pub dissolved: u64,
}

/// `(from_src, kind, to_src)`.
pub(crate) type RelationTriple = (String, String, String);

/// A change prepared from a batch, normalized outside the write lock.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    pub(crate) writes: Vec<NodeWrite>,
    /// Origins deleted, with the delete's version.
    pub(crate) deletes: Vec<(String, Option<i64>)>,
    /// Relation-only records upserted: origin and `(from, kind, to)` rows.
    pub(crate) relation_only: Vec<(String, Vec<RelationTriple>)>,
    pub(crate) skipped: u64,
    pub(crate) ignored: u64,
}

/// Normalizes a batch: keys, fields and relations of each entity. The last operation on a
/// record wins; of two records naming one source entity, the newer version wins.
pub(crate) fn prepare(policy: &Compiled, batch: &Batch<'_>) -> Prepared {
    let connection = batch.connection.as_str();
    let stream = batch.stream.as_str();
    // Last operation per record.
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(batch.records.len());
    for (i, r) in batch.records.iter().enumerate() {
        last.insert(r.id.as_str(), i);
    }
    let mut out = Prepared::default();
    let mut by_src: HashMap<String, usize> = HashMap::new();
    for (i, r) in batch.records.iter().enumerate() {
        if last.get(r.id.as_str()) != Some(&i) {
            out.ignored += 1;
            continue;
        }
        match r.op {
            Op::Delete => {
                out.deletes
                    .push((origin_string(connection, stream, &r.id), r.version));
            }
            Op::Upsert => {
                let Some(entity) = batch.entity(i) else {
                    out.ignored += 1;
                    continue;
                };
                if extract::is_relation_only(entity) {
                    out.relation_only.push((
                        origin_string(connection, stream, &r.id),
                        extract::relation_rows(connection, entity),
                    ));
                    continue;
                }
                let Some(w) = extract::node_write(
                    policy,
                    connection,
                    stream,
                    &r.id,
                    r.version,
                    r.updated_at,
                    entity,
                ) else {
                    tracing::warn!(
                        connection,
                        stream,
                        "entity not indexed by the entity graph: empty or over-long id"
                    );
                    out.skipped += 1;
                    continue;
                };
                match by_src.get(&w.src) {
                    Some(&j) => {
                        let older = matches!(
                            (out.writes[j].version, w.version),
                            (Some(a), Some(b)) if b < a
                        );
                        out.ignored += 1;
                        if !older {
                            out.writes[j] = w;
                        }
                    }
                    None => {
                        by_src.insert(w.src.clone(), out.writes.len());
                        out.writes.push(w);
                    }
                }
            }
        }
    }
    out
}

/// Whether an incoming write replaces the stored node: a newer version; or, with equal or
/// missing versions, different content (a tombstone always differs).
fn should_apply(w: &NodeWrite, ex: &NodeState) -> bool {
    match (w.version, ex.version) {
        (Some(a), Some(b)) if a > b => true,
        (Some(a), Some(b)) if a < b => false,
        _ => ex.deleted || ex.digest != w.digest,
    }
}

/// An event of the in-memory resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EngineEvent {
    Join {
        cluster: ClusterId,
        node: NodeId,
        keys: Vec<String>,
    },
    Merge {
        survivor: ClusterId,
        absorbed: ClusterId,
        node: NodeId,
        keys: Vec<String>,
    },
}

#[derive(Debug, Default)]
struct Comp {
    members: Vec<NodeId>,
    keys: HashSet<String>,
    emails: HashSet<String>,
    email_domains: HashSet<String>,
}

impl Comp {
    fn add_keys<'a>(&mut self, keys: impl IntoIterator<Item = &'a String>) {
        for k in keys {
            if let Some(e) = k.strip_prefix("email:") {
                self.emails.insert(e.to_string());
                if let Some((_, d)) = e.rsplit_once('@') {
                    self.email_domains.insert(d.to_string());
                }
            }
            self.keys.insert(k.clone());
        }
    }

    fn absorb(&mut self, other: Comp) {
        self.members.extend(other.members);
        self.keys.extend(other.keys);
        self.emails.extend(other.emails);
        self.email_domains.extend(other.email_domains);
    }
}

/// Greedy union-find over clusters. Nodes are linked one at a time; each joins the first
/// (lowest id) cluster it shares a merge key with that it may join, then merges every other
/// cluster it shares a key with that may be merged. Survivors keep the lower (older) id.
#[derive(Debug)]
pub(crate) struct Engine {
    parent: HashMap<ClusterId, ClusterId>,
    comps: HashMap<ClusterId, Comp>,
    key_index: HashMap<String, Vec<ClusterId>>,
    node_comp: HashMap<NodeId, ClusterId>,
    node_emails: HashMap<NodeId, Vec<String>>,
    cannot: HashMap<NodeId, Vec<NodeId>>,
    phone_guard: bool,
    record: bool,
    pub(crate) events: Vec<EngineEvent>,
    pub(crate) created: Vec<ClusterId>,
}

impl Engine {
    pub(crate) fn new(phone_guard: bool, record: bool) -> Self {
        Engine {
            parent: HashMap::new(),
            comps: HashMap::new(),
            key_index: HashMap::new(),
            node_comp: HashMap::new(),
            node_emails: HashMap::new(),
            cannot: HashMap::new(),
            phone_guard,
            record,
            events: Vec::new(),
            created: Vec::new(),
        }
    }

    /// Loads an existing cluster with its members and their merge keys.
    pub(crate) fn preload(&mut self, cluster: ClusterId, members: &BTreeMap<NodeId, Vec<String>>) {
        let mut comp = Comp::default();
        for (node, keys) in members {
            comp.members.push(*node);
            comp.add_keys(keys);
            self.node_comp.insert(*node, cluster);
        }
        for k in &comp.keys {
            self.key_index.entry(k.clone()).or_default().push(cluster);
        }
        self.comps.insert(cluster, comp);
    }

    pub(crate) fn add_cannot(&mut self, pairs: &[(NodeId, NodeId)]) {
        for &(a, b) in pairs {
            self.cannot.entry(a).or_default().push(b);
            self.cannot.entry(b).or_default().push(a);
        }
    }

    pub(crate) fn find(&mut self, c: ClusterId) -> ClusterId {
        let mut root = c;
        let mut hops = 0usize;
        while let Some(&p) = self.parent.get(&root) {
            root = p;
            hops += 1;
            if hops > 1_000_000 {
                break;
            }
        }
        // Path compression.
        let mut cur = c;
        while let Some(&p) = self.parent.get(&cur) {
            if p == root {
                break;
            }
            self.parent.insert(cur, root);
            cur = p;
        }
        root
    }

    fn find_ro(&self, c: ClusterId) -> ClusterId {
        let mut root = c;
        let mut hops = 0usize;
        while let Some(&p) = self.parent.get(&root) {
            root = p;
            hops += 1;
            if hops > 1_000_000 {
                break;
            }
        }
        root
    }

    fn crosses_cannot(&self, members: &[NodeId], other: ClusterId) -> bool {
        members.iter().any(|m| {
            self.cannot.get(m).is_some_and(|ps| {
                ps.iter().any(|p| {
                    self.node_comp
                        .get(p)
                        .is_some_and(|&c| self.find_ro(c) == other)
                })
            })
        })
    }

    fn phone_blocked(
        &self,
        keys: &[String],
        emails_a: &HashSet<String>,
        domains_a: &HashSet<String>,
        b: &Comp,
    ) -> bool {
        self.phone_guard
            && !keys.is_empty()
            && keys.iter().all(|k| k.starts_with("phone:"))
            && emails_a.is_disjoint(&b.emails)
            && !domains_a.is_disjoint(&b.email_domains)
    }

    fn node_may_join(
        &self,
        node: NodeId,
        node_keys: &[String],
        c: ClusterId,
        via: &[String],
    ) -> bool {
        if self.crosses_cannot(&[node], c) {
            return false;
        }
        let Some(comp) = self.comps.get(&c) else {
            return false;
        };
        let mut tmp = Comp::default();
        tmp.add_keys(node_keys);
        !self.phone_blocked(via, &tmp.emails, &tmp.email_domains, comp)
    }

    fn may_merge(&self, a: ClusterId, b: ClusterId, via: &[String]) -> bool {
        let (Some(ca), Some(cb)) = (self.comps.get(&a), self.comps.get(&b)) else {
            return false;
        };
        let (small, other) = if ca.members.len() <= cb.members.len() {
            (ca, b)
        } else {
            (cb, a)
        };
        if self.crosses_cannot(&small.members, other) {
            return false;
        }
        !self.phone_blocked(via, &ca.emails, &ca.email_domains, cb)
    }

    fn union(&mut self, a: ClusterId, b: ClusterId) -> (ClusterId, ClusterId) {
        let (survivor, loser) = if a < b { (a, b) } else { (b, a) };
        let lost = self.comps.remove(&loser).unwrap_or_default();
        let surv = self.comps.entry(survivor).or_default();
        if lost.members.len() > surv.members.len() {
            let mut lost = lost;
            std::mem::swap(surv, &mut lost);
            surv.absorb(lost);
        } else {
            surv.absorb(lost);
        }
        self.parent.insert(loser, survivor);
        (survivor, loser)
    }

    /// Links `node` with merge `keys`; `current` is its cluster when it has one.
    pub(crate) fn link(
        &mut self,
        node: NodeId,
        keys: &[String],
        current: Option<ClusterId>,
        alloc: &mut dyn FnMut() -> ClusterId,
    ) {
        let own0 = current.map(|c| self.find(c));
        let mut cand: BTreeMap<ClusterId, Vec<String>> = BTreeMap::new();
        for k in keys {
            let Some(cs) = self.key_index.get(k).cloned() else {
                continue;
            };
            for c in cs {
                let r = self.find(c);
                if Some(r) == own0 {
                    continue;
                }
                let v = cand.entry(r).or_default();
                if !v.contains(k) {
                    v.push(k.clone());
                }
            }
        }
        let mut own = match own0 {
            Some(o) => o,
            None => {
                let joined = cand
                    .iter()
                    .find(|(c, via)| self.node_may_join(node, keys, **c, via))
                    .map(|(c, via)| (*c, via.clone()));
                match joined {
                    Some((c, via)) => {
                        if let Some(comp) = self.comps.get_mut(&c) {
                            comp.members.push(node);
                        }
                        if self.record {
                            self.events.push(EngineEvent::Join {
                                cluster: c,
                                node,
                                keys: via,
                            });
                        }
                        c
                    }
                    None => {
                        let id = alloc();
                        self.comps.insert(
                            id,
                            Comp {
                                members: vec![node],
                                ..Comp::default()
                            },
                        );
                        self.created.push(id);
                        id
                    }
                }
            }
        };
        self.node_comp.insert(node, own);
        self.node_emails.insert(
            node,
            keys.iter()
                .filter(|k| k.starts_with("email:"))
                .cloned()
                .collect(),
        );
        if let Some(comp) = self.comps.get_mut(&own) {
            comp.add_keys(keys);
        }
        for k in keys {
            let v = self.key_index.entry(k.clone()).or_default();
            if !v.contains(&own) {
                v.push(own);
            }
        }
        for (c, via) in cand {
            let a = self.find(own);
            let b = self.find(c);
            if a == b || !self.may_merge(a, b, &via) {
                continue;
            }
            let (survivor, absorbed) = self.union(a, b);
            if self.record {
                self.events.push(EngineEvent::Merge {
                    survivor,
                    absorbed,
                    node,
                    keys: via,
                });
            }
            own = survivor;
        }
    }

    /// Every node's final cluster.
    pub(crate) fn assignments(&mut self) -> Vec<(NodeId, ClusterId)> {
        let pairs: Vec<(NodeId, ClusterId)> =
            self.node_comp.iter().map(|(n, c)| (*n, *c)).collect();
        let mut out: Vec<(NodeId, ClusterId)> =
            pairs.into_iter().map(|(n, c)| (n, self.find(c))).collect();
        out.sort_unstable();
        out
    }

    /// Clusters absorbed by merges, with the cluster they live on in.
    pub(crate) fn absorbed(&mut self) -> Vec<(ClusterId, ClusterId)> {
        let losers: Vec<ClusterId> = self.parent.keys().copied().collect();
        let mut out: Vec<(ClusterId, ClusterId)> =
            losers.into_iter().map(|l| (l, self.find(l))).collect();
        out.sort_unstable();
        out
    }

    /// The components: members of each final cluster, each sorted, the list sorted by its
    /// first member.
    pub(crate) fn components(&mut self) -> Vec<Vec<NodeId>> {
        let mut by: BTreeMap<ClusterId, Vec<NodeId>> = BTreeMap::new();
        for (n, c) in self.assignments() {
            by.entry(c).or_default().push(n);
        }
        let mut out: Vec<Vec<NodeId>> = by.into_values().collect();
        for c in &mut out {
            c.sort_unstable();
        }
        out.sort();
        out
    }
}

/// Allocates cluster ids for one transaction.
#[derive(Debug)]
pub(crate) struct Ids {
    next: Option<ClusterId>,
}

impl Ids {
    pub(crate) fn new() -> Self {
        Ids { next: None }
    }

    async fn ensure(&mut self, tx: &mut dyn GraphTx) -> Result<()> {
        if self.next.is_none() {
            self.next = Some(tx.max_cluster_id().await?.saturating_add(1));
        }
        Ok(())
    }

    fn take(&mut self) -> ClusterId {
        let id = self.next.unwrap_or(1);
        self.next = Some(id.saturating_add(1));
        id
    }
}

/// Shared state of one write transaction.
pub(crate) struct Ctx<'a> {
    pub(crate) tx: &'a mut dyn GraphTx,
    pub(crate) policy: &'a Compiled,
    pub(crate) now: i64,
    pub(crate) ids: Ids,
    pub(crate) events: Vec<EventInsert>,
    pub(crate) report: ApplyReport,
}

fn keys_json(keys: &[String]) -> String {
    serde_json::to_string(keys).unwrap_or_else(|_| "[]".into())
}

impl Ctx<'_> {
    fn event(
        &mut self,
        kind: &str,
        cluster: ClusterId,
        other: Option<ClusterId>,
        node: Option<NodeId>,
        keys: &[String],
        detail: Option<serde_json::Value>,
    ) {
        self.events.push(EventInsert {
            at: self.now,
            kind: kind.to_string(),
            cluster,
            other,
            node,
            keys: keys_json(keys),
            detail: detail.map(|d| d.to_string()),
        });
    }

    /// Recomputes a cluster from its live members (after members left or lost keys, or after
    /// a user split). The largest component keeps the id (ties: the oldest member's); the
    /// others get new ids. Returns every remaining member: with less evidence (or a split), a
    /// merge that a user split or the phone guard refused may now be allowed, so they are
    /// linked again.
    pub(crate) async fn recompute(
        &mut self,
        cluster: ClusterId,
        trigger: Option<NodeId>,
        reason: &str,
        split: Option<i64>,
        removed: &[String],
    ) -> Result<Vec<NodeId>> {
        let rows = self.tx.cluster_members(&[cluster]).await?;
        let mut members: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
        for r in rows {
            let e = members.entry(r.node).or_default();
            if let Some(k) = r.key {
                e.push(k);
            }
        }
        if members.is_empty() {
            self.tx
                .retire_clusters(&[(cluster, None)], self.now)
                .await?;
            self.event(
                "dissolve",
                cluster,
                None,
                trigger,
                removed,
                Some(serde_json::json!({ "reason": reason })),
            );
            self.report.dissolved += 1;
            return Ok(Vec::new());
        }
        let ids: Vec<NodeId> = members.keys().copied().collect();
        let mut engine = Engine::new(self.policy.policy.phone_guard, false);
        if self.tx.has_active_splits().await? {
            let pairs = self.tx.cannot_links(&ids).await?;
            engine.add_cannot(&pairs);
        }
        let mut temp = 0i64;
        let mut alloc = || {
            temp -= 1;
            temp
        };
        for (node, keys) in &members {
            engine.link(*node, keys, None, &mut alloc);
        }
        let mut comps = engine.components();
        if comps.len() <= 1 {
            return Ok(ids);
        }
        // The largest component keeps the id; ties go to the one with the oldest member.
        let keep = comps
            .iter()
            .enumerate()
            .max_by(|(ia, a), (ib, b)| a.len().cmp(&b.len()).then(ib.cmp(ia)))
            .map_or(0, |(i, _)| i);
        comps.swap(0, keep);
        let kind = self
            .tx
            .cluster(cluster)
            .await?
            .map(|c| c.kind)
            .unwrap_or_default();
        self.ids.ensure(self.tx).await?;
        let mut created = Vec::new();
        let mut assign = Vec::new();
        for comp in comps.iter().skip(1) {
            let id = self.ids.take();
            created.push((id, kind.clone()));
            for n in comp {
                assign.push((*n, id));
            }
            self.event(
                "split",
                cluster,
                Some(id),
                trigger,
                removed,
                Some(serde_json::json!({
                    "reason": reason,
                    "split": split,
                    "sources": comp.len(),
                })),
            );
            self.report.splits += 1;
        }
        self.tx.insert_clusters(&created, self.now).await?;
        self.tx.assign(&assign).await?;
        Ok(ids)
    }

    /// Links `nodes` (new, revived, re-keyed or freed by a split) with the clusters they
    /// share merge keys with.
    pub(crate) async fn merge_pass(&mut self, nodes: &BTreeSet<NodeId>) -> Result<()> {
        if nodes.is_empty() {
            return Ok(());
        }
        let ids: Vec<NodeId> = nodes.iter().copied().collect();
        let states = self.tx.nodes_by_id(&ids).await?;
        let mut keys: HashMap<NodeId, Vec<String>> = HashMap::new();
        for k in self.tx.node_keys(&ids).await? {
            if k.role == KeyRole::Merge {
                keys.entry(k.node).or_default().push(k.key);
            }
        }
        for v in keys.values_mut() {
            v.sort();
        }
        let mut by_kind: BTreeMap<String, Vec<NodeState>> = BTreeMap::new();
        for s in states.into_iter().filter(|s| !s.deleted) {
            by_kind.entry(s.kind.clone()).or_default().push(s);
        }
        let splits = self.tx.has_active_splits().await?;
        for (kind, mut group) in by_kind {
            group.sort_by_key(|s| s.id);
            let mut all_keys: Vec<String> = group
                .iter()
                .filter_map(|s| keys.get(&s.id))
                .flatten()
                .cloned()
                .collect();
            all_keys.sort();
            all_keys.dedup();
            let holders = if all_keys.is_empty() {
                Vec::new()
            } else {
                self.tx
                    .holders(&all_keys, &[KeyRole::Merge], Some(&kind), None)
                    .await?
            };
            let mut clusters: BTreeSet<ClusterId> =
                holders.iter().filter_map(|h| h.cluster).collect();
            clusters.extend(group.iter().filter_map(|s| s.cluster));
            let cluster_ids: Vec<ClusterId> = clusters.into_iter().collect();
            let members = self.tx.cluster_members(&cluster_ids).await?;
            let mut by_cluster: BTreeMap<ClusterId, BTreeMap<NodeId, Vec<String>>> =
                BTreeMap::new();
            let mut before: HashMap<NodeId, Option<ClusterId>> = HashMap::new();
            for m in members {
                before.insert(m.node, Some(m.cluster));
                let e = by_cluster
                    .entry(m.cluster)
                    .or_default()
                    .entry(m.node)
                    .or_default();
                if let Some(k) = m.key {
                    e.push(k);
                }
            }
            for s in &group {
                before.insert(s.id, s.cluster);
            }
            let mut engine = Engine::new(self.policy.policy.phone_guard, true);
            for (c, ms) in &by_cluster {
                engine.preload(*c, ms);
            }
            if splits {
                let mut all: Vec<NodeId> = before.keys().copied().collect();
                all.sort_unstable();
                let pairs = self.tx.cannot_links(&all).await?;
                engine.add_cannot(&pairs);
            }
            self.ids.ensure(self.tx).await?;
            {
                let ids = &mut self.ids;
                let mut alloc = || ids.take();
                let empty = Vec::new();
                for s in &group {
                    let k = keys.get(&s.id).unwrap_or(&empty);
                    engine.link(s.id, k, s.cluster, &mut alloc);
                }
            }
            let created: Vec<(ClusterId, String)> =
                engine.created.iter().map(|c| (*c, kind.clone())).collect();
            self.tx.insert_clusters(&created, self.now).await?;
            let assign: Vec<(NodeId, ClusterId)> = engine
                .assignments()
                .into_iter()
                .filter(|(n, c)| before.get(n).copied().flatten() != Some(*c))
                .collect();
            self.tx.assign(&assign).await?;
            let absorbed: Vec<(ClusterId, Option<ClusterId>)> = engine
                .absorbed()
                .into_iter()
                .map(|(l, s)| (l, Some(s)))
                .collect();
            self.tx.retire_clusters(&absorbed, self.now).await?;
            for e in std::mem::take(&mut engine.events) {
                match e {
                    EngineEvent::Join {
                        cluster,
                        node,
                        keys,
                    } => {
                        self.report.joins += 1;
                        self.event("join", cluster, None, Some(node), &keys, None);
                    }
                    EngineEvent::Merge {
                        survivor,
                        absorbed,
                        node,
                        keys,
                    } => {
                        self.report.merges += 1;
                        self.event("merge", survivor, Some(absorbed), Some(node), &keys, None);
                    }
                }
            }
        }
        Ok(())
    }

    /// Follows `merged_into` from `id` to the live cluster (or the last one, retired).
    pub(crate) async fn resolve_alias(&mut self, id: ClusterId) -> Result<Option<ClusterId>> {
        resolve_alias(self.tx, id).await
    }
}

pub(crate) async fn resolve_alias(
    tx: &mut dyn GraphTx,
    id: ClusterId,
) -> Result<Option<ClusterId>> {
    let mut cur = id;
    for _ in 0..MAX_ALIAS_HOPS {
        match tx.cluster(cur).await? {
            None => return Ok(None),
            Some(c) => match c.merged_into {
                Some(next) if next != cur => cur = next,
                _ => return Ok(Some(cur)),
            },
        }
    }
    Err(
        Error::storage("canonical entity aliases form a chain too long to follow")
            .with_context("id", id),
    )
}

/// Applies a prepared batch in one transaction.
pub(crate) async fn apply(ctx: &mut Ctx<'_>, prepared: Prepared) -> Result<()> {
    let Prepared {
        writes,
        deletes,
        relation_only,
        skipped,
        ignored,
    } = prepared;
    ctx.report.skipped += skipped;
    ctx.report.unchanged += ignored;

    // What is stored now.
    let srcs: Vec<String> = writes.iter().map(|w| w.src.clone()).collect();
    let existing: HashMap<String, NodeState> = ctx
        .tx
        .nodes_by_src(&srcs)
        .await?
        .into_iter()
        .map(|s| (s.src.clone(), s))
        .collect();
    let del_origins: Vec<String> = deletes.iter().map(|(o, _)| o.clone()).collect();
    let del_versions: HashMap<&str, Option<i64>> =
        deletes.iter().map(|(o, v)| (o.as_str(), *v)).collect();
    let del_nodes = ctx.tx.nodes_by_origin(&del_origins).await?;

    // What changes.
    let changed: Vec<&NodeWrite> = writes
        .iter()
        .filter(|w| existing.get(&w.src).is_none_or(|ex| should_apply(w, ex)))
        .collect();
    ctx.report.unchanged += (writes.len() - changed.len()) as u64;
    ctx.report.applied += changed.len() as u64 + relation_only.len() as u64;

    // Deletes: by origin; a delete older than the stored version changes nothing.
    let mut tombstones: Vec<(NodeId, Option<i64>)> = Vec::new();
    let mut tombstoned: Vec<&NodeState> = Vec::new();
    for (origin, n) in &del_nodes {
        let v = del_versions.get(origin.as_str()).copied().flatten();
        let stale = matches!((v, n.version), (Some(a), Some(b)) if a < b);
        if !stale {
            tombstones.push((n.id, v));
            tombstoned.push(n);
        }
    }
    ctx.report.applied += tombstones.len() as u64;
    ctx.report.unchanged += (deletes.len() as u64).saturating_sub(tombstones.len() as u64);

    // Write source entities.
    let upserts: Vec<NodeUpsert> = changed
        .iter()
        .map(|w| NodeUpsert {
            src: w.src.clone(),
            origin: w.origin.clone(),
            connection: w.connection.clone(),
            platform: w.platform.clone(),
            object_type: w.object_type.clone(),
            source_id: w.source_id.clone(),
            stream: w.stream.clone(),
            record_id: w.record_id.clone(),
            kind: w.kind.clone(),
            version: w.version,
            updated_at: w.updated_at,
            synced_at: ctx.now,
            digest: w.digest.clone(),
            fields: w.fields.clone(),
        })
        .collect();
    let ids: HashMap<String, NodeId> = ctx.tx.upsert_nodes(&upserts).await?.into_iter().collect();
    let id_of = |w: &NodeWrite| -> Result<NodeId> {
        ids.get(&w.src).copied().ok_or_else(|| {
            Error::storage("the store did not return the id of a written source entity")
        })
    };

    // Keys: the old merge keys of updated live nodes, then the new keys.
    let updated_live: Vec<NodeId> = changed
        .iter()
        .filter(|w| existing.get(&w.src).is_some_and(|ex| !ex.deleted))
        .map(|w| id_of(w))
        .collect::<Result<_>>()?;
    let mut old_merge: HashMap<NodeId, BTreeSet<String>> = HashMap::new();
    for k in ctx.tx.node_keys(&updated_live).await? {
        if k.role == KeyRole::Merge {
            old_merge.entry(k.node).or_default().insert(k.key);
        }
    }
    let mut key_rows = Vec::new();
    let mut changed_ids = Vec::with_capacity(changed.len());
    for w in &changed {
        let id = id_of(w)?;
        changed_ids.push(id);
        for k in &w.keys {
            key_rows.push(KeyInsert {
                node: id,
                key: k.key.clone(),
                kind: w.kind.clone(),
                role: k.role,
                raw: k.raw.clone(),
            });
        }
    }
    ctx.tx.replace_keys(&changed_ids, &key_rows).await?;
    ctx.tx.tombstone_nodes(&tombstones, ctx.now).await?;

    // Relations, by the record asserting them.
    let mut origins: Vec<String> = changed.iter().map(|w| w.origin.clone()).collect();
    origins.extend(relation_only.iter().map(|(o, _)| o.clone()));
    origins.extend(del_origins.iter().cloned());
    let mut rel_rows = Vec::new();
    for w in &changed {
        for (kind, to) in &w.relations {
            rel_rows.push((w.origin.clone(), w.src.clone(), kind.clone(), to.clone()));
        }
    }
    for (origin, rows) in &relation_only {
        for (from, kind, to) in rows {
            rel_rows.push((origin.clone(), from.clone(), kind.clone(), to.clone()));
        }
    }
    ctx.tx.replace_relations(&origins, &rel_rows).await?;

    // Which clusters lost evidence, which nodes need linking.
    let mut affected: BTreeMap<ClusterId, (NodeId, Vec<String>)> = BTreeMap::new();
    let mut to_link: BTreeSet<NodeId> = BTreeSet::new();
    let mut to_clear = Vec::new();
    for w in &changed {
        let id = id_of(w)?;
        match existing.get(&w.src) {
            None => {
                to_link.insert(id);
            }
            Some(ex) if ex.deleted || ex.cluster.is_none() => {
                to_link.insert(id);
            }
            Some(ex) => {
                let cluster = ex.cluster.unwrap_or_default();
                if ex.kind != w.kind {
                    to_clear.push(id);
                    let old: Vec<String> = old_merge
                        .get(&id)
                        .map(|s| s.iter().cloned().collect())
                        .unwrap_or_default();
                    affected.entry(cluster).or_insert((id, old));
                    to_link.insert(id);
                    continue;
                }
                let new: BTreeSet<String> = w.merge_keys().map(str::to_string).collect();
                let old = old_merge.remove(&id).unwrap_or_default();
                let removed: Vec<String> = old.difference(&new).cloned().collect();
                if !removed.is_empty() {
                    affected.entry(cluster).or_insert((id, removed));
                }
                if new.difference(&old).next().is_some() {
                    to_link.insert(id);
                }
            }
        }
    }
    for n in &tombstoned {
        if let Some(c) = n.cluster {
            affected.entry(c).or_insert((n.id, Vec::new()));
        }
    }
    ctx.tx.clear_cluster(&to_clear).await?;
    for (cluster, (trigger, removed)) in affected {
        let moved = ctx
            .recompute(cluster, Some(trigger), "evidence_removed", None, &removed)
            .await?;
        to_link.extend(moved);
    }
    ctx.merge_pass(&to_link).await?;
    let events = std::mem::take(&mut ctx.events);
    ctx.tx.insert_events(&events).await?;
    Ok(())
}
