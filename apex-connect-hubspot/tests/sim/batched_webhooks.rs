//! Batched webhook processing (issue 9): the thin objects of many stored webhooks are read
//! together, 100 per `batch/read`, with one result per webhook.

use std::time::SystemTime;

use apex_connect_core::http::RetryConfig;
use apex_connect_core::webhook::Verified;
use apex_connect_core::{Connector, ConnectorExt, Op, VerifiedWebhook};
use apex_connect_hubspot::{HubSpotSim, HubSpotSimConfig, streams};
use apex_connect_testkit::sim::FaultKind;
use http::HeaderMap;
use serde_json::{Value, json};

use super::token_connector;

/// A stored webhook (as the inbox hands it to a worker) with `events` as its body.
fn stored(events: &[Value]) -> VerifiedWebhook {
    VerifiedWebhook::new(
        Verified::default(),
        HeaderMap::new(),
        serde_json::to_vec(events).unwrap().into(),
        SystemTime::now(),
    )
}

fn events(sim: &HubSpotSim, event_type: &str, ids: &[String], first_event_id: u64) -> Vec<Value> {
    serde_json::from_slice(&sim.webhook_body(event_type, ids, "CRM_UI", None, first_event_id))
        .unwrap()
}

const BATCH_READ: &str = "POST /crm/v3/objects/contacts/batch/read";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_cost_ten_batch_reads_and_each_webhook_gets_its_result() {
    let sim = HubSpotSim::start(
        HubSpotSimConfig::default()
            .size(1_200, 10, 10)
            .engagements(0)
            .rate_limits(None, None),
    )
    .await
    .unwrap();
    let hs = token_connector(&sim).build().unwrap();
    let hooks = hs.webhooks().unwrap();
    // 1,000 contact events in 200 deliveries of 5 (one inbox row each).
    let ids: Vec<String> = (0..1_000)
        .map(|i| sim.id(streams::CONTACTS, i).unwrap())
        .collect();
    let mut webhooks: Vec<VerifiedWebhook> = ids
        .chunks(5)
        .enumerate()
        .map(|(i, chunk)| {
            stored(&events(
                &sim,
                "contact.propertyChange",
                chunk,
                10_000 + 5 * i as u64,
            ))
        })
        .collect();
    // A webhook HubSpot never sends (a signed body of the wrong shape), one naming an object
    // deleted since, one of our own write's echo plus a deal deletion, one whose two events
    // for the same contact arrive out of order.
    webhooks.push(stored(&[
        json!({"eventId": 1, "eventType": "contact.creation", "objectId": 1, "occurredAt": "soon"}),
    ]));
    webhooks.push(stored(&events(
        &sim,
        "contact.creation",
        &["10999999".to_string()],
        90_000,
    )));
    let mut echo = serde_json::from_slice::<Vec<Value>>(&sim.webhook_body(
        "contact.propertyChange",
        &[ids[7].clone()],
        "INTEGRATION",
        Some(&sim.config().app_id.to_string()),
        91_000,
    ))
    .unwrap();
    echo.extend(events(
        &sim,
        "deal.deletion",
        &[sim.id(streams::DEALS, 1).unwrap()],
        91_001,
    ));
    webhooks.push(stored(&echo));
    let mut ordered = events(
        &sim,
        "contact.propertyChange",
        &[ids[3].clone(), ids[3].clone()],
        92_000,
    );
    ordered[0]["occurredAt"] = json!(2_000);
    ordered[0]["propertyName"] = json!("second");
    ordered[1]["occurredAt"] = json!(1_000);
    ordered[1]["propertyName"] = json!("first");
    webhooks.push(stored(&ordered));

    // Warm the property definitions: what is counted is the object reads.
    hs.property_names(apex_connect_hubspot::models::object_type("contacts").unwrap())
        .await
        .unwrap();
    let before = sim.stats().path(BATCH_READ);
    let results = hooks.parse_batch(&webhooks).await;
    let reads = sim.stats().path(BATCH_READ) - before;
    // 1,001 distinct contacts (the 1,000, and the one deleted since), 100 per batch read;
    // the contacts named again by later webhooks are read once.
    assert_eq!(reads, 11);
    assert_eq!(results.len(), webhooks.len());

    for (i, r) in results[..200].iter().enumerate() {
        let changes = r.as_ref().unwrap();
        let got: Vec<&str> = changes.iter().map(|c| c.id.as_str()).collect();
        let want: Vec<&str> = ids[5 * i..5 * i + 5].iter().map(String::as_str).collect();
        assert_eq!(got, want, "webhook {i}");
        for c in changes {
            assert_eq!(c.op, Op::Upsert);
            let r = c
                .record
                .as_ref()
                .expect("thin event resolved by the batch read");
            assert_eq!(r.id, c.id);
            assert_eq!(
                r.raw.to_value().unwrap(),
                sim.object(streams::CONTACTS, &c.id).unwrap()
            );
        }
    }
    // The malformed one fails alone.
    let e = results[200].as_ref().unwrap_err();
    assert_eq!(e.kind(), apex_connect_core::ErrorKind::InvalidInput);
    // The missing object: its change, without a record (the worker reads it again).
    let missing = results[201].as_ref().unwrap();
    assert_eq!(missing.len(), 1);
    assert!(missing[0].record.is_none());
    // The echo is dropped; the deletion needs no read.
    let echo = results[202].as_ref().unwrap();
    assert_eq!(echo.len(), 1);
    assert_eq!((echo[0].stream.as_str(), echo[0].op), ("deals", Op::Delete));
    // Per-object order follows occurredAt.
    let ordered = results[203].as_ref().unwrap();
    assert_eq!(ordered.len(), 2);
    assert_eq!(ordered[0].occurred_at, Some(1_000));
    assert_eq!(ordered[1].occurred_at, Some(2_000));
    assert!(ordered.iter().all(|c| c.record.is_some()));

    // One by one, the same webhooks cost one read each.
    let before = sim.stats().path(BATCH_READ);
    for w in &webhooks[..3] {
        hooks.parse(w).await.unwrap();
    }
    assert_eq!(sim.stats().path(BATCH_READ) - before, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_read_fails_only_the_webhooks_that_need_it() {
    let sim = HubSpotSim::start(
        HubSpotSimConfig::default()
            .size(20, 20, 5)
            .engagements(0)
            .rate_limits(None, None),
    )
    .await
    .unwrap();
    let hs = token_connector(&sim)
        .retry(RetryConfig::none())
        .build()
        .unwrap();
    assert!(hs.takes_webhooks());
    for s in [streams::COMPANIES, streams::CONTACTS] {
        hs.property_names(apex_connect_hubspot::models::object_type(s).unwrap())
            .await
            .unwrap();
    }
    let company = sim.id(streams::COMPANIES, 2).unwrap();
    let contact = sim.id(streams::CONTACTS, 2).unwrap();
    let webhooks = vec![
        stored(&events(
            &sim,
            "company.propertyChange",
            std::slice::from_ref(&company),
            1,
        )),
        stored(&events(
            &sim,
            "contact.propertyChange",
            std::slice::from_ref(&contact),
            2,
        )),
        stored(
            &[
                events(
                    &sim,
                    "contact.propertyChange",
                    std::slice::from_ref(&contact),
                    3,
                ),
                events(&sim, "company.propertyChange", &[company], 4),
            ]
            .concat(),
        ),
    ];
    // The companies' read comes first (first named): it fails, with no retry.
    sim.faults().push_scheduled(FaultKind::INTERNAL);
    let results = hs.webhooks().unwrap().parse_batch(&webhooks).await;
    assert!(results[0].is_err());
    let ok = results[1].as_ref().unwrap();
    assert_eq!(ok[0].id, contact);
    assert!(ok[0].record.is_some());
    let e = results[2].as_ref().unwrap_err();
    assert!(e.is_temporary(), "the worker retries it: {e}");
}

/// Issue 9's load, at the connector: 20,000 contact events in deliveries of 1 to 10 events,
/// parsed by a worker claiming 100 stored webhooks at a time, against HubSpot's lowest limit
/// (100 requests in any ten seconds) on a virtual clock. Prints the virtual time the reads
/// take; asserts the number of reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_events_in_worker_batches_read_a_hundred_objects_per_call() {
    use apex_connect_core::http::{Clock, RecordingClock};
    use std::sync::Arc;
    use std::time::Duration;

    let clock = Arc::new(RecordingClock::new());
    let sim = HubSpotSim::start(
        HubSpotSimConfig::default()
            .size(20_000, 1, 1)
            .engagements(0)
            .rate_limits(Some(100), None)
            .clock(clock.clone())
            .latency(Duration::from_millis(30)),
    )
    .await
    .unwrap();
    let hs = token_connector(&sim).clock(clock.clone()).build().unwrap();
    let hooks = hs.webhooks().unwrap();
    let ids: Vec<String> = (0..20_000)
        .map(|i| sim.id(streams::CONTACTS, i).unwrap())
        .collect();
    let mut webhooks = Vec::new();
    let (mut at, mut size) = (0usize, 1usize);
    while at < ids.len() {
        let end = (at + size).min(ids.len());
        webhooks.push(stored(&events(
            &sim,
            "contact.propertyChange",
            &ids[at..end],
            at as u64,
        )));
        at = end;
        size = size % 10 + 1;
    }
    let t0 = clock.now();
    let before = sim.stats().path(BATCH_READ);
    let mut changes = 0;
    for claim in webhooks.chunks(100) {
        for r in hooks.parse_batch(claim).await {
            let r = r.unwrap();
            assert!(r.iter().all(|c| c.record.is_some()));
            changes += r.len();
        }
    }
    let reads = sim.stats().path(BATCH_READ) - before;
    let took = clock.now() - t0;
    eprintln!(
        "{changes} events in {} webhooks: {reads} batch reads, {:.1} virtual s at 100 requests / 10 s, {} 429s",
        webhooks.len(),
        took.as_secs_f64(),
        sim.limiter().stats().rejected
    );
    assert_eq!(changes, 20_000);
    // 100 webhooks of 5.5 events: 550 contacts, 6 reads a claim.
    let claims = webhooks.len().div_ceil(100) as u64;
    assert!(reads <= claims * 6, "{reads} reads for {claims} claims");
    assert_eq!(sim.limiter().stats().rejected, 0);
}
