//! Inbox workers: claim with a lease, parse the claimed events of each connection with one
//! [`Webhooks::parse_batch`](apex_connect_core::Webhooks::parse_batch), map the records when the
//! sink wants entities (quarantining the ones that do not map), write to the sink, complete;
//! retry with backoff, dead-letter after the last attempt.
//!
//! # Leases
//! A claimed batch's leases are renewed every third of the lease while it is processed
//! ([`InboxStore::inbox_renew`](apex_connect_core::store::InboxStore::inbox_renew)), so a
//! slow thin-object fetch (waiting at a rate gate, say) never lets another worker take the
//! same event. An event whose lease is lost anyway (the database was unreachable for a whole
//! lease) is neither written to the sink (when lost before the write) nor completed: its new
//! holder applies it. Events in progress at shutdown are released without counting an
//! attempt.
//!
//! # Panics
//! A panic while a batch is processed (a connector's `parse_batch`, a mapping, a sink) is
//! caught: it is logged at `error` level, counted ([`Workers::panics`]), and every event of
//! the batch is failed as a temporary error (so it is retried with backoff and dead-lettered
//! after `max_attempts`, never lost or looping). A worker loop that panics elsewhere is
//! logged, counted and restarted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apex_connect_core::store::{ClaimedEvent, EventId, FailAction};
use apex_connect_core::webhook::VerifiedWebhook;
use apex_connect_core::{
    Batch, Change, ConnectionId, Entity, Error, ErrorKind, Op, Record, Reject, Result, Sink,
    StreamId,
};
use futures::{FutureExt, StreamExt};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::inbox::to_verified_webhook;
use crate::metrics::WorkOutcome;
use crate::state::ServerState;

/// How workers run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Concurrent worker tasks.
    pub concurrency: usize,
    /// Events claimed per batch.
    pub batch: usize,
    /// Lease of a claim, renewed every third of it while the event is processed; once it
    /// runs out without renewal (a dead or cut-off worker) another worker may take the event.
    pub lease: Duration,
    /// Attempts before dead-lettering.
    pub max_attempts: u32,
    /// First retry delay (doubled per attempt, with jitter).
    pub backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// How often idle workers poll (appends wake them sooner).
    pub poll: Duration,
    /// At shutdown, how long a batch in progress may take before its events are released.
    pub shutdown_grace: Duration,
    /// How many connections' events of a claimed batch are parsed at once (each connection's
    /// events go to its connector in one `parse_batch` call; thin events fetch objects).
    pub parse_concurrency: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 2,
            batch: 64,
            lease: Duration::from_secs(30),
            max_attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            poll: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(10),
            parse_concurrency: 8,
        }
    }
}

/// The inbox workers of one process.
#[derive(Debug, Clone)]
pub struct Workers {
    state: ServerState,
    sink: Arc<dyn Sink>,
    config: WorkerConfig,
    name: String,
    panics: Arc<AtomicU64>,
}

/// The claims of a batch whose lease was lost while it was processed.
type Lost = Mutex<BTreeSet<EventId>>;

fn is_lost(lost: &Lost, id: EventId) -> bool {
    lost.lock().map(|l| l.contains(&id)).unwrap_or(false)
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_string())
}

/// The records one change contributes, with the time used to order them.
struct Pending {
    claim: usize,
    occurred_at: Option<i64>,
    record: Record,
}

impl Workers {
    /// Workers over the state's store and connections, writing to `sink`.
    pub fn new(state: ServerState, sink: Arc<dyn Sink>, config: WorkerConfig) -> Self {
        let name = format!("{}-{}", hostname(), std::process::id());
        Workers {
            state,
            sink,
            config,
            name,
            panics: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many panics these workers caught so far (in a batch's processing or in a worker
    /// loop, which is then restarted); shared by clones.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Sets the prefix of the worker names used as lease owners (default `host-pid`).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Runs `concurrency` worker loops until `shutdown` is cancelled. A batch in progress at
    /// shutdown is finished (within `shutdown_grace`) or its events are released back to the
    /// queue, due at once, without counting an attempt. A worker loop that panics is logged,
    /// counted ([`Workers::panics`]) and restarted after a second.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        let mut slots = HashMap::new();
        let spawn = |tasks: &mut tokio::task::JoinSet<()>, i: usize, delay: Duration| {
            let me = self.clone();
            let shutdown = shutdown.clone();
            tasks
                .spawn(async move {
                    if !delay.is_zero() {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                    me.worker_loop(&format!("{}-w{i}", me.name), shutdown).await
                })
                .id()
        };
        for i in 0..self.config.concurrency.max(1) {
            slots.insert(spawn(&mut tasks, i, Duration::ZERO), i);
        }
        while let Some(joined) = tasks.join_next_with_id().await {
            let (id, failure) = match joined {
                Ok((id, ())) => (id, None),
                Err(e) => (e.id(), Some(e)),
            };
            let Some(i) = slots.remove(&id) else { continue };
            let Some(e) = failure else { continue };
            let what = if e.is_panic() {
                panic_message(&*e.into_panic())
            } else {
                "cancelled".to_string()
            };
            self.panics.fetch_add(1, Ordering::Relaxed);
            tracing::error!(worker = i, panic = %what, "inbox worker loop panicked; restarting it");
            if !shutdown.is_cancelled() {
                slots.insert(spawn(&mut tasks, i, Duration::from_secs(1)), i);
            }
        }
    }

    /// Wakes these workers whenever `wakeups` fires (PostgreSQL `LISTEN/NOTIFY`: an event
    /// appended by any process on the database), until `shutdown`. Idle workers then claim at
    /// once instead of at their next poll; polling stays as the fallback (a notification can be
    /// lost with its connection, and the listener reconnects by itself). Returns when the
    /// listener stops for good (the workers go on polling) or at `shutdown`.
    #[cfg(feature = "postgres")]
    pub async fn wake_on(
        &self,
        mut wakeups: apex_connect_core::store::InboxWakeups,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                woke = wakeups.notified() => match woke {
                    Ok(()) => self.state.wake().notify_one(),
                    Err(e) => {
                        tracing::warn!(error = %e, "inbox notifications stopped; workers poll");
                        return;
                    }
                },
            }
        }
    }

    async fn worker_loop(&self, worker: &str, shutdown: CancellationToken) {
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            match self.run_once_until(worker, &shutdown).await {
                Ok(n) if n > 0 => {
                    failures = 0;
                    continue;
                }
                Ok(_) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(worker, error = %e, "inbox worker error");
                }
            }
            let idle = if failures > 0 {
                self.backoff(failures).min(Duration::from_secs(5))
            } else {
                self.config.poll
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.state.wake().notified() => {}
                _ = tokio::time::sleep(idle) => {}
            }
        }
    }

    /// Claims one batch as `worker`, processes it, and returns how many events it claimed.
    ///
    /// # Errors
    /// `Storage` when the claim itself fails; per-event failures are recorded on the events.
    pub async fn run_once(&self, worker: &str) -> Result<usize> {
        self.run_once_until(worker, &CancellationToken::new()).await
    }

    async fn run_once_until(&self, worker: &str, shutdown: &CancellationToken) -> Result<usize> {
        let store = self.state.store();
        let claims = store
            .inbox_claim(worker, self.config.lease, self.config.batch.max(1))
            .await?;
        if claims.is_empty() {
            return Ok(0);
        }
        let started = std::time::Instant::now();
        let n = claims.len();
        let grace = self.config.shutdown_grace;
        let lost = Lost::default();
        let work = AssertUnwindSafe(self.process(&claims, &lost)).catch_unwind();
        let renew = self.renew_leases(worker, &claims, &lost);
        let stopped = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        let results = tokio::select! {
            r = work => r,
            never = renew => match never {},
            _ = stopped => {
                let ids: Vec<EventId> = claims.iter().map(|c| c.id).collect();
                let released = store.inbox_release(&ids, worker).await;
                match released {
                    Ok(r) => self.state.metrics().work(WorkOutcome::Released, r.len() as u64),
                    Err(e) => tracing::warn!(error = %e, "cannot release inbox events at shutdown; their leases will expire"),
                }
                return Ok(n);
            }
        };
        let results = match results {
            Ok(results) => results,
            Err(payload) => {
                let what = panic_message(&*payload);
                self.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(worker, events = n, panic = %what, "processing a batch panicked; its events will be retried");
                claims
                    .iter()
                    .map(|_| {
                        Err(
                            Error::new(ErrorKind::Unexpected, "processing the event panicked")
                                .with_context("panic", &what)
                                .temporary(),
                        )
                    })
                    .collect()
            }
        };
        // Events whose lease was lost are left to their new holder: not completed, not failed.
        let lost_now = lost.lock().map(|l| l.clone()).unwrap_or_default();
        if !lost_now.is_empty() {
            self.state
                .metrics()
                .work(WorkOutcome::LeaseLost, lost_now.len() as u64);
        }
        let (claims, results): (Vec<&ClaimedEvent>, Vec<Result<()>>) = claims
            .iter()
            .zip(results)
            .filter(|(c, _)| !lost_now.contains(&c.id))
            .unzip();
        // Complete the successes in one call; failures are recorded one by one.
        let ok: Vec<_> = claims
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(c, _)| c.id)
            .collect();
        let mut rest = Vec::new();
        let done = if ok.is_empty() {
            Ok(Vec::new())
        } else {
            store.inbox_complete_many(&ok, worker).await
        };
        match done {
            Ok(done) => {
                let metrics = self.state.metrics();
                metrics.work(WorkOutcome::Processed, done.len() as u64);
                metrics.work(
                    WorkOutcome::LeaseLost,
                    ok.len().saturating_sub(done.len()) as u64,
                );
                for (claim, result) in claims.iter().zip(results) {
                    if result.is_err() {
                        rest.push((*claim, result));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "batch completion failed; completing one by one");
                rest.extend(claims.iter().copied().zip(results));
            }
        }
        for (claim, result) in rest {
            self.finish(worker, claim, result).await;
        }
        self.state.metrics().worker_batch(started.elapsed());
        Ok(n)
    }

    /// Renews the leases of `claims` every third of the lease, forever (the caller drops it
    /// when the batch is done); claims the store no longer renews go to `lost`.
    async fn renew_leases(
        &self,
        worker: &str,
        claims: &[ClaimedEvent],
        lost: &Lost,
    ) -> std::convert::Infallible {
        let every = (self.config.lease / 3).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(every).await;
            let held: Vec<EventId> = claims
                .iter()
                .map(|c| c.id)
                .filter(|id| !is_lost(lost, *id))
                .collect();
            if held.is_empty() {
                continue;
            }
            let renewed = self
                .state
                .store()
                .inbox_renew(&held, worker, self.config.lease)
                .await;
            match renewed {
                Ok(renewed) => {
                    let gone: Vec<EventId> = held
                        .into_iter()
                        .filter(|id| renewed.binary_search(id).is_err())
                        .collect();
                    if !gone.is_empty() {
                        tracing::warn!(
                            worker,
                            lost = gone.len(),
                            "inbox leases lost while processing; those events are left to their new holder"
                        );
                        if let Ok(mut l) = lost.lock() {
                            l.extend(gone);
                        }
                    }
                }
                // Keep trying: the leases may still be held at the next renewal.
                Err(e) => tracing::warn!(worker, error = %e, "cannot renew inbox leases"),
            }
        }
    }

    async fn finish(&self, worker: &str, claim: &ClaimedEvent, result: Result<()>) {
        let store = self.state.store();
        let metrics = self.state.metrics();
        let done = match &result {
            Ok(()) => store
                .inbox_complete(claim.id, worker)
                .await
                .map(|_| WorkOutcome::Processed),
            Err(e) => {
                let permanent = !e.is_temporary()
                    && matches!(
                        e.kind(),
                        ErrorKind::InvalidInput | ErrorKind::Unsupported | ErrorKind::Config
                    );
                let (action, outcome) = if permanent || claim.attempts >= self.config.max_attempts {
                    (FailAction::DeadLetter, WorkOutcome::DeadLettered)
                } else {
                    let at = self.state.clock().now_ms()
                        + i64::try_from(self.backoff(claim.attempts).as_millis())
                            .unwrap_or(i64::MAX / 4);
                    (FailAction::RetryAt(at), WorkOutcome::Retried)
                };
                tracing::warn!(event = %claim.id, attempts = claim.attempts, error = %e, ?action, "inbox event failed");
                store
                    .inbox_fail(claim.id, worker, &e.to_string(), action)
                    .await
                    .map(|_| outcome)
            }
        };
        match done {
            Ok(outcome) => metrics.work(outcome, 1),
            Err(e) if e.kind() == ErrorKind::Conflict => {
                // The lease ran out: another worker may be on it. Sinks upsert by version, so
                // its second application changes nothing.
                metrics.work(WorkOutcome::LeaseLost, 1);
            }
            Err(e) => tracing::warn!(event = %claim.id, error = %e, "cannot record inbox outcome"),
        }
    }

    /// The retry delay after `attempts` failed attempts: `backoff * 2^(attempts-1)`, capped,
    /// times a random factor in [0.5, 1] (so retries of a burst spread out).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(20);
        let base = self
            .config
            .backoff
            .saturating_mul(1u32 << exp)
            .min(self.config.max_backoff);
        base.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// Parses the claims (one `parse_batch` per connection), turns changes into records,
    /// maps them when the sink wants entities (quarantining those that do not map), writes
    /// them per (connection, stream), and returns each claim's result.
    ///
    /// Claims in `lost` (their lease was lost) are not written: their results are errors the
    /// caller drops.
    async fn process(&self, claims: &[ClaimedEvent], lost: &Lost) -> Vec<Result<()>> {
        let parsed = self.parse_all(claims).await;
        let mut results: Vec<Result<()>> = Vec::with_capacity(claims.len());
        let mut groups: BTreeMap<(ConnectionId, StreamId), Vec<Pending>> = BTreeMap::new();
        for (i, (claim, changes)) in claims.iter().zip(parsed).enumerate() {
            match changes {
                Err(e) => results.push(Err(e)),
                Ok(_) if is_lost(lost, claim.id) => results.push(Err(lease_was_lost())),
                Ok(changes) => {
                    results.push(Ok(()));
                    for change in changes {
                        if let Some(record) = self.to_record(claim, &change).await {
                            groups
                                .entry((claim.event.connection.clone(), change.stream.clone()))
                                .or_default()
                                .push(Pending {
                                    claim: i,
                                    occurred_at: change.occurred_at,
                                    record,
                                });
                        }
                    }
                }
            }
        }
        let wants_entities = self.sink.wants_entities();
        for ((connection, stream), mut pending) in groups {
            // Per object, oldest change first: a sink without versions still ends with the
            // newest, and a versioned sink skips the older ones.
            pending.sort_by(|a, b| {
                (
                    a.record.id.as_str(),
                    a.occurred_at.or(a.record.version),
                    a.record.version,
                )
                    .cmp(&(
                        b.record.id.as_str(),
                        b.occurred_at.or(b.record.version),
                        b.record.version,
                    ))
            });
            let fail = |results: &mut Vec<Result<()>>, owners: &[usize], what: &str, e: &Error| {
                for &claim in owners {
                    if results[claim].is_ok() {
                        results[claim] = Err(Error::new(e.kind(), what.to_string())
                            .with_context("cause", e.message())
                            .with_context("stream", &stream)
                            .temporary());
                    }
                }
            };
            let (records, owners, entities, rejects) = if wants_entities {
                match self.state.connection(&connection) {
                    Some(handle) => map_pending(handle.connector.as_ref(), pending),
                    None => {
                        let owners: Vec<usize> = pending.iter().map(|p| p.claim).collect();
                        let e = Error::config("the event's connection is no longer configured");
                        fail(&mut results, &owners, "cannot map records", &e);
                        continue;
                    }
                }
            } else {
                let (records, owners): (Vec<Record>, Vec<usize>) =
                    pending.into_iter().map(|p| (p.record, p.claim)).unzip();
                (records, owners, Vec::new(), Vec::new())
            };
            // Quarantined records are kept before their events complete: a record that does
            // not map never dead-letters the event that brought it.
            if !rejects.is_empty() {
                let reject_owners: Vec<usize> = rejects.iter().map(|(c, _)| *c).collect();
                let rejects: Vec<Reject> = rejects.into_iter().map(|(_, r)| r).collect();
                let stored = self.state.store().put_rejects(&connection, &rejects).await;
                match stored {
                    Ok(()) => {
                        tracing::warn!(%connection, %stream, rejected = rejects.len(),
                            first_error = %rejects[0].error, "webhook records quarantined");
                        self.state.metrics().rejected(rejects.len() as u64);
                    }
                    Err(e) => fail(
                        &mut results,
                        &reject_owners,
                        "cannot quarantine records",
                        &e,
                    ),
                }
            }
            // Leases lost while earlier groups were written: leave those records to the
            // events' new holder.
            let (records, owners, entities) = if owners.iter().any(|&o| is_lost(lost, claims[o].id))
            {
                // `entities` is empty when the sink takes raw records.
                let mut entities = entities.into_iter();
                let mut kept = (Vec::new(), Vec::new(), Vec::new());
                for (record, owner) in records.into_iter().zip(owners) {
                    let entity = entities.next();
                    if is_lost(lost, claims[owner].id) {
                        results[owner] = Err(lease_was_lost());
                        continue;
                    }
                    kept.0.push(record);
                    kept.1.push(owner);
                    kept.2.extend(entity);
                }
                kept
            } else {
                (records, owners, entities)
            };
            if records.is_empty() {
                continue;
            }
            let written = self
                .sink
                .write(Batch::new(&connection, &stream, &records).with_entities(&entities))
                .await;
            match written {
                Ok(_) => self.state.metrics().records(records.len() as u64),
                Err(e) => fail(&mut results, &owners, "sink write failed", &e),
            }
        }
        results
    }

    /// The changes of each claim, in order: the claims of one connection go to its
    /// connector's `parse_batch` together; connections are parsed concurrently (up to
    /// `parse_concurrency`).
    async fn parse_all(&self, claims: &[ClaimedEvent]) -> Vec<Result<Vec<Change>>> {
        let mut by_connection: BTreeMap<ConnectionId, Vec<usize>> = BTreeMap::new();
        for (i, c) in claims.iter().enumerate() {
            by_connection
                .entry(c.event.connection.clone())
                .or_default()
                .push(i);
        }
        let parsed: Vec<Vec<(usize, Result<Vec<Change>>)>> =
            futures::stream::iter(by_connection)
                .map(|(connection, idx)| async move {
                    let Some(handle) = self.state.connection(&connection) else {
                        return idx
                            .into_iter()
                            .map(|i| {
                                (
                                    i,
                                    Err(Error::config(
                                        "the event's connection is no longer configured",
                                    )
                                    .with_context("connection", &connection)),
                                )
                            })
                            .collect::<Vec<_>>();
                    };
                    let Some(hooks) = handle.webhooks() else {
                        return idx
                            .into_iter()
                            .map(|i| {
                                (
                                    i,
                                    Err(Error::config("the connection takes no webhooks")
                                        .with_context("connection", &connection)),
                                )
                            })
                            .collect();
                    };
                    let webhooks: Vec<VerifiedWebhook> = idx
                        .iter()
                        .map(|&i| to_verified_webhook(&claims[i].event))
                        .collect();
                    let mut out = hooks.parse_batch(&webhooks).await;
                    if out.len() != webhooks.len() {
                        // A connector that broke the one-result-per-webhook rule: retry later
                        // rather than pair results with the wrong events.
                        out = webhooks
                            .iter()
                            .map(|_| {
                                Err(Error::new(
                                    ErrorKind::Unexpected,
                                    "parse_batch returned a result count different from the webhooks given",
                                )
                                .with_context("connection", &connection)
                                .temporary())
                            })
                            .collect();
                    }
                    idx.into_iter().zip(out).collect()
                })
                .buffer_unordered(self.config.parse_concurrency.max(1))
                .collect()
                .await;
        let mut slots: Vec<Option<Result<Vec<Change>>>> = claims.iter().map(|_| None).collect();
        for (i, r) in parsed.into_iter().flatten() {
            slots[i] = Some(r);
        }
        slots
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(Error::new(ErrorKind::Unexpected, "event was not parsed").temporary())
                })
            })
            .collect()
    }

    /// The record a change writes: the connector's (versioned by the change's time when the
    /// platform gave no version), a tombstone for a delete, or nothing for a thin upsert the
    /// connector could not resolve; then the stream is made due for a sync, which re-reads it.
    async fn to_record(&self, claim: &ClaimedEvent, change: &Change) -> Option<Record> {
        let mut record = match (&change.record, change.op) {
            (Some(r), _) => r.clone(),
            (None, Op::Delete) => Record::delete(change.stream.clone(), change.id.clone()),
            (None, Op::Upsert) => {
                let now = self.state.clock().now_ms();
                if let Err(e) = self
                    .state
                    .store()
                    .make_schedule_due(&claim.event.connection, &change.stream, now)
                    .await
                {
                    tracing::warn!(error = %e, "cannot make the stream due");
                }
                tracing::info!(connection = %claim.event.connection, stream = %change.stream, id = %change.id,
                    "thin event not resolved by the connector: the stream's next sync re-reads it");
                return None;
            }
        };
        if record.version.is_none() {
            record.version = change.occurred_at;
        }
        if record.updated_at.is_none() {
            record.updated_at = change.occurred_at;
        }
        Some(record)
    }
}

/// Records, their owners (claim index), their entities, and the rejects (with their owner).
type Mapped = (
    Vec<Record>,
    Vec<usize>,
    Vec<Option<Entity>>,
    Vec<(usize, Reject)>,
);

/// Maps each pending record with `connector`; those that cannot be mapped become rejects.
fn map_pending(connector: &dyn apex_connect_core::Connector, pending: Vec<Pending>) -> Mapped {
    let mut records = Vec::with_capacity(pending.len());
    let mut owners = Vec::with_capacity(pending.len());
    let mut entities = Vec::with_capacity(pending.len());
    let mut rejects = Vec::new();
    for p in pending {
        match connector.map_entity(&p.record) {
            Ok(entity) => {
                records.push(p.record);
                owners.push(p.claim);
                entities.push(entity);
            }
            Err(e) => rejects.push((p.claim, Reject::unmapped(&p.record, &e))),
        }
    }
    (records, owners, entities, rejects)
}

fn lease_was_lost() -> Error {
    Error::new(
        ErrorKind::Conflict,
        "the event's lease was lost while it was processed",
    )
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "apex".to_string())
}
