//! A consistency check of the whole graph, independent of the resolver's own bookkeeping.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use apex_connect_core::Result;

use crate::policy::Policy;
use crate::store::{ClusterId, GraphTx, NodeId};

const PAGE: u32 = 10_000;
const MAX_LISTED: usize = 100;

/// What [`crate::EntityGraph::audit`] found.
///
/// The invariants checked:
/// 1. every live source entity is in exactly one live canonical entity, and every live
///    canonical entity has a live source entity;
/// 2. a canonical entity's sources are of one kind;
/// 3. its sources hang together: connected through shared merge keys (no cluster is held
///    together by evidence that was removed);
/// 4. no active user split is violated (no cannot-link pair in one canonical entity);
/// 5. nothing is missed: two canonical entities of one kind that share a merge key are kept
///    apart by a user split or by the phone guard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditReport {
    /// Live source entities checked.
    pub sources: u64,
    /// Live canonical entities checked.
    pub canonical: u64,
    /// What is wrong (at most 100 listed), empty when the graph is consistent.
    pub violations: Vec<String>,
}

impl AuditReport {
    /// Whether every invariant holds.
    pub fn is_consistent(&self) -> bool {
        self.violations.is_empty()
    }

    fn violation(&mut self, v: String) {
        if self.violations.len() < MAX_LISTED {
            self.violations.push(v);
        }
    }
}

struct Node {
    kind: String,
    cluster: Option<ClusterId>,
    keys: Vec<String>,
}

fn emails(keys: &BTreeSet<&str>) -> (HashSet<String>, HashSet<String>) {
    let mut e = HashSet::new();
    let mut d = HashSet::new();
    for k in keys {
        if let Some(addr) = k.strip_prefix("email:") {
            e.insert(addr.to_string());
            if let Some((_, dom)) = addr.rsplit_once('@') {
                d.insert(dom.to_string());
            }
        }
    }
    (e, d)
}

pub(crate) async fn audit(tx: &mut dyn GraphTx, policy: &Policy) -> Result<AuditReport> {
    let mut report = AuditReport::default();
    let mut nodes: BTreeMap<NodeId, Node> = BTreeMap::new();
    let mut after = 0;
    loop {
        let rows = tx.audit_page(after, PAGE).await?;
        if rows.is_empty() {
            break;
        }
        for (id, kind, cluster, key) in rows {
            after = after.max(id);
            let n = nodes.entry(id).or_insert(Node {
                kind,
                cluster,
                keys: Vec::new(),
            });
            if let Some(k) = key {
                n.keys.push(k);
            }
        }
    }
    report.sources = nodes.len() as u64;
    let (empty, orphans) = tx.audit_orphans().await?;
    for c in empty {
        report.violation(format!(
            "canonical entity {c} is live without a live source"
        ));
    }
    for n in orphans {
        report.violation(format!("source entity {n} has no live canonical entity"));
    }
    let mut clusters: BTreeMap<ClusterId, Vec<NodeId>> = BTreeMap::new();
    for (id, n) in &nodes {
        if let Some(c) = n.cluster {
            clusters.entry(c).or_default().push(*id);
        }
    }
    report.canonical = clusters.len() as u64;
    let ids: Vec<NodeId> = nodes.keys().copied().collect();
    let cannot: HashSet<(NodeId, NodeId)> = tx
        .cannot_links(&ids)
        .await?
        .into_iter()
        .map(|(a, b)| (a.min(b), a.max(b)))
        .collect();

    for (c, members) in &clusters {
        // 2. One kind.
        let kinds: BTreeSet<&str> = members.iter().map(|m| nodes[m].kind.as_str()).collect();
        if kinds.len() > 1 {
            report.violation(format!("canonical entity {c} mixes kinds {kinds:?}"));
        }
        // 3. Connected through shared merge keys.
        if members.len() > 1 {
            let mut by_key: HashMap<&str, Vec<NodeId>> = HashMap::new();
            for m in members {
                for k in &nodes[m].keys {
                    by_key.entry(k.as_str()).or_default().push(*m);
                }
            }
            let mut seen: HashSet<NodeId> = HashSet::new();
            let mut stack = vec![members[0]];
            while let Some(m) = stack.pop() {
                if !seen.insert(m) {
                    continue;
                }
                for k in &nodes[&m].keys {
                    for other in by_key.get(k.as_str()).into_iter().flatten() {
                        if !seen.contains(other) {
                            stack.push(*other);
                        }
                    }
                }
            }
            if seen.len() != members.len() {
                report.violation(format!(
                    "canonical entity {c}: {} of {} sources are not connected by shared identities",
                    members.len() - seen.len(),
                    members.len()
                ));
            }
        }
        // 4. No cannot-link pair inside.
        if !cannot.is_empty() {
            let set: HashSet<NodeId> = members.iter().copied().collect();
            if cannot
                .iter()
                .any(|(a, b)| set.contains(a) && set.contains(b))
            {
                report.violation(format!("canonical entity {c} violates a user split"));
            }
        }
    }

    // 5. Maximality.
    let mut holders: HashMap<(&str, &str), BTreeSet<ClusterId>> = HashMap::new();
    for n in nodes.values() {
        if let Some(c) = n.cluster {
            for k in &n.keys {
                holders
                    .entry((n.kind.as_str(), k.as_str()))
                    .or_default()
                    .insert(c);
            }
        }
    }
    let cluster_keys = |c: ClusterId| -> BTreeSet<&str> {
        clusters
            .get(&c)
            .into_iter()
            .flatten()
            .flat_map(|m| nodes[m].keys.iter().map(String::as_str))
            .collect()
    };
    let mut checked: HashSet<(ClusterId, ClusterId)> = HashSet::new();
    for cs in holders.values() {
        if cs.len() < 2 {
            continue;
        }
        let cs: Vec<ClusterId> = cs.iter().copied().collect();
        for (i, &a) in cs.iter().enumerate() {
            for &b in &cs[i + 1..] {
                if !checked.insert((a, b)) {
                    continue;
                }
                let (ka, kb) = (cluster_keys(a), cluster_keys(b));
                let shared: Vec<&str> = ka.intersection(&kb).copied().collect();
                let split_apart = clusters[&a].iter().any(|x| {
                    clusters[&b]
                        .iter()
                        .any(|y| cannot.contains(&((*x).min(*y), (*x).max(*y))))
                });
                let (ea, da) = emails(&ka);
                let (eb, db) = emails(&kb);
                let guarded = policy.phone_guard
                    && shared.iter().all(|k| k.starts_with("phone:"))
                    && ea.is_disjoint(&eb)
                    && !da.is_disjoint(&db);
                if !split_apart && !guarded {
                    report.violation(format!(
                        "canonical entities {a} and {b} share {shared:?} but were not merged"
                    ));
                }
            }
        }
    }
    Ok(report)
}
