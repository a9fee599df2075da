//! The conformance suite run against `MemoryConnector` (which needs no HTTP: the 429 and 401
//! behaviours skip), plus checks that the suite catches broken connectors.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use apex_connect_core::webhook::WebhookRequest;
use apex_connect_core::{
    Connector, ConnectorInfo, CursorToken, Page, Result, StreamId, WebhookVerifier, WriteAction,
    WriteOp, WriteReport, async_trait,
};
use apex_connect_testkit::MemoryConnector;
use apex_connect_testkit::conformance::{self, ConformanceFixture, Outcome, SignedWebhook};
use http::{HeaderMap, Method, Uri};

const SECRET: &str = "memory-webhook-secret-7f3a9c";

/// A memory "platform" with two stored streams (with updates and deletes) and one generated.
struct MemoryFixture {
    connector: MemoryConnector,
}

async fn fixture() -> MemoryFixture {
    let contacts = StreamId::from_static("contacts");
    let notes = StreamId::from_static("notes");
    let c = MemoryConnector::new(["contacts", "notes"], 4, SECRET.as_bytes())
        .with_generated("events", 37, 100);
    for i in 0..23 {
        c.put(
            &contacts,
            &format!("crd_{i:02}"),
            serde_json::json!({"name": format!("c{i}")}),
        );
    }
    for i in (0..23).step_by(5) {
        c.put(
            &contacts,
            &format!("crd_{i:02}"),
            serde_json::json!({"name": "updated"}),
        );
    }
    c.remove(&contacts, "crd_03");
    c.remove(&contacts, "crd_04");
    for i in 0..3 {
        c.put(&notes, &format!("nte_{i}"), serde_json::json!({"text": i}));
    }
    MemoryFixture { connector: c }
}

#[async_trait]
impl ConformanceFixture for MemoryFixture {
    async fn connector(&self) -> Arc<dyn Connector> {
        Arc::new(self.connector.clone())
    }

    async fn expected(&self, stream: &StreamId) -> BTreeMap<String, Option<i64>> {
        self.connector
            .snapshot(stream)
            .into_iter()
            .map(|(id, (version, _))| (id, Some(version)))
            .collect()
    }

    async fn signed_webhook(&self, now: SystemTime) -> Option<SignedWebhook> {
        let body = MemoryConnector::webhook_body(
            &StreamId::from_static("contacts"),
            "crd_01",
            apex_connect_core::Op::Upsert,
        );
        let (method, uri) = (Method::POST, Uri::from_static("/webhooks/memory/acme"));
        let verifier = self.connector.webhooks()?.verifier();
        let headers = verifier
            .sign(
                &WebhookRequest::new(&method, &uri, &HeaderMap::new(), &body),
                now,
            )
            .ok()?;
        Some((method, uri, headers, body))
    }

    async fn secrets(&self) -> Option<Vec<String>> {
        Some(vec![SECRET.to_string()])
    }

    async fn write_ops(&self, stream: &StreamId) -> Option<Vec<WriteOp>> {
        (stream.as_str() == "contacts").then(|| {
            vec![
                WriteOp::new(
                    WriteAction::Update,
                    Some("crd_01".into()),
                    serde_json::json!({"name": "written"}),
                ),
                WriteOp::new(
                    WriteAction::Create,
                    None,
                    serde_json::json!({"name": "new"}),
                )
                .with_key("create-1"),
                WriteOp::new(
                    WriteAction::Update,
                    Some("crd_nope".into()),
                    serde_json::json!({}),
                ),
            ]
        })
    }

    async fn inject_hostile(&self, stream: &StreamId, seed: u64) -> Option<Vec<String>> {
        if stream.as_str() != "contacts" {
            return None;
        }
        let example = serde_json::json!({"name": "Ann", "tags": ["a"], "address": {"city": "X"}});
        let mut ids = Vec::new();
        for (i, v) in apex_connect_testkit::hostile::variants(&example, &[], seed, 30)
            .into_iter()
            .enumerate()
        {
            let id = format!("hostile_{seed}_{i}");
            self.connector.put(stream, &id, v);
            ids.push(id);
        }
        Some(ids)
    }
}

apex_connect_testkit::conformance!(fixture);

#[tokio::test]
async fn behaviours_without_hooks_skip_and_the_rest_pass() {
    let f = fixture().await;
    assert_eq!(conformance::full_sync(&f).await, Ok(Outcome::Passed));
    assert_eq!(conformance::webhook_verifies(&f).await, Ok(Outcome::Passed));
    assert_eq!(conformance::write_back_smoke(&f).await, Ok(Outcome::Passed));
    assert!(matches!(
        conformance::rate_limit_honoured(&f).await,
        Ok(Outcome::Skipped(_))
    ));
    // MemoryConnector does not claim oauth_refresh.
    match conformance::unauthorized_refreshes_once(&f).await {
        Ok(Outcome::Skipped(reason)) => assert!(reason.contains("oauth_refresh"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

/// How a [`Broken`] connector misbehaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Flaw {
    /// Drops the first record of every page after the first when resumed with a cursor.
    LosesOnResume,
    /// Claims more pages forever with the same cursor.
    Loops,
    /// Reads foreign cursors as "from the start".
    AcceptsForeignCursor,
    /// Answers unknown streams with an empty page.
    UnknownStreamEmpty,
    /// Prints its webhook secret in Debug.
    LeaksSecret,
    /// Returns no write results.
    DropsWriteResults,
    /// Returns versions one too low.
    StaleVersions,
}

struct Broken {
    inner: MemoryConnector,
    flaw: Flaw,
}

impl fmt::Debug for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.flaw == Flaw::LeaksSecret {
            write!(f, "Broken {{ secret: {SECRET:?} }}")
        } else {
            write!(f, "Broken {{ inner: {:?} }}", self.inner)
        }
    }
}

#[async_trait]
impl Connector for Broken {
    fn info(&self) -> &ConnectorInfo {
        self.inner.info()
    }
    async fn check(&self) -> Result<()> {
        Ok(())
    }
    async fn read(&self, stream: &StreamId, cursor: Option<&CursorToken>) -> Result<Page> {
        match self.flaw {
            Flaw::Loops => {
                let page = self.inner.read(stream, None).await?;
                Ok(Page::new(page.records, page.next, true))
            }
            Flaw::AcceptsForeignCursor => {
                let ok = cursor.is_none_or(|c| c.kind() == Some("memory"));
                self.inner
                    .read(stream, if ok { cursor } else { None })
                    .await
            }
            Flaw::UnknownStreamEmpty if self.inner.info().stream(stream).is_none() => {
                Ok(Page::new(vec![], None, false))
            }
            Flaw::LosesOnResume if cursor.is_some() => {
                let mut page = self.inner.read(stream, cursor).await?;
                if !page.records.is_empty() {
                    page.records.remove(0);
                }
                Ok(page)
            }
            Flaw::StaleVersions => {
                let mut page = self.inner.read(stream, cursor).await?;
                for r in &mut page.records {
                    r.version = r.version.map(|v| v - 1);
                }
                Ok(page)
            }
            _ => self.inner.read(stream, cursor).await,
        }
    }
    async fn write(&self, stream: &StreamId, ops: Vec<WriteOp>) -> Result<WriteReport> {
        let report = self.inner.write(stream, ops).await?;
        if self.flaw == Flaw::DropsWriteResults {
            return Ok(WriteReport::default());
        }
        Ok(report)
    }
    fn webhooks(&self) -> Option<&dyn apex_connect_core::Webhooks> {
        self.inner.webhooks()
    }
}

struct BrokenFixture {
    base: MemoryFixture,
    flaw: Flaw,
}

#[async_trait]
impl ConformanceFixture for BrokenFixture {
    async fn connector(&self) -> Arc<dyn Connector> {
        Arc::new(Broken {
            inner: self.base.connector.clone(),
            flaw: self.flaw,
        })
    }
    async fn expected(&self, stream: &StreamId) -> BTreeMap<String, Option<i64>> {
        self.base.expected(stream).await
    }
    async fn secrets(&self) -> Option<Vec<String>> {
        self.base.secrets().await
    }
    async fn write_ops(&self, stream: &StreamId) -> Option<Vec<WriteOp>> {
        self.base.write_ops(stream).await
    }
}

async fn broken(flaw: Flaw) -> BrokenFixture {
    BrokenFixture {
        base: fixture().await,
        flaw,
    }
}

fn assert_fails(result: conformance::BehaviourResult, behaviour: &str, needle: &str) {
    match result {
        Err(f) => {
            assert_eq!(f.behaviour, behaviour);
            assert!(f.message.contains(needle), "{f}");
        }
        Ok(o) => panic!("{behaviour} should have failed, got {o:?}"),
    }
}

#[tokio::test]
async fn the_suite_catches_broken_connectors() {
    let f = broken(Flaw::LosesOnResume).await;
    assert_fails(
        conformance::resume_from_every_page(&f).await,
        "resume_from_every_page",
        "missing",
    );

    let f = broken(Flaw::Loops).await;
    assert_fails(
        conformance::has_more_advances_cursor(&f).await,
        "has_more_advances_cursor",
        "repeats an earlier cursor",
    );
    assert_fails(conformance::full_sync(&f).await, "full_sync", "cursor");

    let f = broken(Flaw::AcceptsForeignCursor).await;
    assert_fails(
        conformance::foreign_cursor_is_invalid_input(&f).await,
        "foreign_cursor_is_invalid_input",
        "accepted a cursor of another kind",
    );

    let f = broken(Flaw::UnknownStreamEmpty).await;
    assert_fails(
        conformance::unknown_stream_is_not_found(&f).await,
        "unknown_stream_is_not_found",
        "succeeded",
    );

    let f = broken(Flaw::LeaksSecret).await;
    assert_fails(
        conformance::debug_shows_no_secret(&f).await,
        "debug_shows_no_secret",
        "contains secret #0",
    );

    let f = broken(Flaw::DropsWriteResults).await;
    assert_fails(
        conformance::write_back_smoke(&f).await,
        "write_back_smoke",
        "reported keys []",
    );

    let f = broken(Flaw::StaleVersions).await;
    assert_fails(
        conformance::full_sync(&f).await,
        "full_sync",
        "wrong version",
    );
}

/// A verifier that accepts anything: the webhook behaviours must notice.
#[derive(Debug)]
struct AcceptAll;

impl WebhookVerifier for AcceptAll {
    fn verify(
        &self,
        _: &WebhookRequest<'_>,
        _: SystemTime,
    ) -> std::result::Result<apex_connect_core::webhook::Verified, apex_connect_core::WebhookError>
    {
        Ok(Default::default())
    }
    fn sign(
        &self,
        _: &WebhookRequest<'_>,
        _: SystemTime,
    ) -> std::result::Result<HeaderMap, apex_connect_core::WebhookError> {
        let mut h = HeaderMap::new();
        h.insert("x-sig", http::HeaderValue::from_static("anything"));
        Ok(h)
    }
}

#[derive(Debug)]
struct Lax(MemoryConnector);

#[async_trait]
impl Connector for Lax {
    fn info(&self) -> &ConnectorInfo {
        self.0.info()
    }
    async fn check(&self) -> Result<()> {
        Ok(())
    }
    async fn read(&self, stream: &StreamId, cursor: Option<&CursorToken>) -> Result<Page> {
        self.0.read(stream, cursor).await
    }
    fn webhooks(&self) -> Option<&dyn apex_connect_core::Webhooks> {
        Some(self)
    }
}

#[async_trait]
impl apex_connect_core::Webhooks for Lax {
    fn verifier(&self) -> &dyn WebhookVerifier {
        &AcceptAll
    }
    async fn parse(
        &self,
        webhook: &apex_connect_core::VerifiedWebhook,
    ) -> Result<Vec<apex_connect_core::Change>> {
        match self.0.webhooks() {
            Some(h) => h.parse(webhook).await,
            None => Ok(Vec::new()),
        }
    }
}

struct LaxFixture(MemoryFixture);

#[async_trait]
impl ConformanceFixture for LaxFixture {
    async fn connector(&self) -> Arc<dyn Connector> {
        Arc::new(Lax(self.0.connector.clone()))
    }
    async fn expected(&self, stream: &StreamId) -> BTreeMap<String, Option<i64>> {
        self.0.expected(stream).await
    }
    async fn signed_webhook(&self, now: SystemTime) -> Option<SignedWebhook> {
        let (m, u, _, body) = self.0.signed_webhook(now).await?;
        let h = AcceptAll
            .sign(&WebhookRequest::new(&m, &u, &HeaderMap::new(), &body), now)
            .ok()?;
        Some((m, u, h, body))
    }
}

#[tokio::test]
async fn the_suite_catches_a_lax_webhook_verifier() {
    let f = LaxFixture(fixture().await);
    assert_fails(
        conformance::webhook_tampered_body_rejected(&f).await,
        "webhook_tampered_body_rejected",
        "accepted",
    );
    assert_fails(
        conformance::webhook_stale_timestamp_rejected(&f).await,
        "webhook_stale_timestamp_rejected",
        "accepted",
    );
    assert_fails(
        conformance::webhook_missing_signature_rejected(&f).await,
        "webhook_missing_signature_rejected",
        "accepted",
    );
}

/// The suite's HTTP behaviours (429 + Retry-After, 401 + refresh) against a small connector
/// that reads a toolkit simulator through the core HTTP stack: this proves the harness and
/// the toolkit together before a platform crate relies on them.
mod over_http {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use apex_connect_core::http::{Credentials, HttpClient, RateGate, RetryConfig};
    use apex_connect_core::{
        Capabilities, Connector, ConnectorInfo, CursorToken, Error, ErrorKind, Page, Record,
        Result, StreamId, StreamInfo, SyncCursor, async_trait,
    };
    use apex_connect_testkit::conformance::{self, ConformanceFixture, Outcome};
    use apex_connect_testkit::sim::paging::{self, BadRequest};
    use apex_connect_testkit::sim::{FaultKind, Faults, Intercept, Next, SimHandle, SimServer};
    use axum::Router;
    use axum::extract::{Query, Request};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use futures::future::BoxFuture;
    use http::{HeaderValue, StatusCode};
    use serde::{Deserialize, Serialize};

    const RECORDS: usize = 17;

    fn token(generation: u64) -> String {
        format!("sim-access-token-{generation}-c0ffee5ecret")
    }

    /// Refuses requests whose bearer token is not the current generation's.
    #[derive(Clone)]
    struct AuthCheck {
        generation: Arc<AtomicU64>,
    }

    impl Intercept for AuthCheck {
        fn intercept(&self, req: Request, next: Next) -> BoxFuture<'static, Response> {
            let want = format!("Bearer {}", token(self.generation.load(Ordering::SeqCst)));
            Box::pin(async move {
                let ok = req
                    .headers()
                    .get("authorization")
                    .is_some_and(|v| v.as_bytes() == want.as_bytes());
                if ok {
                    next.run(req).await
                } else {
                    paging::error_json(StatusCode::UNAUTHORIZED, "token expired")
                }
            })
        }
    }

    async fn records(Query(q): Query<BTreeMap<String, String>>) -> Response {
        let limit = match paging::limit_param(&q, "limit", 5, 50) {
            Ok(l) => l,
            Err(BadRequest(m)) => return paging::error_json(StatusCode::BAD_REQUEST, &m),
        };
        match paging::paginate(RECORDS, limit, q.get("page_token").map(String::as_str)) {
            Ok(page) => {
                let results: Vec<_> = page
                    .range
                    .map(|i| serde_json::json!({"id": format!("rec_{i:02}"), "version": 100 + i}))
                    .collect();
                paging::json(
                    StatusCode::OK,
                    &serde_json::json!({"results": results, "next": page.next}),
                )
            }
            Err(bad) => bad.into_response(),
        }
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct SimCursor {
        page_token: Option<String>,
    }

    impl SyncCursor for SimCursor {
        const KIND: &'static str = "simhttp.records";
        const VERSION: u32 = 1;
    }

    /// Refreshes by POSTing to the simulator's token endpoint.
    struct SimOAuth {
        token_url: String,
        current: tokio::sync::Mutex<String>,
        client: reqwest::Client,
    }

    impl std::fmt::Debug for SimOAuth {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("SimOAuth([redacted])")
        }
    }

    #[async_trait]
    impl Credentials for SimOAuth {
        async fn authorization(&self) -> Result<HeaderValue> {
            let t = self.current.lock().await;
            HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| Error::new(ErrorKind::Unauthenticated, "token is not a header"))
        }

        async fn refresh_after_unauthorized(&self, rejected: &HeaderValue) -> Result<bool> {
            let mut t = self.current.lock().await;
            if rejected.as_bytes() != format!("Bearer {t}").as_bytes() {
                return Ok(true); // another task refreshed meanwhile
            }
            let body: serde_json::Value = self
                .client
                .post(&self.token_url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| {
                    Error::new(ErrorKind::Network, "refresh failed").set_source(e.without_url())
                })?
                .json()
                .await
                .map_err(|e| {
                    Error::new(ErrorKind::InvalidResponse, "refresh body").set_source(e)
                })?;
            let new = body["access_token"]
                .as_str()
                .ok_or_else(|| Error::new(ErrorKind::InvalidResponse, "no access_token"))?;
            *t = new.to_string();
            Ok(true)
        }
    }

    #[derive(Debug)]
    struct SimConnector {
        info: ConnectorInfo,
        http: HttpClient,
    }

    #[async_trait]
    impl Connector for SimConnector {
        fn info(&self) -> &ConnectorInfo {
            &self.info
        }
        async fn check(&self) -> Result<()> {
            Ok(())
        }
        async fn read(&self, stream: &StreamId, cursor: Option<&CursorToken>) -> Result<Page> {
            if stream.as_str() != "records" {
                return Err(Error::new(ErrorKind::NotFound, "unknown stream")
                    .with_context("stream", stream));
            }
            let after = cursor.map(SimCursor::from_token).transpose()?;
            let mut query = vec![("limit", "5".to_string())];
            if let Some(t) = after.and_then(|c| c.page_token) {
                query.push(("page_token", t));
            }
            let body: serde_json::Value = self.http.get_json("/records", &query).await?;
            let records = body["results"]
                .as_array()
                .ok_or_else(|| Error::invalid_response("no results"))?
                .iter()
                .map(|r| {
                    let id = r["id"].as_str().unwrap_or_default().to_string();
                    let version = r["version"].as_i64().unwrap_or_default();
                    Record::upsert(stream.clone(), id, r.clone()).with_version(version)
                })
                .collect();
            let next = body["next"].as_str().map(str::to_string);
            let has_more = next.is_some();
            Ok(Page::new(
                records,
                Some(SimCursor { page_token: next }.to_token()),
                has_more,
            ))
        }
    }

    struct HttpFixture {
        sim: SimHandle,
        faults: Faults,
        generation: Arc<AtomicU64>,
        refreshes: Arc<AtomicU64>,
    }

    async fn fixture() -> HttpFixture {
        let generation = Arc::new(AtomicU64::new(1));
        let refreshes = Arc::new(AtomicU64::new(0));
        let faults = Faults::new(5).with_filter(|_, uri| uri.path() == "/records");
        let (g, r) = (generation.clone(), refreshes.clone());
        let token_endpoint = post(move || {
            let (g, r) = (g.clone(), r.clone());
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                let now = g.load(Ordering::SeqCst);
                axum::Json(serde_json::json!({"access_token": token(now), "token_type": "bearer"}))
            }
        });
        let api = Router::new()
            .route("/records", get(records))
            .layer(
                AuthCheck {
                    generation: generation.clone(),
                }
                .layer(),
            )
            .layer(faults.layer());
        let app = api.merge(Router::new().route("/token", token_endpoint));
        HttpFixture {
            sim: SimServer::start(app).await.expect("simulator"),
            faults,
            generation,
            refreshes,
        }
    }

    #[async_trait]
    impl ConformanceFixture for HttpFixture {
        async fn connector(&self) -> Arc<dyn Connector> {
            let creds = SimOAuth {
                token_url: format!("{}/token", self.sim.base_url()),
                current: tokio::sync::Mutex::new(token(self.generation.load(Ordering::SeqCst))),
                client: reqwest::Client::new(),
            };
            let http = HttpClient::builder(self.sim.base_url())
                .credentials(Arc::new(creds))
                .rate_gate(RateGate::unlimited())
                .retry(RetryConfig::default())
                .build()
                .expect("http client");
            let caps =
                Capabilities::new(vec![StreamInfo::new("records", false)]).with_oauth_refresh();
            Arc::new(SimConnector {
                info: ConnectorInfo::new("simhttp", "1", caps),
                http,
            })
        }

        async fn expected(&self, _stream: &StreamId) -> BTreeMap<String, Option<i64>> {
            (0..RECORDS)
                .map(|i| (format!("rec_{i:02}"), Some(100 + i as i64)))
                .collect()
        }

        async fn inject_rate_limit(&self, retry_after: Duration) -> Option<()> {
            self.faults
                .push_scheduled(FaultKind::TooManyRequests { retry_after });
            Some(())
        }

        async fn rate_limited_seen(&self) -> Option<u64> {
            Some(self.faults.counts().kind("too_many_requests"))
        }

        async fn inject_unauthorized_once(&self) -> Option<()> {
            // The server moves on to a new token: the connector's current one is refused.
            self.generation.fetch_add(1, Ordering::SeqCst);
            Some(())
        }

        async fn token_refreshes(&self) -> Option<u64> {
            Some(self.refreshes.load(Ordering::SeqCst))
        }

        async fn secrets(&self) -> Option<Vec<String>> {
            let g = self.generation.load(Ordering::SeqCst);
            Some((1..=g + 1).map(token).collect())
        }
    }

    apex_connect_testkit::conformance!(http_suite => fixture);

    /// Retries a 429 at once, ignoring `Retry-After`: the suite must notice.
    #[derive(Debug)]
    struct Impatient {
        info: ConnectorInfo,
        base: String,
        token: String,
    }

    #[async_trait]
    impl Connector for Impatient {
        fn info(&self) -> &ConnectorInfo {
            &self.info
        }
        async fn check(&self) -> Result<()> {
            Ok(())
        }
        async fn read(&self, stream: &StreamId, cursor: Option<&CursorToken>) -> Result<Page> {
            let after = cursor.map(SimCursor::from_token).transpose()?;
            let mut url = format!("{}/records?limit=5", self.base);
            if let Some(t) = after.and_then(|c| c.page_token) {
                url.push_str(&format!("&page_token={t}"));
            }
            let client = reqwest::Client::new();
            for _ in 0..5 {
                let resp = client
                    .get(&url)
                    .bearer_auth(&self.token)
                    .send()
                    .await
                    .map_err(|e| Error::new(ErrorKind::Network, "send").set_source(e))?;
                if resp.status() == StatusCode::TOO_MANY_REQUESTS {
                    continue;
                }
                let body: serde_json::Value = resp
                    .json()
                    .await
                    .map_err(|e| Error::new(ErrorKind::InvalidResponse, "json").set_source(e))?;
                let records = body["results"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        let id = r["id"].as_str().unwrap_or_default().to_string();
                        Record::upsert(stream.clone(), id, r.clone())
                            .with_version(r["version"].as_i64().unwrap_or_default())
                    })
                    .collect();
                let next = body["next"].as_str().map(str::to_string);
                let more = next.is_some();
                return Ok(Page::new(
                    records,
                    Some(SimCursor { page_token: next }.to_token()),
                    more,
                ));
            }
            Err(Error::new(ErrorKind::RateLimited, "gave up"))
        }
    }

    struct ImpatientFixture(HttpFixture);

    #[async_trait]
    impl ConformanceFixture for ImpatientFixture {
        async fn connector(&self) -> Arc<dyn Connector> {
            Arc::new(Impatient {
                info: ConnectorInfo::new(
                    "impatient",
                    "1",
                    Capabilities::new(vec![StreamInfo::new("records", false)]),
                ),
                base: self.0.sim.base_url().to_string(),
                token: token(self.0.generation.load(Ordering::SeqCst)),
            })
        }
        async fn expected(&self, stream: &StreamId) -> BTreeMap<String, Option<i64>> {
            self.0.expected(stream).await
        }
        async fn inject_rate_limit(&self, retry_after: Duration) -> Option<()> {
            self.0.inject_rate_limit(retry_after).await
        }
        async fn rate_limited_seen(&self) -> Option<u64> {
            self.0.rate_limited_seen().await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ignoring_retry_after_fails_the_suite() {
        let f = ImpatientFixture(fixture().await);
        match conformance::rate_limit_honoured(&f).await {
            Err(failure) => assert!(
                failure.message.contains("Retry-After was not honoured"),
                "{failure}"
            ),
            other => panic!("an impatient connector passed: {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_hooks_run_instead_of_skipping() {
        let f = fixture().await;
        assert_eq!(
            conformance::rate_limit_honoured(&f).await,
            Ok(Outcome::Passed)
        );
        assert_eq!(f.faults.counts().kind("too_many_requests"), 1);
        assert_eq!(
            conformance::unauthorized_refreshes_once(&f).await,
            Ok(Outcome::Passed)
        );
        assert_eq!(f.refreshes.load(Ordering::SeqCst), 1);
    }
}
