//! The same `StateStore` semantics against `MemoryStore` and `SqliteStore`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apex_connect_core::store::prelude::*;
use apex_connect_core::store::{
    AppendOutcome, Clock, Connection, ConnectionStatus, EncryptionKey, EventId, FailAction,
    InboxCounts, InboxEvent, MemoryStore, RunKind, RunOutcome, RunStatus, ScheduleEntry,
    ScheduleOutcome, SinkKind, SqliteStore, StateStore, StoreLocation,
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
