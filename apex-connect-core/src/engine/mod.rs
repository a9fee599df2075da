//! The sync engine: pages from a connector into a sink, cursor committed after each ack.
//!
//! # Guarantees
//! For one (connection, stream), [`SyncEngine::run`] does, page after page:
//! read the page (from the stored cursor) -> `Sink::write` -> compare-and-swap the page's
//! cursor into the store (expecting the version it loaded or last saved). So:
//! - **Nothing is lost**: a cursor is committed only after the sink acknowledged every record
//!   before it. A crash, error or cancellation between any two steps leaves the stored cursor
//!   at or before the first record the sink does not hold.
//! - **Nothing is duplicated** with upserting sinks: what is replayed after a crash is at most
//!   the one page written but not committed, and the sink counts it as `unchanged`.
//! - **One winner**: two runs of the same (connection, stream) cannot both advance the cursor;
//!   the one whose compare-and-swap fails stops with `ErrorKind::Conflict`.
//! - **Flat memory**: one page is held, plus (by default) one page read ahead while the
//!   previous one is written.
//! - **Bad records never fail a page**: objects the connector could not read
//!   ([`Page::rejects`]) and records that cannot be mapped (when the sink
//!   [wants entities](Sink::wants_entities)) are quarantined in the store's rejects before the
//!   cursor moves past them, counted in the report, and re-drivable ([`SyncEngine::redrive`]).
//! - **No loops**: a cursor already read in this run, or a long run of pages without records,
//!   stops the run with `InvalidResponse` ([`PageGuard`]).
//!
//! # Logs
//! A run's work happens inside a `sync_run` span (fields `run_id`, `connection`, `stream`,
//! `kind`); with a [`RunLogLayer`](crate::runlog::RunLogLayer) in the subscriber, the events
//! logged inside it are stored as the run's log lines
//! ([`RunStore::run_logs`](crate::store::RunStore::run_logs)) just before its outcome.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use tokio_util::sync::CancellationToken;

use crate::connector::{Connector, PageGuard};
use crate::cursor::CursorToken;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{ConnectionId, Entity, Page, RawJson, Record, Reject, RejectStage, StreamId};
use crate::sink::{Ack, Batch, Sink};
use crate::store::{RunId, RunKind, RunOutcome, RunStatus, StateStore, StoredReject};
use tracing::Instrument as _;

/// Where a running sync is, passed to the [`SyncOptions::progress`] callback after each page.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// The run.
    pub run_id: RunId,
    /// The connection synced.
    pub connection: ConnectionId,
    /// The stream synced.
    pub stream: StreamId,
    /// Records read so far.
    pub records_read: u64,
    /// Records the sink applied so far.
    pub applied: u64,
    /// Records the sink already held so far.
    pub unchanged: u64,
    /// Records quarantined so far.
    pub rejected: u64,
    /// Pages committed so far.
    pub pages: u64,
}

/// The callback type of [`SyncOptions::progress`].
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// How [`SyncEngine::run`] runs. `Default`: incremental from the stored cursor, until caught
/// up, with read-ahead, not cancellable, no progress callback.
#[derive(Clone)]
pub struct SyncOptions {
    full: bool,
    max_pages: Option<u64>,
    cancel: CancellationToken,
    progress: Option<ProgressFn>,
    read_ahead: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            full: false,
            max_pages: None,
            cancel: CancellationToken::new(),
            progress: None,
            read_ahead: true,
        }
    }
}

impl fmt::Debug for SyncOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncOptions")
            .field("full", &self.full)
            .field("max_pages", &self.max_pages)
            .field("cancelled", &self.cancel.is_cancelled())
            .field("progress", &self.progress.is_some())
            .field("read_ahead", &self.read_ahead)
            .finish()
    }
}

impl SyncOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads from the beginning, ignoring the stored cursor (it is still compare-and-swapped,
    /// so a concurrent run is still detected). The run is recorded as `full`.
    pub fn full(mut self, full: bool) -> Self {
        self.full = full;
        self
    }

    /// Stops (successfully) after `pages` pages; the next run continues from there.
    pub fn max_pages(mut self, pages: u64) -> Self {
        self.max_pages = Some(pages);
        self
    }

    /// Stops with `ErrorKind::Cancelled` when `token` is cancelled: a read in progress is
    /// abandoned; a sink write in progress is finished and its cursor committed first.
    pub fn cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// Calls `f` after each committed page (for progress bars). Keep it quick: it runs on the
    /// sync's task.
    pub fn progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// Whether to read the next page while the sink writes the current one (default `true`;
    /// at most two pages in memory). `false`: strictly one page at a time.
    pub fn read_ahead(mut self, on: bool) -> Self {
        self.read_ahead = on;
        self
    }
}

/// What a finished run did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// The run's id in the store.
    pub run_id: RunId,
    /// Records read from the connector.
    pub records_read: u64,
    /// Records the sink inserted or updated.
    pub applied: u64,
    /// Records the sink already held (replays, or older versions).
    pub unchanged: u64,
    /// Records quarantined (unreadable, or unmappable for an entity sink): in the store's
    /// rejects, not in the sink.
    pub rejected: u64,
    /// Pages read and committed.
    pub pages: u64,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// The stored cursor at the end (`None` if the stream has none yet).
    pub cursor: Option<CursorToken>,
}

/// Runs syncs against a [`StateStore`]. Cheap to clone; share one per process.
#[derive(Debug, Clone)]
pub struct SyncEngine {
    store: Arc<dyn StateStore>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    read: u64,
    applied: u64,
    unchanged: u64,
    rejected: u64,
    pages: u64,
}

/// Maps `records` to entities; records that cannot be mapped are moved to `rejects`.
/// Returns the entities aligned with what stays in `records`.
fn map_entities(
    connector: &dyn Connector,
    records: &mut Vec<Record>,
    rejects: &mut Vec<Reject>,
) -> Vec<Option<Entity>> {
    let mut entities = Vec::with_capacity(records.len());
    let mut failed = false;
    for r in records.iter() {
        match connector.map_entity(r) {
            Ok(e) => entities.push(Some(e)),
            Err(e) => {
                rejects.push(Reject::unmapped(r, &e));
                entities.push(None);
                failed = true;
            }
        }
    }
    if !failed {
        return entities.into_iter().map(Option::flatten).collect();
    }
    let mut kept = Vec::with_capacity(records.len());
    let mut kept_entities = Vec::with_capacity(records.len());
    for (r, e) in records.drain(..).zip(entities) {
        if let Some(e) = e {
            kept.push(r);
            kept_entities.push(e);
        }
    }
    *records = kept;
    kept_entities
}

/// What [`SyncEngine::redrive`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedriveReport {
    /// Rejects tried.
    pub tried: u64,
    /// Rejects read, mapped and written to the sink (and removed from the rejects).
    pub written: u64,
    /// Rejects that failed again (kept, with the new error).
    pub failed: u64,
}

fn cancelled() -> Error {
    Error::new(ErrorKind::Cancelled, "sync cancelled")
}

async fn cancellable<T>(
    cancel: &CancellationToken,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(cancelled()),
        r = fut => r,
    }
}

impl SyncEngine {
    /// An engine over `store`.
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        SyncEngine { store }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// Re-drives up to `limit` quarantined records of `connection` (of one `stream`, or all):
    /// each is read again ([`Connector::parse_record`] for the parse stage, its stored envelope
    /// for the map stage), mapped when `sink` wants entities, written to `sink`, and removed
    /// from the rejects; one that fails again stays, with its new error and one more attempt.
    /// Cursors are not touched (the sink keeps the highest version, so a newer copy already
    /// synced is not overwritten).
    ///
    /// # Errors
    /// The store's and the sink's errors (a reject is removed only after the sink acknowledged).
    pub async fn redrive(
        &self,
        connector: &dyn Connector,
        connection: &ConnectionId,
        stream: Option<&StreamId>,
        sink: &dyn Sink,
        limit: usize,
    ) -> Result<RedriveReport> {
        let mut report = RedriveReport::default();
        let stored = self
            .store
            .list_rejects(Some(connection), stream, limit)
            .await?;
        for StoredReject { id, reject, .. } in stored {
            report.tried += 1;
            match self.redrive_one(connector, connection, &reject, sink).await {
                Ok(()) => {
                    self.store.delete_reject(id).await?;
                    report.written += 1;
                }
                Err(e) if matches!(e.kind(), ErrorKind::Storage) => return Err(e),
                Err(e) => {
                    self.store.reject_failed(id, &e.to_string()).await?;
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }

    async fn redrive_one(
        &self,
        connector: &dyn Connector,
        connection: &ConnectionId,
        reject: &Reject,
        sink: &dyn Sink,
    ) -> Result<()> {
        let record = match reject.stage {
            RejectStage::Map => reject.to_record()?,
            _ => {
                let raw = RawJson::parse(reject.raw.clone())?;
                connector.parse_record(&reject.stream, &raw, reject.parent.as_deref())?
            }
        };
        let records = [record];
        let entities = if sink.wants_entities() {
            vec![connector.map_entity(&records[0])?]
        } else {
            Vec::new()
        };
        sink.write(Batch::new(connection, &reject.stream, &records).with_entities(&entities))
            .await
            .map(|_| ())
    }

    /// Syncs `stream` of `connection` from `connector` into `sink`, from the stored cursor
    /// (or from the beginning with [`SyncOptions::full`]) until the connector says it is caught
    /// up (or `max_pages`). The run is recorded in the store with its counts and outcome.
    ///
    /// # Errors
    /// - `Cancelled` when the options' token was cancelled (run recorded as cancelled);
    /// - `Conflict` when another run of the same (connection, stream) committed the cursor
    ///   meanwhile (this run stops; the other goes on);
    /// - `InvalidResponse` when the connector claims more pages without advancing its cursor;
    /// - the connector's, sink's and store's errors otherwise (run recorded as failed with the
    ///   error text). Whatever the error, everything acknowledged before it is committed.
    pub async fn run(
        &self,
        connector: &dyn Connector,
        connection: &ConnectionId,
        stream: &StreamId,
        sink: &dyn Sink,
        options: SyncOptions,
    ) -> Result<SyncReport> {
        let started = Instant::now();
        let kind = if options.full {
            RunKind::Full
        } else {
            RunKind::Incremental
        };
        let run_id = self.store.start_run(connection, stream, kind).await?;
        // Everything logged inside this span is the run's log (see `crate::runlog`); its
        // name is `runlog::SPAN_NAME`.
        let span = tracing::info_span!(
            "sync_run",
            run_id = run_id.0,
            %connection,
            %stream,
            kind = kind.as_str()
        );
        let mut counts = Counts::default();
        let result = self
            .drive(
                connector,
                connection,
                stream,
                sink,
                &options,
                run_id,
                &mut counts,
            )
            .instrument(span.clone())
            .await;
        let status = match &result {
            Ok(_) => RunStatus::Succeeded,
            Err(e) if e.kind() == ErrorKind::Cancelled => RunStatus::Cancelled,
            Err(_) => RunStatus::Failed,
        };
        let mut outcome = RunOutcome::new(status)
            .with_counts(counts.read, counts.applied, counts.unchanged, counts.pages)
            .with_rejected(counts.rejected);
        if let Err(e) = &result {
            outcome = outcome.with_error(e.to_string());
        }
        let elapsed = started.elapsed();
        // Logged inside the span, before the lines are taken: the last line of the run's log.
        span.in_scope(|| match &result {
            Ok(_) => tracing::info!(
                run = %run_id, %connection, %stream,
                read = counts.read, applied = counts.applied, unchanged = counts.unchanged,
                rejected = counts.rejected, pages = counts.pages, elapsed_ms = elapsed.as_millis() as u64,
                "sync run succeeded"
            ),
            Err(e) => {
                tracing::warn!(run = %run_id, %connection, %stream, error = %e, "sync run stopped")
            }
        });
        #[cfg(feature = "run-logs")]
        if let Some(lines) = crate::runlog::take(&span)
            && !lines.is_empty()
            && let Err(e) = self.store.append_run_logs(run_id, &lines).await
        {
            // Like the run record below: the sync itself is not failed by its log.
            tracing::warn!(run = %run_id, error = %e, "could not store the log of a sync run");
        }
        if let Err(e) = self.store.finish_run(run_id, &outcome).await {
            // The data and cursor are committed; a missing run record must not turn a good
            // sync into a failure (nor hide the original error).
            tracing::warn!(run = %run_id, error = %e, "could not record the end of a sync run");
        }
        match result {
            Ok(cursor) => Ok(SyncReport {
                run_id,
                records_read: counts.read,
                applied: counts.applied,
                unchanged: counts.unchanged,
                rejected: counts.rejected,
                pages: counts.pages,
                elapsed,
                cursor,
            }),
            Err(e) => Err(e.with_context("run", run_id)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn drive(
        &self,
        connector: &dyn Connector,
        connection: &ConnectionId,
        stream: &StreamId,
        sink: &dyn Sink,
        options: &SyncOptions,
        run_id: RunId,
        counts: &mut Counts,
    ) -> Result<Option<CursorToken>> {
        let cancel = &options.cancel;
        let check = || {
            if cancel.is_cancelled() {
                Err(cancelled())
            } else {
                Ok(())
            }
        };
        let stored = self.store.load_cursor(connection, stream).await?;
        let mut version = stored.as_ref().map(|v| v.version);
        let mut committed = stored.map(|v| v.value);
        let mut read_from = if options.full {
            None
        } else {
            committed.clone()
        };

        check()?;
        let mut guard = PageGuard::new(read_from.as_ref());
        let mut page: Page =
            cancellable(cancel, connector.read(stream, read_from.as_ref())).await?;
        loop {
            guard
                .check(&page)
                .map_err(|e| e.with_context("stream", stream))?;
            counts.read += (page.records.len() + page.rejects.len()) as u64;
            let last = !page.has_more || options.max_pages.is_some_and(|m| counts.pages + 1 >= m);

            check()?;
            // Map when the sink stores entities; what cannot be mapped joins the rejects.
            let mut rejects = std::mem::take(&mut page.rejects);
            let entities = if sink.wants_entities() {
                map_entities(connector, &mut page.records, &mut rejects)
            } else {
                Vec::new()
            };
            let records = &page.records;
            let write = async {
                if records.is_empty() {
                    Ok(Ack::default())
                } else {
                    sink.write(Batch::new(connection, stream, records).with_entities(&entities))
                        .await
                }
            };
            let (ack, ahead) = if !last && options.read_ahead {
                let read = cancellable(cancel, connector.read(stream, page.next.as_ref()));
                let (ack, ahead) = tokio::join!(write, read);
                (ack, Some(ahead))
            } else {
                (write.await, None)
            };
            let ack = ack?;
            counts.applied += ack.applied;
            counts.unchanged += ack.unchanged;
            // Quarantined records are kept before the cursor moves past them.
            if !rejects.is_empty() {
                self.store.put_rejects(connection, &rejects).await?;
                counts.rejected += rejects.len() as u64;
                tracing::warn!(%connection, %stream, rejected = rejects.len(),
                    first_error = %rejects[0].error, "records quarantined");
            }

            // The sink holds every record of this page: commit the cursor after it.
            if let Some(next) = &page.next
                && committed.as_ref() != Some(next)
            {
                version = Some(
                    self.store
                        .save_cursor(connection, stream, next, version)
                        .await?,
                );
                committed = Some(next.clone());
            }
            counts.pages += 1;
            if let Some(progress) = &options.progress {
                progress(&Progress {
                    run_id,
                    connection: connection.clone(),
                    stream: stream.clone(),
                    records_read: counts.read,
                    applied: counts.applied,
                    unchanged: counts.unchanged,
                    rejected: counts.rejected,
                    pages: counts.pages,
                });
            }
            if last {
                return Ok(committed);
            }
            read_from = page.next.take();
            drop(page);
            page = match ahead {
                Some(next) => next?,
                None => {
                    check()?;
                    cancellable(cancel, connector.read(stream, read_from.as_ref())).await?
                }
            };
        }
    }
}
