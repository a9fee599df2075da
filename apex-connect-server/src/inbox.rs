//! Durable append to the inbox (group commit through
//! [`InboxStore::append_many`](apex_connect_core::InboxStore::append_many)) and the round trip
//! of a verified webhook through the inbox row. Event ids come from the connector
//! ([`Webhooks::events`](apex_connect_core::Webhooks::events)).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use apex_connect_core::store::{AppendOutcome, InboxEvent, StateStore};
use apex_connect_core::webhook::{Verified, VerifiedWebhook};
use apex_connect_core::{Error, Result};
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::{mpsc, oneshot};

/// Reserved key in the stored headers object carrying what the verifier learned
/// (`event_id`, `timestamp_ms`); header names cannot contain `@`, so it never clashes.
const VERIFIED_KEY: &str = "@verified";

/// Headers never stored (credentials of the caller, cookies).
const DROPPED_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// Appends verified events to the inbox.
///
/// Two modes: **direct** (each request's events in one
/// [`append_many`](apex_connect_core::InboxStore::append_many) call of its own), or **group
/// commit**: one writer task takes every queued request's events, appends them with one
/// `append_many` (one transaction in the built-in stores), and answers each request once that
/// call returned. An answer therefore always means "durable" (SQLite: WAL, `synchronous=NORMAL`,
/// survives a process crash), and throughput is bounded by commits per second times the batch
/// size, not by commits per second. Either mode works on any store behind the trait.
#[derive(Clone)]
pub struct InboxAppender {
    mode: Mode,
}

#[derive(Clone)]
enum Mode {
    Direct(Arc<dyn StateStore>),
    Batched(mpsc::Sender<Job>),
}

struct Job {
    events: Vec<InboxEvent>,
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
    /// Appends through the store, one `append_many` per request.
    pub fn direct(store: Arc<dyn StateStore>) -> Self {
        InboxAppender {
            mode: Mode::Direct(store),
        }
    }

    /// Group commit into `store`: spawns the writer task (on the current Tokio runtime),
    /// which ends when every clone of the appender is dropped. `max_batch` bounds the events
    /// of one `append_many` call (a request's events are never split). On SQLite the call
    /// takes its turn at the store's
    /// [`WriteGate`](apex_connect_core::store::WriteGate) like every other writer.
    pub fn group_commit(store: Arc<dyn StateStore>, max_batch: usize) -> Self {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        tokio::spawn(writer(store, rx, max_batch.max(1)));
        InboxAppender {
            mode: Mode::Batched(tx),
        }
    }

    /// Appends events (all of one request) durably; one outcome per event, in order.
    ///
    /// # Errors
    /// `Storage` when the inbox cannot be written (nothing of this call is stored then, with
    /// the built-in stores).
    pub async fn append(&self, events: Vec<InboxEvent>) -> Result<Vec<AppendOutcome>> {
        match &self.mode {
            Mode::Direct(store) => store.append_many(&events).await,
            Mode::Batched(tx) => {
                let (reply, rx) = oneshot::channel();
                tx.send(Job { events, reply })
                    .await
                    .map_err(|_| Error::storage("the inbox writer has stopped"))?;
                rx.await
                    .map_err(|_| Error::storage("the inbox writer has stopped"))?
            }
        }
    }
}

async fn writer(store: Arc<dyn StateStore>, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
    let mut replies: Vec<(usize, oneshot::Sender<Result<Vec<AppendOutcome>>>)> = Vec::new();
    let mut events: Vec<InboxEvent> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut take = |job: Job, events: &mut Vec<InboxEvent>| {
            replies.push((job.events.len(), job.reply));
            events.extend(job.events);
        };
        take(first, &mut events);
        while events.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => take(job, &mut events),
                Err(_) => break,
            }
        }
        let result = store.append_many(&events).await;
        events.clear();
        match result {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for (n, reply) in replies.drain(..) {
                    let mine: Vec<AppendOutcome> = outcomes.by_ref().take(n).collect();
                    let answer = if mine.len() == n {
                        Ok(mine)
                    } else {
                        Err(Error::storage("the inbox returned too few outcomes"))
                    };
                    let _ = reply.send(answer);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "inbox group commit failed");
                for (_, reply) in replies.drain(..) {
                    let _ = reply.send(Err(Error::storage("cannot append to the inbox")
                        .with_context("cause", e.message())));
                }
            }
        }
    }
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

/// Rebuilds the [`VerifiedWebhook`] handed to
/// [`Webhooks::parse_batch`](apex_connect_core::Webhooks::parse_batch) from an inbox event.
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
