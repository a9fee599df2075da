//! Durable append to the inbox (with SQLite group commit) and the round trip of a verified
//! webhook through the inbox row. Event ids come from the connector
//! (`Connector::webhook_events`).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use apex_connect_core::store::{AppendOutcome, EventId, InboxEvent, StateStore, append_inbox_row};
use apex_connect_core::webhook::{Verified, VerifiedWebhook};
use apex_connect_core::{Error, Result};
use http::{HeaderMap, HeaderName, HeaderValue};
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{mpsc, oneshot};

/// Reserved key in the stored headers object carrying what the verifier learned
/// (`event_id`, `timestamp_ms`); header names cannot contain `@`, so it never clashes.
const VERIFIED_KEY: &str = "@verified";

/// Headers never stored (credentials of the caller, cookies).
const DROPPED_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// Appends verified events to the inbox.
///
/// Two modes: straight through [`StateStore::inbox_append`] (any store, one transaction per
/// event), or **group commit** on a SQLite pool: one writer task takes every queued event,
/// appends them in one transaction, and answers each request once that transaction committed.
/// An answer therefore always means "durable" (WAL, `synchronous=NORMAL`: survives a process
/// crash), and throughput is bounded by commits per second times the batch size, not by
/// commits per second.
#[derive(Clone)]
pub struct InboxAppender {
    mode: Mode,
}

#[derive(Clone)]
enum Mode {
    Direct(Arc<dyn StateStore>),
    Batched(mpsc::Sender<Job>, SqlitePool, WriteGate),
}

/// Serializes this process's write transactions on one SQLite database.
///
/// SQLite has one writer; a writer that finds the database locked sleeps in SQLite's busy
/// handler (1, 2, 5, 10, ... ms), which is what made the tail of the webhook answers. The
/// group-commit writer and the workers' claims, completions and (same-database) sink writes
/// take this FIFO async lock around their transactions instead, so the inbox writer waits at
/// most for one transaction in progress and is woken the moment it ends. Other processes on
/// the same database still meet through SQLite's lock.
pub type WriteGate = Arc<tokio::sync::Mutex<()>>;

struct Job {
    events: Vec<InboxEvent>,
    /// `events[i].headers_json` serialized by the request's task, not by the single writer.
    headers: Vec<String>,
    reply: oneshot::Sender<Result<Vec<AppendOutcome>>>,
}

impl fmt::Debug for InboxAppender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mode {
            Mode::Direct(_) => f.write_str("InboxAppender(direct)"),
            Mode::Batched(..) => f.write_str("InboxAppender(group commit)"),
        }
    }
}

impl InboxAppender {
    /// Appends through the store, one event per transaction.
    pub fn direct(store: Arc<dyn StateStore>) -> Self {
        InboxAppender {
            mode: Mode::Direct(store),
        }
    }

    /// Group commit into the `inbox` table of a SQLite database migrated by
    /// `apex_connect_core::SqliteStore`: spawns the writer task (on the current Tokio runtime),
    /// which ends when every clone of the appender is dropped. `max_batch` bounds the events
    /// of one transaction.
    ///
    /// The writer uses a connection of its own (opened with the pool's options, so a busy
    /// pool never delays an append; the pool is the fallback) and takes the appender's
    /// [`WriteGate`] around each transaction (`BEGIN IMMEDIATE`).
    pub fn group_commit(pool: SqlitePool, max_batch: usize) -> Self {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        let gate = WriteGate::default();
        tokio::spawn(writer(pool.clone(), gate.clone(), rx, max_batch.max(1)));
        InboxAppender {
            mode: Mode::Batched(tx, pool, gate),
        }
    }

    /// The SQLite pool of a group-commit appender (workers then complete events in batches).
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.mode {
            Mode::Batched(_, pool, _) => Some(pool),
            Mode::Direct(_) => None,
        }
    }

    /// The [`WriteGate`] of a group-commit appender: hold it around write transactions on the
    /// same database (the workers do).
    pub fn write_gate(&self) -> Option<&WriteGate> {
        match &self.mode {
            Mode::Batched(_, _, gate) => Some(gate),
            Mode::Direct(_) => None,
        }
    }

    /// Appends events (all of one request) durably; one outcome per event, in order.
    ///
    /// # Errors
    /// `Storage` when the inbox cannot be written (nothing of this call is stored then).
    pub async fn append(&self, events: Vec<InboxEvent>) -> Result<Vec<AppendOutcome>> {
        match &self.mode {
            Mode::Direct(store) => {
                let mut out = Vec::with_capacity(events.len());
                for e in &events {
                    out.push(store.inbox_append(e).await?);
                }
                Ok(out)
            }
            Mode::Batched(tx, ..) => {
                let headers = events
                    .iter()
                    .map(|e| serde_json::to_string(&e.headers_json))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| {
                        Error::invalid_input("webhook headers cannot be serialized").set_source(e)
                    })?;
                let (reply, rx) = oneshot::channel();
                tx.send(Job {
                    events,
                    headers,
                    reply,
                })
                .await
                .map_err(|_| Error::storage("the inbox writer has stopped"))?;
                rx.await
                    .map_err(|_| Error::storage("the inbox writer has stopped"))?
            }
        }
    }
}

async fn writer(pool: SqlitePool, gate: WriteGate, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
    let mut own: Option<SqliteConnection> = None;
    let mut jobs: Vec<Job> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut n = first.events.len();
        jobs.push(first);
        while n < max_batch {
            match rx.try_recv() {
                Ok(job) => {
                    n += job.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        if own.is_none() {
            match pool.connect_options().connect().await {
                Ok(c) => own = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "inbox writer: no own connection; using the pool")
                }
            }
        }
        let result = {
            let _turn = gate.lock().await;
            match own.as_mut() {
                Some(conn) => append_batch(conn, &jobs).await,
                None => match pool.acquire().await {
                    Ok(mut conn) => append_batch(&mut conn, &jobs).await,
                    Err(e) => Err(Error::storage("no database connection").set_source(e)),
                },
            }
        };
        match result {
            Ok(mut outcomes) => {
                // Answer in reverse so `split_off` hands each job its own slice.
                for job in jobs.drain(..).rev() {
                    let k = outcomes.len() - job.events.len();
                    let mine = outcomes.split_off(k);
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, events = n, "inbox group commit failed");
                // The connection may be broken: open a new one next time.
                own = None;
                for job in jobs.drain(..) {
                    let _ = job
                        .reply
                        .send(Err(Error::storage("cannot append to the inbox")
                            .with_context("cause", e.message())));
                }
            }
        }
    }
    if let Some(conn) = own {
        let _ = conn.close().await;
    }
}

async fn append_batch(conn: &mut SqliteConnection, jobs: &[Job]) -> Result<Vec<AppendOutcome>> {
    let err = |what: &'static str| move |e: sqlx::Error| Error::storage(what).set_source(e);
    let mut tx = conn
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(err("cannot begin an inbox transaction"))?;
    let mut out = Vec::with_capacity(jobs.iter().map(|j| j.events.len()).sum());
    for job in jobs {
        for (event, headers) in job.events.iter().zip(&job.headers) {
            out.push(append_inbox_row(&mut tx, event, headers, event.received_at).await?);
        }
    }
    tx.commit()
        .await
        .map_err(err("cannot commit the inbox transaction"))?;
    Ok(out)
}

/// Marks the claimed events `ids` done in one statement, for those still leased to `worker`
/// at `now`; returns the ids it completed (the others' leases were lost). The batch form of
/// `StateStore::inbox_complete`, on the core schema.
///
/// # Errors
/// `Storage`.
pub async fn complete_many(
    pool: &SqlitePool,
    ids: &[EventId],
    worker: &str,
    now: i64,
) -> Result<Vec<EventId>> {
    let list = serde_json::to_string(&ids.iter().map(|i| i.0).collect::<Vec<_>>())
        .map_err(|e| Error::storage("cannot encode ids").set_source(e))?;
    let rows: Vec<(i64,)> = sqlx::query_as(
        "UPDATE inbox SET status = 'done', lease_owner = NULL, lease_until = NULL, finished_at = ?3 \
         WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'pending' \
           AND lease_owner = ?2 AND lease_until > ?3 \
         RETURNING id",
    )
    .bind(list)
    .bind(worker)
    .bind(now)
    .fetch_all(pool)
    .await
    .map_err(|e| Error::storage("cannot complete inbox events").set_source(e))?;
    Ok(rows.into_iter().map(|(id,)| EventId(id)).collect())
}

/// The headers object stored with an event: every header but credentials and cookies (values
/// that are not text are dropped), plus what the verifier learned under `@verified`.
pub fn headers_json(headers: &HeaderMap, verified: &Verified) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        if DROPPED_HEADERS.contains(&name.as_str()) {
            continue;
        }
        if let Ok(v) = value.to_str() {
            map.insert(
                name.as_str().to_string(),
                serde_json::Value::String(v.to_string()),
            );
        }
    }
    map.insert(
        VERIFIED_KEY.to_string(),
        serde_json::json!({
            "event_id": verified.event_id,
            "timestamp_ms": verified.timestamp_ms,
            "secret_index": verified.secret_index,
        }),
    );
    serde_json::Value::Object(map)
}

/// Rebuilds the [`VerifiedWebhook`] handed to `Connector::parse_webhook` from an inbox event.
pub fn to_verified_webhook(event: &InboxEvent) -> VerifiedWebhook {
    let mut headers = HeaderMap::new();
    let mut verified = Verified::default();
    if let serde_json::Value::Object(map) = &event.headers_json {
        for (k, v) in map {
            if k == VERIFIED_KEY {
                verified.event_id = v
                    .get("event_id")
                    .and_then(|x| x.as_str())
                    .map(str::to_string);
                verified.timestamp_ms = v.get("timestamp_ms").and_then(|x| x.as_i64());
                verified.secret_index = v
                    .get("secret_index")
                    .and_then(|x| x.as_u64())
                    .and_then(|x| usize::try_from(x).ok())
                    .unwrap_or(0);
                continue;
            }
            if let (Ok(name), Some(Ok(value))) = (
                HeaderName::from_bytes(k.as_bytes()),
                v.as_str().map(HeaderValue::from_str),
            ) {
                headers.append(name, value);
            }
        }
    }
    if verified.event_id.is_none() {
        verified.event_id = Some(event.event_id.clone());
    }
    let received =
        UNIX_EPOCH + Duration::from_millis(u64::try_from(event.received_at).unwrap_or(0));
    VerifiedWebhook::new(verified, headers, event.body.clone(), received)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn verified_info_round_trips_and_credentials_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", HeaderValue::from_static("msg_1"));
        headers.insert("authorization", HeaderValue::from_static("Bearer nope"));
        let mut v = Verified::default();
        v.event_id = Some("msg_1".into());
        v.timestamp_ms = Some(1_700_000_000_000);
        let json = headers_json(&headers, &v);
        assert!(json.get("authorization").is_none());
        let ev = InboxEvent::new("memory", "c", "msg_1", 5, Bytes::from_static(b"{}"))
            .with_headers(json);
        let w = to_verified_webhook(&ev);
        assert_eq!(w.verified.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(w.headers.get("webhook-id").unwrap(), "msg_1");
        assert_eq!(w.received_at_ms, 5);
    }
}
