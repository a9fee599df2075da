//! Integration tests of apex-connect-identity (one binary).

mod connectors;
mod graph;
mod groundtruth;
#[cfg(feature = "postgres")]
mod pg;
mod props;

use apex_connect_core::{Batch, ConnectionId, Entity, Record, StreamId};
use apex_connect_identity::{ApplyReport, EntityGraph};

/// Writes `(record id, version, entity)` to `graph` as one batch of `connection`/`stream`.
pub(crate) async fn put(
    graph: &EntityGraph,
    connection: &str,
    stream: &str,
    items: Vec<(&str, i64, Entity)>,
) -> ApplyReport {
    let conn = ConnectionId::new(connection.to_string());
    let stream = StreamId::new(stream.to_string());
    let mut records = Vec::new();
    let mut entities = Vec::new();
    for (id, version, e) in items {
        records.push(
            Record::upsert(stream.clone(), id, serde_json::json!({ "id": id }))
                .with_modified(version),
        );
        entities.push(Some(e));
    }
    graph
        .apply(Batch::new(&conn, &stream, &records).with_entities(&entities))
        .await
        .expect("apply")
}

/// Deletes record `id` of `connection`/`stream`.
pub(crate) async fn delete(
    graph: &EntityGraph,
    connection: &str,
    stream: &str,
    id: &str,
    version: i64,
) -> ApplyReport {
    let conn = ConnectionId::new(connection.to_string());
    let stream = StreamId::new(stream.to_string());
    let records = vec![Record::delete(stream.clone(), id).with_version(version)];
    graph
        .apply(Batch::new(&conn, &stream, &records))
        .await
        .expect("delete")
}
