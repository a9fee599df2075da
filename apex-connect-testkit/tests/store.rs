//! The same `StateStore` semantics against `MemoryStore`, `SqliteStore` and `PgStore`, and
//! what several processes sharing one PostgreSQL database rely on (see `support/pg.rs` for how
//! the PostgreSQL tests find a server).

use apex_connect_testkit::pg;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apex_connect_core::store::prelude::*;
use apex_connect_core::store::{
    AppendOutcome, Clock, Connection, ConnectionStatus, DailyRunStats, EncryptionKey, EventId,
    FailAction, InboxCounts, InboxEvent, LogLevel, MemoryStore, RunId, RunKind, RunLogLine,
    RunOutcome, RunStatus, ScheduleEntry, ScheduleOutcome, SinkKind, SqliteStore, StateStore,
    StoreLocation,
};
use apex_connect_core::{ConnectionId, CursorToken, ErrorKind, StreamId, TokenSet, TokenStore};
use secrecy::ExposeSecret;
use serde_json::json;

/// A clock the test moves by hand.
#[derive(Clone)]
struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    fn new() -> Self {
        ManualClock(Arc::new(AtomicI64::new(1_700_000_000_000)))
    }
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
    fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    fn clock(&self) -> Clock {
        let t = self.0.clone();
        Clock::from_fn(move || UNIX_EPOCH + Duration::from_millis(t.load(Ordering::SeqCst) as u64))
    }
}

/// (pending, in_flight, done, dead)
fn counts(c: InboxCounts) -> (u64, u64, u64, u64) {
    (c.pending, c.in_flight, c.done, c.dead)
}

fn tokens(access: &str) -> TokenSet {
    TokenSet::bearer(access).with_refresh_token(format!("refresh-{access}"))
}

async fn semantics(store: Arc<dyn StateStore>, clock: ManualClock) {
    let c1 = ConnectionId::from("acme-front");
    let c2 = ConnectionId::from("beta-hub");
    let s = StreamId::from("contacts");

    // ---- connections ----
    assert!(store.get_connection(&c1).await.unwrap().is_none());
    let stored = store
        .upsert_connection(&Connection::new(
            c1.clone(),
            "frontapp",
            json!({"region": "eu"}),
        ))
        .await
        .unwrap();
    assert_eq!(stored.created_at, clock.now());
    assert_eq!(stored.status, ConnectionStatus::Active);
    clock.advance(1000);
    let again = store
        .upsert_connection(&Connection::new(
            c1.clone(),
            "frontapp",
            json!({"region": "us"}),
        ))
        .await
        .unwrap();
    assert_eq!(again.created_at, stored.created_at, "created_at kept");
    assert_eq!(again.updated_at, clock.now());
    store
        .upsert_connection(&Connection::new(c2.clone(), "hubspot", json!({})))
        .await
        .unwrap();
    store
        .set_connection_status(&c1, ConnectionStatus::NeedsReauth, Some("invalid_grant"))
        .await
        .unwrap();
    let got = store.get_connection(&c1).await.unwrap().unwrap();
    assert_eq!(got.status, ConnectionStatus::NeedsReauth);
    assert_eq!(got.status_detail.as_deref(), Some("invalid_grant"));
    assert_eq!(got.config, json!({"region": "us"}));
    let all = store.list_connections().await.unwrap();
    assert_eq!(
        all.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["acme-front", "beta-hub"]
    );
    let e = store
        .set_connection_status(&ConnectionId::from("nope"), ConnectionStatus::Active, None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);

    // ---- tokens: compare-and-swap ----
    assert!(TokenStore::load(&*store, &c1).await.unwrap().is_none());
    assert_eq!(store.save(&c1, &tokens("a1"), None).await.unwrap(), 1);
    let e = store.save(&c1, &tokens("x"), None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert_eq!(store.save(&c1, &tokens("a2"), Some(1)).await.unwrap(), 2);
    let e = store
        .save(&c1, &tokens("stale"), Some(1))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(
        !format!("{e:?}{e}").contains("stale"),
        "no secret in errors"
    );
    let t = TokenStore::load(&*store, &c1).await.unwrap().unwrap();
    assert_eq!(t.version, 2);
    assert_eq!(t.value.access_token.expose_secret(), "a2");
    assert_eq!(
        t.value.refresh_token.as_ref().unwrap().expose_secret(),
        "refresh-a2"
    );
    // delete keeps the version counter: a holder of version 2 cannot write after it
    TokenStore::delete(&*store, &c1).await.unwrap();
    assert!(TokenStore::load(&*store, &c1).await.unwrap().is_none());
    let e = store.save(&c1, &tokens("late"), Some(2)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    let v = store.save(&c1, &tokens("b1"), None).await.unwrap();
    assert!(v > 2, "version keeps growing after delete: {v}");

    // ---- cursors: compare-and-swap ----
    assert!(store.load_cursor(&c1, &s).await.unwrap().is_none());
    let k1 = CursorToken::from_string("memory.v1.AAA");
    let k2 = CursorToken::from_string("memory.v1.BBB");
    assert_eq!(store.save_cursor(&c1, &s, &k1, None).await.unwrap(), 1);
    let e = store.save_cursor(&c1, &s, &k2, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert_eq!(store.save_cursor(&c1, &s, &k2, Some(1)).await.unwrap(), 2);
    let e = store.save_cursor(&c1, &s, &k1, Some(1)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    let cur = store.load_cursor(&c1, &s).await.unwrap().unwrap();
    assert_eq!((cur.value, cur.version), (k2.clone(), 2));
    // per (connection, stream)
    assert!(
        store
            .load_cursor(&c1, &StreamId::from("other"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.load_cursor(&c2, &s).await.unwrap().is_none());
    store.reset_cursor(&c1, &s).await.unwrap();
    assert!(store.load_cursor(&c1, &s).await.unwrap().is_none());
    let e = store.save_cursor(&c1, &s, &k1, Some(2)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "stale run after reset loses");
    let v = store.save_cursor(&c1, &s, &k1, None).await.unwrap();
    assert_eq!(v, 4);

    // ---- runs ----
    let r1 = store.start_run(&c1, &s, RunKind::Full).await.unwrap();
    clock.advance(10);
    let r2 = store
        .start_run(&c2, &s, RunKind::Incremental)
        .await
        .unwrap();
    let r3 = store
        .start_run(&c1, &s, RunKind::Incremental)
        .await
        .unwrap();
    assert!(r1 < r2 && r2 < r3);
    store
        .finish_run(
            r1,
            &RunOutcome::new(RunStatus::Succeeded).with_counts(10, 7, 3, 2),
        )
        .await
        .unwrap();
    let e = store
        .finish_run(r1, &RunOutcome::new(RunStatus::Failed))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "finishing twice");
    store
        .finish_run(
            r3,
            &RunOutcome::new(RunStatus::Failed).with_error("upstream 502"),
        )
        .await
        .unwrap();
    let runs = store.list_runs(None, 10).await.unwrap();
    assert_eq!(
        runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        [r3, r2, r1],
        "newest first"
    );
    let mine = store.list_runs(Some(&c1), 10).await.unwrap();
    assert_eq!(mine.iter().map(|r| r.id).collect::<Vec<_>>(), [r3, r1]);
    assert_eq!(store.list_runs(None, 1).await.unwrap().len(), 1);
    let first = &mine[1];
    assert_eq!(first.status, RunStatus::Succeeded);
    assert_eq!(first.kind, RunKind::Full);
    assert_eq!(
        (
            first.records_read,
            first.records_applied,
            first.records_unchanged,
            first.pages
        ),
        (10, 7, 3, 2)
    );
    assert!(first.finished_at.is_some());
    let last = store.last_run(&c1, &s).await.unwrap().unwrap();
    assert_eq!(last.id, r3);
    assert_eq!(last.error.as_deref(), Some("upstream 502"));
    assert_eq!(
        store.last_run(&c2, &s).await.unwrap().unwrap().status,
        RunStatus::Running
    );
    assert!(
        store
            .last_run(&c2, &StreamId::from("x"))
            .await
            .unwrap()
            .is_none()
    );

    // ---- inbox ----
    let t0 = clock.now();
    let ev = |id: &str, at: i64| {
        InboxEvent::new(
            "frontapp",
            c1.clone(),
            id,
            at,
            format!("body-{id}").into_bytes(),
        )
        .with_headers(json!({"x-front-signature": "sig"}))
    };
    let AppendOutcome::Inserted(e1) = store.inbox_append(&ev("evt-1", t0)).await.unwrap() else {
        panic!("first append must insert")
    };
    assert_eq!(
        store.inbox_append(&ev("evt-1", t0 + 5)).await.unwrap(),
        AppendOutcome::Duplicate
    );
    // same event id on another connection is another event
    let other = InboxEvent::new("frontapp", c2.clone(), "evt-1", t0, &b"x"[..]);
    assert!(matches!(
        store.inbox_append(&other).await.unwrap(),
        AppendOutcome::Inserted(_)
    ));
    let AppendOutcome::Inserted(e2) = store.inbox_append(&ev("evt-2", t0 + 1)).await.unwrap()
    else {
        panic!("insert")
    };
    assert_eq!(counts(store.inbox_counts().await.unwrap()), (3, 0, 0, 0));
    // The backlog per connection (pending, in flight, dead).
    let backlog = || async {
        store
            .inbox_backlog()
            .await
            .unwrap()
            .into_iter()
            .map(|b| (b.connection.to_string(), (b.pending, b.in_flight, b.dead)))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        backlog().await,
        [(c1.to_string(), (2, 0, 0)), (c2.to_string(), (1, 0, 0))]
    );

    let lease = Duration::from_secs(30);
    let claimed = store.inbox_claim("w1", lease, 2).await.unwrap();
    assert_eq!(claimed.len(), 2, "limit");
    assert_eq!(claimed[0].id, e1, "oldest first");
    assert_eq!(claimed[0].attempts, 1);
    assert_eq!(claimed[0].lease_until, clock.now() + 30_000);
    assert_eq!(claimed[0].event.body.as_ref(), b"body-evt-1");
    assert_eq!(
        claimed[0].event.headers_json,
        json!({"x-front-signature": "sig"})
    );
    let other_id = claimed[1].id;
    // the rest goes to another worker; nothing is handed out twice
    let w2 = store.inbox_claim("w2", lease, 10).await.unwrap();
    assert_eq!(w2.iter().map(|c| c.id).collect::<Vec<_>>(), [e2]);
    assert!(store.inbox_claim("w3", lease, 10).await.unwrap().is_empty());
    assert_eq!(counts(store.inbox_counts().await.unwrap()), (0, 3, 0, 0));
    assert_eq!(
        backlog().await,
        [(c1.to_string(), (0, 2, 0)), (c2.to_string(), (0, 1, 0))]
    );

    // complete by the holder; not by someone else
    let e = store.inbox_complete(e1, "w2").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    store.inbox_complete(e1, "w1").await.unwrap();
    let e = store.inbox_complete(e1, "w1").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "already done");

    // fail with retry: not claimable before the retry time
    store
        .inbox_fail(
            e2,
            "w2",
            "connector timed out",
            FailAction::RetryAt(clock.now() + 5_000),
        )
        .await
        .unwrap();
    assert!(store.inbox_claim("w3", lease, 10).await.unwrap().is_empty());
    clock.advance(5_000);
    let retry = store.inbox_claim("w3", lease, 10).await.unwrap();
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].id, e2);
    assert_eq!(retry[0].attempts, 2);
    assert_eq!(retry[0].last_error.as_deref(), Some("connector timed out"));

    // lease expiry: the event held by w1 goes to w4; w1 can no longer complete it
    clock.advance(30_001);
    let stolen = store.inbox_claim("w4", lease, 10).await.unwrap();
    let stolen_ids: Vec<_> = stolen.iter().map(|c| c.id).collect();
    assert!(
        stolen_ids.contains(&other_id) && stolen_ids.contains(&e2),
        "{stolen_ids:?}"
    );
    let e = store.inbox_complete(other_id, "w1").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    store.inbox_complete(other_id, "w4").await.unwrap();

    // dead letter and requeue
    store
        .inbox_fail(e2, "w4", "gave up", FailAction::DeadLetter)
        .await
        .unwrap();
    let dead = store.inbox_dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, e2);
    // w2's failure counted; w3's claim expired without a result and did not burn an attempt
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].last_error.as_deref(), Some("gave up"));
    assert_eq!(dead[0].failed_at, clock.now());
    assert_eq!(counts(store.inbox_counts().await.unwrap()), (0, 0, 2, 1));
    assert_eq!(
        backlog().await,
        [(c1.to_string(), (0, 0, 1))],
        "done is not backlog"
    );
    assert!(store.inbox_claim("w5", lease, 10).await.unwrap().is_empty());
    let e = store.inbox_requeue(e1).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "only dead letters requeue");
    store.inbox_requeue(e2).await.unwrap();
    let again = store.inbox_claim("w5", lease, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1, "fresh attempt budget");
    store.inbox_complete(e2, "w5").await.unwrap();
    assert_eq!(store.inbox_counts().await.unwrap().done, 3);
    assert!(store.inbox_dead_letters(10).await.unwrap().is_empty());
    assert!(backlog().await.is_empty());

    // ---- delete a connection: tokens and cursors go, history stays ----
    store.delete_connection(&c1).await.unwrap();
    assert!(store.get_connection(&c1).await.unwrap().is_none());
    assert!(TokenStore::load(&*store, &c1).await.unwrap().is_none());
    assert!(store.load_cursor(&c1, &s).await.unwrap().is_none());
    assert_eq!(store.list_runs(Some(&c1), 10).await.unwrap().len(), 2);
    assert_eq!(
        store.delete_connection(&c1).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // ---- rejects: one row per object, attempts counted, oldest first ----
    let rs = StreamId::from("messages");
    let err = apex_connect_core::Error::invalid_response("expected u64");
    let by_id = apex_connect_core::Reject::unmapped(
        &apex_connect_core::Record::upsert(rs.clone(), "msg_1", json!({"size": -1}))
            .with_version(7)
            .with_parent("cnv_1"),
        &err,
    );
    let no_id = apex_connect_core::Reject::unparsed(
        rs.clone(),
        None,
        bytes::Bytes::from_static(b"not json at all"),
        &err,
    );
    store
        .put_rejects(&c2, &[by_id.clone(), no_id.clone()])
        .await
        .unwrap();
    store
        .put_rejects(&c2, std::slice::from_ref(&by_id))
        .await
        .unwrap();
    assert_eq!(store.count_rejects(Some(&c2)).await.unwrap(), 2);
    assert_eq!(store.count_rejects(Some(&c1)).await.unwrap(), 0);
    assert_eq!(store.count_rejects(None).await.unwrap(), 2);
    let listed = store.list_rejects(Some(&c2), Some(&rs), 10).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].reject, by_id, "stored whole, oldest first");
    assert_eq!(listed[0].attempts, 2);
    assert_eq!(
        listed[1].reject.raw,
        bytes::Bytes::from_static(b"not json at all")
    );
    assert_eq!(
        listed[0].reject.to_record().unwrap().parent.as_deref(),
        Some("cnv_1")
    );
    assert!(
        store
            .list_rejects(None, Some(&StreamId::from("x")), 10)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .reject_failed(listed[1].id, "still bad")
        .await
        .unwrap();
    let again = store.list_rejects(None, None, 10).await.unwrap();
    assert_eq!(
        (again[1].reject.error.as_str(), again[1].attempts),
        ("still bad", 2)
    );
    store.delete_reject(listed[0].id).await.unwrap();
    assert_eq!(
        store.delete_reject(listed[0].id).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(store.count_rejects(None).await.unwrap(), 1);
}

/// Group commit (`append_many`), batch completion, and the scheduler's jobs.
async fn batches_and_schedules(store: Arc<dyn StateStore>, clock: ManualClock) {
    // ---- append_many: one outcome per event, in order; duplicates within and across ----
    let t0 = clock.now();
    let ev = |id: &str| InboxEvent::new("memory", "acme", id, t0, id.as_bytes().to_vec());
    assert!(store.append_many(&[]).await.unwrap().is_empty());
    let AppendOutcome::Inserted(first) = store.inbox_append(&ev("a")).await.unwrap() else {
        panic!("insert")
    };
    let out = store
        .append_many(&[ev("b"), ev("a"), ev("c"), ev("b")])
        .await
        .unwrap();
    assert_eq!(out.len(), 4);
    assert!(matches!(out[0], AppendOutcome::Inserted(_)));
    assert_eq!(out[1], AppendOutcome::Duplicate, "stored before");
    assert!(matches!(out[2], AppendOutcome::Inserted(_)));
    assert_eq!(
        out[3],
        AppendOutcome::Duplicate,
        "repeated within the batch"
    );
    assert_eq!(counts(store.inbox_counts().await.unwrap()), (3, 0, 0, 0));
    let appended: Vec<EventId> = out
        .iter()
        .filter_map(|o| match o {
            AppendOutcome::Inserted(id) => Some(*id),
            AppendOutcome::Duplicate => None,
        })
        .collect();
    assert!(appended.iter().all(|id| *id > first), "ids grow");

    // ---- inbox_complete_many: only what the worker still holds ----
    let lease = Duration::from_secs(30);
    let mine = store.inbox_claim("w1", lease, 2).await.unwrap();
    let theirs = store.inbox_claim("w2", lease, 10).await.unwrap();
    assert_eq!((mine.len(), theirs.len()), (2, 1));
    let mut ids: Vec<EventId> = mine.iter().map(|c| c.id).collect();
    ids.push(theirs[0].id);
    let mut done = store.inbox_complete_many(&ids, "w1").await.unwrap();
    done.sort();
    let mut want: Vec<EventId> = mine.iter().map(|c| c.id).collect();
    want.sort();
    assert_eq!(done, want, "w2's event is not w1's to complete");
    assert!(
        store
            .inbox_complete_many(&want, "w1")
            .await
            .unwrap()
            .is_empty(),
        "already done"
    );
    assert!(
        store
            .inbox_complete_many(&[], "w1")
            .await
            .unwrap()
            .is_empty()
    );
    // a lease that ran out cannot be completed in a batch either
    clock.advance(30_001);
    assert!(
        store
            .inbox_complete_many(&[theirs[0].id], "w2")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(counts(store.inbox_counts().await.unwrap()), (1, 0, 2, 0));

    // ---- schedules ----
    let (c, s1, s2) = (
        ConnectionId::from("acme"),
        StreamId::from("contacts"),
        StreamId::from("deals"),
    );
    let now = clock.now();
    assert!(store.list_schedules().await.unwrap().is_empty());
    store
        .upsert_schedule(
            &ScheduleEntry::new(c.clone(), s2.clone(), "every 1h", now + 10),
            now,
        )
        .await
        .unwrap();
    store
        .upsert_schedule(
            &ScheduleEntry::new(c.clone(), s1.clone(), "every 1h", now),
            now,
        )
        .await
        .unwrap();
    // a restart re-registers with a new first due time: the stored one is kept...
    store
        .upsert_schedule(
            &ScheduleEntry::new(c.clone(), s1.clone(), "every 1h", now + 999_999),
            now,
        )
        .await
        .unwrap();
    let rows = store.list_schedules().await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.stream.as_str()).collect::<Vec<_>>(),
        ["contacts", "deals"],
        "ordered by (connection, stream)"
    );
    assert_eq!(rows[0].next_due_at, now, "kept across a re-registration");
    assert_eq!((rows[0].runs, rows[0].failures), (0, 0));
    assert!(!rows[0].full);
    // ...unless the cadence changed
    store
        .upsert_schedule(
            &ScheduleEntry::new(c.clone(), s2.clone(), "every 2h", now + 20).full(true),
            now,
        )
        .await
        .unwrap();
    let deals = &store.list_schedules().await.unwrap()[1];
    assert_eq!((deals.spec.as_str(), deals.full), ("every 2h", true));
    assert_eq!(deals.next_due_at, now + 20);

    // claim: due and unleased only, earliest first, each to one owner
    let lease = Duration::from_secs(60);
    let a = store.claim_schedules("a", lease, now, 10).await.unwrap();
    assert_eq!(a.len(), 1, "deals is not due yet");
    assert_eq!(a[0].stream, s1);
    assert_eq!(a[0].lease_owner.as_deref(), Some("a"));
    assert_eq!(a[0].lease_until, Some(now + 60_000));
    assert_eq!(a[0].last_started_at, Some(now));
    assert!(
        store
            .claim_schedules("b", lease, now, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let both = store
        .claim_schedules("b", lease, now + 20, 1)
        .await
        .unwrap();
    assert_eq!(both.len(), 1, "limit; contacts is leased");
    assert_eq!(both[0].stream, s2);

    // renew: only by the holder, only while the lease holds
    assert!(
        store
            .renew_schedule(&c, &s1, "a", now + 90_000, now + 1)
            .await
            .unwrap()
    );
    assert!(
        !store
            .renew_schedule(&c, &s1, "b", now + 90_000, now + 1)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_schedules("c", lease, now + 60_001, 10)
            .await
            .unwrap()
            .is_empty(),
        "the renewed lease holds past the first one"
    );

    // finish: records the outcome, releases the lease; a lost lease is `false`
    let t = now + 70_000;
    let failed = ScheduleOutcome::new(RunStatus::Failed, t + 30_000).with_error("platform down");
    assert!(
        !store
            .finish_schedule(&c, &s1, "b", &failed, t)
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_schedule(&c, &s1, "a", &failed, t)
            .await
            .unwrap()
    );
    let row = store.list_schedules().await.unwrap()[0].clone();
    assert_eq!(row.lease_owner, None);
    assert_eq!(row.lease_until, None);
    assert_eq!(row.next_due_at, t + 30_000);
    assert_eq!(row.last_finished_at, Some(t));
    assert_eq!(row.last_status, Some(RunStatus::Failed));
    assert_eq!(row.last_error.as_deref(), Some("platform down"));
    assert_eq!((row.runs, row.failures), (1, 1));
    // a cancelled run counts neither; a success resets the failures
    let claimed = store
        .claim_schedules("a", lease, t + 30_000, 10)
        .await
        .unwrap();
    assert!(claimed.iter().any(|r| r.stream == s1));
    let cancelled = ScheduleOutcome::new(RunStatus::Cancelled, t + 30_000);
    assert!(
        store
            .finish_schedule(&c, &s1, "a", &cancelled, t + 30_001)
            .await
            .unwrap()
    );
    let row = store.list_schedules().await.unwrap()[0].clone();
    assert_eq!((row.runs, row.failures), (1, 1));
    assert_eq!(row.last_status, Some(RunStatus::Cancelled));
    store
        .claim_schedules("a", lease, t + 30_001, 10)
        .await
        .unwrap();
    let ok = ScheduleOutcome::new(RunStatus::Succeeded, t + 3_600_000);
    assert!(
        store
            .finish_schedule(&c, &s1, "a", &ok, t + 30_002)
            .await
            .unwrap()
    );
    let row = store.list_schedules().await.unwrap()[0].clone();
    assert_eq!((row.runs, row.failures), (2, 0));
    assert_eq!(row.last_error, None);
    let running = ScheduleOutcome::new(RunStatus::Running, t);
    assert_eq!(
        store
            .finish_schedule(&c, &s1, "a", &running, t)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );

    // make_due: brings it forward, never later; no-op without a job
    store.make_schedule_due(&c, &s1, t + 40_000).await.unwrap();
    assert_eq!(
        store.list_schedules().await.unwrap()[0].next_due_at,
        t + 40_000
    );
    store.make_schedule_due(&c, &s1, t + 50_000).await.unwrap();
    assert_eq!(
        store.list_schedules().await.unwrap()[0].next_due_at,
        t + 40_000
    );
    store
        .make_schedule_due(&c, &StreamId::from("nope"), t)
        .await
        .unwrap();
    assert_eq!(store.list_schedules().await.unwrap().len(), 2);
}

/// Lease renewal and release, attempts counted only by failures, and retention purges.
async fn leases_and_retention(store: Arc<dyn StateStore>, clock: ManualClock) {
    let c = ConnectionId::from("acme");
    let t0 = clock.now();
    let ev = |id: &str, at: i64| InboxEvent::new("memory", c.clone(), id, at, &b"{}"[..]);
    let mut ids = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let AppendOutcome::Inserted(id) =
            store.inbox_append(&ev(name, t0 + i as i64)).await.unwrap()
        else {
            panic!("insert")
        };
        ids.push(id);
    }
    let (a, b, c_ev) = (ids[0], ids[1], ids[2]);
    let lease = Duration::from_secs(30);

    // ---- renewal keeps a lease past its first expiry ----
    let claimed = store.inbox_claim("w1", lease, 2).await.unwrap();
    assert_eq!(claimed.iter().map(|x| x.id).collect::<Vec<_>>(), [a, b]);
    clock.advance(20_000);
    assert_eq!(
        store.inbox_renew(&[b, a], "w1", lease).await.unwrap(),
        [a, b],
        "both still held, ascending"
    );
    assert!(
        store
            .inbox_renew(&[a], "w2", lease)
            .await
            .unwrap()
            .is_empty(),
        "only the holder renews"
    );
    clock.advance(20_000); // 40 s after the claim: the renewed leases hold
    let w2 = store.inbox_claim("w2", lease, 10).await.unwrap();
    assert_eq!(w2.iter().map(|x| x.id).collect::<Vec<_>>(), [c_ev]);
    store.inbox_complete(a, "w1").await.unwrap();
    assert!(
        store
            .inbox_renew(&[a], "w1", lease)
            .await
            .unwrap()
            .is_empty(),
        "a finished event is not renewed"
    );

    // ---- an expired claim does not burn an attempt; the old holder cannot renew or complete ----
    clock.advance(30_001);
    let w3 = store.inbox_claim("w3", lease, 10).await.unwrap();
    let w3_ids: Vec<_> = w3.iter().map(|x| x.id).collect();
    assert_eq!(w3_ids, [b, c_ev], "both leases expired");
    assert!(
        w3.iter().all(|x| x.attempts == 1),
        "expiry is not an attempt"
    );
    assert!(
        store
            .inbox_renew(&[b], "w1", lease)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.inbox_complete(b, "w1").await.unwrap_err().kind(),
        ErrorKind::Conflict
    );

    // ---- release: pending again at once, no attempt counted, only by the holder ----
    assert!(store.inbox_release(&[b], "w9").await.unwrap().is_empty());
    assert_eq!(
        store.inbox_release(&[c_ev, b], "w3").await.unwrap(),
        [b, c_ev]
    );
    assert_eq!(counts(store.inbox_counts().await.unwrap()), (2, 0, 1, 0));
    let w4 = store.inbox_claim("w4", lease, 10).await.unwrap();
    assert_eq!(w4.len(), 2);
    assert!(
        w4.iter().all(|x| x.attempts == 1),
        "release is not an attempt"
    );
    assert!(w4.iter().all(|x| x.last_error.is_none()));

    // ---- a failure counts ----
    store
        .inbox_fail(b, "w4", "boom", FailAction::RetryAt(clock.now()))
        .await
        .unwrap();
    let w5 = store.inbox_claim("w5", lease, 10).await.unwrap();
    assert_eq!(w5.len(), 1);
    assert_eq!((w5[0].id, w5[0].attempts), (b, 2));

    // ---- retention of done events: oldest first, bounded, dead letters kept ----
    let t_a_done = t0 + 40_000; // a completed then
    clock.advance(1_000);
    store.inbox_complete(b, "w5").await.unwrap();
    store
        .inbox_fail(c_ev, "w4", "gave up", FailAction::DeadLetter)
        .await
        .unwrap();
    assert_eq!(counts(store.inbox_counts().await.unwrap()), (0, 0, 2, 1));
    assert_eq!(
        store.purge_inbox_done(t_a_done, 10).await.unwrap(),
        0,
        "strictly before"
    );
    assert_eq!(store.purge_inbox_done(t_a_done + 1, 10).await.unwrap(), 1);
    assert_eq!(counts(store.inbox_counts().await.unwrap()), (0, 0, 1, 1));
    for i in 0..5 {
        let AppendOutcome::Inserted(id) = store
            .inbox_append(&ev(&format!("more-{i}"), clock.now()))
            .await
            .unwrap()
        else {
            panic!("insert")
        };
        store.inbox_claim("w6", lease, 1).await.unwrap();
        store.inbox_complete(id, "w6").await.unwrap();
    }
    let later = clock.now() + 1;
    assert_eq!(store.purge_inbox_done(later, 4).await.unwrap(), 4, "limit");
    assert_eq!(store.purge_inbox_done(later, 4).await.unwrap(), 2);
    assert_eq!(store.purge_inbox_done(later, 4).await.unwrap(), 0);
    assert_eq!(counts(store.inbox_counts().await.unwrap()), (0, 0, 0, 1));
    assert_eq!(
        store.inbox_dead_letters(10).await.unwrap().len(),
        1,
        "dead letters stay"
    );
    // a purged event's id is free again: a redelivery would be stored anew
    assert!(matches!(
        store.inbox_append(&ev("a", clock.now())).await.unwrap(),
        AppendOutcome::Inserted(_)
    ));

    // ---- retention of runs: finished and not the latest of their stream ----
    let s1 = StreamId::from("s1");
    let s2 = StreamId::from("s2");
    let finish = |st: RunStatus| RunOutcome::new(st);
    let r1 = store.start_run(&c, &s1, RunKind::Full).await.unwrap();
    store
        .finish_run(r1, &finish(RunStatus::Succeeded))
        .await
        .unwrap();
    clock.advance(10);
    let r2 = store
        .start_run(&c, &s1, RunKind::Incremental)
        .await
        .unwrap();
    store
        .finish_run(r2, &finish(RunStatus::Failed))
        .await
        .unwrap();
    let r3 = store.start_run(&c, &s2, RunKind::Full).await.unwrap();
    store
        .finish_run(r3, &finish(RunStatus::Succeeded))
        .await
        .unwrap();
    let r4 = store
        .start_run(&c, &s1, RunKind::Incremental)
        .await
        .unwrap();
    let cutoff = clock.now();
    clock.advance(10);
    let r5 = store
        .start_run(&c, &s2, RunKind::Incremental)
        .await
        .unwrap();
    store
        .finish_run(r5, &finish(RunStatus::Succeeded))
        .await
        .unwrap();
    // r1 finished before the cutoff; r2, r3 at it (not before); r4 runs; r5 after
    assert_eq!(store.purge_runs(cutoff, 10).await.unwrap(), 1);
    let later = clock.now() + 1;
    assert_eq!(store.purge_runs(later, 1).await.unwrap(), 1, "limit");
    assert_eq!(store.purge_runs(later, 10).await.unwrap(), 1);
    assert_eq!(store.purge_runs(later, 10).await.unwrap(), 0);
    let left: Vec<_> = store
        .list_runs(Some(&c), 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, [r5, r4], "the running run and the latest of s2 stay");
    assert_eq!(store.last_run(&c, &s1).await.unwrap().unwrap().id, r4);
}

/// What an admin dashboard reads about runs: one run, daily statistics, log lines (appended
/// in order, filtered by level, purged with their run).
async fn run_history(store: Arc<dyn StateStore>, clock: ManualClock) {
    const DAY: i64 = 86_400_000;
    // Byte order: "Zeta" before "alpha" (a locale's collation would say otherwise).
    let alpha = ConnectionId::from("alpha");
    let zeta = ConnectionId::from("Zeta");
    let s = StreamId::from("contacts");
    let day0 = clock.now() / DAY * DAY;

    // ---- get_run ----
    assert!(store.get_run(RunId(424242)).await.unwrap().is_none());
    let r1 = store.start_run(&alpha, &s, RunKind::Full).await.unwrap();
    let got = store.get_run(r1).await.unwrap().unwrap();
    assert_eq!(
        (got.id, got.status, got.kind),
        (r1, RunStatus::Running, RunKind::Full)
    );
    assert_eq!(got.started_at, clock.now());
    store
        .finish_run(
            r1,
            &RunOutcome::new(RunStatus::Succeeded)
                .with_counts(10, 8, 1, 2)
                .with_rejected(1),
        )
        .await
        .unwrap();
    let got = store.get_run(r1).await.unwrap().unwrap();
    assert_eq!(got.status, RunStatus::Succeeded);
    assert_eq!(
        (got.records_read, got.records_applied, got.records_unchanged),
        (10, 8, 1)
    );
    assert_eq!((got.records_rejected, got.pages), (1, 2));
    assert_eq!(got.finished_at, Some(clock.now()));
    assert_eq!(store.list_runs(None, 1).await.unwrap()[0], got);

    // ---- run_stats: per connection and UTC day, since a time ----
    let r2 = store
        .start_run(&alpha, &s, RunKind::Incremental)
        .await
        .unwrap();
    store
        .finish_run(
            r2,
            &RunOutcome::new(RunStatus::Failed)
                .with_counts(3, 0, 0, 1)
                .with_error("boom"),
        )
        .await
        .unwrap();
    let r3 = store
        .start_run(&alpha, &s, RunKind::Incremental)
        .await
        .unwrap();
    store
        .finish_run(
            r3,
            &RunOutcome::new(RunStatus::Cancelled).with_counts(2, 2, 0, 1),
        )
        .await
        .unwrap();
    let r4 = store.start_run(&zeta, &s, RunKind::Full).await.unwrap();
    store
        .finish_run(
            r4,
            &RunOutcome::new(RunStatus::Succeeded)
                .with_counts(5, 5, 0, 1)
                .with_rejected(4),
        )
        .await
        .unwrap();
    clock.advance(DAY);
    let r5_at = clock.now();
    let r5 = store
        .start_run(&alpha, &s, RunKind::Incremental)
        .await
        .unwrap();
    let row = |c: &ConnectionId, day, runs, failed, read, applied, rejected| {
        (c.clone(), day, runs, failed, read, applied, rejected)
    };
    let rows = |v: Vec<DailyRunStats>| -> Vec<_> {
        v.into_iter()
            .map(|d| {
                (
                    d.connection,
                    d.day,
                    d.runs,
                    d.failed,
                    d.records_read,
                    d.records_applied,
                    d.records_rejected,
                )
            })
            .collect()
    };
    assert_eq!(
        rows(store.run_stats(None, 0).await.unwrap()),
        [
            row(&zeta, day0, 1, 0, 5, 5, 4),
            // a cancelled run counts as a run, not as a failure
            row(&alpha, day0, 3, 1, 15, 10, 1),
            // a running run counts, with its counts so far
            row(&alpha, day0 + DAY, 1, 0, 0, 0, 0),
        ]
    );
    assert_eq!(
        rows(store.run_stats(Some(&alpha), 0).await.unwrap()),
        [
            row(&alpha, day0, 3, 1, 15, 10, 1),
            row(&alpha, day0 + DAY, 1, 0, 0, 0, 0)
        ]
    );
    assert_eq!(
        rows(store.run_stats(Some(&alpha), r5_at).await.unwrap()),
        [row(&alpha, day0 + DAY, 1, 0, 0, 0, 0)],
        "since is inclusive"
    );
    assert!(store.run_stats(None, r5_at + 1).await.unwrap().is_empty());
    assert!(
        store
            .run_stats(Some(&ConnectionId::from("nobody")), 0)
            .await
            .unwrap()
            .is_empty()
    );

    // ---- log lines: appended in order, the sequence continues, filtered by level ----
    let t = clock.now();
    let line = |dt: i64, level: LogLevel, message: &str| {
        RunLogLine::new(t + dt, level, "apex_connect_core::engine", message)
    };
    assert!(store.run_logs(r1, None, 10).await.unwrap().is_empty());
    store.append_run_logs(r1, &[]).await.unwrap();
    let first = [
        line(0, LogLevel::Info, "reading page page=0"),
        line(1, LogLevel::Warn, "slow page retry_in_ms=250"),
        line(1, LogLevel::Debug, "détail: ünïcode ✓"),
    ];
    store.append_run_logs(r1, &first).await.unwrap();
    let second = [
        line(2, LogLevel::Error, "platform answered 500"),
        line(3, LogLevel::Trace, "wire bytes"),
        line(3, LogLevel::Info, "sync run stopped"),
    ];
    store.append_run_logs(r1, &second).await.unwrap();
    store
        .append_run_logs(r2, &[line(9, LogLevel::Error, "other run")])
        .await
        .unwrap();
    let all: Vec<RunLogLine> = first.iter().chain(&second).cloned().collect();
    assert_eq!(store.run_logs(r1, None, 100).await.unwrap(), all);
    assert_eq!(
        store
            .run_logs(r1, Some(LogLevel::Trace), 100)
            .await
            .unwrap(),
        all
    );
    assert_eq!(store.run_logs(r1, None, 2).await.unwrap(), all[..2]);
    assert_eq!(
        store.run_logs(r1, Some(LogLevel::Warn), 100).await.unwrap(),
        [all[1].clone(), all[3].clone()],
        "warn and error"
    );
    assert_eq!(
        store
            .run_logs(r1, Some(LogLevel::Error), 100)
            .await
            .unwrap(),
        [all[3].clone()]
    );
    assert_eq!(
        store.run_logs(r1, Some(LogLevel::Info), 3).await.unwrap(),
        [all[0].clone(), all[1].clone(), all[3].clone()],
        "the limit counts the matching lines"
    );
    assert_eq!(
        store.run_logs(r2, None, 100).await.unwrap(),
        [line(9, LogLevel::Error, "other run")]
    );
    assert!(store.run_logs(r3, None, 100).await.unwrap().is_empty());

    // ---- purge_runs deletes the purged runs' lines, not the others' ----
    store
        .finish_run(r5, &RunOutcome::new(RunStatus::Succeeded))
        .await
        .unwrap();
    store
        .append_run_logs(r5, &[line(10, LogLevel::Info, "kept")])
        .await
        .unwrap();
    clock.advance(1);
    // r1, r2, r3 are older runs of (alpha, contacts); r4 and r5 are the latest of theirs.
    assert_eq!(store.purge_runs(clock.now(), 100).await.unwrap(), 3);
    assert!(store.get_run(r1).await.unwrap().is_none());
    assert!(store.run_logs(r1, None, 100).await.unwrap().is_empty());
    assert!(store.run_logs(r2, None, 100).await.unwrap().is_empty());
    assert_eq!(
        store.run_logs(r5, None, 100).await.unwrap(),
        [line(10, LogLevel::Info, "kept")]
    );
    assert!(store.get_run(r4).await.unwrap().is_some());
}

#[test]
fn log_levels_are_ordered_by_severity_and_parse_their_names() {
    use std::str::FromStr;
    assert!(LogLevel::Error > LogLevel::Warn);
    assert!(LogLevel::Warn > LogLevel::Info);
    assert!(LogLevel::Info > LogLevel::Debug);
    assert!(LogLevel::Debug > LogLevel::Trace);
    for level in LogLevel::ALL {
        assert_eq!(LogLevel::from_str(level.as_str()).unwrap(), level);
        assert_eq!(level.to_string(), level.as_str());
    }
    assert_eq!("WARNING".parse::<LogLevel>().unwrap(), LogLevel::Warn);
    assert_eq!(
        "loud".parse::<LogLevel>().unwrap_err().kind(),
        ErrorKind::Storage
    );
    assert_eq!(LogLevel::from(tracing::Level::ERROR), LogLevel::Error);
    assert_eq!(LogLevel::from(tracing::Level::TRACE), LogLevel::Trace);
}

#[tokio::test]
async fn memory_store_run_history() {
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new().with_clock(clock.clock()));
    run_history(store, clock).await;
}

#[tokio::test]
async fn sqlite_store_run_history() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = SqliteStore::open(dir.path().join("state.db"), EncryptionKey::generate())
        .await
        .unwrap()
        .with_clock(clock.clock());
    run_history(Arc::new(store), clock).await;
}

/// `run_stats` over 100,000 runs (20 connections, one a minute for ~70 days) is one quick
/// statement; for one connection it reads one range of the (connection, started_at) index.
#[tokio::test]
async fn sqlite_run_stats_over_100_000_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path, EncryptionKey::generate())
        .await
        .unwrap();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let t0: i64 = 1_700_000_000_000;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 99999) \
         INSERT INTO sync_runs (connection, stream, kind, status, started_at, finished_at, \
             records_read, records_applied, records_rejected) \
         SELECT 'c' || (i % 20), 's', 'full', \
             CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'succeeded' END, \
             ?1 + i * 60000, ?1 + i * 60000 + 1000, 3, 2, 1 FROM n",
    )
    .bind(t0)
    .execute(&pool)
    .await
    .unwrap();
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN SELECT connection, started_at / 86400000 AS day, COUNT(*) \
         FROM sync_runs WHERE started_at >= 0 AND connection = 'c3' \
         GROUP BY connection, day ORDER BY connection, day",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        plan.iter().any(|p| p.3.contains("sync_runs_by_start")),
        "{plan:?}"
    );
    pool.close().await;

    let started = std::time::Instant::now();
    let all = store.run_stats(None, 0).await.unwrap();
    let all_took = started.elapsed();
    assert_eq!(all.iter().map(|d| d.runs).sum::<u64>(), 100_000);
    assert_eq!(all.iter().map(|d| d.failed).sum::<u64>(), 10_000);
    assert_eq!(all.iter().map(|d| d.records_read).sum::<u64>(), 300_000);
    let started = std::time::Instant::now();
    let since = t0 + 30 * 86_400_000;
    let one = store
        .run_stats(Some(&ConnectionId::from("c3")), since)
        .await
        .unwrap();
    let one_took = started.elapsed();
    assert!(
        one.iter()
            .all(|d| d.connection.as_str() == "c3" && d.day >= since - 86_400_000)
    );
    assert!(one.windows(2).all(|w| w[0].day < w[1].day));
    // Generous bounds (debug build, shared CI machine); measured: tens of milliseconds.
    assert!(all_took < Duration::from_secs(2), "{all_took:?}");
    assert!(one_took < Duration::from_millis(500), "{one_took:?}");
    eprintln!("run_stats over 100,000 runs: all {all_took:?}, one connection {one_took:?}");
}

#[tokio::test]
async fn memory_store_leases_and_retention() {
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new().with_clock(clock.clock()));
    leases_and_retention(store, clock).await;
}

#[tokio::test]
async fn sqlite_store_leases_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = SqliteStore::open(dir.path().join("state.db"), EncryptionKey::generate())
        .await
        .unwrap()
        .with_clock(clock.clock());
    leases_and_retention(Arc::new(store), clock).await;
}

#[tokio::test]
async fn memory_store_semantics() {
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new().with_clock(clock.clock()));
    semantics(store, clock).await;
    let clock = ManualClock::new();
    let store = Arc::new(MemoryStore::new().with_clock(clock.clock()));
    batches_and_schedules(store, clock).await;
}

#[tokio::test]
async fn sqlite_store_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = SqliteStore::open(dir.path().join("state.db"), EncryptionKey::generate())
        .await
        .unwrap()
        .with_clock(clock.clock());
    semantics(Arc::new(store), clock).await;
    let clock = ManualClock::new();
    let store = SqliteStore::open(dir.path().join("other.db"), EncryptionKey::generate())
        .await
        .unwrap()
        .with_clock(clock.clock());
    batches_and_schedules(Arc::new(store), clock).await;
}

#[tokio::test]
async fn sqlite_in_memory_url_semantics() {
    let clock = ManualClock::new();
    let store = SqliteStore::connect("sqlite::memory:", EncryptionKey::generate())
        .await
        .unwrap()
        .with_clock(clock.clock());
    semantics(Arc::new(store), clock).await;
    let clock = ManualClock::new();
    let store = SqliteStore::connect("sqlite::memory:", EncryptionKey::generate())
        .await
        .unwrap()
        .with_clock(clock.clock());
    batches_and_schedules(Arc::new(store), clock).await;
}

/// Two processes' stores on one file claim a due job at once: exactly one gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_claims_across_sqlite_stores_are_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let key = EncryptionKey::generate();
    let a = SqliteStore::open(&path, key.clone()).await.unwrap();
    let b = SqliteStore::open(&path, key).await.unwrap();
    let now = 1_700_000_000_000;
    for i in 0..50 {
        a.upsert_schedule(
            &ScheduleEntry::new("acme", format!("s{i:02}"), "every 1h", now),
            now,
        )
        .await
        .unwrap();
    }
    let lease = Duration::from_secs(60);
    let mut got = Vec::new();
    for _ in 0..10 {
        let (x, y) = tokio::join!(
            a.claim_schedules("a", lease, now, 3),
            b.claim_schedules("b", lease, now, 3)
        );
        got.extend(x.unwrap().into_iter().map(|r| r.stream.to_string()));
        got.extend(y.unwrap().into_iter().map(|r| r.stream.to_string()));
    }
    let unique: std::collections::BTreeSet<_> = got.iter().cloned().collect();
    assert_eq!(unique.len(), got.len(), "a job was claimed twice: {got:?}");
    assert_eq!(got.len(), 50);
}

/// `store::open` reads every configured location form and hands out the matching sinks; a
/// database file made by the server's old migration (`_apex_server_migrations`, with the
/// `schedules` and `sink_ledger` tables) opens and keeps its rows.
#[tokio::test]
async fn open_from_a_location() {
    use apex_connect_core::Batch;
    let dir = tempfile::tempdir().unwrap();
    let key = EncryptionKey::generate();

    let mem = apex_connect_core::store::open("memory:", key.clone())
        .await
        .unwrap();
    assert!(mem.is_ephemeral());
    assert_eq!(mem.location(), &StoreLocation::Memory);
    assert!(mem.sink(SinkKind::Records).wants_entities());
    assert!(!mem.sink(SinkKind::RawRecords).wants_entities());

    let e = apex_connect_core::store::open("postgres://u:pw@db/apex", key.clone())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(!format!("{e:?}").contains("pw"), "{e:?}");

    // A file made by the old server migration.
    let old = dir.path().join("old.db");
    {
        let pool = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&old)
                .create_if_missing(true),
        )
        .await
        .unwrap();
        for sql in [
            "CREATE TABLE _apex_server_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL,              installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL,              checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)",
            "INSERT INTO _apex_server_migrations (version, description, success, checksum, execution_time)              VALUES (1, 'server', 1, x'00', 0)",
            "CREATE TABLE schedules (connection TEXT NOT NULL, stream TEXT NOT NULL, spec TEXT NOT NULL,              full_sync INTEGER NOT NULL DEFAULT 0, next_due_at BIGINT NOT NULL, lease_owner TEXT,              lease_until BIGINT, failures BIGINT NOT NULL DEFAULT 0, runs BIGINT NOT NULL DEFAULT 0,              last_started_at BIGINT, last_finished_at BIGINT, last_status TEXT, last_error TEXT,              updated_at BIGINT NOT NULL, PRIMARY KEY (connection, stream))",
            "INSERT INTO schedules (connection, stream, spec, next_due_at, runs, last_status, updated_at)              VALUES ('acme', 'items', 'every 3600000ms jitter 0ms', 42, 7, 'succeeded', 1)",
            "CREATE TABLE sink_ledger (connection TEXT NOT NULL, stream TEXT NOT NULL, id TEXT NOT NULL,              op TEXT NOT NULL, version BIGINT, raw TEXT NOT NULL, applies BIGINT NOT NULL,              first_applied_at BIGINT NOT NULL, last_applied_at BIGINT NOT NULL,              PRIMARY KEY (connection, stream, id))",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    }
    for location in [
        old.display().to_string(),
        format!("sqlite://{}", old.display()),
    ] {
        let opened = apex_connect_core::store::open(&location, key.clone())
            .await
            .unwrap();
        assert!(!opened.is_ephemeral());
        let rows = opened.store().list_schedules().await.unwrap();
        assert_eq!(rows.len(), 1, "{location}");
        assert_eq!((rows[0].next_due_at, rows[0].runs), (42, 7));
        assert_eq!(rows[0].last_status, Some(RunStatus::Succeeded));
        let (c, s) = (ConnectionId::from("acme"), StreamId::from("items"));
        let records =
            [apex_connect_core::Record::upsert(s.clone(), "r1", json!({"n": 1})).with_version(1)];
        let ack = opened
            .sink(SinkKind::Ledger)
            .write(Batch::new(&c, &s, &records))
            .await
            .unwrap();
        assert!(ack.applied + ack.unchanged == 1);
        opened.close().await;
    }
    let ledger = apex_connect_core::sinks::LedgerSink::for_store(
        &SqliteStore::open(&old, key.clone()).await.unwrap(),
    );
    let entries = ledger
        .entries(&ConnectionId::from("acme"), &StreamId::from("items"))
        .await
        .unwrap();
    assert_eq!(
        (entries.len(), entries[0].applies),
        (1, 1),
        "replay not counted"
    );

    // A new file through a sqlite: URL is created.
    let fresh = format!("sqlite://{}", dir.path().join("fresh.db").display());
    let opened = apex_connect_core::store::open(&fresh, key).await.unwrap();
    assert!(opened.store().list_schedules().await.unwrap().is_empty());
    opened.close().await;
    assert!(dir.path().join("fresh.db").exists());
}

#[tokio::test]
async fn sqlite_reopen_keeps_data_and_wrong_key_is_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let key = EncryptionKey::generate();
    let c = ConnectionId::from("acme");
    let s = StreamId::from("contacts");
    {
        let store = SqliteStore::open(&path, key.clone()).await.unwrap();
        store
            .upsert_connection(&Connection::new(c.clone(), "hubspot", json!({"portal": 1})))
            .await
            .unwrap();
        store
            .save(&c, &tokens("secret-access"), None)
            .await
            .unwrap();
        store
            .save_cursor(&c, &s, &CursorToken::from_string("memory.v1.x"), None)
            .await
            .unwrap();
        store.close().await;
    }
    // the file holds no plaintext token
    let bytes = std::fs::read(&path).unwrap();
    let wal = std::fs::read(path.with_extension("db-wal")).unwrap_or_default();
    for b in [&bytes, &wal] {
        assert!(
            !b.windows(13).any(|w| w == b"secret-access"),
            "token stored in clear"
        );
    }

    // reopen (migrations run again: idempotent) with the same key: everything is there
    let store = SqliteStore::open(&path, key.clone()).await.unwrap();
    assert_eq!(
        store.get_connection(&c).await.unwrap().unwrap().config,
        json!({"portal": 1})
    );
    let t = TokenStore::load(&store, &c).await.unwrap().unwrap();
    assert_eq!(t.value.access_token.expose_secret(), "secret-access");
    assert_eq!(store.load_cursor(&c, &s).await.unwrap().unwrap().version, 1);
    store.close().await;

    // wrong key: a Config error with a clear message, never garbage or a panic
    let wrong = SqliteStore::open(&path, EncryptionKey::generate())
        .await
        .unwrap();
    let e = TokenStore::load(&wrong, &c).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert_eq!(
        e.message(),
        "stored tokens cannot be decrypted: wrong encryption key"
    );
    assert!(!format!("{e:?}").contains("secret"), "{e:?}");
    // the rest of the store works without the key
    assert!(wrong.load_cursor(&c, &s).await.unwrap().is_some());
}

#[tokio::test]
async fn two_sqlite_stores_on_one_file_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let key = EncryptionKey::generate();
    let a = SqliteStore::open(&path, key.clone()).await.unwrap();
    let b = SqliteStore::open(&path, key.clone()).await.unwrap();
    let c = ConnectionId::from("acme");
    let s = StreamId::from("deals");

    a.upsert_connection(&Connection::new(c.clone(), "salesforce", json!({})))
        .await
        .unwrap();
    assert!(b.get_connection(&c).await.unwrap().is_some());

    // token CAS across instances: b refreshed first, a's stale save loses
    let v1 = a.save(&c, &tokens("t1"), None).await.unwrap();
    let seen = TokenStore::load(&b, &c).await.unwrap().unwrap();
    assert_eq!(seen.version, v1);
    b.save(&c, &tokens("t2"), Some(v1)).await.unwrap();
    let e = a.save(&c, &tokens("t2-stale"), Some(v1)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert_eq!(
        TokenStore::load(&a, &c)
            .await
            .unwrap()
            .unwrap()
            .value
            .access_token
            .expose_secret(),
        "t2"
    );

    // cursor CAS across instances
    let k = CursorToken::from_string("memory.v1.k");
    a.save_cursor(&c, &s, &k, None).await.unwrap();
    assert_eq!(
        b.save_cursor(&c, &s, &k, None).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );

    // concurrent claims from both instances: every event exactly once
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for i in 0..200 {
        a.inbox_append(&InboxEvent::new(
            "salesforce",
            c.clone(),
            format!("e{i}"),
            now - 1000 + i,
            &b"{}"[..],
        ))
        .await
        .unwrap();
    }
    assert_eq!(
        b.inbox_append(&InboxEvent::new(
            "salesforce",
            c.clone(),
            "e7",
            now,
            &b"{}"[..]
        ))
        .await
        .unwrap(),
        AppendOutcome::Duplicate
    );
    let claim_all = |store: SqliteStore, worker: &'static str| async move {
        let mut ids = Vec::new();
        loop {
            let got = store
                .inbox_claim(worker, Duration::from_secs(60), 7)
                .await
                .unwrap();
            if got.is_empty() {
                break ids;
            }
            for ev in got {
                store.inbox_complete(ev.id, worker).await.unwrap();
                ids.push(ev.id);
            }
        }
    };
    let (x, y) = tokio::join!(
        tokio::spawn(claim_all(a.clone(), "wa")),
        tokio::spawn(claim_all(b.clone(), "wb"))
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let mut all: Vec<_> = x.iter().chain(y.iter()).copied().collect();
    all.sort();
    all.dedup();
    assert_eq!(x.len() + y.len(), 200, "no event claimed twice");
    assert_eq!(all.len(), 200);
    assert_eq!(a.inbox_counts().await.unwrap().done, 200);
}

// ---------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------

use apex_connect_core::PgSink;
use apex_connect_core::store::{InboxWakeups, PgStore};

/// Opens a store on a fresh database: `None` when the PostgreSQL tests are skipped.
async fn pg_store(key: &EncryptionKey) -> Option<(pg::TestDb, PgStore)> {
    let db = pg::fresh().await?;
    let store = PgStore::connect(&db.url, key.clone()).await.unwrap();
    Some((db, store))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn postgres_store_semantics() {
    let clock = ManualClock::new();
    let Some((db, store)) = pg_store(&EncryptionKey::generate()).await else {
        return;
    };
    let store = store.with_clock(clock.clock());
    semantics(Arc::new(store.clone()), clock).await;
    store.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn postgres_store_leases_and_retention() {
    let clock = ManualClock::new();
    let Some((db, store)) = pg_store(&EncryptionKey::generate()).await else {
        return;
    };
    let store = store.with_clock(clock.clock());
    leases_and_retention(Arc::new(store.clone()), clock).await;
    store.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn postgres_store_run_history() {
    let clock = ManualClock::new();
    let Some((db, store)) = pg_store(&EncryptionKey::generate()).await else {
        return;
    };
    let store = store.with_clock(clock.clock());
    run_history(Arc::new(store.clone()), clock).await;
    store.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn postgres_batches_and_schedules() {
    let clock = ManualClock::new();
    let Some((db, store)) = pg_store(&EncryptionKey::generate()).await else {
        return;
    };
    let store = store.with_clock(clock.clock());
    batches_and_schedules(Arc::new(store.clone()), clock).await;

    // PostgreSQL text holds no NUL: such a job cannot be registered or claimed for such an
    // owner (a typed error); lookups of such a key find nothing, as anywhere else.
    let now = 1_700_000_000_000;
    let e = store
        .upsert_schedule(&ScheduleEntry::new("a\0c", "s", "every 1h", now), now)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let e = store
        .claim_schedules("o\0", Duration::from_secs(1), now, 1)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let (c, s) = (ConnectionId::from("a\0c"), StreamId::from("s"));
    assert!(!store.renew_schedule(&c, &s, "o", now, now).await.unwrap());
    let done = ScheduleOutcome::new(RunStatus::Succeeded, now);
    assert!(
        !store
            .finish_schedule(&c, &s, "o", &done, now)
            .await
            .unwrap()
    );
    store.make_schedule_due(&c, &s, now).await.unwrap();

    // Counters saturate instead of failing at the top of BIGINT.
    let (c, s) = (ConnectionId::from("sat"), StreamId::from("s"));
    store
        .upsert_schedule(
            &ScheduleEntry::new(c.clone(), s.clone(), "every 1h", 0),
            now,
        )
        .await
        .unwrap();
    sqlx::query("UPDATE schedules SET runs = $1, failures = $1 WHERE connection = 'sat'")
        .bind(i64::MAX)
        .execute(store.pool())
        .await
        .unwrap();
    let claimed = store
        .claim_schedules("o", Duration::from_secs(60), i64::MAX, 10)
        .await
        .unwrap();
    assert!(claimed.iter().any(|r| r.connection == c));
    let failed = ScheduleOutcome::new(RunStatus::Failed, now).with_error("boom \0");
    assert!(
        store
            .finish_schedule(&c, &s, "o", &failed, now)
            .await
            .unwrap()
    );
    let row = store
        .list_schedules()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.connection == c)
        .unwrap();
    assert_eq!((row.runs, row.failures), (i64::MAX as u64, i64::MAX as u64));
    assert_eq!(row.last_error.as_deref(), Some("boom \u{FFFD}"));
    store.close().await;
    db.drop_db().await;
}

/// Two processes' stores on one PostgreSQL database claim due jobs at once: each job goes to
/// exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_claims_across_postgres_stores_are_exclusive() {
    let key = EncryptionKey::generate();
    let Some((db, a)) = pg_store(&key).await else {
        return;
    };
    let b = PgStore::connect(&db.url, key).await.unwrap();
    let now = 1_700_000_000_000;
    for i in 0..50 {
        a.upsert_schedule(
            &ScheduleEntry::new("acme", format!("s{i:02}"), "every 1h", now),
            now,
        )
        .await
        .unwrap();
    }
    let lease = Duration::from_secs(60);
    let mut got = Vec::new();
    for _ in 0..10 {
        let (x, y) = tokio::join!(
            a.claim_schedules("a", lease, now, 3),
            b.claim_schedules("b", lease, now, 3)
        );
        got.extend(x.unwrap().into_iter().map(|r| r.stream.to_string()));
        got.extend(y.unwrap().into_iter().map(|r| r.stream.to_string()));
    }
    let unique: std::collections::BTreeSet<_> = got.iter().cloned().collect();
    assert_eq!(unique.len(), got.len(), "a job was claimed twice: {got:?}");
    assert_eq!(got.len(), 50);
    a.close().await;
    b.close().await;
    db.drop_db().await;
}

/// `store::open` with a `postgres://` location: a `PgStore` with its three sinks.
#[tokio::test]
async fn open_a_postgres_location() {
    use apex_connect_core::{Batch, Record};
    let Some(db) = pg::fresh().await else { return };
    let opened = apex_connect_core::store::open(&db.url, EncryptionKey::generate())
        .await
        .unwrap();
    assert!(matches!(opened.location(), StoreLocation::Postgres(_)));
    assert!(!opened.is_ephemeral());
    assert!(opened.postgres().is_some());
    assert!(format!("{opened:?}").contains("PgStore"));
    assert!(opened.sink(SinkKind::Records).wants_entities());
    assert!(!opened.sink(SinkKind::RawRecords).wants_entities());
    assert!(!opened.sink(SinkKind::Ledger).wants_entities());
    let store = opened.store();
    store
        .upsert_schedule(&ScheduleEntry::new("acme", "items", "every 1h", 42), 1)
        .await
        .unwrap();
    assert_eq!(store.list_schedules().await.unwrap().len(), 1);
    let (c, s) = (ConnectionId::from("acme"), StreamId::from("items"));
    let records = [Record::upsert(s.clone(), "r1", json!({"n": 1})).with_version(1)];
    for _ in 0..2 {
        opened
            .sink(SinkKind::RawRecords)
            .write(Batch::new(&c, &s, &records))
            .await
            .unwrap();
    }
    let ack = opened
        .sink(SinkKind::Ledger)
        .write(Batch::new(&c, &s, &records))
        .await
        .unwrap();
    assert_eq!((ack.applied, ack.unchanged), (1, 0));
    let raw = PgSink::for_store(opened.postgres().unwrap())
        .records(&c, &s)
        .await
        .unwrap();
    assert_eq!(raw.len(), 1);
    opened.close().await;
    // A second open of the same database finds the migrations done and the rows kept.
    let again = apex_connect_core::store::open(&db.url, EncryptionKey::generate())
        .await
        .unwrap();
    assert_eq!(again.store().list_schedules().await.unwrap().len(), 1);
    again.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn three_concurrent_opens_of_a_fresh_postgres_database_migrate_once() {
    let Some(db) = pg::fresh().await else { return };
    let key = EncryptionKey::generate();
    let opens: Vec<_> = (0..3)
        .map(|_| {
            let (url, key) = (db.url.clone(), key.clone());
            tokio::spawn(async move { PgStore::connect(&url, key).await })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.unwrap().expect("every concurrent open succeeds"));
    }
    let files = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../apex-connect-core/migrations/postgres"
    ))
    .unwrap()
    .filter(|e| {
        e.as_ref()
            .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
    })
    .count() as i64;
    let (applied, ok): (i64, bool) =
        sqlx::query_as("SELECT COUNT(*), bool_and(success) FROM _sqlx_migrations")
            .fetch_one(stores[0].pool())
            .await
            .unwrap();
    assert_eq!((applied, ok), (files, true), "each migration applied once");
    // All three work on the one schema; a fourth open later finds it migrated.
    let c = ConnectionId::from("acme");
    stores[0]
        .upsert_connection(&Connection::new(c.clone(), "hubspot", json!({})))
        .await
        .unwrap();
    assert!(stores[2].get_connection(&c).await.unwrap().is_some());
    let again = PgStore::connect(&db.url, key).await.unwrap();
    assert_eq!(again.list_connections().await.unwrap().len(), 1);
    for s in stores.iter().chain([&again]) {
        s.close().await;
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn postgres_stores_share_state_and_claim_each_event_exactly_once() {
    let key = EncryptionKey::generate();
    let Some((db, a)) = pg_store(&key).await else {
        return;
    };
    // three processes' view: three stores, three pools, one database
    let b = PgStore::connect(&db.url, key.clone()).await.unwrap();
    let c3 = PgStore::connect(&db.url, key.clone()).await.unwrap();
    let c = ConnectionId::from("acme");
    let s = StreamId::from("deals");

    a.upsert_connection(&Connection::new(c.clone(), "salesforce", json!({})))
        .await
        .unwrap();
    assert!(b.get_connection(&c).await.unwrap().is_some());

    // token CAS across stores: b refreshed first, a's stale save loses
    let v1 = a.save(&c, &tokens("t1"), None).await.unwrap();
    assert_eq!(TokenStore::load(&b, &c).await.unwrap().unwrap().version, v1);
    b.save(&c, &tokens("t2"), Some(v1)).await.unwrap();
    let e = a.save(&c, &tokens("t2-stale"), Some(v1)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert_eq!(
        TokenStore::load(&c3, &c)
            .await
            .unwrap()
            .unwrap()
            .value
            .access_token
            .expose_secret(),
        "t2"
    );
    // many concurrent CAS saves from the same version: exactly one wins
    let current = TokenStore::load(&a, &c).await.unwrap().unwrap().version;
    let racers: Vec<_> = (0..12)
        .map(|i| {
            let store = [&a, &b, &c3][i % 3].clone();
            let c = c.clone();
            tokio::spawn(async move {
                store
                    .save(&c, &tokens(&format!("r{i}")), Some(current))
                    .await
            })
        })
        .collect();
    let mut wins = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(v) => {
                assert_eq!(v, current + 1);
                wins += 1;
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict),
        }
    }
    assert_eq!(wins, 1, "one compare-and-swap wins");

    // cursor CAS across stores
    let k = CursorToken::from_string("memory.v1.k");
    a.save_cursor(&c, &s, &k, None).await.unwrap();
    assert_eq!(
        b.save_cursor(&c, &s, &k, None).await.unwrap_err().kind(),
        ErrorKind::Conflict
    );

    // 900 events: 300 appended one by one, 600 in batches; redeliveries are duplicates
    let now = now_ms();
    let ev = |i: i64| {
        InboxEvent::new(
            "salesforce",
            c.clone(),
            format!("e{i}"),
            now - 10_000 + i,
            format!("{{\"n\":{i}}}").into_bytes(),
        )
    };
    for i in 0..300 {
        assert!(matches!(
            a.inbox_append(&ev(i)).await.unwrap(),
            AppendOutcome::Inserted(_)
        ));
    }
    for chunk in (300..900).collect::<Vec<_>>().chunks(100) {
        let events: Vec<_> = chunk.iter().map(|&i| ev(i)).collect();
        let out = b.append_many(&events).await.unwrap();
        assert!(out.iter().all(|o| matches!(o, AppendOutcome::Inserted(_))));
    }
    assert_eq!(
        c3.inbox_append(&ev(7)).await.unwrap(),
        AppendOutcome::Duplicate
    );
    let redelivered: Vec<_> = (890..910).map(ev).collect();
    let out = c3.append_many(&redelivered).await.unwrap();
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, AppendOutcome::Inserted(_)))
            .count(),
        10
    );

    // two claimers per store, all at once: every event exactly once
    let claim_all = |store: PgStore, worker: String| async move {
        let mut ids = Vec::new();
        loop {
            let got = store
                .inbox_claim(&worker, Duration::from_secs(60), 7)
                .await
                .unwrap();
            if got.is_empty() {
                break ids;
            }
            for ev in got {
                assert_eq!(ev.attempts, 1, "claimed once");
                store.inbox_complete(ev.id, &worker).await.unwrap();
                ids.push(ev.id);
            }
        }
    };
    let mut tasks = Vec::new();
    for (n, store) in [&a, &b, &c3].into_iter().enumerate() {
        for w in 0..2 {
            tasks.push(tokio::spawn(claim_all(
                store.clone(),
                format!("node{n}-w{w}"),
            )));
        }
    }
    let mut all = Vec::new();
    let mut busy = 0;
    for t in tasks {
        let ids = t.await.unwrap();
        busy += usize::from(!ids.is_empty());
        all.extend(ids);
    }
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(total, 910, "no event claimed twice");
    assert_eq!(all.len(), 910);
    assert!(busy >= 2, "claims were shared");
    assert_eq!(
        counts(a.inbox_counts().await.unwrap()),
        (0, 0, 910, 0),
        "all done"
    );
    for s in [a, b, c3] {
        s.close().await;
    }
    db.drop_db().await;
}

#[tokio::test]
async fn postgres_expired_leases_are_taken_over_by_another_store() {
    let key = EncryptionKey::generate();
    let clock = ManualClock::new();
    let Some((db, a)) = pg_store(&key).await else {
        return;
    };
    let a = a.with_clock(clock.clock());
    let b = PgStore::connect(&db.url, key)
        .await
        .unwrap()
        .with_clock(clock.clock());
    let c = ConnectionId::from("acme");
    let events: Vec<_> = (0..5)
        .map(|i| {
            InboxEvent::new(
                "hubspot",
                c.clone(),
                format!("e{i}"),
                clock.now() + i,
                &b"{}"[..],
            )
        })
        .collect();
    a.append_many(&events).await.unwrap();
    let lease = Duration::from_secs(10);
    let held = a.inbox_claim("node-a", lease, 10).await.unwrap();
    assert_eq!(held.len(), 5);
    assert!(b.inbox_claim("node-b", lease, 10).await.unwrap().is_empty());
    // node a dies; once its lease ends node b takes everything over
    clock.advance(10_001);
    let taken = b.inbox_claim("node-b", lease, 10).await.unwrap();
    assert_eq!(
        taken.iter().map(|e| e.id).collect::<Vec<_>>(),
        held.iter().map(|e| e.id).collect::<Vec<_>>(),
        "oldest first, all of them"
    );
    // An expired claim burns no attempt: only failures count.
    assert!(taken.iter().all(|e| e.attempts == 1));
    for e in &held {
        assert_eq!(
            a.inbox_complete(e.id, "node-a").await.unwrap_err().kind(),
            ErrorKind::Conflict,
            "the old holder lost its lease"
        );
    }
    for e in &taken {
        b.inbox_complete(e.id, "node-b").await.unwrap();
    }
    assert_eq!(counts(b.inbox_counts().await.unwrap()), (0, 0, 5, 0));
    a.close().await;
    b.close().await;
    db.drop_db().await;
}

/// Waits for a wake-up; the bound only keeps a broken build from hanging the suite.
async fn woken(w: &mut InboxWakeups) {
    tokio::time::timeout(Duration::from_secs(60), w.notified())
        .await
        .expect("a wake-up arrives")
        .expect("the listener runs");
}

#[tokio::test]
async fn postgres_inbox_wakeups_fire_on_appends_from_any_store() {
    let key = EncryptionKey::generate();
    let Some((db, a)) = pg_store(&key).await else {
        return;
    };
    let b = PgStore::connect(&db.url, key).await.unwrap();
    let mut w = a.subscribe_inbox().await.unwrap();
    let mut w2 = w.clone();
    assert!(!w.pending());
    let c = ConnectionId::from("acme");
    let now = now_ms();

    b.inbox_append(&InboxEvent::new(
        "frontapp",
        c.clone(),
        "e1",
        now,
        &b"{}"[..],
    ))
    .await
    .unwrap();
    woken(&mut w).await;
    woken(&mut w2).await; // each clone sees it
    b.append_many(&[
        InboxEvent::new("frontapp", c.clone(), "e2", now, &b"{}"[..]),
        InboxEvent::new("frontapp", c.clone(), "e3", now, &b"{}"[..]),
    ])
    .await
    .unwrap();
    woken(&mut w).await;
    // a dead letter put back wakes the workers too
    let got = a
        .inbox_claim("w", Duration::from_secs(60), 1)
        .await
        .unwrap();
    a.inbox_fail(got[0].id, "w", "boom", FailAction::DeadLetter)
        .await
        .unwrap();
    while w.pending() {
        woken(&mut w).await;
    }
    let before = w.count();
    b.inbox_requeue(got[0].id).await.unwrap();
    woken(&mut w).await;
    assert!(w.count() > before);
    drop((w, w2));
    a.close().await;
    b.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn postgres_append_many_outcomes_and_nul_characters() {
    let Some((db, store)) = pg_store(&EncryptionKey::generate()).await else {
        return;
    };
    let c = ConnectionId::from("acme");
    let ev = |id: &str, body: &'static [u8]| InboxEvent::new("frontapp", c.clone(), id, 1, body);
    let AppendOutcome::Inserted(first) = store.inbox_append(&ev("old", b"1")).await.unwrap() else {
        panic!("insert")
    };
    let out = store
        .append_many(&[
            ev("z", b"first z"),
            ev("old", b"again"),
            ev("a", b"a"),
            ev("z", b"second z"),
        ])
        .await
        .unwrap();
    assert!(matches!(out[0], AppendOutcome::Inserted(_)));
    assert_eq!(out[1], AppendOutcome::Duplicate);
    assert!(matches!(out[2], AppendOutcome::Inserted(_)));
    assert_eq!(
        out[3],
        AppendOutcome::Duplicate,
        "second of a key in one batch"
    );
    assert!(store.append_many(&[]).await.unwrap().is_empty());
    let claimed = store
        .inbox_claim("w", Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    assert_eq!(claimed[0].id, first);
    let z = claimed.iter().find(|e| e.event.event_id == "z").unwrap();
    assert_eq!(
        z.event.body.as_ref(),
        b"first z",
        "the first of a key is kept"
    );

    // PostgreSQL text cannot hold NUL: a typed error, and nothing of the batch is stored
    let e = store.inbox_append(&ev("bad\0id", b"x")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let e = store
        .append_many(&[ev("fine", b"x"), ev("bad\0id", b"x")])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!(store.inbox_counts().await.unwrap().pending, 0);
    // descriptive text with NUL is stored with a replacement character
    store
        .inbox_fail(
            claimed[1].id,
            "w",
            "upstream said \0",
            FailAction::DeadLetter,
        )
        .await
        .unwrap();
    let dead = store.inbox_dead_letters(10).await.unwrap();
    assert_eq!(
        dead[0].last_error.as_deref(),
        Some("upstream said \u{FFFD}")
    );
    store.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn postgres_tokens_are_encrypted_and_debug_shows_no_secret() {
    let key = EncryptionKey::generate();
    let Some((db, store)) = pg_store(&key).await else {
        return;
    };
    let c = ConnectionId::from("acme");
    store
        .save(&c, &tokens("secret-access"), None)
        .await
        .unwrap();
    let (sealed,): (Vec<u8>,) = sqlx::query_as("SELECT ciphertext FROM tokens")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(
        !sealed.windows(13).any(|w| w == b"secret-access"),
        "token stored in clear"
    );
    let dbg = format!("{store:?}");
    assert!(dbg.contains(store.target()), "{dbg}");
    if let Ok(pw) = std::env::var("PGPASSWORD") {
        assert!(!dbg.contains(&pw), "password in Debug");
    }
    assert!(!dbg.contains("secret-access"));

    // another key: a Config error, never garbage; the rest of the store works
    let wrong = PgStore::connect(&db.url, EncryptionKey::generate())
        .await
        .unwrap();
    let e = TokenStore::load(&wrong, &c).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(!format!("{e:?}").contains("secret"), "{e:?}");
    assert!(wrong.list_connections().await.unwrap().is_empty());
    store.close().await;
    wrong.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_token_managers_over_three_postgres_stores_refresh_once_per_expiry() {
    use apex_connect_core::Credentials as _;
    use apex_connect_core::oauth::{OAuthClient, OAuthConfig, TokenManager};
    use apex_connect_testkit::oauth_server::{OAuthServer, OAuthServerConfig};

    let key = EncryptionKey::from_bytes([9u8; 32]);
    let Some((db, a)) = pg_store(&key).await else {
        return;
    };
    let b = PgStore::connect(&db.url, key.clone()).await.unwrap();
    let c3 = PgStore::connect(&db.url, key.clone()).await.unwrap();
    let server = OAuthServer::new(
        OAuthServerConfig::new("client-1", "secret-value-1")
            .with_rotation(true)
            .with_latency(Duration::from_millis(40)),
    );
    let handle = server.spawn().await.unwrap();
    let offset = Arc::new(AtomicI64::new(0));
    let clock = {
        let offset = offset.clone();
        move || -> apex_connect_core::oauth::Clock {
            let offset = offset.clone();
            Arc::new(move || {
                SystemTime::now() + Duration::from_millis(offset.load(Ordering::SeqCst) as u64)
            })
        }
    };
    let conn = ConnectionId::from("shared");
    a.save(&conn, &server.issue_token_set(None), None)
        .await
        .unwrap();
    let managers: Vec<Arc<TokenManager>> = [a.clone(), b.clone(), c3.clone()]
        .into_iter()
        .map(|store| {
            let config = OAuthConfig::new("client-1", format!("{}/token", handle.base_url()))
                .with_client_secret("secret-value-1");
            let client = OAuthClient::new(config, reqwest::Client::new())
                .unwrap()
                .with_clock(clock());
            Arc::new(
                TokenManager::builder(conn.clone(), Arc::new(store), Arc::new(client))
                    .clock(clock())
                    .poll_interval(Duration::from_millis(5))
                    .build(),
            )
        })
        .collect();
    let rounds = 4u64;
    for _ in 0..rounds {
        offset.fetch_add(3_601_000, Ordering::SeqCst);
        let mut tasks = Vec::new();
        // Three nodes x 100 callers across each expiry.
        for i in 0..300 {
            let m = managers[i % 3].clone();
            tasks.push(tokio::spawn(async move { m.authorization().await }));
        }
        for t in tasks {
            let h = t.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
            assert!(server.validate_access_token(h.to_str().unwrap()));
        }
    }
    let stats = server.stats();
    assert_eq!(stats.reuse_detected, 0, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert_eq!(
        stats.refresh_token, rounds,
        "one refresh per expiry across three stores: {stats:?}"
    );
    let stored = TokenStore::load(&c3, &conn).await.unwrap().unwrap().value;
    assert_eq!(
        stored
            .refresh_token
            .as_ref()
            .map(|t| t.expose_secret().to_string()),
        server.latest_refresh_token()
    );
    drop(managers);
    for s in [a, b, c3] {
        s.close().await;
    }
    db.drop_db().await;
}
