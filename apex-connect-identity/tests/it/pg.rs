//! The graph on PostgreSQL (feature `postgres`): the helper that runs the store-generic tests
//! of `graph.rs` there (`pg_*`), and what only several writers on one database can show.
//!
//! Each test gets a fresh database from `apex_connect_testkit::pg::fresh()`: skipped without
//! `APEX_TEST_POSTGRES_URL`, failing under CI.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use apex_connect_core::{Entity, EntityKind, Identity, SourceRef};
use apex_connect_identity::{EntityGraph, SourceKey};
use apex_connect_testkit::pg;

use crate::graph::us_policy;
use crate::put;

/// Runs `test` on a graph in a fresh PostgreSQL database, then drops the database.
pub(crate) async fn on_postgres<F, Fut>(test: F)
where
    F: FnOnce(EntityGraph) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(db) = pg::fresh().await else {
        return;
    };
    let g = EntityGraph::open_postgres(&db.url)
        .await
        .expect("open the graph on PostgreSQL")
        .with_policy(us_policy());
    test(g).await;
    db.drop_db().await;
}

const PEOPLE: usize = 120;
const BATCH: usize = 8;

/// One side's batches: `(connection, platform, [(id, entity)])` per batch. HubSpot contact
/// `i` has email `p{i}`; Salesforce contact `i` has `p{i}` and, unless `i % 6 == 5`, `p{i+1}`:
/// Salesforce contacts bridge HubSpot contacts, so the two sides merge each other's clusters
/// into chains of six, whichever order the batches land in.
fn batches(platform: &'static str) -> Vec<Vec<(String, Entity)>> {
    let ids: Vec<usize> = if platform == "hubspot" {
        (0..PEOPLE).collect()
    } else {
        // The other end first: the sides meet in the middle, merging as they go.
        (0..PEOPLE).rev().collect()
    };
    ids.chunks(BATCH)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&i| {
                    let mut e = Entity::new(
                        EntityKind::Person,
                        SourceRef::new(platform, "contact", i.to_string()),
                    )
                    .with_identity(Identity::email(&format!("p{i}@acme.com")));
                    if platform == "salesforce" && i % 6 != 5 && i + 1 < PEOPLE {
                        e = e.with_identity(Identity::email(&format!("p{}@acme.com", i + 1)));
                    }
                    (i.to_string(), e)
                })
                .collect()
        })
        .collect()
}

async fn apply_all(g: &EntityGraph, connection: &str, platform: &'static str) {
    for batch in batches(platform) {
        let items = batch
            .iter()
            .map(|(id, e)| (id.as_str(), 1, e.clone()))
            .collect();
        put(g, connection, "contacts", items).await;
    }
}

/// The clustering as a partition of source keys (canonical ids left out: they depend on the
/// order of arrival).
async fn partition(g: &EntityGraph) -> BTreeSet<BTreeSet<String>> {
    let mut clusters: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for (conn, platform) in [("hs", "hubspot"), ("sf", "salesforce")] {
        for i in 0..PEOPLE {
            let id = i.to_string();
            let cluster = g
                .find_source(&SourceKey::new(conn, platform, "contact", &id))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{platform}/{id} not resolved"))
                .0;
            clusters
                .entry(cluster)
                .or_default()
                .insert(format!("{platform}/{id}"));
        }
    }
    clusters.into_values().collect()
}

/// Two graphs on one database (two pools, so nothing in-process orders them) apply
/// overlapping batches at the same time: the advisory write lock serializes them, and the
/// result is the clustering of applying the same batches one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_concurrent_writers_end_as_sequential_ones() {
    let Some(db) = pg::fresh().await else {
        return;
    };
    let a = EntityGraph::open_postgres(&db.url).await.unwrap();
    let b = EntityGraph::open_postgres(&db.url).await.unwrap();
    let (ta, tb) = (
        tokio::spawn({
            let a = a.clone();
            async move { apply_all(&a, "hs", "hubspot").await }
        }),
        tokio::spawn({
            let b = b.clone();
            async move { apply_all(&b, "sf", "salesforce").await }
        }),
    );
    ta.await.expect("writer a");
    tb.await.expect("writer b");
    let concurrent = partition(&a).await;
    assert_eq!(partition(&b).await, concurrent);
    let audit = a.audit().await.unwrap();
    assert!(audit.is_consistent(), "{audit:?}");

    let Some(seq_db) = pg::fresh().await else {
        return;
    };
    let seq = EntityGraph::open_postgres(&seq_db.url).await.unwrap();
    apply_all(&seq, "hs", "hubspot").await;
    apply_all(&seq, "sf", "salesforce").await;
    let sequential = partition(&seq).await;
    assert_eq!(concurrent, sequential);
    // Salesforce contacts bridge HubSpot contacts into people of six each per platform: the
    // data does merge across the two writers.
    assert_eq!(sequential.len(), PEOPLE.div_ceil(6));
    assert_eq!(
        a.stats().await.unwrap().canonical,
        seq.stats().await.unwrap().canonical
    );
    db.drop_db().await;
    seq_db.drop_db().await;
}

/// Opening twice (a second process, a restart) finds the migrations applied, in the graph's
/// own table next to the state store's, and a URL carrying a password is refused.
#[tokio::test]
async fn pg_shares_the_state_database_with_its_own_migrations() {
    let Some(db) = pg::fresh().await else {
        return;
    };
    let store =
        apex_connect_core::PgStore::connect(&db.url, apex_connect_core::EncryptionKey::generate())
            .await
            .unwrap();
    let g = EntityGraph::new(std::sync::Arc::new(
        apex_connect_identity::PgGraphStore::from_pool(store.pool().clone())
            .await
            .unwrap(),
    ));
    put(
        &g,
        "hs",
        "contacts",
        vec![(
            "1",
            1,
            Entity::new(
                EntityKind::Person,
                SourceRef::new("hubspot", "contact", "1"),
            )
            .with_identity(Identity::email("a@b.com")),
        )],
    )
    .await;
    let again = EntityGraph::open_postgres(&db.url).await.unwrap();
    assert_eq!(again.stats().await.unwrap().sources, 1);
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name LIKE '%migrations' ORDER BY 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let names: Vec<String> = tables.into_iter().map(|t| t.0).collect();
    assert_eq!(names, vec!["_apex_identity_migrations", "_sqlx_migrations"]);
    let e = EntityGraph::open_postgres("postgres://apex:hunter2@127.0.0.1/x")
        .await
        .unwrap_err();
    assert!(!format!("{e}{e:?}").contains("hunter2"), "{e:?}");
    store.close().await;
    db.drop_db().await;
}
