//! `SqliteGraphStore`: the entity graph in SQLite (sqlx), alone or in the state database.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};

use apex_connect_core::store::{WriteGate, WriteTurn};
use apex_connect_core::{Error, Result};

use super::{
    ClusterId, ClusterRow, EventInsert, EventRow, GraphStats, GraphStore, GraphTx, Holder,
    KeyInsert, KeyRecord, MemberKey, NodeId, NodeRow, NodeState, NodeUpsert, RelationRow, SplitRow,
};
use crate::key::KeyRole;

/// The table sqlx records the graph's applied migrations in: distinct from the state store's
/// `_sqlx_migrations`, so both migrate one shared file independently.
pub const MIGRATIONS_TABLE: &str = "_apex_identity_migrations";

/// Ids or keys per `IN (SELECT value FROM json_each(?))` statement.
const CHUNK: usize = 1000;
/// Most rows per multi-row `VALUES` statement (at most 14 columns: far under SQLite's
/// 32,766 bound parameters).
const VALUES_ROWS: usize = 128;

/// Splits `n` rows into statements of [`VALUES_ROWS`] rows and a remainder written as powers
/// of two, so that each bulk statement comes in at most 8 shapes (the prepared-statement cache
/// stays small and warm).
fn chunk_sizes(n: usize) -> Vec<usize> {
    let mut out = vec![VALUES_ROWS; n / VALUES_ROWS];
    let mut rest = n % VALUES_ROWS;
    let mut p = VALUES_ROWS / 2;
    while rest > 0 {
        if rest >= p {
            out.push(p);
            rest -= p;
        }
        p /= 2;
    }
    out
}

/// `head VALUES (?, ..), (?, ..) tail` for `rows` rows of `cols` columns. Only placeholders are
/// generated: no value is ever part of the text.
fn values_sql(head: &str, cols: usize, rows: usize, tail: &str) -> AssertSqlSafe<String> {
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * (cols * 2 + 3) + 8);
    sql.push_str(head);
    sql.push_str(" VALUES ");
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..cols {
            if c > 0 {
                sql.push(',');
            }
            sql.push('?');
        }
        sql.push(')');
    }
    sql.push(' ');
    sql.push_str(tail);
    AssertSqlSafe(sql)
}

/// Consecutive slices of `items` sized by [`chunk_sizes`].
fn slices<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut start = 0;
    chunk_sizes(items.len()).into_iter().map(move |n| {
        let s = &items[start..start + n];
        start += n;
        s
    })
}
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Page cache per connection, in KiB (`PRAGMA cache_size`).
const CACHE_KIB: u32 = 64 * 1024;

fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations/sqlite");
    m.dangerous_set_table_name(MIGRATIONS_TABLE);
    m
}

fn db_err(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| Error::storage(what).set_source(e)
}

/// The entity graph in SQLite.
///
/// # Behavior
/// - Tables are prefixed `eg_`; migrations are versioned files (`migrations/sqlite/`) tracked
///   in [`MIGRATIONS_TABLE`], run at open (idempotent).
/// - Can share the state database: [`SqliteGraphStore::from_pool`] with the pool of
///   `apex_connect_core::SqliteStore` (its migrations and these do not interfere).
/// - Write transactions start with `BEGIN IMMEDIATE`: one writer at a time, across processes
///   too (others wait up to the busy timeout, 10 s).
#[derive(Clone)]
pub struct SqliteGraphStore {
    pool: SqlitePool,
    gate: Option<WriteGate>,
}

impl fmt::Debug for SqliteGraphStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteGraphStore")
            .field("pool_size", &self.pool.size())
            .finish()
    }
}

impl SqliteGraphStore {
    /// Opens (creating if needed) the database file at `path` (WAL, `synchronous=NORMAL`) and
    /// runs the migrations.
    ///
    /// # Errors
    /// `Storage` when the file cannot be opened or migrated.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        Self::with_options(options, false).await
    }

    /// Opens a database with `options` of the caller's choosing (the store still sets WAL,
    /// `synchronous=NORMAL`, the busy timeout and a 64 MiB page cache on top; pragmas given in
    /// `options` afterwards, e.g. a larger `cache_size`, win).
    ///
    /// # Errors
    /// `Storage` when it cannot be opened or migrated.
    pub async fn connect_with(options: SqliteConnectOptions) -> Result<Self> {
        Self::with_options(options, false).await
    }

    /// Opens the database at a `sqlite:` URL (`sqlite::memory:` for a private in-memory one).
    ///
    /// # Errors
    /// `Config` for a malformed URL; `Storage` when it cannot be opened or migrated.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::config("not a valid sqlite: URL").set_source(e))?;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        Self::with_options(options, in_memory).await
    }

    async fn with_options(options: SqliteConnectOptions, in_memory: bool) -> Result<Self> {
        // A larger page cache than SQLite's 2 MiB default: resolution looks keys and source
        // entities up all over their indexes.
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("cache_size", format!("-{}", CACHE_KIB));
        let pool = SqlitePoolOptions::new()
            .max_connections(if in_memory { 1 } else { 4 })
            .min_connections(if in_memory { 1 } else { 0 })
            .idle_timeout(if in_memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(db_err("cannot open the SQLite database"))?;
        Self::from_pool(pool).await
    }

    /// Uses an open pool (e.g. the state store's, to keep the graph in the state database)
    /// and runs the graph's migrations on it.
    ///
    /// # Errors
    /// `Storage` when the migrations fail.
    pub async fn from_pool(pool: SqlitePool) -> Result<Self> {
        migrator()
            .run(&pool)
            .await
            .map_err(|e| Error::storage("cannot migrate the entity graph").set_source(e))?;
        Ok(SqliteGraphStore { pool, gate: None })
    }

    /// Takes a turn at `gate` around each write transaction: give it the state store's
    /// ([`SqliteStore::write_gate`](apex_connect_core::store::SqliteStore::write_gate)) when
    /// the graph lives in the state database, so the graph's writes queue with the store's
    /// instead of meeting them in SQLite's busy handler.
    pub fn with_write_gate(mut self, gate: WriteGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl GraphStore for SqliteGraphStore {
    async fn begin(&self, write: bool) -> Result<Box<dyn GraphTx>> {
        let turn = match (&self.gate, write) {
            (Some(gate), true) => Some(gate.turn().await),
            _ => None,
        };
        let tx = if write {
            self.pool.begin_with("BEGIN IMMEDIATE").await
        } else {
            self.pool.begin().await
        }
        .map_err(db_err("cannot begin a transaction"))?;
        Ok(Box::new(SqliteGraphTx { tx, _turn: turn }))
    }
}

struct SqliteGraphTx {
    tx: Transaction<'static, Sqlite>,
    /// Held until the transaction is over (fields drop in order: the transaction first).
    _turn: Option<WriteTurn>,
}

fn ids_json(ids: &[i64]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".into())
}

fn strs_json(s: &[String]) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "[]".into())
}

fn decode(e: sqlx::Error) -> Error {
    Error::storage("cannot decode a graph row").set_source(e)
}

fn node_state(r: &SqliteRow) -> Result<NodeState> {
    Ok(NodeState {
        id: r.try_get("id").map_err(decode)?,
        src: r.try_get("src").map_err(decode)?,
        kind: r.try_get("kind").map_err(decode)?,
        version: r.try_get("version").map_err(decode)?,
        digest: r.try_get("digest").map_err(decode)?,
        deleted: r.try_get::<i64, _>("deleted").map_err(decode)? != 0,
        cluster: r.try_get("cluster").map_err(decode)?,
    })
}

fn node_row(r: &SqliteRow) -> Result<NodeRow> {
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

fn split_row(r: &SqliteRow) -> Result<SplitRow> {
    Ok(SplitRow {
        id: r.try_get("id").map_err(decode)?,
        cluster: r.try_get("cluster").map_err(decode)?,
        created_at: r.try_get("created_at").map_err(decode)?,
        note: r.try_get("note").map_err(decode)?,
        active: r.try_get::<i64, _>("active").map_err(decode)? != 0,
    })
}

fn relation_row(r: &SqliteRow) -> Result<RelationRow> {
    Ok(RelationRow {
        kind: r.try_get("kind").map_err(decode)?,
        from_src: r.try_get("from_src").map_err(decode)?,
        to_src: r.try_get("to_src").map_err(decode)?,
        other_cluster: r.try_get("other_cluster").map_err(decode)?,
        other_kind: r.try_get("other_kind").map_err(decode)?,
    })
}

impl SqliteGraphTx {
    async fn states(&mut self, sql: &'static str, param: String) -> Result<Vec<NodeState>> {
        let rows = sqlx::query(sql)
            .bind(param)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err("cannot read source entities"))?;
        rows.iter().map(node_state).collect()
    }
}

#[async_trait]
impl GraphTx for SqliteGraphTx {
    async fn nodes_by_src(&mut self, srcs: &[String]) -> Result<Vec<NodeState>> {
        let mut out = Vec::with_capacity(srcs.len());
        for chunk in srcs.chunks(CHUNK) {
            let sql = concat!(
                "SELECT ",
                node_state_cols!(),
                " FROM eg_nodes WHERE src IN (SELECT value FROM json_each(?1))"
            );
            out.extend(self.states(sql, strs_json(chunk)).await?);
        }
        Ok(out)
    }

    async fn nodes_by_origin(&mut self, origins: &[String]) -> Result<Vec<(String, NodeState)>> {
        let mut out = Vec::new();
        for chunk in origins.chunks(CHUNK) {
            let sql = concat!(
                "SELECT origin, ",
                node_state_cols!(),
                " FROM eg_nodes WHERE origin IN (SELECT value FROM json_each(?1)) AND deleted = 0"
            );
            let rows = sqlx::query(sql)
                .bind(strs_json(chunk))
                .fetch_all(&mut *self.tx)
                .await
                .map_err(db_err("cannot read source entities"))?;
            for r in &rows {
                out.push((r.try_get("origin").map_err(decode)?, node_state(r)?));
            }
        }
        Ok(out)
    }

    async fn nodes_by_id(&mut self, ids: &[NodeId]) -> Result<Vec<NodeState>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let sql = concat!(
                "SELECT ",
                node_state_cols!(),
                " FROM eg_nodes WHERE id IN (SELECT value FROM json_each(?1))"
            );
            out.extend(self.states(sql, ids_json(chunk)).await?);
        }
        Ok(out)
    }

    async fn upsert_nodes(&mut self, nodes: &[NodeUpsert]) -> Result<Vec<(String, NodeId)>> {
        let mut out = Vec::with_capacity(nodes.len());
        for chunk in slices(nodes) {
            let sql = values_sql(
                "INSERT INTO eg_nodes (src, origin, connection, platform, object_type, source_id, \
                   stream, record_id, kind, version, updated_at, synced_at, deleted, digest, fields)",
                15,
                chunk.len(),
                "ON CONFLICT (src) DO UPDATE SET origin = excluded.origin, \
                   stream = excluded.stream, record_id = excluded.record_id, \
                   kind = excluded.kind, version = excluded.version, \
                   updated_at = excluded.updated_at, synced_at = excluded.synced_at, \
                   deleted = 0, digest = excluded.digest, fields = excluded.fields \
                 RETURNING id, src",
            );
            let mut q = sqlx::query(sql);
            for n in chunk {
                q = q
                    .bind(&n.src)
                    .bind(&n.origin)
                    .bind(&n.connection)
                    .bind(&n.platform)
                    .bind(&n.object_type)
                    .bind(&n.source_id)
                    .bind(&n.stream)
                    .bind(&n.record_id)
                    .bind(&n.kind)
                    .bind(n.version)
                    .bind(n.updated_at)
                    .bind(n.synced_at)
                    .bind(0i64)
                    .bind(&n.digest)
                    .bind(&n.fields);
            }
            let returned = q
                .fetch_all(&mut *self.tx)
                .await
                .map_err(db_err("cannot write source entities"))?;
            for r in &returned {
                out.push((
                    r.try_get("src").map_err(decode)?,
                    r.try_get("id").map_err(decode)?,
                ));
            }
        }
        Ok(out)
    }

    async fn tombstone_nodes(&mut self, nodes: &[(NodeId, Option<i64>)], at: i64) -> Result<()> {
        for (id, version) in nodes {
            sqlx::query(
                "UPDATE eg_nodes SET deleted = 1, cluster = NULL, digest = '', synced_at = ?2, \
                   version = COALESCE(?3, version) WHERE id = ?1",
            )
            .bind(id)
            .bind(at)
            .bind(version)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("cannot delete source entities"))?;
        }
        let ids: Vec<NodeId> = nodes.iter().map(|(id, _)| *id).collect();
        for chunk in ids.chunks(CHUNK) {
            sqlx::query("DELETE FROM eg_keys WHERE node IN (SELECT value FROM json_each(?1))")
                .bind(ids_json(chunk))
                .execute(&mut *self.tx)
                .await
                .map_err(db_err("cannot delete identity keys"))?;
        }
        Ok(())
    }

    async fn clear_cluster(&mut self, nodes: &[NodeId]) -> Result<()> {
        for chunk in nodes.chunks(CHUNK) {
            sqlx::query(
                "UPDATE eg_nodes SET cluster = NULL \
                 WHERE id IN (SELECT value FROM json_each(?1))",
            )
            .bind(ids_json(chunk))
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("cannot update source entities"))?;
        }
        Ok(())
    }

    async fn node_keys(&mut self, nodes: &[NodeId]) -> Result<Vec<KeyRecord>> {
        let mut out = Vec::new();
        for chunk in nodes.chunks(CHUNK) {
            let rows = sqlx::query(
                "SELECT node, key, role, raw FROM eg_keys \
                 WHERE node IN (SELECT value FROM json_each(?1))",
            )
            .bind(ids_json(chunk))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err("cannot read identity keys"))?;
            for r in &rows {
                out.push(KeyRecord {
                    node: r.try_get("node").map_err(decode)?,
                    key: r.try_get("key").map_err(decode)?,
                    role: KeyRole::parse(&r.try_get::<String, _>("role").map_err(decode)?)?,
                    raw: r.try_get("raw").map_err(decode)?,
                });
            }
        }
        Ok(out)
    }

    async fn replace_keys(&mut self, nodes: &[NodeId], keys: &[KeyInsert]) -> Result<()> {
        for chunk in nodes.chunks(CHUNK) {
            sqlx::query("DELETE FROM eg_keys WHERE node IN (SELECT value FROM json_each(?1))")
                .bind(ids_json(chunk))
                .execute(&mut *self.tx)
                .await
                .map_err(db_err("cannot replace identity keys"))?;
        }
        for chunk in slices(keys) {
            let sql = values_sql(
                "INSERT INTO eg_keys (node, key, kind, role, raw)",
                5,
                chunk.len(),
                "ON CONFLICT (node, key) DO NOTHING",
            );
            let mut q = sqlx::query(sql);
            for k in chunk {
                q = q
                    .bind(k.node)
                    .bind(&k.key)
                    .bind(&k.kind)
                    .bind(k.role.as_str())
                    .bind(&k.raw);
            }
            q.execute(&mut *self.tx)
                .await
                .map_err(db_err("cannot write identity keys"))?;
        }
        Ok(())
    }

    async fn replace_relations(
        &mut self,
        origins: &[String],
        rows: &[(String, String, String, String)],
    ) -> Result<()> {
        for chunk in origins.chunks(CHUNK) {
            sqlx::query(
                "DELETE FROM eg_relations WHERE origin IN (SELECT value FROM json_each(?1))",
            )
            .bind(strs_json(chunk))
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("cannot replace relations"))?;
        }
        for chunk in slices(rows) {
            let sql = values_sql(
                "INSERT INTO eg_relations (origin, from_src, kind, to_src)",
                4,
                chunk.len(),
                "ON CONFLICT DO NOTHING",
            );
            let mut q = sqlx::query(sql);
            for (origin, from, kind, to) in chunk {
                q = q.bind(origin).bind(from).bind(kind).bind(to);
            }
            q.execute(&mut *self.tx)
                .await
                .map_err(db_err("cannot write relations"))?;
        }
        Ok(())
    }

    async fn holders(
        &mut self,
        keys: &[String],
        roles: &[KeyRole],
        kind: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<Holder>> {
        let cap = limit.map_or(usize::MAX, |l| l as usize);
        let roles_json =
            serde_json::to_string(&roles.iter().map(|r| r.as_str()).collect::<Vec<_>>())
                .unwrap_or_else(|_| "[]".into());
        let mut out = Vec::new();
        for chunk in keys.chunks(CHUNK) {
            let rows = sqlx::query(
                "SELECT k.key, k.node, k.kind, k.role, n.cluster FROM eg_keys k \
                 JOIN eg_nodes n ON n.id = k.node \
                 WHERE k.key IN (SELECT value FROM json_each(?1)) \
                   AND (?2 IS NULL OR k.kind = ?2) \
                   AND k.role IN (SELECT value FROM json_each(?3)) \
                   AND n.deleted = 0 LIMIT ?4",
            )
            .bind(strs_json(chunk))
            .bind(kind)
            .bind(&roles_json)
            .bind(limit.map_or(-1, i64::from))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err("cannot look identity keys up"))?;
            for r in &rows {
                out.push(Holder {
                    key: r.try_get("key").map_err(decode)?,
                    node: r.try_get("node").map_err(decode)?,
                    kind: r.try_get("kind").map_err(decode)?,
                    cluster: r.try_get("cluster").map_err(decode)?,
                    role: KeyRole::parse(&r.try_get::<String, _>("role").map_err(decode)?)?,
                });
            }
            if out.len() >= cap {
                out.truncate(cap);
                break;
            }
        }
        Ok(out)
    }

    async fn cluster_members(&mut self, clusters: &[ClusterId]) -> Result<Vec<MemberKey>> {
        let mut out = Vec::new();
        for chunk in clusters.chunks(CHUNK) {
            let rows = sqlx::query(
                "SELECT n.id, n.cluster, k.key FROM eg_nodes n \
                 LEFT JOIN eg_keys k ON k.node = n.id AND k.role = 'merge' \
                 WHERE n.cluster IN (SELECT value FROM json_each(?1)) AND n.deleted = 0",
            )
            .bind(ids_json(chunk))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err("cannot read cluster members"))?;
            for r in &rows {
                out.push(MemberKey {
                    node: r.try_get("id").map_err(decode)?,
                    cluster: r.try_get("cluster").map_err(decode)?,
                    key: r.try_get("key").map_err(decode)?,
                });
            }
        }
        Ok(out)
    }

    async fn has_active_splits(&mut self) -> Result<bool> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM eg_splits WHERE active = 1 LIMIT 1")
                .fetch_optional(&mut *self.tx)
                .await
                .map_err(db_err("cannot read splits"))?;
        Ok(row.is_some())
    }

    async fn cannot_links(&mut self, nodes: &[NodeId]) -> Result<Vec<(NodeId, NodeId)>> {
        let mut out = Vec::new();
        for chunk in nodes.chunks(CHUNK) {
            let rows: Vec<(i64, i64)> = sqlx::query_as(
                "SELECT c.a, c.b FROM eg_cannot_link c JOIN eg_splits s ON s.id = c.split \
                 WHERE s.active = 1 AND c.a IN (SELECT value FROM json_each(?1)) \
                 UNION SELECT c.a, c.b FROM eg_cannot_link c JOIN eg_splits s ON s.id = c.split \
                 WHERE s.active = 1 AND c.b IN (SELECT value FROM json_each(?1))",
            )
            .bind(ids_json(chunk))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err("cannot read split constraints"))?;
            out.extend(rows);
        }
        Ok(out)
    }

    async fn max_cluster_id(&mut self) -> Result<ClusterId> {
        let (max,): (Option<i64>,) = sqlx::query_as("SELECT MAX(id) FROM eg_clusters")
            .fetch_one(&mut *self.tx)
            .await
            .map_err(db_err("cannot read clusters"))?;
        Ok(max.unwrap_or(0))
    }

    async fn insert_clusters(&mut self, clusters: &[(ClusterId, String)], at: i64) -> Result<()> {
        for chunk in slices(clusters) {
            let sql = values_sql(
                "INSERT INTO eg_clusters (id, kind, created_at)",
                3,
                chunk.len(),
                "",
            );
            let mut q = sqlx::query(sql);
            for (id, kind) in chunk {
                q = q.bind(id).bind(kind).bind(at);
            }
            q.execute(&mut *self.tx)
                .await
                .map_err(db_err("cannot create canonical entities"))?;
        }
        Ok(())
    }

    async fn assign(&mut self, pairs: &[(NodeId, ClusterId)]) -> Result<()> {
        for chunk in slices(pairs) {
            // `WITH v(node, cluster) AS (VALUES ...) UPDATE ... FROM v`: one statement, each
            // node found by its rowid.
            let mut sql = String::from("WITH v(node, cluster) AS (VALUES ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str("(?,?)");
            }
            sql.push_str(
                ") UPDATE eg_nodes SET cluster = v.cluster FROM v WHERE eg_nodes.id = v.node",
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (node, cluster) in chunk {
                q = q.bind(node).bind(cluster);
            }
            q.execute(&mut *self.tx)
                .await
                .map_err(db_err("cannot assign canonical entities"))?;
        }
        Ok(())
    }

    async fn retire_clusters(
        &mut self,
        clusters: &[(ClusterId, Option<ClusterId>)],
        at: i64,
    ) -> Result<()> {
        for (id, into) in clusters {
            sqlx::query("UPDATE eg_clusters SET merged_into = ?2, retired_at = ?3 WHERE id = ?1")
                .bind(id)
                .bind(into)
                .bind(at)
                .execute(&mut *self.tx)
                .await
                .map_err(db_err("cannot retire canonical entities"))?;
        }
        Ok(())
    }

    async fn insert_events(&mut self, events: &[EventInsert]) -> Result<()> {
        for chunk in slices(events) {
            let sql = values_sql(
                "INSERT INTO eg_events (at, kind, cluster, other, node, keys, detail)",
                7,
                chunk.len(),
                "",
            );
            let mut q = sqlx::query(sql);
            for e in chunk {
                q = q
                    .bind(e.at)
                    .bind(&e.kind)
                    .bind(e.cluster)
                    .bind(e.other)
                    .bind(e.node)
                    .bind(&e.keys)
                    .bind(&e.detail);
            }
            q.execute(&mut *self.tx)
                .await
                .map_err(db_err("cannot record events"))?;
        }
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
            "INSERT INTO eg_splits (cluster, created_at, note, active) VALUES (?1, ?2, ?3, 1) \
             RETURNING id",
        )
        .bind(cluster)
        .bind(at)
        .bind(note)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(db_err("cannot record a split"))?;
        for chunk in slices(pairs) {
            let sql = values_sql(
                "INSERT INTO eg_cannot_link (split, a, b)",
                3,
                chunk.len(),
                "ON CONFLICT DO NOTHING",
            );
            let mut q = sqlx::query(sql);
            for (a, b) in chunk {
                q = q.bind(id).bind(a).bind(b);
            }
            q.execute(&mut *self.tx)
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
            "SELECT id, cluster, created_at, note, active FROM eg_splits WHERE id = ?1",
        )
        .bind(split)
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(db_err("cannot read splits"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let before = split_row(&row)?;
        sqlx::query("UPDATE eg_splits SET active = ?2, changed_at = ?3 WHERE id = ?1")
            .bind(split)
            .bind(i64::from(active))
            .bind(at)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err("cannot update a split"))?;
        Ok(Some(before))
    }

    async fn split_nodes(&mut self, split: i64) -> Result<Vec<NodeId>> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT a FROM eg_cannot_link WHERE split = ?1 \
             UNION SELECT b FROM eg_cannot_link WHERE split = ?1",
        )
        .bind(split)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err("cannot read a split"))?;
        Ok(rows.into_iter().map(|(n,)| n).collect())
    }

    async fn splits(&mut self, limit: u32) -> Result<Vec<SplitRow>> {
        let rows = sqlx::query(
            "SELECT id, cluster, created_at, note, active FROM eg_splits ORDER BY id DESC LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err("cannot read splits"))?;
        rows.iter().map(split_row).collect()
    }

    async fn cluster(&mut self, id: ClusterId) -> Result<Option<ClusterRow>> {
        let row = sqlx::query(
            "SELECT id, kind, created_at, merged_into, retired_at FROM eg_clusters WHERE id = ?1",
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
            " FROM eg_nodes WHERE cluster = ?1 AND deleted = 0 ORDER BY id LIMIT ?2"
        );
        let rows = sqlx::query(sql)
            .bind(cluster)
            .bind(i64::from(limit))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err("cannot read source entities"))?;
        rows.iter().map(node_row).collect()
    }

    async fn node_row_by_src(&mut self, src: &str) -> Result<Option<NodeRow>> {
        let sql = concat!("SELECT ", node_row_cols!(), " FROM eg_nodes WHERE src = ?1");
        let row = sqlx::query(sql)
            .bind(src)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(db_err("cannot read a source entity"))?;
        row.as_ref().map(node_row).transpose()
    }

    async fn relations_from(&mut self, srcs: &[String], limit: u32) -> Result<Vec<RelationRow>> {
        let mut out = Vec::new();
        for chunk in srcs.chunks(CHUNK) {
            let rows = sqlx::query(
                "SELECT r.kind, r.from_src, r.to_src, n.cluster AS other_cluster, \
                   n.kind AS other_kind \
                 FROM eg_relations r LEFT JOIN eg_nodes n ON n.src = r.to_src AND n.deleted = 0 \
                 WHERE r.from_src IN (SELECT value FROM json_each(?1)) LIMIT ?2",
            )
            .bind(strs_json(chunk))
            .bind(i64::from(limit))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err("cannot read relations"))?;
            for r in &rows {
                out.push(relation_row(r)?);
            }
            if out.len() >= limit as usize {
                out.truncate(limit as usize);
                break;
            }
        }
        Ok(out)
    }

    async fn relations_to(&mut self, srcs: &[String], limit: u32) -> Result<Vec<RelationRow>> {
        let mut out = Vec::new();
        for chunk in srcs.chunks(CHUNK) {
            let rows = sqlx::query(
                "SELECT r.kind, r.from_src, r.to_src, n.cluster AS other_cluster, \
                   n.kind AS other_kind \
                 FROM eg_relations r JOIN eg_nodes n ON n.src = r.from_src AND n.deleted = 0 \
                 WHERE r.to_src IN (SELECT value FROM json_each(?1)) LIMIT ?2",
            )
            .bind(strs_json(chunk))
            .bind(i64::from(limit))
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_err("cannot read relations"))?;
            for r in &rows {
                out.push(relation_row(r)?);
            }
            if out.len() >= limit as usize {
                out.truncate(limit as usize);
                break;
            }
        }
        Ok(out)
    }

    async fn events(
        &mut self,
        kinds: &[&str],
        cluster: Option<ClusterId>,
        limit: u32,
    ) -> Result<Vec<EventRow>> {
        let kinds_json = serde_json::to_string(kinds).unwrap_or_else(|_| "[]".into());
        let rows = sqlx::query(
            "SELECT e.id, e.at, e.kind, e.cluster, e.other, e.node, e.keys, e.detail, \
               n.src AS node_src \
             FROM eg_events e LEFT JOIN eg_nodes n ON n.id = e.node \
             WHERE (?1 = '[]' OR e.kind IN (SELECT value FROM json_each(?1))) \
               AND (?2 IS NULL OR e.cluster = ?2 OR e.other = ?2) \
             ORDER BY e.id DESC LIMIT ?3",
        )
        .bind(kinds_json)
        .bind(cluster)
        .bind(i64::from(limit))
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
               WHERE deleted = 0 AND id > ?1 ORDER BY id LIMIT ?2) \
             SELECT p.id, p.kind, p.cluster, k.key FROM page p \
             LEFT JOIN eg_keys k ON k.node = p.id AND k.role = 'merge' ORDER BY p.id",
        )
        .bind(after)
        .bind(i64::from(limit))
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
    fn chunks_come_in_few_shapes() {
        for n in [0, 1, 7, 127, 128, 129, 200, 1000] {
            let sizes = chunk_sizes(n);
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(
                sizes
                    .iter()
                    .all(|s| s.is_power_of_two() && *s <= VALUES_ROWS)
            );
        }
        assert_eq!(chunk_sizes(200), vec![128, 64, 8]);
        let items: Vec<usize> = (0..200).collect();
        let joined: Vec<usize> = slices(&items).flatten().copied().collect();
        assert_eq!(joined, items);
        assert_eq!(
            values_sql("INSERT INTO t (a, b)", 2, 2, "").0,
            "INSERT INTO t (a, b) VALUES (?,?),(?,?) "
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_transactions_take_a_turn_at_the_shared_gate() {
        let dir = tempfile::tempdir().unwrap();
        let state = apex_connect_core::SqliteStore::open(
            dir.path().join("state.db"),
            apex_connect_core::store::EncryptionKey::generate(),
        )
        .await
        .unwrap();
        let graph = SqliteGraphStore::from_pool(state.pool().clone())
            .await
            .unwrap()
            .with_write_gate(state.write_gate().clone());
        let turn = state.write_gate().turn().await;
        // A read transaction does not wait for the gate.
        let read = graph.begin(false).await.unwrap();
        drop(read);
        let g = graph.clone();
        let write = tokio::spawn(async move { g.begin(true).await.map(drop) });
        // Real time (SQLite's threads): without the gate this is done in well under 300 ms.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !write.is_finished(),
            "a graph write began during another writer's turn"
        );
        drop(turn);
        write.await.unwrap().unwrap();
    }
}
