//! `MemoryStore`: the whole [`StateStore`] in memory, with the same semantics as SQLite.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    AppendOutcome, ClaimedEvent, Clock, Connection, ConnectionBacklog, ConnectionStatus,
    ConnectionStore, CursorStore, DAY_MS, DailyRunStats, DeadLetter, EventId, FailAction,
    InboxCounts, InboxEvent, InboxStore, LogLevel, RejectId, RejectStore, RunId, RunKind,
    RunLogLine, RunOutcome, RunStatus, RunStore, ScheduleEntry, ScheduleOutcome, ScheduleRow,
    ScheduleStore, StoredReject, SyncRun, cursor_conflict, lease_lost, lease_ms, not_found,
    reject_key, run_finished, validate_outcome, validate_schedule_outcome,
};
use crate::cursor::CursorToken;
use crate::error::{Error, Result};
use crate::model::{ConnectionId, Reject, StreamId};
use crate::token::{TokenSet, TokenStore, Versioned, conflict};

/// A [`StateStore`](super::StateStore) in memory: for tests and hosts that keep nothing across restarts.
/// Tokens are held as they are (not encrypted: nothing is at rest).
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    clock: Clock,
}

#[derive(Default)]
struct Inner {
    connections: BTreeMap<ConnectionId, Connection>,
    /// `None` value: deleted, version kept (see the module docs of `store`).
    tokens: BTreeMap<ConnectionId, (Option<TokenSet>, u64)>,
    cursors: BTreeMap<(ConnectionId, StreamId), (Option<CursorToken>, u64)>,
    runs: BTreeMap<i64, SyncRun>,
    next_run: i64,
    /// Log lines per run, in order (the sequence is the position).
    run_logs: BTreeMap<i64, Vec<RunLogLine>>,
    inbox: BTreeMap<i64, Entry>,
    next_event: i64,
    rejects: BTreeMap<i64, StoredReject>,
    next_reject: i64,
    schedules: BTreeMap<(ConnectionId, StreamId), ScheduleRow>,
}

#[derive(Clone, PartialEq, Eq)]
enum State {
    Pending,
    Done,
    Dead,
}

struct Entry {
    event: InboxEvent,
    state: State,
    attempts: u32,
    next_attempt_at: i64,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    last_error: Option<String>,
    finished_at: Option<i64>,
}

impl Entry {
    fn leased(&self, now: i64) -> bool {
        self.lease_until.is_some_and(|t| t > now)
    }

    fn held_by(&self, worker: &str, now: i64) -> bool {
        self.state == State::Pending
            && self.leased(now)
            && self.lease_owner.as_deref() == Some(worker)
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `clock` for timestamps, leases and retry times.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| Error::storage("memory store lock poisoned by a panic"))
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("MemoryStore");
        if let Ok(inner) = self.inner.lock() {
            d.field("connections", &inner.connections.len())
                .field("cursors", &inner.cursors.len())
                .field("runs", &inner.runs.len())
                .field("inbox", &inner.inbox.len());
        }
        d.finish_non_exhaustive()
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn load(&self, connection: &ConnectionId) -> Result<Option<Versioned<TokenSet>>> {
        let inner = self.lock()?;
        Ok(match inner.tokens.get(connection) {
            Some((Some(t), v)) => Some(Versioned {
                value: t.clone(),
                version: *v,
            }),
            _ => None,
        })
    }

    async fn save(
        &self,
        connection: &ConnectionId,
        tokens: &TokenSet,
        expected: Option<u64>,
    ) -> Result<u64> {
        let mut inner = self.lock()?;
        let slot = inner.tokens.get(connection);
        let current = slot.and_then(|(t, v)| t.as_ref().map(|_| *v));
        let base = match (slot, expected) {
            (None, None) => 0,
            (Some((None, v)), None) => *v,
            (Some((Some(_), v)), Some(e)) if *v == e => e,
            _ => return Err(conflict(connection, expected, current)),
        };
        inner
            .tokens
            .insert(connection.clone(), (Some(tokens.clone()), base + 1));
        Ok(base + 1)
    }

    async fn delete(&self, connection: &ConnectionId) -> Result<()> {
        let mut inner = self.lock()?;
        if let Some(slot) = inner.tokens.get_mut(connection)
            && slot.0.is_some()
        {
            *slot = (None, slot.1 + 1);
        }
        Ok(())
    }
}

fn dead_letter(id: i64, e: &Entry) -> DeadLetter {
    DeadLetter {
        id: EventId(id),
        event: e.event.clone(),
        attempts: e.attempts,
        last_error: e.last_error.clone(),
        failed_at: e.finished_at.unwrap_or(0),
    }
}

#[async_trait]
impl ConnectionStore for MemoryStore {
    async fn upsert_connection(&self, connection: &Connection) -> Result<Connection> {
        let now = self.clock.now_ms();
        let mut inner = self.lock()?;
        let mut stored = connection.clone();
        stored.created_at = inner
            .connections
            .get(&connection.id)
            .map_or(now, |c| c.created_at);
        stored.updated_at = now;
        inner
            .connections
            .insert(connection.id.clone(), stored.clone());
        Ok(stored)
    }

    async fn get_connection(&self, id: &ConnectionId) -> Result<Option<Connection>> {
        Ok(self.lock()?.connections.get(id).cloned())
    }

    async fn list_connections(&self) -> Result<Vec<Connection>> {
        Ok(self.lock()?.connections.values().cloned().collect())
    }

    async fn set_connection_status(
        &self,
        id: &ConnectionId,
        status: ConnectionStatus,
        detail: Option<&str>,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        let mut inner = self.lock()?;
        let c = inner
            .connections
            .get_mut(id)
            .ok_or_else(|| not_found("no such connection", id))?;
        c.status = status;
        c.status_detail = detail.map(str::to_string);
        c.updated_at = now;
        Ok(())
    }

    async fn delete_connection(&self, id: &ConnectionId) -> Result<()> {
        let mut inner = self.lock()?;
        if inner.connections.remove(id).is_none() {
            return Err(not_found("no such connection", id));
        }
        if let Some(slot) = inner.tokens.get_mut(id)
            && slot.0.is_some()
        {
            *slot = (None, slot.1 + 1);
        }
        for ((c, _), slot) in inner.cursors.iter_mut() {
            if c == id && slot.0.is_some() {
                *slot = (None, slot.1 + 1);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl CursorStore for MemoryStore {
    async fn load_cursor(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
    ) -> Result<Option<Versioned<CursorToken>>> {
        let inner = self.lock()?;
        Ok(
            match inner.cursors.get(&(connection.clone(), stream.clone())) {
                Some((Some(t), v)) => Some(Versioned {
                    value: t.clone(),
                    version: *v,
                }),
                _ => None,
            },
        )
    }

    async fn save_cursor(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        cursor: &CursorToken,
        expected: Option<u64>,
    ) -> Result<u64> {
        let mut inner = self.lock()?;
        let key = (connection.clone(), stream.clone());
        let slot = inner.cursors.get(&key);
        let current = slot.and_then(|(t, v)| t.as_ref().map(|_| *v));
        let base = match (slot, expected) {
            (None, None) => 0,
            (Some((None, v)), None) => *v,
            (Some((Some(_), v)), Some(e)) if *v == e => e,
            _ => return Err(cursor_conflict(connection, stream, expected, current)),
        };
        inner.cursors.insert(key, (Some(cursor.clone()), base + 1));
        Ok(base + 1)
    }

    async fn reset_cursor(&self, connection: &ConnectionId, stream: &StreamId) -> Result<()> {
        let mut inner = self.lock()?;
        if let Some(slot) = inner.cursors.get_mut(&(connection.clone(), stream.clone()))
            && slot.0.is_some()
        {
            *slot = (None, slot.1 + 1);
        }
        Ok(())
    }
}

#[async_trait]
impl RunStore for MemoryStore {
    async fn start_run(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        kind: RunKind,
    ) -> Result<RunId> {
        let now = self.clock.now_ms();
        let mut inner = self.lock()?;
        inner.next_run += 1;
        let id = inner.next_run;
        inner.runs.insert(
            id,
            SyncRun {
                id: RunId(id),
                connection: connection.clone(),
                stream: stream.clone(),
                kind,
                status: RunStatus::Running,
                started_at: now,
                finished_at: None,
                records_read: 0,
                records_applied: 0,
                records_unchanged: 0,
                records_rejected: 0,
                pages: 0,
                error: None,
            },
        );
        Ok(RunId(id))
    }

    async fn finish_run(&self, run: RunId, outcome: &RunOutcome) -> Result<()> {
        validate_outcome(outcome)?;
        let now = self.clock.now_ms();
        let mut inner = self.lock()?;
        let r = inner
            .runs
            .get_mut(&run.0)
            .filter(|r| r.status == RunStatus::Running)
            .ok_or_else(|| run_finished(run))?;
        r.status = outcome.status;
        r.finished_at = Some(now);
        r.records_read = outcome.records_read;
        r.records_applied = outcome.records_applied;
        r.records_unchanged = outcome.records_unchanged;
        r.records_rejected = outcome.records_rejected;
        r.pages = outcome.pages;
        r.error = outcome.error.clone();
        Ok(())
    }

    async fn list_runs(
        &self,
        connection: Option<&ConnectionId>,
        limit: usize,
    ) -> Result<Vec<SyncRun>> {
        let inner = self.lock()?;
        Ok(inner
            .runs
            .values()
            .rev()
            .filter(|r| connection.is_none_or(|c| &r.connection == c))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn last_run(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
    ) -> Result<Option<SyncRun>> {
        let inner = self.lock()?;
        Ok(inner
            .runs
            .values()
            .rev()
            .find(|r| &r.connection == connection && &r.stream == stream)
            .cloned())
    }

    async fn purge_runs(&self, before: i64, limit: usize) -> Result<u64> {
        let mut inner = self.lock()?;
        let latest: BTreeSet<i64> = {
            let mut by_stream: BTreeMap<(&ConnectionId, &StreamId), i64> = BTreeMap::new();
            for (id, r) in &inner.runs {
                by_stream.insert((&r.connection, &r.stream), *id);
            }
            by_stream.into_values().collect()
        };
        let doomed: Vec<i64> = inner
            .runs
            .iter()
            .filter(|(id, r)| {
                r.status != RunStatus::Running
                    && r.finished_at.is_some_and(|t| t < before)
                    && !latest.contains(id)
            })
            .map(|(id, _)| *id)
            .take(limit)
            .collect();
        for id in &doomed {
            inner.runs.remove(id);
            inner.run_logs.remove(id);
        }
        Ok(doomed.len() as u64)
    }

    async fn get_run(&self, run: RunId) -> Result<Option<SyncRun>> {
        Ok(self.lock()?.runs.get(&run.0).cloned())
    }

    async fn run_stats(
        &self,
        connection: Option<&ConnectionId>,
        since: i64,
    ) -> Result<Vec<DailyRunStats>> {
        let inner = self.lock()?;
        let mut days: BTreeMap<(&ConnectionId, i64), DailyRunStats> = BTreeMap::new();
        for r in inner.runs.values() {
            if r.started_at < since || connection.is_some_and(|c| &r.connection != c) {
                continue;
            }
            // Truncating division, as SQL's integer division.
            let day = r.started_at / DAY_MS * DAY_MS;
            let d = days
                .entry((&r.connection, day))
                .or_insert_with(|| DailyRunStats {
                    connection: r.connection.clone(),
                    day,
                    runs: 0,
                    failed: 0,
                    records_read: 0,
                    records_applied: 0,
                    records_rejected: 0,
                });
            d.runs += 1;
            d.failed += u64::from(r.status == RunStatus::Failed);
            d.records_read += r.records_read;
            d.records_applied += r.records_applied;
            d.records_rejected += r.records_rejected;
        }
        Ok(days.into_values().collect())
    }

    async fn append_run_logs(&self, run: RunId, lines: &[RunLogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        self.lock()?
            .run_logs
            .entry(run.0)
            .or_default()
            .extend_from_slice(lines);
        Ok(())
    }

    async fn run_logs(
        &self,
        run: RunId,
        min_level: Option<LogLevel>,
        limit: usize,
    ) -> Result<Vec<RunLogLine>> {
        let inner = self.lock()?;
        Ok(inner
            .run_logs
            .get(&run.0)
            .into_iter()
            .flatten()
            .filter(|l| min_level.is_none_or(|m| l.level >= m))
            .take(limit)
            .cloned()
            .collect())
    }
}

impl Inner {
    fn append(&mut self, event: &InboxEvent, now: i64) -> AppendOutcome {
        let dup = self.inbox.values().any(|e| {
            e.event.platform == event.platform
                && e.event.connection == event.connection
                && e.event.event_id == event.event_id
        });
        if dup {
            return AppendOutcome::Duplicate;
        }
        self.next_event += 1;
        let id = self.next_event;
        self.inbox.insert(
            id,
            Entry {
                event: event.clone(),
                state: State::Pending,
                attempts: 0,
                next_attempt_at: now,
                lease_owner: None,
                lease_until: None,
                last_error: None,
                finished_at: None,
            },
        );
        AppendOutcome::Inserted(EventId(id))
    }

    fn complete(&mut self, id: EventId, worker: &str, now: i64) -> Result<()> {
        let e = self
            .inbox
            .get_mut(&id.0)
            .filter(|e| e.held_by(worker, now))
            .ok_or_else(|| lease_lost(id, worker))?;
        e.state = State::Done;
        e.lease_owner = None;
        e.lease_until = None;
        e.finished_at = Some(now);
        Ok(())
    }
}

#[async_trait]
impl InboxStore for MemoryStore {
    async fn inbox_append(&self, event: &InboxEvent) -> Result<AppendOutcome> {
        let now = self.clock.now_ms();
        Ok(self.lock()?.append(event, now))
    }

    async fn append_many(&self, events: &[InboxEvent]) -> Result<Vec<AppendOutcome>> {
        let now = self.clock.now_ms();
        // One lock: the batch is appended atomically.
        let mut inner = self.lock()?;
        Ok(events.iter().map(|e| inner.append(e, now)).collect())
    }

    async fn inbox_claim(
        &self,
        worker: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedEvent>> {
        let now = self.clock.now_ms();
        let until = now.saturating_add(lease_ms(lease));
        let mut inner = self.lock()?;
        let mut due: Vec<(i64, i64)> = inner
            .inbox
            .iter()
            .filter(|(_, e)| {
                e.state == State::Pending && e.next_attempt_at <= now && !e.leased(now)
            })
            .map(|(id, e)| (e.event.received_at, *id))
            .collect();
        due.sort_unstable();
        let mut out = Vec::new();
        for (_, id) in due.into_iter().take(limit) {
            if let Some(e) = inner.inbox.get_mut(&id) {
                e.lease_owner = Some(worker.to_string());
                e.lease_until = Some(until);
                out.push(ClaimedEvent {
                    id: EventId(id),
                    event: e.event.clone(),
                    // Failed attempts so far, plus this one.
                    attempts: e.attempts.saturating_add(1),
                    lease_until: until,
                    last_error: e.last_error.clone(),
                });
            }
        }
        Ok(out)
    }

    async fn inbox_complete(&self, id: EventId, worker: &str) -> Result<()> {
        let now = self.clock.now_ms();
        self.lock()?.complete(id, worker, now)
    }

    async fn inbox_complete_many(&self, ids: &[EventId], worker: &str) -> Result<Vec<EventId>> {
        let now = self.clock.now_ms();
        let mut inner = self.lock()?;
        Ok(ids
            .iter()
            .filter(|id| inner.complete(**id, worker, now).is_ok())
            .copied()
            .collect())
    }

    async fn inbox_fail(
        &self,
        id: EventId,
        worker: &str,
        error: &str,
        action: FailAction,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        let mut inner = self.lock()?;
        let e = inner
            .inbox
            .get_mut(&id.0)
            .filter(|e| e.held_by(worker, now))
            .ok_or_else(|| lease_lost(id, worker))?;
        e.lease_owner = None;
        e.lease_until = None;
        e.attempts = e.attempts.saturating_add(1);
        e.last_error = Some(error.to_string());
        match action {
            FailAction::RetryAt(at) => e.next_attempt_at = at,
            FailAction::DeadLetter => {
                e.state = State::Dead;
                e.finished_at = Some(now);
            }
        }
        Ok(())
    }

    async fn inbox_renew(
        &self,
        ids: &[EventId],
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<EventId>> {
        let now = self.clock.now_ms();
        let until = now.saturating_add(lease_ms(lease));
        let mut inner = self.lock()?;
        let mut held = Vec::new();
        for id in ids {
            if let Some(e) = inner
                .inbox
                .get_mut(&id.0)
                .filter(|e| e.held_by(worker, now))
            {
                e.lease_until = Some(until);
                held.push(*id);
            }
        }
        held.sort_unstable();
        held.dedup();
        Ok(held)
    }

    async fn inbox_release(&self, ids: &[EventId], worker: &str) -> Result<Vec<EventId>> {
        let now = self.clock.now_ms();
        let mut inner = self.lock()?;
        let mut released = Vec::new();
        for id in ids {
            if let Some(e) = inner
                .inbox
                .get_mut(&id.0)
                .filter(|e| e.held_by(worker, now))
            {
                e.lease_owner = None;
                e.lease_until = None;
                e.next_attempt_at = now;
                released.push(*id);
            }
        }
        released.sort_unstable();
        released.dedup();
        Ok(released)
    }

    async fn purge_inbox_done(&self, before: i64, limit: usize) -> Result<u64> {
        let mut inner = self.lock()?;
        let doomed: Vec<i64> = inner
            .inbox
            .iter()
            .filter(|(_, e)| e.state == State::Done && e.finished_at.is_some_and(|t| t < before))
            .map(|(id, _)| *id)
            .take(limit)
            .collect();
        for id in &doomed {
            inner.inbox.remove(id);
        }
        Ok(doomed.len() as u64)
    }

    async fn inbox_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let inner = self.lock()?;
        Ok(inner
            .inbox
            .iter()
            .filter(|(_, e)| e.state == State::Dead)
            .take(limit)
            .map(|(id, e)| dead_letter(*id, e))
            .collect())
    }

    async fn inbox_requeue(&self, id: EventId) -> Result<()> {
        let now = self.clock.now_ms();
        let mut inner = self.lock()?;
        let e = inner
            .inbox
            .get_mut(&id.0)
            .filter(|e| e.state == State::Dead)
            .ok_or_else(|| not_found("no dead-lettered inbox event with this id", id))?;
        e.state = State::Pending;
        e.attempts = 0;
        e.next_attempt_at = now;
        e.finished_at = None;
        Ok(())
    }

    async fn inbox_counts(&self) -> Result<InboxCounts> {
        let now = self.clock.now_ms();
        let inner = self.lock()?;
        let mut c = InboxCounts::default();
        for e in inner.inbox.values() {
            match e.state {
                State::Pending if e.leased(now) => c.in_flight += 1,
                State::Pending => c.pending += 1,
                State::Done => c.done += 1,
                State::Dead => c.dead += 1,
            }
        }
        Ok(c)
    }

    async fn inbox_backlog(&self) -> Result<Vec<ConnectionBacklog>> {
        let now = self.clock.now_ms();
        let inner = self.lock()?;
        let mut by: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
        for e in inner.inbox.values() {
            let slot = || (0, 0, 0);
            match e.state {
                State::Pending if e.leased(now) => {
                    by.entry(e.event.connection.as_str()).or_insert_with(slot).1 += 1
                }
                State::Pending => by.entry(e.event.connection.as_str()).or_insert_with(slot).0 += 1,
                State::Dead => by.entry(e.event.connection.as_str()).or_insert_with(slot).2 += 1,
                State::Done => {}
            }
        }
        Ok(by
            .into_iter()
            .map(|(c, (pending, in_flight, dead))| ConnectionBacklog {
                connection: ConnectionId::from(c.to_string()),
                pending,
                in_flight,
                dead,
            })
            .collect())
    }
}

#[async_trait]
impl RejectStore for MemoryStore {
    async fn put_rejects(&self, connection: &ConnectionId, rejects: &[Reject]) -> Result<()> {
        let now = self.clock.now_ms();
        let mut inner = self.lock()?;
        for r in rejects {
            let key = reject_key(r);
            let existing = inner.rejects.values_mut().find(|s| {
                &s.connection == connection
                    && s.reject.stream == r.stream
                    && reject_key(&s.reject) == key
            });
            match existing {
                Some(s) => {
                    s.reject = r.clone();
                    s.attempts = s.attempts.saturating_add(1);
                    s.last_seen_at = now;
                }
                None => {
                    inner.next_reject += 1;
                    let id = inner.next_reject;
                    inner.rejects.insert(
                        id,
                        StoredReject {
                            id: RejectId(id),
                            connection: connection.clone(),
                            reject: r.clone(),
                            attempts: 1,
                            first_seen_at: now,
                            last_seen_at: now,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    async fn list_rejects(
        &self,
        connection: Option<&ConnectionId>,
        stream: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<StoredReject>> {
        let inner = self.lock()?;
        Ok(inner
            .rejects
            .values()
            .filter(|r| connection.is_none_or(|c| &r.connection == c))
            .filter(|r| stream.is_none_or(|s| &r.reject.stream == s))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn count_rejects(&self, connection: Option<&ConnectionId>) -> Result<u64> {
        let inner = self.lock()?;
        Ok(inner
            .rejects
            .values()
            .filter(|r| connection.is_none_or(|c| &r.connection == c))
            .count() as u64)
    }

    async fn delete_reject(&self, id: RejectId) -> Result<()> {
        let mut inner = self.lock()?;
        inner
            .rejects
            .remove(&id.0)
            .map(|_| ())
            .ok_or_else(|| not_found("reject", id))
    }

    async fn reject_failed(&self, id: RejectId, error: &str) -> Result<()> {
        let now = self.clock.now_ms();
        let mut inner = self.lock()?;
        let r = inner
            .rejects
            .get_mut(&id.0)
            .ok_or_else(|| not_found("reject", id))?;
        r.reject.error = error.to_string();
        r.attempts = r.attempts.saturating_add(1);
        r.last_seen_at = now;
        Ok(())
    }
}

#[async_trait]
impl ScheduleStore for MemoryStore {
    async fn upsert_schedule(&self, entry: &ScheduleEntry, _now: i64) -> Result<()> {
        let mut inner = self.lock()?;
        let key = (entry.connection.clone(), entry.stream.clone());
        match inner.schedules.get_mut(&key) {
            Some(row) => {
                if row.spec != entry.spec || row.full != entry.full {
                    row.spec = entry.spec.clone();
                    row.full = entry.full;
                    row.next_due_at = entry.first_due_at;
                }
            }
            None => {
                inner.schedules.insert(
                    key,
                    ScheduleRow {
                        connection: entry.connection.clone(),
                        stream: entry.stream.clone(),
                        spec: entry.spec.clone(),
                        full: entry.full,
                        next_due_at: entry.first_due_at,
                        lease_owner: None,
                        lease_until: None,
                        failures: 0,
                        runs: 0,
                        last_started_at: None,
                        last_finished_at: None,
                        last_status: None,
                        last_error: None,
                    },
                );
            }
        }
        Ok(())
    }

    async fn claim_schedules(
        &self,
        owner: &str,
        lease: Duration,
        now: i64,
        limit: usize,
    ) -> Result<Vec<ScheduleRow>> {
        let until = now.saturating_add(lease_ms(lease));
        let mut inner = self.lock()?;
        let mut due: Vec<(i64, (ConnectionId, StreamId))> = inner
            .schedules
            .iter()
            .filter(|(_, r)| r.next_due_at <= now && r.lease_until.is_none_or(|t| t <= now))
            .map(|(k, r)| (r.next_due_at, k.clone()))
            .collect();
        due.sort();
        let mut out = Vec::new();
        for (_, key) in due.into_iter().take(limit) {
            if let Some(r) = inner.schedules.get_mut(&key) {
                r.lease_owner = Some(owner.to_string());
                r.lease_until = Some(until);
                r.last_started_at = Some(now);
                out.push(r.clone());
            }
        }
        Ok(out)
    }

    async fn renew_schedule(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        owner: &str,
        until: i64,
        now: i64,
    ) -> Result<bool> {
        let mut inner = self.lock()?;
        match inner
            .schedules
            .get_mut(&(connection.clone(), stream.clone()))
        {
            Some(r)
                if r.lease_owner.as_deref() == Some(owner)
                    && r.lease_until.is_some_and(|t| t > now) =>
            {
                r.lease_until = Some(until);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn finish_schedule(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        owner: &str,
        outcome: &ScheduleOutcome,
        now: i64,
    ) -> Result<bool> {
        validate_schedule_outcome(outcome)?;
        let mut inner = self.lock()?;
        let Some(r) = inner
            .schedules
            .get_mut(&(connection.clone(), stream.clone()))
            .filter(|r| r.lease_owner.as_deref() == Some(owner))
        else {
            return Ok(false);
        };
        r.lease_owner = None;
        r.lease_until = None;
        r.next_due_at = outcome.next_due_at;
        r.last_finished_at = Some(now);
        r.last_status = Some(outcome.status);
        r.last_error = outcome.error.clone();
        match outcome.status {
            RunStatus::Succeeded => {
                r.runs = r.runs.saturating_add(1);
                r.failures = 0;
            }
            RunStatus::Failed => {
                r.runs = r.runs.saturating_add(1);
                r.failures = r.failures.saturating_add(1);
            }
            RunStatus::Cancelled | RunStatus::Running => {}
        }
        Ok(true)
    }

    async fn make_schedule_due(
        &self,
        connection: &ConnectionId,
        stream: &StreamId,
        now: i64,
    ) -> Result<()> {
        let mut inner = self.lock()?;
        if let Some(r) = inner
            .schedules
            .get_mut(&(connection.clone(), stream.clone()))
        {
            r.next_due_at = r.next_due_at.min(now);
        }
        Ok(())
    }

    async fn list_schedules(&self) -> Result<Vec<ScheduleRow>> {
        Ok(self.lock()?.schedules.values().cloned().collect())
    }
}
