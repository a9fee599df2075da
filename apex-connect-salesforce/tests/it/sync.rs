//! Sync against the simulator: keyset ties, deletes, Bulk, QUERY_TIMEOUT, the daily share,
//! wide objects, describe-driven schemas and relations.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, UNIX_EPOCH};

use apex_connect_core::store::Clock;
use apex_connect_core::{
    ConnectionId, Connector, CursorToken, ErrorKind, MemorySink, MemoryStore, MemoryTokenStore, Op,
    Record, StateStore, StreamId, SyncEngine, SyncOptions,
};
use apex_connect_salesforce::{SalesforceSim, SalesforceSimConfig};
use serde_json::{Value, json};

async fn connector(sim: &SalesforceSim, extra: Value) -> Arc<dyn Connector> {
    sim.connector(
        &ConnectionId::from("t"),
        Arc::new(MemoryTokenStore::new()),
        extra,
    )
    .await
    .unwrap()
}

/// Reads pages from `cursor` until caught up; returns the records and the last cursor.
async fn walk(
    c: &dyn Connector,
    stream: &StreamId,
    mut cursor: Option<CursorToken>,
) -> (Vec<Record>, Option<CursorToken>, usize) {
    let mut out = Vec::new();
    let mut pages = 0;
    loop {
        let p = c.read(stream, cursor.as_ref()).await.unwrap();
        pages += 1;
        assert!(p.rejects.is_empty(), "{:?}", p.rejects);
        out.extend(p.records);
        cursor = p.next;
        if !p.has_more {
            return (out, cursor, pages);
        }
        assert!(pages < 10_000);
    }
}

/// Half a second into a second of 2027, after the generated data.
const T0: u64 = 1_800_000_000_500;

/// A simulator of ten Accounts on a wall clock the test moves by hand (starting at `T0`),
/// shared with the connectors it builds: the clock's Unix milliseconds and the simulator.
async fn sim_on_manual_clock() -> (Arc<AtomicU64>, SalesforceSim) {
    let now = Arc::new(AtomicU64::new(T0));
    let t = now.clone();
    let clock = Clock::from_fn(move || UNIX_EPOCH + Duration::from_millis(t.load(SeqCst)));
    let sim = SalesforceSim::start(
        SalesforceSimConfig::default()
            .count("Account", 10)
            .clock(clock),
    )
    .await
    .unwrap();
    (now, sim)
}

#[tokio::test]
async fn records_sharing_one_second_are_each_read_exactly_once() {
    let (now, sim) = sim_on_manual_clock().await;
    let same = sim.add_same_second("Account", 5000).unwrap();
    now.fetch_add(1000, SeqCst); // that second has ended
    let c = connector(
        &sim,
        json!({"objects": ["Account"], "lookback": "0s", "query_batch_size": 200}),
    )
    .await;
    let stream = StreamId::from("Account");
    // Page through, losing the query locators halfway: the walk goes on by keyset.
    let mut cursor = None;
    let mut seen: HashMap<String, u32> = HashMap::new();
    for i in 0.. {
        if i == 7 {
            sim.expire_query_locators();
        }
        let p = c.read(&stream, cursor.as_ref()).await.unwrap();
        for r in &p.records {
            *seen.entry(r.id.clone()).or_default() += 1;
        }
        cursor = p.next;
        if !p.has_more {
            break;
        }
    }
    assert_eq!(seen.len(), 5010);
    assert!(seen.values().all(|n| *n == 1), "a record was read twice");
    assert!(same.iter().all(|id| seen.contains_key(id)));
    // Caught up: an incremental read (no lookback) brings nothing again...
    let (again, cursor, _) = walk(c.as_ref(), &stream, cursor).await;
    assert!(again.is_empty(), "{} records read again", again.len());
    // ...and a change arrives at once...
    sim.update("Account", &same[4321], json!({"Name": "renamed"}))
        .unwrap();
    let (changed, cursor, _) = walk(c.as_ref(), &stream, cursor).await;
    assert_eq!(
        changed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        vec![same[4321].as_str()]
    );
    // ...its second, read while running, is read once more after it ends (it may have
    // changed again)...
    now.fetch_add(1000, SeqCst);
    let (reread, cursor, _) = walk(c.as_ref(), &stream, cursor).await;
    assert!(reread.iter().all(|r| r.id == same[4321]), "{reread:?}");
    // ...and then nothing more.
    now.fetch_add(5000, SeqCst);
    let (after, _, _) = walk(c.as_ref(), &stream, cursor).await;
    assert!(after.is_empty(), "{} records read again", after.len());
}

/// Salesforce stamps at second precision: a change made later in a second a walk already
/// read, to a record with a lower `Id` than the walk's last, carries the same stamp and sorts
/// before the mark. The next walk re-reads a second that was running when read (lookback 0).
#[tokio::test]
async fn a_later_change_in_the_same_second_to_a_lower_id_is_not_lost() {
    let (now, sim) = sim_on_manual_clock().await;
    let c = connector(&sim, json!({"objects": ["Account"], "lookback": "0s"})).await;
    let stream = StreamId::from("Account");
    let same = sim.add_same_second("Account", 3).unwrap();
    // Read while that second is still running.
    let (first, cursor, _) = walk(c.as_ref(), &stream, None).await;
    assert_eq!(first.len(), 13);
    // The lowest of the three changes again in the same second.
    now.fetch_add(200, SeqCst);
    sim.update(
        "Account",
        &same[0],
        json!({"Name": "changed in the same second"}),
    )
    .unwrap();
    now.fetch_add(1000, SeqCst);
    let (next, _, _) = walk(c.as_ref(), &stream, cursor).await;
    let mut ids: Vec<&str> = next.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, same.iter().map(String::as_str).collect::<Vec<_>>());
    let renamed = next.iter().find(|r| r.id == same[0]).unwrap();
    let raw = renamed.raw.to_value().unwrap();
    assert_eq!(raw["Name"], "changed in the same second");
}

#[tokio::test]
async fn the_lookback_reads_a_late_visible_record() {
    let sim = SalesforceSim::start(SalesforceSimConfig::default().count("Account", 30))
        .await
        .unwrap();
    let c = connector(&sim, json!({"objects": ["Account"], "lookback": "30s"})).await;
    let stream = StreamId::from("Account");
    let fresh = sim.add_same_second("Account", 2).unwrap();
    let (_, cursor, _) = walk(c.as_ref(), &stream, None).await;
    // Within the lookback window an incremental read re-reads the last records (upserts are
    // idempotent), so one that became visible late with an older stamp is not lost.
    let (again, _, _) = walk(c.as_ref(), &stream, cursor).await;
    assert!(fresh.iter().all(|id| again.iter().any(|r| &r.id == id)));
}

#[tokio::test]
async fn a_delete_arrives_as_a_delete() {
    let sim = SalesforceSim::start(SalesforceSimConfig::default())
        .await
        .unwrap();
    let c = connector(&sim, json!({"objects": ["Contact"]})).await;
    let stream = StreamId::from("Contact");
    let (all, cursor, _) = walk(c.as_ref(), &stream, None).await;
    assert_eq!(all.len(), 80);
    let victim = all[10].id.clone();
    sim.delete("Contact", &victim).unwrap();
    let (changes, cursor, _) = walk(c.as_ref(), &stream, cursor).await;
    let del: Vec<&Record> = changes.iter().filter(|r| r.op == Op::Delete).collect();
    assert_eq!(del.len(), 1);
    assert_eq!(del[0].id, victim);
    assert!(del[0].version.is_some());
    assert!(!changes.iter().any(|r| r.op == Op::Upsert && r.id == victim));
    // After the recycle bin is emptied only getDeleted still knows.
    let other = all[20].id.clone();
    sim.delete("Contact", &other).unwrap();
    sim.purge_recycle_bin("Contact").unwrap();
    let c2 = connector(&sim, json!({"objects": ["Contact"], "deletes": "both"})).await;
    let (changes, _, _) = walk(c2.as_ref(), &stream, cursor).await;
    assert!(
        changes.iter().any(|r| r.op == Op::Delete && r.id == other),
        "{changes:?}"
    );
}

#[tokio::test]
async fn a_large_walk_goes_through_bulk_with_bounded_pages() {
    let sim = SalesforceSim::start(
        SalesforceSimConfig::default()
            .count("Account", 20_000)
            .per_second(50),
    )
    .await
    .unwrap();
    let c = connector(
        &sim,
        json!({"objects": ["Account"], "bulk_threshold": 5000, "bulk_page_records": 2000}),
    )
    .await;
    let stream = StreamId::from("Account");
    let mut cursor = None;
    let mut ids = std::collections::HashSet::new();
    let mut pages = 0;
    loop {
        let p = c.read(&stream, cursor.as_ref()).await.unwrap();
        // Memory per page is bounded by maxRecords, however large the job.
        assert!(p.records.len() <= 2000);
        ids.extend(p.records.iter().map(|r| r.id.clone()));
        pages += 1;
        cursor = p.next;
        if !p.has_more {
            break;
        }
    }
    assert_eq!(ids.len(), 20_000);
    assert!(pages >= 11, "{pages} pages");
    let by_path = sim.stats().by_path();
    let results: u64 = by_path
        .iter()
        .filter(|(p, _)| p.ends_with("/results"))
        .map(|(_, n)| *n)
        .sum();
    assert_eq!(results, 10, "{by_path:?}");
    // Bulk records look like REST ones (same schema, typed values).
    let c2 = connector(&sim, json!({"objects": ["Account"]})).await;
    let schema = c2.discover(&stream).await.unwrap();
    let p = c.read(&stream, None).await.unwrap();
    let _ = p;
    let v = jsonschema::validator_for(&schema.schema).unwrap();
    let (sample, _, _) = {
        let small = SalesforceSim::start(SalesforceSimConfig::default().count("Account", 30))
            .await
            .unwrap();
        let cb = connector(
            &small,
            json!({"objects": ["Account"], "bulk_threshold": 10, "bulk_page_records": 100}),
        )
        .await;
        walk(cb.as_ref(), &stream, None).await
    };
    assert_eq!(sample.len(), 30);
    for r in &sample {
        let value = r.raw.to_value().unwrap();
        assert!(v.is_valid(&value), "{value}");
        assert_eq!(value["attributes"]["type"], "Account");
    }
}

#[tokio::test]
async fn query_timeout_halves_the_date_window() {
    let sim = SalesforceSim::start(
        SalesforceSimConfig::default()
            .count("Account", 200)
            .per_second(1)
            .query_timeout_above(Duration::from_secs(40 * 86_400)),
    )
    .await
    .unwrap();
    let c = connector(
        &sim,
        json!({"objects": ["Account"], "start_date": "2023-06-01T00:00:00Z"}),
    )
    .await;
    let stream = StreamId::from("Account");
    let (records, _, _) = walk(c.as_ref(), &stream, None).await;
    let got: BTreeMap<String, Option<i64>> =
        records.iter().map(|r| (r.id.clone(), r.version)).collect();
    assert_eq!(got, sim.expected("Account"));
    assert!(
        sim.stats().status(400) > 0,
        "the simulator never timed out a query"
    );
}

#[tokio::test]
async fn the_daily_share_stops_a_sync_that_resumes_later() {
    let sim = SalesforceSim::start(SalesforceSimConfig::default().count("Account", 3000))
        .await
        .unwrap();
    let c = connector(&sim, json!({"objects": ["Account"], "query_batch_size": 200, "daily_api_share": 0.5, "bulk_threshold": 100000})).await;
    sim.set_api_usage(40, 100);
    let store = Arc::new(MemoryStore::new());
    let engine = SyncEngine::new(store.clone() as Arc<dyn StateStore>);
    let sink = MemorySink::new();
    let conn = ConnectionId::from("t");
    let stream = StreamId::from("Account");
    let e = engine
        .run(c.as_ref(), &conn, &stream, &sink, SyncOptions::new())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert!(e.to_string().contains("daily API allocation"), "{e}");
    assert_eq!(e.context_value("api_max"), Some("100"));
    let partial = sink.len();
    assert!(partial > 0 && partial < 3000, "{partial}");
    // A new day (the allocation rolled): the next run goes on from the cursor.
    sim.set_api_usage(0, 1_000_000);
    let c = connector(&sim, json!({"objects": ["Account"], "query_batch_size": 200, "daily_api_share": 0.5, "bulk_threshold": 100000})).await;
    engine
        .run(c.as_ref(), &conn, &stream, &sink, SyncOptions::new())
        .await
        .unwrap();
    assert_eq!(sink.len(), 3000);
}

#[tokio::test]
async fn wide_objects_are_read_in_field_sets_joined_by_id() {
    let sim = SalesforceSim::start(SalesforceSimConfig::default())
        .await
        .unwrap();
    let stream = StreamId::from("Account");
    let whole = connector(&sim, json!({"objects": ["Account"]})).await;
    let split = connector(&sim, json!({"objects": ["Account"], "max_query_url": 600})).await;
    let (a, _, _) = walk(whole.as_ref(), &stream, None).await;
    let (b, _, _) = walk(split.as_ref(), &stream, None).await;
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.id, y.id);
        assert_eq!(
            x.raw.to_value().unwrap(),
            y.raw.to_value().unwrap(),
            "{}",
            x.id
        );
    }
    let retrieves = sim
        .stats()
        .by_path()
        .iter()
        .filter(|(p, _)| p.contains("composite/sobjects/Account"))
        .map(|(_, n)| *n)
        .sum::<u64>();
    assert!(retrieves > 0, "the split read made no retrieve call");
}

#[tokio::test]
async fn describe_drives_schemas_and_relations() {
    let sim = SalesforceSim::start(SalesforceSimConfig::default())
        .await
        .unwrap();
    let c = connector(&sim, json!({"extra_objects": ["Invoice__c"]})).await;
    let inv = StreamId::from("Invoice__c");
    let schema = c.discover(&inv).await.unwrap();
    assert!(
        schema.custom_fields.contains(&"Amount__c".to_string()),
        "{:?}",
        schema.custom_fields
    );
    assert_eq!(schema.replication_key.as_deref(), Some("SystemModstamp"));
    let acc = c.discover(&StreamId::from("Account")).await.unwrap();
    assert!(
        acc.schema["$comment"]
            .as_str()
            .unwrap()
            .contains("BillingAddress")
    );
    let (invoices, _, _) = walk(c.as_ref(), &inv, None).await;
    let e = c.map_entity(&invoices[0]).unwrap().unwrap();
    assert!(
        e.relations
            .iter()
            .any(|r| r.kind == "account" && r.target.object_type == "Account"),
        "{:?}",
        e.relations
    );
    assert!(e.custom_fields.contains_key("Amount__c"));
    let (tasks, _, _) = walk(c.as_ref(), &StreamId::from("Task"), None).await;
    let kinds: Vec<String> = tasks
        .iter()
        .take(4)
        .flat_map(|t| c.map_entity(t).unwrap().unwrap().relations)
        .filter(|r| r.kind == "who" || r.kind == "what")
        .map(|r| format!("{}:{}", r.kind, r.target.object_type))
        .collect();
    for want in [
        "who:Contact",
        "who:Lead",
        "what:Account",
        "what:Opportunity",
    ] {
        assert!(kinds.contains(&want.to_string()), "{kinds:?}");
    }
    let (hist, _, _) = walk(c.as_ref(), &StreamId::from("OpportunityHistory"), None).await;
    let e = c.map_entity(&hist[0]).unwrap().unwrap();
    assert!(
        e.relations
            .iter()
            .any(|r| r.kind == "history_of" && r.target.object_type == "Opportunity")
    );
    assert_eq!(
        e.attributes.get("stage").and_then(Value::as_str),
        Some("Prospecting")
    );
}
