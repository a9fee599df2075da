//! GA4 against its simulator: the service-account JWT grant, row paging, the freshness
//! re-pull, property quotas (a pause that resumes, a clear failure, no retry storm), reports
//! defined in settings with metadata discovery, funnels, cohorts, the descriptor; property
//! tests of the row parser.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apex_connect_analytics::ga4::models::{ReportPage, report_record};
use apex_connect_analytics::ga4::sim::{Ga4SimConfig, tokio_wall_clock};
use apex_connect_analytics::ga4::{Ga4Connector, PLATFORM, streams};
use apex_connect_core::platform::{
    AuthInputs, BuildContext, ConnectionAuth, Grant, Platform, Secrets, Settings, resolve_auth,
};
use apex_connect_core::{
    ConnectionId, Connector, ConnectorExt, ErrorKind, MemorySink, MemoryStore, MemoryTokenStore,
    Page, StateStore, StaticToken, StreamId, SyncEngine, SyncOptions,
};
use apex_connect_testkit::hostile;
use futures::TryStreamExt;
use proptest::prelude::*;
use serde_json::json;

use crate::fixtures::Ga4Fixture;

fn ids(pages: &[Page]) -> BTreeMap<String, Option<i64>> {
    pages
        .iter()
        .flat_map(|p| &p.records)
        .map(|r| (r.id.clone(), r.version))
        .collect()
}

async fn all_pages(c: &dyn Connector, stream: &str) -> Vec<Page> {
    let s = StreamId::new(stream.to_string());
    c.read_all(&s, None).try_collect().await.unwrap()
}

#[tokio::test]
async fn a_service_account_key_file_becomes_a_verified_jwt_grant() {
    let f = Ga4Fixture::start().await;
    let c = f.built();
    assert!(c.info().capabilities.oauth_refresh);
    c.check().await.unwrap();
    let pages = all_pages(c.as_ref(), streams::PAGES).await;
    assert_eq!(ids(&pages), f.expected_now(streams::PAGES));
    // One grant served the whole walk; the simulator checked aud, scope and lifetime.
    assert_eq!(f.sim.token_grants(), 1);
    assert_eq!(f.sim.rejected_assertions(), 0);

    // An assertion for another audience is refused by the token endpoint: the connection
    // needs re-authorization, not a retry loop.
    let mut wrong = f.settings.clone();
    wrong.insert("jwt_audience", json!("https://elsewhere.example/token"));
    let id = ConnectionId::from_static("ga4");
    let secrets = f.secrets();
    let auth = resolve_auth(
        &PLATFORM,
        &wrong,
        AuthInputs::new(&id, &secrets, Arc::new(MemoryTokenStore::new())),
    )
    .unwrap();
    let ctx = BuildContext::new(&id, &wrong, &secrets, auth).with_base_url(Some(f.sim.base_url()));
    let c = PLATFORM.build(&ctx).unwrap();
    let e = c
        .read(&StreamId::from_static(streams::PAGES), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert_eq!(f.sim.rejected_assertions(), 1);
}

#[tokio::test]
async fn rows_page_by_row_count_within_each_day_window() {
    let f = Ga4Fixture::start().await; // 10 days, 12 rows a day, windows of 4 days, pages of 7
    let c = f.typed(|_| {});
    let before = f.sim.report_requests();
    let pages = all_pages(&c, streams::TRAFFIC_SOURCES).await;
    // Windows of 48, 48 and 24 rows: 7 + 7 + 4 requests.
    assert_eq!(f.sim.report_requests() - before, 18);
    assert_eq!(pages.len(), 18);
    assert_eq!(ids(&pages), f.expected_now(streams::TRAFFIC_SOURCES));
    let r = &pages[0].records[0];
    let v = r.raw.to_value().unwrap();
    assert_eq!(v["report"], json!("traffic_sources"));
    assert_eq!(v["dimensions"]["sessionSource"], json!("google"));
    assert!(
        v["metrics"]["sessions"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    let e = c.map_entity(r).unwrap().unwrap();
    assert!(e.attributes["metrics"]["sessions"].is_i64());
    // The quota of every answer was read.
    assert_eq!(c.api().quota().answers(), 18);
}

#[tokio::test]
async fn recent_days_change_and_the_freshness_window_upserts_them() {
    let f = Ga4Fixture::start().await;
    let c = f.typed(|_| {});
    let store = Arc::new(MemoryStore::new());
    let sink = MemorySink::new();
    let engine = SyncEngine::new(store.clone() as Arc<dyn StateStore>);
    let conn = ConnectionId::from_static("ga4");
    let stream = StreamId::from_static(streams::EVENTS);
    engine
        .run(&c, &conn, &stream, &sink, SyncOptions::new())
        .await
        .unwrap();
    let want = f.expected_now(streams::EVENTS);
    assert_eq!(sink.len(), want.len());
    let before = sink.all();

    // GA4 processed more of the last three days.
    f.sim.reprocess();
    let second = engine
        .run(&c, &conn, &stream, &sink, SyncOptions::new())
        .await
        .unwrap();
    // Exactly the three freshness days were read again, and each of their rows replaced the
    // one held: same ids, new numbers, nothing added.
    let per_day = u64::from(f.sim.config().rows_per_day);
    assert_eq!(second.records_read, 3 * per_day);
    assert_eq!(second.applied, 3 * per_day, "{second:?}");
    assert_eq!(sink.len(), want.len());
    let after = sink.all();
    let today = f.sim.today().to_string();
    let changed = after
        .iter()
        .filter(|(k, r)| before[*k].raw != r.raw)
        .map(|((_, _, id), _)| id.clone())
        .collect::<Vec<_>>();
    assert_eq!(changed.len() as u64, 3 * per_day);
    assert!(changed.iter().any(|id| id.starts_with(&today)));
}

/// A property with a small hourly quota: the connector reads `propertyQuota`, stops before
/// the quota is used up, waits for the next hour (tokio's paused clock) and resumes; GA4
/// never has to refuse a request.
#[tokio::test(start_paused = true)]
async fn an_exhausted_hourly_quota_pauses_the_sync_until_it_refills() {
    let base = UNIX_EPOCH + Duration::from_secs(1_710_930_600); // 2024-03-20T10:30:00Z
    let clock = tokio_wall_clock(base);
    let sim = Ga4SimConfig {
        tokens_per_hour: 30, // 10 of them for this project: 5 requests an hour
        tokens_per_request: 2,
        clock: clock.clone(),
        ..Default::default()
    };
    let f = Ga4Fixture::with(sim, |s| s["max_wait_secs"] = json!(7200)).await;
    let c = Ga4Connector::builder(f.config())
        .credentials(Arc::new(StaticToken::bearer(f.sim.issue_access_token())))
        .base_url(f.sim.base_url())
        .clock(clock.clone())
        .http_timeout(Duration::from_secs(24 * 3600))
        .build()
        .unwrap();
    let t0 = tokio::time::Instant::now();
    let pages = all_pages(&c, streams::PAGES).await; // 18 requests
    let waited = t0.elapsed();
    assert_eq!(ids(&pages), f.expected_now(streams::PAGES));
    assert_eq!(
        f.sim.rate_limited_seen(),
        0,
        "the connector should stop before GA4 refuses"
    );
    assert_eq!(f.sim.report_requests(), 18);
    // Three waits (to 11:01, 12:01, 13:01): 5 requests in each of the 4 hour windows.
    assert!(waited >= Duration::from_secs(2 * 3600), "{waited:?}");
    assert!(waited < Duration::from_secs(4 * 3600 + 600), "{waited:?}");
}

/// Another client used the hour up: GA4 refuses with 429 `RESOURCE_EXHAUSTED`. Within the
/// maximum wait, the connector pauses until the hour refills and goes on; one 429, no storm.
#[tokio::test(start_paused = true)]
async fn a_429_for_the_hour_pauses_once_and_resumes() {
    let base = UNIX_EPOCH + Duration::from_secs(1_710_930_600); // 10:30 UTC
    let clock = tokio_wall_clock(base);
    let sim = Ga4SimConfig {
        clock: clock.clone(),
        ..Default::default()
    };
    let f = Ga4Fixture::with(sim, |s| s["max_wait_secs"] = json!(7200)).await;
    let c = Ga4Connector::builder(f.config())
        .credentials(Arc::new(StaticToken::bearer(f.sim.issue_access_token())))
        .base_url(f.sim.base_url())
        .clock(clock.clone())
        .http_timeout(Duration::from_secs(24 * 3600))
        .build()
        .unwrap();
    f.sim.exhaust_hourly_tokens();
    let t0 = tokio::time::Instant::now();
    let pages = all_pages(&c, streams::SESSIONS).await;
    assert_eq!(ids(&pages), f.expected_now(streams::SESSIONS));
    assert_eq!(f.sim.rate_limited_seen(), 1);
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_secs(30 * 60), "{waited:?}");
    assert!(waited < Duration::from_secs(60 * 60), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_quota_longer_than_the_maximum_wait_fails_at_once_and_resumes_later() {
    let base = UNIX_EPOCH + Duration::from_secs(1_710_930_600); // 10:30 UTC
    let clock = tokio_wall_clock(base);
    let sim = Ga4SimConfig {
        tokens_per_hour: 30,
        clock: clock.clone(),
        ..Default::default()
    };
    let f = Ga4Fixture::with(sim, |s| s["max_wait_secs"] = json!(60)).await;
    let c = Ga4Connector::builder(f.config())
        .credentials(Arc::new(StaticToken::bearer(f.sim.issue_access_token())))
        .base_url(f.sim.base_url())
        .clock(clock.clone())
        .http_timeout(Duration::from_secs(24 * 3600))
        .build()
        .unwrap();
    let stream = StreamId::from_static(streams::PAGES);
    let mut cursor = None;
    let mut pages = Vec::new();
    let e = loop {
        match c.read(&stream, cursor.as_ref()).await {
            Ok(p) => {
                cursor = p.next.clone();
                pages.push(p);
            }
            Err(e) => break e,
        }
    };
    assert_eq!(pages.len(), 5);
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert_eq!(e.context_value("quota"), Some("hour"));
    let ra = e.retry_after().unwrap();
    assert_eq!(ra, Duration::from_secs(31 * 60)); // to 11:00, plus a minute
    assert_eq!(
        f.sim.report_requests(),
        5,
        "no request was sent to be refused"
    );
    // Asking again before the refill: still no request.
    assert!(c.read(&stream, cursor.as_ref()).await.is_err());
    assert_eq!(f.sim.report_requests(), 5);
    // After the hint, the walk goes on from the same cursor.
    tokio::time::advance(ra).await;
    let p = c.read(&stream, cursor.as_ref()).await.unwrap();
    assert!(!p.records.is_empty());
}

#[tokio::test]
async fn a_quota_answer_from_ga4_is_a_clear_pause_not_a_retry_storm() {
    let f = Ga4Fixture::with(Ga4SimConfig::default(), |s| s["max_wait_secs"] = json!(30)).await;
    let c = f.typed(|_| {});
    f.sim.exhaust_hourly_tokens(); // another client used the hour up
    let stream = StreamId::from_static(streams::SESSIONS);
    let e = c.read(&stream, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert!(
        !e.is_temporary(),
        "a wait longer than allowed is not retried: {e:?}"
    );
    assert!(e.retry_after().unwrap() > Duration::from_secs(30));
    assert!(e.to_string().contains("Exhausted property tokens"), "{e}");
    assert_eq!(f.sim.report_requests(), 1);
    assert_eq!(f.sim.rate_limited_seen(), 1);
    // The next read does not ask again until the quota refills.
    let e = c.read(&stream, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert_eq!(f.sim.report_requests(), 1);
}

#[tokio::test]
async fn a_used_up_day_fails_fast_until_midnight_in_los_angeles() {
    let sim = Ga4SimConfig {
        tokens_per_day: 6,
        tokens_per_request: 2,
        ..Default::default()
    };
    let f = Ga4Fixture::with(sim, |s| s["max_wait_secs"] = json!(1)).await;
    let c = f.typed(|_| {});
    let stream = StreamId::from_static(streams::EVENTS);
    let mut cursor = None;
    for _ in 0..3 {
        let p = c.read(&stream, cursor.as_ref()).await.unwrap();
        cursor = p.next;
    }
    let e = c.read(&stream, cursor.as_ref()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert_eq!(e.context_value("quota"), Some("day"));
    let ra = e.retry_after().unwrap();
    let expected = apex_connect_analytics::ga4::error::until_pacific_midnight(SystemTime::now());
    let diff = ra.abs_diff(expected);
    assert!(diff < Duration::from_secs(60), "{ra:?} {expected:?}");
    assert_eq!(f.sim.report_requests(), 3);
}

#[tokio::test]
async fn reports_from_settings_and_their_schema_from_metadata() {
    let f = Ga4Fixture::start().await;
    let c = f.typed(|_| {});
    let schema = c
        .discover(&StreamId::from_static("by_country"))
        .await
        .unwrap();
    assert_eq!(
        schema.custom_fields,
        vec!["customEvent:order_value".to_string()]
    );
    let metrics = &schema.schema["properties"]["metrics"]["properties"];
    assert!(
        metrics["customEvent:order_value"]["description"]
            .as_str()
            .unwrap()
            .contains("TYPE_CURRENCY")
    );
    assert_eq!(
        schema.key,
        vec!["date", "dimensions.country", "dimensions.deviceCategory"]
    );
    let pages = all_pages(&c, "by_country").await;
    assert_eq!(ids(&pages), f.expected_now("by_country"));
    // One metadata call per connector.
    c.discover(&StreamId::from_static(streams::PAGES))
        .await
        .unwrap();
    assert_eq!(
        f.sim.stats().route("GET /v1beta/properties/{id}/metadata"),
        1
    );

    // A report GA4 does not understand fails with GA4's message, not silently.
    let bad = f.typed(|cfg| {
        cfg.reports = vec![
            serde_json::from_value(json!({
                "name": "bogus", "dimensions": ["notADimension"], "metrics": ["activeUsers"]
            }))
            .unwrap(),
        ];
    });
    let e = bad
        .read(&StreamId::from_static("bogus"), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("notADimension"), "{e}");
}

#[tokio::test]
async fn funnels_and_cohorts() {
    let f = Ga4Fixture::start().await;
    let c = f.typed(|_| {});
    let pages = all_pages(&c, streams::FUNNELS).await;
    assert_eq!(ids(&pages), f.expected_now(streams::FUNNELS));
    assert_eq!(f.sim.stats().route("POST /v1alpha/properties/{action}"), 10);
    let r = &pages[0].records[0];
    let v = r.raw.to_value().unwrap();
    assert_eq!(v["funnel"], json!("signup"));
    assert_eq!(v["step"], json!("1. Visit"));
    let e = c.map_entity(r).unwrap().unwrap();
    assert_eq!(
        e.kind,
        apex_connect_core::EntityKind::Other("funnel_step_metrics".into())
    );
    assert!(e.attributes["metrics"]["activeUsers"].as_i64().unwrap() > 0);
    // An incremental walk re-reads the freshness window only.
    let again: Vec<Page> = c
        .read_all(
            &StreamId::from_static(streams::FUNNELS),
            pages.last().unwrap().next.clone(),
        )
        .try_collect()
        .await
        .unwrap();
    assert_eq!(again.iter().map(|p| p.records.len()).sum::<usize>(), 3 * 3);

    let pages = all_pages(&c, streams::COHORTS).await;
    let got = ids(&pages);
    assert_eq!(got, f.expected_now(streams::COHORTS));
    // Three weekly cohorts: the oldest seen in weeks 0..=3, the newest in weeks 0..=1.
    assert_eq!(got.len(), 4 + 3 + 2);
    assert!(got.keys().all(|k| k.starts_with("week_")));
}

#[test]
fn the_descriptor_knows_googles_endpoints_and_needs_credentials() {
    let s = Settings::from_value(json!({"property_id": "42"})).unwrap();
    PLATFORM.check_settings(&s).unwrap();
    let o = PLATFORM.oauth(&s).unwrap().unwrap();
    assert_eq!(o.token_url, "https://oauth2.googleapis.com/token");
    assert_eq!(
        o.jwt_audience.as_deref(),
        Some("https://oauth2.googleapis.com/token")
    );
    assert_eq!(
        o.scopes,
        vec!["https://www.googleapis.com/auth/analytics.readonly"]
    );
    assert!(o.supports(Grant::JwtBearer) && o.supports(Grant::AuthorizationCode));
    assert!(
        o.authorize_params
            .contains(&("access_type".into(), "offline".into()))
    );
    let id = ConnectionId::from_static("ga4");
    let none = Secrets::new();
    let e = PLATFORM
        .build(&BuildContext::new(&id, &s, &none, ConnectionAuth::Secrets))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.context_value("hint").is_some());
    let tok = Secrets::from_values([("access_token", "ya29.static-token")]);
    let c = PLATFORM
        .build(&BuildContext::new(&id, &s, &tok, ConnectionAuth::Secrets))
        .unwrap();
    assert!(!c.info().capabilities.oauth_refresh);
    assert!(!format!("{c:?}").contains("ya29"));
    assert_eq!(c.info().capabilities.streams.len(), streams::BUILT_IN.len());
    for bad in [
        json!({"property_id": "42", "propery": 1}),
        json!({"property_id": "abc"}),
        json!({"property_id": "42", "reports": [{"name": "pages", "dimensions": [], "metrics": ["a"]}]}),
    ] {
        let s = Settings::from_value(bad.clone()).unwrap();
        assert_eq!(
            PLATFORM.check_settings(&s).unwrap_err().kind(),
            ErrorKind::Config,
            "{bad}"
        );
    }
    // A broken key file is a Config error naming the secret, and never shows it.
    let broken =
        Secrets::from_values([("service_account_json", "{\"private_key\": \"KEYMATERIAL\"")]);
    let e = resolve_auth(
        &PLATFORM,
        &s,
        AuthInputs::new(&id, &broken, Arc::new(MemoryTokenStore::new())),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(!format!("{e:?}").contains("KEYMATERIAL"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Hostile variants of a documented row (dimension values kept) always read; their
    /// metrics are null or strings, never a failure.
    #[test]
    fn hostile_rows_read(v in hostile::strategy(
        json!({"dimensionValues": [{"value": "20240102"}, {"value": "/pricing"}],
               "metricValues": [{"value": "41"}, {"value": "0.25"}]}),
        &["dimensionValues"],
    )) {
        let body = json!({
            "dimensionHeaders": [{"name": "date"}, {"name": "pagePath"}],
            "metricHeaders": [{"name": "screenPageViews"}, {"name": "bounceRate"}],
            "rows": [v], "rowCount": 1,
        }).to_string();
        let page = ReportPage::parse(body.as_bytes()).unwrap();
        let s = StreamId::from_static(streams::PAGES);
        let r = report_record(&s, "1", &page.dimensions(), &page.metrics(), page.rows[0], None).unwrap();
        prop_assert_eq!(r.id.as_str(), "2024-01-02/%2Fpricing");
        apex_connect_analytics::ga4::models::entity(&r).unwrap();
    }

    /// Any bytes as an answer or a row: an error or a value, never a panic.
    #[test]
    fn arbitrary_answers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(page) = ReportPage::parse(&bytes) {
            let s = StreamId::from_static(streams::PAGES);
            for row in &page.rows {
                let _ = report_record(&s, "1", &page.dimensions(), &page.metrics(), row, None);
            }
        }
    }
}
