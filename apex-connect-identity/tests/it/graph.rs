//! The graph's behaviour: merges, explanations, deletes, splits, fields, relations.

use std::str::FromStr;

use apex_connect_core::{
    Batch, ConnectionId, EncryptionKey, Entity, EntityKind, Identity, Record, Sink, SourceRef,
    SqliteStore, StreamId,
};
use apex_connect_identity::{
    CanonicalId, Direction, EntityGraph, EntityGraphSink, EventKind, IdentityKey, KeyKind, Policy,
    Region, SourceKey,
};
use serde_json::json;

#[cfg(feature = "postgres")]
use crate::pg::on_postgres;
use crate::{delete, put};

fn person(platform: &'static str, object: &'static str, id: &str) -> Entity {
    Entity::new(EntityKind::Person, SourceRef::new(platform, object, id))
}

fn org(platform: &'static str, object: &'static str, id: &str) -> Entity {
    Entity::new(
        EntityKind::Organization,
        SourceRef::new(platform, object, id),
    )
}

/// The policy of these tests: numbers without prefix are read as US numbers.
pub(crate) fn us_policy() -> Policy {
    Policy::default().with_default_region(Region::from_str("US").unwrap())
}

/// A graph in a private in-memory SQLite database. The store-generic tests below are written
/// once (`<name>_on(graph)`) and run on it (`<name>`) and on PostgreSQL (`pg_<name>`, feature
/// `postgres`).
async fn graph() -> EntityGraph {
    EntityGraph::open_in_memory()
        .await
        .unwrap()
        .with_policy(us_policy())
}

async fn cluster_of(g: &EntityGraph, conn: &str, platform: &str, object: &str, id: &str) -> i64 {
    g.find_source(&SourceKey::new(conn, platform, object, id))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{platform}/{object}/{id} not resolved"))
        .0
}

#[tokio::test]
async fn one_person_across_platforms_with_explanations() {
    one_person_across_platforms_with_explanations_on(graph().await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn pg_one_person_across_platforms_with_explanations() {
    on_postgres(one_person_across_platforms_with_explanations_on).await;
}

async fn one_person_across_platforms_with_explanations_on(g: EntityGraph) {
    put(
        &g,
        "front",
        "contacts",
        vec![(
            "crd_1",
            1,
            person("frontapp", "contact", "crd_1")
                .with_name("Ann Lee")
                .with_identity(Identity::Email("  Ann.Lee@Acme.COM ".into())),
        )],
    )
    .await;
    let r = put(
        &g,
        "hubspot",
        "contacts",
        vec![(
            "51",
            1,
            person("hubspot", "contact", "51")
                .with_name("Ann Lee")
                .with_identity(Identity::email("ann.lee@acme.com"))
                .with_identity(Identity::Phone("(415) 555-2671".into())),
        )],
    )
    .await;
    assert_eq!((r.applied, r.joins), (1, 1));
    // A Salesforce contact with only the phone, written internationally.
    put(
        &g,
        "salesforce",
        "Contact",
        vec![(
            "003A",
            1,
            person("salesforce", "contact", "003A")
                .with_identity(Identity::Phone("+1 415-555-2671".into())),
        )],
    )
    .await;
    let a = cluster_of(&g, "front", "frontapp", "contact", "crd_1").await;
    let b = cluster_of(&g, "hubspot", "hubspot", "contact", "51").await;
    let c = cluster_of(&g, "salesforce", "salesforce", "contact", "003A").await;
    assert_eq!((a, a), (b, c));

    let ann = g.canonical(CanonicalId(a)).await.unwrap().unwrap();
    assert_eq!(ann.sources.len(), 3);
    assert_eq!(ann.kind, "person");
    assert!(ann.identities.iter().any(|i| i.key
        == IdentityKey::new(KeyKind::Phone, "+14155552671")
        && i.asserted_by.len() == 2));
    // Find by any identity, normalized the same way.
    for identity in [
        Identity::Email("ANN.LEE@acme.com".into()),
        Identity::Phone("415.555.2671".into()),
    ] {
        let found = g.find(&identity).await.unwrap();
        assert_eq!(found.len(), 1, "{identity:?}");
        assert_eq!(found[0].id.0, a);
        assert_eq!(found[0].name.as_deref(), Some("Ann Lee"));
    }
    // The merges are explained.
    let merges = g.recent_merges(10).await.unwrap();
    assert_eq!(merges.len(), 2);
    let sf = &merges[0];
    assert_eq!(sf.kind, EventKind::Join);
    assert_eq!(
        sf.keys,
        vec![IdentityKey::new(KeyKind::Phone, "+14155552671")]
    );
    assert_eq!(sf.trigger.as_ref().unwrap().platform, "salesforce");
    assert_eq!(sf.current, Some(CanonicalId(a)));
    assert_eq!(
        merges[1].keys,
        vec![IdentityKey::new(KeyKind::Email, "ann.lee@acme.com")]
    );
}

#[tokio::test]
async fn clusters_merge_and_keep_the_older_id() {
    clusters_merge_and_keep_the_older_id_on(graph().await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn pg_clusters_merge_and_keep_the_older_id() {
    on_postgres(clusters_merge_and_keep_the_older_id_on).await;
}

async fn clusters_merge_and_keep_the_older_id_on(g: EntityGraph) {
    put(
        &g,
        "front",
        "contacts",
        vec![
            (
                "c1",
                1,
                person("frontapp", "contact", "c1").with_identity(Identity::email("a@x.com")),
            ),
            (
                "c2",
                1,
                person("frontapp", "contact", "c2").with_identity(Identity::email("b@y.com")),
            ),
        ],
    )
    .await;
    let a = cluster_of(&g, "front", "frontapp", "contact", "c1").await;
    let b = cluster_of(&g, "front", "frontapp", "contact", "c2").await;
    assert_ne!(a, b);
    // A HubSpot contact with both emails bridges them.
    let r = put(
        &g,
        "hubspot",
        "contacts",
        vec![(
            "9",
            1,
            person("hubspot", "contact", "9")
                .with_identity(Identity::email("a@x.com"))
                .with_identity(Identity::email("B@Y.com")),
        )],
    )
    .await;
    assert_eq!(r.merges, 1);
    let merged = cluster_of(&g, "hubspot", "hubspot", "contact", "9").await;
    assert_eq!(merged, a.min(b));
    // The absorbed id still resolves, to the survivor.
    let via_old = g.canonical(CanonicalId(a.max(b))).await.unwrap().unwrap();
    assert_eq!(via_old.id.0, merged);
    assert_eq!(via_old.requested.0, a.max(b));
    let m = &g.recent_merges(1).await.unwrap()[0];
    assert_eq!(m.kind, EventKind::Merge);
    assert_eq!(m.other, Some(CanonicalId(a.max(b))));
    assert!(g.audit().await.unwrap().is_consistent());
}

#[tokio::test]
async fn deletes_leave_and_split_when_evidence_is_gone() {
    deletes_leave_and_split_when_evidence_is_gone_on(graph().await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn pg_deletes_leave_and_split_when_evidence_is_gone() {
    on_postgres(deletes_leave_and_split_when_evidence_is_gone_on).await;
}

async fn deletes_leave_and_split_when_evidence_is_gone_on(g: EntityGraph) {
    put(
        &g,
        "front",
        "contacts",
        vec![
            (
                "c1",
                1,
                person("frontapp", "contact", "c1").with_identity(Identity::email("a@x.com")),
            ),
            (
                "c2",
                1,
                person("frontapp", "contact", "c2").with_identity(Identity::email("b@y.com")),
            ),
        ],
    )
    .await;
    put(
        &g,
        "hubspot",
        "contacts",
        vec![(
            "9",
            1,
            person("hubspot", "contact", "9")
                .with_identity(Identity::email("a@x.com"))
                .with_identity(Identity::email("b@y.com")),
        )],
    )
    .await;
    let all = cluster_of(&g, "front", "frontapp", "contact", "c1").await;
    assert_eq!(
        all,
        cluster_of(&g, "front", "frontapp", "contact", "c2").await
    );

    // The bridge is deleted: the rest no longer hangs together.
    let r = delete(&g, "hubspot", "contacts", "9", 2).await;
    assert_eq!((r.applied, r.splits), (1, 1));
    let a = cluster_of(&g, "front", "frontapp", "contact", "c1").await;
    let b = cluster_of(&g, "front", "frontapp", "contact", "c2").await;
    assert_ne!(a, b);
    assert!(a == all || b == all, "one part keeps the id");
    assert_eq!(
        g.find_source(&SourceKey::new("hubspot", "hubspot", "contact", "9"))
            .await
            .unwrap(),
        None
    );
    // A replayed older upsert does not resurrect it.
    let r = put(
        &g,
        "hubspot",
        "contacts",
        vec![(
            "9",
            1,
            person("hubspot", "contact", "9")
                .with_identity(Identity::email("a@x.com"))
                .with_identity(Identity::email("b@y.com")),
        )],
    )
    .await;
    assert_eq!((r.applied, r.unchanged), (0, 1));
    // An update that drops an email also splits.
    put(
        &g,
        "hubspot",
        "contacts",
        vec![(
            "9",
            3,
            person("hubspot", "contact", "9")
                .with_identity(Identity::email("a@x.com"))
                .with_identity(Identity::email("b@y.com")),
        )],
    )
    .await;
    assert_eq!(
        cluster_of(&g, "front", "frontapp", "contact", "c1").await,
        cluster_of(&g, "front", "frontapp", "contact", "c2").await
    );
    let r = put(
        &g,
        "hubspot",
        "contacts",
        vec![(
            "9",
            4,
            person("hubspot", "contact", "9").with_identity(Identity::email("a@x.com")),
        )],
    )
    .await;
    assert_eq!(r.splits, 1);
    assert_ne!(
        cluster_of(&g, "front", "frontapp", "contact", "c1").await,
        cluster_of(&g, "front", "frontapp", "contact", "c2").await
    );
    // Deleting the last source dissolves the entity.
    let lone = cluster_of(&g, "front", "frontapp", "contact", "c2").await;
    let r = delete(&g, "front", "contacts", "c2", 5).await;
    assert_eq!(r.dissolved, 1);
    assert!(g.canonical(CanonicalId(lone)).await.unwrap().is_none());
    let events = g.recent_events(20).await.unwrap();
    assert!(events.iter().any(|e| e.kind == EventKind::Dissolve));
    assert!(events.iter().any(|e| e.kind == EventKind::Split
        && e.detail.as_ref().unwrap()["reason"] == "evidence_removed"));
    assert!(g.audit().await.unwrap().is_consistent());
}

#[tokio::test]
async fn user_splits_survive_resyncs_until_unsplit() {
    user_splits_survive_resyncs_until_unsplit_on(graph().await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn pg_user_splits_survive_resyncs_until_unsplit() {
    on_postgres(user_splits_survive_resyncs_until_unsplit_on).await;
}

async fn user_splits_survive_resyncs_until_unsplit_on(g: EntityGraph) {
    let ann_front = || {
        person("frontapp", "contact", "c1")
            .with_identity(Identity::email("shared@acme.com"))
            .with_identity(Identity::Phone("415 555 0101".into()))
    };
    let ann_hs = || {
        person("hubspot", "contact", "7")
            .with_identity(Identity::email("shared@acme.com"))
            .with_identity(Identity::Phone("415 555 0199".into()))
    };
    put(&g, "front", "contacts", vec![("c1", 1, ann_front())]).await;
    put(&g, "hubspot", "contacts", vec![("7", 1, ann_hs())]).await;
    let both = cluster_of(&g, "front", "frontapp", "contact", "c1").await;
    assert_eq!(
        both,
        cluster_of(&g, "hubspot", "hubspot", "contact", "7").await
    );

    // The user says the HubSpot contact is someone else.
    let hs = SourceKey::new("hubspot", "hubspot", "contact", "7");
    let out = g
        .split(
            CanonicalId(both),
            std::slice::from_ref(&hs),
            Some("different people"),
        )
        .await
        .unwrap();
    assert_eq!(out.clusters.len(), 2);
    let front_now = cluster_of(&g, "front", "frontapp", "contact", "c1").await;
    let hs_now = cluster_of(&g, "hubspot", "hubspot", "contact", "7").await;
    assert_ne!(front_now, hs_now);
    assert_eq!(front_now, both, "the rest keeps the id");

    // The next sync brings both records again (changed): no re-merge.
    put(
        &g,
        "front",
        "contacts",
        vec![("c1", 2, ann_front().with_name("Ann"))],
    )
    .await;
    put(
        &g,
        "hubspot",
        "contacts",
        vec![("7", 2, ann_hs().with_name("Ann B"))],
    )
    .await;
    assert_ne!(
        cluster_of(&g, "front", "frontapp", "contact", "c1").await,
        cluster_of(&g, "hubspot", "hubspot", "contact", "7").await
    );
    // Even a third record bridging them joins one side only.
    put(
        &g,
        "salesforce",
        "Contact",
        vec![(
            "003X",
            1,
            person("salesforce", "contact", "003X")
                .with_identity(Identity::email("shared@acme.com")),
        )],
    )
    .await;
    assert_ne!(
        cluster_of(&g, "front", "frontapp", "contact", "c1").await,
        cluster_of(&g, "hubspot", "hubspot", "contact", "7").await
    );
    assert!(g.audit().await.unwrap().is_consistent());
    let splits = g.splits(10).await.unwrap();
    assert_eq!(splits.len(), 1);
    assert!(splits[0].active);
    assert_eq!(splits[0].note.as_deref(), Some("different people"));

    // Undone: they merge again.
    assert!(g.unsplit(out.split).await.unwrap());
    assert!(!g.unsplit(out.split).await.unwrap());
    assert_eq!(
        cluster_of(&g, "front", "frontapp", "contact", "c1").await,
        cluster_of(&g, "hubspot", "hubspot", "contact", "7").await
    );
    assert!(g.audit().await.unwrap().is_consistent());
    // Bad splits are refused.
    let id = CanonicalId(cluster_of(&g, "front", "frontapp", "contact", "c1").await);
    let err = g.split(id, &[], None).await.unwrap_err();
    assert_eq!(err.kind(), apex_connect_core::ErrorKind::InvalidInput);
    let stranger = SourceKey::new("x", "y", "z", "w");
    let err = g.split(id, &[stranger], None).await.unwrap_err();
    assert_eq!(err.kind(), apex_connect_core::ErrorKind::InvalidInput);
    let err = g
        .split(CanonicalId(999_999), &[hs], None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), apex_connect_core::ErrorKind::NotFound);
    assert_eq!(
        g.unsplit(12345).await.unwrap_err().kind(),
        apex_connect_core::ErrorKind::NotFound
    );
}

#[tokio::test]
async fn fields_resolve_by_source_priority_then_recency() {
    fields_resolve_by_source_priority_then_recency_on(graph().await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn pg_fields_resolve_by_source_priority_then_recency() {
    on_postgres(fields_resolve_by_source_priority_then_recency_on).await;
}

async fn fields_resolve_by_source_priority_then_recency_on(g: EntityGraph) {
    let g = g.with_policy(
        Policy::default()
            .with_source_priority(["salesforce", "hubspot"])
            .with_field_priority("attributes.title", ["hubspot"]),
    );
    let conn = |c: &str| ConnectionId::new(c.to_string());
    let write = |c: &'static str, s: &'static str, id: &'static str, updated: i64, e: Entity| {
        let g = g.clone();
        async move {
            let stream = StreamId::from(s);
            let records =
                vec![Record::upsert(stream.clone(), id, json!({})).with_modified(updated)];
            let entities = vec![Some(e)];
            g.apply(Batch::new(&conn(c), &stream, &records).with_entities(&entities))
                .await
                .unwrap();
        }
    };
    let mk = |p: &'static str, o: &'static str, id: &str, name: &str, title: &str| {
        person(p, o, id)
            .with_name(name)
            .with_identity(Identity::email("ann@acme.com"))
            .with_attr("title", json!(title))
    };
    write(
        "front",
        "contacts",
        "c1",
        300,
        mk("frontapp", "contact", "c1", "Annie", "Boss"),
    )
    .await;
    write(
        "hs",
        "contacts",
        "1",
        100,
        mk("hubspot", "contact", "1", "Ann L.", "CTO"),
    )
    .await;
    write(
        "hs",
        "contacts",
        "2",
        200,
        mk("hubspot", "contact", "2", "Ann Lee", "VP"),
    )
    .await;
    write(
        "sf",
        "Contact",
        "003",
        50,
        mk("salesforce", "contact", "003", "Ann Lee-Smith", "Chief"),
    )
    .await;
    let id = g.find(&Identity::email("ann@acme.com")).await.unwrap()[0].id;
    let ann = g.canonical(id).await.unwrap().unwrap();
    // Source priority: Salesforce first for every field...
    let name = &ann.fields["name"];
    assert_eq!(name.value, json!("Ann Lee-Smith"));
    assert_eq!(name.provenance.source.platform, "salesforce");
    assert_eq!(name.provenance.updated_at, Some(50));
    assert!(name.conflict);
    assert_eq!(name.candidates.len(), 4);
    // ...then HubSpot by recency, then the unlisted Front.
    assert_eq!(name.candidates[1].value, json!("Ann Lee"));
    assert_eq!(name.candidates[2].value, json!("Ann L."));
    assert_eq!(name.candidates[3].value, json!("Annie"));
    assert_eq!(ann.name.as_deref(), Some("Ann Lee-Smith"));
    // A field override: HubSpot first for the title, newest HubSpot value wins.
    let title = &ann.fields["attributes.title"];
    assert_eq!(title.value, json!("VP"));
    assert_eq!(title.provenance.record_id, "2");
    assert_eq!(title.provenance.source.connection, "hs");
    // Without priorities: the newest value.
    let plain = EntityGraph::new(g.store().clone());
    let ann = plain.canonical(id).await.unwrap().unwrap();
    assert_eq!(ann.field("name"), Some(&json!("Annie")));
}

#[tokio::test]
async fn relations_cross_platforms_in_both_directions() {
    relations_cross_platforms_in_both_directions_on(graph().await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn pg_relations_cross_platforms_in_both_directions() {
    on_postgres(relations_cross_platforms_in_both_directions_on).await;
}

async fn relations_cross_platforms_in_both_directions_on(g: EntityGraph) {
    // Front: a conversation with a contact.
    put(
        &g,
        "front",
        "contacts",
        vec![(
            "crd_1",
            1,
            person("frontapp", "contact", "crd_1").with_identity(Identity::email("ann@acme.com")),
        )],
    )
    .await;
    put(
        &g,
        "front",
        "conversations",
        vec![(
            "cnv_1",
            1,
            Entity::new(
                EntityKind::Conversation,
                SourceRef::new("frontapp", "conversation", "cnv_1"),
            )
            .with_name("Renewal question")
            .with_relation("recipient", SourceRef::new("frontapp", "contact", "crd_1")),
        )],
    )
    .await;
    // HubSpot: the contact, its company and a deal (the deal written before the company).
    put(
        &g,
        "hs",
        "deals",
        vec![(
            "d1",
            1,
            Entity::new(EntityKind::Deal, SourceRef::new("hubspot", "deal", "d1"))
                .with_name("Acme renewal")
                .with_relation("deal_company", SourceRef::new("hubspot", "company", "c9")),
        )],
    )
    .await;
    put(
        &g,
        "hs",
        "contacts",
        vec![(
            "51",
            1,
            person("hubspot", "contact", "51")
                .with_identity(Identity::email("Ann@acme.com"))
                .with_relation("works_at", SourceRef::new("hubspot", "company", "c9")),
        )],
    )
    .await;
    put(
        &g,
        "hs",
        "companies",
        vec![(
            "c9",
            1,
            org("hubspot", "company", "c9")
                .with_name("Acme")
                .with_identity(Identity::domain("acme.com")),
        )],
    )
    .await;
    // Salesforce: the account by its website, and an opportunity on it.
    put(
        &g,
        "sf",
        "Account",
        vec![(
            "001A",
            1,
            org("salesforce", "account", "001A")
                .with_name("ACME Corporation")
                .with_identity(Identity::Domain("https://www.acme.com/".into())),
        )],
    )
    .await;
    put(
        &g,
        "sf",
        "Opportunity",
        vec![(
            "006A",
            1,
            Entity::new(
                EntityKind::Deal,
                SourceRef::new("salesforce", "opportunity", "006A"),
            )
            .with_relation("account", SourceRef::new("salesforce", "account", "001A")),
        )],
    )
    .await;

    let conv = cluster_of(&g, "front", "frontapp", "conversation", "cnv_1").await;
    let person_id = cluster_of(&g, "front", "frontapp", "contact", "crd_1").await;
    let org_id = cluster_of(&g, "hs", "hubspot", "company", "c9").await;
    assert_eq!(
        org_id,
        cluster_of(&g, "sf", "salesforce", "account", "001A").await
    );
    let deal_hs = cluster_of(&g, "hs", "hubspot", "deal", "d1").await;
    let deal_sf = cluster_of(&g, "sf", "salesforce", "opportunity", "006A").await;

    // conversation -> person -> organization -> deals
    let c = g.canonical(CanonicalId(conv)).await.unwrap().unwrap();
    assert_eq!(
        c.related("recipient", Direction::Outgoing),
        vec![CanonicalId(person_id)]
    );
    let p = g.canonical(CanonicalId(person_id)).await.unwrap().unwrap();
    assert_eq!(
        p.related("works_at", Direction::Outgoing),
        vec![CanonicalId(org_id)]
    );
    let inferred: Vec<_> = p.relations.iter().filter(|r| r.inferred).collect();
    assert_eq!(inferred.len(), 1);
    assert_eq!(inferred[0].other, Some(CanonicalId(org_id)));
    assert_eq!(inferred[0].kind, "email_domain");
    let o = g.canonical(CanonicalId(org_id)).await.unwrap().unwrap();
    assert_eq!(
        o.related("deal_company", Direction::Incoming),
        vec![CanonicalId(deal_hs)]
    );
    assert_eq!(
        o.related("account", Direction::Incoming),
        vec![CanonicalId(deal_sf)]
    );
    // ...and back: deal -> organization -> person -> conversation
    let d = g.canonical(CanonicalId(deal_hs)).await.unwrap().unwrap();
    assert_eq!(
        d.related("deal_company", Direction::Outgoing),
        vec![CanonicalId(org_id)]
    );
    assert_eq!(
        o.related("works_at", Direction::Incoming),
        vec![CanonicalId(person_id)]
    );
    assert_eq!(
        o.related("email_domain", Direction::Incoming),
        vec![CanonicalId(person_id)]
    );
    assert_eq!(
        p.related("recipient", Direction::Incoming),
        vec![CanonicalId(conv)]
    );
}

#[tokio::test]
async fn generic_domains_never_merge_organizations_or_link_people() {
    generic_domains_never_merge_organizations_or_link_people_on(graph().await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn pg_generic_domains_never_merge_organizations_or_link_people() {
    on_postgres(generic_domains_never_merge_organizations_or_link_people_on).await;
}

async fn generic_domains_never_merge_organizations_or_link_people_on(g: EntityGraph) {
    put(
        &g,
        "sf",
        "Account",
        vec![
            (
                "001A",
                1,
                org("salesforce", "account", "001A")
                    .with_name("Joe's Plumbing")
                    .with_identity(Identity::domain("gmail.com")),
            ),
            (
                "001B",
                1,
                org("salesforce", "account", "001B")
                    .with_name("Ann's Bakery")
                    .with_identity(Identity::Domain("http://www.gmail.com".into())),
            ),
            (
                "001C",
                1,
                org("salesforce", "account", "001C")
                    .with_name("Sue Consulting")
                    .with_identity(Identity::domain("yahoo.co.uk")),
            ),
            (
                "001D",
                1,
                org("salesforce", "account", "001D")
                    .with_name("Tom Design")
                    .with_identity(Identity::domain("yahoo.co.uk")),
            ),
        ],
    )
    .await;
    let ids: std::collections::BTreeSet<i64> =
        futures_ids(&g, ["001A", "001B", "001C", "001D"]).await;
    assert_eq!(ids.len(), 4);
    // Findable, but weak.
    assert_eq!(
        g.find(&Identity::domain("gmail.com")).await.unwrap().len(),
        2
    );
    // A person at gmail is linked to no organization.
    put(
        &g,
        "hs",
        "contacts",
        vec![(
            "1",
            1,
            person("hubspot", "contact", "1").with_identity(Identity::email("joe@gmail.com")),
        )],
    )
    .await;
    let p = cluster_of(&g, "hs", "hubspot", "contact", "1").await;
    let joe = g.canonical(CanonicalId(p)).await.unwrap().unwrap();
    assert!(joe.relations.is_empty());
    assert!(g.audit().await.unwrap().is_consistent());
}

async fn futures_ids<const N: usize>(
    g: &EntityGraph,
    ids: [&str; N],
) -> std::collections::BTreeSet<i64> {
    let mut out = std::collections::BTreeSet::new();
    for id in ids {
        out.insert(cluster_of(g, "sf", "salesforce", "account", id).await);
    }
    out
}

#[tokio::test]
async fn phone_guard_keeps_colleagues_apart() {
    phone_guard_keeps_colleagues_apart_on(graph().await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn pg_phone_guard_keeps_colleagues_apart() {
    on_postgres(phone_guard_keeps_colleagues_apart_on).await;
}

async fn phone_guard_keeps_colleagues_apart_on(g: EntityGraph) {
    put(
        &g,
        "hs",
        "contacts",
        vec![
            (
                "1",
                1,
                person("hubspot", "contact", "1")
                    .with_identity(Identity::email("ann@acme.com"))
                    .with_identity(Identity::Phone("+1 212 555 0100".into())),
            ),
            (
                "2",
                1,
                person("hubspot", "contact", "2")
                    .with_identity(Identity::email("bob@acme.com"))
                    .with_identity(Identity::Phone("(212) 555-0100".into())),
            ),
            // Same phone, a personal email: the same person as 1 (different domains).
            (
                "3",
                1,
                person("hubspot", "contact", "3")
                    .with_identity(Identity::email("ann.smith@gmail.com"))
                    .with_identity(Identity::Phone("212-555-0100".into())),
            ),
        ],
    )
    .await;
    let a = cluster_of(&g, "hs", "hubspot", "contact", "1").await;
    let b = cluster_of(&g, "hs", "hubspot", "contact", "2").await;
    let c = cluster_of(&g, "hs", "hubspot", "contact", "3").await;
    assert_ne!(a, b);
    assert_eq!(a, c);
    assert!(g.audit().await.unwrap().is_consistent());
    // Role mailboxes never merge people either.
    put(
        &g,
        "hs",
        "contacts",
        vec![
            (
                "4",
                1,
                person("hubspot", "contact", "4").with_identity(Identity::email("info@beta.io")),
            ),
            (
                "5",
                1,
                person("hubspot", "contact", "5").with_identity(Identity::email("Info@beta.io")),
            ),
        ],
    )
    .await;
    assert_ne!(
        cluster_of(&g, "hs", "hubspot", "contact", "4").await,
        cluster_of(&g, "hs", "hubspot", "contact", "5").await
    );
}

#[tokio::test]
async fn external_ids_join_platforms() {
    external_ids_join_platforms_on(graph().await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn pg_external_ids_join_platforms() {
    on_postgres(external_ids_join_platforms_on).await;
}

async fn external_ids_join_platforms_on(g: EntityGraph) {
    let g = g.with_policy(Policy::default().with_external_id(
        apex_connect_identity::ExternalIdRule::new(
            "salesforce",
            Some("contact"),
            "custom_fields.HubSpot_Contact_ID__c",
            "hubspot",
            "contact",
        ),
    ));
    let id15 = "003d000000AbCdE";
    let id18 = apex_connect_identity::normalize::salesforce_id18(id15).unwrap();
    let mut hs = person("hubspot", "contact", "77");
    hs.custom_fields.insert(
        "salesforcecontactid".into(),
        json!(id18.to_ascii_lowercase()),
    );
    put(&g, "hs", "contacts", vec![("77", 1, hs)]).await;
    put(
        &g,
        "sf",
        "Contact",
        vec![(id18.as_str(), 1, person("salesforce", "contact", &id18))],
    )
    .await;
    assert_eq!(
        cluster_of(&g, "hs", "hubspot", "contact", "77").await,
        cluster_of(&g, "sf", "salesforce", "contact", &id18).await
    );
    // The other direction: a Salesforce record naming a HubSpot contact.
    let mut sf = person("salesforce", "contact", "003d000000ZzZzZ");
    sf.custom_fields
        .insert("hubspot_contact_id__c".into(), json!(88));
    put(&g, "sf", "Contact", vec![("003d000000ZzZzZ", 1, sf)]).await;
    put(
        &g,
        "hs",
        "contacts",
        vec![("88", 1, person("hubspot", "contact", "88"))],
    )
    .await;
    assert_eq!(
        cluster_of(&g, "hs", "hubspot", "contact", "88").await,
        cluster_of(&g, "sf", "salesforce", "contact", "003d000000ZzZzZ").await
    );
    let m = &g.recent_merges(1).await.unwrap()[0];
    assert_eq!(
        m.keys,
        vec![IdentityKey::new(KeyKind::External, "hubspot/contact:88")]
    );
    // Found by the external id, in any of its forms.
    let key = IdentityKey::external("salesforce", "contact", &id18.to_ascii_uppercase()).unwrap();
    let found = g.find_keys(&[key]).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].id.0,
        cluster_of(&g, "hs", "hubspot", "contact", "77").await
    );
}

#[tokio::test]
async fn a_source_that_changes_kind_leaves_its_entity() {
    a_source_that_changes_kind_leaves_its_entity_on(graph().await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn pg_a_source_that_changes_kind_leaves_its_entity() {
    on_postgres(a_source_that_changes_kind_leaves_its_entity_on).await;
}

async fn a_source_that_changes_kind_leaves_its_entity_on(g: EntityGraph) {
    put(
        &g,
        "hs",
        "contacts",
        vec![
            (
                "1",
                1,
                person("hubspot", "contact", "1").with_identity(Identity::email("a@x.com")),
            ),
            (
                "2",
                1,
                person("hubspot", "contact", "2").with_identity(Identity::email("a@x.com")),
            ),
        ],
    )
    .await;
    let both = cluster_of(&g, "hs", "hubspot", "contact", "1").await;
    assert_eq!(both, cluster_of(&g, "hs", "hubspot", "contact", "2").await);
    // Record 2 now maps to an organization (same source ref): it leaves the person.
    let r = put(
        &g,
        "hs",
        "contacts",
        vec![(
            "2",
            2,
            org("hubspot", "contact", "2").with_identity(Identity::email("a@x.com")),
        )],
    )
    .await;
    assert_eq!(r.applied, 1);
    let org_id = cluster_of(&g, "hs", "hubspot", "contact", "2").await;
    assert_ne!(org_id, both);
    let org_view = g.canonical(CanonicalId(org_id)).await.unwrap().unwrap();
    assert_eq!(org_view.kind, "organization");
    let person_view = g.canonical(CanonicalId(both)).await.unwrap().unwrap();
    assert_eq!(person_view.sources.len(), 1);
    assert!(g.audit().await.unwrap().is_consistent());
}

#[tokio::test]
async fn replays_and_hostile_entities_change_nothing() {
    replays_and_hostile_entities_change_nothing_on(graph().await).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn pg_replays_and_hostile_entities_change_nothing() {
    on_postgres(replays_and_hostile_entities_change_nothing_on).await;
}

async fn replays_and_hostile_entities_change_nothing_on(g: EntityGraph) {
    let e = || {
        person("hubspot", "contact", "1")
            .with_identity(Identity::email("a@b.com"))
            .with_identity(Identity::Email("not an email".into()))
            .with_identity(Identity::Phone("n/a".into()))
            .with_identity(Identity::Domain("localhost".into()))
    };
    let r = put(&g, "hs", "contacts", vec![("1", 5, e())]).await;
    assert_eq!(r.applied, 1);
    let before = g.stats().await.unwrap();
    let r = put(&g, "hs", "contacts", vec![("1", 5, e())]).await;
    assert_eq!((r.applied, r.unchanged), (0, 1));
    let r = put(&g, "hs", "contacts", vec![("1", 4, e().with_name("older"))]).await;
    assert_eq!((r.applied, r.unchanged), (0, 1));
    assert_eq!(g.stats().await.unwrap(), before);
    // The email and the link to its domain; the rest is no identity.
    assert_eq!(before.keys, 2);
    // Ids the graph cannot index are skipped, not fatal.
    let huge = "x".repeat(5000);
    let r = put(
        &g,
        "hs",
        "contacts",
        vec![("2", 1, person("hubspot", "contact", &huge))],
    )
    .await;
    assert_eq!((r.applied, r.skipped), (0, 1));
    // Deleting an unknown record is a no-op.
    let r = delete(&g, "hs", "contacts", "nope", 1).await;
    assert_eq!((r.applied, r.unchanged), (0, 1));
}

#[tokio::test]
async fn sink_shares_the_state_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path, EncryptionKey::generate())
        .await
        .unwrap();
    let graph = EntityGraph::new(std::sync::Arc::new(
        apex_connect_identity::SqliteGraphStore::from_pool(store.pool().clone())
            .await
            .unwrap(),
    ));
    let sink = EntityGraphSink::new(graph, Policy::default());
    assert!(sink.wants_entities());
    let conn = ConnectionId::from("hs");
    let stream = StreamId::from("contacts");
    let records = vec![Record::upsert(stream.clone(), "1", json!({})).with_version(1)];
    let entities = vec![Some(
        person("hubspot", "contact", "1").with_identity(Identity::email("a@b.com")),
    )];
    let ack = sink
        .write(Batch::new(&conn, &stream, &records).with_entities(&entities))
        .await
        .unwrap();
    assert_eq!(ack.applied, 1);
    drop(sink);
    store.close().await;
    // Both migrators run again on reopen, each with its own table.
    let store = SqliteStore::open(&path, EncryptionKey::generate())
        .await
        .unwrap();
    let graph = EntityGraph::open_sqlite(&path).await.unwrap();
    assert_eq!(graph.stats().await.unwrap().sources, 1);
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%migrations'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let mut names: Vec<String> = tables.into_iter().map(|t| t.0).collect();
    names.sort();
    assert_eq!(names, vec!["_apex_identity_migrations", "_sqlx_migrations"]);
}
