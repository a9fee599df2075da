//! Outbound Messages: the documented envelope, verification (endpoint secret, org), one inbox
//! event per notification, the SOAP Ack, re-reading the records, echo suppression.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use apex_connect_core::webhook::WebhookRequest;
use apex_connect_core::{
    ConnectionId, Connector, MemoryTokenStore, Op, StreamId, VerifiedWebhook, WebhookError,
    WriteAction, WriteOp,
};
use apex_connect_salesforce::webhook::{ACK, parse_outbound};
use apex_connect_salesforce::{SalesforceSim, SalesforceSimConfig};
use axum::body::Bytes;
use axum::extract::State;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde_json::json;

use crate::fixture;

#[test]
fn the_documented_envelope_parses() {
    let m = parse_outbound(fixture("outbound_message.xml").as_bytes()).unwrap();
    assert_eq!(m.organization_id, "00Dx0000000BV7zEAG");
    assert_eq!(m.action_id.as_deref(), Some("04kx00000008OcHAAU"));
    assert_eq!(m.notifications.len(), 2);
    let n = &m.notifications[0];
    assert_eq!(
        (n.notification_id.as_str(), n.object.as_str(), n.id.as_str()),
        ("04lx00000009qSQAAY", "Opportunity", "006x0000004L3gVAAS")
    );
    assert_eq!(
        n.fields["Name"].as_deref(),
        Some("Acme & Sons \u{2013} renewal")
    );
    assert_eq!(n.fields["NextStep"], None);
    assert_eq!(
        m.notifications[1].fields["Name"].as_deref(),
        Some("Globex <expansion>")
    );
    for bad in [
        "",
        "<a/>",
        "<soapenv:Envelope xmlns:soapenv=\"x\"/>",
        "<!DOCTYPE x><x/>",
        "not xml at all <",
    ] {
        assert!(parse_outbound(bad.as_bytes()).is_err(), "{bad}");
    }
}

/// A minimal receiver, as a host's webhook ingress: verify, split, dedupe, store, Ack.
#[derive(Clone)]
struct Receiver {
    connector: Arc<dyn Connector>,
    inbox: Arc<Mutex<BTreeMap<String, VerifiedWebhook>>>,
}

async fn receive(
    State(r): State<Receiver>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let hooks = r.connector.webhooks().expect("webhooks");
    let now = SystemTime::now();
    let verified = match hooks
        .verifier()
        .verify(&WebhookRequest::new(&method, &uri, &headers, &body), now)
    {
        Ok(v) => v,
        Err(WebhookError::Malformed(_)) => return (StatusCode::BAD_REQUEST, String::new()),
        Err(_) => return (StatusCode::UNAUTHORIZED, String::new()),
    };
    let Ok(events) = hooks.events(&verified, &body) else {
        return (StatusCode::BAD_REQUEST, String::new());
    };
    for e in events {
        let w = VerifiedWebhook::new(verified.clone(), headers.clone(), e.body, now);
        r.inbox.lock().unwrap().entry(e.id).or_insert(w);
    }
    let reply = hooks.accepted_reply(&verified, &body).expect("an Ack");
    (
        StatusCode::from_u16(reply.status).unwrap(),
        String::from_utf8(reply.body.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn outbound_messages_end_to_end() {
    let sim = SalesforceSim::start(SalesforceSimConfig::default())
        .await
        .unwrap();
    let connector = sim
        .connector(
            &ConnectionId::from("o"),
            Arc::new(MemoryTokenStore::new()),
            json!({}),
        )
        .await
        .unwrap();
    let rx = Receiver {
        connector: connector.clone(),
        inbox: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/webhooks/salesforce/{conn}", axum::routing::post(receive))
        .with_state(rx.clone());
    let server = apex_connect_testkit::sim::SimServer::start(app)
        .await
        .unwrap();
    let url = format!(
        "{}/webhooks/salesforce/o?secret=sim-outbound-secret",
        server.base_url()
    );
    let ids: Vec<String> = [
        "006000000000001AAA",
        "006000000000002AAA",
        "006000000000003AAA",
    ]
    .map(String::from)
    .to_vec();
    sim.update("Opportunity", &ids[0], json!({"StageName": "Closed Won"}))
        .unwrap();
    let d = sim.send_outbound(&url, "Opportunity", &ids).await.unwrap();
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(std::str::from_utf8(&d.body).unwrap(), ACK);
    // Redelivered (Salesforce retries until it gets the Ack): one event per notification id.
    sim.send_outbound(&url, "Opportunity", &ids).await.unwrap();
    assert_eq!(rx.inbox.lock().unwrap().len(), 3);
    // Refused: no secret, another org.
    let wrong = format!("{}/webhooks/salesforce/o?secret=guess", server.base_url());
    assert_eq!(
        sim.send_outbound(&wrong, "Opportunity", &ids)
            .await
            .unwrap()
            .status,
        StatusCode::UNAUTHORIZED
    );
    let other_org = sim
        .outbound_body("Opportunity", &ids)
        .unwrap()
        .replace("00D000000000001AAA", "00D000000000002AAA");
    let req = reqwest::Client::new()
        .post(&url)
        .header("content-type", "text/xml")
        .body(other_org)
        .send()
        .await
        .unwrap();
    assert_eq!(req.status(), StatusCode::UNAUTHORIZED);
    // Processing: the records are re-read (their current state), one result per event.
    sim.delete("Opportunity", &ids[2]).unwrap();
    let stored: Vec<VerifiedWebhook> = rx.inbox.lock().unwrap().values().cloned().collect();
    connector
        .discover(&StreamId::from("Opportunity"))
        .await
        .unwrap();
    let before = sim.api_calls();
    let results = connector.webhooks().unwrap().parse_batch(&stored).await;
    assert_eq!(
        sim.api_calls() - before,
        1,
        "one query re-reads every notified record"
    );
    let changes: Vec<_> = results.into_iter().flat_map(|r| r.unwrap()).collect();
    assert_eq!(changes.len(), 3);
    let won = changes.iter().find(|c| c.id == ids[0]).unwrap();
    assert_eq!(won.op, Op::Upsert);
    assert_eq!(won.stream, StreamId::from("Opportunity"));
    let rec = won.record.as_ref().unwrap().raw.to_value().unwrap();
    assert_eq!(rec["StageName"], "Closed Won");
    assert_eq!(
        changes.iter().find(|c| c.id == ids[2]).unwrap().op,
        Op::Delete
    );
    // Our own write coming back is dropped (echo suppression).
    connector
        .write(
            &StreamId::from("Opportunity"),
            vec![WriteOp::new(
                WriteAction::Update,
                Some(ids[1].clone()),
                json!({"Amount": 42.0}),
            )],
        )
        .await
        .unwrap();
    let results = connector.webhooks().unwrap().parse_batch(&stored).await;
    let changes: Vec<_> = results.into_iter().flat_map(|r| r.unwrap()).collect();
    assert!(
        !changes.iter().any(|c| c.id == ids[1]),
        "the echo of our write came back: {changes:?}"
    );
    assert!(changes.iter().any(|c| c.id == ids[0]));
}

#[tokio::test]
async fn one_bad_event_never_fails_the_batch() {
    let sim = SalesforceSim::start(SalesforceSimConfig::default())
        .await
        .unwrap();
    let connector = sim
        .connector(
            &ConnectionId::from("o"),
            Arc::new(MemoryTokenStore::new()),
            json!({}),
        )
        .await
        .unwrap();
    let good = sim
        .outbound_body("Account", &["001000000000001AAA".to_string()])
        .unwrap();
    let hooks = connector.webhooks().unwrap();
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("text/xml"));
    let ok = VerifiedWebhook::new(
        Default::default(),
        h.clone(),
        Bytes::from(good),
        SystemTime::now(),
    );
    let bad = VerifiedWebhook::new(
        Default::default(),
        h,
        Bytes::from_static(b"{\"nope\":1}"),
        SystemTime::now(),
    );
    let out = hooks.parse_batch(&[bad, ok]).await;
    assert!(out[0].is_err());
    assert_eq!(out[1].as_ref().unwrap().len(), 1);
}
