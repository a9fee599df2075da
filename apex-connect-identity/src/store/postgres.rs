//! `PgGraphStore`: the entity graph in PostgreSQL (sqlx, feature `postgres`), alone or in the
//! state database of `apex_connect_core::PgStore`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};

use apex_connect_core::store::PgStoreOptions;
// Errors mapped as the state store maps them (class 22 `InvalidInput`, else `Storage`).
use apex_connect_core::store::pg_err as db_err;
use apex_connect_core::{Error, Result};

use super::{
    ClusterId, ClusterRow, EventInsert, EventRow, GraphStats, GraphStore, GraphTx, Holder,
    KeyInsert, KeyRecord, MIGRATIONS_TABLE, MemberKey, NodeId, NodeRow, NodeState, NodeUpsert,
    RelationRow, SplitRow,
};
use crate::key::KeyRole;

/// The key of the transaction-level advisory lock (`pg_advisory_xact_lock`) every graph write
/// transaction takes first: the bytes of `"apex-egw"`. Fixed, so that every process writing
/// the graph of one database waits for the same lock.
pub const WRITE_LOCK_KEY: i64 = 0x6170_6578_2d65_6777;

/// Connections the pool opens at most (writes are serialized anyway; reads run beside them).
const MAX_CONNECTIONS: u32 = 4;

fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations/postgres");
    m.dangerous_set_table_name(MIGRATIONS_TABLE);
    m
}

fn decode(e: sqlx::Error) -> Error {
    Error::storage("cannot decode a graph row").set_source(e)
}

/// `s` storable as PostgreSQL `text`, which cannot hold NUL: each becomes U+FFFD. Applied to
/// every string written and to every string looked up, so lookups still match. (Source keys
/// and origins are JSON, where a NUL is already escaped.)
fn pg(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

fn pg_owned(s: &str) -> String {
    pg(s).into_owned()
}

fn pg_all(items: &[String]) -> Vec<String> {
    items.iter().map(|s| pg_owned(s)).collect()
}

/// The entity graph in PostgreSQL (feature `postgres`).
///
/// # Behavior
/// - The tables of the SQLite store (prefixed `eg_`, `BIGSERIAL` ids); versioned migrations
///   (`migrations/postgres/`) tracked in [`MIGRATIONS_TABLE`], run at open (idempotent, under
///   sqlx's migration lock when several processes open at once).
/// - Can share the state database: [`PgGraphStore::from_pool`] with the pool of
///   `apex_connect_core::PgStore` (its migrations, tracked in `_sqlx_migrations`, and these
///   do not interfere).
/// - Write transactions run at `READ COMMITTED` and first take the transaction-level advisory
///   lock [`WRITE_LOCK_KEY`] (`pg_advisory_xact_lock`): one graph writer at a time across every
///   process sharing the database, exactly as SQLite's single writer; each statement after
///   the lock sees what the previous writer committed. The lock is released at commit or
///   rollback (a dropped transaction, a lost connection). Writers wait for it without timeout.
/// - Read transactions take no lock: `REPEATABLE READ READ ONLY`, one consistent snapshot.
#[derive(Clone)]
pub struct PgGraphStore {
    pool: PgPool,
}

impl fmt::Debug for PgGraphStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgGraphStore")
            .field("pool_size", &self.pool.size())
            .finish()
    }
}

impl PgGraphStore {
    /// Connects to the database at a `postgres://user@host:port/database` URL and runs the
    /// migrations. As with `apex_connect_core::PgStore::connect`, the URL must not carry the
    /// password: it comes from `PGPASSWORD` or `~/.pgpass`.
    ///
    /// # Errors
    /// `Config` for a malformed URL or one carrying a password (the message never echoes
    /// it); `Storage` when the database cannot be reached or migrated.
    pub async fn connect(url: &str) -> Result<Self> {
        // The state store's validation: a postgres:// URL without a password.
        let checked = PgStoreOptions::from_url(url)?;
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::config("the PostgreSQL URL is malformed").set_source(e))?
            .application_name("apex-connect-identity");
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(10))
            .idle_timeout(Some(Duration::from_secs(600)))
            .max_lifetime(Some(Duration::from_secs(1800)))
            .connect_with(options)
            .await
            .map_err(|e| {
                Error::storage("cannot connect to the PostgreSQL database")
                    .with_context("database", checked.target())
                    .set_source(e)
            })?;
        Self::from_pool(pool).await
    }

    /// Uses an open pool (e.g. `PgStore::pool()`, to keep the graph in the state database)
    /// and runs the graph's migrations on it.
    ///
    /// # Errors
    /// `Storage` when the migrations fail.
    pub async fn from_pool(pool: PgPool) -> Result<Self> {
        migrator()
            .run(&pool)
            .await
            .map_err(|e| Error::storage("cannot migrate the entity graph").set_source(e))?;
        Ok(PgGraphStore { pool })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl GraphStore for PgGraphStore {
    async fn begin(&self, write: bool) -> Result<Box<dyn GraphTx>> {
        let tx = if write {
            // READ COMMITTED whatever the server's default: every statement after the lock
            // must see the previous writer's commit (under REPEATABLE READ the snapshot would
            // date from the lock statement, taken before waiting).
            let mut tx = self
                .pool
                .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
                .await
                .map_err(db_err("cannot begin a transaction"))?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(WRITE_LOCK_KEY)
                .execute(&mut *tx)
                .await
                .map_err(db_err("cannot take the entity graph's write lock"))?;
            tx
        } else {
            self.pool
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(db_err("cannot begin a transaction"))?
        };
        Ok(Box::new(PgGraphTx { tx }))
    }
}

struct PgGraphTx {
    tx: Transaction<'static, Postgres>,
}

fn node_state(r: &PgRow) -> Result<NodeState> {
    Ok(NodeState {
        id: r.try_get("id").map_err(decode)?,
        src: r.try_get("src").map_err(decode)?,
        kind: r.try_get("kind").map_err(decode)?,
        version: r.try_get("version").map_err(decode)?,
        digest: r.try_get("digest").map_err(decode)?,
        deleted: r.try_get::<i16, _>("deleted").map_err(decode)? != 0,
        cluster: r.try_get("cluster").map_err(decode)?,
    })
}

fn node_row(r: &PgRow) -> Result<NodeRow> {
    Ok(NodeRow {
        id: r.try_get("id").map_err(decode)?,
        src: r.try_get("src").map_err(decode)?,
        connection: r.try_get("connection").map_err(decode)?,
        platform: r.try_get("platform").map_err(decode)?,
        object_type: r.try_get("object_type").map_err(decode)?,
        source_id: r.try_get("source_id").map_err(decode)?,
        stream: r.try_get("stream").map_err(decode)?,
        record_id: r.try_get("record_id").map_err(decode)?,
        kind: r.try_get("kind").map_err(decode)?,
        version: r.try_get("version").map_err(decode)?,
        updated_at: r.try_get("updated_at").map_err(decode)?,
        synced_at: r.try_get("synced_at").map_err(decode)?,
        fields: r.try_get("fields").map_err(decode)?,
        cluster: r.try_get("cluster").map_err(decode)?,
    })
}

/// The columns of `NodeState` (a macro, so that statements stay `&'static str`).
macro_rules! node_state_cols {
    () => {
        "id, src, kind, version, digest, deleted, cluster"
    };
}
/// The columns of `NodeRow`.
macro_rules! node_row_cols {
    () => {
        "id, src, connection, platform, object_type, source_id, stream, record_id, kind, \
         version, updated_at, synced_at, fields, cluster"
    };
}

fn split_row(r: &PgRow) -> Result<SplitRow> {
    Ok(SplitRow {
        id: r.try_get("id").map_err(decode)?,
        cluster: r.try_get("cluster").map_err(decode)?,
        created_at: r.try_get("created_at").map_err(decode)?,
        note: r.try_get("note").map_err(decode)?,
        active: r.try_get::<i16, _>("active").map_err(decode)? != 0,
    })
}

fn relation_row(r: &PgRow) -> Result<RelationRow> {
    Ok(RelationRow {
        kind: r.try_get("kind").map_err(decode)?,
        from_src: r.try_get("from_src").map_err(decode)?,
        to_src: r.try_get("to_src").map_err(decode)?,
        other_cluster: r.try_get("other_cluster").map_err(decode)?,
        other_kind: r.try_get("other_kind").map_err(decode)?,
    })
}

fn key_role(r: &PgRow) -> Result<KeyRole> {
    KeyRole::parse(&r.try_get::<String, _>("role").map_err(decode)?)
}

fn i64_limit(limit: u32) -> i64 {
    i64::from(limit)
}

// Sets are bound as arrays (`= ANY($1)`, `UNNEST($1, ..)`): one statement per call, whatever
// the number of ids or rows, and one statement text per call site (no per-size shapes as on
// SQLite).
#[async_trait]
impl GraphTx for PgGraphTx {
    async fn nodes_by_src(&mut self, srcs: &[String]) -> Result<Vec<NodeState>> {
        let sql = concat!(
            "SELECT ",
            node_state_cols!(),
            " FROM eg_nodes WHERE src = ANY($1)"
        );
        let rows = sqlx::query(sql)
            .bind(pg_all(srcs))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err("cannot read source entities"))?;
        rows.iter().map(node_state).collect()
    }

    async fn nodes_by_origin(&mut self, origins: &[String]) -> Result<Vec<(String, NodeState)>> {
        let sql = concat!(
            "SELECT origin, ",
            node_state_cols!(),
            " FROM eg_nodes WHERE origin = ANY($1) AND deleted = 0"
        );
        let rows = sqlx::query(sql)
            .bind(pg_all(origins))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err("cannot read source entities"))?;
        rows.iter()
            .map(|r| Ok((r.try_get("origin").map_err(decode)?, node_state(r)?)))
            .collect()
    }

    async fn nodes_by_id(&mut self, ids: &[NodeId]) -> Result<Vec<NodeState>> {
        let sql = concat!(
            "SELECT ",
            node_state_cols!(),
            " FROM eg_nodes WHERE id = ANY($1)"
        );
        let rows = sqlx::query(sql)
            .bind(ids)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err("cannot read source entities"))?;
        rows.iter().map(node_state).collect()
    }

    async fn upsert_nodes(&mut self, nodes: &[NodeUpsert]) -> Result<Vec<(String, NodeId)>> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        // One row per source key (the last wins, as successive updates would): PostgreSQL
        // refuses an `ON CONFLICT DO UPDATE` that touches a row twice.
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            last.insert(n.src.as_str(), i);
        }
        let rows: Vec<&NodeUpsert> = nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| last.get(n.src.as_str()) == Some(i))
            .map(|(_, n)| n)
            .collect();
        let col = |f: fn(&NodeUpsert) -> &str| -> Vec<String> {
            rows.iter().map(|n| pg_owned(f(n))).collect()
        };
        let returned = sqlx::query(
            "INSERT INTO eg_nodes (src, origin, connection, platform, object_type, source_id, \
               stream, record_id, kind, version, updated_at, synced_at, deleted, digest, fields) \
             SELECT src, origin, connection, platform, object_type, source_id, stream, \
               record_id, kind, version, updated_at, synced_at, 0, digest, fields \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
               $6::text[], $7::text[], $8::text[], $9::text[], $10::int8[], $11::int8[], \
               $12::int8[], $13::text[], $14::text[]) \
               AS v(src, origin, connection, platform, object_type, source_id, stream, \
               record_id, kind, version, updated_at, synced_at, digest, fields) \
             ON CONFLICT (src) DO UPDATE SET origin = excluded.origin, \
               stream = excluded.stream, record_id = excluded.record_id, \
               kind = excluded.kind, version = excluded.version, \
               updated_at = excluded.updated_at, synced_at = excluded.synced_at, \
               deleted = 0, digest = excluded.digest, fields = excluded.fields \
             RETURNING id, src",
        )
        .bind(col(|n| &n.src))
        .bind(col(|n| &n.origin))
        .bind(col(|n| &n.connection))
        .bind(col(|n| &n.platform))
        .bind(col(|n| &n.object_type))
        .bind(col(|n| &n.source_id))
        .bind(col(|n| &n.stream))
        .bind(col(|n| &n.record_id))
        .bind(col(|n| &n.kind))
        .bind(rows.iter().map(|n| n.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|n| n.updated_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|n| n.synced_at).collect::<Vec<_>>())
        .bind(col(|n| &n.digest))
        .bind(col(|n| &n.fields))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err("cannot write source entities"))?;
        returned
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("src").map_err(decode)?,
                    r.try_get("id").map_err(decode)?,
                ))
            })
            .collect()
    }

    async fn tombstone_nodes(&mut self, nodes: &[(NodeId, Option<i64>)], at: i64) -> Result<()> {
        if nodes.is_empty() {
            return Ok(());
        }
        let ids: Vec<NodeId> = nodes.iter().map(|(id, _)| *id).collect();
        let versions: Vec<Option<i64>> = nodes.iter().map(|(_, v)| *v).collect();
        sqlx::query(
            "UPDATE eg_nodes n SET deleted = 1, cluster = NULL, digest = '', synced_at = $3, \
               version = COALESCE(v.version, n.version) \
             FROM UNNEST($1::int8[], $2::int8[]) AS v(id, version) WHERE n.id = v.id",
        )
        .bind(&ids)
        .bind(&versions)
        .bind(at)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err("cannot delete source entities"))?;
        sqlx::query("DELETE FROM eg_keys WHERE node = ANY($1)")
            .bind(&ids)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("cannot delete identity keys"))?;
        Ok(())
    }

    async fn clear_cluster(&mut self, nodes: &[NodeId]) -> Result<()> {
        sqlx::query("UPDATE eg_nodes SET cluster = NULL WHERE id = ANY($1)")
            .bind(nodes)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("cannot update source entities"))?;
        Ok(())
    }

    async fn node_keys(&mut self, nodes: &[NodeId]) -> Result<Vec<KeyRecord>> {
        let rows = sqlx::query("SELECT node, key, role, raw FROM eg_keys WHERE node = ANY($1)")
            .bind(nodes)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err("cannot read identity keys"))?;
        rows.iter()
            .map(|r| {
                Ok(KeyRecord {
                    node: r.try_get("node").map_err(decode)?,
                    key: r.try_get("key").map_err(decode)?,
                    role: key_role(r)?,
                    raw: r.try_get("raw").map_err(decode)?,
                })
            })
            .collect()
    }

    async fn replace_keys(&mut self, nodes: &[NodeId], keys: &[KeyInsert]) -> Result<()> {
        sqlx::query("DELETE FROM eg_keys WHERE node = ANY($1)")
            .bind(nodes)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("cannot replace identity keys"))?;
        if keys.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO eg_keys (node, key, kind, role, raw) \
             SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[]) \
             ON CONFLICT (node, key) DO NOTHING",
        )
        .bind(keys.iter().map(|k| k.node).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| pg_owned(&k.key)).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| pg_owned(&k.kind)).collect::<Vec<_>>())
        .bind(
            keys.iter()
                .map(|k| k.role.as_str().to_string())
                .collect::<Vec<_>>(),
        )
        .bind(keys.iter().map(|k| pg_owned(&k.raw)).collect::<Vec<_>>())
        .execute(&mut *self.tx)
        .await
        .map_err(db_err("cannot write identity keys"))?;
        Ok(())
    }

    async fn replace_relations(
        &mut self,
        origins: &[String],
        rows: &[(String, String, String, String)],
    ) -> Result<()> {
        sqlx::query("DELETE FROM eg_relations WHERE origin = ANY($1)")
            .bind(pg_all(origins))
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("cannot replace relations"))?;
        if rows.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO eg_relations (origin, from_src, kind, to_src) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(rows.iter().map(|r| pg_owned(&r.0)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| pg_owned(&r.1)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| pg_owned(&r.2)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| pg_owned(&r.3)).collect::<Vec<_>>())
        .execute(&mut *self.tx)
        .await
        .map_err(db_err("cannot write relations"))?;
        Ok(())
    }

    async fn holders(
        &mut self,
        keys: &[String],
        roles: &[KeyRole],
        kind: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<Holder>> {
        let roles: Vec<String> = roles.iter().map(|r| r.as_str().to_string()).collect();
        let rows = sqlx::query(
            "SELECT k.key, k.node, k.kind, k.role, n.cluster FROM eg_keys k \
             JOIN eg_nodes n ON n.id = k.node \
             WHERE k.key = ANY($1) AND ($2::text IS NULL OR k.kind = $2) \
               AND k.role = ANY($3) AND n.deleted = 0 LIMIT $4",
        )
        .bind(pg_all(keys))
        .bind(kind.map(pg_owned))
        .bind(roles)
        .bind(limit.map(i64::from))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err("cannot look identity keys up"))?;
        rows.iter()
            .map(|r| {
                Ok(Holder {
                    key: r.try_get("key").map_err(decode)?,
                    node: r.try_get("node").map_err(decode)?,
                    kind: r.try_get("kind").map_err(decode)?,
                    cluster: r.try_get("cluster").map_err(decode)?,
                    role: key_role(r)?,
                })
            })
            .collect()
    }

    async fn cluster_members(&mut self, clusters: &[ClusterId]) -> Result<Vec<MemberKey>> {
        let rows = sqlx::query(
            "SELECT n.id, n.cluster, k.key FROM eg_nodes n \
             LEFT JOIN eg_keys k ON k.node = n.id AND k.role = 'merge' \
             WHERE n.cluster = ANY($1) AND n.deleted = 0",
        )
        .bind(clusters)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err("cannot read cluster members"))?;
        rows.iter()
            .map(|r| {
                Ok(MemberKey {
                    node: r.try_get("id").map_err(decode)?,
                    cluster: r.try_get("cluster").map_err(decode)?,
                    key: r.try_get("key").map_err(decode)?,
                })
            })
            .collect()
    }

    async fn has_active_splits(&mut self) -> Result<bool> {
        let (any,): (bool,) =
            sqlx::query_as("SELECT EXISTS (SELECT 1 FROM eg_splits WHERE active = 1)")
                .fetch_one(&mut *self.tx)
                .await
                .map_err(db_err("cannot read splits"))?;
        Ok(any)
    }

    async fn cannot_links(&mut self, nodes: &[NodeId]) -> Result<Vec<(NodeId, NodeId)>> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT c.a, c.b FROM eg_cannot_link c JOIN eg_splits s ON s.id = c.split \
             WHERE s.active = 1 AND c.a = ANY($1) \
             UNION SELECT c.a, c.b FROM eg_cannot_link c JOIN eg_splits s ON s.id = c.split \
             WHERE s.active = 1 AND c.b = ANY($1)",
        )
        .bind(nodes)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err("cannot read split constraints"))?;
        Ok(rows)
    }

    async fn max_cluster_id(&mut self) -> Result<ClusterId> {
        let (max,): (Option<i64>,) = sqlx::query_as("SELECT MAX(id) FROM eg_clusters")
            .fetch_one(&mut *self.tx)
            .await
            .map_err(db_err("cannot read clusters"))?;
        Ok(max.unwrap_or(0))
    }

    async fn insert_clusters(&mut self, clusters: &[(ClusterId, String)], at: i64) -> Result<()> {
        if clusters.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO eg_clusters (id, kind, created_at) \
             SELECT id, kind, $3 FROM UNNEST($1::int8[], $2::text[]) AS v(id, kind)",
        )
        .bind(clusters.iter().map(|c| c.0).collect::<Vec<_>>())
        .bind(clusters.iter().map(|c| pg_owned(&c.1)).collect::<Vec<_>>())
        .bind(at)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err("cannot create canonical entities"))?;
        Ok(())
    }

    async fn assign(&mut self, pairs: &[(NodeId, ClusterId)]) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE eg_nodes n SET cluster = v.cluster \
             FROM UNNEST($1::int8[], $2::int8[]) AS v(node, cluster) WHERE n.id = v.node",
        )
        .bind(pairs.iter().map(|p| p.0).collect::<Vec<_>>())
        .bind(pairs.iter().map(|p| p.1).collect::<Vec<_>>())
        .execute(&mut *self.tx)
        .await
        .map_err(db_err("cannot assign canonical entities"))?;
        Ok(())
    }

    async fn retire_clusters(
        &mut self,
        clusters: &[(ClusterId, Option<ClusterId>)],
        at: i64,
    ) -> Result<()> {
        if clusters.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE eg_clusters c SET merged_into = v.into_id, retired_at = $3 \
             FROM UNNEST($1::int8[], $2::int8[]) AS v(id, into_id) WHERE c.id = v.id",
        )
        .bind(clusters.iter().map(|c| c.0).collect::<Vec<_>>())
        .bind(clusters.iter().map(|c| c.1).collect::<Vec<_>>())
        .bind(at)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err("cannot retire canonical entities"))?;
        Ok(())
    }

    async fn insert_events(&mut self, events: &[EventInsert]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        // `WITH ORDINALITY ... ORDER BY`: ids grow in the order the events were given.
        sqlx::query(
            "INSERT INTO eg_events (at, kind, cluster, other, node, keys, detail) \
             SELECT at, kind, cluster, other, node, keys, detail \
             FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::int8[], \
               $6::text[], $7::text[]) WITH ORDINALITY \
               AS v(at, kind, cluster, other, node, keys, detail, ord) ORDER BY ord",
        )
        .bind(events.iter().map(|e| e.at).collect::<Vec<_>>())
        .bind(events.iter().map(|e| pg_owned(&e.kind)).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.cluster).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.other).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.node).collect::<Vec<_>>())
        .bind(events.iter().map(|e| pg_owned(&e.keys)).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.detail.as_deref().map(pg_owned))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *self.tx)
        .await
        .map_err(db_err("cannot record events"))?;
        Ok(())
    }

    async fn insert_split(
        &mut self,
        cluster: ClusterId,
        at: i64,
        note: Option<&str>,
        pairs: &[(NodeId, NodeId)],
    ) -> Result<i64> {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO eg_splits (cluster, created_at, note, active) VALUES ($1, $2, $3, 1) \
             RETURNING id",
        )
        .bind(cluster)
        .bind(at)
        .bind(note.map(pg_owned))
        .fetch_one(&mut *self.tx)
        .await
        .map_err(db_err("cannot record a split"))?;
        if !pairs.is_empty() {
            sqlx::query(
                "INSERT INTO eg_cannot_link (split, a, b) \
                 SELECT $1, a, b FROM UNNEST($2::int8[], $3::int8[]) AS v(a, b) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(pairs.iter().map(|p| p.0).collect::<Vec<_>>())
            .bind(pairs.iter().map(|p| p.1).collect::<Vec<_>>())
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("cannot record a split"))?;
        }
        Ok(id)
    }

    async fn set_split_active(
        &mut self,
        split: i64,
        active: bool,
        at: i64,
    ) -> Result<Option<SplitRow>> {
        let row = sqlx::query(
            "SELECT id, cluster, created_at, note, active FROM eg_splits WHERE id = $1",
        )
        .bind(split)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(db_err("cannot read splits"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let before = split_row(&row)?;
        sqlx::query("UPDATE eg_splits SET active = $2, changed_at = $3 WHERE id = $1")
            .bind(split)
            .bind(i16::from(active))
            .bind(at)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("cannot update a split"))?;
        Ok(Some(before))
    }

    async fn split_nodes(&mut self, split: i64) -> Result<Vec<NodeId>> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT a FROM eg_cannot_link WHERE split = $1 \
             UNION SELECT b FROM eg_cannot_link WHERE split = $1",
        )
        .bind(split)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err("cannot read a split"))?;
        Ok(rows.into_iter().map(|(n,)| n).collect())
    }

    async fn splits(&mut self, limit: u32) -> Result<Vec<SplitRow>> {
        let rows = sqlx::query(
            "SELECT id, cluster, created_at, note, active FROM eg_splits ORDER BY id DESC LIMIT $1",
        )
        .bind(i64_limit(limit))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err("cannot read splits"))?;
        rows.iter().map(split_row).collect()
    }

    async fn cluster(&mut self, id: ClusterId) -> Result<Option<ClusterRow>> {
        let row = sqlx::query(
            "SELECT id, kind, created_at, merged_into, retired_at FROM eg_clusters WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(db_err("cannot read a canonical entity"))?;
        row.map(|r| {
            Ok(ClusterRow {
                id: r.try_get("id").map_err(decode)?,
                kind: r.try_get("kind").map_err(decode)?,
                created_at: r.try_get("created_at").map_err(decode)?,
                merged_into: r.try_get("merged_into").map_err(decode)?,
                retired_at: r.try_get("retired_at").map_err(decode)?,
            })
        })
        .transpose()
    }

    async fn member_rows(&mut self, cluster: ClusterId, limit: u32) -> Result<Vec<NodeRow>> {
        let sql = concat!(
            "SELECT ",
            node_row_cols!(),
            " FROM eg_nodes WHERE cluster = $1 AND deleted = 0 ORDER BY id LIMIT $2"
        );
        let rows = sqlx::query(sql)
            .bind(cluster)
            .bind(i64_limit(limit))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err("cannot read source entities"))?;
        rows.iter().map(node_row).collect()
    }

    async fn node_row_by_src(&mut self, src: &str) -> Result<Option<NodeRow>> {
        let sql = concat!("SELECT ", node_row_cols!(), " FROM eg_nodes WHERE src = $1");
        let row = sqlx::query(sql)
            .bind(pg(src).as_ref())
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(db_err("cannot read a source entity"))?;
        row.as_ref().map(node_row).transpose()
    }

    async fn relations_from(&mut self, srcs: &[String], limit: u32) -> Result<Vec<RelationRow>> {
        let rows = sqlx::query(
            "SELECT r.kind, r.from_src, r.to_src, n.cluster AS other_cluster, \
               n.kind AS other_kind \
             FROM eg_relations r LEFT JOIN eg_nodes n ON n.src = r.to_src AND n.deleted = 0 \
             WHERE r.from_src = ANY($1) LIMIT $2",
        )
        .bind(pg_all(srcs))
        .bind(i64_limit(limit))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err("cannot read relations"))?;
        rows.iter().map(relation_row).collect()
    }

    async fn relations_to(&mut self, srcs: &[String], limit: u32) -> Result<Vec<RelationRow>> {
        let rows = sqlx::query(
            "SELECT r.kind, r.from_src, r.to_src, n.cluster AS other_cluster, \
               n.kind AS other_kind \
             FROM eg_relations r JOIN eg_nodes n ON n.src = r.from_src AND n.deleted = 0 \
             WHERE r.to_src = ANY($1) LIMIT $2",
        )
        .bind(pg_all(srcs))
        .bind(i64_limit(limit))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err("cannot read relations"))?;
        rows.iter().map(relation_row).collect()
    }

    async fn events(
        &mut self,
        kinds: &[&str],
        cluster: Option<ClusterId>,
        limit: u32,
    ) -> Result<Vec<EventRow>> {
        let kinds: Vec<String> = kinds.iter().map(|k| pg_owned(k)).collect();
        let rows = sqlx::query(
            "SELECT e.id, e.at, e.kind, e.cluster, e.other, e.node, e.keys, e.detail, \
               n.src AS node_src \
             FROM eg_events e LEFT JOIN eg_nodes n ON n.id = e.node \
             WHERE (cardinality($1::text[]) = 0 OR e.kind = ANY($1)) \
               AND ($2::int8 IS NULL OR e.cluster = $2 OR e.other = $2) \
             ORDER BY e.id DESC LIMIT $3",
        )
        .bind(kinds)
        .bind(cluster)
        .bind(i64_limit(limit))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err("cannot read events"))?;
        rows.iter()
            .map(|r| {
                Ok(EventRow {
                    id: r.try_get("id").map_err(decode)?,
                    node_src: r.try_get("node_src").map_err(decode)?,
                    event: EventInsert {
                        at: r.try_get("at").map_err(decode)?,
                        kind: r.try_get("kind").map_err(decode)?,
                        cluster: r.try_get("cluster").map_err(decode)?,
                        other: r.try_get("other").map_err(decode)?,
                        node: r.try_get("node").map_err(decode)?,
                        keys: r.try_get("keys").map_err(decode)?,
                        detail: r.try_get("detail").map_err(decode)?,
                    },
                })
            })
            .collect()
    }

    async fn stats(&mut self) -> Result<GraphStats> {
        let row = sqlx::query(
            "SELECT \
               (SELECT COUNT(*) FROM eg_nodes WHERE deleted = 0) AS sources, \
               (SELECT COUNT(*) FROM eg_nodes WHERE deleted = 1) AS deleted_sources, \
               (SELECT COUNT(*) FROM eg_clusters WHERE retired_at IS NULL) AS canonical, \
               (SELECT COUNT(*) FROM eg_keys) AS keys, \
               (SELECT COUNT(*) FROM eg_relations) AS relations, \
               (SELECT COUNT(*) FROM eg_events) AS events, \
               (SELECT COUNT(*) FROM eg_splits WHERE active = 1) AS active_splits",
        )
        .fetch_one(&mut *self.tx)
        .await
        .map_err(db_err("cannot count the graph"))?;
        let get = |name: &str| -> Result<u64> {
            Ok(u64::try_from(row.try_get::<i64, _>(name).map_err(decode)?).unwrap_or(0))
        };
        Ok(GraphStats {
            sources: get("sources")?,
            deleted_sources: get("deleted_sources")?,
            canonical: get("canonical")?,
            keys: get("keys")?,
            relations: get("relations")?,
            events: get("events")?,
            active_splits: get("active_splits")?,
        })
    }

    async fn audit_page(
        &mut self,
        after: NodeId,
        limit: u32,
    ) -> Result<Vec<(NodeId, String, Option<ClusterId>, Option<String>)>> {
        let rows = sqlx::query(
            "WITH page AS (SELECT id, kind, cluster FROM eg_nodes \
               WHERE deleted = 0 AND id > $1 ORDER BY id LIMIT $2) \
             SELECT p.id, p.kind, p.cluster, k.key FROM page p \
             LEFT JOIN eg_keys k ON k.node = p.id AND k.role = 'merge' ORDER BY p.id",
        )
        .bind(after)
        .bind(i64_limit(limit))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err("cannot read the graph"))?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id").map_err(decode)?,
                    r.try_get("kind").map_err(decode)?,
                    r.try_get("cluster").map_err(decode)?,
                    r.try_get("key").map_err(decode)?,
                ))
            })
            .collect()
    }

    async fn audit_orphans(&mut self) -> Result<(Vec<ClusterId>, Vec<NodeId>)> {
        let empty: Vec<(i64,)> = sqlx::query_as(
            "SELECT c.id FROM eg_clusters c WHERE c.retired_at IS NULL AND NOT EXISTS \
             (SELECT 1 FROM eg_nodes n WHERE n.cluster = c.id AND n.deleted = 0) LIMIT 1000",
        )
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err("cannot audit the graph"))?;
        let orphans: Vec<(i64,)> = sqlx::query_as(
            "SELECT n.id FROM eg_nodes n LEFT JOIN eg_clusters c ON c.id = n.cluster \
             WHERE n.deleted = 0 AND (n.cluster IS NULL OR c.id IS NULL OR c.retired_at IS NOT NULL) \
             LIMIT 1000",
        )
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err("cannot audit the graph"))?;
        Ok((
            empty.into_iter().map(|(c,)| c).collect(),
            orphans.into_iter().map(|(n,)| n).collect(),
        ))
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx
            .commit()
            .await
            .map_err(db_err("cannot commit the entity graph"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_become_replacement_characters() {
        assert_eq!(pg("a\0b"), "a\u{FFFD}b");
        assert!(matches!(pg("plain"), Cow::Borrowed("plain")));
        assert_eq!(WRITE_LOCK_KEY.to_be_bytes(), *b"apex-egw");
    }
}
