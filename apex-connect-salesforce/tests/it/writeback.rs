//! Write-back through sObject Collections: per-record results, partial failure, conflicts
//! (If-Unmodified-Since one by one, or a LastModifiedDate compare for many), upsert by
//! external id, delete.

use std::sync::Arc;

use apex_connect_core::{
    ConnectionId, Connector, ErrorKind, MemoryTokenStore, StreamId, WriteAction, WriteOp,
};
use apex_connect_salesforce::{SalesforceSim, SalesforceSimConfig};
use serde_json::json;

async fn setup() -> (SalesforceSim, Arc<dyn Connector>) {
    let sim = SalesforceSim::start(SalesforceSimConfig::default())
        .await
        .unwrap();
    let c = sim
        .connector(
            &ConnectionId::from("w"),
            Arc::new(MemoryTokenStore::new()),
            json!({"external_ids": {"Account": "External_Id__c"}}),
        )
        .await
        .unwrap();
    (sim, c)
}

fn err_kind(r: &apex_connect_core::WriteResult) -> Option<ErrorKind> {
    r.outcome.as_ref().err().map(|e| e.kind())
}

#[tokio::test]
async fn partial_failure_is_reported_per_record() {
    let (sim, c) = setup().await;
    let stream = StreamId::from("Account");
    let ops = vec![
        WriteOp::new(WriteAction::Create, None, json!({"Name": "Initech"})).with_key("ok-create"),
        WriteOp::new(WriteAction::Create, None, json!({"Industry": "Retail"})).with_key("no-name"),
        WriteOp::new(
            WriteAction::Update,
            Some("001000000000004AAA".into()),
            json!({"Industry": "Media"}),
        )
        .with_key("ok-update"),
        WriteOp::new(
            WriteAction::Update,
            Some("001000000000005AAA".into()),
            json!({"Bogus__c": 1}),
        )
        .with_key("bad-field"),
        WriteOp::new(
            WriteAction::Upsert,
            None,
            json!({"External_Id__c": "EXT-6", "Name": "Six"}),
        )
        .with_key("upsert-existing"),
        WriteOp::new(
            WriteAction::Upsert,
            None,
            json!({"External_Id__c": "EXT-NEW", "Name": "New"}),
        )
        .with_key("upsert-new"),
        WriteOp::new(
            WriteAction::Delete,
            Some("001000000000007AAA".into()),
            json!(null),
        )
        .with_key("ok-delete"),
        WriteOp::new(
            WriteAction::Delete,
            Some("001999999999999AAA".into()),
            json!(null),
        )
        .with_key("gone"),
        WriteOp::new(WriteAction::Custom("merge".into()), None, json!({})).with_key("custom"),
    ];
    let report = c.write(&stream, ops).await.unwrap();
    let keys: Vec<&str> = report.results.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "ok-create",
            "no-name",
            "ok-update",
            "bad-field",
            "upsert-existing",
            "upsert-new",
            "ok-delete",
            "gone",
            "custom"
        ]
    );
    let r = &report.results;
    assert!(r[0].outcome.is_ok());
    assert_eq!(err_kind(&r[1]), Some(ErrorKind::InvalidInput));
    assert!(
        r[1].outcome
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("REQUIRED_FIELD_MISSING")
    );
    assert!(r[2].outcome.is_ok());
    assert_eq!(err_kind(&r[3]), Some(ErrorKind::InvalidInput));
    assert_eq!(r[4].outcome.as_ref().unwrap(), "001000000000006AAA");
    assert!(r[5].outcome.is_ok());
    assert!(r[6].outcome.is_ok());
    assert!(r[7].outcome.is_err());
    assert_eq!(err_kind(&r[8]), Some(ErrorKind::Unsupported));
    assert_eq!(report.succeeded(), 5);
    // The org changed accordingly.
    let live = sim.expected("Account");
    assert!(!live.contains_key("001000000000007AAA"));
    assert!(live.contains_key(r[0].outcome.as_ref().unwrap()));
    // Three collection calls for creates/updates/upserts/deletes: one each.
    let by_path = sim.stats().by_path();
    assert!(
        by_path
            .keys()
            .any(|p| p.contains("/composite/sobjects/Account/External_Id__c")),
        "{by_path:?}"
    );
}

#[tokio::test]
async fn conflicts_are_reported_not_overwritten_unless_forced() {
    let (sim, c) = setup().await;
    let stream = StreamId::from("Account");
    let id = "001000000000008AAA".to_string();
    let before = sim.expected("Account")[&id].unwrap();
    let changed = sim
        .update("Account", &id, json!({"Industry": "Energy"}))
        .unwrap();
    assert!(changed > before);
    // One conditional update: sObject Rows with If-Unmodified-Since -> 412.
    let stale = WriteOp::new(
        WriteAction::Update,
        Some(id.clone()),
        json!({"Industry": "Retail"}),
    )
    .if_unmodified_since(before);
    let report = c.write(&stream, vec![stale.clone()]).await.unwrap();
    assert_eq!(err_kind(&report.results[0]), Some(ErrorKind::Conflict));
    assert_eq!(
        sim.record("Account", &id).unwrap()["Industry"],
        "Energy",
        "a conflict must not overwrite"
    );
    // Many conditional updates: one LastModifiedDate compare, then one collection call.
    let mut ops: Vec<WriteOp> = (20..32)
        .map(|i| {
            WriteOp::new(
                WriteAction::Update,
                Some(format!("001{i:012}AAA")),
                json!({"Type": "Customer"}),
            )
            .if_unmodified_since(changed + 1000)
        })
        .collect();
    ops.push(stale.clone().with_key("stale"));
    let report = c.write(&stream, ops).await.unwrap();
    assert_eq!(report.succeeded(), 12);
    assert_eq!(
        err_kind(report.results.last().unwrap()),
        Some(ErrorKind::Conflict)
    );
    // Forced: written.
    let report = c.write(&stream, vec![stale.force()]).await.unwrap();
    assert!(report.results[0].outcome.is_ok());
    assert_eq!(sim.record("Account", &id).unwrap()["Industry"], "Retail");
}
