//! `EntityGraph`: the entry point: resolution (through the sink) and the query API.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use apex_connect_core::store::Clock;
use apex_connect_core::{Batch, Error, Identity, Result};
use tokio::sync::Mutex;

use crate::audit::{self, AuditReport};
use crate::extract::SourceKey;
use crate::key::{IdentityKey, KeyKind, KeyRole};
use crate::normalize::{self, registrable_domain};
use crate::policy::{Compiled, Policy};
use crate::query::{
    self, CanonicalEntity, CanonicalId, EntitySummary, MergeEvent, SplitInfo, SplitOutcome,
};
use crate::resolve::{self, ApplyReport, Ctx, Ids, MAX_SPLIT_PAIRS};
use crate::store::{GraphStats, GraphStore, GraphTx, NodeId, SqliteGraphStore};

/// The entity graph: source entities from every platform, resolved into canonical entities.
///
/// Cheap to clone (shared store and policy). Writes go through [`EntityGraph::apply`] (what
/// [`crate::EntityGraphSink`] calls for each batch); one write at a time per graph value and,
/// through the store's write transactions, per database.
///
/// # Examples
/// ```
/// # tokio_test_block_on(async {
/// use apex_connect_core::{Batch, ConnectionId, Entity, EntityKind, Identity, Record, SourceRef, StreamId};
/// use apex_connect_identity::EntityGraph;
///
/// let graph = EntityGraph::open_in_memory().await?;
/// let (conn, stream) = (ConnectionId::from("acme-hubspot"), StreamId::from("contacts"));
/// let records = vec![Record::upsert(stream.clone(), "51", serde_json::json!({}))];
/// let entities = vec![Some(
///     Entity::new(EntityKind::Person, SourceRef::new("hubspot", "contact", "51"))
///         .with_name("Ann Lee")
///         .with_identity(Identity::email("Ann@Acme.com")),
/// )];
/// graph.apply(Batch::new(&conn, &stream, &records).with_entities(&entities)).await?;
///
/// let found = graph.find(&Identity::email(" ann@ACME.com")).await?;
/// let ann = graph.canonical(found[0].id).await?.expect("resolved");
/// assert_eq!(ann.name.as_deref(), Some("Ann Lee"));
/// # Ok::<(), apex_connect_core::Error>(())
/// # }).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct EntityGraph {
    store: Arc<dyn GraphStore>,
    policy: Arc<Compiled>,
    write: Arc<Mutex<()>>,
    clock: Clock,
}

impl fmt::Debug for EntityGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntityGraph")
            .field("store", &self.store)
            .field("policy", &self.policy.policy)
            .finish_non_exhaustive()
    }
}

impl EntityGraph {
    /// A graph over `store`, with the default [`Policy`].
    pub fn new(store: Arc<dyn GraphStore>) -> Self {
        EntityGraph {
            store,
            policy: Policy::default().compile(),
            write: Arc::new(Mutex::new(())),
            clock: Clock::system(),
        }
    }

    /// Opens (creating) a SQLite file for the graph. The file may be the state database.
    ///
    /// # Errors
    /// `Storage` when it cannot be opened or migrated.
    pub async fn open_sqlite(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::new(Arc::new(SqliteGraphStore::open(path).await?)))
    }

    /// Connects to a PostgreSQL database for the graph (feature `postgres`): a
    /// `postgres://user@host:port/database` URL without the password (it comes from
    /// `PGPASSWORD` or `~/.pgpass`). The database may be the state database of
    /// `apex_connect_core::PgStore`. Graph writes of every process sharing it are serialized
    /// by an advisory lock (see [`PgGraphStore`](crate::PgGraphStore)).
    ///
    /// # Errors
    /// `Config` for a malformed URL or one carrying a password; `Storage` when the database
    /// cannot be reached or migrated.
    #[cfg(feature = "postgres")]
    pub async fn open_postgres(url: &str) -> Result<Self> {
        Ok(Self::new(Arc::new(
            crate::store::PgGraphStore::connect(url).await?,
        )))
    }

    /// A graph in a private in-memory SQLite database (tests, examples).
    ///
    /// # Errors
    /// `Storage` when SQLite fails.
    pub async fn open_in_memory() -> Result<Self> {
        Ok(Self::new(Arc::new(
            SqliteGraphStore::connect("sqlite::memory:").await?,
        )))
    }

    /// Uses `policy` (normalization for what is written from now on, the field policy for
    /// queries).
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy.compile();
        self
    }

    /// Uses `clock` for event and sync times.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy.policy
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn GraphStore> {
        &self.store
    }

    /// Resolves a batch of records with their entities (one transaction): writes the source
    /// entities, their identities and relations, splits canonical entities that lost their
    /// evidence, and joins or merges through shared identities.
    ///
    /// # Behavior
    /// - Upserts replace a stored source entity when newer (version), or, with equal or no
    ///   versions, when their content differs; replays change nothing.
    /// - A delete (by record id) makes the source entity a tombstone: it leaves its canonical
    ///   entity, which is recomputed and split if the rest no longer hangs together; a
    ///   canonical entity left without sources is dissolved.
    /// - Records without an entity (the sink got no mapping) are counted as unchanged.
    ///
    /// # Errors
    /// `Storage` on database failures (nothing of the batch is applied).
    pub async fn apply(&self, batch: Batch<'_>) -> Result<ApplyReport> {
        let prepared = resolve::prepare(&self.policy, &batch);
        let _guard = self.write.lock().await;
        let mut tx = self.store.begin(true).await?;
        let mut ctx = Ctx {
            tx: tx.as_mut(),
            policy: &self.policy,
            now: self.clock.now_ms(),
            ids: Ids::new(),
            events: Vec::new(),
            report: ApplyReport::default(),
        };
        resolve::apply(&mut ctx, prepared).await?;
        let report = ctx.report;
        tx.commit().await?;
        Ok(report)
    }

    async fn read(&self) -> Result<Box<dyn GraphTx>> {
        self.store.begin(false).await
    }

    /// The canonical entity `id` (following merges: an absorbed id gives the entity it was
    /// merged into), with its sources, identities, fields with provenance and relations.
    /// `None` for an unknown id or an entity whose sources were all deleted.
    ///
    /// # Errors
    /// `Storage` on database failures.
    pub async fn canonical(&self, id: CanonicalId) -> Result<Option<CanonicalEntity>> {
        let mut tx = self.read().await?;
        query::canonical(tx.as_mut(), &self.policy.policy, id.0).await
    }

    /// The keys an identity is looked up by, normalized as they are at ingest (phones in the
    /// default region).
    pub fn lookup_keys(&self, identity: &Identity) -> Vec<IdentityKey> {
        let norm = &self.policy.normalizer;
        match identity {
            Identity::Email(v) => norm
                .email(v)
                .map(|e| vec![IdentityKey::new(KeyKind::Email, e.address)])
                .unwrap_or_default(),
            Identity::Phone(v) => normalize::phone(v, self.policy.policy.default_region)
                .map(|p| vec![IdentityKey::new(KeyKind::Phone, p)])
                .unwrap_or_default(),
            Identity::Domain(v) => registrable_domain(v)
                .map(|d| vec![IdentityKey::new(KeyKind::Domain, d)])
                .unwrap_or_default(),
            Identity::Handle { source, value } => normalize::handle(source, value)
                .map(|(s, v)| vec![IdentityKey::new(KeyKind::Handle, format!("{s}:{v}"))])
                .unwrap_or_default(),
            #[allow(unreachable_patterns)]
            _ => Vec::new(),
        }
    }

    /// The canonical entities holding an identity, normalized the way ingest normalizes it
    /// (a phone without prefix is read in the policy's default region). Weak identities
    /// (role mailboxes, generic domains) are found too; the inferred links of people to their
    /// email domain are not (find the organization by `Identity::Domain`).
    ///
    /// # Errors
    /// `Storage` on database failures.
    pub async fn find(&self, identity: &Identity) -> Result<Vec<EntitySummary>> {
        let keys = self.lookup_keys(identity);
        self.find_keys(&keys).await
    }

    /// The canonical entities holding any of these (normalized) keys.
    ///
    /// # Errors
    /// `Storage` on database failures.
    pub async fn find_keys(&self, keys: &[IdentityKey]) -> Result<Vec<EntitySummary>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let stored: Vec<String> = keys.iter().map(IdentityKey::to_stored).collect();
        let mut tx = self.read().await?;
        let holders = tx
            .holders(
                &stored,
                &[KeyRole::Merge, KeyRole::Weak],
                None,
                Some(query::MAX_SOURCES_IN_VIEW),
            )
            .await?;
        let node_ids: Vec<NodeId> = holders.iter().map(|h| h.node).collect();
        let srcs: BTreeMap<NodeId, String> = tx
            .nodes_by_id(&node_ids)
            .await?
            .into_iter()
            .map(|s| (s.id, s.src))
            .collect();
        let mut by_cluster: BTreeMap<i64, (String, Vec<SourceKey>)> = BTreeMap::new();
        for h in holders {
            let Some(c) = h.cluster else {
                continue;
            };
            let e = by_cluster
                .entry(c)
                .or_insert_with(|| (h.kind.clone(), Vec::new()));
            if let Some(s) = srcs.get(&h.node).and_then(|s| SourceKey::from_stored(s))
                && !e.1.contains(&s)
            {
                e.1.push(s);
            }
        }
        let mut out = Vec::with_capacity(by_cluster.len());
        for (id, (kind, matched)) in by_cluster {
            let name = query::summary_name(tx.as_mut(), &self.policy.policy, id).await?;
            out.push(EntitySummary {
                id: CanonicalId(id),
                kind,
                name,
                matched,
            });
        }
        Ok(out)
    }

    /// The canonical entity a source entity belongs to.
    ///
    /// # Errors
    /// `Storage` on database failures.
    pub async fn find_source(&self, source: &SourceKey) -> Result<Option<CanonicalId>> {
        let mut tx = self.read().await?;
        Ok(tx
            .node_row_by_src(&source.to_stored())
            .await?
            .and_then(|n| n.cluster)
            .map(CanonicalId))
    }

    /// The canonical entities of many source entities (aligned with `sources`; `None` for
    /// unknown or deleted ones).
    ///
    /// # Errors
    /// `Storage` on database failures.
    pub async fn find_sources(&self, sources: &[SourceKey]) -> Result<Vec<Option<CanonicalId>>> {
        let srcs: Vec<String> = sources.iter().map(SourceKey::to_stored).collect();
        let mut tx = self.read().await?;
        let found: std::collections::HashMap<String, Option<i64>> = tx
            .nodes_by_src(&srcs)
            .await?
            .into_iter()
            .map(|s| (s.src, if s.deleted { None } else { s.cluster }))
            .collect();
        Ok(srcs
            .iter()
            .map(|s| found.get(s).copied().flatten().map(CanonicalId))
            .collect())
    }

    /// The most recent joins and merges, newest first, each with the identities that joined
    /// them and the source entity whose arrival did it.
    ///
    /// # Errors
    /// `Storage` on database failures.
    pub async fn recent_merges(&self, limit: u32) -> Result<Vec<MergeEvent>> {
        let mut tx = self.read().await?;
        let rows = tx.events(&["join", "merge"], None, limit).await?;
        query::events_view(tx.as_mut(), rows).await
    }

    /// The most recent events of every kind (joins, merges, splits, unsplits, dissolutions).
    ///
    /// # Errors
    /// `Storage` on database failures.
    pub async fn recent_events(&self, limit: u32) -> Result<Vec<MergeEvent>> {
        let mut tx = self.read().await?;
        let rows = tx.events(&[], None, limit).await?;
        query::events_view(tx.as_mut(), rows).await
    }

    /// The events of one canonical entity (as the survivor or the other side), newest first.
    ///
    /// # Errors
    /// `Storage` on database failures.
    pub async fn history(&self, id: CanonicalId, limit: u32) -> Result<Vec<MergeEvent>> {
        let mut tx = self.read().await?;
        let rows = tx.events(&[], Some(id.0), limit).await?;
        query::events_view(tx.as_mut(), rows).await
    }

    /// A user correction: the listed source entities are not the same as the other sources of
    /// canonical entity `id`. Records the split (negative constraints between each listed
    /// source and each other one, kept across syncs: they are never merged again until
    /// [`EntityGraph::unsplit`]) and recomputes the entity.
    ///
    /// # Errors
    /// `NotFound` for an unknown or dissolved id; `InvalidInput` when a listed source is not a
    /// live source of the entity, or the list is empty or names all of them; `Storage` on
    /// database failures.
    pub async fn split(
        &self,
        id: CanonicalId,
        sources: &[SourceKey],
        note: Option<&str>,
    ) -> Result<SplitOutcome> {
        let _guard = self.write.lock().await;
        let mut tx = self.store.begin(true).await?;
        let now = self.clock.now_ms();
        let mut ctx = Ctx {
            tx: tx.as_mut(),
            policy: &self.policy,
            now,
            ids: Ids::new(),
            events: Vec::new(),
            report: ApplyReport::default(),
        };
        let cluster = ctx
            .resolve_alias(id.0)
            .await?
            .ok_or_else(|| not_found(id))?;
        if ctx
            .tx
            .cluster(cluster)
            .await?
            .is_none_or(|c| c.retired_at.is_some())
        {
            return Err(not_found(id));
        }
        let members = ctx.tx.member_rows(cluster, u32::MAX).await?;
        let wanted: BTreeSet<String> = sources.iter().map(SourceKey::to_stored).collect();
        let selected: Vec<NodeId> = members
            .iter()
            .filter(|n| wanted.contains(&n.src))
            .map(|n| n.id)
            .collect();
        if selected.len() != wanted.len() {
            return Err(Error::invalid_input(
                "a listed source entity is not a live source of this canonical entity",
            )
            .with_context("id", id));
        }
        let rest: Vec<NodeId> = members
            .iter()
            .map(|n| n.id)
            .filter(|n| !selected.contains(n))
            .collect();
        if selected.is_empty() || rest.is_empty() {
            return Err(Error::invalid_input(
                "a split needs at least one listed source and one other source",
            )
            .with_context("id", id));
        }
        if selected.len().saturating_mul(rest.len()) > MAX_SPLIT_PAIRS {
            return Err(Error::invalid_input("canonical entity too large to split")
                .with_context("id", id)
                .with_context("sources", members.len()));
        }
        let mut pairs = Vec::with_capacity(selected.len() * rest.len());
        for &a in &selected {
            for &b in &rest {
                pairs.push((a.min(b), a.max(b)));
            }
        }
        let split = ctx.tx.insert_split(cluster, now, note, &pairs).await?;
        let freed: BTreeSet<NodeId> = ctx
            .recompute(cluster, None, "user", Some(split), &[])
            .await?
            .into_iter()
            .collect();
        ctx.merge_pass(&freed).await?;
        let all: BTreeSet<NodeId> = members.iter().map(|n| n.id).collect();
        let events = std::mem::take(&mut ctx.events);
        ctx.tx.insert_events(&events).await?;
        let ids: Vec<NodeId> = all.iter().copied().collect();
        let states = ctx.tx.nodes_by_id(&ids).await?;
        let mut clusters: BTreeMap<CanonicalId, Vec<SourceKey>> = BTreeMap::new();
        for s in states {
            if let (Some(c), Some(k)) = (s.cluster, SourceKey::from_stored(&s.src)) {
                clusters.entry(CanonicalId(c)).or_default().push(k);
            }
        }
        tx.commit().await?;
        Ok(SplitOutcome { split, clusters })
    }

    /// Undoes a user split: its constraints are dropped and its sources merge again where
    /// their identities say so. Returns `false` when the split was not active.
    ///
    /// # Errors
    /// `NotFound` for an unknown split; `Storage` on database failures.
    pub async fn unsplit(&self, split: i64) -> Result<bool> {
        let _guard = self.write.lock().await;
        let mut tx = self.store.begin(true).await?;
        let now = self.clock.now_ms();
        let mut ctx = Ctx {
            tx: tx.as_mut(),
            policy: &self.policy,
            now,
            ids: Ids::new(),
            events: Vec::new(),
            report: ApplyReport::default(),
        };
        let before = ctx
            .tx
            .set_split_active(split, false, now)
            .await?
            .ok_or_else(|| {
                Error::new(apex_connect_core::ErrorKind::NotFound, "no such split")
                    .with_context("split", split)
            })?;
        if !before.active {
            return Ok(false);
        }
        let nodes: BTreeSet<NodeId> = ctx.tx.split_nodes(split).await?.into_iter().collect();
        ctx.merge_pass(&nodes).await?;
        let cluster = ctx
            .resolve_alias(before.cluster)
            .await?
            .unwrap_or(before.cluster);
        ctx.events.push(crate::store::EventInsert {
            at: now,
            kind: "unsplit".into(),
            cluster,
            other: None,
            node: None,
            keys: "[]".into(),
            detail: Some(serde_json::json!({ "split": split }).to_string()),
        });
        let events = std::mem::take(&mut ctx.events);
        ctx.tx.insert_events(&events).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Recent user splits, newest first.
    ///
    /// # Errors
    /// `Storage` on database failures.
    pub async fn splits(&self, limit: u32) -> Result<Vec<SplitInfo>> {
        let mut tx = self.read().await?;
        Ok(tx
            .splits(limit)
            .await?
            .into_iter()
            .map(|s| SplitInfo {
                id: s.id,
                cluster: CanonicalId(s.cluster),
                created_at: s.created_at,
                note: s.note,
                active: s.active,
            })
            .collect())
    }

    /// Counts over the graph.
    ///
    /// # Errors
    /// `Storage` on database failures.
    pub async fn stats(&self) -> Result<GraphStats> {
        let mut tx = self.read().await?;
        tx.stats().await
    }

    /// Checks the graph's invariants (see [`AuditReport`]). Reads the whole graph (page by
    /// page): for tests and maintenance, not for every request.
    ///
    /// # Errors
    /// `Storage` on database failures.
    pub async fn audit(&self) -> Result<AuditReport> {
        let mut tx = self.read().await?;
        audit::audit(tx.as_mut(), &self.policy.policy).await
    }
}

fn not_found(id: CanonicalId) -> Error {
    Error::new(
        apex_connect_core::ErrorKind::NotFound,
        "no such canonical entity",
    )
    .with_context("id", id)
}
