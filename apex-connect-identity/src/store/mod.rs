//! Where the entity graph lives: the [`GraphStore`] trait and its SQLite and PostgreSQL
//! (feature `postgres`) implementations.
//!
//! The store holds rows and answers set-shaped questions; the resolution logic (union-find,
//! splits, the field policy) lives above it, in [`crate::EntityGraph`], written once for every
//! backend. A backend implements [`GraphStore::begin`] and the statements of [`GraphTx`].

use std::fmt;

use async_trait::async_trait;

use apex_connect_core::Result;

use crate::key::KeyRole;

#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

#[cfg(feature = "postgres")]
pub use postgres::{PgGraphStore, WRITE_LOCK_KEY};
pub use sqlite::{MIGRATIONS_TABLE, SqliteGraphStore};

/// A source entity's row id.
pub type NodeId = i64;
/// A cluster's id (the canonical entity's id).
pub type ClusterId = i64;

/// A storage backend for the entity graph.
///
/// # Behavior
/// - [`begin`](GraphStore::begin) with `write = true` opens a transaction that excludes every
///   other writer on the same database until it commits or is dropped (SQLite:
///   `BEGIN IMMEDIATE`; PostgreSQL: a transaction-scoped advisory lock). Read transactions see
///   one consistent snapshot.
/// - A transaction dropped without [`GraphTx::commit`] changes nothing.
#[async_trait]
pub trait GraphStore: Send + Sync + fmt::Debug {
    /// Opens a transaction.
    ///
    /// # Errors
    /// `Storage` when the database cannot be reached or stays locked past its busy timeout.
    async fn begin(&self, write: bool) -> Result<Box<dyn GraphTx>>;
}

/// A source entity's state as the resolver needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// Its id.
    pub id: NodeId,
    /// Its stored source key.
    pub src: String,
    /// Its entity kind (stored name).
    pub kind: String,
    /// Its version, when the platform gave one.
    pub version: Option<i64>,
    /// The digest of its content.
    pub digest: String,
    /// Whether it was deleted at the source (a tombstone).
    pub deleted: bool,
    /// Its cluster (`None` for tombstones and nodes not yet resolved).
    pub cluster: Option<ClusterId>,
}

/// A source entity's full row, for queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// Its id.
    pub id: NodeId,
    /// Its stored source key.
    pub src: String,
    /// The connection.
    pub connection: String,
    /// The platform.
    pub platform: String,
    /// The object type.
    pub object_type: String,
    /// The platform's id.
    pub source_id: String,
    /// The stream it was last written from.
    pub stream: String,
    /// The record id it was last written from.
    pub record_id: String,
    /// Its entity kind.
    pub kind: String,
    /// Its version.
    pub version: Option<i64>,
    /// Its modification time (Unix ms).
    pub updated_at: Option<i64>,
    /// When it was last written to the graph (Unix ms).
    pub synced_at: i64,
    /// Its fields (`{"name", "attributes", "custom_fields"}` as JSON text).
    pub fields: String,
    /// Its cluster.
    pub cluster: Option<ClusterId>,
}

/// A source entity to insert or update.
#[derive(Debug, Clone)]
pub struct NodeUpsert {
    /// Stored source key (unique).
    pub src: String,
    /// Stored origin (connection, stream, record id).
    pub origin: String,
    /// Connection.
    pub connection: String,
    /// Platform.
    pub platform: String,
    /// Object type.
    pub object_type: String,
    /// The platform's id.
    pub source_id: String,
    /// Stream.
    pub stream: String,
    /// Record id.
    pub record_id: String,
    /// Entity kind.
    pub kind: String,
    /// Version.
    pub version: Option<i64>,
    /// Modification time.
    pub updated_at: Option<i64>,
    /// Write time.
    pub synced_at: i64,
    /// Content digest.
    pub digest: String,
    /// Fields as JSON text.
    pub fields: String,
}

/// One key a node asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInsert {
    /// The node.
    pub node: NodeId,
    /// The stored key.
    pub key: String,
    /// The node's entity kind.
    pub kind: String,
    /// What the key does.
    pub role: KeyRole,
    /// The raw value it came from.
    pub raw: String,
}

/// A key as stored, for queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The node asserting it.
    pub node: NodeId,
    /// The stored key.
    pub key: String,
    /// Its role.
    pub role: KeyRole,
    /// The raw value.
    pub raw: String,
}

/// A live node holding a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The key.
    pub key: String,
    /// The node.
    pub node: NodeId,
    /// The node's kind.
    pub kind: String,
    /// The node's cluster.
    pub cluster: Option<ClusterId>,
    /// The key's role for the node.
    pub role: KeyRole,
}

/// A live member of a cluster with one of its merge keys (`None` when it has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberKey {
    /// The node.
    pub node: NodeId,
    /// Its cluster.
    pub cluster: ClusterId,
    /// One merge key.
    pub key: Option<String>,
}

/// A cluster row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRow {
    /// Its id.
    pub id: ClusterId,
    /// Its entity kind.
    pub kind: String,
    /// When it was created (Unix ms).
    pub created_at: i64,
    /// The cluster it was merged into, when it was.
    pub merged_into: Option<ClusterId>,
    /// When it stopped being live (merged or dissolved).
    pub retired_at: Option<i64>,
}

/// A relation row with the node at its other end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationRow {
    /// The relation kind.
    pub kind: String,
    /// The source asserting it.
    pub from_src: String,
    /// The target.
    pub to_src: String,
    /// The cluster of the other end (`to` for outgoing, `from` for incoming), when it is a
    /// live node.
    pub other_cluster: Option<ClusterId>,
    /// The kind of the other end, when known.
    pub other_kind: Option<String>,
}

/// An event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventInsert {
    /// When (Unix ms).
    pub at: i64,
    /// `join`, `merge`, `split`, `unsplit`, `dissolve`.
    pub kind: String,
    /// The cluster it happened to (the survivor of a merge, the cluster split).
    pub cluster: ClusterId,
    /// The other cluster (absorbed by a merge, created by a split).
    pub other: Option<ClusterId>,
    /// The source entity that caused it.
    pub node: Option<NodeId>,
    /// The keys that joined (JSON array of stored keys).
    pub keys: String,
    /// Free-form detail (JSON).
    pub detail: Option<String>,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Its id (grows with time).
    pub id: i64,
    /// The event.
    pub event: EventInsert,
    /// The source key of its node, when it had one.
    pub node_src: Option<String>,
}

/// A recorded user split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitRow {
    /// Its id.
    pub id: i64,
    /// The cluster it split.
    pub cluster: ClusterId,
    /// When (Unix ms).
    pub created_at: i64,
    /// The user's note.
    pub note: Option<String>,
    /// Whether it still holds (not undone).
    pub active: bool,
}

/// Counts over the graph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct GraphStats {
    /// Live source entities.
    pub sources: u64,
    /// Deleted source entities (tombstones).
    pub deleted_sources: u64,
    /// Live canonical entities.
    pub canonical: u64,
    /// Stored identity keys.
    pub keys: u64,
    /// Stored relations.
    pub relations: u64,
    /// Recorded events.
    pub events: u64,
    /// Active user splits.
    pub active_splits: u64,
}

/// One transaction on a [`GraphStore`]: the statements the resolver and the queries run.
/// Every method works on sets (ids, keys) so that a backend answers each in one statement.
#[async_trait]
pub trait GraphTx: Send {
    /// Nodes (live or tombstones) with these source keys.
    async fn nodes_by_src(&mut self, srcs: &[String]) -> Result<Vec<NodeState>>;
    /// Live nodes last written from these origins, with their origin.
    async fn nodes_by_origin(&mut self, origins: &[String]) -> Result<Vec<(String, NodeState)>>;
    /// Nodes with these ids.
    async fn nodes_by_id(&mut self, ids: &[NodeId]) -> Result<Vec<NodeState>>;
    /// Inserts or updates nodes by source key (clearing any tombstone; the cluster is kept);
    /// returns `(src, id)` of each.
    async fn upsert_nodes(&mut self, nodes: &[NodeUpsert]) -> Result<Vec<(String, NodeId)>>;
    /// Makes nodes tombstones: deleted, without cluster or keys; `version` when given.
    async fn tombstone_nodes(&mut self, nodes: &[(NodeId, Option<i64>)], at: i64) -> Result<()>;
    /// Clears the cluster of nodes (before they are resolved again).
    async fn clear_cluster(&mut self, nodes: &[NodeId]) -> Result<()>;
    /// The keys of these nodes.
    async fn node_keys(&mut self, nodes: &[NodeId]) -> Result<Vec<KeyRecord>>;
    /// Replaces the keys of `nodes` with `keys`.
    async fn replace_keys(&mut self, nodes: &[NodeId], keys: &[KeyInsert]) -> Result<()>;
    /// Replaces the relations asserted by `origins` with `rows` (`origin, from, kind, to`).
    async fn replace_relations(
        &mut self,
        origins: &[String],
        rows: &[(String, String, String, String)],
    ) -> Result<()>;
    /// Live nodes holding any of `keys` with one of `roles`, of `kind` when given; at most
    /// `limit` rows (`None`: all).
    async fn holders(
        &mut self,
        keys: &[String],
        roles: &[KeyRole],
        kind: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<Holder>>;
    /// Live members of `clusters`, each with each of its merge keys.
    async fn cluster_members(&mut self, clusters: &[ClusterId]) -> Result<Vec<MemberKey>>;
    /// Whether any user split is active.
    async fn has_active_splits(&mut self) -> Result<bool>;
    /// Active cannot-link pairs touching any of `nodes`.
    async fn cannot_links(&mut self, nodes: &[NodeId]) -> Result<Vec<(NodeId, NodeId)>>;
    /// The highest cluster id ever used (0 for none).
    async fn max_cluster_id(&mut self) -> Result<ClusterId>;
    /// Creates clusters `(id, kind)`.
    async fn insert_clusters(&mut self, clusters: &[(ClusterId, String)], at: i64) -> Result<()>;
    /// Sets nodes' clusters.
    async fn assign(&mut self, pairs: &[(NodeId, ClusterId)]) -> Result<()>;
    /// Retires clusters: merged into another (`Some`) or dissolved (`None`).
    async fn retire_clusters(
        &mut self,
        clusters: &[(ClusterId, Option<ClusterId>)],
        at: i64,
    ) -> Result<()>;
    /// Records events.
    async fn insert_events(&mut self, events: &[EventInsert]) -> Result<()>;
    /// Records a user split and its cannot-link pairs; returns its id.
    async fn insert_split(
        &mut self,
        cluster: ClusterId,
        at: i64,
        note: Option<&str>,
        pairs: &[(NodeId, NodeId)],
    ) -> Result<i64>;
    /// Activates or deactivates a split; returns it as it was before, if it exists.
    async fn set_split_active(
        &mut self,
        split: i64,
        active: bool,
        at: i64,
    ) -> Result<Option<SplitRow>>;
    /// The nodes a split keeps apart.
    async fn split_nodes(&mut self, split: i64) -> Result<Vec<NodeId>>;
    /// Recent splits, newest first.
    async fn splits(&mut self, limit: u32) -> Result<Vec<SplitRow>>;
    /// A cluster row.
    async fn cluster(&mut self, id: ClusterId) -> Result<Option<ClusterRow>>;
    /// Full rows of the live members of a cluster, at most `limit`.
    async fn member_rows(&mut self, cluster: ClusterId, limit: u32) -> Result<Vec<NodeRow>>;
    /// The node with this source key, live or not.
    async fn node_row_by_src(&mut self, src: &str) -> Result<Option<NodeRow>>;
    /// Relations asserted by any of `srcs` (outgoing), at most `limit`.
    async fn relations_from(&mut self, srcs: &[String], limit: u32) -> Result<Vec<RelationRow>>;
    /// Relations pointing at any of `srcs` from live nodes (incoming), at most `limit`.
    async fn relations_to(&mut self, srcs: &[String], limit: u32) -> Result<Vec<RelationRow>>;
    /// Events, newest first: of `kinds` (all when empty), about `cluster` (as `cluster` or
    /// `other`) when given, at most `limit`.
    async fn events(
        &mut self,
        kinds: &[&str],
        cluster: Option<ClusterId>,
        limit: u32,
    ) -> Result<Vec<EventRow>>;
    /// Counts.
    async fn stats(&mut self) -> Result<GraphStats>;
    /// Every live node with its kind, cluster and each merge key (for audits), in node order
    /// from `after`, at most `limit` nodes.
    async fn audit_page(
        &mut self,
        after: NodeId,
        limit: u32,
    ) -> Result<Vec<(NodeId, String, Option<ClusterId>, Option<String>)>>;
    /// Live clusters without live members, and live nodes whose cluster is not live.
    async fn audit_orphans(&mut self) -> Result<(Vec<ClusterId>, Vec<NodeId>)>;
    /// Commits.
    async fn commit(self: Box<Self>) -> Result<()>;
}
