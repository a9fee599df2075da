//! Mixpanel against its simulator: deduplication, the trailing-window re-pull, project time
//! zones across a DST change, quarantine, `terminated early`, gzip, regions, the descriptor,
//! Engage paging and 429 bodies; property tests of the line parser.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use apex_connect_analytics::mixpanel::models::{EventTime, read_event};
use apex_connect_analytics::mixpanel::sim::MixpanelSimConfig;
use apex_connect_analytics::mixpanel::{PLATFORM, Region, streams};
use apex_connect_core::platform::{BuildContext, ConnectionAuth, Platform, Secrets, Settings};
use apex_connect_core::store::prelude::*;
use apex_connect_core::{
    ConnectionId, Connector, ConnectorExt, ErrorKind, MemorySink, MemoryStore, Page, StateStore,
    StreamId, SyncEngine, SyncOptions,
};
use apex_connect_testkit::hostile;
use chrono::NaiveDate;
use futures::TryStreamExt;
use proptest::prelude::*;

use crate::fixtures::MixpanelFixture;

fn d(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn events() -> StreamId {
    StreamId::from_static(streams::EVENTS)
}

async fn all_pages(c: &dyn Connector, stream: &StreamId) -> Vec<Page> {
    c.read_all(stream, None).try_collect().await.unwrap()
}

/// Runs one engine sync of `stream` into `sink` with `store` (incremental from the stored
/// cursor).
async fn sync(
    c: &dyn Connector,
    store: &Arc<MemoryStore>,
    sink: &MemorySink,
    stream: &StreamId,
) -> apex_connect_core::Result<apex_connect_core::SyncReport> {
    SyncEngine::new(store.clone() as Arc<dyn StateStore>)
        .run(c, &conn(), stream, sink, SyncOptions::new())
        .await
}

fn conn() -> ConnectionId {
    ConnectionId::from_static("mp")
}

/// Equal maps, or a short account of the difference.
#[track_caller]
fn assert_same(got: &BTreeMap<String, Option<i64>>, want: &BTreeMap<String, Option<i64>>) {
    if got == want {
        return;
    }
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(3)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(3)
        .collect();
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .take(3)
        .collect();
    panic!(
        "{} records, {} expected; missing {missing:?}; extra {extra:?}; wrong versions {wrong:?}",
        got.len(),
        want.len()
    );
}

fn sink_ids(sink: &MemorySink, stream: &StreamId) -> BTreeMap<String, Option<i64>> {
    sink.all()
        .into_iter()
        .filter(|((_, s, _), _)| s == stream)
        .map(|((_, _, id), r)| (id, r.version))
        .collect()
}

#[tokio::test]
async fn duplicate_insert_ids_are_deduplicated_within_a_run() {
    let sim = MixpanelSimConfig {
        duplicate_per_mille: 250,
        late_per_mille: 0,
        days: 3,
        events_per_day: 400,
        ..Default::default()
    };
    let f = MixpanelFixture::with(sim, |c| c.page_size = 50).await;
    let lines = f.sim.exported_lines(f.start_day(), f.sim.today());
    let want = f.expected_now(streams::EVENTS);
    assert!(
        lines > want.len() as u64 + 200,
        "{lines} lines, {} events",
        want.len()
    );
    let c = f.mixpanel();
    let pages = all_pages(&c, &events()).await;
    let ids: Vec<&String> = pages
        .iter()
        .flat_map(|p| &p.records)
        .map(|r| &r.id)
        .collect();
    let distinct: BTreeSet<&String> = ids.iter().copied().collect();
    assert_eq!(ids.len(), distinct.len(), "a duplicate reached the records");
    assert_eq!(ids.len(), want.len());
    // One export request per window (3 days, windows of 4): no re-request between pages.
    assert_eq!(f.sim.export_requests(), 1);
    assert!(pages.len() > 10);
}

#[tokio::test]
async fn the_trailing_window_repull_upserts_late_events_without_duplicates() {
    let sim = MixpanelSimConfig {
        late_per_mille: 150,
        duplicate_per_mille: 50,
        days: 12,
        events_per_day: 150,
        ..Default::default()
    };
    let f = MixpanelFixture::with(sim, |_| {}).await;
    let c = f.mixpanel();
    let store = Arc::new(MemoryStore::new());
    let sink = MemorySink::new();
    let first = sync(&c, &store, &sink, &events()).await.unwrap();
    assert_same(
        &sink_ids(&sink, &events()),
        &f.expected_now(streams::EVENTS),
    );

    // Two days later: late events of earlier days have arrived, and two new days exist.
    let later = f.sim.today().succ_opt().unwrap().succ_opt().unwrap();
    f.set_today(later);
    let want = f.expected_now(streams::EVENTS);
    assert!(want.len() > sink.len() + 150);
    let requests_before = f.sim.export_requests();
    let second = sync(&f.mixpanel(), &store, &sink, &events()).await.unwrap();
    assert_same(&sink_ids(&sink, &events()), &want);
    assert!(
        sink.duplicate_applies().is_empty(),
        "re-pulled events were applied twice: {:?}",
        &sink.duplicate_applies()[..1]
    );
    // The second run re-read the 5-day attribution window before today-2 ... today: events it
    // already held came back unchanged.
    assert!(second.unchanged > 0, "{second:?}");
    assert!(
        second.records_read < first.records_read,
        "{first:?} {second:?}"
    );
    assert_eq!(f.sim.export_requests() - requests_before, 2); // 7 days in windows of 4
}

#[tokio::test]
async fn a_legacy_project_timezone_converts_times_across_a_dst_change() {
    let tz: chrono_tz::Tz = "America/New_York".parse().unwrap();
    let sim = MixpanelSimConfig {
        project_timezone: Some(tz),
        today: d("2022-03-15"),
        days: 5,
        events_per_day: 24,
        late_per_mille: 0,
        duplicate_per_mille: 0,
        ..Default::default()
    };
    let f = MixpanelFixture::with(sim, |_| {}).await;
    // Local wall-clock times, as a pre-2023 project stores them, on the day clocks go forward.
    let local = |s: &str| {
        chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
            .unwrap()
            .and_utc()
            .timestamp()
    };
    let utc_ms = |s: &str| {
        chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
            .unwrap()
            .and_utc()
            .timestamp_millis()
    };
    let line = |id: &str, t: i64| {
        format!(
            r#"{{"event":"DST probe","properties":{{"time":{t},"distinct_id":"dst","$insert_id":"{id}"}}}}"#
        )
    };
    f.sim.add_event_lines(
        d("2022-03-13"),
        [
            line("before", local("2022-03-13 01:30:00")),
            line("after", local("2022-03-13 03:30:00")),
            line("late-evening", local("2022-03-13 23:30:00")),
        ],
    );
    let c = f.mixpanel();
    let pages = all_pages(&c, &events()).await;
    let probe: BTreeMap<String, i64> = pages
        .iter()
        .flat_map(|p| &p.records)
        .filter(|r| r.raw.as_str().contains("DST probe"))
        .map(|r| {
            let v = r.raw.to_value().unwrap();
            (
                v["properties"]["$insert_id"].as_str().unwrap().to_string(),
                r.updated_at.unwrap(),
            )
        })
        .collect();
    assert_eq!(probe["before"], utc_ms("2022-03-13 06:30:00")); // EST, UTC-5
    assert_eq!(probe["after"], utc_ms("2022-03-13 07:30:00")); // EDT, UTC-4
    // 23:30 local on the 13th is already the 14th in UTC; it is still exported with the 13th.
    assert_eq!(probe["late-evening"], utc_ms("2022-03-14 03:30:00"));
    // The entity says UTC.
    let r = pages
        .iter()
        .flat_map(|p| &p.records)
        .find(|r| r.raw.as_str().contains("\"after\""))
        .unwrap();
    let e = c.map_entity(r).unwrap().unwrap();
    assert_eq!(
        e.attributes["time"],
        serde_json::json!("2022-03-13T07:30:00.000Z")
    );
    // Every generated event converts as the simulator meant it (a day of 24 hourly events
    // straddles the change).
    let mut got: BTreeMap<String, Option<i64>> = BTreeMap::new();
    for p in &pages {
        for r in &p.records {
            got.insert(r.id.clone(), r.version);
        }
    }
    assert_same(&got, &f.expected_now(streams::EVENTS));

    // Without the setting the same times read as UTC: off by the offset.
    let naive = read_event(
        line("after", local("2022-03-13 03:30:00")).as_bytes(),
        &EventTime { local_tz: None },
    )
    .unwrap();
    assert_eq!(naive.time_utc_ms, utc_ms("2022-03-13 03:30:00"));
}

#[tokio::test]
async fn a_malformed_line_is_quarantined_and_the_page_goes_on() {
    let sim = MixpanelSimConfig {
        days: 2,
        events_per_day: 100,
        ..Default::default()
    };
    let f = MixpanelFixture::with(sim, |c| c.max_line_bytes = 4096).await;
    let day = f.sim.today();
    let huge = format!(
        r#"{{"event":"Huge","properties":{{"time":1710900000,"blob":"{}"}}}}"#,
        "x".repeat(10_000)
    );
    f.sim.add_event_lines(
        day,
        [
            "{not json".to_string(),
            r#"{"event":"No properties"}"#.to_string(),
            r#"{"event":"Text time","properties":{"time":"yesterday"}}"#.to_string(),
            huge.clone(),
            "   ".to_string(),
        ],
    );
    let store = Arc::new(MemoryStore::new());
    let sink = MemorySink::new();
    let report = sync(&f.mixpanel(), &store, &sink, &events()).await.unwrap();
    assert_eq!(report.rejected, 4, "{report:?}");
    // Every event but the over-long one (a valid event, over the configured line limit).
    let mut want = f.expected_now(streams::EVENTS);
    let huge_id = read_event(huge.as_bytes(), &EventTime { local_tz: None })
        .unwrap()
        .id;
    assert!(want.remove(&huge_id).is_some());
    assert_same(&sink_ids(&sink, &events()), &want);
    let rejects = store
        .list_rejects(Some(&conn()), Some(&events()), 100)
        .await
        .unwrap();
    assert_eq!(rejects.len(), 4);
    let raws: Vec<String> = rejects
        .iter()
        .map(|r| String::from_utf8_lossy(&r.reject.raw).to_string())
        .collect();
    assert!(raws.iter().any(|r| r == "{not json"), "{raws:?}");
    assert!(
        raws.iter()
            .any(|r| r.starts_with(r#"{"event":"Huge""#) && r.len() == 1024)
    );
    assert!(
        rejects
            .iter()
            .any(|r| r.reject.error.contains("max_line_bytes"))
    );
}

#[tokio::test]
async fn terminated_early_fails_the_run_and_the_next_run_reads_the_window_again() {
    let sim = MixpanelSimConfig {
        days: 6,
        events_per_day: 120,
        ..Default::default()
    };
    let f = MixpanelFixture::with(sim, |c| c.page_size = 40).await;
    let store = Arc::new(MemoryStore::new());
    let sink = MemorySink::new();
    // The first window's export breaks after 100 lines: two pages are committed, the third
    // read meets `terminated early`.
    f.sim.terminate_next_export_after(100);
    let e = sync(&f.mixpanel(), &store, &sink, &events())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Upstream);
    assert!(e.is_temporary());
    assert!(e.to_string().contains("terminated early"), "{e}");
    assert_eq!(sink.len(), 80);
    assert!(
        store
            .load_cursor(&conn(), &events())
            .await
            .unwrap()
            .is_some()
    );
    // The next run asks for the same window again (from its start: the platform's order is
    // not promised) and the sink upserts what it already held.
    let again = sync(&f.mixpanel(), &store, &sink, &events()).await.unwrap();
    assert!(again.unchanged >= 80, "{again:?}");
    assert_same(
        &sink_ids(&sink, &events()),
        &f.expected_now(streams::EVENTS),
    );
    assert!(sink.duplicate_applies().is_empty());
    assert_eq!(f.sim.export_requests(), 3); // the broken one, then two windows
}

#[tokio::test]
async fn gzip_and_plain_exports_give_the_same_records() {
    let sim = MixpanelSimConfig {
        days: 3,
        events_per_day: 300,
        ..Default::default()
    };
    let gz = MixpanelFixture::with(sim.clone(), |c| c.gzip = true).await;
    let plain = MixpanelFixture::with(sim, |c| c.gzip = false).await;
    let a = all_pages(&gz.mixpanel(), &events()).await;
    let b = all_pages(&plain.mixpanel(), &events()).await;
    let ids = |pages: &[Page]| -> Vec<(String, Vec<u8>)> {
        pages
            .iter()
            .flat_map(|p| &p.records)
            .map(|r| (r.id.clone(), r.raw.as_bytes().to_vec()))
            .collect()
    };
    assert_eq!(ids(&a), ids(&b));
    assert!(!ids(&a).is_empty());
    assert_eq!(gz.sim.gzip_exports(), gz.sim.export_requests());
    assert_eq!(plain.sim.gzip_exports(), 0);
}

#[test]
fn the_region_chooses_every_host_and_only_those_are_allowed() {
    let settings = |region: &str| {
        Settings::from_value(serde_json::json!({"project_id": 1, "region": region})).unwrap()
    };
    let secrets = Secrets::from_values([("api_secret", "s")]);
    let id = ConnectionId::from_static("mp");
    for (region, export, query) in [
        ("us", "data.mixpanel.com", "mixpanel.com"),
        ("eu", "data-eu.mixpanel.com", "eu.mixpanel.com"),
        ("in", "data-in.mixpanel.com", "in.mixpanel.com"),
    ] {
        let s = settings(region);
        let config: apex_connect_analytics::mixpanel::MixpanelConfig = s.parse().unwrap();
        let c = apex_connect_analytics::mixpanel::MixpanelConnector::builder(config)
            .auth(apex_connect_analytics::mixpanel::MixpanelAuth::ProjectSecret("s".into()))
            .build()
            .unwrap();
        assert_eq!(c.api().export_client().base_url().host_str(), Some(export));
        assert_eq!(c.api().query_client().base_url().host_str(), Some(query));
        // Another region's host is refused.
        for other in [
            "data.mixpanel.com",
            "data-eu.mixpanel.com",
            "data-in.mixpanel.com",
        ] {
            let link = format!("https://{other}/api/2.0/export");
            assert_eq!(
                c.api().export_client().follow_url(&link).is_ok(),
                other == export,
                "{region}: {other}"
            );
        }
        // And through the descriptor.
        let ctx = BuildContext::new(&id, &s, &secrets, ConnectionAuth::Secrets);
        PLATFORM.build(&ctx).unwrap();
    }
    assert_eq!(Region::default(), Region::Us);
}

#[test]
fn the_descriptor_reads_settings_and_secrets() {
    let id = ConnectionId::from_static("mp");
    let sa = Settings::from_value(serde_json::json!({
        "project_id": 7, "service_account_username": "sync.mp", "workspace_id": 3,
    }))
    .unwrap();
    PLATFORM.check_settings(&sa).unwrap();
    let none = Secrets::new();
    let e = PLATFORM
        .build(&BuildContext::new(&id, &sa, &none, ConnectionAuth::Secrets))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert_eq!(e.context_value("secret"), Some("service_account_secret"));
    let secrets = Secrets::from_values([("service_account_secret", "very-secret-value")]);
    let c = PLATFORM
        .build(&BuildContext::new(
            &id,
            &sa,
            &secrets,
            ConnectionAuth::Secrets,
        ))
        .unwrap();
    assert_eq!(c.info().name, "mixpanel");
    assert!(!format!("{c:?}").contains("very-secret-value"));
    // Only some streams.
    let only = ["events".to_string()];
    let c = PLATFORM
        .build(&BuildContext::new(&id, &sa, &secrets, ConnectionAuth::Secrets).with_streams(&only))
        .unwrap();
    assert_eq!(c.info().capabilities.streams.len(), 1);
    // Typos and bad values fail at load time.
    for bad in [
        serde_json::json!({"project_id": 7, "regoin": "eu"}),
        serde_json::json!({"project_id": 7, "region": "mars"}),
        serde_json::json!({"service_account_username": "x"}),
    ] {
        let s = Settings::from_value(bad.clone()).unwrap();
        assert_eq!(
            PLATFORM.check_settings(&s).unwrap_err().kind(),
            ErrorKind::Config,
            "{bad}"
        );
    }
    assert!(PLATFORM.oauth(&sa).unwrap().is_none());
    assert_eq!(PLATFORM.secrets().len(), 2);
}

#[tokio::test]
async fn engage_walks_pages_with_the_session_and_restarts_an_expired_one() {
    let sim = MixpanelSimConfig {
        users: 110,
        ..Default::default()
    };
    let f = MixpanelFixture::with(sim, |c| c.engage_page_size = 25).await;
    let c = f.mixpanel();
    let profiles = StreamId::from_static(streams::PROFILES);
    let pages = all_pages(&c, &profiles).await;
    assert_eq!(pages.len(), 5); // 25, 25, 25, 25, 10
    let n: usize = pages.iter().map(|p| p.records.len()).sum();
    assert_eq!(n, 110);
    assert_eq!(f.sim.stats().route("POST /api/query/engage"), 5);
    // A cursor whose session the platform no longer knows: the walk starts again.
    let stale = apex_connect_analytics::mixpanel::cursor::ProfilesCursor::new(
        Some(apex_connect_analytics::mixpanel::cursor::EngagePosition::new("expired", 3)),
        0,
    );
    let page = c
        .read(
            &profiles,
            Some(&apex_connect_core::SyncCursor::to_token(&stale)),
        )
        .await
        .unwrap();
    assert_eq!(page.records.len(), 25);
    assert_eq!(page.records[0].id, "user_0");
    // Members of each cohort, with the cohort as parent and a Person entity linked to it.
    let members = StreamId::from_static(streams::COHORT_MEMBERS);
    let pages = all_pages(&c, &members).await;
    let got: BTreeMap<String, Option<i64>> = pages
        .iter()
        .flat_map(|p| &p.records)
        .map(|r| (r.id.clone(), r.version))
        .collect();
    assert_same(&got, &f.expected_now(streams::COHORT_MEMBERS));
    let r = &pages[0].records[0];
    let e = c.map_entity(r).unwrap().unwrap();
    assert_eq!(e.kind, apex_connect_core::EntityKind::Person);
    assert!(
        e.identities
            .iter()
            .any(|i| matches!(i, apex_connect_core::Identity::Email(_)))
    );
    assert_eq!(e.relations[0].kind, "member_of");
    assert_eq!(Some(e.relations[0].target.id.as_str()), r.parent.as_deref());
}

#[tokio::test]
async fn a_query_rate_limit_answer_is_a_clear_pause_not_a_retry_storm() {
    let sim = MixpanelSimConfig {
        queries_per_hour: Some(2),
        ..Default::default()
    };
    let f = MixpanelFixture::with(sim, |c| c.max_wait_secs = 5).await;
    let c = f.mixpanel();
    let cohorts = StreamId::from_static(streams::COHORTS);
    c.read(&cohorts, None).await.unwrap();
    c.read(&cohorts, None).await.unwrap();
    let e = c.read(&cohorts, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    // The simulator's limiter says when its hour ends; longer than the 5 s allowed to wait, so
    // the call fails at once with the hint instead of retrying.
    assert!(e.retry_after().unwrap() > Duration::from_secs(5), "{e:?}");
    assert!(!e.is_temporary());
    assert!(
        e.to_string().contains("queries running in the last hour"),
        "{e}"
    );
    assert_eq!(f.sim.rate_limited_seen(), 1, "retried into the limit");
    // The export host has its own budget.
    c.read(&events(), None).await.unwrap();
}

#[tokio::test]
async fn funnel_results_have_one_record_per_funnel_and_day() {
    let f = MixpanelFixture::start().await;
    let c = f.mixpanel();
    let stream = StreamId::from_static(streams::FUNNEL_RESULTS);
    let pages = all_pages(&c, &stream).await;
    let got: BTreeMap<String, Option<i64>> = pages
        .iter()
        .flat_map(|p| &p.records)
        .map(|r| (r.id.clone(), None))
        .collect();
    assert_same(&got, &f.expected_now(streams::FUNNEL_RESULTS));
    let r = &pages[0].records[0];
    let e = c.map_entity(r).unwrap().unwrap();
    assert_eq!(e.attributes["steps"].as_array().unwrap().len(), 3);
    assert!(e.attributes["starting_amount"].as_i64().unwrap() > 0);
    // An incremental walk re-reads only the attribution window of each funnel.
    let last = pages.last().unwrap().next.clone();
    let again: Vec<Page> = c.read_all(&stream, last).try_collect().await.unwrap();
    let n: usize = again.iter().map(|p| p.records.len()).sum();
    assert_eq!(n, 5 * 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any line the export could send reads as an event or an error: never a panic.
    #[test]
    fn arbitrary_lines_never_panic(line in proptest::collection::vec(any::<u8>(), 0..400)) {
        let utc = EventTime { local_tz: None };
        let ny = EventTime { local_tz: Some("America/New_York".parse().unwrap()) };
        let _ = read_event(&line, &utc);
        let _ = read_event(&line, &ny);
    }

    /// Hostile variants of the documented event shape (envelope kept) always read, and their
    /// entity maps.
    #[test]
    fn hostile_events_read_and_map(v in hostile::strategy(
        serde_json::json!({
            "time": 1_602_611_311, "$insert_id": "a", "distinct_id": "u",
            "$browser": "Chrome", "plan": "pro", "items": [{"sku": "a"}],
        }),
        &["time", "$insert_id", "distinct_id"],
    )) {
        let line = serde_json::json!({"event": "Signed up", "properties": v}).to_string();
        let utc = EventTime { local_tz: None };
        let (r, _) = apex_connect_analytics::mixpanel::models::event_record(line.into(), &utc).unwrap();
        let e = apex_connect_analytics::mixpanel::models::event_entity(&r).unwrap();
        prop_assert_eq!(e.name.as_deref(), Some("Signed up"));
    }

    /// Envelopes with the wrong types are errors, not panics.
    #[test]
    fn hostile_time_values_are_errors_or_events(t in prop_oneof![
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".*".prop_map(serde_json::Value::from),
    ]) {
        let line = serde_json::json!({"event": "x", "properties": {"time": t}}).to_string();
        let ny = EventTime { local_tz: Some("America/New_York".parse().unwrap()) };
        let _ = read_event(line.as_bytes(), &ny);
    }
}
